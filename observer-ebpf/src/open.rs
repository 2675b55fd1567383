//! `openat`, `openat2`, and the legacy `open` and `creat` (which musl's `open()` still
//! calls), one program each at syscall exit. The arguments come from the registers the task
//! entered the syscall with (no entry program, no pairing map). What was
//! opened comes from the kernel: for a successful open, the new descriptor's `struct file`,
//! whose path is walked up to the task's root (so symlinks are resolved, a container's path
//! is the container's, and a second thread rewriting the caller's buffer changes nothing);
//! for a failed one, the directory a relative path was resolved from (the working directory
//! or the `dfd`'s), joined with the requested path in userspace. A repeat is judged on the
//! kernel's identity of the file before any string is read or any path walked.
//! Descriptors (the new one, a `dfd`) are looked up in the table after the call; when
//! another task shared the table, it could have replaced one meanwhile, and a path taken
//! from it is marked (`FILES_SHARED`).

use aya_ebpf::{
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns, bpf_probe_read_user,
        bpf_probe_read_user_str,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use core::mem::size_of;
use observer_common::{
    flags, offsets::SYSCALL_RET_OFFSET, open_base, walk as bits, Counter, EventKind, OpenRecord,
    Repeats, PATH_CAPACITY,
};

use crate::{
    dedup,
    kmem::{
        fd_file, memory_shared, rd, rd_path, syscall_args, task, task_pwd, task_root, user_regs,
        KPath,
    },
    maps::{koff, OUT_BUF},
    record::{count, current_task, filtered, output, write_header, Task},
    walk::{copy_out, walk, Walked},
};

const KIND: EventKind = EventKind::Open;
const HDR: usize = size_of::<OpenRecord>();
const AT_FDCWD: i64 = -100;
/// Failed opens are deduplicated by their requested path when it is at most this long.
const DEDUP_NAME_MAX: usize = 256;

#[tracepoint]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    exit(&ctx, Syscall::Openat);
    0
}

#[tracepoint]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    exit(&ctx, Syscall::Openat2);
    0
}

#[tracepoint]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    exit(&ctx, Syscall::Open);
    0
}

#[tracepoint]
pub fn sys_exit_creat(ctx: TracePointContext) -> u32 {
    exit(&ctx, Syscall::Creat);
    0
}

/// Which call opened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Syscall {
    Openat,
    Openat2,
    Open,
    Creat,
}

impl Syscall {
    /// The record flag naming it (none for `openat`).
    #[inline(always)]
    fn flag(self) -> u32 {
        match self {
            Syscall::Openat => 0,
            Syscall::Openat2 => flags::OPENAT2,
            Syscall::Open => flags::OPEN,
            Syscall::Creat => flags::CREAT,
        }
    }
}

/// `creat(path, mode)` is `open(path, O_CREAT | O_WRONLY | O_TRUNC, mode)`.
const CREAT_FLAGS: u32 = 0o100 | 0o1 | 0o1000;

/// The syscall's arguments.
struct Call {
    dfd: i64,
    filename: u64,
    flags: u32,
    mode: u32,
    record_flags: u32,
}

#[inline(always)]
fn exit(ctx: &TracePointContext, syscall: Syscall) {
    let Some(task_ids) = current_task() else {
        return;
    };
    if filtered(KIND, true) {
        return;
    }
    let result = unsafe { ctx.read_at::<i64>(SYSCALL_RET_OFFSET) }.unwrap_or(i64::MIN);
    let Some(out) = OUT_BUF.get_ptr_mut(0) else {
        return;
    };
    let out = out.cast::<u8>();
    let Some(mut call) = call(syscall) else {
        // Without the arguments nothing can be said but that an open happened.
        count(Counter::ReadFailed, KIND);
        let mut call = empty_call(syscall);
        call.record_flags |= flags::PATH_MISSING;
        emit(
            out,
            task_ids,
            result,
            &call,
            Target::none(),
            Repeats::default(),
            0,
        );
        return;
    };
    let t = task();
    let target = if result >= 0 {
        opened(t, result)
    } else {
        Target::none()
    };
    // Part of the edge: a file a shared table could have swapped in is never merged with
    // one it could not.
    call.record_flags |= target.flag();
    let mut held = Repeats::default();
    if target.base == open_base::FILE {
        // The file is known: judge a repeat before reading or walking anything.
        match judge(&call, result, file_identity(&target.path)) {
            Some(repeats) => held = repeats,
            None => return,
        }
    }
    // What the caller passed; it goes first in the tail. For a failed open it is also the
    // dedup key: the bytes after it are zeroed first, so a hash of the whole block depends on
    // the string alone.
    if target.base == open_base::NONE {
        unsafe { core::ptr::write_bytes(out.add(HDR), 0, DEDUP_NAME_MAX) };
    }
    let requested = unsafe {
        bpf_probe_read_user_str(
            out.add(HDR).cast(),
            PATH_CAPACITY as u32,
            call.filename as *const _,
        )
    };
    let requested_len = match requested {
        n if n > 0 => (n - 1) as u64,
        _ => {
            count(Counter::ReadFailed, KIND);
            call.record_flags |= flags::PATH_MISSING;
            0
        }
    };
    // The capture holds up to PATH_CAPACITY - 1 bytes, the longest name the kernel accepts:
    // one that fills it was cut only if the string goes on.
    if requested_len as usize >= PATH_CAPACITY - 1 && !terminated_at(call.filename + requested_len)
    {
        call.record_flags |= flags::PATH_TRUNCATED;
    }
    let target = if target.base == open_base::NONE {
        // Failed: where a relative path was looked up.
        let relative = requested_len > 0 && unsafe { *out.add(HDR) } != b'/';
        let target = if relative {
            lookup_base(t, call.dfd)
        } else {
            target
        };
        call.record_flags |= target.flag();
        let name =
            unsafe { dedup::hash_block::<{ DEDUP_NAME_MAX / 8 }>(dedup::seed(KIND), out.add(HDR)) };
        let key = dedup::hash_word(
            dedup::hash_word(name, requested_len),
            file_identity(&target.path),
        );
        if (requested_len as usize) < DEDUP_NAME_MAX {
            match judge(&call, result, key) {
                Some(repeats) => held = repeats,
                None => return,
            }
        }
        target
    } else {
        target
    };
    // Not part of the edge (judged above): it says how far the requested string is the
    // caller's own.
    if memory_shared(t) {
        call.record_flags |= flags::MEMORY_SHARED;
    }
    emit(out, task_ids, result, &call, target, held, requested_len);
}

