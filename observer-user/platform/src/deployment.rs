//! Which installation a binary belongs to: the `[runtime]` table both binaries read —
//! `tenant`, `environment`, `deployment` (the cluster's id) and `metrics.common_labels` —
//! its checks, the flags that set it, and the labels every exported metric carries.
//!
//! Two clusters both have a `node-1`; these values are what tells their batches and their
//! metrics apart once they meet on a shared bus or in one Prometheus.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Deserializer};

use crate::{
    config::{ConfigError, ConfigErrors, Sources},
    metrics,
};

/// `[runtime]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// The tenant this installation serves (`tenant` on batches).
    #[serde(deserialize_with = "identity_value")]
    pub tenant: Option<String>,
    /// `prod`, `staging`, ... (`environment` on batches).
    #[serde(deserialize_with = "identity_value")]
    pub environment: Option<String>,
    /// The cluster's id (`cluster` on batches, and the `cluster` label of every metric).
    #[serde(deserialize_with = "identity_value")]
    pub deployment: Option<String>,
    pub metrics: RuntimeMetricsConfig,
}

/// `[runtime.metrics]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeMetricsConfig {
    /// Labels on every exported series; `cluster` defaults to `runtime.deployment`.
    #[serde(deserialize_with = "label_table")]
    pub common_labels: BTreeMap<String, String>,
}

/// A string, or a whole number (an environment variable `ZASTAVA__RUNTIME__TENANT=42` is
/// read as TOML, so a numeric id arrives as a number); empty means unset, so a deployment
/// file can leave a value blank.
fn identity_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(text_of(d)?).filter(|v| !v.is_empty()))
}

fn label_table<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    struct Text(#[serde(deserialize_with = "text_of")] String);
    // Blank is unset here too, as Prometheus treats a label with an empty value.
    let table = BTreeMap::<String, Text>::deserialize(d)?;
    Ok(table
        .into_iter()
        .filter(|(_, Text(v))| !v.is_empty())
        .map(|(k, Text(v))| (k, v))
        .collect())
}

fn text_of<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Text(String),
        Whole(i64),
        Other(toml::Value),
    }
    match Given::deserialize(d)? {
        Given::Text(s) => Ok(s),
        Given::Whole(n) => Ok(n.to_string()),
        Given::Other(v) => Err(serde::de::Error::custom(format!(
            "expected a string, got {v}; quote it (in an environment variable: '\"{v}\"')"
        ))),
    }
}

/// Where a binary is deployed, as batches and evidence carry it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deployment {
    pub tenant: Option<String>,
    pub environment: Option<String>,
    pub cluster: Option<String>,
}

impl Deployment {
    pub fn is_empty(&self) -> bool {
        self.tenant.is_none() && self.environment.is_none() && self.cluster.is_none()
    }

    /// `("tenant", value)`, `("environment", value)`, `("cluster", value)`: those set, in
    /// this order (the order they are written in).
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("tenant", &self.tenant),
            ("environment", &self.environment),
            ("cluster", &self.cluster),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    }
}

/// Labels every series of a binary carries, in name order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommonLabels(Vec<(String, String)>);

impl CommonLabels {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A series' label set in the text format: these labels, then the series' own
    /// (`{cluster="eu-1",stage="spool"}`); empty when there are none. The same order the
    /// exporter renders its series in.
    pub fn series(&self, own: &[(&str, &str)]) -> String {
        if self.0.is_empty() && own.is_empty() {
            return String::new();
        }
        let mut out = String::from("{");
        for (i, (k, v)) in self.iter().chain(own.iter().copied()).enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
        out
    }
}

/// Labels Prometheus gives meaning to, which a common label must not take.
const RESERVED_LABELS: [(&str, &str); 4] = [
    ("le", "histogram buckets"),
    ("quantile", "summaries"),
    ("instance", "the scrape target"),
    ("job", "the scrape job"),
];

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved for
/// Prometheus's own).
pub fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with("__")
}

/// A Kubernetes label value, not empty: at most 63 characters, alphanumerics, `-`, `_` and
/// `.`, beginning and ending with an alphanumeric.
pub fn is_label_value(value: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    !value.is_empty()
        && value.len() <= 63
        && value.bytes().next().is_some_and(alnum)
        && value.bytes().last().is_some_and(alnum)
        && value
            .bytes()
            .all(|b| alnum(b) || b == b'-' || b == b'_' || b == b'.')
}

const VALUE_RULE: &str = "at most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit (a Kubernetes label value)";

impl RuntimeConfig {
    /// Where this binary is deployed.
    pub fn deployment(&self) -> Deployment {
        Deployment {
            tenant: self.tenant.clone(),
            environment: self.environment.clone(),
            cluster: self.deployment.clone(),
        }
    }

    /// `metrics.common_labels`, with `cluster` from `deployment` unless it is given.
    pub fn common_labels(&self) -> CommonLabels {
        let mut labels = self.metrics.common_labels.clone();
        if let Some(cluster) = &self.deployment {
            labels
                .entry("cluster".to_owned())
                .or_insert_with(|| cluster.clone());
        }
        CommonLabels(labels.into_iter().collect())
    }

