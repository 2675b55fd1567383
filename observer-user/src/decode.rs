//! Ring buffer records → typed events.
//!
//! A record is untrusted input: every length it claims is checked against the bytes that
//! arrived, and anything that does not fit is an error the caller counts, never a panic.
//! Decoded events borrow their strings from the record, so decoding allocates nothing.

use std::{
    fmt,
    mem::size_of,
    net::{Ipv4Addr, Ipv6Addr},
};

use observer_common::{
    CgroupRecord, ConnectRecord, EventHeader, EventKind, ExecRecord, ExitRecord, ForkRecord,
    OpenRecord,
};

/// Why a record was rejected. Each variant is counted separately.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than a {what} ({need} bytes)")]
    TooShort {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("record has unknown kind {0}")]
    UnknownKind(u32),
    #[error("{what} record claims {claimed} bytes of {field} but only {available} follow")]
    BadLength {
        what: &'static str,
        field: &'static str,
        claimed: usize,
        available: usize,
    },
}

impl DecodeError {
    /// Short stable name, used in summaries and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooShort { .. } => "too_short",
            DecodeError::UnknownKind(_) => "unknown_kind",
            DecodeError::BadLength { .. } => "bad_length",
        }
    }
}

/// A decoded record.
#[derive(Debug, PartialEq)]
pub enum KernelEvent<'a> {
    Exec(ExecEvent<'a>),
    Fork(ForkEvent),
    Exit(ExitEvent),
    Open(OpenEvent<'a>),
    Connect(ConnectEvent<'a>),
    Cgroup(CgroupEvent<'a>),
}

impl KernelEvent<'_> {
    pub fn header(&self) -> &EventHeader {
        match self {
            KernelEvent::Exec(e) => &e.header,
            KernelEvent::Fork(e) => &e.header,
            KernelEvent::Exit(e) => &e.header,
            KernelEvent::Open(e) => &e.header,
            KernelEvent::Connect(e) => &e.header,
            KernelEvent::Cgroup(e) => &e.header,
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            KernelEvent::Exec(_) => EventKind::Exec,
            KernelEvent::Fork(_) => EventKind::Fork,
            KernelEvent::Exit(_) => EventKind::Exit,
            KernelEvent::Open(_) => EventKind::Open,
            KernelEvent::Connect(_) => EventKind::Connect,
            KernelEvent::Cgroup(e) if e.created => EventKind::CgroupMkdir,
            KernelEvent::Cgroup(_) => EventKind::CgroupRmdir,
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct ExecEvent<'a> {
    pub header: EventHeader,
    pub old_tid: u32,
    /// The path the kernel executed, as the caller spelled it.
    pub filename: &'a [u8],
    /// argv, at most `MAX_ARGS` entries; the last may be cut short when truncated.
    pub args: Args<'a>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ForkEvent {
    pub header: EventHeader,
    pub child_tgid: u32,
    pub clone_flags: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
}

#[derive(Debug, PartialEq)]
pub struct OpenEvent<'a> {
    pub header: EventHeader,
    pub result: i64,
    pub dfd: i32,
    pub flags: u32,
    pub mode: u32,
    pub path: &'a [u8],
    /// Repeats the kernel held back since it last reported this edge.
    pub repeats: observer_common::Repeats,
}

#[derive(Debug, PartialEq)]
pub struct ConnectEvent<'a> {
    pub header: EventHeader,
    pub result: i64,
    pub fd: i32,
    pub address: SocketAddress<'a>,
    pub repeats: observer_common::Repeats,
}

/// A v2 cgroup was created (`created`) or removed.
#[derive(Debug, PartialEq, Eq)]
pub struct CgroupEvent<'a> {
    pub header: EventHeader,
    pub created: bool,
    pub id: u64,
    pub level: u32,
    /// Relative to the hierarchy root, starting with `/`.
    pub path: &'a [u8],
}

/// NUL-separated argv bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Args<'a> {
    bytes: &'a [u8],
    argc: u32,
}

