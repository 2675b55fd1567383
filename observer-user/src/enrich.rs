//! Enrichment: a decoded kernel event plus the process table, the host identity and the
//! clock become a [`RuntimeEvent`]. Fork, exec and exit records also keep the table current.

use std::borrow::Cow;

use observer_common::{flags, EventHeader, EventKind};

use crate::{
    clock::BootClock,
    decode::{self, ConnectEvent, ExecEvent, KernelEvent, OpenEvent, SocketAddress},
    event::{
        ConnectEdge, Edge, EdgeType, ExecEdge, OpenEdge, OpenFlags, ProcessView, RuntimeEvent,
    },
    host::HostIdentity,
    paths,
    proctable::{Image, Process, ProcessTable},
};

/// What enrichment did, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnrichStats {
    /// Records handled, by kind (index = `EventKind as usize`).
    pub received: [u64; 6],
    /// Events produced, by edge type (index = position in `EdgeType::ALL`).
    pub emitted: [u64; 3],
    /// Relative paths that could not be made absolute (the process was gone).
    pub unresolved_paths: u64,
}

impl EnrichStats {
    pub fn received(&self, kind: EventKind) -> u64 {
        self.received[kind as usize]
    }

    pub fn emitted(&self, edge: EdgeType) -> u64 {
        self.emitted[edge_index(edge)]
    }
}

fn edge_index(edge: EdgeType) -> usize {
    match edge {
        EdgeType::Syscall => 0,
        EdgeType::Fs => 1,
        EdgeType::Net => 2,
    }
}

pub struct Enricher {
    table: ProcessTable,
    host: HostIdentity,
    clock: BootClock,
    stats: EnrichStats,
}

impl Enricher {
    pub fn new(table: ProcessTable, host: HostIdentity, clock: BootClock) -> Self {
        Enricher {
            table,
            host,
            clock,
            stats: EnrichStats::default(),
        }
    }

    pub fn stats(&self) -> EnrichStats {
        self.stats
    }

    pub fn table(&self) -> &ProcessTable {
        &self.table
    }

    pub fn table_mut(&mut self) -> &mut ProcessTable {
        &mut self.table
    }

    pub fn clock_mut(&mut self) -> &mut BootClock {
        &mut self.clock
    }

