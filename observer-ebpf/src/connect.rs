//! `connect`, one program at syscall exit. The arguments come from the registers the task
//! entered the syscall with. The address is the kernel's: for a connect that succeeded or is
//! in progress, the socket's own peer (`sock_common` for inet and inet6, the peer socket's
//! bound name for unix), built into a `struct sockaddr`, so a second thread rewriting the
//! caller's buffer changes nothing. A failed connect leaves nothing (or only part of the
//! address) in the socket: then the caller's `sockaddr` is read, and the record says so.
//! The socket is found through the descriptor table after the call; when another task
//! shared the table, it could have replaced the descriptor meanwhile, and the record says
//! so (`FILES_SHARED`).

use aya_ebpf::{
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        bpf_probe_read_user,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use core::mem::size_of;
use observer_common::{
    addr_source, flags, offsets::SYSCALL_RET_OFFSET, ConnectRecord, Counter, EventKind, Repeats,
    SOCKADDR_CAPACITY,
};

use crate::{
    dedup,
    kmem::{fd_file, memory_shared, rd, rd_ptr, syscall_args, task, user_regs},
    maps::{koff, OUT_BUF},
    record::{count, current_task, filtered, output, write_header},
};

const KIND: EventKind = EventKind::Connect;
const AF_UNSPEC: u16 = 0;
const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = 115;
const S_IFMT: u16 = 0o170_000;
const S_IFSOCK: u16 = 0o140_000;
/// `sizeof(struct sockaddr_un)`.
const SUN_LEN: u64 = 110;

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
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
    let result = unsafe { ctx.read_at::<i64>(SYSCALL_RET_OFFSET) }.unwrap_or(i64::MIN);
    let Some(out) = OUT_BUF.get_ptr_mut(0) else {
        return;
    };
    let record = out.cast::<ConnectRecord>();
    let mut record_flags = flags::KERNEL_VIEW;
    let (fd, addr, addrlen) = match user_regs().and_then(syscall_args) {
        Ok([fd, addr, addrlen, _]) => (i64::from(fd as i32), addr, addrlen as u32),
        Err(()) => {
            count(Counter::ReadFailed, KIND);
            (-1, 0, 0)
        }
    };
    let sockaddr = unsafe { (&raw mut (*record).sockaddr).cast::<u8>() };
    unsafe { core::ptr::write_bytes(sockaddr, 0, SOCKADDR_CAPACITY) };
    // The family the caller asked for: AF_UNSPEC dissolves an association, and the socket
    // then holds nothing worth reporting.
    let mut family: u16 = AF_UNSPEC;
    let read_family =
        unsafe { bpf_probe_read_user((&raw mut family).cast(), 2, addr as *const _) } == 0;
    let connected = result == 0 || result == -EINPROGRESS;
    let mut len = 0;
    let mut source = addr_source::NONE;
    if connected && read_family && family != AF_UNSPEC {
        let shared;
        (len, shared) = from_socket(fd, sockaddr);
        if len > 0 {
            source = addr_source::KERNEL;
            if shared {
                record_flags |= flags::FILES_SHARED;
            }
        }
    }
    if source == addr_source::NONE && addr != 0 {
        len = u64::from(addrlen);
        if len > SOCKADDR_CAPACITY as u64 {
            len = SOCKADDR_CAPACITY as u64;
        }
        let rc = unsafe { bpf_probe_read_user(sockaddr.cast(), len as u32, addr as *const _) };
        if rc == 0 {
            source = addr_source::CALLER;
            if memory_shared(task()) {
                record_flags |= flags::MEMORY_SHARED;
            }
        } else {
            count(Counter::ReadFailed, KIND);
            record_flags |= flags::ADDR_MISSING;
            len = 0;
        }
    }
    if source == addr_source::NONE {
        record_flags |= flags::ADDR_MISSING;
    }
    // The same address with the same result is the same edge, except a unix socket named by
    // a relative path (it depends on the binder's directory).
    let mut repeats = Repeats::default();
    let mut judged = false;
    if len >= 3 {
        let (first, third) = unsafe { (*sockaddr, *sockaddr.add(2)) };
        let relative_unix = first == AF_UNIX as u8 && third != b'/' && third != 0;
        if !relative_unix {
            let mut hash = dedup::hash_word(dedup::seed(KIND), result as u64);
            hash = dedup::hash_word(hash, u64::from(source));
            // A peer a shared table could have swapped in is never merged with one it could
            // not.
            hash = dedup::hash_word(hash, u64::from(record_flags & flags::FILES_SHARED));
            hash = dedup::hash_word(hash, len);
            // The sockaddr buffer was zeroed before it was filled.
            hash = unsafe { dedup::hash_block::<{ SOCKADDR_CAPACITY / 8 }>(hash, sockaddr) };
            let (cgroup, now) = unsafe { (bpf_get_current_cgroup_id(), bpf_ktime_get_boot_ns()) };
            match dedup::report(KIND, cgroup, hash, now) {
                Some(held) => {
                    repeats = held;
                    judged = true;
                }
                None => return,
            }
        }
    }
    unsafe {
        write_header(&raw mut (*record).header, KIND, record_flags, task_ids);
        (*record).result = result;
        (*record).fd = fd as i32;
        (*record).addrlen = addrlen;
        (*record).sockaddr_len = len as u32;
        (*record).source = source;
        (*record).repeats = repeats;
    }
    if !output(KIND, out.cast(), size_of::<ConnectRecord>() as u64) && judged {
        dedup::unreport(&repeats);
    }
}

