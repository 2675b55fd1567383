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
    // The object's BTF line info names every source file by absolute path: the checkout's,
    // the registry's (aya-ebpf) and rust-src's (core, built from source). Remapped, the
    // object (and the observer that embeds it) is the same wherever it is built. Given as
    // --config, these join the `--btf` flag of observer-ebpf/.cargo/config.toml.
    let cargo_home = cargo_bin().parent().map(PathBuf::from).unwrap_or_default();
    let rustup_home = env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".rustup")))
        .unwrap_or_else(|| PathBuf::from("/root/.rustup"));
    let remaps: Vec<String> = [
        (root(), "/zastava"),
        (cargo_home, "/cargo"),
        (rustup_home, "/rustup"),
    ]
    .iter()
    .map(|(from, to)| format!("\"--remap-path-prefix={}={to}\"", from.display()))
    .collect();
    cmd.arg("--config").arg(format!(
        "target.bpfel-unknown-none.rustflags=[{}]",
        remaps.join(",")
    ));
    // bpf-linker is found on PATH by rustc.
    let path = format!(
        "{}:{}",
        cargo_bin().display(),
        env::var("PATH").unwrap_or_default()
    );
    run_cmd(cmd.env("PATH", path))
}
