//! What a release artifact is built from: the version, the commit and its time, which
//! stands in for "now" everywhere (SOURCE_DATE_EPOCH), so the same commit gives the same
//! bytes.

use std::{env, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{output, root};

/// The workspace version (xtask shares it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Clone, Debug)]
pub struct Provenance {
    pub version: String,
    /// The commit, with `-dirty` when the work tree differs from it.
    pub revision: String,
    /// Seconds since the epoch: SOURCE_DATE_EPOCH if set, else the commit's time.
    pub epoch: i64,
}

impl Provenance {
    pub fn of_checkout() -> Result<Provenance> {
        let git = |args: &[&str]| output(Command::new("git").current_dir(root()).args(args));
        let commit = git(&["rev-parse", "HEAD"])
            .context("the release is named after its git commit; build from a git checkout")?
            .trim()
            .to_owned();
        let dirty = !git(&["status", "--porcelain", "--untracked-files=no"])?
            .trim()
            .is_empty();
        let epoch = match env::var("SOURCE_DATE_EPOCH") {
            Ok(value) => value.trim().parse().with_context(|| {
                format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds")
            })?,
            Err(_) => git(&["log", "-1", "--format=%ct", "HEAD"])?
                .trim()
                .parse()
                .context("git log printed no commit time")?,
        };
        if epoch < 0 {
            bail!("SOURCE_DATE_EPOCH must not be before 1970");
        }
        Ok(Provenance {
            version: VERSION.to_owned(),
            revision: if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            },
            epoch,
        })
    }

    pub fn dirty(&self) -> bool {
        self.revision.ends_with("-dirty")
    }

    /// The epoch as RFC 3339 UTC (`2026-12-01T09:29:15Z`).
    pub fn created(&self) -> String {
        rfc3339(self.epoch)
    }
}

/// Seconds since the epoch (not negative) as an RFC 3339 UTC timestamp.
pub fn rfc3339(epoch: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch.max(0).unsigned_abs());
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_date() {
        // Values from `date -u -d @<epoch> +%FT%TZ`.
        for (epoch, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_700_000_000, "2023-11-14T22:13:20Z"),
            (1_796_117_355, "2026-12-01T09:29:15Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
        ] {
            assert_eq!(rfc3339(epoch), text, "{epoch}");
        }
    }
}
