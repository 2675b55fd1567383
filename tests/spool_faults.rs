//! The spool's filesystem fills up (ENOSPC) — by the spool itself while the backend is
//! down, or by something else on the node — with the real observer shipping over real
//! HTTPS: what cannot be spooled is dropped and counted, what was spooled is delivered
//! once and counted as shipped, the space comes back, and the event account balances at
//! every scrape and at shutdown.

mod common;

use std::{
    collections::HashMap,
    fs::File,
    path::Path,
    time::{Duration, Instant},
};

use common::{
    backend::{Pki, Receiver, Reply},
    unique, Metrics, Observer, TempDir,
};
use serde_json::Value;
use zastava_testing::tmpfs::Tmpfs;

struct Setup {
    pki: Pki,
    receiver: Receiver,
    token: TempDir,
    spool: Tmpfs,
}

impl Setup {
    fn new(spool_bytes: u64) -> Setup {
        common::require_root();
        let pki = Pki::generate();
        let receiver = Receiver::start(&pki, false);
        let token = TempDir::new("zastava-token");
        std::fs::write(token.path().join("token"), "s3cret\n").unwrap();
        Setup {
            pki,
            receiver,
            token,
            spool: Tmpfs::mount("zastava-spool-tmpfs", spool_bytes),
        }
    }

    fn observer(&self) -> Observer {
        let token = self.token.path().join("token");
        Observer::start(&[
            "--no-cri",
            "--backend",
            &self.receiver.url,
            "--ca-file",
            self.pki.ca.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
            "--spool-dir",
            self.spool.path().to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
            "--set",
            "backend.max_backoff=\"1s\"",
        ])
    }
}

/// Opens `count` files with unique names in `dir`; returns their paths.
fn open_unique(dir: &Path, prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let path = dir.join(format!("{}-{i}", unique(prefix)));
            drop(File::create(&path).unwrap());
            path.to_str().unwrap().to_owned()
        })
        .collect()
}

/// Edge occurrences in batches the backend accepted, each batch once: what the account
/// must call shipped.
fn delivered_occurrences(receiver: &Receiver) -> u64 {
    receiver
        .delivered_batches()
        .iter()
        .flat_map(|b| b.events())
        .filter(|e| e["eventType"] == "edge")
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum()
}

/// Batch ids the backend accepted more than once.
fn accepted_twice(receiver: &Receiver) -> Vec<(String, usize)> {
    let mut accepted: HashMap<String, usize> = HashMap::new();
    for r in receiver.received() {
        if (200..300).contains(&r.status) {
            *accepted.entry(r.batch_id().to_owned()).or_default() += 1;
        }
    }
    accepted.into_iter().filter(|(_, n)| *n > 1).collect()
}

fn value(metrics: &Metrics, name: &str, labels: &str) -> f64 {
    metrics
        .value(name, labels)
        .unwrap_or_else(|| panic!("no {name}{labels} in:\n{}", metrics.0))
}

