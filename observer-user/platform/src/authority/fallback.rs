//! The static token that may stand in while the Authority cannot issue
//! (`authority.allow_static_token_fallback`): read from its file each time it is needed,
//! with its age and expiry from its JWT claims (`iat`, `exp`) when it is a JWT, else from
//! the file's modification time.

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use tracing::{error, warn};

use super::{
    issue::IssueError, locked, set_token_gauges, Credentials, Source, FALLBACK_TARGET,
    FALLBACK_WARN_EVERY,
};
use crate::metrics::AUTHORITY_FALLBACK_ACTIVE;

/// The runbook rotates the bootstrap token nightly: older than this is warned about loudly.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
pub struct StaticToken {
    pub token: String,
    /// When it was made: the JWT's `iat`, else the file's modification time.
    pub issued_at: SystemTime,
    /// The JWT's `exp`, when it is a JWT that has one.
    pub expires_at: Option<SystemTime>,
}

impl StaticToken {
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.issued_at)
            .unwrap_or_default()
    }

    /// The expiry to report: `exp`, else a day after it was made (nightly rotation).
    pub fn effective_expiry(&self) -> SystemTime {
        self.expires_at.unwrap_or(self.issued_at + MAX_AGE)
    }
}

/// A JWT's payload, if `token` is a JWT.
pub fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?).ok()
}

fn claim_time(claims: &serde_json::Value, name: &str) -> Option<SystemTime> {
    let secs = claims.get(name)?.as_f64()?;
    (secs >= 0.0 && secs.is_finite()).then(|| UNIX_EPOCH + Duration::from_secs_f64(secs))
}

pub fn read(path: &Path) -> Result<StaticToken, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read authority.static_token_file {}: {e}",
            path.display()
        )
    })?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(format!(
            "authority.static_token_file {} is empty",
            path.display()
        ));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "authority.static_token_file {} holds more than one token (whitespace inside)",
            path.display()
        ));
    }
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| SystemTime::now());
    let claims = jwt_claims(&token);
    let issued_at = claims
        .as_ref()
        .and_then(|c| claim_time(c, "iat"))
        .unwrap_or(modified);
    let expires_at = claims.as_ref().and_then(|c| claim_time(c, "exp"));
    Ok(StaticToken {
        token,
        issued_at,
        expires_at,
    })
}

/// `2026-12-01T08:00:00Z`.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

impl super::Authority {
    /// The static token as credentials, where allowed; warns (at most every five minutes
    /// while it stays in use, and whenever it changes) with its age and expiry.
    pub(super) fn static_credentials(&self, cause: &IssueError) -> Result<Credentials, String> {
        let Some(path) = &self.config.static_token_file else {
            return Err("authority.static_token_file is not set".into());
        };
        let token = read(path)?;
        if let Some(exp) = token.expires_at {
            if exp <= SystemTime::now() {
                return Err(format!(
                    "the static token in {} expired at {}",
                    path.display(),
                    rfc3339(exp)
                ));
            }
        }
        let age = token.age();
        let mut state = locked(&self.fallback);
        let changed = state.token.as_deref() != Some(token.token.as_str());
        let due = state
            .warned_at
            .is_none_or(|at| at.elapsed() >= FALLBACK_WARN_EVERY);
        if !state.active || changed || due {
            state.active = true;
            state.warned_at = Some(std::time::Instant::now());
            state.token = Some(token.token.clone());
            metrics::gauge!(AUTHORITY_FALLBACK_ACTIVE.name).set(1.0);
            let ms = |t: SystemTime| {
                t.duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
            };
            set_token_gauges(ms(token.issued_at), ms(token.effective_expiry()));
            let age_text = humantime::format_duration(Duration::from_secs(age.as_secs()));
            let expiry = token
                .expires_at
                .map_or_else(|| "unknown (not a JWT with exp)".to_owned(), rfc3339);
            warn!(
                target: FALLBACK_TARGET,
                path = %path.display(),
                age = %age_text,
                expires = %expiry,
                reason = cause.reason(),
                "Using the static token instead of an OpTok: {cause}"
            );
            if age > MAX_AGE {
                error!(
                    target: FALLBACK_TARGET,
                    path = %path.display(),
                    age = %age_text,
                    "The static token is older than 24 h: it is for bootstrap only and must be rotated nightly; restore the Authority or rotate the token"
                );
            }
        }
        Ok(Credentials {
            token: std::sync::Arc::from(token.token.as_str()),
            key: None,
            source: Source::Static,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwt_gives_its_age_and_expiry_and_an_opaque_token_its_file_time() {
        let dir = std::env::temp_dir().join(format!("zastava-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let payload = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"sub":"zastava-runtime","iat":{},"exp":{}}}"#,
            now - 30 * 3600,
            now + 3600
        ));
        std::fs::write(&path, format!("eyJhbGciOiJub25lIn0.{payload}.sig\n")).unwrap();
        let token = read(&path).unwrap();
        assert!(
            token.age() >= Duration::from_secs(30 * 3600)
                && token.age() < Duration::from_secs(30 * 3600 + 60)
        );
        assert_eq!(
            token.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(now + 3600))
        );

        std::fs::write(&path, "opaque-bootstrap-token\n").unwrap();
        let token = read(&path).unwrap();
        assert_eq!(token.token, "opaque-bootstrap-token");
        assert!(token.age() < Duration::from_secs(60));
        assert_eq!(token.expires_at, None);
        assert_eq!(token.effective_expiry(), token.issued_at + MAX_AGE);

        std::fs::write(&path, "two tokens\n").unwrap();
        assert!(read(&path).unwrap_err().contains("more than one token"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
