//! NATS JetStream: every batch is published to `sinks.nats.subject`
//! (`zastava.runtime.events`, with `.<tenant>` appended when `sinks.nats.tenant` is set) with
//! the batch id as `Nats-Msg-Id`, so the stream's duplicate window makes retries
//! exactly-once; the cursor moves only once the stream's acknowledgement arrived (`duplicate`
//! in it when the stream had the batch already). The payload is the batch envelope as the
//! backend gets it, gzip-encoded JSON, with `Content-Type`, `Content-Encoding`,
//! `Zastava-Schema-Version` and `Zastava-Events` headers.
//!
//! On connect the stream is looked up and checked ([`stream::check`]), or created when
//! `sinks.nats.stream.create` says so. The client reconnects by itself with backoff after a
//! connection is lost; a publish that gets no acknowledgement in `sinks.nats.timeout` (the
//! stream electing a new leader, the server away) is sent again with the same id.
//! Speaks the JetStream API of nats-server 2.9 and later.

pub mod stream;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use async_nats::{
    jetstream::{self, context::PublishErrorKind, stream::Config as StreamInfoConfig},
    ClientError, ConnectErrorKind, ConnectOptions, Event, ServerAddr, ServerError,
};
use serde::Deserialize;
use tracing::{info, warn};
use zastava_platform::{
    config::{bytes, duration},
    metrics::{SINK_CONNECTED, SINK_ERRORS},
};

use super::{Failure, Outcome, Sink};
use crate::{output::spool::SpoolEntry, record::SCHEMA_VERSION};

/// The sink's name (label, cursor, dead-letter file).
pub const NAME: &str = "nats";
/// The channel's name, as the platform's alignment design names it.
pub const DEFAULT_SUBJECT: &str = "zastava.runtime.events";

/// `[sinks.nats]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    pub enabled: bool,
    /// Server URLs (`nats://host:4222`, `tls://host:4222`); the rest of a cluster is
    /// discovered from the first that answers.
    pub servers: Vec<String>,
    pub subject: String,
    /// Appended to the subject as one more token, so consumers can pick one tenant.
    pub tenant: Option<String>,
    /// User name, with its password in `password_file`.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// A file holding a token.
    pub token_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and nkey seed), as `nsc` writes it.
    pub creds_file: Option<PathBuf>,
    /// A file holding an nkey seed (`SU...`).
    pub nkey_seed_file: Option<PathBuf>,
    /// Require TLS even if the servers' URLs say `nats://`.
    pub tls: bool,
    /// PEM CA bundle to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// How long to wait for a publish's acknowledgement (and for the stream API).
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Upper bound of the retry backoff.
    #[serde(deserialize_with = "duration")]
    pub max_backoff: Duration,
    pub stream: StreamSettings,
}

/// `[sinks.nats.stream]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    pub name: String,
    /// Create the stream when it does not exist.
    pub create: bool,
    /// Check an existing stream (subjects, duplicate window, replicas); off for a user
    /// allowed to publish only.
    pub check: bool,
    pub replicas: usize,
    #[serde(deserialize_with = "duration")]
    pub max_age: Duration,
    /// 0: no limit.
    #[serde(deserialize_with = "bytes")]
    pub max_bytes: u64,
    #[serde(deserialize_with = "duration")]
    pub duplicate_window: Duration,
    pub storage: Storage,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    File,
    Memory,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            enabled: false,
            servers: Vec::new(),
            subject: DEFAULT_SUBJECT.into(),
            tenant: None,
            user: None,
            password_file: None,
            token_file: None,
            creds_file: None,
            nkey_seed_file: None,
            tls: false,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(30),
            stream: StreamSettings::default(),
        }
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            name: "ZASTAVA_RUNTIME_EVENTS".into(),
            create: false,
            check: true,
            replicas: 1,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 0,
            duplicate_window: Duration::from_secs(600),
            storage: Storage::File,
        }
    }
}

impl NatsConfig {
    /// The subject batches are published to.
    pub fn publish_subject(&self) -> String {
        match &self.tenant {
            Some(tenant) => format!("{}.{tenant}", self.subject),
            None => self.subject.clone(),
        }
    }

