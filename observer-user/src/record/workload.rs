//! Which workload a record belongs to: the pod and container descriptions the container
//! runtime gives (in the shape records use), and how completely an event is attributed.

use std::{collections::BTreeMap, sync::Arc};

use observer_common::identity::{
    compose_service, DigestKind, IdentityError, PodRef, WorkloadIdentity,
};

use super::HostIdentity;

/// A pod sandbox and the workload identity of its pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub sandbox_id: String,
    /// `identity.id`, shared by every record of the pod (sorting and merging key).
    pub identity_id: Arc<str>,
    pub pod: PodRef,
    pub identity: WorkloadIdentity,
    /// Identity labels that were present but invalid (reported, then ignored).
    pub identity_errors: Vec<IdentityError>,
    pub origin: Origin,
}

/// Which runtime described a workload, and what it is besides a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Origin {
    /// A Kubernetes pod of a CRI runtime.
    #[default]
    CriPod,
    /// A Kubernetes pod whose containers Docker Engine runs (through cri-dockerd).
    DockerPod,
    /// A Docker container outside Kubernetes; its pod fields are empty.
    DockerContainer {
        /// Compose project and service, from the container's labels.
        compose: Option<(String, String)>,
    },
}

impl PodInfo {
    pub fn new(sandbox_id: String, pod: PodRef) -> Self {
        let (identity, identity_errors) = WorkloadIdentity::of_pod(&pod);
        PodInfo {
            identity_id: Arc::from(identity.id.as_str()),
            sandbox_id,
            pod,
            identity,
            identity_errors,
            origin: Origin::CriPod,
        }
    }

    /// A pod Docker Engine runs for Kubernetes: named as a CRI runtime's pod is.
    pub fn docker_pod(sandbox_id: String, pod: PodRef) -> Self {
        PodInfo {
            origin: Origin::DockerPod,
            ..PodInfo::new(sandbox_id, pod)
        }
    }

    /// A Docker container no pod owns: a workload of its own, named by its labels (see
    /// [`WorkloadIdentity::of_container`]), with empty pod fields.
    pub fn docker_container(
        container_id: String,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Self {
        let (identity, identity_errors) = WorkloadIdentity::of_container(name, &labels);
        let compose = compose_service(&labels).map(|(p, s)| (p.to_owned(), s.to_owned()));
        PodInfo {
            identity_id: Arc::from(identity.id.as_str()),
            sandbox_id: container_id,
            pod: PodRef {
                labels,
                ..PodRef::default()
            },
            identity,
            identity_errors,
            origin: Origin::DockerContainer { compose },
        }
    }
}

/// The image a container runs, and how sure we are of its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image as the pod spec named it (`repo:tag`, `repo@sha256:...`).
    pub reference: String,
    /// `sha256:...`, of the kind given by `digest_kind`.
    pub digest: Option<String>,
    pub digest_kind: DigestKind,
}

impl ImageInfo {
    /// A manifest digest is what registries and scanners key on; anything else is not
    /// usable to look the image up.
    pub fn has_usable_digest(&self) -> bool {
        self.digest_kind == DigestKind::Manifest && self.digest.is_some()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// A container of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub pod: Arc<PodInfo>,
    pub image: ImageInfo,
    pub state: ContainerState,
    /// Nanoseconds since the epoch, as the runtime reports them (0 = unknown).
    pub started_at_ns: i64,
    pub finished_at_ns: i64,
    pub exit_code: Option<i32>,
    /// pid of the container's first process on the host.
    pub init_pid: Option<u32>,
    /// The entrypoint's path inside the container.
    pub entrypoint: Option<String>,
    /// GNU build-id of the entrypoint, hex.
    pub entrypoint_code_id: Option<String>,
}

/// How completely an event is attributed to a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Enrichment {
    /// Container, pod, identity and a manifest digest are known.
    Complete,
    /// Attributed to a container, but something is missing (pod, or a usable digest).
    Partial,
    /// The container was not known in time; an `enrichmentPatch` record follows.
    Pending,
    /// Not in a container: a process of the node itself.
    Host,
}

impl Enrichment {
    pub const ALL: [Enrichment; 4] = [
        Enrichment::Complete,
        Enrichment::Partial,
        Enrichment::Pending,
        Enrichment::Host,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Enrichment::Complete => "complete",
            Enrichment::Partial => "partial",
            Enrichment::Pending => "pending",
            Enrichment::Host => "host",
        }
    }
}

/// Which workload an event belongs to.
#[derive(Clone, Debug)]
pub struct Attribution {
    pub enrichment: Enrichment,
    /// The container id, known from the cgroup path even when the runtime has not said more.
    pub container_id: Option<Arc<str>>,
    pub container: Option<Arc<ContainerInfo>>,
}

impl Attribution {
    pub fn host() -> Self {
        Attribution {
            enrichment: Enrichment::Host,
            container_id: None,
            container: None,
        }
    }

    /// The workload this attribution names: the pod's identity, a provisional
    /// `container:<id>` for a container not described yet, else the node.
    pub fn workload_key(&self, host: &HostIdentity) -> Arc<str> {
        match (&self.container, &self.container_id) {
            (Some(c), _) => Arc::clone(&c.pod.identity_id),
            (None, Some(id)) => Arc::from(format!("container:{id}")),
            (None, None) => Arc::clone(&host.workload_id_shared),
        }
    }
}
