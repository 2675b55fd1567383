//! The pipeline: ring buffer records → decode → track → attribute → NDJSON, and the
//! runtime watcher's updates into attribution. One task owns all of it, so the stages need
//! no locks and records of one process keep their order.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{self, Write as _},
    sync::Arc,
    time::Instant,
};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;
use tracing::{info, warn};

use observer_common::{Counter, DedupKey, DedupState, EventKind};

use crate::{
    attribution::{Attributor, Output},
    batch::{Batch, Batcher, Item, Record},
    clock::BootClock,
    containers::PodInfo,
    decode::{decode, KernelEvent},
    delivery::Delivery,
    event::{Lifecycle, RecordWriter},
    host::HostIdentity,
    probes::KernelCounters,
    probes::Probes,
    sink::NdjsonSink,
    spool::SpoolEntry,
    tracker::Tracker,
    watcher::Update,
};

/// Records written, by type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Edge records by edge type (index = `EdgeType::index`).
    pub edges: [u64; 3],
    /// Edge occurrences those records stand for (merged repeats included).
    pub edge_occurrences: u64,
    pub container_starts: u64,
    pub container_stops: u64,
    pub patches: u64,
}

/// The runtime connection, as the summary reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CriStatus {
    pub endpoint: Option<String>,
    pub runtime: Option<String>,
    pub connected: bool,
    pub disconnects: u64,
}

/// The processing stages, in order.
pub struct Stages {
    pub tracker: Tracker,
    pub attributor: Attributor,
    pub batcher: Batcher,
}

/// Counts gathered between two updates of the shared account.
#[derive(Default)]
struct Unpublished {
    seen: u64,
    dropped: BTreeMap<&'static str, u64>,
}

/// Bounds the distinct values a metric label takes; the rest are reported as `other`.
struct LabelLimit {
    max: usize,
    seen: HashSet<String>,
}

impl LabelLimit {
    fn value<'a>(&mut self, value: &'a str) -> &'a str {
        if self.seen.contains(value) {
            return value;
        }
        if self.seen.len() < self.max {
            self.seen.insert(value.to_owned());
            return value;
        }
        "other"
    }
}

/// Where a closed batch goes besides the NDJSON file.
pub struct Shipping {
    pub delivery: Arc<Delivery>,
    /// Batches are spooled for the backend; without one, a written batch is shipped.
    pub backend: bool,
    pub max_label_values: usize,
}

pub struct Pipeline {
    pub tracker: Tracker,
    pub attributor: Attributor,
    pub batcher: Batcher,
    sink: NdjsonSink,
    host: HostIdentity,
    clock: BootClock,
    run_id: String,
    requests: Option<mpsc::Sender<String>>,
    out: Vec<Output>,
    decode_errors: BTreeMap<&'static str, u64>,
    written: Written,
    cri: CriStatus,
    shipping: Shipping,
    unpublished: Unpublished,
    kernel_reported: KernelCounters,
    filtered_reported: u64,
    next_batch: u64,
    tenants: LabelLimit,
    components: LabelLimit,
    event_counters: HashMap<(String, String, &'static str), metrics::Counter>,
    /// Reused buffers for a batch's records and body.
    line: Vec<u8>,
    body: Vec<u8>,
}

impl Pipeline {
    pub fn new(
        stages: Stages,
        sink: NdjsonSink,
        host: HostIdentity,
        run_id: String,
        requests: Option<mpsc::Sender<String>>,
        cri: CriStatus,
        shipping: Shipping,
    ) -> Self {
        Pipeline {
            tracker: stages.tracker,
            attributor: stages.attributor,
            batcher: stages.batcher,
            sink,
            host,
            clock: BootClock::new(),
            run_id,
            requests,
            out: Vec::new(),
            decode_errors: BTreeMap::new(),
            written: Written::default(),
            cri,
            tenants: LabelLimit {
                max: shipping.max_label_values,
                seen: HashSet::new(),
            },
            components: LabelLimit {
                max: shipping.max_label_values,
                seen: HashSet::new(),
            },
            shipping,
            unpublished: Unpublished::default(),
            kernel_reported: KernelCounters::default(),
            filtered_reported: 0,
            next_batch: 1,
            event_counters: HashMap::new(),
            line: Vec::with_capacity(1024),
            body: Vec::with_capacity(64 * 1024),
        }
    }

    pub fn decode_errors(&self) -> &BTreeMap<&'static str, u64> {
        &self.decode_errors
    }

    pub fn written(&self) -> Written {
        self.written
    }

    pub fn cri(&self) -> &CriStatus {
        &self.cri
    }

    pub fn clock_mut(&mut self) -> &mut BootClock {
        &mut self.clock
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
                self.unpublished.seen += 1;
                *self.unpublished.dropped.entry("decode").or_default() += 1;
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
        if unnamed > 0 {
            self.unpublished.seen += unnamed;
            *self
                .unpublished
                .dropped
                .entry("dedup_unresolved")
                .or_default() += unnamed;
        }
        self.forward_requests();
        self.write_outputs()?;
        self.publish(None);
        Ok(())
    }

