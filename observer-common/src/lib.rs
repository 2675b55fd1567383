//! Records exchanged between the Zastava eBPF programs and the userspace daemon.
//!
//! Every record pushed through the ring buffer starts with an [`EventHeader`], followed by a
//! fixed, kind-specific part and, for some kinds, a variable "tail" of bytes (paths, argv).
//! The kernel reserves one of a few constant sizes (the verifier only accepts constant ring
//! buffer reservations), so a tail is usually larger than the bytes it holds; the fixed part
//! says how many tail bytes are meaningful. Userspace never trusts those lengths: it checks
//! them against the record it actually received.
//!
//! All structs are `#[repr(C)]`, hold only integers and byte arrays (every bit pattern is
//! valid) and are padded explicitly to a multiple of 8 bytes, because ring buffer records are
//! 8-byte aligned.
#![cfg_attr(not(test), no_std)]

#[cfg(feature = "user")]
extern crate std;

pub mod counters;
#[cfg(feature = "user")]
pub mod identity;
pub mod offsets;

pub use counters::{Counter, COUNTER_SLOTS};
pub use offsets::{KernelOffsets, TracepointOffsets};

/// Length of `task_struct::comm`.
pub const TASK_COMM_LEN: usize = 16;
/// At most this many argv entries are captured for an exec by the probes without the
/// kernel view, or read from `/proc` (the kernel view reads argv whole, up to its bytes).
pub const MAX_ARGS: usize = 20;
/// At most this many bytes of argv (NUL-separated) are captured for an exec.
pub const ARGS_CAPACITY: usize = 4096;
/// Longest path the probes capture (Linux `PATH_MAX`).
pub const PATH_CAPACITY: usize = 4096;
/// Longest file name component (Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Tail size of the small open record; most paths fit, so most opens use the small size.
pub const OPEN_SMALL_TAIL: usize = 256;
/// Tail size of the large open record, used when a path does not fit the small one.
pub const OPEN_LARGE_TAIL: usize = PATH_CAPACITY;
/// Tail of the small exec record: filename and argv each up to half of it.
pub const EXEC_SMALL_TAIL: usize = 1024;
/// Tail of the large exec record: a full path plus a full argv buffer.
pub const EXEC_LARGE_TAIL: usize = PATH_CAPACITY + ARGS_CAPACITY;
/// Bytes of `struct sockaddr` captured for connect: enough for `sockaddr_un` (110).
pub const SOCKADDR_CAPACITY: usize = 112;

/// Kinds of records. The values are part of the kernel/user ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Exec = 1,
    Fork = 2,
    Exit = 3,
    Open = 4,
    Connect = 5,
    /// A cgroup was created in the v2 hierarchy.
    CgroupMkdir = 6,
    /// A cgroup was removed from the v2 hierarchy.
    CgroupRmdir = 7,
}

impl EventKind {
    /// Every kind, in ABI order.
    pub const ALL: [EventKind; 7] = [
        EventKind::Exec,
        EventKind::Fork,
        EventKind::Exit,
        EventKind::Open,
        EventKind::Connect,
        EventKind::CgroupMkdir,
        EventKind::CgroupRmdir,
    ];

    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(EventKind::Exec),
            2 => Some(EventKind::Fork),
            3 => Some(EventKind::Exit),
            4 => Some(EventKind::Open),
            5 => Some(EventKind::Connect),
            6 => Some(EventKind::CgroupMkdir),
            7 => Some(EventKind::CgroupRmdir),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            EventKind::Exec => "exec",
            EventKind::Fork => "fork",
            EventKind::Exit => "exit",
            EventKind::Open => "open",
            EventKind::Connect => "connect",
            EventKind::CgroupMkdir => "cgroup_mkdir",
            EventKind::CgroupRmdir => "cgroup_rmdir",
        }
    }
}

