//! Verdicts by image digest, each kept for the TTL its answer gave. Lookups of digests not
//! cached share one fetch per digest: while a digest is being fetched, every other request
//! for it waits for that fetch rather than starting its own. A fetch announces its answers
//! on one channel, a part (one backend request's answers) at a time as they come: a channel
//! per digest cost some 300 bytes each, 10 MB for the fullest review the body limit allows.
//!
//! A lookup ends by its deadline with the answers it has: the cached ones and those that
//! have come; only the digests still without an answer are left out. A fetch runs as a
//! task of its own, so a request that gives up (its deadline passed, its client went away)
//! does not cancel it: the answer still lands in the cache.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};

use zastava_platform::metrics::{ADMISSION_CACHE_HITS, ADMISSION_CACHE_MISSES};

use crate::config::CacheConfig;

/// What the backend said about one digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub reasons: Vec<String>,
    /// How long the answer holds (`None`: the configured default).
    pub ttl: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Warn,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Warn => "warn",
            Verdict::Deny => "deny",
        }
    }
}

/// Why there is no judgement for a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// For the people the API server shows it to: short, without transport details.
    pub summary: Arc<str>,
    /// For the log and the audit annotation: everything that is known.
    pub detail: Arc<str>,
}

impl Failure {
    pub fn new(summary: impl Into<Arc<str>>, detail: impl Into<Arc<str>>) -> Self {
        Failure {
            summary: summary.into(),
            detail: detail.into(),
        }
    }

    /// A failure whose whole story is short enough to tell.
    pub fn plain(text: impl Into<Arc<str>>) -> Self {
        let text = text.into();
        Failure {
            summary: Arc::clone(&text),
            detail: text,
        }
    }
}

/// A fetch's answer for one digest: the judgement, or why there is none.
pub type Answer = Result<Judgement, Failure>;

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Cache,
    Backend,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Backend => "backend",
        }
    }
}

/// The answers of a fetch so far, by digest.
#[derive(Default)]
struct Landed {
    answers: HashMap<String, Answer>,
    /// Every digest of the fetch has its answer.
    done: bool,
}

impl Landed {
    fn answer(&self, digest: &str) -> Option<Answer> {
        self.answers.get(digest).cloned()
    }
}

/// Where a fetch announces its answers as they come.
type Fetching = watch::Receiver<Landed>;

/// Where a fetch hands over its answers, by digest, a part at a time as they come. The
/// fetch is over when it and every clone of this are dropped; a digest it gave no answer
/// for by then gets an error.
#[derive(Clone)]
pub struct Deliveries(mpsc::UnboundedSender<HashMap<String, Answer>>);

impl Deliveries {
    pub fn deliver(&self, answers: HashMap<String, Answer>) {
        // The lookup's task ends only when every sender is dropped: it is listening.
        let _ = self.0.send(answers);
    }
}

struct Entry {
    judgement: Judgement,
    /// Its key in `Inner::by_expiry`.
    expiry: (Instant, u64),
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// The cached digests in order of expiry (ties broken by insertion), so that making room
    /// costs a few steps whatever the size of the cache.
    by_expiry: BTreeMap<(Instant, u64), String>,
    inserted: u64,
    /// Digests being fetched: their answer arrives on their fetch's channel.
    inflight: HashMap<String, Fetching>,
}

impl Inner {
    fn remove(&mut self, digest: &str) {
        if let Some(entry) = self.entries.remove(digest) {
            self.by_expiry.remove(&entry.expiry);
        }
    }

    /// Stores `judgement` until `expires`; when `max_entries` are cached already, the expired
    /// ones go, then the one closest to expiry.
    fn insert(
        &mut self,
        now: Instant,
        digest: &str,
        judgement: Judgement,
        expires: Instant,
        max_entries: usize,
    ) {
        self.remove(digest);
        // The first in expiry order is expired if any is, else the closest to expiry.
        while self.entries.len() >= max_entries.max(1) {
            let Some((_, first)) = self.by_expiry.pop_first() else {
                break;
            };
            self.entries.remove(&first);
        }
        // Other expired entries go too, a few per insert, so memory follows the live set.
        for _ in 0..4 {
            match self.by_expiry.first_key_value() {
                Some((expiry, _)) if expiry.0 <= now => {
                    if let Some((_, expired)) = self.by_expiry.pop_first() {
                        self.entries.remove(&expired);
                    }
                }
                _ => break,
            }
        }
        self.inserted += 1;
        let expiry = (expires, self.inserted);
        self.by_expiry.insert(expiry, digest.to_owned());
        self.entries
            .insert(digest.to_owned(), Entry { judgement, expiry });
    }
}

/// Counts of what lookups found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Misses that joined a fetch already under way.
    pub shared: u64,
    pub fetches: u64,
}

pub struct VerdictCache {
    config: CacheConfig,
    inner: Mutex<Inner>,
    stats: Mutex<CacheStats>,
}

