//! The admission webhook, end to end: the real `zastava-webhook` binary serving HTTPS with a
//! generated certificate, a real TLS client sending AdmissionReviews, and a Scanner backend
//! stand-in on loopback (HTTPS, client certificates required) answering the policy endpoint.
//!
//! - `verdicts`: the backend's verdicts, the local rules, the cache;
//! - `outages`: a slow, failing or absent backend; failing open and closed;
//! - `fixtures`: the requests of `tests/fixtures/admission/`, with the backend up, down, and
//!   in a namespace that fails open;
//! - `protocol`: bodies that are not reviews, objects that cannot be read, `TCP_NODELAY`;
//! - `logging`: the log line of every decision, as JSON and as text;
//! - `operations`: certificate rotation, dropping credentials, configuration errors;
//! - `hostile`: idle and stalled connections, old TLS versions, garbage and nested JSON;
//! - `slow`: dribbled headers, pipelined and stalled requests, stalled bodies, idle
//!   connections, the connection cap;
//! - `http2`: stalled streams and header blocks over HTTP/2, connections kept busy with
//!   PINGs;
//! - `huge`: thousands of containers, bodies at and over the limit, bodies beyond the room
//!   in flight;
//! - `crowd`: four of the fullest reviews at once, filling the room in flight.

mod common;

#[path = "webhook/crowd.rs"]
mod crowd;
#[path = "webhook/fixtures.rs"]
mod fixtures;
#[path = "webhook/hostile.rs"]
mod hostile;
#[path = "webhook/http2.rs"]
mod http2;
#[path = "webhook/huge.rs"]
mod huge;
#[path = "webhook/logging.rs"]
mod logging;
#[path = "webhook/operations.rs"]
mod operations;
#[path = "webhook/outages.rs"]
mod outages;
#[path = "webhook/protocol.rs"]
mod protocol;
#[path = "webhook/slow.rs"]
mod slow;
#[path = "webhook/verdicts.rs"]
mod verdicts;

use serde_json::Value;

use common::{
    backend::{Pki, Receiver},
    webhook::{client, Webhook},
};

/// Runs the client side of a test (the servers run on runtimes of their own).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

pub struct Setup {
    pub serving: Pki,
    pub backend_pki: Pki,
    pub backend: Receiver,
    pub webhook: Webhook,
    pub client: reqwest::Client,
}

pub fn setup(extra: &[&str]) -> Setup {
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

/// A running webhook and a client that trusts it.
pub trait Endpoint {
    fn webhook(&self) -> &Webhook;
    fn client(&self) -> &reqwest::Client;
}

impl Endpoint for Setup {
    fn webhook(&self) -> &Webhook {
        &self.webhook
    }
    fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// A webhook whose backend is down: nothing listens at its address.
pub struct Down {
    pub webhook: Webhook,
    pub client: reqwest::Client,
}

impl Endpoint for Down {
    fn webhook(&self) -> &Webhook {
        &self.webhook
    }
    fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// Sends a review; returns the HTTP status and the body (JSON when it is JSON).
pub async fn send(s: &impl Endpoint, body: &Value) -> (u16, Value) {
    send_raw(s, serde_json::to_vec(body).unwrap()).await
}

pub async fn send_raw(s: &impl Endpoint, body: Vec<u8>) -> (u16, Value) {
    let response = s
        .client()
        .post(s.webhook().url("/validate"))
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

/// Sends `review` and checks it was allowed, its uid echoed.
pub async fn decided(s: &impl Endpoint, review: &Value) {
    let uid = review["request"]["uid"].as_str().unwrap_or_default();
    let (status, body) = send(s, review).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(response(&body)["uid"], uid);
    assert_eq!(response(&body)["allowed"], true, "{body}");
}

pub fn response(review: &Value) -> &Value {
    &review["response"]
}

pub fn message(review: &Value) -> &str {
    response(review)["status"]["message"]
        .as_str()
        .unwrap_or_default()
}

pub fn warnings(review: &Value) -> Vec<String> {
    response(review)["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub fn audit<'a>(review: &'a Value, key: &str) -> &'a str {
    response(review)["auditAnnotations"][key]
        .as_str()
        .unwrap_or_default()
}

pub fn setup_without_backend(extra: &[&str]) -> Down {
    let serving = Pki::generate();
    let backend_pki = Pki::generate();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let webhook = Webhook::start(
        &serving,
        &format!("https://127.0.0.1:{port}/"),
        &backend_pki,
        extra,
    );
    let client = client(&serving.ca);
    Down { webhook, client }
}

/// The value of `metric` (with its labels, as exposed) in `metrics`; 0 when absent.
pub fn metric(metrics: &str, metric: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == metric).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}
