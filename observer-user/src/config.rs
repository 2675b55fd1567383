//! Configuration: one TOML file, `ZASTAVA__*` environment variables and command-line flags,
//! layered in that order (later wins), then checked as a whole. Every error names the key
//! (`backend.url`, `batch.reorder_window`, ...) and what is wrong with it.
//!
//! Keys are the file's table paths. The feature flags are `zastava.attach.enabled` (load
//! and attach the eBPF probes; without them only container lifecycle is reported) and
//! `scanner.runtime.capture.enabled` (ship runtime events to the Scanner backend). In a
//! configuration file both default to false.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};

/// Prefix of configuration environment variables; `__` separates key parts:
/// `ZASTAVA__BACKEND__URL` sets `backend.url`.
pub const ENV_PREFIX: &str = "ZASTAVA__";

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub zastava: ZastavaConfig,
    pub scanner: ScannerConfig,
    pub observer: ObserverConfig,
    pub cri: CriConfig,
    pub batch: BatchConfig,
    pub backend: BackendConfig,
    pub spool: SpoolConfig,
    pub ndjson: NdjsonConfig,
    pub metrics: MetricsConfig,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Toggle {
    pub enabled: bool,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ZastavaConfig {
    /// `zastava.attach.enabled`.
    pub attach: Toggle,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ScannerConfig {
    pub runtime: ScannerRuntimeConfig,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ScannerRuntimeConfig {
    /// `scanner.runtime.capture.enabled`.
    pub capture: Toggle,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ObserverConfig {
    #[serde(deserialize_with = "bytes")]
    pub ring_buffer_bytes: u64,
    pub host_root: PathBuf,
    /// The node's name on events (`node`); the hostname when unset.
    pub node_name: Option<String>,
    pub proc_root: PathBuf,
    pub cgroup_root: Option<PathBuf>,
    #[serde(deserialize_with = "duration")]
    pub enrichment_wait: Duration,
    #[serde(deserialize_with = "duration")]
    pub container_retention: Duration,
    pub namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    /// Repeats of an edge within this window of its last report are held back in the
    /// kernel and reported with its next report (0: off).
    #[serde(deserialize_with = "duration")]
    pub kernel_dedup_window: Duration,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        ObserverConfig {
            ring_buffer_bytes: 16 << 20,
            host_root: "/".into(),
            node_name: None,
            proc_root: "/proc".into(),
            cgroup_root: None,
            enrichment_wait: Duration::from_millis(250),
            container_retention: Duration::from_secs(300),
            namespaces: Vec::new(),
            exclude_namespaces: Vec::new(),
            kernel_dedup_window: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CriConfig {
    pub enabled: bool,
    pub endpoint: Option<String>,
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for CriConfig {
    fn default() -> Self {
        CriConfig {
            enabled: true,
            endpoint: None,
            poll_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// A batch closes when it holds this many events...
    pub max_events: usize,
    /// ...or when its oldest event has been ready this long.
    #[serde(deserialize_with = "duration")]
    pub max_age: Duration,
    /// Events are held until they are this old, so events arriving slightly out of order
    /// (across CPUs, or after waiting for attribution) are sorted into place.
    #[serde(deserialize_with = "duration")]
    pub reorder_window: Duration,
    /// Merge repeated identical edges within a batch into one event with a count.
    pub dedup: bool,
    /// Memory bound: beyond this many held events, the oldest are released early.
    pub max_held_events: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: 2000,
            max_age: Duration::from_secs(1),
            reorder_window: Duration::from_secs(1),
            dedup: true,
            max_held_events: 200_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// The Scanner base URL; events go to `<url>/api/v1/runtime/events`.
    pub url: Option<url::Url>,
    /// A file holding the bearer token; re-read when it changes.
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Upper bound of the retry backoff.
    #[serde(deserialize_with = "duration")]
    pub max_backoff: Duration,
    /// At shutdown, how long to keep delivering spooled batches (the rest stay spooled).
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            url: None,
            token_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Evict the oldest batches to make room (counted).
    DropOldest,
    /// Refuse the new batch (counted).
    DropNewest,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    #[serde(deserialize_with = "bytes")]
    pub max_bytes: u64,
    pub when_full: WhenFull,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: "/var/lib/zastava/spool".into(),
            max_bytes: 256 << 20,
            when_full: WhenFull::DropOldest,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NdjsonConfig {
    pub enabled: bool,
    /// The current file (`-` for stdout); rotated files sit beside it as `<stem>.<n>.ndjson`.
    pub path: String,
    #[serde(deserialize_with = "bytes")]
    pub max_file_bytes: u64,
    /// Rotated files kept besides the current one.
    pub max_files: usize,
}

impl Default for NdjsonConfig {
    fn default() -> Self {
        NdjsonConfig {
            enabled: true,
            path: "/var/log/stellaops/runtime/zastava.runtime.ndjson".into(),
            max_file_bytes: 64 << 20,
            max_files: 8,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where to serve `/metrics`, `/healthz` and `/readyz`; off when unset.
    pub addr: Option<SocketAddr>,
    /// Distinct tenant/component label values kept per metric; the rest are `other`.
    pub max_label_values: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            addr: None,
            max_label_values: 200,
        }
    }
}

/// One problem with one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

/// Every problem found, so an operator fixes them in one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {}: {}", e.key, e.problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

fn one(key: impl Into<String>, problem: impl Into<String>) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        key: key.into(),
        problem: problem.into(),
    }])
}

/// Where configuration comes from.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// The file's text and its name (for messages).
    pub file: Option<(String, String)>,
    /// Environment variables (all of them; those without the prefix are ignored).
    pub env: Vec<(String, String)>,
    /// Values from flags, by key.
    pub overrides: Vec<(String, toml::Value)>,
}

impl Sources {
    /// Reads the file at `path`.
    pub fn with_file(mut self, path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| one("--config", format!("cannot read {}: {e}", path.display())))?;
        self.file = Some((path.display().to_string(), text));
        Ok(self)
    }

    pub fn set(&mut self, key: &str, value: impl Into<toml::Value>) {
        self.overrides.push((key.to_owned(), value.into()));
    }

    pub fn set_path(&mut self, key: &str, path: &Path) {
        self.set(key, path.to_string_lossy().into_owned());
    }
}

/// The flags that set `backend.*`, the same for every program that calls the backend.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct BackendArgs {
    /// [backend.url] Scanner backend base URL.
    #[arg(long = "backend", value_name = "URL")]
    pub url: Option<String>,
    /// [backend.token_file] File holding the bearer token (re-read when it changes).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// [backend.ca_file] PEM CA bundle to trust for the backend.
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// [backend.client_cert_file] PEM client certificate, for mutual TLS.
    #[arg(long, value_name = "PATH")]
    pub client_cert: Option<PathBuf>,
    /// [backend.client_key_file] PEM client key, for mutual TLS.
    #[arg(long, value_name = "PATH")]
    pub client_key: Option<PathBuf>,
}

impl BackendArgs {
    /// Adds the flags that were given to `sources`.
    pub fn apply(&self, sources: &mut Sources) {
        if let Some(url) = &self.url {
            sources.set("backend.url", url.clone());
        }
        for (key, path) in [
            ("backend.token_file", &self.token_file),
            ("backend.ca_file", &self.ca_file),
            ("backend.client_cert_file", &self.client_cert),
            ("backend.client_key_file", &self.client_key),
        ] {
            if let Some(path) = path {
                sources.set_path(key, path);
            }
        }
    }
}

/// Sets `key` (dotted) in a table, creating tables on the way.
fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), ConfigErrors> {
    let mut parts = key.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if part.is_empty() {
            return Err(one(key, "is not a valid key"));
        }
        if parts.peek().is_none() {
            current.insert(part.to_owned(), value);
            return Ok(());
        }
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| one(key, format!("`{part}` is a value, not a table")))?;
    }
    Ok(())
}

