//! A Scanner backend stand-in for tests: HTTPS on loopback with certificates generated per
//! test, optional required client certificates, scripted replies, and a record of every
//! request it received. It takes event batches, and answers the admission policy endpoint
//! with the verdicts a test set per digest.

use std::{
    collections::VecDeque,
    convert::Infallible,
    io::Read as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use serde_json::Value;

pub use zastava_testing::pki::Pki;

/// How the receiver answers.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    /// 429 with this `Retry-After`.
    TooMany(String),
    /// Wait, then 200 (longer than the client's timeout: it gives up first).
    Hang(Duration),
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub status: u16,
    pub idempotency_key: Option<String>,
    pub authorization: Option<String>,
    pub content_encoding: Option<String>,
    pub client_certificate: bool,
    /// The decompressed JSON body.
    pub body: Option<Value>,
}

impl Received {
    pub fn batch_id(&self) -> &str {
        self.body
            .as_ref()
            .and_then(|b| b["batchId"].as_str())
            .unwrap_or_default()
    }

    pub fn events(&self) -> Vec<Value> {
        self.body
            .as_ref()
            .and_then(|b| b["events"].as_array().cloned())
            .unwrap_or_default()
    }
}

/// What accepted batches carried under a path prefix: kept instead of whole bodies, so a
/// run of millions of events costs a map of paths, not their JSON.
#[derive(Debug, Default)]
pub struct Tally {
    prefix: String,
    /// Occurrences of each path under the prefix, counted from each batch id once.
    pub paths: std::collections::HashMap<String, u64>,
    /// Accepted batches, each id once.
    pub accepted_batches: u64,
    /// Accepted batches whose id had been accepted before (sent again after a crash).
    pub duplicate_batches: u64,
    /// When a path under the prefix last arrived for the first time.
    pub last_new_path_at: Option<Instant>,
    /// The pods each path under the prefix was attributed to (`""`: none), when asked for.
    pub pods: Option<std::collections::HashMap<String, std::collections::BTreeSet<String>>>,
    /// Edges under the prefix without a pod, by their `enrichment`, when pods are noted.
    pub without_pod: std::collections::BTreeMap<String, u64>,
    /// Enrichment patches received, by their `enrichment`.
    pub patches: std::collections::BTreeMap<String, u64>,
    /// Paths of edges sent without a pod, by event id, until a patch names their pod.
    pending: std::collections::HashMap<String, String>,
    batch_ids: std::collections::HashSet<String>,
}

impl Tally {
    fn add(&mut self, body: &Value) {
        let id = body["batchId"].as_str().unwrap_or_default();
        if !self.batch_ids.insert(id.to_owned()) {
            self.duplicate_batches += 1;
            return;
        }
        self.accepted_batches += 1;
        let events = body["events"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for event in events {
            let Some(path) = event["path"].as_str() else {
                continue;
            };
            if path.starts_with(&self.prefix) {
                if let Some(pods) = &mut self.pods {
                    let pod = event["pod"].as_str().unwrap_or_default().to_owned();
                    if pod.is_empty() {
                        let state = event["enrichment"].as_str().unwrap_or_default().to_owned();
                        *self.without_pod.entry(state).or_default() += 1;
                        if let Some(id) = event["eventId"].as_str() {
                            self.pending.insert(id.to_owned(), path.to_owned());
                        }
                    }
                    pods.entry(path.to_owned()).or_default().insert(pod);
                }
                let count = event["count"].as_u64().unwrap_or(1);
                let seen = self.paths.entry(path.to_owned()).or_default();
                if *seen == 0 {
                    self.last_new_path_at = Some(Instant::now());
                }
                *seen += count;
            }
        }
        // A patch gives events sent `pending` their pod: noted as the edge's own would be.
        for patch in events
            .iter()
            .filter(|e| e["eventType"] == "enrichmentPatch")
        {
            let state = patch["enrichment"].as_str().unwrap_or_default().to_owned();
            *self.patches.entry(state).or_default() += 1;
            let Some(pods) = &mut self.pods else { continue };
            let pod = patch["pod"].as_str().unwrap_or_default();
            for id in patch["eventIds"].as_array().into_iter().flatten() {
                if let Some(path) = id.as_str().and_then(|id| self.pending.remove(id)) {
                    pods.entry(path).or_default().insert(pod.to_owned());
                }
            }
        }
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    tally: Option<Tally>,
    script: VecDeque<Reply>,
    default: Option<Reply>,
    accept_token: Option<String>,
    handshake_failures: u64,
    /// Policy verdicts by digest; other digests are allowed for 300 s.
    verdicts: std::collections::HashMap<String, Verdict>,
}

/// What the policy endpoint says about a digest.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub verdict: &'static str,
    pub reasons: Vec<String>,
    pub ttl_seconds: Option<u64>,
}

pub struct Receiver {
    pub url: String,
    state: Arc<Mutex<State>>,
    _runtime: tokio::runtime::Runtime,
}

fn server_config(pki: &Pki, require_client_certificate: bool) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&pki.ca).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    );
    let verifier = if require_client_certificate {
        verifier.build().unwrap()
    } else {
        verifier.allow_unauthenticated().build().unwrap()
    };
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_file(&pki.server_cert).unwrap()],
            PrivateKeyDer::from_pem_file(&pki.server_key).unwrap(),
        )
        .unwrap()
}

