//! cgroup creation and removal in the v2 hierarchy. A container runtime creates a
//! container's cgroup before placing the container's first process in it, so userspace
//! learns the cgroup id → path (→ container id) mapping before any event carrying that id,
//! even for containers that exit before their directory could be looked up.

use aya_ebpf::{
    helpers::generated::bpf_probe_read_kernel_str, macros::tracepoint, programs::TracePointContext,
    EbpfContext as _,
};
use core::mem::size_of;
use observer_common::{
    flags, CgroupRecord, Counter, EventKind, CGROUP_LARGE_TAIL, CGROUP_SMALL_TAIL,
};

use crate::{
    maps::{EVENTS, OFFSETS},
    record::{count, current_task, submit, write_header, Task},
};

#[tracepoint]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    record(&ctx, EventKind::CgroupMkdir);
    0
}

#[tracepoint]
pub fn cgroup_rmdir(ctx: TracePointContext) -> u32 {
    record(&ctx, EventKind::CgroupRmdir);
    0
}

struct Source {
    id: u64,
    level: u32,
    path: *const u8,
    path_len: usize,
}

#[inline(always)]
fn record(ctx: &TracePointContext, kind: EventKind) {
    let Some(task) = current_task() else { return };
    let offsets = OFFSETS.load();
    let (Ok(root), Ok(level), Ok(id), Ok(loc)) = (unsafe {
        (
            ctx.read_at::<i32>(offsets.cgroup_root as usize),
            ctx.read_at::<i32>(offsets.cgroup_level as usize),
            ctx.read_at::<u64>(offsets.cgroup_id as usize),
            ctx.read_at::<u32>(offsets.cgroup_path as usize),
        )
    }) else {
        count(Counter::ReadFailed, kind);
        return;
    };
    // Hierarchy 0 is the v2 hierarchy; v1 controllers' directories are not tracked.
    if root != 0 {
        return;
    }
    let source = Source {
        id,
        level: level as u32,
        path: unsafe { ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize) },
        path_len: (loc >> 16) as usize,
    };
    if source.path_len <= CGROUP_SMALL_TAIL {
        emit::<CGROUP_SMALL_TAIL>(kind, task, &source);
    } else {
        emit::<CGROUP_LARGE_TAIL>(kind, task, &source);
    }
}

#[inline(always)]
fn emit<const TAIL: usize>(kind: EventKind, task: Task, source: &Source) {
    let Some(mut entry) = EVENTS.reserve_bytes(size_of::<CgroupRecord>() + TAIL, 0) else {
        count(Counter::RingFull, kind);
        return;
    };
    let base = entry.as_mut_ptr();
    let record = base.cast::<CgroupRecord>();
    let tail = unsafe { base.add(size_of::<CgroupRecord>()) };
    let read = unsafe { bpf_probe_read_kernel_str(tail.cast(), TAIL as u32, source.path.cast()) };
    let mut record_flags = 0;
    let path_len = if read > 0 {
        read as usize - 1
    } else {
        count(Counter::ReadFailed, kind);
        record_flags |= flags::PATH_MISSING;
        0
    };
    if source.path_len > TAIL {
        record_flags |= flags::PATH_TRUNCATED;
    }
    unsafe {
        write_header(&raw mut (*record).header, kind, record_flags, task);
        (*record).id = source.id;
        (*record).level = source.level;
        (*record).path_len = path_len as u32;
    }
    submit(entry);
    count(Counter::Submitted, kind);
}
