//! Events per second into the event bus: batches as the observer makes them (2000 edge
//! events each, its default `batch.max_events`, every one with its own path, gzip-encoded
//! by the observer's own envelope code) are spooled, then one sink drains the spool through
//! the observer's own sink loop — each batch sent, acknowledged by the server, and the
//! cursor moved (fsync) before the next. Conditions, in the same run:
//!
//! - spool only: a sink that acknowledges at once (the ceiling of the loop and the spool);
//! - NATS JetStream, one server, stream R1;
//! - NATS JetStream, 3-node cluster on loopback, stream R3;
//! - Redis Streams, AOF with `appendfsync always` (what survives a crash), and `everysec`.
//!
//! Every server is Debian's, started privately on loopback. After each run the stream is
//! counted on the server, so a figure never stands for batches that did not arrive.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use serde_json::{json, Value};
use tokio::sync::watch;

use zastava::{
    output::{
        account::Unpublished,
        envelope::Envelope,
        sinks::{
            dead_letter::DeadLetter,
            nats::{NatsConfig, NatsSink},
            redis::{RedisConfig, RedisSink},
            Failure, Outcome, Sink, SinkTask,
        },
        spool::{Spool, SpoolEntry, WhenFull},
        Delivery,
    },
    record::HostIdentity,
};
use zastava_testing::{nats, redis};

#[derive(Parser)]
#[command(about = "Events per second into NATS JetStream and Redis Streams")]
struct Cli {
    /// Batches per condition.
    #[arg(long, default_value_t = 1000)]
    batches: usize,
    /// Edge events per batch.
    #[arg(long, default_value_t = 2000)]
    events: usize,
    /// A few batches only: shows every part works.
    #[arg(long)]
    smoke: bool,
    /// Print JSON instead of a Markdown table.
    #[arg(long)]
    json: bool,
}

/// Times every delivery of the sink it wraps, and when the first began.
struct Timed<S> {
    inner: S,
    latencies: Arc<Mutex<Vec<Duration>>>,
    first: Arc<Mutex<Option<Instant>>>,
}

impl<S: Sink> Sink for Timed<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn connect(&mut self) -> Result<(), Failure> {
        self.inner.connect().await
    }

    async fn deliver(&mut self, entry: &SpoolEntry) -> Outcome {
        let started = Instant::now();
        self.first.lock().unwrap().get_or_insert(started);
        let outcome = self.inner.deliver(entry).await;
        self.latencies.lock().unwrap().push(started.elapsed());
        outcome
    }
}

/// Acknowledges every batch at once.
struct Ack;

impl Sink for Ack {
    fn name(&self) -> &'static str {
        "null"
    }

    async fn connect(&mut self) -> Result<(), Failure> {
        Ok(())
    }

    async fn deliver(&mut self, _: &SpoolEntry) -> Outcome {
        Outcome::Delivered { duplicate: false }
    }
}

const PROGRAMS: [&str; 16] = [
    "nginx",
    "postgres",
    "java",
    "python3",
    "node",
    "redis-server",
    "envoy",
    "sh",
    "bash",
    "curl",
    "ls",
    "cat",
    "sleep",
    "grep",
    "awk",
    "sed",
];

