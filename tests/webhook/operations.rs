//! Running it: certificate rotation, dropping credentials and verdicts, configuration
//! errors.

use serde_json::{json, Value};

use crate::common::{
    self,
    backend::{Pki, Reply},
    webhook::{client, fresh_digest, pod_review, StandInAuthority},
    webhook_bin,
};
use crate::{audit, block_on, message, metric, response, send, setup};

#[test]
fn a_replaced_certificate_is_served_without_a_restart() {
    let s = setup(&[]);
    block_on(async {
        let rotated = Pki::generate();
        let new_client = client(&rotated.ca);
        // Before: the new CA does not vouch for what is served.
        assert!(new_client
            .get(s.webhook.url("/healthz"))
            .send()
            .await
            .is_err());
        // Written as a rotation tool would: the key and the certificate, each replaced whole.
        let tmp = s.webhook.dir.path().join("tls.key.new");
        std::fs::copy(&rotated.server_key, &tmp).unwrap();
        std::fs::rename(&tmp, &s.webhook.key_file).unwrap();
        let tmp = s.webhook.dir.path().join("tls.crt.new");
        std::fs::copy(&rotated.server_cert, &tmp).unwrap();
        std::fs::rename(&tmp, &s.webhook.cert_file).unwrap();
        s.webhook.wait_for_log("serving the new certificate");
        let health = new_client
            .get(s.webhook.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status().as_u16(), 200);
        // The old CA no longer matches (a fresh client: no resumed session).
        assert!(client(&s.serving.ca)
            .get(s.webhook.url("/healthz"))
            .send()
            .await
            .is_err());
        let _ = &s.backend_pki;
    });
}

#[test]
fn invalidate_op_token_drops_credentials_and_verdicts() {
    let dir = common::TempDir::new("zastava-token");
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let token_arg = format!("backend.token_file=\"{}\"", token.display());
    let s = setup(&["--set", &token_arg]);
    block_on(async {
        s.backend.accept_only_token("first-token");
        let digest = fresh_digest();
        let review = pod_review(
            "u",
            "shop",
            &[("containers", "app", &format!("r.example/app@{digest}"))],
        );
        let (_, reply) = send(&s, &review).await;
        assert_eq!(response(&reply)["allowed"], true, "{reply}");
        assert_eq!(
            s.backend.policy_requests()[0].authorization.as_deref(),
            Some("Bearer first-token")
        );

        let out = std::process::Command::new(webhook_bin())
            .args([
                "invalidate-op-token",
                "--audience",
                "scanner",
                "--admin-addr",
            ])
            .arg(s.webhook.admin.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            answer,
            json!({"audience": "scanner", "tokenDropped": true, "verdictsDropped": 1})
        );
        s.webhook
            .wait_for_log("backend credentials and cached verdicts dropped");

        // The verdict is asked for again.
        let (_, reply) = send(&s, &review).await;
        assert_eq!(audit(&reply, "verdict-source"), "backend");
        assert_eq!(s.backend.policy_requests().len(), 2);

        // With the token file gone, there is no token to drop, and the answer says so.
        std::fs::remove_file(&token).unwrap();
        assert_eq!(
            invalidate(&s.webhook.admin.to_string()),
            json!({"audience": "scanner", "tokenDropped": false, "verdictsDropped": 1})
        );

        // Another audience than the one held is refused by the webhook, naming the one held.
        let out = std::process::Command::new(webhook_bin())
            .args([
                "invalidate-op-token",
                "--audience",
                "registry",
                "--admin-addr",
            ])
            .arg(s.webhook.admin.to_string())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(
                r#"audience \"registry\" is refused: credentials are held for \"scanner\" only"#
            ),
            "{stderr}"
        );
    });
}

