//! Verdicts by image digest, each kept for the TTL its answer gave. Lookups of digests not
//! cached share one fetch per digest: while a digest is being fetched, every other request
//! for it waits for that fetch rather than starting its own. A fetch announces all its
//! answers on one channel: a channel per digest cost some 300 bytes each, 10 MB for the
//! fullest review the body limit allows.
//!
//! A fetch runs as a task of its own, so a request that gives up (its budget ran out, its
//! client went away) does not cancel it: the answer still lands in the cache.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio::sync::watch;

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

/// Where a fetch announces its answers, by digest, once it has them all.
type Fetching = watch::Receiver<Option<Arc<HashMap<String, Answer>>>>;

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

    /// Answers for `digests`: cached ones at once; the others from `fetch`, called (in a
    /// task of its own) with the digests nobody is fetching yet, and shared with every
    /// lookup that asks for them meanwhile. Waits as long as it takes; the caller bounds it.
    pub async fn lookup<F, Fut>(
        self: &Arc<Self>,
        digests: &[String],
        fetch: F,
    ) -> HashMap<String, (Answer, Source)>
    where
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = HashMap<String, Answer>> + Send + 'static,
    {
        let now = Instant::now();
        let mut answers = HashMap::new();
        let mut waiting = Vec::new();
        let mut mine = Vec::new();
        let (sender, fetching) = watch::channel(None);
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
            let fetched = fetch(mine.clone());
            let cache = Arc::clone(self);
            tokio::spawn(async move {
                let mut results = fetched.await;
                // Only the digests asked about are announced.
                let mut answers = HashMap::with_capacity(mine.len());
                for digest in mine {
                    let answer = results.remove(&digest).unwrap_or_else(|| {
                        Err(Failure::new(
                            "the Scanner backend's reply has no verdict for it",
                            format!("the Scanner backend's reply has no verdict for {digest}"),
                        ))
                    });
                    cache.settle(&digest, &answer);
                    answers.insert(digest, answer);
                }
                let _ = sender.send(Some(Arc::new(answers)));
            });
        }
        for (digest, mut rx) in waiting {
            let answer = match rx.wait_for(Option::is_some).await {
                Ok(answers) => answers
                    .as_ref()
                    .and_then(|a| a.get(&digest).cloned())
                    .unwrap_or_else(|| Err(Failure::plain("no answer"))),
                Err(_) => Err(Failure::plain("the lookup was abandoned")),
            };
            answers.insert(digest, (answer, Source::Backend));
        }
        answers
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn allow(ttl_ms: u64) -> Judgement {
        Judgement {
            verdict: Verdict::Allow,
            reasons: vec![],
            ttl: Some(Duration::from_millis(ttl_ms)),
        }
    }

    fn cache(max_entries: usize) -> Arc<VerdictCache> {
        VerdictCache::new(CacheConfig {
            max_entries,
            default_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
        })
    }

    #[tokio::test]
    async fn concurrent_lookups_of_one_digest_share_one_fetch() {
        let cache = cache(100);
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, calls) = (Arc::clone(&cache), Arc::clone(&calls));
            tasks.push(tokio::spawn(async move {
                cache
                    .lookup(&["sha256:a".to_owned()], move |digests| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        async move {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            digests
                                .into_iter()
                                .map(|d| (d, Ok(allow(60_000))))
                                .collect()
                        }
                    })
                    .await
            }));
        }
        for task in tasks {
            let answers = task.await.unwrap();
            assert_eq!(answers["sha256:a"].0, Ok(allow(60_000)));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let stats = cache.stats();
        assert_eq!((stats.fetches, stats.misses, stats.shared), (1, 50, 49));
    }

    #[tokio::test]
    async fn answers_are_kept_for_their_ttl_and_errors_not_at_all() {
        let cache = cache(100);
        let fetch = |verdicts: HashMap<String, Answer>| {
            move |_digests: Vec<String>| async move { verdicts }
        };
        let one = |d: &str, a: Answer| HashMap::from([(d.to_owned(), a)]);
        let d = ["sha256:b".to_owned()];
        let (answer, source) = cache
            .lookup(&d, fetch(one("sha256:b", Ok(allow(150)))))
            .await["sha256:b"]
            .clone();
        assert_eq!((answer, source), (Ok(allow(150)), Source::Backend));
        let (_, source) = cache.lookup(&d, fetch(HashMap::new())).await["sha256:b"].clone();
        assert_eq!(source, Source::Cache);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (answer, source) = cache
            .lookup(&d, fetch(one("sha256:b", Err(Failure::plain("down")))))
            .await["sha256:b"]
            .clone();
        assert_eq!(
            (answer, source),
            (Err(Failure::plain("down")), Source::Backend)
        );
        // The error was not cached: the next lookup asks again.
        let (answer, _) = cache.lookup(&d, fetch(HashMap::new())).await["sha256:b"].clone();
        assert_eq!(
            answer,
            Err(Failure::new(
                "the Scanner backend's reply has no verdict for it",
                "the Scanner backend's reply has no verdict for sha256:b"
            ))
        );
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn a_full_cache_drops_what_expires_first() {
        let cache = cache(2);
        for (d, ttl) in [
            ("sha256:1", 10_000),
            ("sha256:2", 20_000),
            ("sha256:3", 30_000),
        ] {
            let answer = Ok(allow(ttl));
            cache
                .lookup(&[d.to_owned()], move |ds| async move {
                    ds.into_iter().map(|d| (d, answer.clone())).collect()
                })
                .await;
        }
        assert_eq!(cache.len(), 2);
        let (_, source) = cache
            .lookup(&["sha256:3".to_owned()], |_| async { HashMap::new() })
            .await["sha256:3"]
            .clone();
        assert_eq!(source, Source::Cache);
        let (answer, _) = cache
            .lookup(&["sha256:1".to_owned()], |_| async { HashMap::new() })
            .await["sha256:1"]
            .clone();
        assert!(answer.is_err(), "sha256:1 should have been evicted");
        assert_eq!(cache.clear(), 2);
    }

    fn digests(inner: &Inner) -> Vec<String> {
        let mut all: Vec<String> = inner.entries.keys().cloned().collect();
        all.sort();
        // The expiry index names exactly the cached digests.
        let mut indexed: Vec<String> = inner.by_expiry.values().cloned().collect();
        indexed.sort();
        assert_eq!(all, indexed);
        all
    }

    #[test]
    fn eviction_follows_expiry_not_insertion_and_the_index_stays_exact() {
        let now = Instant::now();
        let at = |s: u64| now + Duration::from_secs(s);
        let mut inner = Inner::default();
        inner.insert(now, "a", allow(0), at(300), 3);
        inner.insert(now, "b", allow(0), at(100), 3);
        inner.insert(now, "c", allow(0), at(200), 3);
        // Storing a digest again replaces its place in the order.
        inner.insert(now, "b", allow(0), at(400), 3);
        assert_eq!(digests(&inner), ["a", "b", "c"]);
        inner.insert(now, "d", allow(0), at(500), 3);
        assert_eq!(digests(&inner), ["a", "b", "d"], "c expired first");
        inner.insert(now, "e", allow(0), at(50), 3);
        assert_eq!(digests(&inner), ["b", "d", "e"], "then a");
        inner.remove("d");
        assert_eq!(digests(&inner), ["b", "e"]);
    }

    #[test]
    fn expired_verdicts_are_swept_as_new_ones_arrive() {
        let t0 = Instant::now();
        let mut inner = Inner::default();
        for i in 0..6 {
            let digest = format!("old{i}");
            inner.insert(t0, &digest, allow(0), t0 + Duration::from_secs(1), 100);
        }
        let later = t0 + Duration::from_secs(2);
        let expires = later + Duration::from_secs(60);
        inner.insert(later, "new1", allow(0), expires, 100);
        assert_eq!(digests(&inner), ["new1", "old4", "old5"]);
        inner.insert(later, "new2", allow(0), expires, 100);
        assert_eq!(digests(&inner), ["new1", "new2"]);
    }
}
