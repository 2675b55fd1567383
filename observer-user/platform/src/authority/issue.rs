//! Talking to the Authority: OIDC discovery, then the `client_credentials` grant with a
//! DPoP proof, answering one `use_dpop_nonce` challenge with the nonce it gives.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde::Deserialize;

use super::dpop::DpopKey;

/// Why no token came back; `reason()` labels the metric.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the Authority at {url} is unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the TLS handshake with the Authority at {url} failed: {detail}; {hint}")]
    Tls {
        url: String,
        detail: String,
        hint: &'static str,
    },
    #[error("OIDC discovery at {url}: {detail}")]
    Discovery { url: String, detail: String },
    #[error("the Authority refused to issue a token ({status}{}{}): {hint}", error.as_deref().map(|e| format!(", {e}")).unwrap_or_default(), description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Rejected {
        status: u16,
        error: Option<String>,
        description: Option<String>,
        hint: &'static str,
    },
    #[error("the Authority issued a {token_type:?} token, not a DPoP-bound one, and authority.require_dpop is true; configure the client for DPoP at the Authority (or, knowingly, set authority.require_dpop = false)")]
    NotDpop { token_type: String },
    #[error(
        "the Authority bound the token to key {got:?}, not to this client's DPoP key {want:?}"
    )]
    WrongBinding { got: String, want: String },
    #[error("the Authority's token reply is not usable: {0}")]
    BadReply(String),
    #[error("authority.dpop_key_file: {0}")]
    Key(#[from] super::dpop::KeyError),
    #[error("authority.client_secret_file: cannot read {path}: {reason}")]
    Secret { path: String, reason: String },
}

impl IssueError {
    pub fn reason(&self) -> &'static str {
        match self {
            IssueError::Unreachable { .. } => "unreachable",
            IssueError::Tls { .. } => "tls",
            IssueError::Discovery { .. } => "discovery",
            IssueError::Rejected { .. } => "rejected",
            IssueError::NotDpop { .. } => "not_dpop",
            IssueError::WrongBinding { .. } => "wrong_binding",
            IssueError::BadReply(_) => "bad_reply",
            IssueError::Key(_) => "dpop_key",
            IssueError::Secret { .. } => "client_secret",
        }
    }
}

/// The error and each of its causes, `: `-joined.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = cause.source();
    }
    text
}

/// Whether a request failed in the TLS handshake (rather than on the way to the server).
fn is_tls_failure(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// What a request error was, for the operator.
pub fn request_error(url: &url::Url, err: &reqwest::Error, client_cert: bool) -> IssueError {
    let detail = error_chain(err);
    if is_tls_failure(err) {
        IssueError::Tls {
            url: url.to_string(),
            detail,
            hint: if client_cert {
                "check that authority.client_cert_file and client_key_file hold a certificate the Authority trusts (not expired, issued by its client CA) and that authority.ca_file (or backend.ca_file) holds the CA of the Authority's own certificate"
            } else {
                "no client certificate is configured (authority.client_cert_file and client_key_file); an Authority that requires mutual TLS refuses the connection without one"
            },
        }
    } else {
        IssueError::Unreachable {
            url: url.to_string(),
            detail,
        }
    }
}

/// What discovery says.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub token_endpoint: url::Url,
    /// `dpop_signing_alg_values_supported`, when the metadata has it (it is optional).
    pub dpop_algs: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Metadata {
    issuer: Option<String>,
    token_endpoint: Option<String>,
    #[serde(default)]
    dpop_signing_alg_values_supported: Option<Vec<String>>,
}

pub fn discovery_url(issuer: &url::Url) -> url::Url {
    let mut url = issuer.clone();
    let path = format!(
        "{}/.well-known/openid-configuration",
        url.path().trim_end_matches('/')
    );
    url.set_path(&path);
    url
}

/// `<issuer>/.well-known/openid-configuration`.
pub async fn discover(
    http: &reqwest::Client,
    issuer: &url::Url,
    require_dpop: bool,
    client_cert: bool,
) -> Result<Endpoints, IssueError> {
    let url = discovery_url(issuer);
    let discovery = |detail: String| IssueError::Discovery {
        url: url.to_string(),
        detail,
    };
    let response = http
        .get(url.clone())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| request_error(&url, &e, client_cert))?;
    let status = response.status();
    if !status.is_success() {
        return Err(discovery(format!(
            "answered {status}; is authority.issuer ({issuer}) the Authority's issuer URL?"
        )));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| request_error(&url, &e, client_cert))?;
    let metadata: Metadata = serde_json::from_slice(&bytes)
        .map_err(|e| discovery(format!("not OpenID provider metadata: {e}")))?;
    let same_issuer = metadata
        .issuer
        .as_deref()
        .is_some_and(|i| i.trim_end_matches('/') == issuer.as_str().trim_end_matches('/'));
    if !same_issuer {
        return Err(discovery(format!(
            "the metadata names issuer {:?}, not {issuer} (OIDC requires them to be equal); set authority.issuer to the Authority's issuer",
            metadata.issuer.unwrap_or_default()
        )));
    }
    let token_endpoint = metadata
        .token_endpoint
        .ok_or_else(|| discovery("no token_endpoint".into()))?;
    let token_endpoint: url::Url = token_endpoint
        .parse()
        .map_err(|e| discovery(format!("token_endpoint {token_endpoint:?}: {e}")))?;
    if token_endpoint.scheme() != issuer.scheme() {
        return Err(discovery(format!(
            "token_endpoint {token_endpoint} is not {}",
            issuer.scheme()
        )));
    }
    // RFC 9449 §5.1 makes the list optional: without it, the token reply's token_type
    // tells whether the proof was taken.
    let dpop_algs = metadata.dpop_signing_alg_values_supported;
    if let Some(algs) = dpop_algs.as_ref().filter(|_| require_dpop) {
        if !algs.iter().any(|a| a == "ES256") {
            return Err(discovery(format!(
                "the Authority does not accept ES256 DPoP proofs (dpop_signing_alg_values_supported: {algs:?}); with authority.require_dpop = true it cannot issue a usable token"
            )));
        }
    }
    Ok(Endpoints {
        token_endpoint,
        dpop_algs,
    })
}

