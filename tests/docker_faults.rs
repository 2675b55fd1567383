//! A Docker socket that is broken — not Docker at all, answering garbage, closed to the
//! observer — is named in the log and counted, and the observer carries on with host
//! attribution. Faults a real engine cannot produce on demand are played by scripted
//! sockets; the permission fault and `doctor` use a real dockerd. Also: the `docker run`
//! command deployment.md gives is one the observer accepts.

mod common;

use std::{
    io::{Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixListener},
    process::Command,
};

use common::{
    dockerd::{Dockerd, BUSYBOX},
    observer_bin, require_root, unique, Metrics, Observer, TempDir,
};

/// An exec whose argv[1] is `marker`.
fn exec_with(marker: &str) -> impl Fn(&serde_json::Value) -> bool + '_ {
    move |e| e["eventType"] == "edge" && e["edgeType"] == "syscall" && e["args"][1] == marker
}

/// The value of `name` whose labels include every one of `labels` (`k="v"`), if exported.
fn metric(metrics: &Metrics, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.0.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        let have: Vec<&str> = set.split(',').collect();
        labels
            .iter()
            .all(|l| have.contains(l))
            .then(|| value.trim().parse().ok())?
    })
}

/// An exec of this host is reported, attributed to the host.
fn assert_host_exec_reported(observer: &Observer) {
    let marker = unique("host");
    assert!(Command::new("/bin/true")
        .arg(&marker)
        .status()
        .unwrap()
        .success());
    let exec = observer.wait_for("a host exec", exec_with(&marker));
    assert_eq!(exec["enrichment"], "host", "{exec}");
    assert!(
        exec["workloadId"].as_str().unwrap().starts_with("host:"),
        "{exec}"
    );
}

/// The observer carries on beside a broken Docker socket: host events stay `host`, the
/// failure is logged clearly and counted.
fn assert_carries_on(observer: &Observer, reason: &str, message: &str) {
    observer.wait_for_log(message);
    assert_host_exec_reported(observer);
    let metrics = observer.scrape();
    let errors = metric(
        &metrics,
        "zastava_container_runtime_errors_total",
        &["runtime=\"docker\"", &format!("reason=\"{reason}\"")],
    );
    assert!(errors.is_some_and(|n| n >= 1.0), "{reason}: {}", metrics.0);
    assert_eq!(
        metric(
            &metrics,
            "zastava_container_runtime_connected",
            &["runtime=\"docker\""]
        ),
        Some(0.0),
        "{}",
        metrics.0
    );
}

const METRICS: [&str; 2] = ["--metrics-addr", "127.0.0.1:0"];

#[test]
fn a_socket_that_is_not_docker_is_named_and_the_observer_carries_on() {
    require_root();
    let dir = TempDir::new("zastava-notdocker");
    let socket = dir.path().join("docker.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // A line-based service, as if docker.sock pointed at something else entirely.
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(b"220 mail.example ESMTP ready\r\n");
        }
    });
    let path = socket.to_str().unwrap();
    let observer =
        Observer::start(&[&["--no-cri", "--docker-endpoint", path], &METRICS[..]].concat());
    assert_carries_on(
        &observer,
        "not_docker",
        &format!("{path}: this is not a Docker Engine API socket (it does not answer HTTP/1.1"),
    );
    let stopped = observer.stop();
    assert_eq!(stopped.summary["docker"]["connected"], false);
    assert_eq!(stopped.summary["docker"]["endpoint"], path);
}

/// Which reply of a scripted engine is not JSON.
#[derive(Clone, Copy)]
enum Garbage {
    Version,
    Listing,
    Event,
}

/// An observer against a scripted engine answering garbage where `garbage` says.
fn against_garbage(garbage: Garbage) -> (TempDir, String, Observer) {
    require_root();
    let dir = TempDir::new("zastava-garbage");
    let socket = dir.path().join("docker.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || garbage_engine(stream, garbage));
        }
    });
    let path = socket.to_str().unwrap().to_owned();
    let observer =
        Observer::start(&[&["--no-cri", "--docker-endpoint", &path], &METRICS[..]].concat());
    (dir, path, observer)
}

#[test]
fn an_engine_that_answers_garbage_json_is_named_and_the_observer_carries_on() {
    let (_dir, path, observer) = against_garbage(Garbage::Listing);
    assert_carries_on(
        &observer,
        "bad_reply",
        &format!("{path}: GET /containers/json: the reply is not what Docker Engine sends"),
    );
    let stopped = observer.stop();
    assert!(stopped.summary["docker"]["disconnects"].as_u64().unwrap() >= 1);

    // Garbage for the engine's version: the socket is not taken for Docker's.
    let (_dir, path, observer) = against_garbage(Garbage::Version);
    assert_carries_on(
        &observer,
        "not_docker",
        &format!("{path}: this is not a Docker Engine API socket (GET /version did not answer Docker's JSON"),
    );
    let stopped = observer.stop();
    assert_eq!(stopped.summary["docker"]["connected"], false);
}