    /// Repeats the kernel held back that were never reported (the map evicted them before
    /// they were read): the kernel's total minus what was reported. Called at shutdown,
    /// after the last sweep.
    pub fn reconcile_repeats(&mut self, kernel: &KernelCounters) {
        let held_back: u64 = [EventKind::Open, EventKind::Connect]
            .iter()
            .map(|&k| kernel.get(Counter::Deduplicated, k))
            .sum();
        let lost = held_back.saturating_sub(self.tracker.repeats_reported());
        if lost > 0 {
            warn!(
                "{lost} repeats held back in the kernel were evicted before they could be reported"
            );
            self.unpublished.seen += lost;
            *self.unpublished.dropped.entry("dedup_evicted").or_default() += lost;
            self.publish(None);
        }
    }

    /// Repeats held back in the kernel and not reported yet (or evicted).
    pub fn repeats_held(&self, kernel: &KernelCounters) -> u64 {
        let held_back: u64 = [EventKind::Open, EventKind::Connect]
            .iter()
            .map(|&k| kernel.get(Counter::Deduplicated, k))
            .sum();
        held_back.saturating_sub(self.tracker.repeats_reported())
    }

    /// Counts edge events the kernel lost (from the probes' counters) as seen and dropped.
    pub fn account_kernel(&mut self, now: &KernelCounters) {
        for (counter, stage) in [
            (Counter::RingFull, "kernel_ring_full"),
            (Counter::PendingMapFull, "kernel_map_full"),
        ] {
            let edges = |c: &KernelCounters| -> u64 {
                [EventKind::Exec, EventKind::Open, EventKind::Connect]
                    .iter()
                    .map(|&k| c.get(counter, k))
                    .sum()
            };
            let new = edges(now).saturating_sub(edges(&self.kernel_reported));
            if new > 0 {
                self.unpublished.seen += new;
                *self.unpublished.dropped.entry(stage).or_default() += new;
            }
        }
        self.kernel_reported = now.clone();
        self.publish(None);
    }

    /// Brings the shared account up to date — with a closed batch spooled or shipped, if
    /// one is given — in one critical section, so it balances whenever it is read.
    fn publish(&mut self, batch: Option<SpoolEntry>) {
        let filtered = self.attributor.stats().filtered_in_userspace;
        if filtered > self.filtered_reported {
            *self.unpublished.dropped.entry("filtered").or_default() +=
                filtered - self.filtered_reported;
            self.filtered_reported = filtered;
        }
        let in_pipeline = self.attributor.waiting_events() as u64 + self.batcher.held_edges();
        let unpublished = std::mem::take(&mut self.unpublished);
        let delivery = Arc::clone(&self.shipping.delivery);
        let mut state = delivery.lock();
        state.ledger.seen += unpublished.seen;
        for (stage, n) in unpublished.dropped {
            state.ledger.drop(stage, n);
        }
        if let Some(entry) = batch {
            let events = entry.events;
            match state.spool.as_mut() {
                Some(spool) => match spool.append(&entry) {
                    Ok(appended) => {
                        state.ledger.drop("spool_eviction", appended.evicted_events);
                        if appended.evicted_batches > 0 {
                            warn!(
                                "spool full: evicted {} older batches ({} events) to make room (spool.when_full = drop-oldest)",
                                appended.evicted_batches, appended.evicted_events
                            );
                        }
                        if appended.stored {
                            self.shipping.delivery.wake.notify_one();
                        } else {
                            warn!(
                                "spool full: dropped batch {} ({events} events)",
                                entry.batch_id
                            );
                            state.ledger.drop("spool_full", events);
                        }
                    }
                    Err(err) => {
                        warn!(
                            "cannot spool batch {} ({events} events): {err}",
                            entry.batch_id
                        );
                        state.ledger.drop("spool_full", events);
                    }
                },
                None => state.ledger.shipped += events,
            }
        }
        state.ledger.in_pipeline = in_pipeline;
    }

