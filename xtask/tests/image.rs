//! `cargo xtask image` as a user runs it: the release images of both binaries, twice from
//! the same commit, byte for byte the same; each taken apart with GNU tar, sha256sum and
//! readelf — a valid OCI layout naming its image, two valid layers holding the binary, the
//! libraries its ELF header asks for and the CA roots, nothing else, at the commit's time,
//! owned by root, labelled with version and revision; the webhook's built without the eBPF
//! object.

mod common;

use std::{collections::BTreeSet, fs, path::Path, process::Command};

use common::{commit, run, sha256, xtask, TempDir, VERSION};
use serde_json::Value;

/// `xtask image` output lines: binary, reference, manifest digest, archive.
fn built(stdout: &str) -> Vec<(String, String, String, String)> {
    stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 4, "{l}");
            (f[0].into(), f[1].into(), f[2].into(), f[3].into())
        })
        .collect()
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// One image, taken apart: (config, files of each layer as `tar --utc --full-time -tvz`
/// lists them, directory the layers were extracted to).
fn take_apart(
    archive: &Path,
    reference: &str,
    digest: &str,
    dir: &Path,
) -> (Value, Vec<Vec<String>>) {
    let layout = dir.join("layout");
    fs::create_dir_all(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&layout));
    assert_eq!(
        json(&layout.join("oci-layout")),
        serde_json::json!({"imageLayoutVersion": "1.0.0"})
    );
    let index = json(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    // Named by its full reference: `ctr images import` takes that name as it is.
    assert_eq!(
        manifests[0]["annotations"]["org.opencontainers.image.ref.name"],
        reference
    );
    assert_eq!(manifests[0]["digest"], digest);
    // Every blob is what its digest says.
    for entry in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(
            sha256(&path),
            path.file_name().unwrap().to_str().unwrap(),
            "{}",
            path.display()
        );
    }
    let manifest = json(&blob(&layout, digest));
    assert_eq!(manifest["schemaVersion"], 2);
    let config = json(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    let mut layers = Vec::new();
    for (i, layer) in manifest["layers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let file = blob(&layout, layer["digest"].as_str().unwrap());
        // GNU tar reads the whole layer without complaint: a complete archive.
        let listing = run(Command::new("tar")
            .args(["--utc", "--full-time", "-tvzf"])
            .arg(&file));
        run(Command::new("tar")
            .arg("-xzf")
            .arg(&file)
            .arg("-C")
            .arg(&rootfs));
        // The config's diff_id is the uncompressed layer's digest.
        let uncompressed = run(Command::new("sh")
            .arg("-c")
            .arg(format!("gzip -dc {} | sha256sum", file.display())));
        assert_eq!(
            config["rootfs"]["diff_ids"][i],
            format!("sha256:{}", uncompressed.split_whitespace().next().unwrap())
        );
        layers.push(listing.lines().map(str::to_owned).collect());
    }
    (config, layers)
}

/// `readelf` on a binary: its interpreter and the libraries it needs.
fn elf_needs(binary: &Path) -> (String, Vec<String>) {
    let headers = run(Command::new("readelf").arg("-lW").arg(binary));
    let interpreter = headers
        .lines()
        .find_map(|l| l.split_once("Requesting program interpreter: "))
        .map(|(_, rest)| rest.trim_end_matches(']').to_owned())
        .expect("a dynamic executable has an interpreter");
    let dynamic = run(Command::new("readelf").arg("-dW").arg(binary));
    let needed = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| {
            l.split_once("Shared library: [")
                .map(|(_, r)| r.trim_end_matches(']').to_owned())
        })
        .collect();
    (interpreter, needed)
}

