//! `evidence debug-path`: where the debug file of a GNU build-id lives in a debug tree
//! laid out as GDB and debuginfod expect, `<root>/.build-id/<first two hex digits>/<the
//! rest>.debug`.

use std::path::{Path, PathBuf};

/// The default debug tree.
pub const DEFAULT_ROOT: &str = "/var/opt/debug";

/// The debug file's path for `build_id` (hex, as records' `code_id` carry it).
pub fn debug_path(build_id: &str, root: &Path) -> Result<PathBuf, String> {
    let id = build_id.trim().to_ascii_lowercase();
    if id.len() < 4 || !id.len().is_multiple_of(2) || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{build_id:?} is not a GNU build-id: an even number (at least 4) of hex digits, \
             as in a record's code_id"
        ));
    }
    Ok(root
        .join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..])))
}

/// Whether the debug file is there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presence {
    Found,
    Missing,
    /// A symbolic link whose target is not there.
    Dangling(PathBuf),
    NotAFile,
}

pub fn presence(path: &Path) -> Presence {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Presence::Found,
        Ok(_) => Presence::NotAFile,
        Err(_) => match std::fs::read_link(path) {
            Ok(target) => Presence::Dangling(target),
            Err(_) => Presence::Missing,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_splits_the_first_byte_off() {
        assert_eq!(
            debug_path("4E3F9c1a2b", Path::new("/var/opt/debug")).unwrap(),
            Path::new("/var/opt/debug/.build-id/4e/3f9c1a2b.debug")
        );
        for bad in ["", "abc", "4e3", "zz3f", "4e3f/../x"] {
            let err = debug_path(bad, Path::new("/d")).unwrap_err();
            assert!(err.contains("is not a GNU build-id"), "{bad}: {err}");
        }
    }
}
