//! A backend that is slow, fails, or is not there: the request is denied within its budget,
//! except in a namespace that fails open, where it is admitted — and only a request that
//! was admitted without a verdict says so.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{
    backend::Reply,
    webhook::{fresh_digest, pod_review},
};
use crate::{
    audit, block_on, message, metric, response, send, setup, setup_without_backend, warnings,
};

#[test]
fn an_unreachable_or_slow_backend_denies_within_the_budget_unless_the_namespace_fails_open() {
    let s = setup(&["--budget", "700ms", "--fail-open-namespace", "dev"]);
    block_on(async {
        // Slower than the budget.
        s.backend
            .set_default(Some(Reply::Hang(Duration::from_secs(5))));
        let image = format!("registry.example/app@{}", fresh_digest());
        let started = Instant::now();
        let (status, review) = send(
            &s,
            &pod_review("u-slow", "shop", &[("containers", "app", &image)]),
        )
        .await;
        let took = started.elapsed();
        assert_eq!(status, 200);
        assert_eq!(response(&review)["allowed"], false, "{review}");
        assert!(
            took < Duration::from_millis(700 + 400),
            "the decision took {took:?}, beyond its 700ms budget"
        );
        assert_eq!(
            message(&review),
            format!(
                "container \"app\": image {image} could not be verified; namespace shop fails closed (the Scanner backend did not answer within the 700ms budget)"
            )
        );
        assert_eq!(audit(&review, "verdict-source"), "fail-closed");
        assert_eq!(
            audit(&review, "backend-error"),
            "the Scanner backend did not answer within the 700ms budget"
        );
        assert_eq!(
            response(&review)["auditAnnotations"].get("failed-open"),
            None
        );

        let image = format!("registry.example/app@{}", fresh_digest());
        let started = Instant::now();
        let (_, review) = send(
            &s,
            &pod_review("u-dev", "dev", &[("containers", "app", &image)]),
        )
        .await;
        assert!(started.elapsed() < Duration::from_millis(700 + 400));
        assert_eq!(response(&review)["allowed"], true, "{review}");
        assert_eq!(
            warnings(&review),
            [format!(
                "container \"app\": image {image} admitted without a verdict; namespace dev fails open (the Scanner backend did not answer within the 700ms budget)"
            )]
        );
        assert_eq!(audit(&review, "verdict-source"), "fail-open");
        assert_eq!(
            audit(&review, "failed-open"),
            format!("container \"app\": image {image}: the Scanner backend did not answer within the 700ms budget")
        );

        // A backend that fails outright: the same, at once.
        s.backend.set_default(Some(Reply::Status(503)));
        let image = format!("registry.example/app@{}", fresh_digest());
        let (_, review) = send(
            &s,
            &pod_review("u-503", "shop", &[("containers", "app", &image)]),
        )
        .await;
        assert_eq!(response(&review)["allowed"], false);
        assert_eq!(
            message(&review),
            format!("container \"app\": image {image} could not be verified; namespace shop fails closed (the Scanner backend answered 503 Service Unavailable)")
        );
        let metrics = s.webhook.metrics().await;
        assert_eq!(
            metric(&metrics, "zastava_admission_fail_open_total"),
            1.0,
            "{metrics}"
        );
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_backend_errors_total{reason=\"budget\"}"
            ),
            2.0,
            "{metrics}"
        );
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_backend_errors_total{reason=\"status\"}"
            ),
            1.0,
            "{metrics}"
        );
    });
}

#[test]
fn a_request_denied_in_a_namespace_that_fails_open_claims_no_admission() {
    let s = setup_without_backend(&["--fail-open-namespace", "dev"]);
    block_on(async {
        let pinned = format!("registry.example/app@{}", fresh_digest());
        let review = pod_review(
            "u-denied-dev",
            "dev",
            &[
                ("containers", "app", &pinned),
                ("containers", "sidecar", "registry.example/proxy:2"),
            ],
        );
        let (status, reply) = send(&s, &review).await;
        assert_eq!(status, 200);
        assert_eq!(response(&reply)["allowed"], false, "{reply}");
        // Denied for the tag-only image alone; nothing says it was admitted.
        assert_eq!(
            message(&reply),
            "container \"sidecar\": image registry.example/proxy:2 is not pinned by digest (use <image>@sha256:<digest>)"
        );
        assert_eq!(warnings(&reply), Vec::<String>::new());
        let annotations = &response(&reply)["auditAnnotations"];
        assert_eq!(annotations.get("failed-open"), None, "{reply}");
        assert_eq!(audit(&reply, "verdict-source"), "policy");
        // The image without a verdict is still on record as such.
        let digest = pinned.rsplit_once('@').unwrap().1;
        assert_eq!(audit(&reply, "digests"), format!("{digest}=unverified"));
        assert!(
            audit(&reply, "backend-error").starts_with("the Scanner backend is unreachable: "),
            "{reply}"
        );
        let metrics = s.webhook.metrics().await;
        assert_eq!(
            metric(&metrics, "zastava_admission_fail_open_total"),
            0.0,
            "{metrics}"
        );
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_decisions_total{decision=\"deny\"}"
            ),
            1.0,
            "{metrics}"
        );

        // The same request without the tag-only image is admitted, and says so.
        let review = pod_review("u-open-dev", "dev", &[("containers", "app", &pinned)]);
        let (_, reply) = send(&s, &review).await;
        assert_eq!(response(&reply)["allowed"], true, "{reply}");
        assert_eq!(audit(&reply, "verdict-source"), "fail-open");
        assert_eq!(
            warnings(&reply),
            [format!("container \"app\": image {pinned} admitted without a verdict; namespace dev fails open (the Scanner backend is unreachable)")]
        );
        let metrics = s.webhook.metrics().await;
        assert_eq!(
            metric(&metrics, "zastava_admission_fail_open_total"),
            1.0,
            "{metrics}"
        );
    });
}

