//! The observer's configuration: its keys, their defaults and the checks that span them.
//! Layering (file, then `ZASTAVA__*` environment variables, then flags) is the platform's,
//! shared with the webhook; every error names the key (`backend.url`,
//! `batch.reorder_window`, ...) and what is wrong with it. Stages own the tables only they
//! read (`[batch]`, `[spool]`, `[sinks.nats]`, `[sinks.redis]`); this composes them, and
//! [`sinks`] checks the sinks' tables.
//!
//! Keys are the file's table paths. The feature flags are `zastava.attach.enabled` (load
//! and attach the eBPF probes; without them only container lifecycle is reported) and
//! `scanner.runtime.capture.enabled` (ship runtime events to the Scanner backend). In a
//! configuration file both default to false.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use zastava_platform::{
    authority::AuthorityConfig,
    backend::BackendConfig,
    config::{bytes, describe_lines, duration, is_dns_label, ConfigError, ConfigErrors, Sources},
    deployment::RuntimeConfig,
};

pub use crate::{
    output::{
        sinks::SinksConfig,
        spool::{SpoolConfig, WhenFull},
    },
    pipeline::batch::BatchConfig,
};

mod sinks;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Which installation this is (shared with the webhook).
    pub runtime: RuntimeConfig,
    pub zastava: ZastavaConfig,
    pub scanner: ScannerConfig,
    pub observer: ObserverConfig,
    pub cri: CriConfig,
    pub docker: DockerConfig,
    pub batch: BatchConfig,
    pub backend: BackendConfig,
    pub authority: AuthorityConfig,
    pub spool: SpoolConfig,
    pub sinks: SinksConfig,
    pub ndjson: NdjsonConfig,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
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
    /// Whether the probes read the kernel's own objects (struct offsets from BTF).
    pub kernel_view: KernelView,
}

/// `observer.kernel_view`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KernelView {
    /// With the kernel's BTF when it has one that resolves; otherwise without, with a
    /// warning.
    #[default]
    Auto,
    /// Refuse to start without it.
    On,
    /// Never (paths, argv and addresses from the caller's memory, edges marked).
    Off,
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
            kernel_view: KernelView::Auto,
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

/// `[docker]`: Docker Engine, beside or instead of a CRI runtime.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    pub enabled: bool,
    /// dockerd's socket (a path or `unix://` URI); default: `/var/run/docker.sock`, then
    /// `/run/docker.sock`, when one exists.
    pub endpoint: Option<String>,
    /// How often to list containers when the engine refuses the event stream.
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            enabled: true,
            endpoint: None,
            poll_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
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
    /// Every record carries `deployment` {tenant, environment, cluster} too (batches
    /// always do, in their envelope).
    pub include_deployment: bool,
}

impl Default for NdjsonConfig {
    fn default() -> Self {
        NdjsonConfig {
            enabled: true,
            path: "/var/log/stellaops/runtime/zastava.runtime.ndjson".into(),
            max_file_bytes: 64 << 20,
            max_files: 8,
            include_deployment: false,
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

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Loopback only: `POST /invalidate-op-token`, served while an Authority issues the
    /// backend's credentials.
    pub addr: SocketAddr,
}

/// The observer's admin port (the webhook's is 9466).
pub const DEFAULT_ADMIN_PORT: u16 = 9467;

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT)),
        }
    }
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
        let mut lines = self.runtime.describe();
        lines.extend([
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
            (
                "docker.endpoint",
                if self.docker.enabled {
                    self.docker.endpoint.clone().unwrap_or_else(|| {
                        "(/var/run/docker.sock, then /run/docker.sock, if present)".into()
                    })
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
                "observer.kernel_view",
                format!("{:?}", self.observer.kernel_view).to_lowercase(),
            ),
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
                "ndjson.include_deployment",
                self.ndjson.include_deployment.to_string(),
            ),
            (
                "metrics.addr",
                or_none(self.metrics.addr.map(|a| a.to_string())),
            ),
        ]);
        lines.extend(sinks::describe(&self.sinks));
        lines.extend(self.authority.describe());
        if self.authority.enabled() {
            lines.push(("admin.addr", self.admin.addr.to_string()));
        }
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
        let ring = self.observer.ring_buffer_bytes;
        if let Err(e) = crate::kernel::validate_ring_size(ring) {
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
        let one_batch = self.batch.max_events as u64 * size_of::<crate::record::Item>() as u64;
        if self.batch.max_held_bytes < one_batch {
            bad(
                "batch.max_held_bytes",
                format!(
                    "must hold at least one batch: {one_batch} bytes (batch.max_events × {} bytes a record)",
                    size_of::<crate::record::Item>()
                ),
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
        sinks::check(&self.sinks, &mut bad);
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
        if self.docker.poll_interval.is_zero() {
            bad("docker.poll_interval", "must be longer than 0".into());
        }
        if self.docker.timeout.is_zero() {
            bad("docker.timeout", "must be longer than 0".into());
        }
        if let Some(endpoint) = &self.docker.endpoint {
            let scheme = endpoint.split_once("://").map(|(s, _)| s);
            if endpoint.is_empty() || scheme.is_some_and(|s| s != "unix") {
                bad(
                    "docker.endpoint",
                    format!("{endpoint:?} is not a unix socket (a path or unix:///path); the observer reads dockerd's local socket only"),
                );
            }
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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_sinks;
