//! `O_*` open flags by name.

use std::borrow::Cow;

use serde::{ser::SerializeSeq as _, Serialize, Serializer};

/// `O_*` flags, serialized as a list of names (unknown bits as hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFlags(pub u32);

const OPEN_FLAG_NAMES: [(u32, &str); 17] = [
    (libc::O_CREAT as u32, "O_CREAT"),
    (libc::O_EXCL as u32, "O_EXCL"),
    (libc::O_NOCTTY as u32, "O_NOCTTY"),
    (libc::O_TRUNC as u32, "O_TRUNC"),
    (libc::O_APPEND as u32, "O_APPEND"),
    (libc::O_NONBLOCK as u32, "O_NONBLOCK"),
    (libc::O_DSYNC as u32, "O_DSYNC"),
    (0o20000, "FASYNC"),
    (libc::O_DIRECT as u32, "O_DIRECT"),
    (libc::O_LARGEFILE as u32, "O_LARGEFILE"),
    (libc::O_DIRECTORY as u32, "O_DIRECTORY"),
    (libc::O_NOFOLLOW as u32, "O_NOFOLLOW"),
    (libc::O_NOATIME as u32, "O_NOATIME"),
    (libc::O_CLOEXEC as u32, "O_CLOEXEC"),
    // O_SYNC is __O_SYNC | O_DSYNC; name the extra bit.
    (0o4000000, "__O_SYNC"),
    (libc::O_PATH as u32, "O_PATH"),
    // O_TMPFILE is __O_TMPFILE | O_DIRECTORY.
    (0o20000000, "__O_TMPFILE"),
];

impl OpenFlags {
    /// Names of the set flags: the access mode first, then each flag bit.
    pub fn names(self) -> impl Iterator<Item = Cow<'static, str>> {
        let access = match self.0 & libc::O_ACCMODE as u32 {
            0 => "O_RDONLY",
            1 => "O_WRONLY",
            2 => "O_RDWR",
            _ => "O_ACCMODE",
        };
        let known = OPEN_FLAG_NAMES
            .iter()
            .fold(libc::O_ACCMODE as u32, |known, (bit, _)| known | bit);
        let bits = OPEN_FLAG_NAMES
            .iter()
            .filter(move |(bit, _)| self.0 & bit != 0)
            .map(|(_, name)| Cow::Borrowed(*name));
        let unknown = self.0 & !known;
        std::iter::once(Cow::Borrowed(access))
            .chain(bits)
            .chain((unknown != 0).then(|| Cow::Owned(format!("{unknown:#x}"))))
    }
}

impl Serialize for OpenFlags {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        for name in self.names() {
            seq.serialize_element(&name)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_by_name() {
        let names = |f: i32| OpenFlags(f as u32).names().collect::<Vec<_>>();
        assert_eq!(
            names(libc::O_RDONLY | libc::O_CLOEXEC),
            ["O_RDONLY", "O_CLOEXEC"]
        );
        assert_eq!(
            names(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC),
            ["O_WRONLY", "O_CREAT", "O_TRUNC"]
        );
        assert_eq!(names(libc::O_RDWR | 0x4000_0000), ["O_RDWR", "0x40000000"]);
    }
}