impl<'a> Args<'a> {
    pub fn new(bytes: &'a [u8], argc: u32) -> Self {
        Args { bytes, argc }
    }

    /// The entries, in order, without their terminating NULs.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let bytes = self.bytes.strip_suffix(b"\0").unwrap_or(self.bytes);
        let empty = bytes.is_empty() && self.argc == 0;
        bytes
            .split(|&b| b == 0)
            .take(if empty { 0 } else { self.argc as usize })
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl fmt::Debug for Args<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}

/// A socket address from `connect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketAddress<'a> {
    Inet {
        address: Ipv4Addr,
        port: u16,
    },
    Inet6 {
        address: Ipv6Addr,
        port: u16,
        scope_id: u32,
    },
    /// A filesystem path.
    UnixPath(&'a [u8]),
    /// An abstract socket name (shown with a leading `@`).
    UnixAbstract(&'a [u8]),
    /// `sockaddr_un` with no name.
    UnixUnnamed,
    /// `AF_UNSPEC`: dissolves a datagram socket's association.
    Unspecified,
    /// A family this decoder does not parse.
    Other {
        family: u16,
    },
    /// The address could not be read or is shorter than its family requires.
    Unreadable,
}

pub const AF_UNSPEC: u16 = 0;
pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Parses raw `struct sockaddr` bytes (`len` is how many were captured).
pub fn parse_sockaddr(raw: &[u8]) -> SocketAddress<'_> {
    let Some(family) = raw.get(0..2).map(|b| u16::from_ne_bytes([b[0], b[1]])) else {
        return SocketAddress::Unreadable;
    };
    match family {
        AF_INET => match raw.get(2..8) {
            Some(b) => SocketAddress::Inet {
                port: u16::from_be_bytes([b[0], b[1]]),
                address: Ipv4Addr::new(b[2], b[3], b[4], b[5]),
            },
            None => SocketAddress::Unreadable,
        },
        AF_INET6 => {
            // sin6_port @2, sin6_flowinfo @4, sin6_addr @8..24, sin6_scope_id @24..28 (optional)
            let (Some(port), Some(addr)) = (raw.get(2..4), raw.get(8..24)) else {
                return SocketAddress::Unreadable;
            };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(addr);
            let scope_id = raw
                .get(24..28)
                .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            SocketAddress::Inet6 {
                port: u16::from_be_bytes([port[0], port[1]]),
                address: Ipv6Addr::from(octets),
                scope_id,
            }
        }
        AF_UNIX => {
            let path = &raw[2..];
            match path.first() {
                None => SocketAddress::UnixUnnamed,
                // Abstract names are exactly addrlen - 3 bytes and may contain NULs.
                Some(0) => SocketAddress::UnixAbstract(&path[1..]),
                Some(_) => {
                    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                    SocketAddress::UnixPath(&path[..end])
                }
            }
        }
        AF_UNSPEC => SocketAddress::Unspecified,
        family => SocketAddress::Other { family },
    }
}

/// Record types that may be read from any byte pattern.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, `Copy`, and valid for every bit pattern.
unsafe trait Plain: Copy {}
// SAFETY: all are #[repr(C)] and made only of integers and byte arrays.
unsafe impl Plain for EventHeader {}
unsafe impl Plain for ExecRecord {}
unsafe impl Plain for ForkRecord {}
unsafe impl Plain for ExitRecord {}
unsafe impl Plain for OpenRecord {}
unsafe impl Plain for ConnectRecord {}
unsafe impl Plain for CgroupRecord {}

/// Reads a `T` from the start of `data`, and returns it with the bytes that follow it.
fn read<'a, T: Plain>(data: &'a [u8], what: &'static str) -> Result<(T, &'a [u8]), DecodeError> {
    let need = size_of::<T>();
    if data.len() < need {
        return Err(DecodeError::TooShort {
            what,
            need,
            got: data.len(),
        });
    }
    // SAFETY: `data` holds at least size_of::<T>() bytes, T is valid for any bit pattern,
    // and read_unaligned has no alignment requirement.
    let value = unsafe { data.as_ptr().cast::<T>().read_unaligned() };
    Ok((value, &data[need..]))
}

