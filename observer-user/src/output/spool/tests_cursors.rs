//! The spool with several sinks: each reads with its own cursor, a batch stays until every
//! sink settled it, and all of it survives reopening.

use super::*;

const TWO: &[&str] = &["https", "nats"];
const HTTPS: usize = 0;
const NATS: usize = 1;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("zastava-cursors-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn entry(n: u64) -> SpoolEntry {
    SpoolEntry {
        batch_id: format!("b-{n}"),
        events: n,
        records: 1,
        oldest_ns: 0,
        body: vec![n as u8; 200],
    }
}

/// The batch id `sink` would send next.
fn next_id(spool: &Spool, sink: usize) -> Option<String> {
    spool.peek(sink).unwrap().map(|(_, e)| e.batch_id)
}

/// `sink` settles the batch it would send next.
fn settle(spool: &mut Spool, sink: usize, delivered: bool) -> Settled {
    let (seq, _) = spool.peek(sink).unwrap().unwrap();
    spool.settle(sink, seq, delivered).unwrap()
}

#[test]
fn a_batch_stays_until_every_sink_settled_it_and_a_slow_sink_holds_back_no_other() {
    let d = dir("slow");
    let mut spool = Spool::open(&d, 1 << 20, WhenFull::DropOldest, TWO).unwrap();
    for n in 1..=3 {
        spool.append(&entry(n)).unwrap();
    }
    // The HTTPS sink runs ahead; NATS has not delivered anything.
    for n in 1..=3 {
        assert_eq!(next_id(&spool, HTTPS).as_deref(), Some(&*format!("b-{n}")));
        let settled = settle(&mut spool, HTTPS, true);
        assert_eq!(settled, Settled::default(), "NATS still needs b-{n}");
    }
    assert_eq!(next_id(&spool, HTTPS), None);
    assert_eq!(next_id(&spool, NATS).as_deref(), Some("b-1"));
    assert_eq!((spool.len(), spool.pending_events()), (3, 6));
    assert_eq!(spool.pending_for(HTTPS), (0, 0));
    assert_eq!(spool.pending_for(NATS), (3, 6));

    let settled = settle(&mut spool, NATS, true);
    assert_eq!(
        settled,
        Settled {
            stale: false,
            released: true,
            given_up: false
        }
    );
    assert_eq!((spool.len(), spool.pending_events()), (2, 5));
    drop(spool);

    // Reopened: each sink resumes at its own place; what HTTPS delivered in the earlier
    // run is reported as such.
    let mut spool = Spool::open(&d, 1 << 20, WhenFull::DropOldest, TWO).unwrap();
    assert_eq!(next_id(&spool, HTTPS), None);
    assert_eq!(next_id(&spool, NATS).as_deref(), Some("b-2"));
    assert_eq!(spool.recovered(HTTPS), (5, 0));
    assert_eq!(spool.recovered(NATS), (0, 0));
    assert_eq!(spool.pending_for(NATS), (2, 5));
    // A new batch goes to both.
    spool.append(&entry(4)).unwrap();
    assert_eq!(next_id(&spool, HTTPS).as_deref(), Some("b-4"));
    assert_eq!(spool.pending_for(HTTPS), (1, 4));
    assert_eq!(spool.pending_for(NATS), (3, 9));
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_batch_one_sink_gave_up_on_is_remembered_as_such_across_a_restart() {
    let d = dir("given-up");
    let mut spool = Spool::open(&d, 1 << 20, WhenFull::DropOldest, TWO).unwrap();
    spool.append(&entry(1)).unwrap();
    spool.append(&entry(2)).unwrap();
    // HTTPS refuses b-1 for good, then delivers b-2.
    assert_eq!(settle(&mut spool, HTTPS, false), Settled::default());
    settle(&mut spool, HTTPS, true);
    drop(spool);
    assert_eq!(
        fs::read_to_string(d.join("cursor-https"))
            .unwrap()
            .lines()
            .count(),
        2,
        "the position and one given-up record"
    );

    let mut spool = Spool::open(&d, 1 << 20, WhenFull::DropOldest, TWO).unwrap();
    assert_eq!(spool.recovered(HTTPS), (2, 1));
    let settled = settle(&mut spool, NATS, true);
    assert!(settled.released && settled.given_up, "{settled:?}");
    let settled = settle(&mut spool, NATS, true);
    assert!(settled.released && !settled.given_up, "{settled:?}");
    assert!(spool.is_empty());
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn eviction_counts_only_for_the_sinks_that_had_not_settled_the_batch() {
    let d = dir("evict");
    let frame = FRAME_HEADER + rmp_serde::to_vec_named(&entry(1)).unwrap().len() as u64;
    let mut spool = Spool::open(&d, frame * 2, WhenFull::DropOldest, TWO).unwrap();
    spool.append(&entry(1)).unwrap();
    spool.append(&entry(1)).unwrap();
    // HTTPS delivered the first; NATS is down.
    settle(&mut spool, HTTPS, true);
    let (nats_seq, in_flight) = spool.peek(NATS).unwrap().unwrap();
    assert_eq!(in_flight.batch_id, "b-1");
    let appended = spool.append(&entry(1)).unwrap();
    assert_eq!(
        appended,
        Appended {
            stored: true,
            evicted_events: 1,
            evicted_batches: 1,
            evicted_given_up: 0,
            evicted_unsettled: vec![0, 1],
        }
    );
    // NATS's send of the evicted batch finishes after the eviction: nothing changes.
    let settled = spool.settle(NATS, nats_seq, true).unwrap();
    assert!(settled.stale, "{settled:?}");
    assert_eq!(spool.pending_for(NATS), (2, 2));
    assert_eq!(spool.pending_for(HTTPS), (2, 2));
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn batches_every_sink_settled_before_a_crash_are_removed_on_open() {
    let d = dir("crash");
    let mut spool = Spool::open(&d, 1 << 20, WhenFull::DropOldest, TWO).unwrap();
    spool.append(&entry(1)).unwrap();
    spool.append(&entry(2)).unwrap();
    let head_before = fs::read_to_string(d.join("head")).ok();
    settle(&mut spool, HTTPS, true);
    settle(&mut spool, NATS, true);
    drop(spool);
    // As if the process died after NATS's cursor was written but before the head moved.
    match head_before {
        Some(text) => fs::write(d.join("head"), text).unwrap(),
        None => fs::remove_file(d.join("head")).unwrap(),
    }
    let spool = Spool::open(&d, 1 << 20, WhenFull::DropOldest, TWO).unwrap();
    assert_eq!(spool.stats().settled_on_open, 1);
    assert_eq!((spool.len(), spool.pending_events()), (1, 2));
    assert_eq!(next_id(&spool, HTTPS).as_deref(), Some("b-2"));
    assert_eq!(next_id(&spool, NATS).as_deref(), Some("b-2"));
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_sink_added_later_starts_at_the_head_and_a_removed_one_is_forgotten() {
    let d = dir("added");
    let mut spool = Spool::open(&d, 1 << 20, WhenFull::DropOldest, &["https"]).unwrap();
    for n in 1..=3 {
        spool.append(&entry(n)).unwrap();
    }
    settle(&mut spool, 0, true);
    drop(spool);
    // A spool written before sinks had cursors has a head only; so does one whose sinks
    // are all new: they start at the head.
    let spool = Spool::open(&d, 1 << 20, WhenFull::DropOldest, &["redis", "https"]).unwrap();
    assert_eq!(spool.sinks().collect::<Vec<_>>(), ["redis", "https"]);
    assert_eq!(next_id(&spool, 0).as_deref(), Some("b-2"));
    assert_eq!(next_id(&spool, 1).as_deref(), Some("b-2"));
    drop(spool);
    let spool = Spool::open(&d, 1 << 20, WhenFull::DropOldest, &["redis"]).unwrap();
    assert!(!d.join("cursor-https").exists());
    assert_eq!(spool.pending_for(0), (2, 5));
    fs::remove_dir_all(&d).unwrap();
}
