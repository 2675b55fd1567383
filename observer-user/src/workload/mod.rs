//! The workload stage: which container and pod an event belongs to. The cgroup id gives a
//! container ([`cgroups`]); the runtime watcher ([`watcher`], through [`cri`]) describes
//! it; [`attribution`] joins them, holding an event briefly while its container is looked
//! up, and [`filter`] decides which namespaces are reported. Hands on attributed events and
//! lifecycle records.

pub mod attribution;
pub mod cgroups;
pub mod cri;
pub mod filter;
pub mod watcher;

pub use attribution::{AttributionConfig, Attributor, Output};
pub use cgroups::CgroupMap;
pub use filter::NamespaceFilter;
