//! A real capture: the observer writes its rotated NDJSON files while two labelled pods run
//! in a private containerd; the export's identity table and records carry their identity,
//! and an EntryTrace file sharing the capture's workloads and timestamps coalesces with it
//! as documented.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use common::{
    containerd::{Containerd, PodSpec, BUSYBOX},
    unique, Observer, TIMEOUT,
};

use super::*;

const PAYMENTS: [(&str, &str); 5] = [
    ("stellaops.workload/id", "payments-api"),
    ("stellaops.workload/tenant", "acme"),
    ("stellaops.workload/project", "checkout"),
    ("stellaops.workload/component", "api"),
    ("stellaops.workload/channel", "stable"),
];
const LEDGER: [(&str, &str); 5] = [
    ("stellaops.workload/id", "ledger-worker"),
    ("stellaops.workload/tenant", "globex"),
    ("stellaops.workload/project", "ledger"),
    ("stellaops.workload/component", "worker"),
    ("stellaops.workload/channel", "canary"),
];

/// Every record in the observer's files so far.
fn records_in(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        // A line being written may be cut short; it is complete on a later look.
        out.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok()),
        );
    }
    out
}

fn wait_in_files(dir: &Path, what: &str, pred: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !records_in(dir).iter().any(&pred) {
        assert!(
            Instant::now() < deadline,
            "no record {what} in {} within {TIMEOUT:?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_capture_of_two_labelled_pods_exports_their_identity_and_coalesces_with_entrytrace() {
    let tmp = TempDir::new("evidence-capture");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut containerd = Containerd::start();
    let namespace = unique("evidence");
    let socket = containerd.socket.to_str().unwrap().to_owned();
    let path_setting = format!(
        "ndjson.path=\"{}\"",
        logs.join("zastava.runtime.ndjson").display()
    );
    let observer = Observer::start(&[
        "--cri-endpoint",
        &socket,
        "--cri-poll-interval",
        "0.1",
        "--namespace",
        &namespace,
        "--set",
        &path_setting,
        "--set",
        "ndjson.max_file_bytes=\"4K\"",
        "--set",
        "ndjson.max_files=100000",
        // The installation on every record, as a fleet that reads files without their
        // batch envelope sets it.
        "--set",
        "ndjson.include_deployment=true",
        "--tenant",
        "platform-a",
        "--environment",
        "prod",
        "--deployment",
        "eu-west-1a",
    ]);
    let mut containers = BTreeMap::new();
    for (pod_name, labels) in [("payments-1", &PAYMENTS), ("ledger-1", &LEDGER)] {
        let pod = containerd.run_pod(&PodSpec {
            name: pod_name,
            namespace: &namespace,
            labels,
        });
        let marker = format!("/{}", unique("marker"));
        // Again and again until the pod stops: with `--namespace`, the pod's events pass the
        // kernel's filter once the observer has learned the pod from the runtime, which on
        // a loaded machine can be after the container's first steps.
        let script = format!(
            "while :; do echo x > {marker}; cat /proc/self/status > /dev/null; sleep 0.2; done"
        );
        let id = containerd.run_container(&pod, "main", BUSYBOX, &["/bin/sh", "-c", &script]);
        containers.insert(labels[0].1, (pod, id, marker));
    }
    for (workload, (_, id, marker)) in &containers {
        wait_in_files(&logs, &format!("of {workload}'s marker open"), |e| {
            e["containerId"] == id.as_str() && e["path"] == marker.as_str()
        });
        wait_in_files(&logs, &format!("containerStart of {workload}"), |e| {
            e["eventType"] == "containerStart" && e["containerId"] == id.as_str()
        });
    }
    for (workload, (pod, id, _)) in &containers {
        containerd.stop_pod(pod);
        wait_in_files(&logs, &format!("containerStop of {workload}"), |e| {
            e["eventType"] == "containerStop" && e["containerId"] == id.as_str()
        });
    }
    observer.stop();
    let rotated = std::fs::read_dir(&logs).unwrap().count();
    assert!(
        rotated >= 2,
        "the capture should span rotated files, found {rotated}"
    );

    // The Scanner's EntryTrace for the same workloads: a record at the time of each exec
    // the observer saw, and one before anything ran.
    let captured = records_in(&logs);
    let mut entrytrace = Vec::new();
    for workload in containers.keys() {
        let execs: Vec<&Value> = captured
            .iter()
            .filter(|e| e["workloadId"] == *workload && e["edgeType"] == "syscall")
            .collect();
        assert!(
            execs.len() >= 2,
            "{workload}: cat and sleep at least: {execs:?}"
        );
        for (step, exec) in execs.iter().enumerate() {
            entrytrace.push(json!({
                "workloadId": workload, "namespace": namespace, "node": exec["node"],
                "edgeType": "syscall", "timestamp": exec["timestamp"], "code_id": exec["code_id"],
                "path": exec["path"], "imageDigest": exec["imageDigest"], "step": step,
            }).to_string());
        }
        entrytrace.push(
            json!({
                "workloadId": workload, "namespace": namespace, "node": "vm", "edgeType": "syscall",
                "timestamp": "2000-01-01T00:00:00Z", "path": "/bin/sh", "step": -1,
            })
            .to_string(),
        );
    }
    entrytrace.reverse();
    let et = tmp.path().join("entrytrace.ndjson");
    write_lines(&et, entrytrace);
    let (key, public) = openssl_key(tmp.path(), "signer", true);
    // The export is told the installation by the same [runtime] the observer would read.
    let config = tmp.path().join("observer.toml");
    std::fs::write(
        &config,
        "[runtime]\ntenant = \"platform-a\"\nenvironment = \"prod\"\ndeployment = \"eu-west-1a\"\n",
    )
    .unwrap();
    let dir = export(
        &tmp.path().join("offline"),
        &[&logs],
        &[
            "--entrytrace",
            et.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let bundle = Path::new(&dir);
    let manifest = json_file(&bundle.join("manifest.json"));
    let installation =
        json!({"tenant": "platform-a", "environment": "prod", "cluster": "eu-west-1a"});
    assert_eq!(manifest["deployment"], installation);

    // Every rotated file is an input, and every record of them is in the stream.
    let inputs = manifest["inputs"].as_array().unwrap();
    assert_eq!(
        inputs.iter().filter(|i| i["stream"] == "runtime").count(),
        rotated
    );
    let runtime = lines(&bundle.join("zastava.runtime.ndjson"));
    assert_eq!(runtime.len(), captured.len());
    for record in &runtime {
        assert_eq!(record["deployment"], installation, "{record}");
    }

    // The identity table: both workloads, their labels, the image's manifest digest.
    let busybox_id = zastava::process::buildid::read_build_id(Path::new("/bin/busybox")).unwrap();
    let digest = containerd.images.busybox_manifest.clone();
    for labels in [&PAYMENTS, &LEDGER] {
        let workload = labels[0].1;
        let (_, id, _) = &containers[workload];
        let row = manifest["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["workloadId"] == workload)
            .unwrap_or_else(|| panic!("no row for {workload}: {}", manifest["workloads"]));
        assert_eq!(row["sources"], json!(["entrytrace", "runtime"]));
        assert_eq!(row["namespaces"], json!([namespace]));
        assert_eq!(row["tenants"], json!([labels[1].1]));
        assert_eq!(row["projects"], json!([labels[2].1]));
        assert_eq!(row["components"], json!([labels[3].1]));
        assert_eq!(row["channels"], json!([labels[4].1]));
        assert_eq!(
            row["images"],
            json!([{"digest": digest, "kind": "manifest"}])
        );
        assert_eq!(row["firstSeen"], "2000-01-01T00:00:00.000000000Z");
        // Label presence: every record of the workload carries its identity.
        let mine: Vec<&Value> = runtime
            .iter()
            .filter(|r| r["workloadId"] == workload)
            .collect();
        assert!(mine
            .iter()
            .any(|r| r["eventType"] == "containerStart" && r["containerId"] == id.as_str()));
        for record in mine {
            for (label, field) in
                labels[1..]
                    .iter()
                    .zip(["tenant", "project", "component", "channel"])
            {
                assert_eq!(record[field], label.1, "{record}");
            }
            assert_eq!(record["imageDigest"], digest.as_str(), "{record}");
        }
    }
    let build_ids = manifest["buildIds"].as_array().unwrap();
    let row = build_ids
        .iter()
        .find(|r| r["imageDigest"] == digest.as_str())
        .expect("the image's build-ids");
    assert_eq!(row["codeIds"][0]["codeId"], busybox_id.as_str());
    // The executables the capture shows running from the image: entrypoints and exec paths.
    let mut expected: Vec<&str> = captured
        .iter()
        .filter(|r| r["imageDigest"] == digest.as_str() && r["code_id"] == busybox_id.as_str())
        .filter_map(|r| {
            r["entrypoint"].as_str().or_else(|| {
                (r["edgeType"] == "syscall")
                    .then(|| r["path"].as_str())
                    .flatten()
            })
        })
        .collect();
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(row["codeIds"][0]["paths"], json!(expected));
    // /bin/sh is a symlink: the kernel ran, and the records name, busybox itself.
    assert_eq!(expected, ["/bin/busybox"], "{expected:?}");

    // Coalescing: each stream's records in its own order, ties EntryTrace first.
    let coalesced = lines(&bundle.join("runtime.coalesced.ndjson"));
    let streams = [
        (
            "entrytrace",
            lines(&bundle.join("scanner.entrytrace.ndjson")),
        ),
        ("runtime", runtime),
    ];
    for (source, stream) in &streams {
        let mine: Vec<&Value> = coalesced
            .iter()
            .filter(|c| c["source"] == *source)
            .collect();
        assert_eq!(mine.len(), stream.len());
        for (n, (c, record)) in mine.iter().zip(stream).enumerate() {
            assert_eq!(c["line"], n + 1);
            assert_eq!(&c["record"], record);
            assert_eq!(c["workloadId"], record["workloadId"]);
        }
    }
    let key = |r: &Value| {
        (
            r["workloadId"].clone(),
            r["timestamp"].clone(),
            r["edgeType"].clone(),
        )
    };
    let mut ties = 0;
    for pair in coalesced.windows(2) {
        if key(&pair[0]["record"]) == key(&pair[1]["record"])
            && pair[0]["source"] != pair[1]["source"]
        {
            assert_eq!(
                (&pair[0]["source"], &pair[1]["source"]),
                (&json!("entrytrace"), &json!("runtime"))
            );
            ties += 1;
        }
    }
    assert!(
        ties >= 4,
        "each exec of both workloads ties with its EntryTrace record: {ties}"
    );

    let run = evidence(&["verify", &dir, "--key", public.to_str().unwrap()]);
    assert!(run.ok().starts_with("verified: "), "{}", run.stdout);
}
