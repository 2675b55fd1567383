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

use crate::spool::Spool;

/// Where events can be dropped. Every drop is counted under one of these.
pub const DROP_STAGES: [&str; 9] = [
    "kernel_ring_full",
    "kernel_map_full",
    "decode",
    "filtered",
    "dedup_unresolved",
    "dedup_evicted",
    "spool_full",
    "spool_eviction",
    "dead_letter",
];

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
    pub fn drop(&mut self, stage: &'static str, events: u64) {
        debug_assert!(DROP_STAGES.contains(&stage), "unknown drop stage {stage}");
        if events > 0 {
            *self.dropped.entry(stage).or_default() += events;
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

/// The account in Prometheus text format.
pub fn render(snapshot: &Snapshot, spool_enabled: bool) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    metric(
        "zastava_runtime_events_seen_total",
        "counter",
        "Edge events that left the kernel or were lost on the way.",
        &[("", snapshot.seen)],
    );
    metric(
        "zastava_runtime_events_shipped_total",
        "counter",
        "Edge events acknowledged by the backend (written, without a backend).",
        &[("", snapshot.shipped)],
    );
    let dropped: Vec<(String, u64)> = DROP_STAGES
        .iter()
        .map(|stage| {
            (
                format!("{{stage=\"{stage}\"}}"),
                snapshot.dropped.get(stage).copied().unwrap_or(0),
            )
        })
        .collect();
    let dropped: Vec<(&str, u64)> = dropped.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(
        "stella_runtime_events_dropped_total",
        "counter",
        "Edge events dropped, by the stage that dropped them.",
        &dropped,
    );
    metric(
        "zastava_runtime_events_in_flight",
        "gauge",
        "Edge events held, by where they are held.",
        &[
            ("{stage=\"pipeline\"}", snapshot.in_flight_pipeline),
            ("{stage=\"spool\"}", snapshot.in_flight_spool),
        ],
    );
    if spool_enabled {
        metric(
            "zastava_runtime_spool_batches",
            "gauge",
            "Batches in the disk spool.",
            &[("", snapshot.spool_batches)],
        );
        metric(
            "zastava_runtime_spool_bytes",
            "gauge",
            "Bytes in the disk spool.",
            &[("", snapshot.spool_bytes)],
        );
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
            state.ledger.drop("kernel_ring_full", 4);
            state.ledger.drop("filtered", 1);
            state.ledger.in_pipeline = 5;
        }
        let snapshot = delivery.snapshot();
        assert!(snapshot.balanced());
        let text = render(&snapshot, false);
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
}
