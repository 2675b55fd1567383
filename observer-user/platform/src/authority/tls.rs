//! The HTTPS client for the Authority: its CA (`authority.ca_file`, else the backend's,
//! else the system roots) and the client certificate of RFC 8705 client authentication.

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