/// The arguments from the saved registers; openat2's flags and mode from its `open_how`.
#[inline(always)]
fn call(syscall: Syscall) -> Option<Call> {
    let regs = user_regs().ok()?;
    let [arg0, arg1, arg2, arg3] = syscall_args(regs).ok()?;
    let record_flags = flags::KERNEL_VIEW | syscall.flag();
    let mut call = match syscall {
        // open(filename, flags, mode)
        Syscall::Open => Call {
            dfd: AT_FDCWD,
            filename: arg0,
            flags: arg1 as u32,
            mode: arg2 as u32,
            record_flags,
        },
        // creat(filename, mode)
        Syscall::Creat => Call {
            dfd: AT_FDCWD,
            filename: arg0,
            flags: CREAT_FLAGS,
            mode: arg1 as u32,
            record_flags,
        },
        // openat(dfd, filename, flags, mode), openat2(dfd, filename, how, size)
        Syscall::Openat | Syscall::Openat2 => Call {
            dfd: i64::from(arg0 as i32),
            filename: arg1,
            flags: arg2 as u32,
            mode: arg3 as u32,
            record_flags,
        },
    };
    if syscall == Syscall::Openat2 {
        // how = { u64 flags; u64 mode; ... }
        let mut how = [0u64; 2];
        let rc = unsafe {
            bpf_probe_read_user(
                how.as_mut_ptr().cast(),
                size_of::<[u64; 2]>() as u32,
                arg2 as *const _,
            )
        };
        if rc == 0 {
            call.flags = how[0] as u32;
            call.mode = how[1] as u32;
        } else {
            call.flags = 0;
            call.mode = 0;
            count(Counter::ReadFailed, KIND);
        }
    }
    Some(call)
}

#[inline(always)]
fn empty_call(syscall: Syscall) -> Call {
    Call {
        dfd: AT_FDCWD,
        filename: 0,
        flags: 0,
        mode: 0,
        record_flags: flags::KERNEL_VIEW | syscall.flag(),
    }
}

/// A kernel path and what it is.
#[derive(Clone, Copy)]
struct Target {
    base: u32,
    path: KPath,
    /// The path is a descriptor's, read while another task shared the descriptor table.
    files_shared: bool,
}

impl Target {
    #[inline(always)]
    fn none() -> Self {
        Target {
            base: open_base::NONE,
            path: KPath { mnt: 0, dentry: 0 },
            files_shared: false,
        }
    }

    /// The record flag the target's origin adds.
    #[inline(always)]
    fn flag(&self) -> u32 {
        if self.files_shared {
            flags::FILES_SHARED
        } else {
            0
        }
    }
}

/// The path of descriptor `fd`'s file, and whether the descriptor table was shared when it
/// was read (see `fd_file`).
#[inline(always)]
fn fd_path(t: u64, fd: i64) -> Result<(KPath, bool), ()> {
    let (file, shared) = fd_file(t, fd)?;
    Ok((rd_path(file + koff!(file_f_path))?, shared))
}

