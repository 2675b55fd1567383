//! Room the spool keeps on its filesystem for its own bookkeeping.
//!
//! Moving a cursor or the head writes a small new file before the old one goes, so on a
//! full filesystem it fails — and without it no delivered batch could ever leave the
//! spool, so its space would never come back. The spool therefore holds a `reserve` file
//! of [`RESERVE_BYTES`]: when a cursor or head write finds the disk full, the reserve is
//! given up and the write tried again; new batches are refused (counted as
//! `spool_full`) until the reserve can be taken back, which it is as soon as delivered
//! segments are removed.

use std::{
    fs::{self, File},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

/// Enough for many cursor and head updates (each a few dozen bytes, a page on disk).
pub(super) const RESERVE_BYTES: usize = 64 << 10;

const NAME: &str = "reserve";

/// Whether an error says the filesystem (or the quota) is full.
pub(super) fn is_full(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

pub(super) struct Reserve {
    path: PathBuf,
    held: bool,
}

impl Reserve {
    /// The reserve of the spool in `dir`, taken if there is room (see [`Reserve::take`]).
    pub fn new(dir: &Path) -> Self {
        let mut reserve = Reserve {
            path: dir.join(NAME),
            held: false,
        };
        // A disk full already at open: taken later, once there is room.
        let _ = reserve.take();
        reserve
    }

    pub fn held(&self) -> bool {
        self.held
    }

    /// Takes the reserve's room on disk (written, not only allocated, so the filesystem
    /// really holds it). Nothing is left behind when that fails.
    pub fn take(&mut self) -> io::Result<()> {
        if self.held {
            return Ok(());
        }
        let written = File::create(&self.path).and_then(|mut file| {
            file.write_all(&[0; RESERVE_BYTES])?;
            file.sync_data()
        });
        match written {
            Ok(()) => {
                self.held = true;
                Ok(())
            }
            Err(err) => {
                let _ = fs::remove_file(&self.path);
                Err(err)
            }
        }
    }

    /// Gives the room back to the filesystem. False when there was none to give.
    pub fn release(&mut self) -> bool {
        if !self.held {
            return false;
        }
        match fs::remove_file(&self.path) {
            Ok(()) => {
                self.held = false;
                true
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.held = false;
                false
            }
            Err(_) => false,
        }
    }

    /// Runs `write`; if it finds the disk full, releases the reserve and runs it again.
    pub fn write_with(&mut self, write: impl Fn() -> io::Result<()>) -> io::Result<()> {
        match write() {
            Err(err) if is_full(&err) && self.release() => {
                tracing::warn!(
                    "spool {}: the filesystem is full; using the spool's reserve to record deliveries, and refusing new batches until delivered segments free space",
                    self.path.parent().unwrap_or(&self.path).display()
                );
                write()
            }
            other => other,
        }
    }
}