#[test]
fn nothing_listening_at_the_backend_denies_at_once_with_a_short_reason() {
    let s = setup_without_backend(&[]);
    block_on(async {
        let image = format!("registry.example/app@{}", fresh_digest());
        let review = pod_review("u-down", "shop", &[("containers", "app", &image)]);
        let started = Instant::now();
        let (_, reply) = send(&s, &review).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(response(&reply)["allowed"], false);
        // People read why, without the transport's details...
        assert_eq!(
            message(&reply),
            format!("container \"app\": image {image} could not be verified; namespace shop fails closed (the Scanner backend is unreachable)")
        );
        assert!(message(&reply).chars().count() <= 256);
        // ...which are in the audit annotation and the log.
        let port = s.webhook.backend_port();
        let detail = audit(&reply, "backend-error");
        assert!(
            detail.starts_with("the Scanner backend is unreachable: ")
                && detail.contains(&format!("127.0.0.1:{port}"))
                && detail.contains("Connection refused"),
            "{detail}"
        );
        let line = s.webhook.decision_line("u-down");
        assert_eq!(line["decision"], "deny");
        assert_eq!(line["backend_error"], detail);
        assert_eq!(line["verdict_source"], "fail-closed");
    });
}

#[test]
fn when_the_budget_runs_out_the_verdicts_already_known_still_count() {
    let s = setup(&["--budget", "700ms", "--fail-open-namespace", "dev"]);
    block_on(async {
        let denied = fresh_digest();
        let allowed = fresh_digest();
        s.backend.set_verdict(
            &denied,
            "deny",
            &["CVE-2026-1234 is exploitable and in use"],
            Some(300),
        );
        s.backend.set_verdict(&allowed, "allow", &[], Some(300));
        let denied_image = format!("registry.example/shop/app@{denied}");
        let allowed_image = format!("registry.example/shop/proxy@{allowed}");
        // Both verdicts are cached by a first request.
        let (_, reply) = send(
            &s,
            &pod_review(
                "u-warm",
                "dev",
                &[
                    ("containers", "app", &denied_image),
                    ("containers", "proxy", &allowed_image),
                ],
            ),
        )
        .await;
        assert_eq!(
            audit(&reply, "digests"),
            format!("{denied}=deny,{allowed}=allow")
        );

        // From now on the backend answers nothing in time.
        s.backend
            .set_default(Some(Reply::Hang(Duration::from_secs(5))));
        let slow = fresh_digest();
        let slow_image = format!("registry.example/shop/new@{slow}");
        let started = Instant::now();
        let (status, reply) = send(
            &s,
            &pod_review(
                "u-known-deny",
                "dev",
                &[
                    ("containers", "app", &denied_image),
                    ("containers", "new", &slow_image),
                ],
            ),
        )
        .await;
        assert!(started.elapsed() < Duration::from_millis(700 + 400));
        assert_eq!(status, 200);
        // The cached deny stands, in a namespace that fails open too.
        assert_eq!(response(&reply)["allowed"], false, "{reply}");
        assert_eq!(
            message(&reply),
            format!(
                "container \"app\": image {denied_image} is denied: CVE-2026-1234 is exploitable and in use"
            )
        );
        assert_eq!(warnings(&reply), Vec::<String>::new());
        assert_eq!(
            response(&reply)["auditAnnotations"].get("failed-open"),
            None,
            "{reply}"
        );
        assert_eq!(audit(&reply, "verdict-source"), "cache");
        assert_eq!(
            audit(&reply, "digests"),
            format!("{denied}=deny,{slow}=unverified")
        );
        assert_eq!(
            audit(&reply, "backend-error"),
            "the Scanner backend did not answer within the 700ms budget"
        );
        let line = s.webhook.decision_line("u-known-deny");
        assert_eq!(
            (&line["decision"], &line["failed_open"], &line["level"]),
            (&json!("deny"), &Value::Null, &json!("INFO"))
        );

        // Failing closed, a cached allow is no reason to deny: only the late digest is.
        let late = fresh_digest();
        let late_image = format!("registry.example/shop/late@{late}");
        let (_, reply) = send(
            &s,
            &pod_review(
                "u-known-allow",
                "shop",
                &[
                    ("containers", "proxy", &allowed_image),
                    ("containers", "late", &late_image),
                ],
            ),
        )
        .await;
        assert_eq!(response(&reply)["allowed"], false, "{reply}");
        assert_eq!(
            message(&reply),
            format!(
                "container \"late\": image {late_image} could not be verified; namespace shop fails closed (the Scanner backend did not answer within the 700ms budget)"
            )
        );
        assert_eq!(audit(&reply, "verdict-source"), "cache,fail-closed");
        assert_eq!(
            audit(&reply, "digests"),
            format!("{allowed}=allow,{late}=unverified")
        );

        let metrics = s.webhook.metrics().await;
        assert_eq!(
            metric(&metrics, "zastava_admission_fail_open_total"),
            0.0,
            "{metrics}"
        );
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_backend_errors_total{reason=\"budget\"}"
            ),
            2.0,
            "{metrics}"
        );
    });
}

