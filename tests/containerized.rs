//! The deployed pods as containers: the release images (`cargo xtask image`) imported into a
//! private containerd as an air-gapped node would (`ctr images import`), the rendered
//! DaemonSet and Deployment started through CRI as the kubelet would start them, and the
//! binaries inside checked from outside — the observer attributing another pod's exec and
//! open with only the capabilities its pod grants, refusing clearly with one fewer, and the
//! webhook, as 65532 on a read-only root with no capabilities, answering over TLS.

mod common;

use std::{
    path::PathBuf,
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use common::{
    authority::generate_dpop_key,
    backend::Pki,
    containerd::{Containerd, PodSpec, BUSYBOX},
    kubelet::{DeployedPod, SecretFiles, Started, Volumes},
    release::images,
    require_root, unique,
    webhook::{client_for, fresh_digest, pod_review, post_review},
    TempDir, TIMEOUT,
};
use serde_json::Value;
use zastava_testing::cri::proto;

/// The pods serve on the node's ports (there is no CNI here): one test at a time.
static NODE_PORTS: Mutex<()> = Mutex::new(());

const NODE: &str = "worker-7.cluster.internal";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `kubectl kustomize deploy/kubernetes/<dir>`.
fn render(dir: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join("deploy/kubernetes").join(dir))
        .output()
        .expect("kubectl renders the kustomize overlays");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split("\n---\n")
        .map(|doc| serde_yaml::from_str(doc).unwrap())
        .collect()
}

fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container<'a>(template: &'a Value, name: &str) -> &'a Value {
    template["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
}

/// What an operator puts in each Secret the pods mount.
struct Secrets {
    pki: Pki,
    dpop_key: PathBuf,
    _dir: TempDir,
}

impl Secrets {
    fn new(server_names: Vec<String>) -> Secrets {
        let dir = TempDir::new("zastava-secrets");
        let dpop_key = dir.path().join("key.pem");
        generate_dpop_key(&dpop_key);
        Secrets {
            pki: Pki::generate_for(server_names),
            dpop_key,
            _dir: dir,
        }
    }

    fn files(&self, secret: &str) -> SecretFiles {
        let read = |path: &PathBuf| std::fs::read(path).unwrap();
        let files: Vec<(&str, Vec<u8>)> = match secret {
            "zastava-webhook-tls" => vec![
                ("tls.crt", read(&self.pki.server_cert)),
                ("tls.key", read(&self.pki.server_key)),
            ],
            "zastava-backend" => vec![("ca.crt", read(&self.pki.ca))],
            "zastava-authority-dpop" => vec![("key.pem", read(&self.dpop_key))],
            "zastava-authority-mtls" => vec![
                ("tls.crt", read(&self.pki.client_cert)),
                ("tls.key", read(&self.pki.client_key)),
            ],
            other => panic!("a Secret the deployment docs do not describe: {other}"),
        };
        files
            .into_iter()
            .map(|(name, bytes)| (name.to_owned(), bytes))
            .collect()
    }
}

/// A process's line `Name:` of /proc/<pid>/status.
fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {name} in\n{status}"))
}

/// The capability bits of names such as `BPF`.
fn capability_bits(names: &[&str]) -> u64 {
    names
        .iter()
        .map(|name| match *name {
            "DAC_READ_SEARCH" => 2,
            "SYS_PTRACE" => 19,
            "PERFMON" => 38,
            "BPF" => 39,
            other => panic!("unexpected capability {other}"),
        })
        .fold(0, |bits, cap| bits | 1 << cap)
}

/// The runtime spec containerd gave a container (`ContainerStatus` verbose info).
fn runtime_spec(containerd: &Containerd, id: &str) -> Value {
    let reply = containerd
        .container_status(id)
        .expect("the container exists");
    let info: Value = serde_json::from_str(&reply.info["info"]).unwrap();
    info["runtimeSpec"].clone()
}

