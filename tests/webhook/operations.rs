//! Running it: certificate rotation, dropping credentials and verdicts, configuration
//! errors.

use serde_json::{json, Value};

use crate::common::{
    self,
    backend::Pki,
    webhook::{client, fresh_digest, pod_review},
    webhook_bin,
};
use crate::{audit, block_on, response, send, setup};

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

        // Unknown audiences are refused by the CLI.
        let out = std::process::Command::new(webhook_bin())
            .args(["invalidate-op-token", "--audience", "registry"])
            .output()
            .unwrap();
        assert!(!out.status.success());
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
