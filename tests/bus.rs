//! The event bus sinks end to end: the real observer (real probes) shipping to Debian's
//! nats-server (a 3-node JetStream cluster with routes on loopback, or one node) and
//! redis-server (AOF, synced on every write), started here with their own ports and data
//! directories; servers killed and restarted mid-run, the observer SIGKILLed and
//! restarted, a bus down while the HTTPS backend keeps delivering, and bad credentials,
//! servers and streams. What arrived is read back from the streams as a consumer would and
//! checked batch by batch and event by event.

mod common;

#[path = "bus/faults.rs"]
mod faults;
#[path = "bus/jetstream.rs"]
mod jetstream;
#[path = "common/nats.rs"]
mod nats_harness;
#[path = "common/redis.rs"]
mod redis_harness;
#[path = "bus/redis_streams.rs"]
mod redis_streams;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use common::{unique, Metrics, Observer, TempDir};
use serde_json::Value;

/// Steady activity for the observer to report: files with unique names opened one after
/// another until stopped.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    paths: Arc<Mutex<Vec<String>>>,
    thread: Option<thread::JoinHandle<()>>,
    _dir: TempDir,
}

impl Load {
    pub(crate) fn start(prefix: &str, pause: Duration) -> Load {
        let dir = TempDir::new(&format!("zastava-load-{prefix}"));
        let stop = Arc::new(AtomicBool::new(false));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, paths, root) =
                (Arc::clone(&stop), Arc::clone(&paths), dir.path().to_owned());
            let prefix = prefix.to_owned();
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let path = root.join(format!("{}-{n}", unique(&prefix)));
                    drop(File::create(&path).expect("create a load file"));
                    paths
                        .lock()
                        .unwrap()
                        .push(path.to_str().unwrap().to_owned());
                    n += 1;
                    thread::sleep(pause);
                }
            })
        };
        Load {
            stop,
            paths,
            thread: Some(thread),
            _dir: dir,
        }
    }

    pub(crate) fn opened(&self) -> usize {
        self.paths.lock().unwrap().len()
    }

    /// The paths opened so far, in order.
    pub(crate) fn paths_so_far(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }

    /// Stops, and returns every path it opened.
    pub(crate) fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the load thread");
        }
        self.paths.lock().unwrap().clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `--set` arguments for a NATS sink on `urls` that creates its stream, with short
/// timeouts and backoff for tests.
pub(crate) fn nats_sink(urls: &[String], replicas: usize) -> Vec<String> {
    set(&[
        "sinks.nats.enabled=true".into(),
        format!("sinks.nats.servers={urls:?}"),
        "sinks.nats.stream.create=true".into(),
        format!("sinks.nats.stream.replicas={replicas}"),
        "sinks.nats.stream.duplicate_window=\"2m\"".into(),
        "sinks.nats.timeout=\"2s\"".into(),
        "sinks.nats.connect_timeout=\"2s\"".into(),
        "sinks.nats.max_backoff=\"1s\"".into(),
    ])
}

/// `--set` arguments for a Redis sink on `url`.
pub(crate) fn redis_sink(url: &str) -> Vec<String> {
    set(&[
        "sinks.redis.enabled=true".into(),
        format!("sinks.redis.url={url:?}"),
        "sinks.redis.timeout=\"2s\"".into(),
        "sinks.redis.max_backoff=\"1s\"".into(),
    ])
}

/// `--set` arguments naming the installation (`[runtime]`), which every batch's envelope
/// carries on the bus as over HTTPS (the same body). `runtime.deployment` is left out
/// here: it would also label every metric `cluster`, which these tests' scrapes do not
/// expect; tests/deployment_identity.rs checks `cluster` on the envelope.
pub(crate) fn deployment() -> Vec<String> {
    set(&[
        "runtime.tenant=\"acme\"".into(),
        "runtime.environment=\"prod\"".into(),
    ])
}

/// Checks that a batch's envelope names the installation `deployment()` set, and no
/// cluster.
pub(crate) fn assert_deployment(batch: &Value) {
    assert_eq!(batch["tenant"], "acme", "{}", batch["batchId"]);
    assert_eq!(batch["environment"], "prod", "{}", batch["batchId"]);
    assert!(batch.get("cluster").is_none(), "{}", batch["batchId"]);
}

pub(crate) fn set(assignments: &[String]) -> Vec<String> {
    assignments
        .iter()
        .flat_map(|a| ["--set".to_owned(), a.clone()])
        .collect()
}

/// An observer on the node alone with its spool in `spool` and `/metrics` on, plus
/// `extra` (the sinks).
pub(crate) fn observer(spool: &Path, extra: &[String]) -> Observer {
    let mut args = vec![
        "--no-cri".to_owned(),
        "--no-docker".to_owned(),
        "--spool-dir".to_owned(),
        spool.to_str().unwrap().to_owned(),
        "--metrics-addr".to_owned(),
        "127.0.0.1:0".to_owned(),
    ];
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Observer::start(&args)
}

