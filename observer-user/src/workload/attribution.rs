//! Attribution: which workload an event belongs to.
//!
//! The event's cgroup id leads, through the cgroup map, to a container id; the container
//! runtime (via the watcher) says what that container is. An event whose container is not
//! known yet waits — with every later event of the same container, so their order holds —
//! for at most the configured wait while the watcher asks the runtime. If the answer comes
//! in time the events leave `complete` (or `partial`); otherwise they leave `pending` and an
//! `enrichmentPatch` naming them follows once the container is known.
//!
//! This stage also applies the namespace filter ([`super::filter`]): it tells the pipeline
//! which cgroups to mark in the kernel, and drops in userspace the few events that reached
//! it before a mark.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use observer_common::identity::DigestKind;

use super::{
    cgroups::{parent_path, CgroupMap},
    filter::NamespaceFilter,
};
use crate::record::{
    Attribution, ContainerInfo, ContainerState, EdgeEvent, Enrichment, ImageInfo, Lifecycle,
    PodInfo,
};

/// How long a container the runtime said it does not know is not asked about again.
const UNRESOLVABLE_COOLDOWN: Duration = Duration::from_secs(30);
/// How soon to ask again about a container the runtime does not know yet.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// With a namespace filter, how long events may wait for their container: sending them
/// without a namespace would defeat the filter, and a pod's sandbox is only listed by the
/// runtime once it is created (its setup events come before that).
pub const FILTER_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct AttributionConfig {
    /// How long an event of an unknown container may wait for the runtime's answer.
    pub wait: Duration,
    /// How long an exited container is remembered, so its last events still resolve.
    pub retention: Duration,
    /// Whether a container runtime is connected at all.
    pub cri: bool,
    pub namespaces: NamespaceFilter,
}

/// What this stage hands on.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "moved once into a reused buffer; boxing would allocate per event"
)]
pub enum Output {
    Edge(EdgeEvent, Attribution),
    Lifecycle(Lifecycle, Arc<ContainerInfo>, Enrichment),
    /// Events sent `pending` now belong to this container.
    Patch(Arc<ContainerInfo>, Vec<u64>, Enrichment),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttributionStats {
    /// Events handed on, by enrichment (index = position in `Enrichment::ALL`).
    pub by_enrichment: [u64; 4],
    /// Events of unwanted namespaces that reached userspace (before their pod was marked).
    pub filtered_in_userspace: u64,
    /// Events whose cgroup id was not in the cgroup map (treated as the node's).
    pub unknown_cgroups: u64,
    /// Patch records, and the events they named.
    pub patches: u64,
    pub patched_events: u64,
    /// Containers whose image has no manifest digest.
    pub containers_without_digest: u64,
}

struct Known {
    info: Arc<ContainerInfo>,
    /// `info.id`, shared by every event attributed to it (no allocation per event).
    id: Arc<str>,
    /// A pod sandbox (pause container) rather than a container of the pod spec.
    sandbox: bool,
    start_sent: bool,
    stop_sent: bool,
    /// When the runtime stopped listing it.
    gone_at: Option<Instant>,
}

struct Waiting {
    since: Instant,
    events: Vec<EdgeEvent>,
    /// When to ask the runtime again (it did not know the container yet).
    retry_at: Option<Instant>,
}

pub struct Attributor {
    config: AttributionConfig,
    cgroups: CgroupMap,
    containers: HashMap<String, Known>,
    waiting: HashMap<String, Waiting>,
    /// Events sent `pending`, by container id, and when the first was sent.
    awaiting_patch: HashMap<String, (Instant, Vec<u64>)>,
    unresolvable: HashMap<String, Instant>,
    /// Sandboxes whose pod cgroup must be marked once its cgroup is known.
    marks_waiting_for_cgroup: HashSet<String>,
    requests: Vec<String>,
    marks: Vec<u64>,
    stats: AttributionStats,
}

fn enrichment_of(info: &ContainerInfo) -> Enrichment {
    if info.image.has_usable_digest() {
        Enrichment::Complete
    } else {
        Enrichment::Partial
    }
}

impl Attributor {
    pub fn new(config: AttributionConfig, cgroups: CgroupMap) -> Self {
        Attributor {
            config,
            cgroups,
            containers: HashMap::new(),
            waiting: HashMap::new(),
            awaiting_patch: HashMap::new(),
            unresolvable: HashMap::new(),
            marks_waiting_for_cgroup: HashSet::new(),
            requests: Vec::new(),
            marks: Vec::new(),
            stats: AttributionStats::default(),
        }
    }

