//! Paths as bytes: joining a relative path to the directory the kernel resolved it from,
//! and the normalisation that is exact without looking at the file system. A path is whatever bytes the kernel and the process used;
//! nothing here decodes it as text.

use std::borrow::Cow;

/// `AT_FDCWD`: resolve relative to the working directory.
pub const AT_FDCWD: i32 = -100;

/// `base` (absolute) joined with `relative`, normalised.
pub fn join(base: &[u8], relative: &[u8]) -> Vec<u8> {
    let mut joined = Vec::with_capacity(base.len() + 1 + relative.len());
    joined.extend_from_slice(base);
    joined.push(b'/');
    joined.extend_from_slice(relative);
    normalize(&joined).into_owned()
}

/// Removes `.` components, empty components, a trailing `/` and a `..` at the root: the
/// rewrites that name the same file whatever the file system holds. Any other `..` stays:
/// `a/link/..` is not `a` when `link` is a symlink, and this is applied only where the kernel
/// did not resolve the path itself (a file that could not be opened), so nothing may be
/// guessed.
pub fn normalize(path: &[u8]) -> Cow<'_, [u8]> {
    let clean = path.starts_with(b"/")
        && !contains(path, b"//")
        && !contains(path, b"/./")
        && !path.starts_with(b"/../")
        && !path.ends_with(b"/.")
        && path != b"/.."
        && (path.len() == 1 || !path.ends_with(b"/"));
    if clean {
        return Cow::Borrowed(path);
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if parts.is_empty() => {}
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Cow::Borrowed(b"/");
    }
    let mut out = Vec::with_capacity(path.len());
    for part in parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    Cow::Owned(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_lexically() {
        assert_eq!(&*normalize(b"/etc/passwd"), b"/etc/passwd");
        assert!(matches!(normalize(b"/etc/passwd"), Cow::Borrowed(_)));
        assert_eq!(&*normalize(b"/a/./b//c/../d"), b"/a/b/c/../d");
        assert_eq!(&*normalize(b"/../.."), b"/");
        assert_eq!(&*normalize(b"/../../etc"), b"/etc");
        assert_eq!(&*normalize(b"/tmp/x/"), b"/tmp/x");
        assert_eq!(&*normalize(b"/"), b"/");
        // The parent of a symlink is not the directory holding it: `..` is kept.
        assert_eq!(&*normalize(b"/a/b/.."), b"/a/b/..");
        assert!(matches!(normalize(b"/a/b/../c"), Cow::Borrowed(_)));
        // Bytes that are not UTF-8 pass through untouched.
        assert_eq!(&*normalize(b"/d/./bad-\xff"), b"/d/bad-\xff");
    }

    #[test]
    fn joins_relative_paths_to_their_base() {
        assert_eq!(join(b"/srv/app", b"data/./f2"), b"/srv/app/data/f2");
        assert_eq!(join(b"/srv/app", b"../etc/hosts"), b"/srv/app/../etc/hosts");
        assert_eq!(join(b"/", b"sub dir/x"), b"/sub dir/x");
        assert_eq!(join(b"/", b"../etc"), b"/etc");
        assert_eq!(join(b"/", b".."), b"/");
    }
}