fn wait_running(containerd: &Containerd, started: &Started, name: &str, ready: &str) -> u32 {
    let id = &started.containers[name];
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let log = started.log(name);
        if log.contains(ready) {
            let reply = containerd.container_status(id).unwrap();
            let info: Value = serde_json::from_str(&reply.info["info"]).unwrap();
            return info["pid"].as_u64().unwrap() as u32;
        }
        let state = containerd.container_status(id).unwrap().status.unwrap();
        assert_ne!(
            state.state,
            proto::ContainerState::ContainerExited as i32,
            "{name} exited with {}:\n{log}",
            state.exit_code
        );
        assert!(
            Instant::now() < deadline,
            "{name} never logged {ready:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The observer DaemonSet of `overlay`, its pod spec changed by `edit` and the
/// `zastava-deployment` ConfigMap given `deployment` (as an overlay's `behavior: merge`
/// would), started against `containerd` (whose socket directory stands for the node's
/// /run/containerd), with fresh host directories for the spool and the event log.
fn start_observer(
    containerd: &mut Containerd,
    overlay: &str,
    edit: &dyn Fn(&mut Value),
    deployment: &[(&str, &str)],
    host_dirs: &TempDir,
    secrets: &Secrets,
) -> Result<Started, String> {
    let mut docs = render(overlay);
    let map = docs
        .iter_mut()
        .find(|d| {
            d["kind"] == "ConfigMap"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("zastava-deployment-"))
        })
        .expect("the zastava-deployment ConfigMap is rendered");
    for (key, value) in deployment {
        map["data"][*key] = Value::from(*value);
    }
    let mut template = object(&docs, "DaemonSet", "zastava-observer")["spec"]["template"].clone();
    edit(&mut template);
    let runtime_dir = containerd.socket.parent().unwrap().to_owned();
    let spool = host_dirs.path().join("var-lib-zastava");
    let events = host_dirs.path().join("var-log-stellaops-runtime");
    let host_path = |host: &str| match host {
        "/run/containerd" => Some(runtime_dir.clone()),
        "/var/lib/zastava" => Some(spool.clone()),
        "/var/log/stellaops/runtime" => Some(events.clone()),
        _ => None,
    };
    let secret = |name: &str| secrets.files(name);
    containerd.start_deployed(
        &DeployedPod {
            docs: &docs,
            name: format!("zastava-observer-{}", unique("x").replace('-', "")),
            namespace: "zastava-system".into(),
            template: &template,
            node_name: NODE,
        },
        &Volumes {
            host_path: &host_path,
            secret: &secret,
        },
    )
}

fn import_images(containerd: &Containerd) {
    let images = images();
    for image in [&images.observer, &images.webhook] {
        containerd.import(&image.archive);
    }
}

#[test]
fn the_observer_daemonset_runs_with_four_capabilities_and_attributes_a_pods_exec_and_open() {
    require_root();
    let _ports = NODE_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let mut containerd = Containerd::start();
    import_images(&containerd);
    let host_dirs = TempDir::new("zastava-node");
    let secrets = Secrets::new(vec!["scanner.stellaops.svc".into()]);

    // The pod as deployed: least privilege, nothing privileged.
    let docs = render("overlays/capture");
    let template = &object(&docs, "DaemonSet", "zastava-observer")["spec"]["template"];
    let security = &container(template, "observer")["securityContext"];
    assert_eq!(security["privileged"], false, "{security}");
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let granted: Vec<&str> = security["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(granted, ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"]);
    assert_eq!(
        template["spec"]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );

    // The installation's identity, from the ConfigMap every container reads through
    // `envFrom`; records carry it when asked to.
    let include_deployment = |template: &mut Value| {
        let observer = template["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|c| c["name"] == "observer")
            .unwrap();
        observer["env"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "name": "ZASTAVA__NDJSON__INCLUDE_DEPLOYMENT",
                "value": "true",
            }));
    };
    let started = start_observer(
        &mut containerd,
        "overlays/capture",
        &include_deployment,
        &[
            ("TENANT", "acme"),
            ("ENVIRONMENT", "prod"),
            ("DEPLOYMENT", "eu-west-7"),
        ],
        &host_dirs,
        &secrets,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", containerd.log()));
    let pid = wait_running(&containerd, &started, "observer", "observer ready");

    // From outside, the process is what the pod asked for.
    let id = &started.containers["observer"];
    assert_eq!(
        status_field(pid, "Uid").split_whitespace().next(),
        Some("0")
    );
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            u64::from_str_radix(&status_field(pid, set), 16).unwrap(),
            capability_bits(&granted),
            "{set} of the observer"
        );
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // 2: a seccomp filter is installed (the runtime's default profile).
    assert_eq!(status_field(pid, "Seccomp"), "2");
    let spec = runtime_spec(&containerd, id);
    assert_eq!(spec["root"]["readonly"], true, "{}", spec["root"]);
    // The host's PID namespace: the observer sees this test's process.
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap(),
        std::fs::read_link("/proc/self/ns/pid").unwrap()
    );

    // A labelled workload pod, started after the observer.
    let marker = format!("/marker-{}", unique("open"));
    let script = format!("echo seen > {marker}; cat {marker}; exec sleep 60");
    let workload = containerd.run_pod(&PodSpec {
        name: "payments-api-5c7d9-x8k2q",
        namespace: "payments",
        labels: &[
            ("stellaops.workload/id", "payments-api"),
            ("stellaops.workload/tenant", "acme"),
            ("pod-template-hash", "5c7d9"),
        ],
    });
    let workload_id =
        containerd.run_container(&workload, "api", BUSYBOX, &["/bin/sh", "-c", &script]);
    let events = started.volumes["events"].join("zastava.runtime.ndjson");
    let deadline = Instant::now() + TIMEOUT;
    let (exec, open) = loop {
        let records: Vec<Value> = std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let mine = |e: &&Value| e["containerId"] == workload_id.as_str();
        let exec = records
            .iter()
            .filter(mine)
            .find(|e| e["edgeType"] == "syscall" && e["args"] == serde_json::json!(["cat", marker]))
            .cloned();
        let open = records
            .iter()
            .filter(mine)
            .find(|e| {
                e["edgeType"] == "fs"
                    && e["path"] == marker.as_str()
                    && e["process"]["comm"] == "cat"
            })
            .cloned();
        if let (Some(exec), Some(open)) = (exec, open) {
            break (exec, open);
        }
        assert!(
            Instant::now() < deadline,
            "the workload's exec and open never reached {}:\n{}",
            events.display(),
            started.log("observer")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for e in [&exec, &open] {
        assert_eq!(e["pod"], "payments-api-5c7d9-x8k2q", "{e}");
        assert_eq!(e["namespace"], "payments", "{e}");
        assert_eq!(e["workloadId"], "payments-api", "{e}");
        assert_eq!(e["workloadIdSource"], "label", "{e}");
        assert_eq!(e["tenant"], "acme", "{e}");
        assert_eq!(
            e["deployment"],
            serde_json::json!({"tenant": "acme", "environment": "prod", "cluster": "eu-west-7"}),
            "{e}"
        );
        assert_eq!(
            e["imageDigest"],
            containerd.images.busybox_manifest.as_str(),
            "{e}"
        );
        assert_eq!(e["node"], NODE, "{e}");
        assert_eq!(
            e["hostId"],
            std::fs::read_to_string("/etc/machine-id").unwrap().trim(),
            "{e}"
        );
    }
    // busybox's shell runs its applets through /proc/self/exe: the kernel's view names the
    // file, and what the shell asked for is kept.
    assert_eq!(exec["path"], "/bin/busybox", "{exec}");
    assert_eq!(exec["requestedPath"], "/proc/self/exe", "{exec}");
    // Read through /proc of another process (CAP_SYS_PTRACE).
    assert_eq!(exec["process"]["exe"], "/bin/busybox", "{exec}");
    assert_eq!(exec["process"]["cwd"], "/", "{exec}");
    // The node's OS, through the host's /etc and /usr/lib/os-release.
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap();
    let pretty = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .unwrap()
        .trim_matches('"');
    assert_eq!(exec["osRelease"], pretty, "{exec}");
    assert_eq!(
        open["result"].as_i64().map(|fd| fd >= 0),
        Some(true),
        "{open}"
    );
    containerd.stop_pod(&workload);
}

#[test]
fn the_observer_without_cap_bpf_stops_and_names_what_it_lacks() {
    require_root();
    let _ports = NODE_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let mut containerd = Containerd::start();
    import_images(&containerd);
    let host_dirs = TempDir::new("zastava-node");
    let secrets = Secrets::new(vec!["scanner.stellaops.svc".into()]);
    let without_bpf = |template: &mut Value| {
        let add = template["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
            .as_array_mut()
            .unwrap();
        add.retain(|c| c != "BPF");
    };
    let started = start_observer(
        &mut containerd,
        "overlays/capture",
        &without_bpf,
        &[],
        &host_dirs,
        &secrets,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", containerd.log()));
    let id = &started.containers["observer"];
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        let status = containerd.container_status(id).unwrap().status.unwrap();
        if status.state == proto::ContainerState::ContainerExited as i32 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the observer kept running without CAP_BPF:\n{}",
            started.log("observer")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = started.log("observer");
    // 2: restarting cannot help (the container restarts into the same message).
    assert_eq!(status.exit_code, 2, "{log}");
    assert!(
        log.contains("cannot load the probes: this process lacks CAP_BPF")
            && log.contains("securityContext.capabilities.add"),
        "{log}"
    );
    assert!(
        !log.contains("CAP_PERFMON and"),
        "only CAP_BPF is missing:\n{log}"
    );
}

#[test]
fn the_webhook_deployment_runs_as_65532_read_only_without_capabilities_and_answers_over_tls() {
    require_root();
    let _ports = NODE_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let mut containerd = Containerd::start();
    import_images(&containerd);
    let docs = render("overlays/cert-manager");
    let certificate = docs
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["secretName"] == "zastava-webhook-tls")
        .unwrap();
    let names: Vec<String> = certificate["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    let secrets = Secrets::new(names);
    let template = &object(&docs, "Deployment", "zastava-webhook")["spec"]["template"];
    let secret = |name: &str| secrets.files(name);
    let started = containerd
        .start_deployed(
            &DeployedPod {
                docs: &docs,
                name: "zastava-webhook-6d5f8b7c9-q2w3e".into(),
                namespace: "zastava-system".into(),
                template,
                node_name: NODE,
            },
            &Volumes {
                host_path: &|_| None,
                secret: &secret,
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", containerd.log()));
    let pid = wait_running(&containerd, &started, "webhook", "webhook ready");
    let uid = status_field(pid, "Uid");
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>(),
        ["65532"; 4],
        "{uid}"
    );
    let gid = status_field(pid, "Gid");
    assert_eq!(
        gid.split_whitespace().collect::<Vec<_>>(),
        ["65532"; 4],
        "{gid}"
    );
    for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, set), "0000000000000000", "{set}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2");
    let spec = runtime_spec(&containerd, &started.containers["webhook"]);
    assert_eq!(spec["root"]["readonly"], true, "{}", spec["root"]);
    assert_eq!(spec["process"]["user"]["uid"], 65532);

    // The API server calls the Service by name; the pod serves on the node's port here.
    let service = object(&docs, "Service", "zastava-webhook");
    let registration = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingWebhookConfiguration")
        .unwrap();
    let target = &registration["webhooks"][0]["clientConfig"]["service"];
    let host = format!(
        "{}.{}.svc",
        target["name"].as_str().unwrap(),
        target["namespace"].as_str().unwrap()
    );
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "https");
    let https = container(template, "webhook")["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "https")
        .unwrap()["containerPort"]
        .as_u64()
        .unwrap() as u16;
    let path = target["path"].as_str().unwrap().to_owned();
    let ca = secrets.pki.ca.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let api_server = client_for(&ca, &host, ([127, 0, 0, 1], https).into());
            let ready = api_server
                .get(format!("https://{host}:{https}/readyz"))
                .send()
                .await
                .expect("TLS to the webhook by its Service name");
            assert_eq!(ready.status(), 200);
            // The backend does not exist here: no verdict, and the namespace fails closed.
            let image = format!("registry.example/shop/cart@{}", fresh_digest());
            let review = pod_review("deploy-7", "shop", &[("containers", "cart", &image)]);
            let reply = post_review(
                &api_server,
                &format!("https://{host}:{https}{path}"),
                &review,
            )
            .await;
            let response = &reply["response"];
            assert_eq!(response["uid"], "deploy-7", "{reply}");
            assert_eq!(response["allowed"], false, "{reply}");
            let message = response["status"]["message"].as_str().unwrap();
            assert!(
                message.contains(&image) && message.contains("fails closed"),
                "{message}"
            );
        });
}
