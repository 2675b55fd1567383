//! Evidence bundles: an offline command over the observer's NDJSON files (and a Scanner
//! EntryTrace file) that writes `offline/runtime/<runId>/` — both streams in canonical
//! JSON and a fixed order, their stable merge, and a manifest with every hash and the
//! workload identity table — signs it (DSSE over an in-toto Statement), archives it
//! reproducibly and verifies it anywhere. docs/evidence.md describes the format.
//!
//! Not a pipeline stage: it reads files the daemon wrote, uses the record model only for
//! timestamps, and nothing but the binary uses it.
//!
//! [`input`] reads and checks lines → [`sort`] orders each stream within a memory budget →
//! [`merge`] coalesces the two → [`export`] writes the files and the [`manifest`] (with the
//! [`identity`] table); [`dsse`] signs, [`archive`] packs, [`verify`] checks all of it
//! (reading the bundle back with [`reread`], reporting [`problems`]).

pub mod archive;
pub mod canonical;
pub mod cli;
pub mod debug_path;
pub mod deployment;
pub mod dsse;
pub mod export;
pub mod identity;
pub mod input;
pub mod manifest;
pub mod merge;
pub mod problems;
pub mod reread;
pub mod sort;
pub mod time;
pub mod verify;

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

/// The manifest's name in a bundle.
pub const MANIFEST: &str = "manifest.json";
/// The signature envelope's name in a bundle.
pub const ENVELOPE: &str = "manifest.dsse.json";
/// The merged stream's name in a bundle.
pub const COALESCED: &str = "runtime.coalesced.ndjson";

/// The two streams of a bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stream {
    /// What the Scanner's EntryTrace saw.
    EntryTrace,
    /// What the observer saw.
    Runtime,
}

impl Stream {
    pub const ALL: [Stream; 2] = [Stream::EntryTrace, Stream::Runtime];

    /// The stream's file in a bundle.
    pub fn file_name(self) -> &'static str {
        match self {
            Stream::EntryTrace => "scanner.entrytrace.ndjson",
            Stream::Runtime => "zastava.runtime.ndjson",
        }
    }

    /// The stream's name in the manifest and the coalesced file's `source`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::EntryTrace => "entrytrace",
            Stream::Runtime => "runtime",
        }
    }

    pub fn from_name(name: &str) -> Option<Stream> {
        Stream::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every file a signed bundle holds (the archive sorts them by name).
pub const BUNDLE_FILES: [&str; 5] = [
    MANIFEST,
    ENVELOPE,
    COALESCED,
    "scanner.entrytrace.ndjson",
    "zastava.runtime.ndjson",
];

/// Why an evidence command could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{}:{line}: {reason}\n  fix or remove the line, or export with --skip-invalid to skip \
         such lines (they are counted in the manifest)",
        path.display()
    )]
    InvalidLine {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error(
        "{}:{line}: {reason}\n  export only this installation's records, or export with \
         --skip-invalid to leave out those of others (they are counted in the manifest)",
        path.display()
    )]
    OtherDeployment {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error(
        "{}:{line}: {reason}\n  export each installation's files on their own, or name the \
         deployment to export (--tenant, --environment, --deployment or [runtime] in \
         --config) and leave out the others' records with --skip-invalid",
        path.display()
    )]
    MixedDeployments {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error("{}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("{0}")]
    Refused(String),
}

impl EvidenceError {
    /// A closure for `map_err` that names what was being done to which file.
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| EvidenceError::Io {
            action,
            path,
            source,
        }
    }
}

/// Lowercase hex of bytes (hashes, key ids).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// The hex SHA-256 of a file, read in large blocks.
pub fn sha256_file(path: &std::path::Path) -> Result<(String, u64), EvidenceError> {
    use sha2::{Digest as _, Sha256};
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).map_err(EvidenceError::io("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(EvidenceError::io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&hasher.finalize()), total))
}

/// A directory removed when dropped, unless kept.
pub(crate) struct ScratchDir(Option<PathBuf>);

impl ScratchDir {
    pub(crate) fn create(parent: &Path, prefix: &str) -> Result<ScratchDir, EvidenceError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = parent.join(format!("{prefix}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).map_err(EvidenceError::io("create", &dir))?;
        Ok(ScratchDir(Some(dir)))
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    pub(crate) fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = fs::remove_dir_all(dir);
        }
    }
}
