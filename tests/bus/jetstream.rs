//! NATS JetStream: a 3-node cluster losing its stream leader, the observer SIGKILLed, NATS
//! down while the HTTPS backend keeps delivering, and a resend the stream drops as a
//! duplicate.

use std::time::{Duration, Instant};

use crate::{
    assert_deployment, assert_exactly_once,
    common::backend::{Pki, Receiver, Reply},
    deployment, jetstream_batches,
    nats_harness::{read_stream, stream_info, Auth, Cluster, Options, Stored},
    nats_sink, observer, pending, set, shipped, sink_account, sink_value, spool_dir, wait_metrics,
    BusBatch, Load,
};

const STREAM: &str = "ZASTAVA_RUNTIME_EVENTS";
const SUBJECT: &str = "zastava.runtime.events";

fn batches(stored: &[Stored]) -> Vec<BusBatch> {
    for message in stored {
        assert_eq!(message.subject, SUBJECT);
    }
    jetstream_batches(stored)
}

#[test]
fn a_three_node_cluster_loses_its_stream_leader_mid_run_and_every_batch_is_stored_once() {
    let mut cluster = Cluster::start(3, &Options::default());
    let urls = cluster.urls();
    let (_dir, spool) = spool_dir();
    let observer = observer(&spool, &nats_sink(&urls, 3));
    let load = Load::start("leader", Duration::from_millis(20));
    wait_metrics(
        &observer,
        "batches in the stream",
        Duration::from_secs(30),
        |m| shipped(m, "nats") > 0.0,
    );
    let info = stream_info(&urls, &Auth::None, STREAM);
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(
        info.config.subjects,
        [SUBJECT.to_owned(), format!("{SUBJECT}.>")]
    );
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    let leader_name = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the stream has a leader");
    let leader = cluster.index_of(&leader_name).expect("a node of ours");

    // The leader dies with batches in flight; the other two elect a new one and take
    // every batch from then on.
    let before = shipped(&observer.scrape(), "nats");
    cluster.kill(leader);
    let killed_at = Instant::now();
    wait_metrics(
        &observer,
        "deliveries to the new leader",
        Duration::from_secs(60),
        |m| shipped(m, "nats") > before && pending(m, "nats") <= 2.0,
    );
    let live: Vec<String> = urls
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != leader)
        .map(|(_, u)| u.clone())
        .collect();
    let new_leader = stream_info(&live, &Auth::None, STREAM)
        .cluster
        .and_then(|c| c.leader)
        .expect("a new leader");
    assert_ne!(new_leader, leader_name);
    let recovered_in = killed_at.elapsed();

    // The old leader comes back and catches up; deliveries go on throughout.
    cluster.restart(leader);
    let after_restart = shipped(&observer.scrape(), "nats");
    wait_metrics(
        &observer,
        "deliveries after the restart",
        Duration::from_secs(30),
        |m| shipped(m, "nats") > after_restart,
    );
    let paths = load.finish();
    let last = paths.last().expect("the load opened files").clone();
    observer.wait_for("the last open in a closed batch", |e| {
        e["path"] == last.as_str()
    });
    let metrics = wait_metrics(
        &observer,
        "every batch in the stream",
        Duration::from_secs(30),
        |m| pending(m, "nats") == 0.0,
    );
    assert_eq!(
        sink_value(&metrics, "zastava_runtime_sink_connected", "nats"),
        1.0
    );
    let stopped = observer.stop();

    // Every replica current again, the restarted one included.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = stream_info(&urls, &Auth::None, STREAM);
        let cluster_info = info.cluster.expect("cluster info");
        let current = cluster_info
            .replicas
            .iter()
            .all(|r| r.current && !r.offline);
        if current && cluster_info.replicas.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas not current: {cluster_info:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let stored = read_stream(&urls, &Auth::None, STREAM, "scanner");
    let on_bus = assert_exactly_once(&batches(&stored), &paths);
    let account = sink_account(&stopped.summary, "nats");
    assert_eq!(account["shipped"], on_bus, "{account}");
    assert_eq!(account["inFlightSpool"], 0, "{account}");
    assert_eq!(stopped.summary["delivery"]["shipped"], on_bus);
    println!(
        "{} batches, {on_bus} events, {} of them ours; a new leader took over within {recovered_in:?}",
        stored.len(),
        paths.len()
    );
}

