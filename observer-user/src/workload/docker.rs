//! A client for the Docker Engine API over dockerd's unix socket: HTTP/1.1 (hyper), JSON
//! (serde), only the calls the watcher needs — version, list and inspect containers,
//! inspect an image, and the event stream.
//!
//! Every call but the event stream has a deadline, every reply a size bound, and every
//! error names the socket and the call; nothing a socket answers can panic the daemon. The
//! API version is the one the engine reports, so the paths are those of the engine's own
//! API (`/v1.41/...` on Docker 20.10), which keeps working across engine upgrades.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{body::Incoming, header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Deserialize};
use tokio::{net::UnixStream, task::JoinHandle};

use super::runtime::{RuntimeError, RuntimeKind, RuntimeVersion};

mod model;

use model::VersionReply;
pub use model::{
    Actor, ContainerInspect, ContainerSummary, Event, ImageInspect, InspectConfig, InspectState,
};

/// Sockets tried, in order, when no endpoint is given.
pub const DEFAULT_ENDPOINTS: [&str; 2] = ["/var/run/docker.sock", "/run/docker.sock"];

/// The oldest API this client reads: event filters by action and `timeNano` (Docker 1.12).
pub const MIN_API_VERSION: (u32, u32) = (1, 24);

/// Replies larger than this are refused (a `GET /containers/json` of thousands of
/// containers is a few MiB).
const MAX_REPLY_BYTES: usize = 32 << 20;
/// One event is well under a KiB; a "line" this long is not an event.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// The container events the watcher acts on.
pub const EVENT_ACTIONS: [&str; 5] = ["create", "start", "die", "destroy", "rename"];

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("{endpoint}: cannot connect to Docker Engine: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("{endpoint}: permission denied: the observer may not connect to Docker Engine's socket; run it as root, or give it write access to the socket (its group, usually `docker`)")]
    PermissionDenied { endpoint: String },
    #[error("{endpoint}: {call} did not answer within {after:?}")]
    Timeout {
        endpoint: String,
        call: String,
        after: Duration,
    },
    #[error("{endpoint}: this is not a Docker Engine API socket ({detail}); point docker.endpoint (--docker-endpoint) at dockerd's socket, or set docker.enabled = false (--no-docker)")]
    NotDocker { endpoint: String, detail: String },
    #[error("{endpoint}: {call} failed: HTTP {status}: {message}")]
    Status {
        endpoint: String,
        call: String,
        status: u16,
        message: String,
    },
    #[error("{endpoint}: {call}: the reply is not what Docker Engine sends: {detail}")]
    BadReply {
        endpoint: String,
        call: String,
        detail: String,
    },
    #[error("{endpoint}: {call}: the connection failed: {detail}")]
    Protocol {
        endpoint: String,
        call: String,
        detail: String,
    },
    #[error("{endpoint}: Docker Engine {version} speaks API {api}, but the observer needs {}.{} or newer", MIN_API_VERSION.0, MIN_API_VERSION.1)]
    TooOld {
        endpoint: String,
        version: String,
        api: String,
    },
    #[error("{endpoint}: the event stream ended (dockerd stopped or restarted)")]
    StreamEnded { endpoint: String },
}

impl RuntimeError for DockerError {
    fn reason(&self) -> &'static str {
        match self {
            DockerError::Connect { .. } => "connect",
            DockerError::PermissionDenied { .. } => "permission_denied",
            DockerError::Timeout { .. } => "timeout",
            DockerError::NotDocker { .. } => "not_docker",
            DockerError::Status { .. } => "http_status",
            DockerError::BadReply { .. } => "bad_reply",
            DockerError::Protocol { .. } => "protocol",
            DockerError::TooOld { .. } => "api_version",
            DockerError::StreamEnded { .. } => "stream_ended",
        }
    }
}

/// Picks the socket: the one given (a path or `unix://` URI), else the first default that
/// exists.
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

/// A connected client. Each call opens its own connection: a unix socket connect costs
/// microseconds, and no connection state can outlive a restarted dockerd.
#[derive(Clone, Debug)]
pub struct DockerClient {
    socket: PathBuf,
    endpoint: String,
    /// `/v1.41`: the engine's own API version.
    prefix: String,
    timeout: Duration,
}

