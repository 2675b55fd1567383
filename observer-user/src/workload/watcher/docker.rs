//! Docker Engine as a watcher source. A container outside Kubernetes is a workload of its
//! own, named by its labels ([`PodInfo::docker_container`]); a container cri-dockerd runs
//! for a Kubernetes pod (`io.kubernetes.*` labels) belongs to its pod as with a CRI runtime,
//! the pod being its sandbox container.
//!
//! The event stream drives everything after the first listing: `create`, `start` and
//! `rename` are looked up at once, so a container is described before its first process
//! runs; `die` carries the exit code, so a container's end is known even when it is removed
//! right after (`--rm`); a container removed before it could be inspected is described
//! from its events' attributes (name, image, labels), its image digest then unknown.
//!
//! How an inspection becomes a container's description is in [`inspected`], how an event
//! does in [`from_event`].

mod from_event;
mod inspected;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use observer_common::identity::PodRef;
use tracing::warn;

use self::inspected::name_of;
use super::{Entrypoints, RuntimeSource, Stop, Update, Updates};
use crate::{
    record::{ContainerInfo, ContainerState, ImageInfo, PodInfo},
    workload::{
        docker::{ContainerInspect, DockerClient, DockerError, Event, EventStream},
        runtime::{RuntimeKind, RuntimeVersion},
    },
};

/// Labels cri-dockerd (formerly dockershim) puts on the containers it runs for kubelet.
pub mod kubernetes_labels {
    pub const TYPE: &str = "io.kubernetes.docker.type";
    pub const TYPE_SANDBOX: &str = "podsandbox";
    pub const TYPE_CONTAINER: &str = "container";
    pub const SANDBOX_ID: &str = "io.kubernetes.sandbox.id";
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
}

use kubernetes_labels as k8s;

pub struct DockerSource {
    socket: PathBuf,
    timeout: Duration,
    /// Containers described, by id.
    containers: HashMap<String, Arc<ContainerInfo>>,
    /// Pods of cri-dockerd sandboxes, by sandbox container id.
    pods: HashMap<String, Arc<PodInfo>>,
    /// Each container's state at the last listing (polling describes what changed).
    listed: HashMap<String, String>,
    images: HashMap<(String, String), ImageInfo>,
    entrypoints: Entrypoints,
}

type Result<T> = std::result::Result<T, Stop<DockerError>>;

/// What a container is to Kubernetes.
enum Role<'a> {
    /// Not run for Kubernetes.
    Standalone,
    /// A pod's sandbox.
    Sandbox,
    /// A container of the pod whose sandbox this is.
    InPod(&'a str),
}

fn role(labels: &BTreeMap<String, String>) -> Role<'_> {
    match labels.get(k8s::TYPE).map(String::as_str) {
        Some(k8s::TYPE_SANDBOX) => Role::Sandbox,
        Some(k8s::TYPE_CONTAINER) => match labels.get(k8s::SANDBOX_ID) {
            Some(sandbox) if !sandbox.is_empty() => Role::InPod(sandbox),
            _ => Role::Standalone,
        },
        _ => Role::Standalone,
    }
}

/// The pod a cri-dockerd sandbox stands for (its labels are the pod's).
fn sandbox_pod(id: &str, labels: &BTreeMap<String, String>) -> PodInfo {
    let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
    PodInfo::docker_pod(
        id.to_owned(),
        PodRef {
            name: label(k8s::POD_NAME),
            namespace: label(k8s::POD_NAMESPACE),
            uid: label(k8s::POD_UID),
            labels: labels.clone(),
        },
    )
}

/// Docker's state names, as the records' states.
pub fn state_of(status: &str) -> ContainerState {
    match status {
        "created" => ContainerState::Created,
        "running" | "paused" => ContainerState::Running,
        // `restarting`: the last run ended and the engine will start it again.
        "exited" | "dead" | "removing" | "restarting" => ContainerState::Exited,
        _ => ContainerState::Unknown,
    }
}

impl DockerSource {
    pub fn new(socket: PathBuf, timeout: Duration, proc_root: PathBuf) -> Self {
        DockerSource {
            socket,
            timeout,
            containers: HashMap::new(),
            pods: HashMap::new(),
            listed: HashMap::new(),
            images: HashMap::new(),
            entrypoints: Entrypoints::new(proc_root),
        }
    }

    /// Inspects a container and reports it; false if the engine does not know it.
    async fn describe(&mut self, client: &DockerClient, id: &str, out: &Updates) -> Result<bool> {
        let Some(inspect) = client.inspect_container(id).await.map_err(Stop::Runtime)? else {
            return Ok(false);
        };
        self.describe_inspected(client, inspect, out).await?;
        Ok(true)
    }

    /// Reports what an inspection says.
    async fn describe_inspected(
        &mut self,
        client: &DockerClient,
        inspect: ContainerInspect,
        out: &Updates,
    ) -> Result<()> {
        let labels = inspect.config.labels.clone().unwrap_or_default();
        let pod = match role(&labels) {
            Role::Sandbox => {
                let pod = Arc::new(sandbox_pod(&inspect.id, &labels));
                self.warn_identity(&pod, &inspect.id);
                self.pods.insert(inspect.id.clone(), Arc::clone(&pod));
                out.send(Update::Pod(pod)).await?;
                return Ok(());
            }
            Role::InPod(sandbox) => match self.sandbox(client, sandbox, out).await? {
                Some(pod) => pod,
                None => {
                    // The sandbox is already gone; without it the container has no workload.
                    let failed = Update::ResolveFailed {
                        id: inspect.id.clone(),
                        retry: false,
                    };
                    out.send(failed).await?;
                    return Ok(());
                }
            },
            Role::Standalone => {
                let pod = PodInfo::docker_container(
                    inspect.id.clone(),
                    &name_of(&inspect),
                    labels.clone(),
                );
                let pod = Arc::new(pod);
                self.warn_identity(&pod, &inspect.id);
                pod
            }
        };
        let info = self.container_info(client, &inspect, &labels, pod).await?;
        self.publish(info, out).await
    }

