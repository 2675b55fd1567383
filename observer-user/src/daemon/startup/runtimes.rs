//! The container runtimes at start: connect to a CRI runtime (an error if one was asked for
//! and does not answer) and to Docker Engine (a warning: its watcher keeps trying), then
//! start a watcher task per runtime. Hands on the watchers' updates, where to send them
//! lookups, and the connections as the summary reports them.

use std::{path::PathBuf, time::Duration};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    config::{Config, CriConfig, DockerConfig},
    daemon::RunError,
    pipeline::{RuntimeStatus, RuntimeStatuses},
    workload::{
        cri::{self, CriClient},
        docker::{self, DockerClient},
        hub::{self, Hub},
        watcher::{
            self, cri::CriSource, docker::DockerSource, RuntimeSource, Update, Watcher,
            WatcherConfig,
        },
        RuntimeKind, RuntimeVersion,
    },
};

/// Connects to the CRI runtime if there is one. A runtime that was asked for (or whose
/// socket exists) but does not answer is an error: the operator must know attribution is
/// off. One exception: a containerd found at its default socket that does not speak CRI on
/// a host with Docker Engine is the containerd Docker runs (CRI plugin disabled), and Docker
/// describes its containers.
pub(super) async fn connect_cri(
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
pub(super) struct DockerStart {
    socket: PathBuf,
    connected: Option<(DockerClient, RuntimeVersion)>,
}

/// Connects to Docker Engine if its socket is given or found. Unlike a CRI runtime, an
/// engine that does not answer is not an error: dockerd is restarted on its own schedule
/// (upgrades, `systemctl restart docker`) and often starts after the observer, so the
/// watcher keeps trying while events go out with container ids only.
pub(super) async fn connect_docker(options: &DockerConfig) -> Option<DockerStart> {
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

/// Starts a watcher task per runtime: their updates, where to send lookups, and the
/// connections as the summary reports them. With two runtimes a hub between them and the
/// pipeline asks both and merges their answers.
pub(super) fn start_watchers(
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
    poll_interval: Duration,
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
