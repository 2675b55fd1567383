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
    /// The file name the caller passed.
    pub filename: &'a [u8],
    /// argv; the last entry may be cut short when truncated.
    pub args: Args<'a>,
    /// The executable the kernel mapped, walked from `mm->exe_file` (kernel view).
    pub exe: Walked<'a>,
    /// The working directory, walked from `fs->pwd` (kernel view).
    pub cwd: Walked<'a>,
    /// Inode number of the executable (0: unknown).
    pub exe_ino: u64,
    /// 0, or `-errno` for an exec that failed.
    pub result: i64,
}

/// A path the kernel walked: the bytes, when the walk reached the task's root, and the
/// walk's outcome (`observer_common::walk` bits) either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walked<'a> {
    pub path: Option<&'a [u8]>,
    pub bits: u32,
}

impl<'a> Walked<'a> {
    fn new(bytes: &'a [u8], bits: u32) -> Self {
        let complete = observer_common::walk::is_complete(bits) && !bytes.is_empty();
        Walked {
            path: complete.then_some(bytes),
            bits,
        }
    }
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
    /// The path the caller passed.
    pub requested: &'a [u8],
    /// `observer_common::open_base`: what `path` is.
    pub base: u32,
    /// The kernel's path: the opened file, or the directory a relative path was looked
    /// up from (kernel view).
    pub path: Walked<'a>,
    /// Repeats the kernel held back since it last reported this edge.
    pub repeats: observer_common::Repeats,
}

#[derive(Debug, PartialEq)]
pub struct ConnectEvent<'a> {
    pub header: EventHeader,
    pub result: i64,
    pub fd: i32,
    pub address: SocketAddress<'a>,
    /// `observer_common::addr_source`: the socket's (the kernel's), or the caller's.
    pub source: u32,
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

/// argv bytes: entries each terminated by a NUL (the last one may be cut short).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Args<'a> {
    bytes: &'a [u8],
}

impl<'a> Args<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Args { bytes }
    }

    /// The entries, in order, without their terminating NULs (an empty argv has none;
    /// `[""]` is one empty entry).
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let empty = self.bytes.is_empty();
        let bytes = self.bytes.strip_suffix(b"\0").unwrap_or(self.bytes);
        bytes
            .split(|&b| b == 0)
            .take(if empty { 0 } else { usize::MAX })
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
            let (args, tail) = take(tail, r.args_len, "exec", "args")?;
            let (exe, tail) = take(tail, r.exe_len, "exec", "exe")?;
            let (cwd, _) = take(tail, r.cwd_len, "exec", "cwd")?;
            KernelEvent::Exec(ExecEvent {
                header: r.header,
                old_tid: r.old_tid,
                filename,
                args: Args::new(args),
                exe: Walked::new(exe, r.exe_walk),
                cwd: Walked::new(cwd, r.cwd_walk),
                exe_ino: r.exe_ino,
                result: r.result,
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
            let (requested, tail) = take(tail, r.requested_len, "open", "requested path")?;
            let (path, _) = take(tail, r.path_len, "open", "path")?;
            KernelEvent::Open(OpenEvent {
                header: r.header,
                result: r.result,
                dfd: r.dfd,
                flags: r.flags,
                mode: r.mode,
                requested,
                base: r.base,
                path: Walked::new(path, r.walk),
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
                source: r.source,
                repeats: r.repeats,
            })
        }
    })
}

#[cfg(test)]
pub(crate) mod tests;
