//! Pipeline throughput on one core: ring buffer records, built in memory exactly as the
//! probes write them, go through decode → track → attribute → batch (sort, merge) → JSON →
//! NDJSON file, on this thread alone. Each stage is also timed on its own over the same
//! records, so the report shows where the time goes.
//!
//! The records describe `--processes` processes spread over `--containers` containers the
//! runtime has described (so every edge is fully attributed): 80% opens, 15% connects, 5%
//! execs. `--paths distinct` gives every open its own path (nothing merges in a batch: the
//! most JSON); `--paths repeating` cycles 16 paths per process (repeats merge).
//!
//! `--sink backend` also builds each batch's envelope and compresses it, as the daemon
//! does when it spools batches for the backend and the event buses.
//!
//! `--held N` measures memory instead: N edge records that are all newer than the reorder
//! window go in and are held, as in a storm of new edges; the heap they take (every
//! allocation of this program is counted) and the resident set are reported per record,
//! and the peak heap while all of them are then released and written.

use std::{
    collections::BTreeMap,
    hint::black_box,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};
use serde_json::json;

use observer_common::identity::{DigestKind, PodRef};
use zastava::{
    kernel::{decode, BootClock},
    output::{
        ndjson::{NdjsonSink, Output},
        Delivery,
    },
    pipeline::{
        batch::{BatchConfig, Batcher},
        Pipeline, RuntimeStatuses, Shipping, Stages,
    },
    process::{ProcessTable, Tracker},
    record::{ContainerInfo, ContainerState, HostIdentity, ImageInfo, PodInfo},
    workload::{watcher::Update, AttributionConfig, Attributor, CgroupMap, NamespaceFilter},
};
use zastava_bench::counting_alloc::{Counting, LIVE, PEAK};
use zastava_testing::records::{sockaddr_in, Task};

