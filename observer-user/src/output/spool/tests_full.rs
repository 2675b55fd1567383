//! The spool on a filesystem that is full: on a small tmpfs of its own (needs root).

use zastava_testing::tmpfs::Tmpfs;

use super::*;

fn entry(n: u64, body_bytes: usize) -> SpoolEntry {
    SpoolEntry {
        batch_id: format!("full-{n}"),
        events: n,
        records: 1,
        oldest_ns: 0,
        body: vec![n as u8; body_bytes],
    }
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("segment-"))
        .collect();
    names.sort();
    names
}

#[test]
fn batches_spooled_before_the_disk_filled_are_settled_and_their_space_comes_back() {
    let disk = Tmpfs::mount("zastava-spool-full", 256 << 10);
    let mut spool = Spool::open(
        disk.path(),
        1 << 30,
        WhenFull::DropOldest,
        &["https", "nats"],
    )
    .unwrap();
    assert!(spool.reserve.held(), "the reserve is taken at open");
    assert_eq!(
        fs::metadata(disk.path().join("reserve")).unwrap().len(),
        reserve::RESERVE_BYTES as u64
    );

    // Appends until the disk refuses one: the refusal names ENOSPC, and the frame cut
    // short is taken off the segment again.
    let mut stored = 0_u64;
    let err = loop {
        match spool.append(&entry(stored + 1, 16 << 10)) {
            Ok(appended) => {
                assert!(appended.stored);
                stored += 1;
            }
            Err(err) => break err,
        }
    };
    assert!(stored >= 4, "{stored} batches spooled");
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert_eq!(spool.len() as u64, stored);
    let segment = disk.path().join("segment-0000000000000000.spool");
    assert_eq!(fs::metadata(&segment).unwrap().len(), spool.pending_bytes());
    // Whatever room the refused frame left is taken too: not a byte free.
    let filler = disk.fill("filler");
    assert_eq!(disk.free_bytes(), 0);

    // Both sinks deliver everything: every cursor move is recorded (on the reserve's
    // room), every batch leaves the spool, and the segment is removed.
    for sink in 0..2 {
        for n in 1..=stored {
            let (seq, got) = spool.peek(sink).unwrap().unwrap();
            assert_eq!(got.batch_id, format!("full-{n}"));
            let settled = spool.settle(sink, seq, true).unwrap();
            assert!(!settled.stale);
            assert_eq!(settled.released, sink == 1);
        }
    }
    assert!(spool.is_empty());
    assert_eq!(spool.pending_events(), 0);
    assert_eq!(spool.pending_for(0), (0, 0));
    assert_eq!(spool.pending_for(1), (0, 0));
    assert_eq!(segments(disk.path()), Vec::<String>::new());
    assert_eq!(
        fs::read_to_string(disk.path().join("head")).unwrap(),
        "1 0\n",
        "the head names the next segment"
    );

    // The freed segment gives the reserve its room back (when it is freed, or at the
    // next append if the kernel returns the space a moment later): with the filler still
    // there, a new batch is spooled again.
    disk.wait_until_free(reserve::RESERVE_BYTES as u64 + 8192);
    assert!(spool.append(&entry(99, 1000)).unwrap().stored);
    assert!(spool.reserve.held());
    disk.unfill(&filler);
    assert_eq!(
        segments(disk.path()),
        vec!["segment-0000000000000001.spool".to_owned()]
    );
    drop(spool);

    // A reopened spool has exactly the one batch, for both sinks.
    let spool = Spool::open(
        disk.path(),
        1 << 30,
        WhenFull::DropOldest,
        &["https", "nats"],
    )
    .unwrap();
    assert_eq!(spool.len(), 1);
    assert_eq!(spool.peek(0).unwrap().unwrap().1, entry(99, 1000));
    assert_eq!(spool.peek(1).unwrap().unwrap().1, entry(99, 1000));
    assert_eq!(spool.stats(), SpoolStats::default());
}

#[test]
fn without_its_reserve_the_spool_refuses_new_batches_until_space_returns() {
    let disk = Tmpfs::mount("zastava-spool-noreserve", 512 << 10);
    let mut spool = Spool::open(disk.path(), 1 << 30, WhenFull::DropOldest, &["https"]).unwrap();
    assert!(spool.append(&entry(1, 1000)).unwrap().stored);
    let filler = disk.fill("filler");

    // The cursor write finds the disk full and uses the reserve.
    let (seq, _) = spool.peek(0).unwrap().unwrap();
    assert!(spool.settle(0, seq, true).unwrap().released);
    assert!(spool.is_empty());
    assert_eq!(segments(disk.path()), Vec::<String>::new());

    // The new cursor and head files took pages of the reserve's room, so it cannot be
    // whole again: a new batch is refused, and the spool is unchanged.
    let err = spool.append(&entry(2, 1000)).unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert!(spool.is_empty());

    // A cursor write with the reserve given up and no segment freed: a batch that
    // needs new room is refused (by the reserve taking it back, or by the disk).
    disk.unfill(&filler);
    assert!(spool.append(&entry(3, 1000)).unwrap().stored);
    assert!(spool.append(&entry(4, 1000)).unwrap().stored);
    let filler = disk.fill("filler");
    let (seq, _) = spool.peek(0).unwrap().unwrap();
    assert!(spool.settle(0, seq, true).unwrap().released);
    assert!(!spool.reserve.held(), "batch 4 keeps the segment");
    let err = spool.append(&entry(5, 8000)).unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert_eq!(spool.len(), 1);

    disk.unfill(&filler);
    assert!(spool.append(&entry(6, 10)).unwrap().stored);
    assert!(spool.reserve.held());
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let (seq, got) = spool.peek(0).unwrap().unwrap();
            spool.settle(0, seq, true).unwrap();
            got.batch_id
        })
        .collect();
    assert_eq!(ids, ["full-4", "full-6"]);
}

#[test]
fn a_write_the_full_disk_refuses_evicts_nothing() {
    let disk = Tmpfs::mount("zastava-spool-evict", 512 << 10);
    // Room for three batches of 20 KiB by the spool's own limit.
    let mut spool = Spool::open(disk.path(), 64 << 10, WhenFull::DropOldest, &["https"]).unwrap();
    for n in 1..=3 {
        assert!(spool.append(&entry(n, 20 << 10)).unwrap().stored);
    }
    let before = (spool.len(), spool.pending_events(), spool.pending_for(0));
    let filler = disk.fill("filler");

    // The fourth would evict the first, but the disk refuses it: nothing is evicted
    // (an eviction the caller never hears of would be lost from the account).
    let err = spool.append(&entry(4, 20 << 10)).unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert_eq!(
        (spool.len(), spool.pending_events(), spool.pending_for(0)),
        before
    );
    assert_eq!(spool.peek(0).unwrap().unwrap().1.batch_id, "full-1");

    // With room again the same append evicts the oldest and says so.
    disk.unfill(&filler);
    let appended = spool.append(&entry(4, 20 << 10)).unwrap();
    assert!(appended.stored);
    assert_eq!(appended.evicted_batches, 1);
    assert_eq!(appended.evicted_events, 1);
    assert_eq!(appended.evicted_unsettled, vec![1]);
    assert_eq!(spool.pending_events(), 2 + 3 + 4);
    assert_eq!(spool.peek(0).unwrap().unwrap().1.batch_id, "full-2");
}
