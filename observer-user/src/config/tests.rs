use super::*;

fn load(file: &str) -> Result<Config, ConfigErrors> {
    Config::load(&Sources {
        file: Some(("test.toml".into(), file.into())),
        ..Default::default()
    })
}

fn keys(err: &ConfigErrors) -> Vec<&str> {
    err.0.iter().map(|e| e.key.as_str()).collect()
}

#[test]
fn an_empty_file_gives_the_defaults_with_feature_flags_off() {
    let config = load("").unwrap();
    assert_eq!(config, Config::default());
    assert!(!config.zastava.attach.enabled);
    assert!(!config.scanner.runtime.capture.enabled);
    assert_eq!(
        config.ndjson.path,
        "/var/log/stellaops/runtime/zastava.runtime.ndjson"
    );
}

#[test]
fn a_full_file_is_read_with_units() {
    let dir = std::env::temp_dir().join(format!("zastava-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "secret").unwrap();
    let config = load(&format!(
        r#"
        [zastava.attach]
        enabled = true
        [scanner.runtime.capture]
        enabled = true
        [observer]
        ring_buffer_bytes = "64M"
        enrichment_wait = "100ms"
        exclude_namespaces = ["kube-system"]
        [batch]
        reorder_window = "2s"
        max_events = 500
        [backend]
        url = "https://scanner.internal:8443/"
        token_file = "{}"
        [spool]
        when_full = "drop-newest"
        max_bytes = "32M"
        [metrics]
        addr = "0.0.0.0:9464"
        "#,
        token.display()
    ))
    .unwrap();
    assert!(config.zastava.attach.enabled && config.scanner.runtime.capture.enabled);
    assert_eq!(config.observer.ring_buffer_bytes, 64 << 20);
    assert_eq!(config.observer.enrichment_wait, Duration::from_millis(100));
    assert_eq!(config.batch.reorder_window, Duration::from_secs(2));
    assert_eq!(config.spool.when_full, WhenFull::DropNewest);
    assert_eq!(config.spool.max_bytes, 32 << 20);
    assert_eq!(config.metrics.addr, Some("0.0.0.0:9464".parse().unwrap()));
    assert_eq!(
        config.backend.url.as_ref().unwrap().as_str(),
        "https://scanner.internal:8443/"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_name_the_key() {
    let err = load("[observer]\nring_buffer_bytes = \"lots\"").unwrap_err();
    assert_eq!(keys(&err), ["observer.ring_buffer_bytes"]);
    assert!(err.to_string().contains("`lots` is not a size"), "{err}");

    let err = load("[batch]\nmax_age = \"soon\"").unwrap_err();
    assert_eq!(keys(&err), ["batch.max_age"]);

    let config = load("[batch]\nmax_held_bytes = \"8M\"").unwrap();
    assert_eq!(config.batch.max_held_bytes, 8 << 20);
    let err = load("[batch]\nmax_held_bytes = \"64K\"").unwrap_err();
    assert_eq!(keys(&err), ["batch.max_held_bytes"]);
    let record = size_of::<crate::record::Item>();
    assert!(
        err.to_string().contains(&format!(
            "must hold at least one batch: {} bytes (batch.max_events × {record} bytes a record)",
            2000 * record
        )),
        "{err}"
    );

    let err = load("[backend]\nurll = \"https://x\"").unwrap_err();
    assert_eq!(keys(&err), ["backend.urll"]);
    assert!(err.to_string().contains("unknown field `urll`"), "{err}");

    let err = load("[spool]\nwhen_full = \"panic\"").unwrap_err();
    assert_eq!(keys(&err), ["spool.when_full"]);

    let err = load("[observer\n").unwrap_err();
    assert_eq!(keys(&err), ["test.toml"]);
    assert!(err.to_string().contains("not valid TOML"), "{err}");
}

#[test]
fn checks_report_every_problem_at_once() {
    let err = load(
        r#"
        [scanner.runtime.capture]
        enabled = true
        [observer]
        ring_buffer_bytes = 5000
        exclude_namespaces = ["Bad_NS"]
        [batch]
        reorder_window = "100ms"
        [backend]
        client_cert_file = "/nonexistent/cert.pem"
        "#,
    )
    .unwrap_err();
    assert_eq!(
        keys(&err),
        [
            "observer.ring_buffer_bytes",
            "batch.reorder_window",
            "observer.exclude_namespaces",
            "backend.url",
            "backend.client_key_file",
            "backend.client_cert_file",
        ]
    );
    let text = err.to_string();
    assert!(
        text.contains("backend.url: is required when scanner.runtime.capture.enabled is true"),
        "{text}"
    );
    assert!(
        text.contains("/nonexistent/cert.pem does not exist"),
        "{text}"
    );
}

#[test]
fn plain_http_is_only_accepted_for_loopback() {
    assert!(load("[backend]\nurl = \"http://127.0.0.1:8080/\"").is_ok());
    let err = load("[backend]\nurl = \"http://scanner.internal/\"").unwrap_err();
    assert_eq!(keys(&err), ["backend.url"]);
    let err = load("[backend]\nurl = \"not a url\"").unwrap_err();
    assert_eq!(keys(&err), ["backend.url"]);
}

#[test]
fn environment_then_flags_override_the_file() {
    let sources = Sources {
        file: Some((
            "f".into(),
            "[batch]\nmax_events = 10\nmax_age = \"5s\"".into(),
        )),
        env: vec![
            ("ZASTAVA__BATCH__MAX_EVENTS".into(), "20".into()),
            ("ZASTAVA__CRI__ENDPOINT".into(), "unix:///run/x.sock".into()),
            (
                "ZASTAVA__DOCKER__ENDPOINT".into(),
                "/srv/docker.sock".into(),
            ),
            (
                "ZASTAVA__OBSERVER__EXCLUDE_NAMESPACES".into(),
                "[\"a\", \"b\"]".into(),
            ),
            ("HOME".into(), "/root".into()),
        ],
        overrides: vec![("batch.max_age".into(), toml::Value::String("2s".into()))],
    };
    let config = Config::load(&sources).unwrap();
    assert_eq!(config.batch.max_events, 20);
    assert_eq!(config.batch.max_age, Duration::from_secs(2));
    assert_eq!(config.cri.endpoint.as_deref(), Some("unix:///run/x.sock"));
    assert_eq!(config.docker.endpoint.as_deref(), Some("/srv/docker.sock"));
    assert_eq!(config.observer.exclude_namespaces, ["a", "b"]);

    let bad = Sources {
        env: vec![("ZASTAVA__BATCH__MAX_EVENTS".into(), "many".into())],
        ..Default::default()
    };
    let err = Config::load(&bad).unwrap_err();
    assert_eq!(keys(&err), ["batch.max_events"]);
}

#[test]
fn docker_endpoints_must_be_local_sockets() {
    let with = |endpoint: &str| Sources {
        overrides: vec![(
            "docker.endpoint".into(),
            toml::Value::String(endpoint.into()),
        )],
        ..Default::default()
    };
    for good in ["/var/run/docker.sock", "unix:///run/user/1000/docker.sock"] {
        assert!(Config::load(&with(good)).is_ok(), "{good}");
    }
    let err = Config::load(&with("tcp://10.0.0.1:2375")).unwrap_err();
    assert_eq!(keys(&err), ["docker.endpoint"]);
    assert!(
        err.to_string()
            .contains("\"tcp://10.0.0.1:2375\" is not a unix socket"),
        "{err}"
    );
    let defaults = Config::default();
    assert!(defaults.docker.enabled);
    assert_eq!(defaults.docker.endpoint, None);
    assert!(defaults.describe().lines().any(
        |l| l == "docker.endpoint = (/var/run/docker.sock, then /run/docker.sock, if present)"
    ));
}

#[test]
fn the_deployment_is_read_checked_and_described() {
    let config = load(
        r#"
        [runtime]
        tenant = "acme"
        environment = "prod"
        deployment = "prod-eu-1"
        [ndjson]
        include_deployment = true
        "#,
    )
    .unwrap();
    assert_eq!(config.runtime.deployment.as_deref(), Some("prod-eu-1"));
    assert!(config.ndjson.include_deployment);
    let described = config.describe();
    for line in [
        "runtime.tenant = acme",
        "runtime.environment = prod",
        "runtime.deployment = prod-eu-1",
        "runtime.metrics.common_labels = {cluster=\"prod-eu-1\"}",
        "ndjson.include_deployment = true",
    ] {
        assert!(described.lines().any(|l| l == line), "{line}:\n{described}");
    }
    let described = Config::default().describe();
    assert!(
        described
            .lines()
            .any(|l| l == "runtime.metrics.common_labels = (none)"),
        "{described}"
    );

    // The runtime table's problems are reported with the others'.
    let err =
        load("[runtime.metrics.common_labels]\n\"cluster-id\" = \"x\"\n[batch]\nmax_events = 0\n")
            .unwrap_err();
    assert_eq!(
        keys(&err),
        [
            "runtime.metrics.common_labels.cluster-id",
            "batch.max_events"
        ]
    );
}
