//! Settings of the connection to the Scanner backend, shared by both binaries: the
//! `[backend]` table, its checks, and the flags that set it.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::config::{duration, Sources};

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
        sources.set_given([("backend.url", &self.url)]);
        sources.set_given_paths([
            ("backend.token_file", &self.token_file),
            ("backend.ca_file", &self.ca_file),
            ("backend.client_cert_file", &self.client_cert),
            ("backend.client_key_file", &self.client_key),
        ]);
    }
}