#[test]
fn an_observer_killed_mid_run_resumes_its_cursor_and_no_batch_is_missing_or_twice() {
    let cluster = Cluster::start(1, &Options::default());
    let urls = cluster.urls();
    let (_dir, spool) = spool_dir();
    let mut sink = nats_sink(&urls, 1);
    sink.extend(deployment());
    let first = observer(&spool, &sink);
    let load = Load::start("sigkill", Duration::from_millis(10));
    wait_metrics(
        &first,
        "batches in the stream",
        Duration::from_secs(30),
        |m| shipped(m, "nats") > 0.0 && load.opened() > 100,
    );
    // Killed while the load goes on: batches are being closed, spooled and published.
    let written = first.kill();
    let second = observer(&spool, &sink);
    std::thread::sleep(Duration::from_secs(2));
    let paths = load.finish();
    let last = paths.last().unwrap().clone();
    second.wait_for("the last open in a closed batch", |e| {
        e["path"] == last.as_str()
    });
    let metrics = wait_metrics(
        &second,
        "every batch in the stream",
        Duration::from_secs(30),
        |m| pending(m, "nats") == 0.0,
    );
    // It resumed at its cursor: at most the batch in flight when it was killed is sent
    // again (and dropped by the stream as a duplicate).
    let duplicates = metrics
        .value(
            "zastava_runtime_sink_batches_total",
            "{sink=\"nats\",outcome=\"duplicate\"}",
        )
        .unwrap_or(0.0);
    assert!(
        duplicates <= 1.0,
        "{duplicates} batches sent again:\n{}",
        metrics.0
    );
    let stopped = second.stop();

    // What the first run wrote to NDJSON had been spooled; what the second run saw, too.
    // Opens the first run saw but had not batched when it was killed are lost with it.
    let reported: Vec<String> = written
        .iter()
        .chain(&stopped.events)
        .filter_map(|e| e["path"].as_str())
        .filter(|p| paths.iter().any(|q| q == p))
        .map(str::to_owned)
        .collect();
    assert!(reported.len() > 100, "{} paths reported", reported.len());
    let stored = read_stream(&urls, &Auth::None, STREAM, "scanner");
    for message in &stored {
        assert_deployment(&message.batch);
    }
    let batches = batches(&stored);
    let runs: std::collections::HashSet<String> = batches
        .iter()
        .map(|b| b.id.rsplit_once('-').unwrap().0.to_owned())
        .collect();
    assert_eq!(runs.len(), 2, "batches of both runs: {runs:?}");
    assert_exactly_once(&batches, &reported);
}

#[test]
fn nats_down_for_30_seconds_waits_in_the_spool_while_https_keeps_delivering() {
    let mut cluster = Cluster::start(1, &Options::default());
    let urls = cluster.urls();
    let pki = Pki::generate();
    let receiver = Receiver::start(&pki, false);
    let token = crate::common::TempDir::new("zastava-token");
    std::fs::write(token.path().join("token"), "s3cret").unwrap();
    let (_dir, spool) = spool_dir();
    let mut args = vec![
        "--backend".to_owned(),
        receiver.url.clone(),
        "--ca-file".to_owned(),
        pki.ca.to_str().unwrap().to_owned(),
        "--token-file".to_owned(),
        token.path().join("token").to_str().unwrap().to_owned(),
    ];
    args.extend(nats_sink(&urls, 1));
    args.extend(set(&["backend.max_backoff=\"1s\"".into()]));
    let observer = observer(&spool, &args);
    let load = Load::start("outage", Duration::from_millis(50));
    wait_metrics(
        &observer,
        "both sinks delivering",
        Duration::from_secs(30),
        |m| shipped(m, "nats") > 0.0 && shipped(m, "https") > 0.0,
    );

    cluster.kill(0);
    let down_at = Instant::now();
    let opened_at_outage = load.opened();
    // Down for 30 s: the HTTPS backend keeps getting every batch; NATS's wait in the spool.
    let mut during = None;
    while down_at.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_secs(5));
        let metrics = observer.scrape();
        metrics.assert_balanced();
        during = Some(metrics);
    }
    let during = during.unwrap();
    let delivered_https: std::collections::HashSet<String> = receiver
        .delivered_batches()
        .iter()
        .flat_map(|b| b.events())
        .filter_map(|e| e["path"].as_str().map(str::to_owned))
        .collect();
    let opened_during: Vec<String> = {
        let snapshot = load.paths_so_far();
        snapshot[opened_at_outage..snapshot.len().saturating_sub(40)].to_vec()
    };
    assert!(opened_during.len() > 300, "{} opened", opened_during.len());
    let not_over_https: Vec<&String> = opened_during
        .iter()
        .filter(|p| !delivered_https.contains(*p))
        .collect();
    assert!(
        not_over_https.is_empty(),
        "{} opens of the outage did not reach the HTTPS backend during it",
        not_over_https.len()
    );
    assert!(pending(&during, "nats") >= 10.0, "{}", during.0);
    assert!(pending(&during, "https") <= 2.0, "{}", during.0);
    assert_eq!(
        sink_value(&during, "zastava_runtime_sink_connected", "nats"),
        0.0
    );
    assert!(
        crate::errors(&during, "nats", "timeout") + crate::errors(&during, "nats", "connect") > 0.0,
        "{}",
        during.0
    );

    // Back: the spooled batches arrive, in order, each once.
    cluster.restart(0);
    let paths = load.finish();
    let last = paths.last().unwrap().clone();
    observer.wait_for("the last open in a closed batch", |e| {
        e["path"] == last.as_str()
    });
    wait_metrics(&observer, "NATS caught up", Duration::from_secs(60), |m| {
        pending(m, "nats") == 0.0 && pending(m, "https") == 0.0
    });
    let stopped = observer.stop();
    let stored = read_stream(&urls, &Auth::None, STREAM, "scanner");
    // Stored in the order they were made: stream sequence and batch number rise together.
    let numbers: Vec<(u64, u64)> = stored
        .iter()
        .map(|m| {
            let n = m.msg_id.rsplit_once('-').unwrap().1.parse().unwrap();
            (m.sequence, n)
        })
        .collect();
    assert!(
        numbers
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
        "{numbers:?}"
    );
    let on_bus = assert_exactly_once(&batches(&stored), &paths);
    let over_https: Vec<crate::BusBatch> = receiver
        .delivered_batches()
        .iter()
        .map(|r| crate::BusBatch {
            id: r.batch_id().to_owned(),
            events: r.events(),
            announced: r
                .events()
                .iter()
                .filter(|e| e["eventType"] == "edge")
                .map(|e| e["count"].as_u64().unwrap_or(1))
                .sum(),
        })
        .collect();
    assert_eq!(assert_exactly_once(&over_https, &paths), on_bus);
    assert_eq!(sink_account(&stopped.summary, "nats")["shipped"], on_bus);
    assert_eq!(sink_account(&stopped.summary, "https")["shipped"], on_bus);
    assert_eq!(stopped.summary["delivery"]["shipped"], on_bus);
}