#[test]
fn an_answer_that_came_before_the_budget_ran_out_counts() {
    // One digest a request: the backend answers the first request at once and never the
    // second.
    let s = setup(&["--budget", "700ms", "--set", "policy.digests_per_request=1"]);
    block_on(async {
        let (one, two) = (fresh_digest(), fresh_digest());
        s.backend.set_verdict(&one, "allow", &[], Some(300));
        s.backend.set_verdict(&two, "allow", &[], Some(300));
        s.backend.script(vec![Reply::Status(200)]);
        s.backend
            .set_default(Some(Reply::Hang(Duration::from_secs(5))));
        let images = [
            format!("registry.example/shop/one@{one}"),
            format!("registry.example/shop/two@{two}"),
        ];
        let (_, reply) = send(
            &s,
            &pod_review(
                "u-half",
                "shop",
                &[
                    ("containers", "one", &images[0]),
                    ("containers", "two", &images[1]),
                ],
            ),
        )
        .await;
        // The requests run at once: either may be the one answered.
        let answered = s.backend.policy_requests()[0].body.as_ref().unwrap()["images"][0]["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        let (late, late_image, name) = if answered == one {
            (&two, &images[1], "two")
        } else {
            (&one, &images[0], "one")
        };
        assert_eq!(response(&reply)["allowed"], false, "{reply}");
        assert_eq!(
            message(&reply),
            format!(
                "container \"{name}\": image {late_image} could not be verified; namespace shop fails closed (the Scanner backend did not answer within the 700ms budget)"
            )
        );
        assert_eq!(audit(&reply, "verdict-source"), "backend,fail-closed");
        let digests = if answered == one {
            format!("{one}=allow,{late}=unverified")
        } else {
            format!("{late}=unverified,{two}=allow")
        };
        assert_eq!(audit(&reply, "digests"), digests);
    });
}

#[test]
fn no_credentials_is_told_in_a_few_words_and_in_full_in_the_annotation() {
    let dir = crate::common::TempDir::new("zastava-webhook-secret");
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    // An Authority nobody listens for.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let issuer = format!("authority.issuer=\"http://127.0.0.1:{port}\"");
    let secret_file = format!("authority.client_secret_file=\"{}\"", secret.display());
    let s = setup(&[
        "--set",
        &issuer,
        "--set",
        &secret_file,
        "--set",
        "authority.require_mutual_tls=false",
        "--set",
        "authority.require_dpop=false",
    ]);
    block_on(async {
        let image = format!("registry.example/app@{}", fresh_digest());
        let (_, reply) = send(
            &s,
            &pod_review("u-no-optok", "shop", &[("containers", "app", &image)]),
        )
        .await;
        assert_eq!(response(&reply)["allowed"], false, "{reply}");
        assert_eq!(
            message(&reply),
            format!(
                "container \"app\": image {image} could not be verified; namespace shop fails closed (no credentials for the Scanner backend: the Authority is unreachable)"
            )
        );
        let detail = audit(&reply, "backend-error");
        let prefix = format!(
            "no credentials for the Scanner backend: the Authority at http://127.0.0.1:{port}/.well-known/openid-configuration is unreachable: "
        );
        assert!(
            detail.starts_with(&prefix) && detail.contains("Connection refused"),
            "{detail}"
        );
        let line = s.webhook.decision_line("u-no-optok");
        assert_eq!(line["backend_error"], detail);
        assert_eq!(
            line["details"],
            format!(
                "container \"app\": image {image} could not be verified; namespace shop fails closed (no credentials for the Scanner backend: the Authority is unreachable)"
            )
        );
        let metrics = s.webhook.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_backend_errors_total{reason=\"credentials\"}"
            ),
            1.0,
            "{metrics}"
        );
        assert!(s.backend.policy_requests().is_empty());
    });
}
