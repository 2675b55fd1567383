//! The account given at shutdown: what was received, written and lost, and where.

use std::{collections::BTreeMap, fmt};

use observer_common::{Counter, EventKind};
use serde::Serialize;

use crate::{
    kernel::KernelCounters,
    output::Snapshot,
    pipeline::{PipelineStats, RuntimeStatus},
    record::{EdgeType, Enrichment},
};

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub duration_seconds: f64,
    /// Records received from the kernel, by kind.
    pub received: BTreeMap<&'static str, u64>,
    /// Edge events written, by edge type.
    pub written: BTreeMap<&'static str, u64>,
    /// Other records written, by event type.
    pub records: BTreeMap<&'static str, u64>,
    /// Edge events written, by enrichment.
    pub enrichment: BTreeMap<&'static str, u64>,
    /// Kernel counters by name, then by kind.
    pub kernel: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// Records rejected by the decoder, by reason.
    pub decode_errors: BTreeMap<&'static str, u64>,
    pub unresolved_paths: u64,
    /// Where the edges' paths and addresses came from, where not from the kernel's objects.
    pub provenance: ProvenanceSummary,
    pub processes: ProcessSummary,
    pub attribution: AttributionSummary,
    pub batching: BatchingSummary,
    pub cri: RuntimeSummary,
    pub docker: RuntimeSummary,
    /// Records lost before they reached the pipeline: ring full + pairing map full +
    /// rejected records. Not the event account's drops, which count every stage.
    pub lost: u64,
    /// The event account: seen = shipped + dropped + in flight.
    pub delivery: Snapshot,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvenanceSummary {
    /// Paths from the caller's memory (`pathFromCaller`).
    pub paths_from_caller: u64,
    /// Addresses from the caller's memory (`addressFromCaller`).
    pub addresses_from_caller: u64,
    /// Successful opens reported without their requested path (`sharedMemory`).
    pub requested_paths_withheld: u64,
    /// Kernel walks that did not reach the task's root: too long or deep, outside the
    /// root, no path (a pipe, a socket), a read failed.
    pub walks_truncated: u64,
    pub walks_outside_root: u64,
    pub walks_detached: u64,
    pub walks_failed: u64,
    /// Execs whose binary's build-id could not be read.
    pub execs_without_code_id: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSummary {
    pub seeded: u64,
    pub loaded_late: u64,
    pub unknown: u64,
    pub swept: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttributionSummary {
    pub unknown_cgroups: u64,
    pub filtered_in_userspace: u64,
    pub containers_without_digest: u64,
    pub patched_events: u64,
}

/// Records batched out of time order (none lost: each is shipped, in a batch other than
/// its time would give it).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchingSummary {
    pub batches: u64,
    /// Arrived after the reorder window: shipped in a later batch, marked `late`.
    pub late: u64,
    /// Released before the reorder window passed, because `batch.max_held_events` or
    /// `batch.max_held_bytes` was exceeded.
    pub released_early: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSummary {
    pub endpoint: Option<String>,
    pub runtime: Option<String>,
    pub connected: bool,
    pub disconnects: u64,
}

impl From<&RuntimeStatus> for RuntimeSummary {
    fn from(s: &RuntimeStatus) -> Self {
        RuntimeSummary {
            endpoint: s.endpoint.clone(),
            runtime: s.runtime.clone(),
            connected: s.connected,
            disconnects: s.disconnects,
        }
    }
}

/// ` (stage=n ...)` for the stages that dropped anything; empty when none did.
fn by_stage(dropped: &BTreeMap<&'static str, u64>) -> String {
    let stages: Vec<String> = dropped
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(stage, n)| format!("{stage}={n}"))
        .collect();
    if stages.is_empty() {
        String::new()
    } else {
        format!(" ({})", stages.join(" "))
    }
}

impl Summary {
    pub fn new(
        duration_seconds: f64,
        kernel: &KernelCounters,
        pipeline: &PipelineStats,
        delivery: Snapshot,
    ) -> Self {
        let track = pipeline.track;
        let table = pipeline.table;
        let attribution = pipeline.attribution;
        let written = pipeline.written;
        let decode_errors = pipeline.decode_errors.clone();
        let lost = kernel.total(Counter::RingFull)
            + kernel.total(Counter::PendingMapFull)
            + decode_errors.values().sum::<u64>();
        Summary {
            duration_seconds,
            received: EventKind::ALL
                .iter()
                .map(|&k| (k.name(), track.received(k)))
                .collect(),
            written: EdgeType::ALL
                .iter()
                .map(|&e| (e.name(), written.edges[e.index()]))
                .collect(),
            records: BTreeMap::from([
                ("containerStart", written.container_starts),
                ("containerStop", written.container_stops),
                ("enrichmentPatch", written.patches),
            ]),
            enrichment: Enrichment::ALL
                .iter()
                .zip(attribution.by_enrichment)
                .map(|(e, n)| (e.as_str(), n))
                .collect(),
            kernel: Counter::ALL
                .iter()
                .map(|&c| {
                    let by_kind = EventKind::ALL
                        .iter()
                        .map(|&k| (k.name(), kernel.get(c, k)))
                        .collect();
                    (c.name(), by_kind)
                })
                .collect(),
            decode_errors,
            unresolved_paths: track.unresolved_paths,
            provenance: ProvenanceSummary {
                paths_from_caller: track.paths_from_caller,
                addresses_from_caller: track.addresses_from_caller,
                requested_paths_withheld: track.requested_paths_withheld,
                walks_truncated: track.walks_truncated,
                walks_outside_root: track.walks_outside_root,
                walks_detached: track.walks_detached,
                walks_failed: track.walks_failed,
                execs_without_code_id: track.execs_without_code_id,
            },
            processes: ProcessSummary {
                seeded: table.seeded,
                loaded_late: table.loaded_late,
                unknown: table.unknown,
                swept: table.swept,
            },
            attribution: AttributionSummary {
                unknown_cgroups: attribution.unknown_cgroups,
                filtered_in_userspace: attribution.filtered_in_userspace,
                containers_without_digest: attribution.containers_without_digest,
                patched_events: attribution.patched_events,
            },
            batching: BatchingSummary {
                batches: pipeline.batch.batches,
                late: pipeline.batch.late,
                released_early: pipeline.batch.forced,
            },
            cri: (&pipeline.runtimes.cri).into(),
            docker: (&pipeline.runtimes.docker).into(),
            lost,
            delivery,
        }
    }
}

fn line(
    f: &mut fmt::Formatter<'_>,
    label: &str,
    values: &BTreeMap<&'static str, u64>,
) -> fmt::Result {
    write!(f, "  {label:<24}")?;
    for (name, value) in values {
        write!(f, " {name}={value}")?;
    }
    writeln!(f, " (total {})", values.values().sum::<u64>())
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "zastava-observer summary after {:.1} s",
            self.duration_seconds
        )?;
        line(f, "received", &self.received)?;
        line(f, "written", &self.written)?;
        line(f, "records", &self.records)?;
        line(f, "enrichment", &self.enrichment)?;
        for (name, by_kind) in &self.kernel {
            line(f, &format!("kernel {name}"), by_kind)?;
        }
        let decode = if self.decode_errors.is_empty() {
            BTreeMap::from([("none", 0)])
        } else {
            self.decode_errors.clone()
        };
        line(f, "decode errors", &decode)?;
        writeln!(f, "  {:<24} {}", "unresolved paths", self.unresolved_paths)?;
        let p = &self.provenance;
        writeln!(
            f,
            "  {:<24} paths_from_caller={} addresses_from_caller={} requested_paths_withheld={} \
             walks_truncated={} walks_outside_root={} walks_detached={} walks_failed={} \
             execs_without_code_id={}",
            "provenance",
            p.paths_from_caller,
            p.addresses_from_caller,
            p.requested_paths_withheld,
            p.walks_truncated,
            p.walks_outside_root,
            p.walks_detached,
            p.walks_failed,
            p.execs_without_code_id
        )?;
        writeln!(
            f,
            "  {:<24} seeded={} loaded_late={} unknown={} swept={}",
            "processes",
            self.processes.seeded,
            self.processes.loaded_late,
            self.processes.unknown,
            self.processes.swept
        )?;
        writeln!(
            f,
            "  {:<24} unknown_cgroups={} filtered_in_userspace={} containers_without_digest={} patched_events={}",
            "attribution",
            self.attribution.unknown_cgroups,
            self.attribution.filtered_in_userspace,
            self.attribution.containers_without_digest,
            self.attribution.patched_events
        )?;
        writeln!(
            f,
            "  {:<24} batches={} late={} released_early={}",
            "batching", self.batching.batches, self.batching.late, self.batching.released_early
        )?;
        for (name, runtime) in [("container runtime", &self.cri), ("docker", &self.docker)] {
            writeln!(
                f,
                "  {:<24} endpoint={} runtime={} connected={} disconnects={}",
                name,
                runtime.endpoint.as_deref().unwrap_or("none"),
                runtime.runtime.as_deref().unwrap_or("none"),
                runtime.connected,
                runtime.disconnects
            )?;
        }
        writeln!(f, "  {:<24} {}", "lost before decoding", self.lost)?;
        let d = &self.delivery;
        let dropped: u64 = d.dropped.values().sum();
        write!(
            f,
            "  {:<24} seen={} shipped={} dropped={}{} in_flight={} (spool: {} batches) {}",
            "event account",
            d.seen,
            d.shipped,
            dropped,
            by_stage(&d.dropped),
            d.in_flight(),
            d.spool_batches,
            if d.balanced() {
                "balanced"
            } else {
                "UNBALANCED"
            }
        )?;
        for (name, sink) in &d.sinks {
            write!(
                f,
                "\n  {:<24} shipped={} dropped={}{} in_flight={} (spool: {} batches)",
                format!("sink {name}"),
                sink.shipped,
                sink.dropped.values().sum::<u64>(),
                by_stage(&sink.dropped),
                d.in_flight_pipeline + sink.in_flight_spool,
                sink.pending_batches
            )?;
        }
        Ok(())
    }
}
