//! Developer tasks: `cargo xtask setup | build-ebpf | test | run | bench`.
//!
//! `setup` installs everything a fresh Debian machine lacks and is a no-op when nothing is
//! missing; `test` and `run` call it first, so each is one command on a new machine.

mod bench;
mod cmd;
mod ebpf;
mod run;
mod setup;
mod test;

use std::process::ExitCode;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::setup(),
        Task::BuildEbpf { debug } => ebpf::build_ebpf(!debug),
        Task::Test { cargo_test_args } => test::test(&cargo_test_args),
        Task::Run { args } => run::run(&args),
        Task::Bench { smoke, args } => bench::bench(smoke, &args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
