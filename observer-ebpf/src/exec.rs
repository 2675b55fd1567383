//! Exec. At `sched:sched_process_exec` the new image is in place and the tracepoint has the
//! file name the caller passed (its memory is gone by then): the name is kept by thread id.
//! At the syscall's exit (`sys_exit_execve` or `sys_exit_execveat`) the record is sent (after
//! a successful `execveat` the kernel reports the exit as `execve`'s, so a small entry
//! program marks the threads inside `execveat`): argv from the new image's own memory
//! (`mm->arg_start..arg_end`, which the kernel itself just wrote, so its pages are present
//! and no other thread can have changed it), the executable walked from `mm->exe_file`, and
//! the working directory from `fs->pwd`. An exec that failed has no new image: it is sent
//! with the caller's file name, and the directory a relative one was looked up from.

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
    flags, offsets::SYSCALL_RET_OFFSET, walk as bits, Counter, EventKind, ExecRecord,
    PendingExecName, ARGS_CAPACITY, PATH_CAPACITY,
};

use crate::{
    kmem::{
        memory_shared, rd, rd_path, rd_ptr, syscall_args, task, task_pwd, task_root, user_regs,
    },
    maps::{koff, EXEC_NAMES, EXEC_NAME_SCRATCH, IN_EXECVEAT, OFFSETS, OUT_BUF},
    record::{count, current_task, filtered, output, write_header, Task},
    walk::{copy_out, walk, Walked},
};

const KIND: EventKind = EventKind::Exec;
const HDR: usize = size_of::<ExecRecord>();
const CAP: u64 = PATH_CAPACITY as u64;
const AT_FDCWD: i64 = -100;

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    keep_name(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_execveat(_ctx: TracePointContext) -> u32 {
    if let Some(task_ids) = current_task() {
        if IN_EXECVEAT.insert(task_ids.tid, 1, 0).is_err() {
            count(Counter::PendingMapFull, KIND);
        }
    }
    0
}

#[tracepoint]
pub fn sys_exit_execve(ctx: TracePointContext) -> u32 {
    exit(&ctx, false);
    0
}

#[tracepoint]
pub fn sys_exit_execveat(ctx: TracePointContext) -> u32 {
    exit(&ctx, true);
    0
}

/// Keeps the file name the tracepoint has until the syscall's exit.
#[inline(always)]
fn keep_name(ctx: &TracePointContext) {
    let Some(task_ids) = current_task() else {
        return;
    };
    // Counted at the syscall's exit, where the exec is dropped.
    if filtered(KIND, false) {
        return;
    }
    let offsets = OFFSETS.load();
    let (Ok(loc), Ok(old_tid)) = (unsafe {
        (
            ctx.read_at::<u32>(offsets.exec_filename as usize),
            ctx.read_at::<i32>(offsets.exec_old_pid as usize),
        )
    }) else {
        count(Counter::ReadFailed, KIND);
        return;
    };
    let Some(pending) = EXEC_NAME_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let pending = unsafe { &mut *pending };
    pending.old_tid = old_tid as u32;
    pending.flags = 0;
    pending._pad = 0;
    // __data_loc: offset in the low 16 bits, length with its NUL in the high 16.
    let src = unsafe { ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize) };
    let read = unsafe {
        bpf_probe_read_kernel_str(pending.name.as_mut_ptr().cast(), CAP as u32, src.cast())
    };
    pending.len = if read > 0 { (read - 1) as u32 } else { 0 };
    if read <= 0 {
        count(Counter::ReadFailed, KIND);
        pending.flags |= flags::PATH_MISSING;
    } else if u64::from(loc >> 16) > CAP {
        pending.flags |= flags::PATH_TRUNCATED;
    }
    // Passed by reference: the value is 4 KiB and must not be copied to the stack.
    let kept: &PendingExecName = pending;
    if EXEC_NAMES.insert(task_ids.tid, kept, 0).is_err() {
        count(Counter::PendingMapFull, KIND);
    }
}

