//! `zastava-evidence-bench`: exports a bundle from `--bytes` of generated observer NDJSON
//! with `zastava-observer evidence export`, pinned to one CPU, then verifies it; reports
//! each command's wall and CPU time, input throughput and peak RSS (from `wait4`).

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use serde_json::{json, Value};

use zastava_bench::evidence::generate;

#[derive(Parser)]
#[command(about = "Evidence export throughput and memory on one core")]
struct Cli {
    /// Observer NDJSON to generate (K, M, G suffixes).
    #[arg(long, default_value = "2G", value_parser = parse_size)]
    bytes: u64,
    /// A small run that only shows it works.
    #[arg(long)]
    smoke: bool,
    /// The export's sort memory.
    #[arg(long, default_value = "128M")]
    memory: String,
    /// Scratch space (emptied first, removed after).
    #[arg(long, default_value = "target/bench/evidence")]
    dir: PathBuf,
    /// Where zastava-observer is (default: beside this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Keep the generated input and the bundle (to profile or inspect them).
    #[arg(long)]
    keep: bool,
}

fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size"))?;
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(format!("{text:?}: use K, M or G")),
    };
    Ok(n << shift)
}

/// Runs `command` on CPU 0 alone; (wall seconds, CPU seconds, peak RSS in KiB).
fn measured(command: &mut Command) -> Result<(f64, f64, u64)> {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let child = command.spawn().context("cannot start zastava-observer")?;
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 reaps the child this function started.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: as above.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let wall = started.elapsed().as_secs_f64();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{command:?} failed with status {status}");
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        wall,
        secs(usage.ru_utime) + secs(usage.ru_stime),
        usage.ru_maxrss as u64,
    ))
}

fn step(wall: f64, cpu: f64, rss_kib: u64, input: u64) -> Value {
    json!({
        "wallSeconds": wall,
        "cpuSeconds": cpu,
        "megabytesPerSecond": input as f64 / 1e6 / wall,
        "megabytesPerCpuSecond": input as f64 / 1e6 / cpu,
        "peakRssMiB": rss_kib as f64 / 1024.0,
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let bytes = if cli.smoke { 4 << 20 } else { cli.bytes };
    let [observer] = zastava_bench::programs(cli.bin_dir.as_deref(), ["zastava-observer"])?;
    if cli.dir.exists() {
        std::fs::remove_dir_all(&cli.dir)?;
    }
    eprintln!(
        "zastava-evidence-bench: generating {} MiB of NDJSON",
        bytes >> 20
    );
    let generated = generate(&cli.dir, bytes)?;
    // Everything export reads: the rotated files, the overlapping one, the EntryTrace.
    let input: u64 = [cli.dir.join("logs"), cli.dir.clone()]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten())
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    let out = cli.dir.join("offline");
    eprintln!("zastava-evidence-bench: export");
    let mut export = Command::new(&observer);
    export
        .args(["evidence", "export"])
        .arg(cli.dir.join("logs"))
        .arg("--entrytrace")
        .arg(cli.dir.join("entrytrace.ndjson"))
        .arg("--out")
        .arg(&out)
        .args(["--memory", &cli.memory])
        .stdout(std::process::Stdio::piped());
    let (wall, cpu, rss) = measured(&mut export)?;
    let exported = step(wall, cpu, rss, input);
    let bundle = only_dir(&out.join("runtime"))?;
    let output: u64 = std::fs::read_dir(&bundle)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    eprintln!("zastava-evidence-bench: verify");
    let (wall, cpu, rss) = measured(
        Command::new(&observer)
            .args(["evidence", "verify", "--no-signature"])
            .arg(&bundle)
            .stdout(std::process::Stdio::null()),
    )?;
    let verified = step(wall, cpu, rss, input);
    let figures = json!({
        "inputBytes": input,
        "records": generated.records,
        "files": generated.files + 1,
        "memoryBytes": parse_size(&cli.memory).map_err(anyhow::Error::msg)?,
        "bundleBytes": output,
        "export": exported,
        "verify": verified,
    });
    if !cli.keep {
        std::fs::remove_dir_all(&cli.dir)?;
    }
    if cli.json {
        println!("{figures}");
    } else {
        let mut report = String::new();
        zastava_bench::evidence::render(&mut report, &figures)?;
        print!("{report}");
    }
    Ok(())
}

fn only_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.is_dir())
        .with_context(|| format!("no bundle in {}", dir.display()))
}