    pub fn stats(&self) -> AttributionStats {
        self.stats
    }

    pub fn cgroups(&self) -> &CgroupMap {
        &self.cgroups
    }

    /// Container ids the runtime should be asked about (drained).
    pub fn take_requests(&mut self) -> Vec<String> {
        std::mem::take(&mut self.requests)
    }

    /// cgroup ids to mark in the kernel filter (drained).
    pub fn take_marks(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.marks)
    }

    /// Events held while their container is resolved.
    pub fn waiting_events(&self) -> usize {
        self.waiting.values().map(|w| w.events.len()).sum()
    }

    pub fn on_cgroup(&mut self, created: bool, id: u64, path: String) {
        if !created {
            self.cgroups.forget(id);
            return;
        }
        let container = super::cgroups::container_id_of(&path).map(str::to_owned);
        self.cgroups.insert(id, path);
        if let Some(container) = container {
            if self.marks_waiting_for_cgroup.remove(&container) {
                if let Some(known) = self.containers.get(&container) {
                    let pod = Arc::clone(&known.info.pod);
                    self.mark_pod(&pod);
                }
            }
        }
    }

    /// A pod sandbox is known: record its pause container and mark its pod cgroup for the
    /// kernel filter when its namespace calls for it.
    pub fn on_pod(&mut self, pod: Arc<PodInfo>, out: &mut Vec<Output>) {
        let info = ContainerInfo {
            id: pod.sandbox_id.clone(),
            name: String::new(),
            pod: Arc::clone(&pod),
            image: ImageInfo {
                reference: String::new(),
                digest: None,
                digest_kind: DigestKind::Unknown,
            },
            state: ContainerState::Running,
            started_at_ns: 0,
            finished_at_ns: 0,
            exit_code: None,
            init_pid: None,
            entrypoint: None,
            entrypoint_code_id: None,
        };
        self.upsert(info, true, out);
        self.mark_pod(&pod);
    }

    fn mark_pod(&mut self, pod: &PodInfo) {
        if !self.config.namespaces.marks(&pod.pod.namespace) {
            return;
        }
        let Some(sandbox_cgroup) = self
            .cgroups
            .id_of_container(&pod.sandbox_id)
            .and_then(|id| self.cgroups.get(id))
        else {
            self.marks_waiting_for_cgroup.insert(pod.sandbox_id.clone());
            return;
        };
        // The pod's own cgroup holds all its containers. Only trust a parent that names the
        // pod: runtimes without a pod cgroup put every sandbox under one shared parent.
        let parent = parent_path(&sandbox_cgroup.path).unwrap_or("/");
        let systemd_uid = pod.pod.uid.replace('-', "_");
        let names_pod = !pod.pod.uid.is_empty()
            && (parent.ends_with(&format!("pod{}", pod.pod.uid))
                || parent.ends_with(&format!("pod{systemd_uid}.slice")));
        let target = if names_pod {
            self.cgroups.id_of(parent)
        } else {
            self.cgroups.id_of(&sandbox_cgroup.path)
        };
        self.marks.extend(target);
    }

    /// The runtime described a container (new, or changed state).
    pub fn on_container(&mut self, info: Arc<ContainerInfo>, out: &mut Vec<Output>) {
        if !info.image.has_usable_digest() && !self.containers.contains_key(&info.id) {
            self.stats.containers_without_digest += 1;
        }
        let namespace_marked = self.config.namespaces.marks(&info.pod.pod.namespace);
        if namespace_marked {
            if let Some(id) = self.cgroups.id_of_container(&info.id) {
                self.marks.push(id);
            }
        }
        self.upsert(Arc::unwrap_or_clone(info), false, out);
    }