impl DockerClient {
    /// Connects, checks that the socket is Docker Engine's, and learns its API version.
    pub async fn connect(
        socket: &Path,
        timeout: Duration,
    ) -> Result<(Self, RuntimeVersion), DockerError> {
        let mut client = DockerClient {
            socket: socket.to_owned(),
            endpoint: socket.display().to_string(),
            prefix: String::new(),
            timeout,
        };
        let not_docker = |endpoint: &str, detail: String| DockerError::NotDocker {
            endpoint: endpoint.to_owned(),
            detail,
        };
        let reply: VersionReply = match client.get("GET /version", "/version").await {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                return Err(not_docker(
                    &client.endpoint,
                    "GET /version answered HTTP 404".into(),
                ))
            }
            Err(DockerError::Status {
                status, message, ..
            }) => {
                return Err(not_docker(
                    &client.endpoint,
                    format!("GET /version answered HTTP {status}: {message}"),
                ))
            }
            Err(DockerError::BadReply { detail, .. }) => {
                return Err(not_docker(
                    &client.endpoint,
                    format!("GET /version did not answer Docker's JSON: {detail}"),
                ))
            }
            Err(DockerError::Protocol { detail, .. }) => {
                return Err(not_docker(
                    &client.endpoint,
                    format!("it does not answer HTTP/1.1: {detail}"),
                ))
            }
            Err(err) => return Err(err),
        };
        match parse_api_version(&reply.api_version) {
            Some(api) if api >= MIN_API_VERSION => {}
            Some(_) => {
                return Err(DockerError::TooOld {
                    endpoint: client.endpoint,
                    version: reply.version,
                    api: reply.api_version,
                })
            }
            None => {
                return Err(not_docker(
                    &client.endpoint,
                    format!("GET /version reports API version {:?}", reply.api_version),
                ))
            }
        }
        client.prefix = format!("/v{}", reply.api_version);
        let version = RuntimeVersion {
            kind: RuntimeKind::Docker,
            name: "docker".into(),
            version: reply.version,
            api_version: reply.api_version,
        };
        Ok((client, version))
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every container, running or not.
    pub async fn list_containers(&self) -> Result<Vec<ContainerSummary>, DockerError> {
        let path = format!("{}/containers/json?all=1", self.prefix);
        Ok(self
            .get("GET /containers/json", &path)
            .await?
            .unwrap_or_default())
    }

    /// A container; `None` if the engine does not know it (any more).
    pub async fn inspect_container(
        &self,
        id: &str,
    ) -> Result<Option<ContainerInspect>, DockerError> {
        let path = format!("{}/containers/{}/json", self.prefix, encode(id));
        self.get("GET /containers/{id}/json", &path).await
    }

    /// An image by id or reference; `None` if the engine does not have it.
    pub async fn inspect_image(&self, image: &str) -> Result<Option<ImageInspect>, DockerError> {
        let path = format!("{}/images/{}/json", self.prefix, encode(image));
        self.get("GET /images/{id}/json", &path).await
    }

    /// The container event stream, from now on.
    pub async fn events(&self) -> Result<EventStream, DockerError> {
        let actions: Vec<String> = EVENT_ACTIONS.iter().map(|a| format!("\"{a}\"")).collect();
        let filters = format!(
            r#"{{"type":["container"],"event":[{}]}}"#,
            actions.join(",")
        );
        let path = format!("{}/events?filters={}", self.prefix, encode(&filters));
        let call = "GET /events";
        let (response, conn) = self.send(call, &path).await?;
        let status = response.status();
        if !status.is_success() {
            let body = self.read_body(call, response.into_body()).await?;
            return Err(self.status_error(call, status, &body));
        }
        Ok(EventStream {
            endpoint: self.endpoint.clone(),
            body: response.into_body(),
            buf: Vec::new(),
            conn: AbortOnDrop(conn),
        })
    }

