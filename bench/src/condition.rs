//! The conditions a storm runs under: no tracer, the observer (three builds or settings),
//! and the peers, and the command line that starts each.

use std::path::Path;

use crate::storm::Storm;

/// The conditions a storm runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// No tracer.
    Baseline,
    /// `zastava-observer run`, its whole pipeline writing NDJSON to a file.
    Zastava,
    /// The same without the in-kernel dedup of repeated edges.
    ZastavaNoKernelDedup,
    /// An earlier build of `zastava-observer` (`--observer-before`), run the same way.
    ZastavaBefore,
    /// Debian's libbpf-tools: opensnoop, execsnoop, tcpconnect, output to a file.
    LibbpfTools,
    /// A bpftrace one-liner counting the storm's syscall tracepoint in a map.
    BpftraceCount,
    /// A bpftrace one-liner printing a line per event to a file.
    BpftracePrintf,
}

impl Condition {
    pub const ALL: [Condition; 7] = [
        Condition::Baseline,
        Condition::Zastava,
        Condition::ZastavaNoKernelDedup,
        Condition::ZastavaBefore,
        Condition::LibbpfTools,
        Condition::BpftraceCount,
        Condition::BpftracePrintf,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Condition::Baseline => "baseline",
            Condition::Zastava => "zastava",
            Condition::ZastavaNoKernelDedup => "zastava, no kernel dedup",
            Condition::ZastavaBefore => "zastava before",
            Condition::LibbpfTools => "libbpf-tools",
            Condition::BpftraceCount => "bpftrace count",
            Condition::BpftracePrintf => "bpftrace printf",
        }
    }

    pub fn is_zastava(self) -> bool {
        matches!(
            self,
            Condition::Zastava | Condition::ZastavaNoKernelDedup | Condition::ZastavaBefore
        )
    }

    /// Whether the condition says anything about the storm: no peer traces `getppid`
    /// (only the floor's tax and the observer's are measured), and without repeats the
    /// kernel dedup has nothing to do.
    pub fn applies(self, storm: Storm) -> bool {
        match self {
            Condition::LibbpfTools | Condition::BpftracePrintf => storm.is_traced(),
            Condition::ZastavaNoKernelDedup => {
                !matches!(storm, Storm::Getppid | Storm::OpenDistinct)
            }
            _ => true,
        }
    }

    /// The command line this condition runs for a storm (None for the baseline).
    /// `observer` is the build the condition runs.
    pub fn command(self, storm: Storm, observer: &Path, dir: &Path) -> Option<Vec<String>> {
        let worker = crate::storm::WORKER;
        let bpftrace = |program: String| {
            vec![
                "bpftrace".to_owned(),
                "-e".to_owned(),
                format!("BEGIN {{ printf(\"ready\\n\"); }} {program}"),
            ]
        };
        // The floor: one tracepoint that sees the storm's event (for getppid, which nobody
        // traces, the one the open storms count: any syscall tracepoint costs every
        // syscall of every process its slow path).
        let probe = match storm {
            Storm::Open | Storm::OpenRelative | Storm::OpenDistinct | Storm::Getppid => {
                "tracepoint:syscalls:sys_enter_openat"
            }
            Storm::Exec => "tracepoint:syscalls:sys_enter_execve",
            Storm::Connect => "tracepoint:syscalls:sys_exit_connect",
        };
        let path = |name: &str| dir.join(name).display().to_string();
        Some(match self {
            Condition::Baseline => return None,
            Condition::Zastava | Condition::ZastavaNoKernelDedup | Condition::ZastavaBefore => {
                let mut cmd = vec![
                    observer.display().to_string(),
                    "run".into(),
                    "--no-cri".into(),
                    "--ndjson".into(),
                    path("events.ndjson"),
                    "--stats-json".into(),
                    path("stats.json"),
                    // One file: the bench reads all of it.
                    "--set".into(),
                    "ndjson.max_file_bytes=\"64G\"".into(),
                ];
                if self == Condition::ZastavaNoKernelDedup {
                    cmd.extend(["--set".into(), "observer.kernel_dedup_window=0".into()]);
                }
                cmd
            }
            // Line-buffered, as when followed with `tail -f`; fully buffered, the header
            // that says the tool is attached would not reach the file.
            Condition::LibbpfTools => vec![
                "stdbuf".to_owned(),
                "-oL".to_owned(),
                match storm {
                    Storm::Exec => "execsnoop".to_owned(),
                    Storm::Connect => "tcpconnect".to_owned(),
                    _ => "opensnoop".to_owned(),
                },
            ],
            Condition::BpftraceCount => {
                bpftrace(format!("{probe} /comm == \"{worker}\"/ {{ @ = count(); }}"))
            }
            Condition::BpftracePrintf => bpftrace(match storm {
                Storm::Connect => {
                    format!("{probe} /comm == \"{worker}\"/ {{ printf(\"%d\\n\", args->ret); }}")
                }
                _ => format!(
                    "{probe} /comm == \"{worker}\"/ {{ printf(\"%s\\n\", str(args->filename)); }}"
                ),
            }),
        })
    }
}
