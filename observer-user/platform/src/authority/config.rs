//! The `[authority]` table both binaries read: where the operational token (OpTok) comes
//! from, how the client proves who it is (a client secret and/or a client certificate,
//! RFC 8705), the DPoP key the token is bound to (RFC 9449), where the token is cached,
//! when it is refreshed, and whether a static token may stand in while the Authority cannot
//! issue one.

use std::{fmt, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

use crate::config::{duration, parse_duration, Sources};

/// The service principal both binaries authenticate as.
pub const DEFAULT_CLIENT_ID: &str = "zastava-runtime";
/// The scopes an OpTok for the Scanner backend carries.
pub const DEFAULT_SCOPES: [&str; 2] = ["aud:scanner", "api:scanner.runtime.write"];

/// When, before its expiry, a token is replaced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RefreshBefore {
    /// This share of the token's lifetime (`"20%"`).
    Fraction(f64),
    /// This long before expiry (`"30s"`), or at half the lifetime for shorter tokens.
    Ahead(Duration),
}

impl RefreshBefore {
    /// How long before expiry a token with this lifetime is replaced.
    pub fn ahead_of_expiry(self, lifetime: Duration) -> Duration {
        match self {
            RefreshBefore::Fraction(f) => lifetime.mul_f64(f),
            RefreshBefore::Ahead(d) => d.min(lifetime / 2),
        }
    }
}

impl fmt::Display for RefreshBefore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefreshBefore::Fraction(x) => write!(f, "{}%", x * 100.0),
            RefreshBefore::Ahead(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

fn refresh_before<'de, D: Deserializer<'de>>(d: D) -> Result<RefreshBefore, D::Error> {
    let text = String::deserialize(d)?;
    let text = text.trim();
    if let Some(percent) = text.strip_suffix('%') {
        let value: f64 = percent.trim().parse().map_err(|_| {
            serde::de::Error::custom(format!("`{text}` is not a percentage (example: \"20%\")"))
        })?;
        if !(value > 0.0 && value < 100.0) {
            return Err(serde::de::Error::custom(format!(
                "`{text}`: the share of the lifetime must be above 0% and below 100%"
            )));
        }
        return Ok(RefreshBefore::Fraction(value / 100.0));
    }
    parse_duration(text).map(RefreshBefore::Ahead).map_err(|e| {
        serde::de::Error::custom(format!("{e}, or a share of the lifetime such as \"20%\""))
    })
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthorityConfig {
    /// The Authority's issuer URL; OIDC discovery at
    /// `<issuer>/.well-known/openid-configuration`. Unset: no Authority (a token file, or
    /// no credentials).
    pub issuer: Option<url::Url>,
    pub client_id: String,
    /// Client secret (client_secret_basic).
    pub client_secret_file: Option<PathBuf>,
    /// Client certificate and key (RFC 8705 tls_client_auth); also presented to the
    /// backend unless `backend.client_cert_file` names another.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// PEM CA bundle for the Authority (default: `backend.ca_file`, else the system roots).
    pub ca_file: Option<PathBuf>,
    pub audience: String,
    pub scopes: Vec<String>,
    /// Refuse tokens that are not DPoP-bound.
    pub require_dpop: bool,
    /// P-256 private key (PEM: SEC1 or PKCS#8; or a JWK); re-read when the file changes.
    pub dpop_key_file: Option<PathBuf>,
    /// Require a client certificate for the Authority (and the backend).
    pub require_mutual_tls: bool,
    /// Where the OpTok is cached across restarts (files 0600). Unset: memory only.
    pub token_cache_dir: Option<PathBuf>,
    #[serde(deserialize_with = "refresh_before")]
    pub refresh_before: RefreshBefore,
    /// Use `static_token_file` while the Authority cannot issue (bootstrap only).
    pub allow_static_token_fallback: bool,
    pub static_token_file: Option<PathBuf>,
    /// Per request to the Authority.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        AuthorityConfig {
            issuer: None,
            client_id: DEFAULT_CLIENT_ID.into(),
            client_secret_file: None,
            client_cert_file: None,
            client_key_file: None,
            ca_file: None,
            audience: "scanner".into(),
            scopes: DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            require_dpop: true,
            dpop_key_file: None,
            require_mutual_tls: true,
            token_cache_dir: None,
            refresh_before: RefreshBefore::Fraction(0.2),
            allow_static_token_fallback: false,
            static_token_file: None,
            timeout: Duration::from_secs(10),
        }
    }
}

