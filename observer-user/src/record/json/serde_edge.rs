//! The serde writer of edge records' own fields that the direct writer (`edge.rs`)
//! replaced, kept for tests only: an independent statement of the same bytes, compared
//! record by record with the direct writer over the golden corpus.

use serde::{ser::SerializeMap as _, Serialize, Serializer};

use super::fields::{comm_bytes, EventId};
use crate::record::{
    raw::{self, Raw},
    EdgeDetail, EdgeEvent, Item, OpenFlags, ProcessSnapshot, SocketTarget, Timestamp,
    SCHEMA_VERSION,
};

struct ProcessJson<'a>(pub(super) &'a ProcessSnapshot);

impl Serialize for ProcessJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("pid", &p.pid)?;
        map.serialize_entry("tid", &p.tid)?;
        map.serialize_entry("ppid", &p.ppid)?;
        map.serialize_entry("uid", &p.uid)?;
        map.serialize_entry("gid", &p.gid)?;
        let comm = comm_bytes(&p.comm);
        raw::serialize_entry(&mut map, "comm", "commBytes", &Raw::new(comm))?;
        match &p.image.exe {
            Some(exe) => raw::serialize_entry(&mut map, "exe", "exeBytes", exe)?,
            None => map.serialize_entry("exe", &None::<&str>)?,
        }
        raw::serialize_list(&mut map, "args", "argsBytes", &p.image.args)?;
        if p.image.args_truncated {
            map.serialize_entry("argsTruncated", &true)?;
        }
        if let Some(cwd) = &p.cwd {
            raw::serialize_entry(&mut map, "cwd", "cwdBytes", cwd)?;
        }
        map.end()
    }
}

/// `path` (and `pathBytes`), and `requestedPath` (and `requestedPathBytes`) when the process
/// passed something else.
fn serialize_paths<M: serde::ser::SerializeMap>(
    map: &mut M,
    path: &Raw,
    requested: Option<&Raw>,
) -> Result<(), M::Error> {
    raw::serialize_entry(map, "path", "pathBytes", path)?;
    if let Some(requested) = requested.filter(|r| *r != path) {
        raw::serialize_entry(map, "requestedPath", "requestedPathBytes", requested)?;
    }
    Ok(())
}

fn serialize_detail<M: serde::ser::SerializeMap>(
    map: &mut M,
    e: &EdgeEvent,
) -> Result<(), M::Error> {
    match &e.detail {
        EdgeDetail::Exec {
            syscall,
            path,
            requested,
            path_resolved,
            from_caller,
            result,
        } => {
            map.serialize_entry("syscall", syscall)?;
            serialize_paths(map, path, requested.as_ref())?;
            if !path_resolved {
                map.serialize_entry("pathResolved", &false)?;
            }
            if *from_caller {
                map.serialize_entry("pathFromCaller", &true)?;
            }
            map.serialize_entry("result", result)?;
            raw::serialize_list(map, "args", "argsBytes", &e.process.image.args)?;
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
            requested,
            path_resolved,
            path_truncated,
            path_deleted,
            from_caller,
            flags,
            result,
        } => {
            map.serialize_entry("syscall", syscall)?;
            serialize_paths(map, path, requested.as_ref())?;
            if !path_resolved {
                map.serialize_entry("pathResolved", &false)?;
            }
            if *path_truncated {
                map.serialize_entry("pathTruncated", &true)?;
            }
            if *path_deleted {
                map.serialize_entry("pathDeleted", &true)?;
            }
            if *from_caller {
                map.serialize_entry("pathFromCaller", &true)?;
            }
            map.serialize_entry("flags", flags)?;
            map.serialize_entry("flagNames", &OpenFlags(*flags))?;
            map.serialize_entry("result", result)?;
        }
        EdgeDetail::Connect {
            address,
            from_caller,
            result,
        } => {
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
                        raw::serialize_entry(map, "path", "pathBytes", path)?;
                    }
                }
                SocketTarget::Unspecified => map.serialize_entry("family", "unspec")?,
                SocketTarget::Other { family } => {
                    map.serialize_entry("family", &format_args!("af_{family}").to_string())?;
                }
                SocketTarget::Unreadable => map.serialize_entry("family", "unknown")?,
            }
            if *from_caller {
                map.serialize_entry("addressFromCaller", &true)?;
            }
            map.serialize_entry("result", result)?;
        }
    }
    if e.memory_shared {
        map.serialize_entry("sharedMemory", &true)?;
    }
    if e.files_shared {
        map.serialize_entry("filesShared", &true)?;
    }
    if e.repeats_only {
        map.serialize_entry("repeatsOnly", &true)?;
    }
    Ok(())
}

pub(super) struct EdgeHead<'a> {
    pub(super) item: &'a Item,
    pub(super) event: &'a EdgeEvent,
    pub(super) timestamp: Timestamp,
    pub(super) run_id: &'a str,
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

pub(super) struct EdgeTail<'a>(pub(super) &'a EdgeEvent);

impl Serialize for EdgeTail<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("cgroupId", &self.0.cgroup_id)?;
        map.serialize_entry("process", &ProcessJson(&self.0.process))?;
        serialize_detail(&mut map, self.0)?;
        map.end()
    }
}
