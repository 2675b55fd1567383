//! Runs the real `zastava-webhook` binary on loopback with a generated certificate, and
//! talks to it as the API server would: AdmissionReviews over HTTPS. Its log is JSON
//! (`RUST_LOG_FORMAT=json`, unless a test passes `--log-format text`), so a test can read
//! the decision line of its own request.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::Duration,
};

use rustls::pki_types::pem::PemObject as _;
use serde_json::{json, Value};

use super::{backend::Pki, webhook_bin, TempDir, TIMEOUT};

#[derive(Default)]
struct Shared {
    stderr: String,
    ready: Option<(SocketAddr, Option<SocketAddr>, SocketAddr)>,
    exited: bool,
}

/// A running webhook.
pub struct Webhook {
    child: Child,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    pub https: SocketAddr,
    pub metrics: SocketAddr,
    pub admin: SocketAddr,
    /// The serving certificate and key the webhook reads (replace them to rotate).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub dir: TempDir,
    /// Where it asks for verdicts.
    pub backend_url: String,
}

/// The address `key` names in the ready line, in either log format.
fn address_after(line: &str, key: &str) -> Option<SocketAddr> {
    if let Ok(json) = serde_json::from_str::<Value>(line) {
        return json[key].as_str().and_then(|a| a.parse().ok());
    }
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{key}=")))
        .and_then(|a| a.parse().ok())
}

impl Webhook {
    /// Starts `zastava-webhook serve` serving `serving`'s certificate, asking the backend at
    /// `backend_url` (trusting `backend_pki`'s CA, presenting its client certificate), with
    /// extra `--set`/flags.
    pub fn start(serving: &Pki, backend_url: &str, backend_pki: &Pki, extra: &[&str]) -> Webhook {
        let dir = TempDir::new("zastava-webhook");
        let cert_file = dir.path().join("tls.crt");
        let key_file = dir.path().join("tls.key");
        std::fs::copy(&serving.server_cert, &cert_file).unwrap();
        std::fs::copy(&serving.server_key, &key_file).unwrap();
        let config = dir.path().join("webhook.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
addr = "127.0.0.1:0"
cert_file = "{cert}"
key_file = "{key}"
reload_interval = "100ms"

[backend]
url = "{backend_url}"
ca_file = "{ca}"
client_cert_file = "{client_cert}"
client_key_file = "{client_key}"

[metrics]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"
"#,
                cert = cert_file.display(),
                key = key_file.display(),
                ca = backend_pki.ca.display(),
                client_cert = backend_pki.client_cert.display(),
                client_key = backend_pki.client_key.display(),
            ),
        )
        .unwrap();
        let mut child = Command::new(webhook_bin())
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(extra)
            .env("RUST_LOG", "info")
            .env("RUST_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start zastava-webhook");
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let reader_shared = Arc::clone(&shared);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (lock, cond) = &*reader_shared;
                let mut s = lock.lock().unwrap();
                if line.contains("webhook ready") {
                    if let (Some(https), Some(admin)) =
                        (address_after(&line, "https"), address_after(&line, "admin"))
                    {
                        s.ready = Some((https, address_after(&line, "metrics"), admin));
                    }
                }
                s.stderr.push_str(&line);
                s.stderr.push('\n');
                cond.notify_all();
            }
            let (lock, cond) = &*reader_shared;
            lock.lock().unwrap().exited = true;
            cond.notify_all();
        });
        let (lock, cond) = &*shared;
        let (state, _) = cond
            .wait_timeout_while(lock.lock().unwrap(), TIMEOUT, |s| {
                s.ready.is_none() && !s.exited
            })
            .unwrap();
        let Some((https, metrics, admin)) = state.ready else {
            panic!("zastava-webhook did not become ready:\n{}", state.stderr);
        };
        drop(state);
        Webhook {
            child,
            shared,
            https,
            metrics: metrics.expect("metrics address in the ready line"),
            admin,
            cert_file,
            key_file,
            dir,
            backend_url: backend_url.to_owned(),
        }
    }

    /// The port of its backend's URL.
    pub fn backend_port(&self) -> u16 {
        let authority = self.backend_url.split('/').nth(2).unwrap_or_default();
        authority
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .expect("a backend URL with a port")
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.https.port())
    }

    pub fn stderr(&self) -> String {
        self.shared.0.lock().unwrap().stderr.clone()
    }

    /// Waits until the log holds `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let (lock, cond) = &*self.shared;
        let (state, _) = cond
            .wait_timeout_while(lock.lock().unwrap(), TIMEOUT, |s| {
                !s.stderr.contains(needle) && !s.exited
            })
            .unwrap();
        assert!(
            state.stderr.contains(needle),
            "the webhook never logged {needle:?}:\n{}",
            state.stderr
        );
    }

    /// The log lines that are JSON objects.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// The decision line of the review `uid` (waits for it: the log is read by a thread).
    pub fn decision_line(&self, uid: &str) -> Value {
        let find = |stderr: &str| {
            stderr
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| l["uid"] == uid && l.get("decision").is_some())
        };
        let (lock, cond) = &*self.shared;
        let (state, _) = cond
            .wait_timeout_while(lock.lock().unwrap(), TIMEOUT, |s| {
                find(&s.stderr).is_none() && !s.exited
            })
            .unwrap();
        find(&state.stderr).unwrap_or_else(|| {
            panic!(
                "the webhook logged no decision for {uid}:\n{}",
                state.stderr
            )
        })
    }

    /// The process id (to look at its sockets).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/metrics`, as text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// An HTTPS client that trusts only `ca`.
pub fn client(ca: &std::path::Path) -> reqwest::Client {
    client_builder(ca).build().unwrap()
}

