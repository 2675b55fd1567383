//! Helpers every probe family uses: identity of the current task, the self filter,
//! counters and record headers.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_ktime_get_boot_ns,
    },
};
use observer_common::{filter, Counter, EventHeader, EventKind, TASK_COMM_LEN};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    maps::ring_buf::RingBufBytes,
};

use crate::maps::{CGROUP_FILTER, COUNTERS, EVENTS, FILTER_MODE, SCRATCH, SELF_TGID, WAKEUP_BYTES};

/// Process and thread id of the current task.
#[derive(Clone, Copy)]
pub struct Task {
    pub tgid: u32,
    pub tid: u32,
}

/// The current task, or `None` when it belongs to the daemon.
#[inline(always)]
pub fn current_task() -> Option<Task> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let task = Task {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
    };
    if task.tgid == SELF_TGID.load() {
        return None;
    }
    Some(task)
}

/// Whether the task is in, or below, a cgroup the daemon marked.
#[inline(always)]
fn in_marked_cgroup() -> bool {
    let own = unsafe { bpf_get_current_cgroup_id() };
    if CGROUP_FILTER.get_ptr(own).is_some() {
        return true;
    }
    for level in 1..filter::MAX_LEVELS {
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        // 0: deeper than the task's own cgroup; own: reached it.
        if ancestor == 0 || ancestor == own {
            return false;
        }
        if CGROUP_FILTER.get_ptr(ancestor).is_some() {
            return true;
        }
    }
    false
}

/// Whether the namespace filter drops this task's events. `count` records the drop in the
/// `Filtered` counter; it is false where the same syscall was already counted at entry.
#[inline(always)]
pub fn filtered(kind: EventKind, count_it: bool) -> bool {
    let mode = FILTER_MODE.load();
    if mode == filter::OFF {
        return false;
    }
    let marked = in_marked_cgroup();
    let drop = if mode == filter::EXCLUDE {
        marked
    } else {
        !marked
    };
    if drop && count_it {
        count(Counter::Filtered, kind);
    }
    drop
}

#[inline(always)]
pub fn count(counter: Counter, kind: EventKind) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter.index(kind)) {
        // Per-CPU slot: no other CPU writes it, and programs do not nest on one CPU here.
        unsafe { *slot += 1 };
    }
}

/// Fills the common header of a record (reserved in the ring buffer, or assembled in a
/// per-CPU buffer).
///
/// # Safety
/// `header` must point to at least `size_of::<EventHeader>()` writable bytes.
#[inline(always)]
pub unsafe fn write_header(header: *mut EventHeader, kind: EventKind, flags: u32, task: Task) {
    let uid_gid = bpf_get_current_uid_gid();
    unsafe {
        (*header).kind = kind as u32;
        (*header).flags = flags;
        (*header).boot_ns = bpf_ktime_get_boot_ns();
        (*header).cgroup_id = bpf_get_current_cgroup_id();
        (*header).tgid = task.tgid;
        (*header).tid = task.tid;
        (*header).uid = uid_gid as u32;
        (*header).gid = (uid_gid >> 32) as u32;
        let comm = (*header).comm.as_mut_ptr();
        if bpf_get_current_comm(comm.cast(), TASK_COMM_LEN as u32) != 0 {
            (*header).comm = [0; TASK_COMM_LEN];
        }
    }
}

/// Whether a record of `size` bytes, added to `unread` bytes the reader has not taken yet,
/// crosses a multiple of `WAKEUP_BYTES` (or batching is off).
#[inline(always)]
fn wakes(unread_after: u64, size: u64) -> u64 {
    let every = WAKEUP_BYTES.load();
    let crossed = match (
        unread_after.checked_div(every),
        unread_after.saturating_sub(size).checked_div(every),
    ) {
        (Some(now), Some(before)) => now != before,
        // No batching configured: every record wakes the reader.
        _ => true,
    };
    if crossed {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Copies the first `len` bytes of a record assembled in `OUT_BUF` to the ring buffer, at
/// its exact size, and counts it (submitted, or lost to a full ring). Wakeups are batched as
/// for [`submit`]. Whether it reached the ring buffer.
#[inline(always)]
pub fn output(kind: EventKind, out: *const u8, len: u64) -> bool {
    if len == 0 || len > SCRATCH as u64 {
        return false;
    }
    let unread = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    let flags = wakes(unread + len, len);
    let data = unsafe { core::slice::from_raw_parts(out, len as usize) };
    if EVENTS.output::<[u8]>(data, flags).is_ok() {
        count(Counter::Submitted, kind);
        true
    } else {
        count(Counter::RingFull, kind);
        false
    }
}

/// Commits a record. Waking the reader is an IRQ work item (a self-IPI; under
/// virtualization, an exit to the hypervisor): it is done when the unread bytes cross a
/// multiple of `WAKEUP_BYTES`, not per record. The daemon also drains on a short timer, so a
/// record never waits for a wakeup that does not come.
#[inline(always)]
pub fn submit(entry: RingBufBytes<'_>) {
    let size = entry.len() as u64;
    // Includes this record: it was reserved, so the producer position is past it.
    let unread = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    entry.submit(wakes(unread, size));
}
