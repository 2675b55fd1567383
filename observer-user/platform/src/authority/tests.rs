//! The client against a minimal Authority in the test process (plain HTTP on loopback):
//! callers queued behind a request, metadata without the optional DPoP algorithms, a key
//! file that goes bad, a cached Bearer token under `require_dpop`, and the background
//! refresh ending with the Authority.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

const DISCOVERY: &str = "/.well-known/openid-configuration";

/// What the fake Authority answers, and what it was asked.
struct Script {
    /// `dpop_signing_alg_values_supported`, if the metadata has it.
    dpop_algs: Option<Vec<String>>,
    /// The token endpoint's status and JSON body.
    token: (u16, String),
    /// `METHOD path` of each request, in order.
    seen: Vec<String>,
}

struct Fake {
    issuer: url::Url,
    listener: Mutex<Option<std::net::TcpListener>>,
    script: Arc<Mutex<Script>>,
}

fn token_reply(token_type: &str, access_token: &str) -> (u16, String) {
    (
        200,
        serde_json::json!({"access_token": access_token, "token_type": token_type, "expires_in": 60})
            .to_string(),
    )
}

impl Fake {
    /// Bound now (so that an Authority can be set up outside a runtime), served once
    /// [`Fake::serve`] is called inside one.
    fn bind(token: (u16, String)) -> Fake {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        Fake {
            issuer,
            listener: Mutex::new(Some(listener)),
            script: Arc::new(Mutex::new(Script {
                dpop_algs: Some(vec!["ES256".into()]),
                token,
                seen: Vec::new(),
            })),
        }
    }

    fn serve(&self) {
        let listener = self.listener.lock().unwrap().take().expect("served once");
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let issuer = self.issuer.as_str().trim_end_matches('/').to_owned();
        let script = Arc::clone(&self.script);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, issuer.clone(), Arc::clone(&script)));
            }
        });
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap()
    }

    fn seen(&self) -> Vec<String> {
        self.script().seen.clone()
    }
}

