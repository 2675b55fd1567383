//! The client for the Scanner backend, shared by the event shipper and the admission
//! webhook: HTTPS with rustls (a custom CA bundle or the system roots, optional client
//! certificate for mutual TLS) and credentials of one of two kinds:
//!
//! - an OpTok from the Authority (`[authority]`), sent as `Authorization: DPoP <token>`
//!   with a fresh DPoP proof (with `ath`) on every request. A 401 `use_dpop_nonce` is
//!   answered once with the backend's nonce; a 401 `invalid_token` drops the token and
//!   retries once with a new one — callers never see either;
//! - a bearer token read from `backend.token_file`, re-read whenever the file changes, so
//!   token rotation needs no restart.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::header::{HeaderName, HeaderValue};

use super::config::BackendConfig;
use crate::{
    authority::{Authority, AuthorityConfig, AuthorityError},
    tls::{client_config, TlsError},
};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend.url is not set")]
    NoUrl,
    #[error("backend {0}")]
    Tls(#[from] TlsError),
    #[error("backend HTTP client setup failed: {0}")]
    Client(#[source] reqwest::Error),
    #[error(transparent)]
    Authority(#[from] AuthorityError),
}

/// Why a backend call did not get a response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// No credentials: the Authority cannot issue (and no static token may stand in).
    #[error("no credentials for the Scanner backend: {0}")]
    Credentials(#[source] AuthorityError),
}

impl SendError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendError::Http(e) if e.is_timeout())
    }

    pub fn is_credentials(&self) -> bool {
        matches!(self, SendError::Credentials(_))
    }
}

/// The rustls client configuration for the backend: `backend.client_cert_file` as the
/// client certificate, else `fallback_identity` (the Authority's client certificate).
pub fn tls_config(config: &BackendConfig) -> Result<rustls::ClientConfig, BackendError> {
    tls_config_with(config, None)
}

fn tls_config_with(
    config: &BackendConfig,
    authority: Option<&AuthorityConfig>,
) -> Result<rustls::ClientConfig, BackendError> {
    let ca = config.ca_file.as_deref().map(|p| ("backend.ca_file", p));
    let identity = match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert), Some(key)) => Some((
            ("backend.client_cert_file", cert.as_path()),
            ("backend.client_key_file", key.as_path()),
        )),
        _ => authority.and_then(|a| match (&a.client_cert_file, &a.client_key_file) {
            (Some(cert), Some(key)) => Some((
                ("authority.client_cert_file", cert.as_path()),
                ("authority.client_key_file", key.as_path()),
            )),
            _ => None,
        }),
    };
    Ok(client_config(ca, identity)?)
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

#[derive(Clone)]
enum Auth {
    None,
    TokenFile(Arc<Mutex<TokenFile>>),
    Authority(Arc<Authority>),
}

/// An HTTPS client for one backend.
#[derive(Clone)]
pub struct BackendClient {
    http: reqwest::Client,
    base: url::Url,
    auth: Auth,
}

impl BackendClient {
    /// With `authority.issuer` set, calls carry OpToks; else the token file's token, if any.
    pub fn new(config: &BackendConfig, authority: &AuthorityConfig) -> Result<Self, BackendError> {
        let base = config.url.clone().ok_or(BackendError::NoUrl)?;
        let with_authority = authority.enabled().then_some(authority);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config_with(config, with_authority)?)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(BackendError::Client)?;
        let auth = match (with_authority, &config.token_file) {
            (Some(authority), _) => {
                Auth::Authority(Authority::new(authority, config.ca_file.as_deref())?)
            }
            (None, Some(path)) => Auth::TokenFile(Arc::new(Mutex::new(TokenFile {
                path: path.clone(),
                stamp: None,
                token: None,
            }))),
            (None, None) => Auth::None,
        };
        Ok(BackendClient { http, base, auth })
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

    /// The token file's current token, if a token file is configured and readable.
    pub fn token(&self) -> Option<String> {
        match &self.auth {
            Auth::TokenFile(token) => token.lock().ok()?.current(),
            _ => None,
        }
    }

    /// The Authority the client gets its OpToks from, if any.
    pub fn authority(&self) -> Option<&Arc<Authority>> {
        match &self.auth {
            Auth::Authority(authority) => Some(authority),
            _ => None,
        }
    }

