//! Slow clients and crowds: headers dribbled a byte at a time, a stalled head behind
//! pipelined reviews, a body that stalls, a connection left idle past
//! `server.idle_timeout`, and more connections than `server.max_connections` — each cut
//! off or refused and counted, and a review on a connection of its own still decided.
//! HTTP/2's stalled streams are in `http2`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::client::TlsStream;

use crate::common::webhook::{app_review, tls_connect, validate_head};
use crate::{block_on, metric, setup, Setup};

const DIGEST: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn review_bytes(uid: &str) -> Vec<u8> {
    serde_json::to_vec(&app_review(uid, DIGEST)).unwrap()
}

async fn decided(s: &Setup, uid: &str) {
    crate::decided(s, &app_review(uid, DIGEST)).await;
}

async fn tls(s: &Setup) -> TlsStream<tokio::net::TcpStream> {
    tls_connect(&s.webhook, &s.serving.ca, None).await
}

/// Everything the webhook sends until it closes the connection (at most 60 s).
async fn until_closed(stream: &mut TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf))
            .await
            .expect("the webhook closes the connection")
        {
            Ok(0) | Err(_) => return reply,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
}

async fn metrics_value(s: &Setup, name: &str) -> f64 {
    metric(&s.webhook.metrics().await, name)
}

#[test]
fn headers_dribbled_a_byte_at_a_time_are_cut_off_at_the_header_timeout() {
    let s = setup(&["--set", "server.header_timeout=\"2s\""]);
    block_on(async {
        let mut stream = tls(&s).await;
        // A head without its empty line, then an endless header value.
        let mut head = validate_head(Some(0)).into_bytes();
        head.truncate(head.len() - 2);
        head.extend_from_slice(b"X-Slow: ");
        let first = Instant::now();
        let mut sent = 0;
        // A byte every 250 ms: the connection is never quiet, the head is never whole.
        let closed = loop {
            let byte = head.get(sent).copied().unwrap_or(b'a');
            if stream.write_all(&[byte]).await.is_err() || stream.flush().await.is_err() {
                break first.elapsed();
            }
            sent += 1;
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(250), stream.read(&mut buf)).await {
                Err(_) => {}
                Ok(Ok(0) | Err(_)) => break first.elapsed(),
                Ok(Ok(n)) => panic!(
                    "a reply to an unfinished head: {}",
                    String::from_utf8_lossy(&buf[..n])
                ),
            }
            assert!(sent < 60 * 4, "still open after a minute of dribbling");
        };
        assert!(closed >= Duration::from_secs(2), "closed after {closed:?}");
        assert_eq!(
            metrics_value(
                &s,
                "zastava_admission_request_timeouts_total{part=\"headers\"}"
            )
            .await,
            1.0
        );
        decided(&s, "uid-after-dribble").await;
    });
}

#[test]
fn a_body_that_stalls_is_answered_408_and_counted() {
    let s = setup(&["--set", "server.body_timeout=\"2s\""]);
    block_on(async {
        let mut stream = tls(&s).await;
        let body = review_bytes("uid-stalled-body");
        let head = validate_head(Some(body.len()));
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body[..body.len() / 2]).await.unwrap();
        stream.flush().await.unwrap();
        let sent = Instant::now();
        let reply = String::from_utf8_lossy(&until_closed(&mut stream).await).into_owned();
        assert!(
            sent.elapsed() >= Duration::from_secs(2),
            "{:?}",
            sent.elapsed()
        );
        assert!(
            reply.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{reply}"
        );
        assert!(
            reply.ends_with(
                "\r\n\r\nthe body did not arrive within 2s of the headers (server.body_timeout)\n"
            ),
            "{reply}"
        );
        let metrics = s.webhook.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_request_timeouts_total{part=\"body\"}"
            ),
            1.0,
            "{metrics}"
        );
        assert_eq!(
            metric(&metrics, "zastava_admission_invalid_requests_total"),
            1.0,
            "{metrics}"
        );
        decided(&s, "uid-after-stalled-body").await;
    });
}

