//! Which digest a container's image has, and of which kind, from what a runtime reports.
//! CRI runtimes and Docker Engine report the same three things (an image id, repo tags,
//! repo digests), so both go through [`image_info`] and the kinds mean the same everywhere
//! (see docs/identity.md).

use observer_common::identity::{is_digest, DigestKind, ImageReference};

use crate::record::ImageInfo;

/// What a runtime knows about an image.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImageFacts<'a> {
    /// The image (configuration) id, `sha256:...`.
    pub id: &'a str,
    pub repo_tags: &'a [String],
    /// `repo@sha256:<manifest>`, one per repository the image was pulled from.
    pub repo_digests: &'a [String],
}

/// Which digest an image has, and of which kind. `requested` is the reference the container
/// was created with; `image_ref` what the runtime says it runs: a manifest digest only in
/// the form `repo@sha256:...`, the image (config) id when it is a bare `sha256:...`. The
/// image's repo digests, when it has any, are manifest digests.
pub fn image_info(requested: &str, image_ref: &str, image: Option<ImageFacts<'_>>) -> ImageInfo {
    let reference = display_reference(requested, image);
    let manifest = |digest: &str| ImageInfo {
        reference: reference.clone(),
        digest: Some(digest.to_owned()),
        digest_kind: DigestKind::Manifest,
    };
    if let Some(r) = ImageReference::parse(image_ref).filter(ImageReference::is_pinned) {
        if let Some(digest) = r.digest.as_deref() {
            return manifest(digest);
        }
    }
    if let Some(pinned) = ImageReference::parse(requested).and_then(|r| r.digest) {
        return manifest(&pinned);
    }
    if let Some(image) = image {
        let wanted_repo = ImageReference::parse(requested).map(|r| r.repository);
        let digests: Vec<ImageReference> = image
            .repo_digests
            .iter()
            .filter_map(|d| ImageReference::parse(d))
            .filter(ImageReference::is_pinned)
            .collect();
        let best = digests
            .iter()
            .find(|d| Some(&d.repository) == wanted_repo.as_ref())
            .or_else(|| digests.first());
        if let Some(digest) = best.and_then(|d| d.digest.as_deref()) {
            return manifest(digest);
        }
    }
    let config = [image_ref, image.map_or("", |i| i.id)]
        .into_iter()
        .find(|d| is_digest(d));
    ImageInfo {
        digest: config.map(str::to_owned),
        digest_kind: if config.is_some() {
            DigestKind::Config
        } else {
            DigestKind::Unknown
        },
        reference,
    }
}

/// The image as a person would name it: the requested reference unless that is a bare id,
/// in which case a tag the runtime knows it by.
fn display_reference(requested: &str, image: Option<ImageFacts<'_>>) -> String {
    if is_digest(requested) {
        if let Some(tag) = image.and_then(|i| i.repo_tags.first()) {
            return tag.clone();
        }
    }
    requested.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn digests_by_kind() {
        let m = digest('a');
        let c = digest('c');
        let tags = vec!["registry/app:1".to_owned()];
        let repo_digests = vec![
            format!("other/app@{}", digest('b')),
            format!("registry/app@{m}"),
        ];
        let image = ImageFacts {
            id: &c,
            repo_tags: &tags,
            repo_digests: &repo_digests,
        };
        // The runtime's image_ref is the config id; the repo digest matching the requested
        // repository wins.
        let info = image_info("registry/app:1", &c, Some(image));
        assert_eq!(
            (info.digest.as_deref(), info.digest_kind),
            (Some(m.as_str()), DigestKind::Manifest)
        );
        assert_eq!(info.reference, "registry/app:1");
        // Another repository's digest only when none matches.
        let info = image_info("elsewhere/app:1", &c, Some(image));
        assert_eq!(info.digest, Some(digest('b')));
        // A digested image_ref is a manifest digest by itself.
        let info = image_info("registry/app:1", &format!("registry/app@{m}"), None);
        assert_eq!(info.digest_kind, DigestKind::Manifest);
        // No repo digests: the config id, labelled as such.
        let bare = ImageFacts {
            repo_digests: &[],
            ..image
        };
        let info = image_info("registry/app:1", &c, Some(bare));
        assert_eq!(
            (info.digest.as_deref(), info.digest_kind),
            (Some(c.as_str()), DigestKind::Config)
        );
        assert!(!info.has_usable_digest());
        // Asked by id: shown by tag.
        assert_eq!(image_info(&c, &c, Some(bare)).reference, "registry/app:1");
        // Nothing at all.
        let info = image_info("app:1", "", None);
        assert_eq!((info.digest, info.digest_kind), (None, DigestKind::Unknown));
        // Pinned in the spec: that digest.
        let info = image_info(&format!("app@{m}"), "", None);
        assert_eq!(info.digest_kind, DigestKind::Manifest);
        // A malformed id is no digest.
        let info = image_info("app:1", "sha256:xyz", None);
        assert_eq!(info.digest_kind, DigestKind::Unknown);
    }
}
