//! The process table: what every process is running (exe, argv) and who its parent is.
//!
//! Seeded from /proc at start so processes older than the daemon are known, then kept
//! current by the fork, exec and exit records, which arrive in the order they happened for
//! any one process (the ring buffer orders records by reservation). A process missing from
//! the table (its fork was lost) is loaded from /proc on first sight.

use std::{
    collections::HashMap,
    fs,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use observer_common::{ARGS_CAPACITY, MAX_ARGS};

use crate::record::{Image, Raw};

/// `CLONE_PARENT`: the child's parent is the caller's parent.
const CLONE_PARENT: u64 = 0x0000_8000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// Parent process id at fork time (not updated on reparenting).
    pub ppid: Option<u32>,
    pub image: Arc<Image>,
}

/// Counters describing how the table was kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub seeded: u64,
    /// Processes first seen in an event and loaded from /proc.
    pub loaded_late: u64,
    /// Processes first seen in an event that had already exited (no details).
    pub unknown: u64,
    /// Entries removed by the sweep because their exit was never seen.
    pub swept: u64,
}

pub struct ProcessTable {
    procs: HashMap<u32, Process>,
    proc_root: PathBuf,
    stats: TableStats,
    unknown: Process,
}

impl ProcessTable {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        ProcessTable {
            procs: HashMap::new(),
            proc_root: proc_root.into(),
            stats: TableStats::default(),
            unknown: Process {
                ppid: None,
                image: Arc::new(Image::default()),
            },
        }
    }

    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Loads every process in /proc. Returns how many were added.
    pub fn seed(&mut self) -> usize {
        let Ok(entries) = fs::read_dir(&self.proc_root) else {
            return 0;
        };
        let mut added = 0;
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if self.procs.contains_key(&pid) {
                continue;
            }
            if let Some(process) = read_proc(&self.proc_root, pid) {
                self.procs.insert(pid, process);
                added += 1;
            }
        }
        self.stats.seeded += added as u64;
        added
    }

    /// The process, loading it from /proc if the table does not know it. A process that is
    /// gone yields a placeholder with no details.
    pub fn get(&mut self, tgid: u32) -> &Process {
        if !self.procs.contains_key(&tgid) {
            match read_proc(&self.proc_root, tgid) {
                Some(process) => {
                    self.stats.loaded_late += 1;
                    self.procs.insert(tgid, process);
                }
                None => {
                    self.stats.unknown += 1;
                    return &self.unknown;
                }
            }
        }
        &self.procs[&tgid]
    }

    /// A process forked: it runs its parent's image until it execs.
    pub fn on_fork(&mut self, parent_tgid: u32, child_tgid: u32, clone_flags: u64) {
        let parent = self.get(parent_tgid).clone();
        let ppid = if clone_flags & CLONE_PARENT != 0 {
            parent.ppid
        } else {
            Some(parent_tgid)
        };
        self.procs.insert(
            child_tgid,
            Process {
                ppid,
                image: parent.image,
            },
        );
    }

    /// A process exec'd a new image.
    pub fn on_exec(&mut self, tgid: u32, image: Image) {
        let ppid = self.get(tgid).ppid;
        self.procs.insert(
            tgid,
            Process {
                ppid,
                image: Arc::new(image),
            },
        );
    }

    /// The whole process exited.
    pub fn on_exit(&mut self, tgid: u32) {
        self.procs.remove(&tgid);
    }

    /// Drops entries whose process is gone (their exit record was lost). Returns how many.
    pub fn sweep(&mut self) -> usize {
        let root = self.proc_root.clone();
        let before = self.procs.len();
        self.procs
            .retain(|pid, _| root.join(pid.to_string()).exists());
        let swept = before - self.procs.len();
        self.stats.swept += swept as u64;
        swept
    }
}

/// Reads one process from /proc; `None` if it is gone.
fn read_proc(proc_root: &Path, pid: u32) -> Option<Process> {
    let dir = proc_root.join(pid.to_string());
    let stat = fs::read_to_string(dir.join("stat")).ok()?;
    let ppid = parse_stat_ppid(&stat);
    // Kernel threads have no exe and an empty cmdline; both are fine.
    let exe = fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| Raw::new(strip_deleted(p.as_os_str().as_bytes())));
    let cmdline = fs::read(dir.join("cmdline")).unwrap_or_default();
    let (args, args_truncated) = split_cmdline(&cmdline);
    Some(Process {
        ppid,
        image: Arc::new(Image {
            exe,
            args,
            args_truncated,
        }),
    })
}

