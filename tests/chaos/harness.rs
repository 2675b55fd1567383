//! What the chaos cases share: the scale they run at, the observer as a daemon that can be
//! killed and started again on the same spool, a steady load of new edges, and the
//! figures each case reports.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::{self, backend::Pki, backend::Receiver, Metrics, TempDir};

/// How big the cases are: small by default (the test suite's smoke run), at the scale of
/// docs/RELIABILITY.md with `ZASTAVA_CHAOS=full` (`cargo xtask chaos`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Smoke,
    Full,
}

impl Scale {
    pub fn get() -> Scale {
        match std::env::var("ZASTAVA_CHAOS").as_deref() {
            Ok("full") => Scale::Full,
            Ok("smoke") | Err(_) => Scale::Smoke,
            Ok(other) => panic!("ZASTAVA_CHAOS={other}: expected `smoke` or `full`"),
        }
    }

    /// `smoke` at the smoke scale, else `full`.
    pub fn pick<T>(self, smoke: T, full: T) -> T {
        match self {
            Scale::Smoke => smoke,
            Scale::Full => full,
        }
    }

    pub fn name(self) -> &'static str {
        self.pick("smoke", "full")
    }
}

/// The cases share the machine's two cores and its kernel: one at a time.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A case's figures: printed, and appended as one JSON line to `ZASTAVA_CHAOS_REPORT`
/// when that is set (`cargo xtask chaos` turns the lines into a table).
pub fn report(case: &str, figures: Value) {
    let line =
        serde_json::json!({ "case": case, "scale": Scale::get().name(), "figures": figures });
    println!("chaos {line}");
    if let Ok(path) = std::env::var("ZASTAVA_CHAOS_REPORT") {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
        writeln!(file, "{line}").unwrap();
    }
}

/// The backend, its certificates and a token: what every observer of a case ships to.
pub struct Backend {
    pub pki: Pki,
    pub receiver: Receiver,
    token: TempDir,
}

impl Backend {
    /// A backend that tallies the paths under `prefix` (it keeps no bodies).
    pub fn start(prefix: &str) -> Backend {
        let pki = Pki::generate();
        let receiver = Receiver::start(&pki, false);
        receiver.tally_paths(prefix);
        let token = TempDir::new("zastava-chaos-token");
        fs::write(token.path().join("token"), "chaos\n").unwrap();
        Backend {
            pki,
            receiver,
            token,
        }
    }

    /// The arguments that make an observer on the node alone ship here.
    pub fn args(&self, spool: &Path) -> Vec<String> {
        self.args_with(spool, &["--no-cri"])
    }

