//! Huge requests: a Pod and a Deployment with 5 000 containers, decided within the budget,
//! each distinct digest asked about once, at most 1 000 in a backend request; a body
//! exactly at `server.max_body_bytes`, decided; one byte over, with and without a declared
//! length, refused with 413 and counted; more bodies than `server.max_bodies_in_flight`
//! holds, refused with 503. The webhook's peak memory (VmHWM) and decision times are
//! printed (`--nocapture`) for docs/RELIABILITY.md.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::webhook::{pod_review, tls_connect, validate_head};
use crate::{audit, block_on, message, metric, response, send, send_raw, setup, Setup};

const CONTAINERS: usize = 5000;
const LIMIT: usize = 4 << 20;

fn digest(i: usize) -> String {
    format!("sha256:{:064x}", 0xD16E_0000_0000_u64 + i as u64)
}

/// `(name, image)` of `n` containers, the image of container `i` pinned to digest
/// `i % distinct`.
fn containers_of(n: usize, distinct: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let d = i % distinct;
            (
                format!("c-{i:04}"),
                format!("registry.example/shop/app-{d}@{}", digest(d)),
            )
        })
        .collect()
}

/// `CONTAINERS` containers, of `distinct` digests.
fn containers(distinct: usize) -> Vec<(String, String)> {
    containers_of(CONTAINERS, distinct)
}

pub fn pod(uid: &str, containers: &[(String, String)]) -> Value {
    let list: Vec<(&str, &str, &str)> = containers
        .iter()
        .map(|(n, i)| ("containers", n.as_str(), i.as_str()))
        .collect();
    pod_review(uid, "shop", &list)
}

fn deployment(uid: &str, containers: &[(String, String)]) -> Value {
    let list: Vec<Value> = containers
        .iter()
        .map(|(n, i)| json!({"name": n, "image": i}))
        .collect();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "namespace": "shop",
            "operation": "CREATE",
            "object": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "wide", "namespace": "shop"},
                "spec": {"template": {
                    "metadata": {"labels": {"stellaops.workload/id": "wide"}},
                    "spec": {"containers": list},
                }},
            },
        }
    })
}

/// The webhook's peak resident memory so far, in KiB.
pub fn vm_hwm_kib(s: &Setup) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.webhook.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// The sizes of the policy requests from the `from`th on (largest first), and the digests
/// they asked about, each asked once.
fn asked_from(s: &Setup, from: usize) -> (Vec<usize>, BTreeSet<String>) {
    let requests = asked(s);
    let mut sizes: Vec<usize> = requests[from..].iter().map(BTreeSet::len).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let union: BTreeSet<String> = requests[from..].iter().flatten().cloned().collect();
    assert_eq!(
        union.len(),
        sizes.iter().sum::<usize>(),
        "a digest asked twice"
    );
    (sizes, union)
}

