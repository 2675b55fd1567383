//! Start-up, in the order that loses nothing: connect to the container runtime (so a
//! runtime that was asked for but does not answer fails before anything is attached), load
//! the probes, open the output, attach, then scan cgroups and /proc — after attaching, so
//! whatever starts in between is seen by the probes, the scan, or both — and start the
//! watcher, the shipper and the metrics endpoint. Hands on a [`Running`] daemon, ready.
//!
//! The runtimes and their watchers are in [`runtimes`], the spool and the sinks in
//! [`sinks`], loading the probes in [`probes`].

mod probes;
mod runtimes;
mod sinks;

use std::{
    io,
    path::{Path, PathBuf},
    sync::{atomic::AtomicBool, Arc},
};

use aya::maps::{MapData, RingBuf};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, Signal, SignalKind},
};
use tracing::{info, warn};
use zastava_platform::{
    backend::BackendClient,
    deployment::CommonLabels,
    metrics::{self, Binary},
};

use super::{RunError, RunOptions, Running};
use crate::{
    config::Config,
    kernel::{KernelCounters, Probes},
    ops::server::{self, Endpoints},
    output::{
        ndjson::{NdjsonSink, Output},
        Delivery,
    },
    pipeline::{batch::Batcher, Pipeline, Shipping, Stages},
    process::{ProcessTable, Tracker},
    record::HostIdentity,
    workload::{
        cgroups::{cgroup2_at_or_below, find_cgroup2_mount},
        AttributionConfig, Attributor, CgroupMap, NamespaceFilter,
    },
};

/// Starts the daemon, step by step in the order above; it has said it is ready when this
/// returns.
pub(super) async fn start(options: &RunOptions) -> Result<Running, RunError> {
    let config = &options.config;
    let host = host_identity(config);
    let cgroup_root = cgroup_root(config)?;
    let metrics_handle = install_metrics(&config.runtime.common_labels());
    let (backend, spool) = sinks::open_delivery(config)?;

    let docker = runtimes::connect_docker(&config.docker).await;
    let cri = runtimes::connect_cri(&config.cri, docker.is_some()).await?;
    let runtime = cri.is_some() || docker.is_some();
    check_observable(config, runtime)?;
    let (attached, sink) = probes_and_output(config, options.observe_self)?;
    let (probes, ring) = attached.unzip();

    // Scan cgroups and /proc after attaching: whatever appears in between is seen by the
    // probes, the scan, or both, never by neither.
    let (stages, seeded) = scan(config, &cgroup_root, runtime);
    let (updates, requests, statuses) = runtimes::start_watchers(config, cri, docker);
    let delivery = Arc::new(Delivery::new(spool));
    serve_admin(config, backend.as_ref()).await?;
    let sinks = sinks::start_sinks(config, backend, &delivery);
    let ready = Arc::new(AtomicBool::new(false));
    serve_metrics(config, metrics_handle, &delivery, &ready).await?;

    let shipping = Shipping {
        delivery: Arc::clone(&delivery),
        spooled: sinks.is_some(),
        max_label_values: config.metrics.max_label_values,
    };
    let pipeline = Pipeline::new(stages, sink, host, run_id(), requests, statuses, shipping);
    let ring = ring.map(watch_ring).transpose()?;
    let dedup_window_ns = dedup_window_ns(config, probes.is_some());
    // Before the daemon says it is ready: a signal from then on stops it cleanly.
    let (sigint, sigterm) = signals()?;
    log_ready(config, probes.as_ref(), seeded, &pipeline);
    server::set_ready(&ready, true);
    Ok(Running {
        pipeline,
        probes,
        ring,
        updates,
        delivery,
        sinks,
        ready,
        dedup_window_ns,
        shutdown_grace: config.backend.shutdown_grace,
        reported: KernelCounters::default(),
        sigint,
        sigterm,
    })
}

/// This node as the records name it, with the deployment; what could not be read is
/// logged.
fn host_identity(config: &Config) -> HostIdentity {
    let host = HostIdentity::read(
        &config.observer.host_root,
        config.observer.node_name.as_deref(),
    )
    .with_deployment(
        config.runtime.deployment(),
        config.ndjson.include_deployment,
    );
    for warning in &host.warnings {
        warn!("{warning}");
    }
    host
}

/// The cgroup v2 hierarchy events are attributed in: `observer.cgroup_root` (or the v2
/// hierarchy below it), else where cgroup2 is mounted.
fn cgroup_root(config: &Config) -> Result<PathBuf, RunError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let Some(root) = &config.observer.cgroup_root else {
        return find_cgroup2_mount(&mounts).ok_or(RunError::NoCgroup2);
    };
    let v2 =
        cgroup2_at_or_below(root, &mounts).ok_or_else(|| RunError::NotCgroup2(root.clone()))?;
    if v2 != *root {
        info!(
            "observer.cgroup_root {} holds cgroup v1 hierarchies; using the v2 hierarchy at {}",
            root.display(),
            v2.display()
        );
    }
    Ok(v2)
}

