//! `zastava-observer`: the node daemon.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use zastava::{
    config::Config,
    daemon::{self, RunOptions},
    kernel::validate_ring_size,
    ops::{
        causes,
        doctor::{self, Status},
    },
};
use zastava_platform::{
    authority::{admin, AuthorityArgs},
    backend::BackendArgs,
    config::{parse_assignment, parse_bytes, parse_duration, Sources},
    deployment::RuntimeArgs,
    logging::{self, LogArgs},
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
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Load the probes and report events until SIGINT/SIGTERM or --duration.
    Run(Box<RunArgs>),
    /// Check that this node can run the observer; exits non-zero if it cannot.
    Doctor {
        /// Root of the host filesystem.
        #[arg(long, default_value = "/")]
        host_root: PathBuf,
        /// Container runtime socket to check (default: the sockets `run` would try).
        #[arg(long, value_name = "PATH|unix://PATH")]
        cri_endpoint: Option<String>,
        /// Do not check for a CRI runtime.
        #[arg(long, conflicts_with = "cri_endpoint")]
        no_cri: bool,
        /// Docker Engine socket to check (default: the sockets `run` would try).
        #[arg(long, value_name = "PATH|unix://PATH")]
        docker_endpoint: Option<String>,
        /// Do not check for Docker Engine.
        #[arg(long, conflicts_with = "docker_endpoint")]
        no_docker: bool,
    },
    /// Make the running observer drop its OpTok (from memory and its cache), so that its
    /// next call to the backend re-issues one.
    InvalidateOpToken {
        /// Whose credentials: the audience they were issued for (authority.audience;
        /// `scanner` for the Scanner backend).
        #[arg(long, value_name = "AUDIENCE")]
        audience: String,
        /// The observer's admin endpoint (loopback; admin.addr).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9467")]
        admin_addr: SocketAddr,
    },
    /// Runtime evidence bundles: export, sign, verify; debug-path for build-ids.
    Evidence(Box<zastava::evidence::cli::EvidenceArgs>),
}

/// Flags of `run`. Each one that is given overrides its configuration key (named in its
/// help); `ZASTAVA__<SECTION>__<KEY>` environment variables override the file.
#[derive(clap::Args)]
struct RunArgs {
    /// Configuration file (TOML). Without it, `run` attaches the probes and, when
    /// --backend is given, ships to it; with it, the file decides (feature flags default
    /// to false there).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Set any configuration key, e.g. `--set batch.max_events=500` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Check the configuration (file, environment and flags), print the settings that
    /// matter and exit: 0 when it is valid, 2 with every problem when it is not.
    #[arg(long)]
    check_config: bool,
    /// Stop after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Also write the shutdown summary as JSON to this file.
    #[arg(long, value_name = "PATH")]
    stats_json: Option<PathBuf>,
    /// Report the observer's own activity too (diagnostics).
    #[arg(long, hide = true)]
    observe_self: bool,

    /// [ndjson.path] Where to write events: a file (rotated beside itself) or `-` for stdout.
    #[arg(long, value_name = "PATH|-")]
    ndjson: Option<String>,
    /// [zastava.attach.enabled=false] Do not load the probes: report container lifecycle only.
    #[arg(long)]
    no_attach: bool,
    /// [observer.ring_buffer_bytes] Ring buffer size: a power of two of at least one page;
    /// K, M and G suffixes allowed.
    #[arg(long, value_name = "N", value_parser = parse_ring_size)]
    ring_buffer_bytes: Option<u64>,
    /// [observer.host_root] Root of the host filesystem (machine-id, os-release), e.g. /host.
    #[arg(long, value_name = "PATH")]
    host_root: Option<PathBuf>,
    /// [observer.node_name] The node's name on events (default: the hostname); in a
    /// DaemonSet, the pod's spec.nodeName.
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// [observer.proc_root] The host's /proc.
    #[arg(long, value_name = "PATH")]
    proc_root: Option<PathBuf>,
    /// [observer.cgroup_root] The cgroup v2 mount (found in the mount table by default).
    #[arg(long, value_name = "PATH")]
    cgroup_root: Option<PathBuf>,
    /// [observer.enrichment_wait] How long an event of a container not known yet may wait
    /// for the runtime before it is sent "pending" (a patch record follows).
    #[arg(long, value_name = "DURATION")]
    enrichment_wait: Option<String>,
    /// [observer.container_retention] How long an exited container is remembered.
    #[arg(long, value_name = "DURATION")]
    container_retention: Option<String>,
    /// [observer.namespaces] Only report these Kubernetes namespaces (repeatable); host
    /// processes are dropped too. Filtering happens in the kernel.
    #[arg(long = "namespace", value_name = "NS")]
    namespaces: Vec<String>,
    /// [observer.exclude_namespaces] Never report these namespaces (repeatable).
    #[arg(long = "exclude-namespace", value_name = "NS")]
    exclude_namespaces: Vec<String>,
    /// [cri.endpoint] Container runtime socket; default: containerd's, then CRI-O's.
    #[arg(long, value_name = "PATH|unix://PATH")]
    cri_endpoint: Option<String>,
    /// [cri.enabled=false] Do not use a CRI runtime (with --no-docker too, events are the
    /// node's).
    #[arg(long, conflicts_with = "cri_endpoint")]
    no_cri: bool,
    /// [docker.endpoint] Docker Engine's socket; default: /var/run/docker.sock, then
    /// /run/docker.sock, when one exists. Used beside a CRI runtime when both are found.
    #[arg(long, value_name = "PATH|unix://PATH")]
    docker_endpoint: Option<String>,
    /// [docker.enabled=false] Do not use Docker Engine.
    #[arg(long, conflicts_with = "docker_endpoint")]
    no_docker: bool,
    /// [cri.poll_interval] How often to list containers when the runtime has no event stream.
    #[arg(long, value_name = "DURATION")]
    cri_poll_interval: Option<String>,
    /// [cri.timeout] Deadline for each call to the container runtime.
    #[arg(long, value_name = "DURATION")]
    cri_timeout: Option<String>,
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    authority: AuthorityArgs,
    /// [spool.dir] Where batches wait for the backend.
    #[arg(long, value_name = "PATH")]
    spool_dir: Option<PathBuf>,
    /// [metrics.addr] Serve /metrics, /healthz and /readyz here.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
}