    /// The longest time between a first try of a batch and its last retry: what the
    /// stream's duplicate window must cover.
    pub fn retry_within(&self) -> Duration {
        self.timeout + self.max_backoff
    }
}

pub struct NatsSink {
    config: NatsConfig,
    subject: String,
    client: Option<async_nats::Client>,
    jetstream: Option<jetstream::Context>,
    /// Set once a warning about the stream's other settings was logged.
    warned: bool,
    /// Set by the client when a server refused the credentials on a reconnect: the client
    /// is then made anew, with the credential files read again.
    refused: Arc<AtomicBool>,
}

/// Reads a secret from a file, trimmed of surrounding whitespace.
fn secret(key: &str, path: &PathBuf) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| {
            Failure::reconnect(
                "credentials",
                format!("{key}: cannot read {}: {e}", path.display()),
            )
        })
}

impl NatsSink {
    pub fn new(config: NatsConfig) -> Self {
        NatsSink {
            subject: config.publish_subject(),
            config,
            client: None,
            jetstream: None,
            warned: false,
            refused: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Connection options, with the credentials read now (so replaced files take effect
    /// at the next connect).
    async fn options(&self) -> Result<ConnectOptions, Failure> {
        let c = &self.config;
        // The first `Connected` event is the connection this call makes; later ones are
        // reconnections.
        let connected_before = Arc::new(AtomicBool::new(false));
        let refused = Arc::clone(&self.refused);
        let mut options = ConnectOptions::new()
            .name("zastava-observer")
            .connection_timeout(c.connect_timeout)
            .request_timeout(Some(c.timeout))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
                super::backoff(attempts, Duration::from_secs(5)).max(Duration::from_millis(100))
            })
            .event_callback(move |event| {
                let (connected_before, refused) =
                    (Arc::clone(&connected_before), Arc::clone(&refused));
                async move { on_event(&event, &connected_before, &refused) }
            });
        if let (Some(user), Some(file)) = (&c.user, &c.password_file) {
            options =
                options.user_and_password(user.clone(), secret("sinks.nats.password_file", file)?);
        }
        if let Some(file) = &c.token_file {
            options = options.token(secret("sinks.nats.token_file", file)?);
        }
        if let Some(file) = &c.nkey_seed_file {
            options = options.nkey(secret("sinks.nats.nkey_seed_file", file)?);
        }
        if let Some(file) = &c.creds_file {
            options = options.credentials_file(file).await.map_err(|e| {
                Failure::reconnect(
                    "credentials",
                    format!("sinks.nats.creds_file: cannot use {}: {e}", file.display()),
                )
            })?;
        }
        let tls_wanted = c.tls
            || c.ca_file.is_some()
            || c.client_cert_file.is_some()
            || c.servers.iter().any(|s| s.starts_with("tls://"));
        if tls_wanted {
            let identity = match (&c.client_cert_file, &c.client_key_file) {
                (Some(cert), Some(key)) => Some((
                    ("sinks.nats.client_cert_file", cert.as_path()),
                    ("sinks.nats.client_key_file", key.as_path()),
                )),
                _ => None,
            };
            let ca = c.ca_file.as_deref().map(|p| ("sinks.nats.ca_file", p));
            let tls = zastava_platform::tls::client_config(ca, identity)
                .map_err(|e| Failure::reconnect("tls", e.to_string()))?;
            options = options.tls_client_config(tls).require_tls(true);
        }
        Ok(options)
    }

    async fn connect_client(&mut self) -> Result<async_nats::Client, Failure> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let servers: Vec<ServerAddr> = self
            .config
            .servers
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        self.refused.store(false, Ordering::Relaxed);
        let options = self.options().await?;
        let client = options
            .connect(servers)
            .await
            .map_err(|e| connect_failure(&e.kind(), &e.to_string(), &self.config))?;
        info!(
            "nats: connected to {} (server {})",
            client.server_info().host,
            client.server_info().server_name
        );
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Looks the stream up and checks it, creating it when configured to.
    async fn ensure_stream(&mut self, js: &jetstream::Context) -> Result<(), Failure> {
        let settings = &self.config.stream;
        let found = match js.get_stream(&settings.name).await {
            Ok(stream) => Some(stream.cached_info().config.clone()),
            Err(err) => match err.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(e)
                    if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    None
                }
                jetstream::context::GetStreamErrorKind::JetStream(e)
                    if e.error_code() == jetstream::ErrorCode::JETSTREAM_NOT_ENABLED =>
                {
                    return Err(Failure::reconnect(
                        "no_jetstream",
                        format!("the NATS server does not have JetStream enabled ({e}); start it with JetStream (-js, or a jetstream block)"),
                    ));
                }
                _ => {
                    return Err(Failure::reconnect(
                        "stream_api",
                        format!("cannot look up stream {}: {err}", settings.name),
                    ))
                }
            },
        };
        let found = match found {
            Some(found) => found,
            None if settings.create => self.create_stream(js).await?,
            None => {
                return Err(Failure::reconnect(
                    "no_stream",
                    format!(
                        "stream {} does not exist; create it (subjects {}, {}), or set sinks.nats.stream.create = true",
                        settings.name,
                        self.config.subject,
                        format_args!("{}.>", self.config.subject)
                    ),
                ))
            }
        };
        self.check_stream(&found)
    }

    async fn create_stream(&self, js: &jetstream::Context) -> Result<StreamInfoConfig, Failure> {
        let want = stream::desired(&self.config);
        match js.create_stream(want.clone()).await {
            Ok(created) => {
                let replicas = created.cached_info().config.num_replicas;
                info!(
                    "nats: created stream {} (subjects {:?}, {replicas} replica(s), duplicate window {})",
                    want.name,
                    want.subjects,
                    humantime::format_duration(want.duplicate_window)
                );
                Ok(created.cached_info().config.clone())
            }
            // Another observer created it first.
            Err(err) => match js.get_stream(&want.name).await {
                Ok(stream) => Ok(stream.cached_info().config.clone()),
                Err(_) => Err(Failure::reconnect(
                    "stream_config",
                    format!(
                        "cannot create stream {}: {err}; check the server's JetStream limits and that {} servers can hold a replica",
                        want.name, want.num_replicas
                    ),
                )),
            },
        }
    }

    fn check_stream(&mut self, found: &StreamInfoConfig) -> Result<(), Failure> {
        if !self.config.stream.check {
            return Ok(());
        }
        let verdict = stream::check(
            found,
            &self.config,
            &self.subject,
            self.config.retry_within(),
        );
        if !verdict.errors.is_empty() {
            return Err(Failure::reconnect(
                "stream_config",
                verdict.errors.join("; "),
            ));
        }
        if !self.warned {
            for warning in &verdict.warnings {
                warn!("nats: {warning}");
            }
            self.warned = true;
        }
        Ok(())
    }
}

