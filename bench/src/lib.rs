//! Benchmark harness of zastava-observer: the storms that are traced, the tracers they run
//! under, and the figures made of them.

pub mod condition;
pub mod counting_alloc;
pub mod evidence;
pub mod exposition;
pub mod peers;
pub mod report;
pub mod storm;
pub mod table;
pub mod tracer;

use std::path::{Path, PathBuf};

/// The programs named `names` in `dir`, or beside the running program when `dir` is `None`;
/// an error names the first one missing.
pub fn programs<const N: usize>(
    dir: Option<&Path>,
    names: [&str; N],
) -> anyhow::Result<[PathBuf; N]> {
    let dir = match dir {
        Some(dir) => dir.to_owned(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow::anyhow!("no directory for this program"))?
            .to_owned(),
    };
    let paths = names.map(|name| dir.join(name));
    if let Some(missing) = paths.iter().find(|p| !p.exists()) {
        anyhow::bail!(
            "{} is missing; build the workspace first",
            missing.display()
        );
    }
    Ok(paths)
}
