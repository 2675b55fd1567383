//! `cargo xtask fuzz [--seconds N] [--runs N] [--quick] [TARGET...]`: builds the libFuzzer
//! targets in fuzz/ (nightly; AddressSanitizer and optimised, or with `--quick` the dev
//! profile without a sanitizer) and runs each for N seconds (or N executions), as many at once as there are
//! cores, from its checked-in seed corpus (fuzz/seeds/<target>, read only) and a working
//! corpus under the target dir. A crash, a leak or a hang fails the run; libFuzzer saves
//! the reproducer under fuzz/artifacts/<target>/, and the failure names the file and the
//! command that replays it.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{nightly_cargo, root, run_cmd, step};

/// Every target: one per parser of untrusted input.
pub const TARGETS: &[&str] = &[
    "decode",
    "admission",
    "config",
    "spool",
    "cri",
    "docker",
    "entrytrace",
    "authority",
];

/// The target triple cargo-fuzz builds for (it always passes one).
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

pub fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), PathBuf::from)
        .join("fuzz")
}

/// How the targets are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// Optimised, with AddressSanitizer (and debug assertions, as cargo-fuzz builds).
    Sanitized,
    /// The dev profile without a sanitizer: a fraction of the build time, for CI's short
    /// runs. Panics, overflows (debug assertions) and hangs still fail a run; what only the
    /// sanitizer sees (memory errors in unsafe code, leaks) needs the sanitized build.
    Quick,
}

impl Build {
    fn args(self) -> &'static [&'static str] {
        match self {
            Build::Sanitized => &[],
            Build::Quick => &["--dev", "--sanitizer", "none"],
        }
    }

    fn profile_dir(self) -> &'static str {
        match self {
            Build::Sanitized => "release",
            Build::Quick => "debug",
        }
    }
}

/// What one target's run did.
#[derive(Debug, Default)]
pub struct Report {
    pub target: String,
    pub execs: u64,
    /// libFuzzer's `cov:` (edges covered) at the end.
    pub coverage: u64,
    pub corpus: u64,
    pub seconds: u64,
    /// The reproducer, when it failed.
    pub crash: Option<PathBuf>,
    pub ok: bool,
}

pub fn fuzz(limit: Limit, targets: &[String], how: Build) -> Result<()> {
    let targets: Vec<String> = if targets.is_empty() {
        TARGETS.iter().map(|t| (*t).to_owned()).collect()
    } else {
        for t in targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "no fuzz target {t:?}; the targets are {}",
                    TARGETS.join(", ")
                );
            }
        }
        targets.to_vec()
    };
    build(how)?;
    run_built(limit, &targets, how)
}

/// How long each target runs: `seconds`, or until `runs` executions if that comes first.
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    pub seconds: u64,
    pub runs: Option<u64>,
}

/// Runs targets built already (by `build` or a `BackgroundBuild`).
pub fn run_built(limit: Limit, targets: &[String], how: Build) -> Result<()> {
    let jobs = thread::available_parallelism().map_or(1, usize::from);
    let runs = limit
        .runs
        .map(|n| format!(" or {n} executions"))
        .unwrap_or_default();
    step(&format!(
        "fuzzing {} for {} s{runs} each, {jobs} at a time",
        targets.join(", "),
        limit.seconds
    ));
    let mut reports = Vec::new();
    for chunk in targets.chunks(jobs) {
        let running: Vec<_> = chunk
            .iter()
            .map(|t| {
                let t = t.clone();
                thread::spawn(move || run_one(&t, limit, how))
            })
            .collect();
        for handle in running {
            let report = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a fuzz runner panicked"))??;
            reports.push(report);
        }
    }
    println!("| target | seconds | executions | coverage (edges) | corpus | crashes |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &reports {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.target,
            r.seconds,
            r.execs,
            r.coverage,
            r.corpus,
            u8::from(!r.ok)
        );
    }
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.ok).collect();
    if failed.is_empty() {
        return Ok(());
    }
    for r in &failed {
        match &r.crash {
            Some(path) => eprintln!(
                "xtask: fuzz target {} failed; reproducer saved at {} (replay: {} {})",
                r.target,
                path.display(),
                binary(&r.target, how).display(),
                path.display()
            ),
            None => eprintln!(
                "xtask: fuzz target {} failed without a reproducer; see its log at {}",
                r.target,
                log_path(&r.target).display()
            ),
        }
    }
    bail!("{} of {} fuzz targets failed", failed.len(), reports.len())
}

/// Installs cargo-fuzz when it is missing (for `cargo xtask setup`).
pub fn install_cargo_fuzz() -> Result<()> {
    let has = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        step("installing cargo-fuzz 0.13.2");
        run_cmd(Command::new("cargo").args(["install", "--locked", "cargo-fuzz@0.13.2"]))?;
    }
    Ok(())
}

fn build_command(how: Build) -> Command {
    let mut cmd = nightly_cargo();
    cmd.current_dir(fuzz_dir())
        .args(["fuzz", "build"])
        .args(how.args())
        .arg("--fuzz-dir")
        .arg(fuzz_dir())
        .arg("--target-dir")
        .arg(target_dir());
    cmd
}

