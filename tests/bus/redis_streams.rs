//! Redis Streams: the server SIGKILLed and restarted mid-run with its append-only file,
//! and the stream read back by a consumer group.

use std::time::Duration;

use crate::{
    assert_deployment, assert_exactly_once, deployment, errors, observer, pending,
    redis_harness::{connect, range, read_group, Entry, Options, Server},
    redis_sink, shipped, sink_account, spool_dir, wait_metrics, BusBatch, Load,
};

const STREAM: &str = "zastava.runtime.events";

pub(crate) fn batches(entries: &[Entry]) -> Vec<BusBatch> {
    entries
        .iter()
        .map(|e| {
            assert_eq!(e.schema_version, "1");
            assert_eq!(e.content_encoding, "gzip");
            assert_eq!(e.batch["batchId"].as_str(), Some(e.batch_id.as_str()));
            BusBatch {
                id: e.batch_id.clone(),
                events: e.events(),
                announced: e.events_field,
            }
        })
        .collect()
}

#[test]
fn redis_killed_and_restarted_mid_run_keeps_every_batch_once() {
    let mut server = Server::start(&Options::default());
    let (_dir, spool) = spool_dir();
    let mut args = redis_sink(&server.url());
    args.extend(deployment());
    let observer = observer(&spool, &args);
    let load = Load::start("redis", Duration::from_millis(20));
    wait_metrics(
        &observer,
        "batches in the stream",
        Duration::from_secs(30),
        |m| shipped(m, "redis") > 0.0,
    );

    // A crash with batches in flight: what Redis acknowledged is in its AOF.
    server.kill();
    wait_metrics(
        &observer,
        "the outage noticed",
        Duration::from_secs(30),
        |m| errors(m, "redis", "connect") > 0.0 && pending(m, "redis") >= 2.0,
    );
    server.restart();
    let after = shipped(&observer.scrape(), "redis");
    wait_metrics(
        &observer,
        "deliveries after the restart",
        Duration::from_secs(30),
        |m| shipped(m, "redis") > after,
    );
    let paths = load.finish();
    let last = paths.last().unwrap().clone();
    observer.wait_for("the last open in a closed batch", |e| {
        e["path"] == last.as_str()
    });
    wait_metrics(
        &observer,
        "every batch in the stream",
        Duration::from_secs(30),
        |m| pending(m, "redis") == 0.0,
    );
    let stopped = observer.stop();

    let mut redis = connect(&server.url(), None, None);
    let all = range(&mut redis, STREAM);
    let consumed = read_group(&mut redis, STREAM, "scanner", "scanner-0");
    assert_eq!(
        consumed.iter().map(|e| &e.id).collect::<Vec<_>>(),
        all.iter().map(|e| &e.id).collect::<Vec<_>>(),
        "the consumer group reads every entry, in order"
    );
    let pending_in_group: redis::streams::StreamPendingReply =
        redis::Commands::xpending(&mut redis, STREAM, "scanner").unwrap();
    assert_eq!(pending_in_group.count(), 0, "every entry acknowledged");
    let on_bus = assert_exactly_once(&batches(&all), &paths);
    for entry in &all {
        assert_deployment(&entry.batch);
    }
    assert_eq!(sink_account(&stopped.summary, "redis")["shipped"], on_bus);
    assert_eq!(stopped.summary["delivery"]["shipped"], on_bus);
    // Every batch id is remembered for the dedup window.
    let first = &all[0].batch_id;
    let remembered: Option<String> = redis::cmd("GET")
        .arg(format!("{STREAM}:batch:{first}"))
        .query(&mut redis)
        .unwrap();
    assert_eq!(remembered.as_deref(), Some(all[0].id.as_str()));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{STREAM}:batch:{first}"))
        .query(&mut redis)
        .unwrap();
    assert!(ttl > 0 && ttl <= 600_000, "{ttl}");
    assert!(
        server.log().contains("DB loaded from append only file")
            || server.log().contains("Reading the remaining AOF tail"),
        "{}",
        server.log()
    );
}
