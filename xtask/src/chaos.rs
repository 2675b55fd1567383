//! `cargo xtask chaos`: the chaos cases of tests/chaos.rs at full scale (a backend outage
//! of 10 minutes at 5 000 new edges/s, SIGKILL every 30 s for 5 minutes, the spool's disk
//! full during an outage, an overrun ring buffer), built in release mode, one case at a
//! time; their figures as Markdown tables (docs/RELIABILITY.md). With `--smoke`, the small
//! run the test suite makes.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
    cmd::{cargo, root, run_cmd, step},
    ebpf::build_ebpf,
    image::target_dir,
    setup::setup,
};

pub fn chaos(smoke: bool, cases: &[String]) -> Result<()> {
    setup()?;
    build_ebpf(true)?;
    let report = target_dir().join("chaos").join("report.ndjson");
    std::fs::create_dir_all(report.parent().context("the report's directory")?)?;
    let _ = std::fs::remove_file(&report);
    step(if smoke {
        "chaos, smoke run (about 2 minutes)"
    } else {
        "chaos, full run (about 25 minutes)"
    });
    let mut test = cargo();
    test.current_dir(root())
        .args(["test", "--locked", "-p", "observer-user", "--test", "chaos"])
        .env("ZASTAVA_CHAOS", if smoke { "smoke" } else { "full" })
        .env("ZASTAVA_CHAOS_REPORT", &report);
    if !smoke {
        test.arg("--release");
    }
    test.arg("--")
        .args(cases)
        .args(["--test-threads=1", "--nocapture"]);
    let ran = run_cmd(&mut test);
    // The figures of every case that reported, also when one failed.
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    print!("{}", tables(&text)?);
    println!("(figures also in {})", report.display());
    ran
}

/// One table per case: its figures, nested ones flattened with dots.
fn tables(ndjson: &str) -> Result<String> {
    let mut out = String::new();
    for line in ndjson.lines().filter(|l| !l.trim().is_empty()) {
        let case: Value = serde_json::from_str(line).context("a line of the chaos report")?;
        writeln!(
            out,
            "\n### {} ({})\n\n| figure | value |\n|---|---:|",
            case["case"].as_str().unwrap_or("?"),
            case["scale"].as_str().unwrap_or("?")
        )?;
        let mut rows = Vec::new();
        flatten("", &case["figures"], &mut rows);
        for (name, value) in rows {
            writeln!(out, "| {name} | {value} |")?;
        }
    }
    Ok(out)
}

fn flatten(prefix: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&name, value, rows);
            }
        }
        Value::Null => rows.push((prefix.to_owned(), "—".to_owned())),
        other => rows.push((prefix.to_owned(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_become_one_table_per_case() {
        let text = r#"{"case":"outage","scale":"full","figures":{"lost":0,"account":{"seen":5,"dropped":{}},"recovery_seconds":null}}"#;
        assert_eq!(
            tables(text).unwrap(),
            "\n### outage (full)\n\n| figure | value |\n|---|---:|\n| account.seen | 5 |\n| lost | 0 |\n| recovery_seconds | — |\n"
        );
    }
}
