//! Attribution against a real containerd: each test runs its own containerd and pods,
//! causes unique actions inside containers, and asserts the exact workload fields on the
//! kernel events the observer reports.

mod common;

use std::{
    net::{Ipv4Addr, TcpListener},
    os::unix::net::UnixListener,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    containerd::{Containerd, PodSpec, BUSYBOX, UNDIGESTED},
    observer_bin, pid_of, require_root, str_at, unique, Observer, TempDir,
};
use serde_json::Value;

fn observer_for(containerd: &Containerd, extra: &[&str]) -> Observer {
    let socket = containerd.socket.to_str().unwrap().to_owned();
    let mut args = vec![
        "--cri-endpoint",
        socket.as_str(),
        "--cri-poll-interval",
        "0.1",
    ];
    args.extend_from_slice(extra);
    Observer::start(&args)
}

fn of_container<'a>(id: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |e| e["containerId"] == id
}

fn edge_of<'a>(id: &'a str, pred: impl Fn(&Value) -> bool + 'a) -> impl Fn(&Value) -> bool + 'a {
    move |e| e["eventType"] == "edge" && e["containerId"] == id && pred(e)
}

const IDENTITY: [(&str, &str); 5] = [
    ("stellaops.workload/id", "payments-api"),
    ("stellaops.workload/tenant", "acme"),
    ("stellaops.workload/project", "checkout"),
    ("stellaops.workload/component", "api"),
    ("stellaops.workload/channel", "stable"),
];

/// The workload fields every record of the labelled test pod carries.
fn assert_labelled_identity(e: &Value, containerd: &Containerd, namespace: &str, pod: &str) {
    assert_eq!(e["namespace"], namespace, "{e}");
    assert_eq!(e["pod"], pod, "{e}");
    assert_eq!(e["workloadId"], "payments-api", "{e}");
    assert_eq!(e["workloadIdSource"], "label", "{e}");
    assert_eq!(e["tenant"], "acme", "{e}");
    assert_eq!(e["project"], "checkout", "{e}");
    assert_eq!(e["component"], "api", "{e}");
    assert_eq!(e["channel"], "stable", "{e}");
    assert_eq!(e["imageRef"], BUSYBOX, "{e}");
    assert_eq!(
        e["imageDigest"],
        containerd.images.busybox_manifest.as_str(),
        "{e}"
    );
    assert_eq!(e["imageDigestKind"], "manifest", "{e}");
    assert_eq!(e["enrichment"], "complete", "{e}");
}

#[test]
fn a_labelled_pod_s_exec_open_and_connect_carry_its_identity_and_manifest_digest() {
    let mut containerd = Containerd::start();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let marker = format!("/{}", unique("marker"));
    let script = format!("echo x > {marker}; nc -w 1 127.0.0.1 {port} </dev/null; exec sleep 30");

    let observer = observer_for(&containerd, &[]);
    let pod = containerd.run_pod(&PodSpec {
        name: "payments-1",
        namespace: "shop",
        labels: &IDENTITY,
    });
    let id = containerd.run_container(&pod, "api", BUSYBOX, &["/bin/sh", "-c", &script]);
    let init_pid = containerd.init_pid(&id);

    let exec = observer.wait_for(
        "the container's first exec",
        edge_of(&id, |e| {
            e["edgeType"] == "syscall" && e["args"][2] == script.as_str()
        }),
    );
    let open = observer.wait_for(
        "the marker open",
        edge_of(&id, |e| e["path"] == marker.as_str()),
    );
    let connect = observer.wait_for(
        "the connect to the host listener",
        edge_of(&id, |e| e["port"] == port),
    );
    let start = observer.wait_for("containerStart", |e| {
        e["eventType"] == "containerStart" && e["containerId"] == id.as_str()
    });
    containerd.stop_pod(&pod);
    let stop = observer.wait_for("containerStop", |e| {
        e["eventType"] == "containerStop" && e["containerId"] == id.as_str()
    });
    let stopped = observer.stop();

    for e in [&exec, &open, &connect, &start, &stop] {
        assert_labelled_identity(e, &containerd, "shop", "payments-1");
        assert_eq!(e["containerName"], "api");
        assert_eq!(e["podUid"], pod.uid.as_str());
    }
    // The container's /bin/sh is a symlink to busybox: the kernel ran busybox.
    assert_eq!(exec["path"], "/bin/busybox");
    assert_eq!(exec["requestedPath"], "/bin/sh");
    assert_eq!(
        exec["code_id"],
        common::build_id_of("/bin/busybox").as_str(),
        "the build-id of the container's /bin/sh, which is busybox"
    );
    assert_eq!(pid_of(&exec), u64::from(init_pid));
    assert_eq!(open["result"], 3);
    assert_eq!(
        open["flagNames"],
        serde_json::json!(["O_WRONLY", "O_CREAT", "O_TRUNC"])
    );
    assert_eq!(connect["address"], "127.0.0.1");
    assert_eq!(connect["result"], 0);
    assert_eq!(start["initPid"], init_pid);
    assert_eq!(start["entrypoint"], "/bin/busybox");
    let busybox_id = common::build_id_of("/bin/busybox");
    assert_eq!(start["code_id"], busybox_id.as_str());
    assert!(stop.get("exitCode").is_some(), "{stop}");
    // Nothing of this container was reported without its identity.
    for e in stopped.events.iter().filter(|e| of_container(&id)(e)) {
        assert_eq!(e["enrichment"], "complete", "{e}");
    }
    drop(listener);
}

