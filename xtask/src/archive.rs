//! Reproducible archives of a directory with GNU tar: entries sorted by name, one fixed
//! time, owner and group 0, modes without the builder's umask, no access or change
//! times — so the same files give the same bytes on any machine.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};

use crate::cmd::run_cmd;

/// Sets the modification time of `dir` and everything below it to `epoch`, so that what
/// an archiver or image tool copies from the files' metadata is fixed.
pub fn set_times(dir: &Path, epoch: i64) -> Result<()> {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch.unsigned_abs());
    let mut stack = vec![dir.to_path_buf()];
    let mut dirs = Vec::new();
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            for entry in fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
            dirs.push(path);
        } else if meta.is_file() {
            fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(time))
                .with_context(|| format!("cannot set the time of {}", path.display()))?;
        }
    }
    // Directories last: creating their children changed their times.
    for path in dirs.iter().rev() {
        fs::File::open(path)
            .and_then(|f| f.set_modified(time))
            .with_context(|| format!("cannot set the time of {}", path.display()))?;
    }
    Ok(())
}

/// How the archive is compressed.
#[derive(Clone, Copy)]
pub enum Compression {
    None,
    /// zstd, single-threaded (its output then depends only on the input and the level).
    Zstd,
}

/// Writes `out`: the `members` of `dir` (paths relative to it, directories recursively).
pub fn write_tar(
    dir: &Path,
    members: &[&str],
    epoch: i64,
    compression: Compression,
    out: &Path,
) -> Result<()> {
    let tar_path: PathBuf = match compression {
        Compression::None => out.to_path_buf(),
        Compression::Zstd => out.with_extension("tar.partial"),
    };
    run_cmd(
        Command::new("tar")
            .arg("--create")
            .arg("--file")
            .arg(&tar_path)
            .arg("--directory")
            .arg(dir)
            .args([
                "--format=posix",
                "--sort=name",
                &format!("--mtime=@{epoch}"),
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mode=u+rwX,go+rX,go-w",
                "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
                "--",
            ])
            .args(members),
    )
    .context("GNU tar is needed to write reproducible archives")?;
    if let Compression::Zstd = compression {
        run_cmd(
            Command::new("zstd")
                .args(["-q", "-f", "-3", "--single-thread", "--no-progress", "-o"])
                .arg(out)
                .arg(&tar_path),
        )
        .context(
            "zstd (Debian package zstd; `cargo xtask setup` installs it) compresses the kit",
        )?;
        fs::remove_file(&tar_path)?;
    }
    Ok(())
}
