//! The client for the Scanner backend, shared by the event shipper and the admission
//! webhook: HTTPS with rustls (a custom CA bundle or the system roots, optional client
//! certificate for mutual TLS) and a bearer token read from a file and re-read whenever
//! the file changes, so token rotation needs no restart.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};

use super::config::BackendConfig;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend.url is not set")]
    NoUrl,
    #[error("{key}: cannot read {path}: {reason}")]
    File {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{key}: {path} holds no {what}")]
    Empty {
        key: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("backend TLS setup failed: {0}")]
    Tls(String),
    #[error("backend HTTP client setup failed: {0}")]
    Client(#[source] reqwest::Error),
}

fn file_error(key: &'static str, path: &Path, reason: impl ToString) -> BackendError {
    BackendError::File {
        key,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The rustls client configuration for the backend.
pub fn tls_config(config: &BackendConfig) -> Result<rustls::ClientConfig, BackendError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| file_error("backend.ca_file", path, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_error("backend.ca_file", path, e))?;
            if certs.is_empty() {
                return Err(BackendError::Empty {
                    key: "backend.ca_file",
                    path: path.clone(),
                    what: "PEM certificate",
                });
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| file_error("backend.ca_file", path, e))?;
            }
        }
        None => {
            // Unusable system certificates are skipped; the handshake names what failed.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BackendError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let certs = CertificateDer::pem_file_iter(cert_path)
                .map_err(|e| file_error("backend.client_cert_file", cert_path, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_error("backend.client_cert_file", cert_path, e))?;
            if certs.is_empty() {
                return Err(BackendError::Empty {
                    key: "backend.client_cert_file",
                    path: cert_path.clone(),
                    what: "PEM certificate",
                });
            }
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| file_error("backend.client_key_file", key_path, e))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                BackendError::Tls(format!(
                    "client certificate and key do not match or are unusable: {e}"
                ))
            })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// A bearer token file, re-read when it changes (inode, size or mtime).
#[derive(Debug)]
struct TokenFile {
    path: PathBuf,
    stamp: Option<(u64, u64, i64, i64)>,
    token: Option<String>,
}

impl TokenFile {
    fn current(&mut self) -> Option<String> {
        let stamp = fs::metadata(&self.path)
            .ok()
            .map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()));
        if stamp != self.stamp || self.token.is_none() {
            self.stamp = stamp;
            self.token = fs::read_to_string(&self.path)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty());
        }
        self.token.clone()
    }

    fn forget(&mut self) {
        self.stamp = None;
        self.token = None;
    }
}

/// An HTTPS client for one backend.
#[derive(Clone)]
pub struct BackendClient {
    http: reqwest::Client,
    base: url::Url,
    token: Option<Arc<Mutex<TokenFile>>>,
}

impl BackendClient {
    pub fn new(config: &BackendConfig) -> Result<Self, BackendError> {
        let base = config.url.clone().ok_or(BackendError::NoUrl)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(config)?)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(BackendError::Client)?;
        Ok(BackendClient {
            http,
            base,
            token: config.token_file.as_ref().map(|path| {
                Arc::new(Mutex::new(TokenFile {
                    path: path.clone(),
                    stamp: None,
                    token: None,
                }))
            }),
        })
    }

    /// `<base>/<path>`, keeping any path the base URL has.
    pub fn endpoint(&self, path: &str) -> url::Url {
        let mut url = self.base.clone();
        let joined = format!(
            "{}/{}",
            url.path().trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        url.set_path(&joined);
        url
    }

    /// The current bearer token, if a token file is configured and readable.
    pub fn token(&self) -> Option<String> {
        let token = self.token.as_ref()?;
        token.lock().ok()?.current()
    }

    /// Drops the cached token, so the next request reads the file again.
    pub fn invalidate_token(&self) {
        if let Some(token) = &self.token {
            if let Ok(mut token) = token.lock() {
                token.forget();
            }
        }
    }

    /// A POST to `path` with the bearer token set.
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.post(self.endpoint(path));
        match self.token() {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> BackendConfig {
        BackendConfig {
            url: Some(url.parse().unwrap()),
            ..BackendConfig::default()
        }
    }

    #[test]
    fn endpoints_keep_the_base_path() {
        let c = BackendClient::new(&config("https://scanner.internal:8443/")).unwrap();
        assert_eq!(
            c.endpoint("/api/v1/runtime/events").as_str(),
            "https://scanner.internal:8443/api/v1/runtime/events"
        );
        let c = BackendClient::new(&config("https://gw.internal/scanner")).unwrap();
        assert_eq!(
            c.endpoint("api/v1/policy/runtime").as_str(),
            "https://gw.internal/scanner/api/v1/policy/runtime"
        );
    }

    #[test]
    fn the_token_is_reread_when_the_file_changes() {
        let dir = std::env::temp_dir().join(format!("zastava-token-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        fs::write(&path, "first\n").unwrap();
        let mut cfg = config("https://x/");
        cfg.token_file = Some(path.clone());
        let client = BackendClient::new(&cfg).unwrap();
        assert_eq!(client.token().as_deref(), Some("first"));
        // Replaced the way Kubernetes projects secrets: a new file renamed over the old.
        let tmp = dir.join("token.new");
        fs::write(&tmp, "second").unwrap();
        fs::rename(&tmp, &path).unwrap();
        assert_eq!(client.token().as_deref(), Some("second"));
        fs::remove_file(&path).unwrap();
        assert_eq!(client.token(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreadable_or_empty_tls_files_are_named() {
        let dir = std::env::temp_dir().join(format!("zastava-tls-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        fs::write(&empty, "").unwrap();
        let mut cfg = config("https://x/");
        cfg.ca_file = Some(empty.clone());
        let err = BackendClient::new(&cfg).err().unwrap().to_string();
        assert!(
            err.contains("backend.ca_file") && err.contains("holds no PEM certificate"),
            "{err}"
        );
        cfg.ca_file = Some(dir.join("missing.pem"));
        let err = BackendClient::new(&cfg).err().unwrap().to_string();
        assert!(err.contains("backend.ca_file: cannot read"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
