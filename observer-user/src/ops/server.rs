//! The observer's HTTP endpoints: `/metrics` (Prometheus), `/healthz` (the process is up)
//! and `/readyz` (the probes are attached and events flow).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::output::account::{self, Delivery};

/// What the endpoints read.
#[derive(Clone)]
pub struct Endpoints {
    pub metrics: PrometheusHandle,
    pub delivery: Arc<Delivery>,
    pub spool_enabled: bool,
    pub ready: Arc<AtomicBool>,
}

async fn metrics(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    let mut text = endpoints.metrics.render();
    text.push_str(&account::render(
        &endpoints.delivery.snapshot(),
        endpoints.spool_enabled,
    ));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(endpoints): State<Endpoints>) -> (StatusCode, &'static str) {
    if endpoints.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

pub fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(endpoints)
}

/// Binds `addr` (an error at start if it is taken) and serves in the background.
pub async fn serve(addr: SocketAddr, endpoints: Endpoints) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router(endpoints)).await {
            tracing::warn!("the metrics endpoint stopped: {err}");
        }
    });
    Ok(bound)
}

/// Marks readiness.
pub fn set_ready(flag: &AtomicBool, ready: bool) {
    flag.store(ready, Ordering::Relaxed);
}