impl VerdictCache {
    pub fn new(config: CacheConfig) -> Arc<Self> {
        Arc::new(VerdictCache {
            config,
            inner: Mutex::new(Inner::default()),
            stats: Mutex::new(CacheStats::default()),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent (every update
        // is a single insert or remove): keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> CacheStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, f: impl FnOnce(&mut CacheStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Drops every cached verdict; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut inner = self.inner();
        let n = inner.entries.len();
        inner.entries.clear();
        inner.by_expiry.clear();
        n
    }

    pub fn len(&self) -> usize {
        self.inner().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Answers for `digests` that are had by `deadline`: cached ones at once; the others
    /// from `fetch`, called (in a task of its own) with the digests nobody is fetching yet
    /// and shared with every lookup that asks for them meanwhile. A digest without an
    /// answer by `deadline` is not in the result; its fetch goes on and fills the cache.
    pub async fn lookup<F, Fut>(
        self: &Arc<Self>,
        digests: &[String],
        deadline: Instant,
        fetch: F,
    ) -> HashMap<String, (Answer, Source)>
    where
        F: FnOnce(Vec<String>, Deliveries) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let now = Instant::now();
        let mut answers = HashMap::new();
        let mut waiting = Vec::new();
        let mut mine = Vec::new();
        let (sender, fetching) = watch::channel(Landed::default());
        // A set, not a scan of `mine`: a pod may list thousands of images.
        let mut seen = HashSet::new();
        {
            let mut inner = self.inner();
            for digest in digests {
                if !seen.insert(digest.as_str()) {
                    continue;
                }
                if let Some(entry) = inner.entries.get(digest) {
                    if entry.expiry.0 > now {
                        answers
                            .insert(digest.clone(), (Ok(entry.judgement.clone()), Source::Cache));
                        self.count(|s| s.hits += 1);
                        metrics::counter!(ADMISSION_CACHE_HITS.name).increment(1);
                        continue;
                    }
                    inner.remove(digest);
                }
                self.count(|s| s.misses += 1);
                metrics::counter!(ADMISSION_CACHE_MISSES.name).increment(1);
                if let Some(rx) = inner.inflight.get(digest) {
                    self.count(|s| s.shared += 1);
                    waiting.push((digest.clone(), rx.clone()));
                    continue;
                }
                inner.inflight.insert(digest.clone(), fetching.clone());
                waiting.push((digest.clone(), fetching.clone()));
                mine.push(digest.clone());
            }
        }
        if !mine.is_empty() {
            self.count(|s| s.fetches += 1);
            let (deliveries, parts) = mpsc::unbounded_channel();
            let fetched = fetch(mine.clone(), Deliveries(deliveries));
            tokio::spawn(Arc::clone(self).announce(mine, fetched, parts, sender));
        }
        // Waits for each digest in turn until the deadline; then takes whatever else has
        // come meanwhile, without waiting.
        let mut waited = 0;
        let all_came = tokio::time::timeout_at(deadline.into(), async {
            for (digest, rx) in &mut waiting {
                let answer = answer_of(digest, rx).await;
                answers.insert(digest.clone(), (answer, Source::Backend));
                waited += 1;
            }
        })
        .await
        .is_ok();
        if !all_came {
            for (digest, rx) in &waiting[waited..] {
                if let Some(answer) = rx.borrow().answer(digest) {
                    answers.insert(digest.clone(), (answer, Source::Backend));
                }
            }
        }
        answers
    }

    /// Runs `fetched` (for the digests `mine`) and announces its answers as they come: each
    /// part stored and sent on `sender`, then an error for every digest that got none.
    async fn announce(
        self: Arc<Self>,
        mine: Vec<String>,
        fetched: impl Future<Output = ()> + Send + 'static,
        mut parts: mpsc::UnboundedReceiver<HashMap<String, Answer>>,
        sender: watch::Sender<Landed>,
    ) {
        // A task of its own: a fetch that panics still ends, and its digests get an error.
        let fetching = tokio::spawn(fetched);
        let mut asked: HashSet<String> = mine.into_iter().collect();
        while let Some(mut part) = parts.recv().await {
            // Only the digests asked about are announced, each once.
            part.retain(|digest, _| asked.remove(digest));
            if part.is_empty() {
                continue;
            }
            for (digest, answer) in &part {
                self.settle(digest, answer);
            }
            sender.send_modify(|landed| landed.answers.extend(part));
        }
        let _ = fetching.await;
        let rest: HashMap<String, Answer> = asked
            .into_iter()
            .map(|digest| {
                let answer = Err(Failure::new(
                    "the Scanner backend's reply has no verdict for it",
                    format!("the Scanner backend's reply has no verdict for {digest}"),
                ));
                self.settle(&digest, &answer);
                (digest, answer)
            })
            .collect();
        sender.send_modify(|landed| {
            landed.answers.extend(rest);
            landed.done = true;
        });
    }

    /// Stores a fetched answer (judgements only, for their TTL) and ends its fetch.
    fn settle(&self, digest: &str, answer: &Answer) {
        let mut inner = self.inner();
        inner.inflight.remove(digest);
        let Ok(judgement) = answer else {
            return;
        };
        let ttl = judgement
            .ttl
            .unwrap_or(self.config.default_ttl)
            .min(self.config.max_ttl);
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        inner.insert(
            now,
            digest,
            judgement.clone(),
            now + ttl,
            self.config.max_entries,
        );
    }
}

/// The answer for `digest` from the fetch `rx` announces, when it comes.
async fn answer_of(digest: &str, rx: &mut Fetching) -> Answer {
    loop {
        {
            let landed = rx.borrow_and_update();
            if let Some(answer) = landed.answer(digest) {
                return answer;
            }
            if landed.done {
                return Err(Failure::plain("the Scanner backend gave no verdict"));
            }
        }
        if rx.changed().await.is_err() {
            return rx
                .borrow()
                .answer(digest)
                .unwrap_or_else(|| Err(Failure::plain("the lookup was abandoned")));
        }
    }
}

#[cfg(test)]
mod tests;
