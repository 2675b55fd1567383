//! `cargo xtask image`: OCI images of zastava-observer and zastava-webhook, from scratch,
//! without a registry or a container engine.
//!
//! Each image holds one binary, the shared libraries `ldd` says it loads (with the loader),
//! Debian's CA roots for the backend, and nothing else. The binaries are the glibc builds
//! that are benchmarked and shipped for systemd, built in release mode with the build's
//! paths remapped, so the same commit gives the same bytes wherever it is built. umoci
//! writes the OCI layout; the image's time is the commit's (SOURCE_DATE_EPOCH).

mod oci;
mod rootfs;

use std::{env, path::PathBuf};

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{cargo, cargo_bin, root, run_cmd, step},
    ebpf::build_ebpf,
    provenance::Provenance,
};

pub use oci::Built;

/// Where the images are published; the Kubernetes manifests and the Compose profile name
/// them so (`deploy/kubernetes/base/kustomization.yaml`).
pub const REPOSITORY: &str = "registry.stellaops.io/zastava";

/// One of the two images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Image {
    Observer,
    Webhook,
}

impl Image {
    pub const ALL: [Image; 2] = [Image::Observer, Image::Webhook];

    /// The binary, which also names the image.
    pub fn binary(self) -> &'static str {
        match self {
            Image::Observer => "zastava-observer",
            Image::Webhook => "zastava-webhook",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Image::Observer => "observer-user",
            Image::Webhook => "zastava-webhook",
        }
    }

    /// The user the image runs as. The observer needs root's file access on the host
    /// (bounded by the capabilities its pod grants); the webhook needs nothing.
    fn user(self) -> &'static str {
        match self {
            Image::Observer => "0:0",
            Image::Webhook => "65532:65532",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Image::Observer => {
                "Zastava runtime observer: what workloads exec, open and connect to, from eBPF"
            }
            Image::Webhook => "Zastava admission webhook: may these images run here?",
        }
    }

    /// SPDX expression of what the binary itself is under (the observer embeds the probes,
    /// GPL-2.0 OR MIT; see observer-ebpf/Cargo.toml).
    fn license(self) -> &'static str {
        match self {
            Image::Observer => "Apache-2.0 AND (GPL-2.0-only OR MIT)",
            Image::Webhook => "Apache-2.0",
        }
    }

    pub fn reference(self, version: &str) -> String {
        format!("{REPOSITORY}/{}:{version}", self.binary())
    }
}

/// What `cargo xtask image` was asked for.
pub struct Options {
    /// Both images unless one is named.
    pub only: Option<Image>,
    /// Take the binaries from this directory instead of building them.
    pub binaries: Option<PathBuf>,
    /// Where the OCI archives go.
    pub out: PathBuf,
}

/// The cargo target directory of this checkout.
pub fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

pub fn default_out() -> PathBuf {
    target_dir().join("images")
}

/// The images written, and the binaries they hold.
pub struct Images {
    pub binaries: PathBuf,
    pub built: Vec<Built>,
}

pub fn image(options: &Options) -> Result<Images> {
    let provenance = Provenance::of_checkout()?;
    if provenance.dirty() {
        step("the work tree has uncommitted changes: the images are labelled -dirty");
    }
    let wanted: Vec<Image> = match options.only {
        Some(one) => vec![one],
        None => Image::ALL.to_vec(),
    };
    let binaries = match &options.binaries {
        Some(dir) => dir.clone(),
        None => build_release(&wanted)?,
    };
    let mut built = Vec::new();
    for image in wanted {
        let binary = binaries.join(image.binary());
        if !binary.is_file() {
            bail!("{} is not there to put in the image", binary.display());
        }
        step(&format!(
            "assembling {}",
            image.reference(&provenance.version)
        ));
        let one = oci::assemble(image, &binary, &provenance, &options.out)?;
        println!(
            "{} {} {} {}",
            image.binary(),
            one.reference,
            one.manifest_digest,
            one.archive.display()
        );
        built.push(one);
    }
    Ok(Images { binaries, built })
}

/// Builds the release binaries of `images` where nothing of the build's location can
/// reach them, and returns the directory they are in.
fn build_release(images: &[Image]) -> Result<PathBuf> {
    let root = root();
    let target = target_dir().join("image-build");
    if images.contains(&Image::Observer) && env::var_os("ZASTAVA_EBPF_OBJECT").is_none() {
        // zastava-observer embeds the probes; the webhook is built without them.
        build_ebpf(true)?;
    }
    let bin = cargo_bin();
    let home = bin.parent().unwrap_or(&bin);
    // Panic locations and debug info name source files by absolute path for dependencies
    // (under CARGO_HOME) and generated code (under the target directory), and debug info
    // names the directory the build ran in. rustc applies the last prefix that matches,
    // so the target directory (which may be inside the checkout) comes after the checkout.
    let prefixes = [
        (root.as_path(), "/zastava"),
        (home, "/cargo"),
        (target.as_path(), "/target"),
    ];
    let rustflags: Vec<String> = prefixes
        .iter()
        .map(|(from, to)| format!("--remap-path-prefix={}={to}", from.display()))
        .collect();
    // The same for C code built by dependencies (ring), whose debug info feeds the GNU
    // build-id even though the images strip it.
    let cflags: Vec<String> = prefixes
        .iter()
        .map(|(from, to)| format!("-ffile-prefix-map={}={to}", from.display()))
        .collect();
    step(&format!(
        "building {} (release, paths remapped)",
        images
            .iter()
            .map(|i| i.binary())
            .collect::<Vec<_>>()
            .join(" and ")
    ));
    // One build per binary: built together, cargo would unify the features of their
    // dependencies, and the webhook built with the observer would differ from the webhook
    // built alone (`--only webhook`).
    for image in images {
        let mut build = cargo();
        // What cargo sets for a crate it runs (xtask itself, or a test that runs xtask)
        // would reach the build scripts that read it (ring's), and rebuild them each time
        // it differs.
        for (name, _) in env::vars_os() {
            let name = name.to_string_lossy();
            let per_crate = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CFG_", "CARGO_BIN_"]
                .iter()
                .any(|p| name.starts_with(p))
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                ]
                .contains(&name.as_ref());
            if per_crate {
                build.env_remove(name.as_ref());
            }
        }
        run_cmd(
            build
                .current_dir(&root)
                .args(["build", "--locked", "--release"])
                .args(["-p", image.package(), "--bin", image.binary()])
                .env("CARGO_TARGET_DIR", &target)
                // One separator that no flag contains, so no flag is split.
                .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\u{1f}"))
                .env_remove("RUSTFLAGS")
                .env("CFLAGS", cflags.join(" "))
                // The image's time, not the binaries': ring's build script reruns when it
                // changes, and the binaries would be rebuilt for every other epoch.
                .env_remove("SOURCE_DATE_EPOCH"),
        )
        .with_context(|| format!("building {} for its image", image.binary()))?;
    }
    Ok(target.join("release"))
}