impl AuthorityConfig {
    pub fn enabled(&self) -> bool {
        self.issuer.is_some()
    }

    /// Checks the table, and how it meets `[backend]`; `bad(key, problem)` for each problem.
    pub fn check(&self, backend_token_file: bool, bad: &mut impl FnMut(&str, String)) {
        let Some(issuer) = &self.issuer else {
            let defaults = AuthorityConfig::default();
            for (key, set) in [
                (
                    "authority.client_secret_file",
                    self.client_secret_file.is_some(),
                ),
                (
                    "authority.client_cert_file",
                    self.client_cert_file.is_some(),
                ),
                ("authority.client_key_file", self.client_key_file.is_some()),
                ("authority.dpop_key_file", self.dpop_key_file.is_some()),
                ("authority.token_cache_dir", self.token_cache_dir.is_some()),
                (
                    "authority.static_token_file",
                    self.static_token_file.is_some(),
                ),
                (
                    "authority.allow_static_token_fallback",
                    self.allow_static_token_fallback != defaults.allow_static_token_fallback,
                ),
            ] {
                if set {
                    bad(
                        key,
                        "has no effect without authority.issuer; set the Authority's issuer URL"
                            .into(),
                    );
                }
            }
            return;
        };
        let loopback = issuer
            .host_str()
            .is_some_and(|h| h == "localhost" || h == "127.0.0.1" || h == "[::1]");
        match issuer.scheme() {
            "https" => {}
            "http" if loopback && !self.require_mutual_tls => {}
            "http" => bad(
                "authority.issuer",
                format!("{issuer} is plain http; use https (http is only accepted for loopback, without require_mutual_tls)"),
            ),
            other => bad(
                "authority.issuer",
                format!("scheme {other:?} is not supported; use https"),
            ),
        }
        if issuer.query().is_some() || issuer.fragment().is_some() {
            bad(
                "authority.issuer",
                format!("{issuer}: an issuer URL has no query or fragment"),
            );
        }
        if backend_token_file {
            bad(
                "backend.token_file",
                "cannot be used with authority.issuer: tokens come from the Authority (a static token for bootstrap goes in authority.static_token_file, with authority.allow_static_token_fallback = true)".into(),
            );
        }
        if self.client_id.trim().is_empty() {
            bad("authority.client_id", "must not be empty".into());
        }
        if self.audience.trim().is_empty() {
            bad("authority.audience", "must not be empty".into());
        }
        if self.scopes.is_empty() {
            bad("authority.scopes", "must name at least one scope".into());
        }
        for scope in &self.scopes {
            if scope.is_empty()
                || scope
                    .chars()
                    .any(|c| c.is_whitespace() || c == '"' || c == '\\')
            {
                bad(
                    "authority.scopes",
                    format!("{scope:?} is not a scope (no spaces, quotes or backslashes)"),
                );
            }
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => bad(
                "authority.client_key_file",
                "is required with authority.client_cert_file".into(),
            ),
            (None, Some(_)) => bad(
                "authority.client_cert_file",
                "is required with authority.client_key_file".into(),
            ),
            (None, None) if self.require_mutual_tls => bad(
                "authority.client_cert_file",
                "is required with authority.require_mutual_tls = true (the client certificate and key of the zastava-authority-mtls Secret); set require_mutual_tls = false only where the Authority does not take certificates".into(),
            ),
            (None, None) if self.client_secret_file.is_none() => bad(
                "authority.client_secret_file",
                "the client needs a way to authenticate: a client secret file, or a client certificate (authority.client_cert_file and client_key_file)".into(),
            ),
            _ => {}
        }
        if self.require_dpop && self.dpop_key_file.is_none() {
            bad(
                "authority.dpop_key_file",
                "is required with authority.require_dpop = true (the P-256 key of the zastava-authority-dpop Secret)".into(),
            );
        }
        if let Some(path) = &self.dpop_key_file {
            if path.is_file() {
                if let Err(e) = super::dpop::DpopKey::load(path) {
                    bad("authority.dpop_key_file", e.to_string());
                }
            }
        }
        match (self.allow_static_token_fallback, &self.static_token_file) {
            (true, None) => bad(
                "authority.static_token_file",
                "is required with authority.allow_static_token_fallback = true".into(),
            ),
            (false, Some(_)) => bad(
                "authority.static_token_file",
                "is never used unless authority.allow_static_token_fallback = true".into(),
            ),
            _ => {}
        }
        for (key, file) in [
            ("authority.client_secret_file", &self.client_secret_file),
            ("authority.client_cert_file", &self.client_cert_file),
            ("authority.client_key_file", &self.client_key_file),
            ("authority.ca_file", &self.ca_file),
            ("authority.dpop_key_file", &self.dpop_key_file),
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
        // What is there must be what the client is built from at start.
        super::tls::check_files(self, bad);
        // The static token may appear later (a Secret filled after the rollout); its
        // absence is reported when a fallback needs it.
        if let Some(dir) = &self.token_cache_dir {
            if dir.exists() && !dir.is_dir() {
                bad(
                    "authority.token_cache_dir",
                    format!("{} is not a directory", dir.display()),
                );
            }
        }
        if self.timeout.is_zero() {
            bad("authority.timeout", "must be longer than 0".into());
        }
    }

    /// `key = value` lines for `--check-config`.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let Some(issuer) = &self.issuer else {
            return vec![("authority.issuer", "(none)".into())];
        };
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or_else(|| "(none)".into(), |p| p.display().to_string())
        };
        vec![
            ("authority.issuer", issuer.to_string()),
            ("authority.client_id", self.client_id.clone()),
            ("authority.audience", self.audience.clone()),
            ("authority.scopes", self.scopes.join(" ")),
            ("authority.require_dpop", self.require_dpop.to_string()),
            ("authority.dpop_key_file", path(&self.dpop_key_file)),
            (
                "authority.require_mutual_tls",
                self.require_mutual_tls.to_string(),
            ),
            ("authority.client_cert_file", path(&self.client_cert_file)),
            (
                "authority.client_secret_file",
                path(&self.client_secret_file),
            ),
            ("authority.token_cache_dir", path(&self.token_cache_dir)),
            ("authority.refresh_before", self.refresh_before.to_string()),
            (
                "authority.allow_static_token_fallback",
                self.allow_static_token_fallback.to_string(),
            ),
            ("authority.static_token_file", path(&self.static_token_file)),
        ]
    }
}

