//! What the kernel side lost or held back, brought into the event account: losses from the
//! probes' counters, and repeats of deduplicated edges read from the kernel's map.

use std::{io, time::Instant};

use observer_common::{Counter, DedupKey, DedupState, EventKind};
use tracing::warn;

use super::Pipeline;
use crate::{
    kernel::{BootClock, KernelCounters},
    output::DropStage,
};

/// Kinds whose records are edges.
const EDGE_KINDS: [EventKind; 3] = [EventKind::Exec, EventKind::Open, EventKind::Connect];
/// Kinds whose repeats the kernel deduplicates.
const DEDUP_KINDS: [EventKind; 2] = [EventKind::Open, EventKind::Connect];

impl Pipeline {
    /// Repeats the kernel holds for edges that went quiet leave as records of their edge.
    /// `quiet_ns` 0 takes everything (at shutdown, after the probes are detached).
    pub fn sweep_repeats(
        &mut self,
        entries: &[(DedupKey, u32, DedupState)],
        quiet_ns: u64,
    ) -> io::Result<()> {
        let now = Instant::now();
        let (events, unnamed) =
            self.tracker
                .sweep_repeats(entries, BootClock::boot_now_ns(), quiet_ns);
        for event in events {
            self.unpublished.seen += event.occurrences();
            self.attributor.on_event(event, now, &mut self.out);
        }
        self.unpublished
            .seen_and_dropped(DropStage::DedupUnresolved, unnamed);
        self.forward_requests();
        self.write_outputs()?;
        self.publish(None);
        Ok(())
    }

    /// Repeats the kernel held back that were never reported (the map evicted them before
    /// they were read): the kernel's total minus what was reported. Called at shutdown,
    /// after the last sweep.
    pub fn reconcile_repeats(&mut self, kernel: &KernelCounters) {
        let lost = self.repeats_held(kernel);
        if lost > 0 {
            warn!(
                "{lost} repeats held back in the kernel were evicted before they could be reported"
            );
            self.unpublished
                .seen_and_dropped(DropStage::DedupEvicted, lost);
            self.publish(None);
        }
    }

    /// Repeats held back in the kernel and not reported yet (or evicted).
    pub fn repeats_held(&self, kernel: &KernelCounters) -> u64 {
        let held_back: u64 = DEDUP_KINDS
            .iter()
            .map(|&k| kernel.get(Counter::Deduplicated, k))
            .sum();
        held_back.saturating_sub(self.tracker.repeats_reported())
    }

    /// Counts edge events the kernel lost (from the probes' counters) as seen and dropped.
    pub fn account_kernel(&mut self, now: &KernelCounters) {
        for (counter, stage) in [
            (Counter::RingFull, DropStage::KernelRingFull),
            (Counter::PendingMapFull, DropStage::KernelMapFull),
        ] {
            let edges =
                |c: &KernelCounters| -> u64 { EDGE_KINDS.iter().map(|&k| c.get(counter, k)).sum() };
            let new = edges(now).saturating_sub(edges(&self.kernel_reported));
            self.unpublished.seen_and_dropped(stage, new);
        }
        self.kernel_reported = now.clone();
        self.publish(None);
    }
}
