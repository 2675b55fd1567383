//! The admission webhook, end to end: the real `zastava-webhook` binary serving HTTPS with a
//! generated certificate, a real TLS client sending AdmissionReviews, and a Scanner backend
//! stand-in on loopback (HTTPS, client certificates required) answering the policy endpoint.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{
    backend::{Pki, Receiver, Reply},
    webhook::{
        client, fresh_digest, pod_review, post_review, tls_client_config, Webhook, DIGEST_A,
        DIGEST_B,
    },
    webhook_bin,
};

/// Runs the client side of a test (the servers run on runtimes of their own).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

struct Setup {
    serving: Pki,
    backend_pki: Pki,
    backend: Receiver,
    webhook: Webhook,
    client: reqwest::Client,
}

fn setup(extra: &[&str]) -> Setup {
    let serving = Pki::generate();
    let backend_pki = Pki::generate();
    let backend = Receiver::start(&backend_pki, true);
    let webhook = Webhook::start(&serving, &backend.url, &backend_pki, extra);
    let client = client(&serving.ca);
    Setup {
        serving,
        backend_pki,
        backend,
        webhook,
        client,
    }
}

/// Sends a review; returns the HTTP status and the body (JSON when it is JSON).
async fn send(s: &Setup, body: &Value) -> (u16, Value) {
    send_raw(s, serde_json::to_vec(body).unwrap()).await
}