fn describe(how: Build) -> &'static str {
    match how {
        Build::Sanitized => "building the fuzz targets (nightly, AddressSanitizer)",
        Build::Quick => "building the fuzz targets (nightly, dev profile, no sanitizer)",
    }
}

fn build(how: Build) -> Result<()> {
    step(describe(how));
    run_cmd(&mut build_command(how))
}

/// The targets' build at the lowest CPU priority, in its own process group, while other
/// work (the tests, which mostly wait on servers and containers) goes on; its output goes
/// to a log. Dropped unfinished, the build is stopped.
pub struct BackgroundBuild {
    child: Option<Child>,
    log: PathBuf,
}

impl BackgroundBuild {
    pub fn start(how: Build) -> Result<BackgroundBuild> {
        step(&format!("{} in the background", describe(how)));
        let log = target_dir().join("logs").join("build.log");
        fs::create_dir_all(log.parent().unwrap_or(Path::new(".")))?;
        let cargo = build_command(how);
        let out = fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("nice");
        cmd.arg("-n")
            .arg("19")
            .arg(cargo.get_program())
            .args(cargo.get_args())
            .current_dir(fuzz_dir())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (name, value) in cargo.get_envs() {
            match value {
                Some(value) => cmd.env(name, value),
                None => cmd.env_remove(name),
            };
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start the fuzz build ({cmd:?})"))?;
        Ok(BackgroundBuild {
            child: Some(child),
            log,
        })
    }

    /// Waits for the build; its log's end is in the error when it failed.
    pub fn finish(mut self) -> Result<()> {
        step("waiting for the fuzz targets' build");
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = child.wait().context("waiting for the fuzz build")?;
        if status.success() {
            return Ok(());
        }
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "building the fuzz targets failed with {status} (log: {}):\n{}",
            self.log.display(),
            tail.join("\n")
        )
    }
}

impl Drop for BackgroundBuild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                if let Ok(group) = i32::try_from(child.id()) {
                    // SAFETY: kill has no preconditions; the group is the build's own
                    // (process_group(0) made the child its leader).
                    unsafe { libc::kill(-group, libc::SIGTERM) };
                }
            }
            let _ = child.wait();
        }
    }
}

fn binary(target: &str, how: Build) -> PathBuf {
    target_dir()
        .join(TRIPLE)
        .join(how.profile_dir())
        .join(target)
}

fn log_path(target: &str) -> PathBuf {
    target_dir().join("logs").join(format!("{target}.log"))
}

fn run_one(target: &str, limit: Limit, how: Build) -> Result<Report> {
    let corpus = target_dir().join("corpus").join(target);
    let seeds = fuzz_dir().join("seeds").join(target);
    let artifacts = fuzz_dir().join("artifacts").join(target);
    let log = log_path(target);
    for dir in [&corpus, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    fs::create_dir_all(log.parent().unwrap_or(Path::new(".")))?;
    let before = crashes(&artifacts);
    let started = std::time::Instant::now();
    let mut command = Command::new(binary(target, how));
    if let Some(runs) = limit.runs {
        command.arg(format!("-runs={runs}"));
    }
    let status = command
        .arg(format!("-max_total_time={}", limit.seconds))
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&corpus)
        .arg(&seeds)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log)?)
        .status()
        .with_context(|| format!("cannot run {}", binary(target, how).display()))?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let crash = crashes(&artifacts)
        .into_iter()
        .find(|p| !before.contains(p));
    Ok(Report {
        target: target.to_owned(),
        execs: stat(&text, "stat::number_of_executed_units:"),
        coverage: last_field(&text, "cov:"),
        corpus: last_field(&text, "corp:"),
        seconds: started.elapsed().as_secs(),
        ok: status.success() && crash.is_none(),
        crash,
    })
}

fn crashes(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// `stat::name: N` from libFuzzer's final stats.
fn stat(log: &str, name: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix(name))
        .filter_map(|v| v.trim().parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// The number after the last `name` in libFuzzer's status lines (`cov: 1234`,
/// `corp: 56/7890b`).
fn last_field(log: &str, name: &str) -> u64 {
    log.lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| {
            let rest = &l[l.find(name)? + name.len()..];
            let digits: String = rest
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .next_back()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_status_and_final_stats() {
        let log = "INFO: Seed: 1\n#2\tINITED cov: 12 ft: 13 corp: 1/4b exec/s: 0 rss: 30Mb\n\
                   #4096\tpulse  cov: 345 ft: 400 corp: 28/1290b lim: 43 exec/s: 2048 rss: 40Mb\n\
                   Done 81920 runs in 31 second(s)\nstat::number_of_executed_units: 81920\n\
                   stat::peak_rss_mb: 41\n";
        assert_eq!(stat(log, "stat::number_of_executed_units:"), 81920);
        assert_eq!(last_field(log, "cov:"), 345);
        assert_eq!(last_field(log, "corp:"), 28);
        assert_eq!(last_field("no status here", "cov:"), 0);
    }
}
