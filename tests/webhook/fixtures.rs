//! The requests of `tests/fixtures/admission/`, as an API server sends them, with the
//! backend up, with the backend down, and in a namespace that fails open: the decision, what
//! the backend was asked (namespace, workload identity), the annotations, the length of
//! every line people read, and the counters.

use serde_json::{json, Value};

use crate::common::webhook::{fixture, retargeted};
use crate::{
    audit, block_on, message, metric, response, send, setup, setup_without_backend, warnings,
    Endpoint,
};

// The digests the fixtures pin (the SHA-256 of each image's name and tag).
const APP: &str = "sha256:0eefc3ab885db6a536803c5e85b9bf8423edbd504c55274a0a8029c995efee87";
const MIGRATE: &str = "sha256:ea61c0b9a13df835679e5fb4522e4f851dce653455e764dc01363d11ea01806a";
const APP2: &str = "sha256:6be01efdd0322302ab751b2a8943ba5ace5e2930f779331fe91b48af438ee31f";
const DB: &str = "sha256:2216ee059bd9334e92886ad9fceab0905d58cc041e934b3c3652fdef2d3dbcf7";
const AGENT: &str = "sha256:c41526186edbed295fdbbfd64e14d9812b6e88b89177a6bb2bf47229e02d4278";
const REPORT: &str = "sha256:bb9c357d4943551d7fb9b284a21825b53482613a251f27f2a5fcf52c6792ef24";

/// Sends fixture `name` (moved to `namespace`, with uid `name` so its log line is found) and
/// checks what every reply must hold: the uid, 200, lines of at most 256 characters.
async fn review(s: &impl Endpoint, name: &str, namespace: Option<&str>) -> Value {
    let mut request = fixture(name);
    let namespace = namespace
        .map(str::to_owned)
        .unwrap_or_else(|| request["request"]["namespace"].as_str().unwrap().to_owned());
    request = retargeted(&request, name, &namespace);
    let (status, reply) = send(s, &request).await;
    assert_eq!(status, 200, "{name}: {reply}");
    assert_eq!(response(&reply)["uid"], name, "{name}");
    for line in message(&reply)
        .lines()
        .chain(warnings(&reply).iter().map(String::as_str))
    {
        assert!(line.chars().count() <= 256, "{name}: {line}");
    }
    assert!(
        !message(&reply).contains("os error") && !message(&reply).contains("http"),
        "{name}: transport details in {:?}",
        message(&reply)
    );
    reply
}

fn allowed(reply: &Value) -> bool {
    response(reply)["allowed"] == true
}

/// The workload the decision's log line names.
fn logged_workload(s: &impl Endpoint, uid: &str) -> Value {
    s.webhook().decision_line(uid)["workload"].clone()
}