    fn upsert(&mut self, info: ContainerInfo, sandbox: bool, out: &mut Vec<Output>) {
        let id = info.id.clone();
        let info = Arc::new(info);
        let enrichment = enrichment_of(&info);
        let wanted = self.config.namespaces.wants(Some(&info.pod.pod.namespace));
        let known = self.containers.entry(id.clone()).or_insert_with(|| Known {
            info: Arc::clone(&info),
            id: Arc::from(id.as_str()),
            sandbox,
            start_sent: false,
            stop_sent: false,
            gone_at: None,
        });
        // Docker restarts a container under the same id (`docker restart`, restart
        // policies): a later start time is a new run, with a start and a stop of its own.
        let restarted = known.start_sent
            && known.info.started_at_ns > 0
            && info.started_at_ns > known.info.started_at_ns;
        if restarted {
            known.start_sent = false;
            known.stop_sent = false;
        }
        known.info = Arc::clone(&info);
        if !known.sandbox && wanted {
            let running_or_done =
                matches!(info.state, ContainerState::Running | ContainerState::Exited);
            if running_or_done && !known.start_sent {
                known.start_sent = true;
                out.push(Output::Lifecycle(
                    Lifecycle::Start,
                    Arc::clone(&info),
                    enrichment,
                ));
            }
            if info.state == ContainerState::Exited && !known.stop_sent {
                known.stop_sent = true;
                out.push(Output::Lifecycle(
                    Lifecycle::Stop,
                    Arc::clone(&info),
                    enrichment,
                ));
            }
        }
        let shared_id = Arc::clone(&known.id);
        self.unresolvable.remove(&id);
        if let Some(waiting) = self.waiting.remove(&id) {
            for event in waiting.events {
                self.emit_known(event, Arc::clone(&info), Arc::clone(&shared_id), out);
            }
        }
        if let Some((_, seqs)) = self.awaiting_patch.remove(&id) {
            if wanted {
                self.stats.patches += 1;
                self.stats.patched_events += seqs.len() as u64;
                out.push(Output::Patch(Arc::clone(&info), seqs, enrichment));
            }
        }
    }

    /// The runtime no longer lists the container; it is remembered for the retention time.
    pub fn on_container_gone(&mut self, id: &str, now: Instant) {
        if let Some(known) = self.containers.get_mut(id) {
            known.gone_at.get_or_insert(now);
        }
    }

    /// The runtime could not describe the container. If it may know it soon (`retry`), it
    /// is asked again while the events' wait lasts; otherwise the events leave now with what
    /// the cgroup says (the container id).
    pub fn on_resolve_failed(
        &mut self,
        id: &str,
        retry: bool,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if retry {
            if let Some(waiting) = self.waiting.get_mut(id) {
                waiting.retry_at = Some(now + RETRY_AFTER);
                return;
            }
        }
        self.unresolvable.insert(id.to_owned(), now);
        if let Some(waiting) = self.waiting.remove(id) {
            self.release_unattributed(id, waiting.events, Enrichment::Partial, out);
        }
    }

    /// How long events may wait for their container.
    fn wait(&self) -> Duration {
        if self.config.namespaces.is_active() {
            self.config.wait.max(FILTER_WAIT)
        } else {
            self.config.wait
        }
    }

    /// Events whose container is unknown leave with its id only; with an include filter,
    /// they cannot be shown to be wanted and are dropped (counted).
    fn release_unattributed(
        &mut self,
        id: &str,
        events: Vec<EdgeEvent>,
        enrichment: Enrichment,
        out: &mut Vec<Output>,
    ) {
        if self.config.namespaces.include.is_empty() {
            for event in events {
                self.emit(event, unresolved(id, enrichment), out);
            }
        } else {
            self.stats.filtered_in_userspace +=
                events.iter().map(EdgeEvent::occurrences).sum::<u64>();
        }
    }

    fn emit(&mut self, event: EdgeEvent, attribution: Attribution, out: &mut Vec<Output>) {
        let index = Enrichment::ALL
            .iter()
            .position(|&e| e == attribution.enrichment)
            .unwrap_or(0);
        self.stats.by_enrichment[index] += 1;
        out.push(Output::Edge(event, attribution));
    }

