//! One image: two layers archived by GNU tar with fixed times and owners, put in an OCI
//! layout by umoci (which compresses them and writes the config, the manifest and the
//! index, naming the image by its full reference), then the layout archived so that
//! `ctr images import` and registries' tools take it as it is.
//!
//! (umoci 0.4.7's own `insert` writes layers without the tar end-of-archive blocks, which
//! GNU tar and image scanners reject.)

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::{
    rootfs::{self, package_license, BIN_DIR, CA_BUNDLE},
    Image,
};
use crate::{
    archive::{set_times, write_tar, Compression},
    cmd::run_cmd,
    provenance::Provenance,
};

/// An image written as an OCI archive.
#[derive(Clone, Debug)]
pub struct Built {
    /// `registry.stellaops.io/zastava/zastava-observer:0.1.0`
    pub reference: String,
    /// The digest of the image manifest: what a registry and `image@sha256:` name.
    pub manifest_digest: String,
    /// The OCI image layout, as a tar file.
    pub archive: PathBuf,
}

/// The archive's file name: `zastava-observer-0.1.0.oci.tar`.
pub fn archive_name(image: Image, version: &str) -> String {
    format!("{}-{version}.oci.tar", image.binary())
}

pub fn assemble(image: Image, binary: &Path, provenance: &Provenance, out: &Path) -> Result<Built> {
    fs::create_dir_all(out)?;
    let work = out.join(format!(".{}-work", image.binary()));
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    let system = work.join("system");
    let own = work.join("binary");
    let layout = work.join("layout");
    if layout.to_string_lossy().contains(':') {
        bail!(
            "umoci cannot take a path with ':' in it: {}",
            layout.display()
        );
    }
    fs::create_dir_all(&system)?;
    fs::create_dir_all(&own)?;
    let rootfs = rootfs::stage(binary, &system, &own)?;

    let reference = image.reference(&provenance.version);
    let at = format!("{}:{reference}", layout.display());
    let created = provenance.created();
    umoci(&["init", "--layout", &layout.display().to_string()])?;
    umoci(&["new", "--image", &at])?;
    insert_layer(
        &at,
        &system,
        provenance.epoch,
        &created,
        "cargo xtask image: the loader, shared libraries and CA roots",
    )?;
    insert_layer(
        &at,
        &own,
        provenance.epoch,
        &created,
        &format!("cargo xtask image: {}", image.binary()),
    )?;

    let mut config = vec![
        "config".to_owned(),
        "--image".into(),
        at.clone(),
        "--no-history".into(),
        "--created".into(),
        created.clone(),
        "--author".into(),
        "Zastava".into(),
        "--architecture".into(),
        "amd64".into(),
        "--os".into(),
        "linux".into(),
        "--config.user".into(),
        image.user().into(),
        "--config.entrypoint".into(),
        format!("/{BIN_DIR}/{}", image.binary()),
        "--config.env".into(),
        format!("PATH=/{BIN_DIR}"),
        "--config.env".into(),
        format!("SSL_CERT_FILE=/{CA_BUNDLE}"),
    ];
    for (key, value) in labels(image, provenance, &rootfs)? {
        config.push("--config.label".into());
        config.push(format!("{key}={value}"));
    }
    let config: Vec<&str> = config.iter().map(String::as_str).collect();
    umoci(&config)?;
    umoci(&["gc", "--layout", &layout.display().to_string()])?;

    let manifest_digest = manifest_digest(&layout, &reference)?;
    // The layout's own files are written with this process's umask and the current time.
    set_times(&layout, provenance.epoch)?;
    let archive = out.join(archive_name(image, &provenance.version));
    write_tar(
        &layout,
        &["blobs", "index.json", "oci-layout"],
        provenance.epoch,
        Compression::None,
        &archive,
    )?;
    fs::remove_dir_all(&work)?;
    Ok(Built {
        reference,
        manifest_digest,
        archive,
    })
}

/// The image's labels: the OCI annotations, and where its other files came from.
fn labels(
    image: Image,
    provenance: &Provenance,
    rootfs: &rootfs::Rootfs,
) -> Result<Vec<(String, String)>> {
    let mut licenses = vec![format!("({})", image.license())];
    for package in rootfs.packages.keys() {
        let license = package_license(package).with_context(|| {
            format!("the image takes files from the Debian package {package}, whose licence the image tool does not know")
        })?;
        licenses.push(format!("({license})"));
    }
    let packages: Vec<String> = rootfs
        .packages
        .iter()
        .map(|(p, v)| format!("{p}={v}"))
        .collect();
    let oci = |key: &str| format!("org.opencontainers.image.{key}");
    Ok(vec![
        (oci("title"), image.binary().to_owned()),
        (oci("description"), image.description().to_owned()),
        (oci("version"), provenance.version.clone()),
        (oci("revision"), provenance.revision.clone()),
        (oci("created"), provenance.created()),
        (oci("vendor"), "StellaOps".to_owned()),
        (oci("licenses"), licenses.join(" AND ")),
        (
            "io.stellaops.zastava.debian-packages".to_owned(),
            packages.join(" "),
        ),
    ])
}

/// Adds the files under `dir` to the image as one layer: GNU tar writes it (a complete
/// archive, with the fixed times and owners), umoci compresses it and records it.
fn insert_layer(at: &str, dir: &Path, epoch: i64, created: &str, created_by: &str) -> Result<()> {
    let mut members: Vec<String> = fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    members.sort();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    let layer = dir.with_extension("layer.tar");
    write_tar(dir, &members, epoch, Compression::None, &layer)?;
    umoci(&[
        "raw",
        "add-layer",
        "--image",
        at,
        "--history.created",
        created,
        "--history.created_by",
        created_by,
        &layer.display().to_string(),
    ])?;
    fs::remove_file(&layer)?;
    Ok(())
}

fn umoci_command() -> Command {
    Command::new("umoci")
}

fn umoci(args: &[&str]) -> Result<()> {
    run_cmd(umoci_command().args(args)).context(
        "umoci writes the OCI images (Debian package umoci; `cargo xtask setup` installs it)",
    )
}

/// The manifest digest the layout's index gives `reference`.
fn manifest_digest(layout: &Path, reference: &str) -> Result<String> {
    let index = fs::read_to_string(layout.join("index.json"))?;
    let index: serde_json::Value =
        serde_json::from_str(&index).context("umoci wrote an index.json that is not JSON")?;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    if manifests.len() != 1 {
        bail!("the image layout holds {} images, not one", manifests.len());
    }
    let entry = &manifests[0];
    if entry["annotations"]["org.opencontainers.image.ref.name"] != reference {
        bail!("the image layout does not name its image {reference}: {entry}");
    }
    entry["digest"]
        .as_str()
        .map(str::to_owned)
        .context("the image layout's index has no digest")
}
