//! `zastava-observer run`: load and attach the probes, then stream the ring buffer through
//! decode → enrich → NDJSON until a signal or the deadline, and account for every record.

use std::{
    collections::BTreeMap,
    io,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use observer_common::Counter;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};
use tracing::{info, warn};

use crate::{
    clock::BootClock,
    decode::decode,
    enrich::Enricher,
    host::HostIdentity,
    probes::{KernelCounters, ProbeConfig, ProbeError, Probes, PROBES_OBJECT},
    proctable::ProcessTable,
    sink::{NdjsonSink, Output},
    summary::Summary,
    tracefs::{self, Tracefs, TracefsError},
};

/// Records handled per wake-up before the loop checks for signals and timers again.
const DRAIN_BUDGET: usize = 64 * 1024;
const SWEEP_EVERY: Duration = Duration::from_secs(30);
const RESYNC_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub output: Output,
    pub duration: Option<Duration>,
    pub ring_buffer_bytes: u32,
    pub stats_json: Option<PathBuf>,
    /// Root of the host filesystem (for machine-id, os-release).
    pub host_root: PathBuf,
    /// The host's /proc.
    pub proc_root: PathBuf,
    /// Report the daemon's own activity (diagnostics only).
    pub observe_self: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("cannot write events: {0}")]
    Output(#[source] io::Error),
    #[error("cannot watch the ring buffer: {0}")]
    Poll(#[source] io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signal(#[source] io::Error),
    #[error("cannot write the summary to {path}: {source}")]
    StatsJson {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The stages a record passes through, and what they counted.
struct Pipeline {
    enricher: Enricher,
    sink: NdjsonSink,
    decode_errors: BTreeMap<&'static str, u64>,
}

impl Pipeline {
    /// Handles what is in the ring now, up to `budget` records. Returns how many.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, budget: usize) -> io::Result<usize> {
        let mut handled = 0;
        while handled < budget {
            let Some(item) = ring.next() else { break };
            handled += 1;
            match decode(&item) {
                Ok(event) => {
                    let sink = &mut self.sink;
                    self.enricher.handle(&event, |e| sink.write(e))?;
                }
                Err(err) => {
                    let count = self.decode_errors.entry(err.reason()).or_default();
                    *count += 1;
                    // The first of each kind is logged in full; the rest only counted.
                    if *count == 1 {
                        warn!("skipping a malformed ring buffer record: {err}");
                    }
                }
            }
        }
        Ok(handled)
    }
}

pub async fn run(options: RunOptions) -> Result<Summary, RunError> {
    let started = Instant::now();
    let (tracefs, mounted) = Tracefs::find_or_mount()?;
    if mounted {
        info!("mounted tracefs at {}", tracefs.root().display());
    }
    let offsets = tracefs::probe_offsets(&tracefs)?;
    let host = HostIdentity::read(&options.host_root);
    for warning in &host.warnings {
        warn!("{warning}");
    }

    let self_tgid = if options.observe_self {
        0
    } else {
        std::process::id()
    };
    let mut probes = Probes::load(
        PROBES_OBJECT,
        &ProbeConfig {
            ring_buffer_bytes: options.ring_buffer_bytes,
            self_tgid,
            offsets,
        },
    )?;
    let ring = probes.take_ring()?;
    // Open the output before attaching so a bad path fails before any event is produced.
    let sink = NdjsonSink::open(&options.output).map_err(RunError::Output)?;
    probes.attach()?;

    // Seed after attaching: a process started in between is then seen by the probes, the
    // seed, or both, never by neither.
    let mut table = ProcessTable::new(&options.proc_root);
    let seeded = table.seed();
    let mut pipeline = Pipeline {
        enricher: Enricher::new(table, host, BootClock::new()),
        sink,
        decode_errors: BTreeMap::new(),
    };

    // SAFETY: the ring buffer owns its fd, which stays open for the AsyncFd's lifetime.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| RunError::Poll(io::Error::from(e)))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut last_sweep, mut last_resync) = (Instant::now(), Instant::now());
    let mut reported = KernelCounters::default();

    info!(
        programs = probes.attached(),
        processes = seeded,
        ring_buffer_bytes = options.ring_buffer_bytes,
        "observer ready"
    );

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(RunError::Poll)?;
                let handled = pipeline
                    .drain(guard.get_inner_mut(), DRAIN_BUDGET)
                    .map_err(RunError::Output)?;
                if handled < DRAIN_BUDGET {
                    guard.clear_ready();
                }
                pipeline.sink.flush().map_err(RunError::Output)?;
            }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            () = sleep_until(deadline) => { info!("duration reached: shutting down"); break; }
            _ = tick.tick() => {
                pipeline.sink.flush().map_err(RunError::Output)?;
                if let Ok(now) = probes.counters() {
                    warn_on_new_losses(&reported, &now);
                    reported = now;
                }
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    pipeline.enricher.table_mut().sweep();
                    last_sweep = Instant::now();
                }
                if last_resync.elapsed() >= RESYNC_EVERY {
                    pipeline.enricher.clock_mut().resync();
                    last_resync = Instant::now();
                }
            }
        }
    }

    // Stop producing, then take everything already submitted.
    probes.detach();
    let ring = ring.get_mut();
    while pipeline
        .drain(ring, DRAIN_BUDGET)
        .map_err(RunError::Output)?
        > 0
    {}
    pipeline.sink.flush().map_err(RunError::Output)?;

    let counters = probes.counters()?;
    warn_on_new_losses(&reported, &counters);
    let summary = Summary::new(
        started.elapsed().as_secs_f64(),
        &counters,
        &pipeline.enricher.stats(),
        &pipeline.decode_errors,
        pipeline.enricher.table().stats(),
    );
    if let Some(path) = &options.stats_json {
        let json = serde_json::to_vec_pretty(&summary).map_err(io::Error::other);
        json.and_then(|bytes| std::fs::write(path, bytes))
            .map_err(|source| RunError::StatsJson {
                path: path.clone(),
                source,
            })?;
    }
    Ok(summary)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Losses are never silent: each second with new kernel-side drops logs a warning.
fn warn_on_new_losses(before: &KernelCounters, now: &KernelCounters) {
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
