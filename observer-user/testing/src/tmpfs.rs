//! A small tmpfs mounted for one test: a filesystem that fills up on demand (ENOSPC) and
//! gets its space back when files are removed. Unmounted (and its mount point removed)
//! on drop, so a failed test leaves no mount behind.

use std::{
    ffi::CString,
    fs::{self, File},
    io::{self, Write as _},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::Command,
};

/// A tmpfs of a fixed size at a fresh directory.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` (rounded up to pages by the kernel). Needs root.
    pub fn mount(prefix: &str, bytes: u64) -> Tmpfs {
        let dir = crate::fresh_dir(prefix);
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0700"))
            .arg("tmpfs")
            .arg(&dir)
            .status()
            .expect("run mount (util-linux)");
        assert!(
            status.success(),
            "cannot mount a tmpfs at {} (root is needed): {status}",
            dir.display()
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Bytes free for an unprivileged writer, as statvfs reports them.
    pub fn free_bytes(&self) -> u64 {
        let path = CString::new(self.dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: statvfs writes into the zeroed struct it is given; the path is a valid
        // NUL-terminated string.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(path.as_ptr(), &raw mut stat) };
        assert_eq!(rc, 0, "statvfs {}", self.dir.display());
        stat.f_bavail * stat.f_frsize
    }

    /// Waits until at least `bytes` are free, for up to ten seconds. The space of a
    /// removed file comes back once its last descriptor is closed, and a process that
    /// another thread forks at that moment holds copies of this process's descriptors
    /// until its exec closes them.
    pub fn wait_until_free(&self, bytes: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.free_bytes() < bytes {
            assert!(
                std::time::Instant::now() < deadline,
                "{}: {} bytes free, {bytes} expected after removing files",
                self.dir.display(),
                self.free_bytes()
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Fills the filesystem: writes `name` until the kernel says ENOSPC. Returns its path
    /// (remove it to give the space back).
    pub fn fill(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        let mut file = File::create(&path).unwrap();
        let block = vec![0xA5_u8; 4096];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        path
    }

    /// Frees what [`Tmpfs::fill`] took.
    pub fn unfill(&self, filler: &Path) {
        match fs::remove_file(filler) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove {}: {e}", filler.display()),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a file a killed process left open cannot keep the mount.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = fs::remove_dir(&self.dir);
    }
}