#[test]
fn garbage_on_the_event_stream_is_named_counted_and_the_stream_taken_again() {
    let (_dir, path, observer) = against_garbage(Garbage::Event);
    let message = format!("{path}: GET /events: the reply is not what Docker Engine sends: ");
    observer.wait_for_log(&message);
    observer.wait_for_log("(event starts ");
    assert_host_exec_reported(&observer);
    // Each broken stream is counted, and the stream is taken again after it: a second
    // garbage event comes only on a new stream.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let metrics = observer.scrape();
        let errors = metric(
            &metrics,
            "zastava_container_runtime_errors_total",
            &["runtime=\"docker\"", "reason=\"bad_reply\""],
        );
        if errors.is_some_and(|n| n >= 2.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the event stream was not taken again:\n{}",
            metrics.0
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let stopped = observer.stop();
    assert!(
        stopped.summary["docker"]["disconnects"].as_u64().unwrap() >= 2,
        "{}",
        stopped.summary["docker"]
    );
}

/// Answers `/version` as Docker 20.10 does, the container listing with an empty list and
/// holds the event stream open — except for the reply `garbage` names, which is bytes that
/// are not JSON.
fn garbage_engine(mut stream: std::os::unix::net::UnixStream, garbage: Garbage) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let reply = |stream: &mut std::os::unix::net::UnixStream, body: &str| {
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nApi-Version: 1.41\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    };
    if path == "/version" {
        match garbage {
            Garbage::Version => reply(&mut stream, r#"{"Version": 20.10.24, "ApiVersion"#),
            _ => reply(
                &mut stream,
                r#"{"Version":"20.10.24","ApiVersion":"1.41","MinAPIVersion":"1.12"}"#,
            ),
        }
    } else if path.starts_with("/v1.41/events?") {
        let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
        if let Garbage::Event = garbage {
            let event = "{\"Type\": container, \"Action\": \"start\"}\n";
            let _ = write!(stream, "{:x}\r\n{event}\r\n", event.len());
        }
        // Held until the observer hangs up.
        let _ = stream.read(&mut byte);
    } else if path == "/v1.41/containers/json?all=1" {
        match garbage {
            Garbage::Listing => {
                reply(&mut stream, "[{\"Id\": \"0123\", \"State\": runn\u{fffd}");
            }
            _ => reply(&mut stream, "[]"),
        }
    } else {
        let _ = write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        );
    }
}

#[test]
fn a_socket_the_observer_may_not_open_is_named_and_it_recovers_once_allowed() {
    let dockerd = Dockerd::start();
    let socket = dockerd.socket.to_str().unwrap().to_owned();
    // Owned by another user and closed to others; the observer runs without
    // CAP_DAC_OVERRIDE, as a hardened unit does, so root's permission checks apply.
    let chown = Command::new("chown")
        .args(["65534:65534", &socket])
        .status()
        .unwrap();
    assert!(chown.success());
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).unwrap();
    let observer = Observer::start_wrapped(
        &["setpriv", "--bounding-set=-dac_override", "--"],
        &[&["--no-cri", "--docker-endpoint", &socket], &METRICS[..]].concat(),
    );
    assert_carries_on(
        &observer,
        "permission_denied",
        &format!("{socket}: permission denied: the observer may not connect to Docker Engine's socket; run it as root, or give it write access to the socket (its group, usually `docker`)"),
    );
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    observer.wait_for_log("container runtime back: docker");
    let marker = unique("allowed");
    let name = unique("allowed");
    let id = dockerd.run(&["--name", &name, BUSYBOX, "/bin/true", &marker]);
    let exec = observer.wait_for("the container's exec", |e| {
        e["containerId"] == id.as_str() && exec_with(&marker)(e)
    });
    let stopped = observer.stop();
    assert_eq!(exec["workloadId"], format!("docker:{name}"), "{exec}");
    assert_eq!(exec["workloadIdSource"], "derived", "{exec}");
    assert_eq!(stopped.summary["docker"]["connected"], true);
}

#[test]
fn doctor_reports_the_engine_its_api_and_the_event_stream() {
    let dockerd = Dockerd::start();
    let out = Command::new(observer_bin())
        .args(["doctor", "--no-cri", "--docker-endpoint"])
        .arg(&dockerd.socket)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let version = dockerd.docker_ok(&[
        "version",
        "--format",
        "{{.Server.Version}} (API {{.Server.APIVersion}})",
    ]);
    let line = stdout
        .lines()
        .find(|l| l.contains("docker engine"))
        .unwrap_or_else(|| panic!("no Docker check in:\n{stdout}"));
    assert_eq!(
        line,
        format!(
            "[ok  ] docker engine          Docker Engine {version} at {}; container events are streamed",
            dockerd.socket.display()
        )
    );
    let dir = TempDir::new("zastava-doctor-docker");
    let missing = dir.path().join("docker.sock");
    let out = Command::new(observer_bin())
        .args(["doctor", "--no-cri", "--docker-endpoint"])
        .arg(&missing)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("docker engine"))
        .unwrap();
    assert!(line.starts_with("[WARN] docker engine"), "{stdout}");
    assert!(line.contains("cannot connect to Docker Engine"), "{stdout}");
}