fn take<'a>(
    tail: &'a [u8],
    len: u32,
    what: &'static str,
    field: &'static str,
) -> Result<(&'a [u8], &'a [u8]), DecodeError> {
    let len = len as usize;
    if len > tail.len() {
        return Err(DecodeError::BadLength {
            what,
            field,
            claimed: len,
            available: tail.len(),
        });
    }
    Ok(tail.split_at(len))
}

/// Decodes one ring buffer record.
pub fn decode(data: &[u8]) -> Result<KernelEvent<'_>, DecodeError> {
    let (header, _) = read::<EventHeader>(data, "record header")?;
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    Ok(match kind {
        EventKind::Exec => {
            let (r, tail) = read::<ExecRecord>(data, "exec record")?;
            let (filename, tail) = take(tail, r.filename_len, "exec", "filename")?;
            let (args, _) = take(tail, r.args_len, "exec", "args")?;
            KernelEvent::Exec(ExecEvent {
                header: r.header,
                old_tid: r.old_tid,
                filename,
                args: Args::new(args, r.argc),
            })
        }
        EventKind::Fork => {
            let (r, _) = read::<ForkRecord>(data, "fork record")?;
            KernelEvent::Fork(ForkEvent {
                header: r.header,
                child_tgid: r.child_tgid,
                clone_flags: r.clone_flags,
            })
        }
        EventKind::Exit => {
            let (r, _) = read::<ExitRecord>(data, "exit record")?;
            KernelEvent::Exit(ExitEvent { header: r.header })
        }
        EventKind::Open => {
            let (r, tail) = read::<OpenRecord>(data, "open record")?;
            let (path, _) = take(tail, r.path_len, "open", "path")?;
            KernelEvent::Open(OpenEvent {
                header: r.header,
                result: r.result,
                dfd: r.dfd,
                flags: r.flags,
                mode: r.mode,
                path,
                repeats: r.repeats,
            })
        }
        EventKind::CgroupMkdir | EventKind::CgroupRmdir => {
            let (r, tail) = read::<CgroupRecord>(data, "cgroup record")?;
            let (path, _) = take(tail, r.path_len, "cgroup", "path")?;
            KernelEvent::Cgroup(CgroupEvent {
                header: r.header,
                created: kind == EventKind::CgroupMkdir,
                id: r.id,
                level: r.level,
                path,
            })
        }
        EventKind::Connect => {
            // The record is fixed-size; the sockaddr array sits inside it. Borrow it from
            // `data` rather than from the copied record so the event can outlive this frame.
            let (r, _) = read::<ConnectRecord>(data, "connect record")?;
            let start = std::mem::offset_of!(ConnectRecord, sockaddr);
            let captured = r.sockaddr_len as usize;
            let raw = data
                .get(start..start + captured)
                .ok_or(DecodeError::BadLength {
                    what: "connect",
                    field: "sockaddr",
                    claimed: captured,
                    available: r.sockaddr.len(),
                })?;
            let address = if r.header.flags & observer_common::flags::ADDR_MISSING != 0 {
                SocketAddress::Unreadable
            } else {
                parse_sockaddr(raw)
            };
            KernelEvent::Connect(ConnectEvent {
                header: r.header,
                result: r.result,
                fd: r.fd,
                address,
                repeats: r.repeats,
            })
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::synth::{bytes_of, Task};
    use observer_common::{flags, SOCKADDR_CAPACITY};
    use std::collections::BTreeSet;

    /// The task every test record describes.
    pub(crate) fn task() -> Task {
        Task {
            tid: 4243,
            uid: 1000,
            gid: 1001,
            ..Task::new(4242, 77, "test")
        }
    }

    const BOOT_NS: u64 = 1_000_000_123;

    pub(crate) fn header(kind: EventKind) -> EventHeader {
        task().header(kind, BOOT_NS)
    }

    pub(crate) fn exec_record(filename: &[u8], args: &[&[u8]], tail_size: usize) -> Vec<u8> {
        task().exec(BOOT_NS, filename, args, tail_size)
    }

    pub(crate) fn open_record(path: &[u8], result: i64, flags: u32) -> Vec<u8> {
        task().open(BOOT_NS, path, result, flags)
    }

    pub(crate) fn connect_record(sockaddr: &[u8], result: i64) -> Vec<u8> {
        task().connect(BOOT_NS, sockaddr, result)
    }

    pub(crate) use crate::synth::sockaddr_in;

    #[test]
    fn exec_record_decodes_filename_and_argv() {
        let data = exec_record(b"/usr/bin/echo", &[b"echo", b"hello world", b""], 1024);
        let KernelEvent::Exec(e) = decode(&data).unwrap() else {
            panic!("not exec")
        };
        assert_eq!(e.filename, b"/usr/bin/echo");
        let args: Vec<&[u8]> = e.args.iter().collect();
        assert_eq!(args, vec![&b"echo"[..], b"hello world", b""]);
        assert_eq!(e.header.tgid, 4242);
        assert_eq!(e.old_tid, 4243);
        assert_eq!(&e.header.comm[..5], b"test\0");
    }

    #[test]
    fn exec_without_args_has_none() {
        let data = exec_record(b"/bin/true", &[], 1024);
        let KernelEvent::Exec(e) = decode(&data).unwrap() else {
            panic!("not exec")
        };
        assert!(e.args.is_empty());
        assert_eq!(e.args.iter().count(), 0);
    }

    #[test]
    fn truncated_last_argument_is_kept_partially() {
        // The kernel cut the last argument at the byte limit: no trailing NUL.
        let mut data = exec_record(b"/bin/x", &[b"x"], 0);
        let base = size_of::<ExecRecord>() + b"/bin/x".len();
        data.truncate(base);
        data.extend_from_slice(b"x\0partial");
        let mut record: ExecRecord = read(&data, "t").unwrap().0;
        record.args_len = 9;
        record.argc = 2;
        record.header.flags = flags::ARGS_TRUNCATED;
        data[..size_of::<ExecRecord>()].copy_from_slice(&bytes_of(&record));
        let KernelEvent::Exec(e) = decode(&data).unwrap() else {
            panic!("not exec")
        };
        let args: Vec<&[u8]> = e.args.iter().collect();
        assert_eq!(args, vec![&b"x"[..], b"partial"]);
    }

    #[test]
    fn exec_with_lengths_beyond_the_record_is_rejected() {
        let mut data = exec_record(b"/bin/true", &[b"true"], 0);
        let mut record: ExecRecord = read(&data, "t").unwrap().0;
        record.args_len = 10_000;
        data[..size_of::<ExecRecord>()].copy_from_slice(&bytes_of(&record));
        assert_eq!(
            decode(&data).unwrap_err(),
            DecodeError::BadLength {
                what: "exec",
                field: "args",
                claimed: 10_000,
                available: 5
            }
        );
        record.filename_len = u32::MAX;
        data[..size_of::<ExecRecord>()].copy_from_slice(&bytes_of(&record));
        assert_eq!(decode(&data).unwrap_err().reason(), "bad_length");
    }

    #[test]
    fn open_record_decodes() {
        let data = open_record(b"/etc/hostname", 3, libc::O_RDONLY as u32);
        let KernelEvent::Open(e) = decode(&data).unwrap() else {
            panic!("not open")
        };
        assert_eq!(e.path, b"/etc/hostname");
        assert_eq!(e.result, 3);
        assert_eq!(e.dfd, -100);
        assert_eq!(e.mode, 0o644);
    }

    #[test]
    fn open_path_longer_than_record_is_rejected() {
        let mut data = open_record(b"/x", -2, 0);
        let mut record: OpenRecord = read(&data, "t").unwrap().0;
        record.path_len = 257;
        data[..size_of::<OpenRecord>()].copy_from_slice(&bytes_of(&record));
        assert_eq!(decode(&data).unwrap_err().reason(), "bad_length");
    }

    #[test]
    fn every_truncation_of_every_record_is_an_error_not_a_panic() {
        let records = [
            exec_record(b"/bin/echo", &[b"echo", b"hi"], 1024),
            open_record(b"/tmp/file", 4, 0),
            connect_record(&sockaddr_in([127, 0, 0, 1], 80), 0),
            bytes_of(&ForkRecord {
                header: header(EventKind::Fork),
                child_tgid: 9,
                _pad: 0,
                clone_flags: 17,
            }),
            bytes_of(&ExitRecord {
                header: header(EventKind::Exit),
            }),
            cgroup_record(EventKind::CgroupMkdir, 9, b"/a/b"),
        ];
        for record in &records {
            assert!(decode(record).is_ok());
            for len in 0..size_of::<EventHeader>() + 8 {
                let cut = &record[..len.min(record.len())];
                if cut.len() == record.len() {
                    continue;
                }
                let err = decode(cut).unwrap_err();
                assert_eq!(err.reason(), "too_short", "len {len}: {err}");
            }
        }
    }

    #[test]
    fn unknown_kind_and_garbage_are_errors() {
        let mut data = open_record(b"/x", 0, 0);
        data[0..4].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(decode(&data).unwrap_err(), DecodeError::UnknownKind(99));
        // Pseudo-random garbage of many lengths never panics.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..600 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn any_byte_of_a_valid_record_changed_to_anything_is_decoded_or_refused_never_a_panic() {
        // Garbage rarely gets past the kind; corrupting one byte of a well-formed record
        // reaches every length, count and offset check behind it.
        let records = [
            exec_record(b"/bin/echo", &[b"echo", b"hi", b"there"], 1024),
            open_record(b"/tmp/file", 4, 0),
            connect_record(&sockaddr_in([127, 0, 0, 1], 80), 0),
            cgroup_record(EventKind::CgroupMkdir, 9, b"/a/b"),
        ];
        for record in &records {
            let (mut decoded, mut refused) = (0, BTreeSet::new());
            for at in 0..record.len() {
                for value in [0u8, 1, 0x7f, 0x80, 0xff] {
                    let mut bad = record.clone();
                    bad[at] = value;
                    match decode(&bad) {
                        Ok(_) => decoded += 1,
                        Err(err) => {
                            refused.insert(err.reason());
                        }
                    }
                }
            }
            // Most bytes are payload (a changed path is still a record); the header's kind
            // and the lengths are checked.
            assert!(decoded > 0, "{refused:?}");
            assert!(refused.contains("unknown_kind"), "{refused:?}");
            assert!(
                refused.len() >= 2,
                "only {refused:?} for kind {}",
                record[0]
            );
        }
    }

    pub(crate) fn cgroup_record(kind: EventKind, id: u64, path: &[u8]) -> Vec<u8> {
        task().cgroup(BOOT_NS, kind, id, path)
    }

    #[test]
    fn cgroup_records_decode() {
        let data = cgroup_record(EventKind::CgroupMkdir, 4242, b"/kubepods/besteffort/pod1");
        let KernelEvent::Cgroup(e) = decode(&data).unwrap() else {
            panic!("not cgroup")
        };
        assert!(e.created);
        assert_eq!(
            (e.id, e.level, e.path),
            (4242, 3, &b"/kubepods/besteffort/pod1"[..])
        );
        let data = cgroup_record(EventKind::CgroupRmdir, 7, b"/x");
        assert_eq!(decode(&data).unwrap().kind(), EventKind::CgroupRmdir);
        let mut data = cgroup_record(EventKind::CgroupMkdir, 1, b"/y");
        let mut record: CgroupRecord = read(&data, "t").unwrap().0;
        record.path_len = 300;
        data[..size_of::<CgroupRecord>()].copy_from_slice(&bytes_of(&record));
        assert_eq!(decode(&data).unwrap_err().reason(), "bad_length");
    }

    #[test]
    fn fork_and_exit_records_decode() {
        let fork = bytes_of(&ForkRecord {
            header: header(EventKind::Fork),
            child_tgid: 31337,
            _pad: 0,
            clone_flags: 0x11,
        });
        assert_eq!(
            decode(&fork).unwrap(),
            KernelEvent::Fork(ForkEvent {
                header: header(EventKind::Fork),
                child_tgid: 31337,
                clone_flags: 0x11
            })
        );
        let exit = bytes_of(&ExitRecord {
            header: header(EventKind::Exit),
        });
        assert_eq!(decode(&exit).unwrap().kind(), EventKind::Exit);
    }

    #[test]
    fn connect_inet_and_inet6() {
        let data = connect_record(&sockaddr_in([10, 1, 2, 3], 8443), -111);
        let KernelEvent::Connect(e) = decode(&data).unwrap() else {
            panic!("not connect")
        };
        assert_eq!(
            e.address,
            SocketAddress::Inet {
                address: Ipv4Addr::new(10, 1, 2, 3),
                port: 8443
            }
        );
        assert_eq!(e.result, -111);

        let mut v6 = AF_INET6.to_ne_bytes().to_vec();
        v6.extend_from_slice(&443u16.to_be_bytes());
        v6.extend_from_slice(&0u32.to_ne_bytes());
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&3u32.to_ne_bytes());
        assert_eq!(
            parse_sockaddr(&v6),
            SocketAddress::Inet6 {
                address: Ipv6Addr::LOCALHOST,
                port: 443,
                scope_id: 3
            }
        );
    }

    #[test]
    fn connect_unix_path_abstract_unnamed_and_short() {
        let mut un = AF_UNIX.to_ne_bytes().to_vec();
        un.extend_from_slice(b"/run/containerd/containerd.sock\0");
        assert_eq!(
            parse_sockaddr(&un),
            SocketAddress::UnixPath(b"/run/containerd/containerd.sock")
        );
        let mut abs = AF_UNIX.to_ne_bytes().to_vec();
        abs.extend_from_slice(b"\0my-abstract");
        assert_eq!(
            parse_sockaddr(&abs),
            SocketAddress::UnixAbstract(b"my-abstract")
        );
        assert_eq!(
            parse_sockaddr(&AF_UNIX.to_ne_bytes()),
            SocketAddress::UnixUnnamed
        );
        // An AF_INET address cut short is unreadable, not a panic.
        assert_eq!(
            parse_sockaddr(&sockaddr_in([1, 2, 3, 4], 1)[..5]),
            SocketAddress::Unreadable
        );
        assert_eq!(parse_sockaddr(&[2]), SocketAddress::Unreadable);
        assert_eq!(
            parse_sockaddr(&16u16.to_ne_bytes()),
            SocketAddress::Other { family: 16 }
        );
        assert_eq!(
            parse_sockaddr(&AF_UNSPEC.to_ne_bytes()),
            SocketAddress::Unspecified
        );
    }

    #[test]
    fn connect_with_sockaddr_len_beyond_capacity_is_rejected() {
        let mut data = connect_record(&sockaddr_in([1, 1, 1, 1], 53), 0);
        let mut record: ConnectRecord = read(&data, "t").unwrap().0;
        record.sockaddr_len = SOCKADDR_CAPACITY as u32 + 1;
        data[..size_of::<ConnectRecord>()].copy_from_slice(&bytes_of(&record));
        assert_eq!(decode(&data).unwrap_err().reason(), "bad_length");
    }

    #[test]
    fn connect_flagged_unreadable() {
        let mut data = connect_record(&[], -14);
        let mut record: ConnectRecord = read(&data, "t").unwrap().0;
        record.header.flags = flags::ADDR_MISSING;
        data[..size_of::<ConnectRecord>()].copy_from_slice(&bytes_of(&record));
        let KernelEvent::Connect(e) = decode(&data).unwrap() else {
            panic!("not connect")
        };
        assert_eq!(e.address, SocketAddress::Unreadable);
    }
}
