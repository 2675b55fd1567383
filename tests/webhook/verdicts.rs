//! The backend's verdicts for pinned images, the local rules for the others, the cache, and
//! the messages people read.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{
    backend::Reply,
    webhook::{fresh_digest, pod_review, DIGEST_A, DIGEST_B},
};
use crate::{audit, block_on, message, response, send, setup, warnings};

#[test]
fn pinned_images_get_the_backends_verdict_with_its_reasons() {
    let s = setup(&[]);
    block_on(async {
        s.backend.set_verdict(DIGEST_A, "allow", &[], Some(300));
        s.backend.set_verdict(
            DIGEST_B,
            "deny",
            &["CVE-2026-1234 is exploitable and in use"],
            Some(300),
        );

        let allowed = pod_review(
            "uid-allow",
            "shop",
            &[(
                "containers",
                "app",
                &format!("registry.example/shop/app@{DIGEST_A}"),
            )],
        );
        let (status, review) = send(&s, &allowed).await;
        assert_eq!(status, 200, "{review}");
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(response(&review)["uid"], "uid-allow");
        assert_eq!(response(&review)["allowed"], true, "{review}");
        assert_eq!(audit(&review, "digests"), format!("{DIGEST_A}=allow"));
        assert_eq!(audit(&review, "verdict-source"), "backend");

        // The backend was asked with the namespace, the workload identity and the image, over
        // mutual TLS.
        let asked = s.backend.policy_requests();
        assert_eq!(asked.len(), 1);
        assert!(asked[0].client_certificate);
        assert_eq!(
            asked[0].body.as_ref().unwrap(),
            &json!({
                "namespace": "shop",
                "workload": {"id": "web", "idSource": "label", "tenant": "acme"},
                "images": [{"image": format!("registry.example/shop/app@{DIGEST_A}"), "digest": DIGEST_A}],
            })
        );

        let denied = pod_review(
            "uid-deny",
            "shop",
            &[
                (
                    "containers",
                    "app",
                    &format!("registry.example/shop/app@{DIGEST_A}"),
                ),
                (
                    "containers",
                    "sidecar",
                    &format!("registry.example/shop/proxy@{DIGEST_B}"),
                ),
            ],
        );
        let (status, review) = send(&s, &denied).await;
        assert_eq!(status, 200);
        assert_eq!(response(&review)["uid"], "uid-deny");
        assert_eq!(response(&review)["allowed"], false, "{review}");
        assert_eq!(response(&review)["status"]["code"], 403);
        assert_eq!(
            message(&review),
            format!(
                "container \"sidecar\": image registry.example/shop/proxy@{DIGEST_B} is denied: CVE-2026-1234 is exploitable and in use"
            )
        );
        // A was cached by the first request; only B went to the backend.
        assert_eq!(
            audit(&review, "digests"),
            format!("{DIGEST_A}=allow,{DIGEST_B}=deny")
        );
        assert_eq!(audit(&review, "verdict-source"), "backend,cache");
        let asked = s.backend.policy_requests();
        assert_eq!(asked.len(), 2);
        assert_eq!(
            asked[1].body.as_ref().unwrap()["images"][0]["digest"],
            DIGEST_B
        );

        let metrics = s.webhook.metrics().await;
        assert!(
            metrics.contains("zastava_admission_decisions_total{decision=\"allow\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("zastava_admission_decisions_total{decision=\"deny\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("zastava_admission_cache_hits_total 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("zastava_admission_cache_misses_total 2"),
            "{metrics}"
        );
        assert!(
            metrics.contains("zastava_admission_decision_seconds_bucket"),
            "{metrics}"
        );
    });
}

#[test]
fn tag_only_images_are_denied_or_warned_by_namespace() {
    let s = setup(&["--set", "policy.tag_only_by_namespace.legacy=\"warn\""]);
    block_on(async {
        let review = pod_review(
            "u1",
            "shop",
            &[("containers", "app", "registry.example/app:1.4")],
        );
        let (_, review) = send(&s, &review).await;
        assert_eq!(response(&review)["allowed"], false, "{review}");
        assert_eq!(
            message(&review),
            "container \"app\": image registry.example/app:1.4 is not pinned by digest (use <image>@sha256:<digest>)"
        );
        assert_eq!(audit(&review, "verdict-source"), "policy");

        let review = pod_review(
            "u2",
            "legacy",
            &[("containers", "app", "registry.example/app:1.4")],
        );
        let (_, review) = send(&s, &review).await;
        assert_eq!(response(&review)["allowed"], true, "{review}");
        assert_eq!(
            warnings(&review),
            ["container \"app\": image registry.example/app:1.4 is not pinned by digest (use <image>@sha256:<digest>)"]
        );
        // Nothing to ask the backend about.
        assert!(s.backend.policy_requests().is_empty());
    });
}

#[test]
fn init_and_ephemeral_containers_are_checked_too() {
    let s = setup(&[]);
    block_on(async {
        let bad = fresh_digest();
        s.backend
            .set_verdict(&bad, "deny", &["unsigned"], Some(300));
        let review = pod_review(
            "u-init",
            "shop",
            &[
                (
                    "initContainers",
                    "migrate",
                    &format!("registry.example/migrate@{bad}"),
                ),
                (
                    "containers",
                    "app",
                    &format!("registry.example/app@{DIGEST_A}"),
                ),
            ],
        );
        let (_, review) = send(&s, &review).await;
        assert_eq!(response(&review)["allowed"], false);
        assert_eq!(
            message(&review),
            format!("init container \"migrate\": image registry.example/migrate@{bad} is denied: unsigned")
        );

        let review = pod_review(
            "u-ephemeral",
            "shop",
            &[
                (
                    "containers",
                    "app",
                    &format!("registry.example/app@{DIGEST_A}"),
                ),
                ("ephemeralContainers", "debugger", "busybox:latest"),
            ],
        );
        let (_, review) = send(&s, &review).await;
        assert_eq!(response(&review)["allowed"], false);
        assert_eq!(
            message(&review),
            "ephemeral container \"debugger\": image busybox:latest is not pinned by digest (use <image>@sha256:<digest>)"
        );
    });
}

#[test]
fn a_deployments_pod_template_is_checked() {
    let s = setup(&[]);
    block_on(async {
        let bad = fresh_digest();
        s.backend
            .set_verdict(&bad, "deny", &["blocked by policy"], Some(300));
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-deploy",
                "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                "namespace": "payments",
                "operation": "UPDATE",
                "name": "api",
                "object": {
                    "metadata": {"name": "api", "namespace": "payments"},
                    "spec": {"template": {
                        "metadata": {"labels": {"app": "api", "stellaops.workload/component": "api"}},
                        "spec": {"containers": [{"name": "api", "image": format!("registry.example/api@{bad}")}]},
                    }},
                },
            }
        });
        let (_, review) = send(&s, &review).await;
        assert_eq!(response(&review)["uid"], "u-deploy");
        assert_eq!(response(&review)["allowed"], false);
        assert_eq!(
            message(&review),
            format!(
                "container \"api\": image registry.example/api@{bad} is denied: blocked by policy"
            )
        );
        // The template's identity: derived from the Deployment's name.
        let asked = s.backend.policy_requests();
        assert_eq!(
            asked[0].body.as_ref().unwrap()["workload"],
            json!({"id": "payments/api", "idSource": "derived", "component": "api"})
        );
    });
}

