//! `[sinks.nats]` and `[sinks.redis]`: read with their defaults, and every check naming
//! its key.

use super::*;
use crate::output::sinks::nats::Storage;

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
fn the_sinks_are_off_by_default_and_read_with_units() {
    let config = load("").unwrap();
    assert!(!config.sinks.nats.enabled && !config.sinks.redis.enabled);
    assert!(config.describe().lines().any(|l| l == "sinks.nats = (off)"));

    let dir = std::env::temp_dir().join(format!("zastava-sinks-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let password = dir.join("password");
    std::fs::write(&password, "p\n").unwrap();
    let config = load(&format!(
        r#"
        [sinks.nats]
        enabled = true
        servers = ["nats://a:4222", "tls://b:4222"]
        tenant = "acme"
        user = "observer"
        password_file = "{p}"
        timeout = "2s"
        max_backoff = "10s"
        [sinks.nats.stream]
        create = true
        replicas = 3
        max_age = "24h"
        max_bytes = "2G"
        duplicate_window = "1m"
        storage = "memory"
        [sinks.redis]
        enabled = true
        url = "rediss://redis.bus:6380/2"
        max_len = 5000
        password_file = "{p}"
        "#,
        p = password.display()
    ))
    .unwrap();
    let nats = &config.sinks.nats;
    assert_eq!(nats.publish_subject(), "zastava.runtime.events.acme");
    assert_eq!(nats.stream.name, "ZASTAVA_RUNTIME_EVENTS");
    assert_eq!(nats.stream.replicas, 3);
    assert_eq!(nats.stream.max_age, Duration::from_secs(24 * 3600));
    assert_eq!(nats.stream.max_bytes, 2 << 30);
    assert_eq!(nats.stream.storage, Storage::Memory);
    assert_eq!(nats.retry_within(), Duration::from_secs(12));
    let redis = &config.sinks.redis;
    assert_eq!(redis.stream, "zastava.runtime.events");
    assert_eq!(redis.max_len, 5000);
    assert_eq!(redis.dedup_ttl, Duration::from_secs(600));
    let described = config.describe();
    assert!(
        described.contains("sinks.nats.subject = zastava.runtime.events.acme\n"),
        "{described}"
    );
    assert!(
        described.contains(
            "sinks.nats.stream = ZASTAVA_RUNTIME_EVENTS (create = true, check = true, replicas = 3, duplicate_window = 1m)\n"
        ),
        "{described}"
    );
    assert!(
        described.contains("sinks.redis.stream = zastava.runtime.events (max_len ~ 5000)\n"),
        "{described}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nats_checks_name_the_key_and_what_to_change() {
    let err = load(
        r#"
        [sinks.nats]
        enabled = true
        subject = "zastava.*.events"
        tenant = "a.b"
        user = "observer"
        token_file = "/nonexistent/token"
        timeout = "0s"
        [sinks.nats.stream]
        name = "bad name"
        replicas = 7
        duplicate_window = "10s"
        "#,
    )
    .unwrap_err();
    assert_eq!(
        keys(&err),
        [
            "sinks.nats.servers",
            "sinks.nats.subject",
            "sinks.nats.tenant",
            "sinks.nats",
            "sinks.nats.password_file",
            "sinks.nats.token_file",
            "sinks.nats.timeout",
            "sinks.nats.stream.name",
            "sinks.nats.stream.replicas",
            "sinks.nats.stream.duplicate_window",
        ]
    );
    let text = err.to_string();
    for needle in [
        "sinks.nats.servers: is required when sinks.nats.enabled is true",
        "\"zastava.*.events\" is not a subject to publish to",
        "give one kind of credentials",
        "/nonexistent/token does not exist",
        "sinks.nats.stream.duplicate_window: must be at least sinks.nats.timeout + sinks.nats.max_backoff (30s)",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }

    let err = load(
        "[sinks.nats]\nenabled = true\nservers = [\"nats://u:secret@bus:4222\", \"http://bus\"]",
    )
    .unwrap_err();
    assert_eq!(keys(&err), ["sinks.nats.servers", "sinks.nats.servers"]);
    assert!(err.to_string().contains("holds credentials"), "{err}");
    // Off, nothing of it is checked.
    assert!(load("[sinks.nats]\nservers = []\nsubject = \"\"").is_ok());
}

#[test]
fn redis_checks_name_the_key_and_what_to_change() {
    let err = load("[sinks.redis]\nenabled = true").unwrap_err();
    assert_eq!(keys(&err), ["sinks.redis.url"]);
    assert!(err
        .to_string()
        .contains("is required when sinks.redis.enabled is true"));

    let err = load(
        r#"
        [sinks.redis]
        enabled = true
        url = "redis://:hunter2@redis.bus:6379"
        ca_file = "/nonexistent/ca.pem"
        max_len = 0
        user = "observer"
        dedup_ttl = "5s"
        "#,
    )
    .unwrap_err();
    assert_eq!(
        keys(&err),
        [
            "sinks.redis.url",
            "sinks.redis.url",
            "sinks.redis.max_len",
            "sinks.redis.password_file",
            "sinks.redis.ca_file",
            "sinks.redis.dedup_ttl",
        ]
    );
    let text = err.to_string();
    assert!(text.contains("holds credentials"), "{text}");
    assert!(text.contains("use rediss:// for TLS"), "{text}");

    let err = load("[sinks.redis]\nenabled = true\nurl = \"http://redis\"").unwrap_err();
    assert!(
        err.to_string().contains("scheme \"http\" is not supported"),
        "{err}"
    );
}
