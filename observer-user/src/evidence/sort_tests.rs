use proptest::prelude::*;

use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("zastava-sort-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A record whose line holds all its fields, as in a real stream.
fn slot(w: u8, t: i128, k: u8, n: u32, digest: bool) -> Slot {
    Slot {
        workload: vec![b'a' + w],
        instant: t,
        kind: vec![b'k', b'0' + k],
        digest: digest.then(|| format!("sha256:{w}").into_bytes()),
        line: format!("{{\"d\":{digest},\"k\":{k},\"n\":{n},\"t\":{t},\"w\":{w}}}").into_bytes(),
    }
}

fn sorted(records: &[Slot], budget: usize) -> (Vec<Slot>, u64, usize) {
    let dir = Dir::new();
    let mut sorter = Sorter::new(&dir.0, "t", budget);
    for r in records {
        sorter.push(&r.rec()).unwrap();
    }
    let runs = sorter.runs();
    let mut merger = sorter.finish().unwrap();
    let mut out = Vec::new();
    while let Some(rec) = merger.head() {
        let mut s = Slot::default();
        s.set(&rec);
        out.push(s);
        merger.advance().unwrap();
    }
    (out, merger.duplicates, runs)
}

fn expected(records: &[Slot]) -> Vec<Slot> {
    let mut all = records.to_vec();
    all.sort_by(|a, b| a.rec().stream_cmp(&b.rec()));
    all.dedup();
    all
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_budget_gives_the_sorted_unique_records(
        items in prop::collection::vec((0u8..3, 0i128..5, 0u8..3, 0u32..40, any::<bool>()), 0..300),
        budget in prop::sample::select(vec![1024usize, 4096, 1 << 20]),
    ) {
        let records: Vec<Slot> = items.iter().map(|&(w, t, k, n, d)| slot(w, t, k, n, d)).collect();
        let (out, duplicates, _) = sorted(&records, budget);
        let want = expected(&records);
        prop_assert_eq!(duplicates as usize, records.len() - want.len());
        prop_assert_eq!(out, want);
    }
}

#[test]
fn more_runs_than_one_merge_takes_are_merged_in_rounds() {
    let make = |n: u32| {
        slot(
            (n % 3) as u8,
            i128::from(n % 97),
            (n % 2) as u8,
            n,
            n.is_multiple_of(5),
        )
    };
    // 15,000 records, then the first 5,000 again in reverse (an overlapping file).
    let records: Vec<Slot> = (0..15_000)
        .map(make)
        .chain((0..5_000).rev().map(make))
        .collect();
    let (out, duplicates, runs) = sorted(&records, 4096);
    assert!(
        runs > 2 * FAN_IN,
        "only {runs} runs: the test must force merge rounds"
    );
    assert_eq!(duplicates, 5_000);
    let want = expected(&records);
    assert_eq!(want.len(), 15_000);
    assert!(
        out == want,
        "the merged order differs from a sort of everything in memory"
    );
}

#[test]
fn released_memory_is_spilled_first() {
    let dir = Dir::new();
    let mut sorter = Sorter::new(&dir.0, "t", 1 << 20);
    for n in 0..10 {
        sorter
            .push(&slot(0, i128::from(10 - n), 0, n as u32, false).rec())
            .unwrap();
    }
    assert!(sorter.resident() > 0);
    sorter.release().unwrap();
    assert_eq!(sorter.resident(), 0);
    assert_eq!(sorter.runs(), 1);
    let mut merger = sorter.finish().unwrap();
    let mut instants = Vec::new();
    while let Some(rec) = merger.head() {
        instants.push(rec.instant);
        merger.advance().unwrap();
    }
    assert_eq!(instants, (1..=10).collect::<Vec<i128>>());
}
