//! Exec without the kernel view (a kernel without BTF): argv is captured at
//! `sys_enter_execve[at]` from the caller's memory (the old address space still holds it;
//! pages not faulted in since a fork cannot be read) into `PENDING_EXEC` by thread id;
//! `sched:sched_process_exec` then emits one record with the kernel's filename, the pid
//! change, and that argv. No executable or working directory is walked.

use aya_ebpf::{
    helpers::generated::{
        bpf_probe_read_kernel, bpf_probe_read_kernel_str, bpf_probe_read_user,
        bpf_probe_read_user_str,
    },
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext as _,
};
use core::mem::size_of;
use observer_common::{
    flags, offsets::syscall_arg_offset, Counter, EventKind, ExecRecord, PendingExec, ARGS_CAPACITY,
    EXEC_LARGE_TAIL, EXEC_SMALL_TAIL, MAX_ARGS, PATH_CAPACITY,
};

use observer_common::walk;

use crate::{
    maps::{EVENTS, EXEC_SCRATCH, OFFSETS, PENDING_EXEC},
    record::{count, current_task, filtered, submit, write_header, Task},
};

const KIND: EventKind = EventKind::Exec;

#[tracepoint]
pub fn compat_sys_enter_execve(ctx: TracePointContext) -> u32 {
    // execve(filename, argv, envp)
    capture_argv(&ctx, syscall_arg_offset(1), 0);
    0
}

#[tracepoint]
pub fn compat_sys_enter_execveat(ctx: TracePointContext) -> u32 {
    // execveat(dfd, filename, argv, envp, flags)
    capture_argv(&ctx, syscall_arg_offset(2), flags::EXECVEAT);
    0
}

/// A failed exec never reaches `sched_process_exec`: drop what its entry captured.
#[tracepoint]
pub fn compat_sys_exit_execve(_ctx: TracePointContext) -> u32 {
    forget_argv();
    0
}

#[tracepoint]
pub fn compat_sys_exit_execveat(_ctx: TracePointContext) -> u32 {
    forget_argv();
    0
}

#[inline(always)]
fn forget_argv() {
    if let Some(task) = current_task() {
        // After a successful exec the entry is already gone; a miss is expected.
        let _ = PENDING_EXEC.remove(task.tid);
    }
}

#[inline(always)]
fn capture_argv(ctx: &TracePointContext, argv_offset: usize, record_flags: u32) {
    let Some(task) = current_task() else { return };
    // Counted when the exec itself is dropped, at sched_process_exec.
    if filtered(KIND, false) {
        return;
    }
    let Some(scratch) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let Ok(argv) = (unsafe { ctx.read_at::<u64>(argv_offset) }) else {
        count(Counter::ReadFailed, KIND);
        return;
    };
    let pending = unsafe { &mut *scratch };
    pending.argc = 0;
    pending.args_len = 0;
    pending.record_flags = record_flags;
    pending._pad = 0;

    let mut used: usize = 0;
    let mut complete = false;
    for i in 0..MAX_ARGS {
        let mut arg: u64 = 0;
        let rc = unsafe {
            bpf_probe_read_user(
                (&raw mut arg).cast(),
                size_of::<u64>() as u32,
                (argv + (i * size_of::<u64>()) as u64) as *const _,
            )
        };
        if rc != 0 {
            count(Counter::ReadFailed, KIND);
            pending.record_flags |= if i == 0 {
                flags::ARGS_MISSING
            } else {
                flags::ARGS_TRUNCATED
            };
            complete = true;
            break;
        }
        if arg == 0 {
            complete = true;
            break;
        }
        if used >= ARGS_CAPACITY {
            break;
        }
        // `used < ARGS_CAPACITY` and the read is bounded by ARGS_CAPACITY, so it stays within
        // the 2 * ARGS_CAPACITY buffer; the mask makes that bound visible to the verifier.
        let at = used & (ARGS_CAPACITY - 1);
        let read = unsafe {
            bpf_probe_read_user_str(
                pending.buf.as_mut_ptr().add(at).cast(),
                ARGS_CAPACITY as u32,
                arg as *const _,
            )
        };
        if read <= 0 {
            count(Counter::ReadFailed, KIND);
            pending.record_flags |= flags::ARGS_TRUNCATED;
            complete = true;
            break;
        }
        used += read as usize;
        pending.argc += 1;
    }
    if !complete {
        // Stopped at MAX_ARGS or at the byte limit with arguments left over.
        pending.record_flags |= flags::ARGS_TRUNCATED;
    }
    if used > ARGS_CAPACITY {
        used = ARGS_CAPACITY;
        pending.record_flags |= flags::ARGS_TRUNCATED;
    }
    pending.args_len = used as u32;
    // Passed by reference: the value is 8 KiB and must not be copied to the stack.
    let captured: &PendingExec = pending;
    if PENDING_EXEC.insert(task.tid, captured, 0).is_err() {
        count(Counter::PendingMapFull, KIND);
    }
}

