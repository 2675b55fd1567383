//! Batching: records are held until they are older than the reorder window (the
//! watermark), then leave in batches sorted by (workloadId, timestamp, edgeType), with
//! repeated identical edges merged into one record carrying `count`, `firstSeen` and
//! `lastSeen`.
//!
//! Contract: for any one workload, the records of batch k+1 are not older than those of
//! batch k, for every record that reached the batcher within the reorder window of its
//! timestamp. A record that arrives later than that (it waited for attribution beyond the
//! window, or a runtime reported an old container start) is shipped in the next batch,
//! marked `"late": true`, and counted.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    hash::{BuildHasher as _, Hash, Hasher},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    containers::ContainerInfo,
    event::{Attribution, EdgeDetail, EdgeEvent, Enrichment, Lifecycle, SocketTarget},
    host::HostIdentity,
};

pub use crate::config::BatchConfig;

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
    fn type_rank(&self) -> u8 {
        match &self.record {
            Record::Edge { event, .. } => event.edge_type().sort_rank(),
            Record::Lifecycle { .. } => 10,
            Record::Patch { .. } => 11,
        }
    }

    fn sort_key(&self) -> (&str, i128, u8) {
        (&self.workload, self.at_ns, self.type_rank())
    }
}

/// What makes two edges "the same edge": workload, edge type and target. For opens the
/// target includes the flags and whether it succeeded (the fd number does not matter);
/// for connects the result; for execs the argv.
fn same_edge(a: &Item, b: &Item) -> bool {
    let (
        Record::Edge {
            event: ea,
            attribution: aa,
        },
        Record::Edge {
            event: eb,
            attribution: ab,
        },
    ) = (&a.record, &b.record)
    else {
        return false;
    };
    if a.workload != b.workload
        || aa.enrichment != ab.enrichment
        || aa.container_id != ab.container_id
    {
        return false;
    }
    match (&ea.detail, &eb.detail) {
        (
            EdgeDetail::Exec {
                path: pa,
                syscall: sa,
                ..
            },
            EdgeDetail::Exec {
                path: pb,
                syscall: sb,
                ..
            },
        ) => pa == pb && sa == sb && ea.process.image.args == eb.process.image.args,
        (
            EdgeDetail::Open {
                path: pa,
                flags: fa,
                result: ra,
                syscall: sa,
                ..
            },
            EdgeDetail::Open {
                path: pb,
                flags: fb,
                result: rb,
                syscall: sb,
                ..
            },
        ) => pa == pb && fa == fb && sa == sb && outcome(*ra) == outcome(*rb),
        (
            EdgeDetail::Connect {
                address: ta,
                result: ra,
            },
            EdgeDetail::Connect {
                address: tb,
                result: rb,
            },
        ) => ta == tb && ra == rb,
        _ => false,
    }
}

/// A syscall result without the descriptor number: 0 for success, else -errno.
fn outcome(result: i64) -> i64 {
    result.min(0)
}

/// A hash of what makes two edges the same (`same_edge` decides; equal edges have equal
/// fingerprints). Seeded per batcher, so crafted paths cannot be made to collide at will.
fn edge_fingerprint(seed: &foldhash::fast::RandomState, item: &Item) -> Option<u64> {
    let Record::Edge { event, attribution } = &item.record else {
        return None;
    };
    let mut h = seed.build_hasher();
    item.workload.hash(&mut h);
    attribution.container_id.hash(&mut h);
    match &event.detail {
        EdgeDetail::Exec { path, .. } => {
            0u8.hash(&mut h);
            path.hash(&mut h);
            event.process.image.args.hash(&mut h);
        }
        EdgeDetail::Open {
            path,
            flags,
            result,
            ..
        } => {
            1u8.hash(&mut h);
            path.hash(&mut h);
            flags.hash(&mut h);
            outcome(*result).hash(&mut h);
        }
        EdgeDetail::Connect { address, result } => {
            2u8.hash(&mut h);
            match address {
                SocketTarget::Inet { address, port } => (address, port).hash(&mut h),
                SocketTarget::Unix { path } => path.hash(&mut h),
                SocketTarget::Other { family } => family.hash(&mut h),
                SocketTarget::Unspecified | SocketTarget::Unreadable => {}
            }
            result.hash(&mut h);
        }
    }
    Some(h.finish())
}

