//! Several container runtimes on one node — Kubernetes through containerd, and Docker Engine
//! beside it for builds or side services — each with its own watcher. The pipeline asks one
//! question ("what is container X?") and must get one answer: the hub asks every watcher,
//! passes on every description, and says a container is unknown only once every runtime
//! has said so.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::watcher::Update;

/// How long the hub waits for every runtime to answer before it stops waiting (a watcher
/// that lost its runtime mid-question never answers it).
const PENDING_MAX: Duration = Duration::from_secs(10);

struct Pending {
    /// Runtimes that have not said "unknown" yet.
    left: usize,
    retry: bool,
    /// Some runtime described it.
    answered: bool,
    since: Instant,
}

/// The state of the hub; [`run`] drives it.
pub struct Hub {
    watchers: Vec<mpsc::Sender<String>>,
    pending: HashMap<String, Pending>,
}

impl Hub {
    pub fn new(watchers: Vec<mpsc::Sender<String>>) -> Self {
        Hub {
            watchers,
            pending: HashMap::new(),
        }
    }

    /// Asks every watcher about `id`. Returns the answer at once when none can be asked.
    pub fn ask(&mut self, id: String, now: Instant) -> Option<Update> {
        let asked = self
            .watchers
            .iter()
            .filter(|w| w.try_send(id.clone()).is_ok())
            .count();
        if asked == 0 {
            return Some(Update::ResolveFailed { id, retry: false });
        }
        let pending = self.pending.entry(id).or_insert(Pending {
            left: 0,
            retry: false,
            answered: false,
            since: now,
        });
        pending.left += asked;
        None
    }

    /// What of a watcher's update goes on to the pipeline.
    pub fn on_update(&mut self, update: Update) -> Option<Update> {
        match &update {
            Update::Container(info) => self.answered(&info.id),
            Update::Pod(pod) => self.answered(&pod.sandbox_id),
            Update::ResolveFailed { id, retry } => {
                let Some(pending) = self.pending.get_mut(id) else {
                    return Some(update);
                };
                pending.left = pending.left.saturating_sub(1);
                pending.retry |= *retry;
                if pending.left > 0 {
                    return None;
                }
                let done = self.pending.remove(id)?;
                return (!done.answered).then(|| Update::ResolveFailed {
                    id: id.clone(),
                    retry: done.retry,
                });
            }
            _ => {}
        }
        Some(update)
    }

    fn answered(&mut self, id: &str) {
        if let Some(pending) = self.pending.get_mut(id) {
            pending.answered = true;
        }
    }

    /// Questions some runtime never answered: "unknown" if none described the container.
    pub fn expire(&mut self, now: Instant) -> Vec<Update> {
        let expired: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) >= PENDING_MAX)
            .map(|(id, _)| id.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|id| {
                let pending = self.pending.remove(&id)?;
                (!pending.answered).then_some(Update::ResolveFailed {
                    id,
                    retry: pending.retry,
                })
            })
            .collect()
    }
}

/// Runs the hub between the pipeline (`requests` in, `to_pipeline` out) and the watchers
/// (`from_watchers` in); ends when either side is gone.
pub async fn run(
    mut hub: Hub,
    mut requests: mpsc::Receiver<String>,
    mut from_watchers: mpsc::Receiver<Update>,
    to_pipeline: mpsc::Sender<Update>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let out: Vec<Update> = tokio::select! {
            request = requests.recv() => {
                let Some(id) = request else { return };
                hub.ask(id, Instant::now()).into_iter().collect()
            }
            update = from_watchers.recv() => {
                let Some(update) = update else { return };
                hub.on_update(update).into_iter().collect()
            }
            _ = tick.tick() => hub.expire(Instant::now()),
        };
        for update in out {
            if to_pipeline.send(update).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::record::PodInfo;

    fn failed(id: &str, retry: bool) -> Update {
        Update::ResolveFailed {
            id: id.into(),
            retry,
        }
    }

    fn is_failed(update: Option<Update>, want_id: &str, want_retry: bool) -> bool {
        matches!(update, Some(Update::ResolveFailed { id, retry }) if id == want_id && retry == want_retry)
    }

    #[test]
    fn unknown_only_when_every_runtime_says_so() {
        let (a, mut a_rx) = mpsc::channel(8);
        let (b, mut b_rx) = mpsc::channel(8);
        let mut hub = Hub::new(vec![a, b]);
        let now = Instant::now();
        assert!(hub.ask("c1".into(), now).is_none());
        assert_eq!(a_rx.try_recv().unwrap(), "c1");
        assert_eq!(b_rx.try_recv().unwrap(), "c1");
        // One runtime does not know it: wait for the other.
        assert!(hub.on_update(failed("c1", false)).is_none());
        // The other may know it soon: the answer says so.
        assert!(is_failed(hub.on_update(failed("c1", true)), "c1", true));

        // A runtime that describes it wins over one that does not know it, in either order.
        let pod = Arc::new(PodInfo::docker_container(
            "c2".into(),
            "web",
            Default::default(),
        ));
        hub.ask("c2".into(), now);
        assert!(hub.on_update(failed("c2", false)).is_none());
        assert!(matches!(
            hub.on_update(Update::Pod(Arc::clone(&pod))),
            Some(Update::Pod(_))
        ));
        assert!(hub.expire(now + PENDING_MAX).is_empty());
        hub.ask("c2".into(), now);
        assert!(matches!(
            hub.on_update(Update::Pod(pod)),
            Some(Update::Pod(_))
        ));
        assert!(hub.on_update(failed("c2", false)).is_none());

        // Unasked failures (a sandbox went away) go on as they are.
        assert!(is_failed(hub.on_update(failed("c3", false)), "c3", false));
        // A question one runtime never answers ends after a while.
        hub.ask("c4".into(), now);
        assert!(hub.on_update(failed("c4", false)).is_none());
        assert!(hub.expire(now + Duration::from_secs(1)).is_empty());
        let expired = hub.expire(now + PENDING_MAX);
        assert_eq!(expired.len(), 1);
        assert!(is_failed(expired.into_iter().next(), "c4", false));
    }

    #[test]
    fn no_watcher_to_ask_is_an_answer() {
        let (a, a_rx) = mpsc::channel(1);
        drop(a_rx);
        let mut hub = Hub::new(vec![a]);
        assert!(is_failed(hub.ask("c1".into(), Instant::now()), "c1", false));
    }
}
