//! The account in Prometheus text format, read under the lock that keeps it balanced (so
//! it is exported here, not through the metrics recorder).

use std::fmt::Write as _;

use zastava_platform::metrics::{
    Metric, EVENTS_DROPPED, EVENTS_IN_FLIGHT, EVENTS_SEEN, EVENTS_SHIPPED, SINK_EVENTS_DROPPED,
    SINK_EVENTS_IN_FLIGHT, SINK_EVENTS_SHIPPED, SINK_PENDING_BATCHES, SPOOL_BATCHES, SPOOL_BYTES,
};

use zastava_platform::deployment::CommonLabels;

use super::{DropStage, Snapshot};

/// A series' own labels, as (name, value) pairs.
type Own<'a> = Vec<(&'static str, &'a str)>;

/// The account in Prometheus text format, every series carrying `common` as the
/// exporter's do.
pub fn render(snapshot: &Snapshot, spool_enabled: bool, common: &CommonLabels) -> String {
    let mut out = String::new();
    let mut metric = |m: Metric, samples: Vec<(Own<'_>, u64)>| {
        let name = m.name;
        let _ = writeln!(out, "# HELP {name} {}", m.help);
        let _ = writeln!(out, "# TYPE {name} {}", m.kind.as_str());
        for (own, value) in samples {
            let _ = writeln!(out, "{name}{} {value}", common.series(&own));
        }
    };
    metric(EVENTS_SEEN, vec![(vec![], snapshot.seen)]);
    metric(EVENTS_SHIPPED, vec![(vec![], snapshot.shipped)]);
    metric(
        EVENTS_DROPPED,
        DropStage::ALL
            .iter()
            .map(|stage| {
                (
                    vec![("stage", stage.name())],
                    snapshot.dropped.get(stage.name()).copied().unwrap_or(0),
                )
            })
            .collect(),
    );
    metric(
        EVENTS_IN_FLIGHT,
        vec![
            (vec![("stage", "pipeline")], snapshot.in_flight_pipeline),
            (vec![("stage", "spool")], snapshot.in_flight_spool),
        ],
    );
    if spool_enabled {
        metric(SPOOL_BATCHES, vec![(vec![], snapshot.spool_batches)]);
        metric(SPOOL_BYTES, vec![(vec![], snapshot.spool_bytes)]);
    }
    if snapshot.sinks.is_empty() {
        return out;
    }
    // The account of every sink.
    let sinks = &snapshot.sinks;
    metric(
        SINK_EVENTS_SHIPPED,
        sinks
            .iter()
            .map(|(sink, s)| (vec![("sink", sink.as_str())], s.shipped))
            .collect(),
    );
    metric(
        SINK_EVENTS_DROPPED,
        sinks
            .iter()
            .flat_map(|(sink, s)| {
                DropStage::ALL.iter().map(move |stage| {
                    (
                        vec![("sink", sink.as_str()), ("stage", stage.name())],
                        s.dropped.get(stage.name()).copied().unwrap_or(0),
                    )
                })
            })
            .collect(),
    );
    metric(
        SINK_EVENTS_IN_FLIGHT,
        sinks
            .iter()
            .flat_map(|(sink, s)| {
                [
                    (
                        vec![("sink", sink.as_str()), ("stage", "pipeline")],
                        snapshot.in_flight_pipeline,
                    ),
                    (
                        vec![("sink", sink.as_str()), ("stage", "spool")],
                        s.in_flight_spool,
                    ),
                ]
            })
            .collect(),
    );
    metric(
        SINK_PENDING_BATCHES,
        sinks
            .iter()
            .map(|(sink, s)| (vec![("sink", sink.as_str())], s.pending_batches))
            .collect(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Delivery;

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
    fn every_sink_has_its_own_balanced_account() {
        use crate::output::{
            account::{SinkResult, Unpublished},
            spool::{Spool, SpoolEntry, WhenFull},
        };
        let dir = std::env::temp_dir().join(format!("zastava-account-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Spool::open(&dir, 1 << 20, WhenFull::DropOldest, &["https", "nats"]).unwrap();
        let delivery = Delivery::new(Some(spool));
        let entry = |n: u64| SpoolEntry {
            batch_id: format!("b-{n}"),
            events: n,
            records: 1,
            oldest_ns: 0,
            body: vec![1; 10],
        };
        let mut update = Unpublished::default();
        update.seen_and_dropped(DropStage::KernelRingFull, 1);
        update.seen += 2 + 3;
        delivery.publish(update, Some(&entry(2)), 0);
        delivery.publish(Unpublished::default(), Some(&entry(3)), 0);
        // HTTPS delivers b-2 and gives up on b-3; NATS delivers b-2.
        delivery
            .settle(0, 0, &entry(2), SinkResult::Delivered)
            .unwrap();
        delivery
            .settle(0, 1, &entry(3), SinkResult::GaveUp)
            .unwrap();
        let released = delivery
            .settle(1, 0, &entry(2), SinkResult::Delivered)
            .unwrap();
        assert!(released.released);
        let snapshot = delivery.snapshot();
        assert!(snapshot.balanced(), "{snapshot:#?}");
        let text = render(&snapshot, true, &CommonLabels::default());
        for line in [
            "zastava_runtime_events_shipped_total 2\n",
            "zastava_runtime_events_in_flight{stage=\"spool\"} 3\n",
            "zastava_runtime_sink_events_shipped_total{sink=\"https\"} 2\n",
            "zastava_runtime_sink_events_shipped_total{sink=\"nats\"} 2\n",
            "zastava_runtime_sink_events_dropped_total{sink=\"https\",stage=\"dead_letter\"} 3\n",
            "zastava_runtime_sink_events_dropped_total{sink=\"nats\",stage=\"dead_letter\"} 0\n",
            "zastava_runtime_sink_events_dropped_total{sink=\"nats\",stage=\"kernel_ring_full\"} 1\n",
            "zastava_runtime_sink_events_in_flight{sink=\"https\",stage=\"spool\"} 0\n",
            "zastava_runtime_sink_events_in_flight{sink=\"nats\",stage=\"spool\"} 3\n",
            "zastava_runtime_sink_pending_batches{sink=\"nats\"} 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
        // NATS delivers b-3 too: it leaves the spool as a loss in the totals (HTTPS never
        // took it), and NATS's own account shows it shipped.
        delivery
            .settle(1, 1, &entry(3), SinkResult::Delivered)
            .unwrap();
        let snapshot = delivery.snapshot();
        assert!(snapshot.balanced(), "{snapshot:#?}");
        assert_eq!(snapshot.shipped, 2);
        assert_eq!(snapshot.dropped.get("dead_letter"), Some(&3));
        assert_eq!(snapshot.sinks["nats"].shipped, 5);
        // A sink's account that loses an event breaks the identity.
        delivery.lock().sinks[1].shipped -= 1;
        assert!(!delivery.snapshot().balanced());
        std::fs::remove_dir_all(&dir).unwrap();
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
