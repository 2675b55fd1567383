//! The documentation says what the code does: every repository path the docs name exists,
//! the metric tables list exactly what each binary exports (with its type), and the table
//! of losses lists exactly the drop stages the event account counts.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use zastava::output::DropStage;
use zastava_platform::metrics::{self, Metric};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("observer-user is one level below the root")
        .to_owned()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The text between backticks.
fn code_spans(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

/// `a/{b,c}.rs` → `a/b.rs`, `a/c.rs` (one level of braces).
fn expand(path: &str) -> Vec<String> {
    let (Some(open), Some(close)) = (path.find('{'), path.find('}')) else {
        return vec![path.to_owned()];
    };
    path[open + 1..close]
        .split(',')
        .map(|alt| format!("{}{alt}{}", &path[..open], &path[close + 1..]))
        .collect()
}

const TOP: [&str; 10] = [
    "observer-ebpf/",
    "observer-common/",
    "observer-user/",
    "xtask/",
    "bench/",
    "tests/",
    "deploy/",
    "docs/",
    "schemas/",
    "proto/",
];

#[test]
fn every_path_the_docs_name_exists() {
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| format!("docs/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    docs.push("README.md".into());
    let mut named = 0;
    let mut missing = Vec::new();
    for doc in &docs {
        for span in code_spans(&read(doc)) {
            let path = span.trim_end_matches(':');
            if !TOP.iter().any(|t| path.starts_with(t))
                || path.contains(' ')
                || path.contains('<')
                || path.contains('*')
            {
                continue;
            }
            for path in expand(path) {
                named += 1;
                if !repo().join(&path).exists() {
                    missing.push(format!("{doc}: {path}"));
                }
            }
        }
    }
    assert!(named > 30, "only {named} paths found in the docs");
    assert!(
        missing.is_empty(),
        "paths that do not exist:\n{}",
        missing.join("\n")
    );
}

/// The metric names (and types) in the tables of `doc`: rows `| `name{labels}`, ... | type |`.
fn documented_metrics(doc: &str) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for line in read(doc).lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "", name cell, type cell, ...
        let (Some(names), Some(kind)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        for span in code_spans(names) {
            let name = span.split('{').next().unwrap_or_default();
            if name.starts_with("zastava_") || name.starts_with("stella_") {
                found.insert((name.to_owned(), (*kind).to_owned()));
            }
        }
    }
    found
}

fn table(metrics: &[Metric]) -> BTreeSet<(String, String)> {
    metrics
        .iter()
        .map(|m| (m.name.to_owned(), m.kind.as_str().to_owned()))
        .collect()
}

#[test]
fn the_metric_tables_list_what_each_binary_exports() {
    assert_eq!(
        documented_metrics("docs/operations.md"),
        table(metrics::OBSERVER),
        "docs/operations.md's metrics table and zastava-observer's metrics differ"
    );
    assert_eq!(
        documented_metrics("docs/webhook.md"),
        table(metrics::WEBHOOK),
        "docs/webhook.md's metrics table and zastava-webhook's metrics differ"
    );
}

#[test]
fn the_losses_table_lists_every_drop_stage() {
    let text = read("docs/operations.md");
    let section = text
        .split("## Losses and what to do")
        .nth(1)
        .expect("docs/operations.md has a losses section");
    let section = section.split("\n## ").next().unwrap_or_default();
    let mut documented = BTreeSet::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let first = line.split('|').nth(1).unwrap_or_default();
        documented.extend(code_spans(first).map(str::to_owned));
    }
    let stages: BTreeSet<String> = DropStage::ALL.iter().map(|s| s.name().to_owned()).collect();
    assert_eq!(documented, stages);
    // The metric's row names them too.
    let row = text
        .lines()
        .find(|l| l.contains("`stella_runtime_events_dropped_total{stage}`"))
        .expect("the dropped metric has a row");
    for stage in &stages {
        assert!(
            row.contains(&format!("`{stage}`")),
            "{stage} missing from: {row}"
        );
    }
}
