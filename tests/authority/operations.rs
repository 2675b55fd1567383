//! Operating it: a rotated DPoP key, invalidate-op-token (both binaries), the token cache
//! across restarts, the webhook's verdict calls, and configurations refused by both binaries.

use super::*;

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
fn a_dpop_key_file_left_without_a_key_is_counted_and_logged_once_and_the_key_stays() {
    let s = Setup::new();
    let activity = TempDir::new("zastava-activity");
    let observer = s.observer(&[]);
    let first = open_unique(activity.path(), "good-key", 3, Duration::ZERO);
    s.authority
        .wait_until("delivered with the key", |st| all_delivered(st, &first));
    let jkt = thumbprint(&s.key);

    // The Secret is updated with something that is not a key.
    let garbage = s.dir.path().join("dpop.pem.new");
    std::fs::write(&garbage, "not a key\n").unwrap();
    std::fs::rename(&garbage, &s.key).unwrap();
    // Batch after batch looks at the file again.
    let mut after = Vec::new();
    for round in 0..3 {
        let paths = open_unique(
            activity.path(),
            &format!("garbage-key-{round}"),
            2,
            Duration::ZERO,
        );
        s.authority.wait_until("delivered with the key kept", |st| {
            all_delivered(st, &paths)
        });
        after.extend(paths);
    }
    let metrics = observer.scrape();
    let stopped = observer.stop();

    assert_eq!(
        metrics.value(
            "zastava_authority_token_issues_total",
            "{result=\"dpop_key\"}"
        ),
        Some(1.0),
        "{}",
        metrics.0
    );
    let message = format!(
        "authority.dpop_key_file changed but holds no usable key: {} is not a P-256 private key (no private key found); expected PEM (\"EC PRIVATE KEY\" or \"PRIVATE KEY\") or a JWK with \"d\"; make one with `openssl ecparam -name prime256v1 -genkey -noout`; the key with jkt {jkt} stays in use",
        s.key.display()
    );
    let lines: Vec<&str> = stopped
        .stderr
        .lines()
        .filter(|l| l.contains("holds no usable key"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("WARN authority.token.issue"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(&message), "{}", lines[0]);
    // The token bound to the kept key carries on: no new one, nothing refused.
    let state = s.authority.state();
    assert_eq!(list(&state["issued"]).len(), 1);
    for r in event_requests(&state) {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["jkt"], jkt.as_str(), "{r}");
    }
    assert!(all_delivered(&state, &after));
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
    // Another audience than the one held is refused by the observer, naming the one held.
    let out = Command::new(observer_bin())
        .args([
            "invalidate-op-token",
            "--audience",
            "registry",
            "--admin-addr",
        ])
        .arg(&addr)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            r#"audience \"registry\" is refused: credentials are held for \"scanner\" only"#
        ),
        "{stderr}"
    );
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

    // Non-loopback addresses are refused by the command.
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
    // A client certificate file that is not PEM and a key file that holds no key: read
    // as they would be at start, and refused before it.
    let not_pem = dir.path().join("client.crt");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let not_a_key_file = dir.path().join("client.key");
    std::fs::write(&not_a_key_file, "this is not a key either\n").unwrap();
    let files = [
        "--backend".to_owned(),
        "https://scanner.example".to_owned(),
        "--authority".to_owned(),
        "https://authority.example".to_owned(),
        "--authority-client-cert".to_owned(),
        not_pem.display().to_string(),
        "--authority-client-key".to_owned(),
        not_a_key_file.display().to_string(),
        "--set".to_owned(),
        "authority.require_dpop=false".to_owned(),
    ];
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    for (binary, command) in [(observer_bin(), "run"), (webhook, "serve")] {
        let (code, text) = check_config(binary, command, &files);
        assert_eq!(code, Some(2), "{binary}: {text}");
        let problems: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("authority."))
            .collect();
        assert_eq!(
            problems,
            [
                format!(
                    "client_cert_file: {} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
                    not_pem.display()
                ),
                format!(
                    "client_key_file: {} holds no PEM private key (\"-----BEGIN PRIVATE KEY-----\", \"-----BEGIN EC PRIVATE KEY-----\" or \"-----BEGIN RSA PRIVATE KEY-----\")",
                    not_a_key_file.display()
                ),
            ],
            "{binary}: {text}"
        );
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