/// `count` batches of `events` edge events with distinct paths, as the observer's
/// envelope encodes them.
fn make_batches(count: usize, events: usize) -> Result<Vec<SpoolEntry>> {
    let host = HostIdentity::read(Path::new("/"), None);
    let mut envelope = Envelope::new(&host, "bench");
    let mut batches = Vec::with_capacity(count);
    let mut n = 0u64;
    for _ in 0..count {
        let id = envelope.next_batch_id();
        envelope.open(&id)?;
        for _ in 0..events {
            n += 1;
            // 256 processes of 16 programs, each open its own path, time moving on.
            let program = PROGRAMS[(n % 16) as usize];
            let pid = 1000 + n % 256;
            let record = json!({
                "eventType": "edge", "eventId": format!("bench-{n}"), "edgeType": "fs",
                "timestamp": format!("2026-12-01T10:{:02}:{:02}.{:09}Z", n / 60_000_000 % 60, n / 1_000_000 % 60, n * 977 % 1_000_000_000),
                "node": host.node, "hostId": host.host_id, "osRelease": host.os_release,
                "workloadId": host.workload_id, "enrichment": "host",
                "cgroupId": 4000 + n % 64,
                "process": {"pid": pid, "tid": pid, "ppid": 1, "uid": n % 3 * 1000, "gid": 0,
                    "comm": program, "exe": format!("/usr/bin/{program}"),
                    "args": [program, "--serve", format!("/srv/{program}/{}.conf", n % 7)]},
                "syscall": "openat",
                "path": format!("/var/lib/{program}/{:x}/{n}.dat", n.wrapping_mul(2_654_435_761) % 4096),
                "flags": 0, "flagNames": ["O_RDONLY"], "result": 3 + n % 20,
            });
            envelope.push(&serde_json::to_vec(&record)?);
        }
        batches.push(SpoolEntry {
            batch_id: id,
            events: events as u64,
            records: events as u64,
            oldest_ns: 0,
            body: envelope.close()?,
        });
    }
    Ok(batches)
}

struct Figures {
    seconds: f64,
    latencies: Vec<Duration>,
}

