//! The container runtime watcher: one task per runtime that keeps the pipeline told about
//! pods and containers.
//!
//! What a runtime is asked differs ([`cri`]: sandboxes and containers over CRI; [`docker`]:
//! containers over the Engine API), so each is a [`RuntimeSource`]; the loop around it is
//! the same: list everything when connected, then follow the runtime's event stream where
//! it has one (subscribed before the listing, so nothing that happens in between is missed)
//! and poll where it does not, and answer the pipeline's questions about containers it has
//! not seen yet. When the runtime goes away the watcher says so, counts it
//! (`zastava_container_runtime_errors_total`), answers questions with "unknown" instead of
//! waiting, and reconnects with backoff, listing everything again once it is back.

pub mod cri;
pub mod docker;

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tracing::{info, warn};
use zastava_platform::metrics::{RUNTIME_CONNECTED, RUNTIME_ERRORS};

use super::runtime::{RuntimeError, RuntimeKind, RuntimeVersion};
use crate::{
    process::buildid::BuildIdCache,
    record::{ContainerInfo, PodInfo},
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
    Disconnected {
        runtime: RuntimeKind,
        reason: String,
    },
}

#[derive(Clone, Debug)]
pub struct WatcherConfig {
    /// How often to list containers when the runtime has no event stream.
    pub poll_interval: Duration,
}

/// The pipeline is gone: the daemon is shutting down.
#[derive(Debug)]
pub struct Closed;

/// Where a source sends what it learns.
#[derive(Clone, Debug)]
pub struct Updates(mpsc::Sender<Update>);

impl Updates {
    pub fn new(sender: mpsc::Sender<Update>) -> Self {
        Updates(sender)
    }

    pub async fn send(&self, update: Update) -> Result<(), Closed> {
        self.0.send(update).await.map_err(|_| Closed)
    }
}

/// Why a pass over the runtime stopped.
#[derive(Debug)]
pub enum Stop<E> {
    Closed,
    /// The runtime failed; reconnect.
    Runtime(E),
}

impl<E> From<Closed> for Stop<E> {
    fn from(_: Closed) -> Self {
        Stop::Closed
    }
}

/// One container runtime, as the watcher drives it.
pub trait RuntimeSource: Send + 'static {
    type Client: Send + Sync + 'static;
    /// The runtime's event stream.
    type Events: Send + 'static;
    type Event: Send + 'static;
    type Error: RuntimeError;

    fn kind(&self) -> RuntimeKind;

    /// The socket, for messages.
    fn endpoint(&self) -> String;

    fn connect(
        &self,
    ) -> impl Future<Output = Result<(Self::Client, RuntimeVersion), Self::Error>> + Send;

    /// Opens the event stream; `None` when the runtime has none (then the watcher polls).
    fn subscribe(
        &mut self,
        client: &Self::Client,
    ) -> impl Future<Output = Result<Option<Self::Events>, Self::Error>> + Send;

    /// The next event; an error when the stream fails or ends.
    fn next_event(
        events: &mut Self::Events,
    ) -> impl Future<Output = Result<Self::Event, Self::Error>> + Send;

    /// Lists everything and reports what is new, changed or gone. `reconnected`: the first
    /// listing of a connection, after which nothing known before may be trusted.
    fn sync(
        &mut self,
        client: &Self::Client,
        reconnected: bool,
        out: &Updates,
    ) -> impl Future<Output = Result<(), Stop<Self::Error>>> + Send;

    /// The pipeline asks about a container it has an event of: describe it, or say it
    /// cannot be (`Update::ResolveFailed`).
    fn resolve(
        &mut self,
        client: &Self::Client,
        id: &str,
        out: &Updates,
    ) -> impl Future<Output = Result<(), Stop<Self::Error>>> + Send;

    fn on_event(
        &mut self,
        client: &Self::Client,
        event: Self::Event,
        out: &Updates,
    ) -> impl Future<Output = Result<(), Stop<Self::Error>>> + Send;
}

const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(8);

pub struct Watcher<S: RuntimeSource> {
    source: S,
    config: WatcherConfig,
    client: Option<S::Client>,
    updates: Updates,
    requests: mpsc::Receiver<String>,
}

/// Counts a failed call to a runtime (the metric behind "is attribution degraded?").
pub fn count_error(kind: RuntimeKind, error: &impl RuntimeError) {
    metrics::counter!(RUNTIME_ERRORS.name, "runtime" => kind.as_str(), "reason" => error.reason())
        .increment(1);
}