/// A closed batch, in shipping order.
#[derive(Debug)]
pub struct Batch {
    pub items: Vec<Item>,
}

impl Batch {
    /// Occurrences the batch stands for (edge events, counting merged repeats).
    pub fn edge_occurrences(&self) -> u64 {
        self.items
            .iter()
            .filter(|i| matches!(i.record, Record::Edge { .. }))
            .map(|i| i.count)
            .sum()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub batches: u64,
    /// Edge occurrences merged into another record.
    pub merged: u64,
    pub late: u64,
    /// Records released before the watermark because too many were held.
    pub forced: u64,
}

pub struct Batcher {
    config: BatchConfig,
    /// Records not yet past the watermark, bucketed by time so that the ones that pass it
    /// leave without the others being moved.
    held: BTreeMap<i128, Vec<Item>>,
    /// Records in `held`.
    held_len: usize,
    /// Records marked late: ready at once, whatever their time.
    late: Vec<Item>,
    /// Records past the watermark, in sort order, waiting for a batch to close.
    ready: VecDeque<Item>,
    /// Edge occurrences in all of the above.
    held_edges: u64,
    /// When the oldest waiting record became ready (passed the watermark), if any is.
    ready_since: Option<Instant>,
    /// Per workload, the newest timestamp shipped.
    shipped_upto: HashMap<Arc<str>, i128>,
    stats: BatchStats,
    fingerprint_seed: foldhash::fast::RandomState,
}

fn window_ns(d: Duration) -> i128 {
    i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)
}

/// Width of the time buckets of held records.
const BUCKET_NS: i128 = 10_000_000;

fn edge_occurrences(item: &Item) -> u64 {
    match item.record {
        Record::Edge { .. } => item.count,
        _ => 0,
    }
}

/// Sorts by (workload, timestamp, type), stably. Items are large: the sort orders indices,
/// and each item then moves once.
fn sort_items(items: Vec<Item>) -> Vec<Item> {
    let mut order: Vec<u32> = (0..items.len() as u32).collect();
    order.sort_by(|&a, &b| {
        items[a as usize]
            .sort_key()
            .cmp(&items[b as usize].sort_key())
    });
    if order.iter().enumerate().all(|(i, &o)| i == o as usize) {
        return items;
    }
    let mut slots: Vec<Option<Item>> = items.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|i| slots[i as usize].take())
        .collect()
}

impl Batcher {
    pub fn new(config: BatchConfig) -> Self {
        Batcher {
            config,
            held: BTreeMap::new(),
            held_len: 0,
            late: Vec::new(),
            ready: VecDeque::new(),
            held_edges: 0,
            ready_since: None,
            shipped_upto: HashMap::new(),
            stats: BatchStats::default(),
            fingerprint_seed: foldhash::fast::RandomState::default(),
        }
    }

    pub fn stats(&self) -> BatchStats {
        self.stats
    }

    /// Edge occurrences held (waiting for their watermark or for their batch to close).
    pub fn held_edges(&self) -> u64 {
        self.held_edges
    }

    /// Records held, of every kind.
    pub fn held_records(&self) -> usize {
        self.held_len + self.late.len() + self.ready.len()
    }

    pub fn push(&mut self, mut item: Item) {
        self.held_edges += edge_occurrences(&item);
        if let Some(&upto) = self.shipped_upto.get(&item.workload) {
            if item.at_ns < upto {
                item.late = true;
                self.stats.late += 1;
                self.late.push(item);
                return;
            }
        }
        self.held_len += 1;
        self.held
            .entry(item.at_ns.div_euclid(BUCKET_NS))
            .or_default()
            .push(item);
    }

