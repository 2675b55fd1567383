//! Developer tasks: `cargo xtask setup | build-ebpf | test | run | bench`.
//!
//! `setup` installs everything a fresh Debian machine lacks and is a no-op when nothing is
//! missing; `test` and `run` call it first, so each is one command on a new machine.

use std::{
    env,
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

/// bpf-linker release that links for the pinned aya-ebpf.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the build and the tests use besides the eBPF toolchain: protoc for the
/// CRI client, a real container runtime for the attribution tests, the peers the
/// benchmark compares with, and systemd-analyze and setpriv for the systemd unit's tests.
/// (The Kubernetes manifests' tests render them with `kubectl kustomize`, which this
/// kind of machine has and Debian does not package.)
const PACKAGES: &[&str] = &[
    "protobuf-compiler",
    "containerd",
    "runc",
    "busybox-static",
    "libbpf-tools",
    "bpftrace",
    "systemd",
    "util-linux",
];

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
        Task::Setup => setup(),
        Task::BuildEbpf { debug } => build_ebpf(!debug),
        Task::Test { cargo_test_args } => test(&cargo_test_args),
        Task::Run { args } => run(&args),
        Task::Bench { smoke, args } => bench(smoke, &args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_owned()
}

fn step(what: &str) {
    eprintln!("xtask: {what}");
}

/// Runs a command, failing with its name if it fails.
fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout.
fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `cargo +nightly`, with the rustup proxy rather than the cargo running xtask.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly");
    // Variables set by the outer (stable) cargo would leak into the nightly build.
    for var in [
        "RUSTC",
        "RUSTDOC",
        "CARGO",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn cargo_bin() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// Major LLVM version of the nightly rustc (bpf-linker must link the same one).
fn nightly_llvm_major() -> Result<u32> {
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

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt_install(packages: &[String]) -> Result<()> {
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
fn promtool_path() -> PathBuf {
    root().join("target/tools/promtool")
}

/// Takes `promtool` out of Debian's `prometheus` package without installing the package
/// (which would set up and start a Prometheus server).
fn fetch_promtool() -> Result<()> {
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
fn bpf_linker_llvm_major(linker: &Path) -> Option<u32> {
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

fn setup() -> Result<()> {
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

fn ebpf_dir() -> PathBuf {
    root().join("observer-ebpf")
}

/// Fails with what to do when the eBPF toolchain is missing or mismatched.
fn check_toolchain() -> Result<()> {
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

fn build_ebpf(release: bool) -> Result<()> {
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

fn test(cargo_test_args: &[String]) -> Result<()> {
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

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the tests load eBPF programs and must run as root");
    }
    step("running tests");
    run_cmd(
        cargo()
            .current_dir(&root)
            .args(["test", "--locked", "--workspace"])
            .args(cargo_test_args),
    )?;
    if cargo_test_args.is_empty() {
        // Benchmarks are not tests; this only checks that the bench still runs.
        bench(true, &[])?;
    }
    Ok(())
}

fn bench(smoke: bool, args: &[String]) -> Result<()> {
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
        "zastava-bench",
    ]);
    if !smoke {
        build.arg("--release");
    }
    run_cmd(&mut build)?;
    let bin_dir = root.join("target").join(profile);
    step(if smoke {
        "benchmark smoke run"
    } else {
        "benchmarking (about 15 minutes)"
    });
    let mut cmd = Command::new(bin_dir.join("zastava-bench"));
    cmd.current_dir(&root)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--work-dir")
        .arg(root.join("target/bench"));
    if smoke {
        cmd.arg("--smoke");
    }
    run_cmd(cmd.args(args.iter().map(OsStr::new)))
}

fn run(args: &[String]) -> Result<()> {
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
