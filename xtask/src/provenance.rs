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

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
pub fn rfc3339(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01, by eras of 400 years
/// (146 097 days), each starting on 1 March so that leap days fall at an era's year end.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
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
