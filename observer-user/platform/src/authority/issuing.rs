//! Issuing: one request to the Authority at a time, its result held, cached, logged and
//! counted; and the background task that issues at start and replaces the token before it
//! expires.

use std::{
    sync::{atomic::Ordering, Arc, Weak},
    time::Duration,
};

use tracing::{info, warn};

use super::dpop::DpopKey;
use super::{
    cache::{now_ms, OpTok},
    count_issue, fallback, issue,
    issue::{Grant, IssueError},
    locked, secs, set_token_gauges, Authority, Credentials, FallbackState, Held, IssueState,
    Source, FALLBACK_TARGET, ISSUE_TARGET, MAX_REFRESH_BACKOFF, MIN_RETRY,
};
use crate::metrics::{AUTHORITY_FALLBACK_ACTIVE, AUTHORITY_NONCE_CHALLENGES};

impl Authority {
    /// Asks the Authority for a token, one request at a time. A caller that waited while
    /// another's request was under way takes its outcome: its token, or its failure (so
    /// callers queued during an outage do not each ask in turn). With `refresh`, a token
    /// that is usable but due is replaced.
    pub(super) async fn issue(
        &self,
        key: Option<Arc<DpopKey>>,
        refresh: bool,
    ) -> Result<Credentials, Arc<IssueError>> {
        let before = self.requests_done.load(Ordering::Acquire);
        let mut state = self.issuing.lock().await;
        let answered = self.requests_done.load(Ordering::Acquire) != before;
        if let Some((credentials, due)) = self.held_credentials(now_ms()) {
            if !(refresh && due) {
                return Ok(credentials);
            }
        }
        if answered {
            let failure = locked(&self.failing).as_ref().map(|f| Arc::clone(&f.error));
            if let Some(error) = failure {
                return Err(error);
            }
        }
        let started = now_ms();
        match self.request(&mut state, key.as_deref()).await {
            Ok((token, challenged)) => {
                if challenged {
                    metrics::counter!(AUTHORITY_NONCE_CHALLENGES.name, "server" => "authority")
                        .increment(1);
                }
                count_issue("issued");
                set_token_gauges(token.issued_at_ms, token.expires_at_ms);
                info!(
                    target: ISSUE_TARGET,
                    token_type = %token.token_type,
                    client_id = %token.client_id,
                    audience = %token.audience,
                    scope = token.scope.as_deref().unwrap_or("-"),
                    expires_in = %secs(token.expires_at_ms.saturating_sub(started)),
                    refresh_in = %secs(token.refresh_at_ms.saturating_sub(started)),
                    jkt = %token.jkt.as_deref().unwrap_or("-"),
                    nonce_challenge = challenged,
                    "Issued runtime OpTok"
                );
                if let Some(cache) = &self.cache {
                    if let Err(e) = cache.store(&token) {
                        warn!(target: ISSUE_TARGET, "cannot cache the OpTok in {}: {e}; it is kept in memory only", cache.path(&token.audience).display());
                    }
                }
                let held = Held {
                    token,
                    key,
                    source: Source::Issued,
                };
                let credentials = held.credentials();
                *locked(&self.held) = Some(held);
                *locked(&self.failing) = None;
                // Still under the issuing lock: callers waiting for it take this token.
                self.requests_done.fetch_add(1, Ordering::Release);
                let mut fallback = locked(&self.fallback);
                if fallback.active {
                    *fallback = FallbackState::default();
                    metrics::gauge!(AUTHORITY_FALLBACK_ACTIVE.name).set(0.0);
                    info!(target: FALLBACK_TARGET, "the Authority issues again: the static token is no longer used");
                }
                Ok(credentials)
            }
            Err(error) => {
                state.endpoints = None;
                count_issue(error.reason());
                let verdict = if matches!(error, IssueError::NotDpop { .. }) {
                    "refused"
                } else {
                    "failed"
                };
                let still = self.held_credentials(now_ms()).map(|_| {
                    let held = locked(&self.held);
                    held.as_ref()
                        .map(|h| secs(h.token.expires_at_ms.saturating_sub(now_ms())))
                        .unwrap_or_default()
                });
                match still {
                    Some(left) => {
                        warn!(target: ISSUE_TARGET, result = verdict, reason = error.reason(), "{error}; the OpTok in use expires in {left}")
                    }
                    None => {
                        warn!(target: ISSUE_TARGET, result = verdict, reason = error.reason(), "{error}")
                    }
                }
                let error = self.failed(error);
                // Still under the issuing lock: callers waiting for it take this failure.
                self.requests_done.fetch_add(1, Ordering::Release);
                Err(error)
            }
        }
    }