impl Receiver {
    pub fn start(pki: &Pki, require_client_certificate: bool) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!(
            "https://127.0.0.1:{}/",
            listener.local_addr().unwrap().port()
        );
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(
            pki,
            require_client_certificate,
        )));
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(_) => {
                            state.lock().unwrap().handshake_failures += 1;
                            return;
                        }
                    };
                    let client_certificate = tls.get_ref().1.peer_certificates().is_some();
                    let service = service_fn(move |request| {
                        handle(Arc::clone(&state), request, client_certificate)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Receiver {
            url,
            state,
            _runtime: runtime,
        }
    }

    /// The reply when no scripted reply is left (200 if unset).
    pub fn set_default(&self, reply: Option<Reply>) {
        self.state.lock().unwrap().default = reply;
    }

    /// Replies for the next requests, in order.
    pub fn script(&self, replies: Vec<Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// The policy endpoint's verdict for `digest`.
    pub fn set_verdict(
        &self,
        digest: &str,
        verdict: &'static str,
        reasons: &[&str],
        ttl_seconds: Option<u64>,
    ) {
        self.state.lock().unwrap().verdicts.insert(
            digest.to_owned(),
            Verdict {
                verdict,
                reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
                ttl_seconds,
            },
        );
    }

    /// Requests to the policy endpoint so far.
    pub fn policy_requests(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path.ends_with("/api/v1/policy/runtime"))
            .collect()
    }

    /// Answer 401 to any other bearer token.
    pub fn accept_only_token(&self, token: &str) {
        self.state.lock().unwrap().accept_token = Some(token.to_owned());
    }

    /// From now on, accepted batches are tallied by the paths under `prefix` and their
    /// bodies are not kept.
    pub fn tally_paths(&self, prefix: &str) {
        self.state.lock().unwrap().tally = Some(Tally {
            prefix: prefix.to_owned(),
            ..Tally::default()
        });
    }

    /// As [`Receiver::tally_paths`], noting the pod each path was attributed to as well.
    pub fn tally_paths_and_pods(&self, prefix: &str) {
        self.state.lock().unwrap().tally = Some(Tally {
            prefix: prefix.to_owned(),
            pods: Some(std::collections::HashMap::new()),
            ..Tally::default()
        });
    }

    /// Looks at the tally (see [`Receiver::tally_paths`]).
    pub fn with_tally<T>(&self, look: impl FnOnce(&Tally) -> T) -> T {
        look(
            self.state
                .lock()
                .unwrap()
                .tally
                .as_ref()
                .expect("tally_paths was called"),
        )
    }

    /// Requests received so far, by status.
    pub fn statuses(&self) -> std::collections::BTreeMap<u16, u64> {
        let mut by_status = std::collections::BTreeMap::new();
        for r in &self.state.lock().unwrap().received {
            *by_status.entry(r.status).or_default() += 1;
        }
        by_status
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn handshake_failures(&self) -> u64 {
        self.state.lock().unwrap().handshake_failures
    }

    /// Accepted batches, each once (a batch retried after a lost reply may arrive twice).
    pub fn delivered_batches(&self) -> Vec<Received> {
        let mut seen = std::collections::HashSet::new();
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .filter(|r| seen.insert(r.batch_id().to_owned()))
            .collect()
    }

    /// Waits until `done` holds for what was received.
    pub fn wait_until(&self, what: &str, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + super::TIMEOUT;
        loop {
            let received = self.received();
            if done(&received) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "backend: {what} did not happen within {:?}; got {} requests: {:?}",
                super::TIMEOUT,
                received.len(),
                received
                    .iter()
                    .map(|r| (r.status, r.batch_id().to_owned()))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
    client_certificate: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let raw = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_encoding = header("content-encoding");
    let json = if content_encoding.as_deref() == Some("gzip") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut text)
            .ok()
            .map(|_| text)
    } else {
        String::from_utf8(raw.to_vec()).ok()
    };
    let authorization = header("authorization");
    let reply = {
        let mut state = state.lock().unwrap();
        let token_ok = state
            .accept_token
            .as_ref()
            .is_none_or(|t| authorization.as_deref() == Some(&format!("Bearer {t}")));
        if token_ok {
            state.script.pop_front().or_else(|| state.default.clone())
        } else {
            Some(Reply::Status(401))
        }
    };
    let (status, retry_after) = match reply {
        None => (200, None),
        Some(Reply::Status(s)) => (s, None),
        Some(Reply::TooMany(after)) => (429, Some(after)),
        Some(Reply::Hang(d)) => {
            tokio::time::sleep(d).await;
            (200, None)
        }
    };
    let mut body: Option<Value> = json.as_ref().and_then(|t| serde_json::from_str(t).ok());
    {
        let mut state = state.lock().unwrap();
        if let Some(tally) = &mut state.tally {
            if let (true, Some(body)) = ((200..300).contains(&status), &body) {
                tally.add(body);
            }
            body = None;
        }
        state.received.push(Received {
            at: Instant::now(),
            path: parts.uri.path().to_owned(),
            status,
            idempotency_key: header("idempotency-key"),
            authorization,
            content_encoding,
            client_certificate,
            body,
        });
    }
    let mut response = Response::builder().status(status);
    if let Some(after) = retry_after {
        response = response.header("retry-after", after);
    }
    let text = if status == 400 {
        "events[0].edgeType: unsupported".to_owned()
    } else if status == 200 && parts.uri.path().ends_with("/api/v1/policy/runtime") {
        let body: Value = json
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let verdicts = state.lock().unwrap().verdicts.clone();
        let results: Vec<Value> = body["images"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|image| image["digest"].as_str())
            .map(|digest| match verdicts.get(digest) {
                Some(v) => serde_json::json!({
                    "digest": digest,
                    "verdict": v.verdict,
                    "reasons": v.reasons,
                    "ttlSeconds": v.ttl_seconds,
                }),
                None => {
                    serde_json::json!({"digest": digest, "verdict": "allow", "ttlSeconds": 300})
                }
            })
            .collect();
        serde_json::json!({ "results": results }).to_string()
    } else {
        String::new()
    };
    Ok(response.body(Full::new(Bytes::from(text))).unwrap())
}
