//! Operational tokens (OpToks) from the platform's Authority, for both binaries' calls to
//! the Scanner backend: issued by the `client_credentials` grant with mutual TLS and a DPoP
//! proof ([`issue`]), bound to the DPoP key ([`dpop`]), cached on disk ([`cache`]),
//! refreshed in the background before they expire, and replaced by a static token only
//! where that is allowed ([`fallback`]).
//!
//! Decisions are logged under two targets an operator can filter on:
//! `authority.token.issue` (every token issued, reused or refused, never the token) and
//! `authority.token.fallback` (the static token in use, its age and expiry).

pub mod admin;
pub mod cache;
pub mod config;
pub mod dpop;
pub mod fallback;
pub mod issue;
mod issuing;
#[cfg(test)]
mod tests;
mod tls;

use std::{
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::{Duration, Instant},
};

use tracing::{info, warn};

pub use config::{AuthorityArgs, AuthorityConfig, RefreshBefore};
pub use issue::IssueError;

use crate::metrics::{
    AUTHORITY_FALLBACK_ACTIVE, AUTHORITY_NONCE_CHALLENGES, AUTHORITY_TOKEN_DROPS,
    AUTHORITY_TOKEN_EXPIRY, AUTHORITY_TOKEN_ISSUED, AUTHORITY_TOKEN_ISSUES,
};
use cache::{now_ms, Expected, OpTok, TokenCache};
use dpop::{DpopKey, KeyFile, KeyState, NoKey};
use issue::Endpoints;

/// The log targets of the runbook.
pub const ISSUE_TARGET: &str = "authority.token.issue";
pub const FALLBACK_TARGET: &str = "authority.token.fallback";

/// After a failed issue, calls wait this long before asking the Authority again (the
/// background refresh keeps trying, with backoff).
const MIN_RETRY: Duration = Duration::from_secs(1);
const MAX_REFRESH_BACKOFF: Duration = Duration::from_secs(30);
/// The static token's warning is repeated at most this often while it is in use.
const FALLBACK_WARN_EVERY: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(transparent)]
    Issue(Arc<IssueError>),
    #[error("{issue}; the static token cannot stand in: {fallback}")]
    Fallback {
        issue: Arc<IssueError>,
        fallback: String,
    },
    #[error("authority TLS setup: {0}")]
    Setup(String),
}

/// Where the token of a call came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Issued,
    Cached,
    Static,
}

/// What one backend call is authorized with.
#[derive(Clone)]
pub struct Credentials {
    token: Arc<str>,
    /// The key a DPoP-bound token is bound to; `None` for a Bearer token.
    key: Option<Arc<DpopKey>>,
    pub source: Source,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("dpop", &self.key.is_some())
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn is_dpop(&self) -> bool {
        self.key.is_some()
    }

    /// Sets `Authorization` (and, for a DPoP-bound token, a fresh `DPoP` proof with `ath`
    /// and the server's nonce).
    pub fn authorize(
        &self,
        request: reqwest::RequestBuilder,
        method: &str,
        url: &url::Url,
        nonce: Option<&str>,
    ) -> reqwest::RequestBuilder {
        match &self.key {
            Some(key) => request
                .header("authorization", format!("DPoP {}", self.token))
                .header("DPoP", key.proof(method, url, nonce, Some(&self.token))),
            None => request.header("authorization", format!("Bearer {}", self.token)),
        }
    }
}

struct Held {
    token: OpTok,
    key: Option<Arc<DpopKey>>,
    source: Source,
}

impl Held {
    fn credentials(&self) -> Credentials {
        Credentials {
            token: Arc::from(self.token.access_token.as_str()),
            key: if self.token.is_dpop() {
                self.key.clone()
            } else {
                None
            },
            source: self.source,
        }
    }
}

#[derive(Default)]
struct IssueState {
    endpoints: Option<Endpoints>,
    /// The Authority's last DPoP nonce.
    nonce: Option<String>,
}

struct Failure {
    at: Instant,
    error: Arc<IssueError>,
}

