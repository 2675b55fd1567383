//! New processes. `task:task_newtask` fires in `copy_process` before the child can run and,
//! unlike `sched:sched_process_fork`, carries `clone_flags`, so threads (`CLONE_THREAD`) are
//! dropped here instead of flooding userspace, and `CLONE_PARENT` is visible.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use core::mem::size_of;
use observer_common::{Counter, EventKind, ForkRecord};

use crate::{
    maps::{EVENTS, OFFSETS},
    record::{count, current_task, filtered, submit, write_header},
};

const KIND: EventKind = EventKind::Fork;
const CLONE_THREAD: u64 = 0x0001_0000;

#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let Some(task) = current_task() else { return 0 };
    let offsets = OFFSETS.load();
    let (Ok(child), Ok(clone_flags)) = (unsafe {
        (
            ctx.read_at::<i32>(offsets.newtask_pid as usize),
            ctx.read_at::<u64>(offsets.newtask_clone_flags as usize),
        )
    }) else {
        count(Counter::ReadFailed, KIND);
        return 0;
    };
    if clone_flags & CLONE_THREAD != 0 || filtered(KIND, true) {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve_bytes(size_of::<ForkRecord>(), 0) else {
        count(Counter::RingFull, KIND);
        return 0;
    };
    let record = entry.as_mut_ptr().cast::<ForkRecord>();
    unsafe {
        write_header(&raw mut (*record).header, KIND, 0, task);
        (*record).child_tgid = child as u32;
        (*record)._pad = 0;
        (*record).clone_flags = clone_flags;
    }
    submit(entry);
    count(Counter::Submitted, KIND);
    0
}
