use super::*;
use serde_json::{json, Value};

/// A fixture of `tests/fixtures/admission/` (requests as an API server sends them).
macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../../../../tests/fixtures/admission/", $name))
    };
}

fn parse(text: &str) -> Review {
    Review::parse(text.as_bytes()).unwrap()
}

fn workload(review: &Review) -> &WorkloadUnderReview {
    match &review.subject {
        Subject::Workload(w) => w,
        other => panic!("{} {}: {other:?}", review.kind, review.name),
    }
}

#[test]
fn every_workload_fixture_gives_its_identity_and_images() {
    // (fixture, kind, namespace, name, operation, workload id, images, deleting, adds no image)
    let cases = [
        (
            fixture!("pod-create-by-replicaset.json"),
            "Pod",
            "default",
            "test-58d59c69bf-x7k2p",
            "CREATE",
            "default/test",
            2,
            false,
            false,
        ),
        (
            fixture!("pod-ephemeral-debug-container.json"),
            "Pod",
            "default",
            "test-58d59c69bf-x7k2p",
            "UPDATE",
            "default/test",
            3,
            false,
            false,
        ),
        (
            fixture!("deployment-create.json"),
            "Deployment",
            "default",
            "test",
            "CREATE",
            "default/test",
            1,
            false,
            false,
        ),
        (
            fixture!("deployment-create-dry-run.json"),
            "Deployment",
            "default",
            "test",
            "CREATE",
            "default/test",
            1,
            false,
            false,
        ),
        (
            fixture!("deployment-update-image.json"),
            "Deployment",
            "default",
            "test",
            "UPDATE",
            "default/test",
            1,
            false,
            false,
        ),
        (
            fixture!("deployment-finalizer-removed.json"),
            "Deployment",
            "default",
            "legacy",
            "UPDATE",
            "default/legacy",
            1,
            false,
            true,
        ),
        (
            fixture!("deployment-being-deleted.json"),
            "Deployment",
            "default",
            "legacy",
            "UPDATE",
            "default/legacy",
            1,
            true,
            true,
        ),
        (
            fixture!("replicaset-create.json"),
            "ReplicaSet",
            "default",
            "test-58d59c69bf",
            "CREATE",
            "default/test",
            2,
            false,
            false,
        ),
        (
            fixture!("replicaset-scale-down.json"),
            "ReplicaSet",
            "default",
            "test-58d59c69bf",
            "UPDATE",
            "default/test",
            2,
            false,
            true,
        ),
        (
            fixture!("statefulset-create.json"),
            "StatefulSet",
            "data",
            "db",
            "CREATE",
            "orders-db",
            1,
            false,
            false,
        ),
        (
            fixture!("daemonset-create.json"),
            "DaemonSet",
            "monitoring",
            "node-agent",
            "CREATE",
            "monitoring/node-agent",
            1,
            false,
            false,
        ),
        (
            fixture!("cronjob-create.json"),
            "CronJob",
            "batch",
            "nightly",
            "CREATE",
            "batch/nightly",
            1,
            false,
            false,
        ),
        (
            fixture!("job-create-by-cronjob.json"),
            "Job",
            "batch",
            "nightly-29933445",
            "CREATE",
            "batch/nightly",
            1,
            false,
            false,
        ),
    ];
    for (text, kind, namespace, name, operation, id, images, deleting, adds_no_image) in cases {
        let review = parse(text);
        let what = format!("{kind} {name}");
        assert_eq!(
            (
                review.kind.as_str(),
                review.namespace.as_str(),
                review.name.as_str(),
                review.operation.as_str()
            ),
            (kind, namespace, name, operation),
            "{what}"
        );
        let w = workload(&review);
        assert_eq!(w.identity.id, id, "{what}");
        assert_eq!(w.images.len(), images, "{what}");
        assert_eq!(w.deleting, deleting, "{what}");
        assert_eq!(w.adds_no_image(), adds_no_image, "{what}");
    }
}

#[test]
fn the_request_details_are_read() {
    let debug = parse(fixture!("pod-ephemeral-debug-container.json"));
    assert_eq!(debug.uid, "a3e7c1f9-4b2d-4a6e-8c0f-9e1b3d5f7a26");
    assert_eq!(debug.sub_resource.as_deref(), Some("ephemeralcontainers"));
    assert!(!debug.dry_run);
    let images: Vec<(&str, &str)> = workload(&debug)
        .images
        .iter()
        .map(|i| (i.kind.as_str(), i.image.as_str()))
        .collect();
    assert_eq!(images[2], ("ephemeral container", "busybox:1.36"));
    let dry = parse(fixture!("deployment-create-dry-run.json"));
    assert!(dry.dry_run);
    assert_eq!(dry.sub_resource, None);
    let statefulset = parse(fixture!("statefulset-create.json"));
    let identity = &workload(&statefulset).identity;
    assert_eq!(identity.tenant.as_deref(), Some("acme"));
    assert_eq!(identity.component.as_deref(), Some("database"));
}

#[test]
fn deletes_and_other_kinds_have_nothing_to_judge() {
    assert_eq!(
        parse(fixture!("pod-delete.json")).subject,
        Subject::Nothing(NotJudged::Delete)
    );
    assert_eq!(
        parse(fixture!("configmap-create.json")).subject,
        Subject::Nothing(NotJudged::NotAWorkload)
    );
}

