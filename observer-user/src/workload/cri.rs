//! A client for the Kubernetes CRI `runtime.v1` API over the runtime's unix socket.
//!
//! Every call has a deadline, so an unresponsive runtime is an error, never a hang.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tonic::{transport::Channel, Code};

use super::runtime::{RuntimeError, RuntimeKind, RuntimeVersion};

/// Generated from `proto/cri/runtime_v1.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs, reason = "generated code")]
pub mod proto {
    tonic::include_proto!("runtime.v1");
}

use proto::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};

/// Sockets tried, in order, when no endpoint is given: containerd, then CRI-O.
pub const DEFAULT_ENDPOINTS: [&str; 4] = [
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
];

/// The CRI API version this client speaks.
pub const API_VERSION: &str = "v1";

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("{endpoint}: cannot connect to the container runtime: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{endpoint}: {method} did not answer within {after:?}")]
    Timeout {
        endpoint: String,
        method: &'static str,
        after: Duration,
    },
    #[error("{endpoint}: {method} failed: {} ({})", status.message(), status.code())]
    Call {
        endpoint: String,
        method: &'static str,
        status: Box<tonic::Status>,
    },
    #[error(
        "{endpoint}: the runtime ({name} {version}) speaks CRI {api}, but the observer needs {API_VERSION}"
    )]
    UnsupportedApi {
        endpoint: String,
        name: String,
        version: String,
        api: String,
    },
}

impl CriError {
    /// The runtime does not implement the method (as opposed to failing it).
    pub fn is_unimplemented(&self) -> bool {
        matches!(self, CriError::Call { status, .. } if status.code() == Code::Unimplemented)
    }

    /// The socket answers, but not as a CRI runtime: the containerd that Docker Engine
    /// runs has its CRI plugin disabled, and answers every CRI call `Unimplemented`.
    pub fn is_not_cri(&self) -> bool {
        self.is_unimplemented() || matches!(self, CriError::UnsupportedApi { .. })
    }
}

impl RuntimeError for CriError {
    fn reason(&self) -> &'static str {
        match self {
            CriError::Connect { .. } => "connect",
            CriError::Timeout { .. } => "timeout",
            CriError::Call { status, .. } if status.code() == Code::Unavailable => "unavailable",
            CriError::Call { .. } => "call",
            CriError::UnsupportedApi { .. } => "api_version",
        }
    }
}

/// Picks the runtime socket: the one given, else the first default that exists.
pub fn resolve_endpoint(given: Option<&str>) -> Option<PathBuf> {
    match given {
        Some(endpoint) => Some(PathBuf::from(
            endpoint
                .strip_prefix("unix://")
                .or_else(|| endpoint.strip_prefix("unix:"))
                .unwrap_or(endpoint),
        )),
        None => DEFAULT_ENDPOINTS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists()),
    }
}

#[derive(Clone)]
pub struct CriClient {
    endpoint: String,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    timeout: Duration,
}

