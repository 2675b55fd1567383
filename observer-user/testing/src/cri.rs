//! The CRI `runtime.v1` API from the test side, generated from `proto/cri/` apart from the
//! observer's own client:
//!
//! - [`connect`]: a client to drive a real runtime (the tests' private containerd) with, so
//!   that the observer's client is what is tested, not what the tests rely on;
//! - [`FakeRuntime`]: a runtime for the one behaviour the real one cannot show here —
//!   containerd 1.6 has no `GetContainerEvents` stream, so the watcher's event-driven path
//!   needs a runtime that has one. Pods, containers and images are whatever the test puts
//!   in; every call is counted.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
};

use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

#[allow(clippy::all, clippy::pedantic, reason = "generated")]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/runtime.v1.rs"));
}

/// The runtime and image services of the runtime listening on `socket`.
pub async fn connect(
    socket: &Path,
    timeout: std::time::Duration,
) -> Result<
    (
        proto::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
        proto::image_service_client::ImageServiceClient<tonic::transport::Channel>,
    ),
    tonic::transport::Error,
> {
    let channel = tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))?
        .connect_timeout(timeout)
        .connect()
        .await?;
    Ok((
        proto::runtime_service_client::RuntimeServiceClient::new(channel.clone()),
        proto::image_service_client::ImageServiceClient::new(channel),
    ))
}

use proto::{
    image_service_server::{ImageService, ImageServiceServer},
    runtime_service_server::{RuntimeService, RuntimeServiceServer},
};

/// One message of the container event stream.
pub type EventMessage = Result<proto::ContainerEventResponse, Status>;

/// What the runtime knows; the test changes it while the runtime serves.
#[derive(Default)]
pub struct State {
    pub sandboxes: Vec<proto::PodSandboxStatus>,
    pub containers: Vec<proto::ContainerStatus>,
    /// Container id → the sandbox it belongs to.
    pub sandbox_of: HashMap<String, String>,
    pub images: Vec<proto::Image>,
    /// Calls by method name.
    pub calls: HashMap<&'static str, u64>,
}

#[derive(Clone)]
pub struct FakeRuntime {
    pub state: Arc<Mutex<State>>,
    events: Arc<Mutex<Option<mpsc::Receiver<EventMessage>>>>,
}

impl FakeRuntime {
    /// Serves on `socket`; container events are sent with the returned sender.
    pub fn serve(socket: &Path) -> (FakeRuntime, mpsc::Sender<EventMessage>) {
        let (tx, rx) = mpsc::channel(16);
        let runtime = FakeRuntime {
            state: Arc::default(),
            events: Arc::new(Mutex::new(Some(rx))),
        };
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(RuntimeServiceServer::new(runtime.clone()))
            .add_service(ImageServiceServer::new(runtime.clone()))
            .serve_with_incoming(UnixListenerStream::new(listener));
        tokio::spawn(server);
        (runtime, tx)
    }

    pub fn calls(&self, method: &str) -> u64 {
        self.state
            .lock()
            .unwrap()
            .calls
            .get(method)
            .copied()
            .unwrap_or(0)
    }

