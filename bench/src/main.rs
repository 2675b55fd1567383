//! `zastava-bench`: syscall storms under no tracer, under zastava-observer and under its
//! peers, interleaved so that drift of the machine falls on every condition alike; then the
//! pipeline's throughput on one core and the admission webhook's decision latency. Prints a
//! Markdown report.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use serde_json::Value;

use zastava_bench::{
    condition::Condition,
    programs,
    storm::{self, Storm},
    table::{self, Cells, Sample},
    tracer::Tracer,
};

#[derive(Parser)]
#[command(about = "Benchmark zastava-observer against no tracer and its peers")]
struct Cli {
    /// A tiny run that only shows every part works (CI).
    #[arg(long)]
    smoke: bool,
    /// Repetitions of every storm under every condition.
    #[arg(long)]
    reps: Option<usize>,
    /// Operations per storm: open, open-relative, open-distinct, exec, connect, getppid.
    #[arg(long, value_delimiter = ',')]
    ops: Option<Vec<u64>>,
    /// Only these storms (default: all).
    #[arg(long, value_delimiter = ',')]
    storms: Option<Vec<String>>,
    /// Only the storms: no pipeline, webhook or evidence figures.
    #[arg(long)]
    storms_only: bool,
    /// An earlier build of zastava-observer, run as one more condition beside this one.
    #[arg(long)]
    observer_before: Option<PathBuf>,
    /// Where zastava-observer, zastava-webhook and the bench programs are (default: beside
    /// this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Scratch space for tracer output (emptied per run).
    #[arg(long, default_value = "target/bench")]
    work_dir: PathBuf,
    /// Also write the report here.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn main() {
    if let Err(err) = real_main() {
        eprintln!("zastava-bench: {err:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF programs and must run as root");
    }
    let [observer, storm_bin, pipeline_bin, webhook_bin, evidence_bin] = programs(
        cli.bin_dir.as_deref(),
        [
            "zastava-observer",
            "zastava-storm",
            "zastava-pipeline-bench",
            "zastava-webhook-bench",
            "zastava-evidence-bench",
        ],
    )?;
    let reps = cli.reps.unwrap_or(if cli.smoke { 1 } else { 5 });
    if cli
        .ops
        .as_ref()
        .is_some_and(|ops| ops.len() != Storm::ALL.len())
    {
        bail!("--ops takes six counts: open,open-relative,open-distinct,exec,connect,getppid");
    }
    let ops: Vec<u64> = cli.ops.clone().unwrap_or_else(|| {
        if cli.smoke {
            vec![2_000, 2_000, 2_000, 20, 200, 20_000]
        } else {
            vec![1_000_000, 1_000_000, 200_000, 2_000, 100_000, 5_000_000]
        }
    });
    let mut storms: Vec<(usize, u64)> = Vec::new();
    for (s, storm) in Storm::ALL.iter().enumerate() {
        if cli
            .storms
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == storm.name()))
        {
            storms.push((s, ops[s]));
        }
    }
    if let Some(names) = &cli.storms {
        if let Some(unknown) = names
            .iter()
            .find(|n| !Storm::ALL.iter().any(|s| s.name() == n.as_str()))
        {
            bail!("--storms: no storm is called {unknown:?}");
        }
    }
    let before = match &cli.observer_before {
        Some(path) if !path.is_file() => {
            bail!("--observer-before: {} is not a file", path.display())
        }
        other => other.clone(),
    };
    let conditions: Vec<Condition> = Condition::ALL
        .into_iter()
        .filter(|&c| c != Condition::ZastavaBefore || before.is_some())
        .collect();
    // Long enough for the observer to ship everything in its normal course (reorder window
    // plus batch age), so that lag is measured on records delivered while it runs.
    let settle = Duration::from_millis(if cli.smoke { 300 } else { 3_000 });
    if cli.work_dir.exists() {
        fs::remove_dir_all(&cli.work_dir)?;
    }

    let mut cells = Cells::new();
    for rep in 0..reps {
        for &(s, ops) in &storms {
            let storm = Storm::ALL[s];
            let here: Vec<Condition> = conditions
                .iter()
                .copied()
                .filter(|c| c.applies(storm))
                .collect();
            // A different condition goes first each repetition.
            let n = here.len();
            for k in 0..n {
                let condition = here[(k + rep) % n];
                let c = table::index_of(condition);
                let cell = cells.entry((s, c)).or_default();
                if cell.error.is_some() {
                    continue;
                }
                let dir = cli.work_dir.join(format!("{}-{c}-{rep}", storm.name()));
                eprintln!(
                    "zastava-bench: rep {}/{reps}: {} storm under {}",
                    rep + 1,
                    storm.name(),
                    condition.name()
                );
                let build = match condition {
                    Condition::ZastavaBefore => before.as_deref().unwrap_or(&observer),
                    _ => &observer,
                };
                match run_one(storm, ops, condition, build, &storm_bin, &dir, settle) {
                    Ok(sample) => cell.samples.push(sample),
                    Err(err) => {
                        eprintln!("zastava-bench:   {err:#}");
                        cell.error = Some(format!("{err:#}"));
                    }
                }
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }
    for &(s, _) in &storms {
        let storm = Storm::ALL[s];
        for required in [Condition::Baseline, Condition::Zastava] {
            let c = table::index_of(required);
            if let Some(err) = cells.get(&(s, c)).and_then(|cell| cell.error.as_ref()) {
                bail!("{} storm under {}: {err}", storm.name(), required.name());
            }
        }
    }

    let mut report = render(&cli, reps, &storms, &cells, &observer, &before)?;
    if cli.storms_only {
        print!("{report}");
        if let Some(path) = &cli.markdown {
            fs::write(path, &report).with_context(|| format!("write {}", path.display()))?;
        }
        return Ok(());
    }
    let pipeline = pipeline_figures(&pipeline_bin, cli.smoke)?;
    let webhook = webhook_figures(&webhook_bin, cli.smoke)?;
    render_extras(&mut report, &pipeline, &webhook)?;
    eprintln!("zastava-bench: evidence export and verify");
    let mut evidence = Command::new(&evidence_bin);
    evidence
        .args(["--json", "--dir"])
        .arg(cli.work_dir.join("evidence"));
    if cli.smoke {
        evidence.arg("--smoke");
    }
    let evidence = json_of(&mut evidence)?;
    zastava_bench::evidence::render(&mut report, &evidence)?;
    print!("{report}");
    if let Some(path) = &cli.markdown {
        fs::write(path, &report).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn run_one(
    storm: Storm,
    ops: u64,
    condition: Condition,
    observer: &Path,
    storm_bin: &Path,
    dir: &Path,
    settle: Duration,
) -> Result<Sample> {
    let tracer = match condition.command(storm, observer, dir) {
        Some(command) => Some(Tracer::start(condition, &command, dir)?),
        None => None,
    };
    let report = storm::run(storm_bin, storm, ops)?;
    let seen = match tracer {
        Some(tracer) => Some(tracer.finish(&report, settle)?),
        None => None,
    };
    Ok(Sample {
        seconds: report.seconds,
        expected: report.expected(),
        seen,
    })
}

/// `zastava-pipeline-bench` with distinct and with repeating paths.
fn pipeline_figures(binary: &Path, smoke: bool) -> Result<Vec<Value>> {
    let (events, reps) = if smoke {
        ("20000", "1")
    } else {
        ("1000000", "5")
    };
    ["distinct", "repeating"]
        .iter()
        .map(|paths| {
            eprintln!("zastava-bench: pipeline throughput, {paths} paths");
            json_of(Command::new(binary).args([
                "--json", "--events", events, "--reps", reps, "--paths", paths,
            ]))
        })
        .collect()
}

/// `zastava-webhook-bench`: 200 concurrent admission requests, warm cache and 50 ms backend.
fn webhook_figures(binary: &Path, smoke: bool) -> Result<Value> {
    eprintln!("zastava-bench: webhook decision latency");
    let (requests, concurrency) = if smoke {
        ("400", "50")
    } else {
        ("20000", "200")
    };
    json_of(
        Command::new(binary)
            .args([
                "--json",
                "--requests",
                requests,
                "--concurrency",
                concurrency,
            ])
            // zastava-webhook is beside it.
            .arg("--bin-dir")
            .arg(binary.parent().unwrap_or(Path::new("."))),
    )
}

/// Runs a bench program that prints one JSON object.
fn json_of(command: &mut Command) -> Result<Value> {
    let program = command.get_program().to_string_lossy().into_owned();
    let out = command
        .output()
        .with_context(|| format!("cannot start {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{program} printed no JSON"))
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib: u64 = m
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0))
        })
        .unwrap_or_default();
    format!("{cpus} × {cpu}, {memory}, Linux {kernel}")
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn version_of(tool: &str, arg: &str) -> String {
    Command::new(tool)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(if o.stdout.is_empty() {
                &o.stderr
            } else {
                &o.stdout
            })
            .into_owned();
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "not found".into())
}

