//! Configuration layering shared by both binaries: one TOML file, `ZASTAVA__*` environment
//! variables and command-line flags, layered in that order (later wins), deserialized into
//! a binary's own configuration type. Every error names the key (`backend.url`,
//! `batch.reorder_window`, ...) and what is wrong with it.

use std::{fmt, path::Path, time::Duration};

use serde::{Deserialize, Deserializer};

/// Prefix of configuration environment variables; `__` separates key parts:
/// `ZASTAVA__BACKEND__URL` sets `backend.url`.
pub const ENV_PREFIX: &str = "ZASTAVA__";

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

    /// The process's environment, and the file at `path` if one is given.
    pub fn from_process(path: Option<&Path>) -> Result<Self, ConfigErrors> {
        let sources = Sources {
            env: std::env::vars().collect(),
            ..Default::default()
        };
        match path {
            Some(path) => sources.with_file(path),
            None => Ok(sources),
        }
    }

    /// Sets each key whose flag was given: `(key, value)`.
    pub fn set_given<'a, V>(&mut self, flags: impl IntoIterator<Item = (&'a str, &'a Option<V>)>)
    where
        V: Clone + Into<toml::Value> + 'a,
    {
        for (key, value) in flags {
            if let Some(value) = value {
                self.set(key, value.clone());
            }
        }
    }

    /// Sets each path key whose flag was given.
    pub fn set_given_paths<'a>(
        &mut self,
        flags: impl IntoIterator<Item = (&'a str, &'a Option<std::path::PathBuf>)>,
    ) {
        for (key, value) in flags {
            if let Some(path) = value {
                self.set_path(key, path);
            }
        }
    }

    /// Sets a list key if the repeatable flag was given at least once.
    pub fn set_list(&mut self, key: &str, values: &[String]) {
        if !values.is_empty() {
            self.set(key, values.to_vec());
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

/// `key = value` lines, for `--check-config`.
pub fn describe_lines(lines: &[(&str, String)]) -> String {
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

pub fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumberOrString::deserialize(d)? {
        NumberOrString::Int(n) => Ok(n),
        NumberOrString::Float(_) => Err(serde::de::Error::custom(
            "a size must be a whole number of bytes or a string like \"16M\"",
        )),
        NumberOrString::Text(s) => parse_bytes(&s).map_err(serde::de::Error::custom),
    }
}

pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
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

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        batch: SampleBatch,
        names: Vec<String>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct SampleBatch {
        max_events: u64,
        #[serde(deserialize_with = "duration")]
        max_age: Duration,
        #[serde(deserialize_with = "bytes")]
        max_bytes: u64,
    }

    #[test]
    fn environment_then_flags_override_the_file() {
        let sources = Sources {
            file: Some((
                "f".into(),
                "[batch]\nmax_events = 10\nmax_age = \"5s\"\nmax_bytes = \"1K\"".into(),
            )),
            env: vec![
                ("ZASTAVA__BATCH__MAX_EVENTS".into(), "20".into()),
                ("ZASTAVA__NAMES".into(), "[\"a\", \"b\"]".into()),
                ("HOME".into(), "/root".into()),
            ],
            overrides: vec![("batch.max_age".into(), toml::Value::String("2s".into()))],
        };
        let sample: Sample = sources.layered().unwrap();
        assert_eq!(sample.batch.max_events, 20);
        assert_eq!(sample.batch.max_age, Duration::from_secs(2));
        assert_eq!(sample.batch.max_bytes, 1024);
        assert_eq!(sample.names, ["a", "b"]);
    }

    #[test]
    fn errors_name_the_key() {
        let layered = |file: &str| {
            Sources {
                file: Some(("test.toml".into(), file.into())),
                ..Default::default()
            }
            .layered::<Sample>()
            .unwrap_err()
        };
        let err = layered("[batch]\nmax_bytes = \"lots\"");
        assert_eq!(err.0[0].key, "batch.max_bytes");
        assert!(err.to_string().contains("`lots` is not a size"), "{err}");
        let err = layered("[batch]\nmax_evnts = 1");
        assert_eq!(err.0[0].key, "batch.max_evnts");
        let err = layered("[batch\n");
        assert_eq!(err.0[0].key, "test.toml");
        assert!(err.to_string().contains("not valid TOML"), "{err}");
        let err = Sources {
            env: vec![("ZASTAVA__BATCH__MAX_EVENTS".into(), "many".into())],
            ..Default::default()
        }
        .layered::<Sample>()
        .unwrap_err();
        assert_eq!(err.0[0].key, "batch.max_events");
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
