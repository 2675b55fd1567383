//! `cargo xtask offline-kit`: everything an air-gapped install needs, in one archive with a
//! detached signature — `offline-kit/zastava-runtime-<version>.tar.zst`, its `.sig` (cosign's
//! blob format) and the public key `cosign.pub` — byte-identical when rebuilt from the same
//! commit. `offline-kit verify` checks a kit.

mod sign;
mod verify;

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use sha2::{Digest as _, Sha256};

use crate::{
    archive::{set_times, write_tar, Compression},
    cmd::{output, root, run_cmd, step},
    image::{self, Image},
    provenance::Provenance,
};

/// The checksum file at the kit's top.
pub const SUMS: &str = "SHA256SUMS";

/// What of the checkout goes into the kit, as git tracks it.
const FROM_CHECKOUT: &[&str] = &[
    "deploy",
    "docs/operations.md",
    "docs/deployment.md",
    "docs/configuration.md",
];

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct KitArgs {
    #[command(subcommand)]
    command: Option<KitCommand>,
    #[command(flatten)]
    build: BuildArgs,
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The signing key: an ECDSA P-256 private key, PEM (PKCS#8 or SEC1).
    #[arg(long, value_name = "PEM")]
    key: Option<PathBuf>,
    /// Take the binaries from this directory instead of building them in release mode.
    #[arg(long, value_name = "DIR")]
    binaries: Option<PathBuf>,
    /// Where the kit, its signature and the public key go.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum KitCommand {
    /// Check a kit's signature, then every file against its SHA256SUMS.
    Verify {
        /// The kit (`zastava-runtime-<version>.tar.zst`).
        kit: PathBuf,
        /// Its signature (default: the kit's path with `.sig` added).
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        /// The public key the kit must be signed with (`cosign.pub`), from a channel you
        /// trust, not from beside the kit.
        #[arg(long, value_name = "PEM")]
        key: PathBuf,
    },
}

pub fn offline_kit(args: &KitArgs) -> Result<()> {
    match &args.command {
        Some(KitCommand::Verify {
            kit,
            signature,
            key,
        }) => {
            let signature = signature.clone().unwrap_or_else(|| signature_path(kit));
            let verified = verify::verify(kit, &signature, key)?;
            println!(
                "{}: signature good, {} files match {}/{SUMS}",
                kit.display(),
                verified.files,
                verified.top
            );
            Ok(())
        }
        None => build(&args.build),
    }
}

fn signature_path(kit: &Path) -> PathBuf {
    let mut name = kit.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

fn build(args: &BuildArgs) -> Result<()> {
    let Some(key_path) = &args.key else {
        bail!(
            "the kit must be signed: pass --key with an ECDSA P-256 private key (PEM); \
             make one with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out kit-signing.key`"
        );
    };
    // Read first, so a bad key fails before minutes of building.
    let key = sign::read_signing_key(key_path)?;
    let provenance = Provenance::of_checkout()?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root().join("offline-kit"));
    let name = format!("zastava-runtime-{}", provenance.version);
    let work = out.join(format!(".{name}-work"));
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    // The images are written here, apart from other builds' (target/images).
    let images = image::image(&image::Options {
        only: None,
        binaries: args.binaries.clone(),
        out: work.join("images"),
    })?;
    let top = work.join(&name);
    fs::create_dir_all(top.join("images"))?;
    let mut listing = String::new();
    for built in &images.built {
        let file = built
            .archive
            .file_name()
            .context("an image archive without a name")?;
        fs::rename(&built.archive, top.join("images").join(file))?;
        listing.push_str(&format!(
            "{} {} images/{}\n",
            built.reference,
            built.manifest_digest,
            file.to_string_lossy()
        ));
    }
    fs::write(top.join("IMAGES"), listing)?;
    // For VMs and bare metal (deploy/systemd): the observer as it is in its image.
    fs::create_dir_all(top.join("bin"))?;
    run_cmd(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(images.binaries.join(Image::Observer.binary()))
            .arg(top.join("bin").join(Image::Observer.binary())),
    )?;
    copy_from_checkout(&top)?;
    write_sums(&top)?;
    fs::remove_dir_all(work.join("images"))?;
    set_times(&work, provenance.epoch)?;

    let archive = out.join(format!("{name}.tar.zst"));
    step(&format!("writing {}", archive.display()));
    write_tar(
        &work,
        &[name.as_str()],
        provenance.epoch,
        Compression::Zstd,
        &archive,
    )?;
    fs::remove_dir_all(&work)?;
    let signature = sign::sign_file(&key, &archive)?;
    fs::write(signature_path(&archive), &signature)?;
    fs::write(out.join("cosign.pub"), sign::public_pem(&key)?)?;
    println!("{}", archive.display());
    println!("{}", signature_path(&archive).display());
    println!("{}", out.join("cosign.pub").display());
    Ok(())
}

/// Copies what git tracks of `FROM_CHECKOUT`, keeping the paths, without the executable
/// bit (nothing there is run from the kit).
fn copy_from_checkout(top: &Path) -> Result<()> {
    let root = root();
    let files = output(
        Command::new("git")
            .current_dir(&root)
            .args(["ls-files", "-z", "--"])
            .args(FROM_CHECKOUT),
    )?;
    let mut count = 0;
    for file in files.split('\0').filter(|f| !f.is_empty()) {
        let to = top.join(file);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        let bytes = fs::read(root.join(file))
            .with_context(|| format!("{file} is tracked by git but cannot be read"))?;
        fs::write(&to, bytes)?;
        count += 1;
    }
    if count == 0 {
        bail!("git tracks none of {FROM_CHECKOUT:?}");
    }
    Ok(())
}

/// `SHA256SUMS` of every file below `top`, in path order, as `sha256sum` writes it.
fn write_sums(top: &Path) -> Result<()> {
    let mut files = Vec::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let mut lines: Vec<String> = Vec::new();
    for path in files {
        let relative = path
            .strip_prefix(top)?
            .to_str()
            .context("a kit file name that is not UTF-8")?
            .to_owned();
        lines.push(format!("{}  {relative}", sha256_file(&path)?));
    }
    lines.sort_by(|a, b| a[66..].cmp(&b[66..]));
    fs::write(top.join(SUMS), lines.join("\n") + "\n")?;
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
