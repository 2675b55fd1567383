//! Delivery state shared by the pipeline, the sinks and the metrics endpoint: the spool
//! and the account of every edge event.
//!
//! The account is kept so that, whenever the lock is released,
//!
//! ```text
//! seen = shipped + Σ dropped{stage} + in flight (pipeline + spool)
//! ```
//!
//! where `seen` counts every edge event that left the kernel or was lost on the way
//! (kernel drops are counted from the probes' counters), `shipped` what every configured
//! sink acknowledged (or, without a sink, what was written), and the in-flight numbers are
//! read from the queues themselves — the pipeline publishes how many events it holds, the
//! spool how many it stores — so a path that loses events without counting them breaks the
//! identity instead of hiding in it. A batch some sink gave up on (dead-lettered) counts
//! as `dead_letter` in these totals once every sink has settled it, even if others
//! delivered it.
//!
//! Each sink has the same identity of its own: `seen = shipped{sink} + Σ dropped{sink,
//! stage} + in flight{sink}`, where its shipped are the events it acknowledged, its
//! `dead_letter` and `spool_eviction` the batches it gave up on or lost to eviction before
//! it settled them, the other stages are shared, and its in flight is the pipeline plus the
//! spooled batches it has not settled.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
};

use serde::Serialize;
use tokio::sync::watch;
use tracing::warn;
use zastava_platform::metrics::EVENTS_LAG;

use super::spool::{Settled, Spool, SpoolEntry, SpoolError};

/// Where events can be dropped. Every drop is counted under one of these; the names are
/// the `stage` label of `stella_runtime_events_dropped_total` and the keys of the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropStage {
    /// The ring buffer had no room (kernel counter).
    KernelRingFull,
    /// A syscall pairing map had no room (kernel counter).
    KernelMapFull,
    /// The daemon could not decode a ring buffer record.
    Decode,
    /// A namespace filter dropped the event in userspace (before its pod was marked in the
    /// kernel).
    Filtered,
    /// Repeats the kernel held back for an edge whose report is no longer remembered.
    DedupUnresolved,
    /// Repeats the kernel's dedup map evicted before they were read.
    DedupEvicted,
    /// The spool refused a batch (full, or a write failed).
    SpoolFull,
    /// Batches evicted from a full spool to make room (`spool.when_full = drop-oldest`).
    SpoolEviction,
    /// The backend refused a batch for good; it went to the dead-letter file.
    DeadLetter,
}

impl DropStage {
    pub const ALL: [DropStage; 9] = [
        DropStage::KernelRingFull,
        DropStage::KernelMapFull,
        DropStage::Decode,
        DropStage::Filtered,
        DropStage::DedupUnresolved,
        DropStage::DedupEvicted,
        DropStage::SpoolFull,
        DropStage::SpoolEviction,
        DropStage::DeadLetter,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropStage::KernelRingFull => "kernel_ring_full",
            DropStage::KernelMapFull => "kernel_map_full",
            DropStage::Decode => "decode",
            DropStage::Filtered => "filtered",
            DropStage::DedupUnresolved => "dedup_unresolved",
            DropStage::DedupEvicted => "dedup_evicted",
            DropStage::SpoolFull => "spool_full",
            DropStage::SpoolEviction => "spool_eviction",
            DropStage::DeadLetter => "dead_letter",
        }
    }
}

/// Running totals of edge events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    pub seen: u64,
    pub shipped: u64,
    pub dropped: BTreeMap<&'static str, u64>,
    /// Held by the pipeline (waiting for attribution or for a batch), as last published.
    pub in_pipeline: u64,
}

