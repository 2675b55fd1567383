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

/// Writes the JSON of a batch's records.
///
/// A record is its head (type, id, time), the workload fields, and its tail (what
/// happened). The workload fields are the same for every record of a workload, and a batch
/// is sorted by workload: they are rendered once per run of records and copied after that.
pub struct RecordWriter<'a> {
    host: &'a HostIdentity,
    run_id: &'a str,
    /// What the rendered workload fields describe; holding the `Arc`s keeps the pointers
    /// compared below from being reused by other containers.
    workload_of: Option<WorkloadOf>,
    /// `"node":...,"hostId":...` (an object's fields, without the braces).
    workload: Vec<u8>,
    scratch: Vec<u8>,
}

struct WorkloadOf {
    enrichment: Enrichment,
    container_id: Option<Arc<str>>,
    container: Option<Arc<ContainerInfo>>,
}

impl WorkloadOf {
    fn is(
        &self,
        enrichment: Enrichment,
        container_id: Option<&Arc<str>>,
        container: Option<&Arc<ContainerInfo>>,
    ) -> bool {
        self.enrichment == enrichment
            && match (&self.container_id, container_id) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (None, None) => true,
                _ => false,
            }
            && match (&self.container, container) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

impl<'a> RecordWriter<'a> {
    pub fn new(host: &'a HostIdentity, run_id: &'a str) -> Self {
        RecordWriter {
            host,
            run_id,
            workload_of: None,
            workload: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Appends the record's JSON object (no newline) to `out`.
    pub fn write(&mut self, out: &mut Vec<u8>, item: &Item) -> serde_json::Result<()> {
        let timestamp = Timestamp::from_unix_ns(item.at_ns);
        match &item.record {
            Record::Edge { event, attribution } => self.compose(
                out,
                &EdgeHead {
                    item,
                    event,
                    timestamp,
                    run_id: self.run_id,
                },
                attribution.enrichment,
                attribution.container_id.as_ref(),
                attribution.container.as_ref(),
                &EdgeTail(event),
            ),
            Record::Lifecycle {
                lifecycle,
                container,
                enrichment,
            } => {
                let id: Arc<str> = Arc::from(container.id.as_str());
                self.compose(
                    out,
                    &LifecycleHead {
                        lifecycle: *lifecycle,
                        timestamp,
                        late: item.late,
                    },
                    *enrichment,
                    Some(&id),
                    Some(container),
                    &LifecycleTail {
                        lifecycle: *lifecycle,
                        container,
                    },
                )
            }
            Record::Patch {
                container,
                seqs,
                enrichment,
            } => {
                let id: Arc<str> = Arc::from(container.id.as_str());
                self.compose(
                    out,
                    &PatchHead {
                        timestamp,
                        ids: EventIds {
                            run_id: self.run_id,
                            seqs,
                        },
                    },
                    *enrichment,
                    Some(&id),
                    Some(container),
                    &NoFields,
                )
            }
        }
    }

    /// `{head fields, workload fields, tail fields}`.
    #[allow(clippy::too_many_arguments, reason = "the parts of one record")]
    fn compose(
        &mut self,
        out: &mut Vec<u8>,
        head: &impl Serialize,
        enrichment: Enrichment,
        container_id: Option<&Arc<str>>,
        container: Option<&Arc<ContainerInfo>>,
        tail: &impl Serialize,
    ) -> serde_json::Result<()> {
        let fresh = !self
            .workload_of
            .as_ref()
            .is_some_and(|w| w.is(enrichment, container_id, container));
        if fresh {
            self.scratch.clear();
            serde_json::to_writer(
                &mut self.scratch,
                &WorkloadJson {
                    host: self.host,
                    enrichment,
                    container_id: container_id.map(|id| &**id),
                    container: container.map(|c| &**c),
                },
            )?;
            self.workload.clear();
            self.workload.extend_from_slice(fields_of(&self.scratch));
            self.workload_of = Some(WorkloadOf {
                enrichment,
                container_id: container_id.cloned(),
                container: container.cloned(),
            });
        }
        out.push(b'{');
        append_fields(out, &mut self.scratch, head)?;
        push_fields(out, &self.workload);
        append_fields(out, &mut self.scratch, tail)?;
        out.push(b'}');
        Ok(())
    }
}

/// Appends the fields of `value` (which serializes as an object) to an open object.
fn append_fields(
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    value: &impl Serialize,
) -> serde_json::Result<()> {
    scratch.clear();
    serde_json::to_writer(&mut *scratch, value)?;
    push_fields(out, fields_of(scratch));
    Ok(())
}

fn push_fields(out: &mut Vec<u8>, fields: &[u8]) {
    if fields.is_empty() {
        return;
    }
    if out.last() != Some(&b'{') {
        out.push(b',');
    }
    out.extend_from_slice(fields);
}

/// The fields of a serialized JSON object: what is between its braces.
fn fields_of(object: &[u8]) -> &[u8] {
    object
        .strip_prefix(b"{")
        .and_then(|o| o.strip_suffix(b"}"))
        .unwrap_or(object)
}

struct EdgeHead<'a> {
    item: &'a Item,
    event: &'a EdgeEvent,
    timestamp: Timestamp,
    run_id: &'a str,
}

impl Serialize for EdgeHead<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("schemaVersion", &SCHEMA_VERSION)?;
        map.serialize_entry("eventType", "edge")?;
        map.serialize_entry(
            "eventId",
            &EventId {
                run_id: self.run_id,
                seq: self.event.seq,
            },
        )?;
        map.serialize_entry("edgeType", &self.event.edge_type())?;
        map.serialize_entry("timestamp", &self.timestamp)?;
        if self.item.count > 1 {
            map.serialize_entry("count", &self.item.count)?;
            map.serialize_entry("firstSeen", &self.timestamp)?;
            map.serialize_entry("lastSeen", &Timestamp::from_unix_ns(self.item.last_ns))?;
        }
        if self.item.late {
            map.serialize_entry("late", &true)?;
        }
        map.end()
    }
}

