//! OpToks from the Authority, end to end: the real observer (real probes) and the real
//! webhook against the test Authority (tests/authority/authority.py), which checks DPoP
//! proofs by RFC 9449 itself and whose backend checks `Authorization: DPoP`, `ath` and the
//! key binding — all over TLS with client certificates generated per test.

mod common;

#[path = "authority/honesty.rs"]
mod honesty;
#[path = "authority/operations.rs"]
mod operations;
#[path = "authority/refusals.rs"]
mod refusals;
#[path = "authority/using.rs"]
mod using;

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{
    authority::{generate_dpop_key, list, thumbprint, TestAuthority},
    backend::Pki,
    observer_bin, unique, Observer, TempDir,
};
use serde_json::{json, Value};

pub(crate) struct Setup {
    pki: Pki,
    authority: TestAuthority,
    dir: TempDir,
    key: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let pki = Pki::generate();
        let authority = TestAuthority::start(&pki);
        let dir = TempDir::new("zastava-authority");
        let key = dir.path().join("dpop.pem");
        generate_dpop_key(&key);
        Setup {
            pki,
            authority,
            dir,
            key,
        }
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("optok-cache")
    }

    fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// The observer's flags: ship to the fixture's backend with OpToks from its Authority,
    /// `require_dpop` and `require_mutual_tls` on (their defaults).
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let mut args: Vec<String> = [
            "--no-cri",
            "--backend",
            &self.authority.backend,
            "--ca-file",
            &path(&self.pki.ca),
            "--authority",
            &self.authority.issuer,
            "--dpop-key-file",
            &path(&self.key),
            "--authority-client-cert",
            &path(&self.pki.client_cert),
            "--authority-client-key",
            &path(&self.pki.client_key),
            "--token-cache-dir",
            &path(&self.cache_dir()),
            "--spool-dir",
            &path(&self.spool_dir()),
            "--metrics-addr",
            "127.0.0.1:0",
            "--set",
            "admin.addr=\"127.0.0.1:0\"",
            "--set",
            "backend.max_backoff=\"1s\"",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    fn observer(&self, extra: &[&str]) -> Observer {
        let args = self.args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Observer::start(&args)
    }
}

/// Opens `count` files with unique names, `pause` apart; returns their paths.
pub(crate) fn open_unique(dir: &Path, prefix: &str, count: usize, pause: Duration) -> Vec<String> {
    (0..count)
        .map(|i| {
            let path = dir.join(format!("{}-{i}", unique(prefix)));
            drop(File::create(&path).unwrap());
            std::thread::sleep(pause);
            path.to_str().unwrap().to_owned()
        })
        .collect()
}

/// How often each path arrived in accepted batches, counting merged repeats (each batch
/// once, by its id).
pub(crate) fn delivered_paths(requests: &[Value]) -> HashMap<String, u64> {
    let mut batches = HashSet::new();
    let mut seen = HashMap::new();
    for r in requests {
        if r["status"] != 200 || r["path"] != "/api/v1/runtime/events" {
            continue;
        }
        if !batches.insert(r["batchId"].as_str().unwrap_or_default().to_owned()) {
            continue;
        }
        for event in list(&r["events"]) {
            if let Some(path) = event["path"].as_str() {
                *seen.entry(path.to_owned()).or_default() += event["count"].as_u64().unwrap_or(1);
            }
        }
    }
    seen
}

pub(crate) fn all_delivered(state: &Value, paths: &[String]) -> bool {
    let seen = delivered_paths(&list(&state["backend"]));
    paths.iter().all(|p| seen.contains_key(p))
}

pub(crate) fn event_requests(state: &Value) -> Vec<Value> {
    list(&state["backend"])
        .into_iter()
        .filter(|r| r["path"] == "/api/v1/runtime/events")
        .collect()
}

pub(crate) fn admin_addr(stderr: &str) -> String {
    stderr
        .split("admin endpoint on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("the admin address is logged")
        .to_owned()
}

pub(crate) fn spool_batches(observer: &Observer) -> f64 {
    observer
        .scrape()
        .value("zastava_runtime_spool_batches", "")
        .unwrap_or(0.0)
}

/// Waits until at least one batch waits in the spool.
pub(crate) fn wait_for_spooled(observer: &Observer) {
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while spool_batches(observer) < 1.0 {
        assert!(std::time::Instant::now() < deadline, "nothing was spooled");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// POSTs `body` to `url` with `headers`, presenting `pki`'s client certificate: a client of
/// the test Authority that replays or crafts what it sends. Its status, `WWW-Authenticate`
/// and body.
pub(crate) fn post_as_client(
    pki: &Pki,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, String, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = zastava_platform::tls::client_config(
        Some(("ca", &pki.ca)),
        Some((("cert", &pki.client_cert), ("key", &pki.client_key))),
    )
    .unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut request = client.post(url).body(body);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let challenge = response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (status, challenge, response.text().await.unwrap_or_default())
        })
}