/// The digests the backend was asked about in each policy request, in order.
fn asked(s: &Setup) -> Vec<BTreeSet<String>> {
    s.backend
        .policy_requests()
        .iter()
        .map(|r| {
            r.body.as_ref().unwrap()["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["digest"].as_str().unwrap().to_owned())
                .collect()
        })
        .collect()
}

#[test]
fn pods_and_deployments_with_5000_containers_are_decided_asking_about_each_digest_once() {
    let s = setup(&[]);
    let denied = digest(7);
    s.backend
        .set_verdict(&denied, "deny", &["CVE-2026-5000 in use"], Some(300));
    let before = vm_hwm_kib(&s);
    block_on(async {
        // 5 000 containers, 2 500 distinct digests (each image twice), one of them denied.
        let review = pod("uid-wide-pod", &containers(2500));
        let size = serde_json::to_vec(&review).unwrap().len();
        assert!(size < LIMIT, "{size}");
        eprintln!("a review of {CONTAINERS} containers: {size} bytes");
        let (status, body) = send(&s, &review).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(response(&body)["uid"], "uid-wide-pod");
        assert_eq!(response(&body)["allowed"], false, "{body}");
        let image = format!("registry.example/shop/app-7@{denied}");
        assert_eq!(
            message(&body),
            format!(
                "container \"c-0007\": image {image} is denied: CVE-2026-5000 in use\n\
                 container \"c-2507\": image {image} is denied: CVE-2026-5000 in use"
            )
        );
        // Decided by the verdicts, not by the budget running out.
        assert_eq!(audit(&body, "verdict-source"), "backend", "{body}");
        assert_eq!(audit(&body, "backend-error"), "", "{body}");
        // Its 2 500 distinct digests, at most 1 000 in a request (policy.digests_per_request).
        let expected: BTreeSet<String> = (0..2500).map(digest).collect();
        assert_eq!(asked_from(&s, 0), (vec![1000, 1000, 500], expected));

        // A Deployment of 5 000 distinct images: requests for the 2 500 not cached; the same
        // Deployment again: none.
        let review = deployment("uid-wide-deployment", &containers(CONTAINERS));
        let (status, body) = send(&s, &review).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(response(&body)["allowed"], false, "{body}");
        assert_eq!(
            message(&body),
            format!("container \"c-0007\": image {image} is denied: CVE-2026-5000 in use")
        );
        assert_eq!(
            asked_from(&s, 3),
            (
                vec![1000, 1000, 500],
                (2500..CONTAINERS).map(digest).collect::<BTreeSet<_>>()
            )
        );
        let (status, body) = send(&s, &deployment("uid-wide-again", &containers(CONTAINERS))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(audit(&body, "verdict-source"), "cache", "{body}");
        assert_eq!(asked(&s).len(), 6);
        let metrics = s.webhook.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_decisions_total{decision=\"deny\"}"
            ),
            3.0,
            "{metrics}"
        );
        assert_eq!(
            metric(&metrics, "zastava_admission_cache_hits_total"),
            (2500 + CONTAINERS) as f64,
            "{metrics}"
        );
    });
    let after = vm_hwm_kib(&s);
    let took: Vec<String> = ["uid-wide-pod", "uid-wide-deployment", "uid-wide-again"]
        .iter()
        .map(|uid| format!("{uid} {} ms", s.webhook.decision_line(uid)["duration_ms"]))
        .collect();
    eprintln!(
        "webhook VmHWM: {before} kB before, {after} kB after three reviews of 5 000 containers; decided in: {}",
        took.join(", ")
    );
}

async fn tls(s: &Setup) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_connect(&s.webhook, &s.serving.ca, None).await
}

/// What the webhook sends, until it has sent `end` (at most 60 s).
async fn reply_until(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    end: &str,
) -> String {
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.ends_with(end.as_bytes()) {
        let n = tokio::time::timeout(std::time::Duration::from_secs(60), stream.read(&mut buf))
            .await
            .expect("a reply")
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&reply)));
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&reply).into_owned()
}

/// A review padded with spaces (still JSON) to exactly `len` bytes.
fn padded(len: usize) -> Vec<u8> {
    let mut body = serde_json::to_vec(&pod("uid-at-the-limit", &containers_of(50, 50))).unwrap();
    assert!(body.len() <= len);
    body.resize(len, b' ');
    body
}