#[test]
fn fixtures_with_the_backend_up() {
    let s = setup(&[]);
    block_on(async {
        for digest in [APP, MIGRATE, DB, REPORT] {
            s.backend.set_verdict(digest, "allow", &[], Some(300));
        }
        s.backend.set_verdict(
            APP2,
            "deny",
            &["CVE-2026-7001 is exploitable and in use"],
            Some(300),
        );
        s.backend
            .set_verdict(AGENT, "warn", &["runs privileged"], Some(300));
        let asked = |n: usize| s.backend.policy_requests()[n].body.clone().unwrap();

        // The ReplicaSet is its Deployment's workload, as its pods are.
        let r = review(&s, "replicaset-create.json", None).await;
        assert!(allowed(&r), "{r}");
        assert_eq!(
            asked(0),
            json!({"namespace": "default", "workload": {"id": "default/test", "idSource": "derived"},
                   "images": [{"image": format!("registry.example/shop/app@{APP}"), "digest": APP},
                              {"image": format!("registry.example/shop/migrate@{MIGRATE}"), "digest": MIGRATE}]})
        );
        assert_eq!(audit(&r, "digests"), format!("{MIGRATE}=allow,{APP}=allow"));
        assert_eq!(audit(&r, "verdict-source"), "backend");
        for name in [
            "pod-create-by-replicaset.json",
            "deployment-create.json",
            "deployment-create-dry-run.json",
        ] {
            let r = review(&s, name, None).await;
            assert!(allowed(&r), "{name}: {r}");
            assert_eq!(audit(&r, "verdict-source"), "cache", "{name}");
            assert_eq!(logged_workload(&s, name), "default/test", "{name}");
        }
        assert_eq!(
            s.webhook.decision_line("deployment-create-dry-run.json")["dry_run"],
            true
        );

        // A rollout to a denied image.
        let r = review(&s, "deployment-update-image.json", None).await;
        assert!(!allowed(&r));
        assert_eq!(
            message(&r),
            format!("container \"app\": image registry.example/shop/app@{APP2} is denied: CVE-2026-7001 is exploitable and in use")
        );
        assert_eq!(asked(1)["workload"]["id"], "default/test");
        assert_eq!(
            asked(1)["images"],
            json!([{"image": format!("registry.example/shop/app@{APP2}"), "digest": APP2}])
        );

        // Identity labels on a template; a DaemonSet warned about; a CronJob and its Job.
        let r = review(&s, "statefulset-create.json", None).await;
        assert!(allowed(&r));
        assert_eq!(
            asked(2),
            json!({"namespace": "data",
                   "workload": {"id": "orders-db", "idSource": "label", "tenant": "acme", "component": "database"},
                   "images": [{"image": format!("registry.example/data/postgres@{DB}"), "digest": DB}]})
        );
        let r = review(&s, "daemonset-create.json", None).await;
        assert!(allowed(&r));
        assert_eq!(
            warnings(&r),
            [format!("container \"agent\": image registry.example/ops/node-agent@{AGENT} is allowed with a warning: runs privileged")]
        );
        assert_eq!(asked(3)["namespace"], "monitoring");
        assert_eq!(
            asked(3)["workload"],
            json!({"id": "monitoring/node-agent", "idSource": "derived"})
        );
        let r = review(&s, "cronjob-create.json", None).await;
        assert!(allowed(&r));
        assert_eq!(
            asked(4)["workload"],
            json!({"id": "batch/nightly", "idSource": "derived"})
        );
        let r = review(&s, "job-create-by-cronjob.json", None).await;
        assert!(allowed(&r));
        assert_eq!(audit(&r, "verdict-source"), "cache");
        assert_eq!(
            logged_workload(&s, "job-create-by-cronjob.json"),
            "batch/nightly"
        );

        // kubectl debug with a tag-only image.
        let r = review(&s, "pod-ephemeral-debug-container.json", None).await;
        assert!(!allowed(&r));
        assert_eq!(
            message(&r),
            "ephemeral container \"debugger-m2kq9\": image busybox:1.36 is not pinned by digest (use <image>@sha256:<digest>)"
        );
        assert_eq!(audit(&r, "verdict-source"), "cache,policy");

        // Nothing new runs: admitted unjudged, over a pre-existing tag-only image.
        for (name, why) in [
            (
                "deployment-finalizer-removed.json",
                "the update adds no image to those oldObject has",
            ),
            (
                "deployment-being-deleted.json",
                "the object is being deleted (deletionTimestamp is set)",
            ),
            (
                "replicaset-scale-down.json",
                "the update adds no image to those oldObject has",
            ),
            ("pod-delete.json", "a deletion starts nothing"),
            ("configmap-create.json", "the object runs no containers"),
        ] {
            let r = review(&s, name, None).await;
            assert_eq!(
                response(&r),
                &json!({"uid": name, "allowed": true, "auditAnnotations": {"not-judged": why}}),
                "{name}"
            );
        }
        assert_eq!(s.backend.policy_requests().len(), 5);

        let metrics = s.webhook.metrics().await;
        for (series, value) in [
            (
                "zastava_admission_decisions_total{decision=\"allow\"}",
                12.0,
            ),
            ("zastava_admission_decisions_total{decision=\"warn\"}", 1.0),
            ("zastava_admission_decisions_total{decision=\"deny\"}", 2.0),
            (
                "zastava_admission_not_judged_total{reason=\"unchanged_images\"}",
                2.0,
            ),
            (
                "zastava_admission_not_judged_total{reason=\"being_deleted\"}",
                1.0,
            ),
            ("zastava_admission_not_judged_total{reason=\"delete\"}", 1.0),
            (
                "zastava_admission_not_judged_total{reason=\"not_a_workload\"}",
                1.0,
            ),
            ("zastava_admission_fail_open_total", 0.0),
        ] {
            assert_eq!(metric(&metrics, series), value, "{series}\n{metrics}");
        }
    });
}

/// The fixtures that name only pinned images of a new pod spec.
const PINNED: [&str; 9] = [
    "pod-create-by-replicaset.json",
    "replicaset-create.json",
    "deployment-create.json",
    "deployment-create-dry-run.json",
    "deployment-update-image.json",
    "statefulset-create.json",
    "daemonset-create.json",
    "cronjob-create.json",
    "job-create-by-cronjob.json",
];

/// The fixtures that need no verdict.
const UNJUDGED: [&str; 5] = [
    "deployment-finalizer-removed.json",
    "deployment-being-deleted.json",
    "replicaset-scale-down.json",
    "pod-delete.json",
    "configmap-create.json",
];

