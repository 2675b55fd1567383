//! Zastava runtime observer: userspace side.
//!
//! Data flows one way through one module per stage:
//! [`probes`] (load/attach) → [`daemon`] (ring buffer reading) → [`decode`] →
//! [`enrich`] (with [`proctable`], [`paths`], [`host`], [`clock`]) → [`event`] → [`sink`];
//! [`summary`] accounts for every record at shutdown, [`doctor`] checks the node.

pub mod clock;
pub mod daemon;
pub mod decode;
pub mod doctor;
pub mod enrich;
pub mod event;
pub mod host;
pub mod paths;
pub mod probes;
pub mod proctable;
pub mod sink;
pub mod summary;
pub mod tracefs;
