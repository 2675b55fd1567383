//! Exec, at `sched:sched_process_exec`, once the new image is in place: argv is read from
//! the new image's own memory (`mm->arg_start..arg_end`, which the kernel itself just wrote,
//! so its pages are present and no other thread can have changed it), the executable is
//! walked from `mm->exe_file` and the working directory from `fs->pwd`. The tracepoint's
//! `filename` is the name the caller passed. Which syscall it was comes from the number the
//! task entered the kernel with.

use aya_ebpf::{
    helpers::generated::{bpf_probe_read_kernel_str, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext as _,
};
use core::mem::size_of;
use observer_common::{
    flags, walk as bits, Counter, EventKind, ExecRecord, ARGS_CAPACITY, PATH_CAPACITY,
};

use crate::{
    kmem::{rd, rd_path, rd_ptr, syscall_nr, task, task_pwd, task_root, user_regs},
    maps::{koff, OFFSETS, OUT_BUF},
    record::{count, current_task, filtered, output, write_header},
    walk::{copy_out, walk, Walked},
};

const KIND: EventKind = EventKind::Exec;
const HDR: usize = size_of::<ExecRecord>();
/// x86_64 syscall numbers.
const NR_EXECVEAT: u64 = 322;
const CAP: u64 = PATH_CAPACITY as u64;

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    run(&ctx);
    0
}

#[inline(always)]
fn run(ctx: &TracePointContext) {
    let Some(task_ids) = current_task() else {
        return;
    };
    if filtered(KIND, true) {
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
    let Some(out) = OUT_BUF.get_ptr_mut(0) else {
        return;
    };
    let out = out.cast::<u8>();
    let mut record_flags = flags::KERNEL_VIEW;
    if let Ok(nr) = user_regs().and_then(syscall_nr) {
        if nr == NR_EXECVEAT {
            record_flags |= flags::EXECVEAT;
        }
    }

    // 1. The file name as passed (`__data_loc`: offset in the low 16 bits, length with its
    //    NUL in the high 16).
    let src = unsafe { ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize) };
    let read = unsafe { bpf_probe_read_kernel_str(out.add(HDR).cast(), CAP as u32, src.cast()) };
    let mut filename_len = if read > 0 { (read - 1) as u64 } else { 0 };
    if read <= 0 {
        count(Counter::ReadFailed, KIND);
        record_flags |= flags::PATH_MISSING;
    } else if u64::from(loc >> 16) > CAP {
        record_flags |= flags::PATH_TRUNCATED;
    }
    if filename_len > CAP {
        filename_len = CAP;
    }

    // 2. argv, from the new image.
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

    // 3. The executable and 4. the working directory, walked to the task's root.
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
    let cwd = match (task_pwd(t), root) {
        (Ok(pwd), Ok(root)) => walk(pwd, root),
        _ => Walked {
            pos: CAP,
            bits: bits::READ_ERROR,
        },
    };
    let cwd_at = exe_at + exe_len;
    let cwd_len = copy_out(unsafe { out.add(cwd_at as usize) }, &cwd);

    let record = out.cast::<ExecRecord>();
    unsafe {
        write_header(&raw mut (*record).header, KIND, record_flags, task_ids);
        (*record).old_tid = old_tid as u32;
        (*record).filename_len = filename_len as u32;
        (*record).args_len = args_len as u32;
        (*record).exe_len = exe_len as u32;
        (*record).cwd_len = cwd_len as u32;
        (*record).exe_walk = exe.bits;
        (*record).cwd_walk = cwd.bits;
        (*record)._pad = 0;
        (*record).exe_ino = exe_ino;
    }
    output(KIND, out, cwd_at + cwd_len);
}