    pub(super) async fn request(
        &self,
        state: &mut IssueState,
        key: Option<&DpopKey>,
    ) -> Result<(OpTok, bool), IssueError> {
        let endpoints = match &state.endpoints {
            Some(endpoints) => endpoints.clone(),
            None => {
                let found = issue::discover(
                    &self.http,
                    &self.issuer,
                    self.config.require_dpop,
                    self.client_cert,
                )
                .await?;
                state.endpoints = Some(found.clone());
                found
            }
        };
        let client_secret = match &self.config.client_secret_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map(|s| s.trim().to_owned())
                    .map_err(|e| IssueError::Secret {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?,
            ),
            None => None,
        };
        // Offer a proof whenever there is a key: an Authority that binds tokens does.
        let grant = Grant {
            client_id: &self.config.client_id,
            client_secret,
            scopes: &self.config.scopes,
            audience: &self.config.audience,
            key,
            client_cert: self.client_cert,
        };
        let issued_at_ms = now_ms();
        let (reply, challenged) = issue::request_token(
            &self.http,
            &endpoints.token_endpoint,
            &grant,
            &mut state.nonce,
        )
        .await?;
        let dpop = reply.token_type.eq_ignore_ascii_case("dpop");
        if !dpop && !reply.token_type.eq_ignore_ascii_case("bearer") {
            return Err(IssueError::BadReply(format!(
                "token_type {:?} is neither DPoP nor Bearer",
                reply.token_type
            )));
        }
        if !dpop && self.config.require_dpop {
            return Err(IssueError::NotDpop {
                token_type: reply.token_type,
            });
        }
        if dpop && key.is_none() {
            return Err(IssueError::BadReply(
                "a DPoP token, but no DPoP key is configured (authority.dpop_key_file)".into(),
            ));
        }
        let claims = fallback::jwt_claims(&reply.access_token);
        if let (Some(key), Some(bound)) = (
            key.filter(|_| dpop),
            claims
                .as_ref()
                .and_then(|c| c.pointer("/cnf/jkt"))
                .and_then(serde_json::Value::as_str),
        ) {
            if bound != key.thumbprint() {
                return Err(IssueError::WrongBinding {
                    got: bound.to_owned(),
                    want: key.thumbprint().to_owned(),
                });
            }
        }
        // The token's own exp, when it is a JWT, is what the backend checks: whole
        // seconds, so it may come up to a second before issue time + expires_in.
        let exp_claim = claims
            .as_ref()
            .and_then(|c| c.get("exp")?.as_u64())
            .map(|exp| {
                Duration::from_millis(exp.saturating_mul(1000).saturating_sub(issued_at_ms))
            });
        let expires_in = match (reply.expires_in.map(Duration::from_secs), exp_claim) {
            (Some(given), Some(exp)) => given.min(exp),
            (Some(given), None) => given,
            (None, Some(exp)) => exp,
            (None, None) => {
                return Err(IssueError::BadReply(
                    "no expires_in, and the token is no JWT with exp".into(),
                ))
            }
        };
        if expires_in < Duration::from_secs(2) {
            return Err(IssueError::BadReply(format!(
                "the token expires in {expires_in:?}, too soon to be used (is this node's clock right?)"
            )));
        }
        let lifetime_ms = u64::try_from(expires_in.as_millis()).unwrap_or(u64::MAX);
        let ahead_ms = u64::try_from(
            self.config
                .refresh_before
                .ahead_of_expiry(expires_in)
                .as_millis(),
        )
        .unwrap_or(0);
        let expires_at_ms = issued_at_ms.saturating_add(lifetime_ms);
        Ok((
            OpTok {
                access_token: reply.access_token,
                token_type: if dpop { "DPoP".into() } else { "Bearer".into() },
                issued_at_ms,
                expires_at_ms,
                refresh_at_ms: expires_at_ms.saturating_sub(ahead_ms),
                scope: reply.scope,
                jkt: key.filter(|_| dpop).map(|k| k.thumbprint().to_owned()),
                issuer: self.issuer.to_string(),
                client_id: self.config.client_id.clone(),
                audience: self.config.audience.clone(),
            },
            challenged,
        ))
    }
}

/// Issues at start, then replaces the token before it expires; retries with backoff while
/// the Authority fails. Ends with the Authority: it holds it only while it works, and
/// waits on `wake` alone, which the Authority's drop signals.
pub(super) async fn refresh_loop(authority: Weak<Authority>, wake: Arc<tokio::sync::Notify>) {
    let mut backoff = MIN_RETRY;
    loop {
        let wait = {
            let Some(authority) = authority.upgrade() else {
                return;
            };
            let now = now_ms();
            match authority.next_refresh() {
                Some(at) if at > now => {
                    backoff = MIN_RETRY;
                    Duration::from_millis(at - now)
                }
                _ => {
                    let key = match authority.current_key() {
                        Ok(key) => Ok(key),
                        Err(e) => Err(authority.failed(e)),
                    };
                    let result = match key {
                        Ok(key) => authority.issue(key, true).await.map(|_| ()),
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(()) => {
                            backoff = MIN_RETRY;
                            continue;
                        }
                        Err(_) => {
                            let wait = backoff;
                            backoff = (backoff * 2).min(MAX_REFRESH_BACKOFF);
                            wait
                        }
                    }
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => {}
        }
    }
}