/// Bits of [`EventHeader::flags`].
pub mod flags {
    /// argv had more entries or bytes than the probe captures.
    pub const ARGS_TRUNCATED: u32 = 1 << 0;
    /// argv could not be captured (no matching `sys_enter_execve*`, or reading it failed).
    pub const ARGS_MISSING: u32 = 1 << 1;
    /// A path was longer than the capture buffer.
    pub const PATH_TRUNCATED: u32 = 1 << 2;
    /// A path could not be read from user memory.
    pub const PATH_MISSING: u32 = 1 << 3;
    /// The exec came through `execveat` (else `execve`).
    pub const EXECVEAT: u32 = 1 << 4;
    /// The open came through `openat2` (else `openat`).
    pub const OPENAT2: u32 = 1 << 5;
    /// The socket address could not be read from user memory.
    pub const ADDR_MISSING: u32 = 1 << 6;
    /// A failed `execveat` of a relative name with a directory fd (the working directory
    /// is not where it was looked up).
    pub const EXEC_DIRFD: u32 = 1 << 8;
    /// Made by a program with the kernel's own view (BTF offsets): paths walked from the
    /// kernel's objects, argv from the new image, addresses from the socket. Without it, the
    /// record's strings and addresses come from the caller's memory.
    pub const KERNEL_VIEW: u32 = 1 << 7;
    /// Another task shared the caller's memory at the syscall (see `memory_shared` in the
    /// probes): what was read from that memory may differ from what the kernel used.
    pub const MEMORY_SHARED: u32 = 1 << 9;
    /// The open came through the legacy `open` (relative to the working directory).
    pub const OPEN: u32 = 1 << 10;
    /// The open came through `creat` (flags `O_CREAT | O_WRONLY | O_TRUNC`).
    pub const CREAT: u32 = 1 << 11;
    /// The record's kernel path or address came from a descriptor (`task->files->fdt->fd[n]`,
    /// read without the table's lock after the syscall) while another task shared the
    /// descriptor table (see `files_shared` in the probes): that task could have replaced the
    /// descriptor (`dup2`, `close` then `open`) between the syscall's return and the read,
    /// and the path or address is then of the file the descriptor held at the read.
    pub const FILES_SHARED: u32 = 1 << 12;
}

/// Outcome of a path walked in the kernel, from a dentry up to the task's root across
/// mounts. A path is a path only when `bits & !DELETED == COMPLETE`; anything else is
/// reported as unresolved, never as a partial path.
pub mod walk {
    /// The walk reached the task's root.
    pub const COMPLETE: u32 = 1 << 0;
    /// The step bound was hit before the root.
    pub const TRUNC_DEPTH: u32 = 1 << 1;
    /// The path is longer than `PATH_CAPACITY`.
    pub const TRUNC_BUF: u32 = 1 << 2;
    /// The top of the mount tree was reached without meeting the task's root: the file is
    /// outside the task's root (a descriptor from before a chroot, one passed in).
    pub const OUTSIDE_ROOT: u32 = 1 << 3;
    /// A dentry that is its own parent but not a mount root: a pipe, socket or anonymous
    /// inode, or a disconnected dentry.
    pub const DETACHED: u32 = 1 << 4;
    /// A kernel read failed, or a name changed while it was read.
    pub const READ_ERROR: u32 = 1 << 5;
    /// A name longer than `NAME_MAX`.
    pub const BAD_NAME: u32 = 1 << 6;
    /// No walk was made.
    pub const NONE: u32 = 1 << 7;
    /// With `COMPLETE`: the file itself was unlinked (the path is the name it had).
    pub const DELETED: u32 = 1 << 8;

    /// Whether `bits` describe a whole path.
    pub const fn is_complete(bits: u32) -> bool {
        bits & !DELETED == COMPLETE
    }
}