/// `zastava-webhook invalidate-op-token --audience scanner` against the admin endpoint at
/// `admin`: what it prints.
fn invalidate(admin: &str) -> Value {
    let out = std::process::Command::new(webhook_bin())
        .args([
            "invalidate-op-token",
            "--audience",
            "scanner",
            "--admin-addr",
            admin,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn invalidate_op_token_without_credentials_says_none_was_dropped() {
    let s = setup(&[]);
    assert_eq!(
        invalidate(&s.webhook.admin.to_string()),
        json!({"audience": "scanner", "tokenDropped": false, "verdictsDropped": 0})
    );
    s.webhook.wait_for_log(r#""token_dropped":false"#);
}

#[test]
fn only_a_refusal_of_the_token_itself_drops_the_optok() {
    let authority = StandInAuthority::start();
    let dir = common::TempDir::new("zastava-webhook-optok");
    let args = authority.webhook_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = setup(&args);
    // The first OpTok is issued as the webhook starts.
    s.webhook.wait_for_log("Issued runtime OpTok");
    assert_eq!(authority.issued(), 1);
    block_on(async {
        let review = |uid: &str| {
            let image = format!("registry.example/shop/app@{}", fresh_digest());
            (
                pod_review(uid, "shop", &[("containers", "app", &image)]),
                image,
            )
        };
        // A 403: what the token may do, not the token; a new one would not help.
        s.backend.script(vec![Reply::Status(403)]);
        let (request, image) = review("u-403");
        let (_, reply) = send(&s, &request).await;
        assert_eq!(
            message(&reply),
            format!("container \"app\": image {image} could not be verified; namespace shop fails closed (the Scanner backend refused the webhook's request (403 Forbidden))")
        );
        assert_eq!(
            audit(&reply, "backend-error"),
            "the Scanner backend refused the webhook's request (403 Forbidden); check the scopes of the webhook's token"
        );
        let (_, reply) = send(&s, &review("u-after-403").0).await;
        assert_eq!(response(&reply)["allowed"], true, "{reply}");
        assert_eq!(authority.issued(), 1);
        let sent: Vec<Option<String>> = s
            .backend
            .policy_requests()
            .into_iter()
            .map(|r| r.authorization)
            .collect();
        let first = Some("Bearer optok-1".to_owned());
        assert_eq!(sent, [first.clone(), first.clone()], "kept after the 403");

        // A 401: the token is refused; it is dropped and a new one issued.
        s.backend.script(vec![Reply::Status(401)]);
        let (request, image) = review("u-401");
        let (_, reply) = send(&s, &request).await;
        assert_eq!(
            message(&reply),
            format!("container \"app\": image {image} could not be verified; namespace shop fails closed (the Scanner backend refused the webhook's credentials (401 Unauthorized))")
        );
        let (_, reply) = send(&s, &review("u-after-401").0).await;
        assert_eq!(response(&reply)["allowed"], true, "{reply}");
        assert_eq!(authority.issued(), 2);
        let sent: Vec<Option<String>> = s
            .backend
            .policy_requests()
            .into_iter()
            .map(|r| r.authorization)
            .collect();
        assert_eq!(
            sent,
            [
                first.clone(),
                first.clone(),
                first,
                Some("Bearer optok-2".to_owned())
            ],
            "a new OpTok after the 401"
        );

        let metrics = s.webhook.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "zastava_authority_token_drops_total{cause=\"invalidated\"}"
            ),
            1.0,
            "{metrics}"
        );
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_backend_errors_total{reason=\"unauthorized\"}"
            ),
            2.0,
            "{metrics}"
        );
    });
}

#[test]
fn configuration_errors_name_the_key_and_exit_2() {
    let out = std::process::Command::new(webhook_bin())
        .args([
            "serve",
            "--set",
            "policy.budget=\"45s\"",
            "--set",
            "admin.addr=\"0.0.0.0:9466\"",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "server.cert_file: is required: the webhook serves HTTPS only",
        "policy.budget: must be longer than 0 and at most 29s",
        "backend.url: is required",
        "admin.addr: 0.0.0.0:9466 is not a loopback address",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}