    /// Drops the credentials held: the token file is read again, or the OpTok is dropped
    /// from memory and the cache and a new one issued, on the next call.
    pub fn invalidate_token(&self) {
        match &self.auth {
            Auth::TokenFile(token) => {
                if let Ok(mut token) = token.lock() {
                    token.forget();
                }
            }
            Auth::Authority(authority) => {
                authority.invalidate();
            }
            Auth::None => {}
        }
    }

    /// A POST to `path`; credentials are added when it is sent.
    pub fn post(&self, path: &str) -> BackendRequest {
        let url = self.endpoint(path);
        BackendRequest {
            builder: self.http.post(url.clone()),
            url,
            client: self.clone(),
        }
    }
}

/// A request being built; [`BackendRequest::send`] authorizes and sends it.
pub struct BackendRequest {
    client: BackendClient,
    url: url::Url,
    builder: reqwest::RequestBuilder,
}

/// The `error` of a `WWW-Authenticate: DPoP ...` (or `Bearer ...`) challenge.
fn challenge_error(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let at = v.find("error=")?;
            let rest = v[at + "error=".len()..].trim_start_matches('"');
            let end = rest
                .find(|c: char| c == '"' || c == ',' || c.is_whitespace())
                .unwrap_or(rest.len());
            Some(rest[..end].to_owned())
        })
}

impl BackendRequest {
    pub fn header<K, V>(mut self, key: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        self.builder = self.builder.header(key, value);
        self
    }

    pub fn body(mut self, body: impl Into<reqwest::Body>) -> Self {
        self.builder = self.builder.body(body);
        self
    }

    pub async fn send(self) -> Result<reqwest::Response, SendError> {
        let BackendRequest {
            client,
            url,
            builder,
        } = self;
        match &client.auth {
            Auth::None => Ok(builder.send().await?),
            Auth::TokenFile(_) => {
                let request = match client.token() {
                    Some(token) => builder.bearer_auth(token),
                    None => builder,
                };
                Ok(request.send().await?)
            }
            Auth::Authority(authority) => send_with_optok(authority, &url, builder).await,
        }
    }
}

async fn send_with_optok(
    authority: &Authority,
    url: &url::Url,
    builder: reqwest::RequestBuilder,
) -> Result<reqwest::Response, SendError> {
    let mut nonce_answered = false;
    let mut reissued = false;
    let mut builder = builder;
    loop {
        let credentials = authority
            .credentials()
            .await
            .map_err(SendError::Credentials)?;
        // Bodies here are bytes, so the request can be sent again; one that cannot is
        // sent once.
        let (attempt, spare) = match builder.try_clone() {
            Some(copy) => (copy, Some(builder)),
            None => (builder, None),
        };
        let request =
            credentials.authorize(attempt, "POST", url, authority.backend_nonce().as_deref());
        let response = request.send().await?;
        if let Some(nonce) = response
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
        {
            authority.set_backend_nonce(nonce);
        }
        let Some(spare) = spare else {
            return Ok(response);
        };
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        match challenge_error(&response).as_deref() {
            Some("use_dpop_nonce") if credentials.is_dpop() && !nonce_answered => {
                nonce_answered = true;
                authority.backend_challenged();
            }
            Some("invalid_token") if !reissued => {
                reissued = true;
                authority.token_refused(&credentials);
            }
            _ => return Ok(response),
        }
        builder = spare;
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

    fn client(config: &BackendConfig) -> Result<BackendClient, BackendError> {
        BackendClient::new(config, &AuthorityConfig::default())
    }

    #[test]
    fn endpoints_keep_the_base_path() {
        let c = client(&config("https://scanner.internal:8443/")).unwrap();
        assert_eq!(
            c.endpoint("/api/v1/runtime/events").as_str(),
            "https://scanner.internal:8443/api/v1/runtime/events"
        );
        let c = client(&config("https://gw.internal/scanner")).unwrap();
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
        let client = client(&cfg).unwrap();
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
        let err = client(&cfg).err().unwrap().to_string();
        assert!(
            err.contains("backend.ca_file") && err.contains("holds no PEM certificate"),
            "{err}"
        );
        cfg.ca_file = Some(dir.join("missing.pem"));
        let err = client(&cfg).err().unwrap().to_string();
        assert!(err.contains("backend.ca_file: cannot read"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
