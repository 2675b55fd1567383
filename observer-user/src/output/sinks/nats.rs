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
//!
//! Here: `[sinks.nats]` and the publish; the client's connection is in [`connection`], the
//! stream's look-up and checks in [`stream`].

mod connection;
pub mod stream;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use async_nats::jetstream::{self, context::PublishErrorKind};
use serde::Deserialize;
use tracing::warn;
use zastava_platform::config::{bytes, duration};

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