/// As `client`, reaching `host` (a name the certificate must hold) at `addr`, as a cluster's
/// DNS and Service would.
pub fn client_for(ca: &std::path::Path, host: &str, addr: SocketAddr) -> reqwest::Client {
    client_builder(ca).resolve(host, addr).build().unwrap()
}

fn client_builder(ca: &std::path::Path) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls_client_config(ca))
        .timeout(Duration::from_secs(30))
}

/// A TLS client configuration that trusts only `ca`.
pub fn tls_client_config(ca: &std::path::Path) -> rustls::ClientConfig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// POSTs an AdmissionReview to `url` as the API server does; returns the reply.
pub async fn post_review(client: &reqwest::Client, url: &str, review: &Value) -> Value {
    let reply = client
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(review).unwrap())
        .send()
        .await
        .expect("the webhook answers")
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&reply).unwrap_or_else(|e| {
        panic!(
            "the reply is not JSON ({e}): {}",
            String::from_utf8_lossy(&reply)
        )
    })
}

pub const DIGEST_A: &str =
    "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const DIGEST_B: &str =
    "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// A digest no other test uses.
pub fn fresh_digest() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + u64::from(std::process::id()) * 1_000_000;
    format!("sha256:{n:064x}")
}

/// An AdmissionReview for a Pod in `namespace` with these containers
/// (`(list, name, image)`, list being `containers`, `initContainers` or
/// `ephemeralContainers`).
/// A review of a pod in `shop` with one container, `app`, pinned to `digest`.
pub fn app_review(uid: &str, digest: &str) -> Value {
    pod_review(
        uid,
        "shop",
        &[(
            "containers",
            "app",
            &format!("registry.example/shop/app@{digest}"),
        )],
    )
}

pub fn pod_review(uid: &str, namespace: &str, containers: &[(&str, &str, &str)]) -> Value {
    let mut spec = serde_json::Map::new();
    for (list, name, image) in containers {
        spec.entry(*list)
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .unwrap()
            .push(json!({"name": name, "image": image}));
    }
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "web-0",
                    "namespace": namespace,
                    "labels": {"stellaops.workload/id": "web", "stellaops.workload/tenant": "acme"},
                },
                "spec": spec,
            },
        }
    })
}

/// `tests/fixtures/admission/<name>`: a review as an API server sends it.
pub fn fixture(name: &str) -> Value {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = manifest
        .ancestors()
        .map(|d| d.join("tests/fixtures/admission"))
        .find(|d| d.is_dir())
        .expect("tests/fixtures/admission above the package");
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `review` with its own `uid`, moved to `namespace` (the request and its objects), as the
/// same request in another namespace would be.
pub fn retargeted(review: &Value, uid: &str, namespace: &str) -> Value {
    let mut review = review.clone();
    let request = &mut review["request"];
    request["uid"] = uid.into();
    request["namespace"] = namespace.into();
    for object in ["object", "oldObject"] {
        if request[object].is_object() {
            request[object]["metadata"]["namespace"] = namespace.into();
        }
    }
    review
}

/// The head of a `POST /validate` as a client writes it by hand: with a `Content-Length`
/// of `length`, or chunked when `None`.
pub fn validate_head(length: Option<usize>) -> String {
    let framing = match length {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_owned(),
    };
    format!(
        "POST /validate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    )
}

/// A TLS connection to `webhook` trusting only `ca`, offering `alpn` (and checking it was
/// chosen) when given.
pub async fn tls_connect(
    webhook: &Webhook,
    ca: &std::path::Path,
    alpn: Option<&[u8]>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut config = tls_client_config(ca);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(webhook.https).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), alpn);
    stream
}

/// A stand-in Authority on loopback for the webhook's OpToks: plain HTTP (so the webhook
/// runs with `authority.require_mutual_tls = false` and `require_dpop = false`), OIDC
/// discovery, and a token endpoint that issues opaque Bearer tokens `optok-1`, `optok-2`,
/// ..., each valid for five minutes.
pub struct StandInAuthority {
    /// The issuer URL (`http://127.0.0.1:<port>`).
    pub issuer: String,
    issued: Arc<std::sync::atomic::AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl StandInAuthority {
    pub fn start() -> StandInAuthority {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let issued = Arc::new(AtomicUsize::new(0));
        let (base, count) = (issuer.clone(), Arc::clone(&issued));
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (base, count) = (base.clone(), Arc::clone(&count));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let body = match request.uri().path() {
                                "/.well-known/openid-configuration" => json!({
                                    "issuer": base,
                                    "token_endpoint": format!("{base}/token"),
                                }),
                                "/token" => {
                                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                                    json!({
                                        "access_token": format!("optok-{n}"),
                                        "token_type": "Bearer",
                                        "expires_in": 300,
                                    })
                                }
                                _ => Value::Null,
                            };
                            let status = if body.is_null() { 404 } else { 200 };
                            async move {
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(http_body_util::Full::new(bytes::Bytes::from(
                                        body.to_string(),
                                    )))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        StandInAuthority {
            issuer,
            issued,
            _runtime: runtime,
        }
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> usize {
        self.issued.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The webhook's flags for OpToks from this Authority, its client secret in `dir`.
    pub fn webhook_args(&self, dir: &std::path::Path) -> Vec<String> {
        let secret = dir.join("client-secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        [
            "--authority".to_owned(),
            self.issuer.clone(),
            "--set".to_owned(),
            format!("authority.client_secret_file=\"{}\"", secret.display()),
            "--set".to_owned(),
            "authority.require_mutual_tls=false".to_owned(),
            "--set".to_owned(),
            "authority.require_dpop=false".to_owned(),
        ]
        .into()
    }
}
