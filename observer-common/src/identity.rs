//! The workload identity contract shared by the observer and the admission webhook.
//!
//! A workload is named by the `stellaops.workload/*` labels of its pod. When the id label
//! is absent, a stable id is derived from the namespace and the pod name without the
//! suffixes Kubernetes controllers add, and marked `derived`, so that every replica of a
//! Deployment shares one id across restarts and rollouts.
//!
//! The observer derives it from running pods; the admission webhook from the objects the
//! API server asks about (pods, and the controllers whose pod templates make pods). Both go
//! through [`WorkloadIdentity::of_object`], which names a controller by the id its pods will
//! have, so an admission and the events of what it admitted carry one id.

mod image;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, fmt, string::String, vec::Vec};

pub use image::{is_digest, DigestKind, ImageReference};

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

/// A pod as the runtime describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
}

/// The kinds of object a workload identity is derived for: pods, and the controllers whose
/// pod templates make them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Pod,
    ReplicaSet,
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
}

impl ObjectKind {
    /// The kind as the API names it (`request.kind.kind`); `None` for kinds that run nothing.
    pub fn from_api(kind: &str) -> Option<ObjectKind> {
        Some(match kind {
            "Pod" => ObjectKind::Pod,
            "ReplicaSet" => ObjectKind::ReplicaSet,
            "Deployment" => ObjectKind::Deployment,
            "StatefulSet" => ObjectKind::StatefulSet,
            "DaemonSet" => ObjectKind::DaemonSet,
            "Job" => ObjectKind::Job,
            "CronJob" => ObjectKind::CronJob,
            _ => return None,
        })
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Pod => "Pod",
            ObjectKind::ReplicaSet => "ReplicaSet",
            ObjectKind::Deployment => "Deployment",
            ObjectKind::StatefulSet => "StatefulSet",
            ObjectKind::DaemonSet => "DaemonSet",
            ObjectKind::Job => "Job",
            ObjectKind::CronJob => "CronJob",
        }
    }
}

/// How an object is named when its identity is derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectName<'a> {
    /// `metadata.name`.
    Given(&'a str),
    /// Only `metadata.generateName`, as written (usually ending in `-`): the API server has
    /// not chosen the rest of the name yet.
    Generated(&'a str),
}

/// An object whose workload identity is wanted: a pod, or a controller and the labels of its
/// pod template (the labels its pods will carry).
#[derive(Clone, Copy, Debug)]
pub struct ObjectRef<'a> {
    pub kind: ObjectKind,
    pub name: ObjectName<'a>,
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl<'a> ObjectRef<'a> {
    /// A pod as the runtime describes it.
    pub fn pod(pod: &'a PodRef) -> Self {
        ObjectRef {
            kind: ObjectKind::Pod,
            name: ObjectName::Given(&pod.name),
            namespace: &pod.namespace,
            labels: &pod.labels,
        }
    }

    fn label(&self, key: &str) -> Option<&'a str> {
        self.labels.get(key).map(String::as_str)
    }
}

impl WorkloadIdentity {
    /// The identity of a pod. Invalid identity labels are reported in the second value and
    /// otherwise ignored: a bad `id` label falls back to the derived id, a bad optional
    /// label is left out. The identity itself is always usable.
    pub fn of_pod(pod: &PodRef) -> (WorkloadIdentity, Vec<IdentityError>) {
        Self::of_object(&ObjectRef::pod(pod))
    }

