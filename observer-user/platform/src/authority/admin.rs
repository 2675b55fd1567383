//! `invalidate-op-token`, the same for both binaries: the command posts to the running
//! binary's loopback admin endpoint (`POST /invalidate-op-token?audience=scanner`), which
//! drops the OpTok from memory and the cache so that the next call re-issues.

use std::net::SocketAddr;

/// The path of the admin endpoint.
pub const INVALIDATE_PATH: &str = "/invalidate-op-token";

/// The audience asked for in the endpoint's query, if it is one this binary holds
/// credentials for; else the error to answer with.
pub fn audience_of(query: Option<&str>) -> Result<String, String> {
    let audience = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("audience="))
        .unwrap_or_default();
    if audience == "scanner" {
        Ok(audience.to_owned())
    } else {
        Err(format!(
            "unknown audience {audience:?}; credentials are held for \"scanner\" only"
        ))
    }
}

/// Asks `binary` (its name, for messages) at `admin` to drop its credentials; its reply.
pub async fn request_invalidate(binary: &str, admin: SocketAddr) -> Result<String, String> {
    if !admin.ip().is_loopback() {
        return Err(format!(
            "{admin} is not a loopback address; the admin endpoint only listens on loopback"
        ));
    }
    let url = format!("http://{admin}{INVALIDATE_PATH}?audience=scanner");
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
