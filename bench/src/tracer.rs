//! The tracers a storm runs under: how each is started, when it is ready, how it is
//! stopped, and what its output says was seen.

use std::{
    fs,
    io::{BufReader, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{
    condition::Condition,
    peers,
    storm::{Edge, StormReport},
};

/// A running tracer.
pub struct Tracer {
    pub condition: Condition,
    pid: libc::pid_t,
    stdout: PathBuf,
    stderr: PathBuf,
    dir: PathBuf,
    /// CPU time used before the storm (startup), subtracted from the total.
    cpu_at_ready: f64,
    tail: Option<Tail>,
}

/// What a tracer cost and saw.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Events of the storm the tracer's output holds (None: it cannot say).
    pub delivered: Option<u64>,
    /// Events the tracer reports it lost.
    pub dropped: Option<u64>,
    /// CPU seconds from ready to exit.
    pub cpu_seconds: f64,
    /// Peak resident set from start to the end of the storm's settling time, KiB.
    pub max_rss_kib: u64,
    /// Resident set after the storm, before the tracer was stopped, KiB.
    pub rss_after_kib: u64,
    /// Seconds from each record's newest occurrence to the moment it was readable in the
    /// NDJSON file (zastava only; records flushed at shutdown are left out).
    pub lags: Vec<f64>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

impl Tracer {
    pub fn start(condition: Condition, command: &[String], dir: &Path) -> Result<Tracer> {
        fs::create_dir_all(dir)?;
        let stdout = dir.join("stdout");
        let stderr = dir.join("stderr");
        let child = Command::new(&command[0])
            .args(&command[1..])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout)?)
            .stderr(fs::File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("cannot start {}", command[0]))?;
        let pid = child.id() as libc::pid_t;
        // The child is reaped with wait4 (for its resource usage), not through `child`.
        drop(child);
        let mut tracer = Tracer {
            condition,
            pid,
            stdout,
            stderr,
            dir: dir.to_owned(),
            cpu_at_ready: 0.0,
            tail: None,
        };
        if let Err(err) = tracer.wait_ready() {
            let _ = tracer.stop(Duration::ZERO);
            let stderr = fs::read_to_string(&tracer.stderr).unwrap_or_default();
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            let program = command
                .iter()
                .find(|a| *a != "stdbuf" && !a.starts_with('-'))
                .unwrap_or(&command[0]);
            bail!("{program}: {err:#}; it said: {last}");
        }
        tracer.cpu_at_ready = process_cpu_seconds(pid).unwrap_or(0.0);
        if condition.is_zastava() {
            tracer.tail = Some(Tail::start(dir.join("events.ndjson")));
        }
        Ok(tracer)
    }

    fn wait_ready(&self) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.is_ready() {
                return Ok(());
            }
            let mut status = 0;
            // SAFETY: polling our own child without reaping anything else.
            let reaped = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if reaped == self.pid {
                bail!("exited before it was ready");
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!("not ready after {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn is_ready(&self) -> bool {
        let text = |p: &Path| fs::read_to_string(p).unwrap_or_default();
        match self.condition {
            Condition::Zastava | Condition::ZastavaNoKernelDedup | Condition::ZastavaBefore => {
                text(&self.stderr).contains("observer ready")
            }
            // BEGIN runs once every probe is attached.
            Condition::BpftraceCount | Condition::BpftracePrintf => {
                text(&self.stdout).lines().any(|l| l == "ready")
            }
            // The column header is printed once the programs are attached.
            Condition::LibbpfTools => text(&self.stdout).contains("PID"),
            Condition::Baseline => true,
        }
    }

    /// Lets the tracer catch up for `settle`, stops it with SIGINT and reads what it saw.
    pub fn finish(mut self, storm: &StormReport, settle: Duration) -> Result<Seen> {
        std::thread::sleep(settle);
        if let Some(tail) = &self.tail {
            tail.stop_measuring_lag();
        }
        let rss_after_kib = process_status_kib(self.pid, "VmRSS:").unwrap_or(0);
        // The peak of the tracer's own memory since it was exec'd. `wait4`'s ru_maxrss is
        // not: a child's starts from the harness's resident set at fork.
        let peak_kib = process_status_kib(self.pid, "VmHWM:").unwrap_or(0);
        let (cpu, _) = self.stop(STOP_TIMEOUT)?;
        let mut seen = Seen {
            cpu_seconds: (cpu - self.cpu_at_ready).max(0.0),
            max_rss_kib: peak_kib,
            rss_after_kib,
            ..Seen::default()
        };
        match self.tail.take() {
            Some(tail) => {
                let (records, lags) = tail.finish();
                seen.delivered = Some(records.iter().map(|r| storm.matches(r)).sum());
                seen.lags = lags
                    .into_iter()
                    .zip(&records)
                    .filter(|(_, r)| storm.matches(r) > 0)
                    .filter_map(|(lag, _)| lag)
                    .collect();
                let stats: Value = serde_json::from_slice(&fs::read(self.dir.join("stats.json"))?)
                    .context("read the observer's shutdown summary")?;
                // Everything the observer's account says it lost: before decoding, and
                // dropped at any stage after (summed over stages).
                let dropped: u64 = stats["delivery"]["dropped"]
                    .as_object()
                    .map_or(0, |d| d.values().filter_map(Value::as_u64).sum());
                seen.dropped = stats["lost"].as_u64().map(|lost| lost + dropped);
            }
            None => {
                let stdout = fs::read_to_string(&self.stdout)?;
                let stderr = fs::read_to_string(&self.stderr)?;
                seen.delivered = Some(peers::count(self.condition, storm, &stdout));
                seen.dropped = Some(peers::lost_reports(&stdout) + peers::lost_reports(&stderr));
            }
        }
        Ok(seen)
    }

    /// SIGINT, then waits; returns CPU seconds and peak RSS (KiB) of the whole run.
    fn stop(&mut self, timeout: Duration) -> Result<(f64, u64)> {
        // SAFETY: signalling and reaping our own child.
        unsafe { libc::kill(self.pid, libc::SIGINT) };
        let start = Instant::now();
        loop {
            let mut status = 0;
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let reaped = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut usage) };
            if reaped == self.pid {
                let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                return Ok((
                    secs(usage.ru_utime) + secs(usage.ru_stime),
                    usage.ru_maxrss as u64,
                ));
            }
            if reaped < 0 {
                bail!("wait4: {}", std::io::Error::last_os_error());
            }
            if start.elapsed() > timeout {
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                if timeout > Duration::ZERO {
                    bail!("did not stop within {timeout:?} of SIGINT; killed");
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// CPU seconds a live process has used, from /proc/<pid>/stat.
pub fn process_cpu_seconds(pid: libc::pid_t) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line; 11 and 12 after the comm.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / hz.max(1) as f64)
}

/// A KiB figure of a live process's /proc status (`VmRSS:`, `VmHWM:`).
fn process_status_kib(pid: libc::pid_t, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Follows the NDJSON file as the observer writes it, noting when each record became
/// readable.
struct Tail {
    measuring: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    thread: JoinHandle<(Vec<Edge>, Vec<Option<f64>>)>,
}

impl Tail {
    fn start(path: PathBuf) -> Tail {
        let measuring = Arc::new(AtomicBool::new(true));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (measuring, done) = (Arc::clone(&measuring), Arc::clone(&done));
            std::thread::spawn(move || follow(&path, &measuring, &done))
        };
        Tail {
            measuring,
            done,
            thread,
        }
    }

    fn stop_measuring_lag(&self) {
        self.measuring.store(false, Ordering::SeqCst);
    }

    /// The records, each with its lag when it was read before lag measuring stopped.
    fn finish(self) -> (Vec<Edge>, Vec<Option<f64>>) {
        self.done.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

fn follow(path: &Path, measuring: &AtomicBool, done: &AtomicBool) -> (Vec<Edge>, Vec<Option<f64>>) {
    let mut records = Vec::new();
    let mut lags = Vec::new();
    let mut pending = Vec::new();
    let mut offset = 0u64;
    loop {
        // Read `done` before reading the file: the last pass sees everything written.
        let last = done.load(Ordering::SeqCst);
        if let Ok(mut file) = fs::File::open(path) {
            if file.seek(SeekFrom::Start(offset)).is_ok() {
                let mut chunk = Vec::new();
                if let Ok(n) = BufReader::new(&mut file).read_to_end(&mut chunk) {
                    offset += n as u64;
                    pending.extend_from_slice(&chunk);
                }
            }
        }
        let now = unix_now();
        let measuring = measuring.load(Ordering::SeqCst);
        if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
            for line in pending[..end].split(|&b| b == b'\n') {
                let Ok(record) = serde_json::from_slice::<Value>(line) else {
                    continue;
                };
                // Only what a storm can have made is kept.
                let Some(edge) = Edge::of(&record) else {
                    continue;
                };
                let newest = record
                    .get("lastSeen")
                    .or_else(|| record.get("timestamp"))
                    .and_then(Value::as_str)
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
                lags.push(match newest {
                    Some(at) if measuring => Some((now - at.as_secs_f64()).max(0.0)),
                    _ => None,
                });
                records.push(edge);
            }
            pending.drain(..=end);
        }
        if last {
            return (records, lags);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