fn set_connected(kind: RuntimeKind, connected: bool) {
    metrics::gauge!(RUNTIME_CONNECTED.name, "runtime" => kind.as_str()).set(if connected {
        1.0
    } else {
        0.0
    });
}

impl<S: RuntimeSource> Watcher<S> {
    /// A watcher over a client the daemon connected at start, or over none (the runtime
    /// did not answer then; the watcher keeps trying).
    pub fn new(
        source: S,
        config: WatcherConfig,
        client: Option<S::Client>,
        updates: mpsc::Sender<Update>,
        requests: mpsc::Receiver<String>,
    ) -> Self {
        Watcher {
            source,
            config,
            client,
            updates: Updates(updates),
            requests,
        }
    }

    pub async fn run(mut self) {
        let kind = self.source.kind();
        set_connected(kind, self.client.is_some());
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
                    count_error(kind, &err);
                    set_connected(kind, false);
                    warn!("container runtime unavailable ({kind}): {err}; events from containers it has not described are sent with their container id only until it is back");
                    let gone = Update::Disconnected {
                        runtime: kind,
                        reason: err.to_string(),
                    };
                    if self.updates.send(gone).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Reconnects with exponential backoff, answering questions with "unknown" meanwhile.
    async fn reconnect(&mut self, backoff: &mut Duration) -> Option<S::Client> {
        let kind = self.source.kind();
        loop {
            let sleep = tokio::time::sleep(*backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    request = self.requests.recv() => {
                        let id = request?;
                        self.updates.send(Update::ResolveFailed { id, retry: false }).await.ok()?;
                    }
                }
            }
            *backoff = (*backoff * 2).min(BACKOFF_MAX);
            match self.source.connect().await {
                Ok((client, version)) => {
                    info!(
                        "container runtime back: {} {} at {}",
                        version.name,
                        version.version,
                        self.source.endpoint()
                    );
                    set_connected(kind, true);
                    self.updates.send(Update::Connected(version)).await.ok()?;
                    return Some(client);
                }
                Err(err) => {
                    count_error(kind, &err);
                    warn!(
                        "container runtime still unavailable ({kind}): {err}; next try in {:?}",
                        *backoff
                    );
                }
            }
        }
    }

    /// Subscribes, syncs, then follows the runtime until it fails or the pipeline goes away.
    async fn serve(&mut self, client: &S::Client) -> Stop<S::Error> {
        let mut events = match self.source.subscribe(client).await {
            Ok(Some(events)) => Some(events),
            Ok(None) => {
                info!(
                    "the container runtime ({}) has no container event stream; polling every {:?}",
                    self.source.kind(),
                    self.config.poll_interval
                );
                None
            }
            Err(err) => return Stop::Runtime(err),
        };
        if let Err(stop) = self.source.sync(client, true, &self.updates).await {
            return stop;
        }
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.reset();
        loop {
            let result = tokio::select! {
                request = self.requests.recv() => {
                    let Some(id) = request else { return Stop::Closed };
                    self.source.resolve(client, &id, &self.updates).await
                }
                _ = poll.tick(), if events.is_none() => {
                    self.source.sync(client, false, &self.updates).await
                }
                event = next_event::<S>(&mut events), if events.is_some() => match event {
                    Ok(event) => self.source.on_event(client, event, &self.updates).await,
                    Err(err) => Err(Stop::Runtime(err)),
                },
            };
            if let Err(stop) = result {
                return stop;
            }
        }
    }
}

async fn next_event<S: RuntimeSource>(
    events: &mut Option<S::Events>,
) -> Result<S::Event, S::Error> {
    match events {
        Some(stream) => S::next_event(stream).await,
        None => std::future::pending().await,
    }
}

/// A container's entrypoint as seen from its init process, and its build-id.
pub struct Entrypoints {
    proc_root: PathBuf,
    build_ids: BuildIdCache,
}

impl Entrypoints {
    pub fn new(proc_root: PathBuf) -> Self {
        Entrypoints {
            proc_root,
            build_ids: BuildIdCache::default(),
        }
    }

    /// The entrypoint's path inside the container and its GNU build-id, while the init
    /// process runs.
    pub fn of(&mut self, init_pid: Option<u32>) -> (Option<String>, Option<String>) {
        let Some(pid) = init_pid else {
            return (None, None);
        };
        let exe = self.proc_root.join(pid.to_string()).join("exe");
        let path = std::fs::read_link(&exe)
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let code_id = path.as_ref().and_then(|_| self.build_ids.get(&exe));
        (path, code_id)
    }
}

#[cfg(test)]
mod tests;