/// What an open record's kernel path is ([`OpenRecord::base`]).
pub mod open_base {
    /// No kernel path: the requested path is all there is.
    pub const NONE: u32 = 0;
    /// The opened file itself (a successful open).
    pub const FILE: u32 = 1;
    /// The working directory the relative path was resolved from (`AT_FDCWD`).
    pub const CWD: u32 = 2;
    /// The directory of the `dfd` the relative path was resolved from.
    pub const DIRFD: u32 = 3;
}

/// Where a connect record's address comes from ([`ConnectRecord::source`]).
pub mod addr_source {
    /// Not known.
    pub const NONE: u32 = 0;
    /// The socket the kernel connected (or is connecting): what it used.
    pub const KERNEL: u32 = 1;
    /// The caller's `sockaddr`, read after the call: the kernel keeps no address for a
    /// connect that failed, and another thread may have changed the buffer since.
    pub const CALLER: u32 = 2;
}

/// Common prefix of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] value.
    pub kind: u32,
    /// Bits from [`flags`].
    pub flags: u32,
    /// `bpf_ktime_get_boot_ns()` when the event was recorded.
    pub boot_ns: u64,
    /// cgroup v2 id of the task (`bpf_get_current_cgroup_id()`).
    pub cgroup_id: u64,
    /// Process id (kernel tgid) of the task.
    pub tgid: u32,
    /// Thread id (kernel pid) of the task.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The task's `comm`, NUL-padded.
    pub comm: [u8; TASK_COMM_LEN],
}

/// An exec. With the kernel view it is sent at the syscall's exit (`sys_exit_execve[at]`),
/// the file name kept from `sched_process_exec`: argv is the new image's (its
/// `arg_start..arg_end`), the executable and the working directory are walked from the
/// kernel's objects, and a failed exec is reported too. Without it, it is sent at
/// `sched_process_exec` with argv captured at `sys_enter_execve[at]`.
///
/// Tail: `filename_len` bytes of the file name as the caller passed it, `args_len` bytes of
/// argv (each entry NUL-terminated; the last one may be cut short when truncated),
/// `exe_len` bytes of the executable's path, `cwd_len` bytes of the working directory.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecRecord {
    pub header: EventHeader,
    /// Thread id that called exec (differs from `header.tgid` when a non-leader thread execs).
    pub old_tid: u32,
    /// Bytes of filename in the tail (no NUL).
    pub filename_len: u32,
    /// Bytes of argv in the tail.
    pub args_len: u32,
    pub exe_len: u32,
    pub cwd_len: u32,
    /// [`walk`] bits of the executable's path and of the working directory.
    pub exe_walk: u32,
    pub cwd_walk: u32,
    pub _pad: u32,
    /// Inode number of the executable (0 when unknown), so userspace reads the build-id of
    /// this very file and no other.
    pub exe_ino: u64,
    /// 0 for an exec that replaced the image; `-errno` for one that failed (kernel view):
    /// then there is no argv or executable, the file name is the caller's, and `cwd` is the
    /// directory a relative name was looked up from.
    pub result: i64,
}

/// The file name of an exec that replaced its image, kept from `sched_process_exec` (the
/// caller's memory is gone by then) until the syscall's exit says which syscall it was.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingExecName {
    pub old_tid: u32,
    pub len: u32,
    /// [`flags::PATH_TRUNCATED`], [`flags::PATH_MISSING`].
    pub flags: u32,
    pub _pad: u32,
    pub name: [u8; PATH_CAPACITY],
}

/// A new process (not a thread): `task:task_newtask` without `CLONE_THREAD`.
/// The header describes the parent (the task calling fork/clone).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkRecord {
    pub header: EventHeader,
    /// Process id of the child.
    pub child_tgid: u32,
    pub _pad: u32,
    /// `clone_flags` of the call (`CLONE_PARENT` changes who the parent is).
    pub clone_flags: u64,
}

/// The last thread of a process exited (`sched:sched_process_exit` with `group_dead`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitRecord {
    pub header: EventHeader,
}

