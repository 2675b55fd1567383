use super::*;
use crate::record::{Attribution, EdgeDetail, EdgeEvent, HostIdentity, Image, ProcessSnapshot};

fn host() -> HostIdentity {
    HostIdentity::for_tests()
}

fn open(seq: u64, path: &str, result: i64) -> Record {
    Record::Edge {
        event: EdgeEvent {
            seq,
            boot_ns: 0,
            cgroup_id: 1,
            process: ProcessSnapshot {
                pid: 1,
                tid: 1,
                ppid: None,
                uid: 0,
                gid: 0,
                comm: [0; 16],
                image: Arc::new(Image::default()),
                cwd: None,
            },
            detail: EdgeDetail::Open {
                syscall: "openat",
                path: path.into(),
                requested: None,
                path_resolved: true,
                path_truncated: false,
                path_deleted: false,
                from_caller: false,
                flags: 0,
                result,
            },
            code_id: None,
            repeats: crate::record::HeldRepeats::default(),
            repeats_only: false,
            dedup_key: None,
            memory_shared: false,
            files_shared: false,
        },
        attribution: Attribution::host(),
    }
}

fn config() -> BatchConfig {
    BatchConfig {
        max_events: 100,
        max_age: Duration::from_millis(500),
        reorder_window: Duration::from_secs(1),
        dedup: true,
        max_held_events: 1000,
        max_held_bytes: u64::MAX,
    }
}

const S: i128 = 1_000_000_000;

fn paths(batch: &Batch) -> Vec<(String, u64)> {
    batch
        .items
        .iter()
        .map(|i| match &i.record {
            Record::Edge { event, .. } => match &event.detail {
                EdgeDetail::Open { path, .. } => (path.to_str_lossy().into_owned(), i.count),
                _ => unreachable!(),
            },
            _ => unreachable!(),
        })
        .collect()
}

#[test]
fn records_wait_for_the_watermark_and_leave_sorted() {
    let h = host();
    let mut b = Batcher::new(config());
    let t0 = Instant::now();
    // Arrive out of order.
    b.push(Item::new(10 * S + 300, &h, open(2, "/b", 3)));
    b.push(Item::new(10 * S + 100, &h, open(1, "/a", 3)));
    b.push(Item::new(12 * S, &h, open(3, "/c", 3)));
    // At 10.5 s nothing is older than the 1 s window.
    assert!(b.poll(10 * S + S / 2, t0).is_none());
    // At 11.5 s the first two are ready, but the batch is not due before max_age.
    assert!(b.poll(11 * S + S / 2, t0).is_none());
    let batch = b
        .poll(11 * S + S / 2, t0 + Duration::from_millis(600))
        .unwrap();
    assert_eq!(paths(&batch), [("/a".into(), 1), ("/b".into(), 1)]);
    assert_eq!(b.held_records(), 1);
}

#[test]
fn repeats_are_merged_with_count_first_and_last_seen() {
    let h = host();
    let mut b = Batcher::new(config());
    for i in 0..5 {
        b.push(Item::new(
            10 * S + i,
            &h,
            open(i as u64, "/etc/app.conf", 3 + i as i64),
        ));
    }
    b.push(Item::new(10 * S + 7, &h, open(9, "/etc/app.conf", -2)));
    let t0 = Instant::now();
    b.poll(20 * S, t0);
    let batch = b.poll(20 * S, t0 + Duration::from_secs(1)).unwrap();
    // Five successful opens (different fds) are one edge; the failed one is another.
    assert_eq!(
        paths(&batch),
        [("/etc/app.conf".into(), 5), ("/etc/app.conf".into(), 1)]
    );
    assert_eq!(batch.items[0].at_ns, 10 * S);
    assert_eq!(batch.items[0].last_ns, 10 * S + 4);
    assert_eq!(batch.edge_occurrences(), 6);
    assert_eq!(b.stats().merged, 4);
}

