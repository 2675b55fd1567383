//! Running a storm and recognising its events.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use serde_json::Value;

/// The thread name the storm's syscalls are made under (`zastava-storm` sets it).
pub const WORKER: &str = "zstorm-work";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storm {
    Open,
    Exec,
    Connect,
}

impl Storm {
    pub const ALL: [Storm; 3] = [Storm::Open, Storm::Exec, Storm::Connect];

    pub fn name(self) -> &'static str {
        match self {
            Storm::Open => "open",
            Storm::Exec => "exec",
            Storm::Connect => "connect",
        }
    }

    pub fn describe(self, ops: u64) -> String {
        match self {
            Storm::Open => format!("{ops} × open+close of 4 files"),
            Storm::Exec => format!("{ops} × fork+exec of /bin/true"),
            Storm::Connect => format!("{ops} × TCP connect to 127.0.0.1"),
        }
    }
}

/// What `zastava-storm` printed.
#[derive(Clone, Debug, Deserialize)]
pub struct StormReport {
    pub storm: Storm,
    pub ops: u64,
    pub failed: u64,
    pub seconds: f64,
    pub pid: u32,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub program: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

pub fn run(binary: &Path, storm: Storm, ops: u64) -> Result<StormReport> {
    let out = Command::new(binary)
        .args([storm.name(), &ops.to_string()])
        .output()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} {ops} failed: {}",
            binary.display(),
            storm.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let report: StormReport = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "unexpected storm output {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    if report.failed > 0 {
        bail!(
            "{} of {} {} operations failed",
            report.failed,
            ops,
            storm.name()
        );
    }
    Ok(report)
}

/// The parts of an edge record a storm's events are recognised by.
#[derive(Clone, Debug)]
pub struct Edge {
    edge_type: String,
    pid: u64,
    ppid: Option<u64>,
    path: Option<String>,
    address: Option<String>,
    port: Option<u64>,
    result: Option<i64>,
    count: u64,
}

impl Edge {
    /// The edge a record describes, if a storm could have made it: edges of the storm's
    /// worker thread, and every exec.
    pub fn of(record: &Value) -> Option<Edge> {
        if record["eventType"] != "edge" {
            return None;
        }
        let edge_type = record["edgeType"].as_str()?;
        let process = &record["process"];
        if process["comm"] != WORKER && edge_type != "syscall" {
            return None;
        }
        Some(Edge {
            edge_type: edge_type.to_owned(),
            pid: process["pid"].as_u64()?,
            ppid: process["ppid"].as_u64(),
            path: record["path"].as_str().map(str::to_owned),
            address: record["address"].as_str().map(str::to_owned),
            port: record["port"].as_u64(),
            result: record["result"].as_i64(),
            count: record["count"].as_u64().unwrap_or(1),
        })
    }
}

impl StormReport {
    /// Occurrences of the storm's operations `edge` stands for (0 if it is not one).
    pub fn matches(&self, edge: &Edge) -> u64 {
        let pid = u64::from(self.pid);
        let is_one = match self.storm {
            Storm::Open => {
                edge.edge_type == "fs"
                    && edge.pid == pid
                    && edge.result.is_some_and(|r| r >= 0)
                    && edge.path.as_ref().is_some_and(|p| self.paths.contains(p))
            }
            Storm::Exec => {
                edge.edge_type == "syscall"
                    && edge.ppid == Some(pid)
                    && edge.path.is_some()
                    && edge.path == self.program
            }
            Storm::Connect => {
                edge.edge_type == "net"
                    && edge.pid == pid
                    && edge.address.as_deref() == Some("127.0.0.1")
                    && edge.port.is_some()
                    && edge.port == self.port.map(u64::from)
                    && edge.result == Some(0)
            }
        };
        if is_one {
            edge.count
        } else {
            0
        }
    }
}
