//! Which container runtime a description came from, and what it says it is. Shared by the
//! runtime clients ([`super::cri`], [`super::docker`]) and the watcher.

use std::fmt;

/// The API a container runtime is reached through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuntimeKind {
    /// The Kubernetes CRI (`runtime.v1`): containerd, CRI-O.
    Cri,
    /// The Docker Engine API.
    Docker,
}

impl RuntimeKind {
    pub const ALL: [RuntimeKind; 2] = [RuntimeKind::Cri, RuntimeKind::Docker];

    /// The `runtime` label of the runtime metrics, and the summary's section name.
    pub const fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Cri => "cri",
            RuntimeKind::Docker => "docker",
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the runtime says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeVersion {
    pub kind: RuntimeKind,
    pub name: String,
    pub version: String,
    pub api_version: String,
}

/// An error from a runtime client, as the watcher needs to see it.
pub trait RuntimeError: std::error::Error + Send + Sync + 'static {
    /// A short, fixed word for the error metric's `reason` label.
    fn reason(&self) -> &'static str;
}
