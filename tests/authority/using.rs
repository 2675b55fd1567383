//! Issuing and using OpToks: over mutual TLS, bound to the DPoP key, nonces at both ends,
//! refresh before expiry, replayed proofs, Authority outages.

use super::*;

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
    assert_nothing_lost(&stopped);
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
    assert_nothing_lost(&stopped);
}

/// Every event the observer saw was shipped, or (when the shutdown grace period ran out on
/// a loaded machine, which the observer says) stays spooled for the next start: none dropped.
fn assert_nothing_lost(stopped: &common::Stopped) {
    let d = &stopped.summary["delivery"];
    let (seen, shipped) = (d["seen"].as_u64().unwrap(), d["shipped"].as_u64().unwrap());
    let spooled = d["inFlightSpool"].as_u64().unwrap();
    let dropped: u64 = d["dropped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(dropped, 0, "{d}");
    assert_eq!(d["inFlightPipeline"], 0, "{d}");
    assert_eq!(shipped + spooled, seen, "{d}");
    if spooled > 0 {
        assert!(
            stopped.stderr.contains(&format!(
                "{spooled} events in {} spooled batches were not delivered within the shutdown grace period",
                d["spoolBatches"]
            )),
            "{d}\n{}",
            stopped.stderr
        );
    }
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
