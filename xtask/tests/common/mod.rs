//! Running `xtask` as a user would, and the independent tools the tests check its output
//! with (GNU tar, sha256sum, openssl, readelf).
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn xtask() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.current_dir(repo());
    cmd
}

/// Runs `cmd`, failing the test with its output if it fails; returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` and returns its whole output, success or not.
pub fn attempt(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// A fresh directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The commit the artifacts are built from, `-dirty` when the work tree differs, and its
/// time as `date -u` prints it.
pub fn commit() -> (String, String) {
    let git = |args: &[&str]| {
        run(Command::new("git").current_dir(repo()).args(args))
            .trim()
            .to_owned()
    };
    let mut revision = git(&["rev-parse", "HEAD"]);
    if !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        revision.push_str("-dirty");
    }
    let epoch = git(&["log", "-1", "--format=%ct", "HEAD"]);
    let created = run(Command::new("date").args(["-u", "-d", &format!("@{epoch}"), "+%FT%TZ"]))
        .trim()
        .to_owned();
    (revision, created)
}

/// The workspace version, which names the images and the kit.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn sha256(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}
