//! CRI replies: protobuf messages from the runtime (the input split at NUL bytes into a
//! ContainerStatus, PodSandboxStatus and ImageStatus reply), decoded and turned into the
//! container's image description as the watcher does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use zastava::workload::{
    cri::proto,
    image::{image_info, ImageFacts},
};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0xFF);
    let container = proto::ContainerStatusResponse::decode(parts.next().unwrap_or_default());
    let sandbox = proto::PodSandboxStatusResponse::decode(parts.next().unwrap_or_default());
    let image = proto::ImageStatusResponse::decode(parts.next().unwrap_or_default());
    if let Ok(sandbox) = &sandbox {
        let _ = format!("{sandbox:?}");
    }
    let Ok(container) = container else { return };
    let status = container.status.unwrap_or_default();
    if let Some(info) = container.info.get("info") {
        let _ = serde_json::from_str::<serde_json::Value>(info);
    }
    let requested = status
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    let image = image.ok().and_then(|i| i.image);
    let facts = image.as_ref().map(|i| ImageFacts {
        id: &i.id,
        repo_tags: &i.repo_tags,
        repo_digests: &i.repo_digests,
    });
    let info = image_info(&requested, &status.image_ref, facts);
    if let Some(digest) = &info.digest {
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "not a digest: {digest:?} from {requested:?} / {:?}",
            status.image_ref
        );
    }
});
