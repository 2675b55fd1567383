//! Zastava runtime observer: the userspace side of `zastava-observer`.
//!
//! One folder per stage; data flows one way, and each stage imports only the stages before
//! it and the record model:
//!
//! [`kernel`] (load probes, read and decode the ring buffer) → [`process`] (process table,
//! edge events) → [`workload`] (cgroup → container → pod, through the container runtime) →
//! [`pipeline`] (the stages wired in one task; batching and sorting) → [`output`] (spool,
//! shipper, NDJSON, the event account). [`record`] is the model all of them share;
//! [`ops`] is what operators see (metrics endpoint, summary, doctor); [`daemon`] starts,
//! runs and stops it all, from a [`config`].
//!
//! [`evidence`] is an offline command over the NDJSON files the daemon wrote (export, sign,
//! verify evidence bundles); no stage uses it.
//!
//! The admission webhook is a crate of its own (`zastava-webhook`), sharing the identity
//! contract (`observer-common`) and the backend client (`zastava-platform`) but not the
//! probes.

pub mod config;
pub mod daemon;
pub mod evidence;
pub mod kernel;
pub mod ops;
pub mod output;
pub mod pipeline;
pub mod process;
pub mod record;
pub mod workload;
