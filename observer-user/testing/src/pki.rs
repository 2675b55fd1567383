//! Certificates for tests and benchmarks: a CA, a server certificate and a client
//! certificate, generated fresh each time and written as PEM files to a directory that is
//! removed when the [`Pki`] is dropped. Nothing here is ever committed.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A CA and the certificates it signed, as PEM files.
pub struct Pki {
    dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// A server certificate for 127.0.0.1 and localhost.
    pub fn generate() -> Pki {
        Pki::generate_for(vec!["127.0.0.1".into(), "localhost".into()])
    }

    /// A server certificate for `server_names` (DNS names or IP addresses), and a client
    /// certificate for `zastava-observer`.
    pub fn generate_for(server_names: Vec<String>) -> Pki {
        let dir = crate::fresh_dir("zastava-pki");
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).expect("CA parameters are valid");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "zastava test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("a key"))
            .expect("a self-signed CA");
        let issue = |names: Vec<String>, cn: &str| {
            let key = KeyPair::generate().expect("a key");
            let mut params = CertificateParams::new(names).expect("valid names");
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &ca).expect("a signed certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = issue(server_names, "scanner");
        let (client_cert, client_key) = issue(vec!["zastava-observer".into()], "zastava-observer");
        let write = |name: &str, pem: &str| write_file(&dir, name, pem);
        Pki {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            dir,
        }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn write_file(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
