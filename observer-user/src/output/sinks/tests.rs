//! The sink loop with scripted sinks: independent cursors, retries, dead letters, and the
//! account (totals and per sink) balanced throughout.

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use super::*;
use crate::output::{
    account::Unpublished,
    spool::{Spool, WhenFull},
};

/// Answers with the scripted outcomes, then with `otherwise`; records what it delivered.
#[derive(Clone)]
struct Scripted {
    name: &'static str,
    script: Arc<Mutex<VecDeque<Outcome>>>,
    otherwise: Arc<Mutex<Outcome>>,
    delivered: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    fn new(name: &'static str, otherwise: Outcome) -> Self {
        Scripted {
            name,
            script: Arc::default(),
            otherwise: Arc::new(Mutex::new(otherwise)),
            delivered: Arc::default(),
        }
    }

    fn delivered(&self) -> Vec<String> {
        self.delivered.lock().unwrap().clone()
    }
}

impl Sink for Scripted {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn connect(&mut self) -> Result<(), Failure> {
        Ok(())
    }

    async fn deliver(&mut self, entry: &SpoolEntry) -> Outcome {
        let outcome = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.otherwise.lock().unwrap().clone());
        if matches!(outcome, Outcome::Delivered { .. }) {
            self.delivered.lock().unwrap().push(entry.batch_id.clone());
        }
        outcome
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("zastava-sinks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn batch(n: u64) -> SpoolEntry {
    SpoolEntry {
        batch_id: format!("b-{n}"),
        events: n,
        records: n,
        oldest_ns: 0,
        body: vec![0; 64],
    }
}

fn down() -> Outcome {
    Outcome::Failed(Failure::reconnect("connect", "down"))
}

struct Harness {
    delivery: Arc<Delivery>,
    stop: watch::Sender<Option<Instant>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    dir: PathBuf,
}

impl Harness {
    fn new(name: &str, sinks: &[&Scripted]) -> Self {
        let dir = dir(name);
        let names: Vec<&str> = sinks.iter().map(|s| s.name).collect();
        let spool = Spool::open(&dir, 1 << 20, WhenFull::DropOldest, &names).unwrap();
        let delivery = Arc::new(Delivery::new(Some(spool)));
        let (stop, stopped) = watch::channel(None);
        let tasks = sinks
            .iter()
            .enumerate()
            .map(|(index, sink)| {
                let task = SinkTask::new(
                    (*sink).clone(),
                    index,
                    Arc::clone(&delivery),
                    Duration::from_millis(5),
                    DeadLetter::in_dir(&dir, sink.name),
                    stopped.clone(),
                );
                tokio::spawn(task.run())
            })
            .collect();
        Harness {
            delivery,
            stop,
            tasks,
            dir,
        }
    }

    /// The pipeline closes a batch: seen and spooled in one update.
    fn publish(&self, entry: &SpoolEntry) {
        let update = Unpublished {
            seen: entry.events,
            ..Unpublished::default()
        };
        self.delivery.publish(update, Some(entry), 0);
        assert!(self.delivery.snapshot().balanced());
    }

    async fn wait_until(&self, what: &str, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let snapshot = self.delivery.snapshot();
            assert!(snapshot.balanced(), "{snapshot:#?}");
            if done(&snapshot) {
                return snapshot;
            }
            assert!(Instant::now() < deadline, "{what}: {snapshot:#?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(Some(Instant::now()));
        for task in self.tasks {
            task.await.unwrap();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

use crate::output::Snapshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_sink_holds_back_no_other_and_catches_up_exactly_once() {
    let https = Scripted::new("https", Outcome::Delivered { duplicate: false });
    let nats = Scripted::new("nats", down());
    let harness = Harness::new("dead", &[&https, &nats]);
    for n in 1..=5 {
        harness.publish(&batch(n));
    }
    let snapshot = harness
        .wait_until("https delivered everything", |s| {
            s.sinks["https"].pending_batches == 0
        })
        .await;
    assert_eq!(https.delivered(), ["b-1", "b-2", "b-3", "b-4", "b-5"]);
    assert!(nats.delivered().is_empty());
    // Waiting for NATS: still spooled, not shipped in the totals.
    assert_eq!(snapshot.sinks["https"].shipped, 15);
    assert_eq!(snapshot.sinks["nats"].pending_batches, 5);
    assert_eq!(snapshot.sinks["nats"].in_flight_spool, 15);
    assert_eq!((snapshot.shipped, snapshot.spool_batches), (0, 5));

    *nats.otherwise.lock().unwrap() = Outcome::Delivered { duplicate: false };
    let snapshot = harness
        .wait_until("nats caught up", |s| s.spool_batches == 0)
        .await;
    assert_eq!(nats.delivered(), ["b-1", "b-2", "b-3", "b-4", "b-5"]);
    assert_eq!(snapshot.shipped, 15);
    assert_eq!(snapshot.sinks["nats"].shipped, 15);
    assert!(snapshot.dropped.is_empty(), "{snapshot:#?}");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_one_sink_rejects_is_its_dead_letter_and_a_loss_in_the_totals() {
    let https = Scripted::new("https", Outcome::Delivered { duplicate: false });
    https.script.lock().unwrap().extend([
        down(),
        Outcome::Throttled(Duration::from_millis(10)),
        Outcome::Rejected {
            status: Some(400),
            reason: "bad batch".into(),
        },
    ]);
    let redis = Scripted::new("redis", Outcome::Delivered { duplicate: false });
    redis
        .script
        .lock()
        .unwrap()
        .push_back(Outcome::Delivered { duplicate: true });
    let harness = Harness::new("rejected", &[&https, &redis]);
    harness.publish(&batch(3));
    harness.publish(&batch(4));
    let snapshot = harness
        .wait_until("both sinks settled both batches", |s| s.spool_batches == 0)
        .await;
    // b-3 was retried after a failure and a 429, then rejected; b-4 delivered.
    assert_eq!(https.delivered(), ["b-4"]);
    assert_eq!(redis.delivered(), ["b-3", "b-4"]);
    assert_eq!(snapshot.shipped, 4);
    assert_eq!(snapshot.dropped.get("dead_letter"), Some(&3));
    assert_eq!(snapshot.sinks["https"].shipped, 4);
    assert_eq!(snapshot.sinks["https"].dropped.get("dead_letter"), Some(&3));
    assert_eq!(snapshot.sinks["redis"].shipped, 7);
    assert_eq!(snapshot.sinks["redis"].dropped.get("dead_letter"), None);
    let letters = std::fs::read_to_string(harness.dir.join("dead-letter.ndjson")).unwrap();
    let letter: serde_json::Value = serde_json::from_str(letters.trim()).unwrap();
    assert_eq!(letter["batchId"], "b-3");
    assert_eq!(letter["sink"], "https");
    assert_eq!(letter["status"], 400);
    assert_eq!(letter["reason"], "bad batch");
    assert_eq!(letter["events"], 3);
    harness.stop().await;
}

#[test]
fn backoff_is_jittered_below_an_exponential_cap() {
    let max = Duration::from_secs(60);
    for attempt in 0..30 {
        let cap = BACKOFF_BASE
            .checked_mul(1 << attempt.min(20))
            .unwrap_or(max)
            .min(max);
        for _ in 0..20 {
            assert!(backoff(attempt, max) <= cap);
        }
    }
    // Jitter: not always the same.
    let samples: std::collections::HashSet<Duration> = (0..50).map(|_| backoff(10, max)).collect();
    assert!(samples.len() > 10);
}
