//! `zastava-observer run`: connect to the container runtime, load and attach the probes,
//! then run the pipeline until a signal or the deadline, and account for every record.

use std::{
    io,
    path::PathBuf,
    time::{Duration, Instant},
};

use observer_common::Counter;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{info, warn};

use crate::{
    attribution::{AttributionConfig, Attributor, NamespaceFilter},
    cgroups::{find_cgroup2_mount, CgroupMap},
    cri::{resolve_endpoint, CriClient, CriError, RuntimeVersion, DEFAULT_ENDPOINTS},
    host::HostIdentity,
    pipeline::{CriStatus, Pipeline},
    probes::{KernelCounters, ProbeConfig, ProbeError, Probes, PROBES_OBJECT},
    proctable::ProcessTable,
    sink::{NdjsonSink, Output},
    summary::Summary,
    tracefs::{self, Tracefs, TracefsError},
    tracker::Tracker,
    watcher::{Watcher, WatcherConfig},
};

/// Records handled per wake-up before the loop checks for signals and timers again.
const DRAIN_BUDGET: usize = 64 * 1024;
/// How often held events are checked against their deadline.
const ATTRIBUTION_TICK: Duration = Duration::from_millis(25);
const SWEEP_EVERY: Duration = Duration::from_secs(30);
const RESYNC_EVERY: Duration = Duration::from_secs(60);

