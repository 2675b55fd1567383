//! The container runtime watcher: a task that keeps the pipeline told about pods and
//! containers.
//!
//! It lists sandboxes and containers at start, then follows `GetContainerEvents` where the
//! runtime has it and polls otherwise, and answers the pipeline's questions about
//! containers it has not seen yet (a container that started and exited between two polls
//! is still described: the runtime keeps exited containers until they are removed). When
//! the runtime goes away it says so, answers questions with "unknown" instead of waiting,
//! and reconnects with backoff.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use observer_common::identity::{DigestKind, ImageReference, PodRef};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::cri::{proto, CriClient, CriError, RuntimeVersion};
use crate::{
    process::buildid::BuildIdCache,
    record::{ContainerInfo, ContainerState, ImageInfo, PodInfo},
};

/// What the watcher tells the pipeline.
#[derive(Debug)]
pub enum Update {
    Pod(Arc<PodInfo>),
    Container(Arc<ContainerInfo>),
    ContainerGone(String),
    /// The runtime could not describe this container. `retry`: it does not know it yet (a
    /// sandbox being created is not listed until it is); otherwise it never will, or the
    /// runtime is unreachable.
    ResolveFailed {
        id: String,
        retry: bool,
    },
    Connected(RuntimeVersion),
    Disconnected(String),
}

#[derive(Clone, Debug)]
pub struct WatcherConfig {
    pub endpoint: PathBuf,
    pub poll_interval: Duration,
    pub call_timeout: Duration,
    /// The host's /proc, for container init processes.
    pub proc_root: PathBuf,
}

const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(8);

pub struct Watcher {
    config: WatcherConfig,
    client: Option<CriClient>,
    updates: mpsc::Sender<Update>,
    requests: mpsc::Receiver<String>,
    pods: HashMap<String, Arc<PodInfo>>,
    containers: HashMap<String, ContainerState>,
    images: HashMap<(String, String), ImageInfo>,
    build_ids: BuildIdCache,
}

/// Why a pass over the runtime stopped.
enum Stop {
    /// The pipeline is gone: the daemon is shutting down.
    Closed,
    /// The runtime failed; reconnect.
    Runtime(CriError),
}

impl Watcher {
    /// A watcher over an already connected client (the daemon connects first, so that a
    /// missing or broken runtime is an error at start).
    pub fn new(
        config: WatcherConfig,
        client: CriClient,
        updates: mpsc::Sender<Update>,
        requests: mpsc::Receiver<String>,
    ) -> Self {
        Watcher {
            config,
            client: Some(client),
            updates,
            requests,
            pods: HashMap::new(),
            containers: HashMap::new(),
            images: HashMap::new(),
            build_ids: BuildIdCache::default(),
        }
    }

