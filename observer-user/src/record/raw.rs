//! Strings as the kernel and processes give them: bytes, kept exactly. A file name, an
//! argument or a socket name need not be UTF-8, and two different byte strings are two
//! different things. Records write them as text (invalid sequences replaced by U+FFFD) and,
//! only when the bytes are not UTF-8, the exact bytes beside it in base64 (`pathBytes`,
//! `exeBytes`, `argsBytes`, ...), so nothing is lost and nothing is merged by mistake.

use std::{borrow::Cow, ffi::OsStr, fmt, os::unix::ffi::OsStrExt as _, path::Path};

use base64::Engine as _;

#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Raw(Box<[u8]>);

impl Raw {
    pub fn new(bytes: &[u8]) -> Self {
        Raw(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The text, if the bytes are UTF-8.
    pub fn as_utf8(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The text, with invalid sequences replaced.
    pub fn to_str_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// The exact bytes in standard base64, when they are not UTF-8.
    pub fn bytes_if_not_utf8(&self) -> Option<String> {
        match self.as_utf8() {
            Some(_) => None,
            None => Some(base64::engine::general_purpose::STANDARD.encode(&self.0)),
        }
    }

    /// The bytes as a filesystem path.
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    pub fn starts_with(&self, prefix: &[u8]) -> bool {
        self.0.starts_with(prefix)
    }
}

impl From<&str> for Raw {
    fn from(s: &str) -> Self {
        Raw::new(s.as_bytes())
    }
}

impl From<String> for Raw {
    fn from(s: String) -> Self {
        Raw(s.into_bytes().into_boxed_slice())
    }
}

impl From<Vec<u8>> for Raw {
    fn from(bytes: Vec<u8>) -> Self {
        Raw(bytes.into_boxed_slice())
    }
}

impl From<&Path> for Raw {
    fn from(path: &Path) -> Self {
        Raw::new(path.as_os_str().as_bytes())
    }
}

impl PartialEq<str> for Raw {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Raw {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == other.as_bytes()
    }
}

impl fmt::Debug for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

/// Writes `key` as text and, when the bytes are not UTF-8, `bytes_key` as their base64.
pub fn serialize_entry<M: serde::ser::SerializeMap>(
    map: &mut M,
    key: &'static str,
    bytes_key: &'static str,
    value: &Raw,
) -> Result<(), M::Error> {
    map.serialize_entry(key, &value.to_str_lossy())?;
    if let Some(bytes) = value.bytes_if_not_utf8() {
        map.serialize_entry(bytes_key, &bytes)?;
    }
    Ok(())
}

/// Writes a list as `key` (texts) and, when any is not UTF-8, `bytes_key` with the base64
/// of every entry, position for position.
pub fn serialize_list<M: serde::ser::SerializeMap>(
    map: &mut M,
    key: &'static str,
    bytes_key: &'static str,
    values: &[Raw],
) -> Result<(), M::Error> {
    let texts: Vec<Cow<'_, str>> = values.iter().map(Raw::to_str_lossy).collect();
    map.serialize_entry(key, &texts)?;
    if values.iter().any(|v| v.as_utf8().is_none()) {
        let bytes: Vec<String> = values
            .iter()
            .map(|v| base64::engine::general_purpose::STANDARD.encode(v.as_bytes()))
            .collect();
        map.serialize_entry(bytes_key, &bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_text_only_and_anything_else_is_kept_in_base64() {
        let name = Raw::new(b"caf\xc3\xa9");
        assert_eq!(name.as_utf8(), Some("café"));
        assert_eq!(name.bytes_if_not_utf8(), None);
        let bad = Raw::new(b"bad-\xff-name");
        assert_eq!(bad.to_str_lossy(), "bad-\u{fffd}-name");
        assert_eq!(bad.bytes_if_not_utf8().as_deref(), Some("YmFkLf8tbmFtZQ=="));
        // Two names that read the same are still two names.
        assert_ne!(bad, Raw::new(b"bad-\xfe-name"));
        assert_eq!(
            bad.to_str_lossy(),
            Raw::new(b"bad-\xfe-name").to_str_lossy()
        );
        assert_eq!(format!("{bad:?}"), "\"bad-\\xff-name\"");
    }
}
