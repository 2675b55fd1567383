//! Test harness: runs the real `zastava-observer` binary with the real probes, collects the
//! NDJSON it writes, and lets a test wait for the events its own actions caused.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

pub mod authority;
pub mod backend;
pub mod containerd;
pub mod dockerd;
pub mod evidence;
pub mod kubelet;
pub mod release;
pub mod webhook;

use serde_json::Value;

/// The `zastava-observer` binary under test.
pub fn observer_bin() -> &'static str {
    binary(
        option_env!("CARGO_BIN_EXE_zastava-observer"),
        "zastava-observer",
    )
}

/// The `zastava-webhook` binary under test.
pub fn webhook_bin() -> &'static str {
    binary(
        option_env!("CARGO_BIN_EXE_zastava-webhook"),
        "zastava-webhook",
    )
}

/// A binary of the workspace: the path cargo gave this test (a binary of its own package),
/// else the one beside the test executable's directory (`target/<profile>/`), which
/// `cargo test --workspace` builds too.
fn binary(given: Option<&'static str>, name: &str) -> &'static str {
    use std::{collections::HashMap, sync::OnceLock};
    static FOUND: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    if let Some(path) = given {
        return path;
    }
    let mut found = FOUND.get_or_init(Mutex::default).lock().unwrap();
    found.entry(name.to_owned()).or_insert_with(|| {
        let exe = std::env::current_exe().expect("the test's own path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("tests run from target/<profile>/deps");
        let path = dir.join(name);
        assert!(
            path.is_file(),
            "{} is not built: run `cargo build -p {} --bins` or `cargo xtask test`",
            path.display(),
            if name == "zastava-webhook" {
                "zastava-webhook"
            } else {
                "observer-user"
            }
        );
        Box::leak(path.display().to_string().into_boxed_str())
    })
}
/// Long enough for a loaded CI machine; tests wait for their own events, never for time.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Privileged tests load eBPF programs: they need root, and never skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads eBPF programs and must run as root (e.g. `sudo -E cargo xtask test`)"
    );
}

/// The GNU build-id of the ELF file at `path`, as `readelf -n` (binutils) reads it: an
/// oracle independent of the observer's own reader.
pub fn build_id_of(path: &str) -> String {
    let out = Command::new("readelf")
        .args(["-n", path])
        .output()
        .expect("readelf (binutils) runs");
    assert!(out.status.success(), "readelf -n {path} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("{path} has no build-id:\n{text}"))
        .trim()
        .to_owned()
}

/// `path` with every symlink resolved: where the kernel finds the file.
pub fn canonical(path: &str) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|e| panic!("canonicalize {path}: {e}"))
        .to_str()
        .expect("UTF-8 test paths")
        .to_owned()
}

/// A name no other test or run will produce.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The record schema every line the observer writes must satisfy.
pub fn schema() -> &'static jsonschema::Validator {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let text = include_str!("../../schemas/runtime-events.v1.schema.json");
        let schema: Value = serde_json::from_str(text).expect("the schema is JSON");
        jsonschema::draft202012::new(&schema).expect("the schema compiles")
    })
}

/// The schema's `$defs/batch`: the envelope the backend receives.
pub fn batch_schema() -> &'static jsonschema::Validator {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let text = include_str!("../../schemas/runtime-events.v1.schema.json");
        let mut schema: Value = serde_json::from_str(text).expect("the schema is JSON");
        schema["$ref"] = Value::from("#/$defs/batch");
        jsonschema::draft202012::new(&schema).expect("the schema compiles")
    })
}

/// Why `record` does not satisfy the schema, if it does not.
pub fn schema_violations(record: &Value) -> Option<String> {
    violations(schema(), record)
}

/// Why `batch` (a whole envelope) does not satisfy `$defs/batch`, if it does not.
pub fn batch_schema_violations(batch: &Value) -> Option<String> {
    violations(batch_schema(), batch)
}

fn violations(schema: &jsonschema::Validator, value: &Value) -> Option<String> {
    let errors: Vec<String> = schema
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    (!errors.is_empty()).then(|| format!("{value}\n  {}", errors.join("\n  ")))
}

#[derive(Default)]
struct Shared {
    events: Vec<Value>,
    /// Text after the last newline when stdout closed: a line cut short. Only a SIGKILL
    /// may leave one; a clean stop must end every line.
    torn_tail: Option<String>,
    stderr: String,
    ready: bool,
    exited: bool,
}

/// A running observer.
pub struct Observer {
    child: Child,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    stats: TempDir,
    readers: Vec<thread::JoinHandle<()>>,
}

