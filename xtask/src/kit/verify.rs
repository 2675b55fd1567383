//! `cargo xtask offline-kit verify`: the signature over the archive first (nothing of an
//! unauthenticated archive is read), then every file against `SHA256SUMS`: none missing,
//! none changed, none added, nothing but plain files and directories under the kit's own
//! directory.

use std::{
    collections::BTreeMap,
    io::Read as _,
    path::{Component, Path},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};
use sha2::{Digest as _, Sha256};

use super::{sign, SUMS};

/// What a verified kit holds.
pub struct Verified {
    /// The kit's top directory (`zastava-runtime-0.1.0`).
    pub top: String,
    /// Files checked against `SHA256SUMS`.
    pub files: usize,
}

pub fn verify(kit: &Path, signature: &Path, public_key: &Path) -> Result<Verified> {
    let key = sign::read_verifying_key(public_key)?;
    let text = std::fs::read_to_string(signature)
        .with_context(|| format!("cannot read the signature {}", signature.display()))?;
    sign::verify_file(&key, kit, &text)?;
    let (top, files) = read_entries(kit)?;
    let sums_text = files
        .get(SUMS)
        .with_context(|| format!("the kit has no {top}/{SUMS}"))?;
    let sums = parse_sums(&String::from_utf8_lossy(&sums_text.1))?;
    let mut problems = Vec::new();
    for (path, expected) in &sums {
        match files.get(path.as_str()) {
            None => problems.push(format!("{path} is listed in {SUMS} but not in the kit")),
            Some((actual, _)) if actual != expected => {
                problems.push(format!("{path} does not match its checksum"));
            }
            Some(_) => {}
        }
    }
    for path in files.keys() {
        if path != SUMS && !sums.contains_key(path) {
            problems.push(format!("{path} is in the kit but not in {SUMS}"));
        }
    }
    if !problems.is_empty() {
        bail!(
            "the kit is signed but its contents do not match: {}",
            problems.join("; ")
        );
    }
    Ok(Verified {
        top,
        files: sums.len(),
    })
}

/// `SHA256SUMS` as `sha256sum` writes it: `<hex>  <path>` per line.
pub fn parse_sums(text: &str) -> Result<BTreeMap<String, String>> {
    let mut sums = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let Some((hex, path)) = line.split_once("  ") else {
            bail!("{SUMS} has a line that is not `<sha256>  <path>`: {line:?}");
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{SUMS} has a checksum that is not SHA-256: {line:?}");
        }
        if sums.insert(path.to_owned(), hex.to_owned()).is_some() {
            bail!("{SUMS} lists {path} twice");
        }
    }
    Ok(sums)
}

/// The kit's top directory, and each file below it (path relative to it) with its
/// SHA-256 and, for `SHA256SUMS`, its bytes.
#[allow(clippy::type_complexity, reason = "read once, here")]
fn read_entries(kit: &Path) -> Result<(String, BTreeMap<String, (String, Vec<u8>)>)> {
    let mut child = Command::new("zstd")
        .args(["-dc", "--no-progress"])
        .arg(kit)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("zstd (Debian package zstd) decompresses the kit")?;
    let stdout = child.stdout.take().context("zstd's output")?;
    let mut archive = tar::Archive::new(stdout);
    let mut top: Option<String> = None;
    let mut files = BTreeMap::new();
    let read = (|| -> Result<()> {
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.into_owned();
            let mut parts = Vec::new();
            for component in path.components() {
                match component {
                    Component::Normal(part) => parts.push(
                        part.to_str()
                            .with_context(|| format!("a name that is not UTF-8: {path:?}"))?
                            .to_owned(),
                    ),
                    Component::CurDir => {}
                    _ => bail!("the kit holds a path outside its directory: {path:?}"),
                }
            }
            let Some((first, rest)) = parts.split_first() else {
                continue;
            };
            match &top {
                None => top = Some(first.clone()),
                Some(t) if t != first => {
                    bail!("the kit holds more than one top directory ({t}, {first})")
                }
                Some(_) => {}
            }
            match entry.header().entry_type() {
                tar::EntryType::Directory => continue,
                tar::EntryType::Regular => {}
                other => bail!("the kit holds {path:?}, which is not a plain file ({other:?})"),
            }
            let mut hasher = Sha256::new();
            let mut kept = Vec::new();
            let name = rest.join("/");
            let mut buf = vec![0; 1 << 16];
            loop {
                let n = entry.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                if name == SUMS {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
            let hex: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if files.insert(name.clone(), (hex, kept)).is_some() {
                bail!("the kit holds {name} twice");
            }
        }
        Ok(())
    })();
    // Closing the pipe first: a zstd blocked writing to it would never exit.
    drop(archive);
    if read.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    read.context("reading the kit's archive")?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        bail!("zstd could not decompress the kit: {}", err.trim());
    }
    let top = top.context("the kit is empty")?;
    Ok((top, files))
}