pub(crate) fn sink_value(metrics: &Metrics, name: &str, sink: &str) -> f64 {
    metrics
        .value(name, &format!("{{sink=\"{sink}\"}}"))
        .unwrap_or(0.0)
}

/// Spooled batches `sink` has not settled.
pub(crate) fn pending(metrics: &Metrics, sink: &str) -> f64 {
    sink_value(metrics, "zastava_runtime_sink_pending_batches", sink)
}

pub(crate) fn shipped(metrics: &Metrics, sink: &str) -> f64 {
    sink_value(metrics, "zastava_runtime_sink_events_shipped_total", sink)
}

/// `zastava_runtime_sink_errors_total{sink, reason}`.
pub(crate) fn errors(metrics: &Metrics, sink: &str, reason: &str) -> f64 {
    metrics
        .value(
            "zastava_runtime_sink_errors_total",
            &format!("{{reason=\"{reason}\",sink=\"{sink}\"}}"),
        )
        .or_else(|| {
            metrics.value(
                "zastava_runtime_sink_errors_total",
                &format!("{{sink=\"{sink}\",reason=\"{reason}\"}}"),
            )
        })
        .unwrap_or(0.0)
}

/// Scrapes until `done`, checking the account balances at every scrape.
pub(crate) fn wait_metrics(
    observer: &Observer,
    what: &str,
    within: Duration,
    done: impl Fn(&Metrics) -> bool,
) -> Metrics {
    let deadline = Instant::now() + within;
    loop {
        let metrics = observer.scrape();
        metrics.assert_balanced();
        if done(&metrics) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}:\n{}\nobserver log:\n{}",
            metrics.0,
            observer.stderr()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// A batch as a bus stored it: its id, the events its envelope holds, the event count its
/// headers (or fields) announce.
pub(crate) struct BusBatch {
    pub id: String,
    pub events: Vec<Value>,
    pub announced: u64,
}

/// The batches of a JetStream stream, checked for what every message carries: gzip, the
/// schema version, the batch id as `Nats-Msg-Id`.
pub(crate) fn jetstream_batches(stored: &[nats_harness::Stored]) -> Vec<BusBatch> {
    stored
        .iter()
        .map(|m| {
            assert_eq!(m.content_encoding.as_deref(), Some("gzip"));
            assert_eq!(m.schema_version.as_deref(), Some("1"));
            assert_eq!(m.batch["schemaVersion"], 1);
            assert_eq!(
                m.batch["batchId"].as_str(),
                Some(m.msg_id.as_str()),
                "Nats-Msg-Id is the batch id"
            );
            BusBatch {
                id: m.msg_id.clone(),
                events: m.events(),
                announced: m.events_header,
            }
        })
        .collect()
}

/// The batch id's run (`<hostId>-<runId>`) and number.
fn run_and_number(id: &str) -> (String, u64) {
    let (run, n) = id.rsplit_once('-').expect("<hostId>-<runId>-<n>");
    (run.to_owned(), n.parse().expect("a batch number"))
}

/// Checks that the batches are each once on the bus, that every run's batches are
/// numbered 1..=N without a gap (so none is missing), that every batch announces the edge
/// occurrences it holds, and that each of `paths` arrived exactly once. Returns the edge
/// occurrences on the bus.
pub(crate) fn assert_exactly_once(batches: &[BusBatch], paths: &[String]) -> u64 {
    let mut ids = HashSet::new();
    for batch in batches {
        assert!(
            ids.insert(batch.id.as_str()),
            "batch {} is on the bus twice",
            batch.id
        );
    }
    let mut runs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for batch in batches {
        let (run, n) = run_and_number(&batch.id);
        runs.entry(run).or_default().push(n);
    }
    for (run, mut numbers) in runs {
        numbers.sort_unstable();
        let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
        assert_eq!(numbers, expected, "run {run}: batches missing");
    }
    let mut occurrences = 0;
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for batch in batches {
        let edges: u64 = batch
            .events
            .iter()
            .filter(|e| e["eventType"] == "edge")
            .map(|e| e["count"].as_u64().unwrap_or(1))
            .sum();
        assert_eq!(
            edges, batch.announced,
            "batch {} announces {} events",
            batch.id, batch.announced
        );
        occurrences += edges;
        for event in &batch.events {
            if let Some(path) = event["path"].as_str() {
                *seen.entry(path).or_default() += event["count"].as_u64().unwrap_or(1);
            }
        }
    }
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !seen.contains_key(p.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} paths never arrived, e.g. {:?}",
        missing.len(),
        paths.len(),
        missing.first()
    );
    for path in paths {
        assert_eq!(
            seen[path.as_str()],
            1,
            "{path} arrived {} times",
            seen[path.as_str()]
        );
    }
    occurrences
}

/// The account of `sink` in the shutdown summary.
pub(crate) fn sink_account<'a>(summary: &'a Value, sink: &str) -> &'a Value {
    &summary["delivery"]["sinks"][sink]
}

pub(crate) fn spool_dir() -> (TempDir, PathBuf) {
    let dir = TempDir::new("zastava-bus");
    let spool = dir.path().join("spool");
    (dir, spool)
}
