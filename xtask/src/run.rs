//! `cargo xtask run`: setup, a release build, then `zastava-observer run` with the given
//! arguments.

use std::{ffi::OsStr, process::Command};

use anyhow::Result;

use crate::{
    cmd::{cargo, root, run_cmd, step},
    ebpf::build_ebpf,
    setup::setup,
};

pub fn run(args: &[String]) -> Result<()> {
    setup()?;
    build_ebpf(true)?;
    let root = root();
    step("building zastava-observer (release)");
    run_cmd(cargo().current_dir(&root).args([
        "build",
        "--locked",
        "--release",
        "-p",
        "observer-user",
    ]))?;
    let binary = root.join("target/release/zastava-observer");
    step(&format!("{} run {}", binary.display(), args.join(" ")));
    run_cmd(
        Command::new(binary)
            .arg("run")
            .args(args.iter().map(OsStr::new)),
    )
}
