//! What is refused, and said clearly: the static token where it is not allowed, Bearer
//! tokens under require_dpop, missing or wrong client certificates, a wrong client secret.

use super::*;

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
