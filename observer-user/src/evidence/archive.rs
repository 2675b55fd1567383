//! `<runId>.tar.zst`: the bundle as one reproducible file. Entries are the directory
//! `<runId>/` and then its files sorted by name, with GNU headers whose metadata is fixed
//! (mode 0755/0644, uid and gid 0, no owner names, mtime 0); the tar stream is compressed
//! with zstd at level 3 with a content checksum, in one thread. The same files give the
//! same archive bytes with the same build of the tool.

use std::{
    collections::BTreeSet,
    fs::File,
    io::{self, BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use sha2::{Digest as _, Sha256};

use super::{hex, EvidenceError, BUNDLE_FILES};

const LEVEL: i32 = 3;

/// The bundle files present in `dir`, in archive order.
pub fn files_in(dir: &Path) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = BUNDLE_FILES
        .iter()
        .copied()
        .filter(|name| dir.join(name).is_file())
        .collect();
    names.sort_unstable();
    names
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> io::Result<tar::Header> {
    let mut header = tar::Header::new_gnu();
    header.set_path(path)?;
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    Ok(header)
}

/// Writes the archive of `dir` (named `run_id` inside) to `out`.
pub fn write_to<W: Write>(dir: &Path, run_id: &str, out: W) -> io::Result<W> {
    let mut encoder = zstd::Encoder::new(out, LEVEL)?;
    encoder.include_checksum(true)?;
    let mut tar = tar::Builder::new(encoder);
    tar.append(
        &header(&format!("{run_id}/"), tar::EntryType::Directory, 0o755, 0)?,
        io::empty(),
    )?;
    for name in files_in(dir) {
        let path = dir.join(name);
        let file = File::open(&path)?;
        let size = file.metadata()?.len();
        let mut counted = Counted {
            inner: file.take(size),
            read: 0,
        };
        tar.append(
            &header(
                &format!("{run_id}/{name}"),
                tar::EntryType::Regular,
                0o644,
                size,
            )?,
            &mut counted,
        )?;
        if counted.read != size {
            return Err(io::Error::other(format!(
                "{} changed while it was archived",
                path.display()
            )));
        }
    }
    tar.into_inner()?.finish()
}

struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Writes `<dir's parent>/<run_id>.tar.zst` (through a temporary file, renamed into place).
pub fn write(dir: &Path, run_id: &str) -> Result<PathBuf, EvidenceError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let target = parent.join(format!("{run_id}.tar.zst"));
    let partial = parent.join(format!(".{run_id}.tar.zst.{}", std::process::id()));
    let result = (|| {
        let file = File::create(&partial)?;
        let out = write_to(dir, run_id, BufWriter::with_capacity(1 << 20, file))?;
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        std::fs::rename(&partial, &target)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(EvidenceError::io("write", &target)(e));
    }
    Ok(target)
}

/// A writer that only hashes.
struct HashSink(Sha256);

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The hex SHA-256 of the archive `write` would make of `dir`.
pub fn expected_sha256(dir: &Path, run_id: &str) -> io::Result<String> {
    let sink = write_to(dir, run_id, HashSink(Sha256::new()))?;
    Ok(hex(&sink.0.finalize()))
}

/// What an archive held.
pub struct Extracted {
    pub run_id: String,
    /// What is wrong with the archive itself (entries, names), if anything.
    pub problems: Vec<String>,
}

/// Unpacks `archive` into `into`, accepting only the bundle's own entries: the
/// `<runId>/` directory and the bundle files in it, as regular files.
pub fn extract(archive: &Path, into: &Path) -> Result<Extracted, EvidenceError> {
    let file = File::open(archive).map_err(EvidenceError::io("open", archive))?;
    let mut problems = Vec::new();
    let mut run_id: Option<String> = None;
    let mut seen = BTreeSet::new();
    let result = (|| -> io::Result<()> {
        let decoder = zstd::Decoder::new(file)?;
        let mut tar = tar::Archive::new(decoder);
        for entry in tar.entries()? {
            let mut entry = entry?;
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let (id, name) = path.split_once('/').unwrap_or((path.as_str(), ""));
            if run_id.get_or_insert_with(|| id.to_owned()) != id {
                problems.push(format!("entry {path:?} is outside the bundle's directory"));
                continue;
            }
            let kind = entry.header().entry_type();
            if name.is_empty() {
                if !kind.is_dir() {
                    problems.push(format!("entry {path:?} is not the bundle's directory"));
                }
                continue;
            }
            let Some(known) = BUNDLE_FILES.iter().find(|f| **f == name) else {
                problems.push(format!("entry {path:?} is not a file of a bundle"));
                continue;
            };
            if !kind.is_file() {
                problems.push(format!("entry {path:?} is not a regular file"));
                continue;
            }
            if !seen.insert(*known) {
                problems.push(format!("entry {path:?} appears twice"));
                continue;
            }
            let mut out = File::create(into.join(known))?;
            io::copy(&mut entry, &mut out)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        problems.push(format!("cannot read the archive: {e}"));
    }
    Ok(Extracted {
        run_id: run_id.unwrap_or_default(),
        problems,
    })
}
