//! Edge records' own fields, written straight into the output: the head (type, id, time,
//! count) and the tail (cgroup, process, what happened). Edges are nearly every record,
//! so they skip the serializer; a process's fields are rendered once per batch and copied
//! for its other records. Field order and bytes are those of the schema's examples and of
//! the serde writer this replaced (the golden test in `pipeline/encode` pins them).

use std::{collections::HashMap, sync::Arc};

use observer_common::TASK_COMM_LEN;

use super::{
    direct::{int_entry, key, raw_entry, raw_list, str_entry, true_entry, uint, uint_entry},
    fields::comm_bytes,
};
use crate::record::{
    raw::Raw, EdgeDetail, EdgeEvent, Image, Item, OpenFlags, ProcessSnapshot, SocketTarget,
    Timestamp, SCHEMA_VERSION,
};

/// `"schemaVersion":1,"eventType":"edge","eventId":...,"edgeType":...,"timestamp":...`, and
/// `count`, `firstSeen`, `lastSeen` for a merged record, `late` for a late one.
pub(super) fn head(out: &mut Vec<u8>, item: &Item, event: &EdgeEvent, run_id: &str) {
    let timestamp = Timestamp::from_unix_ns(item.at_ns);
    uint_entry(out, "schemaVersion", u64::from(SCHEMA_VERSION));
    str_entry(out, "eventType", "edge");
    key(out, "eventId");
    out.push(b'"');
    super::direct::escaped(out, run_id.as_bytes());
    out.push(b'-');
    uint(out, event.seq);
    out.push(b'"');
    str_entry(out, "edgeType", event.edge_type().name());
    key(out, "timestamp");
    timestamp.write_json(out);
    if item.count > 1 {
        uint_entry(out, "count", item.count);
        key(out, "firstSeen");
        timestamp.write_json(out);
        key(out, "lastSeen");
        Timestamp::from_unix_ns(item.last_ns).write_json(out);
    }
    if item.late {
        true_entry(out, "late");
    }
}

/// `"cgroupId":...,"process":{...}`, then the fields of what happened.
pub(super) fn tail(out: &mut Vec<u8>, event: &EdgeEvent, processes: &mut ProcessCache) {
    uint_entry(out, "cgroupId", event.cgroup_id);
    key(out, "process");
    processes.write(out, &event.process);
    detail(out, event);
}

/// A process's JSON as last rendered, for the records of the same process that follow.
struct Rendered {
    ppid: Option<u32>,
    uid: u32,
    gid: u32,
    comm: [u8; TASK_COMM_LEN],
    /// Held so the pointer compared stays this image's.
    image: Arc<Image>,
    json: Vec<u8>,
}

impl Rendered {
    fn describes(&self, p: &ProcessSnapshot) -> bool {
        self.ppid == p.ppid
            && self.uid == p.uid
            && self.gid == p.gid
            && self.comm == p.comm
            && Arc::ptr_eq(&self.image, &p.image)
    }
}

/// Processes' JSON by (pid, tid), for one batch. A snapshot with a working directory is
/// rendered each time (the directory is of that moment).
#[derive(Default)]
pub(super) struct ProcessCache {
    rendered: HashMap<(u32, u32), Rendered, foldhash::fast::FixedState>,
}

impl ProcessCache {
    fn write(&mut self, out: &mut Vec<u8>, p: &ProcessSnapshot) {
        if p.cwd.is_some() {
            process(out, p);
            return;
        }
        if let Some(r) = self.rendered.get(&(p.pid, p.tid)) {
            if r.describes(p) {
                out.extend_from_slice(&r.json);
                return;
            }
        }
        let start = out.len();
        process(out, p);
        let json = out[start..].to_vec();
        self.rendered.insert(
            (p.pid, p.tid),
            Rendered {
                ppid: p.ppid,
                uid: p.uid,
                gid: p.gid,
                comm: p.comm,
                image: Arc::clone(&p.image),
                json,
            },
        );
    }
}

