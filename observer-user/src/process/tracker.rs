//! Process tracking: fork, exec and exit records keep the process table current, and
//! exec, open and connect records become owned [`EdgeEvent`]s carrying a snapshot of their
//! process. What the reports of deduplicated edges leave for their repeats is in
//! [`reports`].

mod reports;

use std::sync::Arc;

use observer_common::{addr_source, flags, open_base, walk, DedupKey, EventHeader, EventKind};

use self::reports::{Remembered, REPORTS_CAPACITY};
use super::{
    buildid::BuildIdCache, paths, recent::Recent, repeats::DedupAccount, table::ProcessTable,
};
use crate::{
    kernel::decode::{ConnectEvent, ExecEvent, KernelEvent, OpenEvent, SocketAddress},
    record::{EdgeDetail, EdgeEvent, HeldRepeats, Image, ProcessSnapshot, Raw, SocketTarget},
};

/// What tracking did, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackStats {
    /// Records handled, by kind (index = `EventKind as usize`).
    pub received: [u64; 8],
    /// Paths that are not the kernel's: what the caller asked for, where the kernel's walk
    /// did not reach the task's root or there was none.
    pub unresolved_paths: u64,
    /// Open paths that come from the caller's memory (failed opens; no kernel view).
    pub paths_from_caller: u64,
    /// Connect addresses that come from the caller's memory (failed connects; no kernel
    /// view).
    pub addresses_from_caller: u64,
    /// Successful opens by a process whose memory another task shared, reported without
    /// the requested path (see `EdgeEvent::memory_shared`).
    pub requested_paths_withheld: u64,
    /// Kernel walks that did not reach the task's root, by why: the path was too long,
    /// the file is outside the task's root, it has no path (a pipe, a socket), a read failed.
    pub walks_truncated: u64,
    pub walks_outside_root: u64,
    pub walks_detached: u64,
    pub walks_failed: u64,
    /// Execs whose binary's build-id could not be read (the process was gone, or the
    /// binary has none).
    pub execs_without_code_id: u64,
}

impl TrackStats {
    pub fn received(&self, kind: EventKind) -> u64 {
        self.received[kind as usize]
    }

    /// Counts a kernel walk that did not give a path (records with the kernel view).
    fn count_walk(&mut self, bits: u32, record_flags: u32) {
        if record_flags & flags::KERNEL_VIEW == 0 || bits & walk::NONE != 0 {
            return;
        }
        if bits & (walk::TRUNC_BUF | walk::TRUNC_DEPTH) != 0 {
            self.walks_truncated += 1;
        } else if bits & walk::OUTSIDE_ROOT != 0 {
            self.walks_outside_root += 1;
        } else if bits & walk::DETACHED != 0 {
            self.walks_detached += 1;
        } else {
            self.walks_failed += 1;
        }
    }
}

pub struct Tracker {
    table: ProcessTable,
    next_seq: u64,
    stats: TrackStats,
    build_ids: BuildIdCache,
    /// What the last report of each edge the kernel deduplicates shares with its repeats,
    /// to name the repeats of edges that went quiet.
    reports: Recent<DedupKey, Box<Remembered>>,
    dedup: DedupAccount,
}

