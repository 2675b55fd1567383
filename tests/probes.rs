//! Privileged tests: the real probes in the running kernel, observed through the real
//! `zastava-observer` binary. Each test causes a unique action and asserts the exact content
//! of the event it produced.

mod common;

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::{
        fd::AsRawFd as _,
        unix::{fs::PermissionsExt as _, net::UnixListener, net::UnixStream},
    },
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{my_pid, pid_of, str_at, unique, Observer, TempDir};
use serde_json::{json, Value};

/// An observer attributing everything to the node (no container runtime), whatever runs on
/// the machine.
fn host_observer(extra: &[&str]) -> Observer {
    Observer::start(&[&["--no-cri"], extra].concat())
}

fn is_open_of(path: &str) -> impl Fn(&Value) -> bool + '_ {
    move |e| e["edgeType"] == "fs" && e["path"] == path
}

/// Every edge event carries the node identity and the process.
fn assert_common_fields(e: &Value) {
    let host_id = fs::read_to_string("/etc/machine-id").unwrap();
    let host_id = host_id.trim();
    assert_eq!(e["eventType"], "edge");
    assert!(str_at(e, "/eventId").contains('-'), "{e}");
    assert_eq!(e["enrichment"], "host");
    assert_eq!(e["hostId"], host_id);
    assert_eq!(e["workloadId"], format!("host:{host_id}"));
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(e["node"], hostname.trim());
    assert!(
        e["osRelease"].as_str().is_some_and(|s| !s.is_empty()),
        "{e}"
    );
    let ts = str_at(e, "/timestamp");
    // 2026-11-22T05:41:21.123456789Z
    assert_eq!(ts.len(), 30, "timestamp {ts}");
    assert!(
        ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "timestamp {ts}"
    );
    for field in ["pid", "tid", "uid", "gid", "comm", "exe", "args"] {
        assert!(
            e["process"].get(field).is_some(),
            "process.{field} missing: {e}"
        );
    }
}

#[test]
fn exec_of_a_unique_binary_reports_its_exact_path_and_argv() {
    let dir = TempDir::new("zastava-exec");
    let binary = dir.path().join(unique("true"));
    fs::copy("/bin/true", &binary).unwrap();
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
    let binary = binary.to_str().unwrap().to_owned();
    let marker = unique("arg");

    let observer = host_observer(&[]);
    let status = Command::new(&binary)
        .args([marker.as_str(), "two words", ""])
        .status()
        .unwrap();
    assert!(status.success());
    let expected_args = json!([binary, marker, "two words", ""]);
    let exec = observer.wait_for("exec of the unique binary", |e| {
        e["edgeType"] == "syscall" && e["path"] == binary.as_str()
    });
    let stopped = observer.stop();

    assert_common_fields(&exec);
    assert_eq!(exec["syscall"], "execve");
    assert_eq!(exec["args"], expected_args);
    assert!(exec.get("argsTruncated").is_none(), "{exec}");
    assert_eq!(exec["process"]["exe"], binary.as_str());
    assert_eq!(exec["process"]["args"], expected_args);
    assert_eq!(exec["process"]["ppid"], my_pid());
    assert_eq!(exec["process"]["uid"], 0);
    let true_id = common::build_id_of("/bin/true");
    assert_eq!(
        exec["code_id"],
        true_id.as_str(),
        "the GNU build-id of the exec'd binary"
    );
    let execs = stopped
        .events
        .iter()
        .filter(|e| e["edgeType"] == "syscall" && e["path"] == binary.as_str())
        .count();
    assert_eq!(execs, 1, "exactly one exec edge for one exec");
}