#[test]
fn a_batch_sent_again_after_its_acknowledgement_was_lost_is_dropped_by_the_stream() {
    // The HTTPS backend refuses everything, so batches stay spooled after NATS took them.
    let cluster = Cluster::start(1, &Options::default());
    let urls = cluster.urls();
    let pki = Pki::generate();
    let receiver = Receiver::start(&pki, false);
    receiver.set_default(Some(Reply::Status(503)));
    let token = crate::common::TempDir::new("zastava-token");
    std::fs::write(token.path().join("token"), "s3cret").unwrap();
    let (_dir, spool) = spool_dir();
    let mut args = vec![
        "--backend".to_owned(),
        receiver.url.clone(),
        "--ca-file".to_owned(),
        pki.ca.to_str().unwrap().to_owned(),
        "--token-file".to_owned(),
        token.path().join("token").to_str().unwrap().to_owned(),
    ];
    args.extend(nats_sink(&urls, 1));
    args.extend(set(&["backend.max_backoff=\"1s\"".into()]));
    let first = observer(&spool, &args);
    let load = Load::start("resend", Duration::from_millis(20));
    std::thread::sleep(Duration::from_secs(2));
    let paths = load.finish();
    let last = paths.last().unwrap().clone();
    first.wait_for("the last open in a closed batch", |e| {
        e["path"] == last.as_str()
    });
    let metrics = wait_metrics(
        &first,
        "NATS has every batch",
        Duration::from_secs(30),
        |m| pending(m, "nats") == 0.0 && pending(m, "https") >= 2.0,
    );
    let spooled = pending(&metrics, "https");
    let stopped = first.stop();
    let first_shipped = sink_account(&stopped.summary, "nats")["shipped"]
        .as_u64()
        .unwrap();
    // What NATS will be sent again: every batch still spooled for HTTPS.
    let resent = sink_account(&stopped.summary, "https")["inFlightSpool"]
        .as_u64()
        .unwrap();
    assert!(resent > 0);

    // As if the process had died between NATS's acknowledgement and the cursor's update:
    // NATS's cursor back at the head.
    let head = std::fs::read_to_string(spool.join("head")).unwrap_or_else(|_| "0 0\n".into());
    std::fs::write(spool.join("cursor-nats"), head).unwrap();
    receiver.set_default(None);
    let second = observer(&spool, &args);
    let metrics = wait_metrics(
        &second,
        "both sinks settled the spool",
        Duration::from_secs(30),
        |m| pending(m, "nats") == 0.0 && pending(m, "https") == 0.0,
    );
    let duplicates = metrics
        .value(
            "zastava_runtime_sink_batches_total",
            "{sink=\"nats\",outcome=\"duplicate\"}",
        )
        .unwrap_or(0.0);
    assert!(
        duplicates >= spooled,
        "{duplicates} duplicates for {spooled} resent batches:\n{}",
        metrics.0
    );
    let stopped = second.stop();
    let stored = read_stream(&urls, &Auth::None, STREAM, "scanner");
    let on_bus = assert_exactly_once(&batches(&stored), &paths);
    // The resent batches count as delivered again by NATS (they were spooled for it), but
    // the stream holds them once.
    let second_shipped = sink_account(&stopped.summary, "nats")["shipped"]
        .as_u64()
        .unwrap();
    assert_eq!(on_bus, first_shipped + second_shipped - resent);
}
