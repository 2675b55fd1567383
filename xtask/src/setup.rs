//! `cargo xtask setup`: installs what a fresh Debian machine lacks — rust-src for nightly,
//! LLVM dev packages, bpf-linker built against nightly's LLVM, the Debian packages the
//! tests and benchmarks use, promtool — and is a no-op when nothing is missing.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{cargo, cargo_bin, output, root, run_cmd, step};

/// bpf-linker release that links for the pinned aya-ebpf.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the build and the tests use besides the eBPF toolchain: protoc for the
/// CRI client, real container runtimes for the attribution tests (containerd; Docker Engine
/// and Compose, whose tests start a private dockerd), the peers the benchmark compares
/// with, systemd-analyze and setpriv for the systemd unit's tests, for the test Authority
/// (tests/authority/authority.py) Debian's python3 with PyJWT and cryptography, and
/// openssl, which makes the tests' DPoP keys and checks the offline kit's signature;
/// readelf (binutils), the tests' independent reader of build-ids; strace, the witness
/// tests/kernel_view.rs compares every edge with; jq, with which the
/// webhook's tests read its JSON log as an operator would; nats-server and redis-server,
/// which the event bus tests (tests/bus.rs) and the bus benchmark start privately on
/// loopback; for `cargo xtask image` and `offline-kit`, umoci (OCI layouts without a
/// daemon), binutils (objcopy), zstd (also for evidence archives) and Debian's CA roots
/// (ca-certificates, which the images carry).
/// (The Kubernetes manifests' tests render them with `kubectl kustomize`, which this
/// kind of machine has and Debian does not package.)
const PACKAGES: &[&str] = &[
    "protobuf-compiler",
    "containerd",
    "runc",
    "busybox-static",
    "docker.io",
    "docker-compose",
    "libbpf-tools",
    "bpftrace",
    // perf: the profiles docs/PERFORMANCE.md gives commands for.
    "linux-perf",
    "strace",
    "systemd",
    "util-linux",
    "python3",
    "python3-jwt",
    "python3-cryptography",
    "openssl",
    "binutils",
    "jq",
    "nats-server",
    "redis-server",
    "umoci",
    "zstd",
    "ca-certificates",
];

/// Major LLVM version of the nightly rustc (bpf-linker must link the same one).
pub fn nightly_llvm_major() -> Result<u32> {
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("the nightly toolchain is needed to build the eBPF programs; install it with `rustup toolchain install nightly`")?;
    let llvm = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` does not report an LLVM version")?;
    llvm.split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .with_context(|| format!("cannot parse LLVM version {llvm:?}"))
}

pub fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

pub fn apt_install(packages: &[String]) -> Result<()> {
    let missing: Vec<&String> = packages.iter().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("installing Debian packages: {missing:?}"));
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Where `cargo xtask setup` puts `promtool`, which the deployment tests run on the alerting
/// rules.
pub fn promtool_path() -> PathBuf {
    root().join("target/tools/promtool")
}

/// Takes `promtool` out of Debian's `prometheus` package without installing the package
/// (which would set up and start a Prometheus server).
pub fn fetch_promtool() -> Result<()> {
    let tool = promtool_path();
    if output(Command::new(&tool).arg("--version")).is_ok() {
        return Ok(());
    }
    step("fetching promtool from Debian's prometheus package");
    let dir = root().join("target/tools/prometheus-deb");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let download = || {
        run_cmd(
            Command::new("apt-get")
                .args([
                    "-o",
                    "APT::Sandbox::User=root",
                    "download",
                    "-qq",
                    "prometheus",
                ])
                .current_dir(&dir),
        )
    };
    if download().is_err() {
        run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
        download()?;
    }
    let deb = fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download prometheus left no .deb")?;
    run_cmd(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(dir.join("x")),
    )?;
    fs::copy(dir.join("x/usr/bin/promtool"), &tool)
        .context("the prometheus package has no usr/bin/promtool")?;
    fs::remove_dir_all(&dir)?;
    output(Command::new(&tool).arg("--version"))?;
    Ok(())
}

/// LLVM major that an installed bpf-linker is linked against, from its shared libraries.
pub fn bpf_linker_llvm_major(linker: &Path) -> Option<u32> {
    let libs = output(Command::new("ldd").arg(linker)).ok()?;
    libs.lines().find_map(|line| {
        let lib = line.split_whitespace().next()?;
        let version = lib
            .strip_prefix("libLLVM.so.")
            .or_else(|| lib.strip_prefix("libLLVM-"))?;
        version
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

pub fn setup() -> Result<()> {
    let llvm = nightly_llvm_major()?;

    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    if !Path::new(sysroot.trim())
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
    {
        step("adding rust-src to the nightly toolchain");
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    let mut packages: Vec<String> = vec![
        format!("llvm-{llvm}-dev"),
        format!("libpolly-{llvm}-dev"),
        "libzstd-dev".into(),
        "zlib1g-dev".into(),
    ];
    packages.extend(PACKAGES.iter().map(|p| (*p).to_owned()));
    apt_install(&packages)?;
    fetch_promtool()?;
    crate::fuzz::install_cargo_fuzz()?;

    let linker = cargo_bin().join("bpf-linker");
    let installed = output(Command::new(&linker).arg("--version")).ok();
    let version_ok = installed
        .as_deref()
        .is_some_and(|v| v.split_whitespace().nth(1) == Some(BPF_LINKER_VERSION));
    let linker_llvm = version_ok.then(|| bpf_linker_llvm_major(&linker)).flatten();
    if linker_llvm != Some(llvm) {
        step(&format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (found: {})",
            match (&installed, linker_llvm) {
                (None, _) => "none".to_owned(),
                (Some(v), Some(l)) => format!("{} with LLVM {l}", v.trim()),
                (Some(v), None) => format!("{} with unknown LLVM", v.trim()),
            }
        ));
        let path = format!(
            "/usr/lib/llvm-{llvm}/bin:{}",
            env::var("PATH").unwrap_or_default()
        );
        run_cmd(
            cargo()
                .args(["install", "--locked", "--force", "--no-default-features"])
                .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
                .args(["--features", &format!("llvm-{llvm}")])
                .env("PATH", path),
        )?;
        let built = bpf_linker_llvm_major(&linker);
        if built != Some(llvm) {
            bail!(
                "bpf-linker at {} links LLVM {built:?}, but rustc nightly uses LLVM {llvm}; \
                 remove it and run `cargo xtask setup` again",
                linker.display()
            );
        }
    }
    step(&format!(
        "toolchain ready (nightly LLVM {llvm}, bpf-linker {BPF_LINKER_VERSION})"
    ));
    Ok(())
}