impl CriClient {
    /// Connects and checks the API version.
    pub async fn connect(
        socket: &Path,
        timeout: Duration,
    ) -> Result<(Self, RuntimeVersion), CriError> {
        let endpoint = socket.display().to_string();
        let connect_error = |source| CriError::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let channel = tonic::transport::Endpoint::from_shared(format!("unix://{endpoint}"))
            .map_err(connect_error)?
            .connect_timeout(timeout)
            .connect()
            .await
            .map_err(connect_error)?;
        let client = CriClient {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            endpoint,
            timeout,
        };
        let version = client.version().await?;
        if version.api_version != API_VERSION {
            return Err(CriError::UnsupportedApi {
                endpoint: client.endpoint.clone(),
                name: version.name,
                version: version.version,
                api: version.api_version,
            });
        }
        Ok((client, version))
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The generated client, for calls this wrapper does not cover.
    pub fn runtime_service(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }

    async fn call<T, F>(&self, method: &'static str, fut: F) -> Result<T, CriError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(CriError::Call {
                endpoint: self.endpoint.clone(),
                method,
                status: Box::new(status),
            }),
            Err(_) => Err(CriError::Timeout {
                endpoint: self.endpoint.clone(),
                method,
                after: self.timeout,
            }),
        }
    }

    pub async fn version(&self) -> Result<RuntimeVersion, CriError> {
        let mut runtime = self.runtime.clone();
        let reply = self
            .call(
                "Version",
                runtime.version(proto::VersionRequest {
                    version: API_VERSION.into(),
                }),
            )
            .await?;
        Ok(RuntimeVersion {
            kind: RuntimeKind::Cri,
            name: reply.runtime_name,
            version: reply.runtime_version,
            api_version: reply.runtime_api_version,
        })
    }

    pub async fn list_sandboxes(&self) -> Result<Vec<proto::PodSandbox>, CriError> {
        let mut runtime = self.runtime.clone();
        let reply = self
            .call(
                "ListPodSandbox",
                runtime.list_pod_sandbox(proto::ListPodSandboxRequest::default()),
            )
            .await?;
        Ok(reply.items)
    }

    /// Containers, all or the one with `id`.
    pub async fn list_containers(
        &self,
        id: Option<&str>,
    ) -> Result<Vec<proto::Container>, CriError> {
        let mut runtime = self.runtime.clone();
        let request = proto::ListContainersRequest {
            filter: id.map(|id| proto::ContainerFilter {
                id: id.into(),
                ..Default::default()
            }),
        };
        let reply = self
            .call("ListContainers", runtime.list_containers(request))
            .await?;
        Ok(reply.containers)
    }

    /// Status of a container with the runtime's extra info; `None` if it does not exist.
    pub async fn container_status(
        &self,
        id: &str,
    ) -> Result<Option<proto::ContainerStatusResponse>, CriError> {
        let mut runtime = self.runtime.clone();
        let request = proto::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        };
        not_found_is_none(
            self.call("ContainerStatus", runtime.container_status(request))
                .await,
        )
    }

    /// Status of a pod sandbox with the runtime's extra info; `None` if it does not exist.
    pub async fn sandbox_status(
        &self,
        id: &str,
    ) -> Result<Option<proto::PodSandboxStatusResponse>, CriError> {
        let mut runtime = self.runtime.clone();
        let request = proto::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        not_found_is_none(
            self.call("PodSandboxStatus", runtime.pod_sandbox_status(request))
                .await,
        )
    }

    /// The image known under `reference`; `None` if the runtime does not have it.
    pub async fn image_status(&self, reference: &str) -> Result<Option<proto::Image>, CriError> {
        let mut images = self.images.clone();
        let request = proto::ImageStatusRequest {
            image: Some(proto::ImageSpec {
                image: reference.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        let reply =
            not_found_is_none(self.call("ImageStatus", images.image_status(request)).await)?;
        Ok(reply.and_then(|r| r.image))
    }

    /// The runtime's container event stream (`Unimplemented` on runtimes without it).
    pub async fn container_events(
        &self,
    ) -> Result<tonic::Streaming<proto::ContainerEventResponse>, CriError> {
        let mut runtime = self.runtime.clone();
        self.call(
            "GetContainerEvents",
            runtime.get_container_events(proto::GetEventsRequest {}),
        )
        .await
    }
}

fn not_found_is_none<T>(result: Result<T, CriError>) -> Result<Option<T>, CriError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(CriError::Call { status, .. }) if status.code() == Code::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_unix_uris_and_paths() {
        assert_eq!(
            resolve_endpoint(Some("unix:///run/x.sock")),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(
            resolve_endpoint(Some("unix:/run/x.sock")),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(
            resolve_endpoint(Some("/tmp/y.sock")),
            Some(PathBuf::from("/tmp/y.sock"))
        );
    }
}
