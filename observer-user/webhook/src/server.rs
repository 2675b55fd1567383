//! The webhook's listeners: HTTPS for the API server (`POST /validate`, `/healthz`,
//! `/readyz`), plain HTTP for metrics, and a loopback-only admin endpoint.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, Request, State},
    http::{header, StatusCode, Uri},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use zastava_platform::authority::admin;
use zastava_platform::metrics::{
    ADMISSION_DECISIONS, ADMISSION_DECISION_SECONDS, ADMISSION_INVALID_REQUESTS,
    ADMISSION_TLS_HANDSHAKE_FAILURES,
};

use crate::{admission::Review, policy::Policy};

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// At shutdown, how long requests in progress may take to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct App {
    pub policy: Policy,
    pub budget: Duration,
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

async fn validate(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let started = Instant::now();
    let deadline = started + app.budget;
    let review = match Review::parse(&body) {
        Ok(review) => review,
        Err(err) => {
            metrics::counter!(ADMISSION_INVALID_REQUESTS.name).increment(1);
            debug!("rejected a request that is not an AdmissionReview: {err}");
            return (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response();
        }
    };
    let decision = app.policy.decide(&review, deadline).await;
    let label = match (decision.allowed, decision.warnings.is_empty()) {
        (false, _) => "deny",
        (true, true) => "allow",
        (true, false) => "warn",
    };
    metrics::counter!(ADMISSION_DECISIONS.name, "decision" => label).increment(1);
    metrics::histogram!(ADMISSION_DECISION_SECONDS.name).record(started.elapsed().as_secs_f64());
    if decision.audit.contains_key("failed-open") {
        warn!(
            uid = %review.uid,
            namespace = %review.namespace,
            "admitted {} {} without a verdict (namespace fails open)",
            review.kind,
            review.name
        );
    }
    debug!(
        uid = %review.uid,
        namespace = %review.namespace,
        kind = %review.kind,
        name = %review.name,
        allowed = decision.allowed,
        "decided"
    );
    json(StatusCode::OK, &decision.to_review(&review.uid))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Refuses a request whose declared length is over the limit from its headers alone,
/// without reading (or waiting for) its body. Bodies without a declared length are cut at
/// the limit while they are read (`DefaultBodyLimit`).
async fn refuse_declared_oversize(
    State(max_body_bytes): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(length) if length > max_body_bytes as u64 => {
            metrics::counter!(ADMISSION_INVALID_REQUESTS.name).increment(1);
            debug!("refused a {length}-byte request body");
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is {length} bytes; at most {max_body_bytes} are accepted (server.max_body_bytes)\n"
                ),
            )
                .into_response()
        }
        _ => next.run(request).await,
    }
}

pub fn https_router(app: Arc<App>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/healthz", get(healthz))
        .route("/readyz", get(healthz))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(
            max_body_bytes,
            refuse_declared_oversize,
        ))
        .with_state(app)
}

pub fn metrics_router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(handle): State<PrometheusHandle>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
            }),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(healthz))
        .with_state(handle)
}

/// `POST /invalidate-op-token?audience=scanner`: drops the backend credentials (the OpTok
/// from memory and its cache, or the token file's token) and every cached verdict.
async fn invalidate(State(app): State<Arc<App>>, uri: Uri) -> Response {
    let audience = match admin::audience_of(uri.query()) {
        Ok(audience) => audience,
        Err(error) => {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": error }),
            )
        }
    };
    app.policy.client().invalidate_token();
    let verdicts = app.policy.cache().clear();
    info!(
        verdicts,
        "backend credentials and cached verdicts dropped (invalidate-op-token)"
    );
    json(
        StatusCode::OK,
        &serde_json::json!({
            "audience": audience,
            "tokenDropped": true,
            "verdictsDropped": verdicts,
        }),
    )
}

pub fn admin_router(app: Arc<App>) -> Router {
    Router::new()
        .route(admin::INVALIDATE_PATH, post(invalidate))
        .with_state(app)
}

/// Serves plain HTTP on `listener` in the background.
pub fn spawn_http(listener: TcpListener, router: Router, what: &'static str) {
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            warn!("the {what} endpoint stopped: {err}");
        }
    });
}

/// Serves HTTPS until `shutdown` completes, then lets requests in progress finish.
pub async fn serve_https(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: wait rather than spin.
                warn!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    metrics::counter!(ADMISSION_TLS_HANDSHAKE_FAILURES.name).increment(1);
                    debug!("TLS handshake with {peer} failed: {err}");
                    return;
                }
                Err(_) => {
                    metrics::counter!(ADMISSION_TLS_HANDSHAKE_FAILURES.name).increment(1);
                    debug!("TLS handshake with {peer} timed out");
                    return;
                }
            };
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(err) = watcher.watch(connection.into_owned()).await {
                debug!("connection from {peer} ended: {err}");
            }
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("requests still in progress after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
}

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} for {what}: {e}"))
    })
}
