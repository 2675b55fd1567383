//! `zastava-observer run`: connect to the container runtime, load and attach the probes,
//! then run the pipeline until a signal or the deadline, and account for every record.

use std::{
    io,
    path::PathBuf,
    time::{Duration, Instant},
};

use std::sync::{atomic::AtomicBool, Arc};

use aya::maps::{MapData, RingBuf};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use observer_common::Counter;
use tokio::{
    io::{
        unix::{AsyncFd, AsyncFdReadyMutGuard},
        Interest,
    },
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{info, warn};

use crate::{
    attribution::{AttributionConfig, Attributor, NamespaceFilter},
    backend::{BackendClient, BackendError},
    batch::Batcher,
    cgroups::{find_cgroup2_mount, CgroupMap},
    config::{Config, CriConfig},
    cri::{resolve_endpoint, CriClient, CriError, RuntimeVersion, DEFAULT_ENDPOINTS},
    delivery::Delivery,
    host::HostIdentity,
    pipeline::{CriStatus, Pipeline, Shipping, Stages},
    probes::{validate_ring_size, KernelCounters, ProbeConfig, ProbeError, Probes, PROBES_OBJECT},
    proctable::ProcessTable,
    server::{self, Endpoints},
    shipper::{Shipper, ShipperConfig},
    sink::{NdjsonSink, Output},
    spool::{Spool, SpoolError},
    summary::Summary,
    tracefs::{self, Tracefs, TracefsError},
    tracker::Tracker,
    watcher::{Watcher, WatcherConfig},
};

/// Records handled per wake-up before the loop checks for signals and timers again.
const DRAIN_BUDGET: usize = 64 * 1024;
/// How often held events are checked against their deadline, and the ring buffer is read
/// for records that came without a wakeup.
const ATTRIBUTION_TICK: Duration = Duration::from_millis(25);
const SWEEP_EVERY: Duration = Duration::from_secs(30);
const RESYNC_EVERY: Duration = Duration::from_secs(60);

/// What `run` needs besides the configuration.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config: Config,
    pub duration: Option<Duration>,
    pub stats_json: Option<PathBuf>,
    /// Report the daemon's own activity (diagnostics only).
    pub observe_self: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("{0}\n  set cri.endpoint (--cri-endpoint PATH) for another socket, or cri.enabled = false (--no-cri) to run without a container runtime")]
    Cri(#[source] CriError),
    #[error(
        "--namespace and --exclude-namespace need a container runtime to learn pods from, but {0}"
    )]
    FilterWithoutCri(&'static str),
    #[error("no cgroup v2 hierarchy is mounted; mount cgroup2 (or set observer.cgroup_root) to attribute events to containers")]
    NoCgroup2,
    #[error(
        "nothing to observe: zastava.attach.enabled is false and no container runtime is connected; set zastava.attach.enabled = true to observe the node's processes"
    )]
    NothingToObserve,
    #[error("cannot write events: {0}")]
    Output(#[source] io::Error),
    #[error("cannot watch the ring buffer: {0}")]
    Poll(#[source] io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signal(#[source] io::Error),
    #[error("{0}")]
    Backend(#[source] BackendError),
    #[error("{0}")]
    Spool(#[source] SpoolError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the summary to {path}: {source}")]
    StatsJson {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl RunError {
    /// 2 when the configuration cannot work on this node (restarting will not help; a
    /// service manager should stop trying), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::NothingToObserve | RunError::FilterWithoutCri(_) => 2,
            _ => 1,
        }
    }
}

/// Connects to the runtime if there is one. A runtime that was asked for (or whose socket
/// exists) but does not answer is an error: the operator must know attribution is off.
async fn connect_cri(options: &CriConfig) -> Result<Option<(CriClient, RuntimeVersion)>, RunError> {
    if !options.enabled {
        info!(
            "container runtime disabled (cri.enabled = false): events are attributed to the node"
        );
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

/// The Prometheus recorder behind `/metrics`; histograms get buckets suited to them.
fn install_metrics() -> PrometheusHandle {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("zastava_runtime_backend_latency_ms".into()),
            &[
                5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
            ],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("stella_runtime_events_lag_seconds".into()),
                &[0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0],
            )
        });
    let recorder = match builder {
        Ok(builder) => builder.build_recorder(),
        Err(err) => {
            warn!("metric buckets rejected ({err}); histograms are reported as summaries");
            PrometheusBuilder::new().build_recorder()
        }
    };
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        warn!("a metrics recorder is already installed; /metrics shows only the event account");
    }
    handle
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

/// Loads and attaches the probes; their ring buffer is returned separately.
fn start_probes(
    config: &Config,
    observe_self: bool,
) -> Result<(Probes, RingBuf<MapData>), RunError> {
    let (tracefs, mounted) = Tracefs::find_or_mount()?;
    if mounted {
        info!("mounted tracefs at {}", tracefs.root().display());
    }
    let offsets = tracefs::probe_offsets(&tracefs)?;
    let mut probes = Probes::load(
        PROBES_OBJECT,
        &ProbeConfig {
            ring_buffer_bytes: validate_ring_size(config.observer.ring_buffer_bytes)?,
            self_tgid: if observe_self { 0 } else { std::process::id() },
            offsets,
            filter_mode: namespace_filter(config).kernel_mode(),
            dedup_window_ns: u64::try_from(config.observer.kernel_dedup_window.as_nanos())
                .unwrap_or(u64::MAX),
        },
    )?;
    let ring = probes.take_ring()?;
    Ok((probes, ring))
}

fn namespace_filter(config: &Config) -> NamespaceFilter {
    NamespaceFilter {
        include: config.observer.namespaces.clone(),
        exclude: config.observer.exclude_namespaces.clone(),
    }
}

/// Waits until the ring buffer has records; never, without probes.
async fn ring_ready(
    ring: &mut Option<AsyncFd<RingBuf<MapData>>>,
) -> io::Result<AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match ring {
        Some(ring) => ring.readable_mut().await,
        None => std::future::pending().await,
    }
}

pub async fn run(options: RunOptions) -> Result<Summary, RunError> {
    let started = Instant::now();
    let config = &options.config;
    let host = HostIdentity::read(
        &config.observer.host_root,
        config.observer.node_name.as_deref(),
    );
    for warning in &host.warnings {
        warn!("{warning}");
    }
    let cgroup_root = match &config.observer.cgroup_root {
        Some(root) => root.clone(),
        None => {
            find_cgroup2_mount(&std::fs::read_to_string("/proc/self/mounts").unwrap_or_default())
                .ok_or(RunError::NoCgroup2)?
        }
    };
    let namespaces = namespace_filter(config);

    let metrics_handle = install_metrics();
    let (backend, spool) = if config.scanner.runtime.capture.enabled {
        let client = BackendClient::new(&config.backend).map_err(RunError::Backend)?;
        let spool = Spool::open(
            &config.spool.dir,
            config.spool.max_bytes,
            config.spool.when_full,
        )
        .map_err(RunError::Spool)?;
        if spool.stats().torn > 0 {
            warn!(
                "spool {}: {} damaged records from an earlier run were removed",
                config.spool.dir.display(),
                spool.stats().torn
            );
        }
        if !spool.is_empty() {
            info!(
                "spool {}: {} batches ({} events) from an earlier run will be sent first",
                config.spool.dir.display(),
                spool.len(),
                spool.pending_events()
            );
        }
        info!(
            "shipping to {}{}",
            config
                .backend
                .url
                .as_ref()
                .map(url::Url::as_str)
                .unwrap_or_default(),
            crate::shipper::EVENTS_PATH.trim_start_matches('/')
        );
        (Some(client), Some(spool))
    } else {
        (None, None)
    };

    let cri = connect_cri(&config.cri).await?;
    if namespaces.is_active() && cri.is_none() {
        return Err(RunError::FilterWithoutCri(if config.cri.enabled {
            "no runtime socket was found"
        } else {
            "cri.enabled is false"
        }));
    }
    if !config.zastava.attach.enabled && cri.is_none() {
        return Err(RunError::NothingToObserve);
    }

    let mut probes = if config.zastava.attach.enabled {
        Some(start_probes(config, options.observe_self)?)
    } else {
        info!("zastava.attach.enabled is false: the probes are not loaded; only container lifecycle is reported");
        None
    };
    // Open the output before attaching so a bad path fails before any event is produced.
    let sink = if config.ndjson.enabled {
        let ndjson = &config.ndjson;
        NdjsonSink::open(&Output::parse(
            &ndjson.path,
            ndjson.max_file_bytes,
            ndjson.max_files,
        ))
        .map_err(RunError::Output)?
    } else {
        NdjsonSink::to_writer(Box::new(io::sink()))
    };
    let (mut probes, ring) = match probes.take() {
        Some((mut probes, ring)) => {
            probes.attach()?;
            (Some(probes), Some(ring))
        }
        None => (None, None),
    };

    // Scan cgroups and /proc after attaching: whatever appears in between is seen by the
    // probes, the scan, or both, never by neither.
    let cgroups = CgroupMap::scan(&cgroup_root);
    let mut table = ProcessTable::new(&config.observer.proc_root);
    let seeded = table.seed();
    let attributor = Attributor::new(
        AttributionConfig {
            wait: config.observer.enrichment_wait,
            retention: config.observer.container_retention,
            cri: cri.is_some(),
            namespaces,
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
                    poll_interval: config.cri.poll_interval,
                    call_timeout: config.cri.timeout,
                    proc_root: config.observer.proc_root.clone(),
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
    let delivery = Arc::new(Delivery::new(spool));
    let (stop_shipper, shipper_stop) = watch::channel(None);
    let shipper = backend.map(|client| {
        let shipper = Shipper::new(
            client,
            Arc::clone(&delivery),
            ShipperConfig {
                max_backoff: config.backend.max_backoff,
                dead_letter: config.spool.dir.join("dead-letter.ndjson"),
            },
            shipper_stop,
        );
        tokio::spawn(shipper.run())
    });
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = config.metrics.addr {
        let bound = server::serve(
            addr,
            Endpoints {
                metrics: metrics_handle.clone(),
                delivery: Arc::clone(&delivery),
                spool_enabled: config.scanner.runtime.capture.enabled,
                ready: Arc::clone(&ready),
            },
        )
        .await
        .map_err(|source| RunError::Metrics { addr, source })?;
        info!("metrics on http://{bound}/metrics");
    }
    let mut pipeline = Pipeline::new(
        Stages {
            tracker: Tracker::new(table),
            attributor,
            batcher: Batcher::new(config.batch.clone()),
        },
        sink,
        host,
        run_id(),
        requests,
        cri_status,
        Shipping {
            delivery: Arc::clone(&delivery),
            backend: shipper.is_some(),
            max_label_values: config.metrics.max_label_values,
        },
    );

    let mut ring = match ring {
        // SAFETY: the ring buffer owns its fd, which stays open for the AsyncFd's lifetime.
        Some(ring) => Some(
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| RunError::Poll(io::Error::from(e)))?,
        ),
        None => None,
    };
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut attribution_tick = tokio::time::interval(ATTRIBUTION_TICK);
    attribution_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_sweep, mut last_resync) = (Instant::now(), Instant::now());
    let dedup_window_ns = if probes.is_some() {
        u64::try_from(config.observer.kernel_dedup_window.as_nanos()).unwrap_or(u64::MAX)
    } else {
        0
    };
    let mut reported = KernelCounters::default();

    info!(
        programs = probes.as_ref().map_or(0, Probes::attached),
        processes = seeded,
        cgroups = pipeline.attributor.cgroups().len(),
        ring_buffer_bytes = config.observer.ring_buffer_bytes,
        "observer ready"
    );
    server::set_ready(&ready, true);

    loop {
        tokio::select! {
            guard = ring_ready(&mut ring) => {
                let mut guard = guard.map_err(RunError::Poll)?;
                let handled = pipeline
                    .drain(guard.get_inner_mut(), DRAIN_BUDGET)
                    .map_err(RunError::Output)?;
                if handled < DRAIN_BUDGET {
                    guard.clear_ready();
                }
                if let Some(probes) = probes.as_mut() {
                    pipeline.apply_marks(probes);
                }
                pipeline.flush().map_err(RunError::Output)?;
            }
            update = updates_rx.recv(), if watching => match update {
                Some(update) => {
                    pipeline.on_update(update, probes.as_mut()).map_err(RunError::Output)?;
                    pipeline.flush().map_err(RunError::Output)?;
                }
                None => watching = false,
            },
            _ = attribution_tick.tick() => {
                // The probes wake the daemon per batch of records, not per record: what
                // came since the last wakeup is read here.
                if let Some(ring) = ring.as_mut() {
                    pipeline
                        .drain(ring.get_mut(), DRAIN_BUDGET)
                        .map_err(RunError::Output)?;
                    if let Some(probes) = probes.as_mut() {
                        pipeline.apply_marks(probes);
                    }
                }
                pipeline.on_tick().map_err(RunError::Output)?;
                pipeline.flush().map_err(RunError::Output)?;
            }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            () = sleep_until(deadline) => { info!("duration reached: shutting down"); break; }
            _ = tick.tick() => {
                if let Some(Ok(now)) = probes.as_ref().map(Probes::counters) {
                    warn_on_new_losses(&reported, &now);
                    pipeline.account_kernel(&now);
                    // Repeats of edges that went quiet are not left waiting for a report
                    // that may never come.
                    if dedup_window_ns > 0 && pipeline.repeats_held(&now) > 0 {
                        if let Some(Ok(entries)) = probes.as_ref().map(Probes::dedup_entries) {
                            pipeline.sweep_repeats(&entries, dedup_window_ns).map_err(RunError::Output)?;
                        }
                    }
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
    let mut counters = KernelCounters::default();
    if let (Some(probes), Some(ring)) = (probes.as_mut(), ring.as_mut()) {
        probes.detach();
        let ring = ring.get_mut();
        while pipeline
            .drain(ring, DRAIN_BUDGET)
            .map_err(RunError::Output)?
            > 0
        {}
        counters = probes.counters()?;
        warn_on_new_losses(&reported, &counters);
        pipeline.account_kernel(&counters);
        if dedup_window_ns > 0 {
            match probes.dedup_entries() {
                Ok(entries) => pipeline
                    .sweep_repeats(&entries, 0)
                    .map_err(RunError::Output)?,
                Err(err) => warn!("cannot read the repeats the kernel still holds: {err}"),
            }
            pipeline.reconcile_repeats(&counters);
        }
    }
    pipeline.finish().map_err(RunError::Output)?;
    server::set_ready(&ready, false);
    if let Some(shipper) = shipper {
        // Deliver what can be delivered within the grace period; the rest stays spooled
        // for the next start.
        let grace = config.backend.shutdown_grace;
        let _ = stop_shipper.send(Some(Instant::now() + grace));
        if tokio::time::timeout(grace + Duration::from_secs(1), shipper)
            .await
            .is_err()
        {
            warn!("the shipper did not stop within {grace:?}");
        }
    }

    let summary = Summary::new(
        started.elapsed().as_secs_f64(),
        &counters,
        &pipeline,
        delivery.snapshot(),
    );
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