#[test]
fn exec_argv_is_read_whole_from_the_new_image_up_to_its_byte_bound() {
    let marker = unique("many");
    // Thirty arguments: all of them, whatever their number, within 4 KiB.
    let args: Vec<String> = (0..30).map(|i| format!("{marker}-{i}")).collect();
    // And one argv longer than 4 KiB: cut at the bound and flagged.
    let long: Vec<String> = (0..40)
        .map(|i| format!("{marker}-long-{i:03}-{}", "x".repeat(100)))
        .collect();
    let observer = host_observer(&[]);
    assert!(Command::new("/bin/true")
        .args(&args)
        .status()
        .unwrap()
        .success());
    assert!(Command::new("/bin/true")
        .args(&long)
        .status()
        .unwrap()
        .success());
    let exec = observer.wait_for("exec with 30 args", |e| {
        e["edgeType"] == "syscall" && e["args"][1] == args[0].as_str()
    });
    let cut = observer.wait_for("exec with a 4 KiB argv", |e| {
        e["edgeType"] == "syscall" && e["args"][1] == long[0].as_str()
    });
    observer.stop();

    let captured: Vec<&str> = exec["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mut expected = vec!["/bin/true"];
    expected.extend(args.iter().map(String::as_str));
    assert_eq!(captured, expected);
    assert!(exec.get("argsTruncated").is_none(), "{exec}");

    // argv is "/bin/true\0" then each argument and its NUL: the first 4096 bytes of that.
    let mut bytes = b"/bin/true\0".to_vec();
    for a in &long {
        bytes.extend_from_slice(a.as_bytes());
        bytes.push(0);
    }
    bytes.truncate(4096);
    let within: Vec<String> = bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8(a.to_vec()).unwrap())
        .collect();
    assert_eq!(
        cut["args"],
        json!(within),
        "the first 4 KiB of argv, the last argument cut"
    );
    assert_eq!(cut["argsTruncated"], true);
}

#[test]
fn open_by_absolute_path_reports_path_flags_and_fd() {
    let dir = TempDir::new("zastava-open");
    let path = dir.path().join(unique("abs"));
    let path_str = path.to_str().unwrap().to_owned();

    let observer = host_observer(&[]);
    let mut written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    written.write_all(b"x").unwrap();
    let write_fd = written.as_raw_fd();
    let read = File::open(&path).unwrap();
    let read_fd = read.as_raw_fd();
    let missing = format!("{path_str}.missing");
    assert!(File::open(&missing).is_err());

    let create = observer.wait_for("open for writing", |e| {
        is_open_of(&path_str)(e) && e["flags"] != libc::O_RDONLY | libc::O_CLOEXEC
    });
    let reopen = observer.wait_for("open for reading", |e| {
        is_open_of(&path_str)(e) && e["flags"] == libc::O_RDONLY | libc::O_CLOEXEC
    });
    let failed = observer.wait_for("failed open", is_open_of(&missing));
    observer.stop();

    assert_common_fields(&create);
    assert_eq!(pid_of(&create), my_pid());
    assert_eq!(create["syscall"], "openat");
    assert_eq!(
        create["flags"],
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC
    );
    assert_eq!(
        create["flagNames"],
        json!(["O_WRONLY", "O_CREAT", "O_TRUNC", "O_CLOEXEC"])
    );
    assert_eq!(create["result"], write_fd);
    assert_eq!(reopen["result"], read_fd);
    assert_eq!(pid_of(&reopen), my_pid());
    assert_eq!(failed["result"], -libc::ENOENT);
    drop((written, read));
}

#[test]
fn long_paths_are_reported_whole_and_overlong_ones_truncated_and_flagged() {
    let dir = TempDir::new("zastava-long");
    // 64 nested directories of 20 characters: a path of some 1,400 bytes, too long for the
    // small record, short enough for the large one.
    let mut deep = dir.path().to_path_buf();
    for i in 0..64 {
        deep.push(format!("d{i:02}-{}", "x".repeat(16)));
    }
    fs::create_dir_all(&deep).unwrap();
    let long = deep.join(unique("long"));
    let long_str = long.to_str().unwrap().to_owned();
    assert!(
        long_str.len() > 1_000 && long_str.len() < 4_000,
        "{}",
        long_str.len()
    );
    // Longer than the kernel accepts (PATH_MAX, 4096) and than the record holds.
    let overlong = format!("{}/{}", dir.path().display(), "y".repeat(5_000));
    let overlong_c = std::ffi::CString::new(overlong.as_str()).unwrap();

    let observer = host_observer(&[]);
    let file = File::create(&long).unwrap();
    // SAFETY: a NUL-terminated path; the call fails and opens nothing.
    let rc = unsafe { libc::open(overlong_c.as_ptr(), libc::O_RDONLY) };
    assert_eq!(rc, -1);
    let long_open = observer.wait_for("open of a long path", is_open_of(&long_str));
    let prefix = &overlong[..200];
    let overlong_open = observer.wait_for("open of an overlong path", |e| {
        e["edgeType"] == "fs"
            && pid_of(e) == my_pid()
            && e["path"].as_str().is_some_and(|p| p.starts_with(prefix))
    });
    observer.stop();

    assert_eq!(long_open["result"], file.as_raw_fd());
    assert!(long_open.get("pathTruncated").is_none(), "{long_open}");
    assert_eq!(overlong_open["pathTruncated"], true, "{overlong_open}");
    assert_eq!(overlong_open["result"], -libc::ENAMETOOLONG);
    // What fits the record (its capacity less the terminator) is kept, exactly.
    assert_eq!(
        overlong_open["path"].as_str().unwrap(),
        &overlong[..observer_common::PATH_CAPACITY - 1]
    );
}

