//! `zastava-observer`: the node daemon.

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use zastava::{
    attribution::NamespaceFilter,
    daemon::{self, CriOptions, RunOptions},
    doctor::{self, Status},
    probes::{validate_ring_size, DEFAULT_RING_BYTES},
    sink::Output,
};

#[derive(Parser)]
#[command(
    name = "zastava-observer",
    version,
    about = "Runtime observer: what workloads exec, open and connect to"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the probes and stream events as NDJSON until SIGINT/SIGTERM or --duration.
    Run(Box<RunArgs>),
    /// Check that this node can run the observer; exits non-zero if it cannot.
    Doctor {
        /// Root of the host filesystem.
        #[arg(long, default_value = "/")]
        host_root: PathBuf,
        /// Container runtime socket to check (default: the sockets `run` would try).
        #[arg(long, value_name = "PATH|unix://PATH")]
        cri_endpoint: Option<String>,
        /// Do not check for a container runtime.
        #[arg(long, conflicts_with = "cri_endpoint")]
        no_cri: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Where to write events: a file (appended) or `-` for stdout.
    #[arg(long, value_name = "PATH|-", default_value = "-")]
    ndjson: String,
    /// Stop after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Ring buffer size: a power of two of at least one page; K, M and G suffixes allowed.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RING_BYTES.to_string(), value_parser = parse_ring_size)]
    ring_buffer_bytes: String,
    /// Also write the shutdown summary as JSON to this file.
    #[arg(long, value_name = "PATH")]
    stats_json: Option<PathBuf>,
    /// Root of the host filesystem (machine-id, os-release), e.g. /host in a container.
    #[arg(long, default_value = "/")]
    host_root: PathBuf,
    /// The host's /proc.
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
    /// The cgroup v2 mount (found in the mount table by default).
    #[arg(long, value_name = "PATH")]
    cgroup_root: Option<PathBuf>,
    /// Container runtime socket (CRI); default: containerd's, then CRI-O's, if present.
    #[arg(long, value_name = "PATH|unix://PATH")]
    cri_endpoint: Option<String>,
    /// Run without a container runtime: every event is attributed to the node.
    #[arg(long, conflicts_with = "cri_endpoint")]
    no_cri: bool,
    /// How often to list containers when the runtime has no event stream.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_duration)]
    cri_poll_interval: Duration,
    /// Deadline for each call to the container runtime.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_duration)]
    cri_timeout: Duration,
    /// How long an event of a container not known yet may wait for the runtime before it
    /// is sent with "enrichment": "pending" (a patch record follows).
    #[arg(long, value_name = "MS", default_value_t = 250)]
    enrichment_wait_ms: u64,
    /// How long an exited container is remembered, so its last events still resolve.
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse_duration)]
    container_retention: Duration,
    /// Only report these Kubernetes namespaces (repeatable); host processes are dropped too.
    /// Filtering happens in the kernel.
    #[arg(long = "namespace", value_name = "NS")]
    namespaces: Vec<String>,
    /// Never report these Kubernetes namespaces (repeatable). Filtering happens in the kernel.
    #[arg(long = "exclude-namespace", value_name = "NS")]
    exclude_namespaces: Vec<String>,
    /// Report the observer's own activity too (diagnostics).
    #[arg(long, hide = true)]
    observe_self: bool,
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    let secs: f64 = value
        .parse()
        .map_err(|_| format!("`{value}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{value}` is not a valid duration"))
}

fn ring_size_bytes(value: &str) -> Result<u64, String> {
    let (digits, multiplier) = match value.char_indices().last() {
        Some((i, 'K' | 'k')) => (&value[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&value[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&value[..i], 1 << 30),
        _ => (value, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{value}` is not a size (examples: 4096, 256K, 16M)"))?;
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("`{value}` is too large"))
}

fn parse_ring_size(value: &str) -> Result<String, String> {
    let bytes = ring_size_bytes(value)?;
    validate_ring_size(bytes).map_err(|e| e.to_string())?;
    Ok(bytes.to_string())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Doctor {
            host_root,
            cri_endpoint,
            no_cri,
        } => {
            let endpoint = if no_cri {
                Some(String::new())
            } else {
                cri_endpoint
            };
            let checks = doctor::run(&host_root, endpoint.as_deref());
            for check in &checks {
                println!("{check}");
            }
            if checks.iter().any(|c| c.status == Status::Fail) {
                println!("\nthe observer cannot run on this node: fix the FAIL items above");
                ExitCode::FAILURE
            } else {
                println!("\nthe observer can run on this node");
                ExitCode::SUCCESS
            }
        }
        Command::Run(args) => {
            // Validated by the parser; the value is a decimal byte count.
            let ring_buffer_bytes = args
                .ring_buffer_bytes
                .parse::<u64>()
                .ok()
                .and_then(|b| validate_ring_size(b).ok())
                .unwrap_or(DEFAULT_RING_BYTES);
            let options = RunOptions {
                output: Output::parse(&args.ndjson),
                duration: args.duration,
                ring_buffer_bytes,
                stats_json: args.stats_json,
                host_root: args.host_root,
                proc_root: args.proc_root,
                cgroup_root: args.cgroup_root,
                cri: CriOptions {
                    enabled: !args.no_cri,
                    endpoint: args.cri_endpoint,
                    poll_interval: args.cri_poll_interval,
                    timeout: args.cri_timeout,
                },
                enrichment_wait: Duration::from_millis(args.enrichment_wait_ms),
                retention: args.container_retention,
                namespaces: NamespaceFilter {
                    include: args.namespaces,
                    exclude: args.exclude_namespaces,
                },
                observe_self: args.observe_self,
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(err) => {
                    eprintln!("zastava-observer: cannot start the async runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(daemon::run(options)) {
                Ok(summary) => {
                    eprintln!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("zastava-observer: {err}");
                    eprintln!("run `zastava-observer doctor` to check this node");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes() {
        assert_eq!(ring_size_bytes("4096"), Ok(4096));
        assert_eq!(ring_size_bytes("256K"), Ok(256 << 10));
        assert_eq!(ring_size_bytes("16M"), Ok(16 << 20));
        assert!(ring_size_bytes("lots").is_err());
        assert!(parse_ring_size("3000")
            .unwrap_err()
            .contains("power of two"));
        assert!(parse_ring_size("2G")
            .unwrap_err()
            .contains("power of two between"));
        assert!(parse_duration("1.5").is_ok());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
