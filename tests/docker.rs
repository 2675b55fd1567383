//! Attribution on a Docker host, against a real dockerd (Debian's docker.io) and Debian's
//! docker-compose: each test runs its own engine, causes unique actions inside containers,
//! and asserts the exact workload fields on the kernel events the observer reports. What
//! the observer does with a broken engine is in docker_faults.rs.

mod common;

use std::process::Command;

use common::{
    dockerd::{Dockerd, BUSYBOX},
    unique, Observer, TempDir,
};
use serde_json::Value;

fn observer_for(dockerd: &Dockerd, extra: &[&str]) -> Observer {
    let socket = dockerd.socket.to_str().unwrap().to_owned();
    let mut args = vec!["--no-cri", "--docker-endpoint", socket.as_str()];
    args.extend_from_slice(extra);
    Observer::start(&args)
}

fn edge_of<'a>(id: &'a str, pred: impl Fn(&Value) -> bool + 'a) -> impl Fn(&Value) -> bool + 'a {
    move |e| e["eventType"] == "edge" && e["containerId"] == id && pred(e)
}

fn lifecycle<'a>(kind: &'a str, id: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |e| e["eventType"] == kind && e["containerId"] == id
}

/// An exec whose argv[1] is `marker`.
fn exec_with(marker: &str) -> impl Fn(&Value) -> bool + '_ {
    move |e| e["edgeType"] == "syscall" && e["args"][1] == marker
}

/// Every edge of the container is attributed as `check` says: directly, or `pending` and
/// then named by a patch that is.
fn assert_every_edge_attributed(events: &[Value], id: &str, check: impl Fn(&Value)) {
    let edges: Vec<&Value> = events.iter().filter(|e| edge_of(id, |_| true)(e)).collect();
    assert!(!edges.is_empty(), "no edges of {id}");
    for e in edges {
        if e["enrichment"] == "pending" {
            let patch = events
                .iter()
                .find(|p| {
                    p["eventType"] == "enrichmentPatch"
                        && p["eventIds"].as_array().unwrap().contains(&e["eventId"])
                })
                .unwrap_or_else(|| panic!("no patch for pending event {e}"));
            check(patch);
        } else {
            check(e);
        }
    }
}

/// The fields of a Docker container outside Kubernetes with the test image.
fn assert_docker_fields(e: &Value, dockerd: &Dockerd, id: &str, name: &str) {
    assert_eq!(e["containerId"], id, "{e}");
    assert_eq!(e["containerName"], name, "{e}");
    assert_eq!(e["containerRuntime"], "docker", "{e}");
    for empty in ["namespace", "pod", "podUid"] {
        assert_eq!(e[empty], "", "{empty}: {e}");
    }
    assert_eq!(e["imageRef"], BUSYBOX, "{e}");
    assert_eq!(e["imageDigest"], dockerd.image_id.as_str(), "{e}");
    assert_eq!(e["imageDigestKind"], "config", "{e}");
    // The image was loaded, not pulled: no manifest digest, so never `complete`.
    assert_eq!(e["enrichment"], "partial", "{e}");
}

