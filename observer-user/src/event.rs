//! Records the observer writes, and their JSON.
//!
//! An [`EdgeEvent`] is owned (it may wait for attribution or for a batch); it shares the
//! process image with the process table through an `Arc`. Its JSON is produced by
//! [`EdgeRecord`], which joins the event with its [`Attribution`] and the node identity.
//! Field names are a contract; see docs/ARCHITECTURE.md.

use std::{borrow::Cow, sync::Arc};

use observer_common::TASK_COMM_LEN;
use serde::{ser::SerializeMap as _, ser::SerializeSeq as _, Serialize, Serializer};

use crate::{
    clock::Timestamp,
    containers::{ContainerInfo, PodInfo},
    host::HostIdentity,
    proctable::Image,
};

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
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EdgeDetail {
    Exec {
        /// `execve` or `execveat`.
        syscall: &'static str,
        /// The executed file, absolute when it could be resolved.
        path: String,
        path_resolved: bool,
    },
    Open {
        /// `openat` or `openat2`.
        syscall: &'static str,
        path: String,
        path_resolved: bool,
        path_truncated: bool,
        flags: u32,
        /// A file descriptor, or `-errno`.
        result: i64,
    },
    Connect {
        address: SocketTarget,
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
        path: Option<String>,
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
}

impl EdgeEvent {
    pub fn edge_type(&self) -> EdgeType {
        match self.detail {
            EdgeDetail::Exec { .. } => EdgeType::Syscall,
            EdgeDetail::Open { .. } => EdgeType::Fs,
            EdgeDetail::Connect { .. } => EdgeType::Net,
        }
    }
}

/// How completely an event is attributed to a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Enrichment {
    /// Container, pod, identity and a manifest digest are known.
    Complete,
    /// Attributed to a container, but something is missing (pod, or a usable digest).
    Partial,
    /// The container was not known in time; an `enrichmentPatch` record follows.
    Pending,
    /// Not in a container: a process of the node itself.
    Host,
}

impl Enrichment {
    pub const ALL: [Enrichment; 4] = [
        Enrichment::Complete,
        Enrichment::Partial,
        Enrichment::Pending,
        Enrichment::Host,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Enrichment::Complete => "complete",
            Enrichment::Partial => "partial",
            Enrichment::Pending => "pending",
            Enrichment::Host => "host",
        }
    }
}

/// Which workload an event belongs to.
#[derive(Clone, Debug)]
pub struct Attribution {
    pub enrichment: Enrichment,
    /// The container id, known from the cgroup path even when the runtime has not said more.
    pub container_id: Option<Arc<str>>,
    pub container: Option<Arc<ContainerInfo>>,
}

impl Attribution {
    pub fn host() -> Self {
        Attribution {
            enrichment: Enrichment::Host,
            container_id: None,
            container: None,
        }
    }

    /// The workload id: the pod's identity, else the node's.
    pub fn workload_id<'a>(&'a self, host: &'a HostIdentity) -> &'a str {
        match &self.container {
            Some(c) => &c.pod.identity.id,
            None => &host.workload_id,
        }
    }
}

/// A run-unique event id: `<run id>-<sequence>`.
#[derive(Clone, Copy, Debug)]
pub struct EventId<'a> {
    pub run_id: &'a str,
    pub seq: u64,
}

impl Serialize for EventId<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}-{}", self.run_id, self.seq))
    }
}

/// The JSON of an edge event.
pub struct EdgeRecord<'a> {
    pub event: &'a EdgeEvent,
    pub attribution: &'a Attribution,
    pub host: &'a HostIdentity,
    pub run_id: &'a str,
    pub timestamp: Timestamp,
}

fn comm_str(comm: &[u8; TASK_COMM_LEN]) -> Cow<'_, str> {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end])
}

/// The fields that say which workload a record belongs to, shared by every record type.
fn serialize_workload<M: serde::ser::SerializeMap>(
    map: &mut M,
    host: &HostIdentity,
    enrichment: Enrichment,
    container_id: Option<&str>,
    container: Option<&ContainerInfo>,
) -> Result<(), M::Error> {
    map.serialize_entry("node", &host.node)?;
    map.serialize_entry("hostId", &host.host_id)?;
    map.serialize_entry("osRelease", &host.os_release)?;
    match container {
        Some(c) => {
            map.serialize_entry("workloadId", &c.pod.identity.id)?;
            map.serialize_entry("workloadIdSource", c.pod.identity.id_source.as_str())?;
        }
        None => map.serialize_entry("workloadId", &host.workload_id)?,
    }
    map.serialize_entry("enrichment", enrichment.as_str())?;
    if let Some(id) = container_id {
        map.serialize_entry("containerId", id)?;
    }
    if let Some(c) = container {
        serialize_pod(map, &c.pod)?;
        map.serialize_entry("containerName", &c.name)?;
        map.serialize_entry("imageRef", &c.image.reference)?;
        map.serialize_entry("imageDigest", &c.image.digest)?;
        map.serialize_entry("imageDigestKind", c.image.digest_kind.as_str())?;
    }
    Ok(())
}

