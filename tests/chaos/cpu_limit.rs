//! A CPU limit on one process, as a Kubernetes `resources.limits.cpu` puts on the
//! observer's container: a cgroup of the case's own with a CFS quota (`cpu.max` in cgroup
//! v2, `cpu.cfs_quota_us` in the v1 `cpu` hierarchy of hybrid hosts). Moving the process
//! into the v1 `cpu` hierarchy leaves its v2 cgroup, which the probes attribute by, as it
//! was.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

const PERIOD_US: u64 = 100_000;

pub struct CpuLimit {
    dir: PathBuf,
    /// Where the process goes back to before the cgroup is removed.
    parent_procs: PathBuf,
    pid: u32,
}

impl CpuLimit {
    /// Limits `pid` to `millicores` thousandths of one CPU.
    pub fn apply(pid: u32, millicores: u64) -> CpuLimit {
        let quota_us = PERIOD_US * millicores / 1000;
        let name = format!("zastava-chaos-{}-{pid}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let (dir, parent_procs) = if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(&name);
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string());
            write(&dir.join("cpu.cfs_quota_us"), &quota_us.to_string());
            (dir, v1.join("cgroup.procs"))
        } else {
            let root = Path::new("/sys/fs/cgroup");
            let controllers = fs::read_to_string(root.join("cgroup.controllers"))
                .expect("neither a v1 cpu hierarchy nor a cgroup v2 root at /sys/fs/cgroup");
            assert!(
                controllers.split_whitespace().any(|c| c == "cpu"),
                "the cgroup v2 root offers no cpu controller: {controllers:?}"
            );
            write(&root.join("cgroup.subtree_control"), "+cpu");
            let dir = root.join(&name);
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            write(&dir.join("cpu.max"), &format!("{quota_us} {PERIOD_US}"));
            (dir, root.join("cgroup.procs"))
        };
        let limit = CpuLimit {
            dir,
            parent_procs,
            pid,
        };
        // Every thread of the process moves with it (cgroup.procs takes a thread group).
        write(&limit.dir.join("cgroup.procs"), &pid.to_string());
        limit
    }

    /// Nanoseconds the process was held back by the quota (0 where the kernel does not say).
    pub fn throttled_ns(&self) -> u64 {
        let stat = fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
        let field = |name: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        // v1 counts nanoseconds, v2 microseconds.
        field("throttled_time ")
            .or_else(|| field("throttled_usec ").map(|us| us * 1000))
            .unwrap_or(0)
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // The process may have exited; if it has not, it goes back to where it was.
        let _ = fs::write(&self.parent_procs, self.pid.to_string());
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn write(path: &Path, value: &str) {
    fs::write(path, value).unwrap_or_else(|e| panic!("write {value:?} to {}: {e}", path.display()));
}
