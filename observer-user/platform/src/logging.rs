//! Logs of both binaries: to stderr, filtered by `RUST_LOG` (default `info`), coloured only
//! on a terminal.

use std::io::IsTerminal as _;

/// Installs the process's log subscriber.
pub fn init() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
