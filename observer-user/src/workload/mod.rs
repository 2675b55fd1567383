//! The workload stage: which container and pod an event belongs to. The cgroup id gives a
//! container ([`cgroups`]); the runtime watchers ([`watcher`]: a CRI runtime through
//! [`cri`], Docker Engine through [`docker`], both behind [`hub`] when a node has both)
//! describe it; [`attribution`] joins them, holding an event briefly while its container is
//! looked up, and [`filter`] decides which namespaces are reported. Hands on attributed
//! events and lifecycle records.

pub mod attribution;
pub mod cgroups;
pub mod cri;
pub mod docker;
pub mod filter;
pub mod hub;
pub mod image;
pub mod runtime;
pub mod watcher;

pub use attribution::{AttributionConfig, Attributor, Output};
pub use cgroups::CgroupMap;
pub use filter::NamespaceFilter;
pub use runtime::{RuntimeKind, RuntimeVersion};
