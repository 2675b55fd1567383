//! Accounting for repeats the in-kernel dedup held back.
//!
//! Per CPU and edge, the kernel counts held-back repeats in a counter that only grows. The
//! daemon remembers, per (edge, CPU), how much of that counter it has reported, and
//! reports only the difference — whether it learns the counter from a report of the edge
//! or from reading the map for an edge that went quiet. Reading the same value twice, in
//! either order, therefore never counts a repeat twice. What the map lost to LRU eviction
//! before it was read is the difference between the kernel's global `Deduplicated` counter
//! and what was reported; it is counted at shutdown.

use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState;
use observer_common::{DedupKey, DedupState};

use crate::record::HeldRepeats;

#[derive(Debug, Default)]
pub struct DedupAccount {
    /// Keyed by the kernel's own hash of an edge and a CPU: a fast hasher, seeded per
    /// process (this map is looked up for every report and every entry of every read).
    reported: HashMap<(DedupKey, u32), u64, RandomState>,
    /// Repeats reported since start.
    total: u64,
}

impl DedupAccount {
    pub fn total(&self) -> u64 {
        self.total
    }

    fn take(&mut self, key: DedupKey, cpu: u32, cumulative: u64) -> u64 {
        let reported = self.reported.entry((key, cpu)).or_insert(0);
        // A smaller value than reported means the entry was evicted and created again.
        let delta = if cumulative >= *reported {
            cumulative - *reported
        } else {
            cumulative
        };
        *reported = cumulative;
        self.total += delta;
        delta
    }

    /// A report of an edge says the kernel held back `cumulative` repeats on `cpu` so far:
    /// how many of them are new.
    pub fn on_report(&mut self, key: DedupKey, cpu: u32, cumulative: u64) -> u64 {
        self.take(key, cpu, cumulative)
    }

    /// Reads the kernel map: edges whose last repeat is at least `quiet_ns` old (all of
    /// them, with 0) and that hold repeats not reported yet. Entries no longer in the map
    /// are forgotten.
    pub fn sweep(
        &mut self,
        entries: &[(DedupKey, u32, DedupState)],
        now_ns: u64,
        quiet_ns: u64,
    ) -> Vec<(DedupKey, HeldRepeats)> {
        let present: HashSet<(DedupKey, u32), RandomState> =
            entries.iter().map(|(k, cpu, _)| (*k, *cpu)).collect();
        self.reported.retain(|k, _| present.contains(k));
        let mut found: HashMap<DedupKey, HeldRepeats, RandomState> = HashMap::default();
        for (key, cpu, state) in entries {
            let reported = self.reported.get(&(*key, *cpu)).copied().unwrap_or(0);
            if state.suppressed == reported || now_ns.saturating_sub(state.last_ns) < quiet_ns {
                continue;
            }
            let count = self.take(*key, *cpu, state.suppressed);
            if count == 0 {
                continue;
            }
            let held = found.entry(*key).or_insert(HeldRepeats {
                count: 0,
                first_ns: u64::MAX,
                last_ns: 0,
            });
            held.count += count;
            // A report already took this run's times; the quiet run then has none.
            let (first, last) = if state.first_ns == 0 {
                (state.last_report_ns, state.last_report_ns)
            } else {
                (state.first_ns, state.last_ns)
            };
            held.first_ns = held.first_ns.min(first);
            held.last_ns = held.last_ns.max(last);
        }
        found.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: DedupKey = DedupKey {
        cgroup_id: 7,
        hash: 42,
    };

    fn state(suppressed: u64, first: u64, last: u64) -> DedupState {
        DedupState {
            last_report_ns: 100,
            first_ns: first,
            last_ns: last,
            suppressed,
        }
    }

    #[test]
    fn reports_and_sweeps_count_each_repeat_once_in_any_order() {
        let mut a = DedupAccount::default();
        // A report says 3 held back so far on CPU 0.
        assert_eq!(a.on_report(KEY, 0, 3), 3);
        // The sweep sees 5 on CPU 0 and 2 on CPU 1, both quiet: 2 + 2 new.
        let swept = a.sweep(
            &[(KEY, 0, state(5, 200, 300)), (KEY, 1, state(2, 250, 260))],
            10_000,
            1000,
        );
        assert_eq!(
            swept,
            vec![(
                KEY,
                HeldRepeats {
                    count: 4,
                    first_ns: 200,
                    last_ns: 300
                }
            )]
        );
        // A report still in flight carrying 5 adds nothing.
        assert_eq!(a.on_report(KEY, 0, 5), 0);
        // Nothing new: nothing to sweep.
        assert!(a
            .sweep(
                &[(KEY, 0, state(5, 0, 0)), (KEY, 1, state(2, 0, 0))],
                20_000,
                1000
            )
            .is_empty());
        assert_eq!(a.total(), 3 + 4);
    }

    #[test]
    fn busy_edges_are_left_to_their_next_report() {
        let mut a = DedupAccount::default();
        assert!(a
            .sweep(&[(KEY, 0, state(9, 9_500, 9_900))], 10_000, 1000)
            .is_empty());
        // At shutdown everything is taken.
        assert_eq!(
            a.sweep(&[(KEY, 0, state(9, 9_500, 9_900))], 10_000, 0)[0]
                .1
                .count,
            9
        );
    }

    #[test]
    fn an_entry_created_again_after_eviction_counts_from_zero() {
        let mut a = DedupAccount::default();
        assert_eq!(a.on_report(KEY, 0, 10), 10);
        // Evicted (absent from a sweep), then back with a small count.
        a.sweep(&[], 10_000, 0);
        assert_eq!(a.on_report(KEY, 0, 2), 2);
        // Or seen again without a sweep in between: smaller than reported.
        assert_eq!(a.on_report(KEY, 0, 1), 1);
        assert_eq!(a.total(), 13);
    }
}
