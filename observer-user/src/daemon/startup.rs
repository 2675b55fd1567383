//! Start-up, in the order that loses nothing: connect to the container runtime (so a
//! runtime that was asked for but does not answer fails before anything is attached), load
//! the probes, open the output, attach, then scan cgroups and /proc — after attaching, so
//! whatever starts in between is seen by the probes, the scan, or both — and start the
//! watcher, the shipper and the metrics endpoint.

use std::{
    io,
    path::Path,
    sync::{atomic::AtomicBool, Arc},
};

use aya::maps::{MapData, RingBuf};
use metrics_exporter_prometheus::PrometheusHandle;
use observer_common::KernelOffsets;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{info, warn};
use zastava_platform::{
    backend::BackendClient,
    metrics::{self, Binary},
};

use super::{RunError, RunOptions, Running};
use crate::{
    config::{Config, CriConfig, KernelView},
    kernel::{
        btf::{self, VMLINUX_BTF},
        probes::{validate_ring_size, ProbeConfig, PROBES_OBJECT},
        tracefs::{self, Tracefs},
        KernelCounters, Probes,
    },
    ops::server::{self, Endpoints},
    output::{
        ndjson::{NdjsonSink, Output},
        shipper::{Shipper, ShipperConfig, EVENTS_PATH},
        spool::Spool,
        Delivery,
    },
    pipeline::{batch::Batcher, CriStatus, Pipeline, Shipping, Stages},
    process::{ProcessTable, Tracker},
    record::HostIdentity,
    workload::{
        cgroups::find_cgroup2_mount,
        cri::{resolve_endpoint, CriClient, RuntimeVersion, DEFAULT_ENDPOINTS},
        watcher::{Watcher, WatcherConfig},
        AttributionConfig, Attributor, CgroupMap, NamespaceFilter,
    },
};

pub(super) async fn start(options: &RunOptions) -> Result<Running, RunError> {
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
    let metrics_handle = install_metrics();
    let (backend, spool) = open_delivery(config)?;

    let cri = connect_cri(&config.cri).await?;
    check_observable(config, cri.is_some())?;
    let loaded = if config.zastava.attach.enabled {
        Some(load_probes(config, options.observe_self)?)
    } else {
        info!("zastava.attach.enabled is false: the probes are not loaded; only container lifecycle is reported");
        None
    };
    // Open the output before attaching so a bad path fails before any event is produced.
    let sink = open_ndjson(config)?;
    let (probes, ring) = match loaded {
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
            namespaces: namespace_filter(config),
        },
        cgroups,
    );
    let (updates, requests, cri_status) = match cri {
        Some((client, version)) => {
            let (updates, requests, status) = start_watcher(config, client, &version);
            (Some(updates), Some(requests), status)
        }
        None => (None, None, CriStatus::default()),
    };
    let delivery = Arc::new(Delivery::new(spool));
    if let Some(authority) = backend.as_ref().and_then(BackendClient::authority) {
        let addr = config.admin.addr;
        let bound = server::serve_admin(addr, Arc::clone(authority))
            .await
            .map_err(|source| RunError::Admin { addr, source })?;
        info!("admin endpoint on http://{bound}/invalidate-op-token");
    }
    let shipper = backend.map(|client| start_shipper(config, client, &delivery));
    let ready = Arc::new(AtomicBool::new(false));
    serve_metrics(config, metrics_handle, &delivery, &ready).await?;

    let pipeline = Pipeline::new(
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
    let ring = match ring {
        // SAFETY: the ring buffer owns its fd, which stays open for the AsyncFd's lifetime.
        Some(ring) => Some(
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| RunError::Poll(io::Error::from(e)))?,
        ),
        None => None,
    };
    let dedup_window_ns = if probes.is_some() {
        u64::try_from(config.observer.kernel_dedup_window.as_nanos()).unwrap_or(u64::MAX)
    } else {
        0
    };
    // Before the daemon says it is ready: a signal from then on stops it cleanly.
    let sigint = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let sigterm = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    info!(
        programs = probes.as_ref().map_or(0, Probes::attached),
        kernel_view = probes.as_ref().is_some_and(Probes::kernel_view),
        processes = seeded,
        cgroups = pipeline.stats().cgroups,
        ring_buffer_bytes = config.observer.ring_buffer_bytes,
        "observer ready"
    );
    server::set_ready(&ready, true);
    Ok(Running {
        pipeline,
        probes,
        ring,
        updates,
        delivery,
        shipper,
        ready,
        dedup_window_ns,
        shutdown_grace: config.backend.shutdown_grace,
        reported: KernelCounters::default(),
        sigint,
        sigterm,
    })
}

/// The Prometheus recorder behind `/metrics`, with the observer's histogram buckets.
fn install_metrics() -> PrometheusHandle {
    let (handle, installed) = metrics::install(Binary::Observer);
    if !installed {
        warn!("a metrics recorder is already installed; /metrics shows only the event account");
    }
    handle
}

/// With a backend: its client and the spool batches wait in for it.
fn open_delivery(config: &Config) -> Result<(Option<BackendClient>, Option<Spool>), RunError> {
    if !config.scanner.runtime.capture.enabled {
        return Ok((None, None));
    }
    let client =
        BackendClient::new(&config.backend, &config.authority).map_err(RunError::Backend)?;
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
        EVENTS_PATH.trim_start_matches('/')
    );
    Ok((Some(client), Some(spool)))
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

