//! OpToks from the Authority, end to end: the real observer (real probes) and the real
//! webhook against the test Authority (tests/authority/authority.py), which checks DPoP
//! proofs by RFC 9449 itself and whose backend checks `Authorization: DPoP`, `ath` and the
//! key binding — all over TLS with client certificates generated per test.

mod common;

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

struct Setup {
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
fn open_unique(dir: &Path, prefix: &str, count: usize, pause: Duration) -> Vec<String> {
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
fn delivered_paths(requests: &[Value]) -> HashMap<String, u64> {
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

fn all_delivered(state: &Value, paths: &[String]) -> bool {
    let seen = delivered_paths(&list(&state["backend"]));
    paths.iter().all(|p| seen.contains_key(p))
}

fn event_requests(state: &Value) -> Vec<Value> {
    list(&state["backend"])
        .into_iter()
        .filter(|r| r["path"] == "/api/v1/runtime/events")
        .collect()
}

fn admin_addr(stderr: &str) -> String {
    stderr
        .split("admin endpoint on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("the admin address is logged")
        .to_owned()
}

#[test]
fn optoks_come_over_mutual_tls_and_every_batch_carries_a_proof_bound_to_the_key() {
    let s = Setup::new();
    let activity = TempDir::new("zastava-activity");
    let observer = s.observer(&[]);
    let paths = open_unique(activity.path(), "bound", 20, Duration::from_millis(5));
    let state = s
        .authority
        .wait_until("all 20 opens delivered", |st| all_delivered(st, &paths));
    observer.wait_for_log("Issued runtime OpTok");
    let metrics = observer.scrape();
    let stopped = observer.stop();

    // One token, for the registered client certificate, bound to our key as the
    // Authority's own thumbprint computation sees it.
    let issued = list(&state["issued"]);
    assert_eq!(issued.len(), 1, "{issued:?}");
    let jkt = thumbprint(&s.key);
    assert_eq!(issued[0]["token_type"], "DPoP");
    assert_eq!(issued[0]["jkt"], jkt.as_str());
    assert_eq!(issued[0]["client_cn"], "zastava-observer");
    assert_eq!(issued[0]["scope"], "aud:scanner api:scanner.runtime.write");
    // Every batch: DPoP scheme, a fresh proof (its own jti) with ath, the same key.
    let requests = event_requests(&state);
    assert!(!requests.is_empty());
    let mut jtis = HashSet::new();
    for r in &requests {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["scheme"], "DPoP", "{r}");
        assert_eq!(r["jkt"], jkt.as_str(), "{r}");
        assert_eq!(r["token_jti"], issued[0]["jti"], "{r}");
        assert_eq!(r["client_cn"], "zastava-observer", "{r}");
        assert_eq!(r["ath"].as_str().map(str::len), Some(43), "{r}");
        assert!(
            jtis.insert(r["proof_jti"].as_str().unwrap().to_owned()),
            "a proof's jti used twice: {r}"
        );
    }
    for path in &paths {
        assert_eq!(delivered_paths(&requests)[path], 1, "{path}");
    }
    // The audit line, under its log scope, with the token type and never the token.
    let line = stopped
        .stderr
        .lines()
        .find(|l| l.contains("Issued runtime OpTok"))
        .unwrap();
    assert!(line.contains("authority.token.issue"), "{line}");
    assert!(line.contains("token_type=DPoP"), "{line}");
    assert!(line.contains(&format!("jkt={jkt}")), "{line}");
    let token = requests[0]["authorization"]
        .as_str()
        .unwrap()
        .strip_prefix("DPoP ")
        .unwrap();
    assert!(!stopped.stderr.contains(token), "the token is in the log");
    // The cache holds it, readable by the owner only.
    let cached = s.cache_dir().join("optok-scanner.json");
    let mode = std::fs::metadata(&cached).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let cached: Value = serde_json::from_slice(&std::fs::read(&cached).unwrap()).unwrap();
    assert_eq!(cached["accessToken"], token);
    assert_eq!(cached["jkt"], jkt.as_str());
    // Metrics: issued once, the token's expiry and issue time as the Authority set them.
    assert_eq!(
        metrics.value(
            "zastava_authority_token_issues_total",
            "{result=\"issued\"}"
        ),
        Some(1.0)
    );
    let exp = metrics
        .value("zastava_authority_token_expiry_timestamp_seconds", "")
        .unwrap();
    let authority_exp = issued[0]["exp"].as_f64().unwrap();
    assert!(
        (exp - authority_exp).abs() <= 2.0,
        "{exp} vs {authority_exp}"
    );
    assert_eq!(
        metrics.value("zastava_authority_fallback_active", ""),
        Some(0.0)
    );
    assert_eq!(
        stopped.summary["delivery"]["shipped"],
        stopped.summary["delivery"]["seen"]
    );
}

#[test]
fn the_nonce_dance_happens_at_the_authority_and_at_the_backend() {
    let s = Setup::new();
    s.authority
        .configure(json!({"authority_nonce": "an-1", "backend_nonce": "bn-1"}));
    let activity = TempDir::new("zastava-activity");
    let observer = s.observer(&[]);
    let first = open_unique(activity.path(), "nonce", 5, Duration::ZERO);
    s.authority
        .wait_until("the first opens delivered", |st| all_delivered(st, &first));
    // The backend moves to another nonce: answered again, once.
    s.authority.configure(json!({"backend_nonce": "bn-2"}));
    let second = open_unique(activity.path(), "nonce2", 5, Duration::ZERO);
    let state = s.authority.wait_until("the second opens delivered", |st| {
        all_delivered(st, &second)
    });
    let metrics = observer.scrape();
    drop(observer.stop());

    let refused = list(&state["refused"]);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["error"], "use_dpop_nonce");
    let issued = list(&state["issued"]);
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0]["nonce"], "an-1");