/// Builds the socket's peer address into `sockaddr` (`SOCKADDR_CAPACITY` zeroed bytes);
/// returns its length, 0 when the socket holds none, and whether the descriptor table was
/// shared when the socket was looked up (see `fd_file`).
#[inline(always)]
fn from_socket(fd: i64, sockaddr: *mut u8) -> (u64, bool) {
    match fd_file(task(), fd) {
        Ok((file, shared)) => (peer_address(file, sockaddr), shared),
        Err(()) => (0, false),
    }
}

/// The peer address of the socket behind `file`, built into `sockaddr`; its length, 0 when
/// `file` is no socket or the socket holds none.
#[inline(always)]
fn peer_address(file: u64, sockaddr: *mut u8) -> u64 {
    // Only a socket's private data is a struct socket.
    let is_socket = rd_ptr(file + koff!(file_f_inode))
        .and_then(|inode| rd::<u16>(inode + koff!(inode_i_mode)))
        .is_ok_and(|mode| mode & S_IFMT == S_IFSOCK);
    if !is_socket {
        return 0;
    }
    let Ok(sk) = rd_ptr(file + koff!(file_private_data)).and_then(|s| rd_ptr(s + koff!(socket_sk)))
    else {
        return 0;
    };
    let Ok(family) = rd::<u16>(sk + koff!(skc_family)) else {
        return 0;
    };
    let Ok(port) = rd::<u16>(sk + koff!(skc_dport)) else {
        return 0;
    };
    unsafe { sockaddr.cast::<u16>().write_unaligned(family) };
    match family {
        AF_INET => {
            // struct sockaddr_in { u16 family; be16 port; be32 addr; }
            let Ok(daddr) = rd::<[u8; 4]>(sk + koff!(skc_daddr)) else {
                return 0;
            };
            if port == 0 || daddr == [0; 4] {
                return 0;
            }
            unsafe {
                sockaddr.add(2).cast::<u16>().write_unaligned(port);
                sockaddr.add(4).cast::<[u8; 4]>().write_unaligned(daddr);
            }
            16
        }
        AF_INET6 => {
            // struct sockaddr_in6 { u16 family; be16 port; u32 flowinfo; in6_addr addr; u32 scope; }
            let Ok(daddr) = rd::<[u8; 16]>(sk + koff!(skc_v6_daddr)) else {
                return 0;
            };
            if port == 0 || daddr == [0; 16] {
                return 0;
            }
            unsafe {
                sockaddr.add(2).cast::<u16>().write_unaligned(port);
                sockaddr.add(8).cast::<[u8; 16]>().write_unaligned(daddr);
            }
            28
        }
        AF_UNIX => {
            // unix_sock embeds struct sock at offset 0: unix_sk(sk) == sk.
            let Ok(peer) = rd_ptr(sk + koff!(unix_sock_peer)) else {
                return 0;
            };
            let Ok(address) = rd_ptr(peer + koff!(unix_sock_addr)) else {
                // An unnamed peer (socketpair-like): the family alone.
                return 2;
            };
            let Ok(len) = rd::<i32>(address + koff!(unix_address_len)) else {
                return 0;
            };
            let mut len = len as u64;
            if len < 2 {
                return 2;
            }
            if len > SUN_LEN {
                len = SUN_LEN;
            }
            // unix_address.name is a struct sockaddr_un of `len` bytes.
            let rc = unsafe {
                bpf_probe_read_kernel(
                    sockaddr.cast(),
                    len as u32,
                    (address + koff!(unix_address_name)) as *const _,
                )
            };
            if rc == 0 {
                len
            } else {
                0
            }
        }
        _ => 0,
    }
}