/// What a report of a deduplicated edge says about the repeats the kernel held back (see
/// [`DedupState`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repeats {
    /// Identifies the edge within its cgroup; 0 when the edge is not deduplicated.
    pub hash: u64,
    /// All repeats this CPU ever held back for the edge (monotonic; userspace reports the
    /// difference to what it already reported).
    pub cumulative: u64,
    /// Boot time of the first and last repeat held back since the previous report (0: none).
    pub first_ns: u64,
    pub last_ns: u64,
    /// The CPU whose state this is.
    pub cpu: u32,
    pub _pad: u32,
}

/// `openat`/`openat2` at syscall exit. With the kernel view, `path` is walked from the
/// kernel's objects: the opened file (success) or the directory a relative path was
/// resolved from (failure); `requested` is the string the caller passed.
///
/// Tail: `requested_len` bytes of the requested path, then `path_len` bytes of kernel path
/// (no NULs).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpenRecord {
    pub header: EventHeader,
    /// Return value: a file descriptor, or `-errno`.
    pub result: i64,
    /// Directory fd the path is relative to (`AT_FDCWD` = -100).
    pub dfd: i32,
    /// `O_*` flags (the low 32 bits; `openat2` takes a u64 but defines none above).
    pub flags: u32,
    pub mode: u32,
    pub path_len: u32,
    pub requested_len: u32,
    /// [`open_base`]: what `path` is.
    pub base: u32,
    /// [`walk`] bits of `path`.
    pub walk: u32,
    pub _pad: u32,
    pub repeats: Repeats,
}

/// `connect` at syscall exit. Holds a raw `struct sockaddr` so that userspace parses
/// families it knows and reports the number of those it does not: with the kernel view,
/// built from the socket the kernel connected (the address it used); otherwise, or when the
/// kernel kept none (a failed connect), the caller's, as [`ConnectRecord::source`] says.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectRecord {
    pub header: EventHeader,
    /// Return value: 0, or `-errno` (`-EINPROGRESS` for non-blocking sockets).
    pub result: i64,
    pub fd: i32,
    /// `addrlen` passed by the caller.
    pub addrlen: u32,
    /// Bytes of `sockaddr` captured.
    pub sockaddr_len: u32,
    /// [`addr_source`].
    pub source: u32,
    pub repeats: Repeats,
    pub sockaddr: [u8; SOCKADDR_CAPACITY],
}

/// Key of the in-kernel dedup map: an edge within a cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DedupKey {
    pub cgroup_id: u64,
    pub hash: u64,
}

/// Per-CPU state of an edge in the dedup map. An edge reported less than the dedup window
/// ago is not reported again; the repeat is counted in `suppressed`, which only ever grows,
/// so userspace can read it at any time (from reports, or from the map for edges that went
/// quiet) and report exactly the repeats it has not reported yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DedupState {
    pub last_report_ns: u64,
    /// Boot time of the first and last repeat since the last report (0: none).
    pub first_ns: u64,
    pub last_ns: u64,
    /// Repeats held back since the entry was created.
    pub suppressed: u64,
}

/// FNV-1a, 64 bit: the edge hash the probes compute (and userspace can recompute).
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// `cgroup:cgroup_mkdir` / `cgroup:cgroup_rmdir` in the v2 hierarchy. Tail: `path_len`
/// bytes of the cgroup's path relative to the hierarchy root. The header describes the task
/// that made or removed the directory.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupRecord {
    pub header: EventHeader,
    /// The cgroup id (inode number of its directory).
    pub id: u64,
    /// Depth below the root (the root is level 0).
    pub level: u32,
    pub path_len: u32,
}

/// Tail size of the small cgroup record.
pub const CGROUP_SMALL_TAIL: usize = 256;
/// Tail size of the large cgroup record.
pub const CGROUP_LARGE_TAIL: usize = PATH_CAPACITY;