impl Ledger {
    pub fn drop(&mut self, stage: DropStage, events: u64) {
        if events > 0 {
            *self.dropped.entry(stage.name()).or_default() += events;
        }
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

/// One sink's part of the account (what differs from the totals).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkLedger {
    pub name: String,
    /// Events in batches the sink acknowledged.
    pub shipped: u64,
    /// Events in batches the sink gave up on (its dead-letter file).
    pub dead_letter: u64,
    /// Events in batches evicted from a full spool before the sink settled them.
    pub evicted: u64,
}

pub struct DeliveryState {
    pub ledger: Ledger,
    /// Per sink, in the spool's order of sinks.
    pub sinks: Vec<SinkLedger>,
    /// Present when events are shipped to at least one sink.
    pub spool: Option<Spool>,
}

impl DeliveryState {
    /// A closed batch: into the spool when there is one (counting what a full spool drops
    /// or evicts), else delivered.
    fn take_batch(&mut self, entry: &SpoolEntry) -> bool {
        let events = entry.events;
        let Some(spool) = self.spool.as_mut() else {
            self.ledger.shipped += events;
            return false;
        };
        match spool.append(entry) {
            Ok(appended) => {
                let given_up = appended.evicted_given_up;
                self.ledger
                    .drop(DropStage::SpoolEviction, appended.evicted_events - given_up);
                self.ledger.drop(DropStage::DeadLetter, given_up);
                for (sink, evicted) in self.sinks.iter_mut().zip(&appended.evicted_unsettled) {
                    sink.evicted += evicted;
                }
                if appended.evicted_batches > 0 {
                    warn!(
                        "spool full: evicted {} older batches ({} events) to make room (spool.when_full = drop-oldest)",
                        appended.evicted_batches, appended.evicted_events
                    );
                }
                if appended.stored {
                    return true;
                }
                warn!(
                    "spool full: dropped batch {} ({events} events)",
                    entry.batch_id
                );
                self.ledger.drop(DropStage::SpoolFull, events);
            }
            Err(err) => {
                warn!(
                    "cannot spool batch {} ({events} events): {err}",
                    entry.batch_id
                );
                self.ledger.drop(DropStage::SpoolFull, events);
            }
        }
        false
    }
}

/// What the pipeline counted between two updates of the account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unpublished {
    pub seen: u64,
    pub dropped: BTreeMap<DropStage, u64>,
}

impl Unpublished {
    /// `events` seen and dropped at `stage`.
    pub fn seen_and_dropped(&mut self, stage: DropStage, events: u64) {
        self.seen += events;
        self.dropped_at(stage, events);
    }

    pub fn dropped_at(&mut self, stage: DropStage, events: u64) {
        if events > 0 {
            *self.dropped.entry(stage).or_default() += events;
        }
    }
}

/// A consistent view for metrics and summaries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub seen: u64,
    pub shipped: u64,
    pub dropped: BTreeMap<&'static str, u64>,
    pub in_flight_pipeline: u64,
    pub in_flight_spool: u64,
    pub spool_batches: u64,
    pub spool_bytes: u64,
    /// The account per sink, by name (empty without a spool).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sinks: BTreeMap<String, SinkSnapshot>,
}

/// One sink's account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkSnapshot {
    pub shipped: u64,
    /// Every stage: the shared ones as in the totals, `dead_letter` and `spool_eviction`
    /// this sink's own.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Events in spooled batches this sink has not settled.
    pub in_flight_spool: u64,
    /// Spooled batches this sink has not settled.
    pub pending_batches: u64,
}

impl Snapshot {
    pub fn in_flight(&self) -> u64 {
        self.in_flight_pipeline + self.in_flight_spool
    }

    /// Whether every event seen is shipped, dropped (and counted) or in flight, in the
    /// totals and for every sink.
    pub fn balanced(&self) -> bool {
        self.seen == self.shipped + self.dropped.values().sum::<u64>() + self.in_flight()
            && self.sinks.values().all(|sink| {
                self.seen
                    == sink.shipped
                        + sink.dropped.values().sum::<u64>()
                        + self.in_flight_pipeline
                        + sink.in_flight_spool
            })
    }
}

/// What a sink did with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkResult {
    Delivered,
    /// Refused for good (dead-lettered).
    GaveUp,
}

pub struct Delivery {
    state: Mutex<DeliveryState>,
    /// Counts spooled batches; every sink watches it to wake when there is more to send.
    appended: watch::Sender<u64>,
}

impl Delivery {
    pub fn new(spool: Option<Spool>) -> Self {
        // Batches a previous run spooled are in flight now: count them as seen, or the
        // account would show them shipped out of nothing. What a sink had settled of them
        // then is its own again.
        let ledger = Ledger {
            seen: spool.as_ref().map_or(0, Spool::pending_events),
            ..Ledger::default()
        };
        let sinks = spool.as_ref().map_or_else(Vec::new, |spool| {
            spool
                .sinks()
                .enumerate()
                .map(|(i, name)| {
                    let (delivered, given_up) = spool.recovered(i);
                    SinkLedger {
                        name: name.to_owned(),
                        shipped: delivered,
                        dead_letter: given_up,
                        evicted: 0,
                    }
                })
                .collect()
        });
        Delivery {
            state: Mutex::new(DeliveryState {
                ledger,
                sinks,
                spool,
            }),
            appended: watch::Sender::new(0),
        }
    }

