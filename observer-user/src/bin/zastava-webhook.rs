//! `zastava-webhook`: the validating admission webhook.

use std::{io::IsTerminal as _, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use zastava::{
    config::{parse_assignment, BackendArgs, Sources},
    webhook::{self, config::WebhookConfig},
};

#[derive(Parser)]
#[command(
    name = "zastava-webhook",
    version,
    about = "Admission webhook: may these images run here? Asks the Scanner backend, within a time budget"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve admission requests over HTTPS until SIGINT/SIGTERM.
    Serve(Box<ServeArgs>),
    /// Make the running webhook drop its cached backend credentials and verdicts.
    InvalidateOpToken {
        /// Whose credentials: the Scanner backend's.
        #[arg(long, value_enum)]
        audience: Audience,
        /// The webhook's admin endpoint (loopback).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9466")]
        admin_addr: SocketAddr,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Audience {
    Scanner,
}

#[derive(Clone, Copy, ValueEnum)]
enum TagOnlyArg {
    Deny,
    Warn,
}

/// Flags of `serve`. Each one that is given overrides its configuration key (named in its
/// help); `ZASTAVA__<SECTION>__<KEY>` environment variables override the file.
#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Set any configuration key, e.g. `--set policy.budget="1500ms"` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Check the configuration (file, environment and flags), print the settings that
    /// matter and exit: 0 when it is valid, 2 with every problem when it is not.
    #[arg(long)]
    check_config: bool,
    /// [server.addr] Where to serve HTTPS.
    #[arg(long, value_name = "ADDR")]
    addr: Option<String>,
    /// [server.cert_file] PEM certificate chain (re-read when it changes).
    #[arg(long, value_name = "PATH")]
    cert_file: Option<PathBuf>,
    /// [server.key_file] PEM private key (re-read when it changes).
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// [policy.budget] Time for the whole decision, backend included.
    #[arg(long, value_name = "DURATION")]
    budget: Option<String>,
    /// [policy.fail_open_namespaces] Admit, with a warning, when the backend cannot answer
    /// (repeatable); elsewhere such requests are denied.
    #[arg(long = "fail-open-namespace", value_name = "NS")]
    fail_open_namespaces: Vec<String>,
    /// [policy.tag_only] Images not pinned by digest.
    #[arg(long, value_enum)]
    tag_only: Option<TagOnlyArg>,
    #[command(flatten)]
    backend: BackendArgs,
    /// [metrics.addr] Serve /metrics, /healthz and /readyz over plain HTTP here.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// [admin.addr] The loopback admin endpoint.
    #[arg(long, value_name = "ADDR")]
    admin_addr: Option<String>,
}

fn configuration(args: &ServeArgs) -> Result<WebhookConfig, String> {
    let mut sources = Sources {
        env: std::env::vars().collect(),
        ..Default::default()
    };
    if let Some(path) = &args.config {
        sources = sources.with_file(path).map_err(|e| e.to_string())?;
    }
    let s = &mut sources;
    for (key, value) in [
        ("server.cert_file", &args.cert_file),
        ("server.key_file", &args.key_file),
    ] {
        if let Some(v) = value {
            s.set_path(key, v);
        }
    }
    args.backend.apply(s);
    for (key, value) in [
        ("server.addr", &args.addr),
        ("policy.budget", &args.budget),
        ("metrics.addr", &args.metrics_addr),
        ("admin.addr", &args.admin_addr),
    ] {
        if let Some(v) = value {
            s.set(key, v.clone());
        }
    }
    if !args.fail_open_namespaces.is_empty() {
        s.set(
            "policy.fail_open_namespaces",
            args.fail_open_namespaces.clone(),
        );
    }
    if let Some(tag_only) = args.tag_only {
        s.set(
            "policy.tag_only",
            match tag_only {
                TagOnlyArg::Deny => "deny",
                TagOnlyArg::Warn => "warn",
            },
        );
    }
    for assignment in &args.set {
        let (key, value) = parse_assignment(assignment)?;
        s.set(&key, value);
    }
    WebhookConfig::load(&sources).map_err(|e| e.to_string())
}

async fn invalidate(admin: SocketAddr) -> Result<String, String> {
    if !admin.ip().is_loopback() {
        return Err(format!(
            "{admin} is not a loopback address; the admin endpoint only listens on loopback"
        ));
    }
    let url = format!("http://{admin}/invalidate-op-token?audience=scanner");
    let response = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .map_err(|e| format!("cannot reach the webhook's admin endpoint at {admin}: {e} (is zastava-webhook running here, with admin.addr = \"{admin}\"?)"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("the webhook answered {status}: {body}"))
    }
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
    // Plain-HTTP clients (the admin command) need a process-wide TLS provider to exist.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("zastava-webhook: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::InvalidateOpToken {
            audience: Audience::Scanner,
            admin_addr,
        } => match runtime.block_on(invalidate(admin_addr)) {
            Ok(body) => {
                println!("{}", body.trim());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("zastava-webhook: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => {
            let config = match configuration(&args) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("zastava-webhook: {err}");
                    return ExitCode::from(2);
                }
            };
            if args.check_config {
                print!("{}", config.describe());
                println!("the configuration is valid");
                return ExitCode::SUCCESS;
            }
            let metrics = match metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "zastava_admission_decision_seconds".into(),
                    ),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25,
                        0.5, 1.0, 1.5, 2.0, 5.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(
                            "zastava_runtime_backend_latency_ms".into(),
                        ),
                        &[
                            1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0,
                        ],
                    )
                })
                .and_then(|b| b.install_recorder())
            {
                Ok(handle) => handle,
                Err(err) => {
                    eprintln!("zastava-webhook: cannot set up metrics: {err}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(webhook::serve(config, metrics)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("zastava-webhook: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
