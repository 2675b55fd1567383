//! The shipper: sends spooled batches to the backend, oldest first, one at a time, and
//! removes each from the spool once the backend has acknowledged it.
//!
//! `POST <backend>/api/v1/runtime/events`, gzip-encoded JSON, bearer token, and the batch
//! id as `Idempotency-Key` (a retried batch keeps its id, so the backend can drop
//! duplicates). Timeouts, connection errors and 5xx are retried with exponential backoff
//! and full jitter; 429 waits for `Retry-After`; 401/403 are retried too (the token file is
//! re-read when it changes, so a rotated token takes effect); so is a call that has no
//! credentials because the Authority cannot issue an OpTok — the batch waits in the spool,
//! as for a backend outage. (The DPoP nonce and `invalid_token` retries happen inside the
//! backend client.) Any other 4xx means the backend will never take the batch: it goes to
//! the dead-letter file, counted.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::watch;
use tracing::{info, warn};

use zastava_platform::{
    backend::BackendClient,
    metrics::{BACKEND_REQUESTS, EVENTS_LAG, SHIPPER_BACKEND_LATENCY},
};

use super::{
    account::{Delivery, DropStage},
    ndjson::{NdjsonSink, Output},
    spool::SpoolEntry,
};

/// Where batches go on the backend.
pub const EVENTS_PATH: &str = "/api/v1/runtime/events";
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// `Retry-After` is honoured up to this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct ShipperConfig {
    pub max_backoff: Duration,
    pub dead_letter: PathBuf,
}

/// What the backend did with one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// 4xx other than 401/403/408/429: the batch will never be accepted.
    Rejected {
        status: u16,
        reason: String,
    },
    /// 429: wait this long, then send the same batch again.
    Throttled(Duration),
    /// Anything worth retrying after a backoff.
    Retry(String),
}

pub struct Shipper {
    client: BackendClient,
    delivery: Arc<Delivery>,
    config: ShipperConfig,
    dead_letter: Option<NdjsonSink>,
    /// Set to a deadline when the daemon shuts down: deliver what can be delivered by then.
    stop: watch::Receiver<Option<Instant>>,
}

/// Full jitter: a random wait between zero and the exponential cap.
fn backoff(attempt: u32, max: Duration) -> Duration {
    let cap = BACKOFF_BASE
        .checked_mul(1u32 << attempt.min(20))
        .unwrap_or(max)
        .min(max);
    let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=millis))
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

