//! The account given at shutdown: what was received, written and lost, and where.

use std::{collections::BTreeMap, fmt};

use observer_common::{Counter, EventKind};
use serde::Serialize;

use crate::{enrich::EnrichStats, event::EdgeType, probes::KernelCounters, proctable::TableStats};

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub duration_seconds: f64,
    /// Records received from the kernel, by kind.
    pub received: BTreeMap<&'static str, u64>,
    /// Events written, by edge type.
    pub written: BTreeMap<&'static str, u64>,
    /// Kernel counters by name, then by kind.
    pub kernel: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// Records rejected by the decoder, by reason.
    pub decode_errors: BTreeMap<&'static str, u64>,
    pub unresolved_paths: u64,
    pub processes: ProcessSummary,
    /// Events lost anywhere: ring full + pairing map full + rejected records.
    pub lost: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSummary {
    pub seeded: u64,
    pub loaded_late: u64,
    pub unknown: u64,
    pub swept: u64,
}

impl Summary {
    pub fn new(
        duration_seconds: f64,
        kernel: &KernelCounters,
        enrich: &EnrichStats,
        decode_errors: &BTreeMap<&'static str, u64>,
        table: TableStats,
    ) -> Self {
        let received = EventKind::ALL
            .iter()
            .map(|&k| (k.name(), enrich.received(k)))
            .collect();
        let written = EdgeType::ALL
            .iter()
            .map(|&e| (e.name(), enrich.emitted(e)))
            .collect();
        let kernel_map = Counter::ALL
            .iter()
            .map(|&c| {
                let by_kind = EventKind::ALL
                    .iter()
                    .map(|&k| (k.name(), kernel.get(c, k)))
                    .collect();
                (c.name(), by_kind)
            })
            .collect();
        let lost = kernel.total(Counter::RingFull)
            + kernel.total(Counter::PendingMapFull)
            + decode_errors.values().sum::<u64>();
        Summary {
            duration_seconds,
            received,
            written,
            kernel: kernel_map,
            decode_errors: decode_errors.clone(),
            unresolved_paths: enrich.unresolved_paths,
            processes: ProcessSummary {
                seeded: table.seeded,
                loaded_late: table.loaded_late,
                unknown: table.unknown,
                swept: table.swept,
            },
            lost,
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
        writeln!(
            f,
            "  {:<24} seeded={} loaded_late={} unknown={} swept={}",
            "processes",
            self.processes.seeded,
            self.processes.loaded_late,
            self.processes.unknown,
            self.processes.swept
        )?;
        write!(f, "  {:<24} {}", "lost events", self.lost)
    }
}
