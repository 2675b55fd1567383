//! The connection to the NATS servers: options with the credentials read at each connect
//! (so replaced files take effect), TLS, the client's own reconnection with backoff, its
//! events (connected, disconnected, credentials refused) counted and logged, and connect
//! failures by reason. Hands on a connected client.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use async_nats::{ClientError, ConnectErrorKind, ConnectOptions, Event, ServerAddr, ServerError};
use tracing::{info, warn};
use zastava_platform::metrics::{SINK_CONNECTED, SINK_ERRORS};

use super::{NatsConfig, NatsSink, NAME};
use crate::output::sinks::{backoff, Failure};

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
                backoff(attempts, Duration::from_secs(5)).max(Duration::from_millis(100))
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

    pub(super) async fn connect_client(&mut self) -> Result<async_nats::Client, Failure> {
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