    /// Applies an update from the runtime watcher, marking cgroups for the kernel filter
    /// before anything is said about it.
    pub fn on_update(&mut self, update: Update, mut probes: Option<&mut Probes>) -> io::Result<()> {
        let now = Instant::now();
        match update {
            Update::Pod(pod) => {
                self.attributor
                    .on_pod(std::sync::Arc::clone(&pod), &mut self.out);
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
                self.cri.connected = true;
                self.cri.runtime = Some(format!("{} {}", version.name, version.version));
            }
            Update::Disconnected(_) => {
                self.cri.connected = false;
                self.cri.disconnects += 1;
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
        for batch in self.batcher.drain() {
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
            let (at_ns, record) = match output {
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
                    self.batcher.push(item);
                    continue;
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
                    (
                        at_ns,
                        Record::Lifecycle {
                            lifecycle,
                            container,
                            enrichment,
                        },
                    )
                }
                Output::Patch(container, seqs, enrichment) => (
                    realtime_ns(),
                    Record::Patch {
                        container,
                        seqs,
                        enrichment,
                    },
                ),
            };
            self.batcher.push(Item::new(at_ns, &self.host, record));
        }
        Ok(())
    }

    /// Hands a closed batch to delivery (the spool, when there is a backend), then writes
    /// it to the NDJSON file: a record is never in the file before it is durable.
    fn ship(&mut self, batch: &Batch) -> io::Result<()> {
        let batch_id = format!("{}-{}-{}", self.host.host_id, self.run_id, self.next_batch);
        self.next_batch += 1;
        self.body.clear();
        write!(
            self.body,
            r#"{{"batchId":{},"node":{},"schemaVersion":{},"events":["#,
            serde_json::to_string(&batch_id)?,
            serde_json::to_string(&self.host.node)?,
            crate::event::SCHEMA_VERSION
        )?;
        // All records' JSON, newline-terminated, for the NDJSON file.
        self.line.clear();
        let mut writer = RecordWriter::new(&self.host, &self.run_id);
        for (i, item) in batch.items.iter().enumerate() {
            let start = self.line.len();
            writer.write(&mut self.line, item)?;
            if self.shipping.backend {
                if i > 0 {
                    self.body.push(b',');
                }
                self.body.extend_from_slice(&self.line[start..]);
            }
            self.line.push(b'\n');
        }
        let mut oldest_ns = i128::MAX;
        let mut tally: Vec<(&'static str, Option<&PodInfo>, u64)> = Vec::new();
        for item in &batch.items {
            oldest_ns = oldest_ns.min(item.at_ns);
            let (kind, pod) = self.count_record(item);
            // Records of a workload are adjacent in a batch: counters are looked up once per
            // run of them, not once per record.
            match tally.last_mut() {
                Some((k, p, n)) if *k == kind && same_pod(*p, pod) => *n += item.count,
                _ => tally.push((kind, pod, item.count)),
            }
        }
        for (kind, pod, n) in tally {
            self.count_events(kind, pod, n);
        }
        let events = batch.edge_occurrences();
        let body = if self.shipping.backend {
            self.body.extend_from_slice(b"]}");
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&self.body)?;
            gz.finish()?
        } else {
            // Without a backend, the NDJSON file is where events are delivered.
            let lag_ns = realtime_ns().saturating_sub(oldest_ns).max(0);
            #[allow(clippy::cast_precision_loss, reason = "seconds of lag fit an f64")]
            metrics::histogram!("stella_runtime_events_lag_seconds").record(lag_ns as f64 / 1e9);
            Vec::new()
        };
        self.publish(Some(SpoolEntry {
            batch_id,
            events,
            records: batch.items.len() as u64,
            oldest_ns: i64::try_from(oldest_ns).unwrap_or(i64::MAX),
            body,
        }));
        self.sink.write_lines(&self.line)?;
        self.sink.flush()
    }

    /// Counts a written record; returns its kind and pod for the event counter.
    fn count_record<'a>(&mut self, item: &'a Item) -> (&'static str, Option<&'a PodInfo>) {
        let (kind, pod) = match &item.record {
            Record::Edge { event, attribution } => {
                self.written.edges[event.edge_type().index()] += 1;
                self.written.edge_occurrences += item.count;
                (
                    event.edge_type().name(),
                    attribution.container.as_ref().map(|c| &c.pod),
                )
            }
            Record::Lifecycle {
                lifecycle,
                container,
                ..
            } => {
                let kind = match lifecycle {
                    Lifecycle::Start => {
                        self.written.container_starts += 1;
                        "containerStart"
                    }
                    Lifecycle::Stop => {
                        self.written.container_stops += 1;
                        "containerStop"
                    }
                };
                (kind, Some(&container.pod))
            }
            Record::Patch { container, .. } => {
                self.written.patches += 1;
                ("enrichmentPatch", Some(&container.pod))
            }
        };
        (kind, pod.map(|p| &**p))
    }

    /// `zastava_runtime_events_total{tenant,component,kind}` += `n`.
    fn count_events(&mut self, kind: &'static str, pod: Option<&PodInfo>, n: u64) {
        let identity = pod.map(|p| &p.identity);
        let tenant = self
            .tenants
            .value(identity.and_then(|i| i.tenant.as_deref()).unwrap_or(""))
            .to_owned();
        let component = self
            .components
            .value(identity.and_then(|i| i.component.as_deref()).unwrap_or(""))
            .to_owned();
        let counter = self
            .event_counters
            .entry((tenant, component, kind))
            .or_insert_with_key(|(tenant, component, kind)| {
                metrics::counter!(
                    "zastava_runtime_events_total",
                    "tenant" => tenant.clone(),
                    "component" => component.clone(),
                    "kind" => *kind
                )
            });
        counter.increment(n);
    }
}

fn same_pod(a: Option<&PodInfo>, b: Option<&PodInfo>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => std::ptr::eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Wall-clock time, nanoseconds since the epoch.
fn realtime_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}