#[test]
fn a_labelled_container_s_exec_open_and_docker_exec_carry_its_identity() {
    let dockerd = Dockerd::start();
    // Docker's own account of the image id is the oracle for the config digest.
    assert_eq!(
        dockerd.docker_ok(&["image", "inspect", "--format", "{{.Id}}", BUSYBOX]),
        dockerd.image_id
    );
    let observer = observer_for(&dockerd, &[]);
    let name = unique("payments");
    let marker = unique("marker");
    let go = format!("/tmp/go-{marker}");
    let script = format!(
        "cat /etc/hostname; /bin/true {marker}; while [ ! -e {go} ]; do sleep 0.05; done; exit 3"
    );
    let id = dockerd.run(&[
        "--name",
        &name,
        "--label",
        "stellaops.workload/id=payments-api",
        "--label",
        "stellaops.workload/tenant=acme",
        "--label",
        "stellaops.workload/component=api",
        BUSYBOX,
        "/bin/sh",
        "-c",
        &script,
    ]);
    let init_pid: u64 = dockerd.inspect(&id, "{{.State.Pid}}").parse().unwrap();

    let exec = observer.wait_for("the container's exec", edge_of(&id, exec_with(&marker)));
    let open = observer.wait_for(
        "cat opening /etc/hostname",
        edge_of(&id, |e| {
            e["path"] == "/etc/hostname" && e["process"]["comm"] == "cat"
        }),
    );
    dockerd.docker_ok(&["exec", &id, "/bin/touch", &go]);
    let touch = observer.wait_for("the docker exec", edge_of(&id, exec_with(&go)));
    assert_eq!(dockerd.wait_exited(&id), 3);
    let start = observer.wait_for("containerStart", lifecycle("containerStart", &id));
    let stop = observer.wait_for("containerStop", lifecycle("containerStop", &id));
    let stopped = observer.stop();

    let identity = |e: &Value| {
        assert_docker_fields(e, &dockerd, &id, &name);
        assert_eq!(e["workloadId"], "payments-api", "{e}");
        assert_eq!(e["workloadIdSource"], "label", "{e}");
        assert_eq!(e["tenant"], "acme", "{e}");
        assert_eq!(e["component"], "api", "{e}");
        assert!(e.get("project").is_none(), "{e}");
    };
    for e in [&exec, &open, &touch, &start, &stop] {
        identity(e);
    }
    assert_every_edge_attributed(&stopped.events, &id, identity);
    // The image's /bin/true is a symlink to busybox: the kernel ran busybox.
    assert_eq!(exec["path"], "/bin/busybox");
    assert_eq!(exec["requestedPath"], "/bin/true");
    assert_eq!(
        exec["process"]["ppid"], init_pid,
        "a child of the init shell"
    );
    assert_eq!(open["result"], 3);
    assert_eq!(touch["path"], "/bin/busybox");
    assert_eq!(touch["requestedPath"], "/bin/touch");
    assert_eq!(start["initPid"], init_pid);
    assert_eq!(start["entrypoint"], "/bin/busybox");
    let busybox = common::build_id_of("/bin/busybox");
    assert_eq!(start["code_id"], busybox.as_str());
    assert_eq!(stop["exitCode"], 3);
    assert!(stop["timestamp"].as_str() > start["timestamp"].as_str());
    assert_eq!(stopped.summary["docker"]["connected"], true);
    assert_eq!(
        stopped.summary["docker"]["runtime"],
        format!(
            "docker {}",
            dockerd.docker_ok(&["version", "--format", "{{.Server.Version}}"])
        )
    );
}