    pub async fn run(mut self) {
        let mut backoff = BACKOFF_START;
        loop {
            let client = match self.client.take() {
                Some(client) => client,
                None => match self.reconnect(&mut backoff).await {
                    Some(client) => client,
                    None => return,
                },
            };
            backoff = BACKOFF_START;
            match self.serve(&client).await {
                Stop::Closed => return,
                Stop::Runtime(err) => {
                    warn!("container runtime unavailable: {err}; events from unknown containers are sent with their container id only until it is back");
                    if self
                        .send(Update::Disconnected(err.to_string()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }

    async fn send(&self, update: Update) -> Result<(), ()> {
        self.updates.send(update).await.map_err(|_| ())
    }

    /// Reconnects with exponential backoff, answering questions with "unknown" meanwhile.
    async fn reconnect(&mut self, backoff: &mut Duration) -> Option<CriClient> {
        loop {
            let sleep = tokio::time::sleep(*backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    request = self.requests.recv() => {
                        let id = request?;
                        self.send(Update::ResolveFailed { id, retry: false }).await.ok()?;
                    }
                }
            }
            *backoff = (*backoff * 2).min(BACKOFF_MAX);
            match CriClient::connect(&self.config.endpoint, self.config.call_timeout).await {
                Ok((client, version)) => {
                    info!(
                        "container runtime back: {} {} at {}",
                        version.name,
                        version.version,
                        self.config.endpoint.display()
                    );
                    self.send(Update::Connected(version)).await.ok()?;
                    return Some(client);
                }
                Err(err) => warn!("container runtime still unavailable: {err}"),
            }
        }
    }

    /// Syncs, then follows the runtime until it fails or the pipeline goes away.
    async fn serve(&mut self, client: &CriClient) -> Stop {
        if let Err(err) = self.sync(client).await {
            return err;
        }
        let mut events = match client.container_events().await {
            Ok(stream) => Some(stream),
            Err(err) if err.is_unimplemented() => {
                info!(
                    "the runtime has no container event stream; polling every {:?}",
                    self.config.poll_interval
                );
                None
            }
            Err(err) => return Stop::Runtime(err),
        };
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                request = self.requests.recv() => {
                    let Some(id) = request else { return Stop::Closed };
                    if let Err(stop) = self.resolve(client, &id, true).await {
                        return stop;
                    }
                }
                _ = poll.tick(), if events.is_none() => {
                    if let Err(stop) = self.sync(client).await {
                        return stop;
                    }
                }
                message = next_event(&mut events), if events.is_some() => match message {
                    Ok(Some(event)) => {
                        if let Err(stop) = self.resolve(client, &event.container_id, false).await {
                            return stop;
                        }
                    }
                    Ok(None) => return Stop::Runtime(CriError::Call {
                        endpoint: client.endpoint().to_owned(),
                        method: "GetContainerEvents",
                        status: Box::new(tonic::Status::unavailable("event stream ended")),
                    }),
                    Err(status) => return Stop::Runtime(CriError::Call {
                        endpoint: client.endpoint().to_owned(),
                        method: "GetContainerEvents",
                        status: Box::new(status),
                    }),
                },
            }
        }
    }

    /// Lists everything and reports what is new, changed or gone.
    async fn sync(&mut self, client: &CriClient) -> Result<(), Stop> {
        let sandboxes = client.list_sandboxes().await.map_err(Stop::Runtime)?;
        let listed_sandboxes: std::collections::HashSet<String> =
            sandboxes.iter().map(|s| s.id.clone()).collect();
        for sandbox in sandboxes {
            if !self.pods.contains_key(&sandbox.id) {
                self.describe_sandbox(client, &sandbox.id).await?;
            }
        }
        let removed: Vec<String> = self
            .pods
            .keys()
            .filter(|id| !listed_sandboxes.contains(*id))
            .cloned()
            .collect();
        for id in removed {
            self.pods.remove(&id);
            self.send(Update::ContainerGone(id))
                .await
                .map_err(|()| Stop::Closed)?;
        }
        let listed = client.list_containers(None).await.map_err(Stop::Runtime)?;
        let mut seen = std::collections::HashSet::new();
        for container in listed {
            seen.insert(container.id.clone());
            let state = state_of(container.state);
            if self.containers.get(&container.id) != Some(&state) {
                self.describe_container(client, container).await?;
            }
        }
        let gone: Vec<String> = self
            .containers
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.containers.remove(&id);
            self.send(Update::ContainerGone(id))
                .await
                .map_err(|()| Stop::Closed)?;
        }
        Ok(())
    }

    /// Describes one container (or sandbox) by id. `asked`: the pipeline is waiting for an
    /// answer, so say when there is none.
    async fn resolve(&mut self, client: &CriClient, id: &str, asked: bool) -> Result<(), Stop> {
        let listed = client
            .list_containers(Some(id))
            .await
            .map_err(Stop::Runtime)?;
        if let Some(container) = listed.into_iter().next() {
            return self.describe_container(client, container).await;
        }
        if self.pods.contains_key(id) || self.describe_sandbox(client, id).await? {
            return Ok(());
        }
        if asked {
            self.send(Update::ResolveFailed {
                id: id.to_owned(),
                retry: true,
            })
            .await
            .map_err(|()| Stop::Closed)?;
        } else if self.containers.remove(id).is_some() {
            self.send(Update::ContainerGone(id.to_owned()))
                .await
                .map_err(|()| Stop::Closed)?;
        }
        Ok(())
    }

    /// Reports a sandbox; false if the runtime does not know it.
    async fn describe_sandbox(&mut self, client: &CriClient, id: &str) -> Result<bool, Stop> {
        Ok(self.pod(client, id).await?.is_some())
    }

    /// The pod of a sandbox, asking the runtime (and telling the pipeline) the first time.
    async fn pod(
        &mut self,
        client: &CriClient,
        sandbox_id: &str,
    ) -> Result<Option<Arc<PodInfo>>, Stop> {
        if let Some(pod) = self.pods.get(sandbox_id) {
            return Ok(Some(Arc::clone(pod)));
        }
        let Some(status) = client
            .sandbox_status(sandbox_id)
            .await
            .map_err(Stop::Runtime)?
            .and_then(|r| r.status)
        else {
            return Ok(None);
        };
        let metadata = status.metadata.unwrap_or_default();
        let pod = PodInfo::new(
            status.id,
            PodRef {
                name: metadata.name,
                namespace: metadata.namespace,
                uid: metadata.uid,
                labels: status.labels.into_iter().collect(),
            },
        );
        for error in &pod.identity_errors {
            warn!(
                "pod {}/{}: {error}; the label is ignored",
                pod.pod.namespace, pod.pod.name
            );
        }
        let pod = Arc::new(pod);
        self.pods.insert(sandbox_id.to_owned(), Arc::clone(&pod));
        self.send(Update::Pod(Arc::clone(&pod)))
            .await
            .map_err(|()| Stop::Closed)?;
        Ok(Some(pod))
    }

    async fn describe_container(
        &mut self,
        client: &CriClient,
        container: proto::Container,
    ) -> Result<(), Stop> {
        let Some(pod) = self.pod(client, &container.pod_sandbox_id).await? else {
            // The sandbox is already gone; without it the container has no workload.
            self.send(Update::ResolveFailed {
                id: container.id,
                retry: false,
            })
            .await
            .map_err(|()| Stop::Closed)?;
            return Ok(());
        };
        let Some(reply) = client
            .container_status(&container.id)
            .await
            .map_err(Stop::Runtime)?
        else {
            self.send(Update::ResolveFailed {
                id: container.id,
                retry: false,
            })
            .await
            .map_err(|()| Stop::Closed)?;
            return Ok(());
        };
        let status = reply.status.unwrap_or_default();
        let runtime_info: Option<serde_json::Value> = reply
            .info
            .get("info")
            .and_then(|json| serde_json::from_str(json).ok());
        let init_pid = runtime_info
            .as_ref()
            .and_then(|i| i.get("pid"))
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p > 0);
        let requested = status
            .image
            .as_ref()
            .map(|i| {
                if i.user_specified_image.is_empty() {
                    i.image.clone()
                } else {
                    i.user_specified_image.clone()
                }
            })
            .unwrap_or_default();
        let image = self.image(client, &requested, &status.image_ref).await?;
        let state = state_of(status.state);
        let exe = init_pid.map(|pid| self.config.proc_root.join(pid.to_string()).join("exe"));
        let entrypoint = exe
            .as_ref()
            .and_then(|exe| std::fs::read_link(exe).ok())
            .map(|p| p.to_string_lossy().into_owned());
        let entrypoint_code_id = exe.as_ref().and_then(|exe| self.build_ids.get(exe));
        let info = ContainerInfo {
            id: status.id,
            name: status.metadata.map(|m| m.name).unwrap_or_default(),
            pod,
            image,
            state,
            started_at_ns: status.started_at,
            finished_at_ns: status.finished_at,
            exit_code: (state == ContainerState::Exited).then_some(status.exit_code),
            init_pid,
            entrypoint,
            entrypoint_code_id,
        };
        self.containers.insert(info.id.clone(), state);
        self.send(Update::Container(Arc::new(info)))
            .await
            .map_err(|()| Stop::Closed)
    }

