//! The files of an image: the binary (without its debug info), exactly the shared
//! libraries and loader `ldd` names for it, and the CA roots of Debian's ca-certificates —
//! each file's Debian package and version recorded.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{output, run_cmd};

/// Where the binary goes (on the image's PATH).
pub const BIN_DIR: &str = "usr/local/bin";
/// The CA bundle, where rustls-native-certs (and OpenSSL) look first.
pub const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// A staged root filesystem, in two layers: what the binary needs from the system (the
/// same for both images, so registries and runtimes keep it once), then the binary.
pub struct Rootfs {
    /// Paths in the image (without the leading `/`), in order.
    pub files: Vec<String>,
    /// Debian package → version, of every file that came from one.
    pub packages: BTreeMap<String, String>,
}

/// SPDX licences of the Debian packages an image may take files from.
pub fn package_license(package: &str) -> Option<&'static str> {
    Some(match package {
        "libc6" => "LGPL-2.1-or-later",
        "libgcc-s1" => "GPL-3.0-or-later WITH GCC-exception-3.1",
        "ca-certificates" => "MPL-2.0",
        _ => return None,
    })
}

/// Fills `system` with the libraries and CA roots `binary` needs and `own` with the
/// binary.
pub fn stage(binary: &Path, system: &Path, own: &Path) -> Result<Rootfs> {
    let mut rootfs = Rootfs {
        files: Vec::new(),
        packages: BTreeMap::new(),
    };
    let name = binary
        .file_name()
        .and_then(|n| n.to_str())
        .context("the binary has no name")?;
    let target = format!("{BIN_DIR}/{name}");
    create_parent(own, &target)?;
    // Debug info is for the build's own use; symbols stay for backtraces. The GNU
    // build-id stays too, so the stripped binary still matches its debug info.
    run_cmd(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary)
            .arg(own.join(&target)),
    )
    .context("objcopy (binutils) strips the binaries' debug info")?;
    fs::set_permissions(own.join(&target), fs::Permissions::from_mode(0o755))?;
    rootfs.files.push(target);

    for library in shared_libraries(binary)? {
        let inside = library
            .to_str()
            .and_then(|p| p.strip_prefix('/'))
            .with_context(|| format!("ldd named a library by a relative path: {library:?}"))?
            .to_owned();
        create_parent(system, &inside)?;
        // The file itself, not a link to it: the image has nothing to link to.
        fs::copy(&library, system.join(&inside))
            .with_context(|| format!("cannot copy {}", library.display()))?;
        fs::set_permissions(system.join(&inside), fs::Permissions::from_mode(0o755))?;
        let (package, version) = debian_package_of(&library)?;
        rootfs.packages.insert(package, version);
        rootfs.files.push(inside);
    }

    create_parent(system, CA_BUNDLE)?;
    let version = ca_bundle(&system.join(CA_BUNDLE))?;
    fs::set_permissions(system.join(CA_BUNDLE), fs::Permissions::from_mode(0o644))?;
    rootfs.packages.insert("ca-certificates".into(), version);
    rootfs.files.push(CA_BUNDLE.into());
    rootfs.files.sort();
    Ok(rootfs)
}

fn create_parent(dir: &Path, inside: &str) -> Result<()> {
    if let Some(parent) = dir.join(inside).parent() {
        fs::create_dir_all(parent)?;
    }
    Ok(())
}

/// The libraries and the loader `ldd` says `binary` loads (none for a static binary).
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_ldd(&text).with_context(|| format!("ldd {}", binary.display()))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` gives the path after `=>`; the
/// loader is the line that starts with a path; the vDSO has none and is the kernel's.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("{} is not installed on this machine", name.trim());
                }
                rest.split_whitespace().next().unwrap_or_default()
            }
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            found.push(PathBuf::from(path));
        } else if !line.starts_with("linux-vdso") && !line.starts_with("linux-gate") {
            bail!("cannot read this line of ldd's output: {line}");
        }
    }
    Ok(found)
}

/// The Debian package (and its version) that installed `path`.
fn debian_package_of(path: &Path) -> Result<(String, String)> {
    let mut candidates = vec![path.to_path_buf()];
    // With merged /usr, dpkg may know the file by its other name.
    if let Ok(real) = fs::canonicalize(path) {
        candidates.push(real.clone());
        if let Ok(rest) = real.strip_prefix("/usr") {
            candidates.push(Path::new("/").join(rest));
        }
    }
    for candidate in &candidates {
        let Ok(owners) = output(Command::new("dpkg-query").arg("-S").arg(candidate)) else {
            continue;
        };
        let Some(package) = owners
            .lines()
            .find_map(|l| l.split_once(": ").map(|(p, _)| p.trim().to_owned()))
        else {
            continue;
        };
        let version = output(Command::new("dpkg-query").args(["-W", "-f=${Version}", &package]))?;
        let name = package.split(':').next().unwrap_or(&package).to_owned();
        return Ok((name, version.trim().to_owned()));
    }
    bail!(
        "no Debian package owns {}; the images take their libraries from Debian's packages",
        path.display()
    )
}

/// Writes the CA bundle of Debian's ca-certificates to `out` — the package's own
/// certificates in name order, not /etc/ssl/certs, which local CAs and this machine's
/// choices change — and returns the package's version.
fn ca_bundle(out: &Path) -> Result<String> {
    let version =
        output(Command::new("dpkg-query").args(["-W", "-f=${Version}", "ca-certificates"]))
            .context(
                "the CA roots come from Debian's ca-certificates; install it (`cargo xtask setup`)",
            )?;
    let listing = output(Command::new("dpkg-query").args(["-L", "ca-certificates"]))?;
    let mut certificates: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with("/usr/share/ca-certificates/") && l.ends_with(".crt"))
        .collect();
    certificates.sort_unstable();
    if certificates.is_empty() {
        bail!("ca-certificates lists no certificates under /usr/share/ca-certificates");
    }
    let mut bundle = fs::File::create(out)?;
    for certificate in certificates {
        let mut pem =
            fs::read(certificate).with_context(|| format!("cannot read {certificate}"))?;
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        bundle.write_all(&pem)?;
    }
    Ok(version.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc8b1f2000)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0c1a000000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c19e00000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f0c1a1f0000)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn a_missing_library_is_named() {
        let err = parse_ldd("\tlibssl.so.3 => not found\n").unwrap_err();
        assert!(err.to_string().contains("libssl.so.3"), "{err}");
    }
}