fn edited(text: &str, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut review: Value = serde_json::from_str(text).unwrap();
    edit(&mut review);
    serde_json::to_vec(&review).unwrap()
}

#[test]
fn a_workload_that_cannot_be_read_is_answered_not_refused() {
    let pod = fixture!("pod-create-by-replicaset.json");
    let unreadable = |body: Vec<u8>| match Review::parse(&body).unwrap().subject {
        Subject::Unreadable(why) => why,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        unreadable(edited(pod, |r| r["request"]["object"]["spec"]
            ["containers"] = json!({"app": 1}))),
        "spec.containers is not a list"
    );
    assert_eq!(
        unreadable(edited(pod, |r| r["request"]["object"] = Value::Null)),
        "a CREATE of a Pod without request.object"
    );
    assert_eq!(
        unreadable(edited(pod, |r| r["request"]["object"] = json!("pod"))),
        "request.object is a string, not a Pod"
    );
    assert_eq!(
        unreadable(edited(fixture!("deployment-create.json"), |r| {
            r["request"]["object"]["spec"]
                .as_object_mut()
                .unwrap()
                .remove("template");
        })),
        "the Deployment has no spec.template"
    );
    // An old object that cannot be read: the update is judged like a create.
    let review = Review::parse(&edited(fixture!("replicaset-scale-down.json"), |r| {
        r["request"]["oldObject"]["spec"] = json!(null);
    }))
    .unwrap();
    assert!(!workload(&review).adds_no_image());
}

#[test]
fn bodies_that_are_not_v1_reviews_are_named_errors() {
    assert!(matches!(
        Review::parse(b"{not json"),
        Err(ReviewError::NotJson(_))
    ));
    assert_eq!(Review::parse(b"null"), Err(ReviewError::NotAReview("null")));
    assert_eq!(
        Review::parse(b"null").unwrap_err().to_string(),
        "the body is not an AdmissionReview: it is null, not a JSON object"
    );
    assert_eq!(
        Review::parse(b"[1]"),
        Err(ReviewError::NotAReview("an array"))
    );
    assert_eq!(
        Review::parse(fixture!("pod-create-v1beta1.json").as_bytes()),
        Err(ReviewError::ApiVersion("admission.k8s.io/v1beta1".into()))
    );
    let pod = fixture!("pod-create-by-replicaset.json");
    assert_eq!(
        Review::parse(&edited(pod, |r| r["request"]["uid"] = "".into())),
        Err(ReviewError::NoUid)
    );
    assert_eq!(
        Review::parse(&edited(pod, |r| r["kind"] = "AdmissionResponse".into())),
        Err(ReviewError::Kind("AdmissionResponse".into()))
    );
    assert_eq!(
        Review::parse(&edited(pod, |r| r["request"] = Value::Null)),
        Err(ReviewError::NoRequest)
    );
}

#[test]
fn the_uid_of_a_body_that_is_refused_is_read_when_it_can_be() {
    assert_eq!(
        Review::readable_uid(fixture!("pod-create-v1beta1.json").as_bytes()).as_deref(),
        Some("8c0e2a4c-6d8f-4c2e-b4a6-c8e0a2c4e6a7")
    );
    let pod = fixture!("pod-create-by-replicaset.json");
    for body in [
        edited(pod, |r| r["request"]["uid"] = "".into()),
        edited(pod, |r| r["request"]["uid"] = 7.into()),
        edited(pod, |r| r["request"] = Value::Null),
        b"{not json".to_vec(),
        b"null".to_vec(),
        b"[1]".to_vec(),
    ] {
        assert_eq!(
            Review::readable_uid(&body),
            None,
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
}

#[test]
fn the_reply_echoes_the_uid_and_explains_a_denial() {
    let d = Decision {
        allowed: false,
        message: Some("app: denied".into()),
        warnings: vec!["w".into()],
        audit: [("verdict-source".to_owned(), "backend".to_owned())].into(),
        workload: Some("shop/web".into()),
        details: vec!["app: denied".into(), "w".into()],
    };
    assert_eq!(d.label(), "deny");
    let expected = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": "u-1",
                "allowed": false,
                "status": {"code": 403, "reason": "Forbidden", "message": "app: denied"},
                "warnings": ["w"],
                "auditAnnotations": {"verdict-source": "backend"},
        }
    });
    // The bytes are those of the value, members in the order of their names.
    assert_eq!(d.reply_bytes("u-1"), serde_json::to_vec(&expected).unwrap());
    let skipped = Decision::not_judged(NotJudged::UnchangedImages);
    assert_eq!(skipped.label(), "allow");
    let expected = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": "u-2", "allowed": true, "auditAnnotations": {
            "not-judged": "the update adds no image to those oldObject has"}}});
    assert_eq!(
        skipped.reply_bytes("u-2"),
        serde_json::to_vec(&expected).unwrap()
    );
    // Allowed with warnings and nothing to audit: no status, no annotations.
    let warned = Decision {
        allowed: true,
        warnings: vec!["tag only: \"quoted\"".into()],
        ..Decision::default()
    };
    assert_eq!(
        String::from_utf8(warned.reply_bytes("u-3")).unwrap(),
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"allowed":true,"uid":"u-3","warnings":["tag only: \"quoted\""]}}"#
    );
}
