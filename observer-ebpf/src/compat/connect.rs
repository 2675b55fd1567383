//! `connect` without the kernel view (a kernel without BTF): the socket address pointer is
//! recorded at entry, the result at exit; paired by thread id. The caller's `sockaddr` is
//! read at exit onto the stack, where the dedup map judges it, and copied into a record
//! only if the connect is reported; the record says the address is the caller's.

use aya_ebpf::{
    helpers::generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use core::mem::size_of;
use observer_common::{
    addr_source, flags, offsets::syscall_arg_offset, offsets::SYSCALL_RET_OFFSET, ConnectRecord,
    Counter, EventKind, PendingConnect, Repeats, SOCKADDR_CAPACITY,
};

use crate::{
    dedup,
    maps::{EVENTS, PENDING_CONNECT},
    record::{count, current_task, filtered, submit, write_header},
};

const KIND: EventKind = EventKind::Connect;

#[tracepoint]
pub fn compat_sys_enter_connect(ctx: TracePointContext) -> u32 {
    let Some(task) = current_task() else { return 0 };
    if filtered(KIND, true) {
        return 0;
    }
    let (Ok(fd), Ok(sockaddr), Ok(addrlen)) = (unsafe {
        (
            ctx.read_at::<i64>(syscall_arg_offset(0)),
            ctx.read_at::<u64>(syscall_arg_offset(1)),
            ctx.read_at::<i64>(syscall_arg_offset(2)),
        )
    }) else {
        count(Counter::ReadFailed, KIND);
        return 0;
    };
    let pending = PendingConnect {
        sockaddr,
        fd: fd as i32,
        addrlen: addrlen as u32,
    };
    if PENDING_CONNECT.insert(task.tid, pending, 0).is_err() {
        count(Counter::PendingMapFull, KIND);
    }
    0
}

#[tracepoint]
pub fn compat_sys_exit_connect(ctx: TracePointContext) -> u32 {
    let Some(task) = current_task() else { return 0 };
    let Some(pending) = PENDING_CONNECT.get_ptr(task.tid) else {
        // A filtered task's entry was dropped (and counted) at syscall entry.
        if !filtered(KIND, false) {
            count(Counter::Unpaired, KIND);
        }
        return 0;
    };
    let pending = unsafe { *pending };
    let _ = PENDING_CONNECT.remove(task.tid);
    if filtered(KIND, true) {
        return 0;
    }
    let result = unsafe { ctx.read_at::<i64>(SYSCALL_RET_OFFSET) }.unwrap_or(i64::MIN);

    let mut len = pending.addrlen as usize;
    if len > SOCKADDR_CAPACITY {
        len = SOCKADDR_CAPACITY;
    }
    let mut record_flags = 0;
    let mut sockaddr = [0u8; SOCKADDR_CAPACITY];
    if unsafe {
        bpf_probe_read_user(
            sockaddr.as_mut_ptr().cast(),
            len as u32,
            pending.sockaddr as *const _,
        )
    } != 0
    {
        count(Counter::ReadFailed, KIND);
        record_flags |= flags::ADDR_MISSING;
        len = 0;
    }
    // The same address with the same result is the same edge, except a unix socket named
    // by a relative path (it depends on the caller's directory). Repeats are judged before
    // any ring buffer space is taken, so they are counted even while the ring is full.
    let mut repeats = Repeats::default();
    if len >= 3 {
        let relative_unix = sockaddr[0] == 1 && sockaddr[2] != b'/' && sockaddr[2] != 0;
        if !relative_unix {
            let mut hash = dedup::seed(KIND);
            hash = dedup::hash_u64(hash, result as u64);
            hash = unsafe { dedup::hash_bytes::<SOCKADDR_CAPACITY>(hash, sockaddr.as_ptr(), len) };
            let (cgroup, now) = unsafe { (bpf_get_current_cgroup_id(), bpf_ktime_get_boot_ns()) };
            match dedup::report(KIND, cgroup, hash, now) {
                Some(held) => repeats = held,
                None => return 0,
            }
        }
    }
    let Some(mut entry) = EVENTS.reserve_bytes(size_of::<ConnectRecord>(), 0) else {
        count(Counter::RingFull, KIND);
        return 0;
    };
    let record = entry.as_mut_ptr().cast::<ConnectRecord>();
    unsafe {
        write_header(&raw mut (*record).header, KIND, record_flags, task);
        (*record).result = result;
        (*record).repeats = repeats;
        (*record).fd = pending.fd;
        (*record).addrlen = pending.addrlen;
        (*record).sockaddr = sockaddr;
        (*record).sockaddr_len = len as u32;
        (*record).source = if len > 0 {
            addr_source::CALLER
        } else {
            addr_source::NONE
        };
    }
    submit(entry);
    count(Counter::Submitted, KIND);
    0
}