fn dpkg_version(package: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "not installed".into())
}

fn render(
    cli: &Cli,
    reps: usize,
    storms: &[(usize, u64)],
    cells: &Cells,
    observer: &Path,
    before: &Option<PathBuf>,
) -> Result<String> {
    let mut out = String::new();
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    writeln!(out, "Machine: {}", machine())?;
    writeln!(
        out,
        "Date: {date}; {reps} repetition(s), conditions interleaved; observer {}",
        observer.display()
    )?;
    if let Some(before) = before {
        writeln!(out, "Zastava before: {}", before.display())?;
    }
    writeln!(
        out,
        "Load average (1, 5, 15 min) after the storms: {}",
        load_average()
    )?;
    writeln!(
        out,
        "Peers: bpftrace {}; libbpf-tools {}",
        version_of("bpftrace", "--version"),
        dpkg_version("libbpf-tools")
    )?;
    if cli.smoke {
        writeln!(
            out,
            "SMOKE RUN: sizes are too small for the figures to mean anything."
        )?;
    }
    writeln!(out)?;
    table::render(&mut out, storms, cells)?;
    Ok(out)
}

/// The pipeline and webhook figures.
fn render_extras(out: &mut String, pipeline: &[Value], webhook: &Value) -> Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "Pipeline on one core (decode → track → attribute → batch → JSON → NDJSON file), events/s:"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| open paths | decode only | decode + track | whole pipeline | NDJSON bytes/event |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|")?;
    for run in pipeline {
        let rate = |stage: &str| run["eventsPerSecond"][stage].as_f64().unwrap_or(0.0);
        let events = run["events"].as_f64().unwrap_or(1.0);
        writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            run["paths"].as_str().unwrap_or("?"),
            rate("decode"),
            rate("decode+track"),
            rate("full"),
            run["ndjsonBytes"].as_f64().unwrap_or(0.0) / events
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "zastava-webhook, {} AdmissionReviews per scenario from {} concurrent clients over HTTPS, ms:",
        webhook["requests"], webhook["concurrency"]
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| scenario | client p50 | client p99 | client max | requests/s | webhook's own p50 / p99 (bucket bound) | webhook CPU ms/request |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|")?;
    for s in webhook["scenarios"].as_array().into_iter().flatten() {
        let ms = |key: &str| s[key].as_f64().unwrap_or(f64::NAN);
        let own = if s["serverDecisions"].is_u64() {
            format!(
                "≤ {} / ≤ {}",
                s["serverP50AtMostMs"], s["serverP99AtMostMs"]
            )
        } else {
            "—".to_owned()
        };
        writeln!(
            out,
            "| {} | {:.2} | {:.2} | {:.2} | {:.0} | {own} | {:.3} |",
            s["name"].as_str().unwrap_or("?"),
            ms("p50Ms"),
            ms("p99Ms"),
            ms("maxMs"),
            ms("perSecond"),
            ms("webhookCpuMsPerRequest"),
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Backend calls during the warm-cache scenario: {}.",
        webhook["backendCallsDuringWarmScenario"]
    )?;
    Ok(())
}