    let requests = event_requests(&state);
    let challenges: Vec<&Value> = requests.iter().filter(|r| r["status"] == 401).collect();
    assert_eq!(challenges.len(), 2, "{challenges:?}");
    assert!(challenges.iter().all(|r| r["error"] == "use_dpop_nonce"));
    let nonces: Vec<&str> = requests
        .iter()
        .filter(|r| r["status"] == 200)
        .map(|r| r["nonce"].as_str().unwrap())
        .collect();
    assert_eq!(nonces.first(), Some(&"bn-1"));
    assert_eq!(nonces.last(), Some(&"bn-2"));
    assert_eq!(
        metrics.value(
            "zastava_authority_dpop_nonce_challenges_total",
            "{server=\"authority\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metrics.value(
            "zastava_authority_dpop_nonce_challenges_total",
            "{server=\"backend\"}"
        ),
        Some(2.0)
    );
    // The challenges were answered inside the client: the shipper never saw a 401.
    assert_eq!(
        metrics.value(
            "zastava_runtime_backend_requests_total",
            "{outcome=\"retry\"}"
        ),
        None,
        "{}",
        metrics.0
    );
}

#[test]
fn a_five_second_token_is_refreshed_before_it_expires_while_events_keep_flowing() {
    let s = Setup::new();
    s.authority.configure(json!({"lifetime": 5}));
    let activity = TempDir::new("zastava-activity");
    let observer = s.observer(&[]);
    // 13 s of steady activity: the token is replaced at 4 s each time (20 % before).
    let paths = open_unique(activity.path(), "refresh", 130, Duration::from_millis(100));
    let state = s
        .authority
        .wait_until("every open delivered", |st| all_delivered(st, &paths));
    let metrics = observer.scrape();
    let stopped = observer.stop();

    let issued = list(&state["issued"]);
    assert!(issued.len() >= 3, "{issued:?}");
    for pair in issued.windows(2) {
        // Each token was replaced before it expired.
        assert!(
            pair[1]["iat"].as_u64() < pair[0]["exp"].as_u64(),
            "{} then {}",
            pair[0],
            pair[1]
        );
    }
    // No request ever carried an expired token: none was refused.
    for r in event_requests(&state) {
        assert_eq!(r["status"], 200, "{r}");
    }
    assert_eq!(
        metrics.value(
            "zastava_runtime_backend_requests_total",
            "{outcome=\"retry\"}"
        ),
        None
    );
    let delivered = delivered_paths(&event_requests(&state));
    for path in &paths {
        assert_eq!(delivered[path], 1, "{path}");
    }
    assert_eq!(
        stopped.summary["delivery"]["shipped"],
        stopped.summary["delivery"]["seen"]
    );
}

