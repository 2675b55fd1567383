//! `zastava-webhook`: a validating admission webhook that asks the Scanner backend whether
//! a pod's images may run, answers from a cache, keeps a strict time budget, and fails open
//! or closed per namespace, never by accident.
//!
//! [`admission`] reads the review (as [`json`] that borrows from the body) and writes the
//! reply, [`workload`] what in its object runs; [`policy`] decides, through [`cache`] and the backend client shared with the
//! observer (`zastava_platform::backend`), and [`judgement`] turns the verdicts into the
//! decision, told in [`message`]s people can read; [`tls`] serves the certificate and
//! follows its rotation; [`server`] holds the listeners and logs every decision, and
//! [`connection`] bounds and times the HTTPS connections, [`body`] the request bodies.

pub mod admission;
pub mod body;
pub mod cache;
pub mod config;
pub mod connection;
pub mod json;
pub mod judgement;
pub mod message;
pub mod policy;
pub mod server;
pub mod tls;
pub mod workload;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use zastava_platform::backend::{BackendClient, BackendError};

use zastava_platform::metrics::{
    ADMISSION_CERTIFICATE_RELOADS, ADMISSION_CERTIFICATE_RELOAD_ERRORS,
};

use crate::{
    cache::VerdictCache,
    config::WebhookConfig,
    policy::Policy,
    server::App,
    tls::{CertError, ReloadingCert},
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Listen(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
}

/// Where the listeners ended up (port 0 in the configuration picks a free one).
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub https: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub admin: SocketAddr,
}

/// Serves until SIGINT or SIGTERM.
pub async fn serve(config: WebhookConfig, metrics: PrometheusHandle) -> Result<(), ServeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (Some(cert_file), Some(key_file)) = (&config.server.cert_file, &config.server.key_file)
    else {
        // `WebhookConfig::check` requires both.
        return Err(ServeError::Cert(CertError::Tls(
            "server.cert_file and server.key_file are required".into(),
        )));
    };
    let cert = ReloadingCert::new(cert_file, key_file, Arc::clone(&provider))?;
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(Arc::clone(&cert))?));

    // No backend call outlives the decision it is for by much. It is given a little more
    // than the budget, so that a slow backend is reported as such by the decision's own
    // deadline; what the call still brings after that fills the cache.
    let mut backend = config.backend.clone();
    backend.timeout = backend
        .timeout
        .min(config.policy.budget + Duration::from_millis(250));
    let client = BackendClient::new(&backend, &config.authority)?;
    let app = Arc::new(App {
        policy: Policy::new(
            config.policy.clone(),
            client,
            VerdictCache::new(config.cache.clone()),
        ),
        budget: config.policy.budget,
        bodies: body::Bodies::new(
            usize::try_from(config.server.max_body_bytes).unwrap_or(usize::MAX),
            config.server.body_timeout,
            config.server.max_bodies_in_flight,
        ),
    });

    let https = server::bind(config.server.addr, "admission requests (HTTPS)")
        .await
        .map_err(ServeError::Listen)?;
    let admin = server::bind(config.admin.addr, "the admin endpoint")
        .await
        .map_err(ServeError::Listen)?;
    let metrics_listener = match config.metrics.addr {
        Some(addr) => Some(
            server::bind(addr, "metrics")
                .await
                .map_err(ServeError::Listen)?,
        ),
        None => None,
    };
    let bound = Bound {
        https: https.local_addr().map_err(ServeError::Listen)?,
        metrics: metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
        admin: admin.local_addr().map_err(ServeError::Listen)?,
    };
    if let Some(listener) = metrics_listener {
        server::spawn_http(listener, server::metrics_router(metrics), "metrics");
    }
    server::spawn_http(admin, server::admin_router(Arc::clone(&app)), "admin");

    let interval = config.server.reload_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match cert.reload_if_changed() {
                Ok(true) => {
                    metrics::counter!(ADMISSION_CERTIFICATE_RELOADS.name).increment(1);
                    info!(
                        "serving the new certificate from {}",
                        cert.cert_path().display()
                    );
                }
                Ok(false) => {}
                Err(err) => {
                    metrics::counter!(ADMISSION_CERTIFICATE_RELOAD_ERRORS.name).increment(1);
                    warn!("the certificate files changed but cannot be used yet ({err}); still serving the previous certificate");
                }
            }
        }
    });

    let mut sigint = signal(SignalKind::interrupt()).map_err(ServeError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServeError::Signal)?;
    info!(
        https = %bound.https,
        metrics = %bound.metrics.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        admin = %bound.admin,
        budget = ?config.policy.budget,
        fail_open_namespaces = ?config.policy.fail_open_namespaces,
        judge_every_update = config.policy.judge_every_update,
        "webhook ready"
    );
    let max_body_bytes = app.bodies.max_bytes;
    let router = server::https_router(app, max_body_bytes);
    let limits = connection::Limits {
        max_connections: config.server.max_connections,
        handshake_timeout: config.server.handshake_timeout,
        timeouts: connection::Timeouts {
            header: config.server.header_timeout,
            idle: config.server.idle_timeout,
        },
    };
    connection::serve_https(https, acceptor, router, limits, async move {
        tokio::select! {
            _ = sigint.recv() => info!("SIGINT: shutting down"),
            _ = sigterm.recv() => info!("SIGTERM: shutting down"),
        }
    })
    .await;
    Ok(())
}