/// Spools `batches`, then lets `sink` drain them; the time from its first delivery (once
/// connected: connecting and creating the stream are not timed) to the last settle.
async fn drain<S: Sink>(sink: S, batches: &[SpoolEntry]) -> Result<Figures> {
    let dir = zastava_testing::fresh_dir("zastava-bus-bench");
    let name = sink.name();
    let spool = Spool::open(&dir.join("spool"), 4 << 30, WhenFull::DropNewest, &[name])?;
    let delivery = Arc::new(Delivery::new(Some(spool)));
    for entry in batches {
        let update = Unpublished {
            seen: entry.events,
            ..Unpublished::default()
        };
        delivery.publish(update, Some(entry), 0);
    }
    if delivery.snapshot().spool_batches != batches.len() as u64 {
        bail!("the spool did not take every batch");
    }
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let first = Arc::new(Mutex::new(None));
    let timed = Timed {
        inner: sink,
        latencies: Arc::clone(&latencies),
        first: Arc::clone(&first),
    };
    let (stop, stopped) = watch::channel(None);
    let task = SinkTask::new(
        timed,
        0,
        Arc::clone(&delivery),
        Duration::from_secs(1),
        DeadLetter::in_dir(&dir, name),
        stopped,
    );
    let started = Instant::now();
    let handle = tokio::spawn(task.run());
    let deadline = started + Duration::from_secs(120);
    loop {
        let snapshot = delivery.snapshot();
        if snapshot.spool_batches == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{name}: {} batches still spooled after 120 s",
                snapshot.spool_batches
            );
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let seconds = first
        .lock()
        .unwrap()
        .map_or(started, |first| first)
        .elapsed()
        .as_secs_f64();
    let snapshot = delivery.snapshot();
    if !snapshot.balanced() || snapshot.shipped != batches.iter().map(|b| b.events).sum::<u64>() {
        bail!("{name}: the account does not show every event shipped: {snapshot:?}");
    }
    let _ = stop.send(Some(Instant::now()));
    handle.await?;
    let _ = std::fs::remove_dir_all(&dir);
    let latencies = latencies.lock().unwrap().clone();
    Ok(Figures { seconds, latencies })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn nats_config(urls: Vec<String>, replicas: usize) -> NatsConfig {
    let mut config = NatsConfig {
        enabled: true,
        servers: urls,
        ..NatsConfig::default()
    };
    config.stream.create = true;
    config.stream.replicas = replicas;
    config
}

/// Messages in the stream, as the server counts them.
async fn stream_messages(urls: &[String]) -> Result<u64> {
    let addrs: Vec<async_nats::ServerAddr> = urls.iter().filter_map(|u| u.parse().ok()).collect();
    let client = async_nats::connect(addrs).await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("ZASTAVA_RUNTIME_EVENTS").await?;
    Ok(stream.info().await?.state.messages)
}

fn redis_entries(url: &str) -> Result<u64> {
    let mut connection = ::redis::Client::open(url)?.get_connection()?;
    Ok(::redis::cmd("XLEN")
        .arg("zastava.runtime.events")
        .query(&mut connection)?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let (count, events) = if cli.smoke {
        (5, 200)
    } else {
        (cli.batches, cli.events)
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    eprintln!("zastava-bus-bench: making {count} batches of {events} events");
    let batches = make_batches(count, events)?;
    let body_bytes: usize = batches.iter().map(|b| b.body.len()).sum();
    let mut rows: Vec<(String, Figures)> = Vec::new();

    eprintln!("zastava-bus-bench: spool only");
    rows.push((
        "spool only (acknowledged at once)".into(),
        drain(Ack, &batches).await?,
    ));

    for (label, size) in [
        ("NATS JetStream R1 (one server)", 1),
        ("NATS JetStream R3 (3-node cluster)", 3),
    ] {
        eprintln!("zastava-bus-bench: {label}");
        let cluster = nats::Cluster::start(size, &nats::Options::default());
        let urls = cluster.urls();
        let figures = drain(NatsSink::new(nats_config(urls.clone(), size)), &batches).await?;
        let stored = stream_messages(&urls).await.context("count the stream")?;
        if stored != count as u64 {
            bail!("{label}: {stored} messages in the stream, {count} sent");
        }
        rows.push((label.into(), figures));
    }

    for (label, every_second) in [
        ("Redis Streams, appendfsync always", false),
        ("Redis Streams, appendfsync everysec", true),
    ] {
        eprintln!("zastava-bus-bench: {label}");
        let server = redis::Server::start(&redis::Options {
            fsync_every_second: every_second,
            ..redis::Options::default()
        });
        let config = RedisConfig {
            enabled: true,
            url: server.url(),
            ..RedisConfig::default()
        };
        let figures = drain(RedisSink::new(config), &batches).await?;
        let stored = redis_entries(&server.url())?;
        if stored != count as u64 {
            bail!("{label}: {stored} entries in the stream, {count} sent");
        }
        rows.push((label.into(), figures));
    }

    let total_events = (count * events) as f64;
    let baseline = rows[0].1.seconds;
    let report: Vec<Value> = rows
        .iter_mut()
        .map(|(label, figures)| {
            figures.latencies.sort_unstable();
            json!({
                "condition": label,
                "seconds": figures.seconds,
                "eventsPerSecond": total_events / figures.seconds,
                "batchesPerSecond": count as f64 / figures.seconds,
                "megabytesPerSecond": body_bytes as f64 / 1e6 / figures.seconds,
                "xSpoolOnly": figures.seconds / baseline,
                "latencyP50Ms": percentile(&figures.latencies, 0.5),
                "latencyP99Ms": percentile(&figures.latencies, 0.99),
            })
        })
        .collect();
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"batches": count, "eventsPerBatch": events, "bodyBytes": body_bytes, "conditions": report})
            )?
        );
        return Ok(());
    }
    println!(
        "{count} batches × {events} events ({:.1} MB gzip-encoded, {:.0} bytes/event):\n",
        body_bytes as f64 / 1e6,
        body_bytes as f64 / total_events
    );
    println!(
        "| sink | events/s | batches/s | MB/s | × spool-only time | send → ack p50 / p99 ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for row in &report {
        println!(
            "| {} | {:.0} | {:.0} | {:.1} | {:.2} | {:.2} / {:.2} |",
            row["condition"].as_str().unwrap_or_default(),
            row["eventsPerSecond"].as_f64().unwrap_or(0.0),
            row["batchesPerSecond"].as_f64().unwrap_or(0.0),
            row["megabytesPerSecond"].as_f64().unwrap_or(0.0),
            row["xSpoolOnly"].as_f64().unwrap_or(0.0),
            row["latencyP50Ms"].as_f64().unwrap_or(0.0),
            row["latencyP99Ms"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(())
}
