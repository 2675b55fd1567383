//! `invalidate-op-token`, the same for both binaries: the command posts to the running
//! binary's loopback admin endpoint (`POST /invalidate-op-token?audience=<audience>`),
//! which drops the OpTok from memory and the cache so that the next call re-issues.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, Weak},
};

use super::{locked, Authority, AuthorityConfig};

/// The path of the admin endpoint.
pub const INVALIDATE_PATH: &str = "/invalidate-op-token";

/// The Authorities of this process, for the audiences they hold credentials for.
static LIVE: Mutex<Vec<Weak<Authority>>> = Mutex::new(Vec::new());

/// Notes `authority` as holding credentials for its `authority.audience`.
pub(super) fn register(authority: &Arc<Authority>) {
    let mut live = locked(&LIVE);
    live.retain(|a| a.strong_count() > 0);
    live.push(Arc::downgrade(authority));
}

/// The audiences this process holds credentials for: each live Authority's
/// `authority.audience`; without an Authority (a token file, or no credentials), the
/// default audience, which the runbook's command names.
pub fn held_audiences() -> Vec<String> {
    let mut held: Vec<String> = Vec::new();
    for authority in locked(&LIVE).iter().filter_map(Weak::upgrade) {
        let audience = &authority.config().audience;
        if !held.contains(audience) {
            held.push(audience.clone());
        }
    }
    if held.is_empty() {
        held.push(AuthorityConfig::default().audience);
    }
    held
}

/// The audience asked for in the endpoint's query, if it is one this binary holds
/// credentials for ([`held_audiences`]); else the error to answer with.
pub fn audience_of(query: Option<&str>) -> Result<String, String> {
    audience_in(query, &held_audiences())
}

/// The audience asked for in `query` (`audience=…`, form-encoded), if it is one of `held`.
pub fn audience_in(query: Option<&str>, held: &[String]) -> Result<String, String> {
    let names = held
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let asked = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(name, _)| name == "audience")
        .map(|(_, value)| value.into_owned());
    match asked {
        Some(audience) if held.contains(&audience) => Ok(audience),
        Some(audience) => Err(format!(
            "audience {audience:?} is refused: credentials are held for {names} only (authority.audience)"
        )),
        None => Err(format!(
            "no audience given (?audience=…); credentials are held for {names} (authority.audience)"
        )),
    }
}

/// Asks `binary` (its name, for messages) at `admin` to drop its credentials for the
/// default audience; its reply.
pub async fn request_invalidate(binary: &str, admin: SocketAddr) -> Result<String, String> {
    request_invalidate_for(binary, admin, &AuthorityConfig::default().audience).await
}

/// Asks `binary` at `admin` to drop its credentials for `audience`; its reply.
pub async fn request_invalidate_for(
    binary: &str,
    admin: SocketAddr,
    audience: &str,
) -> Result<String, String> {
    if !admin.ip().is_loopback() {
        return Err(format!(
            "{admin} is not a loopback address; the admin endpoint only listens on loopback"
        ));
    }
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("audience", audience)
        .finish();
    let url = format!("http://{admin}{INVALIDATE_PATH}?{query}");
    let response = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .map_err(|e| format!("cannot reach the admin endpoint of {binary} at {admin}: {e} (is {binary} running here, with admin.addr = \"{admin}\"?)"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{binary} answered {status}: {body}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_audience_is_taken_and_any_other_refused_by_name() {
        let held = ["scanner-eu".to_owned()];
        assert_eq!(
            audience_in(Some("audience=scanner-eu"), &held),
            Ok("scanner-eu".to_owned())
        );
        assert_eq!(
            audience_in(Some("audience=scanner"), &held),
            Err(
                "audience \"scanner\" is refused: credentials are held for \"scanner-eu\" only (authority.audience)"
                    .to_owned()
            )
        );
        assert_eq!(
            audience_in(None, &held),
            Err(
                "no audience given (?audience=…); credentials are held for \"scanner-eu\" (authority.audience)"
                    .to_owned()
            )
        );
        // Form-encoded, as an audience may be a URL.
        let url = ["https://scanner.example/api".to_owned()];
        assert_eq!(
            audience_in(
                Some("x=1&audience=https%3A%2F%2Fscanner.example%2Fapi"),
                &url
            ),
            Ok("https://scanner.example/api".to_owned())
        );
    }

    #[test]
    fn a_live_authority_holds_its_audience() {
        let audience = format!("scanner-{}", std::process::id());
        let config = AuthorityConfig {
            issuer: Some("http://127.0.0.1:9".parse().unwrap()),
            audience: audience.clone(),
            require_dpop: false,
            require_mutual_tls: false,
            ..AuthorityConfig::default()
        };
        let query = format!("audience={audience}");
        let authority = Authority::new(&config, None).unwrap();
        assert_eq!(audience_of(Some(&query)), Ok(audience.clone()));
        drop(authority);
        assert!(audience_of(Some(&query)).is_err());
    }
}
