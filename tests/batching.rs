//! Batching under a storm of new records: past the held-records bound the oldest leave
//! before their reorder window, none is lost, and the early releases are counted where an
//! operator looks (the metric and the shutdown summary).

mod common;

use std::{
    collections::HashMap,
    fs::File,
    thread,
    time::{Duration, Instant},
};

use common::{unique, Observer, TempDir};

const OPENS: usize = 2_000;
const HELD: usize = 500;

#[test]
fn records_beyond_the_held_bound_leave_early_every_one_delivered_and_counted() {
    let dir = TempDir::new("zastava-batching");
    let prefix = dir.path().join(unique("new"));
    let prefix = prefix.to_str().unwrap().to_owned();
    let paths: Vec<String> = (0..OPENS).map(|i| format!("{prefix}-{i}")).collect();

    // A reorder window no record of the test outlives: whatever leaves before the stop
    // leaves because of the bound.
    let observer = Observer::start(&[
        "--no-cri",
        "--no-docker",
        "--metrics-addr",
        "127.0.0.1:0",
        "--set",
        "batch.reorder_window=\"60s\"",
        "--set",
        "batch.max_events=100",
        "--set",
        &format!("batch.max_held_events={HELD}"),
    ]);
    for path in &paths {
        assert!(File::open(path).is_err());
    }
    // The oldest leave first: once the storm's last record beyond the bound is out, at
    // least that many were released early (the metric is published after the batch).
    let excess = (OPENS - HELD) as u64;
    let last_early = &paths[OPENS - HELD - 1];
    observer.wait_for("the last open beyond the bound, released early", |e| {
        e["edgeType"] == "fs" && e["path"] == last_early.as_str()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let released = loop {
        let released = observer
            .scrape()
            .value(
                "zastava_runtime_batch_records_total",
                "{outcome=\"released_early\"}",
            )
            .unwrap_or(0.0) as u64;
        if released >= excess || Instant::now() > deadline {
            break released;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let stopped = observer.stop();

    let mut delivered: HashMap<&str, u64> = HashMap::new();
    for e in &stopped.events {
        if e["edgeType"] == "fs" {
            if let Some(path) = e["path"].as_str() {
                if path.starts_with(prefix.as_str()) {
                    *delivered.entry(path).or_default() += e["count"].as_u64().unwrap_or(1);
                }
            }
        }
    }
    for path in &paths {
        assert_eq!(delivered.get(path.as_str()), Some(&1), "{path}");
    }
    assert_eq!(delivered.len(), OPENS);
    // Everything beyond the bound left early: at least the storm's excess, and (other
    // processes of the node add records too) the summary counts no fewer than the metric
    // did before the stop.
    assert!(
        released >= excess,
        "{released} released early by the metric"
    );
    let summary = stopped.summary["batching"]["releasedEarly"]
        .as_u64()
        .unwrap();
    assert!(summary >= released, "summary {summary}, metric {released}");
    assert!(
        stopped.stderr.contains("released_early="),
        "{}",
        stopped.stderr
    );
    assert_eq!(
        stopped.summary["delivery"]["seen"],
        stopped.summary["delivery"]["shipped"]
    );
}