/// Scrapes until `done` holds, asserting the account balances at every scrape.
fn scrape_until(observer: &Observer, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        let metrics = observer.scrape();
        metrics.assert_balanced();
        if done(&metrics) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {:?}:\n{}\nobserver log:\n{}",
            common::TIMEOUT,
            metrics.0,
            observer.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_summary_balanced(summary: &Value) {
    let account = &summary["delivery"];
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
    for (sink, own) in account["sinks"].as_object().unwrap() {
        let dropped: u64 = own["dropped"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(
            account["seen"].as_u64().unwrap(),
            own["shipped"].as_u64().unwrap()
                + dropped
                + account["inFlightPipeline"].as_u64().unwrap()
                + own["inFlightSpool"].as_u64().unwrap(),
            "{sink}: {account}"
        );
    }
}

#[test]
fn a_spool_that_fills_its_disk_during_an_outage_ships_what_it_held_and_counts_the_rest() {
    // Far below spool.max_bytes (256 MiB by default): the disk, not the spool's own limit,
    // refuses the batches.
    let setup = Setup::new(512 << 10);
    let work = TempDir::new("zastava-enospc");
    setup.receiver.set_default(Some(Reply::Status(503)));
    let observer = setup.observer();

    // Bursts of opens until the disk refuses a batch.
    let full = scrape_until(&observer, "a batch refused by the full disk", |m| {
        m.value(
            "stella_runtime_events_dropped_total",
            "{stage=\"spool_full\"}",
        )
        .unwrap_or(0.0)
            > 0.0
            || {
                open_unique(work.path(), "flood", 1500);
                false
            }
    });
    // The disk, not spool.max_bytes, refused: the spool holds most of the 512 KiB, and
    // what is left is less than its reserve plus the refused batch.
    let held_batches = value(&full, "zastava_runtime_spool_batches", "");
    assert!(held_batches >= 1.0, "{}", full.0);
    let held_bytes = value(&full, "zastava_runtime_spool_bytes", "");
    assert!(held_bytes > f64::from(256 << 10), "{}", full.0);
    assert!(
        setup.spool.free_bytes() < 256 << 10,
        "{} bytes free",
        setup.spool.free_bytes()
    );
    assert!(
        observer.stderr().contains("No space left on device"),
        "the refusal names its cause:\n{}",
        observer.stderr()
    );

    // The backend returns: what the spool held is delivered and counted as shipped, and
    // the space it took is given back.
    setup.receiver.set_default(None);
    let drained = scrape_until(&observer, "the spool drained", |m| {
        m.value("zastava_runtime_spool_batches", "") == Some(0.0)
    });
    let shipped = value(&drained, "zastava_runtime_events_shipped_total", "");
    assert!(shipped > 0.0, "{}", drained.0);
    // The node keeps making events, so the backend may have accepted more since the
    // scrape; never less than what is called shipped (exact at shutdown, below).
    let accepted = delivered_occurrences(&setup.receiver) as f64;
    assert!(
        shipped <= accepted,
        "shipped {shipped} > accepted {accepted}:\n{}",
        drained.0
    );
    assert_eq!(
        value(
            &drained,
            "zastava_runtime_sink_events_shipped_total",
            "{sink=\"https\"}"
        ),
        shipped
    );
    // The segment the outage filled is gone (the node keeps making events, so a new one
    // may have begun already).
    let outage_segment = setup.spool.path().join("segment-0000000000000000.spool");
    assert!(
        !outage_segment.exists(),
        "{} is still there ({} bytes free)",
        outage_segment.display(),
        setup.spool.free_bytes()
    );

    // Space is back: new events are spooled and delivered again.
    let later = open_unique(work.path(), "after", 20);
    setup
        .receiver
        .wait_until("the events made after recovery", |_| {
            let delivered: Vec<String> = setup
                .receiver
                .delivered_batches()
                .iter()
                .flat_map(|b| b.events())
                .filter_map(|e| e["path"].as_str().map(str::to_owned))
                .collect();
            later.iter().all(|p| delivered.contains(p))
        });
    let stopped = observer.stop();

    assert_eq!(
        accepted_twice(&setup.receiver),
        vec![],
        "no batch accepted twice"
    );
    assert_summary_balanced(&stopped.summary);
    let account = &stopped.summary["delivery"];
    assert_eq!(
        account["shipped"].as_u64().unwrap(),
        delivered_occurrences(&setup.receiver),
        "{account}"
    );
    assert_eq!(account["inFlightSpool"], 0, "{account}");
    let refused = account["dropped"]["spool_full"].as_u64().unwrap();
    assert!(refused > 0, "{account}");
    // Of the delivery stages only the refused batches: nothing evicted, nothing
    // dead-lettered (the kernel-side stages count what the busy node did meanwhile).
    for stage in ["spool_eviction", "dead_letter"] {
        assert!(
            account["dropped"].get(stage).is_none(),
            "{stage}: {account}"
        );
    }
    assert!(
        stopped.stderr.contains("balanced") && !stopped.stderr.contains("UNBALANCED"),
        "{}",
        stopped.stderr
    );
    // The figures docs/RELIABILITY.md quotes (with --nocapture).
    eprintln!("account at shutdown: {account}");
}

#[test]
fn a_disk_filled_by_something_else_drops_counted_batches_until_space_returns() {
    let setup = Setup::new(4 << 20);
    let work = TempDir::new("zastava-enospc-other");
    let observer = setup.observer();
    let filler = setup.spool.fill("filler");
    assert_eq!(setup.spool.free_bytes(), 0);

    let refused = scrape_until(&observer, "a batch refused by the full disk", |m| {
        m.value(
            "stella_runtime_events_dropped_total",
            "{stage=\"spool_full\"}",
        )
        .unwrap_or(0.0)
            > 0.0
            || {
                open_unique(work.path(), "refused", 200);
                false
            }
    });
    assert_eq!(value(&refused, "zastava_runtime_spool_batches", ""), 0.0);

    setup.spool.unfill(&filler);
    let later = open_unique(work.path(), "after", 20);
    setup
        .receiver
        .wait_until("the events made after space returned", |_| {
            let delivered: Vec<String> = setup
                .receiver
                .delivered_batches()
                .iter()
                .flat_map(|b| b.events())
                .filter_map(|e| e["path"].as_str().map(str::to_owned))
                .collect();
            later.iter().all(|p| delivered.contains(p))
        });
    let stopped = observer.stop();
    assert_eq!(accepted_twice(&setup.receiver), vec![]);
    assert_summary_balanced(&stopped.summary);
    let account = &stopped.summary["delivery"];
    assert_eq!(
        account["shipped"].as_u64().unwrap(),
        delivered_occurrences(&setup.receiver),
        "{account}"
    );
    assert!(account["dropped"]["spool_full"].as_u64().unwrap() > 0);
}