    /// The state, for an update that must leave the account balanced.
    pub fn lock(&self) -> MutexGuard<'_, DeliveryState> {
        // A panic while holding the lock cannot leave the counters half-updated in a way
        // that matters more than losing them; keep going with what is there.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes whenever a batch is spooled.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Brings the account up to date with what the pipeline counted since its last update
    /// and, if one is given, a closed batch — spooled when there is a sink, else counted
    /// as shipped — in one critical section, so it balances whenever it is read.
    /// `in_pipeline` is what the pipeline holds now.
    pub fn publish(&self, update: Unpublished, batch: Option<&SpoolEntry>, in_pipeline: u64) {
        let spooled = {
            let mut state = self.lock();
            state.ledger.seen += update.seen;
            for (stage, n) in update.dropped {
                state.ledger.drop(stage, n);
            }
            let spooled = batch.is_some_and(|entry| state.take_batch(entry));
            state.ledger.in_pipeline = in_pipeline;
            spooled
        };
        if spooled {
            self.appended.send_modify(|n| *n += 1);
        }
    }

    /// The oldest batch sink `sink` has not settled, and its sequence number.
    pub fn peek(&self, sink: usize) -> Result<Option<(u64, SpoolEntry)>, SpoolError> {
        self.lock()
            .spool
            .as_ref()
            .map_or(Ok(None), |spool| spool.peek(sink))
    }

    /// Sink `sink` settled batch `seq` (`entry`): moves its cursor and accounts for it,
    /// for the sink and, once every sink has settled it, in the totals.
    pub fn settle(
        &self,
        sink: usize,
        seq: u64,
        entry: &SpoolEntry,
        result: SinkResult,
    ) -> Result<Settled, SpoolError> {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(spool) = state.spool.as_mut() else {
            return Ok(Settled::default());
        };
        let settled = spool.settle(sink, seq, result == SinkResult::Delivered)?;
        if settled.stale {
            return Ok(settled);
        }
        if let Some(ledger) = state.sinks.get_mut(sink) {
            match result {
                SinkResult::Delivered => ledger.shipped += entry.events,
                SinkResult::GaveUp => ledger.dead_letter += entry.events,
            }
        }
        if settled.released {
            if settled.given_up {
                state.ledger.drop(DropStage::DeadLetter, entry.events);
            } else {
                state.ledger.shipped += entry.events;
                let lag_ns = now_ns().saturating_sub(entry.oldest_ns).max(0);
                #[allow(clippy::cast_precision_loss, reason = "seconds of lag fit an f64")]
                metrics::histogram!(EVENTS_LAG.name).record(lag_ns as f64 / 1e9);
            }
        }
        Ok(settled)
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        let spool = state.spool.as_ref();
        let sinks = state
            .sinks
            .iter()
            .enumerate()
            .map(|(i, sink)| {
                let (pending_batches, in_flight_spool) = spool.map_or((0, 0), |s| s.pending_for(i));
                let mut dropped = state.ledger.dropped.clone();
                for (stage, own) in [
                    (DropStage::DeadLetter, sink.dead_letter),
                    (DropStage::SpoolEviction, sink.evicted),
                ] {
                    dropped.remove(stage.name());
                    if own > 0 {
                        dropped.insert(stage.name(), own);
                    }
                }
                let snapshot = SinkSnapshot {
                    shipped: sink.shipped,
                    dropped,
                    in_flight_spool,
                    pending_batches,
                };
                (sink.name.clone(), snapshot)
            })
            .collect();
        Snapshot {
            seen: state.ledger.seen,
            shipped: state.ledger.shipped,
            dropped: state.ledger.dropped.clone(),
            in_flight_pipeline: state.ledger.in_pipeline,
            in_flight_spool: spool.map_or(0, Spool::pending_events),
            spool_batches: spool.map_or(0, |s| s.len() as u64),
            spool_bytes: spool.map_or(0, Spool::pending_bytes),
            sinks,
        }
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

mod render;
pub use render::render;
