use proptest::prelude::*;

use super::*;
use crate::evidence::canonical::{is_canonical, Json};

fn slot(workload: &str, instant: Instant, kind: &str, line: &str) -> Slot {
    Slot {
        workload: workload.as_bytes().to_vec(),
        instant,
        kind: kind.as_bytes().to_vec(),
        digest: None,
        line: line.as_bytes().to_vec(),
    }
}

/// A sorted stream of records from few workloads, instants and kinds, so keys collide.
fn stream(tag: &'static str) -> impl Strategy<Value = Vec<Slot>> {
    prop::collection::vec(
        (
            prop::sample::select(vec!["a", "b", "c"]),
            0i128..4,
            prop::sample::select(vec!["fs", "net", "syscall"]),
            0u32..1000,
        ),
        0..40,
    )
    .prop_map(move |items| {
        let mut slots: Vec<Slot> = items
            .into_iter()
            .map(|(w, t, k, n)| slot(w, t, k, &format!("{{\"{tag}\":{n}}}")))
            .collect();
        slots.sort_by(|a, b| a.rec().stream_cmp(&b.rec()));
        slots
    })
}

fn merged(entrytrace: &[Slot], runtime: &[Slot]) -> Vec<(Stream, Slot)> {
    let mut out = Vec::new();
    coalesce::<_, _, io::Error>(
        &mut VecSource::new(entrytrace.to_vec()),
        &mut VecSource::new(runtime.to_vec()),
        |stream, rec| {
            let mut slot = Slot::default();
            slot.set(&rec);
            out.push((stream, slot));
            Ok(())
        },
    )
    .unwrap();
    out
}

proptest! {
    #[test]
    fn coalescing_keeps_each_stream_s_order_and_breaks_ties_as_documented(
        entrytrace in stream("e"),
        runtime in stream("r"),
    ) {
        let out = merged(&entrytrace, &runtime);
        prop_assert_eq!(out.len(), entrytrace.len() + runtime.len());
        // Each stream's records appear in the stream's own order, none lost or added.
        for (which, input) in [(Stream::EntryTrace, &entrytrace), (Stream::Runtime, &runtime)] {
            let picked: Vec<&Slot> = out.iter().filter(|(s, _)| *s == which).map(|(_, r)| r).collect();
            let expected: Vec<&Slot> = input.iter().collect();
            prop_assert_eq!(picked, expected);
        }
        // The result is ordered by the key.
        for pair in out.windows(2) {
            prop_assert_ne!(pair[0].1.rec().key_cmp(&pair[1].1.rec()), Ordering::Greater);
        }
        // On equal keys, every EntryTrace record precedes every runtime record.
        for (i, (si, ri)) in out.iter().enumerate() {
            for (sj, rj) in &out[i + 1..] {
                if ri.rec().key_cmp(&rj.rec()) == Ordering::Equal {
                    prop_assert!(!(*si == Stream::Runtime && *sj == Stream::EntryTrace));
                }
            }
        }
        // Which is exactly a stable sort by key of the EntryTrace records followed by the
        // runtime records.
        let mut reference: Vec<(Stream, Slot)> = entrytrace.iter().map(|r| (Stream::EntryTrace, r.clone()))
            .chain(runtime.iter().map(|r| (Stream::Runtime, r.clone())))
            .collect();
        reference.sort_by(|a, b| a.1.rec().key_cmp(&b.1.rec()));
        prop_assert_eq!(out, reference);
    }

    #[test]
    fn coalesced_lines_are_canonical_json(
        workload in "\\PC{1,12}",
        digest in proptest::option::of("\\PC{0,12}"),
        n in 1u64..1_000_000,
        runtime in any::<bool>(),
    ) {
        let record = br#"{"a":"x\"y","b":[1,2.5]}"#;
        let slot = Slot {
            workload: workload.as_bytes().to_vec(),
            instant: 0,
            kind: b"fs".to_vec(),
            digest: digest.as_ref().map(|d| d.as_bytes().to_vec()),
            line: record.to_vec(),
        };
        let stream = if runtime { Stream::Runtime } else { Stream::EntryTrace };
        let mut line = Vec::new();
        coalesced_line(stream, n, &slot.rec(), &mut line);
        prop_assert!(is_canonical(&line).unwrap(), "{}", String::from_utf8_lossy(&line));
        let parsed = Json::parse(&line).unwrap();
        prop_assert_eq!(parsed.str_of("workloadId"), Some(workload.as_str()));
        prop_assert_eq!(parsed.str_of("imageDigest"), digest.as_deref());
        prop_assert_eq!(parsed.str_of("source"), Some(stream.name()));
        prop_assert_eq!(parsed.get("line"), Some(&Json::Int(n as i64)));
        prop_assert_eq!(parsed.get("record").map(Json::to_bytes), Some(record.to_vec()));
    }
}

#[test]
fn equal_keys_put_the_entrytrace_record_first() {
    let e = [slot("w", 5, "syscall", "{\"e\":1}")];
    let r = [
        slot("w", 4, "syscall", "{\"r\":0}"),
        slot("w", 5, "syscall", "{\"r\":1}"),
    ];
    let out: Vec<(Stream, String)> = merged(&e, &r)
        .into_iter()
        .map(|(s, r)| (s, String::from_utf8(r.line).unwrap()))
        .collect();
    assert_eq!(
        out,
        [
            (Stream::Runtime, "{\"r\":0}".to_owned()),
            (Stream::EntryTrace, "{\"e\":1}".to_owned()),
            (Stream::Runtime, "{\"r\":1}".to_owned()),
        ]
    );
}
