use super::*;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("zastava-spool-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

/// One sink, as with the HTTPS backend alone.
const ONE: &[&str] = &["https"];

/// The oldest batch the sink has not settled.
fn first(spool: &Spool) -> SpoolEntry {
    spool.peek(0).unwrap().unwrap().1
}

/// The sink delivered its oldest batch.
fn ack(spool: &mut Spool) {
    let (seq, _) = spool.peek(0).unwrap().unwrap();
    let settled = spool.settle(0, seq, true).unwrap();
    assert!(settled.released && !settled.stale && !settled.given_up);
}

fn entry(n: u64, body_bytes: usize) -> SpoolEntry {
    SpoolEntry {
        batch_id: format!("b-{n}"),
        events: n,
        records: 1,
        oldest_ns: 0,
        body: vec![n as u8; body_bytes],
    }
}

#[test]
fn batches_come_back_in_order_and_survive_reopening() {
    let d = dir("order");
    let mut spool = Spool::open(&d, 1 << 20, WhenFull::DropOldest, ONE).unwrap();
    for n in 1..=3 {
        assert!(spool.append(&entry(n, 100)).unwrap().stored);
    }
    assert_eq!(first(&spool).batch_id, "b-1");
    ack(&mut spool);
    assert_eq!(spool.pending_events(), 2 + 3);
    drop(spool);

    // As after a crash: the acknowledged batch stays gone, the others come back.
    let mut spool = Spool::open(&d, 1 << 20, WhenFull::DropOldest, ONE).unwrap();
    assert_eq!(spool.len(), 2);
    assert_eq!(first(&spool), entry(2, 100));
    ack(&mut spool);
    assert_eq!(first(&spool), entry(3, 100));
    assert!(spool.append(&entry(4, 100)).unwrap().stored);
    ack(&mut spool);
    assert_eq!(first(&spool).batch_id, "b-4");
    ack(&mut spool);
    assert!(spool.is_empty());
    assert_eq!(spool.pending_events(), 0);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_torn_last_frame_is_truncated_and_counted() {
    let d = dir("torn");
    let mut spool = Spool::open(&d, 1 << 20, WhenFull::DropOldest, ONE).unwrap();
    spool.append(&entry(1, 50)).unwrap();
    spool.append(&entry(2, 50)).unwrap();
    drop(spool);
    // Cut the second frame in half, as a crash mid-write would.
    let segment = segment_path(&d, 0);
    let size = fs::metadata(&segment).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(size - 20)
        .unwrap();

    let mut spool = Spool::open(&d, 1 << 20, WhenFull::DropOldest, ONE).unwrap();
    assert_eq!(spool.stats().torn, 1);
    assert_eq!(spool.len(), 1);
    assert_eq!(first(&spool), entry(1, 50));
    // Appending after recovery continues cleanly.
    spool.append(&entry(3, 50)).unwrap();
    drop(spool);
    let spool = Spool::open(&d, 1 << 20, WhenFull::DropOldest, ONE).unwrap();
    assert_eq!(spool.stats().torn, 0);
    assert_eq!(spool.len(), 2);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_corrupt_frame_is_detected_by_its_checksum() {
    let d = dir("corrupt");
    let mut spool = Spool::open(&d, 1 << 20, WhenFull::DropOldest, ONE).unwrap();
    spool.append(&entry(1, 64)).unwrap();
    drop(spool);
    let segment = segment_path(&d, 0);
    let mut data = fs::read(&segment).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    fs::write(&segment, data).unwrap();
    let spool = Spool::open(&d, 1 << 20, WhenFull::DropOldest, ONE).unwrap();
    assert_eq!((spool.stats().torn, spool.len()), (1, 0));
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_full_spool_drops_the_oldest_or_the_newest_and_says_how_many() {
    let d = dir("full-oldest");
    let frame = FRAME_HEADER + rmp_serde::to_vec_named(&entry(1, 1000)).unwrap().len() as u64;
    let mut spool = Spool::open(&d, frame * 3, WhenFull::DropOldest, ONE).unwrap();
    for n in 1..=3 {
        assert!(spool.append(&entry(n, 1000)).unwrap().stored);
    }
    let appended = spool.append(&entry(4, 1000)).unwrap();
    assert_eq!(
        appended,
        Appended {
            stored: true,
            evicted_events: 1,
            evicted_batches: 1,
            evicted_given_up: 0,
            evicted_unsettled: vec![1],
        }
    );
    assert_eq!(first(&spool).batch_id, "b-2");
    assert_eq!(spool.pending_events(), 2 + 3 + 4);
    fs::remove_dir_all(&d).unwrap();

    let d = dir("full-newest");
    let mut spool = Spool::open(&d, frame * 3, WhenFull::DropNewest, ONE).unwrap();
    for n in 1..=3 {
        spool.append(&entry(n, 1000)).unwrap();
    }
    assert_eq!(
        spool.append(&entry(4, 1000)).unwrap(),
        Appended {
            evicted_unsettled: vec![0],
            ..Appended::default()
        }
    );
    assert_eq!(first(&spool).batch_id, "b-1");
    assert_eq!(spool.len(), 3);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn segments_roll_over_and_acknowledged_ones_are_deleted() {
    let d = dir("segments");
    let mut spool = Spool::open(&d, 64 << 20, WhenFull::DropOldest, ONE).unwrap();
    // Batches of 3 MiB: three fill segment 0 past 8 MiB, so the fourth starts segment 1.
    for n in 1..=4 {
        spool.append(&entry(n, 3 << 20)).unwrap();
    }
    let segments = || {
        let mut v: Vec<u64> = fs::read_dir(&d)
            .unwrap()
            .flatten()
            .filter_map(|e| segment_seq(&e.file_name().to_string_lossy()))
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(segments(), [0, 1]);
    for _ in 0..3 {
        ack(&mut spool);
    }
    assert_eq!(segments(), [1]);
    drop(spool);
    let spool = Spool::open(&d, 64 << 20, WhenFull::DropOldest, ONE).unwrap();
    assert_eq!(first(&spool).batch_id, "b-4");
    fs::remove_dir_all(&d).unwrap();
}