/// `/proc/<pid>/exe` of a deleted binary ends in " (deleted)".
fn strip_deleted(path: &[u8]) -> &[u8] {
    path.strip_suffix(b" (deleted)").unwrap_or(path)
}

/// The ppid from `/proc/<pid>/stat`: "pid (comm) state ppid ...". comm may hold spaces and
/// parentheses, so parse from the last ')'.
pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// Splits a NUL-separated argv with the same limits the probes apply to exec.
pub fn split_cmdline(raw: &[u8]) -> (Vec<Raw>, bool) {
    let mut truncated = raw.len() > ARGS_CAPACITY;
    let raw = &raw[..raw.len().min(ARGS_CAPACITY)];
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.is_empty() {
        return (Vec::new(), truncated);
    }
    let mut args: Vec<Raw> = raw.split(|&b| b == 0).map(Raw::new).collect();
    if args.len() > MAX_ARGS {
        args.truncate(MAX_ARGS);
        truncated = true;
    }
    (args, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ppid_survives_hostile_comm() {
        assert_eq!(parse_stat_ppid("42 (bash) S 7 42 42 0"), Some(7));
        assert_eq!(parse_stat_ppid("42 (a) b (c) ) R 1234 1 1"), Some(1234));
        assert_eq!(parse_stat_ppid("42 (x"), None);
        assert_eq!(parse_stat_ppid(""), None);
    }

    #[test]
    fn cmdline_splitting_applies_probe_limits() {
        assert_eq!(
            split_cmdline(b"sh\0-c\0echo hi\0"),
            (vec!["sh".into(), "-c".into(), "echo hi".into()], false)
        );
        assert_eq!(split_cmdline(b""), (vec![], false));
        let many: Vec<u8> = (0..30)
            .flat_map(|i| format!("a{i}\0").into_bytes())
            .collect();
        let (args, truncated) = split_cmdline(&many);
        assert_eq!(args.len(), MAX_ARGS);
        assert_eq!(args[19], "a19");
        assert!(truncated);
    }

    fn fake_proc(pid: u32, ppid: u32, cmdline: &[u8]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("zastava-proc-{}-{pid}", std::process::id()));
        let dir = root.join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("stat"),
            format!("{pid} (fake proc) S {ppid} 1 1 0"),
        )
        .unwrap();
        fs::write(dir.join("cmdline"), cmdline).unwrap();
        std::os::unix::fs::symlink("/usr/bin/fake (deleted)", dir.join("exe")).unwrap();
        root
    }

    #[test]
    fn seeds_forks_execs_and_exits() {
        let root = fake_proc(100, 1, b"fake\0--serve\0");
        let mut table = ProcessTable::new(&root);
        assert_eq!(table.seed(), 1);
        let p = table.get(100).clone();
        assert_eq!(p.ppid, Some(1));
        assert_eq!(p.image.exe, Some(Raw::from("/usr/bin/fake")));
        assert_eq!(p.image.args, vec!["fake", "--serve"]);

        // A child shares its parent's image until it execs.
        table.on_fork(100, 101, 0x11);
        let child = table.get(101).clone();
        assert_eq!(child.ppid, Some(100));
        assert!(Arc::ptr_eq(&child.image, &p.image));

        // CLONE_PARENT makes the caller's parent the child's parent.
        table.on_fork(100, 102, CLONE_PARENT);
        assert_eq!(table.get(102).ppid, Some(1));

        table.on_exec(
            101,
            Image {
                exe: Some("/bin/ls".into()),
                args: vec!["ls".into(), "-l".into()],
                args_truncated: false,
            },
        );
        let child = table.get(101).clone();
        assert_eq!(child.ppid, Some(100));
        assert_eq!(child.image.args, vec!["ls", "-l"]);

        table.on_exit(101);
        // Gone from the table and from /proc: a placeholder, counted as unknown.
        assert_eq!(table.get(101).image.exe, None);
        assert_eq!(table.stats().unknown, 1);

        // The sweep removes entries whose /proc directory vanished (102 never existed there).
        assert_eq!(table.sweep(), 1);
        assert_eq!(table.len(), 1);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn unseen_process_is_loaded_late() {
        let root = fake_proc(200, 5, b"late\0");
        let mut table = ProcessTable::new(&root);
        assert_eq!(table.get(200).image.args, vec!["late"]);
        assert_eq!(table.stats().loaded_late, 1);
        fs::remove_dir_all(&root).unwrap();
    }
}