    /// What the runtime knows about an image's digest (cached per reference).
    async fn image(
        &mut self,
        client: &CriClient,
        requested: &str,
        image_ref: &str,
    ) -> Result<ImageInfo, Stop> {
        let key = (requested.to_owned(), image_ref.to_owned());
        if let Some(known) = self.images.get(&key) {
            return Ok(known.clone());
        }
        let lookup = if image_ref.is_empty() {
            requested
        } else {
            image_ref
        };
        let image = client.image_status(lookup).await.map_err(Stop::Runtime)?;
        let info = image_info(requested, image_ref, image.as_ref());
        if !info.has_usable_digest() {
            warn!(
                "image {requested:?}: the runtime reports no manifest digest ({} {:?}); its events are marked partial",
                info.digest_kind.as_str(),
                info.digest
            );
        }
        self.images.insert(key, info.clone());
        Ok(info)
    }
}

async fn next_event(
    events: &mut Option<tonic::Streaming<proto::ContainerEventResponse>>,
) -> Result<Option<proto::ContainerEventResponse>, tonic::Status> {
    match events {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}

fn state_of(state: i32) -> ContainerState {
    match proto::ContainerState::try_from(state) {
        Ok(proto::ContainerState::ContainerCreated) => ContainerState::Created,
        Ok(proto::ContainerState::ContainerRunning) => ContainerState::Running,
        Ok(proto::ContainerState::ContainerExited) => ContainerState::Exited,
        _ => ContainerState::Unknown,
    }
}

/// Which digest an image has, and of which kind. The runtime's `image_ref` is a manifest
/// digest only when it has the form `repo@sha256:...`; a bare `sha256:...` is the image
/// (config) id. The image's repo digests, when it has any, are manifest digests.
pub fn image_info(requested: &str, image_ref: &str, image: Option<&proto::Image>) -> ImageInfo {
    let manifest = |digest: &str| ImageInfo {
        reference: display_reference(requested, image),
        digest: Some(digest.to_owned()),
        digest_kind: DigestKind::Manifest,
    };
    if let Some(r) = ImageReference::parse(image_ref).filter(ImageReference::is_pinned) {
        if let Some(digest) = r.digest.as_deref() {
            return manifest(digest);
        }
    }
    if let Some(pinned) = ImageReference::parse(requested).and_then(|r| r.digest) {
        return manifest(&pinned);
    }
    if let Some(image) = image {
        let wanted_repo = ImageReference::parse(requested).map(|r| r.repository);
        let digests: Vec<ImageReference> = image
            .repo_digests
            .iter()
            .filter_map(|d| ImageReference::parse(d))
            .filter(ImageReference::is_pinned)
            .collect();
        let best = digests
            .iter()
            .find(|d| Some(&d.repository) == wanted_repo.as_ref())
            .or_else(|| digests.first());
        if let Some(digest) = best.and_then(|d| d.digest.as_deref()) {
            return manifest(digest);
        }
    }
    let config = [image_ref, image.map_or("", |i| i.id.as_str())]
        .into_iter()
        .find(|d| observer_common::identity::is_digest(d));
    ImageInfo {
        reference: display_reference(requested, image),
        digest: config.map(str::to_owned),
        digest_kind: if config.is_some() {
            DigestKind::Config
        } else {
            DigestKind::Unknown
        },
    }
}

/// The image as a person would name it: the requested reference unless that is a bare id,
/// in which case a tag the runtime knows it by.
fn display_reference(requested: &str, image: Option<&proto::Image>) -> String {
    if observer_common::identity::is_digest(requested) {
        if let Some(tag) = image.and_then(|i| i.repo_tags.first()) {
            return tag.clone();
        }
    }
    requested.to_owned()
}

#[cfg(test)]
mod tests;