/// The flags that set `authority.*` (`--set authority.KEY=VALUE` sets any other).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct AuthorityArgs {
    /// [authority.issuer] The Authority's issuer URL (OIDC discovery).
    #[arg(long = "authority", value_name = "URL")]
    pub issuer: Option<String>,
    /// [authority.dpop_key_file] P-256 private key the OpTok is bound to (PEM or JWK).
    #[arg(long, value_name = "PATH")]
    pub dpop_key_file: Option<PathBuf>,
    /// [authority.client_cert_file] PEM client certificate for the Authority (mTLS).
    #[arg(long, value_name = "PATH")]
    pub authority_client_cert: Option<PathBuf>,
    /// [authority.client_key_file] PEM client key for the Authority (mTLS).
    #[arg(long, value_name = "PATH")]
    pub authority_client_key: Option<PathBuf>,
    /// [authority.token_cache_dir] Where the OpTok is cached across restarts.
    #[arg(long, value_name = "PATH")]
    pub token_cache_dir: Option<PathBuf>,
}

impl AuthorityArgs {
    pub fn apply(&self, sources: &mut Sources) {
        sources.set_given([("authority.issuer", &self.issuer)]);
        sources.set_given_paths([
            ("authority.dpop_key_file", &self.dpop_key_file),
            ("authority.client_cert_file", &self.authority_client_cert),
            ("authority.client_key_file", &self.authority_client_key),
            ("authority.token_cache_dir", &self.token_cache_dir),
        ]);
    }
}

#[cfg(test)]
mod tests;