fn serialize_pod<M: serde::ser::SerializeMap>(map: &mut M, pod: &PodInfo) -> Result<(), M::Error> {
    map.serialize_entry("namespace", &pod.pod.namespace)?;
    map.serialize_entry("pod", &pod.pod.name)?;
    map.serialize_entry("podUid", &pod.pod.uid)?;
    let identity = &pod.identity;
    for (key, value) in [
        ("tenant", &identity.tenant),
        ("project", &identity.project),
        ("component", &identity.component),
        ("channel", &identity.channel),
    ] {
        if let Some(value) = value {
            map.serialize_entry(key, value)?;
        }
    }
    Ok(())
}

struct ProcessJson<'a>(&'a ProcessSnapshot);

impl Serialize for ProcessJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("pid", &p.pid)?;
        map.serialize_entry("tid", &p.tid)?;
        map.serialize_entry("ppid", &p.ppid)?;
        map.serialize_entry("uid", &p.uid)?;
        map.serialize_entry("gid", &p.gid)?;
        map.serialize_entry("comm", &comm_str(&p.comm))?;
        map.serialize_entry("exe", &p.image.exe)?;
        map.serialize_entry("args", &p.image.args)?;
        if p.image.args_truncated {
            map.serialize_entry("argsTruncated", &true)?;
        }
        map.end()
    }
}

impl Serialize for EdgeRecord<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let e = self.event;
        let a = self.attribution;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("eventType", "edge")?;
        map.serialize_entry(
            "eventId",
            &EventId {
                run_id: self.run_id,
                seq: e.seq,
            },
        )?;
        map.serialize_entry("edgeType", &e.edge_type())?;
        map.serialize_entry("timestamp", &self.timestamp)?;
        serialize_workload(
            &mut map,
            self.host,
            a.enrichment,
            a.container_id.as_deref(),
            a.container.as_deref(),
        )?;
        map.serialize_entry("cgroupId", &e.cgroup_id)?;
        map.serialize_entry("process", &ProcessJson(&e.process))?;
        match &e.detail {
            EdgeDetail::Exec {
                syscall,
                path,
                path_resolved,
            } => {
                map.serialize_entry("syscall", syscall)?;
                map.serialize_entry("path", path)?;
                if !path_resolved {
                    map.serialize_entry("pathResolved", &false)?;
                }
                map.serialize_entry("args", &e.process.image.args)?;
                if e.process.image.args_truncated {
                    map.serialize_entry("argsTruncated", &true)?;
                }
            }
            EdgeDetail::Open {
                syscall,
                path,
                path_resolved,
                path_truncated,
                flags,
                result,
            } => {
                map.serialize_entry("syscall", syscall)?;
                map.serialize_entry("path", path)?;
                if !path_resolved {
                    map.serialize_entry("pathResolved", &false)?;
                }
                if *path_truncated {
                    map.serialize_entry("pathTruncated", &true)?;
                }
                map.serialize_entry("flags", flags)?;
                map.serialize_entry("flagNames", &OpenFlags(*flags))?;
                map.serialize_entry("result", result)?;
            }
            EdgeDetail::Connect { address, result } => {
                map.serialize_entry("syscall", "connect")?;
                match address {
                    SocketTarget::Inet { address, port } => {
                        let family = if address.is_ipv4() { "inet" } else { "inet6" };
                        map.serialize_entry("family", family)?;
                        map.serialize_entry("address", &address)?;
                        map.serialize_entry("port", port)?;
                    }
                    SocketTarget::Unix { path } => {
                        map.serialize_entry("family", "unix")?;
                        if let Some(path) = path {
                            map.serialize_entry("path", path)?;
                        }
                    }
                    SocketTarget::Unspecified => map.serialize_entry("family", "unspec")?,
                    SocketTarget::Other { family } => {
                        map.serialize_entry("family", &format_args!("af_{family}").to_string())?;
                    }
                    SocketTarget::Unreadable => map.serialize_entry("family", "unknown")?,
                }
                map.serialize_entry("result", result)?;
            }
        }
        map.end()
    }
}

/// `containerStart` / `containerStop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Start,
    Stop,
}

/// The JSON of a container lifecycle event.
pub struct LifecycleRecord<'a> {
    pub lifecycle: Lifecycle,
    pub container: &'a ContainerInfo,
    pub enrichment: Enrichment,
    pub host: &'a HostIdentity,
    pub timestamp: Timestamp,
}