    fn emit_known(
        &mut self,
        event: EdgeEvent,
        info: Arc<ContainerInfo>,
        id: Arc<str>,
        out: &mut Vec<Output>,
    ) {
        if !self.config.namespaces.wants(Some(&info.pod.pod.namespace)) {
            self.stats.filtered_in_userspace += 1;
            return;
        }
        let attribution = Attribution {
            enrichment: enrichment_of(&info),
            container_id: Some(id),
            container: Some(info),
        };
        self.emit(event, attribution, out);
    }

    /// Attributes one event, or holds it until its container is known.
    pub fn on_event(&mut self, event: EdgeEvent, now: Instant, out: &mut Vec<Output>) {
        let entry = self.cgroups.get(event.cgroup_id);
        if entry.is_none() {
            self.stats.unknown_cgroups += 1;
        }
        let Some(id) = entry.and_then(|e| e.container_id.as_deref()) else {
            if self.config.namespaces.wants(None) {
                self.emit(event, Attribution::host(), out);
            } else {
                self.stats.filtered_in_userspace += 1;
            }
            return;
        };
        // The common case, a known container, looks up without copying the id.
        if let Some(known) = self.containers.get(id) {
            let (info, id) = (Arc::clone(&known.info), Arc::clone(&known.id));
            self.emit_known(event, info, id, out);
            return;
        }
        let container_id = id.to_owned();
        if let Some(waiting) = self.waiting.get_mut(&container_id) {
            waiting.events.push(event);
        } else if !self.config.cri || self.unresolvable.contains_key(&container_id) {
            self.release_unattributed(&container_id, vec![event], Enrichment::Partial, out);
        } else {
            self.requests.push(container_id.clone());
            self.waiting.insert(
                container_id,
                Waiting {
                    since: now,
                    events: vec![event],
                    retry_at: None,
                },
            );
        }
    }

    /// Lets events that waited too long leave as `pending`, and forgets what has expired.
    pub fn on_tick(&mut self, now: Instant, out: &mut Vec<Output>) {
        for (id, waiting) in &mut self.waiting {
            if waiting.retry_at.is_some_and(|at| at <= now) {
                waiting.retry_at = None;
                self.requests.push(id.clone());
            }
        }
        let wait = self.wait();
        let expired: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, w)| now.duration_since(w.since) >= wait)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            let Some(waiting) = self.waiting.remove(&id) else {
                continue;
            };
            let seqs: Vec<u64> = waiting.events.iter().map(|e| e.seq).collect();
            if waiting.retry_at.is_some() {
                // The runtime kept saying it does not know it: do not hold the next ones.
                self.unresolvable.insert(id.clone(), now);
            }
            let may_be_wanted = self.config.namespaces.include.is_empty();
            self.release_unattributed(&id, waiting.events, Enrichment::Pending, out);
            if may_be_wanted {
                self.awaiting_patch
                    .entry(id)
                    .or_insert_with(|| (now, Vec::new()))
                    .1
                    .extend(seqs);
            }
        }
        let retention = self.config.retention;
        self.containers.retain(|_, k| {
            k.gone_at
                .is_none_or(|at| now.duration_since(at) < retention)
        });
        self.awaiting_patch
            .retain(|_, (since, _)| now.duration_since(*since) < retention);
        self.unresolvable
            .retain(|_, at| now.duration_since(*at) < UNRESOLVABLE_COOLDOWN);
    }

    /// At shutdown: everything still waiting leaves now. No patch can follow, so these are
    /// `partial` (the container id is known, nothing more).
    pub fn drain(&mut self, out: &mut Vec<Output>) {
        let waiting: Vec<(String, Waiting)> = self.waiting.drain().collect();
        for (id, w) in waiting {
            self.release_unattributed(&id, w.events, Enrichment::Partial, out);
        }
    }
}

fn unresolved(container_id: &str, enrichment: Enrichment) -> Attribution {
    Attribution {
        enrichment,
        container_id: Some(Arc::from(container_id)),
        container: None,
    }
}

#[cfg(test)]
mod tests;
