//! `openat`, `openat2`, `open` and `creat` without the kernel view (a kernel without BTF): the path, flags
//! and mode are taken at syscall entry, the result at exit; the two are paired by thread id.
//! The path is read from the caller's memory at exit into a per-CPU scratch buffer, where
//! the dedup map judges it; only an open that is reported takes ring buffer space. A path
//! too long for the scratch buffer is read straight into a large record. Records carry the
//! requested path only: userspace marks what it cannot resolve.

use aya_ebpf::{
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_probe_read_user_str,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use core::mem::size_of;
use observer_common::{
    flags, offsets::syscall_arg_offset, offsets::SYSCALL_RET_OFFSET, Counter, EventKind,
    OpenRecord, PendingOpen, Repeats, OPEN_LARGE_TAIL, OPEN_SMALL_TAIL,
};

use crate::{
    dedup,
    maps::{EVENTS, OPEN_SCRATCH, PENDING_OPEN},
    record::{count, current_task, filtered, submit, write_header, Task},
};
use observer_common::{open_base, walk};

const KIND: EventKind = EventKind::Open;

#[tracepoint]
pub fn compat_sys_enter_openat(ctx: TracePointContext) -> u32 {
    enter(&ctx, Syscall::Openat);
    0
}

#[tracepoint]
pub fn compat_sys_enter_openat2(ctx: TracePointContext) -> u32 {
    enter(&ctx, Syscall::Openat2);
    0
}

#[tracepoint]
pub fn compat_sys_enter_open(ctx: TracePointContext) -> u32 {
    enter(&ctx, Syscall::Open);
    0
}

#[tracepoint]
pub fn compat_sys_enter_creat(ctx: TracePointContext) -> u32 {
    enter(&ctx, Syscall::Creat);
    0
}

#[tracepoint]
pub fn compat_sys_exit_open(ctx: TracePointContext) -> u32 {
    exit(&ctx);
    0
}

#[tracepoint]
pub fn compat_sys_exit_creat(ctx: TracePointContext) -> u32 {
    exit(&ctx);
    0
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Syscall {
    Openat,
    Openat2,
    Open,
    Creat,
}

const AT_FDCWD: i64 = -100;
/// `creat(path, mode)` is `open(path, O_CREAT | O_WRONLY | O_TRUNC, mode)`.
const CREAT_FLAGS: u32 = 0o100 | 0o1 | 0o1000;

#[tracepoint]
pub fn compat_sys_exit_openat(ctx: TracePointContext) -> u32 {
    exit(&ctx);
    0
}

#[tracepoint]
pub fn compat_sys_exit_openat2(ctx: TracePointContext) -> u32 {
    exit(&ctx);
    0
}

#[inline(always)]
fn enter(ctx: &TracePointContext, syscall: Syscall) {
    let Some(task) = current_task() else { return };
    if filtered(KIND, true) {
        return;
    }
    // Only the syscall's own arguments are in its record: creat has two, open three.
    let args = match syscall {
        Syscall::Creat => 2,
        Syscall::Open => 3,
        Syscall::Openat | Syscall::Openat2 => 4,
    };
    let mut arg = [0u64; 4];
    for (n, slot) in arg.iter_mut().enumerate() {
        if n >= args {
            break;
        }
        match unsafe { ctx.read_at::<u64>(syscall_arg_offset(n)) } {
            Ok(value) => *slot = value,
            Err(_) => {
                count(Counter::ReadFailed, KIND);
                return;
            }
        }
    }
    let [arg0, arg1, arg2, arg3] = arg;
    let mut pending = match syscall {
        // open(filename, flags, mode)
        Syscall::Open => PendingOpen {
            filename: arg0,
            dfd: AT_FDCWD as i32,
            flags: arg1 as u32,
            mode: arg2 as u32,
            record_flags: flags::OPEN,
        },
        // creat(filename, mode)
        Syscall::Creat => PendingOpen {
            filename: arg0,
            dfd: AT_FDCWD as i32,
            flags: CREAT_FLAGS,
            mode: arg1 as u32,
            record_flags: flags::CREAT,
        },
        // openat(dfd, filename, flags, mode), openat2(dfd, filename, how, size)
        Syscall::Openat | Syscall::Openat2 => PendingOpen {
            filename: arg1,
            dfd: arg0 as i32,
            flags: arg2 as u32,
            mode: arg3 as u32,
            record_flags: 0,
        },
    };
    if syscall == Syscall::Openat2 {
        // how = { u64 flags; u64 mode; ... }
        pending.record_flags = flags::OPENAT2;
        let mut how = [0u64; 2];
        let rc = unsafe {
            bpf_probe_read_user(
                how.as_mut_ptr().cast(),
                size_of::<[u64; 2]>() as u32,
                arg2 as *const _,
            )
        };
        if rc == 0 {
            pending.flags = how[0] as u32;
            pending.mode = how[1] as u32;
        } else {
            pending.flags = 0;
            pending.mode = 0;
            count(Counter::ReadFailed, KIND);
        }
    }
    if PENDING_OPEN.insert(task.tid, pending, 0).is_err() {
        count(Counter::PendingMapFull, KIND);
    }
}

#[inline(always)]
fn exit(ctx: &TracePointContext) {
    let Some(task) = current_task() else { return };
    let Some(pending) = PENDING_OPEN.get_ptr(task.tid) else {
        // A filtered task's entry was dropped (and counted) at syscall entry.
        if !filtered(KIND, false) {
            count(Counter::Unpaired, KIND);
        }
        return;
    };
    let pending = unsafe { *pending };
    // Deleting cannot fail for a key just found by this thread; nothing to do if it did.
    let _ = PENDING_OPEN.remove(task.tid);
    // The filter may have learnt about this task's pod since the entry.
    if filtered(KIND, true) {
        return;
    }
    let result = unsafe { ctx.read_at::<i64>(SYSCALL_RET_OFFSET) }.unwrap_or(i64::MIN);

    // Most paths fit the small record; a path that fills it is read again into a large one.
    if let Small::TooLong = emit_small(&pending, result, task) {
        emit_large(&pending, result, task);
    }
}

enum Small {
    Done,
    TooLong,
}

/// What reading a path into a buffer of `CAP` bytes gave.
enum PathRead {
    /// Not readable: reported without a path.
    Missing,
    /// This many bytes, without the terminator.
    Fits(usize),
    /// It filled the buffer: it may continue beyond it.
    Full,
}

/// Reads the user-space path at `filename` into `dst` (at least `CAP` writable bytes).
#[inline(always)]
unsafe fn read_path<const CAP: usize>(dst: *mut u8, filename: u64) -> PathRead {
    let read = unsafe { bpf_probe_read_user_str(dst.cast(), CAP as u32, filename as *const _) };
    if read <= 0 {
        count(Counter::ReadFailed, KIND);
        PathRead::Missing
    } else if read as usize >= CAP {
        PathRead::Full
    } else {
        PathRead::Fits(read as usize - 1)
    }
}

/// Reads the path into the scratch buffer; reports the open (or holds it back as a repeat)
/// if the path fits a small record.
#[inline(always)]
fn emit_small(pending: &PendingOpen, result: i64, task: Task) -> Small {
    let Some(scratch) = OPEN_SCRATCH.get_ptr_mut(0) else {
        return Small::TooLong;
    };
    let path = scratch.cast::<u8>();
    let mut record_flags = pending.record_flags;
    let path_len = match unsafe { read_path::<OPEN_SMALL_TAIL>(path, pending.filename) } {
        PathRead::Missing => {
            record_flags |= flags::PATH_MISSING;
            unsafe { *path = 0 };
            0
        }
        PathRead::Fits(len) => len,
        PathRead::Full => return Small::TooLong,
    };

    // Absolute paths are deduplicated: the same file opened the same way with the same
    // outcome. (A relative path depends on the caller's directory.)
    let mut repeats = Repeats::default();
    if path_len > 0 && unsafe { *path } == b'/' {
        let mut hash = dedup::seed(KIND);
        hash = dedup::hash_u64(hash, u64::from(pending.flags));
        hash = dedup::hash_u64(hash, u64::from(pending.record_flags));
        hash = dedup::hash_u64(hash, result.min(0) as u64);
        hash = unsafe { dedup::hash_bytes::<OPEN_SMALL_TAIL>(hash, path, path_len) };
        let (cgroup, now) = unsafe { (bpf_get_current_cgroup_id(), bpf_ktime_get_boot_ns()) };
        match dedup::report(KIND, cgroup, hash, now) {
            Some(held) => repeats = held,
            None => return Small::Done,
        }
    }

    emit::<OPEN_SMALL_TAIL>(task, |record, tail| unsafe {
        // The whole buffer: a constant size, and the bytes after the terminator are never read.
        if bpf_probe_read_kernel(tail.cast(), OPEN_SMALL_TAIL as u32, path.cast()) != 0 {
            *tail = 0;
        }
        fill(record, pending, result, record_flags, path_len, repeats)
    });
    Small::Done
}

/// A path too long for a small record: read straight into a large one, truncated if it
/// fills even that. Not deduplicated.
#[inline(always)]
fn emit_large(pending: &PendingOpen, result: i64, task: Task) {
    emit::<OPEN_LARGE_TAIL>(task, |record, tail| unsafe {
        let mut record_flags = pending.record_flags;
        let path_len = match read_path::<OPEN_LARGE_TAIL>(tail, pending.filename) {
            PathRead::Missing => {
                record_flags |= flags::PATH_MISSING;
                0
            }
            PathRead::Fits(len) => len,
            PathRead::Full => {
                record_flags |= flags::PATH_TRUNCATED;
                OPEN_LARGE_TAIL - 1
            }
        };
        fill(
            record,
            pending,
            result,
            record_flags,
            path_len,
            Repeats::default(),
        )
    });
}

/// Reserves an open record with a `TAIL`-byte path, has `write` fill it (record, tail) and
/// the header, and commits it.
#[inline(always)]
fn emit<const TAIL: usize>(task: Task, write: impl FnOnce(*mut OpenRecord, *mut u8) -> u32) {
    let Some(mut entry) = EVENTS.reserve_bytes(size_of::<OpenRecord>() + TAIL, 0) else {
        count(Counter::RingFull, KIND);
        return;
    };
    let base = entry.as_mut_ptr();
    let record = base.cast::<OpenRecord>();
    unsafe {
        let record_flags = write(record, base.add(size_of::<OpenRecord>()));
        write_header(&raw mut (*record).header, KIND, record_flags, task);
    }
    submit(entry);
    count(Counter::Submitted, KIND);
}

/// Fills an open record's fields after the header; returns the header's flags.
///
/// # Safety
/// `record` must point to a reserved ring buffer record.
#[inline(always)]
unsafe fn fill(
    record: *mut OpenRecord,
    pending: &PendingOpen,
    result: i64,
    record_flags: u32,
    path_len: usize,
    repeats: Repeats,
) -> u32 {
    unsafe {
        (*record).result = result;
        (*record).dfd = pending.dfd;
        (*record).flags = pending.flags;
        (*record).mode = pending.mode;
        (*record).path_len = 0;
        (*record).requested_len = path_len as u32;
        (*record).base = open_base::NONE;
        (*record).walk = walk::NONE;
        (*record)._pad = 0;
        (*record).repeats = repeats;
    }
    record_flags
}
