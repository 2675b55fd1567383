//! The OpTok as held in memory and in the cache directory: one file per audience, mode
//! 0600 in a directory of mode 0700, replaced atomically, so a restarted binary reuses its
//! token instead of asking the Authority again. A cached token is used only if it is for
//! the same issuer, client, audience and DPoP key, and not expired.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An operational token and what it is good for.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OpTok {
    pub access_token: String,
    /// `DPoP` or `Bearer`, as the Authority said.
    pub token_type: String,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
    /// When it is to be replaced (before `expires_at_ms`).
    pub refresh_at_ms: u64,
    #[serde(default)]
    pub scope: Option<String>,
    /// The thumbprint of the DPoP key it is bound to.
    #[serde(default)]
    pub jkt: Option<String>,
    pub issuer: String,
    pub client_id: String,
    pub audience: String,
}

impl std::fmt::Debug for OpTok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("OpTok")
            .field("token_type", &self.token_type)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("jkt", &self.jkt)
            .finish_non_exhaustive()
    }
}

/// A token is not used in its last second (or last tenth, if it lives less than ten
/// seconds): it could expire on the way.
const EXPIRY_SKEW_MS: u64 = 1000;

impl OpTok {
    pub fn is_dpop(&self) -> bool {
        self.token_type.eq_ignore_ascii_case("dpop")
    }

    pub fn usable_at(&self, now_ms: u64) -> bool {
        let lifetime = self.expires_at_ms.saturating_sub(self.issued_at_ms);
        now_ms.saturating_add(EXPIRY_SKEW_MS.min(lifetime / 10)) < self.expires_at_ms
    }

    pub fn lifetime(&self) -> Duration {
        Duration::from_millis(self.expires_at_ms.saturating_sub(self.issued_at_ms))
    }
}

/// What makes a cached token the right one.
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub audience: &'a str,
    pub jkt: Option<&'a str>,
}

pub struct TokenCache {
    dir: PathBuf,
}

impl TokenCache {
    pub fn new(dir: PathBuf) -> TokenCache {
        TokenCache { dir }
    }

    pub fn path(&self, audience: &str) -> PathBuf {
        let safe: String = audience
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("optok-{safe}.json"))
    }

    /// The cached token for `expected`, if there is a usable one. One that is not (expired,
    /// for another key, readable by others, damaged) is removed and the reason returned.
    pub fn load(&self, expected: &Expected<'_>) -> Result<Option<OpTok>, String> {
        let path = self.path(expected.audience);
        let Ok(meta) = fs::metadata(&path) else {
            return Ok(None);
        };
        let refuse = |why: String| {
            let _ = fs::remove_file(&path);
            Err(format!("{}: {why}; removed", path.display()))
        };
        if meta.permissions().mode() & 0o077 != 0 {
            return refuse(format!(
                "mode {:o} lets others read it (a token cache file must be 0600)",
                meta.permissions().mode() & 0o777
            ));
        }
        let token: OpTok = match fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(token) => token,
            Err(e) => return refuse(format!("not a cached token ({e})")),
        };
        if token.issuer != expected.issuer
            || token.client_id != expected.client_id
            || token.audience != expected.audience
        {
            return refuse("issued for another issuer, client or audience".into());
        }
        if token.jkt.as_deref() != expected.jkt {
            return refuse("bound to another DPoP key".into());
        }
        if !token.usable_at(now_ms()) {
            return refuse("expired".into());
        }
        Ok(Some(token))
    }

    /// Writes `token` (0600, atomically).
    pub fn store(&self, token: &OpTok) -> std::io::Result<()> {
        create_private_dir(&self.dir)?;
        let path = self.path(&token.audience);
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let bytes = serde_json::to_vec(token).map_err(std::io::Error::other)?;
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            // A file left by someone else under that name keeps its mode on open.
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// Removes the cached token of `audience`; true if there was one.
    pub fn remove(&self, audience: &str) -> bool {
        fs::remove_file(self.path(audience)).is_ok()
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_in_ms: u64) -> OpTok {
        let now = now_ms();
        OpTok {
            access_token: "t".into(),
            token_type: "DPoP".into(),
            issued_at_ms: now,
            expires_at_ms: now + expires_in_ms,
            refresh_at_ms: now + expires_in_ms / 2,
            scope: None,
            jkt: Some("k1".into()),
            issuer: "https://authority".into(),
            client_id: "zastava-runtime".into(),
            audience: "scanner".into(),
        }
    }

    fn expected(jkt: &str) -> Expected<'_> {
        Expected {
            issuer: "https://authority",
            client_id: "zastava-runtime",
            audience: "scanner",
            jkt: Some(jkt),
        }
    }

    #[test]
    fn a_stored_token_is_private_and_comes_back_only_for_its_key() {
        let dir = std::env::temp_dir().join(format!("zastava-optok-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let cache = TokenCache::new(dir.join("cache"));
        let t = token(60_000);
        cache.store(&t).unwrap();
        let path = cache.path("scanner");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(dir.join("cache"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(cache.load(&expected("k1")).unwrap(), Some(t.clone()));
        let err = cache.load(&expected("k2")).unwrap_err();
        assert!(err.contains("bound to another DPoP key"), "{err}");
        assert!(!path.exists());

        let mut expired = token(60_000);
        expired.expires_at_ms = now_ms() - 1;
        cache.store(&expired).unwrap();
        assert!(cache.load(&expected("k1")).unwrap_err().contains("expired"));

        cache.store(&t).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(cache
            .load(&expected("k1"))
            .unwrap_err()
            .contains("must be 0600"));
        assert!(!cache.remove("scanner"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
