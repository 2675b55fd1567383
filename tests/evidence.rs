//! Evidence bundles end to end, through the `zastava-observer evidence` command: export is
//! deterministic to the byte, signatures check out with openssl, verify catches every
//! change, and a real capture against containerd exports its workloads' identity.

mod common;

use std::path::Path;

use common::{
    evidence::{
        entrytrace_line, evidence, json_file, lines, openssl_key, python_canonical_check,
        runtime_line, tool, tree, write_lines, CODE_ID, DIGEST,
    },
    TempDir,
};
use serde_json::{json, Value};

#[path = "evidence/capture.rs"]
mod capture;
#[path = "evidence/deployment.rs"]
mod deployment;
#[path = "evidence/tamper.rs"]
mod tamper;

const RECORDS: usize = 3000;

/// The observer's rotated files (records out of order within and across files) and an
/// EntryTrace file, under `dir`.
fn fixture(dir: &Path) {
    let mut all: Vec<String> = (0..RECORDS).map(runtime_line).collect();
    all.reverse();
    let logs = dir.join("logs");
    write_lines(&logs.join("zastava.runtime.2.ndjson"), all[..1000].to_vec());
    write_lines(
        &logs.join("zastava.runtime.1.ndjson"),
        all[1000..2100].to_vec(),
    );
    write_lines(&logs.join("zastava.runtime.ndjson"), all[2100..].to_vec());
    write_lines(
        &dir.join("entrytrace.ndjson"),
        (0..RECORDS).step_by(4).rev().map(entrytrace_line),
    );
}

