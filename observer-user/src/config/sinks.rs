//! Checks of `[sinks.nats]` and `[sinks.redis]` that types alone cannot make, for
//! `--check-config` and every start: each names its key and what to change.

use std::{path::PathBuf, time::Duration};

use crate::output::sinks::{nats::NatsConfig, redis::RedisConfig, SinksConfig};

type Bad<'a> = dyn FnMut(&str, String) + 'a;

/// A subject token: what NATS allows between dots, without wildcards.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, '.' | '*' | '>'))
}

fn check_files(bad: &mut Bad<'_>, files: &[(&str, &Option<PathBuf>)]) {
    for (key, file) in files {
        if let Some(path) = file {
            if !path.is_file() {
                bad(
                    key,
                    format!("{} does not exist or is not a file", path.display()),
                );
            }
        }
    }
}

fn check_pair(bad: &mut Bad<'_>, table: &str, cert: bool, key: bool) {
    match (cert, key) {
        (true, false) => bad(
            &format!("{table}.client_key_file"),
            format!("is required with {table}.client_cert_file"),
        ),
        (false, true) => bad(
            &format!("{table}.client_cert_file"),
            format!("is required with {table}.client_key_file"),
        ),
        _ => {}
    }
}

fn positive(bad: &mut Bad<'_>, key: &str, value: Duration) {
    if value.is_zero() {
        bad(key, "must be longer than 0".into());
    }
}

pub(super) fn check(sinks: &SinksConfig, bad: &mut Bad<'_>) {
    if sinks.nats.enabled {
        check_nats(&sinks.nats, bad);
    }
    if sinks.redis.enabled {
        check_redis(&sinks.redis, bad);
    }
}

fn check_nats(c: &NatsConfig, bad: &mut Bad<'_>) {
    if c.servers.is_empty() {
        bad(
            "sinks.nats.servers",
            "is required when sinks.nats.enabled is true (e.g. [\"nats://nats.bus:4222\"])".into(),
        );
    }
    for server in &c.servers {
        match server.parse::<async_nats::ServerAddr>() {
            Err(e) => bad("sinks.nats.servers", format!("{server:?}: {e}")),
            Ok(addr) if addr.has_user_pass() => bad(
                "sinks.nats.servers",
                format!("{server:?} holds credentials; put them in sinks.nats.user and sinks.nats.password_file (or token_file), which are not shown in configuration dumps"),
            ),
            Ok(_) => {}
        }
    }
    if c.subject.is_empty() || !c.subject.split('.').all(is_token) {
        bad(
            "sinks.nats.subject",
            format!(
                "{:?} is not a subject to publish to (tokens separated by dots, no wildcards or spaces)",
                c.subject
            ),
        );
    }
    if let Some(tenant) = &c.tenant {
        if !is_token(tenant) {
            bad(
                "sinks.nats.tenant",
                format!("{tenant:?} is not one subject token (no dots, wildcards or spaces)"),
            );
        }
    }
    let credentials = [
        c.user.is_some() || c.password_file.is_some(),
        c.token_file.is_some(),
        c.creds_file.is_some(),
        c.nkey_seed_file.is_some(),
    ];
    if credentials.iter().filter(|&&given| given).count() > 1 {
        bad(
            "sinks.nats",
            "give one kind of credentials: user with password_file, token_file, creds_file or nkey_seed_file".into(),
        );
    }
    match (&c.user, &c.password_file) {
        (Some(_), None) => bad(
            "sinks.nats.password_file",
            "is required with sinks.nats.user".into(),
        ),
        (None, Some(_)) => bad(
            "sinks.nats.user",
            "is required with sinks.nats.password_file".into(),
        ),
        _ => {}
    }
    check_pair(
        bad,
        "sinks.nats",
        c.client_cert_file.is_some(),
        c.client_key_file.is_some(),
    );
    check_files(
        bad,
        &[
            ("sinks.nats.password_file", &c.password_file),
            ("sinks.nats.token_file", &c.token_file),
            ("sinks.nats.creds_file", &c.creds_file),
            ("sinks.nats.nkey_seed_file", &c.nkey_seed_file),
            ("sinks.nats.ca_file", &c.ca_file),
            ("sinks.nats.client_cert_file", &c.client_cert_file),
            ("sinks.nats.client_key_file", &c.client_key_file),
        ],
    );
    positive(bad, "sinks.nats.timeout", c.timeout);
    positive(bad, "sinks.nats.connect_timeout", c.connect_timeout);
    positive(bad, "sinks.nats.max_backoff", c.max_backoff);
    let stream = &c.stream;
    if !is_token(&stream.name) || stream.name.contains('/') || stream.name.contains('\\') {
        bad(
            "sinks.nats.stream.name",
            format!(
                "{:?} is not a stream name (no dots, wildcards, slashes or spaces)",
                stream.name
            ),
        );
    }
    if !(1..=5).contains(&stream.replicas) {
        bad(
            "sinks.nats.stream.replicas",
            "must be between 1 and 5".into(),
        );
    }
    if stream.duplicate_window < c.retry_within() {
        bad(
            "sinks.nats.stream.duplicate_window",
            format!(
                "must be at least sinks.nats.timeout + sinks.nats.max_backoff ({}), or a batch retried after the longest backoff could be stored twice",
                humantime::format_duration(c.retry_within())
            ),
        );
    }
    if stream.max_age.is_zero() && stream.max_bytes == 0 && stream.create {
        bad(
            "sinks.nats.stream.max_age",
            "a stream without max_age or max_bytes grows until the server's storage is full; set one".into(),
        );
    }
}