    /// As [`Backend::args`], with the container runtime given by `runtime`.
    pub fn args_with(&self, spool: &Path, runtime: &[&str]) -> Vec<String> {
        runtime
            .iter()
            .chain(&[
                "--backend",
                &self.receiver.url,
                "--ca-file",
                self.pki.ca.to_str().unwrap(),
                "--token-file",
                self.token.path().join("token").to_str().unwrap(),
                "--spool-dir",
                spool.to_str().unwrap(),
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .map(|s| (*s).to_owned())
            .collect()
    }

    /// Occurrences delivered of each of `paths` (0 for those that never arrived).
    pub fn delivered(&self, load: &Generated) -> Vec<u64> {
        self.receiver.with_tally(|tally| {
            (0..load.count)
                .map(|i| tally.paths.get(&load.path(i)).copied().unwrap_or(0))
                .collect()
        })
    }
}

/// `zastava-observer run` as a service manager runs it: no NDJSON, its log in a file, its
/// metrics scraped, stopped with SIGTERM or killed with SIGKILL.
pub struct Daemon {
    child: Child,
    log: PathBuf,
    summary: PathBuf,
    metrics: String,
}

impl Daemon {
    /// Starts the observer with `args` (after `run`), its log at `log`, and waits until its
    /// probes are attached and its metrics are served.
    pub fn start(args: &[String], log: &Path) -> Daemon {
        common::require_root();
        let summary = log.with_extension("summary.json");
        let stderr = File::create(log).unwrap();
        let child = Command::new(common::observer_bin())
            .arg("run")
            .args(args)
            .arg("--stats-json")
            .arg(&summary)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start zastava-observer");
        let mut daemon = Daemon {
            child,
            log: log.to_owned(),
            summary,
            metrics: String::new(),
        };
        let deadline = Instant::now() + common::TIMEOUT;
        loop {
            let text = daemon.log_text();
            if text.contains("observer ready") {
                if let Some(addr) = text
                    .split("metrics on http://")
                    .nth(1)
                    .and_then(|rest| rest.split('/').next())
                {
                    daemon.metrics = addr.to_owned();
                    return daemon;
                }
            }
            assert!(
                Instant::now() < deadline && matches!(daemon.child.try_wait(), Ok(None)),
                "the observer did not become ready:\n{text}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn scrape(&self) -> Metrics {
        let mut stream = std::net::TcpStream::connect(&self.metrics).expect("connect to /metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
        Metrics(
            response
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .to_owned(),
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The observer's peak resident set (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.status_bytes("VmHWM:")
    }

    /// The observer's resident set now (VmRSS), in bytes.
    pub fn rss(&self) -> u64 {
        self.status_bytes("VmRSS:")
    }

    fn status_bytes(&self, field: &str) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM in /proc/<pid>/status")
            * 1024
    }

    /// SIGKILL, as the OOM killer or a node failure would.
    pub fn kill(mut self) {
        // SAFETY: kill with a pid this harness started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// SIGTERM; returns the shutdown summary after checking the observer exited cleanly.
    pub fn stop(mut self) -> Value {
        // SAFETY: as in kill().
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for the observer");
        assert!(
            status.success(),
            "observer exited with {status}:\n{}",
            self.log_text()
        );
        let bytes = fs::read(&self.summary)
            .unwrap_or_else(|e| panic!("no summary at {}: {e}", self.summary.display()));
        serde_json::from_slice(&bytes).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as in kill().
            unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// New edges at a steady rate: opens of paths that do not exist, each path once, in a
/// directory of the case's own.
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Generated>>,
}

/// What a load made: `count` opens of `path(0..count)`, with the time of every tick.
pub struct Generated {
    pub dir: PathBuf,
    pub count: u64,
    /// (first op of the tick, when the tick began), in order.
    ticks: Vec<(u64, Instant)>,
}

impl Generated {
    pub fn path(&self, i: u64) -> String {
        format!("{}/e-{i}", self.dir.display())
    }

    /// When op `i` was made (to the tick, 10 ms).
    pub fn time_of(&self, i: u64) -> Instant {
        let at = self.ticks.partition_point(|&(first, _)| first <= i);
        self.ticks[at.saturating_sub(1)].1
    }
}

const TICK: Duration = Duration::from_millis(10);

impl Load {
    /// `per_second` opens under `dir` (which must exist) until stopped; with `per_second`
    /// 0, as fast as one thread can.
    pub fn start(dir: &Path, per_second: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let dir = dir.to_owned();
        let thread = thread::spawn(move || {
            let mut made = Generated {
                dir,
                count: 0,
                ticks: Vec::new(),
            };
            let per_tick = per_second.div_ceil(100);
            let started = Instant::now();
            let mut tick = 0_u32;
            while !stopped.load(Ordering::Relaxed) {
                made.ticks.push((made.count, Instant::now()));
                let until = if per_second == 0 { 1000 } else { per_tick };
                for _ in 0..until {
                    // ENOENT: the open is the edge.
                    let _ = File::open(made.path(made.count));
                    made.count += 1;
                }
                if per_second > 0 {
                    tick += 1;
                    let next = started + TICK * tick;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                }
            }
            made
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> Generated {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("load thread")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Scrapes `daemon` every `every`, checking the account at each scrape, for as long as
/// `go_on` says (it sees each scrape); returns the number of scrapes.
pub fn scraping(daemon: &Daemon, every: Duration, mut go_on: impl FnMut(&Metrics) -> bool) -> u64 {
    let mut scrapes = 0;
    loop {
        let metrics = daemon.scrape();
        metrics.assert_balanced();
        scrapes += 1;
        if !go_on(&metrics) {
            return scrapes;
        }
        thread::sleep(every);
    }
}

/// Waits, checking the account at every scrape, until `done` or `limit` has passed;
/// returns whether `done` held.
pub fn wait_balanced(
    daemon: &Daemon,
    limit: Duration,
    mut done: impl FnMut(&Metrics) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    let mut held = false;
    scraping(daemon, Duration::from_millis(200), |metrics| {
        held = done(metrics);
        !held && Instant::now() < deadline
    });
    held
}

/// How the delivered counts of a load's paths come out.
#[derive(Debug, Default)]
pub struct Outcome {
    pub generated: u64,
    pub delivered: u64,
    /// Paths that never arrived.
    pub missing: Vec<u64>,
    /// Paths that arrived more than once (in batches of different ids).
    pub repeated: u64,
}

impl Outcome {
    pub fn of(backend: &Backend, load: &Generated) -> Outcome {
        let mut outcome = Outcome {
            generated: load.count,
            ..Outcome::default()
        };
        for (i, n) in backend.delivered(load).into_iter().enumerate() {
            match n {
                0 => outcome.missing.push(i as u64),
                1 => outcome.delivered += 1,
                _ => {
                    outcome.delivered += 1;
                    outcome.repeated += 1;
                }
            }
        }
        outcome
    }
}

/// The totals of a shutdown summary's account.
pub struct Totals {
    pub seen: u64,
    pub shipped: u64,
    /// Every stage.
    pub dropped: u64,
    pub in_flight: u64,
}

pub fn totals(summary: &Value) -> Totals {
    let d = &summary["delivery"];
    let number = |v: &Value| v.as_u64().expect("a count in the summary");
    Totals {
        seen: number(&d["seen"]),
        shipped: number(&d["shipped"]),
        dropped: d["dropped"]
            .as_object()
            .map(|m| m.values().map(number).sum())
            .unwrap_or(0),
        in_flight: number(&d["inFlightPipeline"]) + number(&d["inFlightSpool"]),
    }
}

/// seen = shipped + dropped + in flight, in a shutdown summary.
pub fn assert_summary_balanced(summary: &Value) {
    let t = totals(summary);
    assert_eq!(
        t.seen,
        t.shipped + t.dropped + t.in_flight,
        "unbalanced summary: {}",
        summary["delivery"]
    );
}

/// `seen`, `shipped`, dropped by stage and in flight, from a shutdown summary.
pub fn account(summary: &Value) -> Value {
    serde_json::json!({
        "seen": summary["delivery"]["seen"],
        "shipped": summary["delivery"]["shipped"],
        "dropped": summary["delivery"]["dropped"],
        "in_flight": totals(summary).in_flight,
        "lost_before_decoding": summary["lost"],
    })
}

/// Waits, checking the account, until no new path has reached `backend` for 3 s: what
/// got through has arrived.
pub fn wait_until_quiet(daemon: &Daemon, backend: &Backend) {
    let mut last = (0, Instant::now());
    wait_balanced(daemon, crate::common::TIMEOUT, |_| {
        let n = backend.receiver.with_tally(|t| t.paths.len());
        if n != last.0 {
            last = (n, Instant::now());
        }
        last.1.elapsed() > Duration::from_secs(3)
    });
}

/// Seconds, to the millisecond.
pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}