impl Tracker {
    pub fn new(table: ProcessTable) -> Self {
        Tracker {
            table,
            next_seq: 1,
            stats: TrackStats::default(),
            build_ids: BuildIdCache::default(),
            reports: Recent::new(REPORTS_CAPACITY),
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
                cwd: None,
            },
            detail,
            code_id: None,
            repeats: HeldRepeats::default(),
            repeats_only: false,
            dedup_key: None,
            memory_shared: h.flags & flags::MEMORY_SHARED != 0,
            files_shared: h.flags & flags::FILES_SHARED != 0,
        }
    }

    fn exec(&mut self, exec: &ExecEvent<'_>) -> EdgeEvent {
        let h = &exec.header;
        if exec.result < 0 {
            return self.failed_exec(exec);
        }
        let requested = Raw::new(exec.filename);
        // The executable the kernel mapped (for a script, its interpreter); without the
        // kernel's walk, the name as passed when it is absolute.
        let (path, path_resolved) = match exec.exe.path {
            Some(exe) => (Raw::new(exe), true),
            None => {
                self.stats.count_walk(exec.exe.bits, h.flags);
                self.stats.unresolved_paths += 1;
                match requested.starts_with(b"/") && !requested.starts_with(b"/dev/fd/") {
                    true => (Raw::new(&paths::normalize(exec.filename)), false),
                    false => (requested.clone(), false),
                }
            }
        };
        let args: Vec<Raw> = exec.args.iter().map(Raw::new).collect();
        // argv that could not be read is reported as incomplete, never filled in from
        // another source after the fact.
        let args_truncated = h.flags & (flags::ARGS_TRUNCATED | flags::ARGS_MISSING) != 0;
        self.table.on_exec(
            h.tgid,
            Image {
                exe: path_resolved.then(|| path.clone()),
                args,
                args_truncated,
            },
        );
        let code_id = path_resolved
            .then(|| self.code_id(h.tgid, &path, exec.exe_ino))
            .flatten();
        if code_id.is_none() {
            self.stats.execs_without_code_id += 1;
        }
        let mut edge = self.edge(
            h,
            EdgeDetail::Exec {
                syscall: exec_syscall(h),
                path,
                requested: Some(requested),
                path_resolved,
                from_caller: false,
                result: 0,
            },
        );
        edge.process.cwd = exec.cwd.path.map(Raw::new);
        edge.code_id = code_id;
        edge
    }

    /// An exec that failed: the process still runs its old image; the name is the caller's,
    /// made absolute against the working directory it was looked up from.
    fn failed_exec(&mut self, exec: &ExecEvent<'_>) -> EdgeEvent {
        let h = &exec.header;
        let requested = Raw::new(exec.filename);
        let cwd = exec.cwd.path;
        let (path, resolved) = if exec.filename.starts_with(b"/") {
            (Raw::new(&paths::normalize(exec.filename)), true)
        } else {
            match cwd.filter(|_| h.flags & flags::EXEC_DIRFD == 0) {
                Some(dir) => (Raw::from(paths::join(dir, exec.filename)), true),
                None => (requested.clone(), false),
            }
        };
        if !resolved {
            self.stats.unresolved_paths += 1;
        }
        self.stats.paths_from_caller += 1;
        let mut edge = self.edge(
            h,
            EdgeDetail::Exec {
                syscall: exec_syscall(h),
                path,
                requested: Some(requested),
                path_resolved: resolved,
                from_caller: true,
                result: exec.result,
            },
        );
        edge.process.cwd = cwd.map(Raw::new);
        edge
    }

    /// The build-id of the executable at `path` (as the process's root has it), read
    /// through the process's root, or its parent's once it has exited (the same mount
    /// namespace, for a process that exits at once); only from the file with the inode the
    /// kernel reported.
    fn code_id(&mut self, tgid: u32, path: &Raw, ino: u64) -> Option<String> {
        let relative = path.as_bytes().strip_prefix(b"/")?;
        let relative = Raw::new(relative);
        let ino = (ino != 0).then_some(ino);
        let proc_root = self.table.proc_root().to_path_buf();
        let through = |pid: u32| {
            proc_root
                .join(pid.to_string())
                .join("root")
                .join(relative.as_path())
        };
        self.build_ids.get_if(&through(tgid), ino).or_else(|| {
            let ppid = self.table.get(tgid).ppid?;
            self.build_ids.get_if(&through(ppid), ino)
        })
    }

    fn open(&mut self, open: &OpenEvent<'_>) -> EdgeEvent {
        let h = &open.header;
        let kernel_view = h.flags & flags::KERNEL_VIEW != 0;
        let absolute = open.requested.starts_with(b"/");
        let mut cwd = None;
        let mut from_caller = true;
        let mut truncated = h.flags & flags::PATH_TRUNCATED != 0;
        let (path, resolved) = match (kernel_view, open.base, open.path.path) {
            // What the kernel opened.
            (true, open_base::FILE, Some(file)) => {
                from_caller = false;
                (Raw::new(file), true)
            }
            // No file: the requested path, against the directory the kernel looked it up
            // from when it is relative.
            (_, open_base::NONE | open_base::CWD | open_base::DIRFD, _) if absolute => {
                (Raw::new(&paths::normalize(open.requested)), true)
            }
            (true, base @ (open_base::CWD | open_base::DIRFD), Some(dir)) => {
                if base == open_base::CWD {
                    cwd = Some(Raw::new(dir));
                }
                (Raw::from(paths::join(dir, open.requested)), true)
            }
            // The kernel's walk did not reach the task's root (or there is no kernel view):
            // what the caller asked for, marked.
            (_, base, _) => {
                if kernel_view && base != open_base::NONE {
                    self.stats.count_walk(open.path.bits, h.flags);
                    truncated |= open.path.bits & (walk::TRUNC_BUF | walk::TRUNC_DEPTH) != 0;
                }
                let path = if absolute {
                    Raw::new(&paths::normalize(open.requested))
                } else {
                    Raw::new(open.requested)
                };
                (path, false)
            }
        };
        if !resolved {
            self.stats.unresolved_paths += 1;
        }
        if from_caller {
            self.stats.paths_from_caller += 1;
        }
        // Another thread could have rewritten the requested string after the kernel read it:
        // beside the file the kernel opened, it would be a claim nothing supports.
        let requested = if !from_caller && h.flags & flags::MEMORY_SHARED != 0 {
            self.stats.requested_paths_withheld += 1;
            None
        } else {
            // Written only when it differs from `path`: not kept (nor allocated) otherwise.
            (open.requested != path.as_bytes()).then(|| Raw::new(open.requested))
        };
        let detail = EdgeDetail::Open {
            syscall: if h.flags & flags::OPENAT2 != 0 {
                "openat2"
            } else if h.flags & flags::OPEN != 0 {
                "open"
            } else if h.flags & flags::CREAT != 0 {
                "creat"
            } else {
                "openat"
            },
            path,
            requested,
            path_resolved: resolved,
            path_truncated: truncated,
            path_deleted: open.path.path.is_some() && open.path.bits & walk::DELETED != 0,
            from_caller,
            flags: open.flags,
            result: open.result,
        };
        let mut edge = self.edge(h, detail);
        edge.process.cwd = cwd;
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
                path: Some(Raw::new(p)),
            },
            SocketAddress::UnixAbstract(name) => SocketTarget::Unix {
                path: Some(Raw::from([b"@", name].concat())),
            },
            SocketAddress::UnixUnnamed => SocketTarget::Unix { path: None },
            SocketAddress::Unspecified => SocketTarget::Unspecified,
            SocketAddress::Other { family } => SocketTarget::Other { family },
            SocketAddress::Unreadable => SocketTarget::Unreadable,
        };
        let from_caller = connect.source == addr_source::CALLER;
        if from_caller {
            self.stats.addresses_from_caller += 1;
        }
        let mut edge = self.edge(
            &connect.header,
            EdgeDetail::Connect {
                address,
                from_caller,
                result: connect.result,
            },
        );
        self.deduplicated(&mut edge, connect.repeats);
        edge
    }
}

#[cfg(test)]
mod tests;

/// `execve` or `execveat`.
fn exec_syscall(h: &EventHeader) -> &'static str {
    if h.flags & flags::EXECVEAT != 0 {
        "execveat"
    } else {
        "execve"
    }
}
