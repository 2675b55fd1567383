//! Making paths from syscalls absolute.
//!
//! A relative path is relative to the calling thread's working directory (`AT_FDCWD`) or to
//! a directory file descriptor. Both are looked up in /proc while the process still exists;
//! a process that is already gone leaves the path as given, marked unresolved.

use std::{
    borrow::Cow,
    fs,
    path::{Component, Path, PathBuf},
};

/// `AT_FDCWD`: resolve relative to the working directory.
pub const AT_FDCWD: i32 = -100;

#[derive(Debug, PartialEq, Eq)]
pub struct Resolved<'a> {
    pub path: Cow<'a, str>,
    pub resolved: bool,
}

/// Resolves `raw` as the kernel would for `tgid`/`tid` calling with directory fd `dfd`.
pub fn resolve<'a>(proc_root: &Path, tgid: u32, tid: u32, dfd: i32, raw: &'a str) -> Resolved<'a> {
    if raw.starts_with('/') {
        return Resolved {
            path: normalize(raw),
            resolved: true,
        };
    }
    let link = if dfd == AT_FDCWD {
        "cwd".to_owned()
    } else {
        format!("fd/{dfd}")
    };
    // The thread's own view first (threads may unshare their fs), then the process's.
    let base = fs::read_link(proc_root.join(format!("{tgid}/task/{tid}/{link}")))
        .or_else(|_| fs::read_link(proc_root.join(format!("{tgid}/{link}"))));
    match base {
        Ok(base) if base.is_absolute() => {
            let joined = base.join(raw);
            Resolved {
                path: Cow::Owned(normalize(&joined.to_string_lossy()).into_owned()),
                resolved: true,
            }
        }
        _ => Resolved {
            path: Cow::Borrowed(raw),
            resolved: false,
        },
    }
}

/// Removes `.` components, empty components and `..` lexically. This matches the kernel
/// unless a symlink is followed by `..`, which paths from syscalls rarely contain.
pub fn normalize(path: &str) -> Cow<'_, str> {
    let clean = !path.contains("//")
        && !path.contains("/./")
        && !path.contains("/../")
        && !path.ends_with("/.")
        && !path.ends_with("/..")
        && (path.len() == 1 || !path.ends_with('/'));
    if clean {
        return Cow::Borrowed(path);
    }
    let mut out = PathBuf::from("/");
    for component in Path::new(path).components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Cow::Owned(out.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize("/etc/passwd"), "/etc/passwd");
        assert!(matches!(normalize("/etc/passwd"), Cow::Borrowed(_)));
        assert_eq!(normalize("/a/./b//c/../d"), "/a/b/d");
        assert_eq!(normalize("/../.."), "/");
        assert_eq!(normalize("/tmp/x/"), "/tmp/x");
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize("/a/b/.."), "/a");
    }

    #[test]
    fn resolves_against_cwd_and_dirfd_of_this_process() {
        let proc_root = Path::new("/proc");
        let pid = std::process::id();
        let cwd = std::env::current_dir().unwrap();
        let r = resolve(proc_root, pid, pid, AT_FDCWD, "sub/./file");
        assert_eq!(r.path, format!("{}/sub/file", cwd.display()));
        assert!(r.resolved);

        let dir = std::fs::File::open("/usr/lib").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
        let r = resolve(proc_root, pid, pid, fd, "../bin/env");
        assert_eq!(r.path, "/usr/bin/env");
        assert!(r.resolved);

        let r = resolve(proc_root, pid, pid, 9999, "x");
        assert_eq!(
            r,
            Resolved {
                path: Cow::Borrowed("x"),
                resolved: false
            }
        );
        // A process that does not exist: left as given, unresolved.
        let r = resolve(proc_root, u32::MAX - 1, u32::MAX - 1, AT_FDCWD, "rel");
        assert!(!r.resolved);
        assert_eq!(r.path, "rel");
    }
}
