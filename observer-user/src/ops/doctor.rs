//! `zastava-observer doctor`: can the observer run here, and if not, what to do about it.

use std::{fmt, fs, path::Path};

use crate::{
    kernel::{
        btf::{self, VMLINUX_BTF},
        privileges,
        probes::{self as probes, ProbeConfig, Probes, DEFAULT_RING_BYTES, PROBES_OBJECT},
        tracefs::{self, Tracefs},
    },
    record::HostIdentity,
    workload::{cri, docker},
};

/// Oldest kernel with everything the probes use (BPF ring buffer: 5.8).
const MIN_KERNEL: (u32, u32) = (5, 8);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, with a limitation.
    Warn,
    /// The observer cannot run.
    Fail,
}

#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do, for Warn and Fail.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn bad(
        name: &'static str,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check {
            name,
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        write!(f, "[{mark}] {:<22} {}", self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n       fix: {fix}")?;
        }
        Ok(())
    }
}

/// Runs every check. The observer can run when none failed. `cri_endpoint` and
/// `docker_endpoint` are checked as `run` would use them (`None`: the default sockets;
/// `Some("")`: not wanted).
pub fn run(
    host_root: &Path,
    cri_endpoint: Option<&str>,
    docker_endpoint: Option<&str>,
) -> Vec<Check> {
    let (btf_check, kernel) = kernel_view();
    let mut checks = vec![kernel_version(), btf_check];
    let privileged = privileges();
    let privileged_ok = privileged.status != Status::Fail;
    checks.push(privileged);

    // `run` mounts tracefs when it is missing; so does the check, so that the answer is
    // the one `run` would get.
    match Tracefs::find_or_mount() {
        Ok((tracefs, mounted)) => {
            let how = if mounted {
                " (was not mounted; mounted it)"
            } else {
                ""
            };
            checks.push(Check::ok(
                "tracefs",
                format!("mounted at {}{how}", tracefs.root().display()),
            ));
            checks.extend(tracepoints(&tracefs));
            match tracefs::probe_offsets(&tracefs) {
                Ok(offsets) => {
                    checks.push(Check::ok("tracepoint layouts", "every field the probes read is where they read it"));
                    if privileged_ok {
                        checks.push(load_probes(offsets, kernel));
                    }
                }
                Err(err) => checks.push(Check::bad(
                    "tracepoint layouts",
                    Status::Fail,
                    err.to_string(),
                    "this kernel's tracepoint layout is not supported; please report it with the output of this command",
                )),
            }
        }
        Err(err) => checks.push(Check::bad(
            "tracefs",
            Status::Fail,
            err.to_string(),
            "mount -t tracefs tracefs /sys/kernel/tracing (mounting it failed)",
        )),
    }
    checks.push(cgroup_v2());
    let docker_socket = match docker_endpoint {
        Some("") => None,
        given => docker::resolve_endpoint(given),
    };
    checks.push(container_runtime(cri_endpoint, docker_socket.is_some()));
    checks.push(docker_engine(docker_endpoint, docker_socket.as_deref()));
    let host = HostIdentity::read(host_root, None);
    checks.push(if host.warnings.is_empty() {
        Check::ok(
            "host identity",
            format!(
                "node={} hostId={} osRelease={}",
                host.node, host.host_id, host.os_release
            ),
        )
    } else {
        Check::bad(
            "host identity",
            Status::Warn,
            host.warnings.join("; "),
            "see the message",
        )
    });
    checks
}

