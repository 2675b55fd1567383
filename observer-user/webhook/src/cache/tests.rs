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

fn later() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

fn digest_list(names: &[&str]) -> Vec<String> {
    names.iter().map(|d| (*d).to_owned()).collect()
}

/// A fetch that delivers `answers` at once.
fn answering(
    answers: HashMap<String, Answer>,
) -> impl FnOnce(Vec<String>, Deliveries) -> std::future::Ready<()> {
    move |_, deliveries| {
        deliveries.deliver(answers);
        std::future::ready(())
    }
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
                .lookup(
                    &digest_list(&["sha256:a"]),
                    later(),
                    move |digests, deliveries| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        async move {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            deliveries.deliver(
                                digests
                                    .into_iter()
                                    .map(|d| (d, Ok(allow(60_000))))
                                    .collect(),
                            );
                        }
                    },
                )
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
    let one = |d: &str, a: Answer| HashMap::from([(d.to_owned(), a)]);
    let d = digest_list(&["sha256:b"]);
    let (answer, source) = cache
        .lookup(&d, later(), answering(one("sha256:b", Ok(allow(150)))))
        .await["sha256:b"]
        .clone();
    assert_eq!((answer, source), (Ok(allow(150)), Source::Backend));
    let (_, source) =
        cache.lookup(&d, later(), answering(HashMap::new())).await["sha256:b"].clone();
    assert_eq!(source, Source::Cache);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (answer, source) = cache
        .lookup(
            &d,
            later(),
            answering(one("sha256:b", Err(Failure::plain("down")))),
        )
        .await["sha256:b"]
        .clone();
    assert_eq!(
        (answer, source),
        (Err(Failure::plain("down")), Source::Backend)
    );
    // The error was not cached: the next lookup asks again.
    let (answer, _) =
        cache.lookup(&d, later(), answering(HashMap::new())).await["sha256:b"].clone();
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
async fn at_the_deadline_what_came_is_kept_and_only_the_rest_is_missing() {
    let cache = cache(100);
    let deny = Judgement {
        verdict: Verdict::Deny,
        reasons: vec!["CVE-2026-0001".into()],
        ttl: None,
    };
    cache
        .lookup(
            &digest_list(&["sha256:cached"]),
            later(),
            answering(HashMap::from([(
                "sha256:cached".to_owned(),
                Ok(deny.clone()),
            )])),
        )
        .await;
    // Another lookup's fetch, which answers in 50 ms.
    let other = {
        let cache = Arc::clone(&cache);
        tokio::spawn(async move {
            cache
                .lookup(
                    &digest_list(&["sha256:shared"]),
                    later(),
                    |digests, deliveries| async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        deliveries.deliver(
                            digests
                                .into_iter()
                                .map(|d| (d, Ok(allow(60_000))))
                                .collect(),
                        );
                    },
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    // This lookup's own fetch: one part answers at once, the other never before the
    // deadline.
    let started = Instant::now();
    let answers = cache
        .lookup(
            &digest_list(&[
                "sha256:slow",
                "sha256:shared",
                "sha256:quick",
                "sha256:cached",
            ]),
            started + Duration::from_millis(300),
            |digests, deliveries| async move {
                assert_eq!(digests, ["sha256:slow", "sha256:quick"]);
                deliveries.deliver(HashMap::from([(
                    "sha256:quick".to_owned(),
                    Err(Failure::plain("the Scanner backend answered 503")),
                )]));
                tokio::time::sleep(Duration::from_millis(600)).await;
                deliveries.deliver(HashMap::from([(
                    "sha256:slow".to_owned(),
                    Ok(allow(60_000)),
                )]));
            },
        )
        .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(550),
        "{took:?}"
    );
    let mut got: Vec<(&str, &Answer, Source)> = answers
        .iter()
        .map(|(d, (a, s))| (d.as_str(), a, *s))
        .collect();
    got.sort_by_key(|(d, _, _)| *d);
    assert_eq!(
        got,
        [
            ("sha256:cached", &Ok(deny), Source::Cache),
            (
                "sha256:quick",
                &Err(Failure::plain("the Scanner backend answered 503")),
                Source::Backend
            ),
            ("sha256:shared", &Ok(allow(60_000)), Source::Backend),
        ]
    );
    assert_eq!(other.await.unwrap()["sha256:shared"].0, Ok(allow(60_000)));
    // The answer that came after the deadline still fills the cache.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (answer, source) = cache
        .lookup(
            &digest_list(&["sha256:slow"]),
            later(),
            answering(HashMap::new()),
        )
        .await["sha256:slow"]
        .clone();
    assert_eq!((answer, source), (Ok(allow(60_000)), Source::Cache));
}

#[tokio::test]
async fn a_fetch_that_panics_leaves_its_digests_to_the_next_lookup() {
    let cache = cache(100);
    let d = digest_list(&["sha256:p"]);
    let (answer, _) = cache
        .lookup(&d, later(), |_, _| async { panic!("a fetch that fails") })
        .await["sha256:p"]
        .clone();
    assert_eq!(
        answer,
        Err(Failure::new(
            "the Scanner backend's reply has no verdict for it",
            "the Scanner backend's reply has no verdict for sha256:p"
        ))
    );
    let (answer, source) = cache
        .lookup(
            &d,
            later(),
            answering(HashMap::from([("sha256:p".to_owned(), Ok(allow(60_000)))])),
        )
        .await["sha256:p"]
        .clone();
    assert_eq!((answer, source), (Ok(allow(60_000)), Source::Backend));
    assert_eq!(cache.stats().fetches, 2);
}

#[tokio::test]
async fn a_full_cache_drops_what_expires_first() {
    let cache = cache(2);
    for (d, ttl) in [
        ("sha256:1", 10_000),
        ("sha256:2", 20_000),
        ("sha256:3", 30_000),
    ] {
        cache
            .lookup(
                &digest_list(&[d]),
                later(),
                answering(HashMap::from([(d.to_owned(), Ok(allow(ttl)))])),
            )
            .await;
    }
    assert_eq!(cache.len(), 2);
    let (_, source) = cache
        .lookup(
            &digest_list(&["sha256:3"]),
            later(),
            answering(HashMap::new()),
        )
        .await["sha256:3"]
        .clone();
    assert_eq!(source, Source::Cache);
    let (answer, _) = cache
        .lookup(
            &digest_list(&["sha256:1"]),
            later(),
            answering(HashMap::new()),
        )
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