impl Serialize for LifecycleRecord<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.container;
        let mut map = serializer.serialize_map(None)?;
        let kind = match self.lifecycle {
            Lifecycle::Start => "containerStart",
            Lifecycle::Stop => "containerStop",
        };
        map.serialize_entry("eventType", kind)?;
        map.serialize_entry("timestamp", &self.timestamp)?;
        serialize_workload(&mut map, self.host, self.enrichment, Some(&c.id), Some(c))?;
        if let Some(pid) = c.init_pid {
            map.serialize_entry("initPid", &pid)?;
        }
        if let Some(entrypoint) = &c.entrypoint {
            map.serialize_entry("entrypoint", entrypoint)?;
        }
        if let Some(code_id) = &c.entrypoint_code_id {
            map.serialize_entry("code_id", code_id)?;
        }
        if self.lifecycle == Lifecycle::Stop {
            if let Some(code) = c.exit_code {
                map.serialize_entry("exitCode", &code)?;
            }
        }
        map.end()
    }
}

/// The JSON of an `enrichmentPatch`: events sent `pending` now belong to a container.
pub struct PatchRecord<'a> {
    pub run_id: &'a str,
    pub event_seqs: &'a [u64],
    pub container: &'a ContainerInfo,
    pub enrichment: Enrichment,
    pub host: &'a HostIdentity,
    pub timestamp: Timestamp,
}

struct EventIds<'a> {
    run_id: &'a str,
    seqs: &'a [u64],
}

impl Serialize for EventIds<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.seqs.len()))?;
        for &s in self.seqs {
            seq.serialize_element(&EventId {
                run_id: self.run_id,
                seq: s,
            })?;
        }
        seq.end()
    }
}

impl Serialize for PatchRecord<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("eventType", "enrichmentPatch")?;
        map.serialize_entry("timestamp", &self.timestamp)?;
        map.serialize_entry(
            "eventIds",
            &EventIds {
                run_id: self.run_id,
                seqs: self.event_seqs,
            },
        )?;
        serialize_workload(
            &mut map,
            self.host,
            self.enrichment,
            Some(&self.container.id),
            Some(self.container),
        )?;
        map.end()
    }
}

/// `O_*` flags, serialized as a list of names (unknown bits as hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFlags(pub u32);

const OPEN_FLAG_NAMES: [(u32, &str); 17] = [
    (libc::O_CREAT as u32, "O_CREAT"),
    (libc::O_EXCL as u32, "O_EXCL"),
    (libc::O_NOCTTY as u32, "O_NOCTTY"),
    (libc::O_TRUNC as u32, "O_TRUNC"),
    (libc::O_APPEND as u32, "O_APPEND"),
    (libc::O_NONBLOCK as u32, "O_NONBLOCK"),
    (libc::O_DSYNC as u32, "O_DSYNC"),
    (0o20000, "FASYNC"),
    (libc::O_DIRECT as u32, "O_DIRECT"),
    (libc::O_LARGEFILE as u32, "O_LARGEFILE"),
    (libc::O_DIRECTORY as u32, "O_DIRECTORY"),
    (libc::O_NOFOLLOW as u32, "O_NOFOLLOW"),
    (libc::O_NOATIME as u32, "O_NOATIME"),
    (libc::O_CLOEXEC as u32, "O_CLOEXEC"),
    // O_SYNC is __O_SYNC | O_DSYNC; name the extra bit.
    (0o4000000, "__O_SYNC"),
    (libc::O_PATH as u32, "O_PATH"),
    // O_TMPFILE is __O_TMPFILE | O_DIRECTORY.
    (0o20000000, "__O_TMPFILE"),
];

impl OpenFlags {
    /// Names of the set flags: the access mode first, then each flag bit.
    pub fn names(self) -> impl Iterator<Item = Cow<'static, str>> {
        let access = match self.0 & libc::O_ACCMODE as u32 {
            0 => "O_RDONLY",
            1 => "O_WRONLY",
            2 => "O_RDWR",
            _ => "O_ACCMODE",
        };
        let known = OPEN_FLAG_NAMES
            .iter()
            .fold(libc::O_ACCMODE as u32, |known, (bit, _)| known | bit);
        let bits = OPEN_FLAG_NAMES
            .iter()
            .filter(move |(bit, _)| self.0 & bit != 0)
            .map(|(_, name)| Cow::Borrowed(*name));
        let unknown = self.0 & !known;
        std::iter::once(Cow::Borrowed(access))
            .chain(bits)
            .chain((unknown != 0).then(|| Cow::Owned(format!("{unknown:#x}"))))
    }
}

impl Serialize for OpenFlags {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        for name in self.names() {
            seq.serialize_element(&name)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_by_name() {
        let names = |f: i32| OpenFlags(f as u32).names().collect::<Vec<_>>();
        assert_eq!(
            names(libc::O_RDONLY | libc::O_CLOEXEC),
            ["O_RDONLY", "O_CLOEXEC"]
        );
        assert_eq!(
            names(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC),
            ["O_WRONLY", "O_CREAT", "O_TRUNC"]
        );
        assert_eq!(names(libc::O_RDWR | 0x4000_0000), ["O_RDWR", "0x40000000"]);
    }
}