/// One request, one reply, and the connection is closed.
async fn answer(mut stream: tokio::net::TcpStream, issuer: String, script: Arc<Mutex<Script>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let mut words = head.split_whitespace();
    let (method, path) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let (status, body) = {
        let mut script = script.lock().unwrap();
        script.seen.push(format!("{method} {path}"));
        if path == DISCOVERY {
            let mut metadata = serde_json::json!({
                "issuer": issuer,
                "token_endpoint": format!("{issuer}/token"),
            });
            if let Some(algs) = &script.dpop_algs {
                metadata["dpop_signing_alg_values_supported"] = algs.clone().into();
            }
            (200, metadata.to_string())
        } else {
            script.token.clone()
        }
    };
    let reply = format!(
        "HTTP/1.1 {status} Fake\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn config(issuer: &url::Url) -> AuthorityConfig {
    AuthorityConfig {
        issuer: Some(issuer.clone()),
        require_dpop: false,
        require_mutual_tls: false,
        timeout: Duration::from_secs(5),
        ..AuthorityConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A directory of its own for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zastava-authority-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The P-256 key of RFC 7517 appendix A.2, as a JWK.
const JWK: &str = r#"{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM","d":"870MB6gfuTJ4HtUnUvYMyJpr5eUZNP4Bk43bVdj3eAE"}"#;

/// Replaces `path` the way Kubernetes updates a Secret: a new file renamed over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Runs `f` with the log (text, no colours) and the metrics it records captured.
fn captured(f: impl FnOnce()) -> (String, String) {
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Log {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    tracing::subscriber::with_default(subscriber, || {
        metrics::with_local_recorder(&recorder, f);
    });
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    (text, handle.render())
}

fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn callers_queued_behind_a_request_take_its_failure_or_its_token() {
    let fake = Fake::bind((503, r#"{"error":"temporarily_unavailable"}"#.to_owned()));
    // Set up outside the runtime: no background refresh, only the callers ask.
    let authority = Authority::new(&config(&fake.issuer), None).unwrap();
    runtime().block_on(async {
        fake.serve();
        let callers = |n: usize| {
            (0..n)
                .map(|_| {
                    let authority = Arc::clone(&authority);
                    tokio::spawn(async move { authority.credentials().await })
                })
                .collect::<Vec<_>>()
        };
        // Eight calls at once while the Authority fails: the first asks, the seven queued
        // behind it take its failure instead of asking in turn.
        let mut failures = Vec::new();
        for call in callers(8) {
            match call.await.unwrap() {
                Err(AuthorityError::Issue(error)) => failures.push(error),
                other => panic!("not the Authority's failure: {other:?}"),
            }
        }
        assert_eq!(fake.seen(), [format!("GET {DISCOVERY}"), "POST /token".into()]);
        assert_eq!(
            failures[0].to_string(),
            "the Authority refused to issue a token (503, temporarily_unavailable): the Authority failed; it is retried"
        );
        assert!(failures.iter().all(|f| Arc::ptr_eq(f, &failures[0])));

        // It issues again; eight calls at once: one token request, one token for all.
        authority.invalidate();
        fake.script().token = token_reply("Bearer", "opaque-1");
        for call in callers(8) {
            let credentials = call.await.unwrap().unwrap();
            assert_eq!(&*credentials.token, "opaque-1");
            assert_eq!(credentials.source, Source::Issued);
        }
        assert_eq!(
            fake.seen(),
            [
                format!("GET {DISCOVERY}"),
                "POST /token".into(),
                format!("GET {DISCOVERY}"),
                "POST /token".into(),
            ]
        );
    });
}

#[test]
fn without_dpop_algorithms_in_the_metadata_the_token_type_decides() {
    let dir = temp_dir("no-dpop-algs");
    let key = dir.join("dpop.jwk");
    std::fs::write(&key, JWK).unwrap();
    let fake = Fake::bind(token_reply("DPoP", "bound-1"));
    fake.script().dpop_algs = None;
    let authority = Authority::new(
        &AuthorityConfig {
            require_dpop: true,
            dpop_key_file: Some(key),
            ..config(&fake.issuer)
        },
        None,
    )
    .unwrap();
    runtime().block_on(async {
        fake.serve();
        // The list is optional (RFC 9449 §5.1): a DPoP token is taken.
        let credentials = authority.credentials().await.unwrap();
        assert!(credentials.is_dpop());
        assert_eq!(&*credentials.token, "bound-1");

        // An Authority that ignores the proof issues Bearer: refused.
        authority.invalidate();
        fake.script().token = token_reply("Bearer", "bearer-1");
        let error = authority.credentials().await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "the Authority issued a \"Bearer\" token, not a DPoP-bound one, and authority.require_dpop is true; configure the client for DPoP at the Authority (or, knowingly, set authority.require_dpop = false)"
        );

        // A list without ES256 is still refused, at discovery.
        authority.invalidate();
        fake.script().dpop_algs = Some(vec!["RS256".into()]);
        let error = authority.credentials().await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("OIDC discovery at {}{}: the Authority does not accept ES256 DPoP proofs (dpop_signing_alg_values_supported: [\"RS256\"]); with authority.require_dpop = true it cannot issue a usable token", fake.issuer.as_str().trim_end_matches('/'), DISCOVERY)
        );
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_key_file_without_a_key_is_counted_as_dpop_key_and_logged_once_per_version() {
    let dir = temp_dir("bad-key");
    let key = dir.join("dpop.jwk");
    std::fs::write(&key, JWK).unwrap();
    let unusable = format!(
        "{} is not a P-256 private key (no private key found); expected PEM (\"EC PRIVATE KEY\" or \"PRIVATE KEY\") or a JWK with \"d\"; make one with `openssl ecparam -name prime256v1 -genkey -noout`",
        key.display()
    );
    let fake = Fake::bind(token_reply("DPoP", "bound-1"));
    let with_key = AuthorityConfig {
        require_dpop: true,
        dpop_key_file: Some(key.clone()),
        ..config(&fake.issuer)
    };
    let (log, metrics) = captured(|| {
        let authority = Authority::new(&with_key, None).unwrap();
        runtime().block_on(async {
            fake.serve();
            let jkt = authority
                .credentials()
                .await
                .unwrap()
                .key
                .unwrap()
                .thumbprint()
                .to_owned();

            // Broken after start: the key in use stays, and that is said once.
            replace(&key, "garbage");
            for _ in 0..3 {
                let credentials = authority.credentials().await.unwrap();
                assert_eq!(credentials.key.unwrap().thumbprint(), jkt);
                assert_eq!(&*credentials.token, "bound-1");
            }

            // No key since the start (a second binary, as it were): every call fails, the
            // failure is counted and logged once, and the Authority is not asked.
            let asked = fake.seen().len();
            let without = Authority::new(&with_key, None).unwrap();
            for _ in 0..3 {
                let error = without.credentials().await.unwrap_err();
                assert_eq!(
                    error.to_string(),
                    format!("authority.dpop_key_file: {unusable}")
                );
            }
            assert_eq!(fake.seen().len(), asked);
        });
    });
    let kept = lines_with(&log, "holds no usable key");
    assert_eq!(kept.len(), 1, "{log}");
    assert!(
        kept[0].contains(" WARN authority.token.issue: "),
        "{}",
        kept[0]
    );
    assert!(
        kept[0].contains(&format!(
            "authority.dpop_key_file changed but holds no usable key: {unusable}; the key with jkt "
        )),
        "{}",
        kept[0]
    );
    let none = lines_with(&log, "no OpTok can be issued");
    assert_eq!(none.len(), 1, "{log}");
    assert!(
        none[0].contains(" WARN authority.token.issue: "),
        "{}",
        none[0]
    );
    assert!(
        none[0].contains(&format!(
            "authority.dpop_key_file: {unusable}; no OpTok can be issued until the file holds a P-256 private key"
        )),
        "{}",
        none[0]
    );
    assert!(
        metrics.contains("zastava_authority_token_issues_total{result=\"dpop_key\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("zastava_authority_token_issues_total{result=\"issued\"} 1\n"),
        "{metrics}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_cached_bearer_token_under_require_dpop_is_removed_and_that_is_logged() {
    let dir = temp_dir("cached-bearer");
    let issuer: url::Url = "http://127.0.0.1:9/".parse().unwrap();
    let cache = TokenCache::new(dir.clone());
    let now = now_ms();
    cache
        .store(&OpTok {
            access_token: "bearer-1".into(),
            token_type: "Bearer".into(),
            issued_at_ms: now,
            expires_at_ms: now + 3_600_000,
            refresh_at_ms: now + 3_000_000,
            scope: None,
            jkt: None,
            issuer: issuer.to_string(),
            client_id: config::DEFAULT_CLIENT_ID.into(),
            audience: "scanner".into(),
        })
        .unwrap();
    let path = cache.path("scanner");
    let (log, _) = captured(|| {
        let authority = Authority::new(
            &AuthorityConfig {
                require_dpop: true,
                token_cache_dir: Some(dir.clone()),
                ..config(&issuer)
            },
            None,
        )
        .unwrap();
        assert!(authority.held_credentials(now_ms()).is_none());
    });
    assert!(!path.exists());
    let lines = lines_with(&log, "is not DPoP-bound");
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains(" INFO authority.token.issue: "),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(&format!(
            "the cached OpTok in {} is not DPoP-bound and authority.require_dpop is true: removed; a DPoP-bound one is issued",
            path.display()
        )),
        "{}",
        lines[0]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_background_refresh_waits_without_holding_the_authority_and_ends_with_it() {
    let dir = temp_dir("refresh-weak");
    let issuer: url::Url = "http://127.0.0.1:9/".parse().unwrap();
    let now = now_ms();
    // A cached token due in an hour: the refresh starts by waiting for it.
    TokenCache::new(dir.clone())
        .store(&OpTok {
            access_token: "bearer-1".into(),
            token_type: "Bearer".into(),
            issued_at_ms: now,
            expires_at_ms: now + 4_000_000,
            refresh_at_ms: now + 3_600_000,
            scope: None,
            jkt: None,
            issuer: issuer.to_string(),
            client_id: config::DEFAULT_CLIENT_ID.into(),
            audience: "scanner".into(),
        })
        .unwrap();
    let config = AuthorityConfig {
        token_cache_dir: Some(dir.clone()),
        ..config(&issuer)
    };
    runtime().block_on(async {
        let metrics = tokio::runtime::Handle::current().metrics();
        let authority = Authority::new(&config, None).unwrap();
        assert!(authority.held_credentials(now_ms()).is_some());
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.num_alive_tasks(), 1, "the refresh waits");
        let weak = Arc::downgrade(&authority);
        drop(authority);
        assert!(
            weak.upgrade().is_none(),
            "the waiting refresh keeps the Authority alive"
        );
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.num_alive_tasks(), 0, "the refresh did not end");
    });
    std::fs::remove_dir_all(&dir).unwrap();
}
