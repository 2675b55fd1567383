//! The webhook's listeners: HTTPS for the API server (`POST /validate`, `/healthz`,
//! `/readyz`), plain HTTP for metrics, and a loopback-only admin endpoint.
//!
//! Every accepted connection gets `TCP_NODELAY`: a reply is written in more than one
//! segment (TLS records, HTTP/2 frames), and with Nagle's algorithm the last one waits for
//! the client's delayed ACK — some 40 ms on a kept-alive connection.
//!
//! Every review is logged in one line (its `decision` field: `allow`, `warn`, `deny`, or
//! `invalid` for a body that is not a review).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue, StatusCode, Uri, Version},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::ListenerExt as _,
    Router,
};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use zastava_platform::authority::admin;
use zastava_platform::metrics::{
    ADMISSION_DECISIONS, ADMISSION_DECISION_SECONDS, ADMISSION_INVALID_REQUESTS,
    ADMISSION_OVERLOAD_REFUSALS, ADMISSION_REQUEST_TIMEOUTS,
};

use crate::{
    admission::{Decision, Review},
    body::{Bodies, BodyError},
    policy::Policy,
};

pub struct App {
    pub policy: Policy,
    pub budget: Duration,
    /// How request bodies are read.
    pub bodies: Bodies,
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

/// The answer to a request whose body could not be read (counted).
fn unread_body(bodies: &Bodies, error: BodyError, version: Version) -> Response {
    let mut response = unread_body_reply(bodies, error);
    // What is left of the body is not read, so hyper closes an HTTP/1 connection after
    // the reply: say so, or a client could send its next request on it.
    if version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn unread_body_reply(bodies: &Bodies, error: BodyError) -> Response {
    let (status, text) = match error {
        BodyError::TooLong => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is longer than {} bytes, the most accepted (server.max_body_bytes)",
                bodies.max_bytes
            ),
        ),
        BodyError::Late => {
            metrics::counter!(ADMISSION_REQUEST_TIMEOUTS.name, "part" => "body").increment(1);
            (
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {:?} of the headers (server.body_timeout)",
                    bodies.timeout
                ),
            )
        }
        BodyError::NoRoom => {
            metrics::counter!(ADMISSION_OVERLOAD_REFUSALS.name).increment(1);
            let text = format!(
                "the webhook is busy: {} bytes of request bodies are being read or judged (server.max_bodies_in_flight), and none freed within {:?} (server.body_timeout); retry",
                bodies.room_bytes, bodies.timeout
            );
            warn!(decision = "overloaded", status = 503, error = %text, "refused a request for want of room");
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{text}\n")).into_response();
        }
        BodyError::Broken(error) => (
            StatusCode::BAD_REQUEST,
            format!("the body could not be read: {error}"),
        ),
    };
    metrics::counter!(ADMISSION_INVALID_REQUESTS.name).increment(1);
    warn!(
        decision = "invalid",
        status = status.as_u16(),
        error = %text,
        "refused a request whose body could not be read"
    );
    (status, format!("{text}\n")).into_response()
}

async fn validate(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // Held, with its room, until the answer is made.
    let read = match app.bodies.read(&parts.headers, body).await {
        Ok(read) => read,
        Err(error) => return unread_body(&app.bodies, error, parts.version),
    };
    let body = &read.bytes;
    // The budget is the decision's; the body's time is bounded by server.body_timeout.
    let started = Instant::now();
    let deadline = started + app.budget;
    let review = match Review::parse(body) {
        Ok(review) => review,
        Err(err) => {
            metrics::counter!(ADMISSION_INVALID_REQUESTS.name).increment(1);
            // A v1beta1 review, say, still names its request.
            let uid = Review::readable_uid(body);
            warn!(
                decision = "invalid",
                status = 400,
                uid = uid.as_deref(),
                error = %err,
                bytes = body.len(),
                "refused a request that is not an AdmissionReview"
            );
            return (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response();
        }
    };
    let decision = app.policy.decide(&review, deadline).await;
    let elapsed = started.elapsed();
    metrics::counter!(ADMISSION_DECISIONS.name, "decision" => decision.label()).increment(1);
    metrics::histogram!(ADMISSION_DECISION_SECONDS.name).record(elapsed.as_secs_f64());
    log_decision(&review, &decision, elapsed);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        decision.reply_bytes(&review.uid),
    )
        .into_response()
}

/// The decision's log line: one per review, every field a runbook filters on.
fn log_decision(review: &Review, decision: &Decision, elapsed: Duration) {
    let audit = |key: &str| decision.audit.get(key).map(String::as_str);
    let details = decision.details.join(" | ");
    macro_rules! event {
        ($level:ident) => {
            // Strings from the request are recorded as strings, which the text format
            // quotes and escapes: a uid with a newline cannot forge a log line.
            tracing::$level!(
                uid = review.uid.as_str(),
                namespace = review.namespace.as_str(),
                kind = review.kind.as_str(),
                name = review.name.as_str(),
                operation = review.operation.as_str(),
                sub_resource = review.sub_resource.as_deref(),
                dry_run = review.dry_run,
                decision = decision.label(),
                workload = decision.workload.as_deref(),
                verdict_source = audit("verdict-source"),
                digests = audit("digests"),
                not_judged = audit("not-judged"),
                failed_open = audit("failed-open"),
                backend_error = audit("backend-error"),
                details = (!details.is_empty()).then_some(details.as_str()),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                "admission decision"
            )
        };
    }
    if decision.audit.contains_key("failed-open") {
        event!(warn);
    } else {
        event!(info);
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Refuses a request whose declared length is over the limit from its headers alone,
/// without reading (or waiting for) its body. Bodies without a declared length are cut at
/// the limit while they are read (`Bodies::read`).
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
            warn!(
                decision = "invalid",
                status = 413,
                bytes = length,
                "refused a request body longer than server.max_body_bytes"
            );
            let mut response = (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is {length} bytes; at most {max_body_bytes} are accepted (server.max_body_bytes)\n"
                ),
            )
                .into_response();
            if request.version() < Version::HTTP_2 {
                // The body is not read: the connection closes after the reply.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
        _ => next.run(request).await,
    }
}

pub fn https_router(app: Arc<App>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/healthz", get(healthz))
        .route("/readyz", get(healthz))
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
/// from memory and its cache, or the token file's token) and every cached verdict. The
/// answer's `tokenDropped` says whether there was a token to drop.
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
    let client = app.policy.client();
    let token_dropped = match client.authority() {
        Some(authority) => authority.invalidate(),
        None => {
            // The token file's token, read now: what the next call would have sent.
            let held = client.token().is_some();
            client.invalidate_token();
            held
        }
    };
    let verdicts = app.policy.cache().clear();
    info!(
        token_dropped,
        verdicts, "backend credentials and cached verdicts dropped (invalidate-op-token)"
    );
    json(
        StatusCode::OK,
        &serde_json::json!({
            "audience": audience,
            "tokenDropped": token_dropped,
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
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            debug!("cannot set TCP_NODELAY: {err}");
        }
    });
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            warn!("the {what} endpoint stopped: {err}");
        }
    });
}

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} for {what}: {e}"))
    })
}
