//! The release images, as `cargo xtask image` builds them (release binaries, built once and
//! reused by every test of a test binary; cargo keeps the build for the next).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// One image `cargo xtask image` wrote.
#[derive(Clone, Debug)]
pub struct ReleaseImage {
    /// `registry.stellaops.io/zastava/zastava-observer:0.1.0`
    pub reference: String,
    pub manifest_digest: String,
    /// The OCI archive.
    pub archive: PathBuf,
}

pub struct ReleaseImages {
    pub observer: ReleaseImage,
    pub webhook: ReleaseImage,
}

/// The `xtask` binary, beside the test's own directory (`target/<profile>/`), as
/// `cargo test --workspace` builds it for its own tests.
pub fn xtask_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let path = dir.join("xtask");
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build -p xtask` or `cargo xtask test`",
        path.display()
    );
    path
}

/// Builds both images with `cargo xtask image` (once per test binary).
pub fn images() -> &'static ReleaseImages {
    static IMAGES: OnceLock<ReleaseImages> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let out = Command::new(xtask_bin())
            .arg("image")
            .output()
            .expect("run xtask image");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cargo xtask image failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let find = |binary: &str| {
            let line = stdout
                .lines()
                .find(|l| l.split_whitespace().next() == Some(binary))
                .unwrap_or_else(|| panic!("xtask image printed no line for {binary}:\n{stdout}"));
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.len(), 4, "{line}");
            ReleaseImage {
                reference: fields[1].to_owned(),
                manifest_digest: fields[2].to_owned(),
                archive: PathBuf::from(fields[3]),
            }
        };
        ReleaseImages {
            observer: find("zastava-observer"),
            webhook: find("zastava-webhook"),
        }
    })
}