struct EdgeTail<'a>(&'a EdgeEvent);

impl Serialize for EdgeTail<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("cgroupId", &self.0.cgroup_id)?;
        map.serialize_entry("process", &ProcessJson(&self.0.process))?;
        serialize_detail(&mut map, self.0)?;
        map.end()
    }
}

struct LifecycleHead {
    lifecycle: Lifecycle,
    timestamp: Timestamp,
    late: bool,
}

impl Serialize for LifecycleHead {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("schemaVersion", &SCHEMA_VERSION)?;
        let kind = match self.lifecycle {
            Lifecycle::Start => "containerStart",
            Lifecycle::Stop => "containerStop",
        };
        map.serialize_entry("eventType", kind)?;
        map.serialize_entry("timestamp", &self.timestamp)?;
        if self.late {
            map.serialize_entry("late", &true)?;
        }
        map.end()
    }
}

struct LifecycleTail<'a> {
    lifecycle: Lifecycle,
    container: &'a ContainerInfo,
}

impl Serialize for LifecycleTail<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.container;
        let mut map = serializer.serialize_map(None)?;
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

struct PatchHead<'a> {
    timestamp: Timestamp,
    ids: EventIds<'a>,
}

impl Serialize for PatchHead<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("schemaVersion", &SCHEMA_VERSION)?;
        map.serialize_entry("eventType", "enrichmentPatch")?;
        map.serialize_entry("timestamp", &self.timestamp)?;
        map.serialize_entry("eventIds", &self.ids)?;
        map.end()
    }
}

struct NoFields;

impl Serialize for NoFields {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_map(Some(0))?.end()
    }
}

struct WorkloadJson<'a> {
    host: &'a HostIdentity,
    enrichment: Enrichment,
    container_id: Option<&'a str>,
    container: Option<&'a ContainerInfo>,
}