#[test]
fn a_container_that_exits_within_100ms_is_fully_attributed() {
    let mut containerd = Containerd::start();
    let marker = format!("/{}", unique("short"));
    let observer = observer_for(&containerd, &[]);
    let pod = containerd.run_pod(&PodSpec {
        name: "payments-2",
        namespace: "shop",
        labels: &IDENTITY,
    });
    let started = Instant::now();
    let id = containerd.run_container(
        &pod,
        "once",
        BUSYBOX,
        &["/bin/sh", "-c", &format!("echo x > {marker}")],
    );
    containerd.wait_exited(&id);
    let lived = started.elapsed();

    let open = observer.wait_for(
        "the short container's open",
        edge_of(&id, |e| e["path"] == marker.as_str()),
    );
    observer.wait_for("containerStop", |e| {
        e["eventType"] == "containerStop" && e["containerId"] == id.as_str()
    });
    let stopped = observer.stop();

    assert!(
        lived < Duration::from_secs(2),
        "the container lived {lived:?}"
    );
    let edges: Vec<&Value> = stopped
        .events
        .iter()
        .filter(|e| edge_of(&id, |_| true)(e))
        .collect();
    assert!(edges.len() >= 2, "its exec and open at least: {edges:?}");
    // Every edge is attributed in full, or sent pending and then named by a patch that
    // carries the full identity.
    for e in &edges {
        match e["enrichment"].as_str() {
            Some("complete") => assert_labelled_identity(e, &containerd, "shop", "payments-2"),
            Some("pending") => {
                let patch = stopped
                    .events
                    .iter()
                    .find(|p| {
                        p["eventType"] == "enrichmentPatch"
                            && p["eventIds"].as_array().unwrap().contains(&e["eventId"])
                    })
                    .unwrap_or_else(|| panic!("no patch for pending event {e}"));
                assert_labelled_identity(patch, &containerd, "shop", "payments-2");
            }
            other => panic!("edge of a short-lived container left {other:?}: {e}"),
        }
    }
    assert_eq!(open["containerId"], id.as_str());
}

#[test]
fn a_relative_open_by_a_container_that_exits_at_once_is_the_path_the_container_sees() {
    let mut containerd = Containerd::start();
    let observer = observer_for(&containerd, &[]);
    let pod = containerd.run_pod(&PodSpec {
        name: "payments-3",
        namespace: "shop",
        labels: &IDENTITY,
    });
    let id = containerd.run_container(
        &pod,
        "relative",
        BUSYBOX,
        &["/bin/sh", "-c", "cd /etc && cat ./hostname"],
    );
    containerd.wait_exited(&id);
    let open = observer.wait_for(
        "the container's relative open",
        edge_of(&id, |e| e["requestedPath"] == "./hostname"),
    );
    let stopped = observer.stop();

    // Not the host's view of the overlay or of the bind mount CRI put there: the file as
    // the container names it, found from the kernel's objects after the process was gone.
    assert_eq!(open["path"], "/etc/hostname", "{open}");
    assert_eq!(open["result"], 3, "{open}");
    assert!(
        open.get("pathResolved").is_none() && open.get("pathFromCaller").is_none(),
        "{open}"
    );
    let attributed = if open["enrichment"] == "pending" {
        stopped
            .events
            .iter()
            .find(|p| {
                p["eventType"] == "enrichmentPatch"
                    && p["eventIds"].as_array().unwrap().contains(&open["eventId"])
            })
            .unwrap_or_else(|| panic!("no patch for pending event {open}"))
    } else {
        &open
    };
    assert_labelled_identity(attributed, &containerd, "shop", "payments-3");
    // No edge of the container's own processes names a path of the host. (runc's init runs
    // in the container's cgroup before it enters the container's root: its paths are the
    // host's, rightly.)
    let own = |e: &&Value| edge_of(&id, |_| true)(e) && e["process"]["args"][0] != "runc";
    for e in stopped.events.iter().filter(own) {
        let path = str_at(e, "/path");
        assert!(
            !path.contains("io.containerd") && !path.starts_with("/var/lib/containerd"),
            "{e}"
        );
    }
}