/// Refuses configurations that would observe nothing, or filter without knowing pods.
fn check_observable(config: &Config, cri: bool) -> Result<(), RunError> {
    if namespace_filter(config).is_active() && !cri {
        return Err(RunError::FilterWithoutCri(if config.cri.enabled {
            "no runtime socket was found"
        } else {
            "cri.enabled is false"
        }));
    }
    if !config.zastava.attach.enabled && !cri {
        return Err(RunError::NothingToObserve);
    }
    Ok(())
}

/// Loads the probes (not attached yet); their ring buffer is returned separately.
fn load_probes(
    config: &Config,
    observe_self: bool,
) -> Result<(Probes, RingBuf<MapData>), RunError> {
    let (tracefs, mounted) = Tracefs::find_or_mount()?;
    if mounted {
        info!("mounted tracefs at {}", tracefs.root().display());
    }
    let offsets = tracefs::probe_offsets(&tracefs)?;
    let kernel = kernel_offsets(config.observer.kernel_view)?;
    let mut probes = Probes::load(
        PROBES_OBJECT,
        &ProbeConfig {
            ring_buffer_bytes: validate_ring_size(config.observer.ring_buffer_bytes)?,
            self_tgid: if observe_self { 0 } else { std::process::id() },
            offsets,
            filter_mode: namespace_filter(config).kernel_mode(),
            dedup_window_ns: u64::try_from(config.observer.kernel_dedup_window.as_nanos())
                .unwrap_or(u64::MAX),
            kernel,
        },
    )?;
    let ring = probes.take_ring()?;
    Ok((probes, ring))
}

/// The struct offsets of the kernel view, as `observer.kernel_view` asks.
fn kernel_offsets(view: KernelView) -> Result<Option<KernelOffsets>, RunError> {
    if view == KernelView::Off {
        warn!("observer.kernel_view = off: paths, argv and addresses come from the caller's memory, and edges say so");
        return Ok(None);
    }
    match btf::resolve(Path::new(VMLINUX_BTF)) {
        Ok(resolved) => {
            info!(
                members = resolved.members.len(),
                "kernel view: struct offsets from {VMLINUX_BTF}"
            );
            Ok(Some(resolved.offsets))
        }
        Err(err) if view == KernelView::Auto => {
            warn!("{err}: running without the kernel view; paths, argv and addresses come from the caller's memory, and edges say so (`zastava-observer doctor` explains)");
            Ok(None)
        }
        Err(err) => Err(RunError::KernelView(err)),
    }
}

fn namespace_filter(config: &Config) -> NamespaceFilter {
    NamespaceFilter {
        include: config.observer.namespaces.clone(),
        exclude: config.observer.exclude_namespaces.clone(),
    }
}

fn open_ndjson(config: &Config) -> Result<NdjsonSink, RunError> {
    if !config.ndjson.enabled {
        return Ok(NdjsonSink::to_writer(Box::new(io::sink())));
    }
    let ndjson = &config.ndjson;
    NdjsonSink::open(&Output::parse(
        &ndjson.path,
        ndjson.max_file_bytes,
        ndjson.max_files,
    ))
    .map_err(RunError::Output)
}

/// Starts the runtime watcher task: its updates, where to send it lookups, and the
/// connection as the summary reports it.
fn start_watcher(
    config: &Config,
    client: CriClient,
    version: &RuntimeVersion,
) -> (
    mpsc::Receiver<crate::workload::watcher::Update>,
    mpsc::Sender<String>,
    CriStatus,
) {
    let (updates_tx, updates_rx) = mpsc::channel(1024);
    let (requests_tx, requests_rx) = mpsc::channel(1024);
    let status = CriStatus {
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
    (updates_rx, requests_tx, status)
}

fn start_shipper(
    config: &Config,
    client: BackendClient,
    delivery: &Arc<Delivery>,
) -> (
    tokio::task::JoinHandle<()>,
    watch::Sender<Option<std::time::Instant>>,
) {
    let (stop, stopped) = watch::channel(None);
    let shipper = Shipper::new(
        client,
        Arc::clone(delivery),
        ShipperConfig {
            max_backoff: config.backend.max_backoff,
            dead_letter: config.spool.dir.join("dead-letter.ndjson"),
        },
        stopped,
    );
    (tokio::spawn(shipper.run()), stop)
}

async fn serve_metrics(
    config: &Config,
    metrics: PrometheusHandle,
    delivery: &Arc<Delivery>,
    ready: &Arc<AtomicBool>,
) -> Result<(), RunError> {
    let Some(addr) = config.metrics.addr else {
        return Ok(());
    };
    let bound = server::serve(
        addr,
        Endpoints {
            metrics,
            delivery: Arc::clone(delivery),
            spool_enabled: config.scanner.runtime.capture.enabled,
            ready: Arc::clone(ready),
        },
    )
    .await
    .map_err(|source| RunError::Metrics { addr, source })?;
    info!("metrics on http://{bound}/metrics");
    Ok(())
}

/// A short id for this run, in event ids and batch ids.
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
