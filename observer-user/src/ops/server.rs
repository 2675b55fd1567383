//! The observer's HTTP endpoints: `/metrics` (Prometheus), `/healthz` (the process is up)
//! and `/readyz` (the probes are attached and events flow); and, on loopback, the admin
//! endpoint `POST /invalidate-op-token`.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use axum::{
    extract::State,
    http::{StatusCode, Uri},
    response::IntoResponse,
    routing::{get, post},
    Router,
};
use metrics_exporter_prometheus::PrometheusHandle;
use zastava_platform::{
    authority::{admin, Authority},
    deployment::CommonLabels,
};

use crate::output::account::{self, Delivery};

/// What the endpoints read.
#[derive(Clone)]
pub struct Endpoints {
    pub metrics: PrometheusHandle,
    pub delivery: Arc<Delivery>,
    pub spool_enabled: bool,
    pub ready: Arc<AtomicBool>,
    /// The labels the exporter puts on every series, for the account's series too.
    pub common_labels: Arc<CommonLabels>,
}

async fn metrics(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    let mut text = endpoints.metrics.render();
    text.push_str(&account::render(
        &endpoints.delivery.snapshot(),
        endpoints.spool_enabled,
        &endpoints.common_labels,
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

/// `POST /invalidate-op-token?audience=scanner`: drops the OpTok (memory and cache).
async fn invalidate(State(authority): State<Arc<Authority>>, uri: Uri) -> impl IntoResponse {
    let (status, body) = match admin::audience_of(uri.query()) {
        Ok(audience) => {
            let dropped = authority.invalidate();
            tracing::info!(dropped, "the OpTok was dropped (invalidate-op-token)");
            (
                StatusCode::OK,
                serde_json::json!({"audience": audience, "tokenDropped": dropped}),
            )
        }
        Err(error) => (StatusCode::BAD_REQUEST, serde_json::json!({"error": error})),
    };
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// Binds the loopback admin endpoint and serves it in the background.
pub async fn serve_admin(
    addr: SocketAddr,
    authority: Arc<Authority>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let router = Router::new()
        .route(admin::INVALIDATE_PATH, post(invalidate))
        .with_state(authority);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::warn!("the admin endpoint stopped: {err}");
        }
    });
    Ok(bound)
}
