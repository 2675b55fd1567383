//! Helpers for the evidence bundle tests: running `zastava-observer evidence`, keys made
//! by openssl, fixtures of observer and EntryTrace records, and independent checks.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use super::observer_bin;

/// What one command did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        &self.stdout
    }
}

/// `zastava-observer evidence <args>`.
pub fn evidence(args: &[&str]) -> Run {
    evidence_with_env(args, &[])
}

/// `zastava-observer evidence <args>` with these environment variables set too (and no
/// `ZASTAVA__*` variable of the test's own environment).
pub fn evidence_with_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(observer_bin());
    for (name, _) in std::env::vars() {
        if name.starts_with("ZASTAVA__") {
            command.env_remove(name);
        }
    }
    let out = command
        .arg("evidence")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run zastava-observer evidence");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a tool that must succeed; its stdout.
pub fn tool(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (installed by `cargo xtask setup`): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An ECDSA P-256 key pair made by openssl: (private key PEM, public key PEM). `pkcs8`
/// picks `BEGIN PRIVATE KEY` over `BEGIN EC PRIVATE KEY`.
pub fn openssl_key(dir: &Path, name: &str, pkcs8: bool) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let k = key.to_str().unwrap();
    if pkcs8 {
        tool(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                k,
            ],
        );
    } else {
        tool(
            "openssl",
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                k,
            ],
        );
    }
    tool(
        "openssl",
        &[
            "pkey",
            "-in",
            k,
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    );
    (key, public)
}

/// Every file under `dir` (relative path → bytes).
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

pub fn json_file(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

pub fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Checks with Python's json module (an implementation of its own) that every line of the
/// NDJSON files and each JSON file is in canonical form — sorted keys, no whitespace —
/// and prints the SHA-256 of the manifest without its runId, in canonical form.
/// Valid for the fixtures: ASCII member names and no numbers that Python prints otherwise.
pub fn python_canonical_check(bundle: &Path) -> String {
    let script = r#"
import hashlib, json, sys, os
d = sys.argv[1]
def canon(v): return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
for name in sorted(os.listdir(d)):
    text = open(os.path.join(d, name), encoding="utf-8").read()
    items = text.split("\n")[:-1] if name.endswith(".ndjson") else [text]
    for i, line in enumerate(items):
        if canon(json.loads(line)) != line:
            sys.exit(f"{name}:{i + 1}: not canonical: {line[:200]}")
m = json.load(open(os.path.join(d, "manifest.json")))
del m["runId"]
print(hashlib.sha256(canon(m).encode()).hexdigest())
"#;
    let out = tool("python3", &["-c", script, bundle.to_str().unwrap()]);
    String::from_utf8(out).unwrap().trim().to_owned()
}

pub const WORKLOADS: [&str; 3] = ["payments-api", "ledger-worker", "host:3d1219c7"];
pub const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
pub const CODE_ID: &str = "4e3f9c1a2b7d";

/// A record as the observer writes it (its own member order, not canonical).
pub fn runtime_line(i: usize) -> String {
    let workload = WORKLOADS[i % 3];
    let ts = format!(
        "2026-11-22T05:41:{:02}.{:09}Z",
        10 + (i / 9) % 40,
        (i * 7919) % 1_000_000_000
    );
    let identity = if workload.starts_with("host:") {
        r#""enrichment":"host""#.to_owned()
    } else {
        format!(
            r#""enrichment":"complete","containerId":"c{n}","namespace":"shop","pod":"{workload}-1","imageRef":"zastava.test/busybox:1.0","imageDigest":"{DIGEST}","imageDigestKind":"manifest","tenant":"acme","project":"checkout","component":"{c}","channel":"stable""#,
            n = i % 3,
            c = if i.is_multiple_of(3) { "api" } else { "worker" },
        )
    };
    let tail = match i % 4 {
        0 => format!(r#""edgeType":"syscall","syscall":"execve","path":"/bin/sh","args":["sh","-c","echo {i}"],"code_id":"{CODE_ID}""#),
        1 => format!(r#""edgeType":"fs","syscall":"openat","path":"/tmp/caf\u00e9-{i}","flags":577,"flagNames":["O_WRONLY","O_CREAT","O_TRUNC"],"result":3"#),
        2 => r#""edgeType":"net","syscall":"connect","family":"inet","address":"127.0.0.1","port":8080,"result":-111"#.to_owned(),
        _ => r#""edgeType":"fs","syscall":"openat","path":"/etc/passwd","flags":0,"flagNames":["O_RDONLY"],"result":3"#.to_owned(),
    };
    format!(
        r#"{{"schemaVersion":1,"eventType":"edge","eventId":"run1-{i}",{tail},"timestamp":"{ts}","node":"vm","hostId":"3d1219c7","osRelease":"Debian GNU/Linux 12 (bookworm)","workloadId":"{workload}",{identity},"cgroupId":{cg},"process":{{"pid":{pid},"tid":{pid},"ppid":1,"uid":0,"gid":0,"comm":"sh","exe":"/bin/busybox","args":["sh"]}}}}"#,
        cg = 4000 + i % 3,
        pid = 100 + i,
    )
}

/// An EntryTrace record sharing workload, timestamp and image with `runtime_line(i)`.
pub fn entrytrace_line(i: usize) -> String {
    let runtime: Value = serde_json::from_str(&runtime_line(i)).unwrap();
    let image = match runtime["imageDigest"].as_str() {
        Some(digest) => format!(r#","imageDigest":"{digest}""#),
        None => String::new(),
    };
    format!(
        r#"{{"workloadId":"{}","namespace":"shop","node":"vm","edgeType":"syscall","timestamp":"{}","code_id":"{CODE_ID}","path":"/bin/sh"{image},"step":{{"confidence":0.75,"order":{i}}}}}"#,
        runtime["workloadId"].as_str().unwrap(),
        runtime["timestamp"].as_str().unwrap(),
    )
}

/// Writes lines to a file, each with a newline.
pub fn write_lines(path: &Path, lines: impl IntoIterator<Item = String>) {
    let mut text = String::new();
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}