#[test]
fn a_process_started_with_exec_sync_is_attributed_to_its_container() {
    let mut containerd = Containerd::start();
    let observer = observer_for(&containerd, &[]);
    let pod = containerd.run_pod(&PodSpec {
        name: "payments-3",
        namespace: "shop",
        labels: &IDENTITY,
    });
    let id = containerd.run_container(&pod, "api", BUSYBOX, &["/bin/sleep", "30"]);
    observer.wait_for("containerStart", |e| {
        e["eventType"] == "containerStart" && e["containerId"] == id.as_str()
    });

    // What `kubectl exec` does: a new process enters the running container.
    let marker = format!("/{}", unique("exec"));
    let (code, _) = containerd.exec_sync(&id, &["/bin/sh", "-c", &format!("echo y > {marker}")]);
    assert_eq!(code, 0);
    let open = observer.wait_for("the exec'd process's open", |e| {
        e["path"] == marker.as_str()
    });
    observer.stop();

    assert_eq!(open["containerId"], id.as_str());
    assert_labelled_identity(&open, &containerd, "shop", "payments-3");
    assert_ne!(pid_of(&open), u64::from(containerd.init_pid(&id)));
}

#[test]
fn a_pod_without_identity_labels_gets_a_derived_id() {
    let mut containerd = Containerd::start();
    let observer = observer_for(&containerd, &[]);
    let marker = format!("/{}", unique("derived"));
    let pod = containerd.run_pod(&PodSpec {
        name: "checkout-7d4b9c8f6d-x2x7k",
        namespace: "store",
        labels: &[("pod-template-hash", "7d4b9c8f6d")],
    });
    let id = containerd.run_container(
        &pod,
        "web",
        BUSYBOX,
        &[
            "/bin/sh",
            "-c",
            &format!("echo x > {marker}; exec sleep 30"),
        ],
    );
    let open = observer.wait_for("the open", edge_of(&id, |e| e["path"] == marker.as_str()));
    observer.stop();

    assert_eq!(open["workloadId"], "store/checkout");
    assert_eq!(open["workloadIdSource"], "derived");
    assert_eq!(open["namespace"], "store");
    assert_eq!(open["pod"], "checkout-7d4b9c8f6d-x2x7k");
    assert!(open.get("tenant").is_none(), "{open}");
}

#[test]
fn an_image_without_a_manifest_digest_is_flagged() {
    let mut containerd = Containerd::start();
    let observer = observer_for(&containerd, &[]);
    let marker = format!("/{}", unique("nodigest"));
    let pod = containerd.run_pod(&PodSpec {
        name: "legacy-1",
        namespace: "shop",
        labels: &IDENTITY,
    });
    let id = containerd.run_container(
        &pod,
        "app",
        UNDIGESTED,
        &[
            "/bin/sh",
            "-c",
            &format!("echo x > {marker}; exec sleep 30"),
        ],
    );
    let open = observer.wait_for("the open", edge_of(&id, |e| e["path"] == marker.as_str()));
    let stopped = observer.stop();

    assert_eq!(open["imageRef"], UNDIGESTED);
    assert_eq!(open["imageDigestKind"], "config");
    assert_eq!(
        open["imageDigest"],
        containerd.images.undigested_config.as_str()
    );
    assert_eq!(open["enrichment"], "partial");
    assert_eq!(stopped.summary["attribution"]["containersWithoutDigest"], 1);
}

