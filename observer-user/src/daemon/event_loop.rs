//! The event loop: read the ring buffer when the probes wake the daemon (and on a short
//! tick, for records that came without a wakeup), apply the runtime watcher's updates as
//! they arrive, release events whose wait for attribution ran out, report repeats of
//! edges that went quiet (read from the kernel four times a second while it holds any),
//! and once a second warn about kernel-side losses and hand freed heap back to the system.
//! Ends on SIGINT, SIGTERM or the deadline.

use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use observer_common::Counter;
use tokio::io::unix::{AsyncFd, AsyncFdReadyMutGuard};
use tracing::{info, warn};

use super::{memory::FreedHeap, RunError, Running};
use crate::{
    kernel::{KernelCounters, Probes},
    pipeline::Pipeline,
    workload::watcher::Update,
};

/// Records handled per wake-up before the loop checks for signals and timers again.
pub(super) const DRAIN_BUDGET: usize = 64 * 1024;
/// How often held events are checked against their deadline, and the ring buffer is read
/// for records that came without a wakeup.
const ATTRIBUTION_TICK: Duration = Duration::from_millis(25);
/// How often the kernel's dedup map is read for repeats of edges that went quiet (while
/// it holds any): the delay it adds to their record, beyond the quiet time itself.
const QUIET_REPEATS_EVERY: Duration = Duration::from_millis(250);
const SWEEP_EVERY: Duration = Duration::from_secs(30);
const RESYNC_EVERY: Duration = Duration::from_secs(60);

impl Running {
    pub(super) async fn run_until_stopped(
        &mut self,
        duration: Option<Duration>,
    ) -> Result<(), RunError> {
        let deadline = duration.map(|d| tokio::time::Instant::now() + d);
        let mut second = tokio::time::interval(Duration::from_secs(1));
        let mut attribution_tick = tokio::time::interval(ATTRIBUTION_TICK);
        attribution_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut repeats_tick = tokio::time::interval(QUIET_REPEATS_EVERY);
        repeats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut chores = Chores {
            last_sweep: Instant::now(),
            last_resync: Instant::now(),
        };
        let mut freed = FreedHeap::start();
        // Disjoint borrows: the select arms each work on their own parts.
        let Running {
            pipeline,
            probes,
            ring,
            updates,
            dedup_window_ns,
            reported,
            sigint,
            sigterm,
            ..
        } = self;
        loop {
            tokio::select! {
                guard = ring_ready(ring) => {
                    let guard = guard.map_err(RunError::Poll)?;
                    on_ring_ready(pipeline, probes.as_mut(), guard)?;
                }
                update = next_update(updates) => match update {
                    Some(update) => {
                        pipeline.on_update(update, probes.as_mut()).map_err(RunError::Output)?;
                        pipeline.flush().map_err(RunError::Output)?;
                    }
                    None => *updates = None,
                },
                _ = attribution_tick.tick() => {
                    on_attribution_tick(pipeline, probes.as_mut(), ring.as_mut())?;
                }
                _ = repeats_tick.tick() => {
                    if let Some(probes) = probes.as_ref() {
                        on_repeats_tick(pipeline, probes, *dedup_window_ns)?;
                    }
                }
                _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
                _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
                () = sleep_until(deadline) => { info!("duration reached: shutting down"); break; }
                _ = second.tick() => {
                    if let Some(probes) = probes.as_ref() {
                        on_second(pipeline, probes, reported);
                    }
                    chores.run(pipeline);
                    freed.check();
                }
            }
        }
        Ok(())
    }
}

/// The probes woke the daemon: take what the ring holds (up to the budget).
fn on_ring_ready(
    pipeline: &mut Pipeline,
    probes: Option<&mut Probes>,
    mut guard: AsyncFdReadyMutGuard<'_, RingBuf<MapData>>,
) -> Result<(), RunError> {
    let handled = pipeline
        .drain(guard.get_inner_mut(), DRAIN_BUDGET)
        .map_err(RunError::Output)?;
    if handled < DRAIN_BUDGET {
        guard.clear_ready();
    }
    if let Some(probes) = probes {
        pipeline.apply_marks(probes);
    }
    pipeline.flush().map_err(RunError::Output)
}

/// The probes wake the daemon per batch of records, not per record: what came since the
/// last wakeup is read here; events whose wait for attribution ran out leave.
fn on_attribution_tick(
    pipeline: &mut Pipeline,
    probes: Option<&mut Probes>,
    ring: Option<&mut AsyncFd<RingBuf<MapData>>>,
) -> Result<(), RunError> {
    if let Some(ring) = ring {
        pipeline
            .drain(ring.get_mut(), DRAIN_BUDGET)
            .map_err(RunError::Output)?;
        if let Some(probes) = probes {
            pipeline.apply_marks(probes);
        }
    }
    pipeline.on_tick().map_err(RunError::Output)?;
    pipeline.flush().map_err(RunError::Output)
}

/// Once a second: kernel losses into the account (and the log).
fn on_second(pipeline: &mut Pipeline, probes: &Probes, reported: &mut KernelCounters) {
    let Ok(now) = probes.counters() else {
        return;
    };
    warn_on_new_losses(reported, &now);
    pipeline.account_kernel(&now);
    *reported = now;
}

/// While the kernel holds repeats: those of edges that went quiet, so they are not left
/// waiting for a report that may never come.
fn on_repeats_tick(
    pipeline: &mut Pipeline,
    probes: &Probes,
    dedup_window_ns: u64,
) -> Result<(), RunError> {
    if dedup_window_ns == 0 {
        return Ok(());
    }
    let Ok(now) = probes.counters() else {
        return Ok(());
    };
    if pipeline.repeats_held(&now) > 0 {
        if let Ok(entries) = probes.dedup_entries() {
            pipeline
                .sweep_repeats(&entries, dedup_window_ns)
                .map_err(RunError::Output)?;
        }
    }
    Ok(())
}

/// Slow housekeeping: the process table sweep and the clock resync.
struct Chores {
    last_sweep: Instant,
    last_resync: Instant,
}

impl Chores {
    fn run(&mut self, pipeline: &mut Pipeline) {
        if self.last_sweep.elapsed() >= SWEEP_EVERY {
            pipeline.sweep_processes();
            self.last_sweep = Instant::now();
        }
        if self.last_resync.elapsed() >= RESYNC_EVERY {
            pipeline.resync_clock();
            self.last_resync = Instant::now();
        }
    }
}

/// Waits until the ring buffer has records; never, without probes.
async fn ring_ready(
    ring: &mut Option<AsyncFd<RingBuf<MapData>>>,
) -> std::io::Result<AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match ring {
        Some(ring) => ring.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// The watcher's next update; never, without a watcher.
async fn next_update(updates: &mut Option<tokio::sync::mpsc::Receiver<Update>>) -> Option<Update> {
    match updates {
        Some(updates) => updates.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Losses are never silent: each second with new kernel-side drops logs a warning.
pub(super) fn warn_on_new_losses(before: &KernelCounters, now: &KernelCounters) {
    let hints = [
        (
            Counter::RingFull,
            "the reader fell behind; consider a larger --ring-buffer-bytes",
        ),
        (
            Counter::PendingMapFull,
            "too many syscalls in flight at once",
        ),
    ];
    for (counter, hint) in hints {
        let new = now.total(counter).saturating_sub(before.total(counter));
        if new > 0 {
            warn!(
                "{new} events lost in the kernel ({}, total {}): {hint}",
                counter.name(),
                now.total(counter)
            );
        }
    }
}