/// How the daemon talks to the container runtime.
#[derive(Clone, Debug)]
pub struct CriOptions {
    pub enabled: bool,
    /// A socket path (or `unix://` URI); `None` probes the default sockets.
    pub endpoint: Option<String>,
    pub poll_interval: Duration,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub output: Output,
    pub duration: Option<Duration>,
    pub ring_buffer_bytes: u32,
    pub stats_json: Option<PathBuf>,
    /// Root of the host filesystem (for machine-id, os-release).
    pub host_root: PathBuf,
    /// The host's /proc.
    pub proc_root: PathBuf,
    /// The cgroup v2 mount; found in the mount table when `None`.
    pub cgroup_root: Option<PathBuf>,
    pub cri: CriOptions,
    /// How long an event of a not-yet-known container waits before it is sent `pending`.
    pub enrichment_wait: Duration,
    /// How long exited containers are remembered.
    pub retention: Duration,
    pub namespaces: NamespaceFilter,
    /// Report the daemon's own activity (diagnostics only).
    pub observe_self: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("{0}\n  pass --cri-endpoint PATH for another socket, or --no-cri to run without a container runtime")]
    Cri(#[source] CriError),
    #[error(
        "--namespace and --exclude-namespace need a container runtime to learn pods from, but {0}"
    )]
    FilterWithoutCri(&'static str),
    #[error("no cgroup v2 hierarchy is mounted; mount cgroup2 (or pass --cgroup-root) to attribute events to containers")]
    NoCgroup2,
    #[error("cannot write events: {0}")]
    Output(#[source] io::Error),
    #[error("cannot watch the ring buffer: {0}")]
    Poll(#[source] io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signal(#[source] io::Error),
    #[error("cannot write the summary to {path}: {source}")]
    StatsJson {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Connects to the runtime if there is one. A runtime that was asked for (or whose socket
/// exists) but does not answer is an error: the operator must know attribution is off.
async fn connect_cri(
    options: &CriOptions,
) -> Result<Option<(CriClient, RuntimeVersion)>, RunError> {
    if !options.enabled {
        info!("container runtime disabled (--no-cri): events are attributed to the node");
        return Ok(None);
    }
    let Some(socket) = resolve_endpoint(options.endpoint.as_deref()) else {
        info!(
            "no container runtime socket found (tried {}): events are attributed to the node",
            DEFAULT_ENDPOINTS.join(", ")
        );
        return Ok(None);
    };
    let (client, version) = CriClient::connect(&socket, options.timeout)
        .await
        .map_err(RunError::Cri)?;
    info!(
        "container runtime {} {} (CRI {}) at {}",
        version.name,
        version.version,
        version.api_version,
        socket.display()
    );
    Ok(Some((client, version)))
}

fn run_id() -> String {
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap_or_default();
    let hex: String = uuid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    if hex.len() == 12 {
        hex
    } else {
        format!("{:012x}", std::process::id())
    }
}

pub async fn run(options: RunOptions) -> Result<Summary, RunError> {
    let started = Instant::now();
    let (tracefs, mounted) = Tracefs::find_or_mount()?;
    if mounted {
        info!("mounted tracefs at {}", tracefs.root().display());
    }
    let offsets = tracefs::probe_offsets(&tracefs)?;
    let host = HostIdentity::read(&options.host_root);
    for warning in &host.warnings {
        warn!("{warning}");
    }
    let cgroup_root = match &options.cgroup_root {
        Some(root) => root.clone(),
        None => {
            find_cgroup2_mount(&std::fs::read_to_string("/proc/self/mounts").unwrap_or_default())
                .ok_or(RunError::NoCgroup2)?
        }
    };

    let cri = connect_cri(&options.cri).await?;
    if options.namespaces.is_active() && cri.is_none() {
        return Err(RunError::FilterWithoutCri(if options.cri.enabled {
            "no runtime socket was found"
        } else {
            "--no-cri was given"
        }));
    }

    let self_tgid = if options.observe_self {
        0
    } else {
        std::process::id()
    };
    let mut probes = Probes::load(
        PROBES_OBJECT,
        &ProbeConfig {
            ring_buffer_bytes: options.ring_buffer_bytes,
            self_tgid,
            offsets,
            filter_mode: options.namespaces.kernel_mode(),
        },
    )?;
    let ring = probes.take_ring()?;
    // Open the output before attaching so a bad path fails before any event is produced.
    let sink = NdjsonSink::open(&options.output).map_err(RunError::Output)?;
    probes.attach()?;

    // Scan cgroups and /proc after attaching: whatever appears in between is seen by the
    // probes, the scan, or both, never by neither.
    let cgroups = CgroupMap::scan(&cgroup_root);
    let mut table = ProcessTable::new(&options.proc_root);
    let seeded = table.seed();
    let attributor = Attributor::new(
        AttributionConfig {
            wait: options.enrichment_wait,
            retention: options.retention,
            cri: cri.is_some(),
            namespaces: options.namespaces.clone(),
        },
        cgroups,
    );

    let (updates_tx, mut updates_rx) = mpsc::channel(1024);
    let (requests_tx, requests_rx) = mpsc::channel(1024);
    let mut cri_status = CriStatus::default();
    let requests = match cri {
        Some((client, version)) => {
            cri_status = CriStatus {
                endpoint: Some(client.endpoint().to_owned()),
                runtime: Some(format!("{} {}", version.name, version.version)),
                connected: true,
                disconnects: 0,
            };
            let watcher = Watcher::new(
                WatcherConfig {
                    endpoint: client.endpoint().into(),
                    poll_interval: options.cri.poll_interval,
                    call_timeout: options.cri.timeout,
                    proc_root: options.proc_root.clone(),
                },
                client,
                updates_tx,
                requests_rx,
            );
            tokio::spawn(watcher.run());
            Some(requests_tx)
        }
        None => None,
    };
    let mut watching = requests.is_some();
    let mut pipeline = Pipeline::new(
        Tracker::new(table),
        attributor,
        sink,
        host,
        run_id(),
        requests,
        cri_status,
    );

    // SAFETY: the ring buffer owns its fd, which stays open for the AsyncFd's lifetime.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| RunError::Poll(io::Error::from(e)))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut attribution_tick = tokio::time::interval(ATTRIBUTION_TICK);
    attribution_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_sweep, mut last_resync) = (Instant::now(), Instant::now());
    let mut reported = KernelCounters::default();

    info!(
        programs = probes.attached(),
        processes = seeded,
        cgroups = pipeline.attributor.cgroups().len(),
        ring_buffer_bytes = options.ring_buffer_bytes,
        "observer ready"
    );

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(RunError::Poll)?;
                let handled = pipeline
                    .drain(guard.get_inner_mut(), DRAIN_BUDGET)
                    .map_err(RunError::Output)?;
                if handled < DRAIN_BUDGET {
                    guard.clear_ready();
                }
                pipeline.apply_marks(&mut probes);
                pipeline.flush().map_err(RunError::Output)?;
            }
            update = updates_rx.recv(), if watching => match update {
                Some(update) => {
                    pipeline.on_update(update, &mut probes).map_err(RunError::Output)?;
                    pipeline.apply_marks(&mut probes);
                    pipeline.flush().map_err(RunError::Output)?;
                }
                None => watching = false,
            },
            _ = attribution_tick.tick() => {
                pipeline.on_tick().map_err(RunError::Output)?;
                pipeline.flush().map_err(RunError::Output)?;
            }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            () = sleep_until(deadline) => { info!("duration reached: shutting down"); break; }
            _ = tick.tick() => {
                if let Ok(now) = probes.counters() {
                    warn_on_new_losses(&reported, &now);
                    reported = now;
                }
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    pipeline.tracker.table_mut().sweep();
                    last_sweep = Instant::now();
                }
                if last_resync.elapsed() >= RESYNC_EVERY {
                    pipeline.clock_mut().resync();
                    last_resync = Instant::now();
                }
            }
        }
    }

    // Stop producing, then take everything already submitted.
    probes.detach();
    let ring = ring.get_mut();
    while pipeline
        .drain(ring, DRAIN_BUDGET)
        .map_err(RunError::Output)?
        > 0
    {}
    pipeline.finish().map_err(RunError::Output)?;

    let counters = probes.counters()?;
    warn_on_new_losses(&reported, &counters);
    let summary = Summary::new(started.elapsed().as_secs_f64(), &counters, &pipeline);
    if let Some(path) = &options.stats_json {
        let json = serde_json::to_vec_pretty(&summary).map_err(io::Error::other);
        json.and_then(|bytes| std::fs::write(path, bytes))
            .map_err(|source| RunError::StatsJson {
                path: path.clone(),
                source,
            })?;
    }
    Ok(summary)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Losses are never silent: each second with new kernel-side drops logs a warning.
fn warn_on_new_losses(before: &KernelCounters, now: &KernelCounters) {
    let hints = [
        (
            Counter::RingFull,
            "the reader fell behind; consider a larger --ring-buffer-bytes",
        ),
        (
            Counter::PendingMapFull,
            "too many syscalls in flight at once",
        ),
    ];
    for (counter, hint) in hints {
        let new = now.total(counter).saturating_sub(before.total(counter));
        if new > 0 {
            warn!(
                "{new} events lost in the kernel ({}, total {}): {hint}",
                counter.name(),
                now.total(counter)
            );
        }
    }
}
