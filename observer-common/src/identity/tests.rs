use super::*;

fn pod(name: &str, labels: &[(&str, &str)]) -> PodRef {
    PodRef {
        name: name.into(),
        namespace: "shop".into(),
        uid: "0b6a6c1e-2f7c-4e1e-9d5e-1f2a3b4c5d6e".into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    }
}

#[test]
fn labelled_identity_is_taken_as_is() {
    let p = pod(
        "api-7d4b9c8f6d-x2x7k",
        &[
            (labels::ID, "payments-api"),
            (labels::TENANT, "acme"),
            (labels::PROJECT, "checkout"),
            (labels::COMPONENT, "api"),
            (labels::CHANNEL, "stable"),
        ],
    );
    let (id, errors) = WorkloadIdentity::of_pod(&p);
    assert!(errors.is_empty());
    assert_eq!(
        id,
        WorkloadIdentity {
            id: "payments-api".into(),
            id_source: IdSource::Label,
            tenant: Some("acme".into()),
            project: Some("checkout".into()),
            component: Some("api".into()),
            channel: Some("stable".into()),
        }
    );
}

#[test]
fn derived_ids_strip_controller_suffixes() {
    let derived =
        |name: &str, labels: &[(&str, &str)]| WorkloadIdentity::of_pod(&pod(name, labels)).0;
    let d = derived(
        "api-7d4b9c8f6d-x2x7k",
        &[(labels::POD_TEMPLATE_HASH, "7d4b9c8f6d")],
    );
    assert_eq!(
        (d.id.as_str(), d.id_source),
        ("shop/api", IdSource::Derived)
    );
    assert_eq!(
        derived(
            "db-2",
            &[
                (labels::STATEFULSET_POD_NAME, "db-2"),
                (labels::CONTROLLER_REVISION_HASH, "db-5f")
            ]
        )
        .id,
        "shop/db"
    );
    assert_eq!(
        derived("agent-q8wzn", &[(labels::CONTROLLER_REVISION_HASH, "6b7c")]).id,
        "shop/agent"
    );
    assert_eq!(
        derived("migrate-x7k2p", &[(labels::JOB_NAME, "migrate")]).id,
        "shop/migrate"
    );
    assert_eq!(
        derived(
            "report-29012345-abcde",
            &[(labels::BATCH_JOB_NAME, "report-29012345")]
        )
        .id,
        "shop/report"
    );
    // A bare pod keeps its name, even when it looks like it has a suffix.
    assert_eq!(derived("debug-x2x7k", &[]).id, "shop/debug-x2x7k");
    // A hash label that does not match the name: only the random suffix goes.
    assert_eq!(
        derived("web-zzz-x2x7k", &[(labels::POD_TEMPLATE_HASH, "abc")]).id,
        "shop/web-zzz"
    );
    // A suffix with characters Kubernetes never generates is not stripped.
    assert_eq!(
        derived("agent-aeiou", &[(labels::CONTROLLER_REVISION_HASH, "1")]).id,
        "shop/agent-aeiou"
    );
}

#[test]
fn invalid_labels_are_reported_and_do_not_poison_the_identity() {
    let long = "x".repeat(64);
    let p = pod(
        "web",
        &[
            (labels::ID, "bad/id"),
            (labels::TENANT, &long),
            (labels::CHANNEL, "-edge"),
        ],
    );
    let (id, errors) = WorkloadIdentity::of_pod(&p);
    assert_eq!(id.id, "shop/web");
    assert_eq!(id.id_source, IdSource::Derived);
    assert_eq!(id.tenant, None);
    assert_eq!(id.channel, None);
    let labels_with_errors: Vec<&str> = errors.iter().map(|e| e.label).collect();
    assert_eq!(
        labels_with_errors,
        [labels::ID, labels::TENANT, labels::CHANNEL]
    );
    assert_eq!(
        errors[0].to_string(),
        "label stellaops.workload/id=\"bad/id\": may only contain letters, digits, '-', '_' and '.'"
    );
    assert_eq!(errors[1].problem, "is longer than 63 characters");
    assert_eq!(
        errors[2].problem,
        "must start and end with a letter or digit"
    );
    assert_eq!(validate_label_value(""), Err("is empty"));
}