#[test]
fn a_body_at_the_limit_is_decided_and_one_byte_over_is_refused_with_413() {
    // The fullest review the limit allows takes a debug build on a shared machine close to
    // the default 2 s budget (see docs/RELIABILITY.md): it is given 10 s, well below the
    // API server's 30 s.
    let s = setup(&["--set", "policy.budget=\"10s\""]);
    let before = vm_hwm_kib(&s);
    block_on(async {
        // As many containers, each of its own image, as fit in the limit.
        let n = 31_500;
        let fullest = serde_json::to_vec(&pod("uid-fullest", &containers_of(n, n))).unwrap();
        assert!(
            fullest.len() <= LIMIT && fullest.len() > LIMIT - (64 << 10),
            "{}",
            fullest.len()
        );
        let (status, body) = send_raw(&s, fullest.clone()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(response(&body)["allowed"], true, "{body}");
        assert_eq!(audit(&body, "verdict-source"), "backend", "{body}");
        let (sizes, union) = asked_from(&s, 0);
        assert_eq!(sizes.len(), 32);
        assert_eq!(sizes[..31], [1000; 31]);
        assert_eq!(sizes[31], 500);
        assert_eq!(union, (0..n).map(digest).collect::<BTreeSet<_>>());
        let metrics = s.webhook.metrics().await;
        eprintln!(
            "a review of {n} containers, {} bytes: decided in {} ms ({} ms of backend calls, summed), a reply of {} bytes; webhook VmHWM {before} kB before, {} kB after",
            fullest.len(),
            s.webhook.decision_line("uid-fullest")["duration_ms"],
            metric(&metrics, "zastava_runtime_backend_latency_ms_sum"),
            serde_json::to_vec(&body).unwrap().len(),
            vm_hwm_kib(&s)
        );

        let (status, body) = send_raw(&s, padded(LIMIT)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(response(&body)["uid"], "uid-at-the-limit");
        assert_eq!(response(&body)["allowed"], true, "{body}");

        // Declared: refused from the headers, before any of the body is sent (a client
        // still writing it when the reply comes could lose the reply to the close).
        let mut stream = tls(&s).await;
        let head = validate_head(Some(LIMIT + 1));
        stream.write_all(head.as_bytes()).await.unwrap();
        let text = format!(
            "the body is {} bytes; at most {LIMIT} are accepted (server.max_body_bytes)\n",
            LIMIT + 1
        );
        let reply = reply_until(&mut stream, &text).await;
        assert!(
            reply.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
            "{reply}"
        );
        assert!(reply.ends_with(&format!("\r\n\r\n{text}")), "{reply}");

        // Not declared (chunked): cut off once it passes the limit.
        let mut stream = tls(&s).await;
        let mut request = validate_head(None).into_bytes();
        for chunk in padded(LIMIT + 1).chunks(64 << 10) {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        stream.write_all(&request).await.unwrap();
        let text = format!(
            "the body is longer than {LIMIT} bytes, the most accepted (server.max_body_bytes)\n"
        );
        let reply = reply_until(&mut stream, &text).await;
        assert!(
            reply.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
            "{reply}"
        );
        assert!(reply.ends_with(&format!("\r\n\r\n{text}")), "{reply}");
        let metrics = s.webhook.metrics().await;
        assert_eq!(
            metric(&metrics, "zastava_admission_invalid_requests_total"),
            2.0,
            "{metrics}"
        );
        assert_eq!(
            metric(
                &metrics,
                "zastava_admission_decisions_total{decision=\"allow\"}"
            ),
            2.0,
            "{metrics}"
        );
    });
}

#[test]
fn bodies_beyond_the_room_in_flight_wait_then_get_503_and_memory_is_released() {
    let s = setup(&[
        "--set",
        "server.max_body_bytes=\"64K\"",
        "--set",
        "server.max_bodies_in_flight=\"64K\"",
        "--set",
        "server.body_timeout=\"1s\"",
        "--set",
        "policy.budget=\"3s\"",
    ]);
    // The first review's backend call hangs past the budget: its body holds all the room
    // while it is judged.
    s.backend.script(vec![crate::common::backend::Reply::Hang(
        std::time::Duration::from_secs(5),
    )]);
    let reserved = "zastava_admission_body_bytes_reserved";
    block_on(async {
        let few = containers_of(2, 2);
        let mut first = serde_json::to_vec(&pod("uid-holds-the-room", &few[..1])).unwrap();
        assert!(first.len() < 64 << 10);
        first.resize(64 << 10, b' ');
        let client = s.client.clone();
        let url = s.webhook.url("/validate");
        let holder = tokio::spawn(async move {
            let reply = client
                .post(url)
                .header("content-type", "application/json")
                .body(first)
                .send()
                .await
                .unwrap();
            let status = reply.status().as_u16();
            (status, reply.bytes().await.unwrap())
        });
        let waited = std::time::Instant::now();
        while metric(&s.webhook.metrics().await, reserved) != f64::from(64 << 10) {
            assert!(
                waited.elapsed().as_secs() < 30,
                "the first body never held its room"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }

        // No room for a second body within its body timeout: 503, with what to do.
        let second = serde_json::to_vec(&pod("uid-no-room", &few[..1])).unwrap();
        let (status, body) = send_raw(&s, second).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(
            body,
            "the webhook is busy: 65536 bytes of request bodies are being read or judged (server.max_bodies_in_flight), and none freed within 1s (server.body_timeout); retry\n"
        );

        // The first is answered when its budget runs out (it fails closed), and its room
        // is freed: the next review (of another image, whose verdict is not being fetched)
        // is decided.
        let (status, reply) = holder.await.unwrap();
        assert_eq!(status, 200);
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(response(&reply)["uid"], "uid-holds-the-room");
        assert_eq!(response(&reply)["allowed"], false, "{reply}");
        assert!(
            message(&reply).contains("did not answer within the 3s budget"),
            "{reply}"
        );
        let (status, body) = send(&s, &pod("uid-after-room-freed", &few[1..])).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(response(&body)["allowed"], true, "{body}");
        let metrics = s.webhook.metrics().await;
        assert_eq!(
            metric(&metrics, "zastava_admission_overload_refusals_total"),
            1.0,
            "{metrics}"
        );
        assert_eq!(metric(&metrics, reserved), 0.0, "{metrics}");
    });
}
