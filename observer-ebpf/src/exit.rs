//! Process exit: `sched:sched_process_exit` fires for every thread; only the last one
//! (`group_dead`) ends the process. Kernels without `group_dead` fall back to the exit of
//! the thread group leader.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use core::mem::size_of;
use observer_common::{Counter, EventKind, ExitRecord};

use crate::{
    maps::{EVENTS, OFFSETS},
    record::{count, current_task, filtered, submit, write_header},
};

const KIND: EventKind = EventKind::Exit;

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let Some(task) = current_task() else { return 0 };
    let group_dead_offset = OFFSETS.load().exit_group_dead;
    let process_ends = if group_dead_offset != 0 {
        matches!(unsafe { ctx.read_at::<u8>(group_dead_offset as usize) }, Ok(v) if v != 0)
    } else {
        task.tid == task.tgid
    };
    if !process_ends || filtered(KIND, true) {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve_bytes(size_of::<ExitRecord>(), 0) else {
        count(Counter::RingFull, KIND);
        return 0;
    };
    let record = entry.as_mut_ptr().cast::<ExitRecord>();
    unsafe { write_header(&raw mut (*record).header, KIND, 0, task) };
    submit(entry);
    count(Counter::Submitted, KIND);
    0
}
