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
    deployment::CommonLabels,
    metrics::{self, Binary},
};

use super::{RunError, RunOptions, Running};
use crate::{
    config::{Config, CriConfig, DockerConfig, KernelView},
    kernel::{
        btf::{self, VMLINUX_BTF},
        privileges,
        probes::{validate_ring_size, ProbeConfig, PROBES_OBJECT},
        tracefs::{self, Tracefs},
        KernelCounters, Probes,
    },
    ops::server::{self, Endpoints},
    output::{
        ndjson::{NdjsonSink, Output},
        sinks::{
            dead_letter::DeadLetter,
            https::{self, HttpsSink, EVENTS_PATH},
            nats::{self, NatsSink},
            redis::{self, RedisSink},
            Sink, SinkTask,
        },
        spool::Spool,
        Delivery,
    },
    pipeline::{batch::Batcher, Pipeline, RuntimeStatus, RuntimeStatuses, Shipping, Stages},
    process::{ProcessTable, Tracker},
    record::HostIdentity,
    workload::{
        cgroups::{cgroup2_at_or_below, find_cgroup2_mount},
        cri::{self, CriClient},
        docker::{self, DockerClient},
        hub::{self, Hub},
        watcher::{
            self, cri::CriSource, docker::DockerSource, RuntimeSource, Update, Watcher,
            WatcherConfig,
        },
        AttributionConfig, Attributor, CgroupMap, NamespaceFilter, RuntimeKind, RuntimeVersion,
    },
};

pub(super) async fn start(options: &RunOptions) -> Result<Running, RunError> {
    let config = &options.config;
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
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let cgroup_root = match &config.observer.cgroup_root {
        Some(root) => {
            let v2 = cgroup2_at_or_below(root, &mounts)
                .ok_or_else(|| RunError::NotCgroup2(root.clone()))?;
            if v2 != *root {
                info!(
                    "observer.cgroup_root {} holds cgroup v1 hierarchies; using the v2 hierarchy at {}",
                    root.display(),
                    v2.display()
                );
            }
            v2
        }
        None => find_cgroup2_mount(&mounts).ok_or(RunError::NoCgroup2)?,
    };
    let metrics_handle = install_metrics(&config.runtime.common_labels());
    let (backend, spool) = open_delivery(config)?;

    let docker = connect_docker(&config.docker).await;
    let cri = connect_cri(&config.cri, docker.is_some()).await?;
    let runtime = cri.is_some() || docker.is_some();
    check_observable(config, runtime)?;
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
            cri: runtime,
            namespaces: namespace_filter(config),
        },
        cgroups,
    );
    let (updates, requests, runtimes) = start_watchers(config, cri, docker);
    let delivery = Arc::new(Delivery::new(spool));
    if let Some(authority) = backend.as_ref().and_then(BackendClient::authority) {
        let addr = config.admin.addr;
        let bound = server::serve_admin(addr, Arc::clone(authority))
            .await
            .map_err(|source| RunError::Admin { addr, source })?;
        info!("admin endpoint on http://{bound}/invalidate-op-token");
    }
    let sinks = start_sinks(config, backend, &delivery);
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
        runtimes,
        Shipping {
            delivery: Arc::clone(&delivery),
            spooled: sinks.is_some(),
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
        sinks,
        ready,
        dedup_window_ns,
        shutdown_grace: config.backend.shutdown_grace,
        reported: KernelCounters::default(),
        sigint,
        sigterm,
    })
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

/// The sinks `config` turns on, in the order of their cursors in the spool.
fn sink_names(config: &Config) -> Vec<&'static str> {
    let mut names = Vec::new();
    if config.scanner.runtime.capture.enabled {
        names.push(https::NAME);
    }
    if config.sinks.nats.enabled {
        names.push(nats::NAME);
    }
    if config.sinks.redis.enabled {
        names.push(redis::NAME);
    }
    names
}

