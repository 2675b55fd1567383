//! `cargo xtask build-ebpf`: the eBPF object `zastava-observer` embeds, built with nightly
//! and bpf-linker for `bpfel-unknown-none`.

use std::{env, path::PathBuf};

use anyhow::{bail, Result};

use crate::{
    cmd::{cargo_bin, nightly_cargo, root, run_cmd, step},
    setup::{bpf_linker_llvm_major, nightly_llvm_major},
};

pub fn ebpf_dir() -> PathBuf {
    root().join("observer-ebpf")
}

/// Fails with what to do when the eBPF toolchain is missing or mismatched.
pub fn check_toolchain() -> Result<()> {
    let llvm = nightly_llvm_major()?;
    let linker = cargo_bin().join("bpf-linker");
    if !linker.exists() {
        bail!(
            "bpf-linker is not installed at {}; run `cargo xtask setup`",
            linker.display()
        );
    }
    match bpf_linker_llvm_major(&linker) {
        Some(major) if major == llvm => Ok(()),
        Some(major) => bail!(
            "bpf-linker at {} uses LLVM {major} but rustc nightly uses LLVM {llvm}; \
             run `cargo xtask setup` to rebuild it",
            linker.display()
        ),
        None => bail!(
            "cannot tell which LLVM bpf-linker at {} links; run `cargo xtask setup`",
            linker.display()
        ),
    }
}

pub fn build_ebpf(release: bool) -> Result<()> {
    check_toolchain()?;
    step("building the eBPF object");
    let mut cmd = nightly_cargo();
    cmd.current_dir(ebpf_dir()).args([
        "build",
        "--locked",
        "-Z",
        "build-std=core",
        "--target",
        "bpfel-unknown-none",
    ]);
    if release {
        cmd.arg("--release");
    }
    // bpf-linker is found on PATH by rustc.
    let path = format!(
        "{}:{}",
        cargo_bin().display(),
        env::var("PATH").unwrap_or_default()
    );
    run_cmd(cmd.env("PATH", path))
}
