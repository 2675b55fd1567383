//! The bytes of a fixed, varied set of records, batched and encoded as the pipeline ships
//! them, must not change: the NDJSON lines and the envelope body are compared with digests
//! taken from the serde-based writer the pipeline used before records were written
//! directly. Any change to a record's JSON shows here first; a deliberate one (a schema
//! change) updates the digests and says why.

use std::{
    io::Read as _,
    sync::Arc,
    time::{Duration, Instant},
};

use observer_common::identity::{DigestKind, PodRef};
use sha2::{Digest as _, Sha256};

use super::encode_batch;
use crate::{
    output::envelope::Envelope,
    pipeline::batch::{BatchConfig, Batcher},
    record::{
        Attribution, ContainerInfo, ContainerState, EdgeDetail, EdgeEvent, Enrichment, HeldRepeats,
        HostIdentity, Image, ImageInfo, Item, Lifecycle, PodInfo, ProcessSnapshot, Raw, Record,
        SocketTarget,
    },
};

/// A small deterministic generator (xorshift), so the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn container(n: u32, digest: Option<&str>, tenant: bool) -> Arc<ContainerInfo> {
    let mut labels: std::collections::BTreeMap<String, String> = Default::default();
    labels.insert("stellaops.workload/id".into(), format!("shop-{n}"));
    if tenant {
        labels.insert("stellaops.workload/tenant".into(), "team \"a\"".into());
        labels.insert("stellaops.workload/component".into(), "api".into());
    }
    let pod = Arc::new(PodInfo::new(
        format!("sandbox-{n}"),
        PodRef {
            name: format!("shop-{n}-7f9"),
            namespace: "shop".into(),
            uid: format!("uid-{n}"),
            labels,
        },
    ));
    Arc::new(ContainerInfo {
        id: format!("{:064x}", 0xc0_0000 + u64::from(n)),
        name: format!("app-{n}"),
        pod,
        image: ImageInfo {
            reference: "registry.example/shop/app:1.4".into(),
            digest: digest.map(str::to_owned),
            digest_kind: if digest.is_some() {
                DigestKind::Manifest
            } else {
                DigestKind::Unknown
            },
        },
        state: ContainerState::Running,
        started_at_ns: 1_795_000_000_000_000_000 + i64::from(n),
        finished_at_ns: 1_795_000_100_000_000_000,
        exit_code: Some(137),
        init_pid: Some(4000 + n),
        entrypoint: Some("/usr/local/bin/app".into()),
        entrypoint_code_id: n.is_multiple_of(2).then(|| "0123456789abcdef".into()),
    })
}

/// Byte strings a path, an argument or a name can hold, awkward ones included.
const TEXTS: [&[u8]; 12] = [
    b"/etc/app/config.yaml",
    b"/var/lib/app/cache/0001.blob",
    b"relative/name",
    b"/tmp/quote\"and\\backslash",
    b"/tmp/line\nbreak\ttab\r\x01\x1f\x7f",
    b"/tmp/caf\xc3\xa9-\xe2\x82\xac-\xf0\x9f\x90\xb3",
    b"/tmp/not-utf8-\xff\xfe",
    b"/tmp/truncated-\xe2\x82",
    b"",
    b"@abstract-socket",
    b"/run/containerd/containerd.sock",
    b"/tmp/</script>&amp;",
];

fn text(rng: &mut Rng) -> Raw {
    Raw::new(TEXTS[rng.below(TEXTS.len() as u64) as usize])
}

fn images(rng: &mut Rng) -> Vec<Arc<Image>> {
    (0..6)
        .map(|i| {
            Arc::new(Image {
                exe: (i != 5).then(|| text(rng)),
                args: (0..rng.below(4)).map(|_| text(rng)).collect(),
                args_truncated: i == 3,
            })
        })
        .collect()
}

fn detail(rng: &mut Rng, k: u64) -> EdgeDetail {
    match k % 10 {
        0 => EdgeDetail::Exec {
            syscall: if rng.below(2) == 0 {
                "execve"
            } else {
                "execveat"
            },
            path: text(rng),
            requested: (rng.below(3) == 0).then(|| text(rng)),
            path_resolved: rng.below(4) != 0,
            from_caller: rng.below(5) == 0,
            result: [0, -2, -13][rng.below(3) as usize],
        },
        1..=3 => {
            let address = match rng.below(8) {
                0 => SocketTarget::Inet {
                    address: std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7).into(),
                    port: 443,
                },
                1 => SocketTarget::Unix {
                    path: Some(text(rng)),
                },
                2 => SocketTarget::Unix { path: None },
                3 => SocketTarget::Unspecified,
                4 => SocketTarget::Other { family: 16 },
                5 => SocketTarget::Unreadable,
                _ => SocketTarget::Inet {
                    address: std::net::Ipv4Addr::new(10, 96, rng.below(3) as u8, 1).into(),
                    port: 5432,
                },
            };
            EdgeDetail::Connect {
                address,
                from_caller: rng.below(4) == 0,
                result: [0, -111, -115][rng.below(3) as usize],
            }
        }
        _ => EdgeDetail::Open {
            syscall: ["openat", "openat2", "open", "creat"][rng.below(4) as usize],
            path: text(rng),
            requested: (rng.below(3) == 0).then(|| text(rng)),
            path_resolved: rng.below(5) != 0,
            path_truncated: rng.below(7) == 0,
            path_deleted: rng.below(9) == 0,
            from_caller: rng.below(6) == 0,
            flags: [0, 0o2_000_000, 0o1101, 0o102, 0x4000_0003][rng.below(5) as usize],
            result: [3, 7, -2, -13][rng.below(4) as usize],
        },
    }
}

