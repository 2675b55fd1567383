//! The sinks batches are delivered to — the Scanner backend over HTTPS ([`https`]), NATS
//! JetStream ([`nats`]), Redis Streams ([`redis`]), in any combination — and the loop each
//! runs in its own task.
//!
//! Every sink reads the spool with a cursor of its own, oldest batch first, one at a time:
//! it connects, sends the batch, waits for the server's acknowledgement, and only then moves
//! its cursor past it. A batch leaves the spool once every sink has settled it, so a slow or
//! dead sink never holds back another, and never loses what the others delivered. Every
//! sink drops a batch it already has by its batch id (`Idempotency-Key`, `Nats-Msg-Id`, the
//! Redis script's id key), so retrying — after a timeout, a reconnect, a restart — is
//! exactly-once. Failures are retried with exponential backoff and full jitter; a batch a
//! sink will never accept goes to the sink's dead-letter file, counted.

pub mod dead_letter;
pub mod https;
pub mod nats;
pub mod redis;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};
use zastava_platform::metrics::{
    SINK_BATCHES, SINK_CONNECTED, SINK_ERRORS, SINK_LAG, SINK_LATENCY,
};

use super::{
    account::{Delivery, SinkResult},
    spool::SpoolEntry,
};
use dead_letter::DeadLetter;

/// `[sinks]`: the event bus sinks beside the HTTPS backend (which `backend.*` and
/// `scanner.runtime.capture.enabled` configure).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    pub nats: nats::NatsConfig,
    pub redis: redis::RedisConfig,
}

const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// A wait a server asks for is honoured up to this long.
const MAX_THROTTLE: Duration = Duration::from_secs(600);

/// Why a connection or a delivery failed: retried after a backoff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The `reason` label of `zastava_runtime_sink_errors_total`.
    pub reason: &'static str,
    /// What happened and what to do, for the log.
    pub message: String,
    /// The connection is no good: connect again before the next attempt.
    pub reconnect: bool,
}

impl Failure {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Failure {
            reason,
            message: message.into(),
            reconnect: false,
        }
    }

    /// A failure after which the sink connects again.
    pub fn reconnect(reason: &'static str, message: impl Into<String>) -> Self {
        Failure {
            reconnect: true,
            ..Failure::new(reason, message)
        }
    }
}

/// What a sink did with one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged; `duplicate` when the sink already had the batch.
    Delivered { duplicate: bool },
    /// The sink will never accept the batch: it goes to the dead-letter file.
    Rejected { status: Option<u16>, reason: String },
    /// The server asks to wait this long, then send the same batch again.
    Throttled(Duration),
    /// Retried after a backoff.
    Failed(Failure),
}

/// A destination for batches.
pub trait Sink: Send + 'static {
    /// The sink's name: its `sink` label, its cursor in the spool, its dead-letter file.
    fn name(&self) -> &'static str;

    /// Makes the sink ready to deliver (connect, authenticate, check the stream). Called
    /// before the first delivery, and again after a failure that asked to reconnect.
    fn connect(&mut self) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Sends one batch and waits for the server's acknowledgement.
    fn deliver(&mut self, entry: &SpoolEntry) -> impl Future<Output = Outcome> + Send;
}

/// Full jitter: a random wait between zero and the exponential cap.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let cap = BACKOFF_BASE
        .checked_mul(1u32 << attempt.min(20))
        .unwrap_or(max)
        .min(max);
    let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=millis))
}

/// How a sink task is told to stop: a deadline by which to deliver what it can.
pub type Stop = watch::Receiver<Option<Instant>>;

/// One sink's loop over its cursor in the spool.
pub struct SinkTask<S: Sink> {
    sink: S,
    /// The sink's cursor in the spool.
    index: usize,
    delivery: Arc<Delivery>,
    wake: watch::Receiver<u64>,
    stop: Stop,
    max_backoff: Duration,
    dead_letter: DeadLetter,
    connected: bool,
}

