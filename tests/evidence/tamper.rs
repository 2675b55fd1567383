//! Signatures and verification: openssl checks the signature over the DSSE PAE bytes, and
//! verify fails, naming the file, on any one changed byte, two swapped lines or a wrong key.

use std::path::{Path, PathBuf};

use base64::{engine::general_purpose::STANDARD, Engine as _};

use super::*;

/// A signed bundle of the fixture and its archive: (bundle, public key).
fn signed(tmp: &Path) -> (PathBuf, PathBuf) {
    fixture(tmp);
    let (key, public) = openssl_key(tmp, "signer", true);
    let et = tmp.join("entrytrace.ndjson");
    let dir = export(
        &tmp.join("out"),
        &[&tmp.join("logs")],
        &[
            "--entrytrace",
            et.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--archive",
        ],
    );
    (PathBuf::from(dir), public)
}

fn verify(target: &Path, public: &Path) -> common::evidence::Run {
    evidence(&[
        "verify",
        target.to_str().unwrap(),
        "--key",
        public.to_str().unwrap(),
    ])
}

fn key_id(public: &Path) -> String {
    let der = tool(
        "openssl",
        &[
            "pkey",
            "-pubin",
            "-in",
            public.to_str().unwrap(),
            "-outform",
            "DER",
        ],
    );
    use sha2::Digest as _;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn openssl_verifies_the_signature_over_the_dsse_pae_bytes() {
    let tmp = TempDir::new("evidence-openssl");
    let (bundle, public) = signed(tmp.path());
    let envelope = json_file(&bundle.join("manifest.dsse.json"));
    assert_eq!(envelope["payloadType"], "application/vnd.in-toto+json");
    let payload = STANDARD
        .decode(envelope["payload"].as_str().unwrap())
        .unwrap();
    let payload_type = envelope["payloadType"].as_str().unwrap();
    // DSSE v1 PAE, spelled out here rather than taken from the product.
    let mut pae = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    pae.extend_from_slice(&payload);
    std::fs::write(tmp.path().join("pae.bin"), &pae).unwrap();
    let signature = &envelope["signatures"][0];
    std::fs::write(
        tmp.path().join("sig.der"),
        STANDARD.decode(signature["sig"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let out = tool(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            public.to_str().unwrap(),
            "-signature",
            tmp.path().join("sig.der").to_str().unwrap(),
            tmp.path().join("pae.bin").to_str().unwrap(),
        ],
    );
    assert_eq!(String::from_utf8(out).unwrap(), "Verified OK\n");
    assert_eq!(signature["keyid"], key_id(&public));

    // The statement names every file of the bundle with the sha256 sha256sum gives.
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(
        statement["predicateType"],
        "urn:stellaops:zastava:runtime-evidence:v1"
    );
    assert_eq!(
        statement["predicate"]["runId"],
        bundle.file_name().unwrap().to_str().unwrap()
    );
    let subjects: Vec<(String, String)> = statement["subject"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["digest"]["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let names = [
        "manifest.json",
        "runtime.coalesced.ndjson",
        "scanner.entrytrace.ndjson",
        "zastava.runtime.ndjson",
    ];
    assert_eq!(
        subjects.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        names
    );
    for (name, sha) in &subjects {
        let sum = tool("sha256sum", &[bundle.join(name).to_str().unwrap()]);
        assert_eq!(&String::from_utf8(sum).unwrap()[..64], sha, "{name}");
    }

    // Signing again with the same key gives the same bytes (RFC 6979 nonces).
    let before = std::fs::read(bundle.join("manifest.dsse.json")).unwrap();
    evidence(&[
        "sign",
        bundle.to_str().unwrap(),
        "--key",
        tmp.path().join("signer.pem").to_str().unwrap(),
    ])
    .ok();
    assert!(before == std::fs::read(bundle.join("manifest.dsse.json")).unwrap());

    // `sign --archive` writes the archive again: the same bytes as export's, and it verifies.
    let archive = bundle.with_extension("tar.zst");
    let exported = std::fs::read(&archive).unwrap();
    std::fs::remove_file(&archive).unwrap();
    let run = evidence(&[
        "sign",
        bundle.to_str().unwrap(),
        "--key",
        tmp.path().join("signer.pem").to_str().unwrap(),
        "--archive",
    ]);
    run.ok();
    assert!(
        run.stderr
            .contains(&format!("archived: {}", archive.display())),
        "{}",
        run.stderr
    );
    assert!(exported == std::fs::read(&archive).unwrap());
    assert!(verify(&archive, &public).ok().starts_with("verified: "));
}

#[test]
fn verify_names_the_file_after_one_byte_changes_anywhere() {
    let tmp = TempDir::new("evidence-flip");
    let (bundle, public) = signed(tmp.path());
    let ok = verify(&bundle, &public);
    let keyid = key_id(&public);
    assert!(
        ok.ok()
            .contains(&format!("signature by keyid {keyid} verified")),
        "{}",
        ok.stdout
    );
    for name in [
        "manifest.json",
        "manifest.dsse.json",
        "runtime.coalesced.ndjson",
        "scanner.entrytrace.ndjson",
        "zastava.runtime.ndjson",
    ] {
        let path = bundle.join(name);
        let original = std::fs::read(&path).unwrap();
        let n = original.len();
        for at in [0, n / 3, n / 2, n - 2, n - 1] {
            let mut changed = original.clone();
            changed[at] ^= 0x01;
            std::fs::write(&path, &changed).unwrap();
            let run = verify(&bundle, &public);
            assert_eq!(run.code, 1, "{name} byte {at}:\n{}", run.stdout);
            assert!(
                run.stdout
                    .lines()
                    .any(|l| l.starts_with(&format!("problem: {name}"))),
                "{name} byte {at} changed, but no problem names it:\n{}",
                run.stdout
            );
            assert!(run.stdout.contains("FAILED: "), "{}", run.stdout);
        }
        std::fs::write(&path, &original).unwrap();
    }
    verify(&bundle, &public).ok();

    // A bundle that does not check out is not signed.
    let stream = bundle.join("zastava.runtime.ndjson");
    let original = std::fs::read(&stream).unwrap();
    let mut changed = original.clone();
    changed[10] ^= 0x01;
    std::fs::write(&stream, &changed).unwrap();
    let key = tmp.path().join("signer.pem");
    let run = evidence(&[
        "sign",
        bundle.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("not signed: the bundle has problems"),
        "{}",
        run.stderr
    );
    std::fs::write(&stream, &original).unwrap();
}

fn swap_lines(path: &Path, a: usize, b: usize) -> String {
    let original = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<&str> = original.lines().collect();
    lines.swap(a - 1, b - 1);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    original
}

#[test]
fn verify_names_the_line_after_two_lines_swap_and_refuses_another_key() {
    let tmp = TempDir::new("evidence-swap");
    let (bundle, public) = signed(tmp.path());
    let stream = bundle.join("zastava.runtime.ndjson");
    let original = swap_lines(&stream, 10, 11);
    let run = verify(&bundle, &public);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("problem: zastava.runtime.ndjson:11: out of order: records sort by (workloadId, timestamp, edgeType or eventType, canonical bytes)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("problem: zastava.runtime.ndjson: streams.runtime.sha256 is "),
        "{}",
        run.stdout
    );
    std::fs::write(&stream, original).unwrap();

    let coalesced = bundle.join("runtime.coalesced.ndjson");
    let fifth = lines(&coalesced)[4].clone();
    let original = swap_lines(&coalesced, 5, 6);
    let run = verify(&bundle, &public);
    assert_eq!(run.code, 1);
    let file = if fifth["source"] == "runtime" {
        "zastava.runtime.ndjson"
    } else {
        "scanner.entrytrace.ndjson"
    };
    let expected = format!(
        "problem: runtime.coalesced.ndjson:5: differs; the stable merge of the streams puts here the {} record of {file} line {}",
        fifth["source"].as_str().unwrap(),
        fifth["line"]
    );
    assert!(
        run.stdout.contains(&expected),
        "{expected} not in:\n{}",
        run.stdout
    );
    std::fs::write(&coalesced, original).unwrap();

    let (_, other) = openssl_key(tmp.path(), "other", false);
    let run = verify(&bundle, &other);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stdout.lines().next().unwrap(),
        format!(
            "problem: manifest.dsse.json: no signature by the given key (keyid {}); signed by {}",
            key_id(&other),
            key_id(&public)
        )
    );
}

#[test]
fn an_archive_copied_elsewhere_verifies_and_fails_when_changed() {
    let tmp = TempDir::new("evidence-archive");
    let (bundle, public) = signed(tmp.path());
    let run_id = bundle.file_name().unwrap().to_str().unwrap().to_owned();
    let archive = bundle.with_extension("tar.zst");
    let elsewhere = TempDir::new("evidence-elsewhere");
    let copy = elsewhere.path().join(format!("{run_id}.tar.zst"));
    std::fs::copy(&archive, &copy).unwrap();
    let run = verify(&copy, &public);
    assert!(
        run.ok()
            .starts_with(&format!("verified: {}: run {run_id}", copy.display())),
        "{}",
        run.stdout
    );
    // Unpacked by the system's tar, the directory verifies too.
    tool(
        "sh",
        &[
            "-c",
            &format!(
                "cd {} && zstd -dc {} | tar -xf -",
                elsewhere.path().display(),
                copy.display()
            ),
        ],
    );
    verify(&elsewhere.path().join(&run_id), &public).ok();

    let original = std::fs::read(&copy).unwrap();
    for at in [0, original.len() / 2, original.len() - 1] {
        let mut changed = original.clone();
        changed[at] ^= 0x01;
        std::fs::write(&copy, &changed).unwrap();
        let run = verify(&copy, &public);
        assert_eq!(run.code, 1, "byte {at}: {}", run.stdout);
        assert!(
            run.stdout.contains(&format!("problem: {run_id}.tar.zst: ")),
            "byte {at}: {}",
            run.stdout
        );
    }
}