#[test]
fn image_references() {
    let digest = "sha256:".to_owned() + &"ab".repeat(32);
    let r = ImageReference::parse(&format!("registry.local:5000/team/app:1.2@{digest}")).unwrap();
    assert_eq!(r.repository, "registry.local:5000/team/app");
    assert_eq!(r.tag.as_deref(), Some("1.2"));
    assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
    assert!(r.is_pinned());
    let r = ImageReference::parse("registry.local:5000/app").unwrap();
    assert_eq!(
        (r.repository.as_str(), r.tag.as_deref(), r.is_pinned()),
        ("registry.local:5000/app", None, false)
    );
    let r = ImageReference::parse("busybox:latest").unwrap();
    assert_eq!(r.tag.as_deref(), Some("latest"));
    assert_eq!(ImageReference::parse("app@sha256:short"), None);
    assert_eq!(ImageReference::parse(""), None);
    assert_eq!(ImageReference::parse("app:"), None);
    assert_eq!(ImageReference::parse("a b"), None);
    assert!(is_digest(&digest));
    assert!(!is_digest(&digest.to_uppercase()));
}

fn object_id(kind: ObjectKind, name: ObjectName<'_>, labels: &[(&str, &str)]) -> String {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    let object = ObjectRef {
        kind,
        name,
        namespace: "default",
        labels: &labels,
    };
    let (identity, errors) = WorkloadIdentity::of_object(&object);
    assert!(errors.is_empty());
    assert_eq!(identity.id_source, IdSource::Derived);
    identity.id
}

#[test]
fn controllers_are_named_by_the_id_their_pods_get() {
    use ObjectName::{Generated, Given};
    let hash = [(labels::POD_TEMPLATE_HASH, "58d59c69bf")];
    // A Deployment's ReplicaSet, and the pods it makes (named at admission, or not yet).
    assert_eq!(
        object_id(ObjectKind::ReplicaSet, Given("test-58d59c69bf"), &hash),
        "default/test"
    );
    assert_eq!(
        object_id(ObjectKind::Pod, Given("test-58d59c69bf-x7k2p"), &hash),
        "default/test"
    );
    assert_eq!(
        object_id(ObjectKind::Pod, Generated("test-58d59c69bf-"), &hash),
        "default/test"
    );
    assert_eq!(
        object_id(ObjectKind::Deployment, Given("test"), &[]),
        "default/test"
    );
    // A bare ReplicaSet: itself, as its pods `web-zzz-<random>` are.
    let other = [(labels::POD_TEMPLATE_HASH, "abc")];
    assert_eq!(
        object_id(ObjectKind::ReplicaSet, Given("web-zzz"), &other),
        "default/web-zzz"
    );
    assert_eq!(
        object_id(ObjectKind::Pod, Given("web-zzz-x2x7k"), &other),
        "default/web-zzz"
    );
    assert_eq!(
        object_id(ObjectKind::ReplicaSet, Given("web-58d59c69bf"), &[]),
        "default/web-58d59c69bf"
    );
    // Jobs a CronJob makes, and their pods: the CronJob.
    let job = [(labels::JOB_NAME, "nightly-29012345")];
    assert_eq!(
        object_id(ObjectKind::Job, Given("nightly-29012345"), &job),
        "default/nightly"
    );
    assert_eq!(
        object_id(ObjectKind::Pod, Generated("nightly-29012345-"), &job),
        "default/nightly"
    );
    assert_eq!(
        object_id(ObjectKind::CronJob, Given("nightly"), &[]),
        "default/nightly"
    );
    assert_eq!(
        object_id(ObjectKind::Job, Given("migrate"), &[]),
        "default/migrate"
    );
    // Sets are themselves; a DaemonSet's new pod is its set.
    assert_eq!(
        object_id(ObjectKind::StatefulSet, Given("db"), &[]),
        "default/db"
    );
    assert_eq!(
        object_id(ObjectKind::DaemonSet, Given("node-agent"), &[]),
        "default/node-agent"
    );
    let revision = [(labels::CONTROLLER_REVISION_HASH, "6b7c9d")];
    assert_eq!(
        object_id(ObjectKind::Pod, Generated("node-agent-"), &revision),
        "default/node-agent"
    );
}

