//! `cargo xtask offline-kit` as a release would run it, with a signing key made here: the
//! kit verified as an operator on an air-gapped machine would (openssl, GNU tar, sha256sum —
//! the commands docs/deployment.md gives), rebuilt byte for byte, and refused by
//! `offline-kit verify` when the archive, its signature, its key or its contents change.

mod common;

use std::{fs, path::Path, process::Command};

use common::{attempt, run, sha256, xtask, TempDir, VERSION};

fn openssl_key(path: &Path) {
    run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(path));
}

fn kit_name() -> String {
    format!("zastava-runtime-{VERSION}.tar.zst")
}

/// Builds the kit into `out` with `key`.
fn build_kit(key: &Path, out: &Path) {
    run(xtask()
        .args(["offline-kit", "--key"])
        .arg(key)
        .arg("--out")
        .arg(out));
}

/// The signature check of docs/deployment.md, with openssl only.
fn openssl_verifies(kit: &Path, signature: &Path, public_key: &Path, scratch: &Path) -> bool {
    let der = scratch.join("kit.sig.der");
    run(Command::new("openssl")
        .args(["base64", "-d", "-A", "-in"])
        .arg(signature)
        .arg("-out")
        .arg(&der));
    let out = attempt(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(public_key)
            .arg("-signature")
            .arg(&der)
            .arg(kit),
    );
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        out.status.success(),
        said == "Verified OK",
        "openssl said {said:?}"
    );
    out.status.success()
}

fn verify(kit: &Path, key: &Path) -> std::process::Output {
    attempt(
        xtask()
            .args(["offline-kit", "verify"])
            .arg(kit)
            .arg("--key")
            .arg(key),
    )
}

