//! Reports of the edges the kernel deduplicates: each report takes the repeats it newly
//! stands for, and is remembered (the most recent 32 Ki) so that repeats of an edge that
//! went quiet, read later from the kernel's map, are reported as records of that edge.
//! Hands on those records, and how many repeats could not be named.

use observer_common::{DedupKey, DedupState, Repeats};

use super::Tracker;
use crate::record::{EdgeDetail, EdgeEvent, HeldRepeats, ProcessSnapshot};

/// Edges remembered for naming held repeats (the kernel map holds 16 Ki per CPU).
pub(super) const REPORTS_CAPACITY: usize = 32 * 1024;

impl Tracker {
    /// Repeats reported so far (from reports and sweeps).
    pub fn repeats_reported(&self) -> u64 {
        self.dedup.total()
    }

    /// A report of a deduplicated edge: takes the repeats it newly stands for, and
    /// remembers it to name later repeats of the edge.
    pub(super) fn deduplicated(&mut self, edge: &mut EdgeEvent, repeats: Repeats) {
        if repeats.hash == 0 {
            return;
        }
        let key = DedupKey {
            cgroup_id: edge.cgroup_id,
            hash: repeats.hash,
        };
        let count = self.dedup.on_report(key, repeats.cpu, repeats.cumulative);
        if count > 0 {
            let first = if repeats.first_ns == 0 {
                edge.boot_ns
            } else {
                repeats.first_ns
            };
            edge.repeats = HeldRepeats {
                count,
                first_ns: first,
                last_ns: repeats.last_ns.max(first),
            };
        }
        edge.dedup_key = Some(key);
        self.reports.insert(key, Box::new(Remembered::of(edge)));
    }

    /// Repeats of edges that went quiet (`quiet_ns` since their last repeat; 0: all), read
    /// from the kernel map: events standing for them, and how many could not be named
    /// because their edge's report is no longer remembered.
    pub fn sweep_repeats(
        &mut self,
        entries: &[(DedupKey, u32, DedupState)],
        now_ns: u64,
        quiet_ns: u64,
    ) -> (Vec<EdgeEvent>, u64) {
        let mut events = Vec::new();
        let mut unnamed = 0;
        for (key, held) in self.dedup.sweep(entries, now_ns, quiet_ns) {
            match self.reports.get(&key) {
                Some(report) => {
                    events.push(report.repeats(key, self.next_seq, held));
                    self.next_seq += 1;
                }
                None => unnamed += held.count,
            }
        }
        (events, unnamed)
    }
}

/// What the repeats of an edge share with its last report, remembered to report them once
/// the edge went quiet: the process, the edge and the executable's build-id. The name a
/// repeat was asked by, and the directory it was asked from, are not known (only that the
/// edge — the file, the address — repeated), so they are not kept; nor is what each repeat
/// record has of its own (sequence number, time, counts). Up to 32 Ki are remembered, each
/// boxed so that the table's slots stay small whether full or not.
#[derive(Debug)]
pub(super) struct Remembered {
    process: ProcessSnapshot,
    detail: EdgeDetail,
    code_id: Option<String>,
    memory_shared: bool,
    files_shared: bool,
}

impl Remembered {
    /// The report's shared part. The requested name and the working directory are set
    /// aside while it is copied, so a new edge (this runs for every one) does not copy them
    /// only to drop them.
    fn of(edge: &mut EdgeEvent) -> Self {
        let requested = match &mut edge.detail {
            EdgeDetail::Exec { requested, .. } | EdgeDetail::Open { requested, .. } => {
                requested.take()
            }
            EdgeDetail::Connect { .. } => None,
        };
        let cwd = edge.process.cwd.take();
        let remembered = Remembered {
            process: edge.process.clone(),
            detail: edge.detail.clone(),
            code_id: edge.code_id.clone(),
            memory_shared: edge.memory_shared,
            files_shared: edge.files_shared,
        };
        edge.process.cwd = cwd;
        if let EdgeDetail::Exec { requested: r, .. } | EdgeDetail::Open { requested: r, .. } =
            &mut edge.detail
        {
            *r = requested;
        }
        remembered
    }

    /// A record standing for `held` repeats of the edge of `key`.
    fn repeats(&self, key: DedupKey, seq: u64, held: HeldRepeats) -> EdgeEvent {
        EdgeEvent {
            seq,
            boot_ns: held.last_ns,
            cgroup_id: key.cgroup_id,
            process: self.process.clone(),
            detail: self.detail.clone(),
            code_id: self.code_id.clone(),
            repeats: held,
            repeats_only: true,
            dedup_key: Some(key),
            memory_shared: self.memory_shared,
            files_shared: self.files_shared,
        }
    }
}
