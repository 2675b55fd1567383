//! Per-CPU failure and volume counters kept by the probes.
//!
//! The counters map is a per-CPU array indexed by `counter * KIND_SLOTS + kind`, so every
//! counter exists once per [`EventKind`](crate::EventKind) (slot 0 is unused). Userspace sums
//! the per-CPU values.

/// Slots per counter: event kinds are 1..=7, rounded up to a power of two.
pub const KIND_SLOTS: u32 = 8;

/// What a probe counts. The values are part of the kernel/user ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Records submitted to the ring buffer.
    Submitted = 0,
    /// Records lost because the ring buffer had no room.
    RingFull = 1,
    /// User or kernel memory could not be read (the record is still sent, flagged).
    ReadFailed = 2,
    /// A pairing map (enter → exit by thread id) had no room; the syscall is not reported.
    PendingMapFull = 3,
    /// A syscall exit arrived without its enter (e.g. the probes attached mid-syscall, or
    /// the enter was lost to a full pairing map).
    Unpaired = 4,
    /// Events dropped in the kernel by the namespace filter.
    Filtered = 5,
    /// Repeats of an edge held back by the in-kernel dedup (reported later with the edge).
    Deduplicated = 6,
}

impl Counter {
    pub const ALL: [Counter; 7] = [
        Counter::Submitted,
        Counter::RingFull,
        Counter::ReadFailed,
        Counter::PendingMapFull,
        Counter::Unpaired,
        Counter::Filtered,
        Counter::Deduplicated,
    ];

    /// Index of this counter for an event kind in the counters map.
    pub const fn index(self, kind: crate::EventKind) -> u32 {
        self as u32 * KIND_SLOTS + kind as u32
    }

    /// Name used in summaries and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Submitted => "submitted",
            Counter::RingFull => "ring_full",
            Counter::ReadFailed => "read_failed",
            Counter::PendingMapFull => "pending_map_full",
            Counter::Unpaired => "unpaired_exit",
            Counter::Filtered => "filtered",
            Counter::Deduplicated => "deduplicated",
        }
    }
}

/// Entries in the counters map.
pub const COUNTER_SLOTS: u32 = Counter::ALL.len() as u32 * KIND_SLOTS;