/// What the observer reported when it stopped.
pub struct Stopped {
    pub events: Vec<Value>,
    pub summary: Value,
    pub stderr: String,
}

impl Observer {
    /// Starts `zastava-observer run --ndjson -` with extra arguments and waits until its
    /// probes are attached.
    pub fn start(extra: &[&str]) -> Observer {
        Observer::start_wrapped(&[], extra)
    }

    /// As `start`, with the observer run by `wrapper` (a command and its arguments, the
    /// observer's path and arguments following), e.g. to drop capabilities first.
    pub fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> Observer {
        require_root();
        let stats = TempDir::new("zastava-stats");
        let mut command = match wrapper {
            [] => Command::new(observer_bin()),
            [program, args @ ..] => {
                let mut command = Command::new(program);
                command.args(args).arg(observer_bin());
                command
            }
        };
        let mut child = command
            .arg("run")
            .args(["--ndjson", "-", "--stats-json"])
            .arg(stats.path().join("summary.json"))
            // Shorter windows than the defaults, so tests see their events sooner.
            .args([
                "--set",
                "batch.reorder_window=\"400ms\"",
                "--set",
                "batch.max_age=\"100ms\"",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start zastava-observer");
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));

        let stdout = child.stdout.take().expect("piped stdout");
        let out_shared = Arc::clone(&shared);
        let out_reader = thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match stdout.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let (lock, cond) = &*out_shared;
                let Some(record) = line.strip_suffix('\n') else {
                    lock.lock().unwrap().torn_tail = Some(line.clone());
                    break;
                };
                let event: Value = serde_json::from_str(record).unwrap_or_else(|e| {
                    panic!("observer wrote a line that is not JSON ({e}): {record}")
                });
                lock.lock().unwrap().events.push(event);
                cond.notify_all();
            }
        });
        let stderr = child.stderr.take().expect("piped stderr");
        let err_shared = Arc::clone(&shared);
        let err_reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (lock, cond) = &*err_shared;
                let mut s = lock.lock().unwrap();
                s.ready |= line.contains("observer ready");
                s.stderr.push_str(&line);
                s.stderr.push('\n');
                cond.notify_all();
            }
            let (lock, cond) = &*err_shared;
            lock.lock().unwrap().exited = true;
            cond.notify_all();
        });

        let observer = Observer {
            child,
            shared,
            stats,
            readers: vec![out_reader, err_reader],
        };
        let (lock, cond) = &*observer.shared;
        let (state, timeout) = cond
            .wait_timeout_while(lock.lock().unwrap(), TIMEOUT, |s| !s.ready && !s.exited)
            .unwrap();
        assert!(
            state.ready && !timeout.timed_out(),
            "observer did not become ready:\n{}",
            state.stderr
        );
        drop(state);
        observer
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the first event matching `pred`.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let (lock, cond) = &*self.shared;
        let deadline = Instant::now() + TIMEOUT;
        let mut state = lock.lock().unwrap();
        // Only events that arrived since the last look are checked, so a busy machine's
        // thousands of events cost one pass, not one pass per wake-up.
        let mut checked = 0;
        loop {
            if let Some(found) = state.events[checked..].iter().find(|e| pred(e)) {
                return found.clone();
            }
            checked = state.events.len();
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero() && !state.exited,
                "no event {what} within {TIMEOUT:?} ({} events seen); observer stderr:\n{}",
                state.events.len(),
                state.stderr
            );
            state = cond.wait_timeout(state, left).unwrap().0;
        }
    }

    /// Waits for a line in the observer's log containing `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let (lock, cond) = &*self.shared;
        let (state, timeout) = cond
            .wait_timeout_while(lock.lock().unwrap(), TIMEOUT, |s| {
                !s.stderr.contains(needle) && !s.exited
            })
            .unwrap();
        assert!(
            state.stderr.contains(needle) && !timeout.timed_out(),
            "the observer never logged {needle:?}:\n{}",
            state.stderr
        );
    }

    /// What the observer logged so far.
    pub fn stderr(&self) -> String {
        self.shared.0.lock().unwrap().stderr.clone()
    }

    /// Every event seen so far that matches `pred`.
    pub fn events_matching(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let (lock, _) = &*self.shared;
        lock.lock()
            .unwrap()
            .events
            .iter()
            .filter(|e| pred(e))
            .cloned()
            .collect()
    }

    /// Kills the observer with SIGKILL, as a node failure or an OOM kill would. The kill
    /// may land in the middle of a write, so a last line cut short is dropped here (and
    /// only here); every whole line is returned.
    pub fn kill(mut self) -> Vec<Value> {
        // SAFETY: kill with a pid this harness started and still owns.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        self.child.wait().expect("wait for observer");
        for reader in self.readers.drain(..) {
            reader.join().expect("reader thread");
        }
        std::mem::take(&mut self.shared.0.lock().unwrap().events)
    }

    /// The text of `/metrics` (the observer must run with `--metrics-addr`).
    pub fn scrape(&self) -> Metrics {
        self.wait_for_log("metrics on http://");
        let stderr = self.shared.0.lock().unwrap().stderr.clone();
        let addr = stderr
            .split("metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .expect("the metrics address is logged")
            .to_owned();
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect to /metrics");
        std::io::Write::write_all(&mut stream, b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        Metrics(body)
    }

    /// Stops the observer with SIGTERM and returns everything it reported.
    pub fn stop(mut self) -> Stopped {
        // SAFETY: kill with a pid this harness started and still owns (not yet reaped).
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "cannot signal the observer");
        let status = self.child.wait().expect("wait for observer");
        for reader in self.readers.drain(..) {
            reader.join().expect("reader thread");
        }
        let state = std::mem::take(&mut *self.shared.0.lock().unwrap());
        assert!(
            status.success(),
            "observer exited with {status}:\n{}",
            state.stderr
        );
        assert_eq!(
            state.torn_tail, None,
            "a clean stop left its last NDJSON line unfinished"
        );
        let summary_path = self.stats.path().join("summary.json");
        let summary = std::fs::read(&summary_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| {
                panic!(
                    "no summary at {}:\n{}",
                    summary_path.display(),
                    state.stderr
                )
            });
        Stopped {
            events: state.events,
            summary,
            stderr: state.stderr,
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        // A test that failed before stop(): do not leave the observer running.
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as in stop().
            unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// A scrape of `/metrics`.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of `name` with exactly these labels (`""` for none).
    pub fn value(&self, name: &str, labels: &str) -> Option<f64> {
        let series = format!("{name}{labels} ");
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The sum of every series of `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The sum of the series of `name` whose labels contain `label` (e.g. `sink="nats"`).
    pub fn sum_with(&self, name: &str, label: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The sinks the account reports on.
    pub fn sinks(&self) -> Vec<String> {
        self.0
            .lines()
            .filter_map(|l| l.strip_prefix("zastava_runtime_sink_events_shipped_total{sink=\""))
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect()
    }

    /// seen = shipped + dropped + in flight, at this scrape: in the totals, and for every
    /// sink.
    pub fn assert_balanced(&self) {
        self.assert_balanced_totals();
        let seen = self
            .value("zastava_runtime_events_seen_total", "")
            .expect("seen");
        for sink in self.sinks() {
            let label = format!("sink=\"{sink}\"");
            let shipped = self.sum_with("zastava_runtime_sink_events_shipped_total", &label);
            let dropped = self.sum_with("zastava_runtime_sink_events_dropped_total", &label);
            let in_flight = self.sum_with("zastava_runtime_sink_events_in_flight", &label);
            assert_eq!(
                seen,
                shipped + dropped + in_flight,
                "{sink}: seen {seen} != shipped {shipped} + dropped {dropped} + in flight {in_flight}:\n{}",
                self.0
            );
        }
    }

    fn assert_balanced_totals(&self) {
        let seen = self
            .value("zastava_runtime_events_seen_total", "")
            .expect("seen");
        let shipped = self
            .value("zastava_runtime_events_shipped_total", "")
            .expect("shipped");
        let dropped = self.sum("stella_runtime_events_dropped_total");
        let in_flight = self.sum("zastava_runtime_events_in_flight");
        assert_eq!(
            seen,
            shipped + dropped + in_flight,
            "seen {seen} != shipped {shipped} + dropped {dropped} + in flight {in_flight}:\n{}",
            self.0
        );
    }
}

/// How many occurrences matching records stand for (repeats are merged into one record
/// with a `count`).
pub fn occurrences<'a>(
    events: impl IntoIterator<Item = &'a Value>,
    pred: impl Fn(&Value) -> bool,
) -> u64 {
    events
        .into_iter()
        .filter(|e| pred(e))
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum()
}

/// Field accessors that read well in assertions.
pub fn str_at<'a>(event: &'a Value, pointer: &str) -> &'a str {
    event
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn pid_of(event: &Value) -> u64 {
    event
        .pointer("/process/pid")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

pub fn my_pid() -> u64 {
    u64::from(std::process::id())
}
