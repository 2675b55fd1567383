//! The HTTPS client for the Authority: its CA (`authority.ca_file`, else the backend's,
//! else the system roots) and the client certificate of RFC 8705 client authentication;
//! and the check of those files for `--check-config`.

use std::path::Path;

use rustls_pki_types::{
    pem::{PemObject as _, SectionKind},
    CertificateDer, PrivateKeyDer,
};

use super::{AuthorityConfig, AuthorityError};
use crate::tls::client_config;

pub fn http_client(
    config: &AuthorityConfig,
    backend_ca: Option<&std::path::Path>,
) -> Result<reqwest::Client, AuthorityError> {
    let ca = match (&config.ca_file, backend_ca) {
        (Some(path), _) => Some(("authority.ca_file", path.as_path())),
        (None, Some(path)) => Some(("backend.ca_file", path)),
        (None, None) => None,
    };
    let identity = match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert), Some(key)) => Some((
            ("authority.client_cert_file", cert.as_path()),
            ("authority.client_key_file", key.as_path()),
        )),
        _ => None,
    };
    let tls = client_config(ca, identity).map_err(|e| AuthorityError::Setup(e.to_string()))?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(std::time::Duration::from_secs(10)))
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| AuthorityError::Setup(format!("HTTP client: {e}")))
}

/// How the PEM of a certificate begins.
const CERTIFICATE_PEM: &str = "\"-----BEGIN CERTIFICATE-----\"";
/// How the PEM of each private key form rustls reads begins.
const PRIVATE_KEY_PEM: &str = "\"-----BEGIN PRIVATE KEY-----\", \"-----BEGIN EC PRIVATE KEY-----\" or \"-----BEGIN RSA PRIVATE KEY-----\"";

type Section = (SectionKind, Vec<u8>);

/// The PEM sections of a file, or what keeps it from being read as PEM.
fn sections(path: &Path) -> Result<Vec<Section>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Section::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {}", path.display(), pem_reason(&e)))
}

/// A PEM error, with the marker or line it is about as text.
fn pem_reason(err: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match err {
        Error::MissingSectionEnd { end_marker } => format!(
            "no \"-----END {}-----\" line",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => format!(
            "the line {:?} does not start a section",
            String::from_utf8_lossy(line)
        ),
        other => other.to_string(),
    }
}

/// `; it holds …` for a file that holds PEM, but not what was looked for.
fn holds(sections: &[Section]) -> String {
    let mut kinds: Vec<&str> = Vec::new();
    for (kind, _) in sections {
        let name = match kind {
            SectionKind::Certificate => "a certificate",
            SectionKind::PublicKey => "a public key",
            SectionKind::RsaPrivateKey | SectionKind::PrivateKey | SectionKind::EcPrivateKey => {
                "a private key"
            }
            SectionKind::Crl => "a certificate revocation list",
            SectionKind::Csr => "a certificate signing request",
            _ => "another PEM section",
        };
        if !kinds.contains(&name) {
            kinds.push(name);
        }
    }
    if kinds.is_empty() {
        String::new()
    } else {
        format!("; it holds {}", kinds.join(" and "))
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let sections = sections(path)?;
    let certs: Vec<CertificateDer<'static>> = sections
        .iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect();
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate ({CERTIFICATE_PEM}){}",
            path.display(),
            holds(&sections)
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let sections = sections(path)?;
    let key = sections.iter().find_map(|(kind, der)| match kind {
        SectionKind::PrivateKey => Some(PrivateKeyDer::Pkcs8(der.clone().into())),
        SectionKind::EcPrivateKey => Some(PrivateKeyDer::Sec1(der.clone().into())),
        SectionKind::RsaPrivateKey => Some(PrivateKeyDer::Pkcs1(der.clone().into())),
        _ => None,
    });
    key.ok_or_else(|| {
        format!(
            "{} holds no PEM private key ({PRIVATE_KEY_PEM}){}",
            path.display(),
            holds(&sections)
        )
    })
}

/// A rustls error without the `unexpected error: ` that `General` adds.
fn rustls_reason(err: &rustls::Error) -> String {
    match err {
        rustls::Error::General(reason) => reason.clone(),
        rustls::Error::InvalidCertificate(reason) => format!("{reason:?}"),
        other => other.to_string(),
    }
}

/// For `--check-config`: reads the files the client is built from as [`http_client`] does
/// at start — the CA bundle (`authority.ca_file`), the client certificate chain and its
/// private key — and checks that the key is the certificate's. `bad(key, problem)` for
/// each problem. Files that are not there are left to the caller, which reports them.
pub fn check_files(config: &AuthorityConfig, bad: &mut impl FnMut(&str, String)) {
    let present = |p: &Option<std::path::PathBuf>| p.clone().filter(|p| p.is_file());
    let provider = rustls::crypto::ring::default_provider();
    if let Some(path) = present(&config.ca_file) {
        match certificates(&path) {
            Ok(certs) => {
                let total = certs.len();
                let mut roots = rustls::RootCertStore::empty();
                for (n, cert) in certs.into_iter().enumerate() {
                    if let Err(e) = roots.add(cert) {
                        bad(
                            "authority.ca_file",
                            format!(
                                "{}: certificate {} of {total} is not a usable CA certificate: {}",
                                path.display(),
                                n + 1,
                                rustls_reason(&e)
                            ),
                        );
                    }
                }
            }
            Err(problem) => bad("authority.ca_file", problem),
        }
    }
    let certs = present(&config.client_cert_file).map(|path| {
        let certs = certificates(&path);
        if let Err(problem) = &certs {
            bad("authority.client_cert_file", problem.clone());
        }
        (path, certs)
    });
    let key = present(&config.client_key_file).map(|path| {
        let key = private_key(&path).and_then(|key| {
            provider.key_provider.load_private_key(key).map_err(|e| {
                format!(
                    "{}: the private key cannot be used: {}",
                    path.display(),
                    rustls_reason(&e)
                )
            })
        });
        if let Err(problem) = &key {
            bad("authority.client_key_file", problem.clone());
        }
        (path, key)
    });
    if let (Some((cert_path, Ok(certs))), Some((key_path, Ok(key)))) = (certs, key) {
        match rustls::sign::CertifiedKey::new(certs, key).keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(_)) => bad(
                "authority.client_key_file",
                format!(
                    "{} is not the private key of the certificate in {} (authority.client_cert_file)",
                    key_path.display(),
                    cert_path.display()
                ),
            ),
            Err(e) => bad(
                "authority.client_cert_file",
                format!(
                    "{}: the first certificate is not a valid X.509 certificate ({})",
                    cert_path.display(),
                    rustls_reason(&e)
                ),
            ),
        }
    }
}