#[inline(always)]
fn exit(ctx: &TracePointContext, exit_of_execveat: bool) {
    let Some(task_ids) = current_task() else {
        return;
    };
    let execveat = exit_of_execveat || IN_EXECVEAT.get_ptr(task_ids.tid).is_some();
    if execveat {
        let _ = IN_EXECVEAT.remove(task_ids.tid);
    }
    let kept = EXEC_NAMES.get_ptr(task_ids.tid);
    if filtered(KIND, true) {
        if kept.is_some() {
            let _ = EXEC_NAMES.remove(task_ids.tid);
        }
        return;
    }
    let result = unsafe { ctx.read_at::<i64>(SYSCALL_RET_OFFSET) }.unwrap_or(i64::MIN);
    let Some(out) = OUT_BUF.get_ptr_mut(0) else {
        return;
    };
    let out = out.cast::<u8>();
    let mut record_flags = flags::KERNEL_VIEW;
    if execveat {
        record_flags |= flags::EXECVEAT;
    }
    if result == 0 {
        replaced(out, task_ids, kept, record_flags);
        if kept.is_some() {
            let _ = EXEC_NAMES.remove(task_ids.tid);
        }
    } else {
        // A failed exec never reached sched_process_exec; a name kept from an earlier one
        // of this thread (that never got its exit) is stale.
        if kept.is_some() {
            let _ = EXEC_NAMES.remove(task_ids.tid);
        }
        failed(out, task_ids, result, execveat, record_flags);
    }
}

/// An exec that replaced the image: the kept name, then what the new image is.
#[inline(always)]
fn replaced(
    out: *mut u8,
    task_ids: Task,
    kept: Option<*const PendingExecName>,
    mut record_flags: u32,
) {
    let mut filename_len: u64 = 0;
    let mut old_tid = task_ids.tid;
    match kept {
        Some(kept) => unsafe {
            record_flags |= (*kept).flags;
            old_tid = (*kept).old_tid;
            filename_len = u64::from((*kept).len);
            if filename_len > CAP {
                filename_len = CAP;
            }
            if filename_len > 0
                && bpf_probe_read_kernel(
                    out.add(HDR).cast(),
                    filename_len as u32,
                    (*kept).name.as_ptr().cast(),
                ) != 0
            {
                filename_len = 0;
                record_flags |= flags::PATH_MISSING;
            }
        },
        None => {
            // The probes were attached while this exec was under way.
            count(Counter::Unpaired, KIND);
            record_flags |= flags::PATH_MISSING;
        }
    }

    // argv, from the new image.
    let t = task();
    let mm = rd_ptr(t + koff!(task_mm));
    let mut args_len: u64 = 0;
    match mm.and_then(|mm| {
        Ok((
            rd::<u64>(mm + koff!(mm_arg_start))?,
            rd::<u64>(mm + koff!(mm_arg_end))?,
        ))
    }) {
        Ok((start, end)) if end > start => {
            args_len = end - start;
            if args_len > ARGS_CAPACITY as u64 {
                args_len = ARGS_CAPACITY as u64;
                record_flags |= flags::ARGS_TRUNCATED;
            }
            let at = HDR as u64 + filename_len;
            let rc = unsafe {
                bpf_probe_read_user(
                    out.add(at as usize).cast(),
                    args_len as u32,
                    start as *const _,
                )
            };
            if rc != 0 {
                count(Counter::ReadFailed, KIND);
                record_flags |= flags::ARGS_MISSING;
                args_len = 0;
            }
        }
        // An empty argv is possible (execve with argv = NULL).
        Ok(_) => {}
        Err(()) => {
            count(Counter::ReadFailed, KIND);
            record_flags |= flags::ARGS_MISSING;
        }
    }
    if args_len > ARGS_CAPACITY as u64 {
        args_len = ARGS_CAPACITY as u64;
    }

    // The executable, walked to the task's root.
    let root = task_root(t);
    let exe_file = mm.and_then(|mm| rd_ptr(mm + koff!(mm_exe_file)));
    let exe_ino = exe_file
        .and_then(|f| rd_ptr(f + koff!(file_f_inode)))
        .and_then(|inode| rd::<u64>(inode + koff!(inode_i_ino)))
        .unwrap_or(0);
    let exe = match (exe_file.and_then(|f| rd_path(f + koff!(file_f_path))), root) {
        (Ok(path), Ok(root)) => walk(path, root),
        _ => Walked {
            pos: CAP,
            bits: bits::READ_ERROR,
        },
    };
    let exe_at = HDR as u64 + filename_len + args_len;
    let exe_len = copy_out(unsafe { out.add(exe_at as usize) }, &exe);
    finish(
        out,
        task_ids,
        old_tid,
        record_flags,
        0,
        Lengths {
            filename: filename_len,
            args: args_len,
            exe: exe_len,
            exe_walk: exe.bits,
            exe_ino,
        },
    );
}