    /// Moves what passed the watermark (and what is late) into `ready`, in sort order.
    fn promote(&mut self, watermark: i128) {
        let mut fresh = std::mem::take(&mut self.late);
        while let Some(mut bucket) = self.held.first_entry() {
            let start = *bucket.key() * BUCKET_NS;
            if start > watermark {
                break;
            }
            if start + BUCKET_NS - 1 <= watermark {
                let items = bucket.remove();
                self.held_len -= items.len();
                fresh.extend(items);
            } else {
                // The bucket the watermark falls in: only part of it is ready.
                let (now, later): (Vec<Item>, Vec<Item>) = std::mem::take(bucket.get_mut())
                    .into_iter()
                    .partition(|i| i.at_ns <= watermark);
                self.held_len -= now.len();
                *bucket.get_mut() = later;
                fresh.extend(now);
                break;
            }
        }
        if fresh.is_empty() {
            return;
        }
        if self.ready.is_empty() {
            self.ready = sort_items(fresh).into();
        } else {
            let mut all: Vec<Item> = std::mem::take(&mut self.ready).into();
            all.extend(fresh);
            self.ready = sort_items(all).into();
        }
    }

    /// The `n` oldest records still waiting for the watermark, taken out of `held`.
    fn take_oldest_held(&mut self, n: usize) -> Vec<Item> {
        let mut taken = Vec::with_capacity(n);
        while taken.len() < n {
            let Some(mut bucket) = self.held.first_entry() else {
                break;
            };
            let want = n - taken.len();
            if bucket.get().len() <= want {
                taken.extend(bucket.remove());
            } else {
                let items = bucket.get_mut();
                items.sort_by_key(|i| i.at_ns);
                taken.extend(items.drain(..want));
            }
        }
        self.held_len -= taken.len();
        taken
    }

    /// A closed batch, if one is due at `now_ns` (epoch) / `now` (monotonic).
    pub fn poll(&mut self, now_ns: i128, now: Instant) -> Option<Batch> {
        let watermark = now_ns - window_ns(self.config.reorder_window);
        self.promote(watermark);
        let ready = self.ready.len();
        if ready == 0 {
            self.ready_since = None;
        } else {
            self.ready_since.get_or_insert(now);
        }
        let overfull = self.held_records() > self.config.max_held_events;
        let aged = self
            .ready_since
            .is_some_and(|since| now.duration_since(since) >= self.config.max_age);
        if !(overfull || ready >= self.config.max_events || (ready > 0 && aged)) {
            return None;
        }
        let max = self.config.max_events;
        let mut batch: Vec<Item> = if overfull && ready < max {
            // Memory bound: release the oldest, ready or not.
            let forced = self.take_oldest_held(max - ready);
            self.stats.forced += forced.len() as u64;
            let mut all: Vec<Item> = std::mem::take(&mut self.ready).into();
            all.extend(forced);
            sort_items(all)
        } else {
            // Cut in sort order: what stays behind is, per workload, newer than what leaves.
            self.ready.drain(..max.min(ready)).collect()
        };
        self.held_edges -= batch.iter().map(edge_occurrences).sum::<u64>();
        if self.config.dedup {
            batch = self.merge(batch);
        }
        // The batch is sorted by workload: one update per run of records of a workload.
        for run in batch.chunk_by(|a, b| a.workload == b.workload) {
            let newest = run.iter().map(|i| i.last_ns).max().unwrap_or(i128::MIN);
            let upto = self
                .shipped_upto
                .entry(Arc::clone(&run[0].workload))
                .or_insert(i128::MIN);
            *upto = (*upto).max(newest);
        }
        // Forget workloads that have been quiet longer than any record can be late.
        let horizon = watermark - window_ns(Duration::from_secs(600));
        self.shipped_upto.retain(|_, upto| *upto >= horizon);
        // Records left behind by a cut have been ready as long as those that left.
        if self.ready.is_empty() {
            self.ready_since = None;
        }
        self.stats.batches += 1;
        Some(Batch { items: batch })
    }

    /// Everything held, in batches, regardless of the watermark (shutdown).
    pub fn drain(&mut self) -> Vec<Batch> {
        let mut batches = Vec::new();
        while self.held_records() > 0 {
            let now = Instant::now();
            self.ready_since = Some(now.checked_sub(self.config.max_age).unwrap_or(now));
            match self.poll(i128::MAX / 2, now) {
                Some(batch) => batches.push(batch),
                None => break,
            }
        }
        batches
    }

    /// Merges repeated identical edges of a sorted batch into their first occurrence.
    fn merge(&mut self, batch: Vec<Item>) -> Vec<Item> {
        let seed = self.fingerprint_seed.clone();
        self.merge_by(batch, |item| edge_fingerprint(&seed, item))
    }