    /// The identity of a pod or of a controller's pod template, as [`Self::of_pod`] reports
    /// it for the pods the object makes.
    pub fn of_object(object: &ObjectRef<'_>) -> (WorkloadIdentity, Vec<IdentityError>) {
        let mut errors = Vec::new();
        let mut valid = |label: &'static str| -> Option<String> {
            let value = object.labels.get(label)?;
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
            None => (derive_object_id(object), IdSource::Derived),
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
    derive_object_id(&ObjectRef::pod(pod))
}

/// `<namespace>/<workload name>` of a pod or a controller: the id its pods are given.
///
/// An object known only by its `generateName`, with no label saying which controller made
/// it, gets `<namespace>/<generateName>` ending in `-`: no object name ends so, so the id
/// stands for "not named yet" and never for some other workload.
pub fn derive_object_id(object: &ObjectRef<'_>) -> String {
    match object_workload_name(object) {
        Some(name) => std::format!("{}/{name}", object.namespace),
        None => {
            let (ObjectName::Generated(prefix) | ObjectName::Given(prefix)) = object.name;
            let dash = if prefix.ends_with('-') { "" } else { "-" };
            std::format!("{}/{prefix}{dash}", object.namespace)
        }
    }
}

/// The workload name of an object, `None` when it cannot be known yet.
fn object_workload_name<'a>(object: &ObjectRef<'a>) -> Option<&'a str> {
    match (object.kind, object.name) {
        (ObjectKind::Pod, ObjectName::Given(name)) => Some(pod_workload_name(name, object)),
        (ObjectKind::Pod, ObjectName::Generated(prefix)) => new_pod_workload_name(prefix, object),
        (ObjectKind::ReplicaSet, ObjectName::Given(name)) => Some(replica_set_workload_name(
            name,
            object.label(labels::POD_TEMPLATE_HASH),
        )),
        (ObjectKind::Job, ObjectName::Given(name)) => Some(job_workload_name(name)),
        (
            ObjectKind::Deployment
            | ObjectKind::StatefulSet
            | ObjectKind::DaemonSet
            | ObjectKind::CronJob,
            ObjectName::Given(name),
        ) => Some(name),
        // A controller whose own name is still to be generated: its pods' names, and so the
        // id the observer will derive, are not known.
        (_, ObjectName::Generated(_)) => None,
    }
}

/// A running pod's workload name, decided from its name and the labels Kubernetes sets.
fn pod_workload_name<'a>(name: &'a str, pod: &ObjectRef<'a>) -> &'a str {
    // Deployment → ReplicaSet `<name>-<pod-template-hash>` → pod `<rs>-<5 random>`.
    if let Some(hash) = pod.label(labels::POD_TEMPLATE_HASH) {
        if let Some((rest, suffix)) = name.rsplit_once('-') {
            if is_generated_suffix(suffix, 5) {
                return replica_set_workload_name(rest, Some(hash));
            }
        }
    }
    // StatefulSet pods are `<set>-<ordinal>`; the set is the workload.
    if pod.label(labels::STATEFULSET_POD_NAME) == Some(name) {
        if let Some((base, ordinal)) = name.rsplit_once('-') {
            if !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()) {
                return base;
            }
        }
    }
    // Job pods carry the job's name.
    if let Some(job) = job_label(pod) {
        return job_workload_name(job);
    }
    // DaemonSet pods are `<set>-<5 random>`.
    if pod.label(labels::CONTROLLER_REVISION_HASH).is_some() {
        if let Some((base, suffix)) = name.rsplit_once('-') {
            if is_generated_suffix(suffix, 5) {
                return base;
            }
        }
    }
    name
}

/// The workload name of a pod about to be created from `generateName` (`<owner>-`): what
/// [`pod_workload_name`] will give for `<owner>-<5 random>`, when the labels make that
/// knowable.
fn new_pod_workload_name<'a>(prefix: &'a str, pod: &ObjectRef<'a>) -> Option<&'a str> {
    let owner = prefix.strip_suffix('-').filter(|o| !o.is_empty());
    if let (Some(owner), Some(hash)) = (owner, pod.label(labels::POD_TEMPLATE_HASH)) {
        return Some(replica_set_workload_name(owner, Some(hash)));
    }
    if let Some(job) = job_label(pod) {
        return Some(job_workload_name(job));
    }
    match owner {
        Some(owner) if pod.label(labels::CONTROLLER_REVISION_HASH).is_some() => Some(owner),
        // A bare pod keeps its whole name, which is not chosen yet.
        _ => None,
    }
}

fn job_label<'a>(pod: &ObjectRef<'a>) -> Option<&'a str> {
    pod.label(labels::BATCH_JOB_NAME)
        .or_else(|| pod.label(labels::JOB_NAME))
}

/// A ReplicaSet `<deployment>-<pod-template-hash>` is its Deployment; a bare one (the name
/// does not end in its hash) is itself.
fn replica_set_workload_name<'a>(name: &'a str, hash: Option<&str>) -> &'a str {
    hash.and_then(|hash| name.strip_suffix(hash))
        .and_then(|rest| rest.strip_suffix('-'))
        .unwrap_or(name)
}

/// CronJob jobs are `<cronjob>-<scheduled minute>`; other jobs are themselves.
fn job_workload_name(job: &str) -> &str {
    if let Some((base, minute)) = job.rsplit_once('-') {
        if minute.len() >= 8 && minute.bytes().all(|b| b.is_ascii_digit()) {
            return base;
        }
    }
    job
}