/// POSTs `body` to `url` with `headers`, presenting `pki`'s client certificate, as a client
/// replaying what it saw would.
fn post_as_client(
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

#[test]
fn a_replayed_proof_is_refused_by_the_authority_and_by_the_backend() {
    let s = Setup::new();
    let activity = TempDir::new("zastava-activity");
    let observer = s.observer(&[]);
    let paths = open_unique(activity.path(), "replay", 3, Duration::ZERO);
    let state = s
        .authority
        .wait_until("the opens delivered", |st| all_delivered(st, &paths));
    drop(observer.stop());

    // The backend: the same token and the same proof, sent again.
    let seen = event_requests(&state)
        .into_iter()
        .find(|r| r["status"] == 200)
        .unwrap();
    let url = format!("{}api/v1/runtime/events", s.authority.backend);
    let (status, challenge, _) = post_as_client(
        &s.pki,
        &url,
        &[
            ("authorization", seen["authorization"].as_str().unwrap()),
            ("dpop", seen["proof"].as_str().unwrap()),
            ("content-type", "application/json"),
        ],
        br#"{"events":[]}"#.to_vec(),
    );
    assert_eq!(status, 401);
    assert!(
        challenge.contains("invalid_dpop_proof") && challenge.contains("jti replayed"),
        "{challenge}"
    );
    // The Authority: the observer's token request proof, sent again.
    let proof = list(&state["proofs"])[0].as_str().unwrap().to_owned();
    let (status, _, body) = post_as_client(
        &s.pki,
        &format!("{}/token", s.authority.issuer),
        &[
            ("dpop", &proof),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        b"grant_type=client_credentials&client_id=zastava-runtime&scope=aud%3Ascanner&audience=scanner"
            .to_vec(),
    );
    assert_eq!(status, 400, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "invalid_dpop_proof");
    assert_eq!(body["error_description"], "jti replayed");
    // What the observer itself sent never repeated a proof.
    let jtis: Vec<String> = event_requests(&state)
        .iter()
        .filter_map(|r| r["proof_jti"].as_str().map(str::to_owned))
        .collect();
    let distinct: HashSet<&String> = jtis.iter().collect();
    assert!(!jtis.is_empty());
    assert_eq!(distinct.len(), jtis.len(), "{jtis:?}");
}

fn spool_batches(observer: &Observer) -> f64 {
    observer
        .scrape()
        .value("zastava_runtime_spool_batches", "")
        .unwrap_or(0.0)
}

fn wait_for_spooled(observer: &Observer) {
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while spool_batches(observer) < 1.0 {
        assert!(std::time::Instant::now() < deadline, "nothing was spooled");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_authority_outage_at_start_and_mid_run_loses_nothing() {
    let s = Setup::new();
    s.authority.configure(json!({"lifetime": 5}));
    s.authority.down("authority");
    let activity = TempDir::new("zastava-activity");
    let observer = s.observer(&[]);
    let before = open_unique(activity.path(), "down-at-start", 10, Duration::ZERO);
    observer.wait_for_log("is unreachable");
    wait_for_spooled(&observer);
    // Without a token nothing is sent: the batches wait in the spool.
    assert!(s.authority.backend_requests().is_empty());
    s.authority.up("authority");
    s.authority
        .wait_until("the opens from the outage delivered", |st| {
            all_delivered(st, &before)
        });

    // Down again, for longer than the token lives: it expires, refreshing fails, batches
    // wait; when the Authority is back, they are delivered.
    s.authority.down("authority");
    let during = open_unique(
        activity.path(),
        "down-mid-run",
        70,
        Duration::from_millis(100),
    );
    wait_for_spooled(&observer);
    observer.wait_for_log("the OpTok in use expires in");
    s.authority.up("authority");
    let state = s
        .authority
        .wait_until("the opens of the second outage delivered", |st| {
            all_delivered(st, &during)
        });
    let stopped = observer.stop();
    let delivered = delivered_paths(&event_requests(&state));
    for path in before.iter().chain(&during) {
        assert_eq!(delivered[path], 1, "{path}");
    }
    // Never an expired token sent, never a batch refused.
    assert!(event_requests(&state).iter().all(|r| r["status"] == 200));
    assert!(list(&state["issued"]).len() >= 2);
    let account = &stopped.summary["delivery"];
    assert_eq!(account["shipped"], account["seen"], "{account}");
}

/// A JWT-shaped bootstrap token made `age` ago, expiring in an hour.
fn static_token(age: Duration) -> (String, u64) {
    use base64::Engine as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = now + 3600;
    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let token = format!(
        "{}.{}.{}",
        b64(r#"{"alg":"ES256","typ":"JWT"}"#),
        b64(&format!(
            r#"{{"sub":"zastava-runtime","iat":{},"exp":{exp}}}"#,
            now - age.as_secs()
        )),
        b64("bootstrap-signature")
    );
    (token, exp)
}

#[test]
fn the_static_token_stands_in_only_where_allowed() {
    let s = Setup::new();
    let (token, exp) = static_token(Duration::from_secs(30 * 3600));
    let token_file = s.dir.path().join("static-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    s.authority.configure(json!({"static_tokens": [token]}));
    s.authority.down("authority");
    let activity = TempDir::new("zastava-activity");

    // Not allowed: nothing is sent while the Authority is down.
    let observer = s.observer(&[]);
    let first = open_unique(activity.path(), "no-fallback", 5, Duration::ZERO);
    observer.wait_for_log("is unreachable");
    wait_for_spooled(&observer);
    let metrics = observer.scrape();
    let stopped = observer.stop();
    assert!(s.authority.backend_requests().is_empty());
    assert!(!stopped.stderr.contains("authority.token.fallback"));
    assert_eq!(
        metrics.value("zastava_authority_fallback_active", ""),
        Some(0.0)
    );

    // Allowed: the static token carries the spooled batches and new ones, with warnings
    // naming its age and expiry, the louder one as it is older than 24 h.
    let file_arg = format!("authority.static_token_file=\"{}\"", token_file.display());
    let observer = s.observer(&[
        "--set",
        "authority.allow_static_token_fallback=true",
        "--set",
        &file_arg,
    ]);
    let second = open_unique(activity.path(), "fallback", 5, Duration::ZERO);
    let state = s
        .authority
        .wait_until("everything delivered on the static token", |st| {
            all_delivered(st, &first) && all_delivered(st, &second)
        });
    for r in event_requests(&state) {
        assert_eq!(r["scheme"], "Bearer", "{r}");
        assert_eq!(r["static"], true, "{r}");
    }
    observer.wait_for_log("Using the static token instead of an OpTok");
    observer.wait_for_log("The static token is older than 24 h");
    let metrics = observer.scrape();
    assert_eq!(
        metrics.value("zastava_authority_fallback_active", ""),
        Some(1.0)
    );
    assert_eq!(
        metrics.value("zastava_authority_token_expiry_timestamp_seconds", ""),
        Some(exp as f64)
    );

    // The Authority is back: OpToks again.
    s.authority.up("authority");
    observer.wait_for_log("the Authority issues again");
    let third = open_unique(activity.path(), "after-fallback", 5, Duration::ZERO);
    let state = s
        .authority
        .wait_until("delivered with an OpTok", |st| all_delivered(st, &third));
    let metrics = observer.scrape();
    let stopped = observer.stop();
    let last = event_requests(&state).pop().unwrap();
    assert_eq!(last["scheme"], "DPoP", "{last}");
    assert_eq!(
        metrics.value("zastava_authority_fallback_active", ""),
        Some(0.0)
    );
    let warning = stopped
        .stderr
        .lines()
        .find(|l| l.contains("Using the static token"))
        .unwrap();
    assert!(
        warning.contains("WARN authority.token.fallback"),
        "{warning}"
    );
    assert!(warning.contains("age=1day 6h"), "{warning}");
    let expires =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(exp))
            .to_string();
    assert!(warning.contains(&format!("expires={expires}")), "{warning}");
    assert!(
        !stopped.stderr.contains(&token),
        "the static token is in the log"
    );
    let louder = stopped
        .stderr
        .lines()
        .find(|l| l.contains("older than 24 h"))
        .unwrap();
    assert!(
        louder.contains("ERROR authority.token.fallback"),
        "{louder}"
    );
}

#[test]
fn require_dpop_refuses_an_authority_that_issues_bearer_tokens() {
    let s = Setup::new();
    s.authority.configure(json!({"token_type": "Bearer"}));
    let activity = TempDir::new("zastava-activity");
    let observer = s.observer(&[]);
    let paths = open_unique(activity.path(), "bearer", 5, Duration::ZERO);
    observer.wait_for_log("not a DPoP-bound one, and authority.require_dpop is true");
    wait_for_spooled(&observer);
    let metrics = observer.scrape();
    let stopped = observer.stop();
    assert!(s.authority.backend_requests().is_empty());
    assert!(
        metrics
            .value(
                "zastava_authority_token_issues_total",
                "{result=\"not_dpop\"}"
            )
            .unwrap_or(0.0)
            >= 1.0,
        "{}",
        metrics.0
    );
    let refusal = stopped
        .stderr
        .lines()
        .find(|l| l.contains("not a DPoP-bound one"))
        .unwrap();
    assert!(refusal.contains("authority.token.issue"), "{refusal}");
    assert!(
        refusal.contains("result=\"refused\"") || refusal.contains("result=refused"),
        "{refusal}"
    );

    // Knowingly switched off: Bearer tokens are used, and that is warned about.
    let observer = s.observer(&["--set", "authority.require_dpop=false"]);
    let state = s
        .authority
        .wait_until("delivered with a Bearer OpTok", |st| {
            all_delivered(st, &paths)
        });
    let stopped = observer.stop();
    assert!(stopped.stderr.contains("DPoP requirement disabled"));
    for r in event_requests(&state) {
        assert_eq!(r["scheme"], "Bearer", "{r}");
        assert_eq!(r.get("static"), None, "{r}");
    }
}

/// The observer's flags without the Authority client certificate.
fn without_client_certificate(s: &Setup, extra: &[&str]) -> Vec<String> {
    let mut args = s.args(extra);
    for flag in ["--authority-client-cert", "--authority-client-key"] {
        let at = args.iter().position(|a| a == flag).unwrap();
        args.drain(at..at + 2);
    }
    args
}

#[test]
fn a_missing_or_wrong_client_certificate_is_named_clearly() {
    let s = Setup::new();
    // Required (the default) but not configured: refused before anything starts.
    let args = without_client_certificate(&s, &["--check-config"]);
    let out = Command::new(observer_bin())
        .arg("run")
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "authority.client_cert_file: is required with authority.require_mutual_tls = true"
        ),
        "{stderr}"
    );

    // Not required, and none (a client secret instead): the Authority still wants a
    // certificate, refuses the handshake, and the log says why.
    let secret = s.dir.path().join("client-secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let secret = format!("authority.client_secret_file=\"{}\"", secret.display());
    let args = without_client_certificate(
        &s,
        &[
            "--set",
            "authority.require_mutual_tls=false",
            "--set",
            &secret,
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let observer = Observer::start(&args);
    observer.wait_for_log("no client certificate is configured (authority.client_cert_file");
    let stopped = observer.stop();
    assert!(stopped.stderr.contains("Mutual TLS requirement disabled"));
    let line = stopped
        .stderr
        .lines()
        .find(|l| l.contains("no client certificate is configured"))
        .unwrap();
    assert!(
        line.contains(&format!(
            "the TLS handshake with the Authority at {}/.well-known/openid-configuration failed",
            s.authority.issuer
        )),
        "{line}"
    );
    assert!(line.contains("reason=\"tls\""), "{line}");

    // A certificate the Authority does not trust (another CA).
    let stranger = Pki::generate();
    let cert = format!(
        "authority.client_cert_file=\"{}\"",
        stranger.client_cert.display()
    );
    let key = format!(
        "authority.client_key_file=\"{}\"",
        stranger.client_key.display()
    );
    let observer = s.observer(&["--set", &cert, "--set", &key]);
    observer.wait_for_log("hold a certificate the Authority trusts");
    drop(observer.stop());
    let failures = &s.authority.state()["handshake_failures"]["authority"];
    assert!(failures.as_u64().unwrap() >= 2, "{failures}");
    assert!(s.authority.issued().is_empty());
}

#[test]
fn a_rotated_dpop_key_gets_a_new_thumbprint_and_a_new_token() {
    let s = Setup::new();
    let activity = TempDir::new("zastava-activity");
    let observer = s.observer(&[]);
    let first = open_unique(activity.path(), "old-key", 3, Duration::ZERO);
    s.authority
        .wait_until("delivered with the first key", |st| {
            all_delivered(st, &first)
        });
    let old = thumbprint(&s.key);

    // The Secret is updated: a new key file takes the old one's place.
    let new_key = s.dir.path().join("dpop.pem.new");
    generate_dpop_key(&new_key);
    let new = thumbprint(&new_key);
    std::fs::rename(&new_key, &s.key).unwrap();
    let second = open_unique(activity.path(), "new-key", 3, Duration::ZERO);
    let state = s.authority.wait_until("delivered with the new key", |st| {
        all_delivered(st, &second)
    });
    observer.wait_for_log("DPoP key rotated");
    let metrics = observer.scrape();
    drop(observer.stop());

    assert_ne!(old, new);
    let issued = list(&state["issued"]);
    assert_eq!(issued.len(), 2, "{issued:?}");
    assert_eq!(issued[0]["jkt"], old.as_str());
    assert_eq!(issued[1]["jkt"], new.as_str());
    let requests = event_requests(&state);
    let last = requests.last().unwrap();
    assert_eq!(last["jkt"], new.as_str());
    assert_eq!(last["token_jti"], issued[1]["jti"]);
    assert!(requests.iter().all(|r| r["status"] == 200));
    assert_eq!(
        metrics.value(
            "zastava_authority_token_drops_total",
            "{cause=\"key_rotated\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn invalidate_op_token_and_a_refused_token_each_force_one_re_issue() {
    let s = Setup::new();
    let activity = TempDir::new("zastava-activity");
    let observer = s.observer(&[]);
    let first = open_unique(activity.path(), "first", 3, Duration::ZERO);
    s.authority
        .wait_until("the first batch delivered", |st| all_delivered(st, &first));
    let cache = s.cache_dir().join("optok-scanner.json");
    let cached_before = std::fs::read(&cache).unwrap();

    // The runbook's command, against the observer's loopback admin endpoint.
    observer.wait_for_log("admin endpoint on http://");
    let addr = admin_addr(&observer.stderr());
    let out = Command::new(observer_bin())
        .args([
            "invalidate-op-token",
            "--audience",
            "scanner",
            "--admin-addr",
        ])
        .arg(&addr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer, json!({"audience": "scanner", "tokenDropped": true}));
    s.authority
        .wait_until("a new token issued", |st| list(&st["issued"]).len() == 2);
    let second = open_unique(activity.path(), "second", 3, Duration::ZERO);
    let state = s.authority.wait_until("the second batch delivered", |st| {
        all_delivered(st, &second)
    });
    let issued = list(&state["issued"]);
    assert_eq!(
        event_requests(&state).last().unwrap()["token_jti"],
        issued[1]["jti"]
    );
    assert_ne!(
        std::fs::read(&cache).unwrap(),
        cached_before,
        "the cache holds the new token"
    );

    // The backend refuses the token (revoked): the client drops it and re-issues, once,
    // and the shipper never sees the 401.
    s.authority.revoke_all();
    let third = open_unique(activity.path(), "third", 3, Duration::ZERO);
    let state = s
        .authority
        .wait_until("the third batch delivered", |st| all_delivered(st, &third));
    let metrics = observer.scrape();
    drop(observer.stop());
    let issued = list(&state["issued"]);
    assert_eq!(issued.len(), 3, "{issued:?}");
    let refused: Vec<Value> = event_requests(&state)
        .into_iter()
        .filter(|r| r["status"] == 401)
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["error"], "invalid_token");
    assert_eq!(
        event_requests(&state).last().unwrap()["token_jti"],
        issued[2]["jti"]
    );
    assert_eq!(
        metrics.value(
            "zastava_authority_token_drops_total",
            "{cause=\"invalid_token\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metrics.value(
            "zastava_authority_token_drops_total",
            "{cause=\"invalidated\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metrics.value(
            "zastava_runtime_backend_requests_total",
            "{outcome=\"retry\"}"
        ),
        None
    );

    // Other audiences and non-loopback addresses are refused by the command.
    let out = Command::new(observer_bin())
        .args(["invalidate-op-token", "--audience", "registry"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(observer_bin())
        .args([
            "invalidate-op-token",
            "--audience",
            "scanner",
            "--admin-addr",
            "10.0.0.1:9467",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a loopback address"));
}

#[test]
fn a_cached_token_survives_a_restart() {
    let s = Setup::new();
    let activity = TempDir::new("zastava-activity");
    let observer = s.observer(&[]);
    let first = open_unique(activity.path(), "before-restart", 3, Duration::ZERO);
    s.authority
        .wait_until("delivered before the restart", |st| {
            all_delivered(st, &first)
        });
    drop(observer.stop());

    let observer = s.observer(&[]);
    let second = open_unique(activity.path(), "after-restart", 3, Duration::ZERO);
    let state = s.authority.wait_until("delivered after the restart", |st| {
        all_delivered(st, &second)
    });
    observer.wait_for_log("Using the cached runtime OpTok");
    let metrics = observer.scrape();
    drop(observer.stop());
    let issued = list(&state["issued"]);
    assert_eq!(
        issued.len(),
        1,
        "the restarted observer asked again: {issued:?}"
    );
    assert!(event_requests(&state)
        .iter()
        .all(|r| r["token_jti"] == issued[0]["jti"]));
    assert_eq!(
        metrics.value(
            "zastava_authority_token_issues_total",
            "{result=\"cached\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn the_webhook_asks_for_verdicts_with_optoks_and_invalidate_op_token_re_issues() {
    use common::webhook::{client, fresh_digest, pod_review, post_review, Webhook};
    let s = Setup::new();
    // The nonce dance at the backend, as the webhook sees it.
    s.authority.configure(json!({"backend_nonce": "wb-1"}));
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let args = [
        "--authority".to_owned(),
        s.authority.issuer.clone(),
        "--dpop-key-file".to_owned(),
        path(&s.key),
        "--authority-client-cert".to_owned(),
        path(&s.pki.client_cert),
        "--authority-client-key".to_owned(),
        path(&s.pki.client_key),
        "--token-cache-dir".to_owned(),
        path(&s.cache_dir()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let webhook = Webhook::start(&s.pki, &s.authority.backend, &s.pki, &args);
    let api_server = client(&s.pki.ca);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let review = |uid: &str| {
        let image = format!("registry.example/shop/cart@{}", fresh_digest());
        pod_review(uid, "shop", &[("containers", "cart", &image)])
    };
    let reply = runtime.block_on(post_review(
        &api_server,
        &webhook.url("/validate"),
        &review("a"),
    ));
    assert_eq!(reply["response"]["allowed"], true, "{reply}");
    assert_eq!(
        reply["response"]["auditAnnotations"]["verdict-source"], "backend",
        "{reply}"
    );
    let state = s.authority.state();
    let issued = list(&state["issued"]);
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0]["jkt"], thumbprint(&s.key).as_str());
    let policy: Vec<Value> = list(&state["backend"])
        .into_iter()
        .filter(|r| r["path"] == "/api/v1/policy/runtime")
        .collect();
    assert_eq!(
        policy.len(),
        2,
        "a nonce challenge, then the verdict: {policy:?}"
    );
    assert_eq!(policy[0]["status"], 401);
    assert_eq!(policy[0]["error"], "use_dpop_nonce");
    assert_eq!(policy[1]["status"], 200);
    assert_eq!(policy[1]["scheme"], "DPoP");
    assert_eq!(policy[1]["nonce"], "wb-1");
    assert_eq!(policy[1]["token_jti"], issued[0]["jti"]);
    webhook.wait_for_log("Issued runtime OpTok");

    let out = Command::new(common::webhook_bin())
        .args([
            "invalidate-op-token",
            "--audience",
            "scanner",
            "--admin-addr",
        ])
        .arg(webhook.admin.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["tokenDropped"], true, "{answer}");
    assert_eq!(answer["verdictsDropped"], 1, "{answer}");
    let reply = runtime.block_on(post_review(
        &api_server,
        &webhook.url("/validate"),
        &review("b"),
    ));
    assert_eq!(reply["response"]["allowed"], true, "{reply}");
    let state = s.authority.state();
    let issued = list(&state["issued"]);
    assert_eq!(issued.len(), 2, "{issued:?}");
    let last = list(&state["backend"]).pop().unwrap();
    assert_eq!(last["status"], 200, "{last}");
    assert_eq!(last["token_jti"], issued[1]["jti"], "{last}");
    let metrics = runtime.block_on(webhook.metrics());
    assert!(
        metrics.contains("zastava_authority_token_drops_total{cause=\"invalidated\"} 1"),
        "{metrics}"
    );
}

/// `--check-config` of `binary` with `args`: its exit status and stderr.
fn check_config(binary: &str, command: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(binary)
        .arg(command)
        .arg("--check-config")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn every_bad_authority_combination_is_refused_by_both_binaries() {
    let dir = TempDir::new("zastava-authority-config");
    let token = dir.path().join("token");
    std::fs::write(&token, "t\n").unwrap();
    let not_a_key = dir.path().join("not-a-key.pem");
    std::fs::write(
        &not_a_key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let bad = [
        "authority.issuer=\"http://authority.example\"".to_owned(),
        format!("backend.token_file=\"{}\"", token.display()),
        format!("authority.dpop_key_file=\"{}\"", not_a_key.display()),
        "authority.allow_static_token_fallback=true".to_owned(),
        "authority.refresh_before=\"20%\"".to_owned(),
        "authority.scopes=[\"aud:scanner\", \"two words\"]".to_owned(),
    ];
    let mut args: Vec<&str> = vec!["--backend", "https://scanner.example"];
    for kv in &bad {
        args.extend(["--set", kv]);
    }
    let webhook = common::webhook_bin();
    for (binary, command) in [(observer_bin(), "run"), (webhook, "serve")] {
        let (code, text) = check_config(binary, command, &args);
        assert_eq!(code, Some(2), "{binary}: {text}");
        for needle in [
            "authority.issuer: http://authority.example/ is plain http; use https",
            "backend.token_file: cannot be used with authority.issuer",
            "authority.client_cert_file: is required with authority.require_mutual_tls = true",
            "authority.dpop_key_file: ",
            "is not a P-256 private key",
            "authority.static_token_file: is required with authority.allow_static_token_fallback = true",
            "authority.scopes: \"two words\" is not a scope",
        ] {
            assert!(text.contains(needle), "{binary}: no {needle:?} in\n{text}");
        }
    }
    // Authority keys without an issuer are a mistake too; a share of 0 % is no share.
    for (binary, command) in [(observer_bin(), "run"), (webhook, "serve")] {
        let (code, text) = check_config(
            binary,
            command,
            &[
                "--backend",
                "https://scanner.example",
                "--set",
                "authority.allow_static_token_fallback=true",
            ],
        );
        assert_eq!(code, Some(2), "{text}");
        assert!(
            text.contains(
                "authority.allow_static_token_fallback: has no effect without authority.issuer"
            ),
            "{text}"
        );
        let (code, text) = check_config(
            binary,
            command,
            &["--set", "authority.refresh_before=\"0%\""],
        );
        assert_eq!(code, Some(2), "{text}");
        assert!(text.contains("authority.refresh_before"), "{text}");
    }
}

#[test]
fn a_client_secret_is_sent_with_the_certificate_and_a_wrong_one_is_named() {
    let s = Setup::new();
    s.authority
        .configure(json!({"client_secret": "right-secret"}));
    let secret = s.dir.path().join("client-secret");
    std::fs::write(&secret, "wrong-secret\n").unwrap();
    let secret_arg = format!("authority.client_secret_file=\"{}\"", secret.display());
    let activity = TempDir::new("zastava-activity");
    let observer = s.observer(&["--set", &secret_arg]);
    let paths = open_unique(activity.path(), "secret", 3, Duration::ZERO);
    observer.wait_for_log("the Authority refused to issue a token (401, invalid_client: wrong or missing client secret)");
    assert!(s.authority.issued().is_empty());
    // The Secret is corrected: the file is read again on the next attempt.
    std::fs::write(&secret, "right-secret\n").unwrap();
    let state = s
        .authority
        .wait_until("delivered once the secret is right", |st| {
            all_delivered(st, &paths)
        });
    let stopped = observer.stop();
    assert_eq!(list(&state["issued"]).len(), 1);
    let refusal = stopped
        .stderr
        .lines()
        .find(|l| l.contains("invalid_client"))
        .unwrap();
    assert!(
        refusal.contains("check authority.client_id and the client certificate or secret"),
        "{refusal}"
    );
    assert!(!stopped.stderr.contains("right-secret") && !stopped.stderr.contains("wrong-secret"));
}
