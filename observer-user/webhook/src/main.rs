//! `zastava-webhook`: the validating admission webhook.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use zastava_platform::{
    authority::{admin, AuthorityArgs},
    backend::BackendArgs,
    config::{parse_assignment, Sources},
    deployment::RuntimeArgs,
    logging::{self, LogArgs},
    metrics::{self, Binary},
};
use zastava_webhook::{self as webhook, config::WebhookConfig};

#[derive(Parser)]
#[command(
    name = "zastava-webhook",
    version,
    about = "Admission webhook: may these images run here? Asks the Scanner backend, within a time budget"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve admission requests over HTTPS until SIGINT/SIGTERM.
    Serve(Box<ServeArgs>),
    /// Make the running webhook drop its backend credentials (the OpTok, from memory and
    /// its cache, so the next call re-issues; or the token file's token) and its verdicts.
    InvalidateOpToken {
        /// Whose credentials: the audience they were issued for (authority.audience;
        /// `scanner` for the Scanner backend).
        #[arg(long, value_name = "AUDIENCE")]
        audience: String,
        /// The webhook's admin endpoint (loopback).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9466")]
        admin_addr: SocketAddr,
    },
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
    /// [policy.judge_every_update] Also judge updates that add no image, and updates of
    /// objects being deleted.
    #[arg(long)]
    judge_every_update: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    authority: AuthorityArgs,
    /// [metrics.addr] Serve /metrics, /healthz and /readyz over plain HTTP here.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// [admin.addr] The loopback admin endpoint.
    #[arg(long, value_name = "ADDR")]
    admin_addr: Option<String>,
}

fn configuration(args: &ServeArgs) -> Result<WebhookConfig, String> {
    let mut sources = Sources::from_process(args.config.as_deref()).map_err(|e| e.to_string())?;
    let s = &mut sources;
    s.set_given_paths([
        ("server.cert_file", &args.cert_file),
        ("server.key_file", &args.key_file),
    ]);
    args.runtime.apply(s);
    args.backend.apply(s);
    args.authority.apply(s);
    s.set_given([
        ("server.addr", &args.addr),
        ("policy.budget", &args.budget),
        ("metrics.addr", &args.metrics_addr),
        ("admin.addr", &args.admin_addr),
    ]);
    s.set_list("policy.fail_open_namespaces", &args.fail_open_namespaces);
    if args.judge_every_update {
        s.set("policy.judge_every_update", true);
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = logging::init(&cli.log) {
        eprintln!("zastava-webhook: {err}");
        return ExitCode::from(2);
    }
    // Plain-HTTP clients (the admin command) need a process-wide TLS provider to exist.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            logging::fatal(
                "zastava-webhook",
                &format!("cannot start the async runtime: {err}"),
            );
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::InvalidateOpToken {
            audience,
            admin_addr,
        } => match runtime.block_on(admin::request_invalidate_for(
            "zastava-webhook",
            admin_addr,
            &audience,
        )) {
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
                    logging::fatal("zastava-webhook", &err);
                    return ExitCode::from(2);
                }
            };
            if args.check_config {
                print!("{}", config.describe());
                println!("the configuration is valid");
                return ExitCode::SUCCESS;
            }
            let (metrics, installed) =
                metrics::install(Binary::Webhook, config.runtime.common_labels().iter());
            if !installed {
                logging::fatal(
                    "zastava-webhook",
                    "cannot set up metrics: a recorder is already installed",
                );
                return ExitCode::FAILURE;
            }
            match runtime.block_on(webhook::serve(config, metrics)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    logging::fatal("zastava-webhook", &err.to_string());
                    ExitCode::FAILURE
                }
            }
        }
    }
}