fn kernel_version() -> Check {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    match parse_kernel_version(release) {
        Some(v) if v >= MIN_KERNEL => Check::ok("kernel", format!("Linux {release}")),
        Some(_) => Check::bad(
            "kernel",
            Status::Fail,
            format!(
                "Linux {release} is older than {}.{}",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
            "the BPF ring buffer needs Linux 5.8 or newer",
        ),
        None => Check::bad(
            "kernel",
            Status::Warn,
            format!("cannot parse kernel release {release:?}"),
            "check `uname -r`",
        ),
    }
}

pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The kernel view: every struct member the probes read, from the kernel's BTF.
fn kernel_view() -> (Check, Option<observer_common::KernelOffsets>) {
    match btf::resolve(Path::new(VMLINUX_BTF)) {
        Ok(resolved) => {
            let members: Vec<String> = resolved
                .members
                .iter()
                .map(|(_, member, offset)| format!("{member}@{offset}"))
                .collect();
            (
                Check::ok(
                    "kernel BTF",
                    format!(
                        "kernel view: {} struct members resolved from {VMLINUX_BTF} ({})",
                        members.len(),
                        members.join(", ")
                    ),
                ),
                Some(resolved.offsets),
            )
        }
        Err(err) => (
            Check::bad(
                "kernel BTF",
                Status::Warn,
                format!("{err}; the observer runs without the kernel view"),
                "without BTF, paths, argv and socket addresses are read from the caller's memory: \
                 relative paths stay unresolved, argv of freshly forked processes may be missing, \
                 and every such edge is marked (pathResolved: false, pathFromCaller, \
                 addressFromCaller); use a kernel built with CONFIG_DEBUG_INFO_BTF=y for exact edges",
            ),
            None,
        ),
    }
}

fn privileges() -> Check {
    let caps = privileges::effective().unwrap_or(0);
    let missing = privileges::missing_for_probes(caps);
    if !missing.is_empty() {
        return Check::bad(
            "privileges",
            Status::Fail,
            format!(
                "effective capabilities {caps:#x} lack {} (or CAP_SYS_ADMIN)",
                missing.join("+")
            ),
            "run as root, or grant CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH",
        );
    }
    let degraded = privileges::missing_for_processes(caps);
    if let Some((cap, lost)) = degraded.first() {
        return Check::bad(
            "privileges",
            Status::Warn,
            format!("can load probes, but lacks {cap}: {lost}"),
            "grant CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH",
        );
    }
    Check::ok("privileges", format!("effective capabilities {caps:#x}"))
}

fn tracepoints(tracefs: &Tracefs) -> Vec<Check> {
    let all: Vec<&probes::Attachment> = probes::attachments(true)
        .chain(probes::WITHOUT_KERNEL_VIEW.iter())
        .collect();
    let missing: Vec<String> = all
        .iter()
        .filter(|a| {
            !tracefs
                .root()
                .join("events")
                .join(a.category)
                .join(a.tracepoint)
                .join("format")
                .exists()
        })
        .map(|a| format!("{}:{}", a.category, a.tracepoint))
        .collect();
    if missing.is_empty() {
        vec![Check::ok(
            "tracepoints",
            format!("all {} present", {
                let mut names: Vec<&str> = all.iter().map(|a| a.tracepoint).collect();
                names.sort_unstable();
                names.dedup();
                names.len()
            }),
        )]
    } else {
        vec![Check::bad(
            "tracepoints",
            Status::Fail,
            format!("missing: {}", missing.join(", ")),
            "syscall tracepoints need CONFIG_FTRACE_SYSCALLS=y; sched and task tracepoints are always built in",
        )]
    }
}

fn load_probes(
    offsets: observer_common::TracepointOffsets,
    kernel: Option<observer_common::KernelOffsets>,
) -> Check {
    let config = ProbeConfig {
        ring_buffer_bytes: DEFAULT_RING_BYTES,
        self_tgid: std::process::id(),
        offsets,
        filter_mode: observer_common::filter::OFF,
        dedup_window_ns: 0,
        kernel,
    };
    let programs = probes::attachments(kernel.is_some()).count();
    let view = if kernel.is_some() {
        "with the kernel view"
    } else {
        "without the kernel view"
    };
    match Probes::load(PROBES_OBJECT, &config) {
        Ok(_) => Check::ok(
            "BPF load",
            format!("ring buffer created and all {programs} programs verified ({view})"),
        ),
        Err(err) => Check::bad(
            "BPF load",
            Status::Fail,
            super::causes::with_causes(&err),
            "see the error; check that the kernel has CONFIG_BPF_SYSCALL=y and that no LSM policy blocks bpf()",
        ),
    }
}

fn cgroup_v2() -> Check {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    match mounts
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
        .and_then(|l| l.split_whitespace().nth(1))
    {
        Some(at) => Check::ok("cgroup v2", format!("mounted at {at}")),
        None => Check::bad(
            "cgroup v2",
            Status::Warn,
            "no cgroup2 mount",
            "events carry cgroup ids of the v2 hierarchy; mount cgroup2 to attribute them to containers",
        ),
    }
}

fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(future))
        .map_err(|err| format!("cannot start an async runtime: {err}"))
}

