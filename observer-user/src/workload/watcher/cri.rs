//! A CRI runtime (containerd, CRI-O) as a watcher source: sandboxes are pods, containers
//! belong to a sandbox. A container that started and exited between two polls is still
//! described: the runtime keeps exited containers until they are removed.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use observer_common::identity::PodRef;
use tracing::warn;

use super::{Entrypoints, RuntimeSource, Stop, Update, Updates};
use crate::{
    record::{ContainerInfo, ContainerState, ImageInfo, PodInfo},
    workload::{
        cri::{proto, CriClient, CriError},
        image::{image_info, ImageFacts},
        runtime::{RuntimeKind, RuntimeVersion},
    },
};

pub struct CriSource {
    socket: PathBuf,
    timeout: Duration,
    pods: HashMap<String, Arc<PodInfo>>,
    containers: HashMap<String, ContainerState>,
    images: HashMap<(String, String), ImageInfo>,
    entrypoints: Entrypoints,
}

type Result<T> = std::result::Result<T, Stop<CriError>>;

/// The runtime's container event stream.
pub struct CriEvents {
    stream: tonic::Streaming<proto::ContainerEventResponse>,
    endpoint: String,
}

impl CriSource {
    pub fn new(socket: PathBuf, timeout: Duration, proc_root: PathBuf) -> Self {
        CriSource {
            socket,
            timeout,
            pods: HashMap::new(),
            containers: HashMap::new(),
            images: HashMap::new(),
            entrypoints: Entrypoints::new(proc_root),
        }
    }

    /// Describes one container (or sandbox) by id. `asked`: the pipeline is waiting for an
    /// answer, so say when there is none.
    async fn lookup(
        &mut self,
        client: &CriClient,
        id: &str,
        asked: bool,
        out: &Updates,
    ) -> Result<()> {
        let listed = client
            .list_containers(Some(id))
            .await
            .map_err(Stop::Runtime)?;
        if let Some(container) = listed.into_iter().next() {
            return self.describe_container(client, container, out).await;
        }
        if self.pods.contains_key(id) || self.pod(client, id, out).await?.is_some() {
            return Ok(());
        }
        if asked {
            let failed = Update::ResolveFailed {
                id: id.to_owned(),
                retry: true,
            };
            out.send(failed).await?;
        } else if self.containers.remove(id).is_some() {
            out.send(Update::ContainerGone(id.to_owned())).await?;
        }
        Ok(())
    }

    /// The pod of a sandbox, asking the runtime (and telling the pipeline) the first time.
    async fn pod(
        &mut self,
        client: &CriClient,
        sandbox_id: &str,
        out: &Updates,
    ) -> Result<Option<Arc<PodInfo>>> {
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
        out.send(Update::Pod(Arc::clone(&pod))).await?;
        Ok(Some(pod))
    }

    async fn describe_container(
        &mut self,
        client: &CriClient,
        container: proto::Container,
        out: &Updates,
    ) -> Result<()> {
        let failed = |id: String| Update::ResolveFailed { id, retry: false };
        let Some(pod) = self.pod(client, &container.pod_sandbox_id, out).await? else {
            // The sandbox is already gone; without it the container has no workload.
            out.send(failed(container.id)).await?;
            return Ok(());
        };
        let Some(reply) = client
            .container_status(&container.id)
            .await
            .map_err(Stop::Runtime)?
        else {
            out.send(failed(container.id)).await?;
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
        let (entrypoint, entrypoint_code_id) = self.entrypoints.of(init_pid);
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
        out.send(Update::Container(Arc::new(info))).await?;
        Ok(())
    }

    /// What the runtime knows about an image's digest (cached per reference).
    async fn image(
        &mut self,
        client: &CriClient,
        requested: &str,
        image_ref: &str,
    ) -> Result<ImageInfo> {
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
        let facts = image.as_ref().map(|i| ImageFacts {
            id: &i.id,
            repo_tags: &i.repo_tags,
            repo_digests: &i.repo_digests,
        });
        let info = image_info(requested, image_ref, facts);
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

impl RuntimeSource for CriSource {
    type Client = CriClient;
    type Events = CriEvents;
    type Event = proto::ContainerEventResponse;
    type Error = CriError;

    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Cri
    }

    fn endpoint(&self) -> String {
        self.socket.display().to_string()
    }

    async fn connect(&self) -> std::result::Result<(CriClient, RuntimeVersion), CriError> {
        CriClient::connect(&self.socket, self.timeout).await
    }

    async fn subscribe(
        &mut self,
        client: &CriClient,
    ) -> std::result::Result<Option<Self::Events>, CriError> {
        match client.container_events().await {
            Ok(stream) => Ok(Some(CriEvents {
                stream,
                endpoint: client.endpoint().to_owned(),
            })),
            Err(err) if err.is_unimplemented() => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn next_event(events: &mut Self::Events) -> std::result::Result<Self::Event, CriError> {
        let endpoint = events.endpoint.clone();
        match events.stream.message().await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err(CriError::Call {
                endpoint,
                method: "GetContainerEvents",
                status: Box::new(tonic::Status::unavailable("event stream ended")),
            }),
            Err(status) => Err(CriError::Call {
                endpoint,
                method: "GetContainerEvents",
                status: Box::new(status),
            }),
        }
    }

    async fn sync(&mut self, client: &CriClient, _reconnected: bool, out: &Updates) -> Result<()> {
        let sandboxes = client.list_sandboxes().await.map_err(Stop::Runtime)?;
        let listed_sandboxes: HashSet<String> = sandboxes.iter().map(|s| s.id.clone()).collect();
        for sandbox in sandboxes {
            if !self.pods.contains_key(&sandbox.id) {
                self.pod(client, &sandbox.id, out).await?;
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
            out.send(Update::ContainerGone(id)).await?;
        }
        let listed = client.list_containers(None).await.map_err(Stop::Runtime)?;
        let mut seen = HashSet::new();
        for container in listed {
            seen.insert(container.id.clone());
            let state = state_of(container.state);
            if self.containers.get(&container.id) != Some(&state) {
                self.describe_container(client, container, out).await?;
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
            out.send(Update::ContainerGone(id)).await?;
        }
        Ok(())
    }

    async fn resolve(&mut self, client: &CriClient, id: &str, out: &Updates) -> Result<()> {
        self.lookup(client, id, true, out).await
    }

    async fn on_event(
        &mut self,
        client: &CriClient,
        event: Self::Event,
        out: &Updates,
    ) -> Result<()> {
        self.lookup(client, &event.container_id, false, out).await
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
