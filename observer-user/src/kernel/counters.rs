//! The probes' per-CPU counters, summed: what the kernel side submitted, lost, filtered and
//! held back, per event kind.

use observer_common::{Counter, EventKind, COUNTER_SLOTS};

/// Totals of the kernel counters, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCounters {
    values: [u64; COUNTER_SLOTS as usize],
}

impl Default for KernelCounters {
    fn default() -> Self {
        KernelCounters {
            values: [0; COUNTER_SLOTS as usize],
        }
    }
}

impl KernelCounters {
    /// Sets the total of one slot of the counters map (`Counter::index`).
    pub fn set(&mut self, index: u32, total: u64) {
        if let Some(slot) = self.values.get_mut(index as usize) {
            *slot = total;
        }
    }

    pub fn get(&self, counter: Counter, kind: EventKind) -> u64 {
        self.values[counter.index(kind) as usize]
    }

    /// A counter summed over every kind.
    pub fn total(&self, counter: Counter) -> u64 {
        EventKind::ALL.iter().map(|&k| self.get(counter, k)).sum()
    }
}