#[test]
fn the_kit_verifies_with_openssl_and_sha256sum_and_is_the_same_when_rebuilt() {
    let dir = TempDir::new("zastava-kit");
    let key = dir.path().join("signing.key");
    openssl_key(&key);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    build_kit(&key, &a);
    build_kit(&key, &b);
    let kit = a.join(kit_name());
    let signature = a.join(format!("{}.sig", kit_name()));
    let public = a.join("cosign.pub");
    for file in [
        kit_name(),
        format!("{}.sig", kit_name()),
        "cosign.pub".into(),
    ] {
        assert_eq!(
            fs::read(a.join(&file)).unwrap(),
            fs::read(b.join(&file)).unwrap(),
            "{file} differs when rebuilt"
        );
    }
    // The public key is the signing key's, as openssl derives it.
    let derived = run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key));
    assert_eq!(fs::read_to_string(&public).unwrap(), derived);
    // cosign's blob format: one line of base64 of an ASN.1 DER ECDSA signature.
    let text = fs::read_to_string(&signature).unwrap();
    assert!(!text.contains('\n'), "{text:?}");
    assert!(openssl_verifies(&kit, &signature, &public, dir.path()));
    let asn1 = run(Command::new("openssl")
        .args(["asn1parse", "-inform", "DER", "-in"])
        .arg(dir.path().join("kit.sig.der")));
    assert_eq!(asn1.matches("INTEGER").count(), 2, "{asn1}");
    assert!(asn1.contains("SEQUENCE"), "{asn1}");

    // Unpacked as the runbook says; every file's checksum holds and every file is listed.
    let unpacked = dir.path().join("unpacked");
    fs::create_dir_all(&unpacked).unwrap();
    run(Command::new("tar")
        .arg("--zstd")
        .arg("-xf")
        .arg(&kit)
        .arg("-C")
        .arg(&unpacked));
    let top = unpacked.join(format!("zastava-runtime-{VERSION}"));
    let checked = run(Command::new("sha256sum")
        .args(["--strict", "-c", "SHA256SUMS"])
        .current_dir(&top));
    let listed: Vec<&str> = checked
        .lines()
        .filter_map(|l| l.strip_suffix(": OK"))
        .collect();
    assert_eq!(listed.len(), checked.lines().count(), "{checked}");
    let mut on_disk = Vec::new();
    for entry in walk(&top) {
        let rel = entry
            .strip_prefix(&top)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        if rel != "SHA256SUMS" {
            on_disk.push(rel);
        }
    }
    on_disk.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        on_disk.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for needed in [
        format!("images/zastava-observer-{VERSION}.oci.tar"),
        format!("images/zastava-webhook-{VERSION}.oci.tar"),
        "bin/zastava-observer".into(),
        "deploy/kubernetes/base/kustomization.yaml".into(),
        "deploy/kubernetes/overlays/complete/kustomization.yaml".into(),
        "deploy/kubernetes/components/capture/kustomization.yaml".into(),
        "deploy/systemd/zastava-observer.service".into(),
        "deploy/systemd/observer.toml".into(),
        "deploy/compose/docker-compose.yaml".into(),
        "deploy/prometheus/zastava-rules.yaml".into(),
        "deploy/grafana/zastava.json".into(),
        "docs/operations.md".into(),
        "docs/deployment.md".into(),
        "IMAGES".into(),
    ] {
        assert!(
            listed.contains(&needed.as_str()),
            "the kit lacks {needed}:\n{checked}"
        );
    }
    // The images are those `xtask image` writes, and the manifests in the kit run them.
    let images = fs::read_to_string(top.join("IMAGES")).unwrap();
    let rendered = run(Command::new("kubectl")
        .arg("kustomize")
        .arg(top.join("deploy/kubernetes/overlays/complete")));
    for line in images.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "{line}");
        let (reference, digest, archive) = (fields[0], fields[1], fields[2]);
        assert!(
            rendered.contains(&format!("image: {reference}")),
            "{reference} is not deployed"
        );
        let index = run(Command::new("tar")
            .arg("-xOf")
            .arg(top.join(archive))
            .arg("index.json"));
        assert!(
            index.contains(digest) && index.contains(reference),
            "{index}"
        );
    }
    assert_eq!(images.lines().count(), 2, "{images}");
    let version = run(Command::new(top.join("bin/zastava-observer")).arg("--version"));
    assert_eq!(version.trim(), format!("zastava-observer {VERSION}"));

    // And our own check agrees.
    let out = verify(&kit, &public);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{} files match", listed.len())),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_changed_kit_signature_or_key_is_refused_and_says_which() {
    let dir = TempDir::new("zastava-kit-tamper");
    let key = dir.path().join("signing.key");
    openssl_key(&key);
    let out = dir.path().join("kit");
    build_kit(&key, &out);
    let kit = out.join(kit_name());
    let public = out.join("cosign.pub");

    // One byte of the archive changed.
    let flipped = dir.path().join(kit_name());
    let mut bytes = fs::read(&kit).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&flipped, &bytes).unwrap();
    fs::copy(
        out.join(format!("{}.sig", kit_name())),
        dir.path().join(format!("{}.sig", kit_name())),
    )
    .unwrap();
    let refused = verify(&flipped, &public);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr_of(&refused).contains("the signature does not match"),
        "{}",
        stderr_of(&refused)
    );
    assert!(!openssl_verifies(
        &flipped,
        &dir.path().join(format!("{}.sig", kit_name())),
        &public,
        dir.path()
    ));

    // Another key.
    let other = dir.path().join("other.key");
    openssl_key(&other);
    let other_public = dir.path().join("other.pub");
    fs::write(
        &other_public,
        run(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&other)),
    )
    .unwrap();
    let refused = verify(&kit, &other_public);
    assert!(
        stderr_of(&refused).contains("signed with another key"),
        "{}",
        stderr_of(&refused)
    );

    // Not a signature at all.
    let garbage = dir.path().join("garbage.sig");
    fs::write(&garbage, "not base64!").unwrap();
    let refused = attempt(
        xtask()
            .args(["offline-kit", "verify"])
            .arg(&kit)
            .arg("--signature")
            .arg(&garbage)
            .arg("--key")
            .arg(&public),
    );
    assert!(
        stderr_of(&refused).contains("not base64"),
        "{}",
        stderr_of(&refused)
    );

    // A repacked kit with one file changed and one added, signed properly (by openssl, in
    // cosign's format): the signature is good, the contents are not.
    let unpacked = dir.path().join("unpacked");
    fs::create_dir_all(&unpacked).unwrap();
    run(Command::new("tar")
        .arg("--zstd")
        .arg("-xf")
        .arg(&kit)
        .arg("-C")
        .arg(&unpacked));
    let top = format!("zastava-runtime-{VERSION}");
    let rules = unpacked
        .join(&top)
        .join("deploy/prometheus/zastava-rules.yaml");
    let mut text = fs::read_to_string(&rules).unwrap();
    text.push_str("# changed\n");
    fs::write(&rules, text).unwrap();
    fs::write(unpacked.join(&top).join("extra.sh"), "#!/bin/sh\n").unwrap();
    let repacked = dir.path().join("repacked.tar.zst");
    run(Command::new("tar")
        .arg("--zstd")
        .arg("-cf")
        .arg(&repacked)
        .arg("-C")
        .arg(&unpacked)
        .arg(&top));
    let signature = dir.path().join("repacked.tar.zst.sig");
    let signed = run(Command::new("sh").arg("-c").arg(format!(
        "openssl dgst -sha256 -sign {} {} | openssl base64 -A",
        key.display(),
        repacked.display()
    )));
    fs::write(&signature, signed.trim()).unwrap();
    let refused = verify(&repacked, &public);
    let said = stderr_of(&refused);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(
        said.contains("signed but its contents do not match"),
        "{said}"
    );
    assert!(
        said.contains("deploy/prometheus/zastava-rules.yaml does not match its checksum"),
        "{said}"
    );
    assert!(
        said.contains("extra.sh is in the kit but not in SHA256SUMS"),
        "{said}"
    );
    assert_ne!(sha256(&repacked), sha256(&kit));
}

#[test]
fn a_kit_is_not_built_unsigned_and_the_error_says_how_to_make_a_key() {
    let out = attempt(xtask().arg("offline-kit"));
    assert_eq!(out.status.code(), Some(1));
    let said = stderr_of(&out);
    assert!(
        said.contains("the kit must be signed") && said.contains("openssl genpkey -algorithm EC"),
        "{said}"
    );
    let dir = TempDir::new("zastava-kit-badkey");
    let bad = dir.path().join("rsa.key");
    run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-out"])
        .arg(&bad));
    let out = attempt(xtask().args(["offline-kit", "--key"]).arg(&bad));
    let said = stderr_of(&out);
    assert!(said.contains("is not an ECDSA P-256 private key"), "{said}");
}
