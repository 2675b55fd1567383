//! `cargo xtask bench`: the benchmark (docs/PERFORMANCE.md), or its smoke run.

use std::{ffi::OsStr, process::Command};

use anyhow::Result;

use crate::{
    cmd::{cargo, root, run_cmd, step},
    ebpf::build_ebpf,
    image::target_dir,
    setup::setup,
};

pub fn bench(smoke: bool, args: &[String]) -> Result<()> {
    setup()?;
    build_ebpf(true)?;
    let root = root();
    let profile = if smoke { "debug" } else { "release" };
    step(&format!(
        "building the observer and the benchmarks ({profile})"
    ));
    let mut build = cargo();
    build.current_dir(&root).args([
        "build",
        "--locked",
        "-p",
        "observer-user",
        "-p",
        "zastava-webhook",
        "-p",
        "zastava-bench",
    ]);
    if !smoke {
        build.arg("--release");
    }
    run_cmd(&mut build)?;
    let bin_dir = target_dir().join(profile);
    step(if smoke {
        "benchmark smoke run"
    } else {
        "benchmarking (about 50 minutes)"
    });
    let mut cmd = Command::new(bin_dir.join("zastava-bench"));
    cmd.current_dir(&root)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--work-dir")
        .arg(target_dir().join("bench"));
    if smoke {
        cmd.arg("--smoke");
    }
    run_cmd(cmd.args(args.iter().map(OsStr::new)))
}
