//! Zastava runtime observer: userspace side.
//!
//! Data flows one way through one module per stage:
//! [`probes`] (load/attach) → [`daemon`] (ring buffer reading) → [`pipeline`]:
//! [`decode`] → [`tracker`] (with [`proctable`], [`paths`]) → [`attribution`] (with
//! [`cgroups`] and, through [`watcher`] and [`cri`], the container runtime) → [`event`] →
//! [`sink`]; [`summary`] accounts for every record at shutdown, [`doctor`] checks the node.

pub mod attribution;
pub mod backend;
pub mod batch;
pub mod buildid;
pub mod cgroups;
pub mod clock;
pub mod config;
pub mod containers;
pub mod cri;
pub mod daemon;
pub mod decode;
pub mod dedup;
pub mod delivery;
pub mod doctor;
pub mod event;
#[cfg(test)]
mod fake_cri;
pub mod host;
pub mod paths;
pub mod pipeline;
pub mod probes;
pub mod proctable;
pub mod server;
pub mod shipper;
pub mod sink;
pub mod spool;
pub mod summary;
pub mod synth;
pub mod tracefs;
pub mod tracker;
pub mod watcher;
pub mod webhook;
