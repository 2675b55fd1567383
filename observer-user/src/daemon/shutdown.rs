//! Shutdown: detach every program, drain the ring buffer until it is empty, report the
//! repeats the kernel still holds, let events still waiting for attribution leave, release
//! every held batch, give the sinks their grace period to deliver, and account for it all.

use std::time::{Duration, Instant};

use tracing::warn;

use super::{
    event_loop::{warn_on_new_losses, DRAIN_BUDGET},
    RunError, Running,
};
use crate::{kernel::KernelCounters, ops::server, ops::Summary};

impl Running {
    pub(super) async fn shut_down(mut self, started: Instant) -> Result<Summary, RunError> {
        let counters = self.drain_kernel()?;
        self.pipeline.finish().map_err(RunError::Output)?;
        server::set_ready(&self.ready, false);
        if let Some(sinks) = self.sinks.take() {
            // Every sink delivers what it can within the grace period; the rest stays
            // spooled for the next start.
            let grace = self.shutdown_grace;
            let _ = sinks.stop.send(Some(Instant::now() + grace));
            let all = futures_util::future::join_all(sinks.tasks);
            if tokio::time::timeout(grace + Duration::from_secs(1), all)
                .await
                .is_err()
            {
                warn!("a sink did not stop within {grace:?}; what it had not delivered stays in the spool");
            }
            let left = self.delivery.snapshot();
            if left.in_flight_spool > 0 {
                warn!(
                    "{} events in {} spooled batches were not delivered within the shutdown grace period ({grace:?}); they stay in the spool and are sent after the next start",
                    left.in_flight_spool, left.spool_batches
                );
            }
        }
        Ok(Summary::new(
            started.elapsed().as_secs_f64(),
            &counters,
            &self.pipeline.stats(),
            self.delivery.snapshot(),
        ))
    }

    /// Stops producing, takes everything already submitted, and reads the final counters.
    fn drain_kernel(&mut self) -> Result<KernelCounters, RunError> {
        let (Some(probes), Some(ring)) = (self.probes.as_mut(), self.ring.as_mut()) else {
            return Ok(KernelCounters::default());
        };
        probes.detach();
        let ring = ring.get_mut();
        while self
            .pipeline
            .drain(ring, DRAIN_BUDGET)
            .map_err(RunError::Output)?
            > 0
        {}
        let counters = probes.counters()?;
        warn_on_new_losses(&self.reported, &counters);
        self.pipeline.account_kernel(&counters);
        if self.dedup_window_ns > 0 {
            match probes.dedup_entries() {
                Ok(entries) => self
                    .pipeline
                    .sweep_repeats(&entries, 0)
                    .map_err(RunError::Output)?,
                Err(err) => warn!("cannot read the repeats the kernel still holds: {err}"),
            }
            self.pipeline.reconcile_repeats(&counters);
        }
        Ok(counters)
    }
}