#[tracepoint]
pub fn compat_sched_process_exec(ctx: TracePointContext) -> u32 {
    let Some(task) = current_task() else { return 0 };
    let offsets = OFFSETS.load();
    let (Ok(loc), Ok(old_tid)) = (unsafe {
        (
            ctx.read_at::<u32>(offsets.exec_filename as usize),
            ctx.read_at::<i32>(offsets.exec_old_pid as usize),
        )
    }) else {
        count(Counter::ReadFailed, KIND);
        return 0;
    };
    let old_tid = old_tid as u32;
    // __data_loc: low 16 bits = offset from the record start, high 16 bits = length with NUL.
    let filename = Filename {
        src: unsafe { ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize) },
        len: (loc >> 16) as usize,
    };
    let pending = PENDING_EXEC.get_ptr(old_tid);
    if filtered(KIND, true) {
        if pending.is_some() {
            let _ = PENDING_EXEC.remove(old_tid);
        }
        return 0;
    }
    if pending.is_none() {
        count(Counter::Unpaired, KIND);
    }
    let args_len = match pending {
        Some(p) => unsafe { (*p).args_len as usize },
        None => 0,
    };
    const SMALL_HALF: usize = EXEC_SMALL_TAIL / 2;
    if filename.len <= SMALL_HALF && args_len <= SMALL_HALF {
        emit::<EXEC_SMALL_TAIL, SMALL_HALF, SMALL_HALF>(task, old_tid, &filename, pending);
    } else {
        emit::<EXEC_LARGE_TAIL, PATH_CAPACITY, ARGS_CAPACITY>(task, old_tid, &filename, pending);
    }
    if pending.is_some() {
        let _ = PENDING_EXEC.remove(old_tid);
    }
    0
}

struct Filename {
    src: *const u8,
    len: usize,
}

#[inline(always)]
fn emit<const TAIL: usize, const NAME_CAP: usize, const ARGS_CAP: usize>(
    task: Task,
    old_tid: u32,
    filename: &Filename,
    pending: Option<*const PendingExec>,
) {
    let Some(mut entry) = EVENTS.reserve_bytes(size_of::<ExecRecord>() + TAIL, 0) else {
        count(Counter::RingFull, KIND);
        return;
    };
    let base = entry.as_mut_ptr();
    let record = base.cast::<ExecRecord>();
    let tail = unsafe { base.add(size_of::<ExecRecord>()) };

    let mut record_flags = 0;
    let read =
        unsafe { bpf_probe_read_kernel_str(tail.cast(), NAME_CAP as u32, filename.src.cast()) };
    let mut name_len = if read > 0 { read as usize - 1 } else { 0 };
    if read <= 0 {
        count(Counter::ReadFailed, KIND);
        record_flags |= flags::PATH_MISSING;
    } else if filename.len > NAME_CAP {
        record_flags |= flags::PATH_TRUNCATED;
    }
    if name_len > NAME_CAP {
        name_len = NAME_CAP;
    }

    let mut args_len = 0;
    match pending {
        Some(p) => unsafe {
            record_flags |= (*p).record_flags;
            args_len = (*p).args_len as usize;
            if args_len > ARGS_CAP {
                args_len = ARGS_CAP;
                record_flags |= flags::ARGS_TRUNCATED;
            }
            if args_len > 0
                && bpf_probe_read_kernel(
                    tail.add(name_len).cast(),
                    args_len as u32,
                    (*p).buf.as_ptr().cast(),
                ) != 0
            {
                count(Counter::ReadFailed, KIND);
                record_flags |= flags::ARGS_MISSING;
                args_len = 0;
            }
        },
        None => record_flags |= flags::ARGS_MISSING,
    }

    unsafe {
        write_header(&raw mut (*record).header, KIND, record_flags, task);
        (*record).old_tid = old_tid;
        (*record).filename_len = name_len as u32;
        (*record).args_len = args_len as u32;
        (*record).exe_len = 0;
        (*record).cwd_len = 0;
        (*record).exe_walk = walk::NONE;
        (*record).cwd_walk = walk::NONE;
        (*record)._pad = 0;
        (*record).exe_ino = 0;
        (*record).result = 0;
    }
    submit(entry);
    count(Counter::Submitted, KIND);
}
