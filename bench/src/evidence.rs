//! The evidence export benchmark's input and its part of the report: NDJSON as the
//! observer writes it (rotated 64 MiB files of batches sorted by workload and time; opens,
//! connects, execs and lifecycle records of many workloads and the host), an EntryTrace
//! file, and a file that overlaps the first (duplicates to drop).

use std::{
    fmt::Write as _,
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use anyhow::Result;
use serde_json::Value;

/// Records per batch (the observer's `batch.max_events` default).
const BATCH: usize = 1000;
const FILE_BYTES: u64 = 64 << 20;
const WORKLOADS: usize = 64;

/// What was generated.
pub struct Generated {
    pub bytes: u64,
    pub records: u64,
    pub files: usize,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: fixed seed, so every run writes the same input.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const HOST: &str = "3d1219c7c4c5404aaa1f6d2a48adfda4";

fn timestamp(ns: u64) -> String {
    // 2026-11-22T00:00:00Z plus ns; runs stay within one day.
    let secs = ns / 1_000_000_000;
    format!(
        "2026-11-22T{:02}:{:02}:{:02}.{:09}Z",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        ns % 1_000_000_000
    )
}

/// The workload fields of workload `w` (the last is the host).
fn identity(w: usize) -> (String, String) {
    if w == WORKLOADS {
        return (format!("host:{HOST}"), r#""enrichment":"host""#.to_owned());
    }
    let digest = format!(
        "sha256:{:064x}",
        (w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    );
    (
        format!("tenant-{}/svc-{w}", w % 7),
        format!(
            r#""enrichment":"complete","workloadIdSource":"label","containerId":"{:064x}","namespace":"ns-{}","pod":"svc-{w}-7d4b9c8f6d-x2x7k","podUid":"{:08x}-8f1c-4c6e-9a2b-{:012x}","containerName":"app","imageRef":"registry.example/team/svc-{w}:1.{w}","imageDigest":"{digest}","imageDigestKind":"manifest","tenant":"tenant-{}","project":"project-{}","component":"svc-{w}","channel":"stable""#,
            (w as u64).wrapping_mul(0x5851_f42d_4c95_7f2d),
            w % 9,
            w * 77,
            w * 1313,
            w % 7,
            w % 5
        ),
    )
}

fn record(rng: &mut Rng, ids: &[(String, String)], seq: u64, w: usize, ns: u64, out: &mut String) {
    let (workload, fields) = &ids[w];
    let pid = 1000 + w as u64 * 10 + rng.below(10);
    let kind = rng.below(100);
    out.clear();
    let tail = match kind {
        0..=59 => format!(
            r#""edgeType":"fs","syscall":"openat","path":"/var/lib/svc/data/{}/segment-{}.db","flags":524288,"flagNames":["O_RDONLY","O_CLOEXEC"],"result":{}"#,
            w,
            rng.below(100_000),
            3 + rng.below(60)
        ),
        60..=79 => format!(
            r#""edgeType":"net","syscall":"connect","family":"inet","address":"10.{}.{}.{}","port":{},"result":0"#,
            rng.below(256),
            rng.below(256),
            rng.below(256),
            1024 + rng.below(60_000)
        ),
        80..=98 => format!(
            r#""edgeType":"syscall","syscall":"execve","path":"/usr/bin/worker-{}","args":["/usr/bin/worker-{}","--shard","{}","--config","/etc/svc/config.yaml"],"code_id":"{:040x}""#,
            kind % 4,
            kind % 4,
            rng.below(1000),
            (w as u64 + 1)
                .wrapping_mul(0x1234_5678_9abc_def1)
                .wrapping_add(kind % 4)
        ),
        _ => {
            let _ = write!(
                out,
                r#"{{"schemaVersion":1,"eventType":"containerStart","timestamp":"{}","node":"node-1","hostId":"{HOST}","osRelease":"Debian GNU/Linux 12 (bookworm)","workloadId":"{workload}",{fields},"initPid":{pid},"entrypoint":"/usr/bin/worker-0","code_id":"{:040x}"}}"#,
                timestamp(ns),
                (w as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1)
            );
            return;
        }
    };
    let _ = write!(
        out,
        r#"{{"schemaVersion":1,"eventType":"edge","eventId":"2fbae8e0cca4-{seq}",{tail},"timestamp":"{}","node":"node-1","hostId":"{HOST}","osRelease":"Debian GNU/Linux 12 (bookworm)","workloadId":"{workload}",{fields},"cgroupId":{},"process":{{"pid":{pid},"tid":{pid},"ppid":{},"uid":1000,"gid":1000,"comm":"worker","exe":"/usr/bin/worker-0","args":["/usr/bin/worker-0","--serve"]}}}}"#,
        timestamp(ns),
        4000 + w,
        pid - 1
    );
}

/// Writes about `bytes` of observer NDJSON into `dir/logs/`, an EntryTrace file of about
/// 1% of that at `dir/entrytrace.ndjson`, and `dir/logs/overlap.ndjson` repeating the
/// first 1% of the records (at most 10,000).
pub fn generate(dir: &Path, bytes: u64) -> Result<Generated> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut rng = Rng(0x005e_ed0f_e71d_e2ce);
    let mut files = Vec::new();
    let mut out: Option<(BufWriter<File>, u64)> = None;
    let mut entrytrace = BufWriter::new(File::create(dir.join("entrytrace.ndjson"))?);
    let mut overlap = BufWriter::new(File::create(logs.join("overlap.ndjson"))?);
    let (mut total, mut records, mut seq, mut batch_no) = (0u64, 0u64, 0u64, 0u64);
    let mut batch: Vec<(usize, u64, String)> = Vec::with_capacity(BATCH);
    let mut line = String::new();
    // Records are about 1 KiB.
    let overlapping = (bytes >> 10).div_ceil(100).min(10_000);
    let ids: Vec<(String, String)> = (0..=WORKLOADS).map(identity).collect();
    while total < bytes {
        batch.clear();
        for _ in 0..BATCH {
            let w = rng.below(WORKLOADS as u64 + 1) as usize;
            let ns = batch_no * 1_000_000_000 + rng.below(1_000_000_000);
            seq += 1;
            record(&mut rng, &ids, seq, w, ns, &mut line);
            batch.push((w, ns, line.clone()));
        }
        batch.sort_by(|a, b| (&ids[a.0].0, a.1).cmp(&(&ids[b.0].0, b.1)));
        batch_no += 1;
        for (w, ns, text) in &batch {
            if out.as_ref().is_none_or(|(_, size)| *size >= FILE_BYTES) {
                let name = match files.len() {
                    0 => "zastava.runtime.ndjson".to_owned(),
                    n => format!("zastava.runtime.{n}.ndjson"),
                };
                files.push(name.clone());
                out = Some((BufWriter::new(File::create(logs.join(name))?), 0));
            }
            if let Some((file, size)) = out.as_mut() {
                file.write_all(text.as_bytes())?;
                file.write_all(b"\n")?;
                *size += text.len() as u64 + 1;
            }
            total += text.len() as u64 + 1;
            records += 1;
            if records <= overlapping {
                writeln!(overlap, "{text}")?;
            }
            if records % 100 == 0 && *w < WORKLOADS {
                let workload = &ids[*w].0;
                writeln!(
                    entrytrace,
                    r#"{{"workloadId":"{workload}","namespace":"ns-{}","node":"node-1","edgeType":"syscall","timestamp":"{}","code_id":"{:040x}","path":"/usr/bin/worker-0","confidence":0.5}}"#,
                    w % 9,
                    timestamp(*ns),
                    (*w as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1)
                )?;
            }
        }
    }
    if let Some((mut file, _)) = out {
        file.flush()?;
    }
    entrytrace.flush()?;
    overlap.flush()?;
    Ok(Generated {
        bytes: total,
        records,
        files: files.len(),
    })
}

/// The evidence part of the report.
pub fn render(out: &mut String, figures: &Value) -> std::fmt::Result {
    let mib = |key: &str| figures[key].as_f64().unwrap_or(f64::NAN) / f64::from(1 << 20);
    writeln!(out)?;
    writeln!(
        out,
        "Evidence export on one core ({:.0} MiB of observer NDJSON in {} files, {} records; \
         sort memory {:.0} MiB; input in the page cache):",
        mib("inputBytes"),
        figures["files"],
        figures["records"],
        mib("memoryBytes")
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| command | wall s | CPU s | input MB per wall s | input MB per CPU s | peak RSS MiB |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
    for step in ["export", "verify"] {
        let s = &figures[step];
        writeln!(
            out,
            "| {step} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} |",
            s["wallSeconds"].as_f64().unwrap_or(f64::NAN),
            s["cpuSeconds"].as_f64().unwrap_or(f64::NAN),
            s["megabytesPerSecond"].as_f64().unwrap_or(f64::NAN),
            s["megabytesPerCpuSecond"].as_f64().unwrap_or(f64::NAN),
            s["peakRssMiB"].as_f64().unwrap_or(f64::NAN),
        )?;
    }
    Ok(())
}