impl Shipper {
    pub fn new(
        client: BackendClient,
        delivery: Arc<Delivery>,
        config: ShipperConfig,
        stop: watch::Receiver<Option<Instant>>,
    ) -> Self {
        Shipper {
            client,
            delivery,
            config,
            dead_letter: None,
            stop,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        *self.stop.borrow()
    }

    /// Sleeps, waking early at the shutdown deadline. False when the deadline passed.
    async fn pause(&mut self, duration: Duration) -> bool {
        let until = Instant::now() + duration;
        loop {
            let wake = match self.deadline() {
                Some(deadline) if deadline <= until => deadline,
                _ => until,
            };
            let now = Instant::now();
            if wake <= now {
                return self.deadline().is_none_or(|d| d > now);
            }
            tokio::select! {
                () = tokio::time::sleep(wake - now) => {}
                changed = self.stop.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
            }
        }
    }

    pub async fn run(mut self) {
        let mut attempt: u32 = 0;
        loop {
            let next = {
                let state = self.delivery.lock();
                state.spool.as_ref().map(|s| s.peek())
            };
            let entry = match next {
                Some(Ok(Some(entry))) => entry,
                Some(Ok(None)) | None => {
                    if self.deadline().is_some() {
                        return;
                    }
                    tokio::select! {
                        () = self.delivery.wake.notified() => {}
                        _ = self.stop.changed() => {}
                    }
                    continue;
                }
                Some(Err(err)) => {
                    warn!("cannot read the spool: {err}; retrying");
                    if !self.pause(backoff(attempt, self.config.max_backoff)).await {
                        return;
                    }
                    attempt = attempt.saturating_add(1);
                    continue;
                }
            };
            if self.deadline().is_some_and(|d| Instant::now() >= d) {
                return;
            }
            let outcome = self.send(&entry).await;
            match outcome {
                Outcome::Delivered => {
                    attempt = 0;
                    self.settle(&entry, None);
                }
                Outcome::Rejected { status, reason } => {
                    attempt = 0;
                    warn!(
                        "the backend rejected batch {} ({} events) with {status}: {reason}; it is kept in the dead-letter file {}",
                        entry.batch_id,
                        entry.events,
                        self.config.dead_letter.display()
                    );
                    self.dead_letter(&entry, status, &reason);
                    self.settle(&entry, Some(DropStage::DeadLetter));
                }
                Outcome::Throttled(wait) => {
                    info!("the backend asks to wait {wait:?} (429)");
                    if !self.pause(wait.min(MAX_RETRY_AFTER)).await {
                        return;
                    }
                }
                Outcome::Retry(reason) => {
                    let wait = backoff(attempt, self.config.max_backoff);
                    attempt = attempt.saturating_add(1);
                    warn!(
                        "sending batch {} failed ({reason}); retrying in {wait:?}",
                        entry.batch_id
                    );
                    if !self.pause(wait).await {
                        return;
                    }
                }
            }
        }
    }

    async fn send(&self, entry: &SpoolEntry) -> Outcome {
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
            Err(e) if e.is_timeout() => Outcome::Retry("timed out".into()),
            Err(e) => Outcome::Retry(format!("{e}")),
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    Outcome::Delivered
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
                    Outcome::Retry(format!("{status}: {hint}"))
                } else if status.is_client_error() && status.as_u16() != 408 {
                    let body = response.text().await.unwrap_or_default();
                    Outcome::Rejected {
                        status: status.as_u16(),
                        reason: body.chars().take(512).collect(),
                    }
                } else {
                    Outcome::Retry(format!("{status}"))
                }
            }
        };
        let label = match &outcome {
            Outcome::Delivered => "delivered",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Throttled(_) => "throttled",
            Outcome::Retry(_) => "retry",
        };
        metrics::counter!(BACKEND_REQUESTS.name, "outcome" => label).increment(1);
        outcome
    }

    /// Removes the batch from the spool and accounts for it: shipped, or dropped at `stage`.
    fn settle(&self, entry: &SpoolEntry, dropped_at: Option<DropStage>) {
        let mut state = self.delivery.lock();
        let Some(spool) = state.spool.as_mut() else {
            return;
        };
        if let Err(err) = spool.ack() {
            warn!(
                "cannot remove batch {} from the spool: {err}; it may be sent again",
                entry.batch_id
            );
            return;
        }
        match dropped_at {
            None => {
                state.ledger.shipped += entry.events;
                let lag_ns = now_ns().saturating_sub(entry.oldest_ns).max(0);
                #[allow(clippy::cast_precision_loss, reason = "seconds of lag fit an f64")]
                metrics::histogram!(EVENTS_LAG.name).record(lag_ns as f64 / 1e9);
            }
            Some(stage) => state.ledger.drop(stage, entry.events),
        }
    }

    fn dead_letter(&mut self, entry: &SpoolEntry, status: u16, reason: &str) {
        if self.dead_letter.is_none() {
            match NdjsonSink::open(&Output::parse(
                &self.config.dead_letter.to_string_lossy(),
                16 << 20,
                4,
            )) {
                Ok(sink) => self.dead_letter = Some(sink),
                Err(err) => {
                    warn!(
                        "cannot open the dead-letter file: {err}; batch {} is lost",
                        entry.batch_id
                    );
                    return;
                }
            }
        }
        let batch: Option<serde_json::Value> = {
            use std::io::Read as _;
            let mut json = String::new();
            flate2::read::GzDecoder::new(entry.body.as_slice())
                .read_to_string(&mut json)
                .ok()
                .and_then(|_| serde_json::from_str(&json).ok())
        };
        let mut line = serde_json::json!({
            "batchId": entry.batch_id,
            "status": status,
            "reason": reason,
            "events": entry.events,
        });
        if let Some(batch) = batch {
            line["batch"] = batch;
        }
        if let Some(sink) = self.dead_letter.as_mut() {
            if let Err(err) = sink.write(&line).and_then(|()| sink.flush()) {
                warn!("cannot write the dead-letter file: {err}");
            }
        }
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_below_an_exponential_cap() {
        let max = Duration::from_secs(60);
        for attempt in 0..30 {
            let cap = BACKOFF_BASE
                .checked_mul(1 << attempt.min(20))
                .unwrap_or(max)
                .min(max);
            for _ in 0..20 {
                assert!(backoff(attempt, max) <= cap);
            }
        }
        // Jitter: not always the same.
        let samples: std::collections::HashSet<Duration> =
            (0..50).map(|_| backoff(10, max)).collect();
        assert!(samples.len() > 10);
    }

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
