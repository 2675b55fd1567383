//! `cargo xtask test`: setup, build, format and lint checks, every test (as root: they
//! load the probes), then a smoke run of the benchmark and 30 s of every fuzz target.

use anyhow::{bail, Result};

use crate::{
    bench::bench,
    cmd::{cargo, nightly_cargo, output, root, run_cmd, step},
    ebpf::{build_ebpf, ebpf_dir},
    fuzz::{run_built, BackgroundBuild, Build, Limit, TARGETS},
    setup::setup,
};

pub fn test(cargo_test_args: &[String]) -> Result<()> {
    setup()?;
    build_ebpf(true)?;
    let root = root();

    step("checking formatting");
    run_cmd(cargo().current_dir(&root).args(["fmt", "--all", "--check"]))?;
    run_cmd(
        nightly_cargo()
            .current_dir(ebpf_dir())
            .args(["fmt", "--check"]),
    )?;

    step("linting");
    run_cmd(cargo().current_dir(&root).args([
        "clippy",
        "--locked",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_cmd(nightly_cargo().current_dir(ebpf_dir()).args([
        "clippy",
        "--locked",
        "-Z",
        "build-std=core",
        "--target",
        "bpfel-unknown-none",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;

    check_webhook_needs_no_ebpf()?;

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the tests load eBPF programs and must run as root");
    }
    step("building the tests");
    run_cmd(
        cargo()
            .current_dir(&root)
            .args(["test", "--locked", "--workspace", "--no-run"])
            .args(cargo_test_args),
    )?;
    // The whole run: the fuzz targets build (quick: no sanitizer) while the tests, which
    // mostly wait on servers and containers, run; stopped if they fail.
    let fuzz_build = if cargo_test_args.is_empty() {
        Some(BackgroundBuild::start(Build::Quick)?)
    } else {
        None
    };
    step("running tests");
    run_cmd(
        cargo()
            .current_dir(&root)
            .args(["test", "--locked", "--workspace"])
            .args(cargo_test_args),
    )?;
    if let Some(fuzz_build) = fuzz_build {
        // Benchmarks are not tests; this only checks that the bench still runs.
        bench(true, &[])?;
        // Every parser of untrusted input, 30 s each, as many at once as there are cores.
        fuzz_build.finish()?;
        let targets: Vec<String> = TARGETS.iter().map(|t| (*t).to_owned()).collect();
        let limit = Limit {
            seconds: 30,
            runs: None,
        };
        run_built(limit, &targets, Build::Quick)?;
    }
    Ok(())
}

/// The webhook is built without the eBPF toolchain (and its image without the probes):
/// nothing it links may load eBPF.
fn check_webhook_needs_no_ebpf() -> Result<()> {
    step("checking that zastava-webhook links no eBPF loader");
    let tree = output(cargo().current_dir(root()).args([
        "tree",
        "--locked",
        "-p",
        "zastava-webhook",
        "-e",
        "normal,build",
        "--prefix",
        "none",
    ]))?;
    let ebpf: Vec<&str> = tree
        .lines()
        .filter(|l| l.starts_with("aya") || l.starts_with("observer-user"))
        .collect();
    if !ebpf.is_empty() {
        bail!("zastava-webhook depends on {ebpf:?}; it must build without the eBPF object");
    }
    Ok(())
}
