//! The HTTPS accept loop: a bound on open connections, the TLS handshake's timeout, the
//! deadlines of each connection ([`deadline`]: HTTP/1.1 and HTTP/2) and HTTP/2's limits.
//!
//! **Beyond `server.max_connections`, a connection is refused at accept** (closed at once
//! with a reset, counted), rather than left waiting in the kernel's backlog. An API server
//! whose connection waits learns nothing until its `timeoutSeconds` pass, and only then
//! applies the `failurePolicy`; refused, it fails at once, and its pooled connections,
//! already open, are unaffected. Accepting the backlog as fast as it comes also keeps it
//! from filling, which would stall every new connection, the API server's among them.

mod deadline;
mod framing;
mod streams;

use std::{sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use zastava_platform::metrics::{
    ADMISSION_CONNECTIONS_REFUSED, ADMISSION_OPEN_CONNECTIONS, ADMISSION_TLS_HANDSHAKE_FAILURES,
};

pub use deadline::{Deadlines, Timeouts};

/// At shutdown, how long requests in progress may take to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How connections are served.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub timeouts: Timeouts,
}

/// One open connection, counted in the gauge while it lives.
struct Open(#[allow(dead_code, reason = "held for its drop")] tokio::sync::OwnedSemaphorePermit);

impl Open {
    fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        metrics::gauge!(ADMISSION_OPEN_CONNECTIONS.name).increment(1.0);
        Open(permit)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!(ADMISSION_OPEN_CONNECTIONS.name).decrement(1.0);
    }
}

/// HTTP/2's limits (RFC 9113 §6.5.2), each set here rather than left to hyper's defaults,
/// which may change: docs/webhook.md lists them.
const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
const HTTP2_MAX_HEADER_LIST_SIZE: u32 = 16 << 10;
/// Streams a client may open and reset before the server has accepted them, and streams the
/// server may reset for the client's errors, before the connection is closed with
/// `ENHANCE_YOUR_CALM` (the "rapid reset" floods).
const HTTP2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
const HTTP2_MAX_LOCAL_ERROR_RESETS: usize = 256;

/// The protocol ALPN chose, and only it: over TLS, HTTP/2 is spoken only when negotiated
/// (RFC 9113 §3.2), so a connection's deadlines always follow the protocol it speaks.
fn builder(http2: bool) -> auto::Builder<TokioExecutor> {
    let builder = auto::Builder::new(TokioExecutor::new());
    if !http2 {
        return builder.http1_only();
    }
    let mut builder = builder.http2_only();
    builder
        .http2()
        .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(HTTP2_MAX_HEADER_LIST_SIZE)
        .max_pending_accept_reset_streams(HTTP2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(HTTP2_MAX_LOCAL_ERROR_RESETS)
        // No keep-alive pings: a peer that vanishes is closed by the idle timeout, which
        // counts from the last frame that moved a request.
        .keep_alive_interval(None);
    builder
}

/// Serves HTTPS until `shutdown` completes, then lets requests in progress finish.
pub async fn serve_https(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max_connections));
    metrics::gauge!(ADMISSION_OPEN_CONNECTIONS.name).set(0.0);
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
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            metrics::counter!(ADMISSION_CONNECTIONS_REFUSED.name).increment(1);
            debug!(
                "refused the connection from {peer}: {} connections are open (server.max_connections)",
                limits.max_connections
            );
            // A reset frees the socket at once, leaving nothing in TIME_WAIT here.
            let _ = tcp.set_zero_linger();
            drop(tcp);
            continue;
        };
        let open = Open::new(permit);
        if let Err(err) = tcp.set_nodelay(true) {
            debug!("cannot set TCP_NODELAY on the connection from {peer}: {err}");
        }
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _open = open;
            let tls =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
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
            let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = Deadlines::new(tls, limits.timeouts, http2);
            let builder = builder(http2);
            let connection = builder.serve_connection(TokioIo::new(io), service);
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
