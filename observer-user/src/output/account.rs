//! Delivery state shared by the pipeline, the shipper and the metrics endpoint: the spool
//! and the account of every edge event.
//!
//! The account is kept so that, whenever the lock is released,
//!
//! ```text
//! seen = shipped + Σ dropped{stage} + in flight (pipeline + spool)
//! ```
//!
//! where `seen` counts every edge event that left the kernel or was lost on the way
//! (kernel drops are counted from the probes' counters), `shipped` what the backend
//! acknowledged (or, without a backend, what was written), and the in-flight numbers are
//! read from the queues themselves — the pipeline publishes how many events it holds, the
//! spool how many it stores — so a path that loses events without counting them breaks the
//! identity instead of hiding in it.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Mutex, MutexGuard},
};

use serde::Serialize;
use tokio::sync::Notify;
use tracing::warn;
use zastava_platform::deployment::CommonLabels;
use zastava_platform::metrics::{
    EVENTS_DROPPED, EVENTS_IN_FLIGHT, EVENTS_SEEN, EVENTS_SHIPPED, SPOOL_BATCHES, SPOOL_BYTES,
};

use super::spool::{Spool, SpoolEntry};

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

pub struct DeliveryState {
    pub ledger: Ledger,
    /// Present when events are shipped to a backend.
    pub spool: Option<Spool>,
}

impl DeliveryState {
    /// A closed batch: into the spool when there is one (counting what a full spool drops
    /// or evicts), else delivered.
    fn take_batch(&mut self, entry: &SpoolEntry, wake: &Notify) {
        let events = entry.events;
        let Some(spool) = self.spool.as_mut() else {
            self.ledger.shipped += events;
            return;
        };
        match spool.append(entry) {
            Ok(appended) => {
                self.ledger
                    .drop(DropStage::SpoolEviction, appended.evicted_events);
                if appended.evicted_batches > 0 {
                    warn!(
                        "spool full: evicted {} older batches ({} events) to make room (spool.when_full = drop-oldest)",
                        appended.evicted_batches, appended.evicted_events
                    );
                }
                if appended.stored {
                    wake.notify_one();
                } else {
                    warn!(
                        "spool full: dropped batch {} ({events} events)",
                        entry.batch_id
                    );
                    self.ledger.drop(DropStage::SpoolFull, events);
                }
            }
            Err(err) => {
                warn!(
                    "cannot spool batch {} ({events} events): {err}",
                    entry.batch_id
                );
                self.ledger.drop(DropStage::SpoolFull, events);
            }
        }
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
}

impl Snapshot {
    pub fn in_flight(&self) -> u64 {
        self.in_flight_pipeline + self.in_flight_spool
    }

