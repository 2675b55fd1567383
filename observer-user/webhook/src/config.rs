//! Configuration of `zastava-webhook`: the same layering as the observer's (TOML file, then
//! `ZASTAVA__*` environment variables, then flags), its own keys.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use zastava_platform::{
    authority::AuthorityConfig,
    backend::BackendConfig,
    config::{bytes, describe_lines, duration, is_dns_label, ConfigError, ConfigErrors, Sources},
    deployment::RuntimeConfig,
};

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Which installation this is (shared with the observer).
    pub runtime: RuntimeConfig,
    pub server: ServerConfig,
    pub policy: PolicyConfig,
    pub cache: CacheConfig,
    pub backend: BackendConfig,
    pub authority: AuthorityConfig,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTPS: `/validate`, `/healthz`, `/readyz`.
    pub addr: SocketAddr,
    /// PEM certificate chain and key; re-read when either file changes.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// How often the certificate files are checked for changes.
    #[serde(deserialize_with = "duration")]
    pub reload_interval: Duration,
    /// Largest request body accepted.
    #[serde(deserialize_with = "bytes")]
    pub max_body_bytes: u64,
    /// Bytes of request bodies read or judged at once (each reserves its declared length,
    /// or `max_body_bytes` if it declares none); more wait, within `body_timeout`, then
    /// get 503.
    #[serde(deserialize_with = "bytes")]
    pub max_bodies_in_flight: u64,
    /// Connections open at once (in the TLS handshake or after it); more are refused at
    /// accept.
    pub max_connections: usize,
    /// Time for a connection's TLS handshake.
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// Time for a request's headers (HTTP/2: its header block), from their first byte.
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// Time for a request's body, from the end of its headers.
    #[serde(deserialize_with = "duration")]
    pub body_timeout: Duration,
    /// A connection with no request waiting for its reply for this long is closed
    /// (HTTP/2: control frames do not count as activity).
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], 8443)),
            cert_file: None,
            key_file: None,
            reload_interval: Duration::from_secs(10),
            max_body_bytes: 4 << 20,
            max_bodies_in_flight: 16 << 20,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            // Longer than the 90 s Go's HTTP client (the API server's kind) keeps an idle
            // connection by default, so that such a client, not the webhook, closes it.
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// What to do with an image that is not pinned by digest.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TagOnly {
    #[default]
    Deny,
    Warn,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The whole decision, backend included, fits in this.
    #[serde(deserialize_with = "duration")]
    pub budget: Duration,
    /// Namespaces admitted (with a warning and an audit annotation) when the backend cannot
    /// be asked; everywhere else such a request is denied.
    #[serde(alias = "failOpenNamespaces")]
    pub fail_open_namespaces: Vec<String>,
    /// Images named by tag only: `deny` or `warn`...
    pub tag_only: TagOnly,
    /// ...or per namespace.
    pub tag_only_by_namespace: BTreeMap<String, TagOnly>,
    /// Judge every UPDATE, also one that adds no image to what `oldObject` had, and one of
    /// an object being deleted (which a denial would leave stuck in Terminating).
    pub judge_every_update: bool,
    /// Digests asked about in one backend request; a review with more makes several, a
    /// few at a time.
    pub digests_per_request: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            budget: Duration::from_secs(2),
            fail_open_namespaces: Vec::new(),
            tag_only: TagOnly::Deny,
            tag_only_by_namespace: BTreeMap::new(),
            judge_every_update: false,
            digests_per_request: 1000,
        }
    }
}

impl PolicyConfig {
    pub fn tag_only_in(&self, namespace: &str) -> TagOnly {
        self.tag_only_by_namespace
            .get(namespace)
            .copied()
            .unwrap_or(self.tag_only)
    }

    pub fn fails_open(&self, namespace: &str) -> bool {
        self.fail_open_namespaces.iter().any(|ns| ns == namespace)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Verdicts kept (the ones closest to expiry make room).
    pub max_entries: usize,
    /// TTL of a verdict whose reply gives none.
    #[serde(deserialize_with = "duration")]
    pub default_ttl: Duration,
    /// Upper bound of any TTL the backend gives.
    #[serde(deserialize_with = "duration")]
    pub max_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 10_000,
            default_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Plain HTTP: `/metrics`, `/healthz`, `/readyz`. Unset: no metrics endpoint.
    pub addr: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            addr: Some(SocketAddr::from(([0, 0, 0, 0], 9465))),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Loopback only: `POST /invalidate-op-token`.
    pub addr: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 9466)),
        }
    }
}

/// Most connections open at once: far beyond what file descriptors allow in practice.
const MAX_CONNECTIONS: usize = 1 << 20;

/// Longest connection timeout (a deadline is a point in time, which must not overflow).
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Longest budget: the API server gives a webhook at most 30 s.
const MAX_BUDGET: Duration = Duration::from_secs(29);

impl WebhookConfig {
    /// Layers the sources and checks the result.
    pub fn load(sources: &Sources) -> Result<WebhookConfig, ConfigErrors> {
        let config: WebhookConfig = sources.layered()?;
        config.check()?;
        Ok(config)
    }