#[test]
fn an_object_not_named_yet_is_not_given_another_workloads_id() {
    use ObjectName::Generated;
    // A bare pod's id is its whole name, which the API server has not chosen yet: the id
    // ends in '-', which no object name does.
    assert_eq!(
        object_id(ObjectKind::Pod, Generated("debug-"), &[]),
        "default/debug-"
    );
    assert_eq!(
        object_id(ObjectKind::Pod, Generated("debug"), &[]),
        "default/debug-"
    );
    assert_eq!(
        object_id(ObjectKind::Deployment, Generated("api-"), &[]),
        "default/api-"
    );
}

#[test]
fn a_pod_is_derived_the_same_through_either_entry() {
    for (name, labels) in [
        (
            "api-7d4b9c8f6d-x2x7k",
            &[(labels::POD_TEMPLATE_HASH, "7d4b9c8f6d")][..],
        ),
        ("db-2", &[(labels::STATEFULSET_POD_NAME, "db-2")][..]),
        ("debug-x2x7k", &[][..]),
    ] {
        let p = pod(name, labels);
        assert_eq!(
            WorkloadIdentity::of_pod(&p),
            WorkloadIdentity::of_object(&ObjectRef::pod(&p))
        );
        assert_eq!(derive_id(&p), derive_object_id(&ObjectRef::pod(&p)));
    }
    assert_eq!(
        ObjectKind::from_api("ReplicaSet"),
        Some(ObjectKind::ReplicaSet)
    );
    assert_eq!(ObjectKind::from_api("ConfigMap"), None);
    for kind in [
        "Pod",
        "ReplicaSet",
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "Job",
        "CronJob",
    ] {
        assert_eq!(
            ObjectKind::from_api(kind).map(ObjectKind::as_str),
            Some(kind)
        );
    }
}

#[test]
fn docker_containers_are_named_by_label_then_compose_then_name() {
    let of = |name: &str, labels: &[(&str, &str)]| {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        WorkloadIdentity::of_container(name, &labels)
    };
    let (id, errors) = of(
        "payments",
        &[
            (labels::ID, "payments-api"),
            (labels::TENANT, "acme"),
            (labels::COMPOSE_PROJECT, "shop"),
            (labels::COMPOSE_SERVICE, "api"),
        ],
    );
    assert!(errors.is_empty());
    assert_eq!(
        (id.id.as_str(), id.id_source, id.tenant.as_deref()),
        ("payments-api", IdSource::Label, Some("acme"))
    );
    let (id, _) = of(
        "shop_api_2",
        &[
            (labels::COMPOSE_PROJECT, "shop"),
            (labels::COMPOSE_SERVICE, "api"),
        ],
    );
    assert_eq!(
        (id.id.as_str(), id.id_source),
        ("shop/api", IdSource::Derived)
    );
    let (id, _) = of("web", &[(labels::COMPOSE_PROJECT, "shop")]);
    assert_eq!(id.id, "docker:web");
    // A bad id label is reported; the derived id stands in for it.
    let (id, errors) = of(
        "shop_api_1",
        &[
            (labels::ID, "bad id"),
            (labels::COMPOSE_PROJECT, "shop"),
            (labels::COMPOSE_SERVICE, "api"),
        ],
    );
    assert_eq!(
        (id.id.as_str(), id.id_source),
        ("shop/api", IdSource::Derived)
    );
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].label, labels::ID);
}
