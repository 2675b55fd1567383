//! The JSON shape of an edge event (one NDJSON line).
//!
//! Field names are a contract (`edgeType`, `timestamp`, `node`, `workloadId`, `hostId`,
//! `osRelease`, `process`, and per edge type `path`/`flags`/`result`,
//! `family`/`address`/`port`/`path`/`result`, `path`/`args`); see docs/ARCHITECTURE.md.
//! Events borrow from the process table and host identity so that building one allocates
//! only what had to be computed (resolved paths).

use std::borrow::Cow;

use serde::{ser::SerializeSeq as _, Serialize, Serializer};

use crate::clock::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeType {
    /// A process executed a binary.
    Syscall,
    /// A file was opened.
    Fs,
    /// A socket connected.
    Net,
}

impl EdgeType {
    pub const ALL: [EdgeType; 3] = [EdgeType::Syscall, EdgeType::Fs, EdgeType::Net];

    pub fn name(self) -> &'static str {
        match self {
            EdgeType::Syscall => "syscall",
            EdgeType::Fs => "fs",
            EdgeType::Net => "net",
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeEvent<'a> {
    pub edge_type: EdgeType,
    pub timestamp: Timestamp,
    pub node: &'a str,
    pub workload_id: &'a str,
    pub host_id: &'a str,
    pub os_release: &'a str,
    /// cgroup v2 id of the task (the key for container attribution).
    pub cgroup_id: u64,
    pub process: ProcessView<'a>,
    #[serde(flatten)]
    pub edge: Edge<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessView<'a> {
    pub pid: u32,
    pub tid: u32,
    pub ppid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub comm: Cow<'a, str>,
    pub exe: Option<&'a str>,
    pub args: &'a [String],
    #[serde(skip_serializing_if = "is_false")]
    pub args_truncated: bool,
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if signature"
)]
fn is_false(value: &bool) -> bool {
    !*value
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if signature"
)]
fn is_true(value: &bool) -> bool {
    *value
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Edge<'a> {
    Syscall(ExecEdge<'a>),
    Fs(OpenEdge<'a>),
    Net(ConnectEdge<'a>),
}

/// `edgeType: syscall`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecEdge<'a> {
    /// `execve` or `execveat`.
    pub syscall: &'static str,
    /// The executed file, absolute when it could be resolved.
    pub path: Cow<'a, str>,
    #[serde(skip_serializing_if = "is_true")]
    pub path_resolved: bool,
    pub args: &'a [String],
    #[serde(skip_serializing_if = "is_false")]
    pub args_truncated: bool,
}

/// `edgeType: fs`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenEdge<'a> {
    /// `openat` or `openat2`.
    pub syscall: &'static str,
    /// The opened path, absolute when it could be resolved.
    pub path: Cow<'a, str>,
    #[serde(skip_serializing_if = "is_true")]
    pub path_resolved: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub path_truncated: bool,
    /// `O_*` flags as passed.
    pub flags: u32,
    /// The same flags by name.
    pub flag_names: OpenFlags,
    /// The file descriptor, or `-errno`.
    pub result: i64,
}

/// `edgeType: net`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectEdge<'a> {
    pub syscall: &'static str,
    /// `inet`, `inet6`, `unix`, `unspec`, or `af_<number>`.
    pub family: Cow<'static, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Unix sockets: the path, or `@name` for abstract sockets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Cow<'a, str>>,
    /// 0, or `-errno` (`-115` EINPROGRESS for non-blocking sockets).
    pub result: i64,
}

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