#[test]
fn each_compose_service_is_a_workload_of_its_own() {
    let dockerd = Dockerd::start();
    let observer = observer_for(&dockerd, &[]);
    let dir = TempDir::new("zastava-compose");
    let project = unique("shop").replace('-', "");
    let marker = unique("svc");
    let service = |name: &str| {
        format!(
            "  {name}:\n    image: {BUSYBOX}\n    network_mode: host\n    command: [\"/bin/sh\", \"-c\", \"/bin/true {marker}-{name}; exec sleep 60\"]\n"
        )
    };
    let file = format!(
        "version: \"3.8\"\nservices:\n{}{}",
        service("web"),
        service("worker")
    );
    std::fs::write(dir.path().join("docker-compose.yml"), file).unwrap();
    let config = dockerd.compose(dir.path(), &project, &["config", "--quiet"]);
    assert!(config.status.success(), "{config:?}");
    let up = dockerd.compose(dir.path(), &project, &["up", "-d"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );

    let mut ids = Vec::new();
    for name in ["web", "worker"] {
        let container = format!("{project}_{name}_1");
        let id = dockerd.inspect(&container, "{{.Id}}");
        let wanted = format!("{marker}-{name}");
        let exec = observer.wait_for(&wanted, edge_of(&id, exec_with(&wanted)));
        let start = observer.wait_for("containerStart", lifecycle("containerStart", &id));
        for e in [&exec, &start] {
            assert_docker_fields(e, &dockerd, &id, &container);
            assert_eq!(e["workloadId"], format!("{project}/{name}"), "{e}");
            assert_eq!(e["workloadIdSource"], "derived", "{e}");
            assert_eq!(e["composeProject"], project.as_str(), "{e}");
            assert_eq!(e["composeService"], name, "{e}");
        }
        ids.push((id, container, name));
    }
    let down = dockerd.compose(dir.path(), &project, &["down", "--timeout", "1"]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    for (id, _, _) in &ids {
        observer.wait_for("containerStop", lifecycle("containerStop", id));
    }
    let stopped = observer.stop();
    for (id, container, name) in &ids {
        assert_every_edge_attributed(&stopped.events, id, |e| {
            assert_docker_fields(e, &dockerd, id, container);
            assert_eq!(e["workloadId"], format!("{project}/{name}"), "{e}");
        });
        let stop = stopped
            .events
            .iter()
            .find(|e| lifecycle("containerStop", id)(e))
            .unwrap();
        // `down` stops with SIGTERM, which the shell's `exec sleep` dies of (or SIGKILL).
        assert!(stop["exitCode"] == 143 || stop["exitCode"] == 137, "{stop}");
    }
}

/// A pod as cri-dockerd runs it for the kubelet: a sandbox container carrying the pod's
/// labels, and the pod's containers pointing at it by `io.kubernetes.sandbox.id`.
#[test]
fn a_pod_run_by_cri_dockerd_is_attributed_to_its_pod_and_workload() {
    let dockerd = Dockerd::start();
    let observer = observer_for(&dockerd, &[]);
    let pod_uid = unique("uid");
    let pod_labels = |kind: &str| {
        vec![
            format!("io.kubernetes.docker.type={kind}"),
            "io.kubernetes.pod.name=web-7d4f9-x2x9z".to_owned(),
            "io.kubernetes.pod.namespace=shop".to_owned(),
            format!("io.kubernetes.pod.uid={pod_uid}"),
        ]
    };
    let mut args: Vec<String> = vec!["--name".into(), unique("k8s_POD_web")];
    for label in pod_labels("podsandbox").into_iter().chain([
        "stellaops.workload/id=web".to_owned(),
        "stellaops.workload/tenant=acme".to_owned(),
    ]) {
        args.extend(["--label".to_owned(), label]);
    }
    args.extend([BUSYBOX.to_owned(), "/bin/sleep".into(), "60".into()]);
    let sandbox = dockerd.run(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let marker = unique("pod");
    let name = unique("k8s_api_web");
    let mut args: Vec<String> = vec!["--name".into(), name.clone()];
    for label in pod_labels("container").into_iter().chain([
        format!("io.kubernetes.sandbox.id={sandbox}"),
        "io.kubernetes.container.name=api".to_owned(),
    ]) {
        args.extend(["--label".to_owned(), label]);
    }
    let script = format!("/bin/true {marker}; exec sleep 60");
    args.extend([BUSYBOX.to_owned(), "/bin/sh".into(), "-c".into(), script]);
    let id = dockerd.run(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let exec = observer.wait_for("the pod container's exec", edge_of(&id, exec_with(&marker)));
    let start = observer.wait_for("containerStart", lifecycle("containerStart", &id));
    dockerd.docker_ok(&["rm", "-f", &id, &sandbox]);
    observer.wait_for("containerStop", lifecycle("containerStop", &id));
    let stopped = observer.stop();
    let in_pod = |e: &Value| {
        assert_eq!(e["containerId"], id.as_str(), "{e}");
        assert_eq!(e["containerRuntime"], "docker", "{e}");
        // The pod's container name, not the engine's k8s_… name.
        assert_eq!(e["containerName"], "api", "{e}");
        assert_eq!(e["pod"], "web-7d4f9-x2x9z", "{e}");
        assert_eq!(e["namespace"], "shop", "{e}");
        assert_eq!(e["podUid"], pod_uid.as_str(), "{e}");
        // The pod's identity labels sit on the sandbox; they name the workload.
        assert_eq!(e["workloadId"], "web", "{e}");
        assert_eq!(e["workloadIdSource"], "label", "{e}");
        assert_eq!(e["tenant"], "acme", "{e}");
        assert_eq!(e["imageDigest"], dockerd.image_id.as_str(), "{e}");
        assert_eq!(e["imageDigestKind"], "config", "{e}");
    };
    for e in [&exec, &start] {
        in_pod(e);
    }
    assert_every_edge_attributed(&stopped.events, &id, in_pod);
}

#[test]
fn a_container_that_lives_50ms_and_is_removed_is_still_attributed() {
    let dockerd = Dockerd::start();
    let observer = observer_for(&dockerd, &[]);
    let name = unique("blink");
    let marker = unique("blink");
    let out = dockerd.docker(&[
        "run",
        "--rm",
        "--network",
        "host",
        "--name",
        &name,
        "--label",
        "stellaops.workload/id=blinker",
        BUSYBOX,
        "/bin/true",
        &marker,
    ]);
    assert!(out.status.success(), "{out:?}");
    let exec = observer.wait_for("the short container's exec", |e| {
        e["eventType"] == "edge" && exec_with(&marker)(e)
    });
    let id = exec["containerId"].as_str().unwrap().to_owned();
    let stop = observer.wait_for("containerStop", lifecycle("containerStop", &id));
    let start = observer.wait_for("containerStart", lifecycle("containerStart", &id));
    let stopped = observer.stop();

    assert_eq!(id.len(), 64, "{exec}");
    // It is gone: Docker no longer knows it.
    assert!(!dockerd.docker(&["inspect", &id]).status.success());
    assert_every_edge_attributed(&stopped.events, &id, |e| {
        assert_eq!(e["workloadId"], "blinker", "{e}");
        assert_eq!(e["containerName"], name.as_str(), "{e}");
        assert_eq!(e["containerRuntime"], "docker", "{e}");
    });
    assert_eq!(stop["exitCode"], 0);
    let at = |e: &Value| humantime::parse_rfc3339(e["timestamp"].as_str().unwrap()).unwrap();
    let lived = at(&stop).duration_since(at(&start)).unwrap();
    assert!(
        lived < std::time::Duration::from_secs(2),
        "the container lived {lived:?}, not a short-lived one"
    );
}

#[test]
fn a_systemd_scope_cgroup_is_attributed_to_its_docker_container() {
    // Docker with the systemd cgroup driver puts a container in
    // system.slice/docker-<id>.scope. This host has no systemd, so the scope is made by
    // hand for a container Docker knows (created, not started), and a process placed in it.
    let dockerd = Dockerd::start();
    let observer = observer_for(&dockerd, &[]);
    let name = unique("scoped");
    let id = dockerd.docker_ok(&[
        "create",
        "--name",
        &name,
        "--label",
        "stellaops.workload/id=scoped",
        BUSYBOX,
        "/bin/true",
    ]);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let root = zastava::workload::cgroups::find_cgroup2_mount(&mounts).expect("a cgroup2 mount");
    let slice = root.join("system.slice");
    let made_slice = !slice.exists();
    let scope = slice.join(format!("docker-{id}.scope"));
    std::fs::create_dir_all(&scope).unwrap();
    let marker = unique("scope");
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec /bin/true {marker}",
            scope.display()
        ))
        .status()
        .unwrap();
    let exec = observer.wait_for("the exec in the scope", |e| {
        e["eventType"] == "edge" && exec_with(&marker)(e)
    });
    let _ = std::fs::remove_dir(&scope);
    if made_slice {
        let _ = std::fs::remove_dir(&slice);
    }
    observer.stop();
    assert!(status.success());
    assert_eq!(exec["containerId"], id.as_str(), "{exec}");
    assert_eq!(exec["workloadId"], "scoped", "{exec}");
    assert_eq!(exec["containerName"], name.as_str(), "{exec}");
    assert!(
        exec["enrichment"] == "partial" || exec["enrichment"] == "pending",
        "{exec}"
    );
}

#[test]
fn dockerd_restarted_while_the_observer_runs_is_followed_again_without_misattribution() {
    let mut dockerd = Dockerd::start();
    let observer = observer_for(&dockerd, &[]);
    let shared = TempDir::new("zastava-restart");
    let touch = |phase: &str| std::fs::write(shared.path().join(phase), "").unwrap();
    let marker = unique("alpha");
    // For each phase file that appears in /shared, one exec naming it.
    let script = format!(
        "for p in one two three four; do while [ ! -e /shared/$p ]; do sleep 0.05; done; /bin/true {marker}-$p; done; exec sleep 60"
    );
    let alpha_name = unique("alpha");
    let volume = format!("{}:/shared", shared.path().display());
    let alpha = dockerd.run(&[
        "--name",
        &alpha_name,
        "--volume",
        &volume,
        "--label",
        "stellaops.workload/id=alpha",
        BUSYBOX,
        "/bin/sh",
        "-c",
        &script,
    ]);
    let phase = |p: &str| format!("{marker}-{p}");
    touch("one");
    observer.wait_for(
        "alpha's first exec",
        edge_of(&alpha, exec_with(&phase("one"))),
    );

    // dockerd goes away; alpha keeps running (live restore) and is still known.
    dockerd.stop_daemon();
    observer.wait_for_log("container runtime unavailable (docker)");
    touch("two");
    let during = observer.wait_for(
        "alpha's exec without dockerd",
        edge_of(&alpha, exec_with(&phase("two"))),
    );

    dockerd.start_daemon();
    observer.wait_for_log("container runtime back: docker");
    let beta_marker = unique("beta");
    let beta = dockerd.run(&[
        "--label",
        "stellaops.workload/id=beta",
        BUSYBOX,
        "/bin/true",
        &beta_marker,
    ]);
    observer.wait_for("beta's exec", edge_of(&beta, exec_with(&beta_marker)));
    touch("three");
    observer.wait_for(
        "alpha's exec after the restart",
        edge_of(&alpha, exec_with(&phase("three"))),
    );

    // The container itself restarted: a new run under the same id. Its script starts over.
    let first_start = dockerd.inspect(&alpha, "{{.State.StartedAt}}");
    dockerd.docker_ok(&["restart", "--time", "0", &alpha]);
    assert_ne!(dockerd.inspect(&alpha, "{{.State.StartedAt}}"), first_start);
    touch("four");
    observer.wait_for(
        "alpha's exec in its second run",
        edge_of(&alpha, exec_with(&phase("four"))),
    );
    observer.wait_for("alpha's second start", |e| {
        lifecycle("containerStart", &alpha)(e)
            && e["timestamp"].as_str() > Some(first_start.as_str())
    });
    let stopped = observer.stop();

    assert_eq!(during["workloadId"], "alpha", "{during}");
    assert_every_edge_attributed(&stopped.events, &alpha, |e| {
        assert_docker_fields(e, &dockerd, &alpha, &alpha_name);
        assert_eq!(e["workloadId"], "alpha", "{e}");
    });
    assert_every_edge_attributed(&stopped.events, &beta, |e| {
        assert_eq!(e["workloadId"], "beta", "{e}");
    });
    let runs: Vec<(&str, Option<i64>)> = stopped
        .events
        .iter()
        .filter(|e| e["containerId"] == alpha.as_str() && e["eventType"] != "edge")
        .filter(|e| e["eventType"] != "enrichmentPatch")
        .map(|e| (e["eventType"].as_str().unwrap(), e["exitCode"].as_i64()))
        .collect();
    assert_eq!(
        runs,
        [
            ("containerStart", None),
            ("containerStop", Some(137)),
            ("containerStart", None)
        ],
        "one start and stop per run, in order"
    );
    let docker = &stopped.summary["docker"];
    assert!(docker["disconnects"].as_u64().unwrap() >= 1, "{docker}");
    assert_eq!(docker["connected"], true, "{docker}");
}

#[test]
fn a_node_with_a_cri_runtime_and_docker_attributes_each_container_through_its_own() {
    use common::containerd::{self, Containerd, PodSpec};
    let mut containerd = Containerd::start();
    let dockerd = Dockerd::start();
    let observer = Observer::start(&[
        "--cri-endpoint",
        containerd.socket.to_str().unwrap(),
        "--cri-poll-interval",
        "0.1",
        "--docker-endpoint",
        dockerd.socket.to_str().unwrap(),
    ]);
    let pod = containerd.run_pod(&PodSpec {
        name: "web-1",
        namespace: "shop",
        labels: &[("stellaops.workload/id", "shop-web")],
    });
    let cri_marker = unique("cri");
    let script = format!("/bin/true {cri_marker}; exec sleep 30");
    let cri_id = containerd.run_container(
        &pod,
        "web",
        containerd::BUSYBOX,
        &["/bin/sh", "-c", &script],
    );
    let docker_marker = unique("docker");
    let docker_name = unique("side");
    let docker_id = dockerd.run(&[
        "--name",
        &docker_name,
        "--label",
        "stellaops.workload/id=side",
        BUSYBOX,
        "/bin/true",
        &docker_marker,
    ]);
    let cri_exec = observer.wait_for("the pod's exec", edge_of(&cri_id, exec_with(&cri_marker)));
    let docker_exec = observer.wait_for(
        "the Docker exec",
        edge_of(&docker_id, exec_with(&docker_marker)),
    );
    containerd.stop_pod(&pod);
    let stopped = observer.stop();

    assert_eq!(cri_exec["workloadId"], "shop-web", "{cri_exec}");
    assert_eq!(cri_exec["namespace"], "shop", "{cri_exec}");
    assert_eq!(cri_exec["pod"], "web-1", "{cri_exec}");
    assert_eq!(cri_exec["enrichment"], "complete", "{cri_exec}");
    assert!(cri_exec.get("containerRuntime").is_none(), "{cri_exec}");
    assert_docker_fields(&docker_exec, &dockerd, &docker_id, &docker_name);
    assert_eq!(docker_exec["workloadId"], "side", "{docker_exec}");
    assert_every_edge_attributed(&stopped.events, &cri_id, |e| {
        assert_eq!(e["workloadId"], "shop-web", "{e}");
    });
    assert_every_edge_attributed(&stopped.events, &docker_id, |e| {
        assert_eq!(e["workloadId"], "side", "{e}");
    });
    assert_eq!(stopped.summary["cri"]["connected"], true);
    assert_eq!(stopped.summary["docker"]["connected"], true);
}
