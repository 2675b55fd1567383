//! A syscall storm: the traced workload of the benchmark.
//!
//! `zastava-storm open|open-relative|open-distinct|exec|connect|getppid N` makes N opens
//! (+ close) of a few files by absolute or relative path, N failing opens of paths never
//! opened before, N fork+execs of `/bin/true`, N TCP connects to a loopback listener of its
//! own, or N `getppid` calls, in a thread named `zstorm-work` (so tracers can select exactly
//! the storm's syscalls by `comm`), and prints one JSON line: what it did, how long the loop
//! took, and what a tracer should have seen.

use std::{
    ffi::CString,
    fs,
    io::{self, Write as _},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use zastava_bench::storm::WORKER;

#[derive(Parser)]
#[command(about = "Make N opens, execs or connects and report how long they took")]
struct Cli {
    #[command(subcommand)]
    storm: Storm,
}

#[derive(Subcommand)]
enum Storm {
    /// N times: open one of a few files read-only, then close it.
    Open {
        count: u64,
        /// How many distinct files the opens cycle through.
        #[arg(long, default_value_t = 4)]
        files: usize,
        /// Where the files are made (a fresh directory under /tmp by default).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// N times: open one of a few files read-only by a relative path (the process first
    /// changes into their directory), then close it.
    OpenRelative {
        count: u64,
        #[arg(long, default_value_t = 4)]
        files: usize,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// N times: open a path that was never opened before and does not exist (every
    /// operation a new edge: nothing to deduplicate anywhere).
    OpenDistinct {
        count: u64,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// N times: fork, exec the program, wait for it.
    Exec {
        count: u64,
        #[arg(long, default_value = "/bin/true")]
        program: PathBuf,
    },
    /// N times: a TCP connect to a listener on 127.0.0.1, closed with a reset.
    Connect { count: u64 },
    /// N times: `getppid`, a syscall no tracer traces: what every process pays once any
    /// syscall tracepoint is attached.
    Getppid { count: u64 },
}

/// What the worker thread runs: the loop, which returns how many operations failed.
type Job = Box<dyn FnOnce() -> u64 + Send>;

fn main() {
    let cli = Cli::parse();
    // Setup happens here, on the main thread, so that the worker makes only the storm's
    // syscalls.
    let mut cleanup = None;
    let mut scratch = |dir: Option<PathBuf>| {
        let own = dir.is_none();
        let dir = dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("zastava-storm-{}", std::process::id()))
        });
        if own {
            cleanup = Some(dir.clone());
        }
        dir
    };
    let prepared = match cli.storm {
        Storm::Open { count, files, dir } => {
            prepare_open(count, files.max(1), &scratch(dir), false)
        }
        Storm::OpenRelative { count, files, dir } => {
            prepare_open(count, files.max(1), &scratch(dir), true)
        }
        Storm::OpenDistinct { count, dir } => prepare_distinct(count, &scratch(dir)),
        Storm::Exec { count, program } => prepare_exec(count, &program),
        Storm::Connect { count } => prepare_connect(count),
        Storm::Getppid { count } => Ok(prepare_getppid(count)),
    };
    let result = prepared.and_then(|(mut report, job)| {
        let worker = std::thread::Builder::new()
            .name(WORKER.into())
            .spawn(move || {
                let start = Instant::now();
                let failed = job();
                (failed, start.elapsed().as_secs_f64())
            })?;
        let (failed, seconds) = worker
            .join()
            .map_err(|_| anyhow::anyhow!("the storm thread panicked"))?;
        report["failed"] = failed.into();
        report["seconds"] = seconds.into();
        report["pid"] = std::process::id().into();
        Ok(report)
    });
    if let Some(dir) = cleanup {
        let _ = fs::remove_dir_all(dir);
    }
    match result {
        Ok(report) => {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{report}");
        }
        Err(err) => {
            eprintln!("zastava-storm: {err:#}");
            std::process::exit(1);
        }
    }
}

fn prepare_open(count: u64, files: usize, dir: &Path, relative: bool) -> Result<(Value, Job)> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = fs::canonicalize(dir)?;
    let names: Vec<String> = (0..files).map(|i| format!("f{i}")).collect();
    let paths: Vec<PathBuf> = names.iter().map(|name| dir.join(name)).collect();
    for path in &paths {
        fs::write(path, b"storm\n").with_context(|| format!("create {}", path.display()))?;
    }
    let cpaths: Vec<CString> = if relative {
        // The working directory is the process's: the worker inherits it.
        std::env::set_current_dir(&dir)
            .with_context(|| format!("change into {}", dir.display()))?;
        names
            .iter()
            .map(|n| CString::new(n.as_bytes()))
            .collect::<Result<_, _>>()?
    } else {
        paths
            .iter()
            .map(|p| CString::new(p.as_os_str().as_bytes()))
            .collect::<Result<_, _>>()?
    };
    let job = move || {
        let mut failed = 0;
        for i in 0..count {
            let path = &cpaths[(i % cpaths.len() as u64) as usize];
            // SAFETY: a NUL-terminated path; the fd is closed at once.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                failed += 1;
            } else {
                // SAFETY: fd was just opened by this thread.
                unsafe { libc::close(fd) };
            }
        }
        failed
    };
    let report = if relative {
        json!({ "storm": "open-relative", "ops": count, "paths": paths, "requested": names })
    } else {
        json!({ "storm": "open", "ops": count, "paths": paths })
    };
    Ok((report, Box::new(job)))
}