    fn count(&self, method: &'static str) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap();
        *state.calls.entry(method).or_default() += 1;
        state
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this runtime"))
}

#[tonic::async_trait]
impl RuntimeService for FakeRuntime {
    async fn version(
        &self,
        _: Request<proto::VersionRequest>,
    ) -> Result<Response<proto::VersionResponse>, Status> {
        drop(self.count("Version"));
        Ok(Response::new(proto::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "fake-runtime".into(),
            runtime_version: "1.0".into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        _: Request<proto::RunPodSandboxRequest>,
    ) -> Result<Response<proto::RunPodSandboxResponse>, Status> {
        unimplemented()
    }

    async fn stop_pod_sandbox(
        &self,
        _: Request<proto::StopPodSandboxRequest>,
    ) -> Result<Response<proto::StopPodSandboxResponse>, Status> {
        unimplemented()
    }

    async fn remove_pod_sandbox(
        &self,
        _: Request<proto::RemovePodSandboxRequest>,
    ) -> Result<Response<proto::RemovePodSandboxResponse>, Status> {
        unimplemented()
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<proto::PodSandboxStatusRequest>,
    ) -> Result<Response<proto::PodSandboxStatusResponse>, Status> {
        let state = self.count("PodSandboxStatus");
        let id = &request.get_ref().pod_sandbox_id;
        let status = state.sandboxes.iter().find(|s| &s.id == id).cloned();
        match status {
            Some(status) => Ok(Response::new(proto::PodSandboxStatusResponse {
                status: Some(status),
                info: HashMap::new(),
            })),
            None => Err(Status::not_found(format!("sandbox {id}"))),
        }
    }

    async fn list_pod_sandbox(
        &self,
        _: Request<proto::ListPodSandboxRequest>,
    ) -> Result<Response<proto::ListPodSandboxResponse>, Status> {
        let state = self.count("ListPodSandbox");
        let items = state
            .sandboxes
            .iter()
            .map(|s| proto::PodSandbox {
                id: s.id.clone(),
                metadata: s.metadata.clone(),
                state: s.state,
                created_at: s.created_at,
                labels: s.labels.clone(),
                annotations: s.annotations.clone(),
                runtime_handler: s.runtime_handler.clone(),
            })
            .collect();
        Ok(Response::new(proto::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        _: Request<proto::CreateContainerRequest>,
    ) -> Result<Response<proto::CreateContainerResponse>, Status> {
        unimplemented()
    }

    async fn start_container(
        &self,
        _: Request<proto::StartContainerRequest>,
    ) -> Result<Response<proto::StartContainerResponse>, Status> {
        unimplemented()
    }

    async fn stop_container(
        &self,
        _: Request<proto::StopContainerRequest>,
    ) -> Result<Response<proto::StopContainerResponse>, Status> {
        unimplemented()
    }

    async fn remove_container(
        &self,
        _: Request<proto::RemoveContainerRequest>,
    ) -> Result<Response<proto::RemoveContainerResponse>, Status> {
        unimplemented()
    }

    async fn list_containers(
        &self,
        request: Request<proto::ListContainersRequest>,
    ) -> Result<Response<proto::ListContainersResponse>, Status> {
        let state = self.count("ListContainers");
        let wanted = request
            .get_ref()
            .filter
            .as_ref()
            .map(|f| f.id.clone())
            .filter(|id| !id.is_empty());
        let containers = state
            .containers
            .iter()
            .filter(|c| wanted.as_ref().is_none_or(|id| &c.id == id))
            .map(|c| proto::Container {
                id: c.id.clone(),
                pod_sandbox_id: state.sandbox_of.get(&c.id).cloned().unwrap_or_default(),
                metadata: c.metadata.clone(),
                image: c.image.clone(),
                image_ref: c.image_ref.clone(),
                state: c.state,
                created_at: c.created_at,
                labels: c.labels.clone(),
                annotations: c.annotations.clone(),
                image_id: c.image_id.clone(),
            })
            .collect();
        Ok(Response::new(proto::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        request: Request<proto::ContainerStatusRequest>,
    ) -> Result<Response<proto::ContainerStatusResponse>, Status> {
        let state = self.count("ContainerStatus");
        let id = &request.get_ref().container_id;
        match state.containers.iter().find(|c| &c.id == id).cloned() {
            Some(status) => Ok(Response::new(proto::ContainerStatusResponse {
                status: Some(status),
                info: HashMap::new(),
            })),
            None => Err(Status::not_found(format!("container {id}"))),
        }
    }

    async fn exec_sync(
        &self,
        _: Request<proto::ExecSyncRequest>,
    ) -> Result<Response<proto::ExecSyncResponse>, Status> {
        unimplemented()
    }

    type GetContainerEventsStream = ReceiverStream<Result<proto::ContainerEventResponse, Status>>;

    async fn get_container_events(
        &self,
        _: Request<proto::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        drop(self.count("GetContainerEvents"));
        match self.events.lock().unwrap().take() {
            Some(rx) => Ok(Response::new(ReceiverStream::new(rx))),
            None => Err(Status::unavailable("the event stream was taken already")),
        }
    }
}

#[tonic::async_trait]
impl ImageService for FakeRuntime {
    async fn image_status(
        &self,
        request: Request<proto::ImageStatusRequest>,
    ) -> Result<Response<proto::ImageStatusResponse>, Status> {
        let state = self.count("ImageStatus");
        let wanted = request
            .get_ref()
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let image = state
            .images
            .iter()
            .find(|i| i.id == wanted || i.repo_tags.contains(&wanted))
            .cloned();
        Ok(Response::new(proto::ImageStatusResponse {
            image,
            info: HashMap::new(),
        }))
    }
}
