//! Developer and release tasks:
//! `cargo xtask setup | build-ebpf | test | run | bench | chaos | image | offline-kit | fuzz`.
//!
//! `setup` installs everything a fresh Debian machine lacks and is a no-op when nothing is
//! missing; `test` and `run` call it first, so each is one command on a new machine.

mod archive;
mod bench;
mod chaos;
mod cmd;
mod ebpf;
mod fuzz;
mod image;
mod kit;
mod provenance;
mod run;
mod setup;
mod test;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain and test dependencies (idempotent).
    Setup,
    /// Build the eBPF object that `zastava-observer` embeds.
    BuildEbpf {
        /// Build without optimisations (the verifier may reject it).
        #[arg(long)]
        debug: bool,
    },
    /// Setup, build, lint, then run every test (privileged tests need root).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Setup, build in release mode, then `zastava-observer run` with the given arguments.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, build in release mode, then benchmark the observer against no tracer and its
    /// peers and print the report (docs/PERFORMANCE.md).
    Bench {
        /// A tiny run that only checks every part works (debug build).
        #[arg(long)]
        smoke: bool,
        /// Extra arguments for `zastava-bench` (after `--`), e.g. `--reps 3`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, then the chaos cases (outages, kills, a full spool disk, an overrun ring
    /// buffer under load) at full scale in release mode, and their figures as tables.
    Chaos {
        /// The small run the test suite makes (about 2 minutes).
        #[arg(long)]
        smoke: bool,
        /// Only the cases whose test names contain these words (default: all).
        cases: Vec<String>,
    },
    /// Build the OCI images of zastava-observer and zastava-webhook (reproducible: the
    /// same commit gives the same digests) as OCI archives for `ctr images import`.
    Image {
        /// Only this image (the webhook's builds without the eBPF toolchain).
        #[arg(long, value_enum)]
        only: Option<image::Image>,
        /// Take the binaries from this directory instead of building them in release mode.
        #[arg(long, value_name = "DIR")]
        binaries: Option<PathBuf>,
        /// Where the archives go (default: target/images).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Build the fuzz targets (nightly, cargo-fuzz) and run each for a while; a crash fails
    /// with its reproducer saved under fuzz/artifacts/<target>/.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Stop a target after this many executions, if that comes before `--seconds`
        /// (a soak: `--runs 10000000 --seconds 14400`).
        #[arg(long)]
        runs: Option<u64>,
        /// Build in the dev profile without AddressSanitizer (much faster to build; what
        /// CI runs).
        #[arg(long)]
        quick: bool,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
    /// Build the signed offline kit (offline-kit/zastava-runtime-<version>.tar.zst), or
    /// `verify` one.
    OfflineKit(kit::KitArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::setup(),
        Task::BuildEbpf { debug } => ebpf::build_ebpf(!debug),
        Task::Test { cargo_test_args } => test::test(&cargo_test_args),
        Task::Run { args } => run::run(&args),
        Task::Bench { smoke, args } => bench::bench(smoke, &args),
        Task::Chaos { smoke, cases } => chaos::chaos(smoke, &cases),
        Task::Image {
            only,
            binaries,
            out,
        } => image::image(&image::Options {
            only,
            binaries,
            out: out.unwrap_or_else(image::default_out),
        })
        .map(drop),
        Task::OfflineKit(args) => kit::offline_kit(&args),
        Task::Fuzz {
            seconds,
            runs,
            quick,
            targets,
        } => {
            let how = if quick {
                fuzz::Build::Quick
            } else {
                fuzz::Build::Sanitized
            };
            setup::setup().and_then(|()| fuzz::fuzz(fuzz::Limit { seconds, runs }, &targets, how))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
