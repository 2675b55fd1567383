//! What is not a review gets 400; a review whose object cannot be read is answered (denied,
//! with the reason); every accepted connection has `TCP_NODELAY`.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;

use crate::common::webhook::{fixture, pod_review, retargeted, tls_client_config, validate_head};
use crate::{audit, block_on, message, metric, response, send, send_raw, setup, Setup};

#[test]
fn malformed_requests_get_400_with_the_reason() {
    let s = setup(&[]);
    block_on(async {
        let (status, body) = send_raw(&s, b"{\"apiVersion\": ".to_vec()).await;
        assert_eq!(status, 400);
        assert!(
            body.as_str().unwrap().starts_with("the body is not JSON:"),
            "{body}"
        );

        // A review as an API server registered for v1beta1 sends it.
        let (status, body) = send(&s, &fixture("pod-create-v1beta1.json")).await;
        assert_eq!(status, 400);
        assert_eq!(
            body.as_str().unwrap().trim(),
            "apiVersion is \"admission.k8s.io/v1beta1\"; this webhook speaks admission.k8s.io/v1 (set admissionReviewVersions: [\"v1\"])"
        );

        let mut review = pod_review("u", "shop", &[("containers", "app", "busybox")]);
        review["request"].as_object_mut().unwrap().remove("uid");
        let (status, body) = send(&s, &review).await;
        assert_eq!(status, 400);
        assert_eq!(
            body.as_str().unwrap().trim(),
            "request.uid is missing or empty"
        );

        let (status, _) = send_raw(&s, vec![0xff, 0xfe, 0x00]).await;
        assert_eq!(status, 400);
        // JSON, but not a review.
        let (status, body) = send_raw(&s, b"null".to_vec()).await;
        assert_eq!(status, 400);
        assert_eq!(
            body.as_str().unwrap().trim(),
            "the body is not an AdmissionReview: it is null, not a JSON object"
        );
        // Still serving.
        let health = s
            .client
            .get(s.webhook.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status().as_u16(), 200);
        let metrics = s.webhook.metrics().await;
        assert!(
            metrics.contains("zastava_admission_invalid_requests_total 5"),
            "{metrics}"
        );
        // Beyond server.max_body_bytes (4 MiB): refused from its headers, before any of the
        // body is sent (a client still writing it when the reply comes could lose the reply
        // to the connection's close).
        let head = exchange_head(&s, validate_head(Some(5 << 20)).as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 413 "), "{head}");
        let metrics = s.webhook.metrics().await;
        assert!(
            metrics.contains("zastava_admission_invalid_requests_total 6"),
            "{metrics}"
        );
    });
}

/// Sends `request` as raw bytes over TLS and returns the reply's status line and headers.
async fn exchange_head(s: &Setup, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let tls = tls_client_config(&s.serving.ca);
    let tcp = tokio::net::TcpStream::connect(s.webhook.https)
        .await
        .unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("a reply without waiting for the body")
            .unwrap();
        assert_eq!(
            read, 1,
            "the connection closed before the reply's headers ended"
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[test]
fn a_review_whose_object_cannot_be_read_is_denied_with_the_reason() {
    let s = setup(&[]);
    block_on(async {
        let mut deployment = retargeted(&fixture("deployment-create.json"), "u-broken", "shop");
        deployment["request"]["object"]["spec"]["template"]["spec"]["containers"] =
            serde_json::json!({"app": {"image": "registry.example/app:1"}});
        let (status, reply) = send(&s, &deployment).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(response(&reply)["uid"], "u-broken");
        assert_eq!(response(&reply)["allowed"], false);
        assert_eq!(response(&reply)["status"]["code"], 403);
        assert_eq!(
            message(&reply),
            "the Deployment cannot be judged because its object cannot be read: spec.containers is not a list"
        );
        assert_eq!(
            audit(&reply, "unreadable-object"),
            "spec.containers is not a list"
        );

        let mut pod = retargeted(
            &fixture("pod-create-by-replicaset.json"),
            "u-no-object",
            "shop",
        );
        pod["request"]["object"] = Value::Null;
        let (status, reply) = send(&s, &pod).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(response(&reply)["allowed"], false);
        assert_eq!(
            message(&reply),
            "the Pod cannot be judged because its object cannot be read: a CREATE of a Pod without request.object"
        );
        assert!(s.backend.policy_requests().is_empty());
        let metrics = s.webhook.metrics().await;
        assert_eq!(
            metric(&metrics, "zastava_admission_unreadable_objects_total"),
            2.0,
            "{metrics}"
        );
        assert_eq!(
            metric(&metrics, "zastava_admission_invalid_requests_total"),
            0.0,
            "{metrics}"
        );
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_decisions_total{decision=\"deny\"}"
            ),
            2.0,
            "{metrics}"
        );
        assert_eq!(s.webhook.decision_line("u-broken")["decision"], "deny");
    });
}

/// Whether the webhook's end of the connection whose client end is `client` has
/// `TCP_NODELAY`, read from the webhook's own socket: a duplicate of its descriptor
/// (`pidfd_getfd`, which root may call on any process).
fn server_side_nodelay(pid: u32, client: SocketAddr) -> bool {
    use std::os::fd::FromRawFd as _;
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: plain system calls; every descriptor they return is owned below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(i32::try_from(pidfd).unwrap()) };
    let mut found = None;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        let Ok(target_fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if !is_socket {
            continue;
        }
        use std::os::fd::AsRawFd as _;
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
        if fd < 0 {
            continue;
        }
        // A duplicate: dropping it closes only this test's descriptor.
        let socket = unsafe { std::net::TcpStream::from_raw_fd(i32::try_from(fd).unwrap()) };
        if socket.peer_addr().ok() == Some(client) {
            found = Some(socket.nodelay().unwrap());
        }
    }
    found.unwrap_or_else(|| panic!("the webhook holds no connection from {client}"))
}

#[test]
fn accepted_connections_have_tcp_nodelay() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = setup(&[]);
    block_on(async {
        // HTTPS, kept open after a request was answered.
        let tcp = tokio::net::TcpStream::connect(s.webhook.https)
            .await
            .unwrap();
        let local = tcp.local_addr().unwrap();
        let tls = tls_client_config(&s.serving.ca);
        let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
            .unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut reply = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert!(
            reply[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&reply[..n])
        );
        assert!(
            server_side_nodelay(s.webhook.pid(), local),
            "HTTPS connection without TCP_NODELAY"
        );

        // The plain-HTTP endpoints: metrics and admin.
        for addr in [s.webhook.metrics, s.webhook.admin] {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let local = tcp.local_addr().unwrap();
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .unwrap();
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut reply))
                .await
                .unwrap()
                .unwrap();
            assert!(reply[..n].starts_with(b"HTTP/1.1 "), "{addr}");
            assert!(
                server_side_nodelay(s.webhook.pid(), local),
                "{addr}: no TCP_NODELAY"
            );
        }
        drop(stream);
    });
}