    /// The settings an operator checks before a rollout, one `key = value` line each.
    pub fn describe(&self) -> String {
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or_else(|| "(none)".into(), |p| p.display().to_string())
        };
        let mut lines = self.runtime.describe();
        lines.extend([
            ("server.addr", self.server.addr.to_string()),
            ("server.cert_file", path(&self.server.cert_file)),
            ("server.key_file", path(&self.server.key_file)),
            (
                "server.max_connections",
                self.server.max_connections.to_string(),
            ),
            (
                "server.max_bodies_in_flight",
                self.server.max_bodies_in_flight.to_string(),
            ),
            (
                "server.timeouts",
                format!(
                    "handshake {:?}, headers {:?}, body {:?}, idle {:?}",
                    self.server.handshake_timeout,
                    self.server.header_timeout,
                    self.server.body_timeout,
                    self.server.idle_timeout
                ),
            ),
            ("policy.budget", format!("{:?}", self.policy.budget)),
            (
                "policy.fail_open_namespaces",
                format!("{:?}", self.policy.fail_open_namespaces),
            ),
            (
                "policy.tag_only",
                format!("{:?}", self.policy.tag_only).to_lowercase(),
            ),
            (
                "policy.judge_every_update",
                self.policy.judge_every_update.to_string(),
            ),
            (
                "backend.url",
                self.backend
                    .url
                    .as_ref()
                    .map_or_else(|| "(none)".into(), |u| u.to_string()),
            ),
            (
                "metrics.addr",
                self.metrics
                    .addr
                    .map_or_else(|| "(none)".into(), |a| a.to_string()),
            ),
            ("admin.addr", self.admin.addr.to_string()),
        ]);
        lines.extend(self.authority.describe());
        describe_lines(&lines)
    }

    /// Checks what types alone cannot.
    pub fn check(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut bad = |key: &str, problem: String| {
            errors.push(ConfigError {
                key: key.to_owned(),
                problem,
            });
        };
        self.runtime.check(&mut bad);
        for (key, file) in [
            ("server.cert_file", &self.server.cert_file),
            ("server.key_file", &self.server.key_file),
        ] {
            match file {
                None => bad(key, "is required: the webhook serves HTTPS only".into()),
                Some(path) if !path.is_file() => bad(
                    key,
                    format!("{} does not exist or is not a file", path.display()),
                ),
                Some(_) => {}
            }
        }
        if self.server.reload_interval.is_zero() {
            bad("server.reload_interval", "must be longer than 0".into());
        }
        if self.server.max_body_bytes < 4096 {
            bad("server.max_body_bytes", "must be at least 4K".into());
        }
        if self.server.max_bodies_in_flight < self.server.max_body_bytes {
            bad(
                "server.max_bodies_in_flight",
                format!(
                    "must be at least server.max_body_bytes ({} bytes), or a body of that size could never be read",
                    self.server.max_body_bytes
                ),
            );
        }
        if self.server.max_connections == 0 || self.server.max_connections > MAX_CONNECTIONS {
            bad(
                "server.max_connections",
                format!("must be at least 1 and at most {MAX_CONNECTIONS}"),
            );
        }
        for (key, timeout) in [
            ("server.handshake_timeout", self.server.handshake_timeout),
            ("server.header_timeout", self.server.header_timeout),
            ("server.body_timeout", self.server.body_timeout),
            ("server.idle_timeout", self.server.idle_timeout),
        ] {
            if timeout.is_zero() || timeout > MAX_TIMEOUT {
                bad(
                    key,
                    format!("must be longer than 0 and at most {MAX_TIMEOUT:?}"),
                );
            }
        }
        if !self.server.idle_timeout.is_zero() && self.server.idle_timeout <= self.policy.budget {
            bad(
                "server.idle_timeout",
                format!(
                    "must be longer than policy.budget ({:?}): a connection waiting for its decision is not idle",
                    self.policy.budget
                ),
            );
        }
        if self.policy.budget.is_zero() || self.policy.budget > MAX_BUDGET {
            bad(
                "policy.budget",
                format!(
                    "must be longer than 0 and at most {MAX_BUDGET:?}, below the API server's webhook timeout (at most 30s)"
                ),
            );
        }
        for ns in self
            .policy
            .fail_open_namespaces
            .iter()
            .chain(self.policy.tag_only_by_namespace.keys())
        {
            if !is_dns_label(ns) {
                bad(
                    "policy",
                    format!("{ns:?} is not a Kubernetes namespace name"),
                );
            }
        }
        if self.policy.digests_per_request == 0 {
            bad("policy.digests_per_request", "must be at least 1".into());
        }
        if self.cache.max_entries == 0 {
            bad("cache.max_entries", "must be at least 1".into());
        }
        if self.cache.default_ttl > self.cache.max_ttl {
            bad(
                "cache.default_ttl",
                "must not be longer than cache.max_ttl".into(),
            );
        }
        if self.backend.url.is_none() {
            bad(
                "backend.url",
                "is required: verdicts come from the Scanner backend".into(),
            );
        }
        self.backend.check(&mut bad);
        self.authority
            .check(self.backend.token_file.is_some(), &mut bad);
        if !self.admin.addr.ip().is_loopback() {
            bad(
                "admin.addr",
                format!(
                    "{} is not a loopback address; the admin endpoint drops credentials and must not be reachable from the network",
                    self.admin.addr
                ),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests;
