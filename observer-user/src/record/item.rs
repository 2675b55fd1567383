//! A record as batches hold it: an edge, a lifecycle change or a patch, with its time, the
//! workload it sorts under, and how many occurrences it stands for.

use std::sync::Arc;

use super::{Attribution, ContainerInfo, EdgeEvent, Enrichment, HostIdentity};

/// `containerStart` / `containerStop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Start,
    Stop,
}

/// What a batch holds.
#[derive(Clone, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "held in place until shipped; boxing would allocate per event"
)]
pub enum Record {
    Edge {
        event: EdgeEvent,
        attribution: Attribution,
    },
    Lifecycle {
        lifecycle: Lifecycle,
        container: Arc<ContainerInfo>,
        enrichment: Enrichment,
    },
    Patch {
        container: Arc<ContainerInfo>,
        seqs: Vec<u64>,
        enrichment: Enrichment,
    },
}

/// A record with what sorting and merging need.
#[derive(Clone, Debug)]
pub struct Item {
    /// Event time, nanoseconds since the epoch.
    pub at_ns: i128,
    pub workload: Arc<str>,
    pub record: Record,
    /// Occurrences this item stands for (more than 1 after merging).
    pub count: u64,
    /// Last occurrence, nanoseconds since the epoch (the first is `at_ns`).
    pub last_ns: i128,
    pub late: bool,
}

impl Item {
    pub fn new(at_ns: i128, host: &HostIdentity, record: Record) -> Self {
        let workload: Arc<str> = match &record {
            Record::Edge { attribution, .. } => attribution.workload_key(host),
            Record::Lifecycle { container, .. } | Record::Patch { container, .. } => {
                Arc::clone(&container.pod.identity_id)
            }
        };
        Item {
            at_ns,
            workload,
            record,
            count: 1,
            last_ns: at_ns,
            late: false,
        }
    }

    /// Sort rank of the record type after the timestamp: edges by edge type, then
    /// lifecycle, then patches.
    pub fn type_rank(&self) -> u8 {
        match &self.record {
            Record::Edge { event, .. } => event.edge_type().sort_rank(),
            Record::Lifecycle { .. } => 10,
            Record::Patch { .. } => 11,
        }
    }

    /// Bytes the record holds on its own while it waits in a batcher: the item, and what
    /// only it owns on the heap (paths, names, ids). What it shares (the process image, the
    /// container and pod) is counted nowhere: it lives as long as its process or container.
    pub fn footprint(&self) -> usize {
        let owned = match &self.record {
            Record::Edge { event, .. } => event.owned_heap_bytes(),
            Record::Patch { seqs, .. } => seqs.capacity() * size_of::<u64>(),
            Record::Lifecycle { .. } => 0,
        };
        size_of::<Item>() + owned
    }

    /// The batch sort order: (workloadId, timestamp, record type).
    pub fn sort_key(&self) -> (&str, i128, u8) {
        (&self.workload, self.at_ns, self.type_rank())
    }
}
