//! Process tracking: fork, exec and exit records keep the process table current, and
//! exec, open and connect records become owned [`EdgeEvent`]s carrying a snapshot of their
//! process.

use std::{collections::HashMap, sync::Arc};

use observer_common::{flags, DedupKey, DedupState, EventHeader, EventKind, Repeats};

use super::{
    buildid::BuildIdCache,
    paths,
    repeats::DedupAccount,
    table::{split_cmdline, ProcessTable},
};
use crate::{
    kernel::decode::{ConnectEvent, ExecEvent, KernelEvent, OpenEvent, SocketAddress},
    record::{EdgeDetail, EdgeEvent, HeldRepeats, Image, ProcessSnapshot, SocketTarget},
};

/// What tracking did, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackStats {
    /// Records handled, by kind (index = `EventKind as usize`).
    pub received: [u64; 8],
    /// Relative paths that could not be made absolute (the process was gone).
    pub unresolved_paths: u64,
    /// Execs whose binary's build-id could not be read (the process was gone, or the
    /// binary has none).
    pub execs_without_code_id: u64,
}

impl TrackStats {
    pub fn received(&self, kind: EventKind) -> u64 {
        self.received[kind as usize]
    }
}

pub struct Tracker {
    table: ProcessTable,
    next_seq: u64,
    stats: TrackStats,
    build_ids: BuildIdCache,
    /// The last report of each edge the kernel deduplicates, to name the repeats of edges
    /// that went quiet.
    reports: HashMap<DedupKey, EdgeEvent>,
    dedup: DedupAccount,
}

/// Edges remembered for naming held repeats (the kernel map holds 16 Ki per CPU).
const REPORTS_CAPACITY: usize = 32 * 1024;

impl Tracker {
    pub fn new(table: ProcessTable) -> Self {
        Tracker {
            table,
            next_seq: 1,
            stats: TrackStats::default(),
            build_ids: BuildIdCache::default(),
            reports: HashMap::new(),
            dedup: DedupAccount::default(),
        }
    }

    pub fn stats(&self) -> TrackStats {
        self.stats
    }

    pub fn table(&self) -> &ProcessTable {
        &self.table
    }

    pub fn table_mut(&mut self) -> &mut ProcessTable {
        &mut self.table
    }

    /// Counts a record that does not go through [`Tracker::handle`] (cgroup records).
    pub fn count(&mut self, kind: EventKind) {
        self.stats.received[kind as usize] += 1;
    }

    /// Handles one kernel event; returns the edge it describes, if any.
    pub fn handle(&mut self, event: &KernelEvent<'_>) -> Option<EdgeEvent> {
        self.stats.received[event.kind() as usize] += 1;
        match event {
            KernelEvent::Fork(fork) => {
                self.table
                    .on_fork(fork.header.tgid, fork.child_tgid, fork.clone_flags);
                None
            }
            KernelEvent::Exit(exit) => {
                self.table.on_exit(exit.header.tgid);
                None
            }
            KernelEvent::Exec(exec) => Some(self.exec(exec)),
            KernelEvent::Open(open) => Some(self.open(open)),
            KernelEvent::Connect(connect) => Some(self.connect(connect)),
            KernelEvent::Cgroup(_) => None,
        }
    }

    fn edge(&mut self, h: &EventHeader, detail: EdgeDetail) -> EdgeEvent {
        let process = self.table.get(h.tgid);
        let seq = self.next_seq;
        self.next_seq += 1;
        EdgeEvent {
            seq,
            boot_ns: h.boot_ns,
            cgroup_id: h.cgroup_id,
            process: ProcessSnapshot {
                pid: h.tgid,
                tid: h.tid,
                ppid: process.ppid,
                uid: h.uid,
                gid: h.gid,
                comm: h.comm,
                image: Arc::clone(&process.image),
            },
            detail,
            code_id: None,
            repeats: HeldRepeats::default(),
            repeats_only: false,
            dedup_key: None,
        }
    }

    /// Repeats reported so far (from reports and sweeps).
    pub fn repeats_reported(&self) -> u64 {
        self.dedup.total()
    }

