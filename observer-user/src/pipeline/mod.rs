//! The pipeline: ring buffer records → decode → track → attribute → batch → output, and
//! the runtime watcher's updates into attribution. One task owns all of it, so the stages
//! need no locks and records of one process keep their order. Hands closed batches to the
//! output stage: the spool (with at least one sink) and the NDJSON file.
//!
//! [`batch`] holds records for the reorder window and sorts them; [`kernel_account`]
//! counts what the kernel lost or held back; [`counting`] keeps the written-record totals
//! and the per-workload event counter.

pub mod batch;
mod counting;
pub mod encode;
mod kernel_account;

use std::{collections::BTreeMap, io, sync::Arc, time::Instant};

use aya::maps::{MapData, RingBuf};
use observer_common::EventKind;
use tokio::sync::mpsc;
use tracing::{info, warn};
use zastava_platform::metrics::{BATCH_RECORDS, EVENTS_LAG};

use crate::{
    kernel::{decode, BootClock, KernelCounters, KernelEvent, Probes},
    output::{
        account::Unpublished, envelope::Envelope, ndjson::NdjsonSink, spool::SpoolEntry, Delivery,
        DropStage,
    },
    process::{table::TableStats, tracker::TrackStats, Tracker},
    record::{HostIdentity, Item, Lifecycle, Record},
    workload::{attribution::AttributionStats, watcher::Update, Attributor, Output, RuntimeKind},
};

use batch::{Batch, Batcher};
use counting::EventCounters;
pub use counting::Written;

/// A runtime connection, as the summary reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStatus {
    pub endpoint: Option<String>,
    pub runtime: Option<String>,
    pub connected: bool,
    pub disconnects: u64,
}

/// The connections to a CRI runtime and to Docker Engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStatuses {
    pub cri: RuntimeStatus,
    pub docker: RuntimeStatus,
}

impl RuntimeStatuses {
    fn of(&mut self, kind: RuntimeKind) -> &mut RuntimeStatus {
        match kind {
            RuntimeKind::Cri => &mut self.cri,
            RuntimeKind::Docker => &mut self.docker,
        }
    }
}

/// The processing stages, in order.
pub struct Stages {
    pub tracker: Tracker,
    pub attributor: Attributor,
    pub batcher: Batcher,
}

/// Where a closed batch goes besides the NDJSON file.
pub struct Shipping {
    pub delivery: Arc<Delivery>,
    /// Batches are spooled for the sinks; without any, a written batch is shipped.
    pub spooled: bool,
    pub max_label_values: usize,
}

/// What the pipeline has done so far, for the summary.
#[derive(Clone, Debug, Default)]
pub struct PipelineStats {
    pub track: TrackStats,
    pub table: TableStats,
    pub attribution: AttributionStats,
    pub written: Written,
    /// Records rejected by the decoder, by reason.
    pub decode_errors: BTreeMap<&'static str, u64>,
    pub runtimes: RuntimeStatuses,
    /// cgroups known (scanned at start, then from the probes).
    pub cgroups: usize,
    pub batch: batch::BatchStats,
}

pub struct Pipeline {
    tracker: Tracker,
    attributor: Attributor,
    batcher: Batcher,
    sink: NdjsonSink,
    host: HostIdentity,
    clock: BootClock,
    run_id: String,
    requests: Option<mpsc::Sender<String>>,
    out: Vec<Output>,
    decode_errors: BTreeMap<&'static str, u64>,
    runtimes: RuntimeStatuses,
    shipping: Shipping,
    unpublished: Unpublished,
    kernel_reported: KernelCounters,
    filtered_reported: u64,
    /// The batcher's late and early-released records already counted in the metrics.
    batch_reported: batch::BatchStats,
    envelope: Envelope,
    counters: EventCounters,
    /// The NDJSON lines of the batch being shipped (reused).
    lines: Vec<u8>,
}