#[test]
fn relative_opens_are_made_absolute() {
    let dir = TempDir::new("zastava-rel");
    let by_dirfd = unique("dirfd");
    let by_cwd = unique("cwd");
    fs::write(dir.path().join(&by_dirfd), "a").unwrap();
    fs::write(dir.path().join(&by_cwd), "b").unwrap();

    let observer = host_observer(&[]);
    // openat(dirfd, "name") from this process.
    let dirfd = File::open(dir.path()).unwrap();
    let name = std::ffi::CString::new(by_dirfd.as_str()).unwrap();
    // SAFETY: valid fd and NUL-terminated path.
    let fd = unsafe { libc::openat(dirfd.as_raw_fd(), name.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0);
    // open("name") relative to the working directory of a shell that stays alive until
    // its event has been seen.
    let mut shell = Command::new("/bin/sh")
        .args(["-c", &format!("exec 3< {by_cwd}; read line")])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let dirfd_path = format!("{}/{by_dirfd}", dir.path().display());
    let cwd_path = format!("{}/{by_cwd}", dir.path().display());
    let via_dirfd = observer.wait_for("openat relative to a dirfd", is_open_of(&dirfd_path));
    let via_cwd = observer.wait_for("open relative to cwd", is_open_of(&cwd_path));
    drop(shell.stdin.take());
    shell.wait().unwrap();
    observer.stop();
    // SAFETY: fd was returned by openat above.
    unsafe { libc::close(fd) };

    assert_eq!(via_dirfd["result"], fd);
    assert_eq!(pid_of(&via_dirfd), my_pid());
    assert!(via_dirfd.get("pathResolved").is_none());
    assert_eq!(pid_of(&via_cwd), u64::from(shell.id()));
    assert_eq!(via_cwd["result"], 3);
}

fn connect_tcp(observer: &Observer, listener_addr: SocketAddr) -> Value {
    let listener = TcpListener::bind(listener_addr).unwrap();
    let addr = listener.local_addr().unwrap();
    let stream = TcpStream::connect(addr).unwrap();
    let port = addr.port();
    let ip = addr.ip().to_string();
    let event = observer.wait_for("tcp connect", |e| {
        e["edgeType"] == "net" && e["port"] == port && e["address"] == ip.as_str()
    });
    drop(stream);
    event
}

#[test]
fn connect_over_ipv4_and_ipv6_reports_address_port_and_success() {
    let observer = host_observer(&[]);
    let v4 = connect_tcp(&observer, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let v6 = connect_tcp(&observer, SocketAddr::from((Ipv6Addr::LOCALHOST, 0)));
    observer.stop();

    assert_common_fields(&v4);
    assert_eq!(v4["syscall"], "connect");
    assert_eq!(v4["family"], "inet");
    assert_eq!(v4["address"], "127.0.0.1");
    assert_eq!(v4["result"], 0);
    assert_eq!(pid_of(&v4), my_pid());
    assert_eq!(v6["family"], "inet6");
    assert_eq!(v6["address"], "::1");
    assert_eq!(v6["result"], 0);
}

#[test]
fn connect_to_a_closed_port_reports_econnrefused() {
    let port = {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.local_addr().unwrap().port()
    };
    let observer = host_observer(&[]);
    let err = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    let refused = observer.wait_for("refused connect", |e| {
        e["edgeType"] == "net" && e["port"] == port
    });
    observer.stop();
    assert_eq!(refused["result"], -libc::ECONNREFUSED);
    assert_eq!(refused["address"], "127.0.0.1");
    assert_eq!(pid_of(&refused), my_pid());
}

#[test]
fn connect_to_a_unix_socket_reports_its_path() {
    let dir = TempDir::new("zastava-unix");
    let socket = dir.path().join(unique("sock"));
    let listener = UnixListener::bind(&socket).unwrap();
    let socket_str = socket.to_str().unwrap().to_owned();
    let observer = host_observer(&[]);
    let stream = UnixStream::connect(&socket).unwrap();
    let event = observer.wait_for("unix connect", |e| {
        e["edgeType"] == "net" && e["path"] == socket_str.as_str()
    });
    observer.stop();
    drop((stream, listener));
    assert_eq!(event["family"], "unix");
    assert_eq!(event["result"], 0);
    assert!(
        event.get("port").is_none() && event.get("address").is_none(),
        "{event}"
    );
    assert_eq!(pid_of(&event), my_pid());
}

#[test]
fn a_process_started_before_the_observer_is_known_from_proc() {
    let dir = TempDir::new("zastava-pre");
    let file = dir.path().join(unique("pre"));
    fs::write(&file, "x").unwrap();
    let file_str = file.to_str().unwrap().to_owned();
    let script = format!("read go; exec 3< {file_str}; read done");
    let mut shell = Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let shell_pid = u64::from(shell.id());
    let exe = fs::read_link(format!("/proc/{shell_pid}/exe")).unwrap();

    let observer = host_observer(&[]);
    writeln!(shell.stdin.as_mut().unwrap(), "go").unwrap();
    let event = observer.wait_for("open by the older shell", is_open_of(&file_str));
    drop(shell.stdin.take());
    shell.wait().unwrap();
    observer.stop();

    assert_eq!(pid_of(&event), shell_pid);
    assert_eq!(event["process"]["args"], json!(["/bin/sh", "-c", script]));
    assert_eq!(event["process"]["exe"], exe.to_str().unwrap());
    assert_eq!(event["process"]["ppid"], my_pid());
}

#[test]
fn the_observer_never_reports_itself() {
    // With the self filter off, the observer's own /proc reads (it seeds its process table
    // after attaching) are visible; with it on, none of its activity is.
    let unfiltered = host_observer(&["--observe-self"]);
    let own = unfiltered.pid();
    let seen = unfiltered.wait_for("the observer's own open", |e| pid_of(e) == u64::from(own));
    assert_eq!(seen["edgeType"], "fs");
    unfiltered.stop();

    let observer = host_observer(&[]);
    let own = u64::from(observer.pid());
    // Give it work: events from a new process make it look that process up.
    Command::new("/bin/true").status().unwrap();
    let true_path = common::canonical("/bin/true");
    observer.wait_for("an unrelated exec", |e| {
        e["edgeType"] == "syscall" && e["path"] == true_path.as_str()
    });
    let stopped = observer.stop();
    let own_events: Vec<&Value> = stopped.events.iter().filter(|e| pid_of(e) == own).collect();
    assert!(
        own_events.is_empty(),
        "the observer reported itself: {own_events:?}"
    );
}

#[test]
fn a_full_ring_buffer_counts_every_lost_event() {
    let dir = TempDir::new("zastava-storm");
    let path = dir.path().join(unique("storm"));
    fs::write(&path, "x").unwrap();
    let path_str = path.to_str().unwrap().to_owned();
    const OPENS: u64 = 20_000;

    // One page of ring buffer holds about a dozen open records.
    let observer = host_observer(&[
        "--ring-buffer-bytes",
        "4096",
        // In-kernel dedup would absorb a storm of one edge; this test needs it to overflow.
        "--set",
        "observer.kernel_dedup_window=0",
    ]);
    for _ in 0..OPENS {
        drop(File::open(&path).unwrap());
    }
    let stopped = observer.stop();

    // Repeats of one edge are merged into a record with a count.
    let delivered = common::occurrences(&stopped.events, is_open_of(&path_str));
    let ring_full = stopped.summary["kernel"]["ring_full"]["open"]
        .as_u64()
        .unwrap();
    assert!(
        ring_full > 0,
        "a one-page ring under a storm must overflow: {}",
        stopped.summary
    );
    assert!(delivered < OPENS, "some opens must have been lost");
    // Every one of our opens is either delivered or counted (other processes' opens may be
    // among the counted losses too).
    assert!(
        delivered + ring_full >= OPENS,
        "delivered {delivered} + counted {ring_full} < {OPENS}: a loss went uncounted"
    );
    assert!(stopped.summary["lost"].as_u64().unwrap() >= ring_full);
    assert!(
        stopped
            .stderr
            .contains("events lost in the kernel (ring_full"),
        "{}",
        stopped.stderr
    );
}

#[test]
fn repeats_are_counted_even_while_the_ring_buffer_is_full() {
    let dir = TempDir::new("zastava-repeats-full");
    let repeated = dir.path().join(unique("repeated"));
    fs::write(&repeated, "x").unwrap();
    let repeated_str = repeated.to_str().unwrap().to_owned();
    const ROUNDS: u64 = 5_000;

    // A one-page ring; repeats stay held back for the whole test.
    let observer = host_observer(&[
        "--ring-buffer-bytes",
        "4096",
        "--set",
        "observer.kernel_dedup_window=\"60s\"",
    ]);
    // The first open's record can itself meet a ring the rest of the machine filled: it is
    // then counted as lost, and the next open is reported in its place. Open until one is
    // seen; every open counts.
    let mut opens = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while observer
        .events_matching(is_open_of(&repeated_str))
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "no open of the repeated path reported"
        );
        drop(File::open(&repeated).unwrap());
        opens += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each round: the repeated open, then an open of a path never seen (it fails, and is
    // still an edge of its own). The new paths overflow the ring.
    for i in 0..ROUNDS {
        drop(File::open(&repeated).unwrap());
        assert!(File::open(dir.path().join(format!("missing-{i}"))).is_err());
    }
    let stopped = observer.stop();

    let ring_full = stopped.summary["kernel"]["ring_full"]["open"]
        .as_u64()
        .unwrap();
    assert!(
        ring_full > 0,
        "the new paths must overflow a one-page ring: {}",
        stopped.summary
    );
    // Every repeat was judged before a reservation was tried, so none was lost to the full
    // ring: all are reported, with counts.
    assert_eq!(
        common::occurrences(&stopped.events, is_open_of(&repeated_str)),
        ROUNDS + opens,
        "{}",
        stopped.summary
    );
}

#[test]
fn exec_by_relative_path_is_reported_with_the_absolute_path() {
    let dir = TempDir::new("zastava-relexec");
    let name = unique("rel-sleep");
    fs::copy("/bin/sleep", dir.path().join(&name)).unwrap();
    fs::set_permissions(dir.path().join(&name), fs::Permissions::from_mode(0o755)).unwrap();
    let absolute = format!("{}/{name}", dir.path().display());

    let observer = host_observer(&[]);
    // The kernel sees "./name"; the new image lives until its event has been seen, so its
    // working directory can be read. (A relative exec of a process that is already gone is
    // reported as given, with pathResolved: false.)
    let mut child = Command::new(format!("./{name}"))
        .arg("30")
        .current_dir(dir.path())
        .spawn()
        .unwrap();
    let exec = observer.wait_for("relative exec", |e| {
        e["edgeType"] == "syscall" && e["args"][0] == format!("./{name}").as_str()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    observer.stop();

    assert_eq!(exec["path"], absolute.as_str(), "{exec}");
    assert_eq!(exec["args"], json!([format!("./{name}"), "30"]));
    assert!(exec.get("pathResolved").is_none(), "{exec}");
    assert_eq!(pid_of(&exec), u64::from(child.id()));
}

#[test]
fn fexecve_is_reported_as_execveat_with_the_real_binary() {
    use std::os::unix::process::CommandExt as _;

    let dir = TempDir::new("zastava-fexec");
    let binary = dir.path().join(unique("sleep"));
    fs::copy("/bin/sleep", &binary).unwrap();
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
    let file = File::open(&binary).unwrap();
    let fd = file.as_raw_fd();
    // Everything the child needs is built before fork: pre_exec may not allocate.
    let marker = unique("fexec");
    // The marker is argv[0]: sleep ignores it, and any other argument would end it.
    let arg0 = std::ffi::CString::new(marker.as_str()).unwrap();
    let arg1 = std::ffi::CString::new("30").unwrap();
    let argv = [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    let argv_addr = argv.as_ptr() as usize;
    let envp_addr = envp.as_ptr() as usize;

    let observer = host_observer(&[]);
    let mut command = Command::new("/bin/false");
    // SAFETY: the closure only makes a raw syscall; on success the image is replaced and
    // the spawn completes as for any exec (the status pipe is close-on-exec).
    unsafe {
        command.pre_exec(move || {
            libc::syscall(
                libc::SYS_execveat,
                fd,
                c"".as_ptr(),
                argv_addr as *const *const libc::c_char,
                envp_addr as *const *const libc::c_char,
                libc::AT_EMPTY_PATH,
            );
            Err(std::io::Error::last_os_error())
        });
    }
    let mut child = command.spawn().unwrap();
    let exec = observer.wait_for("fexecve", |e| {
        e["edgeType"] == "syscall" && e["args"][0] == marker.as_str()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    observer.stop();
    drop((file, arg0, arg1));

    assert_eq!(exec["syscall"], "execveat");
    assert_eq!(exec["path"], binary.to_str().unwrap(), "{exec}");
    assert_eq!(exec["args"], json!([marker, "30"]));
    assert_eq!(pid_of(&exec), u64::from(child.id()));
}

#[test]
fn openat2_is_reported_with_flags_from_open_how() {
    let dir = TempDir::new("zastava-openat2");
    let path = dir.path().join(unique("how"));
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // struct open_how { u64 flags; u64 mode; u64 resolve; }
    let how: [u64; 3] = [
        (libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC) as u64,
        0o600,
        0,
    ];

    let observer = host_observer(&[]);
    // SAFETY: valid path and open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            how.as_ptr(),
            std::mem::size_of_val(&how),
        )
    };
    assert!(fd >= 0, "openat2: {}", std::io::Error::last_os_error());
    let event = observer.wait_for("openat2", is_open_of(path.to_str().unwrap()));
    observer.stop();
    // SAFETY: fd came from openat2 above.
    unsafe { libc::close(fd as i32) };

    assert_eq!(event["syscall"], "openat2");
    assert_eq!(
        event["flags"],
        libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC
    );
    assert_eq!(event["result"], fd);
    assert_eq!(pid_of(&event), my_pid());
}

#[test]
fn the_legacy_open_and_creat_are_reported_as_what_they_are() {
    // musl's open() makes the `open` syscall; creat() is its own.
    let dir = TempDir::new("zastava-legacy-open");
    let created = dir.path().join(unique("creat"));
    let missing = dir.path().join(unique("missing"));
    let c_created = std::ffi::CString::new(created.to_str().unwrap()).unwrap();
    let c_missing = std::ffi::CString::new(missing.to_str().unwrap()).unwrap();

    let observer = host_observer(&[]);
    // SAFETY: valid NUL-terminated paths; the descriptors are closed below.
    let (creat_fd, open_fd, open_err) = unsafe {
        let creat_fd = libc::syscall(libc::SYS_creat, c_created.as_ptr(), 0o640);
        let open_fd = libc::syscall(libc::SYS_open, c_created.as_ptr(), libc::O_RDONLY);
        let open_err = libc::syscall(libc::SYS_open, c_missing.as_ptr(), libc::O_RDONLY);
        (creat_fd, open_fd, open_err)
    };
    assert!(creat_fd >= 0 && open_fd >= 0 && open_err == -1);
    let created_str = created.to_str().unwrap();
    let creat = observer.wait_for("creat", |e| {
        is_open_of(created_str)(e) && e["syscall"] == "creat"
    });
    let open = observer.wait_for("open", |e| {
        is_open_of(created_str)(e) && e["syscall"] == "open"
    });
    let failed = observer.wait_for("failed open", is_open_of(missing.to_str().unwrap()));
    observer.stop();
    // SAFETY: both came from the syscalls above.
    unsafe {
        libc::close(creat_fd as i32);
        libc::close(open_fd as i32);
    }

    assert_eq!(
        creat["flags"],
        libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC
    );
    assert_eq!(
        creat["flagNames"],
        json!(["O_WRONLY", "O_CREAT", "O_TRUNC"])
    );
    assert_eq!(creat["result"], creat_fd);
    assert_eq!(open["flags"], libc::O_RDONLY);
    assert_eq!(open["result"], open_fd);
    assert_eq!(failed["syscall"], "open");
    assert_eq!(failed["result"], -libc::ENOENT);
    assert_eq!(failed["pathFromCaller"], true);
    for e in [&creat, &open, &failed] {
        assert_eq!(pid_of(e), my_pid());
        assert_eq!(common::schema_violations(e), None);
    }
}

#[test]
fn a_non_blocking_connect_reports_einprogress() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let observer = host_observer(&[]);
    // SAFETY: plain socket calls on a socket this test owns.
    let (fd, rc, errno) = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        assert!(fd >= 0);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&raw const addr).cast(),
            std::mem::size_of_val(&addr) as u32,
        );
        (fd, rc, std::io::Error::last_os_error().raw_os_error())
    };
    let event = observer.wait_for("non-blocking connect", |e| {
        e["edgeType"] == "net" && e["port"] == port
    });
    observer.stop();
    // SAFETY: fd from socket() above.
    unsafe { libc::close(fd) };

    assert_eq!((rc, errno), (-1, Some(libc::EINPROGRESS)));
    assert_eq!(event["result"], -libc::EINPROGRESS);
    assert_eq!(event["address"], "127.0.0.1");
}

#[test]
fn a_forked_child_keeps_its_fork_time_parent_and_inherited_image() {
    let dir = TempDir::new("zastava-fork");
    let file = dir.path().join(unique("child"));
    fs::write(&file, "x").unwrap();
    let file_str = file.to_str().unwrap().to_owned();
    // The subshell is a fork of sh (no exec); sh exits at once, so the subshell is
    // reparented before it opens the file. /proc would then say ppid 1; the fork record
    // says sh.
    let script = format!("(sleep 0.3; exec 3< {file_str}) & exit 0");

    let observer = host_observer(&[]);
    let mut shell = Command::new("/bin/sh")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    let shell_pid = u64::from(shell.id());
    shell.wait().unwrap();
    let event = observer.wait_for("open by the orphaned subshell", is_open_of(&file_str));
    observer.stop();

    assert_ne!(
        pid_of(&event),
        shell_pid,
        "the open comes from the subshell"
    );
    assert_eq!(event["process"]["ppid"], shell_pid);
    assert_eq!(event["process"]["args"], json!(["/bin/sh", "-c", script]));
    // The executable the kernel mapped: /bin/sh resolved.
    assert_eq!(
        event["process"]["exe"],
        common::canonical("/bin/sh").as_str()
    );
}

#[test]
fn repeated_opens_are_held_back_in_the_kernel_and_still_counted_in_full() {
    let dir = TempDir::new("zastava-dedup");
    let path = dir.path().join(unique("hot"));
    fs::write(&path, "x").unwrap();
    let path_str = path.to_str().unwrap().to_owned();
    const OPENS: u64 = 1000;

    let observer = host_observer(&[]);
    for _ in 0..OPENS {
        drop(File::open(&path).unwrap());
    }
    let stopped = observer.stop();

    let records = stopped
        .events
        .iter()
        .filter(|e| is_open_of(&path_str)(e))
        .count() as u64;
    let occurrences = common::occurrences(&stopped.events, is_open_of(&path_str));
    let held_back = stopped.summary["kernel"]["deduplicated"]["open"]
        .as_u64()
        .unwrap();
    assert_eq!(
        occurrences, OPENS,
        "every open is reported, {records} records for {OPENS}"
    );
    assert!(
        held_back >= OPENS - 10,
        "only {held_back} repeats held back in the kernel"
    );
    assert!(records <= 5, "{records} records crossed into the batches");
    let merged = stopped
        .events
        .iter()
        .find(|e| is_open_of(&path_str)(e) && e["count"].as_u64().unwrap_or(1) > 1)
        .expect("a record carrying repeats");
    assert!(str_at(merged, "/firstSeen") <= str_at(merged, "/lastSeen"));
    assert_eq!(
        stopped.summary["delivery"]["seen"],
        stopped.summary["delivery"]["shipped"]
    );
}