/// The Prometheus recorder behind `/metrics`, with the observer's histogram buckets and
/// the common labels.
fn install_metrics(common: &CommonLabels) -> PrometheusHandle {
    let (handle, installed) = metrics::install(Binary::Observer, common.iter());
    if !installed {
        warn!("a metrics recorder is already installed; /metrics shows only the event account");
    }
    handle
}

/// Loads the probes (unless `zastava.attach.enabled` is false), opens the NDJSON output,
/// then attaches: a bad output path fails before any event is produced.
fn probes_and_output(
    config: &Config,
    observe_self: bool,
) -> Result<(Option<probes::Loaded>, NdjsonSink), RunError> {
    let loaded = if config.zastava.attach.enabled {
        Some(probes::load(config, observe_self)?)
    } else {
        info!("zastava.attach.enabled is false: the probes are not loaded; only container lifecycle is reported");
        None
    };
    let sink = open_ndjson(config)?;
    let attached = match loaded {
        Some((mut probes, ring)) => {
            probes.attach()?;
            Some((probes, ring))
        }
        None => None,
    };
    Ok((attached, sink))
}

/// The scan of what already runs: the cgroup hierarchy and /proc, made into the
/// pipeline's stages; with the number of processes the table was seeded with.
fn scan(config: &Config, cgroup_root: &Path, runtime: bool) -> (Stages, usize) {
    let cgroups = CgroupMap::scan(cgroup_root);
    let mut table = ProcessTable::new(&config.observer.proc_root);
    let seeded = table.seed();
    let attributor = Attributor::new(
        AttributionConfig {
            wait: config.observer.enrichment_wait,
            retention: config.observer.container_retention,
            cri: runtime,
            namespaces: namespace_filter(config),
        },
        cgroups,
    );
    let stages = Stages {
        tracker: Tracker::new(table),
        attributor,
        batcher: Batcher::new(config.batch.clone()),
    };
    (stages, seeded)
}

/// Refuses configurations that would observe nothing, or filter without knowing pods.
fn check_observable(config: &Config, runtime: bool) -> Result<(), RunError> {
    if namespace_filter(config).is_active() && !runtime {
        return Err(RunError::FilterWithoutCri(
            if config.cri.enabled || config.docker.enabled {
                "no runtime socket was found"
            } else {
                "cri.enabled and docker.enabled are false"
            },
        ));
    }
    if !config.zastava.attach.enabled && !runtime {
        return Err(RunError::NothingToObserve);
    }
    Ok(())
}

/// The namespaces `--namespace` and `--exclude-namespace` keep and drop.
pub(super) fn namespace_filter(config: &Config) -> NamespaceFilter {
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

/// The admin endpoint (`invalidate-op-token`), when the backend's tokens come from the
/// Authority.
async fn serve_admin(config: &Config, backend: Option<&BackendClient>) -> Result<(), RunError> {
    let Some(authority) = backend.and_then(BackendClient::authority) else {
        return Ok(());
    };
    let addr = config.admin.addr;
    let bound = server::serve_admin(addr, Arc::clone(authority))
        .await
        .map_err(|source| RunError::Admin { addr, source })?;
    info!("admin endpoint on http://{bound}/invalidate-op-token");
    Ok(())
}

/// `/metrics`, `/healthz` and `/readyz`, when `metrics.addr` is set.
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
            common_labels: Arc::new(config.runtime.common_labels()),
        },
    )
    .await
    .map_err(|source| RunError::Metrics { addr, source })?;
    info!("metrics on http://{bound}/metrics");
    Ok(())
}

/// The ring buffer, registered with tokio so the event loop wakes when the probes say.
fn watch_ring(ring: RingBuf<MapData>) -> Result<AsyncFd<RingBuf<MapData>>, RunError> {
    // SAFETY: the ring buffer owns its fd, which stays open for the AsyncFd's lifetime.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| RunError::Poll(io::Error::from(e)))
}

/// The in-kernel dedup window in nanoseconds; 0 without probes.
fn dedup_window_ns(config: &Config, probes: bool) -> u64 {
    if probes {
        u64::try_from(config.observer.kernel_dedup_window.as_nanos()).unwrap_or(u64::MAX)
    } else {
        0
    }
}

/// SIGINT and SIGTERM, which stop the daemon cleanly.
fn signals() -> Result<(Signal, Signal), RunError> {
    let sigint = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let sigterm = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    Ok((sigint, sigterm))
}

/// The line that says the daemon is ready, with what it attached and found.
fn log_ready(config: &Config, probes: Option<&Probes>, seeded: usize, pipeline: &Pipeline) {
    info!(
        programs = probes.map_or(0, Probes::attached),
        kernel_view = probes.is_some_and(Probes::kernel_view),
        processes = seeded,
        cgroups = pipeline.stats().cgroups,
        ring_buffer_bytes = config.observer.ring_buffer_bytes,
        "observer ready"
    );
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
