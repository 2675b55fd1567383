//! What a peer's output says it saw of a storm.

use crate::{
    condition::Condition,
    storm::{Storm, StormReport},
};

/// Events of the storm in a peer's output.
pub fn count(condition: Condition, storm: &StormReport, stdout: &str) -> u64 {
    let pid = storm.pid.to_string();
    let mut lines = stdout.lines();
    let n = match (condition, storm.storm) {
        // PID COMM FD ERR PATH
        (Condition::LibbpfTools, s) if s.is_open() => lines
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&crate::storm::WORKER)
                    && f.last().is_some_and(|p| storm.is_requested(p))
            })
            .count(),
        // PCOMM PID PPID RET ARGS
        (Condition::LibbpfTools, Storm::Exec) => lines
            .filter(|l| l.split_whitespace().nth(2) == Some(pid.as_str()))
            .count(),
        // PID COMM IP SADDR DADDR DPORT
        (Condition::LibbpfTools, Storm::Connect) => {
            let port = storm.port.map(|p| p.to_string()).unwrap_or_default();
            lines
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.first() == Some(&pid.as_str()) && f.last() == Some(&port.as_str())
                })
                .count()
        }
        (Condition::BpftraceCount, _) => {
            return lines
                .find_map(|l| l.strip_prefix("@: "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        }
        (Condition::BpftracePrintf, s) if s.is_open() => {
            lines.filter(|l| storm.is_requested(l)).count()
        }
        (Condition::BpftracePrintf, Storm::Exec) => {
            let program = storm.program.as_deref().unwrap_or("");
            lines.filter(|l| *l == program).count()
        }
        (Condition::BpftracePrintf, Storm::Connect) => lines.filter(|l| *l == "0").count(),
        _ => 0,
    };
    n as u64
}

/// The sum of "Lost N events" reports in a tool's output.
pub fn lost_reports(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| {
            let at = line.to_ascii_lowercase().find("lost ")?;
            line[at + 5..]
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}
