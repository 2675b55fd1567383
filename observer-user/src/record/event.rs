//! What an edge event is: one observation of a process (an exec, an open, a connect),
//! owned so it can wait for attribution or for a batch. It shares the process image with
//! the process table through an `Arc`.

use std::sync::Arc;

use observer_common::TASK_COMM_LEN;
use serde::Serialize;

use super::Raw;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeType {
    /// A process executed a binary.
    Syscall,
    /// A file was opened.
    Fs,
    /// A socket connected.
    Net,
}

impl EdgeType {
    pub const ALL: [EdgeType; 3] = [EdgeType::Syscall, EdgeType::Fs, EdgeType::Net];

    pub fn name(self) -> &'static str {
        match self {
            EdgeType::Syscall => "syscall",
            EdgeType::Fs => "fs",
            EdgeType::Net => "net",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Position in the batch sort order, which is the order of the names.
    pub fn sort_rank(self) -> u8 {
        match self {
            EdgeType::Fs => 0,
            EdgeType::Net => 1,
            EdgeType::Syscall => 2,
        }
    }
}

/// The process an event came from, as it was when the event happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSnapshot {
    pub pid: u32,
    pub tid: u32,
    pub ppid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    /// The task name, NUL-padded as the kernel keeps it.
    pub comm: [u8; TASK_COMM_LEN],
    pub image: Arc<Image>,
    /// The working directory at the event, when the kernel reported it (execs, and opens
    /// of relative paths); never a value from another moment.
    pub cwd: Option<Raw>,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EdgeDetail {
    Exec {
        /// `execve` or `execveat`.
        syscall: &'static str,
        /// The executed file, absolute when it could be resolved.
        path: Raw,
        /// The file name the process passed, when it differs from `path`.
        requested: Option<Raw>,
        path_resolved: bool,
        /// `path` comes from the caller's memory (a failed exec), not the kernel's objects.
        from_caller: bool,
        /// 0, or `-errno` for an exec that failed.
        result: i64,
    },
    Open {
        /// `openat`, `openat2`, `open` or `creat`.
        syscall: &'static str,
        /// The file opened (absolute when it could be resolved).
        path: Raw,
        /// The path the process passed, when it differs from `path`.
        requested: Option<Raw>,
        path_resolved: bool,
        path_truncated: bool,
        /// The file was unlinked (the path is the name it had).
        path_deleted: bool,
        /// `path` comes from the caller's memory (a failed open, or no kernel view), not
        /// from the kernel's objects.
        from_caller: bool,
        flags: u32,
        /// A file descriptor, or `-errno`.
        result: i64,
    },
    Connect {
        address: SocketTarget,
        /// The address comes from the caller's memory (a failed connect, or no kernel
        /// view), not from the socket.
        from_caller: bool,
        /// 0, or `-errno`.
        result: i64,
    },
}

/// Where a socket connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketTarget {
    Inet {
        address: std::net::IpAddr,
        port: u16,
    },
    /// A filesystem path, or `@name` for an abstract socket; `None` when unnamed.
    Unix {
        path: Option<Raw>,
    },
    Unspecified,
    Other {
        family: u16,
    },
    Unreadable,
}

/// One observation, before attribution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeEvent {
    /// Sequence number within this daemon run (the `eventId` suffix).
    pub seq: u64,
    pub boot_ns: u64,
    pub cgroup_id: u64,
    pub process: ProcessSnapshot,
    pub detail: EdgeDetail,
    /// GNU build-id of the executed binary (exec edges, when it could be read).
    pub code_id: Option<String>,
    /// Repeats of this edge the kernel held back, reported with this event.
    pub repeats: HeldRepeats,
    /// The event stands only for held-back repeats (of an edge that went quiet), not for
    /// an occurrence of its own.
    pub repeats_only: bool,
    /// The edge's key in the in-kernel dedup map, when it is deduplicated.
    pub dedup_key: Option<observer_common::DedupKey>,
    /// Another task shared the caller's memory at the syscall (a multi-threaded process):
    /// what was read from that memory could have been rewritten after the kernel read it.
    /// A successful open's requested path is then not reported; a path or address marked
    /// as the caller's is reported with this mark.
    pub memory_shared: bool,
    /// The path or address came from a descriptor the probe looked up after the syscall
    /// while another task shared the descriptor table: that task could have replaced the
    /// descriptor in between, and the path or address is then the file the descriptor held
    /// when it was read.
    pub files_shared: bool,
}

/// Repeats of an edge the kernel held back, with the boot time of the first and last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldRepeats {
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

impl EdgeEvent {
    /// Occurrences this event stands for.
    pub fn occurrences(&self) -> u64 {
        u64::from(!self.repeats_only) + self.repeats.count
    }

    /// Heap bytes this event alone owns: its paths, working directory, address name and
    /// build-id.
    pub fn owned_heap_bytes(&self) -> usize {
        let raw = |r: &Option<Raw>| r.as_ref().map_or(0, Raw::len);
        let detail = match &self.detail {
            EdgeDetail::Exec {
                path, requested, ..
            }
            | EdgeDetail::Open {
                path, requested, ..
            } => path.len() + raw(requested),
            EdgeDetail::Connect {
                address: SocketTarget::Unix { path },
                ..
            } => raw(path),
            EdgeDetail::Connect { .. } => 0,
        };
        detail + raw(&self.process.cwd) + self.code_id.as_ref().map_or(0, String::capacity)
    }

    pub fn edge_type(&self) -> EdgeType {
        match self.detail {
            EdgeDetail::Exec { .. } => EdgeType::Syscall,
            EdgeDetail::Open { .. } => EdgeType::Fs,
            EdgeDetail::Connect { .. } => EdgeType::Net,
        }
    }
}

/// What a process runs. Shared between a parent and the children it forks until they exec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    /// Absolute path of the executable, when known.
    pub exe: Option<Raw>,
    pub args: Vec<Raw>,
    pub args_truncated: bool,
}

/// Version of the record schema (`schemas/runtime-events.v1.schema.json`).
pub const SCHEMA_VERSION: u32 = 1;
