//! Image references and digests, as pod specs and runtimes name them.

use std::string::String;

/// Which digest an image reference carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestKind {
    /// The registry manifest digest (`repo@sha256:...`): what a registry and a scanner key on.
    Manifest,
    /// The image configuration digest (the local "image id"): not resolvable at a registry.
    Config,
    /// No digest is known.
    Unknown,
}

impl DigestKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            DigestKind::Manifest => "manifest",
            DigestKind::Config => "config",
            DigestKind::Unknown => "unknown",
        }
    }
}

/// A parsed image reference: `[registry/]repository[:tag][@algorithm:hex]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReference {
    /// Everything before the tag and digest (registry and path).
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl ImageReference {
    /// Parses a reference; `None` when it is not one (empty, or a malformed digest).
    pub fn parse(reference: &str) -> Option<ImageReference> {
        let reference = reference.trim();
        if reference.is_empty() || reference.contains(char::is_whitespace) {
            return None;
        }
        let (name, digest) = match reference.split_once('@') {
            Some((name, digest)) => {
                if !is_digest(digest) {
                    return None;
                }
                (name, Some(String::from(digest)))
            }
            None => (reference, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a registry port).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (
                &name[..last_slash + i],
                Some(String::from(&name[last_slash + i + 1..])),
            ),
            None => (name, None),
        };
        if repository.is_empty() || tag.as_deref() == Some("") {
            return None;
        }
        Some(ImageReference {
            repository: String::from(repository),
            tag,
            digest,
        })
    }

    /// Pinned by digest (`@sha256:...`), so the bytes that run cannot change under the name.
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some()
    }
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn is_digest(value: &str) -> bool {
    value.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}
