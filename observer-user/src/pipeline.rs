//! The pipeline: ring buffer records → decode → track → attribute → NDJSON, and the
//! runtime watcher's updates into attribution. One task owns all of it, so the stages need
//! no locks and records of one process keep their order.

use std::{collections::BTreeMap, io, time::Instant};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    attribution::{Attributor, Output},
    batch::{Batch, Batcher, Item, Record},
    clock::BootClock,
    decode::{decode, KernelEvent},
    event::{Lifecycle, RecordJson},
    host::HostIdentity,
    probes::Probes,
    sink::NdjsonSink,
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
}

impl Pipeline {
    pub fn new(
        stages: Stages,
        sink: NdjsonSink,
        host: HostIdentity,
        run_id: String,
        requests: Option<mpsc::Sender<String>>,
        cri: CriStatus,
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
            match decode(&item) {
                Ok(KernelEvent::Cgroup(cgroup)) => {
                    self.tracker.count(if cgroup.created {
                        observer_common::EventKind::CgroupMkdir
                    } else {
                        observer_common::EventKind::CgroupRmdir
                    });
                    let path = String::from_utf8_lossy(cgroup.path).into_owned();
                    self.attributor.on_cgroup(cgroup.created, cgroup.id, path);
                }
                Ok(event) => {
                    if let Some(edge) = self.tracker.handle(&event) {
                        self.attributor.on_event(edge, now, &mut self.out);
                    }
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
            // Bound what is buffered: write as we go rather than after the whole drain.
            if self.out.len() >= 1024 {
                self.write_outputs()?;
            }
        }
        self.forward_requests();
        self.write_outputs()?;
        Ok(handled)
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
            Update::ResolveFailed(id) => self.attributor.on_resolve_failed(&id, now, &mut self.out),
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
                self.attributor.on_resolve_failed(&id, now, &mut self.out);
            }
        }
    }

    /// Hands attributed records to the batcher, stamped with their time.
    fn write_outputs(&mut self) -> io::Result<()> {
        for output in self.out.drain(..) {
            let (at_ns, record) = match output {
                Output::Edge(event, attribution) => (
                    self.clock.to_utc(event.boot_ns).unix_ns(),
                    Record::Edge { event, attribution },
                ),
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

    /// Writes a closed batch.
    fn ship(&mut self, batch: &Batch) -> io::Result<()> {
        for item in &batch.items {
            self.sink.write(&RecordJson {
                item,
                host: &self.host,
                run_id: &self.run_id,
            })?;
            match &item.record {
                Record::Edge { event, .. } => {
                    self.written.edges[event.edge_type().index()] += 1;
                    self.written.edge_occurrences += item.count;
                }
                Record::Lifecycle {
                    lifecycle: Lifecycle::Start,
                    ..
                } => self.written.container_starts += 1,
                Record::Lifecycle {
                    lifecycle: Lifecycle::Stop,
                    ..
                } => self.written.container_stops += 1,
                Record::Patch { .. } => self.written.patches += 1,
            }
        }
        self.sink.flush()
    }
}

/// Wall-clock time, nanoseconds since the epoch.
fn realtime_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}
