//! Hostile clients: hundreds of connections that never start TLS, connections that send
//! half a request and stall, protocol versions the webhook does not speak, garbage and
//! deeply nested JSON — and a real review arriving meanwhile is still decided; and a
//! kept-alive connection idle between reviews is not mistaken for a stalled one. Slow
//! clients and the connection cap are in `slow`, huge requests in `huge`.

use std::{process::Command, time::Duration};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::webhook::{app_review, tls_connect, validate_head};
use crate::{block_on, send_raw, setup, Setup};

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn decided(s: &Setup, uid: &str) {
    crate::decided(s, &app_review(uid, DIGEST)).await;
}

#[test]
fn idle_and_stalled_connections_do_not_keep_a_review_from_being_decided() {
    let s = setup(&["--set", "server.header_timeout=\"2s\""]);
    s.backend.set_verdict(DIGEST, "allow", &[], Some(300));
    block_on(async {
        // 300 connections that never say a word.
        let mut idle = Vec::new();
        for _ in 0..300 {
            idle.push(
                tokio::net::TcpStream::connect(s.webhook.https)
                    .await
                    .unwrap(),
            );
        }
        // 20 that finish TLS, then send half a request's headers and stall.
        let mut stalled = Vec::new();
        for _ in 0..20 {
            let mut stream = tls_connect(&s.webhook, &s.serving.ca, None).await;
            let head = validate_head(Some(100));
            stream
                .write_all(&head.as_bytes()[..head.len() / 2])
                .await
                .unwrap();
            stalled.push((std::time::Instant::now(), stream));
        }
        decided(&s, "uid-among-idle").await;

        // The stalled requests are closed once server.header_timeout has passed since their
        // first byte, without a reply, and counted.
        for (sent, mut stream) in stalled {
            let mut reply = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut reply))
                    .await
                    .expect("the webhook closes a request whose headers stall");
            assert!(
                sent.elapsed() >= Duration::from_secs(2),
                "closed after {:?}, before server.header_timeout",
                sent.elapsed()
            );
            assert!(
                reply.is_empty(),
                "{read:?} {}",
                String::from_utf8_lossy(&reply)
            );
        }
        // The idle ones are dropped when their handshake times out, and counted.
        for mut tcp in idle {
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(Duration::from_secs(60), tcp.read(&mut buf))
                .await
                .expect("the webhook closes a connection that never starts TLS");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }
        let metrics = s.webhook.metrics().await;
        assert_eq!(
            metric(&metrics, "zastava_admission_tls_handshake_failures_total"),
            300.0,
            "{metrics}"
        );
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_request_timeouts_total{part=\"headers\"}"
            ),
            20.0,
            "{metrics}"
        );
        decided(&s, "uid-after-idle").await;
    });
}

#[test]
fn old_tls_versions_are_refused_and_counted() {
    let s = setup(&[]);
    s.backend.set_verdict(DIGEST, "allow", &[], Some(300));
    let before = block_on(s.webhook.metrics());
    for version in ["-tls1", "-tls1_1"] {
        let out = Command::new("openssl")
            .args([
                "s_client",
                version,
                "-cipher",
                "DEFAULT@SECLEVEL=0",
                "-connect",
            ])
            .arg(s.webhook.https.to_string())
            .arg("-servername")
            .arg("127.0.0.1")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run openssl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "openssl {version} got through:\n{text}"
        );
        assert!(
            // rustls answers a ClientHello below TLS 1.2 with a handshake_failure alert.
            text.contains("alert handshake failure") || text.contains("alert protocol version"),
            "openssl {version}:\n{text}"
        );
    }
    block_on(async {
        let after = s.webhook.metrics().await;
        assert_eq!(
            metric(&after, "zastava_admission_tls_handshake_failures_total")
                - metric(&before, "zastava_admission_tls_handshake_failures_total"),
            2.0,
            "{after}"
        );
        decided(&s, "uid-after-old-tls").await;
    });
}

#[test]
fn garbage_and_deeply_nested_json_get_400_and_the_next_review_is_decided() {
    let s = setup(&[]);
    s.backend.set_verdict(DIGEST, "allow", &[], Some(300));
    block_on(async {
        let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let mut garbage = vec![0xFFu8; 64 << 10];
        garbage[..9].copy_from_slice(b"{\"kind\":\x00");
        for body in [nested.into_bytes(), garbage] {
            let (status, reply) = send_raw(&s, body).await;
            assert_eq!(status, 400, "{reply}");
            assert!(
                reply
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("the body is not JSON:"),
                "{reply}"
            );
        }
        decided(&s, "uid-after-garbage").await;
    });
}

#[test]
fn a_kept_alive_connection_idle_for_15_s_serves_the_next_review() {
    let s = setup(&[]);
    s.backend.set_verdict(DIGEST, "allow", &[], Some(300));
    block_on(async {
        let mut stream = tls_connect(&s.webhook, &s.serving.ca, None).await;
        for (i, pause) in [0_u64, 15].into_iter().enumerate() {
            // Idle between requests, as an API server's pooled connection may be: a timeout
            // for stalled headers must not close it (hyper's header_read_timeout does).
            tokio::time::sleep(Duration::from_secs(pause)).await;
            let uid = format!("uid-kept-alive-{i}");
            let body = serde_json::to_vec(&app_review(&uid, DIGEST)).unwrap();
            let head = validate_head(Some(body.len()));
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(&body).await.unwrap();
            let mut reply = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&reply).contains(&format!("\"uid\":\"{uid}\"")) {
                let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
                    .await
                    .expect("a reply")
                    .unwrap();
                assert!(
                    n > 0,
                    "closed after {pause} s idle: {}",
                    String::from_utf8_lossy(&reply)
                );
                reply.extend_from_slice(&buf[..n]);
            }
            assert!(
                reply.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&reply)
            );
        }
    });
}
