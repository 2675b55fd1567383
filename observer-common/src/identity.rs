//! The workload identity contract shared by the observer and the admission webhook.
//!
//! A workload is named by the `stellaops.workload/*` labels of its pod. When the id label
//! is absent, a stable id is derived from the namespace and the pod name without the
//! suffixes Kubernetes controllers add, and marked `derived`, so that every replica of a
//! Deployment shares one id across restarts and rollouts.

use std::{collections::BTreeMap, fmt, string::String, vec::Vec};

/// The identity labels (also accepted as annotations).
pub mod labels {
    pub const ID: &str = "stellaops.workload/id";
    pub const TENANT: &str = "stellaops.workload/tenant";
    pub const PROJECT: &str = "stellaops.workload/project";
    pub const COMPONENT: &str = "stellaops.workload/component";
    pub const CHANNEL: &str = "stellaops.workload/channel";

    /// Labels Kubernetes controllers set on the pods they create.
    pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
    pub const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";
    pub const STATEFULSET_POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
    pub const JOB_NAME: &str = "job-name";
    pub const BATCH_JOB_NAME: &str = "batch.kubernetes.io/job-name";

    /// Labels Docker Compose sets on the containers of a project.
    pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
    pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";
}

/// How a workload id was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdSource {
    /// From the `stellaops.workload/id` label.
    Label,
    /// Derived from namespace and pod name.
    Derived,
}

impl IdSource {
    pub const fn as_str(self) -> &'static str {
        match self {
            IdSource::Label => "label",
            IdSource::Derived => "derived",
        }
    }
}

/// A label whose value breaks the contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityError {
    pub label: &'static str,
    pub value: String,
    pub problem: &'static str,
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "label {}={:?}: {}", self.label, self.value, self.problem)
    }
}

impl std::error::Error for IdentityError {}

/// Who a workload is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadIdentity {
    pub id: String,
    pub id_source: IdSource,
    pub tenant: Option<String>,
    pub project: Option<String>,
    pub component: Option<String>,
    pub channel: Option<String>,
}

/// A pod as the runtime (or the API server) describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
}

impl WorkloadIdentity {
    /// The identity of a pod. Invalid identity labels are reported in the second value and
    /// otherwise ignored: a bad `id` label falls back to the derived id, a bad optional
    /// label is left out. The identity itself is always usable.
    pub fn of_pod(pod: &PodRef) -> (WorkloadIdentity, Vec<IdentityError>) {
        let mut errors = Vec::new();
        let mut valid = |label: &'static str| -> Option<String> {
            let value = pod.labels.get(label)?;
            match validate_label_value(value) {
                Ok(()) => Some(value.clone()),
                Err(problem) => {
                    errors.push(IdentityError {
                        label,
                        value: value.clone(),
                        problem,
                    });
                    None
                }
            }
        };
        let labelled = valid(labels::ID);
        let tenant = valid(labels::TENANT);
        let project = valid(labels::PROJECT);
        let component = valid(labels::COMPONENT);
        let channel = valid(labels::CHANNEL);
        let (id, id_source) = match labelled {
            Some(id) => (id, IdSource::Label),
            None => (derive_id(pod), IdSource::Derived),
        };
        (
            WorkloadIdentity {
                id,
                id_source,
                tenant,
                project,
                component,
                channel,
            },
            errors,
        )
    }
}

impl WorkloadIdentity {
    /// The identity of a Docker container that no Kubernetes pod owns, from its labels:
    /// the `stellaops.workload/*` labels as on a pod; without a valid id label the id is
    /// derived, `<project>/<service>` for a Compose service, else `docker:<name>`.
    pub fn of_container(
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> (WorkloadIdentity, Vec<IdentityError>) {
        let as_pod = PodRef {
            name: String::from(name),
            namespace: String::new(),
            uid: String::new(),
            labels: labels.clone(),
        };
        let (mut identity, errors) = WorkloadIdentity::of_pod(&as_pod);
        if identity.id_source == IdSource::Derived {
            identity.id = derive_container_id(name, labels);
        }
        (identity, errors)
    }
}

/// The Compose project and service of a container, when it has both.
pub fn compose_service(labels: &BTreeMap<String, String>) -> Option<(&str, &str)> {
    let project = labels.get(labels::COMPOSE_PROJECT)?;
    let service = labels.get(labels::COMPOSE_SERVICE)?;
    (!project.is_empty() && !service.is_empty()).then_some((project.as_str(), service.as_str()))
}

/// `<project>/<service>` for a Compose container (every replica and every re-creation
/// shares it), else `docker:<name>`.
pub fn derive_container_id(name: &str, labels: &BTreeMap<String, String>) -> String {
    match compose_service(labels) {
        Some((project, service)) => std::format!("{project}/{service}"),
        None => std::format!("docker:{name}"),
    }
}

/// Kubernetes label value syntax, non-empty: at most 63 characters of `[A-Za-z0-9._-]`,
/// starting and ending with an alphanumeric.
pub fn validate_label_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("is empty");
    }
    if value.len() > 63 {
        return Err("is longer than 63 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may only contain letters, digits, '-', '_' and '.'");
    }
    let edges_ok = value
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if !edges_ok {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

/// Characters of the random suffixes Kubernetes generates (no vowels, no 0/1/3).
const GENERATED_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn is_generated_suffix(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| GENERATED_ALPHABET.contains(&b))
}