/// The CRI runtime, decided as `run` decides it (`docker`: a Docker Engine socket exists).
fn container_runtime(endpoint: Option<&str>, docker: bool) -> Check {
    const NAME: &str = "container runtime";
    if endpoint == Some("") {
        return Check::ok(NAME, "no CRI runtime wanted (--no-cri)");
    }
    let Some(socket) = cri::resolve_endpoint(endpoint) else {
        let tried = cri::DEFAULT_ENDPOINTS.join(", ");
        if docker {
            return Check::ok(
                NAME,
                format!("no CRI socket found (tried {tried}); Docker Engine describes containers"),
            );
        }
        return Check::bad(
            NAME,
            Status::Warn,
            format!("no CRI socket found (tried {tried})"),
            "pass --cri-endpoint PATH to attribute events to pods; without it events are attributed to the node",
        );
    };
    let connected = block_on(cri::CriClient::connect(
        &socket,
        std::time::Duration::from_secs(2),
    ));
    match connected {
        Err(err) => Check::bad(NAME, Status::Fail, err, "see the error"),
        Ok(Ok((_, v))) => Check::ok(
            NAME,
            format!(
                "{} {} (CRI {}) at {}",
                v.name,
                v.version,
                v.api_version,
                socket.display()
            ),
        ),
        Ok(Err(err)) if endpoint.is_none() && docker && err.is_not_cri() => Check::ok(
            NAME,
            format!("{err}: Docker Engine's containerd, without CRI; Docker describes containers"),
        ),
        Ok(Err(err)) => Check::bad(
            NAME,
            Status::Fail,
            err.to_string(),
            "start the runtime, fix --cri-endpoint, or pass --no-cri to run without one",
        ),
    }
}

/// Docker Engine: its version, API version, and whether it streams container events.
/// Never a failure: `run` carries on without it, retrying.
fn docker_engine(endpoint: Option<&str>, socket: Option<&Path>) -> Check {
    const NAME: &str = "docker engine";
    if endpoint == Some("") {
        return Check::ok(NAME, "not used (--no-docker)");
    }
    let Some(socket) = socket else {
        return Check::ok(
            NAME,
            format!(
                "no Docker Engine socket found (tried {})",
                docker::DEFAULT_ENDPOINTS.join(", ")
            ),
        );
    };
    let timeout = std::time::Duration::from_secs(2);
    let probe = block_on(async {
        let (client, version) = docker::DockerClient::connect(socket, timeout).await?;
        let events = client.events().await.map(drop);
        Ok::<_, docker::DockerError>((version, events))
    });
    let fix = "start dockerd, fix --docker-endpoint, or pass --no-docker; meanwhile `run` sends events of Docker containers with their container id only and keeps trying";
    match probe {
        Err(err) => Check::bad(NAME, Status::Fail, err, "see the error"),
        Ok(Err(err)) => Check::bad(NAME, Status::Warn, err.to_string(), fix),
        Ok(Ok((v, Ok(())))) => Check::ok(
            NAME,
            format!(
                "Docker Engine {} (API {}) at {}; container events are streamed",
                v.version,
                v.api_version,
                socket.display()
            ),
        ),
        Ok(Ok((v, Err(err)))) => Check::bad(
            NAME,
            Status::Warn,
            format!(
                "Docker Engine {} (API {}) at {}, but the event stream is refused: {err}",
                v.version,
                v.api_version,
                socket.display()
            ),
            "containers are listed every docker.poll_interval instead; check dockerd's log",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.8.0"), Some((5, 8)));
        assert_eq!(parse_kernel_version("4.19"), Some((4, 19)));
        assert_eq!(parse_kernel_version("garbage"), None);
        assert!((5, 4) < MIN_KERNEL && (6, 1) > MIN_KERNEL);
    }
}
