//! `zastava-observer run`: start ([`startup`]: connect to the container runtime, load and
//! attach the probes, open the outputs), run the pipeline until a signal or the deadline
//! ([`event_loop`]), then stop without losing what is in flight and account for every
//! record ([`shutdown`]).

mod event_loop;
mod memory;
mod shutdown;
mod startup;

use std::{
    io,
    path::PathBuf,
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc, sync::watch, task::JoinHandle};
use zastava_platform::backend::BackendError;

use crate::{
    config::Config,
    kernel::{probes::ProbeError, tracefs::TracefsError, KernelCounters, Probes},
    ops::Summary,
    output::{spool::SpoolError, Delivery},
    pipeline::Pipeline,
    workload::{cri::CriError, watcher::Update},
};

/// A started daemon: everything the event loop and the shutdown work on.
struct Running {
    pipeline: Pipeline,
    /// Absent with `zastava.attach.enabled = false`.
    probes: Option<Probes>,
    ring: Option<AsyncFd<RingBuf<MapData>>>,
    /// Updates from the runtime watcher; `None` once the watcher is gone (or without one).
    updates: Option<mpsc::Receiver<Update>>,
    delivery: Arc<Delivery>,
    /// The sink tasks, and how to tell them to stop by a deadline.
    sinks: Option<SinkTasks>,
    ready: Arc<AtomicBool>,
    /// In-kernel dedup window in nanoseconds (0: off, or no probes).
    dedup_window_ns: u64,
    shutdown_grace: Duration,
    /// The kernel counters as last reported (losses are warned about as they grow).
    reported: KernelCounters,
    /// SIGINT and SIGTERM, installed before the daemon says it is ready.
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
}

/// One task per sink, and how to tell them all to stop by a deadline.
struct SinkTasks {
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<Option<Instant>>,
}

/// What `run` needs besides the configuration.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config: Config,
    pub duration: Option<Duration>,
    pub stats_json: Option<PathBuf>,
    /// Report the daemon's own activity (diagnostics only).
    pub observe_self: bool,
}

/// Why the daemon could not start or stopped early. A message says what failed (and on
/// further lines what to do), never its cause again: the cause is its source, and
/// [`crate::ops::causes::with_causes`] writes the chain.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("cannot use the kernel view\n  observer.kernel_view = on needs the kernel's BTF; set it to auto to run without the kernel view")]
    KernelView(#[source] crate::kernel::btf::BtfError),
    #[error("cannot use the CRI runtime\n  set cri.endpoint (--cri-endpoint PATH) for another socket, or cri.enabled = false (--no-cri) to run without a container runtime")]
    Cri(#[source] CriError),
    #[error(
        "--namespace and --exclude-namespace need a container runtime to learn pods from, but {0}"
    )]
    FilterWithoutCri(&'static str),
    #[error("no cgroup v2 hierarchy is mounted; mount cgroup2 (or set observer.cgroup_root) to attribute events to containers")]
    NoCgroup2,
    #[error("observer.cgroup_root {} is not a cgroup v2 hierarchy and has none below it; set it to where cgroup2 is mounted (on hybrid hosts, the `unified` directory)", .0.display())]
    NotCgroup2(PathBuf),
    #[error(
        "cannot load the probes: this process lacks {} (effective capabilities {caps:#x}); \
         loading and attaching them takes CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN). \
         In Kubernetes, add them to the container's securityContext.capabilities.add \
         (deploy/kubernetes/base/observer.yaml grants BPF, PERFMON, SYS_PTRACE and DAC_READ_SEARCH); \
         under systemd, to CapabilityBoundingSet; with Docker, --cap-add",
        missing.join(" and ")
    )]
    Privileges {
        caps: u64,
        missing: Vec<&'static str>,
    },
    #[error(
        "nothing to observe: zastava.attach.enabled is false and no container runtime is connected; set zastava.attach.enabled = true to observe the node's processes"
    )]
    NothingToObserve,
    #[error("cannot write events")]
    Output(#[source] io::Error),
    #[error("cannot watch the ring buffer")]
    Poll(#[source] io::Error),
    #[error("cannot install signal handlers")]
    Signal(#[source] io::Error),
    #[error(transparent)]
    Backend(BackendError),
    #[error(transparent)]
    Spool(SpoolError),
    #[error(
        "cannot serve the admin endpoint on {addr}\n  set admin.addr to a free loopback address"
    )]
    Admin {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the summary to {path}")]
    StatsJson {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl RunError {
    /// 2 when the configuration cannot work on this node (restarting will not help; a
    /// service manager should stop trying), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::NothingToObserve
            | RunError::FilterWithoutCri(_)
            | RunError::KernelView(_)
            | RunError::Privileges { .. } => 2,
            _ => 1,
        }
    }
}

pub async fn run(options: RunOptions) -> Result<Summary, RunError> {
    let started = std::time::Instant::now();
    let mut daemon = startup::start(&options).await?;
    daemon.run_until_stopped(options.duration).await?;
    let summary = daemon.shut_down(started).await?;
    if let Some(path) = &options.stats_json {
        let json = serde_json::to_vec_pretty(&summary).map_err(io::Error::other);
        json.and_then(|bytes| std::fs::write(path, bytes))
            .map_err(|source| RunError::StatsJson {
                path: path.clone(),
                source,
            })?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::RunError;
    use crate::{kernel::btf::BtfError, ops::causes::with_causes};

    #[test]
    fn a_fatal_error_gives_each_cause_once_and_its_advice_last() {
        let err = RunError::Output(io::Error::other("disk full"));
        assert_eq!(err.to_string(), "cannot write events");
        assert_eq!(with_causes(&err), "cannot write events: disk full");

        let err = RunError::Admin {
            addr: "127.0.0.1:9465".parse().unwrap(),
            source: io::Error::new(io::ErrorKind::AddrInUse, "address in use"),
        };
        assert_eq!(
            with_causes(&err),
            "cannot serve the admin endpoint on 127.0.0.1:9465: address in use\n  set admin.addr to a free loopback address"
        );

        // The BTF error writes its own source into its message: it is not repeated.
        let err = RunError::KernelView(BtfError::Read {
            path: "/sys/kernel/btf/vmlinux".into(),
            source: io::Error::other("gone"),
        });
        assert_eq!(
            with_causes(&err),
            "cannot use the kernel view: cannot read the kernel's BTF at /sys/kernel/btf/vmlinux: gone (the kernel needs CONFIG_DEBUG_INFO_BTF=y)\n  observer.kernel_view = on needs the kernel's BTF; set it to auto to run without the kernel view"
        );
    }
}