#[test]
fn an_edge_read_through_a_shared_descriptor_table_keeps_its_mark_apart() {
    let h = host();
    let mut b = Batcher::new(config());
    let marked = |seq| {
        let mut record = open(seq, "/etc/app.conf", 3);
        if let Record::Edge { event, .. } = &mut record {
            event.files_shared = true;
        }
        record
    };
    b.push(Item::new(10 * S, &h, open(1, "/etc/app.conf", 3)));
    b.push(Item::new(10 * S + 1, &h, marked(2)));
    b.push(Item::new(10 * S + 2, &h, marked(3)));
    b.push(Item::new(10 * S + 3, &h, open(4, "/etc/app.conf", 3)));
    let t0 = Instant::now();
    b.poll(20 * S, t0);
    let batch = b.poll(20 * S, t0 + Duration::from_secs(1)).unwrap();
    let seen: Vec<(bool, u64)> = batch
        .items
        .iter()
        .map(|i| match &i.record {
            Record::Edge { event, .. } => (event.files_shared, i.count),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(seen, [(false, 2), (true, 2)]);
}

#[test]
fn edges_of_the_same_file_with_other_marks_are_not_merged() {
    type Mark = fn(&mut EdgeEvent);
    let marks: [(&str, Mark); 5] = [
        ("memory_shared", |e| e.memory_shared = true),
        ("from_caller", |e| {
            if let EdgeDetail::Open { from_caller, .. } = &mut e.detail {
                *from_caller = true;
            }
        }),
        ("path_resolved", |e| {
            if let EdgeDetail::Open { path_resolved, .. } = &mut e.detail {
                *path_resolved = !*path_resolved;
            }
        }),
        ("path_truncated", |e| {
            if let EdgeDetail::Open { path_truncated, .. } = &mut e.detail {
                *path_truncated = true;
            }
        }),
        ("path_deleted", |e| {
            if let EdgeDetail::Open { path_deleted, .. } = &mut e.detail {
                *path_deleted = true;
            }
        }),
    ];
    for (name, mark) in marks {
        let h = host();
        let mut b = Batcher::new(config());
        let marked = |seq| {
            let mut record = open(seq, "/etc/app.conf", 3);
            if let Record::Edge { event, .. } = &mut record {
                mark(event);
            }
            record
        };
        b.push(Item::new(10 * S, &h, open(1, "/etc/app.conf", 3)));
        b.push(Item::new(10 * S + 1, &h, marked(2)));
        b.push(Item::new(10 * S + 2, &h, open(3, "/etc/app.conf", 3)));
        b.push(Item::new(10 * S + 3, &h, marked(4)));
        let t0 = Instant::now();
        b.poll(20 * S, t0);
        let batch = b.poll(20 * S, t0 + Duration::from_secs(1)).unwrap();
        let counts: Vec<u64> = batch.items.iter().map(|i| i.count).collect();
        assert_eq!(counts, [2, 2], "{name}");
        let firsts: Vec<u64> = batch
            .items
            .iter()
            .map(|i| match &i.record {
                Record::Edge { event, .. } => event.seq,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            firsts,
            [1, 2],
            "{name}: each kept with its own first occurrence"
        );
    }
}

#[test]
fn edges_whose_fingerprints_collide_stay_apart_and_their_repeats_still_merge() {
    let h = host();
    let mut b = Batcher::new(config());
    let batch: Vec<Item> = ["/a", "/b", "/a", "/c", "/b", "/a"]
        .iter()
        .enumerate()
        .map(|(i, path)| Item::new(10 * S + i as i128, &h, open(i as u64, path, 3)))
        .collect();
    // Every edge gets the same fingerprint: only same_edge tells them apart.
    let merged = b.merge_by(batch, |_| Some(7));
    assert_eq!(
        paths(&Batch { items: merged }),
        [("/a".into(), 3), ("/b".into(), 2), ("/c".into(), 1)]
    );
    assert_eq!(b.stats().merged, 3);
}

#[test]
fn a_full_batch_closes_at_once_and_is_cut_in_sort_order() {
    let h = host();
    let mut b = Batcher::new(BatchConfig {
        max_events: 3,
        ..config()
    });
    for i in 0..5 {
        b.push(Item::new(
            10 * S + i,
            &h,
            open(i as u64, &format!("/f{i}"), 3),
        ));
    }
    let t0 = Instant::now();
    let first = b.poll(20 * S, t0).unwrap();
    assert_eq!(first.items.len(), 3);
    let second = b.poll(20 * S, t0 + Duration::from_secs(1)).unwrap();
    assert_eq!(second.items.len(), 2);
    // Per workload, the second batch is not older than the first.
    assert!(first.items.last().unwrap().at_ns <= second.items[0].at_ns);
}

#[test]
fn records_arriving_after_their_workload_moved_on_are_marked_late() {
    let h = host();
    let mut b = Batcher::new(config());
    let t0 = Instant::now();
    b.push(Item::new(10 * S, &h, open(1, "/a", 3)));
    b.poll(20 * S, t0);
    assert!(b.poll(20 * S, t0 + Duration::from_secs(1)).is_some());
    b.push(Item::new(9 * S, &h, open(2, "/old", 3)));
    b.poll(20 * S, t0);
    let batch = b.poll(20 * S, t0 + Duration::from_secs(2)).unwrap();
    assert!(batch.items[0].late);
    assert_eq!(b.stats().late, 1);
}

#[test]
fn too_many_held_records_are_released_early_and_counted() {
    let h = host();
    let mut b = Batcher::new(BatchConfig {
        max_events: 2,
        max_held_events: 3,
        ..config()
    });
    for i in 0..4 {
        b.push(Item::new(
            100 * S + i,
            &h,
            open(i as u64, &format!("/x{i}"), 3),
        ));
    }
    let batch = b.poll(100 * S, Instant::now()).unwrap();
    assert_eq!(paths(&batch), [("/x0".into(), 1), ("/x1".into(), 1)]);
    assert_eq!(b.stats().forced, 2);
}

#[test]
fn too_many_held_bytes_release_the_oldest_early_and_are_counted() {
    let h = host();
    let items: Vec<Item> = (0..6)
        .map(|i| Item::new(100 * S + i, &h, open(i as u64, &format!("/data/{i:04}"), 3)))
        .collect();
    let each = items[0].footprint() as u64;
    // An item, and the 10 bytes of its path besides.
    assert_eq!(each, (size_of::<Item>() + "/data/0000".len()) as u64);
    let mut b = Batcher::new(BatchConfig {
        max_events: 2,
        max_held_bytes: 4 * each,
        ..config()
    });
    for item in items {
        b.push(item);
    }
    assert_eq!(b.held_bytes(), 6 * each);
    // Nothing is past the watermark (200 s), but 6 records' bytes exceed the bound of 4:
    // the oldest leave, a batch at a time, until the rest fit.
    let now = Instant::now();
    let first = b.poll(100 * S, now).unwrap();
    assert_eq!(
        paths(&first),
        [("/data/0000".into(), 1), ("/data/0001".into(), 1)]
    );
    assert_eq!(b.held_bytes(), 4 * each);
    assert!(b.poll(100 * S, now).is_none(), "within the bound: held");
    assert_eq!(b.stats().forced, 2);
    assert_eq!(b.held_records(), 4);
}

#[test]
fn drain_releases_everything() {
    let h = host();
    let mut b = Batcher::new(BatchConfig {
        max_events: 2,
        ..config()
    });
    for i in 0..5 {
        b.push(Item::new(
            100 * S + i,
            &h,
            open(i as u64, &format!("/y{i}"), 3),
        ));
    }
    let batches = b.drain();
    assert_eq!(
        batches.iter().map(|b| b.items.len()).collect::<Vec<_>>(),
        [2, 2, 1]
    );
    assert_eq!(b.held_edges(), 0);
}