/// Records of four containers (complete, one of them without a usable digest), a
/// container not described yet, and the node, with every kind of record and field.
fn corpus() -> Vec<Item> {
    let host = HostIdentity::for_tests();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let containers = [
        container(1, Some("sha256:aa"), true),
        container(2, Some("sha256:bb"), false),
        container(3, None, false),
        container(4, Some("sha256:dd"), true),
    ];
    let images = images(&mut rng);
    let base: i128 = 1_795_326_081_000_000_000;
    let mut items = Vec::new();
    for i in 0..3000u64 {
        let attribution = match rng.below(12) {
            0 => Attribution::host(),
            1 => Attribution {
                enrichment: Enrichment::Pending,
                container_id: Some(Arc::from("c0ffee")),
                container: None,
            },
            n => {
                let c = &containers[(n % 4) as usize];
                Attribution {
                    enrichment: if c.image.digest.is_some() {
                        Enrichment::Complete
                    } else {
                        Enrichment::Partial
                    },
                    container_id: Some(Arc::from(c.id.as_str())),
                    container: Some(Arc::clone(c)),
                }
            }
        };
        let pid = 100 + rng.below(9) as u32;
        let mut comm = [0u8; 16];
        let name: &[u8] =
            [&b"app-server"[..], b"sh", b"w\xffrker", b"fifteen-chars-x"][rng.below(4) as usize];
        comm[..name.len()].copy_from_slice(name);
        let repeats = if rng.below(6) == 0 {
            HeldRepeats {
                count: 1 + rng.below(40),
                first_ns: 1,
                last_ns: 2,
            }
        } else {
            HeldRepeats::default()
        };
        let kind = rng.below(10);
        let event = EdgeEvent {
            seq: i + 1,
            boot_ns: i,
            cgroup_id: 10_000 + rng.below(3),
            process: ProcessSnapshot {
                pid,
                tid: pid + rng.below(2) as u32,
                ppid: (!pid.is_multiple_of(5)).then_some(1),
                uid: [0, 1000, 65534][rng.below(3) as usize],
                gid: [0, 1000][rng.below(2) as usize],
                comm,
                image: Arc::clone(&images[rng.below(images.len() as u64) as usize]),
                cwd: (rng.below(3) == 0).then(|| text(&mut rng)),
            },
            detail: detail(&mut rng, kind),
            code_id: (rng.below(3) == 0).then(|| "89abcdef01234567".into()),
            repeats,
            repeats_only: repeats.count > 0 && rng.below(3) == 0,
            dedup_key: None,
            memory_shared: rng.below(8) == 0,
            // Not drawn: the corpus's bytes predate the mark.
            files_shared: false,
        };
        // Mostly in order, some a little out of it, many at the same instant.
        let at = base + i128::from(i / 3) * 1_000 - i128::from(rng.below(4)) * 700;
        let count = event.occurrences();
        let mut item = Item::new(at, &host, Record::Edge { event, attribution });
        item.count = count;
        item.last_ns = at + i128::from(count - 1) * 10;
        items.push(item);
        if i % 500 == 7 {
            let c = &containers[(i / 500 % 4) as usize];
            let lifecycle = if i % 1000 == 7 {
                Lifecycle::Start
            } else {
                Lifecycle::Stop
            };
            let record = Record::Lifecycle {
                lifecycle,
                container: Arc::clone(c),
                enrichment: Enrichment::Complete,
            };
            items.push(Item::new(at, &host, record));
            let record = Record::Patch {
                container: Arc::clone(c),
                seqs: vec![i, i + 1, i + 9],
                enrichment: Enrichment::Partial,
            };
            items.push(Item::new(at + 5, &host, record));
        }
    }
    items
}

/// Every batch of the corpus as the pipeline ships it: the NDJSON bytes, and each
/// envelope's body (decompressed).
fn encode_corpus(host: &HostIdentity) -> (Vec<u8>, Vec<u8>) {
    let (ndjson, bodies, _) = encode_corpus_gz(host);
    (ndjson, bodies)
}

