//! HTTP/2 clients (ALPN `h2`) that stall: streams whose body never comes, on a connection
//! kept busy with PINGs; a header block dribbled a byte at a time; a connection that
//! only pings. Each stalled stream is answered or cut off by the deadline HTTP/1.1
//! has, its connection closed within a bounded time whatever control frames keep coming,
//! and a review on another connection is still decided within its budget.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::webhook::{app_review, client, tls_client_config, tls_connect};
use crate::{audit, block_on, metric, response, setup, Setup};

const DIGEST: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";

fn review_bytes(uid: &str) -> Vec<u8> {
    serde_json::to_vec(&app_review(uid, DIGEST)).unwrap()
}

async fn metrics_value(s: &Setup, name: &str) -> f64 {
    metric(&s.webhook.metrics().await, name)
}

/// A review on a connection (and client) of its own, decided by the backend's verdict
/// within the budget: the webhook's own timing of it is under `budget_ms`.
async fn decided_within(s: &Setup, uid: &str, budget_ms: f64) {
    let client = client(&s.serving.ca);
    let reply = client
        .post(s.webhook.url("/validate"))
        .header("content-type", "application/json")
        .body(review_bytes(uid))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&reply.bytes().await.unwrap()).unwrap();
    assert_eq!(response(&body)["uid"], uid);
    assert_eq!(response(&body)["allowed"], true, "{body}");
    assert_eq!(audit(&body, "verdict-source"), "backend", "{body}");
    let took = s.webhook.decision_line(uid)["duration_ms"]
        .as_f64()
        .unwrap();
    assert!(took < budget_ms, "decided in {took} ms");
}

fn stalled_request(length: usize) -> http::Request<()> {
    http::Request::post("https://127.0.0.1/validate")
        .header("content-type", "application/json")
        .header("content-length", length)
        .body(())
        .unwrap()
}

/// The whole body of a response.
async fn body_of(mut body: h2::RecvStream) -> String {
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text).unwrap()
}

