//! Maps and load-time globals shared by all probe families.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
    Global,
};
use observer_common::{
    DedupKey, DedupState, PendingConnect, PendingExec, PendingOpen, TracepointOffsets,
    COUNTER_SLOTS, OPEN_SMALL_TAIL,
};

/// All records. The loader sets the real size (`--ring-buffer-bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Per-CPU counters, indexed by `Counter::index`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// openat/openat2 in flight, by thread id.
#[map]
pub static PENDING_OPEN: HashMap<u32, PendingOpen> = HashMap::with_max_entries(16384, 0);

/// connect in flight, by thread id.
#[map]
pub static PENDING_CONNECT: HashMap<u32, PendingConnect> = HashMap::with_max_entries(16384, 0);

/// argv captured at exec entry, by thread id. Values are 8 KiB and execs in flight are few,
/// so entries are allocated on demand rather than preallocated.
#[map]
pub static PENDING_EXEC: HashMap<u32, PendingExec> =
    HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Where argv is assembled before it is inserted into `PENDING_EXEC` (too big for the stack).
#[map]
pub static EXEC_SCRATCH: PerCpuArray<PendingExec> = PerCpuArray::with_max_entries(1, 0);

/// Where an open's path is read and judged by the dedup map before any ring buffer space is
/// taken for it: most repeats then cost no reservation at all.
#[map]
pub static OPEN_SCRATCH: PerCpuArray<[u8; OPEN_SMALL_TAIL]> = PerCpuArray::with_max_entries(1, 0);

/// The daemon's own process id; its activity is never reported.
#[unsafe(no_mangle)]
pub static SELF_TGID: Global<u32> = Global::new(0);

/// Tracepoint field offsets read from tracefs by the loader.
#[unsafe(no_mangle)]
pub static OFFSETS: Global<TracepointOffsets> = Global::new(TracepointOffsets {
    exec_filename: 0,
    exec_old_pid: 0,
    exit_group_dead: 0,
    newtask_pid: 0,
    newtask_clone_flags: 0,
    cgroup_root: 0,
    cgroup_level: 0,
    cgroup_id: 0,
    cgroup_path: 0,
    _pad: 0,
});

/// `observer_common::filter` mode, set by the loader from the namespace flags.
#[unsafe(no_mangle)]
pub static FILTER_MODE: Global<u32> = Global::new(0);

/// cgroup ids the namespace filter marks (pod cgroups and container cgroups); the value is
/// unused. Filled by the daemon as it learns pods from the container runtime.
#[map]
pub static CGROUP_FILTER: HashMap<u64, u8> = HashMap::with_max_entries(65536, 0);

/// The daemon is woken when unread records cross a multiple of this many bytes, not for
/// every record (set by the loader from the ring size; 0 wakes it for every record).
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: Global<u64> = Global::new(0);

/// How long after reporting an edge its repeats are held back (nanoseconds; 0: never).
#[unsafe(no_mangle)]
pub static DEDUP_WINDOW_NS: Global<u64> = Global::new(0);

/// Recently reported edges, per CPU (no atomics needed, and no CPU waits for another);
/// least recently used entries make room for new ones.
#[map]
pub static DEDUP: LruPerCpuHashMap<DedupKey, DedupState> =
    LruPerCpuHashMap::with_max_entries(16384, 0);
