//! Ring buffer records built in memory, byte for byte as the probes write them: for decoder
//! tests and for the pipeline benchmark, which feeds the pipeline without a kernel.

use std::mem::size_of;

use observer_common::{
    addr_source, flags, open_base, walk, CgroupRecord, ConnectRecord, EventHeader, EventKind,
    ExecRecord, ExitRecord, ForkRecord, OpenRecord, Repeats, SOCKADDR_CAPACITY, TASK_COMM_LEN,
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

    /// An exec of `filename` with `args` as a kernel without BTF reports it (argv from the
    /// caller, no executable or working directory walked); the tail is padded to
    /// `tail_size` as that probe's fixed-size reservations are.
    pub fn exec(&self, boot_ns: u64, filename: &[u8], args: &[&[u8]], tail_size: usize) -> Vec<u8> {
        self.exec_record(boot_ns, 0, filename, args, None, None, tail_size)
    }

    /// An exec as the kernel-view probe reports it: argv from the new image, the
    /// executable `exe` and the working directory `cwd` walked by the kernel (`None`: the
    /// walk did not reach the root).
    pub fn exec_seen(
        &self,
        boot_ns: u64,
        filename: &[u8],
        args: &[&[u8]],
        exe: Option<&[u8]>,
        cwd: Option<&[u8]>,
    ) -> Vec<u8> {
        self.exec_record(boot_ns, flags::KERNEL_VIEW, filename, args, exe, cwd, 0)
    }

    #[allow(clippy::too_many_arguments, reason = "every part of the record")]
    fn exec_record(
        &self,
        boot_ns: u64,
        record_flags: u32,
        filename: &[u8],
        args: &[&[u8]],
        exe: Option<&[u8]>,
        cwd: Option<&[u8]>,
        tail_size: usize,
    ) -> Vec<u8> {
        let mut tail = filename.to_vec();
        for arg in args {
            tail.extend_from_slice(arg);
            tail.push(0);
        }
        let args_len = tail.len() - filename.len();
        let kernel_view = record_flags & flags::KERNEL_VIEW != 0;
        let walked = |p: Option<&[u8]>| match (kernel_view, p) {
            (false, _) => walk::NONE,
            (true, Some(_)) => walk::COMPLETE,
            (true, None) => walk::OUTSIDE_ROOT,
        };
        tail.extend_from_slice(exe.unwrap_or_default());
        tail.extend_from_slice(cwd.unwrap_or_default());
        let mut header = self.header(EventKind::Exec, boot_ns);
        header.flags = record_flags;
        let record = ExecRecord {
            header,
            old_tid: self.tid,
            filename_len: filename.len() as u32,
            args_len: args_len as u32,
            exe_len: exe.map_or(0, <[u8]>::len) as u32,
            cwd_len: cwd.map_or(0, <[u8]>::len) as u32,
            exe_walk: walked(exe),
            cwd_walk: walked(cwd),
            _pad: 0,
            exe_ino: 0,
            result: 0,
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
    /// An open of `path` as the kernel-view probe reports it: a success carries the opened
    /// file's path (here the same bytes), a failure only the requested path (absolute here).
    pub fn open(&self, boot_ns: u64, path: &[u8], result: i64, flags: u32) -> Vec<u8> {
        let (base, kernel) = if result >= 0 {
            (open_base::FILE, Some(path))
        } else {
            (open_base::NONE, None)
        };
        self.open_seen(boot_ns, path, base, kernel, result, flags)
    }

    /// An open as the kernel-view probe reports it: the `requested` path, and the kernel's
    /// path of `base` (`open_base`: the opened file, or the directory a relative path was
    /// looked up from); `kernel: None` with a base is a walk that did not reach the root.
    pub fn open_seen(
        &self,
        boot_ns: u64,
        requested: &[u8],
        base: u32,
        kernel: Option<&[u8]>,
        result: i64,
        open_flags: u32,
    ) -> Vec<u8> {
        let mut header = self.header(EventKind::Open, boot_ns);
        header.flags = flags::KERNEL_VIEW;
        let bits = match (base, kernel) {
            (open_base::NONE, _) => walk::NONE,
            (_, Some(_)) => walk::COMPLETE,
            (_, None) => walk::TRUNC_BUF,
        };
        let kernel = kernel.unwrap_or_default();
        let record = OpenRecord {
            header,
            result,
            dfd: libc::AT_FDCWD,
            flags: open_flags,
            mode: 0o644,
            path_len: kernel.len() as u32,
            requested_len: requested.len() as u32,
            base,
            walk: bits,
            _pad: 0,
            repeats: Repeats::default(),
        };
        let mut tail = requested.to_vec();
        tail.extend_from_slice(kernel);
        with_tail(&record, &tail)
    }

    /// A `connect(fd 5, sockaddr)` that returned `result`, as the kernel-view probe reports
    /// it.
    pub fn connect(&self, boot_ns: u64, sockaddr: &[u8], result: i64) -> Vec<u8> {
        let mut record = self.connect_from(boot_ns, sockaddr, result);
        let mut header: EventHeader = read_header(&record);
        header.flags |= flags::KERNEL_VIEW;
        record[..size_of::<EventHeader>()].copy_from_slice(&bytes_of(&header));
        record
    }

    fn connect_from(&self, boot_ns: u64, sockaddr: &[u8], result: i64) -> Vec<u8> {
        let mut raw = [0u8; SOCKADDR_CAPACITY];
        let len = sockaddr.len().min(SOCKADDR_CAPACITY);
        raw[..len].copy_from_slice(&sockaddr[..len]);
        bytes_of(&ConnectRecord {
            header: self.header(EventKind::Connect, boot_ns),
            result,
            fd: 5,
            addrlen: sockaddr.len() as u32,
            sockaddr_len: len as u32,
            // A connect that worked has the socket's address; one that failed, the caller's.
            source: if result == 0 {
                addr_source::KERNEL
            } else {
                addr_source::CALLER
            },
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

fn read_header(record: &[u8]) -> EventHeader {
    assert!(record.len() >= size_of::<EventHeader>());
    // SAFETY: at least a header's bytes, and EventHeader is valid for any bit pattern.
    unsafe { record.as_ptr().cast::<EventHeader>().read_unaligned() }
}

fn with_tail<T: Copy>(record: &T, tail: &[u8]) -> Vec<u8> {
    let mut data = bytes_of(record);
    data.extend_from_slice(tail);
    data
}

/// `record` with `extra` header flags set (e.g. `flags::MEMORY_SHARED`).
pub fn with_flags(record: &[u8], extra: u32) -> Vec<u8> {
    let mut header = read_header(record);
    header.flags |= extra;
    let mut out = record.to_vec();
    out[..size_of::<EventHeader>()].copy_from_slice(&bytes_of(&header));
    out
}

/// A kernel-view record as the programs without BTF write it: the kernel-view flag cleared
/// and, for an open, the requested path only.
pub fn without_kernel_view(record: &[u8]) -> Vec<u8> {
    let mut header = read_header(record);
    header.flags &= !flags::KERNEL_VIEW;
    let mut out = record.to_vec();
    if header.kind == EventKind::Open as u32 {
        assert!(record.len() >= size_of::<OpenRecord>());
        // SAFETY: at least an open record's bytes, valid for any bit pattern.
        let mut open = unsafe { record.as_ptr().cast::<OpenRecord>().read_unaligned() };
        open.header = header;
        open.path_len = 0;
        open.base = open_base::NONE;
        open.walk = walk::NONE;
        let tail = &record[size_of::<OpenRecord>()..][..open.requested_len as usize];
        out = with_tail(&open, tail);
    } else {
        out[..size_of::<EventHeader>()].copy_from_slice(&bytes_of(&header));
    }
    out
}