/// The client's own view of the connection: counted, and logged.
fn on_event(event: &Event, connected_before: &AtomicBool, refused: &AtomicBool) {
    match event {
        Event::Connected => {
            metrics::gauge!(SINK_CONNECTED.name, "sink" => NAME).set(1.0);
            if connected_before.swap(true, Ordering::Relaxed) {
                info!("nats: reconnected");
            }
        }
        Event::Disconnected => {
            metrics::gauge!(SINK_CONNECTED.name, "sink" => NAME).set(0.0);
            warn!("nats: disconnected; reconnecting");
        }
        // Refused at connect time the server's error comes as the client's own.
        Event::ServerError(ServerError::AuthorizationViolation) | Event::ClientError(_)
            if is_refusal(event) =>
        {
            refused.store(true, Ordering::Relaxed);
            metrics::counter!(SINK_ERRORS.name, "sink" => NAME, "reason" => "auth").increment(1);
            warn!("nats: the server refused the credentials (authorization violation); check sinks.nats.user/password_file, token_file, creds_file or nkey_seed_file");
        }
        Event::ServerError(err) => warn!("nats: server error: {err}"),
        Event::ClientError(err) => warn!("nats: client error: {err}"),
        Event::LameDuckMode => info!("nats: the server is going away (lame duck mode)"),
        Event::Draining | Event::Closed | Event::SlowConsumer(_) => {}
    }
}

