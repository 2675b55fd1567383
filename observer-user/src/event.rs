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
    batch::{Item, Record},
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
    /// GNU build-id of the executed binary (exec edges, when it could be read).
    pub code_id: Option<String>,
    /// Repeats of this edge the kernel held back, reported with this event.
    pub repeats: HeldRepeats,
    /// The event stands only for held-back repeats (of an edge that went quiet), not for
    /// an occurrence of its own.
    pub repeats_only: bool,
    /// The edge's key in the in-kernel dedup map, when it is deduplicated.
    pub dedup_key: Option<observer_common::DedupKey>,
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

    /// The workload this attribution names: the pod's identity, a provisional
    /// `container:<id>` for a container not described yet, else the node.
    pub fn workload_key(&self, host: &HostIdentity) -> Arc<str> {
        match (&self.container, &self.container_id) {
            (Some(c), _) => Arc::clone(&c.pod.identity_id),
            (None, Some(id)) => Arc::from(format!("container:{id}")),
            (None, None) => Arc::clone(&host.workload_id_shared),
        }
    }
}

/// Version of the record schema (`schemas/runtime-events.v1.schema.json`).
pub const SCHEMA_VERSION: u32 = 1;

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
    match (container, container_id) {
        (Some(c), _) => {
            map.serialize_entry("workloadId", &c.pod.identity.id)?;
            map.serialize_entry("workloadIdSource", c.pod.identity.id_source.as_str())?;
        }
        // A container the runtime has not described (yet): a provisional id.
        (None, Some(id)) => {
            map.serialize_entry("workloadId", &format_args!("container:{id}").to_string())?;
            map.serialize_entry("workloadIdSource", "container")?;
        }
        (None, None) => map.serialize_entry("workloadId", &host.workload_id)?,
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

fn serialize_detail<M: serde::ser::SerializeMap>(
    map: &mut M,
    e: &EdgeEvent,
) -> Result<(), M::Error> {
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
            if let Some(code_id) = &e.code_id {
                map.serialize_entry("code_id", code_id)?;
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
    Ok(())
}

/// `containerStart` / `containerStop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Start,
    Stop,
}

/// The JSON of one record of a batch.
pub struct RecordJson<'a> {
    pub item: &'a Item,
    pub host: &'a HostIdentity,
    pub run_id: &'a str,
}

impl Serialize for RecordJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let item = self.item;
        let timestamp = Timestamp::from_unix_ns(item.at_ns);
        let mut map = serializer.serialize_map(None)?;
        match &item.record {
            Record::Edge { event, attribution } => {
                map.serialize_entry("schemaVersion", &SCHEMA_VERSION)?;
                map.serialize_entry("eventType", "edge")?;
                map.serialize_entry(
                    "eventId",
                    &EventId {
                        run_id: self.run_id,
                        seq: event.seq,
                    },
                )?;
                map.serialize_entry("edgeType", &event.edge_type())?;
                map.serialize_entry("timestamp", &timestamp)?;
                if item.count > 1 {
                    map.serialize_entry("count", &item.count)?;
                    map.serialize_entry("firstSeen", &timestamp)?;
                    map.serialize_entry("lastSeen", &Timestamp::from_unix_ns(item.last_ns))?;
                }
                if item.late {
                    map.serialize_entry("late", &true)?;
                }
                serialize_workload(
                    &mut map,
                    self.host,
                    attribution.enrichment,
                    attribution.container_id.as_deref(),
                    attribution.container.as_deref(),
                )?;
                map.serialize_entry("cgroupId", &event.cgroup_id)?;
                map.serialize_entry("process", &ProcessJson(&event.process))?;
                serialize_detail(&mut map, event)?;
            }
            Record::Lifecycle {
                lifecycle,
                container,
                enrichment,
            } => {
                let kind = match lifecycle {
                    Lifecycle::Start => "containerStart",
                    Lifecycle::Stop => "containerStop",
                };
                map.serialize_entry("schemaVersion", &SCHEMA_VERSION)?;
                map.serialize_entry("eventType", kind)?;
                map.serialize_entry("timestamp", &timestamp)?;
                if item.late {
                    map.serialize_entry("late", &true)?;
                }
                serialize_workload(
                    &mut map,
                    self.host,
                    *enrichment,
                    Some(&container.id),
                    Some(container),
                )?;
                if let Some(pid) = container.init_pid {
                    map.serialize_entry("initPid", &pid)?;
                }
                if let Some(entrypoint) = &container.entrypoint {
                    map.serialize_entry("entrypoint", entrypoint)?;
                }
                if let Some(code_id) = &container.entrypoint_code_id {
                    map.serialize_entry("code_id", code_id)?;
                }
                if *lifecycle == Lifecycle::Stop {
                    if let Some(code) = container.exit_code {
                        map.serialize_entry("exitCode", &code)?;
                    }
                }
            }
            Record::Patch {
                container,
                seqs,
                enrichment,
            } => {
                map.serialize_entry("schemaVersion", &SCHEMA_VERSION)?;
                map.serialize_entry("eventType", "enrichmentPatch")?;
                map.serialize_entry("timestamp", &timestamp)?;
                map.serialize_entry(
                    "eventIds",
                    &EventIds {
                        run_id: self.run_id,
                        seqs,
                    },
                )?;
                serialize_workload(
                    &mut map,
                    self.host,
                    *enrichment,
                    Some(&container.id),
                    Some(container),
                )?;
            }
        }
        map.end()
    }
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
