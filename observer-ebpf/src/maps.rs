//! Maps and load-time globals shared by all probe families.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
    Global,
};
use observer_common::{
    DedupKey, DedupState, KernelOffsets, PendingConnect, PendingExec, PendingExecName, PendingOpen,
    TracepointOffsets, COUNTER_SLOTS, OPEN_SMALL_TAIL,
};

/// All records. The loader sets the real size (`--ring-buffer-bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Per-CPU counters, indexed by `Counter::index`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Bytes of each per-CPU scratch buffer: a path walk's buffer (a path of up to 4 KiB built
/// right to left, slack for masked writes, the walk's state), and the one a record is
/// assembled in before it is copied to the ring buffer at its exact size (the largest is an
/// exec with four 4 KiB strings).
pub const SCRATCH: usize = 20 * 1024;

/// Where a path walk assembles its path, right to left (see `walk.rs`).
#[map]
pub static WALK_BUF: PerCpuArray<[u8; SCRATCH]> = PerCpuArray::with_max_entries(1, 0);

/// Where a record is assembled before `bpf_ringbuf_output` copies its used length.
#[map]
pub static OUT_BUF: PerCpuArray<[u8; SCRATCH]> = PerCpuArray::with_max_entries(1, 0);

/// Struct offsets from the kernel's BTF, set by the loader. A plain static (not a
/// `Global`, whose `load` copies the whole struct to the stack), read one field at a time
/// with `koff!`; it lives in the frozen .rodata map, so the verifier sees constants.
#[unsafe(no_mangle)]
pub static KOFFSETS: KernelOffsets = KernelOffsets {
    task_fs: 0,
    task_files: 0,
    task_mm: 0,
    fs_root: 0,
    fs_pwd: 0,
    dentry_d_hash_pprev: 0,
    dentry_win: 0,
    win_parent: 0,
    win_hash: 0,
    win_len: 0,
    win_name: 0,
    mount_mnt: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    vfsmount_mnt_root: 0,
    files_fdt: 0,
    files_count: 0,
    file_f_path: 0,
    file_f_inode: 0,
    file_private_data: 0,
    inode_i_mode: 0,
    inode_i_ino: 0,
    mm_exe_file: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    mm_users: 0,
    socket_sk: 0,
    skc_family: 0,
    skc_daddr: 0,
    skc_dport: 0,
    skc_v6_daddr: 0,
    unix_sock_addr: 0,
    unix_sock_peer: 0,
    unix_address_len: 0,
    unix_address_name: 0,
    regs_di: 0,
    regs_si: 0,
    regs_dx: 0,
    regs_r10: 0,
    _pad: 0,
};

/// One field of `KOFFSETS`, as a u64. The volatile read keeps the compiler from folding
/// the compile-time zeros.
macro_rules! koff {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(&crate::maps::KOFFSETS.$field) };
        u64::from(value)
    }};
}
pub(crate) use koff;

/// The file name of an exec between `sched_process_exec` and the syscall's exit, by
/// thread id (which is, by then, the process id). Execs in flight are few; entries are
/// allocated on demand.
#[map]
pub static EXEC_NAMES: HashMap<u32, PendingExecName> =
    HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Threads inside `execveat`: after a successful one the kernel reports the syscall's exit as
/// `execve`'s, so the entry is where it can be told apart.
#[map]
pub static IN_EXECVEAT: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Where a file name is read before it is inserted into `EXEC_NAMES` (too big for the stack).
#[map]
pub static EXEC_NAME_SCRATCH: PerCpuArray<PendingExecName> = PerCpuArray::with_max_entries(1, 0);

/// openat/openat2 in flight, by thread id (programs without the kernel view).
#[map]
pub static PENDING_OPEN: HashMap<u32, PendingOpen> = HashMap::with_max_entries(16384, 0);

/// connect in flight, by thread id (programs without the kernel view).
#[map]
pub static PENDING_CONNECT: HashMap<u32, PendingConnect> = HashMap::with_max_entries(16384, 0);

/// argv captured at exec entry, by thread id (programs without the kernel view). Values are
/// 8 KiB and execs in flight are few,
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