#[test]
fn verdicts_are_cached_for_their_ttl() {
    let s = setup(&[]);
    block_on(async {
        let digest = fresh_digest();
        s.backend.set_verdict(&digest, "allow", &[], Some(1));
        let review = pod_review(
            "u",
            "shop",
            &[("containers", "app", &format!("r.example/app@{digest}"))],
        );
        let (_, first) = send(&s, &review).await;
        assert_eq!(audit(&first, "verdict-source"), "backend");
        let (_, second) = send(&s, &review).await;
        assert_eq!(response(&second)["allowed"], true);
        assert_eq!(audit(&second, "verdict-source"), "cache");
        assert_eq!(s.backend.policy_requests().len(), 1);
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let (_, third) = send(&s, &review).await;
        assert_eq!(audit(&third, "verdict-source"), "backend");
        assert_eq!(s.backend.policy_requests().len(), 2);
    });
}

#[test]
fn fifty_concurrent_requests_for_a_new_digest_make_one_backend_call() {
    let s = setup(&[]);
    block_on(async {
        // Slow enough that all fifty arrive while the first call is under way.
        s.backend
            .set_default(Some(Reply::Hang(Duration::from_millis(500))));
        let digest = fresh_digest();
        let image = format!("r.example/app@{digest}");
        let mut tasks = Vec::new();
        for i in 0..50 {
            let client = s.client.clone();
            let url = s.webhook.url("/validate");
            let review = pod_review(&format!("u-{i}"), "shop", &[("containers", "app", &image)]);
            tasks.push(tokio::spawn(async move {
                let body = serde_json::to_vec(&review).unwrap();
                let reply = client
                    .post(url)
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                serde_json::from_slice::<Value>(&reply).unwrap()
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let reply = task.await.unwrap();
            assert_eq!(response(&reply)["uid"], format!("u-{i}"));
            assert_eq!(response(&reply)["allowed"], true, "{reply}");
        }
        let asked = s.backend.policy_requests();
        assert_eq!(asked.len(), 1, "{} backend calls", asked.len());
        assert_eq!(
            asked[0].body.as_ref().unwrap()["images"][0]["digest"],
            digest.as_str()
        );
    });
}

#[test]
fn every_image_gets_one_short_line_and_the_log_has_them_all() {
    let s = setup(&[]);
    block_on(async {
        let long = format!(
            "{}\nsee https://scanner.example/findings",
            "CVE-2026-4242 reachable from the entrypoint; ".repeat(8)
        );
        let mut containers = Vec::new();
        for i in 0..14 {
            let digest = fresh_digest();
            s.backend.set_verdict(&digest, "deny", &[&long], Some(300));
            containers.push((
                format!("c{i:02}"),
                format!("registry.example/team/app@{digest}"),
            ));
        }
        let warned = fresh_digest();
        s.backend.set_verdict(
            &warned,
            "warn",
            &["base image end of life in 30 days"],
            Some(300),
        );
        let warned_image = format!("registry.example/team/base@{warned}");
        let mut list: Vec<(&str, &str, &str)> = containers
            .iter()
            .map(|(name, image)| ("containers", name.as_str(), image.as_str()))
            .collect();
        list.push(("containers", "base", &warned_image));
        let (_, reply) = send(&s, &pod_review("u-many", "shop", &list)).await;
        assert_eq!(response(&reply)["allowed"], false);
        let lines: Vec<&str> = message(&reply).split('\n').collect();
        assert_eq!(lines.len(), 12, "{reply}");
        for (line, (name, image)) in lines.iter().zip(&containers).take(11) {
            assert!(line.chars().count() <= 256, "{line}");
            assert!(
                line.starts_with(&format!("container \"{name}\": image {image} is denied: CVE-2026-4242 reachable from the entrypoint; ")),
                "{line}"
            );
            assert!(line.ends_with('…'), "{line}");
        }
        assert_eq!(
            lines[11],
            "… and 3 more images (the webhook's log has them all)"
        );
        assert_eq!(
            warnings(&reply),
            [format!("container \"base\": image {warned_image} is allowed with a warning: base image end of life in 30 days")]
        );
        // The decision's log line names every denied image.
        let logged = s.webhook.decision_line("u-many");
        let details = logged["details"].as_str().unwrap();
        for (name, _) in &containers {
            assert!(
                details.contains(&format!("container \"{name}\"")),
                "{name} not in {details}"
            );
        }
    });
}

#[test]
fn the_log_keeps_a_long_reason_whole_and_bounds_a_huge_one() {
    let s = setup(&[]);
    block_on(async {
        // Some 1 500 characters, over two lines: cut in the reply, whole in the log.
        let long = format!(
            "{}\nsee https://scanner.example/findings/4242",
            "CVE-2026-4242 reachable from the entrypoint; ".repeat(32)
        );
        // Past what the log keeps of one reason.
        let huge = format!("CVE-2026-9999 {}", "x".repeat(9_000));
        let (d1, d2) = (fresh_digest(), fresh_digest());
        s.backend
            .set_verdict(&d1, "deny", &[&long, "unsigned"], Some(300));
        s.backend.set_verdict(&d2, "warn", &[&huge], Some(300));
        let (app, base) = (
            format!("registry.example/team/app@{d1}"),
            format!("registry.example/team/base@{d2}"),
        );
        let (_, reply) = send(
            &s,
            &pod_review(
                "u-long-reason",
                "shop",
                &[("containers", "app", &app), ("containers", "base", &base)],
            ),
        )
        .await;
        assert_eq!(response(&reply)["allowed"], false, "{reply}");
        let whole = format!(
            "container \"app\": image {app} is denied: {} see https://scanner.example/findings/4242, unsigned",
            "CVE-2026-4242 reachable from the entrypoint; ".repeat(32)
        );
        let shown: String = whole.chars().take(255).chain(['…']).collect();
        assert_eq!(message(&reply), shown);
        let warned = format!(
            "container \"base\": image {base} is allowed with a warning: {}…",
            huge.chars().take(4095).collect::<String>()
        );
        let shown: String = warned.chars().take(255).chain(['…']).collect();
        assert_eq!(warnings(&reply), [shown]);
        let logged = s.webhook.decision_line("u-long-reason");
        assert_eq!(logged["details"], format!("{whole} | {warned}"));
    });
}
