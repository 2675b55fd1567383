use super::*;

fn load(text: &str) -> Result<WebhookConfig, ConfigErrors> {
    WebhookConfig::load(&Sources {
        file: Some(("webhook.toml".into(), text.into())),
        ..Default::default()
    })
}

fn keys(err: &ConfigErrors) -> Vec<&str> {
    err.0.iter().map(|e| e.key.as_str()).collect()
}

#[test]
fn a_full_file_is_read() {
    let dir = std::env::temp_dir().join(format!("zastava-webhook-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::write(&cert, "x").unwrap();
    std::fs::write(&key, "x").unwrap();
    let config = load(&format!(
        r#"
        [server]
        addr = "127.0.0.1:9443"
        cert_file = "{}"
        key_file = "{}"
        reload_interval = "500ms"
        max_connections = 64
        max_bodies_in_flight = "16M"
        handshake_timeout = "3s"
        header_timeout = "2s"
        body_timeout = "4s"
        idle_timeout = "30s"
        [policy]
        budget = "1500ms"
        failOpenNamespaces = ["dev"]
        tag_only = "deny"
        tag_only_by_namespace = {{ legacy = "warn" }}
        judge_every_update = true
        digests_per_request = 250
        [cache]
        default_ttl = "30s"
        [backend]
        url = "https://scanner.internal:8443"
        [admin]
        addr = "[::1]:9000"
        "#,
        cert.display(),
        key.display()
    ))
    .unwrap();
    assert_eq!(config.server.reload_interval, Duration::from_millis(500));
    assert_eq!(config.server.max_connections, 64);
    assert_eq!(config.server.max_bodies_in_flight, 16 << 20);
    assert_eq!(config.server.handshake_timeout, Duration::from_secs(3));
    assert_eq!(config.server.header_timeout, Duration::from_secs(2));
    assert_eq!(config.server.body_timeout, Duration::from_secs(4));
    assert_eq!(config.server.idle_timeout, Duration::from_secs(30));
    assert_eq!(config.policy.budget, Duration::from_millis(1500));
    assert!(config.policy.fails_open("dev"));
    assert!(!config.policy.fails_open("prod"));
    assert_eq!(config.policy.tag_only_in("legacy"), TagOnly::Warn);
    assert_eq!(config.policy.tag_only_in("prod"), TagOnly::Deny);
    assert!(config.policy.judge_every_update);
    assert_eq!(config.policy.digests_per_request, 250);
    assert!(!PolicyConfig::default().judge_every_update);
    assert_eq!(config.cache.default_ttl, Duration::from_secs(30));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_problem_is_named_by_its_key() {
    let err = load(
        r#"
        [policy]
        budget = "45s"
        fail_open_namespaces = ["Not_A_Namespace"]
        [admin]
        addr = "0.0.0.0:9466"
        [backend]
        url = "http://scanner.example"
        "#,
    )
    .unwrap_err();
    assert_eq!(
        keys(&err),
        [
            "server.cert_file",
            "server.key_file",
            "policy.budget",
            "policy",
            "backend.url",
            "admin.addr"
        ],
        "{err}"
    );
    let err = load(
        "[server]\nmax_bodies_in_flight = \"1M\"\nmax_connections = 0\nheader_timeout = \"0s\"\nidle_timeout = \"2s\"\n[policy]\nbudget = \"5s\"\n",
    )
    .unwrap_err();
    let server: Vec<&str> = keys(&err)
        .into_iter()
        .filter(|k| k.starts_with("server.") && !k.ends_with("_file"))
        .collect();
    assert_eq!(
        server,
        [
            "server.max_bodies_in_flight",
            "server.max_connections",
            "server.header_timeout",
            "server.idle_timeout"
        ],
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("must be longer than policy.budget (5s)"),
        "{err}"
    );
    let err = load("[server]\nbody_timeout = \"1000years\"\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("server.body_timeout: must be longer than 0 and at most 86400s"),
        "{err}"
    );
    let err = load("[server]\nmax_connections = 4611686018427387904\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("server.max_connections: must be at least 1 and at most 1048576"),
        "{err}"
    );
    let err = load("[policy]\ndigests_per_request = 0\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("policy.digests_per_request: must be at least 1"),
        "{err}"
    );
    let err = load("[policy]\nbudget = \"soon\"\n").unwrap_err();
    assert_eq!(keys(&err), ["policy.budget"], "{err}");
    let err = load("[policy]\ntag_only = \"maybe\"\n").unwrap_err();
    assert_eq!(keys(&err), ["policy.tag_only"], "{err}");
}

#[test]
fn the_runtime_table_is_the_observers_and_its_problems_are_named() {
    let err = load(
        "[runtime]\ndeployment = \"eu 1\"\n[runtime.metrics.common_labels]\ndecision = \"x\"\n",
    )
    .unwrap_err();
    let runtime: Vec<&str> = keys(&err)
        .into_iter()
        .filter(|k| k.starts_with("runtime."))
        .collect();
    assert_eq!(
        runtime,
        [
            "runtime.deployment",
            "runtime.metrics.common_labels.decision"
        ],
        "{err}"
    );
    let config = WebhookConfig::default();
    assert!(config
        .describe()
        .lines()
        .any(|l| l == "runtime.deployment = (none)"));
}