fn process(out: &mut Vec<u8>, p: &ProcessSnapshot) {
    out.push(b'{');
    uint_entry(out, "pid", u64::from(p.pid));
    uint_entry(out, "tid", u64::from(p.tid));
    match p.ppid {
        Some(ppid) => uint_entry(out, "ppid", u64::from(ppid)),
        None => {
            key(out, "ppid");
            out.extend_from_slice(b"null");
        }
    }
    uint_entry(out, "uid", u64::from(p.uid));
    uint_entry(out, "gid", u64::from(p.gid));
    raw_entry(out, "comm", "commBytes", &Raw::new(comm_bytes(&p.comm)));
    match &p.image.exe {
        Some(exe) => raw_entry(out, "exe", "exeBytes", exe),
        None => {
            key(out, "exe");
            out.extend_from_slice(b"null");
        }
    }
    raw_list(out, "args", "argsBytes", &p.image.args);
    if p.image.args_truncated {
        true_entry(out, "argsTruncated");
    }
    if let Some(cwd) = &p.cwd {
        raw_entry(out, "cwd", "cwdBytes", cwd);
    }
    out.push(b'}');
}

/// `syscall`, `path`, `requestedPath` when the process passed something else, and
/// `pathResolved: false` when the path could not be made absolute.
fn syscall_and_paths(
    out: &mut Vec<u8>,
    syscall: &str,
    path: &Raw,
    requested: Option<&Raw>,
    resolved: bool,
) {
    str_entry(out, "syscall", syscall);
    raw_entry(out, "path", "pathBytes", path);
    if let Some(requested) = requested.filter(|r| *r != path) {
        raw_entry(out, "requestedPath", "requestedPathBytes", requested);
    }
    if !resolved {
        key(out, "pathResolved");
        out.extend_from_slice(b"false");
    }
}

fn detail(out: &mut Vec<u8>, e: &EdgeEvent) {
    match &e.detail {
        EdgeDetail::Exec {
            syscall,
            path,
            requested,
            path_resolved,
            from_caller,
            result,
        } => {
            syscall_and_paths(out, syscall, path, requested.as_ref(), *path_resolved);
            if *from_caller {
                true_entry(out, "pathFromCaller");
            }
            int_entry(out, "result", *result);
            raw_list(out, "args", "argsBytes", &e.process.image.args);
            if e.process.image.args_truncated {
                true_entry(out, "argsTruncated");
            }
            if let Some(code_id) = &e.code_id {
                str_entry(out, "code_id", code_id);
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
            syscall_and_paths(out, syscall, path, requested.as_ref(), *path_resolved);
            if *path_truncated {
                true_entry(out, "pathTruncated");
            }
            if *path_deleted {
                true_entry(out, "pathDeleted");
            }
            if *from_caller {
                true_entry(out, "pathFromCaller");
            }
            uint_entry(out, "flags", u64::from(*flags));
            key(out, "flagNames");
            out.push(b'[');
            for (i, name) in OpenFlags(*flags).names().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                super::direct::string(out, &name);
            }
            out.push(b']');
            int_entry(out, "result", *result);
        }
        EdgeDetail::Connect {
            address,
            from_caller,
            result,
        } => {
            str_entry(out, "syscall", "connect");
            match address {
                SocketTarget::Inet { address, port } => {
                    let family = if address.is_ipv4() { "inet" } else { "inet6" };
                    str_entry(out, "family", family);
                    // Digits, dots, colons and hex: nothing to escape.
                    key(out, "address");
                    use std::io::Write as _;
                    let _ = write!(out, "\"{address}\"");
                    uint_entry(out, "port", u64::from(*port));
                }
                SocketTarget::Unix { path } => {
                    str_entry(out, "family", "unix");
                    if let Some(path) = path {
                        raw_entry(out, "path", "pathBytes", path);
                    }
                }
                SocketTarget::Unspecified => str_entry(out, "family", "unspec"),
                SocketTarget::Other { family } => {
                    key(out, "family");
                    use std::io::Write as _;
                    let _ = write!(out, "\"af_{family}\"");
                }
                SocketTarget::Unreadable => str_entry(out, "family", "unknown"),
            }
            if *from_caller {
                true_entry(out, "addressFromCaller");
            }
            int_entry(out, "result", *result);
        }
    }
    if e.memory_shared {
        true_entry(out, "sharedMemory");
    }
    if e.files_shared {
        true_entry(out, "filesShared");
    }
    if e.repeats_only {
        true_entry(out, "repeatsOnly");
    }
}
