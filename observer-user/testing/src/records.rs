//! Ring buffer records built in memory, byte for byte as the probes write them: for decoder
//! tests and for the pipeline benchmark, which feeds the pipeline without a kernel.

use std::mem::size_of;

use observer_common::{
    CgroupRecord, ConnectRecord, EventHeader, EventKind, ExecRecord, ExitRecord, ForkRecord,
    OpenRecord, Repeats, SOCKADDR_CAPACITY, TASK_COMM_LEN,
};

/// The task a record describes.
#[derive(Clone, Copy, Debug)]
pub struct Task {
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: [u8; TASK_COMM_LEN],
}

impl Task {
    /// A single-threaded process (`tid == tgid`) run by root.
    pub fn new(tgid: u32, cgroup_id: u64, comm: &str) -> Self {
        let mut name = [0u8; TASK_COMM_LEN];
        let len = comm.len().min(TASK_COMM_LEN - 1);
        name[..len].copy_from_slice(&comm.as_bytes()[..len]);
        Task {
            tgid,
            tid: tgid,
            uid: 0,
            gid: 0,
            cgroup_id,
            comm: name,
        }
    }

    pub fn header(&self, kind: EventKind, boot_ns: u64) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            flags: 0,
            boot_ns,
            cgroup_id: self.cgroup_id,
            tgid: self.tgid,
            tid: self.tid,
            uid: self.uid,
            gid: self.gid,
            comm: self.comm,
        }
    }

    /// An exec of `filename` with `args`; the tail is padded to `tail_size` as the probe's
    /// fixed-size reservations are.
    pub fn exec(&self, boot_ns: u64, filename: &[u8], args: &[&[u8]], tail_size: usize) -> Vec<u8> {
        let mut tail = filename.to_vec();
        for arg in args {
            tail.extend_from_slice(arg);
            tail.push(0);
        }
        let record = ExecRecord {
            header: self.header(EventKind::Exec, boot_ns),
            old_tid: self.tid,
            argc: args.len() as u32,
            filename_len: filename.len() as u32,
            args_len: (tail.len() - filename.len()) as u32,
        };
        tail.resize(tail_size.max(tail.len()), 0xAA);
        with_tail(&record, &tail)
    }

    pub fn fork(&self, boot_ns: u64, child_tgid: u32) -> Vec<u8> {
        bytes_of(&ForkRecord {
            header: self.header(EventKind::Fork, boot_ns),
            child_tgid,
            _pad: 0,
            clone_flags: libc::SIGCHLD as u64,
        })
    }

    pub fn exit(&self, boot_ns: u64) -> Vec<u8> {
        bytes_of(&ExitRecord {
            header: self.header(EventKind::Exit, boot_ns),
        })
    }

    /// An `openat(AT_FDCWD, path, flags)` that returned `result`.
    pub fn open(&self, boot_ns: u64, path: &[u8], result: i64, flags: u32) -> Vec<u8> {
        let record = OpenRecord {
            header: self.header(EventKind::Open, boot_ns),
            result,
            dfd: libc::AT_FDCWD,
            flags,
            mode: 0o644,
            path_len: path.len() as u32,
            repeats: Repeats::default(),
        };
        let mut tail = path.to_vec();
        tail.resize(observer_common::OPEN_SMALL_TAIL.max(path.len()), 0);
        with_tail(&record, &tail)
    }

    /// A `connect(fd 5, sockaddr)` that returned `result`.
    pub fn connect(&self, boot_ns: u64, sockaddr: &[u8], result: i64) -> Vec<u8> {
        let mut raw = [0u8; SOCKADDR_CAPACITY];
        let len = sockaddr.len().min(SOCKADDR_CAPACITY);
        raw[..len].copy_from_slice(&sockaddr[..len]);
        bytes_of(&ConnectRecord {
            header: self.header(EventKind::Connect, boot_ns),
            result,
            fd: 5,
            addrlen: sockaddr.len() as u32,
            sockaddr_len: len as u32,
            _pad: 0,
            repeats: Repeats::default(),
            sockaddr: raw,
        })
    }

    /// A cgroup directory `path` (relative to the hierarchy root) made or removed.
    pub fn cgroup(&self, boot_ns: u64, kind: EventKind, id: u64, path: &[u8]) -> Vec<u8> {
        let record = CgroupRecord {
            header: self.header(kind, boot_ns),
            id,
            level: path.iter().filter(|&&b| b == b'/').count() as u32,
            path_len: path.len() as u32,
        };
        let mut tail = path.to_vec();
        tail.resize(observer_common::CGROUP_SMALL_TAIL.max(path.len()), 0);
        with_tail(&record, &tail)
    }
}

/// `struct sockaddr_in` for `ip:port`.
pub fn sockaddr_in(ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut v = (libc::AF_INET as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&ip);
    v.extend_from_slice(&[0; 8]);
    v
}

/// The bytes of a record struct (only the `#[repr(C)]` records, which have no padding holes).
pub fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: the record types are #[repr(C)] with explicit padding fields (checked by
    // observer-common's layout tests), so every byte is initialized.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn with_tail<T: Copy>(record: &T, tail: &[u8]) -> Vec<u8> {
    let mut data = bytes_of(record);
    data.extend_from_slice(tail);
    data
}