    /// Handles one kernel event; calls `emit` for the edge event it produces, if any.
    pub fn handle<E>(&mut self, event: &KernelEvent<'_>, emit: E) -> Result<(), std::io::Error>
    where
        E: FnOnce(&RuntimeEvent<'_>) -> Result<(), std::io::Error>,
    {
        self.stats.received[event.kind() as usize] += 1;
        match event {
            KernelEvent::Fork(fork) => {
                self.table
                    .on_fork(fork.header.tgid, fork.child_tgid, fork.clone_flags);
                Ok(())
            }
            KernelEvent::Exit(exit) => {
                self.table.on_exit(exit.header.tgid);
                Ok(())
            }
            KernelEvent::Exec(exec) => self.exec(exec, emit),
            KernelEvent::Open(open) => self.open(open, emit),
            KernelEvent::Connect(connect) => self.connect(connect, emit),
        }
    }

    fn exec<E>(&mut self, exec: &ExecEvent<'_>, emit: E) -> Result<(), std::io::Error>
    where
        E: FnOnce(&RuntimeEvent<'_>) -> Result<(), std::io::Error>,
    {
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
            if let Ok(raw) = std::fs::read(
                self.table
                    .proc_root()
                    .join(h.tgid.to_string())
                    .join("cmdline"),
            ) {
                (args, args_truncated) = crate::proctable::split_cmdline(&raw);
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
        let process = self.table.get(h.tgid);
        let edge = Edge::Syscall(ExecEdge {
            syscall,
            path: Cow::Borrowed(process.image.exe.as_deref().unwrap_or_default()),
            path_resolved,
            args: &process.image.args,
            args_truncated: process.image.args_truncated,
        });
        self.stats.emitted[edge_index(EdgeType::Syscall)] += 1;
        emit(&build(
            &self.host,
            &self.clock,
            h,
            process,
            EdgeType::Syscall,
            edge,
        ))
    }

    fn open<E>(&mut self, open: &OpenEvent<'_>, emit: E) -> Result<(), std::io::Error>
    where
        E: FnOnce(&RuntimeEvent<'_>) -> Result<(), std::io::Error>,
    {
        let h = &open.header;
        let raw = String::from_utf8_lossy(open.path);
        let resolved = paths::resolve(self.table.proc_root(), h.tgid, h.tid, open.dfd, &raw);
        if !resolved.resolved {
            self.stats.unresolved_paths += 1;
        }
        let edge = Edge::Fs(OpenEdge {
            syscall: if h.flags & flags::OPENAT2 != 0 {
                "openat2"
            } else {
                "openat"
            },
            path: resolved.path,
            path_resolved: resolved.resolved,
            path_truncated: h.flags & flags::PATH_TRUNCATED != 0,
            flags: open.flags,
            flag_names: OpenFlags(open.flags),
            result: open.result,
        });
        self.stats.emitted[edge_index(EdgeType::Fs)] += 1;
        let process = self.table.get(h.tgid);
        emit(&build(
            &self.host,
            &self.clock,
            h,
            process,
            EdgeType::Fs,
            edge,
        ))
    }

    fn connect<E>(&mut self, connect: &ConnectEvent<'_>, emit: E) -> Result<(), std::io::Error>
    where
        E: FnOnce(&RuntimeEvent<'_>) -> Result<(), std::io::Error>,
    {
        let h = &connect.header;
        let (family, address, port, path): (Cow<'static, str>, _, _, _) = match connect.address {
            SocketAddress::Inet { address, port } => {
                ("inet".into(), Some(address.to_string()), Some(port), None)
            }
            SocketAddress::Inet6 { address, port, .. } => {
                ("inet6".into(), Some(address.to_string()), Some(port), None)
            }
            SocketAddress::UnixPath(p) => {
                ("unix".into(), None, None, Some(String::from_utf8_lossy(p)))
            }
            SocketAddress::UnixAbstract(name) => (
                "unix".into(),
                None,
                None,
                Some(Cow::Owned(format!("@{}", String::from_utf8_lossy(name)))),
            ),
            SocketAddress::UnixUnnamed => ("unix".into(), None, None, None),
            SocketAddress::Unspecified => ("unspec".into(), None, None, None),
            SocketAddress::Other { family } => (format!("af_{family}").into(), None, None, None),
            SocketAddress::Unreadable => ("unknown".into(), None, None, None),
        };
        let edge = Edge::Net(ConnectEdge {
            syscall: "connect",
            family,
            address,
            port,
            path,
            result: connect.result,
        });
        self.stats.emitted[edge_index(EdgeType::Net)] += 1;
        let process = self.table.get(h.tgid);
        emit(&build(
            &self.host,
            &self.clock,
            h,
            process,
            EdgeType::Net,
            edge,
        ))
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
    let r = paths::resolve(proc_root, h.tgid, h.tid, paths::AT_FDCWD, raw);
    (r.path.into_owned(), r.resolved)
}

fn build<'a>(
    host: &'a HostIdentity,
    clock: &BootClock,
    h: &'a EventHeader,
    process: &'a Process,
    edge_type: EdgeType,
    edge: Edge<'a>,
) -> RuntimeEvent<'a> {
    RuntimeEvent {
        edge_type,
        timestamp: clock.to_utc(h.boot_ns),
        node: &host.node,
        workload_id: &host.workload_id,
        host_id: &host.host_id,
        os_release: &host.os_release,
        cgroup_id: h.cgroup_id,
        process: ProcessView {
            pid: h.tgid,
            tid: h.tid,
            ppid: process.ppid,
            uid: h.uid,
            gid: h.gid,
            comm: String::from_utf8_lossy(decode::comm(h)),
            exe: process.image.exe.as_deref(),
            args: &process.image.args,
            args_truncated: process.image.args_truncated,
        },
        edge,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode, tests as records};
    use serde_json::{json, Value};

    fn enricher() -> Enricher {
        let host = HostIdentity {
            node: "node-a".into(),
            host_id: "abc".into(),
            os_release: "Test OS".into(),
            workload_id: "host:abc".into(),
            warnings: vec![],
        };
        // A /proc with nothing in it: every process is unknown unless fork/exec said so.
        let empty = std::env::temp_dir().join(format!("zastava-empty-proc-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        Enricher::new(
            ProcessTable::new(empty),
            host,
            BootClock::with_offset(1_700_000_000_000_000_000),
        )
    }

    fn run(enricher: &mut Enricher, record: &[u8]) -> Option<Value> {
        let event = decode(record).unwrap();
        let mut out = None;
        enricher
            .handle(&event, |e| {
                out = Some(serde_json::to_value(e).unwrap());
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn exec_then_open_carry_the_new_image() {
        let mut e = enricher();
        let exec = records::exec_record(b"/opt/app/bin/server", &[b"server", b"--port=8080"], 1024);
        let v = run(&mut e, &exec).unwrap();
        assert_eq!(
            v,
            json!({
                "edgeType": "syscall",
                "timestamp": "2023-11-14T22:13:21.000000123Z",
                "node": "node-a",
                "workloadId": "host:abc",
                "hostId": "abc",
                "osRelease": "Test OS",
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
        let v = run(&mut e, &open).unwrap();
        assert_eq!(v["edgeType"], "fs");
        assert_eq!(v["path"], "/etc/app.conf");
        assert_eq!(v["flags"], (libc::O_RDONLY | libc::O_CLOEXEC) as u32);
        assert_eq!(v["flagNames"], json!(["O_RDONLY", "O_CLOEXEC"]));
        assert_eq!(v["result"], 3);
        assert_eq!(v["process"]["exe"], "/opt/app/bin/server");
        assert_eq!(v["process"]["args"], json!(["server", "--port=8080"]));
        assert!(v.get("pathResolved").is_none());
        assert_eq!(e.stats().emitted(EdgeType::Fs), 1);
        assert_eq!(e.stats().received(EventKind::Exec), 1);
    }

    #[test]
    fn relative_path_of_a_vanished_process_is_marked_unresolved() {
        let mut e = enricher();
        let v = run(&mut e, &records::open_record(b"data/x.db", -2, 0)).unwrap();
        assert_eq!(v["path"], "data/x.db");
        assert_eq!(v["pathResolved"], false);
        assert_eq!(v["result"], -2);
        assert_eq!(e.stats().unresolved_paths, 1);
    }

    #[test]
    fn connect_edges_for_each_family() {
        let mut e = enricher();
        let v = run(
            &mut e,
            &records::connect_record(&records::sockaddr_in([127, 0, 0, 1], 5432), -111),
        )
        .unwrap();
        assert_eq!(v["edgeType"], "net");
        assert_eq!(v["family"], "inet");
        assert_eq!(v["address"], "127.0.0.1");
        assert_eq!(v["port"], 5432);
        assert_eq!(v["result"], -111);
        assert!(v.get("path").is_none());

        let mut un = decode::AF_UNIX.to_ne_bytes().to_vec();
        un.extend_from_slice(b"\0abstract-name");
        let v = run(&mut e, &records::connect_record(&un, 0)).unwrap();
        assert_eq!(v["family"], "unix");
        assert_eq!(v["path"], "@abstract-name");
        assert!(v.get("port").is_none());
    }
}