impl<S: Sink> SinkTask<S> {
    /// A task for `sink`, whose cursor is the `index`-th of the spool's sinks.
    pub fn new(
        sink: S,
        index: usize,
        delivery: Arc<Delivery>,
        max_backoff: Duration,
        dead_letter: DeadLetter,
        stop: Stop,
    ) -> Self {
        let wake = delivery.subscribe();
        SinkTask {
            sink,
            index,
            delivery,
            wake,
            stop,
            max_backoff,
            dead_letter,
            connected: false,
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

    fn set_connected(&mut self, connected: bool) {
        self.connected = connected;
        metrics::gauge!(SINK_CONNECTED.name, "sink" => self.sink.name()).set(if connected {
            1.0
        } else {
            0.0
        });
    }

    /// Counts and logs a failure; waits out its backoff. False when it is time to stop.
    async fn failed(&mut self, failure: &Failure, batch: Option<&str>, attempt: &mut u32) -> bool {
        let name = self.sink.name();
        metrics::counter!(SINK_ERRORS.name, "sink" => name, "reason" => failure.reason)
            .increment(1);
        if failure.reconnect {
            self.set_connected(false);
        }
        let wait = backoff(*attempt, self.max_backoff);
        *attempt = attempt.saturating_add(1);
        match batch {
            Some(id) => warn!(
                "{name}: sending batch {id} failed: {}; retrying in {wait:?}",
                failure.message
            ),
            None => warn!("{name}: {}; retrying in {wait:?}", failure.message),
        }
        self.pause(wait).await
    }

    pub async fn run(mut self) {
        let name = self.sink.name();
        metrics::gauge!(SINK_CONNECTED.name, "sink" => name).set(0.0);
        let mut attempt: u32 = 0;
        loop {
            // Marked seen before looking, so a batch spooled after the look wakes us.
            self.wake.borrow_and_update();
            let (seq, entry) = match self.delivery.peek(self.index) {
                Ok(Some(next)) => next,
                Ok(None) => {
                    if self.deadline().is_some() {
                        return;
                    }
                    tokio::select! {
                        _ = self.wake.changed() => {}
                        changed = self.stop.changed() => {
                            // Nobody left to stop us: the daemon is gone.
                            if changed.is_err() {
                                return;
                            }
                        }
                    }
                    continue;
                }
                Err(err) => {
                    let failure = Failure::new("spool", format!("cannot read the spool: {err}"));
                    if !self.failed(&failure, None, &mut attempt).await {
                        return;
                    }
                    continue;
                }
            };
            if self.deadline().is_some_and(|d| Instant::now() >= d) {
                return;
            }
            if !self.connected {
                match self.sink.connect().await {
                    Ok(()) => {
                        if attempt > 0 {
                            info!("{name}: connected");
                        }
                        self.set_connected(true);
                    }
                    Err(failure) => {
                        if !self.failed(&failure, None, &mut attempt).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let started = Instant::now();
            let outcome = self.sink.deliver(&entry).await;
            metrics::histogram!(SINK_LATENCY.name, "sink" => name)
                .record(started.elapsed().as_secs_f64() * 1000.0);
            let label = match &outcome {
                Outcome::Delivered { duplicate: false } => "delivered",
                Outcome::Delivered { duplicate: true } => "duplicate",
                Outcome::Rejected { .. } => "rejected",
                Outcome::Throttled(_) => "throttled",
                Outcome::Failed(_) => "retry",
            };
            metrics::counter!(SINK_BATCHES.name, "sink" => name, "outcome" => label).increment(1);
            match outcome {
                Outcome::Delivered { .. } => {
                    attempt = 0;
                    let lag_ns = now_ns().saturating_sub(entry.oldest_ns).max(0);
                    #[allow(clippy::cast_precision_loss, reason = "seconds of lag fit an f64")]
                    metrics::histogram!(SINK_LAG.name, "sink" => name).record(lag_ns as f64 / 1e9);
                    if !self
                        .settle(seq, &entry, SinkResult::Delivered, &mut attempt)
                        .await
                    {
                        return;
                    }
                }
                Outcome::Rejected { status, reason } => {
                    attempt = 0;
                    warn!(
                        "{name}: batch {} ({} events) was rejected{}: {reason}; it is kept in the dead-letter file {}",
                        entry.batch_id,
                        entry.events,
                        status.map(|s| format!(" with {s}")).unwrap_or_default(),
                        self.dead_letter.path().display()
                    );
                    self.dead_letter.write(&entry, status, &reason);
                    if !self
                        .settle(seq, &entry, SinkResult::GaveUp, &mut attempt)
                        .await
                    {
                        return;
                    }
                }
                Outcome::Throttled(wait) => {
                    info!("{name}: the server asks to wait {wait:?}");
                    if !self.pause(wait.min(MAX_THROTTLE)).await {
                        return;
                    }
                }
                Outcome::Failed(failure) => {
                    if !self
                        .failed(&failure, Some(&entry.batch_id), &mut attempt)
                        .await
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Moves the cursor past a batch the sink settled. When that cannot be recorded the
    /// batch stays unsettled (and in flight in the account) and is sent again after a
    /// backoff — the sink drops it as a duplicate then. False when it is time to stop.
    async fn settle(
        &mut self,
        seq: u64,
        entry: &SpoolEntry,
        result: SinkResult,
        attempt: &mut u32,
    ) -> bool {
        match self.delivery.settle(self.index, seq, entry, result) {
            Ok(_) => true,
            Err(err) => {
                let failure = Failure::new(
                    "spool",
                    format!(
                        "cannot record in the spool that it was settled: {err}; it will be sent again (free space on the spool's filesystem)"
                    ),
                );
                self.failed(&failure, Some(&entry.batch_id), attempt).await
            }
        }
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