    /// Whether every event seen is shipped, dropped (and counted) or in flight.
    pub fn balanced(&self) -> bool {
        self.seen == self.shipped + self.dropped.values().sum::<u64>() + self.in_flight()
    }
}

pub struct Delivery {
    state: Mutex<DeliveryState>,
    /// Wakes the shipper when a batch was spooled.
    pub wake: Notify,
}

impl Delivery {
    pub fn new(spool: Option<Spool>) -> Self {
        // Batches a previous run spooled are in flight now: count them as seen, or the
        // account would show them shipped out of nothing.
        let ledger = Ledger {
            seen: spool.as_ref().map_or(0, Spool::pending_events),
            ..Ledger::default()
        };
        Delivery {
            state: Mutex::new(DeliveryState { ledger, spool }),
            wake: Notify::new(),
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

    /// Brings the account up to date with what the pipeline counted since its last update
    /// and, if one is given, a closed batch — spooled when there is a backend, else counted
    /// as shipped — in one critical section, so it balances whenever it is read.
    /// `in_pipeline` is what the pipeline holds now.
    pub fn publish(&self, update: Unpublished, batch: Option<&SpoolEntry>, in_pipeline: u64) {
        let mut state = self.lock();
        state.ledger.seen += update.seen;
        for (stage, n) in update.dropped {
            state.ledger.drop(stage, n);
        }
        if let Some(entry) = batch {
            state.take_batch(entry, &self.wake);
        }
        state.ledger.in_pipeline = in_pipeline;
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        let spool = state.spool.as_ref();
        Snapshot {
            seen: state.ledger.seen,
            shipped: state.ledger.shipped,
            dropped: state.ledger.dropped.clone(),
            in_flight_pipeline: state.ledger.in_pipeline,
            in_flight_spool: spool.map_or(0, Spool::pending_events),
            spool_batches: spool.map_or(0, |s| s.len() as u64),
            spool_bytes: spool.map_or(0, Spool::pending_bytes),
        }
    }
}

/// The account in Prometheus text format, every series carrying `common` as the
/// exporter's do.
pub fn render(snapshot: &Snapshot, spool_enabled: bool, common: &CommonLabels) -> String {
    let mut out = String::new();
    let mut metric = |m: zastava_platform::metrics::Metric, samples: &[(Option<&str>, u64)]| {
        let name = m.name;
        let _ = writeln!(out, "# HELP {name} {}", m.help);
        let _ = writeln!(out, "# TYPE {name} {}", m.kind.as_str());
        for (stage, value) in samples {
            let own: &[(&str, &str)] = match stage {
                Some(stage) => &[("stage", stage)],
                None => &[],
            };
            let _ = writeln!(out, "{name}{} {value}", common.series(own));
        }
    };
    metric(EVENTS_SEEN, &[(None, snapshot.seen)]);
    metric(EVENTS_SHIPPED, &[(None, snapshot.shipped)]);
    let dropped: Vec<(Option<&str>, u64)> = DropStage::ALL
        .iter()
        .map(|stage| {
            (
                Some(stage.name()),
                snapshot.dropped.get(stage.name()).copied().unwrap_or(0),
            )
        })
        .collect();
    metric(EVENTS_DROPPED, &dropped);
    metric(
        EVENTS_IN_FLIGHT,
        &[
            (Some("pipeline"), snapshot.in_flight_pipeline),
            (Some("spool"), snapshot.in_flight_spool),
        ],
    );
    if spool_enabled {
        metric(SPOOL_BATCHES, &[(None, snapshot.spool_batches)]);
        metric(SPOOL_BYTES, &[(None, snapshot.spool_bytes)]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_renders_every_stage_and_balances() {
        let delivery = Delivery::new(None);
        {
            let mut state = delivery.lock();
            state.ledger.seen = 100;
            state.ledger.shipped = 90;
            state.ledger.drop(DropStage::KernelRingFull, 4);
            state.ledger.drop(DropStage::Filtered, 1);
            state.ledger.in_pipeline = 5;
        }
        let snapshot = delivery.snapshot();
        assert!(snapshot.balanced());
        let text = render(&snapshot, false, &CommonLabels::default());
        assert!(
            text.contains("zastava_runtime_events_seen_total 100\n"),
            "{text}"
        );
        assert!(
            text.contains("zastava_runtime_events_shipped_total 90\n"),
            "{text}"
        );
        assert!(
            text.contains("stella_runtime_events_dropped_total{stage=\"kernel_ring_full\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("stella_runtime_events_dropped_total{stage=\"dead_letter\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("zastava_runtime_events_in_flight{stage=\"pipeline\"} 5\n"),
            "{text}"
        );
        assert!(!text.contains("spool_batches"));

        delivery.lock().ledger.seen += 1;
        assert!(
            !delivery.snapshot().balanced(),
            "an event seen and then nowhere breaks it"
        );
    }

    #[test]
    fn every_series_of_the_account_carries_the_common_labels() {
        let delivery = Delivery::new(None);
        delivery.lock().ledger.seen = 7;
        delivery.lock().ledger.shipped = 7;
        let runtime: zastava_platform::deployment::RuntimeConfig =
            toml::from_str("deployment = \"eu-1\"").unwrap();
        let text = render(&delivery.snapshot(), true, &runtime.common_labels());
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        // seen, shipped, a drop per stage, two in flight, the spool's two.
        assert_eq!(samples.len(), 2 + DropStage::ALL.len() + 2 + 2, "{text}");
        for sample in &samples {
            assert!(sample.contains("{cluster=\"eu-1\""), "{sample}");
        }
        assert!(
            text.contains("zastava_runtime_events_seen_total{cluster=\"eu-1\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "stella_runtime_events_dropped_total{cluster=\"eu-1\",stage=\"spool_full\"} 0\n"
            ),
            "{text}"
        );
    }
}