    /// The pod of a cri-dockerd sandbox, inspecting it the first time.
    async fn sandbox(
        &mut self,
        client: &DockerClient,
        id: &str,
        out: &Updates,
    ) -> Result<Option<Arc<PodInfo>>> {
        if let Some(pod) = self.pods.get(id) {
            return Ok(Some(Arc::clone(pod)));
        }
        let Some(inspect) = client.inspect_container(id).await.map_err(Stop::Runtime)? else {
            return Ok(None);
        };
        let labels = inspect.config.labels.unwrap_or_default();
        let pod = Arc::new(sandbox_pod(&inspect.id, &labels));
        self.warn_identity(&pod, &inspect.id);
        self.pods.insert(id.to_owned(), Arc::clone(&pod));
        out.send(Update::Pod(Arc::clone(&pod))).await?;
        Ok(Some(pod))
    }

    fn warn_identity(&self, pod: &PodInfo, id: &str) {
        if self.containers.contains_key(id) || self.pods.contains_key(id) {
            return;
        }
        for error in &pod.identity_errors {
            warn!("Docker container {id}: {error}; the label is ignored");
        }
    }

    async fn publish(&mut self, info: ContainerInfo, out: &Updates) -> Result<()> {
        let info = Arc::new(info);
        self.containers.insert(info.id.clone(), Arc::clone(&info));
        out.send(Update::Container(info)).await?;
        Ok(())
    }

    async fn forget(&mut self, id: &str, out: &Updates) -> Result<()> {
        self.listed.remove(id);
        let known = self.containers.remove(id).is_some() | self.pods.remove(id).is_some();
        if known {
            out.send(Update::ContainerGone(id.to_owned())).await?;
        }
        Ok(())
    }
}

impl RuntimeSource for DockerSource {
    type Client = DockerClient;
    type Events = EventStream;
    type Event = Event;
    type Error = DockerError;

    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Docker
    }

    fn endpoint(&self) -> String {
        self.socket.display().to_string()
    }

    async fn connect(&self) -> std::result::Result<(DockerClient, RuntimeVersion), DockerError> {
        DockerClient::connect(&self.socket, self.timeout).await
    }

    async fn subscribe(
        &mut self,
        client: &DockerClient,
    ) -> std::result::Result<Option<EventStream>, DockerError> {
        match client.events().await {
            Ok(events) => Ok(Some(events)),
            // The engine refuses the stream (an API that only looks like Docker's): poll.
            Err(err @ DockerError::Status { .. }) => {
                warn!("{err}");
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    async fn next_event(events: &mut EventStream) -> std::result::Result<Event, DockerError> {
        events.next().await
    }

    async fn sync(
        &mut self,
        client: &DockerClient,
        reconnected: bool,
        out: &Updates,
    ) -> Result<()> {
        let listed = client.list_containers().await.map_err(Stop::Runtime)?;
        let mut seen = HashSet::new();
        for container in listed {
            seen.insert(container.id.clone());
            let changed = reconnected || self.listed.get(&container.id) != Some(&container.state);
            if changed {
                self.describe(client, &container.id, out).await?;
            }
            self.listed.insert(container.id, container.state);
        }
        let gone: Vec<String> = self
            .containers
            .keys()
            .chain(self.pods.keys())
            .chain(self.listed.keys())
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for id in gone {
            self.forget(&id, out).await?;
        }
        Ok(())
    }

    async fn resolve(&mut self, client: &DockerClient, id: &str, out: &Updates) -> Result<()> {
        if !self.describe(client, id, out).await? {
            let failed = Update::ResolveFailed {
                id: id.to_owned(),
                retry: false,
            };
            out.send(failed).await?;
        }
        Ok(())
    }

    async fn on_event(&mut self, client: &DockerClient, event: Event, out: &Updates) -> Result<()> {
        if event.kind != "container" || event.actor.id.is_empty() {
            return Ok(());
        }
        let id = event.actor.id.clone();
        match event.action.as_str() {
            "destroy" => self.forget(&id, out).await,
            "die" => {
                // The engine's own record of the exit is the most precise; the event's
                // stands in when the container is already gone (`--rm`), and comes first when
                // a restart policy has started it again already.
                let died = self.died(&event);
                let inspected = client.inspect_container(&id).await.map_err(Stop::Runtime)?;
                match (inspected, died) {
                    (Some(inspect), died) => {
                        let running = state_of(&inspect.state.status) != ContainerState::Exited;
                        if let (true, Some(died)) = (running, died) {
                            self.publish(died, out).await?;
                        }
                        self.describe_inspected(client, inspect, out).await
                    }
                    (None, Some(died)) => self.publish(died, out).await,
                    (None, None) => self.describe_from_event(&event, out).await,
                }
            }
            "create" | "start" | "rename" => {
                if !self.describe(client, &id, out).await? {
                    self.describe_from_event(&event, out).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
