//! Logs of both binaries: to stderr, filtered by `RUST_LOG` (default `info`), as text
//! (coloured only on a terminal) or as one JSON object per line (`RUST_LOG_FORMAT=json`, or
//! a binary's `--log-format json`), each event's fields at the top level, so that
//! `kubectl logs … | jq 'select(.decision == "deny")'` works.

use std::{io::IsTerminal as _, str::FromStr};

/// The environment variable that chooses the format when no flag does.
pub const FORMAT_VARIABLE: &str = "RUST_LOG_FORMAT";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the fields.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "text" | "" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "{FORMAT_VARIABLE}={other:?} is neither \"text\" nor \"json\""
            )),
        }
    }
}

fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Installs the process's log subscriber, in the format `RUST_LOG_FORMAT` names (text when
/// it is unset; a value that is neither is reported, and text is used).
pub fn init() {
    init_with(None);
}

/// As [`init`], with `format` (a flag) taking precedence over `RUST_LOG_FORMAT`.
pub fn init_with(format: Option<LogFormat>) {
    let (format, problem) = match format {
        Some(format) => (format, None),
        None => match std::env::var(FORMAT_VARIABLE) {
            Ok(value) => match value.parse() {
                Ok(format) => (format, None),
                Err(problem) => (LogFormat::Text, Some(problem)),
            },
            Err(_) => (LogFormat::Text, None),
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter());
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    if let Some(problem) = problem {
        tracing::warn!("{problem}; logging as text");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_named_text_or_json() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!(" JSON ".parse(), Ok(LogFormat::Json));
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!(
            "xml".parse::<LogFormat>(),
            Err("RUST_LOG_FORMAT=\"xml\" is neither \"text\" nor \"json\"".to_owned())
        );
    }
}