/// With at least one sink: the backend's client (when it is one of them) and the spool
/// batches wait in for every sink.
fn open_delivery(config: &Config) -> Result<(Option<BackendClient>, Option<Spool>), RunError> {
    let names = sink_names(config);
    if names.is_empty() {
        return Ok((None, None));
    }
    let client = if config.scanner.runtime.capture.enabled {
        Some(BackendClient::new(&config.backend, &config.authority).map_err(RunError::Backend)?)
    } else {
        None
    };
    let spool = Spool::open(
        &config.spool.dir,
        config.spool.max_bytes,
        config.spool.when_full,
        &names,
    )
    .map_err(RunError::Spool)?;
    let stats = spool.stats();
    if stats.torn > 0 {
        warn!(
            "spool {}: {} damaged records from an earlier run were removed",
            config.spool.dir.display(),
            stats.torn
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
    if let Some(url) = &config.backend.url {
        if client.is_some() {
            info!(
                "shipping to {}{}",
                url.as_str(),
                EVENTS_PATH.trim_start_matches('/')
            );
        }
    }
    if config.sinks.nats.enabled {
        info!(
            "publishing to NATS JetStream subject {} (stream {}) at {}",
            config.sinks.nats.publish_subject(),
            config.sinks.nats.stream.name,
            config.sinks.nats.servers.join(", ")
        );
    }
    if config.sinks.redis.enabled {
        info!(
            "adding to Redis stream {} at {}",
            config.sinks.redis.stream, config.sinks.redis.url
        );
    }
    Ok((client, Some(spool)))
}

/// Connects to the CRI runtime if there is one. A runtime that was asked for (or whose
/// socket exists) but does not answer is an error: the operator must know attribution is
/// off. One exception: a containerd found at its default socket that does not speak CRI on
/// a host with Docker Engine is the containerd Docker runs (CRI plugin disabled), and Docker
/// describes its containers.
async fn connect_cri(
    options: &CriConfig,
    docker: bool,
) -> Result<Option<(CriClient, RuntimeVersion)>, RunError> {
    if !options.enabled {
        info!("CRI runtime disabled (cri.enabled = false)");
        return Ok(None);
    }
    let Some(socket) = cri::resolve_endpoint(options.endpoint.as_deref()) else {
        info!(
            "no CRI runtime socket found (tried {})",
            cri::DEFAULT_ENDPOINTS.join(", ")
        );
        return Ok(None);
    };
    let (client, version) = match CriClient::connect(&socket, options.timeout).await {
        Ok(connected) => connected,
        Err(err) if options.endpoint.is_none() && docker && err.is_not_cri() => {
            info!("{err}: this is the containerd of Docker Engine, without CRI; containers are described by Docker");
            return Ok(None);
        }
        Err(err) => return Err(RunError::Cri(err)),
    };
    info!(
        "container runtime {} {} (CRI {}) at {}",
        version.name,
        version.version,
        version.api_version,
        socket.display()
    );
    Ok(Some((client, version)))
}

/// Docker Engine as found at start: its socket, and a client if it answered.
struct DockerStart {
    socket: std::path::PathBuf,
    connected: Option<(DockerClient, RuntimeVersion)>,
}

/// Connects to Docker Engine if its socket is given or found. Unlike a CRI runtime, an
/// engine that does not answer is not an error: dockerd is restarted on its own schedule
/// (upgrades, `systemctl restart docker`) and often starts after the observer, so the
/// watcher keeps trying while events go out with container ids only.
async fn connect_docker(options: &DockerConfig) -> Option<DockerStart> {
    if !options.enabled {
        info!("Docker Engine disabled (docker.enabled = false)");
        return None;
    }
    let Some(socket) = docker::resolve_endpoint(options.endpoint.as_deref()) else {
        info!(
            "no Docker Engine socket found (tried {})",
            docker::DEFAULT_ENDPOINTS.join(", ")
        );
        return None;
    };
    let connected = match DockerClient::connect(&socket, options.timeout).await {
        Ok((client, version)) => {
            info!(
                "Docker Engine {} (API {}) at {}",
                version.version,
                version.api_version,
                socket.display()
            );
            Some((client, version))
        }
        Err(err) => {
            watcher::count_error(RuntimeKind::Docker, &err);
            warn!("{err}\n  the observer carries on: events of Docker containers are sent with their container id only, and it keeps trying to connect");
            None
        }
    };
    Some(DockerStart { socket, connected })
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

/// Loads the probes (not attached yet); their ring buffer is returned separately.
fn load_probes(
    config: &Config,
    observe_self: bool,
) -> Result<(Probes, RingBuf<MapData>), RunError> {
    // Named here, before the kernel's EPERM on the first map says nothing of why.
    if let Some(caps) = privileges::effective() {
        let missing = privileges::missing_for_probes(caps);
        if !missing.is_empty() {
            return Err(RunError::Privileges { caps, missing });
        }
        for (cap, lost) in privileges::missing_for_processes(caps) {
            warn!("running without {cap}: {lost}");
        }
    }
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
    return_freed_memory();
    Ok((probes, ring))
}

/// Parsing the kernel's BTF (ours for the offsets, the loader's for relocations) takes
/// tens of MiB of heap that is free once the programs are loaded; the allocator keeps
/// freed pages unless told, and they would count in the daemon's resident set for good.
fn return_freed_memory() {
    super::memory::return_freed();
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

/// Starts a watcher task per runtime: their updates, where to send lookups, and the
/// connections as the summary reports them. With two runtimes a hub between them and the
/// pipeline asks both and merges their answers.
fn start_watchers(
    config: &Config,
    cri: Option<(CriClient, RuntimeVersion)>,
    docker: Option<DockerStart>,
) -> (
    Option<mpsc::Receiver<Update>>,
    Option<mpsc::Sender<String>>,
    RuntimeStatuses,
) {
    let (updates_tx, updates_rx) = mpsc::channel(1024);
    let mut watchers = Vec::new();
    let mut statuses = RuntimeStatuses::default();
    let proc_root = &config.observer.proc_root;
    if let Some((client, version)) = cri {
        let socket = client.endpoint().into();
        statuses.cri = status(client.endpoint(), Some(&version));
        let source = CriSource::new(socket, config.cri.timeout, proc_root.clone());
        let poll = config.cri.poll_interval;
        watchers.push(spawn_watcher(source, poll, Some(client), &updates_tx));
    }
    if let Some(docker) = docker {
        let endpoint = docker.socket.display().to_string();
        let (client, version) = docker.connected.unzip();
        statuses.docker = status(&endpoint, version.as_ref());
        let source = DockerSource::new(docker.socket, config.docker.timeout, proc_root.clone());
        let poll = config.docker.poll_interval;
        watchers.push(spawn_watcher(source, poll, client, &updates_tx));
    }
    drop(updates_tx);
    match watchers.len() {
        0 => (None, None, statuses),
        1 => (Some(updates_rx), watchers.pop(), statuses),
        _ => {
            let (to_pipeline, pipeline_updates) = mpsc::channel(1024);
            let (requests, pipeline_requests) = mpsc::channel(1024);
            tokio::spawn(hub::run(
                Hub::new(watchers),
                pipeline_requests,
                updates_rx,
                to_pipeline,
            ));
            (Some(pipeline_updates), Some(requests), statuses)
        }
    }
}

fn status(endpoint: &str, version: Option<&RuntimeVersion>) -> RuntimeStatus {
    RuntimeStatus {
        endpoint: Some(endpoint.to_owned()),
        runtime: version.map(|v| format!("{} {}", v.name, v.version)),
        connected: version.is_some(),
        disconnects: 0,
    }
}

/// Spawns one runtime's watcher; returns where to send it lookups.
fn spawn_watcher<S: RuntimeSource>(
    source: S,
    poll_interval: std::time::Duration,
    client: Option<S::Client>,
    updates: &mpsc::Sender<Update>,
) -> mpsc::Sender<String> {
    let (requests_tx, requests_rx) = mpsc::channel(1024);
    let watcher = Watcher::new(
        source,
        WatcherConfig { poll_interval },
        client,
        updates.clone(),
        requests_rx,
    );
    tokio::spawn(watcher.run());
    requests_tx
}

/// Starts a task per sink, each on its own cursor in the spool.
fn start_sinks(
    config: &Config,
    backend: Option<BackendClient>,
    delivery: &Arc<Delivery>,
) -> Option<super::SinkTasks> {
    let names = delivery
        .lock()
        .spool
        .as_ref()
        .map(|s| s.sinks().map(str::to_owned).collect::<Vec<_>>())?;
    let (stop, stopped) = watch::channel(None);
    let dir = &config.spool.dir;
    let mut tasks = Vec::new();
    let mut backend = backend;
    for (index, name) in names.iter().enumerate() {
        let task = match name.as_str() {
            https::NAME => backend.take().map(|client| {
                spawn_sink(
                    HttpsSink::new(client),
                    index,
                    delivery,
                    config.backend.max_backoff,
                    dir,
                    &stopped,
                )
            }),
            nats::NAME => Some(spawn_sink(
                NatsSink::new(config.sinks.nats.clone()),
                index,
                delivery,
                config.sinks.nats.max_backoff,
                dir,
                &stopped,
            )),
            redis::NAME => Some(spawn_sink(
                RedisSink::new(config.sinks.redis.clone()),
                index,
                delivery,
                config.sinks.redis.max_backoff,
                dir,
                &stopped,
            )),
            _ => None,
        };
        tasks.extend(task);
    }
    Some(super::SinkTasks { tasks, stop })
}

fn spawn_sink<S: Sink>(
    sink: S,
    index: usize,
    delivery: &Arc<Delivery>,
    max_backoff: std::time::Duration,
    dir: &Path,
    stop: &watch::Receiver<Option<std::time::Instant>>,
) -> tokio::task::JoinHandle<()> {
    let dead_letter = DeadLetter::in_dir(dir, sink.name());
    let task = SinkTask::new(
        sink,
        index,
        Arc::clone(delivery),
        max_backoff,
        dead_letter,
        stop.clone(),
    );
    tokio::spawn(task.run())
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
            common_labels: Arc::new(config.runtime.common_labels()),
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