impl Serialize for WorkloadJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        serialize_workload(
            &mut map,
            self.host,
            self.enrichment,
            self.container_id,
            self.container,
        )?;
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

    fn container(id: &str, pod: &str) -> Arc<ContainerInfo> {
        use crate::containers::{ContainerState, ImageInfo};
        use observer_common::identity::{DigestKind, PodRef};
        Arc::new(ContainerInfo {
            id: id.into(),
            name: "app".into(),
            pod: Arc::new(PodInfo::new(
                format!("sandbox-{pod}"),
                PodRef {
                    name: pod.into(),
                    namespace: "shop".into(),
                    uid: format!("uid-{pod}"),
                    labels: Default::default(),
                },
            )),
            image: ImageInfo {
                reference: "app:1".into(),
                digest: Some("sha256:ab".into()),
                digest_kind: DigestKind::Manifest,
            },
            state: ContainerState::Running,
            started_at_ns: 5,
            finished_at_ns: 0,
            exit_code: None,
            init_pid: Some(7),
            entrypoint: Some("/app".into()),
            entrypoint_code_id: None,
        })
    }

    fn edge(seq: u64, attribution: Attribution) -> Record {
        Record::Edge {
            event: EdgeEvent {
                seq,
                boot_ns: 0,
                cgroup_id: 9,
                process: ProcessSnapshot {
                    pid: 3,
                    tid: 3,
                    ppid: Some(1),
                    uid: 0,
                    gid: 0,
                    comm: *b"app\0\0\0\0\0\0\0\0\0\0\0\0\0",
                    image: Arc::new(Image::default()),
                },
                detail: EdgeDetail::Open {
                    syscall: "openat",
                    path: format!("/data/{seq}"),
                    path_resolved: true,
                    path_truncated: false,
                    flags: 0,
                    result: 4,
                },
                code_id: None,
                repeats: HeldRepeats::default(),
                repeats_only: false,
                dedup_key: None,
            },
            attribution,
        }
    }

    #[test]
    fn records_of_alternating_workloads_carry_their_own_workload_fields() {
        let host = HostIdentity::for_tests();
        let (a, b) = (container("a1", "web"), container("b2", "db"));
        let known = |c: &Arc<ContainerInfo>, enrichment| Attribution {
            enrichment,
            container_id: Some(Arc::from(c.id.as_str())),
            container: Some(Arc::clone(c)),
        };
        let records = [
            edge(1, known(&a, Enrichment::Complete)),
            edge(2, known(&a, Enrichment::Complete)),
            edge(3, known(&b, Enrichment::Complete)),
            edge(4, Attribution::host()),
            edge(
                5,
                Attribution {
                    enrichment: Enrichment::Pending,
                    container_id: Some(Arc::from("c3")),
                    container: None,
                },
            ),
            edge(6, known(&a, Enrichment::Partial)),
            Record::Lifecycle {
                lifecycle: Lifecycle::Start,
                container: Arc::clone(&b),
                enrichment: Enrichment::Complete,
            },
            Record::Patch {
                container: Arc::clone(&a),
                seqs: vec![5],
                enrichment: Enrichment::Complete,
            },
        ];
        let mut shared = RecordWriter::new(&host, "r");
        let mut seen = Vec::new();
        for record in records {
            let item = Item::new(1_000, &host, record);
            let mut out = Vec::new();
            shared.write(&mut out, &item).unwrap();
            // The same as a writer that has rendered nothing before.
            let mut alone = Vec::new();
            RecordWriter::new(&host, "r")
                .write(&mut alone, &item)
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&alone)
            );
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            seen.push((
                v["eventType"].as_str().unwrap().to_owned(),
                v["containerId"].as_str().unwrap_or("-").to_owned(),
                v["workloadId"].as_str().unwrap().to_owned(),
                v["enrichment"].as_str().unwrap().to_owned(),
            ));
        }
        let expect = [
            ("edge", "a1", "shop/web", "complete"),
            ("edge", "a1", "shop/web", "complete"),
            ("edge", "b2", "shop/db", "complete"),
            ("edge", "-", "host:abc", "host"),
            ("edge", "c3", "container:c3", "pending"),
            ("edge", "a1", "shop/web", "partial"),
            ("containerStart", "b2", "shop/db", "complete"),
            ("enrichmentPatch", "a1", "shop/web", "complete"),
        ];
        let seen: Vec<(&str, &str, &str, &str)> = seen
            .iter()
            .map(|(a, b, c, d)| (a.as_str(), b.as_str(), c.as_str(), d.as_str()))
            .collect();
        assert_eq!(seen, expect);
    }
}