/// An environment value as TOML (`true`, `42`, `["a","b"]`), else as a string.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

impl Sources {
    /// The file, then the environment, then the overrides, deserialized into `T`; errors
    /// name the key.
    pub fn layered<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigErrors> {
        let mut table = match &self.file {
            Some((name, text)) => text
                .parse::<toml::Table>()
                .map_err(|e| one(name.clone(), format!("not valid TOML: {e}")))?,
            None => toml::Table::new(),
        };
        for (name, raw) in &self.env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = rest
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            set_path(&mut table, &key, env_value(raw))
                .map_err(|e| one(name.clone(), e.to_string()))?;
        }
        for (key, value) in &self.overrides {
            set_path(&mut table, key, value.clone())?;
        }
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                "(top level)".to_owned()
            } else {
                key
            };
            one(key, e.into_inner().to_string())
        })
    }
}

/// `KEY=VALUE` from a `--set` flag: the value as TOML (`true`, `42`, `"1s"`, `["a"]`), else
/// as a string.
pub fn parse_assignment(assignment: &str) -> Result<(String, toml::Value), String> {
    let Some((key, value)) = assignment.split_once('=') else {
        return Err(format!("--set {assignment:?}: expected KEY=VALUE"));
    };
    Ok((key.trim().to_owned(), env_value(value)))
}

