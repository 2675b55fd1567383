//! Shipping to the backend over real HTTPS (certificates generated per test) with the
//! real observer: order, gzip, authentication, mTLS, outages, restarts, throttling, errors,
//! rotated tokens and a full spool — and the event account balancing throughout.

mod common;

use std::{
    collections::HashMap,
    fs::File,
    path::Path,
    time::{Duration, Instant},
};

use common::{
    backend::{Pki, Receiver, Reply},
    schema_violations, unique, Observer, TempDir,
};
use serde_json::Value;

struct Setup {
    pki: Pki,
    receiver: Receiver,
    spool: TempDir,
    token: TempDir,
}

impl Setup {
    fn new(require_client_certificate: bool) -> Setup {
        let pki = Pki::generate();
        let receiver = Receiver::start(&pki, require_client_certificate);
        let token = TempDir::new("zastava-token");
        std::fs::write(token.path().join("token"), "s3cret\n").unwrap();
        Setup {
            pki,
            receiver,
            spool: TempDir::new("zastava-spool"),
            token,
        }
    }

    fn token_file(&self) -> String {
        self.token.path().join("token").to_str().unwrap().to_owned()
    }

    /// An observer on the node alone, shipping to the receiver.
    fn observer(&self, extra: &[&str]) -> Observer {
        let mut args = vec![
            "--no-cri".to_owned(),
            "--backend".to_owned(),
            self.receiver.url.clone(),
            "--ca-file".to_owned(),
            self.pki.ca.to_str().unwrap().to_owned(),
            "--token-file".to_owned(),
            self.token_file(),
            "--spool-dir".to_owned(),
            self.spool.path().to_str().unwrap().to_owned(),
            "--metrics-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--set".to_owned(),
            "backend.max_backoff=\"1s\"".to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Observer::start(&args)
    }
}

/// Opens `count` files with unique names, `pause` apart; returns their paths.
fn open_unique(dir: &Path, prefix: &str, count: usize, pause: Duration) -> Vec<String> {
    (0..count)
        .map(|i| {
            let path = dir.join(format!("{}-{i}", unique(prefix)));
            drop(File::create(&path).unwrap());
            std::thread::sleep(pause);
            path.to_str().unwrap().to_owned()
        })
        .collect()
}

/// Something for the observer to report, so that a batch is sent.
fn make_activity() {
    let dir = TempDir::new("zastava-activity");
    open_unique(dir.path(), "activity", 3, Duration::ZERO);
}

/// How often each path arrived in accepted batches (counting merged repeats).
fn delivered_paths(receiver: &Receiver) -> HashMap<String, u64> {
    let mut seen = HashMap::new();
    for batch in receiver.delivered_batches() {
        for event in batch.events() {
            if let Some(path) = event["path"].as_str() {
                *seen.entry(path.to_owned()).or_default() += event["count"].as_u64().unwrap_or(1);
            }
        }
    }
    seen
}

fn all_delivered(receiver: &Receiver, paths: &[String]) -> bool {
    let seen = delivered_paths(receiver);
    paths.iter().all(|p| seen.contains_key(p))
}

fn sort_key(e: &Value) -> (String, String, u8) {
    let rank = match (e["eventType"].as_str(), e["edgeType"].as_str()) {
        (Some("edge"), Some("fs")) => 0,
        (Some("edge"), Some("net")) => 1,
        (Some("edge"), _) => 2,
        (Some("enrichmentPatch"), _) => 11,
        _ => 10,
    };
    (
        e["workloadId"].as_str().unwrap_or_default().to_owned(),
        e["timestamp"].as_str().unwrap_or_default().to_owned(),
        rank,
    )
}

#[test]
fn batches_arrive_sorted_gzipped_authenticated_and_valid() {
    let setup = Setup::new(false);
    let dir = TempDir::new("zastava-ship");
    let observer = setup.observer(&[]);
    let paths = open_unique(dir.path(), "valid", 30, Duration::from_millis(5));
    setup.receiver.wait_until("all 30 opens delivered", |_| {
        all_delivered(&setup.receiver, &paths)
    });
    let stopped = observer.stop();

    let received = setup.receiver.received();
    assert!(!received.is_empty());
    for request in &received {
        assert_eq!(request.path, "/api/v1/runtime/events");
        assert_eq!(request.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(request.authorization.as_deref(), Some("Bearer s3cret"));
        let body = request.body.as_ref().expect("a JSON body");
        assert_eq!(body["schemaVersion"], 1);
        assert_eq!(
            body["node"],
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap()
                .trim()
        );
        assert_eq!(request.idempotency_key.as_deref(), Some(request.batch_id()));
        let events = request.events();
        assert!(!events.is_empty());
        for event in &events {
            assert_eq!(schema_violations(event), None);
        }
        let keys: Vec<_> = events.iter().map(sort_key).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(
            keys,
            sorted,
            "batch {} is not sorted by (workloadId, timestamp, type)",
            request.batch_id()
        );
    }
    // Batch ids are unique per batch.
    let ids: std::collections::HashSet<&str> = received.iter().map(|r| r.batch_id()).collect();
    assert_eq!(ids.len(), received.len());
    let delivered = delivered_paths(&setup.receiver);
    for path in &paths {
        assert_eq!(delivered[path], 1, "{path} delivered once");
    }
    let account = &stopped.summary["delivery"];
    assert_eq!(account["shipped"], account["seen"], "{account}");
}

#[test]
fn an_outage_is_ridden_out_in_the_spool_and_every_event_arrives_once_in_order() {
    let setup = Setup::new(false);
    let dir = TempDir::new("zastava-outage");
    setup.receiver.set_default(Some(Reply::Status(503)));
    let observer = setup.observer(&[]);
    let paths = open_unique(dir.path(), "outage", 120, Duration::from_millis(15));

    // The spool grows while the backend is down, and the account balances at every scrape.
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        let metrics = observer.scrape();
        metrics.assert_balanced();
        if metrics
            .value("zastava_runtime_spool_batches", "")
            .unwrap_or(0.0)
            >= 2.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the spool did not grow:\n{}",
            metrics.0
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(setup.receiver.received().iter().all(|r| r.status == 503));

    setup.receiver.set_default(None);
    setup
        .receiver
        .wait_until("every event after the outage", |_| {
            all_delivered(&setup.receiver, &paths)
        });
    let metrics = observer.scrape();
    metrics.assert_balanced();
    let stopped = observer.stop();

    // Once each.
    let delivered = delivered_paths(&setup.receiver);
    for path in &paths {
        assert_eq!(delivered.get(path), Some(&1), "{path}");
    }
    // In order for the workload: the concatenation of batches, in arrival order.
    let host: Vec<(String, bool)> = setup
        .receiver
        .delivered_batches()
        .iter()
        .flat_map(|b| b.events())
        .filter(|e| {
            e["workloadId"]
                .as_str()
                .is_some_and(|w| w.starts_with("host:"))
        })
        .map(|e| {
            (
                e["timestamp"].as_str().unwrap().to_owned(),
                e.get("late").is_some(),
            )
        })
        .collect();
    for pair in host.windows(2) {
        assert!(
            pair[0].0 <= pair[1].0 || pair[1].1,
            "out of order: {pair:?}"
        );
    }
    let account = &stopped.summary["delivery"];
    assert_eq!(
        account["dropped"]
            .as_object()
            .map_or(0, |d| d.values().filter(|v| v.as_u64() != Some(0)).count()),
        0,
        "{account}"
    );
    assert_eq!(account["seen"], account["shipped"], "{account}");
}

#[test]
fn batches_spooled_before_a_sigkill_are_delivered_after_a_restart() {
    let setup = Setup::new(false);
    let dir = TempDir::new("zastava-sigkill");
    setup.receiver.set_default(Some(Reply::Status(503)));
    let first = setup.observer(&[]);
    let paths = open_unique(dir.path(), "killed", 20, Duration::from_millis(5));
    // Written to NDJSON = closed and spooled.
    let last = paths.last().unwrap().clone();
    first.wait_for("the last open in a closed batch", |e| {
        e["path"] == last.as_str()
    });
    first.kill();

    setup.receiver.set_default(None);
    let second = setup.observer(&[]);
    setup.receiver.wait_until("the killed run's events", |_| {
        all_delivered(&setup.receiver, &paths)
    });
    let stopped = second.stop();
    assert!(
        stopped
            .stderr
            .contains("from an earlier run will be sent first"),
        "{}",
        stopped.stderr
    );
    let delivered = delivered_paths(&setup.receiver);
    for path in &paths {
        assert_eq!(delivered.get(path), Some(&1), "{path}");
    }
}

#[test]
fn what_the_shutdown_grace_period_cannot_deliver_stays_spooled_is_reported_and_arrives_later() {
    let setup = Setup::new(false);
    let dir = TempDir::new("zastava-grace");
    setup.receiver.set_default(Some(Reply::Status(503)));
    let first = setup.observer(&["--set", "backend.shutdown_grace=\"1s\""]);
    let paths = open_unique(dir.path(), "grace", 20, Duration::from_millis(5));
    let last = paths.last().unwrap().clone();
    first.wait_for("the last open in a closed batch", |e| {
        e["path"] == last.as_str()
    });
    let stopped = first.stop();
    let account = &stopped.summary["delivery"];
    // Nothing could be shipped, nothing was dropped: all of it is in the spool, and the
    // log says how much.
    assert_eq!(account["shipped"], 0, "{account}");
    assert_eq!(account["inFlightPipeline"], 0, "{account}");
    assert_eq!(account["inFlightSpool"], account["seen"], "{account}");
    let message = format!(
        "{} events in {} spooled batches were not delivered within the shutdown grace period (1s); they stay in the spool and are sent after the next start",
        account["seen"], account["spoolBatches"]
    );
    assert!(
        stopped.stderr.contains(&message),
        "{message}\n{}",
        stopped.stderr
    );

    setup.receiver.set_default(None);
    let second = setup.observer(&[]);
    setup.receiver.wait_until("the first run's events", |_| {
        all_delivered(&setup.receiver, &paths)
    });
    second.stop();
    let delivered = delivered_paths(&setup.receiver);
    for path in &paths {
        assert_eq!(delivered.get(path), Some(&1), "{path}");
    }
}

#[test]
fn a_429_is_waited_out_and_the_same_batch_is_sent_again() {
    let setup = Setup::new(false);
    setup.receiver.script(vec![Reply::TooMany("1".into())]);
    let observer = setup.observer(&[]);
    make_activity();
    setup
        .receiver
        .wait_until("a retry after 429", |r| r.len() >= 2);
    observer.stop();
    let received = setup.receiver.received();
    assert_eq!(received[0].status, 429);
    assert_eq!(received[1].status, 200);
    assert_eq!(received[1].batch_id(), received[0].batch_id());
    let waited = received[1].at.duration_since(received[0].at);
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured ({waited:?})"
    );
}

#[test]
fn server_errors_and_timeouts_are_retried_with_the_same_batch_id() {
    let setup = Setup::new(false);
    setup.receiver.script(vec![
        Reply::Status(500),
        Reply::Status(503),
        Reply::Hang(Duration::from_secs(3)),
    ]);
    let observer = setup.observer(&["--set", "backend.timeout=\"1s\""]);
    make_activity();
    setup
        .receiver
        .wait_until("a batch accepted after 500, 503 and a timeout", |r| {
            r.len() >= 4
        });
    let stopped = observer.stop();
    let received = setup.receiver.received();
    let first = received[0].batch_id().to_owned();
    // The same batch, four times: 500, 503, the hung request (answered after the client gave
    // up) and the retry that succeeded.
    let attempts: Vec<u16> = received
        .iter()
        .filter(|r| r.batch_id() == first)
        .map(|r| r.status)
        .collect();
    assert!(attempts.starts_with(&[500, 503]), "{attempts:?}");
    assert!(attempts.contains(&200), "{attempts:?}");
    assert_eq!(
        stopped.summary["delivery"]["dropped"]["dead_letter"],
        Value::Null
    );
}

#[test]
fn a_batch_the_backend_rejects_goes_to_the_dead_letter_file_once() {
    let setup = Setup::new(false);
    setup.receiver.script(vec![Reply::Status(400)]);
    let observer = setup.observer(&[]);
    make_activity();
    std::thread::sleep(Duration::from_secs(2));
    make_activity();
    setup
        .receiver
        .wait_until("a rejection and a later batch", |r| r.len() >= 2);
    let metrics = observer.scrape();
    metrics.assert_balanced();
    let stopped = observer.stop();
    let received = setup.receiver.received();
    let rejected = received[0].batch_id().to_owned();
    assert_eq!(received[0].status, 400);
    assert_eq!(
        received.iter().filter(|r| r.batch_id() == rejected).count(),
        1,
        "never retried"
    );
    let letters = std::fs::read_to_string(setup.spool.path().join("dead-letter.ndjson")).unwrap();
    let letter: Value = serde_json::from_str(letters.lines().next().unwrap()).unwrap();
    assert_eq!(letter["batchId"], rejected.as_str());
    assert_eq!(letter["status"], 400);
    assert_eq!(letter["reason"], "events[0].edgeType: unsupported");
    assert_eq!(letter["batch"]["batchId"], rejected.as_str());
    let dropped = metrics
        .value(
            "stella_runtime_events_dropped_total",
            "{stage=\"dead_letter\"}",
        )
        .unwrap();
    assert_eq!(dropped, letter["events"].as_f64().unwrap());
    assert_eq!(
        stopped.summary["delivery"]["dropped"]["dead_letter"],
        letter["events"]
    );
}

#[test]
fn a_replaced_token_file_is_picked_up_without_a_restart() {
    let setup = Setup::new(false);
    setup.receiver.accept_only_token("rotated");
    let observer = setup.observer(&[]);
    make_activity();
    setup
        .receiver
        .wait_until("a request with the old token", |r| {
            r.iter().any(|r| r.status == 401)
        });
    // Replaced the way a projected secret is: a new file renamed over the old one.
    let fresh = setup.token.path().join("token.new");
    std::fs::write(&fresh, "rotated").unwrap();
    std::fs::rename(&fresh, setup.token.path().join("token")).unwrap();
    setup
        .receiver
        .wait_until("a request with the new token", |r| {
            r.iter().any(|r| r.status == 200)
        });
    observer.stop();
    let received = setup.receiver.received();
    assert_eq!(received[0].authorization.as_deref(), Some("Bearer s3cret"));
    let accepted = received.iter().find(|r| r.status == 200).unwrap();
    assert_eq!(accepted.authorization.as_deref(), Some("Bearer rotated"));
    assert_eq!(
        accepted.batch_id(),
        received[0].batch_id(),
        "the refused batch was kept and resent"
    );
}

#[test]
fn mutual_tls_presents_the_client_certificate_and_is_required_when_configured() {
    let setup = Setup::new(true);
    let without = setup.observer(&[]);
    make_activity();
    let deadline = Instant::now() + Duration::from_secs(10);
    while setup.receiver.handshake_failures() == 0 {
        assert!(Instant::now() < deadline, "no handshake was attempted");
        std::thread::sleep(Duration::from_millis(50));
    }
    without.stop();
    assert!(
        setup.receiver.received().is_empty(),
        "nothing gets through without a client certificate"
    );

    let cert = setup.pki.client_cert.to_str().unwrap().to_owned();
    let key = setup.pki.client_key.to_str().unwrap().to_owned();
    let with = setup.observer(&["--client-cert", &cert, "--client-key", &key]);
    make_activity();
    setup.receiver.wait_until("a batch over mutual TLS", |r| {
        r.iter().any(|r| r.status == 200)
    });
    with.stop();
    assert!(setup
        .receiver
        .received()
        .iter()
        .all(|r| r.client_certificate));
}

#[test]
fn a_full_spool_drops_the_oldest_counts_exactly_and_stays_bounded() {
    let setup = Setup::new(false);
    let dir = TempDir::new("zastava-full");
    setup.receiver.set_default(Some(Reply::Status(503)));
    let observer = setup.observer(&["--set", "spool.max_bytes=\"64K\""]);
    let pid = observer.pid();
    // Far more than 64 KiB of compressed batches.
    for burst in 0..10 {
        open_unique(dir.path(), &format!("flood{burst}"), 1500, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + common::TIMEOUT;
    let metrics = loop {
        let metrics = observer.scrape();
        metrics.assert_balanced();
        if metrics
            .value(
                "stella_runtime_events_dropped_total",
                "{stage=\"spool_eviction\"}",
            )
            .unwrap_or(0.0)
            > 0.0
        {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "nothing was evicted:\n{}",
            metrics.0
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(metrics.value("zastava_runtime_spool_bytes", "").unwrap() <= 65536.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(rss_kib < 128 * 1024, "RSS {rss_kib} KiB under overload");
    let stopped = observer.stop();
    let account = &stopped.summary["delivery"];
    let dropped: u64 = account["dropped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let in_flight =
        account["inFlightPipeline"].as_u64().unwrap() + account["inFlightSpool"].as_u64().unwrap();
    assert_eq!(
        account["seen"].as_u64().unwrap(),
        account["shipped"].as_u64().unwrap() + dropped + in_flight,
        "{account}"
    );
    assert!(
        stopped.stderr.contains("spool full: evicted"),
        "{}",
        stopped.stderr
    );
}
