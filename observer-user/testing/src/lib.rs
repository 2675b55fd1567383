//! Test support shared by the tests and the benchmarks, never part of a release binary:
//! ring buffer records built in memory ([`records`]), the CRI API from the test side
//! ([`cri`]: a client for real runtimes and a scriptable runtime), generated
//! certificates ([`pki`]), private NATS and Redis servers ([`nats`], [`redis`]), and a
//! small tmpfs that fills up on demand ([`tmpfs`]).
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    reason = "test support: a failure here is a failed test"
)]

pub mod cri;
pub mod nats;
pub mod pki;
pub mod records;
pub mod redis;
pub mod servers;
pub mod tmpfs;

/// A new, empty directory under the system temp dir, named after `prefix`, the process and
/// a counter, so concurrent tests never share one.
pub fn fresh_dir(prefix: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}
