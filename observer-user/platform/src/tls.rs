//! TLS client settings both binaries use for the Scanner backend and the Authority: a CA
//! bundle (or the system roots) and an optional client certificate, every error naming the
//! configuration key of the file at fault.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
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
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

fn file_error(key: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        key,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// A file and the key that names it.
pub type Named<'a> = (&'static str, &'a Path);

fn certificates((key, path): Named<'_>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            key,
            path: path.to_owned(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

/// Trusting `ca` (else the system roots), presenting `identity` (certificate, key) if given.
pub fn client_config(
    ca: Option<Named<'_>>,
    identity: Option<(Named<'_>, Named<'_>)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            for cert in certificates(ca)? {
                roots.add(cert).map_err(|e| file_error(ca.0, ca.1, e))?;
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
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots);
    match identity {
        Some((cert, (key_name, key_path))) => {
            let certs = certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| file_error(key_name, key_path, e))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                TlsError::Setup(format!(
                    "{} and {key_name} do not match or are unusable: {e}",
                    cert.0
                ))
            })
        }
        None => Ok(builder.with_no_client_auth()),
    }
}