/// A failed exec: the name the caller passed, from its memory (still there: the image was
/// not replaced).
#[inline(always)]
fn failed(out: *mut u8, task_ids: Task, result: i64, execveat: bool, mut record_flags: u32) {
    // execve(filename, ...) / execveat(dfd, filename, ...)
    let (dfd, filename) = match user_regs().and_then(syscall_args) {
        Ok(args) if execveat => (i64::from(args[0] as i32), args[1]),
        Ok(args) => (AT_FDCWD, args[0]),
        Err(()) => (AT_FDCWD, 0),
    };
    let read =
        unsafe { bpf_probe_read_user_str(out.add(HDR).cast(), CAP as u32, filename as *const _) };
    let mut filename_len = if read > 0 { (read - 1) as u64 } else { 0 };
    if read <= 0 {
        count(Counter::ReadFailed, KIND);
        record_flags |= flags::PATH_MISSING;
    } else if filename_len >= CAP - 1 {
        record_flags |= flags::PATH_TRUNCATED;
    }
    if filename_len > CAP {
        filename_len = CAP;
    }
    // A relative name was looked up from the working directory only with AT_FDCWD; the
    // cwd walk below then says where. With a dfd there is no base to report.
    if memory_shared(task()) {
        record_flags |= flags::MEMORY_SHARED;
    }
    let relative = filename_len > 0 && unsafe { *out.add(HDR) } != b'/';
    if relative && dfd != AT_FDCWD {
        record_flags |= flags::EXEC_DIRFD;
    }
    finish(
        out,
        task_ids,
        task_ids.tid,
        record_flags,
        result,
        Lengths {
            filename: filename_len,
            args: 0,
            exe: 0,
            exe_walk: bits::NONE,
            exe_ino: 0,
        },
    );
}

struct Lengths {
    filename: u64,
    args: u64,
    exe: u64,
    exe_walk: u32,
    exe_ino: u64,
}

/// Walks the working directory after the other strings and sends the record.
#[inline(always)]
fn finish(
    out: *mut u8,
    task_ids: Task,
    old_tid: u32,
    record_flags: u32,
    result: i64,
    lengths: Lengths,
) {
    let t = task();
    let cwd = match (task_pwd(t), task_root(t)) {
        (Ok(pwd), Ok(root)) => walk(pwd, root),
        _ => Walked {
            pos: CAP,
            bits: bits::READ_ERROR,
        },
    };
    let (mut filename, mut args, mut exe) = (lengths.filename, lengths.args, lengths.exe);
    // Bounds the verifier can see (each is at most 4 KiB by construction).
    if filename > CAP {
        filename = CAP;
    }
    if args > ARGS_CAPACITY as u64 {
        args = ARGS_CAPACITY as u64;
    }
    if exe > CAP {
        exe = CAP;
    }
    let cwd_at = HDR as u64 + filename + args + exe;
    let cwd_len = copy_out(unsafe { out.add(cwd_at as usize) }, &cwd);
    let record = out.cast::<ExecRecord>();
    unsafe {
        write_header(&raw mut (*record).header, KIND, record_flags, task_ids);
        (*record).old_tid = old_tid;
        (*record).filename_len = filename as u32;
        (*record).args_len = args as u32;
        (*record).exe_len = exe as u32;
        (*record).cwd_len = cwd_len as u32;
        (*record).exe_walk = lengths.exe_walk;
        (*record).cwd_walk = cwd.bits;
        (*record)._pad = 0;
        (*record).exe_ino = lengths.exe_ino;
        (*record).result = result;
    }
    let _ = output(KIND, out, cwd_at + cwd_len);
}
