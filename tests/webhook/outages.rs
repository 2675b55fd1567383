//! A backend that is slow, fails, or is not there: the request is denied within its budget,
//! except in a namespace that fails open, where it is admitted — and only a request that
//! was admitted without a verdict says so.

use std::time::{Duration, Instant};

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
