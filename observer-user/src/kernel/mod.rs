//! The kernel stage: finds the tracepoints ([`tracefs`]) and the kernel's struct offsets
//! ([`btf`]), checks the capabilities ([`privileges`]), loads and attaches the probes and
//! reads their counters and maps ([`probes`], [`counters`], `map_batch`), and turns ring buffer records into typed
//! events ([`decode`]) with boot-time stamps ([`clock`]). Hands on `KernelEvent`s.

pub mod btf;
pub mod clock;
pub mod counters;
pub mod decode;
mod map_batch;
pub mod privileges;
pub mod probes;
pub mod tracefs;

pub use clock::BootClock;
pub use counters::KernelCounters;
pub use decode::{decode, DecodeError, KernelEvent};
pub use probes::{validate_ring_size, Probes};
