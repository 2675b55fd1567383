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
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrapper {
        authority: AuthorityConfig,
    }

    fn parse(text: &str) -> Result<AuthorityConfig, String> {
        toml::from_str::<Wrapper>(text)
            .map(|w| w.authority)
            .map_err(|e| e.to_string())
    }

    fn problems(config: &AuthorityConfig, token_file: bool) -> Vec<String> {
        let mut found = Vec::new();
        config.check(token_file, &mut |key, problem| {
            found.push(format!("{key}: {problem}"));
        });
        found
    }

    #[test]
    fn refresh_before_is_a_share_of_the_lifetime_or_a_duration() {
        let share = parse("[authority]\nrefresh_before = \"20%\"").unwrap();
        assert_eq!(share.refresh_before, RefreshBefore::Fraction(0.2));
        assert_eq!(
            share
                .refresh_before
                .ahead_of_expiry(Duration::from_secs(300)),
            Duration::from_secs(60)
        );
        let ahead = parse("[authority]\nrefresh_before = \"30s\"").unwrap();
        assert_eq!(
            ahead
                .refresh_before
                .ahead_of_expiry(Duration::from_secs(300)),
            Duration::from_secs(30)
        );
        // Never more than half of a short token's life.
        assert_eq!(
            ahead
                .refresh_before
                .ahead_of_expiry(Duration::from_secs(20)),
            Duration::from_secs(10)
        );
        for bad in ["0%", "100%", "lots"] {
            let err = parse(&format!("[authority]\nrefresh_before = \"{bad}\"")).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    /// A self-signed P-256 client certificate, its key (PKCS#8) and another key (SEC1).
    const CLIENT_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBkzCCATmgAwIBAgIUTaZ2E36mPoU207OTFdM1XSyAzsgwCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTemFzdGF2YS10ZXN0LWNsaWVudDAgFw0yNjEyMDIwNTIwMjla
GA8yMTI2MTEwODA1MjAyOVowHjEcMBoGA1UEAwwTemFzdGF2YS10ZXN0LWNsaWVu
dDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABKB8LPF+Y/ThrTtPDzaPFCKw30dV
MhNwN8A4Aflw+iWXBZ/mi/5Ks+fPIIxVZk7zVnbBi3vefoEne5L5QeRRUwijUzBR
MB0GA1UdDgQWBBQ4SXUgmpdExRxTRa2oQDZT+tnZYjAfBgNVHSMEGDAWgBQ4SXUg
mpdExRxTRa2oQDZT+tnZYjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gA
MEUCIQDDenHQSQcUS4e4I0VRq1GO8oT7+Mn5O1BjS+U16i3WkAIgY4XxLinWL9gH
Cr8GJdISvcoN0D6jOXZYLNePv0xWp6c=
-----END CERTIFICATE-----\n";
    const CLIENT_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg3D2RlVR9oQtW6RDF
LlPSN5ChNm+FgqNPmrvBHX6yGt+hRANCAASgfCzxfmP04a07Tw82jxQisN9HVTIT
cDfAOAH5cPollwWf5ov+SrPnzyCMVWZO81Z2wYt73n6BJ3uS+UHkUVMI
-----END PRIVATE KEY-----\n";
    const OTHER_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIMqfiyKBaFRp3sv9eBxZItokI6k/Tpxu7subZgaPQ7SboAoGCCqGSM49
AwEHoUQDQgAEghFO23QVrQrp7O3BE0mw1839QZvPvBcBOnyS62lmHLkL+6hxIAQB
dlPlMHn9xEFAyjsBYa4fR8Vzxo1rifQOBg==
-----END EC PRIVATE KEY-----\n";

    #[test]
    fn a_complete_table_passes_and_each_missing_piece_is_named() {
        let dir =
            std::env::temp_dir().join(format!("zastava-authority-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.pem");
        let cert = dir.join("tls.crt");
        let client_key = dir.join("tls.key");
        let secret = dir.join("secret");
        // The P-256 key of RFC 7517 appendix A.2, as a JWK.
        std::fs::write(
            &key,
            r#"{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM","d":"870MB6gfuTJ4HtUnUvYMyJpr5eUZNP4Bk43bVdj3eAE"}"#,
        )
        .unwrap();
        std::fs::write(&cert, CLIENT_CERT).unwrap();
        std::fs::write(&client_key, CLIENT_KEY).unwrap();
        std::fs::write(&secret, "s3cret\n").unwrap();
        let complete = AuthorityConfig {
            issuer: Some("https://authority.internal".parse().unwrap()),
            dpop_key_file: Some(key.clone()),
            client_cert_file: Some(cert.clone()),
            client_key_file: Some(client_key.clone()),
            ca_file: Some(cert.clone()),
            ..AuthorityConfig::default()
        };
        assert_eq!(problems(&complete, false), Vec::<String>::new());
        assert_eq!(
            problems(&complete, true),
            ["backend.token_file: cannot be used with authority.issuer: tokens come from the Authority (a static token for bootstrap goes in authority.static_token_file, with authority.allow_static_token_fallback = true)"]
        );
        let without_key = AuthorityConfig {
            dpop_key_file: None,
            ..complete.clone()
        };
        assert!(
            problems(&without_key, false)[0].starts_with("authority.dpop_key_file: is required")
        );
        // Without DPoP or mutual TLS required, a client secret alone will do.
        let secret = AuthorityConfig {
            require_dpop: false,
            require_mutual_tls: false,
            dpop_key_file: None,
            client_cert_file: None,
            client_key_file: None,
            client_secret_file: Some(secret.clone()),
            ..complete.clone()
        };
        assert_eq!(problems(&secret, false), Vec::<String>::new());
        // Nothing without an issuer.
        let orphan = AuthorityConfig {
            issuer: None,
            ..complete
        };
        let found = problems(&orphan, false);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found
            .iter()
            .all(|p| p.contains("has no effect without authority.issuer")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn certificate_and_key_files_are_read_as_they_are_at_start() {
        let dir =
            std::env::temp_dir().join(format!("zastava-authority-tls-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert = file("tls.crt", CLIENT_CERT);
        let key = file("tls.key", CLIENT_KEY);
        let other_key = file("other.key", OTHER_KEY);
        let text = file("text", "x");
        let torn = file("torn.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
        let not_der = file(
            "not-der.crt",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let not_der_key = file(
            "not-der.key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let with = |cert: &PathBuf, key: &PathBuf, ca: Option<&PathBuf>| AuthorityConfig {
            issuer: Some("https://authority.internal".parse().unwrap()),
            require_dpop: false,
            client_cert_file: Some(cert.clone()),
            client_key_file: Some(key.clone()),
            ca_file: ca.cloned(),
            ..AuthorityConfig::default()
        };
        let d = |p: &PathBuf| p.display().to_string();
        assert_eq!(
            problems(&with(&cert, &key, Some(&cert)), false),
            Vec::<String>::new()
        );
        assert_eq!(
            problems(&with(&text, &text, None), false),
            [
                format!("authority.client_cert_file: {} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")", d(&text)),
                format!("authority.client_key_file: {} holds no PEM private key (\"-----BEGIN PRIVATE KEY-----\", \"-----BEGIN EC PRIVATE KEY-----\" or \"-----BEGIN RSA PRIVATE KEY-----\")", d(&text)),
            ]
        );
        // Swapped: each file names what it holds instead.
        assert_eq!(
            problems(&with(&key, &cert, None), false),
            [
                format!("authority.client_cert_file: {} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\"); it holds a private key", d(&key)),
                format!("authority.client_key_file: {} holds no PEM private key (\"-----BEGIN PRIVATE KEY-----\", \"-----BEGIN EC PRIVATE KEY-----\" or \"-----BEGIN RSA PRIVATE KEY-----\"); it holds a certificate", d(&cert)),
            ]
        );
        assert_eq!(
            problems(&with(&cert, &other_key, None), false),
            [format!(
                "authority.client_key_file: {} is not the private key of the certificate in {} (authority.client_cert_file)",
                d(&other_key),
                d(&cert)
            )]
        );
        assert_eq!(
            problems(&with(&not_der, &key, Some(&torn)), false),
            [
                format!(
                    "authority.ca_file: {} is not valid PEM: no \"-----END CERTIFICATE-----\" line",
                    d(&torn)
                ),
                format!(
                    "authority.client_cert_file: {}: the first certificate is not a valid X.509 certificate (BadEncoding)",
                    d(&not_der)
                ),
            ]
        );
        assert_eq!(
            problems(&with(&cert, &not_der_key, Some(&not_der)), false),
            [
                format!(
                    "authority.ca_file: {}: certificate 1 of 1 is not a usable CA certificate: BadEncoding",
                    d(&not_der)
                ),
                format!(
                    "authority.client_key_file: {}: the private key cannot be used: failed to parse private key as RSA, ECDSA, or EdDSA",
                    d(&not_der_key)
                ),
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
