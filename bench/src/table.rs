//! The storm table: every storm under every condition, with its ratios to the baseline and
//! to the floor (a bpftrace count on one tracepoint, the least any tracer of a syscall
//! tracepoint costs) measured in the same run.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{
    condition::Condition,
    report::{median, percentile},
    storm::Storm,
    tracer::Seen,
};

/// One storm under one condition.
pub struct Sample {
    pub seconds: f64,
    /// Operations a tracer should have reported.
    pub expected: u64,
    pub seen: Option<Seen>,
}

#[derive(Default)]
pub struct Cell {
    pub samples: Vec<Sample>,
    pub error: Option<String>,
}

/// Cells by (index in `Storm::ALL`, index in `Condition::ALL`).
pub type Cells = BTreeMap<(usize, usize), Cell>;

pub fn index_of(condition: Condition) -> usize {
    Condition::ALL
        .iter()
        .position(|&c| c == condition)
        .unwrap_or(0)
}

fn median_seconds(cells: &Cells, s: usize, condition: Condition) -> Option<f64> {
    let cell = cells.get(&(s, index_of(condition)))?;
    if cell.error.is_some() || cell.samples.is_empty() {
        return None;
    }
    Some(median(
        &cell.samples.iter().map(|x| x.seconds).collect::<Vec<_>>(),
    ))
}

pub fn render(out: &mut String, storms: &[(usize, u64)], cells: &Cells) -> std::fmt::Result {
    writeln!(
        out,
        "| storm | condition | median s | × baseline | × floor | delivered / expected | lost | tracer CPU s | tracer RSS MiB: after storm / peak | lag p50 / p95 s |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for &(s, ops) in storms {
        let storm = Storm::ALL[s];
        let baseline = median_seconds(cells, s, Condition::Baseline);
        let floor = median_seconds(cells, s, Condition::BpftraceCount);
        for (c, &condition) in Condition::ALL.iter().enumerate() {
            let Some(cell) = cells.get(&(s, c)) else {
                continue;
            };
            let label = storm.describe(ops);
            if let Some(err) = &cell.error {
                let reason = err.lines().next().unwrap_or("").replace('|', "/");
                writeln!(
                    out,
                    "| {label} | {} | did not run: {reason} | | | | | | | |",
                    condition.name()
                )?;
                continue;
            }
            let seconds: Vec<f64> = cell.samples.iter().map(|x| x.seconds).collect();
            let med = median(&seconds);
            let ratio = |to: Option<f64>| to.map_or("".into(), |b| format!("{:.2}", med / b));
            let seen: Vec<&Seen> = cell
                .samples
                .iter()
                .filter_map(|x| x.seen.as_ref())
                .collect();
            let dash = || "—".to_owned();
            let (delivered, lost, cpu, rss, lag) = if seen.is_empty() {
                (dash(), dash(), dash(), dash(), dash())
            } else {
                let expected: u64 = cell.samples.iter().map(|x| x.expected).sum();
                let delivered = seen.iter().map(|x| x.delivered.unwrap_or(0)).sum::<u64>();
                let lost = seen.iter().map(|x| x.dropped.unwrap_or(0)).sum::<u64>();
                let cpu = median(&seen.iter().map(|x| x.cpu_seconds).collect::<Vec<_>>());
                let rss = seen.iter().map(|x| x.max_rss_kib).max().unwrap_or(0);
                let rss_after = seen.iter().map(|x| x.rss_after_kib).max().unwrap_or(0);
                let lags: Vec<f64> = seen.iter().flat_map(|x| x.lags.iter().copied()).collect();
                let lag = if lags.is_empty() {
                    dash()
                } else {
                    format!(
                        "{:.2} / {:.2}",
                        percentile(&lags, 50.0),
                        percentile(&lags, 95.0)
                    )
                };
                let delivered = if expected == 0 {
                    dash()
                } else {
                    format!(
                        "{delivered} / {expected} ({:.1}%)",
                        100.0 * delivered as f64 / expected as f64
                    )
                };
                (
                    delivered,
                    lost.to_string(),
                    format!("{cpu:.2}"),
                    format!(
                        "{:.0} / {:.0}",
                        rss_after as f64 / 1024.0,
                        rss as f64 / 1024.0
                    ),
                    lag,
                )
            };
            writeln!(
                out,
                "| {label} | {} | {med:.3} | {} | {} | {delivered} | {lost} | {cpu} | {rss} | {lag} |",
                condition.name(),
                ratio(baseline),
                ratio(floor),
            )?;
        }
    }
    Ok(())
}
