//! The Scanner backend over HTTPS: `POST <backend>/api/v1/runtime/events`, gzip-encoded
//! JSON, with the batch id as `Idempotency-Key` (a retried batch keeps its id, so the
//! backend can drop duplicates).
//!
//! Timeouts, connection errors and 5xx are retried; 429 waits for `Retry-After`; 401/403
//! are retried too (the token file is re-read when it changes, so a rotated token takes
//! effect); so is a call that has no credentials because the Authority cannot issue an
//! OpTok — the batch waits in the spool, as for a backend outage. (The DPoP nonce and
//! `invalid_token` retries happen inside the backend client.) Any other 4xx means the
//! backend will never take the batch: it goes to the dead-letter file, counted.

use std::time::{Duration, Instant, SystemTime};

use zastava_platform::{
    backend::BackendClient,
    metrics::{BACKEND_REQUESTS, SHIPPER_BACKEND_LATENCY},
};

use super::{Failure, Outcome, Sink, BACKOFF_BASE};
use crate::output::spool::SpoolEntry;

/// The sink's name (label, cursor, dead-letter file).
pub const NAME: &str = "https";
/// Where batches go on the backend.
pub const EVENTS_PATH: &str = "/api/v1/runtime/events";

pub struct HttpsSink {
    client: BackendClient,
}

impl HttpsSink {
    pub fn new(client: BackendClient) -> Self {
        HttpsSink { client }
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

impl Sink for HttpsSink {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Connections are made per request by the client's pool.
    async fn connect(&mut self) -> Result<(), Failure> {
        Ok(())
    }

    async fn deliver(&mut self, entry: &SpoolEntry) -> Outcome {
        let started = Instant::now();
        let response = self
            .client
            .post(EVENTS_PATH)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::CONTENT_ENCODING, "gzip")
            .header("Idempotency-Key", &entry.batch_id)
            .body(entry.body.clone())
            .send()
            .await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        metrics::histogram!(SHIPPER_BACKEND_LATENCY.name).record(elapsed_ms);
        let outcome = match response {
            Err(e) if e.is_timeout() => Outcome::Failed(Failure::new("timeout", "timed out")),
            Err(e) => Outcome::Failed(Failure::new("connect", format!("{e}"))),
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    Outcome::Delivered { duplicate: false }
                } else if status.as_u16() == 429 {
                    let wait = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(retry_after)
                        .unwrap_or(BACKOFF_BASE);
                    Outcome::Throttled(wait)
                } else if matches!(status.as_u16(), 401 | 403) {
                    let hint = if self.client.authority().is_some() {
                        "the backend refused the OpTok; check the Authority's client registration (scopes, audience)"
                    } else {
                        "check backend.token_file"
                    };
                    Outcome::Failed(Failure::new("auth", format!("{status}: {hint}")))
                } else if status.is_client_error() && status.as_u16() != 408 {
                    let body = response.text().await.unwrap_or_default();
                    Outcome::Rejected {
                        status: Some(status.as_u16()),
                        reason: body.chars().take(512).collect(),
                    }
                } else {
                    Outcome::Failed(Failure::new("server", format!("{status}")))
                }
            }
        };
        let label = match &outcome {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Throttled(_) => "throttled",
            Outcome::Failed(_) => "retry",
        };
        metrics::counter!(BACKEND_REQUESTS.name, "outcome" => label).increment(1);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(30);
        let wait = retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28),
            "{wait:?}"
        );
        assert_eq!(
            retry_after("Mon, 01 Jan 1990 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }
}
