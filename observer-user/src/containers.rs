//! What the container runtime says about pods and containers, in the shape enrichment uses.

use std::sync::Arc;

use observer_common::identity::{DigestKind, IdentityError, PodRef, WorkloadIdentity};

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