async fn send_raw(s: &Setup, body: Vec<u8>) -> (u16, Value) {
    let response = s
        .client
        .post(s.webhook.url("/validate"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the webhook answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

fn response(review: &Value) -> &Value {
    &review["response"]
}

fn message(review: &Value) -> &str {
    response(review)["status"]["message"]
        .as_str()
        .unwrap_or_default()
}

fn warnings(review: &Value) -> Vec<String> {
    response(review)["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn audit<'a>(review: &'a Value, key: &str) -> &'a str {
    response(review)["auditAnnotations"][key]
        .as_str()
        .unwrap_or_default()
}

#[test]
fn pinned_images_get_the_backends_verdict_with_its_reasons() {
    let s = setup(&[]);
    block_on(async {
        s.backend.set_verdict(DIGEST_A, "allow", &[], Some(300));
        s.backend.set_verdict(
            DIGEST_B,
            "deny",
            &["CVE-2026-1234 is exploitable and in use"],
            Some(300),
        );

        let allowed = pod_review(
            "uid-allow",
            "shop",
            &[(
                "containers",
                "app",
                &format!("registry.example/shop/app@{DIGEST_A}"),
            )],
        );
        let (status, review) = send(&s, &allowed).await;
        assert_eq!(status, 200, "{review}");
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(response(&review)["uid"], "uid-allow");
        assert_eq!(response(&review)["allowed"], true, "{review}");
        assert_eq!(audit(&review, "digests"), format!("{DIGEST_A}=allow"));
        assert_eq!(audit(&review, "verdict-source"), "backend");

        // The backend was asked with the namespace, the workload identity and the image, over
        // mutual TLS.
        let asked = s.backend.policy_requests();
        assert_eq!(asked.len(), 1);
        assert!(asked[0].client_certificate);
        assert_eq!(
            asked[0].body.as_ref().unwrap(),
            &json!({
                "namespace": "shop",
                "workload": {"id": "web", "idSource": "label", "tenant": "acme"},
                "images": [{"image": format!("registry.example/shop/app@{DIGEST_A}"), "digest": DIGEST_A}],
            })
        );

        let denied = pod_review(
            "uid-deny",
            "shop",
            &[
                (
                    "containers",
                    "app",
                    &format!("registry.example/shop/app@{DIGEST_A}"),
                ),
                (
                    "containers",
                    "sidecar",
                    &format!("registry.example/shop/proxy@{DIGEST_B}"),
                ),
            ],
        );
        let (status, review) = send(&s, &denied).await;
        assert_eq!(status, 200);
        assert_eq!(response(&review)["uid"], "uid-deny");
        assert_eq!(response(&review)["allowed"], false, "{review}");
        assert_eq!(response(&review)["status"]["code"], 403);
        assert_eq!(
            message(&review),
            format!(
                "container \"sidecar\": image registry.example/shop/proxy@{DIGEST_B} is denied: CVE-2026-1234 is exploitable and in use"
            )
        );
        // A was cached by the first request; only B went to the backend.
        assert_eq!(
            audit(&review, "digests"),
            format!("{DIGEST_A}=allow,{DIGEST_B}=deny")
        );
        assert_eq!(audit(&review, "verdict-source"), "backend,cache");
        let asked = s.backend.policy_requests();
        assert_eq!(asked.len(), 2);
        assert_eq!(
            asked[1].body.as_ref().unwrap()["images"][0]["digest"],
            DIGEST_B
        );

        let metrics = s.webhook.metrics().await;
        assert!(
            metrics.contains("zastava_admission_decisions_total{decision=\"allow\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("zastava_admission_decisions_total{decision=\"deny\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("zastava_admission_cache_hits_total 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("zastava_admission_cache_misses_total 2"),
            "{metrics}"
        );
        assert!(
            metrics.contains("zastava_admission_decision_seconds_bucket"),
            "{metrics}"
        );
    });
}

#[test]
fn tag_only_images_are_denied_or_warned_by_namespace() {
    let s = setup(&["--set", "policy.tag_only_by_namespace.legacy=\"warn\""]);
    block_on(async {
        let review = pod_review(
            "u1",
            "shop",
            &[("containers", "app", "registry.example/app:1.4")],
        );
        let (_, review) = send(&s, &review).await;
        assert_eq!(response(&review)["allowed"], false, "{review}");
        assert_eq!(
            message(&review),
            "container \"app\": image registry.example/app:1.4 is not pinned by digest (use <image>@sha256:<digest>)"
        );
        assert_eq!(audit(&review, "verdict-source"), "policy");

        let review = pod_review(
            "u2",
            "legacy",
            &[("containers", "app", "registry.example/app:1.4")],
        );
        let (_, review) = send(&s, &review).await;
        assert_eq!(response(&review)["allowed"], true, "{review}");
        assert_eq!(
            warnings(&review),
            ["container \"app\": image registry.example/app:1.4 is not pinned by digest (use <image>@sha256:<digest>)"]
        );
        // Nothing to ask the backend about.
        assert!(s.backend.policy_requests().is_empty());
    });
}

#[test]
fn init_and_ephemeral_containers_are_checked_too() {
    let s = setup(&[]);
    block_on(async {
        let bad = fresh_digest();
        s.backend
            .set_verdict(&bad, "deny", &["unsigned"], Some(300));
        let review = pod_review(
            "u-init",
            "shop",
            &[
                (
                    "initContainers",
                    "migrate",
                    &format!("registry.example/migrate@{bad}"),
                ),
                (
                    "containers",
                    "app",
                    &format!("registry.example/app@{DIGEST_A}"),
                ),
            ],
        );
        let (_, review) = send(&s, &review).await;
        assert_eq!(response(&review)["allowed"], false);
        assert_eq!(
            message(&review),
            format!("init container \"migrate\": image registry.example/migrate@{bad} is denied: unsigned")
        );

        let review = pod_review(
            "u-ephemeral",
            "shop",
            &[
                (
                    "containers",
                    "app",
                    &format!("registry.example/app@{DIGEST_A}"),
                ),
                ("ephemeralContainers", "debugger", "busybox:latest"),
            ],
        );
        let (_, review) = send(&s, &review).await;
        assert_eq!(response(&review)["allowed"], false);
        assert_eq!(
            message(&review),
            "ephemeral container \"debugger\": image busybox:latest is not pinned by digest (use <image>@sha256:<digest>)"
        );
    });
}

#[test]
fn a_deployments_pod_template_is_checked() {
    let s = setup(&[]);
    block_on(async {
        let bad = fresh_digest();
        s.backend
            .set_verdict(&bad, "deny", &["blocked by policy"], Some(300));
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-deploy",
                "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                "namespace": "payments",
                "operation": "UPDATE",
                "name": "api",
                "object": {
                    "metadata": {"name": "api", "namespace": "payments"},
                    "spec": {"template": {
                        "metadata": {"labels": {"app": "api", "stellaops.workload/component": "api"}},
                        "spec": {"containers": [{"name": "api", "image": format!("registry.example/api@{bad}")}]},
                    }},
                },
            }
        });
        let (_, review) = send(&s, &review).await;
        assert_eq!(response(&review)["uid"], "u-deploy");
        assert_eq!(response(&review)["allowed"], false);
        assert_eq!(
            message(&review),
            format!(
                "container \"api\": image registry.example/api@{bad} is denied: blocked by policy"
            )
        );
        // The template's identity: derived from the Deployment's name.
        let asked = s.backend.policy_requests();
        assert_eq!(
            asked[0].body.as_ref().unwrap()["workload"],
            json!({"id": "payments/api", "idSource": "derived", "component": "api"})
        );
    });
}

#[test]
fn an_unreachable_or_slow_backend_denies_within_the_budget_unless_the_namespace_fails_open() {
    let s = setup(&["--budget", "700ms", "--fail-open-namespace", "dev"]);
    block_on(async {
        // Slower than the budget.
        s.backend
            .set_default(Some(Reply::Hang(Duration::from_secs(5))));
        let image = format!("registry.example/app@{}", fresh_digest());
        let started = Instant::now();
        let (status, review) = send(
            &s,
            &pod_review("u-slow", "shop", &[("containers", "app", &image)]),
        )
        .await;
        let took = started.elapsed();
        assert_eq!(status, 200);
        assert_eq!(response(&review)["allowed"], false, "{review}");
        assert!(
            took < Duration::from_millis(700 + 400),
            "the decision took {took:?}, beyond its 700ms budget"
        );
        assert_eq!(
            message(&review),
            format!(
                "container \"app\": image {image}: the Scanner backend did not answer within the 700ms budget (could not be verified; namespace shop fails closed)"
            )
        );
        assert_eq!(audit(&review, "verdict-source"), "fail-closed");

        let image = format!("registry.example/app@{}", fresh_digest());
        let started = Instant::now();
        let (_, review) = send(
            &s,
            &pod_review("u-dev", "dev", &[("containers", "app", &image)]),
        )
        .await;
        assert!(started.elapsed() < Duration::from_millis(700 + 400));
        assert_eq!(response(&review)["allowed"], true, "{review}");
        assert_eq!(
            warnings(&review),
            [format!(
                "admitted without a verdict because namespace dev fails open: container \"app\": image {image}: the Scanner backend did not answer within the 700ms budget"
            )]
        );
        assert_eq!(audit(&review, "verdict-source"), "fail-open");
        assert_eq!(
            audit(&review, "failed-open"),
            format!("container \"app\": image {image}: the Scanner backend did not answer within the 700ms budget")
        );

        // A backend that fails outright: the same, at once.
        s.backend.set_default(Some(Reply::Status(503)));
        let image = format!("registry.example/app@{}", fresh_digest());
        let (_, review) = send(
            &s,
            &pod_review("u-503", "shop", &[("containers", "app", &image)]),
        )
        .await;
        assert_eq!(response(&review)["allowed"], false);
        assert_eq!(
            message(&review),
            format!("container \"app\": image {image}: the Scanner backend answered 503 Service Unavailable (could not be verified; namespace shop fails closed)")
        );
        let metrics = s.webhook.metrics().await;
        assert!(
            metrics.contains("zastava_admission_fail_open_total 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("zastava_admission_backend_errors_total{reason=\"budget\"} 2"),
            "{metrics}"
        );
        assert!(
            metrics.contains("zastava_admission_backend_errors_total{reason=\"status\"} 1"),
            "{metrics}"
        );
    });
}

#[test]
fn nothing_listening_at_the_backend_denies_at_once() {
    let serving = Pki::generate();
    let backend_pki = Pki::generate();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let webhook = Webhook::start(
        &serving,
        &format!("https://127.0.0.1:{port}/"),
        &backend_pki,
        &[],
    );
    let client = client(&serving.ca);
    block_on(async {
        let image = format!("registry.example/app@{}", fresh_digest());
        let review = pod_review("u-down", "shop", &[("containers", "app", &image)]);
        let started = Instant::now();
        let reply = post_review(&client, &webhook.url("/validate"), &review).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(response(&reply)["allowed"], false);
        let text = message(&reply);
        assert!(
            text.starts_with(&format!(
                "container \"app\": image {image}: the Scanner backend is unreachable:"
            )),
            "{text}"
        );
        assert!(
            text.ends_with("(could not be verified; namespace shop fails closed)"),
            "{text}"
        );
    });
}

#[test]
fn verdicts_are_cached_for_their_ttl() {
    let s = setup(&[]);
    block_on(async {
        let digest = fresh_digest();
        s.backend.set_verdict(&digest, "allow", &[], Some(1));
        let review = pod_review(
            "u",
            "shop",
            &[("containers", "app", &format!("r.example/app@{digest}"))],
        );
        let (_, first) = send(&s, &review).await;
        assert_eq!(audit(&first, "verdict-source"), "backend");
        let (_, second) = send(&s, &review).await;
        assert_eq!(response(&second)["allowed"], true);
        assert_eq!(audit(&second, "verdict-source"), "cache");
        assert_eq!(s.backend.policy_requests().len(), 1);
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let (_, third) = send(&s, &review).await;
        assert_eq!(audit(&third, "verdict-source"), "backend");
        assert_eq!(s.backend.policy_requests().len(), 2);
    });
}

#[test]
fn fifty_concurrent_requests_for_a_new_digest_make_one_backend_call() {
    let s = setup(&[]);
    block_on(async {
        // Slow enough that all fifty arrive while the first call is under way.
        s.backend
            .set_default(Some(Reply::Hang(Duration::from_millis(500))));
        let digest = fresh_digest();
        let image = format!("r.example/app@{digest}");
        let mut tasks = Vec::new();
        for i in 0..50 {
            let client = s.client.clone();
            let url = s.webhook.url("/validate");
            let review = pod_review(&format!("u-{i}"), "shop", &[("containers", "app", &image)]);
            tasks.push(tokio::spawn(async move {
                let body = serde_json::to_vec(&review).unwrap();
                let reply = client
                    .post(url)
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                serde_json::from_slice::<Value>(&reply).unwrap()
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let reply = task.await.unwrap();
            assert_eq!(response(&reply)["uid"], format!("u-{i}"));
            assert_eq!(response(&reply)["allowed"], true, "{reply}");
        }
        let asked = s.backend.policy_requests();
        assert_eq!(asked.len(), 1, "{} backend calls", asked.len());
        assert_eq!(
            asked[0].body.as_ref().unwrap()["images"][0]["digest"],
            digest.as_str()
        );
    });
}

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

        let mut review = pod_review("u", "shop", &[("containers", "app", "busybox")]);
        review["apiVersion"] = "admission.k8s.io/v1beta1".into();
        let (status, body) = send(&s, &review).await;
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
            metrics.contains("zastava_admission_invalid_requests_total 4"),
            "{metrics}"
        );
        // Beyond server.max_body_bytes (4 MiB): refused from its headers, before any of the
        // body is sent (a client still writing it when the reply comes could lose the reply
        // to the connection's close).
        let head = exchange_head(
            &s,
            b"POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 5242880\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 413 "), "{head}");
        let metrics = s.webhook.metrics().await;
        assert!(
            metrics.contains("zastava_admission_invalid_requests_total 5"),
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
fn a_replaced_certificate_is_served_without_a_restart() {
    let s = setup(&[]);
    block_on(async {
        let rotated = Pki::generate();
        let new_client = client(&rotated.ca);
        // Before: the new CA does not vouch for what is served.
        assert!(new_client
            .get(s.webhook.url("/healthz"))
            .send()
            .await
            .is_err());
        // Written as a rotation tool would: the key and the certificate, each replaced whole.
        let tmp = s.webhook.dir.path().join("tls.key.new");
        std::fs::copy(&rotated.server_key, &tmp).unwrap();
        std::fs::rename(&tmp, &s.webhook.key_file).unwrap();
        let tmp = s.webhook.dir.path().join("tls.crt.new");
        std::fs::copy(&rotated.server_cert, &tmp).unwrap();
        std::fs::rename(&tmp, &s.webhook.cert_file).unwrap();
        s.webhook.wait_for_log("serving the new certificate");
        let health = new_client
            .get(s.webhook.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status().as_u16(), 200);
        // The old CA no longer matches (a fresh client: no resumed session).
        assert!(client(&s.serving.ca)
            .get(s.webhook.url("/healthz"))
            .send()
            .await
            .is_err());
        let _ = &s.backend_pki;
    });
}

#[test]
fn invalidate_op_token_drops_credentials_and_verdicts() {
    let dir = common::TempDir::new("zastava-token");
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let token_arg = format!("backend.token_file=\"{}\"", token.display());
    let s = setup(&["--set", &token_arg]);
    block_on(async {
        s.backend.accept_only_token("first-token");
        let digest = fresh_digest();
        let review = pod_review(
            "u",
            "shop",
            &[("containers", "app", &format!("r.example/app@{digest}"))],
        );
        let (_, reply) = send(&s, &review).await;
        assert_eq!(response(&reply)["allowed"], true, "{reply}");
        assert_eq!(
            s.backend.policy_requests()[0].authorization.as_deref(),
            Some("Bearer first-token")
        );

        let out = std::process::Command::new(webhook_bin())
            .args([
                "invalidate-op-token",
                "--audience",
                "scanner",
                "--admin-addr",
            ])
            .arg(s.webhook.admin.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            answer,
            json!({"audience": "scanner", "tokenDropped": true, "verdictsDropped": 1})
        );
        s.webhook
            .wait_for_log("backend credentials and cached verdicts dropped");

        // The verdict is asked for again.
        let (_, reply) = send(&s, &review).await;
        assert_eq!(audit(&reply, "verdict-source"), "backend");
        assert_eq!(s.backend.policy_requests().len(), 2);

        // Unknown audiences are refused by the CLI.
        let out = std::process::Command::new(webhook_bin())
            .args(["invalidate-op-token", "--audience", "registry"])
            .output()
            .unwrap();
        assert!(!out.status.success());
    });
}

#[test]
fn configuration_errors_name_the_key_and_exit_2() {
    let out = std::process::Command::new(webhook_bin())
        .args([
            "serve",
            "--set",
            "policy.budget=\"45s\"",
            "--set",
            "admin.addr=\"0.0.0.0:9466\"",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "server.cert_file: is required: the webhook serves HTTPS only",
        "policy.budget: must be longer than 0 and at most 29s",
        "backend.url: is required",
        "admin.addr: 0.0.0.0:9466 is not a loopback address",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}