/// A successful token reply.
#[derive(Deserialize)]
pub struct TokenReply {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: Option<u64>,
    pub scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorReply {
    error: Option<String>,
    error_description: Option<String>,
}

/// One token request.
pub struct Grant<'a> {
    pub client_id: &'a str,
    pub client_secret: Option<String>,
    pub scopes: &'a [String],
    pub audience: &'a str,
    pub key: Option<&'a DpopKey>,
    pub client_cert: bool,
}

/// `form-urlencoded`, as client_secret_basic wants the id and secret before base64.
fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Requests a token; `nonce` is the Authority's last DPoP nonce, updated from its replies.
/// A `use_dpop_nonce` challenge is answered once. Returns the reply and whether a nonce
/// challenge was answered.
pub async fn request_token(
    http: &reqwest::Client,
    endpoint: &url::Url,
    grant: &Grant<'_>,
    nonce: &mut Option<String>,
) -> Result<(TokenReply, bool), IssueError> {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", grant.client_id)
        .append_pair("scope", &grant.scopes.join(" "))
        .append_pair("audience", grant.audience)
        .finish();
    let mut challenged = false;
    loop {
        let mut request = http
            .post(endpoint.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body.clone());
        if let Some(secret) = &grant.client_secret {
            let basic = STANDARD.encode(format!(
                "{}:{}",
                form_encode(grant.client_id),
                form_encode(secret)
            ));
            request = request.header("authorization", format!("Basic {basic}"));
        }
        if let Some(key) = grant.key {
            request = request.header("DPoP", key.proof("POST", endpoint, nonce.as_deref(), None));
        }
        let response = request
            .send()
            .await
            .map_err(|e| request_error(endpoint, &e, grant.client_cert))?;
        if let Some(next) = response
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
        {
            *nonce = Some(next.to_owned());
        }
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| request_error(endpoint, &e, grant.client_cert))?;
        if status.is_success() {
            let reply: TokenReply = serde_json::from_slice(&bytes)
                .map_err(|e| IssueError::BadReply(format!("not a token response: {e}")))?;
            return Ok((reply, challenged));
        }
        let error: Option<ErrorReply> = serde_json::from_slice(&bytes).ok();
        let (code, description) = error
            .map(|e| (e.error, e.error_description))
            .unwrap_or_default();
        if code.as_deref() == Some("use_dpop_nonce") && !challenged && grant.key.is_some() {
            challenged = true;
            if nonce.is_some() {
                continue;
            }
            return Err(IssueError::BadReply(
                "use_dpop_nonce without a DPoP-Nonce header".into(),
            ));
        }
        let hint = match code.as_deref() {
            Some("invalid_client") => "the Authority does not accept this client's credentials: check authority.client_id and the client certificate or secret (Secret zastava-authority-mtls)",
            Some("invalid_scope") => "the client may not have these scopes: check authority.scopes against the client's registration",
            Some("invalid_dpop_proof") => "the Authority refused the DPoP proof: check the node's clock (iat) and authority.dpop_key_file",
            Some("unauthorized_client") => "the client may not use the client_credentials grant at the Authority",
            _ if status.is_server_error() => "the Authority failed; it is retried",
            _ => "see the Authority's logs",
        };
        return Err(IssueError::Rejected {
            status: status.as_u16(),
            error: code,
            description: description.map(|d| d.chars().take(300).collect()),
            hint,
        });
    }
}
