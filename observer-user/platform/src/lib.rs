//! What both Zastava binaries share besides the identity contract (in `observer-common`):
//! how a binary is configured ([`config`]), how it reaches the Scanner backend
//! ([`backend`]), which installation it belongs to ([`deployment`]), and the names of every
//! metric it exports ([`metrics`]).
//!
//! Nothing here loads eBPF programs: the webhook depends on this crate, not on the observer.

pub mod authority;
pub mod backend;
pub mod config;
pub mod deployment;
pub mod logging;
pub mod metrics;
pub mod tls;