    /// A report of a deduplicated edge: takes the repeats it newly stands for, and
    /// remembers it to name later repeats of the edge.
    fn deduplicated(&mut self, edge: &mut EdgeEvent, repeats: Repeats) {
        if repeats.hash == 0 {
            return;
        }
        let key = DedupKey {
            cgroup_id: edge.cgroup_id,
            hash: repeats.hash,
        };
        let count = self.dedup.on_report(key, repeats.cpu, repeats.cumulative);
        if count > 0 {
            let first = if repeats.first_ns == 0 {
                edge.boot_ns
            } else {
                repeats.first_ns
            };
            edge.repeats = HeldRepeats {
                count,
                first_ns: first,
                last_ns: repeats.last_ns.max(first),
            };
        }
        edge.dedup_key = Some(key);
        if self.reports.len() >= REPORTS_CAPACITY {
            self.reports.clear();
        }
        let mut remembered = edge.clone();
        remembered.repeats = HeldRepeats::default();
        self.reports.insert(key, remembered);
    }

    /// Repeats of edges that went quiet (`quiet_ns` since their last repeat; 0: all), read
    /// from the kernel map: events standing for them, and how many could not be named
    /// because their edge's report is no longer remembered.
    pub fn sweep_repeats(
        &mut self,
        entries: &[(DedupKey, u32, DedupState)],
        now_ns: u64,
        quiet_ns: u64,
    ) -> (Vec<EdgeEvent>, u64) {
        let mut events = Vec::new();
        let mut unnamed = 0;
        for (key, held) in self.dedup.sweep(entries, now_ns, quiet_ns) {
            match self.reports.get(&key) {
                Some(report) => {
                    let mut event = report.clone();
                    event.seq = self.next_seq;
                    self.next_seq += 1;
                    event.boot_ns = held.last_ns;
                    event.repeats = held;
                    event.repeats_only = true;
                    events.push(event);
                }
                None => unnamed += held.count,
            }
        }
        (events, unnamed)
    }

    fn exec(&mut self, exec: &ExecEvent<'_>) -> EdgeEvent {
        let h = &exec.header;
        let raw = String::from_utf8_lossy(exec.filename);
        let (path, path_resolved) = exec_path(self.table.proc_root(), h, &raw);
        let mut args: Vec<String> = exec
            .args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let mut args_truncated = h.flags & flags::ARGS_TRUNCATED != 0;
        if h.flags & flags::ARGS_MISSING != 0 {
            // argv was not captured in the kernel (e.g. the exec began before the probes
            // attached): the new image's cmdline is the next best source.
            let cmdline = self
                .table
                .proc_root()
                .join(h.tgid.to_string())
                .join("cmdline");
            if let Ok(raw) = std::fs::read(cmdline) {
                (args, args_truncated) = split_cmdline(&raw);
            }
        }
        if !path_resolved {
            self.stats.unresolved_paths += 1;
        }
        self.table.on_exec(
            h.tgid,
            Image {
                exe: Some(path.clone()),
                args,
                args_truncated,
            },
        );
        let syscall = if h.flags & flags::EXECVEAT != 0 {
            "execveat"
        } else {
            "execve"
        };
        // The running image, wherever it lives (also inside a container's filesystem).
        // A process that already exited is looked up through its parent's root, which
        // is the mount namespace its path was resolved in.
        let proc_root = self.table.proc_root().to_path_buf();
        let exe = proc_root.join(h.tgid.to_string()).join("exe");
        let code_id = self.build_ids.get(&exe).or_else(|| {
            let ppid = self.table.get(h.tgid).ppid?;
            let relative = path.strip_prefix('/').filter(|_| path_resolved)?;
            self.build_ids
                .get(&proc_root.join(ppid.to_string()).join("root").join(relative))
        });
        if code_id.is_none() {
            self.stats.execs_without_code_id += 1;
        }
        let mut edge = self.edge(
            h,
            EdgeDetail::Exec {
                syscall,
                path,
                path_resolved,
            },
        );
        edge.code_id = code_id;
        edge
    }