#[derive(Parser)]
#[command(about = "Events per second through the observer's pipeline on one core")]
struct Cli {
    /// Edge records per repetition.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    #[arg(long, default_value_t = 256)]
    processes: u32,
    #[arg(long, default_value_t = 16)]
    containers: u32,
    #[arg(long, value_enum, default_value_t = Paths::Distinct)]
    paths: Paths,
    /// Where closed batches go besides the NDJSON file.
    #[arg(long, value_enum, default_value_t = Sink::Ndjson)]
    sink: Sink,
    /// Measure the memory of this many held records instead of throughput.
    #[arg(long)]
    held: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Sink {
    /// The NDJSON file only.
    Ndjson,
    /// The NDJSON file and the compressed batch envelope for the backend.
    Backend,
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Paths {
    Distinct,
    Repeating,
}

/// Time between two held records (`--held`).
const HELD_SPACING_NS: u64 = 4_000;

/// Records handled between two `end_drain` calls, as the daemon's drain budget.
const DRAIN: usize = 256;
/// Records between two batcher polls (the daemon polls on a timer).
const TICK: usize = 8192;

fn main() -> Result<()> {
    let cli = Cli::parse();
    pin_to_one_cpu();
    if let Some(n) = cli.held {
        return held(&cli, n);
    }
    let world = World::new(&cli, cli.events, false);
    let dir = std::env::temp_dir().join(format!("zastava-pipeline-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut bytes = 0u64;
    for _ in 0..cli.reps.max(1) {
        samples
            .entry("decode")
            .or_default()
            .push(time(|| decode_only(&world)));
        samples
            .entry("decode+track")
            .or_default()
            .push(time(|| track_only(&world)));
        let path = dir.join("events.ndjson");
        let (seconds, written) = full_pipeline(&world, &path, cli.sink)?;
        samples.entry("full").or_default().push(seconds);
        bytes = written;
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let edges = world.edges as f64;
    let rates: BTreeMap<&str, f64> = samples
        .iter()
        .map(|(stage, s)| (*stage, edges / median(s)))
        .collect();
    if cli.json {
        println!(
            "{}",
            json!({
                "events": world.edges,
                "records": world.records.len(),
                "paths": match cli.paths { Paths::Distinct => "distinct", Paths::Repeating => "repeating" },
                "sink": match cli.sink { Sink::Ndjson => "ndjson", Sink::Backend => "backend" },
                "ndjsonBytes": bytes,
                "eventsPerSecond": rates,
            })
        );
    } else {
        println!(
            "{} edge records ({} records with forks), {} NDJSON bytes per run{}; median of {}:",
            world.edges,
            world.records.len(),
            bytes,
            match cli.sink {
                Sink::Ndjson => "",
                Sink::Backend => ", and compressed envelopes",
            },
            cli.reps.max(1)
        );
        for stage in ["decode", "decode+track", "full"] {
            println!("  {stage:<14} {:>12.0} events/s", rates[stage]);
        }
    }
    Ok(())
}

/// The run is about one core: keep it on the one it starts on.
fn pin_to_one_cpu() {
    // SAFETY: sched_getcpu/sched_setaffinity on this thread with a zeroed, then filled,
    // cpu set.
    unsafe {
        let cpu = libc::sched_getcpu();
        if cpu >= 0 {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

fn time(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// The records, and what the pipeline must know to attribute them.
struct World {
    records: Vec<Vec<u8>>,
    edges: usize,
    cgroups: Vec<(u64, String)>,
    containers: Vec<Arc<ContainerInfo>>,
}

impl World {
    /// `events` edge records; `recent` ones are newer than the reorder window (they are
    /// held), else all are older than it (batches close on size).
    fn new(cli: &Cli, events: usize, recent: bool) -> Self {
        let containers: Vec<Arc<ContainerInfo>> = (0..cli.containers.max(1))
            .map(|c| {
                let pod = Arc::new(PodInfo::new(
                    format!("{:064x}", 0xa000_0000u64 + u64::from(c)),
                    PodRef {
                        name: format!("shop-{c}"),
                        namespace: "bench".into(),
                        uid: format!("0000-pod-{c}"),
                        labels: [("stellaops.workload/id".to_owned(), format!("shop-{c}"))]
                            .into_iter()
                            .collect(),
                    },
                ));
                Arc::new(ContainerInfo {
                    id: format!("{:064x}", 0xc000_0000u64 + u64::from(c)),
                    name: "app".into(),
                    pod,
                    image: ImageInfo {
                        reference: "registry.example/shop/app:1.4".into(),
                        digest: Some(format!("sha256:{:064x}", 0xd000 + c)),
                        digest_kind: DigestKind::Manifest,
                    },
                    state: ContainerState::Running,
                    started_at_ns: 1,
                    finished_at_ns: 0,
                    exit_code: None,
                    init_pid: None,
                    entrypoint: None,
                    entrypoint_code_id: None,
                })
            })
            .collect();
        let cgroups: Vec<(u64, String)> = containers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let id = 10_000 + i as u64;
                let path = format!("/kubepods/besteffort/pod{}/{}", c.pod.pod.uid, c.id);
                (id, path)
            })
            .collect();

        let start_ns = if recent {
            BootClock::boot_now_ns()
        } else {
            BootClock::boot_now_ns().saturating_sub(120_000_000_000)
        };
        let processes = cli.processes.max(1);
        let tasks: Vec<Task> = (0..processes)
            .map(|p| {
                let cgroup = cgroups[(p % cgroups.len() as u32) as usize].0;
                Task::new(500_000 + p, cgroup, "app-server")
            })
            .collect();
        let parent = Task::new(400_000, cgroups[0].0, "containerd-shim");
        let mut records = Vec::with_capacity(events + tasks.len());
        for task in &tasks {
            records.push(parent.fork(start_ns, task.tgid));
        }
        // Held records arrive as in a storm of 250 000 new edges a second, so they fill the
        // batcher's time buckets as such a storm does.
        let spacing_ns = if recent { HELD_SPACING_NS } else { 100 };
        for i in 0..events {
            let task = &tasks[i % tasks.len()];
            let at = start_ns + 1_000 + i as u64 * spacing_ns;
            let record = match i % 20 {
                0 => task.exec(
                    at,
                    b"/usr/local/bin/app-server",
                    &[
                        b"app-server",
                        b"--config=/etc/app/config.yaml",
                        b"--port=8080",
                    ],
                    observer_common::EXEC_SMALL_TAIL,
                ),
                1..=3 => task.connect(
                    at,
                    &sockaddr_in([10, 96, (i % 7) as u8, (i % 250) as u8], 5432),
                    0,
                ),
                _ => {
                    let path = match cli.paths {
                        Paths::Distinct => format!("/var/lib/app/cache/{i:09}.blob"),
                        Paths::Repeating => format!("/etc/app/conf.d/{:02}.yaml", i % 16),
                    };
                    task.open(at, path.as_bytes(), 7, libc::O_RDONLY as u32)
                }
            };
            records.push(record);
        }
        World {
            records,
            edges: events,
            cgroups,
            containers,
        }
    }

    fn empty_proc_root() -> std::path::PathBuf {
        // Processes are made known by their fork records; nothing is read from /proc.
        std::env::temp_dir().join("zastava-pipeline-bench-no-proc")
    }
}

fn decode_only(world: &World) {
    for record in &world.records {
        let _ = black_box(decode(black_box(record)));
    }
}

fn track_only(world: &World) {
    let mut tracker = Tracker::new(ProcessTable::new(World::empty_proc_root()));
    for record in &world.records {
        if let Ok(event) = decode(record) {
            black_box(tracker.handle(&event));
        }
    }
}

/// The daemon's pipeline over `world`'s containers, writing NDJSON to `path` (and, for
/// `Sink::Backend`, building and compressing each batch's envelope).
fn build_pipeline(
    world: &World,
    path: &std::path::Path,
    sink: Sink,
    batch: BatchConfig,
) -> Result<(Pipeline, Arc<Delivery>)> {
    let mut cgroups = CgroupMap::default();
    for (id, path) in &world.cgroups {
        cgroups.insert(*id, path.clone());
    }
    let attributor = Attributor::new(
        AttributionConfig {
            wait: Duration::from_millis(500),
            retention: Duration::from_secs(60),
            cri: true,
            namespaces: NamespaceFilter::default(),
        },
        cgroups,
    );
    let ndjson = NdjsonSink::open(&Output::File {
        path: path.to_owned(),
        max_bytes: u64::MAX,
        keep: 1,
    })
    .context("open the NDJSON file")?;
    let delivery = Arc::new(Delivery::new(None));
    let mut pipeline = Pipeline::new(
        Stages {
            tracker: Tracker::new(ProcessTable::new(World::empty_proc_root())),
            attributor,
            batcher: Batcher::new(batch),
        },
        ndjson,
        HostIdentity::read(std::path::Path::new("/"), None),
        "bench".into(),
        None,
        RuntimeStatuses::default(),
        Shipping {
            delivery: Arc::clone(&delivery),
            // Without a spool, a spooled batch is encoded and compressed, then counted
            // shipped: the envelope's cost without the disk's.
            spooled: sink == Sink::Backend,
            max_label_values: 64,
        },
    );
    for container in &world.containers {
        pipeline.on_update(Update::Pod(Arc::clone(&container.pod)), None)?;
        pipeline.on_update(Update::Container(Arc::clone(container)), None)?;
    }
    Ok((pipeline, delivery))
}

/// The whole pipeline into an NDJSON file; returns the seconds taken and the bytes written.
fn full_pipeline(world: &World, path: &std::path::Path, sink: Sink) -> Result<(f64, u64)> {
    let (mut pipeline, delivery) = build_pipeline(world, path, sink, BatchConfig::default())?;

    let start = Instant::now();
    let now = Instant::now();
    for (i, record) in world.records.iter().enumerate() {
        pipeline.handle_record(record, now)?;
        if (i + 1) % DRAIN == 0 {
            pipeline.end_drain()?;
        }
        if (i + 1) % TICK == 0 {
            pipeline.on_tick()?;
        }
    }
    pipeline.end_drain()?;
    pipeline.finish()?;
    let seconds = start.elapsed().as_secs_f64();

    let written = pipeline.stats().written;
    let shipped = delivery.lock().ledger.shipped;
    anyhow::ensure!(
        written.edge_occurrences == world.edges as u64 && shipped == world.edges as u64,
        "the pipeline lost events: {} edges in, {} written, {shipped} accounted shipped",
        world.edges,
        written.edge_occurrences
    );
    let bytes = std::fs::metadata(path)?.len();
    Ok((seconds, bytes))
}

/// Held records' memory: heap and resident set per record while held, and the peak heap
/// while the tick after the reorder window releases and writes them.
fn held(cli: &Cli, n: usize) -> Result<()> {
    let world = World::new(cli, n, true);
    let dir = std::env::temp_dir().join(format!("zastava-held-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("events.ndjson");
    let config = BatchConfig {
        max_held_events: usize::MAX,
        ..BatchConfig::default()
    };
    let (mut pipeline, delivery) = build_pipeline(&world, &path, cli.sink, config)?;
    // Warm up: the process table and the containers are known before anything is counted.
    let forks = world.records.len() - world.edges;
    let now = Instant::now();
    for record in &world.records[..forks] {
        pipeline.handle_record(record, now)?;
    }
    pipeline.end_drain()?;
    let (heap_before, rss_before) = (LIVE.load(Relaxed), rss_bytes());
    for (i, record) in world.records[forks..].iter().enumerate() {
        pipeline.handle_record(record, now)?;
        if (i + 1) % DRAIN == 0 {
            pipeline.end_drain()?;
        }
    }
    pipeline.end_drain()?;
    let (heap_held, rss_held) = (LIVE.load(Relaxed), rss_bytes());
    let held_edges = delivery.lock().ledger.in_pipeline;
    anyhow::ensure!(
        held_edges == world.edges as u64,
        "{held_edges} of {} records held",
        world.edges
    );
    // Once the reorder window has passed, a tick releases them all, a batch at a time, as
    // in the daemon.
    let newest = Duration::from_nanos(n as u64 * HELD_SPACING_NS);
    std::thread::sleep(BatchConfig::default().reorder_window + newest + Duration::from_millis(300));
    PEAK.store(heap_held, Relaxed);
    pipeline.on_tick()?;
    let peak = PEAK.load(Relaxed);
    pipeline.finish()?;
    let shipped = delivery.lock().ledger.shipped;
    anyhow::ensure!(shipped == world.edges as u64, "{shipped} shipped");
    let _ = std::fs::remove_dir_all(&dir);

    #[allow(clippy::cast_precision_loss, reason = "byte counts fit an f64")]
    let per = |bytes: usize| bytes as f64 / n as f64;
    let heap = heap_held.saturating_sub(heap_before);
    let rss = rss_held.saturating_sub(rss_before);
    let release = peak.saturating_sub(heap_before);
    if cli.json {
        println!(
            "{}",
            json!({
                "held": n,
                "heapBytesPerRecord": per(heap),
                "rssBytesPerRecord": per(rss),
                "peakHeapBytesPerRecordWhileReleasing": per(release),
            })
        );
    } else {
        println!("{n} held edge records:");
        println!(
            "  heap while held        {:>8.0} bytes/record ({} MiB)",
            per(heap),
            heap >> 20
        );
        println!(
            "  resident set growth    {:>8.0} bytes/record ({} MiB)",
            per(rss),
            rss >> 20
        );
        println!(
            "  peak heap, releasing   {:>8.0} bytes/record ({} MiB)",
            per(release),
            release >> 20
        );
    }
    Ok(())
}

/// `VmRSS` of this process.
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