#[test]
fn events_of_an_excluded_namespace_never_leave_the_kernel() {
    let mut containerd = Containerd::start();
    let observer = observer_for(&containerd, &["--exclude-namespace", "quiet"]);
    const OPENS: u64 = 50;
    let quiet_marker = format!("/{}", unique("quiet"));
    let loud_marker = format!("/{}", unique("loud"));
    let script = |marker: &str| {
        format!(
            "i=0; while [ $i -lt {OPENS} ]; do echo x > {marker}; i=$((i+1)); done; exec sleep 30"
        )
    };

    let quiet = containerd.run_pod(&PodSpec {
        name: "silent-1",
        namespace: "quiet",
        labels: &[],
    });
    let loud = containerd.run_pod(&PodSpec {
        name: "chatty-1",
        namespace: "loud",
        labels: &[],
    });
    // As with a kubelet, the sandbox exists (and is seen) before its containers start.
    observer.wait_for_log(&format!(
        "pod quiet/silent-1 (sandbox {})",
        quiet.sandbox_id
    ));
    let quiet_id = containerd.run_container(
        &quiet,
        "app",
        BUSYBOX,
        &["/bin/sh", "-c", &script(&quiet_marker)],
    );
    let loud_id = containerd.run_container(
        &loud,
        "app",
        BUSYBOX,
        &["/bin/sh", "-c", &script(&loud_marker)],
    );

    // The control pod's opens all arrive; by then the quiet pod's have long happened.
    let deadline = Instant::now() + common::TIMEOUT;
    let loud = |e: &Value| e["path"] == loud_marker.as_str();
    while common::occurrences(&observer.events_matching(loud), loud) < OPENS {
        assert!(
            Instant::now() < deadline,
            "the control pod's opens did not all arrive: {:?}",
            observer.events_matching(loud)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And the quiet container has finished its loop: its init process now sleeps.
    let quiet_pid = containerd.init_pid(&quiet_id);
    while std::fs::read_to_string(format!("/proc/{quiet_pid}/comm"))
        .unwrap_or_default()
        .trim()
        != "sleep"
    {
        assert!(
            Instant::now() < deadline,
            "the quiet container did not finish its loop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = observer.stop();

    let leaked: Vec<&Value> = stopped
        .events
        .iter()
        .filter(|e| {
            e["namespace"] == "quiet"
                || e["containerId"] == quiet_id.as_str()
                || e["containerId"] == quiet.sandbox_id.as_str()
                || e["path"] == quiet_marker.as_str()
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "events of the excluded namespace were reported: {leaked:?}"
    );
    let filtered_opens = stopped.summary["kernel"]["filtered"]["open"]
        .as_u64()
        .unwrap();
    assert!(
        filtered_opens >= OPENS,
        "only {filtered_opens} opens filtered in the kernel: {}",
        stopped.summary
    );
    assert!(
        stopped.summary["kernel"]["filtered"]["exec"]
            .as_u64()
            .unwrap()
            >= 1
    );
    // What reaches userspace at all is the sandbox's own setup, from before the runtime
    // listed it; the app container's opens were all dropped in the kernel.
    let after_kernel = stopped.summary["attribution"]["filteredInUserspace"]
        .as_u64()
        .unwrap();
    assert!(
        after_kernel < OPENS,
        "{after_kernel} events were filtered only in userspace"
    );
    let loud_opens = common::occurrences(&stopped.events, loud);
    assert_eq!(loud_opens, OPENS);
    assert!(stopped
        .events
        .iter()
        .any(|e| e["eventType"] == "containerStart" && e["containerId"] == loud_id.as_str()));
}

#[test]
fn the_observer_reconnects_after_containerd_restarts_and_keeps_enriching() {
    let mut containerd = Containerd::start();
    let observer = observer_for(&containerd, &[]);
    let first = containerd.run_pod(&PodSpec {
        name: "before-1",
        namespace: "shop",
        labels: &IDENTITY,
    });
    let first_id = containerd.run_container(&first, "app", BUSYBOX, &["/bin/sleep", "30"]);
    observer.wait_for("the first container", |e| {
        e["eventType"] == "containerStart" && e["containerId"] == first_id.as_str()
    });

    containerd.stop_daemon();
    observer.wait_for_log("container runtime unavailable");
    containerd.start_daemon();
    observer.wait_for_log("container runtime back");

    let marker = format!("/{}", unique("after"));
    let second = containerd.run_pod(&PodSpec {
        name: "after-1",
        namespace: "shop",
        labels: &IDENTITY,
    });
    let second_id = containerd.run_container(
        &second,
        "app",
        BUSYBOX,
        &[
            "/bin/sh",
            "-c",
            &format!("echo x > {marker}; exec sleep 30"),
        ],
    );
    let open = observer.wait_for(
        "an open after the restart",
        edge_of(&second_id, |e| e["path"] == marker.as_str()),
    );
    let stopped = observer.stop();

    assert_labelled_identity(&open, &containerd, "shop", "after-1");
    assert!(
        stopped.summary["cri"]["disconnects"].as_u64().unwrap() >= 1,
        "{}",
        stopped.summary
    );
    assert_eq!(stopped.summary["cri"]["connected"], true);
}

/// Runs the observer, which must exit with `code` (1: a failure that a restart may cure;
/// 2: a configuration that cannot work here) within `within`; returns its log.
fn run_observer_expecting_failure(args: &[&str], code: i32, within: Duration) -> String {
    require_root();
    let started = Instant::now();
    let out = Command::new(observer_bin())
        .arg("run")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "the observer should have refused to start:\n{stderr}"
    );
    assert!(
        started.elapsed() < within,
        "it took {:?} to fail:\n{stderr}",
        started.elapsed()
    );
    stderr
}

#[test]
fn a_missing_cri_socket_is_a_clear_error_at_start() {
    let dir = TempDir::new("zastava-nocri");
    let socket = dir.path().join("containerd.sock");
    let stderr = run_observer_expecting_failure(
        &["--cri-endpoint", socket.to_str().unwrap()],
        1,
        Duration::from_secs(10),
    );
    assert!(stderr.contains(socket.to_str().unwrap()), "{stderr}");
    assert!(
        stderr.contains("cannot connect to the container runtime"),
        "{stderr}"
    );
    assert!(stderr.contains("--no-cri"), "{stderr}");
}

#[test]
fn an_unresponsive_cri_socket_fails_within_the_timeout_instead_of_hanging() {
    let dir = TempDir::new("zastava-hangcri");
    let socket = dir.path().join("hang.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // Accepts connections and never answers, like a wedged runtime.
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(4) {
            held.push(stream);
        }
    });
    let stderr = run_observer_expecting_failure(
        &[
            "--cri-endpoint",
            socket.to_str().unwrap(),
            "--cri-timeout",
            "1",
        ],
        1,
        Duration::from_secs(15),
    );
    assert!(
        stderr.contains("did not answer within 1s") || stderr.contains("cannot connect"),
        "{stderr}"
    );
    drop(holder);
}

#[test]
fn a_namespace_filter_without_a_runtime_is_refused() {
    let stderr = run_observer_expecting_failure(
        &["--no-cri", "--no-docker", "--exclude-namespace", "x"],
        2,
        Duration::from_secs(10),
    );
    assert!(
        stderr.contains("--namespace and --exclude-namespace need a container runtime"),
        "{stderr}"
    );
}

#[test]
fn doctor_checks_the_container_runtime() {
    let containerd = Containerd::start();
    let out = Command::new(observer_bin())
        .args([
            "doctor",
            "--cri-endpoint",
            containerd.socket.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("container runtime"))
        .unwrap_or_else(|| panic!("no runtime check in:\n{stdout}"));
    assert!(line.starts_with("[ok  ]"), "{line}");
    assert!(
        line.contains("containerd") && line.contains("(CRI v1)"),
        "{line}"
    );
    assert!(line.contains(containerd.socket.to_str().unwrap()), "{line}");
}

#[test]
fn without_attach_only_container_lifecycle_is_reported() {
    let mut containerd = Containerd::start();
    let observer = observer_for(&containerd, &["--no-attach"]);
    let marker = format!("/{}", unique("noattach"));
    let pod = containerd.run_pod(&PodSpec {
        name: "lifecycle-1",
        namespace: "shop",
        labels: &IDENTITY,
    });
    let id = containerd.run_container(
        &pod,
        "app",
        BUSYBOX,
        &["/bin/sh", "-c", &format!("echo x > {marker}")],
    );
    containerd.wait_exited(&id);
    let start = observer.wait_for("containerStart", |e| {
        e["eventType"] == "containerStart" && e["containerId"] == id.as_str()
    });
    observer.wait_for("containerStop", |e| {
        e["eventType"] == "containerStop" && e["containerId"] == id.as_str()
    });
    let stopped = observer.stop();

    assert_labelled_identity(&start, &containerd, "shop", "lifecycle-1");
    let edges = stopped
        .events
        .iter()
        .filter(|e| e["eventType"] == "edge")
        .count();
    assert_eq!(edges, 0, "no probes, no edges");
    assert!(
        stopped.stderr.contains("zastava.attach.enabled is false"),
        "{}",
        stopped.stderr
    );
    assert_eq!(stopped.summary["kernel"]["submitted"]["exec"], 0);
}