    /// Checks the values; `bad(key, problem)` is called for each problem.
    pub fn check(&self, bad: &mut impl FnMut(&str, String)) {
        for (key, value) in [
            ("runtime.tenant", &self.tenant),
            ("runtime.environment", &self.environment),
            ("runtime.deployment", &self.deployment),
        ] {
            if let Some(value) = value {
                if !is_label_value(value) {
                    bad(key, format!("{value:?} is not a valid value: {VALUE_RULE}"));
                }
            }
        }
        // A common label that a metric also has would be overridden on that metric (its
        // own value wins), silently: refuse it.
        let mut own: BTreeMap<&str, &str> = BTreeMap::new();
        for metric in metrics::OBSERVER.iter().chain(metrics::WEBHOOK) {
            for label in metric.labels {
                own.entry(label).or_insert(metric.name);
            }
        }
        for (name, value) in &self.metrics.common_labels {
            let key = format!("runtime.metrics.common_labels.{name}");
            if !is_label_name(name) {
                bad(
                    &key,
                    format!("{name:?} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with \"__\")"),
                );
            } else if let Some((_, what)) = RESERVED_LABELS.iter().find(|(l, _)| l == name) {
                bad(
                    &key,
                    format!("{name:?} is Prometheus's label for {what}; choose another name"),
                );
            } else if let Some(metric) = own.get(name.as_str()) {
                bad(
                    &key,
                    format!("{name:?} is a label of {metric} already; choose another name"),
                );
            }
            if !is_label_value(value) {
                bad(
                    &key,
                    format!("{value:?} is not a valid value: {VALUE_RULE}"),
                );
            }
        }
    }

    /// `[runtime]` alone, layered from `sources` and checked: for a command that needs to
    /// know only where it runs. The file's other tables are not read, so either binary's
    /// configuration file will do.
    pub fn from_sources(sources: &Sources) -> Result<RuntimeConfig, ConfigErrors> {
        #[derive(Deserialize)]
        struct Only {
            #[serde(default)]
            runtime: RuntimeConfig,
        }
        let runtime = sources.layered::<Only>()?.runtime;
        let mut problems = Vec::new();
        runtime.check(&mut |key, problem| {
            problems.push(ConfigError {
                key: key.to_owned(),
                problem,
            });
        });
        if problems.is_empty() {
            Ok(runtime)
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// `key = value` lines for `--check-config`.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        let labels = self.common_labels();
        vec![
            ("runtime.tenant", or_none(&self.tenant)),
            ("runtime.environment", or_none(&self.environment)),
            ("runtime.deployment", or_none(&self.deployment)),
            (
                "runtime.metrics.common_labels",
                if labels.is_empty() {
                    "(none)".into()
                } else {
                    labels.series(&[])
                },
            ),
        ]
    }
}

/// `NAME=VALUE` of `--metric-label`.
fn parse_label(assignment: &str) -> Result<(String, String), String> {
    let Some((name, value)) = assignment.split_once('=') else {
        return Err(format!("{assignment:?}: expected NAME=VALUE"));
    };
    // Checked here only as far as a key path needs; the configuration's check says the rest.
    if name.is_empty() || name.contains('.') {
        return Err(format!(
            "{name:?} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// The flags that say where a binary is deployed (`runtime.tenant`, `.environment`,
/// `.deployment`): both binaries' `run`, and `zastava-observer evidence export`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DeploymentArgs {
    /// [runtime.tenant] The tenant this installation serves (on every batch).
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,
    /// [runtime.environment] This installation's environment, e.g. prod (on every batch).
    #[arg(long, value_name = "NAME")]
    pub environment: Option<String>,
    /// [runtime.deployment] The cluster's id: `cluster` on every batch and, unless
    /// --metric-label cluster=... says otherwise, on every metric.
    #[arg(long, value_name = "CLUSTER")]
    pub deployment: Option<String>,
}

impl DeploymentArgs {
    /// Adds the flags that were given to `sources`.
    pub fn apply(&self, sources: &mut Sources) {
        sources.set_given([
            ("runtime.tenant", &self.tenant),
            ("runtime.environment", &self.environment),
            ("runtime.deployment", &self.deployment),
        ]);
    }
}

/// The flags that set `runtime.*`, the same for both binaries.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RuntimeArgs {
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// [runtime.metrics.common_labels.NAME] A label on every exported metric (repeatable).
    #[arg(long = "metric-label", value_name = "NAME=VALUE", value_parser = parse_label)]
    pub metric_labels: Vec<(String, String)>,
}

impl RuntimeArgs {
    /// Adds the flags that were given to `sources`.
    pub fn apply(&self, sources: &mut Sources) {
        self.deployment.apply(sources);
        for (name, value) in &self.metric_labels {
            sources.set(
                &format!("runtime.metrics.common_labels.{name}"),
                value.clone(),
            );
        }
    }
}

#[cfg(test)]
mod tests;
