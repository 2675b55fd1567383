//! Docker Engine API JSON: container lists, inspections, image inspections and events,
//! the API version and event times, decoded as the watcher does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zastava::workload::{
    docker::{
        parse_api_version, parse_time_ns, ContainerInspect, ContainerSummary, Event, ImageInspect,
    },
    image::{image_info, ImageFacts},
};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Vec<ContainerSummary>>(data);
    let _ = serde_json::from_slice::<Event>(data);
    let inspect = serde_json::from_slice::<ContainerInspect>(data);
    let image = serde_json::from_slice::<ImageInspect>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_api_version(text);
        let _ = parse_time_ns(text);
    }
    if let (Ok(inspect), Ok(image)) = (inspect, image) {
        let facts = ImageFacts {
            id: &image.id,
            repo_tags: image.repo_tags.as_deref().unwrap_or_default(),
            repo_digests: image.repo_digests.as_deref().unwrap_or_default(),
        };
        let info = image_info(&inspect.config.image, &inspect.image, Some(facts));
        if let Some(digest) = &info.digest {
            assert!(
                digest.starts_with("sha256:") && digest.len() == 71,
                "{digest:?}"
            );
        }
    }
});