#[test]
fn fixtures_with_the_backend_down() {
    let s = setup_without_backend(&[]);
    block_on(async {
        // A scale-down, a finalizer, a deletion: not held up by the outage.
        for name in UNJUDGED {
            let r = review(&s, name, None).await;
            assert!(allowed(&r), "{name}: {r}");
            assert!(!audit(&r, "not-judged").is_empty(), "{name}");
        }
        for name in PINNED {
            let r = review(&s, name, None).await;
            assert!(!allowed(&r), "{name}: {r}");
            assert_eq!(audit(&r, "verdict-source"), "fail-closed", "{name}");
            let namespace = fixture(name)["request"]["namespace"]
                .as_str()
                .unwrap()
                .to_owned();
            for line in message(&r).lines() {
                assert!(
                    line.ends_with(&format!(
                        "could not be verified; namespace {namespace} fails closed (the Scanner backend is unreachable)"
                    )),
                    "{name}: {line}"
                );
            }
            assert!(
                audit(&r, "backend-error").contains("Connection refused"),
                "{name}: {r}"
            );
        }
        let r = review(&s, "pod-create-by-replicaset.json", None).await;
        assert_eq!(
            message(&r),
            format!(
                "init container \"migrate\": image registry.example/shop/migrate@{MIGRATE} could not be verified; namespace default fails closed (the Scanner backend is unreachable)\n\
                 container \"app\": image registry.example/shop/app@{APP} could not be verified; namespace default fails closed (the Scanner backend is unreachable)"
            )
        );
        assert_eq!(
            audit(&r, "digests"),
            format!("{MIGRATE}=unverified,{APP}=unverified")
        );
        let metrics = s.webhook().metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_decisions_total{decision=\"deny\"}"
            ),
            10.0,
            "{metrics}"
        );
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_backend_errors_total{reason=\"unreachable\"}"
            ),
            10.0,
            "{metrics}"
        );
        assert_eq!(metric(&metrics, "zastava_admission_fail_open_total"), 0.0);
    });
}

#[test]
fn fixtures_in_a_namespace_that_fails_open() {
    let s = setup_without_backend(&["--fail-open-namespace", "dev"]);
    block_on(async {
        for name in PINNED {
            let r = review(&s, name, Some("dev")).await;
            assert!(allowed(&r), "{name}: {r}");
            assert_eq!(audit(&r, "verdict-source"), "fail-open", "{name}");
            assert!(!audit(&r, "failed-open").is_empty(), "{name}");
            for warning in warnings(&r) {
                assert!(
                    warning.ends_with(
                        "admitted without a verdict; namespace dev fails open (the Scanner backend is unreachable)"
                    ),
                    "{name}: {warning}"
                );
            }
            assert_eq!(
                s.webhook().decision_line(name)["decision"],
                "warn",
                "{name}"
            );
        }
        for name in UNJUDGED {
            let r = review(&s, name, Some("dev")).await;
            assert!(allowed(&r), "{name}");
            assert_eq!(
                response(&r)["auditAnnotations"].get("failed-open"),
                None,
                "{name}"
            );
        }
        // Denied for its tag-only image: it was not admitted, so it claims nothing.
        let r = review(&s, "pod-ephemeral-debug-container.json", Some("dev")).await;
        assert!(!allowed(&r));
        assert_eq!(warnings(&r), Vec::<String>::new());
        assert_eq!(response(&r)["auditAnnotations"].get("failed-open"), None);
        assert_eq!(audit(&r, "verdict-source"), "policy");
        let metrics = s.webhook().metrics().await;
        assert_eq!(
            metric(&metrics, "zastava_admission_fail_open_total"),
            PINNED.len() as f64,
            "{metrics}"
        );
    });
}

#[test]
fn with_judge_every_update_unchanged_updates_and_deletions_are_judged() {
    let s = setup(&["--judge-every-update"]);
    block_on(async {
        for name in [
            "deployment-finalizer-removed.json",
            "deployment-being-deleted.json",
        ] {
            let r = review(&s, name, None).await;
            assert!(!allowed(&r), "{name}: {r}");
            assert_eq!(
                message(&r),
                "container \"app\": image registry.example/shop/legacy:2.1 is not pinned by digest (use <image>@sha256:<digest>)"
            );
        }
        let r = review(&s, "replicaset-scale-down.json", None).await;
        assert!(allowed(&r));
        assert_eq!(audit(&r, "verdict-source"), "backend");
        assert_eq!(s.backend.policy_requests().len(), 1);
        let metrics = s.webhook.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_not_judged_total{reason=\"unchanged_images\"}"
            ),
            0.0
        );
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_not_judged_total{reason=\"being_deleted\"}"
            ),
            0.0
        );
    });
}

#[test]
fn an_object_being_deleted_is_not_judged_even_when_its_images_change() {
    let s = setup_without_backend(&[]);
    block_on(async {
        let mut request = fixture("deployment-being-deleted.json");
        request["request"]["object"]["spec"]["template"]["spec"]["containers"][0]["image"] =
            "registry.example/shop/legacy:2.2".into();
        let (_, r) = send(&s, &request).await;
        assert!(allowed(&r), "{r}");
        assert_eq!(
            audit(&r, "not-judged"),
            "the object is being deleted (deletionTimestamp is set)"
        );
        // Without it, the same change is judged (and, unpinned, denied).
        request["request"]["object"]["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("deletionTimestamp");
        let (_, r) = send(&s, &request).await;
        assert!(!allowed(&r), "{r}");
    });
}