/// Whether the client reports that a server refused the credentials.
fn is_refusal(event: &Event) -> bool {
    match event {
        Event::ServerError(ServerError::AuthorizationViolation) => true,
        Event::ClientError(ClientError::Other(text)) => text
            .to_ascii_lowercase()
            .contains("authorization violation"),
        _ => false,
    }
}

fn connect_failure(kind: &ConnectErrorKind, text: &str, config: &NatsConfig) -> Failure {
    let servers = config.servers.join(", ");
    let (reason, message) = match kind {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => (
            "auth",
            format!("the NATS server refused the credentials ({text}); check sinks.nats.user/password_file, token_file, creds_file or nkey_seed_file"),
        ),
        ConnectErrorKind::Tls => (
            "tls",
            format!("TLS with the NATS server failed ({text}); check sinks.nats.ca_file and the server's certificate names"),
        ),
        ConnectErrorKind::TimedOut => (
            "timeout",
            format!("no NATS server answered within sinks.nats.connect_timeout ({servers})"),
        ),
        ConnectErrorKind::ServerParse | ConnectErrorKind::Dns => {
            ("connect", format!("cannot resolve the NATS servers ({servers}): {text}"))
        }
        ConnectErrorKind::Io | ConnectErrorKind::MaxReconnects => (
            "connect",
            format!("cannot connect to any NATS server ({servers}): {text}"),
        ),
    };
    Failure::reconnect(reason, message)
}

impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn connect(&mut self) -> Result<(), Failure> {
        let client = self.connect_client().await?;
        let mut js = jetstream::new(client);
        js.set_timeout(self.config.timeout);
        self.ensure_stream(&js).await?;
        self.jetstream = Some(js);
        Ok(())
    }

    async fn deliver(&mut self, entry: &SpoolEntry) -> Outcome {
        let Some(js) = &self.jetstream else {
            return Outcome::Failed(Failure::reconnect("connect", "not connected"));
        };
        let message = jetstream::message::PublishMessage::build()
            .message_id(&entry.batch_id)
            .header("Content-Type", "application/json")
            .header("Content-Encoding", "gzip")
            .header(
                "Zastava-Schema-Version",
                SCHEMA_VERSION.to_string().as_str(),
            )
            .header("Zastava-Events", entry.events.to_string().as_str())
            .payload(entry.body.clone().into());
        let acked = match js.send_publish(self.subject.clone(), message).await {
            Ok(ack) => ack.await,
            Err(err) => Err(err),
        };
        if acked.is_err() && self.refused.swap(false, Ordering::Relaxed) {
            // The client would retry with the credentials it started with forever.
            self.client = None;
            self.jetstream = None;
            return Outcome::Failed(Failure::reconnect(
                "auth",
                "a NATS server refused the credentials on reconnect; connecting again with the credential files read anew",
            ));
        }
        match acked {
            Ok(ack) => {
                if ack.stream != self.config.stream.name && !self.warned {
                    warn!(
                        "nats: batches on {} are stored by stream {}, not {} (sinks.nats.stream.name)",
                        self.subject, ack.stream, self.config.stream.name
                    );
                    self.warned = true;
                }
                Outcome::Delivered {
                    duplicate: ack.duplicate,
                }
            }
            Err(err) => match err.kind() {
                PublishErrorKind::MaxPayloadExceeded => Outcome::Rejected {
                    status: None,
                    reason: format!("{err}: the batch is larger than the server's max_payload; raise max_payload or lower batch.max_events"),
                },
                PublishErrorKind::StreamNotFound => Outcome::Failed(Failure::reconnect(
                    "no_stream",
                    format!("no stream takes subject {} (no responders)", self.subject),
                )),
                PublishErrorKind::TimedOut => Outcome::Failed(Failure::new(
                    "timeout",
                    "no acknowledgement within sinks.nats.timeout (the server is away, or the stream is electing a leader)",
                )),
                PublishErrorKind::BrokenPipe => Outcome::Failed(Failure::new(
                    "connect",
                    "the connection was lost before the acknowledgement",
                )),
                _ => Outcome::Failed(Failure::new("publish", err.to_string())),
            },
        }
    }
}