/// The same, with the compressed envelopes as they are spooled.
fn encode_corpus_gz(host: &HostIdentity) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut batcher = Batcher::new(BatchConfig {
        max_events: 700,
        ..BatchConfig::default()
    });
    let mut items = corpus();
    // Some records of each workload come after their workload's batch left: late.
    let stragglers = items.split_off(items.len() - 40);
    let mut batches = Vec::new();
    for item in items {
        batcher.push(item);
    }
    // Every record is past the watermark; batches close on size, the rest on age.
    let now_ns = 1_795_326_181_000_000_000;
    let start = Instant::now();
    let poll = |batcher: &mut Batcher, batches: &mut Vec<_>| {
        batches.extend(batcher.poll(now_ns, start));
        while let Some(batch) = batcher.poll(now_ns, start + Duration::from_secs(5)) {
            batches.push(batch);
        }
    };
    poll(&mut batcher, &mut batches);
    for mut item in stragglers {
        item.at_ns -= 10_000_000;
        batcher.push(item);
    }
    poll(&mut batcher, &mut batches);
    assert_eq!(batcher.held_records(), 0);
    assert!(batches.len() >= 5, "{} batches", batches.len());

    let mut envelope = Envelope::new(host, "run-1");
    let (mut ndjson, mut bodies, mut lines, mut compressed) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for batch in &batches {
        let id = envelope.next_batch_id();
        envelope.open(&id).unwrap();
        encode_batch(host, "run-1", batch, &mut lines, Some(&mut envelope)).unwrap();
        ndjson.extend_from_slice(&lines);
        let gz = envelope.close().unwrap();
        compressed.extend_from_slice(&gz);
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut bodies)
            .unwrap();
        bodies.push(b'\n');
        // Without an envelope, the same lines.
        let mut alone = Vec::new();
        encode_batch(host, "run-1", batch, &mut alone, None).unwrap();
        assert_eq!(alone, lines);
    }
    (ndjson, bodies, compressed)
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn check(host: &HostIdentity, ndjson_digest: &str, body_digest: &str) {
    let (ndjson, bodies) = encode_corpus(host);
    // Every line is one JSON object; the corpus holds every record type.
    let mut types = std::collections::BTreeSet::new();
    let mut late = 0;
    for line in ndjson.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        types.insert(v["eventType"].as_str().unwrap().to_owned());
        late += usize::from(v.get("late").is_some());
    }
    assert_eq!(
        types.into_iter().collect::<Vec<_>>(),
        ["containerStart", "containerStop", "edge", "enrichmentPatch"]
    );
    assert!(late > 0, "no late records in the corpus");
    assert_eq!(
        (hex(&ndjson), hex(&bodies)),
        (ndjson_digest.to_owned(), body_digest.to_owned()),
        "{} NDJSON bytes, {} envelope bytes",
        ndjson.len(),
        bodies.len()
    );
}

#[test]
fn the_bytes_of_a_fixed_set_of_batches_do_not_change() {
    check(
        &HostIdentity::for_tests(),
        "c3568cad0b6958712ac4effd9e5ec9b4b4d7be9aae773eb0397f62baa1be8f06",
        "9180374c29324189f637ad2def65dccd4b889f528e1b46fbd78092c1891e3580",
    );
}

#[test]
fn the_bytes_with_the_deployment_on_records_do_not_change() {
    let deployment = zastava_platform::deployment::Deployment {
        tenant: Some("acme".into()),
        environment: Some("prod \"eu\"".into()),
        cluster: Some("eu-1".into()),
    };
    let host = HostIdentity::for_tests().with_deployment(deployment, true);
    check(
        &host,
        "a1bc90baf7d5979e99229b1c23db5e48a3fbae077bafcd17bab25d562abdb7f3",
        "eff2d6308e1d932073cbc0ddb8cde2d2f54468fabd92da76ff54806998f3d93a",
    );
}

#[test]
fn every_record_is_written_as_the_serde_writer_wrote_it() {
    let host = HostIdentity::for_tests();
    let mut direct = crate::record::RecordWriter::new(&host, "run-\"1\"");
    let mut serde = crate::record::RecordWriter::new(&host, "run-\"1\"");
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for item in corpus() {
        a.clear();
        b.clear();
        direct.write(&mut a, &item).unwrap();
        serde.write_with_serde(&mut b, &item).unwrap();
        assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
    }
}

#[test]
fn the_same_batches_compress_to_the_same_bytes() {
    let host = HostIdentity::for_tests();
    let (_, bodies, first) = encode_corpus_gz(&host);
    let (_, _, second) = encode_corpus_gz(&host);
    assert_eq!(hex(&first), hex(&second));
    // Compressed at all: level 1 still takes the records to a fraction of their size.
    assert!(
        first.len() * 4 < bodies.len(),
        "{} of {}",
        first.len(),
        bodies.len()
    );
}

#[test]
fn merged_repeats_and_their_times_are_in_the_corpus() {
    let (ndjson, _) = encode_corpus(&HostIdentity::for_tests());
    let text = String::from_utf8_lossy(&ndjson);
    assert!(text.contains("\"count\":"), "no merged record");
    assert!(text.contains("\"repeatsOnly\":true"));
    assert!(text.contains("\"pathBytes\":"));
    assert!(text.contains("\"argsBytes\":"));
    assert!(text.contains("\\u0001"));
}
