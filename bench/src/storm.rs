//! Running a storm and recognising its events.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use serde_json::Value;

/// The thread name the storm's syscalls are made under (`zastava-storm` sets it).
pub const WORKER: &str = "zstorm-work";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Storm {
    Open,
    OpenRelative,
    OpenDistinct,
    Exec,
    Connect,
    Getppid,
}

impl Storm {
    pub const ALL: [Storm; 6] = [
        Storm::Open,
        Storm::OpenRelative,
        Storm::OpenDistinct,
        Storm::Exec,
        Storm::Connect,
        Storm::Getppid,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Storm::Open => "open",
            Storm::OpenRelative => "open-relative",
            Storm::OpenDistinct => "open-distinct",
            Storm::Exec => "exec",
            Storm::Connect => "connect",
            Storm::Getppid => "getppid",
        }
    }

    pub fn describe(self, ops: u64) -> String {
        match self {
            Storm::Open => format!("{ops} × open+close of 4 files"),
            Storm::OpenRelative => format!("{ops} × open+close of 4 files by relative path"),
            Storm::OpenDistinct => format!("{ops} × failing open of a path never opened before"),
            Storm::Exec => format!("{ops} × fork+exec of /bin/true"),
            Storm::Connect => format!("{ops} × TCP connect to 127.0.0.1"),
            Storm::Getppid => format!("{ops} × getppid (traced by nobody)"),
        }
    }

    /// Whether a tracer is expected to report the storm's operations (`getppid` is the
    /// syscall every process pays for once any syscall tracepoint is attached; nobody
    /// traces it).
    pub fn is_traced(self) -> bool {
        self != Storm::Getppid
    }

    pub fn is_open(self) -> bool {
        matches!(
            self,
            Storm::Open | Storm::OpenRelative | Storm::OpenDistinct
        )
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
    /// The absolute paths of the files a storm opens.
    #[serde(default)]
    pub paths: Vec<String>,
    /// The names the storm passes to `open`, when they are not `paths` (relative opens).
    #[serde(default)]
    pub requested: Vec<String>,
    /// What every path of the distinct-path storm starts with.
    #[serde(default)]
    pub prefix: Option<String>,
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

impl StormReport {
    /// Whether `name`, as a peer prints the name a process passed to `open`, is one the
    /// storm passed.
    pub fn is_requested(&self, name: &str) -> bool {
        match self.storm {
            Storm::Open => self.paths.iter().any(|p| p == name),
            Storm::OpenRelative => self.requested.iter().any(|p| p == name),
            Storm::OpenDistinct => self.is_distinct_path(name),
            _ => false,
        }
    }

    fn is_distinct_path(&self, path: &str) -> bool {
        self.prefix.as_deref().is_some_and(|prefix| {
            path.strip_prefix(prefix)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
    }

    /// Operations a tracer should report.
    pub fn expected(&self) -> u64 {
        if self.storm.is_traced() {
            self.ops
        } else {
            0
        }
    }
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
            // Relative opens too: the observer reports the file the kernel opened.
            Storm::Open | Storm::OpenRelative => {
                edge.edge_type == "fs"
                    && edge.pid == pid
                    && edge.result.is_some_and(|r| r >= 0)
                    && edge.path.as_ref().is_some_and(|p| self.paths.contains(p))
            }
            Storm::OpenDistinct => {
                edge.edge_type == "fs"
                    && edge.pid == pid
                    && edge.result == Some(-i64::from(libc::ENOENT))
                    && edge
                        .path
                        .as_deref()
                        .is_some_and(|p| self.is_distinct_path(p))
            }
            Storm::Getppid => false,
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
