//! The test images: one OCI image layout tarball with three images sharing one layer of
//! the static busybox.

use std::{collections::BTreeMap, fs, io::Write as _, path::Path};

use sha2::{Digest as _, Sha256};

use super::{Images, BUSYBOX, PAUSE, UNDIGESTED};

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes an OCI image layout tarball with three images sharing one busybox layer.
pub(super) fn build_images(out: &Path) -> Images {
    let busybox = fs::read("/bin/busybox").expect("busybox-static provides /bin/busybox");
    let mut layer = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    layer
        .append_data(&mut dir, "bin", std::io::empty())
        .unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o755);
    file.set_size(busybox.len() as u64);
    layer
        .append_data(&mut file, "bin/busybox", busybox.as_slice())
        .unwrap();
    for applet in ["sh", "sleep", "cat", "true", "echo", "nc", "ls"] {
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_mode(0o777);
        link.set_size(0);
        layer
            .append_link(&mut link, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let raw = layer.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    let gz = gz.finish().unwrap();

    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut add = |bytes: Vec<u8>| -> (String, usize) {
        let digest = format!("sha256:{}", sha256_hex(&bytes));
        let size = bytes.len();
        blobs.insert(digest.clone(), bytes);
        (digest, size)
    };
    let (layer_digest, layer_size) = add(gz);
    let diff_id = format!("sha256:{}", sha256_hex(&raw));
    let mut image = |config: serde_json::Value| -> (String, usize, String) {
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        });
        let (config_digest, config_size) = add(serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size}],
        });
        let (manifest_digest, manifest_size) = add(serde_json::to_vec(&manifest).unwrap());
        (manifest_digest, manifest_size, config_digest)
    };
    // The configs differ, so the images get different ids.
    let (busybox_manifest, busybox_size, busybox_config) = image(
        serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "Labels": {"image": "busybox"}}),
    );
    let (pause_manifest, pause_size, _) = image(
        serde_json::json!({"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sleep", "infinity"], "Labels": {"image": "pause"}}),
    );
    let (undigested_manifest, undigested_size, undigested_config) = image(
        serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "Labels": {"image": "undigested"}}),
    );
    let entry = |digest: &str, size: usize, name: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size,
            "annotations": {"io.containerd.image.name": name},
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [
            entry(&busybox_manifest, busybox_size, BUSYBOX),
            // Known under its digested name too, as a pulled image is: the runtime then
            // reports the manifest digest.
            entry(&busybox_manifest, busybox_size, &format!("zastava.test/busybox@{busybox_manifest}")),
            entry(&pause_manifest, pause_size, PAUSE),
            entry(&undigested_manifest, undigested_size, UNDIGESTED),
        ],
    });

    let mut archive = tar::Builder::new(fs::File::create(out).unwrap());
    let mut put = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        archive.append_data(&mut header, name, data).unwrap();
    };
    put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    put("index.json", &serde_json::to_vec(&index).unwrap());
    for (digest, bytes) in &blobs {
        put(
            &format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")),
            bytes,
        );
    }
    archive.finish().unwrap();
    Images {
        busybox_manifest,
        busybox_config,
        undigested_config,
    }
}