#[test]
fn stalled_streams_are_answered_408_and_a_connection_kept_busy_with_pings_is_closed() {
    let s = setup(&[
        "--set",
        "server.body_timeout=\"2s\"",
        "--set",
        "server.idle_timeout=\"4s\"",
        "--set",
        "policy.budget=\"1s\"",
    ]);
    s.backend.set_verdict(DIGEST, "allow", &[], Some(300));
    block_on(async {
        let tls = tls_connect(&s.webhook, &s.serving.ca, Some(b"h2")).await;
        let (mut send, mut connection) = h2::client::handshake(tls).await.unwrap();
        let mut ping_pong = connection.ping_pong().expect("a ping handle");
        let connection = tokio::spawn(connection);
        // Stream 1: its headers and nothing else. Stream 3: headers and half its body.
        let body = review_bytes("uid-h2-stalled");
        let (headers_only, mut stream_1) = send
            .send_request(stalled_request(body.len()), false)
            .unwrap();
        let (half_body, mut stream_3) = send
            .send_request(stalled_request(body.len()), false)
            .unwrap();
        stream_3
            .send_data(Bytes::copy_from_slice(&body[..body.len() / 2]), false)
            .unwrap();
        let stalled = Instant::now();
        // From now on the connection is never quiet: a PING every 200 ms, each answered.
        let pongs = Arc::new(AtomicU64::new(0));
        let pinger = {
            let pongs = Arc::clone(&pongs);
            tokio::spawn(async move {
                while ping_pong.ping(h2::Ping::opaque()).await.is_ok() {
                    pongs.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };

        // Meanwhile a review on another connection is decided within its budget.
        decided_within(&s, "uid-beside-stalled-h2", 1000.0).await;

        let mut answered = None;
        for (response, stream) in [(headers_only, &mut stream_1), (half_body, &mut stream_3)] {
            let response = response.await.unwrap();
            answered = Some(Instant::now());
            assert!(
                stalled.elapsed() >= Duration::from_secs(2),
                "{:?}",
                stalled.elapsed()
            );
            assert_eq!(response.status(), 408);
            assert_eq!(
                body_of(response.into_body()).await,
                "the body did not arrive within 2s of the headers (server.body_timeout)\n"
            );
            // The rest of the request is not wanted: the stream is reset, without error.
            let reset = std::future::poll_fn(|cx| stream.poll_reset(cx)).await;
            assert_eq!(reset.unwrap(), h2::Reason::NO_ERROR);
        }
        // The advertised limit (the settings came with the first frames).
        assert_eq!(send.current_max_send_streams(), 100);
        let answered = answered.unwrap();

        // With nothing left to answer the connection is idle, pings or not: closed by the
        // idle timeout from the last response.
        let closed = tokio::time::timeout(Duration::from_secs(60), connection)
            .await
            .expect("the webhook closes the pinged connection");
        let idle = answered.elapsed();
        assert!(idle >= Duration::from_secs(4), "closed after {idle:?}");
        drop(closed);
        pinger.await.unwrap();
        let pongs = pongs.load(Ordering::Relaxed);
        assert!(pongs >= 20, "only {pongs} pings answered: not kept busy");

        let metrics = s.webhook.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_request_timeouts_total{part=\"body\"}"
            ),
            2.0,
            "{metrics}"
        );
        assert_eq!(
            metric(&metrics, "zastava_admission_invalid_requests_total"),
            2.0,
            "{metrics}"
        );
        assert_eq!(
            metric(&metrics, "zastava_admission_idle_connections_closed_total"),
            1.0,
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

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = u32::try_from(payload.len()).unwrap().to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn a_review_over_http2_is_decided_and_a_header_block_dribbled_byte_by_byte_is_cut_off() {
    let s = setup(&[
        "--set",
        "server.header_timeout=\"2s\"",
        "--set",
        "server.idle_timeout=\"3s\"",
        "--set",
        "policy.budget=\"1s\"",
    ]);
    s.backend.set_verdict(DIGEST, "allow", &[], Some(300));
    block_on(async {
        // A review over HTTP/2 (ALPN h2), as a Go client such as the API server may send it.
        let mut config = tls_client_config(&s.serving.ca);
        config.alpn_protocols = vec![b"h2".to_vec()];
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let reply = client
            .post(s.webhook.url("/validate"))
            .header("content-type", "application/json")
            .body(review_bytes("uid-over-h2"))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.version(), reqwest::Version::HTTP_2);
        let body: serde_json::Value =
            serde_json::from_slice(&reply.bytes().await.unwrap()).unwrap();
        assert_eq!(response(&body)["uid"], "uid-over-h2");
        assert_eq!(response(&body)["allowed"], true, "{body}");

        // The preface, empty SETTINGS, and a HEADERS frame for stream 1 declaring 64 bytes
        // of header block, of which 3 come at once (:method POST, :scheme https, :path /)
        // and then one every 250 ms: never quiet, never whole. (A block dribbled in
        // CONTINUATION frames is refused by hyper's HTTP/2 after a few frames.)
        let mut stream = tls_connect(&s.webhook, &s.serving.ca, Some(b"h2")).await;
        let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        frames.extend(frame(4, 0, 0, &[]));
        let block = frame(1, 0x4, 1, &[0x86; 64]);
        frames.extend_from_slice(&block[..9]);
        frames.extend_from_slice(&[0x83, 0x87, 0x84]);
        stream.write_all(&frames).await.unwrap();
        stream.flush().await.unwrap();
        let began = Instant::now();
        let (mut read, mut write) = tokio::io::split(stream);
        let dribble = tokio::spawn(async move {
            for _ in 3..64 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if write.write_all(&[0x86]).await.is_err() || write.flush().await.is_err() {
                    return;
                }
            }
            panic!("the whole block was sent: the test is too slow to stall it");
        });
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(60), read.read(&mut buf))
                .await
                .expect("the webhook closes the connection")
            {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
        }
        let closed = began.elapsed();
        assert!(!dribble.is_finished(), "the dribble ended first");
        dribble.abort();
        assert!(closed >= Duration::from_secs(2), "closed after {closed:?}");
        // Frames of the connection (SETTINGS and its ACK), never a response's HEADERS
        // (type 1) for stream 1.
        let mut at = 0;
        while at + 9 <= reply.len() {
            let len = usize::from(reply[at]) << 16
                | usize::from(reply[at + 1]) << 8
                | usize::from(reply[at + 2]);
            assert_ne!(
                reply[at + 3],
                1,
                "a response to the unfinished block: {reply:?}"
            );
            at += 9 + len;
        }
        assert_eq!(
            metrics_value(
                &s,
                "zastava_admission_request_timeouts_total{part=\"headers\"}"
            )
            .await,
            1.0
        );
        // The reqwest client's connection (the client is kept, so that only the webhook
        // closes it) is closed when idle for 3 s; the dribbled one was not counted as idle.
        let waited = Instant::now();
        while metrics_value(&s, "zastava_admission_idle_connections_closed_total").await < 1.0 {
            assert!(
                waited.elapsed() < Duration::from_secs(30),
                "not closed when idle"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            metrics_value(&s, "zastava_admission_idle_connections_closed_total").await,
            1.0
        );
        drop(client);
    });
}

#[test]
fn a_connection_that_only_pings_is_closed_by_the_idle_timeout() {
    let s = setup(&[
        "--set",
        "server.idle_timeout=\"3s\"",
        "--set",
        "policy.budget=\"1s\"",
    ]);
    block_on(async {
        let tls = tls_connect(&s.webhook, &s.serving.ca, Some(b"h2")).await;
        let opened = Instant::now();
        let (_send, mut connection) = h2::client::handshake(tls).await.unwrap();
        let mut ping_pong = connection.ping_pong().expect("a ping handle");
        let connection = tokio::spawn(connection);
        let mut pongs = 0;
        while ping_pong.ping(h2::Ping::opaque()).await.is_ok() {
            pongs += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(opened.elapsed() < Duration::from_secs(60), "never closed");
        }
        let closed = opened.elapsed();
        assert!(closed >= Duration::from_secs(3), "closed after {closed:?}");
        assert!(pongs >= 10, "only {pongs} pings answered");
        let _ = tokio::time::timeout(Duration::from_secs(30), connection)
            .await
            .expect("the connection ends");
        assert_eq!(
            metrics_value(&s, "zastava_admission_idle_connections_closed_total").await,
            1.0
        );
    });
}