fn parse_ring_size(value: &str) -> Result<u64, String> {
    let bytes = parse_bytes(value)?;
    validate_ring_size(bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// The configuration `run` uses: file, then environment, then these flags.
fn configuration(args: &RunArgs) -> Result<Config, String> {
    let mut sources = Sources::from_process(args.config.as_deref()).map_err(|e| e.to_string())?;
    if args.config.is_none() {
        // The command-line profile: a newcomer's first command shows events.
        sources.set("zastava.attach.enabled", true);
        let backend_given = args.backend.url.is_some()
            || sources
                .env
                .iter()
                .any(|(k, _)| k == "ZASTAVA__BACKEND__URL");
        sources.set("scanner.runtime.capture.enabled", backend_given);
    }
    let s = &mut sources;
    if args.no_attach {
        s.set("zastava.attach.enabled", false);
    }
    if let Some(v) = args.ring_buffer_bytes {
        s.set(
            "observer.ring_buffer_bytes",
            i64::try_from(v).unwrap_or(i64::MAX),
        );
    }
    s.set_given_paths([
        ("observer.host_root", &args.host_root),
        ("observer.proc_root", &args.proc_root),
        ("observer.cgroup_root", &args.cgroup_root),
        ("spool.dir", &args.spool_dir),
    ]);
    args.runtime.apply(s);
    args.backend.apply(s);
    args.authority.apply(s);
    s.set_given([
        ("ndjson.path", &args.ndjson),
        ("observer.enrichment_wait", &args.enrichment_wait),
        ("observer.container_retention", &args.container_retention),
        ("observer.node_name", &args.node_name),
        ("cri.endpoint", &args.cri_endpoint),
        ("cri.poll_interval", &args.cri_poll_interval),
        ("cri.timeout", &args.cri_timeout),
        ("docker.endpoint", &args.docker_endpoint),
        ("metrics.addr", &args.metrics_addr),
    ]);
    s.set_list("observer.namespaces", &args.namespaces);
    s.set_list("observer.exclude_namespaces", &args.exclude_namespaces);
    if args.no_cri {
        s.set("cri.enabled", false);
    }
    if args.no_docker {
        s.set("docker.enabled", false);
    }
    for assignment in &args.set {
        let (key, value) = parse_assignment(assignment)?;
        s.set(&key, value);
    }
    Config::load(&sources).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = logging::init(&cli.log) {
        eprintln!("zastava-observer: {err}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::InvalidateOpToken {
            audience,
            admin_addr,
        } => {
            // Plain HTTP to loopback; reqwest still wants a TLS provider to exist.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let answer = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the async runtime: {e}"))
                .and_then(|runtime| {
                    runtime.block_on(admin::request_invalidate_for(
                        "zastava-observer",
                        admin_addr,
                        &audience,
                    ))
                });
            match answer {
                Ok(body) => {
                    println!("{}", body.trim());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("zastava-observer: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Evidence(args) => zastava::evidence::cli::run(*args),
        Command::Doctor {
            host_root,
            cri_endpoint,
            no_cri,
            docker_endpoint,
            no_docker,
        } => {
            // `Some("")`: not wanted.
            let wanted = |off: bool, endpoint: Option<String>| {
                if off {
                    Some(String::new())
                } else {
                    endpoint
                }
            };
            let cri = wanted(no_cri, cri_endpoint);
            let docker = wanted(no_docker, docker_endpoint);
            let checks = doctor::run(&host_root, cri.as_deref(), docker.as_deref());
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
            let config = match configuration(&args) {
                Ok(config) => config,
                Err(err) => {
                    logging::fatal("zastava-observer", &err);
                    return ExitCode::from(2);
                }
            };
            if args.check_config {
                print!("{}", config.describe());
                println!("the configuration is valid");
                return ExitCode::SUCCESS;
            }
            let options = RunOptions {
                config,
                duration: args.duration,
                stats_json: args.stats_json.clone(),
                observe_self: args.observe_self,
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(err) => {
                    logging::fatal(
                        "zastava-observer",
                        &format!("cannot start the async runtime: {err}"),
                    );
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(daemon::run(options)) {
                Ok(summary) => {
                    logging::report(&summary.to_string());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    logging::fatal(
                        "zastava-observer",
                        &format!(
                            "{}\nrun `zastava-observer doctor` to check this node",
                            causes::with_causes(&err)
                        ),
                    );
                    ExitCode::from(err.exit_code())
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
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert_eq!(parse_ring_size("16M"), Ok(16 << 20));
        assert!(parse_ring_size("3000")
            .unwrap_err()
            .contains("power of two"));
        assert!(parse_ring_size("2G")
            .unwrap_err()
            .contains("power of two between"));
    }
}