fn check_redis(c: &RedisConfig, bad: &mut Bad<'_>) {
    match url::Url::parse(&c.url) {
        Err(_) if c.url.is_empty() => bad(
            "sinks.redis.url",
            "is required when sinks.redis.enabled is true (e.g. \"redis://redis.bus:6379/0\")"
                .into(),
        ),
        Err(e) => bad("sinks.redis.url", format!("{:?} is not a URL: {e}", c.url)),
        Ok(url) => {
            if !matches!(url.scheme(), "redis" | "rediss") {
                bad(
                    "sinks.redis.url",
                    format!(
                        "scheme {:?} is not supported; use redis:// or rediss:// (TLS)",
                        url.scheme()
                    ),
                );
            }
            if url.password().is_some() || !url.username().is_empty() {
                bad(
                    "sinks.redis.url",
                    "holds credentials; put them in sinks.redis.user and sinks.redis.password_file, which are not shown in configuration dumps".into(),
                );
            }
            let tls_files = c.ca_file.is_some() || c.client_cert_file.is_some();
            if tls_files && url.scheme() == "redis" {
                bad(
                    "sinks.redis.url",
                    "TLS files are set but the URL is redis://; use rediss:// for TLS".into(),
                );
            }
        }
    }
    if c.stream.is_empty() {
        bad("sinks.redis.stream", "must not be empty".into());
    }
    if c.max_len == 0 {
        bad("sinks.redis.max_len", "must be at least 1".into());
    }
    if c.user.is_some() && c.password_file.is_none() {
        bad(
            "sinks.redis.password_file",
            "is required with sinks.redis.user".into(),
        );
    }
    check_pair(
        bad,
        "sinks.redis",
        c.client_cert_file.is_some(),
        c.client_key_file.is_some(),
    );
    check_files(
        bad,
        &[
            ("sinks.redis.password_file", &c.password_file),
            ("sinks.redis.ca_file", &c.ca_file),
            ("sinks.redis.client_cert_file", &c.client_cert_file),
            ("sinks.redis.client_key_file", &c.client_key_file),
        ],
    );
    positive(bad, "sinks.redis.timeout", c.timeout);
    positive(bad, "sinks.redis.max_backoff", c.max_backoff);
    if c.dedup_ttl < c.retry_within() {
        bad(
            "sinks.redis.dedup_ttl",
            format!(
                "must be at least sinks.redis.timeout + sinks.redis.max_backoff ({}), or a batch retried after the longest backoff could be added twice",
                humantime::format_duration(c.retry_within())
            ),
        );
    }
}

/// `key = value` lines for `--check-config`.
pub(super) fn describe(sinks: &SinksConfig) -> Vec<(&'static str, String)> {
    let nats = &sinks.nats;
    let redis = &sinks.redis;
    let mut lines = Vec::new();
    if nats.enabled {
        lines.push(("sinks.nats.servers", format!("{:?}", nats.servers)));
        lines.push(("sinks.nats.subject", nats.publish_subject()));
        lines.push((
            "sinks.nats.stream",
            format!(
                "{} (create = {}, check = {}, replicas = {}, duplicate_window = {})",
                nats.stream.name,
                nats.stream.create,
                nats.stream.check,
                nats.stream.replicas,
                humantime::format_duration(nats.stream.duplicate_window)
            ),
        ));
    } else {
        lines.push(("sinks.nats", "(off)".into()));
    }
    if redis.enabled {
        lines.push(("sinks.redis.url", redis.url.clone()));
        lines.push((
            "sinks.redis.stream",
            format!("{} (max_len ~ {})", redis.stream, redis.max_len),
        ));
    } else {
        lines.push(("sinks.redis", "(off)".into()));
    }
    lines
}