#[derive(Default)]
struct FallbackState {
    active: bool,
    warned_at: Option<Instant>,
    token: Option<String>,
}

/// The OpTok source of one binary.
pub struct Authority {
    config: AuthorityConfig,
    issuer: url::Url,
    http: reqwest::Client,
    client_cert: bool,
    key_file: Option<Mutex<KeyFile>>,
    cache: Option<TokenCache>,
    held: Mutex<Option<Held>>,
    issuing: tokio::sync::Mutex<IssueState>,
    /// Requests to the Authority that came to an outcome (a token or a failure, recorded
    /// in `held` or `failing`); bumped under `issuing`.
    requests_done: AtomicU64,
    failing: Mutex<Option<Failure>>,
    fallback: Mutex<FallbackState>,
    backend_nonce: Mutex<Option<String>>,
    /// Wakes the background refresh: a token is due, dropped, or the Authority is gone.
    /// Shared with it apart from the Authority, so that it waits holding no strong
    /// reference.
    wake: Arc<tokio::sync::Notify>,
}

impl Drop for Authority {
    fn drop(&mut self) {
        // The background refresh ends instead of sleeping out its wait.
        self.wake.notify_one();
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these leaves consistent data (plain replacements).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[allow(clippy::cast_precision_loss, reason = "Unix seconds fit an f64")]
fn set_token_gauges(issued_ms: u64, expires_ms: u64) {
    metrics::gauge!(AUTHORITY_TOKEN_ISSUED.name).set(issued_ms as f64 / 1000.0);
    metrics::gauge!(AUTHORITY_TOKEN_EXPIRY.name).set(expires_ms as f64 / 1000.0);
}

fn count_issue(result: &'static str) {
    metrics::counter!(AUTHORITY_TOKEN_ISSUES.name, "result" => result).increment(1);
}

fn count_drop(cause: &'static str) {
    metrics::counter!(AUTHORITY_TOKEN_DROPS.name, "cause" => cause).increment(1);
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", Duration::from_millis(ms).as_secs_f64())
}

impl Authority {
    /// Sets up the client (nothing is asked yet), reusing a cached token when there is a
    /// usable one, and starts the background refresh if a tokio runtime is running.
    /// `backend_ca` is trusted for the Authority when `authority.ca_file` is unset.
    pub fn new(
        config: &AuthorityConfig,
        backend_ca: Option<&std::path::Path>,
    ) -> Result<Arc<Authority>, AuthorityError> {
        let issuer = config
            .issuer
            .clone()
            .ok_or_else(|| AuthorityError::Setup("authority.issuer is not set".into()))?;
        let client_cert = config.client_cert_file.is_some();
        let http = tls::http_client(config, backend_ca)?;
        if !config.require_mutual_tls {
            warn!(
                target: ISSUE_TARGET,
                "Mutual TLS requirement disabled (authority.require_mutual_tls = false): the OpTok is {} a client certificate",
                if client_cert { "requested with" } else { "requested without" }
            );
        }
        if !config.require_dpop {
            warn!(target: ISSUE_TARGET, "DPoP requirement disabled (authority.require_dpop = false): Bearer tokens from the Authority are accepted");
        }
        let authority = Arc::new(Authority {
            config: config.clone(),
            issuer,
            http,
            client_cert,
            key_file: config
                .dpop_key_file
                .clone()
                .map(|p| Mutex::new(KeyFile::new(p))),
            cache: config.token_cache_dir.clone().map(TokenCache::new),
            held: Mutex::new(None),
            issuing: tokio::sync::Mutex::new(IssueState::default()),
            requests_done: AtomicU64::new(0),
            failing: Mutex::new(None),
            fallback: Mutex::new(FallbackState::default()),
            backend_nonce: Mutex::new(None),
            wake: Arc::new(tokio::sync::Notify::new()),
        });
        metrics::gauge!(AUTHORITY_FALLBACK_ACTIVE.name).set(0.0);
        set_token_gauges(0, 0);
        admin::register(&authority);
        authority.load_cached();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(issuing::refresh_loop(
                Arc::downgrade(&authority),
                Arc::clone(&authority.wake),
            ));
        }
        Ok(authority)
    }

    pub fn config(&self) -> &AuthorityConfig {
        &self.config
    }

    /// The DPoP key now, dropping a token bound to a key that was replaced. A key file
    /// that holds no usable key is counted (`dpop_key`) and logged once per version of
    /// the file, for whichever path (a backend call, the background refresh) saw it first.
    fn current_key(&self) -> Result<Option<Arc<DpopKey>>, IssueError> {
        let Some(file) = &self.key_file else {
            return Ok(None);
        };
        let state = locked(file).current();
        let key = match state {
            Err(NoKey { error, first }) => {
                let error = IssueError::Key(error);
                if first {
                    count_issue(error.reason());
                    warn!(
                        target: ISSUE_TARGET,
                        result = "failed",
                        reason = error.reason(),
                        "{error}; no OpTok can be issued until the file holds a P-256 private key"
                    );
                }
                return Err(error);
            }
            Ok(KeyState::Kept { key, error }) => {
                count_issue("dpop_key");
                warn!(
                    target: ISSUE_TARGET,
                    result = "failed",
                    reason = "dpop_key",
                    jkt = %key.thumbprint(),
                    "authority.dpop_key_file changed but holds no usable key: {error}; the key with jkt {} stays in use",
                    key.thumbprint()
                );
                key
            }
            Ok(KeyState::Same(key)) => key,
            Ok(KeyState::Rotated(key)) => {
                let mut held = locked(&self.held);
                let stale = held.as_ref().and_then(|h| {
                    let bound = h.token.jkt.as_deref()?;
                    (bound != key.thumbprint()).then(|| bound.to_owned())
                });
                if let Some(old) = stale {
                    *held = None;
                    drop(held);
                    if let Some(cache) = &self.cache {
                        cache.remove(&self.config.audience);
                    }
                    count_drop("key_rotated");
                    info!(
                        target: ISSUE_TARGET,
                        old_jkt = %old,
                        new_jkt = %key.thumbprint(),
                        "DPoP key rotated: the OpTok bound to the old key is dropped and a new one is issued"
                    );
                }
                key
            }
        };
        Ok(Some(key))
    }

    fn load_cached(&self) {
        let Some(cache) = &self.cache else { return };
        let key = match self.current_key() {
            Ok(key) => key,
            Err(_) => return,
        };
        let expected = Expected {
            issuer: self.issuer.as_str(),
            client_id: &self.config.client_id,
            audience: &self.config.audience,
            jkt: key.as_ref().map(|k| k.thumbprint()),
        };
        match cache.load(&expected) {
            Ok(Some(token)) if self.config.require_dpop && !token.is_dpop() => {
                cache.remove(&self.config.audience);
                info!(
                    target: ISSUE_TARGET,
                    token_type = %token.token_type,
                    "the cached OpTok in {} is not DPoP-bound and authority.require_dpop is true: removed; a DPoP-bound one is issued",
                    cache.path(&self.config.audience).display()
                );
            }
            Ok(Some(token)) => {
                count_issue("cached");
                set_token_gauges(token.issued_at_ms, token.expires_at_ms);
                info!(
                    target: ISSUE_TARGET,
                    token_type = %token.token_type,
                    audience = %token.audience,
                    expires_in = %secs(token.expires_at_ms.saturating_sub(now_ms())),
                    jkt = %token.jkt.as_deref().unwrap_or("-"),
                    source = "cache",
                    "Using the cached runtime OpTok from {}",
                    cache.path(&self.config.audience).display()
                );
                *locked(&self.held) = Some(Held {
                    token,
                    key,
                    source: Source::Cached,
                });
            }
            Ok(None) => {}
            Err(why) => warn!(target: ISSUE_TARGET, "the cached OpTok is not used: {why}"),
        }
    }

    /// The usable token held, and whether it is due for refresh.
    fn held_credentials(&self, now: u64) -> Option<(Credentials, bool)> {
        let held = locked(&self.held);
        let h = held.as_ref()?;
        h.token
            .usable_at(now)
            .then(|| (h.credentials(), now >= h.token.refresh_at_ms))
    }

    /// Credentials for a backend call: the OpTok (issued now if there is none), else,
    /// where allowed, the static token.
    pub async fn credentials(&self) -> Result<Credentials, AuthorityError> {
        let key = self.current_key().map_err(|e| self.failed(e));
        let key = match key {
            Ok(key) => key,
            Err(error) => return self.fallback_or(error),
        };
        if let Some((credentials, due)) = self.held_credentials(now_ms()) {
            if due {
                self.wake.notify_one();
            }
            return Ok(credentials);
        }
        // No usable token. While the Authority is failing and a static token may stand
        // in, calls do not wait for it: the background refresh keeps asking.
        let recent = locked(&self.failing)
            .as_ref()
            .filter(|f| self.config.allow_static_token_fallback || f.at.elapsed() < MIN_RETRY)
            .map(|f| Arc::clone(&f.error));
        if let Some(error) = recent {
            return self.fallback_or(error);
        }
        match self.issue(key, false).await {
            Ok(credentials) => Ok(credentials),
            Err(error) => self.fallback_or(error),
        }
    }

    fn fallback_or(&self, error: Arc<IssueError>) -> Result<Credentials, AuthorityError> {
        if !self.config.allow_static_token_fallback {
            return Err(AuthorityError::Issue(error));
        }
        self.static_credentials(&error)
            .map_err(|fallback| AuthorityError::Fallback {
                issue: error,
                fallback,
            })
    }

    fn failed(&self, error: IssueError) -> Arc<IssueError> {
        let error = Arc::new(error);
        *locked(&self.failing) = Some(Failure {
            at: Instant::now(),
            error: Arc::clone(&error),
        });
        error
    }

    /// The backend refused `credentials` as `invalid_token`: drop that token, so the next
    /// call issues a new one.
    pub fn token_refused(&self, credentials: &Credentials) {
        if credentials.source == Source::Static {
            return;
        }
        let mut held = locked(&self.held);
        if held
            .as_ref()
            .is_some_and(|h| *h.token.access_token == *credentials.token)
        {
            *held = None;
            drop(held);
            if let Some(cache) = &self.cache {
                cache.remove(&self.config.audience);
            }
            count_drop("invalid_token");
            info!(target: ISSUE_TARGET, "the backend refused the OpTok (invalid_token): it is dropped and a new one issued");
        }
    }

    /// Drops the OpTok from memory and the cache (`invalidate-op-token`); the next call
    /// issues a new one. True if there was one.
    pub fn invalidate(&self) -> bool {
        let had = locked(&self.held).take().is_some();
        let cached = self
            .cache
            .as_ref()
            .is_some_and(|c| c.remove(&self.config.audience));
        *locked(&self.failing) = None;
        if had || cached {
            count_drop("invalidated");
        }
        info!(target: ISSUE_TARGET, dropped = had || cached, "OpTok invalidated: the next call issues a new one");
        self.wake.notify_one();
        had || cached
    }

    pub fn backend_nonce(&self) -> Option<String> {
        locked(&self.backend_nonce).clone()
    }

    pub fn set_backend_nonce(&self, nonce: &str) {
        *locked(&self.backend_nonce) = Some(nonce.to_owned());
    }

    /// Counts a `use_dpop_nonce` challenge from the backend.
    pub fn backend_challenged(&self) {
        metrics::counter!(AUTHORITY_NONCE_CHALLENGES.name, "server" => "backend").increment(1);
    }

    /// When the held token is next due: `None` when there is none (or it is unusable).
    fn next_refresh(&self) -> Option<u64> {
        let held = locked(&self.held);
        held.as_ref()
            .filter(|h| h.token.usable_at(now_ms()))
            .map(|h| h.token.refresh_at_ms)
    }
}