impl Pipeline {
    pub fn new(
        stages: Stages,
        sink: NdjsonSink,
        host: HostIdentity,
        run_id: String,
        requests: Option<mpsc::Sender<String>>,
        runtimes: RuntimeStatuses,
        shipping: Shipping,
    ) -> Self {
        Pipeline {
            tracker: stages.tracker,
            attributor: stages.attributor,
            batcher: stages.batcher,
            sink,
            envelope: Envelope::new(&host, &run_id),
            host,
            clock: BootClock::new(),
            run_id,
            requests,
            out: Vec::new(),
            decode_errors: BTreeMap::new(),
            runtimes,
            counters: EventCounters::new(shipping.max_label_values),
            shipping,
            unpublished: Unpublished::default(),
            kernel_reported: KernelCounters::default(),
            filtered_reported: 0,
            batch_reported: batch::BatchStats::default(),
            lines: Vec::with_capacity(1024),
        }
    }

    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            track: self.tracker.stats(),
            table: self.tracker.table().stats(),
            attribution: self.attributor.stats(),
            written: self.counters.written(),
            decode_errors: self.decode_errors.clone(),
            runtimes: self.runtimes.clone(),
            cgroups: self.attributor.cgroups().len(),
            batch: self.batcher.stats(),
        }
    }

    /// Forgets processes whose exit was lost (the table sweeps entries whose /proc is gone).
    pub fn sweep_processes(&mut self) {
        self.tracker.table_mut().sweep();
    }

    /// Measures the boot-time → UTC offset again (the wall clock may have been stepped).
    pub fn resync_clock(&mut self) {
        self.clock.resync();
    }

    /// Handles what is in the ring now, up to `budget` records. Returns how many.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>, budget: usize) -> io::Result<usize> {
        let now = Instant::now();
        let mut handled = 0;
        while handled < budget {
            let Some(item) = ring.next() else { break };
            handled += 1;
            self.handle_record(&item, now)?;
        }
        self.end_drain()?;
        Ok(handled)
    }

    /// Takes one ring buffer record through decode, tracking and attribution. Output is
    /// written as it accumulates; `end_drain` finishes what a run of records left.
    pub fn handle_record(&mut self, record: &[u8], now: Instant) -> io::Result<()> {
        match decode(record) {
            Ok(KernelEvent::Cgroup(cgroup)) => {
                self.tracker.count(if cgroup.created {
                    EventKind::CgroupMkdir
                } else {
                    EventKind::CgroupRmdir
                });
                let path = String::from_utf8_lossy(cgroup.path).into_owned();
                self.attributor.on_cgroup(cgroup.created, cgroup.id, path);
            }
            Ok(event) => {
                if let Some(edge) = self.tracker.handle(&event) {
                    self.unpublished.seen += edge.occurrences();
                    self.attributor.on_event(edge, now, &mut self.out);
                }
            }
            Err(err) => {
                // The record may not have been an edge; it is counted as one lost,
                // which errs on the side of reporting loss.
                self.unpublished.seen_and_dropped(DropStage::Decode, 1);
                let count = self.decode_errors.entry(err.reason()).or_default();
                *count += 1;
                // The first of each kind is logged in full; the rest only counted.
                if *count == 1 {
                    warn!("skipping a malformed ring buffer record: {err}");
                }
            }
        }
        // Bound what is buffered: write as we go rather than after the whole drain.
        if self.out.len() >= 1024 {
            self.write_outputs()?;
        }
        Ok(())
    }

    /// Completes a run of `handle_record` calls: forwards lookups, writes, publishes.
    pub fn end_drain(&mut self) -> io::Result<()> {
        self.forward_requests();
        self.write_outputs()?;
        self.publish(None);
        Ok(())
    }

    /// Brings the shared account up to date, with a closed batch if one is given.
    fn publish(&mut self, batch: Option<&SpoolEntry>) {
        let filtered = self.attributor.stats().filtered_in_userspace;
        if filtered > self.filtered_reported {
            self.unpublished
                .dropped_at(DropStage::Filtered, filtered - self.filtered_reported);
            self.filtered_reported = filtered;
        }
        let stats = self.batcher.stats();
        for (outcome, now, reported) in [
            ("late", stats.late, &mut self.batch_reported.late),
            (
                "released_early",
                stats.forced,
                &mut self.batch_reported.forced,
            ),
        ] {
            if now > *reported {
                metrics::counter!(BATCH_RECORDS.name, "outcome" => outcome)
                    .increment(now - *reported);
                *reported = now;
            }
        }
        let in_pipeline = self.attributor.waiting_events() as u64 + self.batcher.held_edges();
        self.shipping
            .delivery
            .publish(std::mem::take(&mut self.unpublished), batch, in_pipeline);
    }

    /// Applies an update from the runtime watcher, marking cgroups for the kernel filter
    /// before anything is said about it.
    pub fn on_update(&mut self, update: Update, mut probes: Option<&mut Probes>) -> io::Result<()> {
        let now = Instant::now();
        match update {
            Update::Pod(pod) => {
                self.attributor.on_pod(Arc::clone(&pod), &mut self.out);
                if let Some(probes) = probes.as_deref_mut() {
                    self.apply_marks(probes);
                }
                info!(
                    "pod {}/{} (sandbox {}) workload {} ({})",
                    pod.pod.namespace,
                    pod.pod.name,
                    pod.sandbox_id,
                    pod.identity.id,
                    pod.identity.id_source.as_str()
                );
            }
            Update::Container(info) => {
                self.attributor.on_container(info, &mut self.out);
                if let Some(probes) = probes {
                    self.apply_marks(probes);
                }
            }
            Update::ContainerGone(id) => self.attributor.on_container_gone(&id, now),
            Update::ResolveFailed { id, retry } => {
                self.attributor
                    .on_resolve_failed(&id, retry, now, &mut self.out);
                self.forward_requests();
            }
            Update::Connected(version) => {
                let status = self.runtimes.of(version.kind);
                status.connected = true;
                status.runtime = Some(format!("{} {}", version.name, version.version));
            }
            Update::Disconnected { runtime, .. } => {
                let status = self.runtimes.of(runtime);
                status.connected = false;
                status.disconnects += 1;
            }
        }
        self.write_outputs()
    }

    /// Lets events that waited too long leave as `pending`, and ships due batches.
    pub fn on_tick(&mut self) -> io::Result<()> {
        let now = Instant::now();
        self.attributor.on_tick(now, &mut self.out);
        self.write_outputs()?;
        let now_ns = realtime_ns();
        while let Some(batch) = self.batcher.poll(now_ns, now) {
            self.ship(&batch)?;
        }
        self.publish(None);
        Ok(())
    }

    /// Marks cgroups the namespace filter needs in the kernel.
    pub fn apply_marks(&mut self, probes: &mut Probes) {
        for id in self.attributor.take_marks() {
            if let Err(err) = probes.mark_cgroup(id) {
                warn!("cannot mark cgroup {id} for the namespace filter: {err}");
            }
        }
    }

    /// At shutdown: everything still held leaves, and the sink is flushed.
    pub fn finish(&mut self) -> io::Result<()> {
        self.attributor.drain(&mut self.out);
        self.write_outputs()?;
        while let Some(batch) = self.batcher.drain_next() {
            self.ship(&batch)?;
        }
        self.publish(None);
        self.sink.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }

    fn forward_requests(&mut self) {
        let requests = self.attributor.take_requests();
        if requests.is_empty() {
            return;
        }
        let now = Instant::now();
        for id in requests {
            let sent = self
                .requests
                .as_ref()
                .is_some_and(|tx| tx.try_send(id.clone()).is_ok());
            if !sent {
                // The watcher is gone or swamped: do not hold the events for nothing.
                self.attributor
                    .on_resolve_failed(&id, false, now, &mut self.out);
            }
        }
    }

    /// Hands attributed records to the batcher, stamped with their time.
    fn write_outputs(&mut self) -> io::Result<()> {
        for output in self.out.drain(..) {
            let item = match output {
                Output::Edge(event, attribution) => {
                    // An edge with held-back repeats stands for them too: it spans from the
                    // first repeat to its own report.
                    let own = self.clock.to_utc(event.boot_ns).unix_ns();
                    let repeats = event.repeats;
                    let (first, last) = if repeats.count > 0 {
                        let first = self.clock.to_utc(repeats.first_ns).unix_ns();
                        let last = self.clock.to_utc(repeats.last_ns).unix_ns();
                        if event.repeats_only {
                            (first, last)
                        } else {
                            (first.min(own), own.max(last))
                        }
                    } else {
                        (own, own)
                    };
                    let count = event.occurrences();
                    let mut item =
                        Item::new(first, &self.host, Record::Edge { event, attribution });
                    item.count = count;
                    item.last_ns = last;
                    item
                }
                Output::Lifecycle(lifecycle, container, enrichment) => {
                    let at = match lifecycle {
                        Lifecycle::Start => container.started_at_ns,
                        Lifecycle::Stop => container.finished_at_ns,
                    };
                    let at_ns = if at > 0 {
                        i128::from(at)
                    } else {
                        realtime_ns()
                    };
                    let record = Record::Lifecycle {
                        lifecycle,
                        container,
                        enrichment,
                    };
                    Item::new(at_ns, &self.host, record)
                }
                Output::Patch(container, seqs, enrichment) => {
                    let record = Record::Patch {
                        container,
                        seqs,
                        enrichment,
                    };
                    Item::new(realtime_ns(), &self.host, record)
                }
            };
            self.batcher.push(item);
        }
        Ok(())
    }

    /// Hands a closed batch to delivery (the spool, when there are sinks), then writes
    /// it to the NDJSON file: a record is never in the file before it is durable.
    fn ship(&mut self, batch: &Batch) -> io::Result<()> {
        let batch_id = self.envelope.next_batch_id();
        let spooled = self.shipping.spooled;
        if spooled {
            self.envelope.open(&batch_id)?;
        }
        encode::encode_batch(
            &self.host,
            &self.run_id,
            batch,
            &mut self.lines,
            spooled.then_some(&mut self.envelope),
        )?;
        self.counters.count_batch(&batch.items);
        let oldest_ns = batch
            .items
            .iter()
            .map(|i| i.at_ns)
            .min()
            .unwrap_or(i128::MAX);
        let body = if spooled {
            self.envelope.close()?
        } else {
            // Without a sink, the NDJSON file is where events are delivered.
            let lag_ns = realtime_ns().saturating_sub(oldest_ns).max(0);
            #[allow(clippy::cast_precision_loss, reason = "seconds of lag fit an f64")]
            metrics::histogram!(EVENTS_LAG.name).record(lag_ns as f64 / 1e9);
            Vec::new()
        };
        let entry = SpoolEntry {
            batch_id,
            events: batch.edge_occurrences(),
            records: batch.items.len() as u64,
            oldest_ns: i64::try_from(oldest_ns).unwrap_or(i64::MAX),
            body,
        };
        self.publish(Some(&entry));
        self.sink
            .write_lines(&self.lines, batch.items.len() as u64)?;
        self.sink.flush()
    }
}

/// Wall-clock time, nanoseconds since the epoch.
fn realtime_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}