/// Every operation opens `DIR/miss-<i>`, which does not exist: `ENOENT`, a new edge each.
fn prepare_distinct(count: u64, dir: &Path) -> Result<(Value, Job)> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = fs::canonicalize(dir)?;
    let prefix = format!("{}/miss-", dir.display());
    // Made before the loop, so that the loop times only the syscalls.
    let paths: Vec<CString> = (0..count)
        .map(|i| CString::new(format!("{prefix}{i}")))
        .collect::<Result<_, _>>()?;
    let job = move || {
        let mut failed = 0;
        for path in &paths {
            // SAFETY: a NUL-terminated path; an fd, should one be opened, is closed.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd >= 0 {
                failed += 1;
                unsafe { libc::close(fd) };
            } else if io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT) {
                failed += 1;
            }
        }
        failed
    };
    let report = json!({ "storm": "open-distinct", "ops": count, "prefix": prefix });
    Ok((report, Box::new(job)))
}

fn prepare_getppid(count: u64) -> (Value, Job) {
    let job = move || {
        let parent = std::os::unix::process::parent_id();
        let mut failed = 0;
        for _ in 0..count {
            // SAFETY: getppid has no preconditions. Called directly: libc does not cache it.
            let ppid = unsafe { libc::getppid() };
            if ppid as u32 != parent {
                failed += 1;
            }
        }
        failed
    };
    (json!({ "storm": "getppid", "ops": count }), Box::new(job))
}

fn prepare_exec(count: u64, program: &Path) -> Result<(Value, Job)> {
    let program = fs::canonicalize(program)
        .with_context(|| format!("{} does not exist", program.display()))?;
    let path = CString::new(program.as_os_str().as_bytes())?;
    let job = move || {
        let argv = [path.as_ptr(), std::ptr::null()];
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        let mut failed = 0;
        for _ in 0..count {
            // SAFETY: the child only calls execve and _exit, both async-signal-safe, on
            // memory prepared before the fork.
            let child = unsafe { libc::fork() };
            if child == 0 {
                unsafe {
                    libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                    libc::_exit(127);
                }
            }
            if child < 0 {
                failed += 1;
                continue;
            }
            let mut status = 0;
            // SAFETY: waiting for the child just made.
            let waited = unsafe { libc::waitpid(child, &mut status, 0) };
            if waited != child || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                failed += 1;
            }
        }
        failed
    };
    let report = json!({ "storm": "exec", "ops": count, "program": program });
    Ok((report, Box::new(job)))
}

/// A raw file descriptor closed on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by this value.
        unsafe { libc::close(self.0) };
    }
}

fn check(ret: libc::c_int, what: &str) -> Result<libc::c_int> {
    if ret < 0 {
        bail!("{what}: {}", io::Error::last_os_error());
    }
    Ok(ret)
}

fn loopback(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
        },
        sin_zero: [0; 8],
    }
}

const SOCKADDR_IN_LEN: libc::socklen_t = size_of::<libc::sockaddr_in>() as libc::socklen_t;

fn prepare_connect(count: u64) -> Result<(Value, Job)> {
    // The listener: a deep backlog, so that no SYN waits for a retransmission. It lives
    // until the process exits.
    // SAFETY: plain socket calls on a descriptor this function owns.
    let listener = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    )?;
    let addr = loopback(0);
    check(
        unsafe { libc::bind(listener, (&raw const addr).cast(), SOCKADDR_IN_LEN) },
        "bind 127.0.0.1:0",
    )?;
    check(unsafe { libc::listen(listener, 4096) }, "listen")?;
    let mut bound = loopback(0);
    let mut len = SOCKADDR_IN_LEN;
    check(
        unsafe { libc::getsockname(listener, (&raw mut bound).cast(), &mut len) },
        "getsockname",
    )?;
    let port = u16::from_be(bound.sin_port);
    std::thread::Builder::new()
        .name("zstorm-accept".into())
        .spawn(move || loop {
            // SAFETY: accepting on the listener, which is never closed.
            let fd = unsafe {
                libc::accept4(
                    listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                unsafe { libc::close(fd) };
            }
        })?;

    let job = move || {
        let target = loopback(port);
        // Reset on close: no TIME_WAIT, so the storm does not run out of ports.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let mut failed = 0;
        for _ in 0..count {
            // SAFETY: as above; the socket is closed when `socket` drops.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                failed += 1;
                continue;
            }
            let socket = Fd(fd);
            let ret =
                unsafe { libc::connect(socket.0, (&raw const target).cast(), SOCKADDR_IN_LEN) };
            if ret < 0 {
                failed += 1;
            }
            unsafe {
                libc::setsockopt(
                    socket.0,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    size_of::<libc::linger>() as libc::socklen_t,
                )
            };
        }
        failed
    };
    let report = json!({ "storm": "connect", "ops": count, "port": port });
    Ok((report, Box::new(job)))
}