    /// A GET whose reply is JSON; `None` on 404.
    async fn get<T: DeserializeOwned>(
        &self,
        call: &str,
        path: &str,
    ) -> Result<Option<T>, DockerError> {
        let exchange = async {
            let (response, _conn) = self.send(call, path).await?;
            let status = response.status();
            let body = self.read_body(call, response.into_body()).await?;
            Ok::<_, DockerError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| DockerError::Timeout {
                endpoint: self.endpoint.clone(),
                call: call.to_owned(),
                after: self.timeout,
            })??;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.status_error(call, status, &body));
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| DockerError::BadReply {
                endpoint: self.endpoint.clone(),
                call: call.to_owned(),
                detail: format!("{e} (reply starts {:?})", preview(&body)),
            })
    }

    /// Opens a connection and sends a GET; returns the response head and the task that
    /// drives the connection.
    async fn send(
        &self,
        call: &str,
        path: &str,
    ) -> Result<(hyper::Response<Incoming>, JoinHandle<()>), DockerError> {
        let connect = async {
            let stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|source| match source.kind() {
                    io::ErrorKind::PermissionDenied => DockerError::PermissionDenied {
                        endpoint: self.endpoint.clone(),
                    },
                    _ => DockerError::Connect {
                        endpoint: self.endpoint.clone(),
                        source,
                    },
                })?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| self.protocol_error(call, &e))?;
            let conn = tokio::spawn(async move {
                // Its error, if any, is the response's or the body's, reported there.
                let _ = connection.await;
            });
            let request = Request::get(path)
                .header(header::HOST, "docker")
                .header(header::USER_AGENT, "zastava-observer")
                .body(Empty::<Bytes>::new())
                .map_err(|e| DockerError::BadReply {
                    endpoint: self.endpoint.clone(),
                    call: call.to_owned(),
                    detail: format!("cannot build the request for {path:?}: {e}"),
                })?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.protocol_error(call, &e))?;
            Ok((response, conn))
        };
        tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| DockerError::Timeout {
                endpoint: self.endpoint.clone(),
                call: call.to_owned(),
                after: self.timeout,
            })?
    }

    async fn read_body(&self, call: &str, body: Incoming) -> Result<Bytes, DockerError> {
        match Limited::new(body, MAX_REPLY_BYTES).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) => Err(DockerError::BadReply {
                endpoint: self.endpoint.clone(),
                call: call.to_owned(),
                detail: format!("cannot read the reply (at most {MAX_REPLY_BYTES} bytes): {e}"),
            }),
        }
    }

    fn status_error(&self, call: &str, status: StatusCode, body: &[u8]) -> DockerError {
        // Docker's errors are `{"message": "..."}`.
        #[derive(Deserialize)]
        struct Message {
            message: String,
        }
        let message = serde_json::from_slice::<Message>(body)
            .map(|m| m.message)
            .unwrap_or_else(|_| preview(body));
        DockerError::Status {
            endpoint: self.endpoint.clone(),
            call: call.to_owned(),
            status: status.as_u16(),
            message,
        }
    }

    fn protocol_error(&self, call: &str, error: &hyper::Error) -> DockerError {
        DockerError::Protocol {
            endpoint: self.endpoint.clone(),
            call: call.to_owned(),
            detail: error.to_string(),
        }
    }
}

/// The event stream: one JSON object per line.
pub struct EventStream {
    endpoint: String,
    body: Incoming,
    buf: Vec<u8>,
    conn: AbortOnDrop,
}

impl EventStream {
    /// The next event; an error when the stream breaks, ends, or sends something that is
    /// not an event (the watcher then reconnects and lists everything again).
    pub async fn next(&mut self) -> Result<Event, DockerError> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return serde_json::from_slice(line).map_err(|e| self.bad(e.to_string(), line));
            }
            if self.buf.len() > MAX_EVENT_BYTES {
                let detail = format!("{} bytes without a line end", self.buf.len());
                return Err(self.bad(detail, &self.buf[..64]));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(DockerError::Protocol {
                        endpoint: self.endpoint.clone(),
                        call: "GET /events".into(),
                        detail: e.to_string(),
                    })
                }
                None => {
                    return Err(DockerError::StreamEnded {
                        endpoint: self.endpoint.clone(),
                    })
                }
            }
        }
    }

    fn bad(&self, problem: String, data: &[u8]) -> DockerError {
        DockerError::BadReply {
            endpoint: self.endpoint.clone(),
            call: "GET /events".into(),
            detail: format!("{problem} (event starts {:?})", preview(data)),
        }
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("endpoint", &self.endpoint)
            .field("connection_finished", &self.conn.0.is_finished())
            .finish_non_exhaustive()
    }
}

/// Stops a connection task when its stream is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `1.41` → (1, 41).
pub fn parse_api_version(version: &str) -> Option<(u32, u32)> {
    let (major, minor) = version.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Percent-encodes everything but unreserved characters and `:` (image ids are
/// `sha256:<hex>`).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The start of a reply, for error messages.
fn preview(data: &[u8]) -> String {
    let end = data.len().min(64);
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// Docker's RFC 3339 times (`2024-05-01T10:00:00.123456789Z`) as nanoseconds since the
/// epoch; 0 for "never" (`0001-01-01T00:00:00Z`) and anything unreadable.
pub fn parse_time_ns(time: &str) -> i64 {
    humantime::parse_rfc3339(time)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;