/// Namespace filtering in the kernel (`FILTER_MODE` global; `CGROUP_FILTER` map keyed by
/// cgroup id, checked for the task's cgroup and its ancestors).
pub mod filter {
    /// No filtering.
    pub const OFF: u32 = 0;
    /// Drop events of tasks in or below a cgroup in the map.
    pub const EXCLUDE: u32 = 1;
    /// Drop events of tasks not in or below a cgroup in the map.
    pub const INCLUDE: u32 = 2;
    /// How many ancestor levels the probes check.
    pub const MAX_LEVELS: i32 = 8;
}

/// Per-thread state between `sys_enter_openat[2]` and `sys_exit_openat[2]`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingOpen {
    pub filename: u64,
    pub dfd: i32,
    pub flags: u32,
    pub mode: u32,
    /// [`flags::OPENAT2`] or 0.
    pub record_flags: u32,
}

/// Per-thread state between `sys_enter_connect` and `sys_exit_connect`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingConnect {
    pub sockaddr: u64,
    pub fd: i32,
    pub addrlen: u32,
}

/// Per-thread argv captured at `sys_enter_execve[at]`, consumed at `sched_process_exec`.
///
/// `buf` is twice [`ARGS_CAPACITY`]: each argument is read with a constant bound starting
/// below `ARGS_CAPACITY`, which the verifier can prove stays inside the buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingExec {
    pub argc: u32,
    pub args_len: u32,
    /// [`flags::ARGS_TRUNCATED`], [`flags::EXECVEAT`].
    pub record_flags: u32,
    pub _pad: u32,
    pub buf: [u8; 2 * ARGS_CAPACITY],
}

#[cfg(feature = "aya")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and byte arrays, and have
    // no implicit padding (checked by the layout tests), so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::TracepointOffsets {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::DedupKey {}
    unsafe impl aya::Pod for super::DedupState {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn record_sizes_are_multiples_of_eight_and_have_no_hidden_padding() {
        assert_eq!(
            size_of::<EventHeader>(),
            4 + 4 + 8 + 8 + 4 * 4 + TASK_COMM_LEN
        );
        assert_eq!(size_of::<ExecRecord>(), size_of::<EventHeader>() + 48);
        assert_eq!(size_of::<PendingExecName>(), 16 + PATH_CAPACITY);
        assert_eq!(size_of::<ForkRecord>(), size_of::<EventHeader>() + 16);
        assert_eq!(size_of::<ExitRecord>(), size_of::<EventHeader>());
        assert_eq!(size_of::<Repeats>(), 40);
        assert_eq!(size_of::<OpenRecord>(), size_of::<EventHeader>() + 40 + 40);
        assert_eq!(
            size_of::<ConnectRecord>(),
            size_of::<EventHeader>() + 24 + 40 + SOCKADDR_CAPACITY
        );
        assert_eq!(size_of::<DedupKey>(), 16);
        assert_eq!(size_of::<DedupState>(), 32);
        assert_eq!(size_of::<CgroupRecord>(), size_of::<EventHeader>() + 16);
        assert_eq!(size_of::<PendingOpen>(), 24);
        assert_eq!(size_of::<PendingConnect>(), 16);
        assert_eq!(size_of::<PendingExec>(), 16 + 2 * ARGS_CAPACITY);
        assert_eq!(size_of::<KernelOffsets>() % 8, 0);
        for size in [
            size_of::<EventHeader>(),
            size_of::<ExecRecord>(),
            size_of::<ForkRecord>(),
            size_of::<OpenRecord>(),
            size_of::<ConnectRecord>(),
            size_of::<CgroupRecord>(),
        ] {
            assert_eq!(size % 8, 0, "record size {size} is not 8-byte aligned");
        }
    }

    #[test]
    fn event_kinds_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_u32(kind as u32), Some(kind));
        }
        assert_eq!(EventKind::from_u32(0), None);
        assert_eq!(EventKind::from_u32(99), None);
    }
}