    fn open(&mut self, open: &OpenEvent<'_>) -> EdgeEvent {
        let h = &open.header;
        let raw = String::from_utf8_lossy(open.path);
        let resolved = paths::resolve(self.table.proc_root(), h.tgid, h.tid, open.dfd, &raw);
        if !resolved.resolved {
            self.stats.unresolved_paths += 1;
        }
        let detail = EdgeDetail::Open {
            syscall: if h.flags & flags::OPENAT2 != 0 {
                "openat2"
            } else {
                "openat"
            },
            path: resolved.path.into_owned(),
            path_resolved: resolved.resolved,
            path_truncated: h.flags & flags::PATH_TRUNCATED != 0,
            flags: open.flags,
            result: open.result,
        };
        let mut edge = self.edge(h, detail);
        self.deduplicated(&mut edge, open.repeats);
        edge
    }

    fn connect(&mut self, connect: &ConnectEvent<'_>) -> EdgeEvent {
        let address = match connect.address {
            SocketAddress::Inet { address, port } => SocketTarget::Inet {
                address: address.into(),
                port,
            },
            SocketAddress::Inet6 { address, port, .. } => SocketTarget::Inet {
                address: address.into(),
                port,
            },
            SocketAddress::UnixPath(p) => SocketTarget::Unix {
                path: Some(String::from_utf8_lossy(p).into_owned()),
            },
            SocketAddress::UnixAbstract(name) => SocketTarget::Unix {
                path: Some(format!("@{}", String::from_utf8_lossy(name))),
            },
            SocketAddress::UnixUnnamed => SocketTarget::Unix { path: None },
            SocketAddress::Unspecified => SocketTarget::Unspecified,
            SocketAddress::Other { family } => SocketTarget::Other { family },
            SocketAddress::Unreadable => SocketTarget::Unreadable,
        };
        let mut edge = self.edge(
            &connect.header,
            EdgeDetail::Connect {
                address,
                result: connect.result,
            },
        );
        self.deduplicated(&mut edge, connect.repeats);
        edge
    }
}

