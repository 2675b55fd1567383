//! Logs of both binaries: to stderr, filtered by `RUST_LOG` (default `info`), as text
//! (coloured only on a terminal) or as one JSON object per line, each event's fields at the
//! top level, so that `kubectl logs … | jq 'select(.decision == "deny")'` works. One switch
//! for both: `--log-format text|json`, else `RUST_LOG_FORMAT`, else text.

use std::{io::IsTerminal as _, str::FromStr, sync::OnceLock};

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
                "{FORMAT_VARIABLE}={other:?} is neither \"text\" nor \"json\": set one of them, \
                 or unset it for text (--log-format overrides it)"
            )),
        }
    }
}

/// `--log-format`, the same flag for every command of both binaries.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LogArgs {
    /// [RUST_LOG_FORMAT] Log lines as text or as JSON objects (default: RUST_LOG_FORMAT,
    /// else text).
    #[arg(long, value_enum, global = true, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// The format chosen: the flag, else `RUST_LOG_FORMAT`, else text.
pub fn choose(flag: Option<LogFormat>) -> Result<LogFormat, String> {
    match flag {
        Some(format) => Ok(format),
        None => match std::env::var(FORMAT_VARIABLE) {
            Ok(value) => value.parse(),
            Err(_) => Ok(LogFormat::Text),
        },
    }
}

static CHOSEN: OnceLock<LogFormat> = OnceLock::new();

fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Installs the process's log subscriber in the format [`choose`] gives. A
/// `RUST_LOG_FORMAT` that is neither format is an error (the binary exits 2 with it, as for
/// any invalid setting): a log collector expecting JSON should not get text by surprise.
pub fn init(args: &LogArgs) -> Result<LogFormat, String> {
    let format = choose(args.log_format)?;
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
    let _ = CHOSEN.set(format);
    Ok(format)
}

/// What ends a daemon (`binary: text` on stderr as text; an `ERROR` object with a `binary`
/// field as JSON), so that a JSON log stays JSON to its last line.
pub fn fatal(binary: &str, text: &str) {
    match CHOSEN.get() {
        Some(LogFormat::Json) => tracing::error!(binary, "{text}"),
        _ => eprintln!("{binary}: {text}"),
    }
}

/// A report a daemon writes when it stops (as it is on stderr as text; the `message` of an
/// `INFO` object as JSON).
pub fn report(text: &str) {
    match CHOSEN.get() {
        Some(LogFormat::Json) => tracing::info!("{text}"),
        _ => eprintln!("{text}"),
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
        assert_eq!("".parse(), Ok(LogFormat::Text));
        assert_eq!(
            "xml".parse::<LogFormat>(),
            Err(
                "RUST_LOG_FORMAT=\"xml\" is neither \"text\" nor \"json\": set one of them, or \
                 unset it for text (--log-format overrides it)"
                    .to_owned()
            )
        );
        // The flag wins without the variable being read.
        assert_eq!(choose(Some(LogFormat::Json)), Ok(LogFormat::Json));
    }
}
