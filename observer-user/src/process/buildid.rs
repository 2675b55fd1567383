//! GNU build-ids (`code_id`) of executables, read lazily (only the ELF headers and notes
//! are read, not the whole file) and cached by file identity.

use std::{collections::HashMap, fs::File, os::unix::fs::MetadataExt as _, path::Path};

use object::{read::ReadCache, Object as _};

/// Entries kept before the cache is cleared (binaries on a node number in the thousands).
const CAPACITY: usize = 8192;

/// The GNU build-id of the ELF file at `path`, as lowercase hex.
pub fn read_build_id(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let cache = ReadCache::new(file);
    let parsed = object::File::parse(&cache).ok()?;
    let id = parsed.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

/// (device, inode, ctime seconds, ctime nanoseconds): a binary replaced in place changes
/// its ctime, so a stale build-id is never served for it.
type FileKey = (u64, u64, i64, i64);

#[derive(Default)]
pub struct BuildIdCache {
    entries: HashMap<FileKey, Option<String>>,
    hits: u64,
    misses: u64,
}

impl BuildIdCache {
    /// The build-id of the file at `path` (`/proc/<pid>/exe` works: it opens the running
    /// binary wherever it lives, also inside a container's filesystem).
    pub fn get(&mut self, path: &Path) -> Option<String> {
        self.get_if(path, None)
    }

    /// As [`BuildIdCache::get`], only if the file at `path` has inode number `ino` (when
    /// given): a path can name another file by the time it is read.
    pub fn get_if(&mut self, path: &Path, ino: Option<u64>) -> Option<String> {
        let meta = std::fs::metadata(path).ok()?;
        if ino.is_some_and(|ino| ino != meta.ino()) {
            return None;
        }
        let key = (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec());
        if let Some(found) = self.entries.get(&key) {
            self.hits += 1;
            return found.clone();
        }
        self.misses += 1;
        if self.entries.len() >= CAPACITY {
            self.entries.clear();
        }
        let id = read_build_id(path);
        self.entries.insert(key, id.clone());
        id
    }

    pub fn hits(&self) -> u64 {
        self.hits
    }

    pub fn misses(&self) -> u64 {
        self.misses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The build-id as binutils' `readelf -n` reports it, when readelf is installed.
    fn readelf_build_id(path: &str) -> Option<String> {
        let out = std::process::Command::new("readelf")
            .args(["-n", path])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.trim().strip_prefix("Build ID: "))
            .map(str::to_owned)
    }

    #[test]
    fn reads_the_build_id_of_real_binaries() {
        for binary in ["/bin/true", "/bin/sh"] {
            let ours = read_build_id(Path::new(binary)).expect("Debian binaries carry a build-id");
            assert_eq!(ours.len(), 40, "{binary}: {ours}");
            if let Some(theirs) = readelf_build_id(binary) {
                assert_eq!(ours, theirs, "{binary}");
            }
        }
    }

    #[test]
    fn non_elf_and_missing_files_have_none() {
        assert_eq!(read_build_id(Path::new("/etc/hostname")), None);
        assert_eq!(read_build_id(Path::new("/nonexistent/zastava")), None);
    }

    #[test]
    fn cache_hits_on_the_same_file_and_misses_after_it_changes() {
        let dir = std::env::temp_dir().join(format!("zastava-buildid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("true");
        std::fs::copy("/bin/true", &copy).unwrap();
        let mut cache = BuildIdCache::default();
        let first = cache.get(&copy);
        assert!(first.is_some());
        assert_eq!(cache.get(&copy), first);
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
        // Replaced with a different binary: ctime (and content) change, so it is read again.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::copy("/bin/sh", &copy).unwrap();
        let second = cache.get(&copy);
        assert_ne!(second, first);
        assert_eq!(cache.misses(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