impl Config {
    /// Layers the sources and checks the result.
    pub fn load(sources: &Sources) -> Result<Config, ConfigErrors> {
        let config: Config = sources.layered()?;
        config.check()?;
        Ok(config)
    }

    /// The settings an operator checks before a rollout, one `key = value` line each.
    pub fn describe(&self) -> String {
        let path = |p: &Path| p.display().to_string();
        let or_none = |v: Option<String>| v.unwrap_or_else(|| "(none)".into());
        let lines = [
            (
                "zastava.attach.enabled",
                self.zastava.attach.enabled.to_string(),
            ),
            (
                "scanner.runtime.capture.enabled",
                self.scanner.runtime.capture.enabled.to_string(),
            ),
            (
                "backend.url",
                or_none(self.backend.url.as_ref().map(|u| u.to_string())),
            ),
            ("spool.dir", path(&self.spool.dir)),
            (
                "ndjson.path",
                if self.ndjson.enabled {
                    self.ndjson.path.clone()
                } else {
                    "(off)".into()
                },
            ),
            (
                "cri.endpoint",
                if self.cri.enabled {
                    self.cri
                        .endpoint
                        .clone()
                        .unwrap_or_else(|| "(containerd's, then CRI-O's)".into())
                } else {
                    "(off)".into()
                },
            ),
            ("observer.host_root", path(&self.observer.host_root)),
            (
                "observer.node_name",
                self.observer
                    .node_name
                    .clone()
                    .unwrap_or_else(|| "(the hostname)".into()),
            ),
            ("observer.proc_root", path(&self.observer.proc_root)),
            (
                "observer.cgroup_root",
                self.observer
                    .cgroup_root
                    .as_deref()
                    .map_or_else(|| "(the cgroup2 mount)".into(), path),
            ),
            (
                "observer.namespaces",
                format!("{:?}", self.observer.namespaces),
            ),
            (
                "observer.exclude_namespaces",
                format!("{:?}", self.observer.exclude_namespaces),
            ),
            (
                "metrics.addr",
                or_none(self.metrics.addr.map(|a| a.to_string())),
            ),
        ];
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
        let ring = self.observer.ring_buffer_bytes;
        if let Err(e) = crate::probes::validate_ring_size(ring) {
            bad("observer.ring_buffer_bytes", e.to_string());
        }
        if self.batch.reorder_window <= self.observer.enrichment_wait {
            bad(
                "batch.reorder_window",
                format!(
                    "must be longer than observer.enrichment_wait ({:?}), or events waiting for attribution arrive after their batch",
                    self.observer.enrichment_wait
                ),
            );
        }
        if let Some(name) = &self.observer.node_name {
            if name.is_empty()
                || name.len() > 253
                || name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                bad(
                    "observer.node_name",
                    format!("{name:?} is not a node name (1 to 253 characters, no spaces)"),
                );
            }
        }
        if self.batch.max_events == 0 {
            bad("batch.max_events", "must be at least 1".into());
        }
        if self.batch.max_held_events < self.batch.max_events {
            bad(
                "batch.max_held_events",
                "must be at least batch.max_events".into(),
            );
        }
        if self.batch.max_age.is_zero() {
            bad("batch.max_age", "must be longer than 0".into());
        }
        for (key, list) in [
            ("observer.namespaces", &self.observer.namespaces),
            (
                "observer.exclude_namespaces",
                &self.observer.exclude_namespaces,
            ),
        ] {
            for ns in list {
                if !is_dns_label(ns) {
                    bad(key, format!("{ns:?} is not a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)"));
                }
            }
        }
        if self.scanner.runtime.capture.enabled && self.backend.url.is_none() {
            bad(
                "backend.url",
                "is required when scanner.runtime.capture.enabled is true".into(),
            );
        }
        self.backend.check(&mut bad);
        if self.spool.max_bytes < 64 << 10 {
            bad("spool.max_bytes", "must be at least 64K".into());
        }
        if self.ndjson.max_files == 0 {
            bad("ndjson.max_files", "must be at least 1".into());
        }
        if self.ndjson.max_file_bytes < 4096 {
            bad("ndjson.max_file_bytes", "must be at least 4K".into());
        }
        if self.ndjson.path.is_empty() {
            bad(
                "ndjson.path",
                "must not be empty (use \"-\" for stdout)".into(),
            );
        }
        if self.cri.poll_interval.is_zero() {
            bad("cri.poll_interval", "must be longer than 0".into());
        }
        if self.cri.timeout.is_zero() {
            bad("cri.timeout", "must be longer than 0".into());
        }
        if self.metrics.max_label_values == 0 {
            bad("metrics.max_label_values", "must be at least 1".into());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

impl BackendConfig {
    /// Checks the connection settings; `bad(key, problem)` is called for each problem.
    pub fn check(&self, bad: &mut impl FnMut(&str, String)) {
        if let Some(url) = &self.url {
            let loopback = url
                .host_str()
                .is_some_and(|h| h == "localhost" || h == "127.0.0.1" || h == "[::1]");
            match url.scheme() {
                "https" => {}
                "http" if loopback => {}
                "http" => bad(
                    "backend.url",
                    format!("{url} is plain http; use https (http is only accepted for loopback)"),
                ),
                other => bad(
                    "backend.url",
                    format!("scheme {other:?} is not supported; use https"),
                ),
            }
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => bad(
                "backend.client_key_file",
                "is required with backend.client_cert_file".into(),
            ),
            (None, Some(_)) => bad(
                "backend.client_cert_file",
                "is required with backend.client_key_file".into(),
            ),
            _ => {}
        }
        for (key, file) in [
            ("backend.token_file", &self.token_file),
            ("backend.ca_file", &self.ca_file),
            ("backend.client_cert_file", &self.client_cert_file),
            ("backend.client_key_file", &self.client_key_file),
        ] {
            if let Some(path) = file {
                if !path.is_file() {
                    bad(
                        key,
                        format!("{} does not exist or is not a file", path.display()),
                    );
                }
            }
        }
        if self.timeout.is_zero() {
            bad("backend.timeout", "must be longer than 0".into());
        }
    }
}

/// `key = value` lines, for `--check-config`.
pub(crate) fn describe_lines(lines: &[(&str, String)]) -> String {
    lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
}

/// RFC 1123 label: what Kubernetes accepts as a namespace name.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `4096`, `"256K"`, `"16M"`, `"1G"` (binary units).
pub fn parse_bytes(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let (digits, multiplier) = match value.char_indices().last() {
        Some((i, 'K' | 'k')) => (&value[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&value[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&value[..i], 1 << 30),
        _ => (value, 1),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a size (examples: 4096, 256K, 16M, 1G)"))?;
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("`{value}` is too large"))
}

/// `"250ms"`, `"1s"`, `"5m"`, or a number of seconds.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("`{value}` is not a valid duration"));
    }
    humantime::parse_duration(value)
        .map_err(|_| format!("`{value}` is not a duration (examples: 250ms, 1s, 5m)"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Int(u64),
    Float(f64),
    Text(String),
}

pub(crate) fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumberOrString::deserialize(d)? {
        NumberOrString::Int(n) => Ok(n),
        NumberOrString::Float(_) => Err(serde::de::Error::custom(
            "a size must be a whole number of bytes or a string like \"16M\"",
        )),
        NumberOrString::Text(s) => parse_bytes(&s).map_err(serde::de::Error::custom),
    }
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumberOrString::deserialize(d)? {
        NumberOrString::Int(n) => Ok(Duration::from_secs(n)),
        NumberOrString::Float(f) => {
            Duration::try_from_secs_f64(f).map_err(serde::de::Error::custom)
        }
        NumberOrString::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(config.observer.exclude_namespaces, ["a", "b"]);

        let bad = Sources {
            env: vec![("ZASTAVA__BATCH__MAX_EVENTS".into(), "many".into())],
            ..Default::default()
        };
        let err = Config::load(&bad).unwrap_err();
        assert_eq!(keys(&err), ["batch.max_events"]);
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("256K"), Ok(256 << 10));
        assert_eq!(parse_bytes("16M"), Ok(16 << 20));
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