/// `<namespace>/<workload name>`: the pod name without the suffixes its controller added.
pub fn derive_id(pod: &PodRef) -> String {
    std::format!("{}/{}", pod.namespace, workload_name(pod))
}

fn workload_name(pod: &PodRef) -> &str {
    let name = pod.name.as_str();
    let label = |key: &str| pod.labels.get(key).map(String::as_str);

    // Deployment → ReplicaSet `<name>-<pod-template-hash>` → pod `<rs>-<5 random>`.
    if let Some(hash) = label(labels::POD_TEMPLATE_HASH) {
        if let Some((rest, suffix)) = name.rsplit_once('-') {
            if is_generated_suffix(suffix, 5) {
                if let Some(base) = rest.strip_suffix(hash).and_then(|r| r.strip_suffix('-')) {
                    return base;
                }
                // A bare ReplicaSet (no Deployment): strip only the random suffix.
                return rest;
            }
        }
    }
    // StatefulSet pods are `<set>-<ordinal>`; the set is the workload.
    if label(labels::STATEFULSET_POD_NAME) == Some(name) {
        if let Some((base, ordinal)) = name.rsplit_once('-') {
            if !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()) {
                return base;
            }
        }
    }
    // Job pods carry the job's name; CronJob jobs are `<cronjob>-<scheduled minute>`.
    if let Some(job) = label(labels::BATCH_JOB_NAME).or_else(|| label(labels::JOB_NAME)) {
        if let Some((base, minute)) = job.rsplit_once('-') {
            if minute.len() >= 8 && minute.bytes().all(|b| b.is_ascii_digit()) {
                return base;
            }
        }
        return job;
    }
    // DaemonSet pods are `<set>-<5 random>`.
    if label(labels::CONTROLLER_REVISION_HASH).is_some() {
        if let Some((base, suffix)) = name.rsplit_once('-') {
            if is_generated_suffix(suffix, 5) {
                return base;
            }
        }
    }
    name
}

/// Which digest an image reference carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestKind {
    /// The registry manifest digest (`repo@sha256:...`): what a registry and a scanner key on.
    Manifest,
    /// The image configuration digest (the local "image id"): not resolvable at a registry.
    Config,
    /// No digest is known.
    Unknown,
}

impl DigestKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            DigestKind::Manifest => "manifest",
            DigestKind::Config => "config",
            DigestKind::Unknown => "unknown",
        }
    }
}

/// A parsed image reference: `[registry/]repository[:tag][@algorithm:hex]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReference {
    /// Everything before the tag and digest (registry and path).
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl ImageReference {
    /// Parses a reference; `None` when it is not one (empty, or a malformed digest).
    pub fn parse(reference: &str) -> Option<ImageReference> {
        let reference = reference.trim();
        if reference.is_empty() || reference.contains(char::is_whitespace) {
            return None;
        }
        let (name, digest) = match reference.split_once('@') {
            Some((name, digest)) => {
                if !is_digest(digest) {
                    return None;
                }
                (name, Some(String::from(digest)))
            }
            None => (reference, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a registry port).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (
                &name[..last_slash + i],
                Some(String::from(&name[last_slash + i + 1..])),
            ),
            None => (name, None),
        };
        if repository.is_empty() || tag.as_deref() == Some("") {
            return None;
        }
        Some(ImageReference {
            repository: String::from(repository),
            tag,
            digest,
        })
    }

    /// Pinned by digest (`@sha256:...`), so the bytes that run cannot change under the name.
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some()
    }
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn is_digest(value: &str) -> bool {
    value.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn image_references() {
        let digest = "sha256:".to_owned() + &"ab".repeat(32);
        let r =
            ImageReference::parse(&format!("registry.local:5000/team/app:1.2@{digest}")).unwrap();
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
}