/// The absolute path of an exec'd file. `execveat` with a directory fd shows up as
/// `/dev/fd/N/...`, and the fd is usually closed by the exec itself; the new image's
/// `/proc/<pid>/exe` is then the truth.
fn exec_path(proc_root: &std::path::Path, h: &EventHeader, raw: &str) -> (String, bool) {
    if raw.starts_with('/') && !raw.starts_with("/dev/fd/") {
        return (paths::normalize(raw).into_owned(), true);
    }
    if let Ok(exe) = std::fs::read_link(proc_root.join(h.tgid.to_string()).join("exe")) {
        return (exe.to_string_lossy().into_owned(), true);
    }
    // The descriptor an fexecve'd process was started from is closed by now: the name
    // says nothing about the file.
    if raw.starts_with("/dev/fd/") {
        return (raw.to_owned(), false);
    }
    let r = paths::resolve(proc_root, h.tgid, h.tid, paths::AT_FDCWD, raw);
    (r.path.into_owned(), r.resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kernel::decode::{decode, tests as records},
        record::{Attribution, HostIdentity, Item, Record, RecordWriter, Timestamp},
    };
    use serde_json::{json, Value};

    fn tracker() -> Tracker {
        // A /proc with nothing in it: every process is unknown unless fork/exec said so.
        let empty = std::env::temp_dir().join(format!("zastava-empty-proc-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        Tracker::new(ProcessTable::new(empty))
    }

    /// The JSON a record becomes as a host event.
    fn json_of(tracker: &mut Tracker, record: &[u8]) -> Option<Value> {
        let event = tracker.handle(&decode(record).unwrap())?;
        let host = HostIdentity::for_tests();
        let at = Timestamp::from_unix_ns(1_700_000_001_000_000_123).unix_ns();
        let item = Item::new(
            at,
            &host,
            Record::Edge {
                event,
                attribution: Attribution::host(),
            },
        );
        let mut json = Vec::new();
        RecordWriter::new(&host, "r1")
            .write(&mut json, &item)
            .unwrap();
        Some(serde_json::from_slice(&json).unwrap())
    }

    #[test]
    fn exec_then_open_carry_the_new_image() {
        let mut t = tracker();
        let exec = records::exec_record(b"/opt/app/bin/server", &[b"server", b"--port=8080"], 1024);
        let v = json_of(&mut t, &exec).unwrap();
        assert_eq!(
            v,
            json!({
                "schemaVersion": 1,
                "eventType": "edge",
                "eventId": "r1-1",
                "edgeType": "syscall",
                "timestamp": "2023-11-14T22:13:21.000000123Z",
                "node": "node-a",
                "hostId": "abc",
                "osRelease": "Test OS",
                "workloadId": "host:abc",
                "enrichment": "host",
                "cgroupId": 77,
                "process": {
                    "pid": 4242, "tid": 4243, "ppid": null, "uid": 1000, "gid": 1001,
                    "comm": "test", "exe": "/opt/app/bin/server", "args": ["server", "--port=8080"]
                },
                "syscall": "execve",
                "path": "/opt/app/bin/server",
                "args": ["server", "--port=8080"]
            })
        );
        let open = records::open_record(
            b"/etc/./app.conf",
            3,
            (libc::O_RDONLY | libc::O_CLOEXEC) as u32,
        );
        let v = json_of(&mut t, &open).unwrap();
        assert_eq!(v["eventId"], "r1-2");
        assert_eq!(v["edgeType"], "fs");
        assert_eq!(v["path"], "/etc/app.conf");
        assert_eq!(v["flags"], (libc::O_RDONLY | libc::O_CLOEXEC) as u32);
        assert_eq!(v["flagNames"], json!(["O_RDONLY", "O_CLOEXEC"]));
        assert_eq!(v["result"], 3);
        assert_eq!(v["process"]["exe"], "/opt/app/bin/server");
        assert_eq!(v["process"]["args"], json!(["server", "--port=8080"]));
        assert!(v.get("pathResolved").is_none());
        assert_eq!(t.stats().received(EventKind::Exec), 1);
        assert_eq!(t.stats().received(EventKind::Open), 1);
    }

    #[test]
    fn relative_path_of_a_vanished_process_is_marked_unresolved() {
        let mut t = tracker();
        let v = json_of(&mut t, &records::open_record(b"data/x.db", -2, 0)).unwrap();
        assert_eq!(v["path"], "data/x.db");
        assert_eq!(v["pathResolved"], false);
        assert_eq!(v["result"], -2);
        assert_eq!(t.stats().unresolved_paths, 1);
    }

    #[test]
    fn fexecve_of_a_process_already_gone_is_not_reported_as_resolved() {
        let mut t = tracker();
        let exec = records::exec_record(b"/dev/fd/3", &[b"app"], 1024);
        let v = json_of(&mut t, &exec).unwrap();
        assert_eq!(v["path"], "/dev/fd/3");
        assert_eq!(v["pathResolved"], false);
        assert!(
            v.get("code_id").is_none(),
            "no build-id from another process's fd 3: {v}"
        );
    }

    #[test]
    fn connect_edges_for_each_family() {
        let mut t = tracker();
        let v = json_of(
            &mut t,
            &records::connect_record(&records::sockaddr_in([127, 0, 0, 1], 5432), -111),
        )
        .unwrap();
        assert_eq!(v["edgeType"], "net");
        assert_eq!(v["family"], "inet");
        assert_eq!(v["address"], "127.0.0.1");
        assert_eq!(v["port"], 5432);
        assert_eq!(v["result"], -111);
        assert!(v.get("path").is_none());

        let mut un = crate::kernel::decode::AF_UNIX.to_ne_bytes().to_vec();
        un.extend_from_slice(b"\0abstract-name");
        let v = json_of(&mut t, &records::connect_record(&un, 0)).unwrap();
        assert_eq!(v["family"], "unix");
        assert_eq!(v["path"], "@abstract-name");
        assert!(v.get("port").is_none());
    }
}
