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
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Deserialize;
use zastava_platform::config::{bytes, duration};

use crate::record::{Item, Record};

mod same_edge;
use same_edge::{edge_fingerprint, same_edge};

/// The `[batch]` table.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// A batch closes when it holds this many events...
    pub max_events: usize,
    /// ...or when its oldest event has been ready this long.
    #[serde(deserialize_with = "duration")]
    pub max_age: Duration,
    /// Events are held until they are this old, so events arriving slightly out of order
    /// (across CPUs, or after waiting for attribution) are sorted into place.
    #[serde(deserialize_with = "duration")]
    pub reorder_window: Duration,
    /// Merge repeated identical edges within a batch into one event with a count.
    pub dedup: bool,
    /// Memory bound: beyond this many held events, the oldest are released early.
    pub max_held_events: usize,
    /// Memory bound in bytes (each record's own footprint, [`Item::footprint`]): beyond
    /// it, the oldest are released early, as beyond `max_held_events`.
    #[serde(deserialize_with = "bytes")]
    pub max_held_bytes: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: 2000,
            // Short: a record has already waited `reorder_window`; this only gathers
            // what became ready at about the same time into one batch.
            max_age: Duration::from_millis(200),
            reorder_window: Duration::from_secs(1),
            dedup: true,
            max_held_events: 200_000,
            max_held_bytes: 16 << 20,
        }
    }
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
    /// The key of the newest bucket of `held` pushed to.
    newest_bucket: i128,
    /// Records marked late: ready at once, whatever their time.
    late: Vec<Item>,
    /// Records past the watermark, in sort order, waiting for a batch to close.
    ready: VecDeque<Item>,
    /// Edge occurrences in all of the above.
    held_edges: u64,
    /// Footprint of all of the above, bytes.
    held_bytes: u64,
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

/// `Item::sort_key` order. Records of one workload share its `Arc`, and most comparisons
/// are between records of the same workload: those skip comparing the names.
fn sort_order(a: &Item, b: &Item) -> std::cmp::Ordering {
    let workload = if Arc::ptr_eq(&a.workload, &b.workload) {
        std::cmp::Ordering::Equal
    } else {
        a.workload.cmp(&b.workload)
    };
    workload
        .then(a.at_ns.cmp(&b.at_ns))
        .then(a.type_rank().cmp(&b.type_rank()))
}

/// Sorts by (workload, timestamp, type), stably. Items are large: the sort orders indices,
/// and the items are then put in place by swapping along the permutation's cycles, so no
/// second array of items is needed (held records are most of the daemon's memory).
fn sort_items(mut items: Vec<Item>) -> Vec<Item> {
    let mut order: Vec<u32> = (0..items.len() as u32).collect();
    order.sort_by(|&a, &b| sort_order(&items[a as usize], &items[b as usize]));
    // `items[k]` must become the item now at `order[k]`. A position is done once
    // `order[k] == k`.
    for start in 0..order.len() {
        let mut cur = start;
        loop {
            let next = order[cur] as usize;
            order[cur] = cur as u32;
            if next == start || next == cur {
                break;
            }
            items.swap(cur, next);
            cur = next;
        }
    }
    items
}

impl Batcher {
    pub fn new(config: BatchConfig) -> Self {
        Batcher {
            config,
            held: BTreeMap::new(),
            held_len: 0,
            newest_bucket: i128::MIN,
            late: Vec::new(),
            ready: VecDeque::new(),
            held_edges: 0,
            held_bytes: 0,
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

    /// Footprint of the records held, bytes.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    pub fn push(&mut self, mut item: Item) {
        self.held_edges += edge_occurrences(&item);
        self.held_bytes += item.footprint() as u64;
        if let Some(&upto) = self.shipped_upto.get(&item.workload) {
            if item.at_ns < upto {
                item.late = true;
                self.stats.late += 1;
                self.late.push(item);
                return;
            }
        }
        self.held_len += 1;
        let key = item.at_ns.div_euclid(BUCKET_NS);
        if key > self.newest_bucket {
            // Time has moved on to a new bucket: the last one is (nearly always) complete.
            // Giving back its spare capacity keeps held records near their own size (a
            // vector grown by doubling is up to half empty).
            if let Some(last) = self.held.get_mut(&self.newest_bucket) {
                last.shrink_to_fit();
            }
            self.newest_bucket = key;
        }
        self.held.entry(key).or_default().push(item);
    }

    /// Moves what passed the watermark (and what is late) into `ready`, in sort order.
    fn promote(&mut self, watermark: i128) {
        if self.late.is_empty()
            && self
                .held
                .first_key_value()
                .is_none_or(|(&k, _)| k * BUCKET_NS > watermark)
        {
            return;
        }
        // One array for what is ready, sized once: growing it by doubling would hold up to
        // twice the records' memory at once in a storm.
        let passing: usize = self
            .held
            .range(..=watermark.div_euclid(BUCKET_NS))
            .map(|(_, bucket)| bucket.len())
            .sum();
        let mut all: Vec<Item> = std::mem::take(&mut self.ready).into();
        all.reserve_exact(self.late.len() + passing);
        all.append(&mut self.late);
        while let Some(mut bucket) = self.held.first_entry() {
            let start = *bucket.key() * BUCKET_NS;
            if start > watermark {
                break;
            }
            if start + BUCKET_NS - 1 <= watermark {
                let items = bucket.remove();
                self.held_len -= items.len();
                all.extend(items);
            } else {
                // The bucket the watermark falls in: only part of it is ready.
                let (now, later): (Vec<Item>, Vec<Item>) = std::mem::take(bucket.get_mut())
                    .into_iter()
                    .partition(|i| i.at_ns <= watermark);
                self.held_len -= now.len();
                *bucket.get_mut() = later;
                all.extend(now);
                break;
            }
        }
        self.ready = sort_items(all).into();
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
        let overfull = self.held_records() > self.config.max_held_events
            || self.held_bytes > self.config.max_held_bytes;
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
        self.held_bytes -= batch.iter().map(|i| i.footprint() as u64).sum::<u64>();
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
        std::iter::from_fn(|| self.drain_next()).collect()
    }

    /// The next batch of everything held, regardless of the watermark (shutdown), so that
    /// each can be shipped before the next is made.
    pub fn drain_next(&mut self) -> Option<Batch> {
        if self.held_records() == 0 {
            return None;
        }
        let now = Instant::now();
        self.ready_since = Some(now.checked_sub(self.config.max_age).unwrap_or(now));
        self.poll(i128::MAX / 2, now)
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
mod tests;