#[test]
fn the_same_commit_gives_the_same_images_holding_only_what_each_binary_needs() {
    let (revision, created) = commit();
    let first = TempDir::new("zastava-images-a");
    let second = TempDir::new("zastava-images-b");
    let a = built(&run(xtask().arg("image").arg("--out").arg(first.path())));
    let b = built(&run(xtask().arg("image").arg("--out").arg(second.path())));
    assert_eq!(a.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (&x.0, &x.1, &x.2),
            (&y.0, &y.1, &y.2),
            "the same digest twice"
        );
        assert_eq!(
            fs::read(&x.3).unwrap(),
            fs::read(&y.3).unwrap(),
            "the same archive twice: {}",
            x.3
        );
    }
    let mut system_layers = BTreeSet::new();
    for (binary, reference, digest, archive) in &a {
        assert_eq!(
            reference,
            &format!("registry.stellaops.io/zastava/{binary}:{VERSION}")
        );
        assert_eq!(
            Path::new(archive).file_name().unwrap().to_str().unwrap(),
            format!("{binary}-{VERSION}.oci.tar")
        );
        let dir = TempDir::new("zastava-image-apart");
        let (config, layers) = take_apart(Path::new(archive), reference, digest, dir.path());
        let image = &config["config"];
        let user = if binary == "zastava-webhook" {
            "65532:65532"
        } else {
            "0:0"
        };
        assert_eq!(image["User"], user, "{config}");
        assert_eq!(
            image["Entrypoint"],
            serde_json::json!([format!("/usr/local/bin/{binary}")])
        );
        assert_eq!(config["created"], created.as_str());
        let labels = &image["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], VERSION);
        assert_eq!(
            labels["org.opencontainers.image.revision"],
            revision.as_str()
        );
        assert_eq!(labels["org.opencontainers.image.created"], created.as_str());
        assert_eq!(labels["org.opencontainers.image.title"], binary.as_str());
        let packages = labels["io.stellaops.zastava.debian-packages"]
            .as_str()
            .unwrap();
        for package in ["libc6=", "ca-certificates="] {
            assert!(packages.contains(package), "{packages}");
        }

        // Every entry root's, at the commit's time; the files are exactly the binary, the
        // libraries and loader its ELF header names, and the CA roots.
        let stamp = created.replace('T', " ").trim_end_matches('Z').to_owned();
        let mut files = Vec::new();
        for listing in &layers {
            for line in listing {
                let fields: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(fields[1], "0/0", "{line}");
                assert_eq!(format!("{} {}", fields[3], fields[4]), stamp, "{line}");
                if !line.starts_with('d') {
                    files.push(fields[5].to_owned());
                }
            }
        }
        let rootfs = dir.path().join("rootfs");
        let binary_path = rootfs.join("usr/local/bin").join(binary);
        let (interpreter, needed) = elf_needs(&binary_path);
        // No path of the machine that built it (the checkout, cargo's and rustup's homes):
        // the same commit gives the same binary from any checkout. The observer's embedded
        // eBPF object, whose BTF line info names its sources, included.
        let bytes = fs::read(&binary_path).unwrap();
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        for machine_path in [
            checkout.to_str().unwrap().to_owned(),
            format!("{home}/.cargo"),
            format!("{home}/.rustup"),
        ] {
            assert!(
                !bytes
                    .windows(machine_path.len())
                    .any(|w| w == machine_path.as_bytes()),
                "{binary} names {machine_path}"
            );
        }
        // The loader is also NEEDED (for its TLS functions): the interpreter is it.
        let loader = Path::new(&interpreter)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let mut expected: Vec<String> = needed
            .iter()
            .filter(|lib| lib.as_str() != loader)
            .map(|lib| format!("lib/x86_64-linux-gnu/{lib}"))
            .collect();
        expected.push(interpreter.trim_start_matches('/').to_owned());
        expected.push("etc/ssl/certs/ca-certificates.crt".into());
        expected.push(format!("usr/local/bin/{binary}"));
        expected.sort();
        files.sort();
        assert_eq!(files, expected);
        // The binary runs on what the image holds, with its own loader and libraries.
        let version = run(
            Command::new(rootfs.join(interpreter.trim_start_matches('/')))
                .arg("--inhibit-cache")
                .arg("--library-path")
                .arg(rootfs.join("lib/x86_64-linux-gnu"))
                .arg(&binary_path)
                .arg("--version"),
        );
        assert_eq!(version.trim(), format!("{binary} {VERSION}"));
        // Debian's CA roots, every one of its certificates.
        let bundle = fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        let shipped = run(Command::new("dpkg-query").args(["-L", "ca-certificates"]))
            .lines()
            .filter(|l| l.starts_with("/usr/share/ca-certificates/") && l.ends_with(".crt"))
            .count();
        assert_eq!(
            bundle.matches("-----BEGIN CERTIFICATE-----").count(),
            shipped
        );
        system_layers.insert(layers[0].clone());
    }
    // Both binaries need the same libraries: one shared layer, kept once by a registry.
    assert_eq!(system_layers.len(), 1);
}

#[test]
fn the_webhook_image_builds_without_the_ebpf_toolchain_and_is_the_same_alone() {
    let alone = TempDir::new("zastava-webhook-only");
    // The Rust toolchain and the system's tools, but no bpf-linker (in ~/.cargo/bin) and
    // no eBPF object: the webhook needs neither.
    let toolchain = Path::new(env!("CARGO")).parent().unwrap();
    assert!(
        !toolchain.join("bpf-linker").exists(),
        "{}",
        toolchain.display()
    );
    let only = built(&run(xtask()
        .args(["image", "--only", "webhook", "--out"])
        .arg(alone.path())
        .env("CARGO", env!("CARGO"))
        .env("PATH", format!("{}:/usr/bin:/bin", toolchain.display()))
        .env("ZASTAVA_EBPF_OBJECT", "/nonexistent/zastava-probes")));
    assert_eq!(only.len(), 1, "{only:?}");
    assert_eq!(only[0].0, "zastava-webhook");
    // The same image as when both are built.
    let both = TempDir::new("zastava-webhook-both");
    let all = built(&run(xtask().arg("image").arg("--out").arg(both.path())));
    let webhook = all.iter().find(|i| i.0 == "zastava-webhook").unwrap();
    assert_eq!(
        webhook.2, only[0].2,
        "the webhook's digest alone and with the observer"
    );

    // SOURCE_DATE_EPOCH, when set, is the image's time.
    let dated = TempDir::new("zastava-webhook-dated");
    let images = built(&run(xtask()
        .args(["image", "--only", "webhook", "--out"])
        .arg(dated.path())
        .env("SOURCE_DATE_EPOCH", "1700000000")));
    assert_ne!(images[0].2, only[0].2);
    let dir = TempDir::new("zastava-webhook-apart");
    let (config, layers) = take_apart(
        Path::new(&images[0].3),
        &images[0].1,
        &images[0].2,
        dir.path(),
    );
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.created"],
        "2023-11-14T22:13:20Z"
    );
    for listing in &layers {
        assert!(
            listing.iter().all(|l| l.contains("2023-11-14 22:13:20")),
            "{listing:?}"
        );
    }
    let top: BTreeSet<String> = fs::read_dir(dir.path().join("rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(top, ["etc", "lib", "lib64", "usr"].map(String::from).into());
}