/// The file a successful open returned.
#[inline(always)]
fn opened(t: u64, fd: i64) -> Target {
    match fd_path(t, fd) {
        Ok((path, files_shared)) => Target {
            base: open_base::FILE,
            path,
            files_shared,
        },
        Err(()) => {
            count(Counter::ReadFailed, KIND);
            Target::none()
        }
    }
}

/// The directory a relative path was looked up from: the working directory, or the
/// `dfd`'s.
#[inline(always)]
fn lookup_base(t: u64, dfd: i64) -> Target {
    let (base, path) = if dfd == AT_FDCWD {
        // Not a descriptor: the task's own `fs`.
        (open_base::CWD, task_pwd(t).map(|path| (path, false)))
    } else {
        (open_base::DIRFD, fd_path(t, dfd))
    };
    match path {
        Ok((path, files_shared)) => Target {
            base,
            path,
            files_shared,
        },
        // A bad dfd (the open failed with EBADF): nothing to resolve from.
        Err(()) => Target::none(),
    }
}

/// Whether the caller's string ends at `addr` (a NUL there): a capture that filled the
/// buffer holds the whole string only then. An unreadable byte counts as more string.
#[inline(always)]
fn terminated_at(addr: u64) -> bool {
    let mut byte = 1u8;
    let rc = unsafe { bpf_probe_read_user((&raw mut byte).cast(), 1, addr as *const _) };
    rc == 0 && byte == 0
}

/// The kernel's identity of a path: its mount and dentry, and the dentry's parent and
/// name hash and length (so a dentry freed and reused for another file, or renamed, is
/// another identity). 0 for no path.
#[inline(always)]
fn file_identity(path: &KPath) -> u64 {
    if path.dentry == 0 {
        return 0;
    }
    let mut h = dedup::hash_word(dedup::seed(KIND), path.mnt);
    h = dedup::hash_word(h, path.dentry);
    if let Ok(window) = rd::<[u64; 4]>(path.dentry + koff!(dentry_win)) {
        let w = window.as_ptr().cast::<u8>();
        let parent = unsafe {
            w.add(koff!(win_parent) as usize)
                .cast::<u64>()
                .read_unaligned()
        };
        let hash = unsafe {
            w.add(koff!(win_hash) as usize)
                .cast::<u32>()
                .read_unaligned()
        };
        let len = unsafe {
            w.add(koff!(win_len) as usize)
                .cast::<u32>()
                .read_unaligned()
        };
        h = dedup::hash_word(h, parent);
        h = dedup::hash_word(h, (u64::from(len) << 32) | u64::from(hash));
    }
    h
}

/// `None` when this open repeats an edge reported less than the dedup window ago (it is
/// then counted in the dedup state and not sent); else the repeats its report carries.
#[inline(always)]
fn judge(call: &Call, result: i64, identity: u64) -> Option<Repeats> {
    let mut h = dedup::hash_word(identity, u64::from(call.flags));
    h = dedup::hash_word(h, u64::from(call.record_flags));
    h = dedup::hash_word(h, result.min(0) as u64);
    let (cgroup, now) = unsafe { (bpf_get_current_cgroup_id(), bpf_ktime_get_boot_ns()) };
    dedup::report(KIND, cgroup, h, now)
}

/// Walks the target (if any), assembles the record in `OUT_BUF` (the requested path is
/// already in its tail) and sends it.
#[inline(always)]
fn emit(
    out: *mut u8,
    task_ids: Task,
    result: i64,
    call: &Call,
    target: Target,
    repeats: Repeats,
    requested_len: u64,
) {
    let t = task();
    let walked = if target.base == open_base::NONE {
        Walked::NONE
    } else {
        match task_root(t) {
            Ok(root) => walk(target.path, root),
            Err(()) => Walked {
                pos: PATH_CAPACITY as u64,
                bits: bits::READ_ERROR,
            },
        }
    };
    let requested_len = if requested_len > PATH_CAPACITY as u64 {
        PATH_CAPACITY as u64
    } else {
        requested_len
    };
    let path_len = copy_out(unsafe { out.add(HDR + requested_len as usize) }, &walked);
    // Without a whole walk the record's path is the caller's string, not the descriptor's.
    let record_flags = if bits::is_complete(walked.bits) {
        call.record_flags
    } else {
        call.record_flags & !flags::FILES_SHARED
    };
    let record = out.cast::<OpenRecord>();
    unsafe {
        write_header(&raw mut (*record).header, KIND, record_flags, task_ids);
        (*record).result = result;
        (*record).dfd = call.dfd as i32;
        (*record).flags = call.flags;
        (*record).mode = call.mode;
        (*record).path_len = path_len as u32;
        (*record).requested_len = requested_len as u32;
        (*record).base = target.base;
        (*record).walk = walked.bits;
        (*record)._pad = 0;
        (*record).repeats = repeats;
    }
    if !output(KIND, out, HDR as u64 + requested_len + path_len) {
        dedup::unreport(&repeats);
    }
}