fn export(out: &Path, runtime: &[&Path], extra: &[&str]) -> String {
    let mut args = vec!["export".to_owned()];
    args.extend(runtime.iter().map(|p| p.display().to_string()));
    args.extend(["--out".to_owned(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    evidence(&args).ok().trim().to_owned()
}

#[test]
fn the_same_records_give_the_same_bytes_whatever_the_order_and_grouping_of_the_files() {
    let tmp = TempDir::new("evidence-det");
    fixture(tmp.path());
    let (key, _) = openssl_key(tmp.path(), "signer", false);
    let key = key.to_str().unwrap();
    let logs = tmp.path().join("logs");
    let entrytrace = tmp.path().join("entrytrace.ndjson");
    let et = entrytrace.to_str().unwrap();
    let common_args = ["--entrytrace", et, "--key", key, "--archive"];

    let first = export(&tmp.path().join("a"), &[&logs], &common_args);
    let again = export(&tmp.path().join("b"), &[&logs], &common_args);
    // The files spread over two directories, named in reverse order, one directory and
    // two paths, sorted in 1 MiB of memory (so in runs on disk).
    let (x, y) = (tmp.path().join("x"), tmp.path().join("y"));
    for (dir, name) in [
        (&x, "zastava.runtime.2.ndjson"),
        (&y, "zastava.runtime.1.ndjson"),
        (&y, "zastava.runtime.ndjson"),
    ] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(logs.join(name), dir.join(name)).unwrap();
    }
    let mut args = common_args.to_vec();
    args.extend(["--memory", "1M"]);
    let regrouped = export(
        &tmp.path().join("c"),
        &[
            &y.join("zastava.runtime.ndjson"),
            &y.join("zastava.runtime.1.ndjson"),
            &x,
        ],
        &args,
    );

    let bundle = Path::new(&first);
    let run_id = bundle.file_name().unwrap().to_str().unwrap().to_owned();
    assert_eq!(
        first,
        tmp.path()
            .join("a/runtime")
            .join(&run_id)
            .display()
            .to_string()
    );
    let a = tree(&tmp.path().join("a"));
    assert_eq!(
        a.keys().cloned().collect::<Vec<_>>(),
        [
            format!("runtime/{run_id}.tar.zst"),
            format!("runtime/{run_id}/manifest.dsse.json"),
            format!("runtime/{run_id}/manifest.json"),
            format!("runtime/{run_id}/runtime.coalesced.ndjson"),
            format!("runtime/{run_id}/scanner.entrytrace.ndjson"),
            format!("runtime/{run_id}/zastava.runtime.ndjson"),
        ]
    );
    assert!(a == tree(&tmp.path().join("b")), "a second export differs");
    assert!(
        a == tree(&tmp.path().join("c")),
        "an export of the regrouped files differs"
    );
    assert!(again.ends_with(&run_id) && regrouped.ends_with(&run_id));

    // Canonical JSON by another implementation, and the run id is the prefix of the
    // manifest's content hash.
    let content_hash = python_canonical_check(bundle);
    assert_eq!(run_id, content_hash[..16]);

    let manifest = json_file(&bundle.join("manifest.json"));
    assert_eq!(manifest["runIdSource"], "content");
    assert_eq!(manifest["streams"]["runtime"]["records"], RECORDS);
    assert_eq!(manifest["streams"]["runtime"]["duplicatesDropped"], 0);
    assert_eq!(manifest["streams"]["entrytrace"]["records"], RECORDS / 4);
    assert_eq!(
        manifest["streams"]["coalesced"]["records"],
        RECORDS + RECORDS / 4
    );
    assert_eq!(
        manifest["streams"]["runtime"]["firstTimestamp"],
        "2026-11-22T05:41:10.000000000Z"
    );
    let inputs: Vec<(&str, &str, u64)> = manifest["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["stream"].as_str().unwrap(),
                i["name"].as_str().unwrap(),
                i["records"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        inputs,
        [
            ("entrytrace", "entrytrace.ndjson", 750),
            ("runtime", "zastava.runtime.1.ndjson", 1100),
            ("runtime", "zastava.runtime.2.ndjson", 1000),
            ("runtime", "zastava.runtime.ndjson", 900),
        ]
    );
    let sha = |name: &str| {
        let out = tool("sha256sum", &[logs.join(name).to_str().unwrap()]);
        String::from_utf8(out).unwrap()[..64].to_owned()
    };
    assert_eq!(
        manifest["inputs"][1]["sha256"],
        sha("zastava.runtime.1.ndjson")
    );
    // The stream file is sorted by (workloadId, timestamp, edgeType), ties by bytes.
    let records = lines(&bundle.join("zastava.runtime.ndjson"));
    let key = |r: &Value| {
        (
            r["workloadId"].as_str().unwrap().to_owned(),
            r["timestamp"].as_str().unwrap().to_owned(),
            r["edgeType"].as_str().unwrap().to_owned(),
        )
    };
    assert!(records.windows(2).all(|w| key(&w[0]) <= key(&w[1])));
    // The host's records come first; its earliest are records 2 and 5 of the fixture.
    assert_eq!(records[0]["workloadId"], "host:3d1219c7");
    assert_eq!(records[0]["eventId"], "run1-2");
    assert_eq!(records[1]["eventId"], "run1-5");

    // The identity table and the build-ids.
    let rows = manifest["workloads"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[2],
        json!({
            "workloadId": "payments-api", "sources": ["entrytrace", "runtime"],
            "namespaces": ["shop"], "tenants": ["acme"], "projects": ["checkout"],
            "components": ["api"], "channels": ["stable"],
            "images": [{"digest": DIGEST, "kind": "manifest"}],
            "nodes": ["vm"], "hostIds": ["3d1219c7"],
            "firstSeen": "2026-11-22T05:41:10.000000000Z",
            "lastSeen": rows[2]["lastSeen"],
        })
    );
    assert_eq!(rows[0]["workloadId"], "host:3d1219c7");
    assert_eq!(rows[0]["images"], json!([]));
    assert_eq!(
        manifest["buildIds"],
        json!([
            {"imageDigest": DIGEST, "codeIds": [{"codeId": CODE_ID, "paths": ["/bin/sh"]}]},
            {"imageDigest": null, "codeIds": [{"codeId": CODE_ID, "paths": ["/bin/sh"]}]},
        ])
    );

    // The archive holds the directory, then its files by name, owned by 0/0 at time 0.
    let archive = tmp.path().join(format!("a/runtime/{run_id}.tar.zst"));
    let tar = tool(
        "sh",
        &[
            "-c",
            &format!(
                "zstd -dc {} | tar --numeric-owner --full-time -tvf -",
                archive.display()
            ),
        ],
    );
    let listing: Vec<String> = String::from_utf8(tar)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {} {}", f[0], f[1], f[3], f[5])
        })
        .collect();
    assert_eq!(listing[0], format!("drwxr-xr-x 0/0 1970-01-01 {run_id}/"));
    assert_eq!(
        listing[2],
        format!("-rw-r--r-- 0/0 1970-01-01 {run_id}/manifest.json")
    );
    assert_eq!(listing.len(), 6);
}

#[test]
fn records_split_differently_give_the_same_streams_and_only_the_inputs_differ() {
    let tmp = TempDir::new("evidence-split");
    fixture(tmp.path());
    let logs = tmp.path().join("logs");
    let first = export(&tmp.path().join("a"), &[&logs], &[]);
    // The same records cut at other places into five files, and a sixth that overlaps.
    let all: Vec<String> = (0..RECORDS).map(runtime_line).collect();
    let parts = tmp.path().join("parts");
    for (n, range) in [
        (0, 0..7),
        (1, 7..1500),
        (2, 1500..1501),
        (3, 1501..2999),
        (4, 2999..3000),
    ] {
        write_lines(&parts.join(format!("part-{n}.ndjson")), all[range].to_vec());
    }
    write_lines(&parts.join("overlap.ndjson"), all[1000..1200].to_vec());
    let second = export(&tmp.path().join("b"), &[&parts], &[]);

    let (a, b) = (Path::new(&first), Path::new(&second));
    assert_ne!(a.file_name(), b.file_name(), "other inputs, another run id");
    for name in [
        "zastava.runtime.ndjson",
        "scanner.entrytrace.ndjson",
        "runtime.coalesced.ndjson",
    ] {
        assert!(
            std::fs::read(a.join(name)).unwrap() == std::fs::read(b.join(name)).unwrap(),
            "{name}"
        );
    }
    let (ma, mb) = (
        json_file(&a.join("manifest.json")),
        json_file(&b.join("manifest.json")),
    );
    assert_eq!(ma["workloads"], mb["workloads"]);
    assert_eq!(ma["buildIds"], mb["buildIds"]);
    assert_eq!(
        ma["streams"]["runtime"]["sha256"],
        mb["streams"]["runtime"]["sha256"]
    );
    assert_eq!(mb["streams"]["runtime"]["duplicatesDropped"], 200);
    assert_eq!(mb["inputs"].as_array().unwrap().len(), 6);
    assert_eq!(mb["inputs"][0]["name"], "overlap.ndjson");
    assert_eq!(mb["inputs"][0]["records"], 200);
}

#[test]
fn a_bundle_exported_again_is_kept_and_a_different_one_is_not_overwritten() {
    let tmp = TempDir::new("evidence-again");
    fixture(tmp.path());
    let logs = tmp.path().join("logs");
    let out = tmp.path().join("out");
    export(&out, &[&logs], &["--run-id", "incident-42"]);
    let run = evidence(&[
        "export",
        logs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--run-id",
        "incident-42",
    ]);
    run.ok();
    assert!(
        run.stderr.contains("already exported, identical:"),
        "{}",
        run.stderr
    );
    let manifest = json_file(&out.join("runtime/incident-42/manifest.json"));
    assert_eq!(manifest["runId"], "incident-42");
    assert_eq!(manifest["runIdSource"], "given");

    let one = logs.join("zastava.runtime.1.ndjson");
    let run = evidence(&[
        "export",
        one.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--run-id",
        "incident-42",
    ]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("incident-42 already holds a different bundle: remove it, or export with another --run-id"), "{}", run.stderr);
    let run = evidence(&[
        "export",
        one.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--run-id",
        "../escape",
    ]);
    // Wrong usage, refused before anything is read.
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("run id \"../escape\" is not 1 to 64 of"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_dir(out.join("runtime")).unwrap().count(),
        1,
        "no staging left behind"
    );
}

#[test]
fn a_malformed_line_fails_the_export_with_file_and_line_unless_skipped_and_counted() {
    let tmp = TempDir::new("evidence-bad");
    let file = tmp.path().join("zastava.runtime.ndjson");
    let good = [runtime_line(0), runtime_line(1)];
    let bad = [
        "{\"workloadId\":\"w\",\"timestamp\":\"2026-11-22T05:41:10Z\"".to_owned(),
        r#"{"eventType":"edge","edgeType":"fs","timestamp":"2026-11-22T05:41:10Z"}"#.to_owned(),
        r#"{"eventType":"edge","edgeType":"fs","workloadId":"w","timestamp":"yesterday"}"#.to_owned(),
        r#"{"eventType":"edge","edgeType":"fs","workloadId":"w","timestamp":"2026-11-22T05:41:10Z","cgroupId":9007199254740993}"#.to_owned(),
        r#"{"eventType":"edge","edgeType":"fs","workloadId":"w","workloadId":"v","timestamp":"2026-11-22T05:41:10Z"}"#.to_owned(),
    ];
    let reasons = [
        "not JSON: EOF while parsing an object",
        "`workloadId` is missing",
        "timestamp \"yesterday\" is not RFC 3339",
        "integer 9007199254740993 is beyond 2^53",
        "member \"workloadId\" appears twice",
    ];
    for (bad, reason) in bad.iter().zip(reasons) {
        write_lines(&file, [good[0].clone(), bad.clone(), good[1].clone()]);
        let out = tmp.path().join("out");
        let run = evidence(&[
            "export",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        let expected = format!("{}:2: {reason}", file.display());
        assert!(
            run.stderr.contains(&expected),
            "{expected} not in:\n{}",
            run.stderr
        );
        assert!(run.stderr.contains("--skip-invalid"), "{}", run.stderr);
        assert!(
            !out.join("runtime").exists()
                || std::fs::read_dir(out.join("runtime")).unwrap().count() == 0
        );

        let dir = export(&out, &[&file], &["--skip-invalid"]);
        let manifest = json_file(&Path::new(&dir).join("manifest.json"));
        let input = &manifest["inputs"][0];
        assert_eq!(
            (
                input["lines"].as_u64(),
                input["records"].as_u64(),
                input["invalid"].as_u64()
            ),
            (Some(3), Some(2), Some(1))
        );
        assert_eq!(input["firstInvalid"]["line"], 2);
        assert!(
            input["firstInvalid"]["reason"]
                .as_str()
                .unwrap()
                .contains(reason),
            "{input}"
        );
        assert_eq!(manifest["streams"]["runtime"]["records"], 2);
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn filters_keep_what_they_name_and_count_the_rest() {
    let tmp = TempDir::new("evidence-filter");
    fixture(tmp.path());
    let logs = tmp.path().join("logs");
    let dir = export(
        &tmp.path().join("out"),
        &[&logs],
        &[
            "--since",
            "2026-11-22T07:41:20+02:00",
            "--until",
            "2026-11-22T05:41:30Z",
            "--namespace",
            "shop",
            "--workload",
            "payments-api",
        ],
    );
    let bundle = Path::new(&dir);
    let kept = lines(&bundle.join("zastava.runtime.ndjson"));
    let expected: Vec<Value> = (0..RECORDS)
        .map(|i| serde_json::from_str::<Value>(&runtime_line(i)).unwrap())
        .filter(|r| r["workloadId"] == "payments-api")
        .filter(|r| {
            let ts = r["timestamp"].as_str().unwrap();
            ("2026-11-22T05:41:20".."2026-11-22T05:41:30").contains(&&ts[..19])
        })
        .collect();
    assert_eq!(kept.len(), expected.len());
    assert!(!kept.is_empty());
    let manifest = json_file(&bundle.join("manifest.json"));
    assert_eq!(
        manifest["filters"],
        json!({"since": "2026-11-22T05:41:20.000000000Z", "until": "2026-11-22T05:41:30.000000000Z", "namespaces": ["shop"], "workloads": ["payments-api"]})
    );
    let filtered: u64 = manifest["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["filteredOut"].as_u64().unwrap())
        .sum();
    assert_eq!(filtered as usize, RECORDS - kept.len());
    let out = evidence(&["verify", &dir, "--no-signature"]);
    assert!(out.ok().starts_with("verified: "), "{}", out.stdout);

    // An instant an offset carries past the four-digit years could not be written back in
    // the manifest: wrong usage, refused before anything is read.
    let run = evidence(&[
        "export",
        logs.to_str().unwrap(),
        "--out",
        tmp.path().join("late").to_str().unwrap(),
        "--since",
        "9999-12-31T23:30:00-01:00",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("outside the years 0000 to 9999"),
        "{}",
        run.stderr
    );
    assert!(!tmp.path().join("late").exists());
}

/// A record whose canonical form is longer than the longest input line export reads
/// (`1e20` is written as its 21 digits): exported whole, and its own verify accepts it.
#[test]
fn a_record_longer_in_canonical_form_than_any_input_line_exports_and_verifies() {
    let tmp = TempDir::new("evidence-long");
    let record = runtime_line(3);
    let numbers = vec!["1e20"; 800_000].join(",");
    let long = format!(
        "{},\"samples\":[{numbers}]}}",
        record.strip_suffix('}').unwrap()
    );
    assert!(long.len() < 16 << 20);
    let logs = tmp.path().join("logs");
    write_lines(
        &logs.join("zastava.runtime.ndjson"),
        [runtime_line(0), long, runtime_line(7)],
    );
    let dir = export(&tmp.path().join("out"), &[&logs], &[]);
    let bundle = Path::new(&dir);
    let stream = std::fs::read_to_string(bundle.join("zastava.runtime.ndjson")).unwrap();
    let longest = stream.lines().map(str::len).max().unwrap();
    assert!(longest > 16 << 20, "{longest}");
    let kept = lines(&bundle.join("zastava.runtime.ndjson"));
    let samples = kept
        .iter()
        .find_map(|r| r["samples"].as_array())
        .expect("the long record is exported");
    assert_eq!(samples.len(), 800_000);
    assert_eq!(samples[0].as_f64(), Some(1e20));
    let out = evidence(&["verify", &dir, "--no-signature"]);
    assert!(out.ok().starts_with("verified: "), "{}", out.stdout);
}

#[test]
fn debug_path_names_the_build_id_file_and_whether_it_is_there() {
    let tmp = TempDir::new("evidence-debug");
    let build_id = zastava::process::buildid::read_build_id(Path::new("/bin/busybox")).unwrap();
    let path = tmp
        .path()
        .join(".build-id")
        .join(&build_id[..2])
        .join(format!("{}.debug", &build_id[2..]));
    let root = tmp.path().to_str().unwrap();
    let run = evidence(&["debug-path", &build_id, "--debug-root", root]);
    assert_eq!(
        (run.code, run.stdout.trim()),
        (1, format!("{}: missing", path.display()).as_str())
    );
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::copy("/bin/busybox", &path).unwrap();
    let run = evidence(&["debug-path", &build_id.to_uppercase(), "--debug-root", root]);
    assert_eq!(
        (run.code, run.stdout.trim()),
        (0, format!("{}: found", path.display()).as_str())
    );
    let run = evidence(&["debug-path", "xyz", "--debug-root", root]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("\"xyz\" is not a GNU build-id"),
        "{}",
        run.stderr
    );
    let run = evidence(&["debug-path", "00aa"]);
    assert_eq!(
        run.stdout.trim(),
        "/var/opt/debug/.build-id/00/aa.debug: missing"
    );
}