#[test]
fn a_connection_idle_past_the_idle_timeout_is_closed_after_its_reply() {
    let s = setup(&[
        "--set",
        "server.idle_timeout=\"3s\"",
        "--set",
        "policy.budget=\"1s\"",
    ]);
    s.backend.set_verdict(DIGEST, "allow", &[], Some(300));
    block_on(async {
        let mut stream = tls(&s).await;
        let body = review_bytes("uid-then-idle");
        let head = validate_head(Some(body.len()));
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        let started = Instant::now();
        let reply = String::from_utf8_lossy(&until_closed(&mut stream).await).into_owned();
        // The whole reply, then a clean close (TLS close_notify, then the end of stream).
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("\"uid\":\"uid-then-idle\""), "{reply}");
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            metrics_value(&s, "zastava_admission_idle_connections_closed_total").await,
            1.0
        );
    });
}

#[test]
fn connections_beyond_the_cap_are_refused_at_accept_and_counted_exactly() {
    let s = setup(&[
        "--set",
        "server.max_connections=8",
        "--set",
        "server.handshake_timeout=\"120s\"",
    ]);
    s.backend.set_verdict(DIGEST, "allow", &[], Some(300));
    block_on(async {
        let open = "zastava_admission_open_connections";
        let mut idle = Vec::new();
        for _ in 0..8 {
            idle.push(
                tokio::net::TcpStream::connect(s.webhook.https)
                    .await
                    .unwrap(),
            );
        }
        let waited = Instant::now();
        while metrics_value(&s, open).await != 8.0 {
            assert!(waited.elapsed() < Duration::from_secs(30), "never 8 open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Five more: each is accepted and closed at once, with a reset (on loopback it may
        // come before the connect has returned).
        for i in 0..5 {
            let read = match tokio::net::TcpStream::connect(s.webhook.https).await {
                Ok(mut tcp) => {
                    let mut buf = [0u8; 16];
                    tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf))
                        .await
                        .unwrap_or_else(|_| panic!("connection {i} beyond the cap is left open"))
                }
                Err(err) => Err(err),
            };
            assert!(
                matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
                "{read:?}"
            );
        }
        let metrics = s.webhook.metrics().await;
        assert_eq!(
            metric(&metrics, "zastava_admission_connections_refused_total"),
            5.0,
            "{metrics}"
        );
        assert_eq!(metric(&metrics, open), 8.0, "{metrics}");

        // One frees: a review on a connection of its own is decided.
        drop(idle.pop());
        let waited = Instant::now();
        while metrics_value(&s, open).await != 7.0 {
            assert!(waited.elapsed() < Duration::from_secs(30), "never 7 open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        decided(&s, "uid-after-a-slot-freed").await;
        let metrics = s.webhook.metrics().await;
        assert_eq!(
            metric(&metrics, "zastava_admission_connections_refused_total"),
            5.0,
            "{metrics}"
        );
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_decisions_total{decision=\"allow\"}"
            ),
            1.0,
            "{metrics}"
        );
    });
}

#[test]
fn pipelined_reviews_are_answered_and_a_stalled_head_behind_them_is_cut_off() {
    let s = setup(&["--set", "server.header_timeout=\"2s\""]);
    s.backend.set_verdict(DIGEST, "allow", &[], Some(300));
    block_on(async {
        let mut stream = tls(&s).await;
        // Two whole reviews and the start of a third, in one write.
        let mut bytes = Vec::new();
        for uid in ["uid-pipelined-1", "uid-pipelined-2"] {
            let body = review_bytes(uid);
            bytes.extend_from_slice(validate_head(Some(body.len())).as_bytes());
            bytes.extend_from_slice(&body);
        }
        let third = validate_head(Some(100));
        bytes.extend_from_slice(&third.as_bytes()[..third.len() / 2]);
        stream.write_all(&bytes).await.unwrap();
        stream.flush().await.unwrap();
        let sent = Instant::now();
        let reply = String::from_utf8_lossy(&until_closed(&mut stream).await).into_owned();
        assert!(
            sent.elapsed() >= Duration::from_secs(2),
            "{:?}",
            sent.elapsed()
        );
        // Both answered, in order, and nothing for the third.
        assert_eq!(reply.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{reply}");
        let first = reply.find("\"uid\":\"uid-pipelined-1\"").expect(&reply);
        let second = reply.find("\"uid\":\"uid-pipelined-2\"").expect(&reply);
        assert!(first < second, "{reply}");
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 2, "{reply}");
        assert_eq!(
            metrics_value(
                &s,
                "zastava_admission_request_timeouts_total{part=\"headers\"}"
            )
            .await,
            1.0
        );
    });
}
