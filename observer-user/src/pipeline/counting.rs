//! Counting what was written: totals by record type for the summary, and the
//! `zastava_runtime_events_total{tenant,component,kind}` counter, whose tenant and
//! component values are bounded so a flood of workloads cannot blow up the metric.

use std::collections::{HashMap, HashSet};

use zastava_platform::metrics::RUNTIME_EVENTS;

use crate::record::{Item, Lifecycle, PodInfo, Record};

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

/// Bounds the distinct values a metric label takes; the rest are reported as `other`.
struct LabelLimit {
    max: usize,
    seen: HashSet<String>,
}

impl LabelLimit {
    fn new(max: usize) -> Self {
        LabelLimit {
            max,
            seen: HashSet::new(),
        }
    }

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

/// Among how many of the latest (kind, pod) entries a record's is looked for: the kinds
/// of the workload at hand, with room to spare.
const TALLY_SEARCH: usize = 8;

pub(super) struct EventCounters {
    written: Written,
    tenants: LabelLimit,
    components: LabelLimit,
    counters: HashMap<(String, String, &'static str), metrics::Counter>,
}

impl EventCounters {
    pub(super) fn new(max_label_values: usize) -> Self {
        EventCounters {
            written: Written::default(),
            tenants: LabelLimit::new(max_label_values),
            components: LabelLimit::new(max_label_values),
            counters: HashMap::new(),
        }
    }

    pub(super) fn written(&self) -> Written {
        self.written
    }

    /// Counts a batch's records.
    pub(super) fn count_batch(&mut self, items: &[Item]) {
        let mut tally: Vec<(&'static str, Option<&PodInfo>, u64)> = Vec::new();
        for item in items {
            let (kind, pod) = self.count_record(item);
            // Records of a workload are adjacent in a batch, but its kinds interleave (the
            // batch is in time order within it): counters are looked up once per kind and
            // run of a workload's records, not once per record.
            match tally
                .iter_mut()
                .rev()
                .take(TALLY_SEARCH)
                .find(|(k, p, _)| *k == kind && same_pod(*p, pod))
            {
                Some((_, _, n)) => *n += item.count,
                None => tally.push((kind, pod, item.count)),
            }
        }
        for (kind, pod, n) in tally {
            self.count_events(kind, pod, n);
        }
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
            .counters
            .entry((tenant, component, kind))
            .or_insert_with_key(|(tenant, component, kind)| {
                metrics::counter!(
                    RUNTIME_EVENTS.name,
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
