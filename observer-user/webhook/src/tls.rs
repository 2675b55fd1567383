//! The serving certificate, read from files and re-read when they change, so a rotated
//! certificate (cert-manager, a re-mounted Secret) is served without a restart. A pair that
//! does not load (half written, key and certificate not matching) is reported and the
//! previous certificate stays in use.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

use rustls::{
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{key}: cannot read {path}: {reason}")]
    Read {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("server.cert_file: {0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("server.key_file: {0} holds no usable private key: {1}")]
    Key(PathBuf, String),
    #[error("server.cert_file and server.key_file do not belong together: {0}")]
    Mismatch(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// What identifies a version of a file: inode, size, modification time.
type Stamp = Option<(u64, u64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<(Stamp, Stamp)>,
}

fn load(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CertError> {
    let read_error = |key, path: &Path, e: &dyn std::fmt::Display| CertError::Read {
        key,
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| read_error("server.cert_file", cert_path, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error("server.cert_file", cert_path, &e))?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate(cert_path.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| CertError::Key(key_path.to_owned(), e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::Key(key_path.to_owned(), e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| CertError::Mismatch(e.to_string()))?;
    Ok(certified)
}

impl ReloadingCert {
    /// Loads the pair; an error here stops the webhook from starting.
    pub fn new(
        cert_path: &Path,
        key_path: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Self>, CertError> {
        let stamps = (stamp(cert_path), stamp(key_path));
        let certified = load(cert_path, key_path, &provider)?;
        Ok(Arc::new(ReloadingCert {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Arc::new(certified)),
            stamps: Mutex::new(stamps),
        }))
    }

    /// Re-reads the pair if either file changed. `Ok(true)`: a new certificate is served.
    /// An error leaves the previous certificate in place; the files are tried again on the
    /// next call (a pair being replaced may be half written).
    pub fn reload_if_changed(&self) -> Result<bool, CertError> {
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        if *stamps == now {
            return Ok(false);
        }
        let certified = load(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
        *stamps = now;
        Ok(true)
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1, the certificate from `cert`.
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<rustls::ServerConfig, CertError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&cert.provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CertError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