    /// Merges repeats, with `fingerprint` narrowing the candidates (`same_edge` decides).
    fn merge_by(
        &mut self,
        batch: Vec<Item>,
        fingerprint: impl Fn(&Item) -> Option<u64>,
    ) -> Vec<Item> {
        const NONE: usize = usize::MAX;
        let mut out: Vec<Item> = Vec::with_capacity(batch.len());
        // Fingerprint → the newest record of `out` with it; `older[i]` is the record with
        // the same fingerprint before `out[i]` (a different edge: a hash collision).
        let mut newest: HashMap<u64, usize, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(batch.len(), self.fingerprint_seed.clone());
        let mut older: Vec<usize> = Vec::with_capacity(batch.len());
        for item in batch {
            let Some(fingerprint) = fingerprint(&item) else {
                out.push(item);
                older.push(NONE);
                continue;
            };
            let mut candidate = newest.get(&fingerprint).copied().unwrap_or(NONE);
            while candidate != NONE && !same_edge(&out[candidate], &item) {
                candidate = older[candidate];
            }
            if candidate == NONE {
                older.push(newest.insert(fingerprint, out.len()).unwrap_or(NONE));
                out.push(item);
            } else {
                let first = &mut out[candidate];
                first.count += item.count;
                first.last_ns = first.last_ns.max(item.last_ns);
                first.late |= item.late;
                self.stats.merged += item.count;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{EdgeDetail, ProcessSnapshot},
        proctable::Image,
    };

    fn host() -> HostIdentity {
        HostIdentity::for_tests()
    }

    fn open(seq: u64, path: &str, result: i64) -> Record {
        Record::Edge {
            event: EdgeEvent {
                seq,
                boot_ns: 0,
                cgroup_id: 1,
                process: ProcessSnapshot {
                    pid: 1,
                    tid: 1,
                    ppid: None,
                    uid: 0,
                    gid: 0,
                    comm: [0; 16],
                    image: Arc::new(Image::default()),
                },
                detail: EdgeDetail::Open {
                    syscall: "openat",
                    path: path.into(),
                    path_resolved: true,
                    path_truncated: false,
                    flags: 0,
                    result,
                },
                code_id: None,
                repeats: crate::event::HeldRepeats::default(),
                repeats_only: false,
                dedup_key: None,
            },
            attribution: Attribution::host(),
        }
    }

    fn config() -> BatchConfig {
        BatchConfig {
            max_events: 100,
            max_age: Duration::from_millis(500),
            reorder_window: Duration::from_secs(1),
            dedup: true,
            max_held_events: 1000,
        }
    }

    const S: i128 = 1_000_000_000;

    fn paths(batch: &Batch) -> Vec<(String, u64)> {
        batch
            .items
            .iter()
            .map(|i| match &i.record {
                Record::Edge { event, .. } => match &event.detail {
                    EdgeDetail::Open { path, .. } => (path.clone(), i.count),
                    _ => unreachable!(),
                },
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn records_wait_for_the_watermark_and_leave_sorted() {
        let h = host();
        let mut b = Batcher::new(config());
        let t0 = Instant::now();
        // Arrive out of order.
        b.push(Item::new(10 * S + 300, &h, open(2, "/b", 3)));
        b.push(Item::new(10 * S + 100, &h, open(1, "/a", 3)));
        b.push(Item::new(12 * S, &h, open(3, "/c", 3)));
        // At 10.5 s nothing is older than the 1 s window.
        assert!(b.poll(10 * S + S / 2, t0).is_none());
        // At 11.5 s the first two are ready, but the batch is not due before max_age.
        assert!(b.poll(11 * S + S / 2, t0).is_none());
        let batch = b
            .poll(11 * S + S / 2, t0 + Duration::from_millis(600))
            .unwrap();
        assert_eq!(paths(&batch), [("/a".into(), 1), ("/b".into(), 1)]);
        assert_eq!(b.held_records(), 1);
    }

    #[test]
    fn repeats_are_merged_with_count_first_and_last_seen() {
        let h = host();
        let mut b = Batcher::new(config());
        for i in 0..5 {
            b.push(Item::new(
                10 * S + i,
                &h,
                open(i as u64, "/etc/app.conf", 3 + i as i64),
            ));
        }
        b.push(Item::new(10 * S + 7, &h, open(9, "/etc/app.conf", -2)));
        let t0 = Instant::now();
        b.poll(20 * S, t0);
        let batch = b.poll(20 * S, t0 + Duration::from_secs(1)).unwrap();
        // Five successful opens (different fds) are one edge; the failed one is another.
        assert_eq!(
            paths(&batch),
            [("/etc/app.conf".into(), 5), ("/etc/app.conf".into(), 1)]
        );
        assert_eq!(batch.items[0].at_ns, 10 * S);
        assert_eq!(batch.items[0].last_ns, 10 * S + 4);
        assert_eq!(batch.edge_occurrences(), 6);
        assert_eq!(b.stats().merged, 4);
    }

    #[test]
    fn edges_whose_fingerprints_collide_stay_apart_and_their_repeats_still_merge() {
        let h = host();
        let mut b = Batcher::new(config());
        let batch: Vec<Item> = ["/a", "/b", "/a", "/c", "/b", "/a"]
            .iter()
            .enumerate()
            .map(|(i, path)| Item::new(10 * S + i as i128, &h, open(i as u64, path, 3)))
            .collect();
        // Every edge gets the same fingerprint: only same_edge tells them apart.
        let merged = b.merge_by(batch, |_| Some(7));
        assert_eq!(
            paths(&Batch { items: merged }),
            [("/a".into(), 3), ("/b".into(), 2), ("/c".into(), 1)]
        );
        assert_eq!(b.stats().merged, 3);
    }

    #[test]
    fn a_full_batch_closes_at_once_and_is_cut_in_sort_order() {
        let h = host();
        let mut b = Batcher::new(BatchConfig {
            max_events: 3,
            ..config()
        });
        for i in 0..5 {
            b.push(Item::new(
                10 * S + i,
                &h,
                open(i as u64, &format!("/f{i}"), 3),
            ));
        }
        let t0 = Instant::now();
        let first = b.poll(20 * S, t0).unwrap();
        assert_eq!(first.items.len(), 3);
        let second = b.poll(20 * S, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(second.items.len(), 2);
        // Per workload, the second batch is not older than the first.
        assert!(first.items.last().unwrap().at_ns <= second.items[0].at_ns);
    }

    #[test]
    fn records_arriving_after_their_workload_moved_on_are_marked_late() {
        let h = host();
        let mut b = Batcher::new(config());
        let t0 = Instant::now();
        b.push(Item::new(10 * S, &h, open(1, "/a", 3)));
        b.poll(20 * S, t0);
        assert!(b.poll(20 * S, t0 + Duration::from_secs(1)).is_some());
        b.push(Item::new(9 * S, &h, open(2, "/old", 3)));
        b.poll(20 * S, t0);
        let batch = b.poll(20 * S, t0 + Duration::from_secs(2)).unwrap();
        assert!(batch.items[0].late);
        assert_eq!(b.stats().late, 1);
    }

    #[test]
    fn too_many_held_records_are_released_early_and_counted() {
        let h = host();
        let mut b = Batcher::new(BatchConfig {
            max_events: 2,
            max_held_events: 3,
            ..config()
        });
        for i in 0..4 {
            b.push(Item::new(
                100 * S + i,
                &h,
                open(i as u64, &format!("/x{i}"), 3),
            ));
        }
        let batch = b.poll(100 * S, Instant::now()).unwrap();
        assert_eq!(paths(&batch), [("/x0".into(), 1), ("/x1".into(), 1)]);
        assert_eq!(b.stats().forced, 2);
    }

    #[test]
    fn drain_releases_everything() {
        let h = host();
        let mut b = Batcher::new(BatchConfig {
            max_events: 2,
            ..config()
        });
        for i in 0..5 {
            b.push(Item::new(
                100 * S + i,
                &h,
                open(i as u64, &format!("/y{i}"), 3),
            ));
        }
        let batches = b.drain();
        assert_eq!(
            batches.iter().map(|b| b.items.len()).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        assert_eq!(b.held_edges(), 0);
    }
}
