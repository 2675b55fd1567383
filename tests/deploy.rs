//! The deployment files under `deploy/`: the Kubernetes manifests as `kubectl kustomize`
//! renders them for a cluster, the systemd unit and the alerting rules, each checked against
//! the binaries it runs — the configuration they are given must be one the binaries accept,
//! and every path, port and name must meet its counterpart.

mod common;
#[path = "deploy/identity.rs"]
mod identity;
#[path = "deploy/logging.rs"]
mod logging;
#[path = "deploy/monitoring.rs"]
mod monitoring;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use common::{
    backend::Pki,
    containerd::{Containerd, PodSpec, BUSYBOX},
    observer_bin, require_root,
    webhook::{client_for, fresh_digest, pod_review, post_review},
    webhook_bin, Observer, TempDir, TIMEOUT,
};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `kubectl kustomize deploy/kubernetes/<dir>`: the objects a cluster would receive.
fn render(dir: &str) -> Vec<Value> {
    let path = repo().join("deploy/kubernetes").join(dir);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run kubectl ({e}); it renders the kustomize overlays under test")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {}:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = text
        .split("\n---\n")
        .map(|doc| serde_yaml::from_str(doc).expect("kubectl writes YAML"))
        .collect();
    for doc in &docs {
        for field in ["apiVersion", "kind"] {
            assert!(doc[field].is_string(), "no {field} in {doc}");
        }
        assert!(doc["metadata"]["name"].is_string(), "no name in {doc}");
        let cluster_scoped = ["Namespace", "ValidatingWebhookConfiguration"];
        if !cluster_scoped.contains(&str_of(&doc["kind"])) {
            assert_eq!(
                doc["metadata"]["namespace"], "zastava-system",
                "{dir}: {} {} is not in zastava-system",
                doc["kind"], doc["metadata"]["name"]
            );
        }
    }
    docs
}

fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

fn str_of(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn named<'a>(items: &'a Value, name: &str) -> &'a Value {
    list(items)
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("nothing named {name} in {items}"))
}

/// The port number of `addr` (`0.0.0.0:9464`).
fn port_of(addr: &str) -> u64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr} has no port"))
}

/// A pod's filesystem as its container would see it, laid out in a temporary directory:
/// each volume mount is a directory holding what the volume would (ConfigMap data, the
/// files an operator puts in a Secret, an empty host directory). Paths in the pod are
/// translated to paths in that directory, as the mounts would.
struct PodFs {
    dir: TempDir,
    /// (mount path, volume, directory here), longest mount path first.
    mounts: Vec<(String, Value, PathBuf)>,
    /// The CA behind the Secrets' certificates.
    pki: Pki,
    /// The DPoP key of the Secret zastava-authority-dpop.
    dpop_key: PathBuf,
    /// The ConfigMaps of the rendered manifests, for `envFrom`.
    config_maps: Vec<Value>,
}

impl PodFs {
    /// Every volume a fresh directory.
    fn new(docs: &[Value], pod: &Value, container: &Value) -> PodFs {
        PodFs::with_host(docs, pod, container, &|_| None, &[])
    }

    /// As `new`, except that `host` may name the directory a volume is (a hostPath volume
    /// on this machine), and each of `parents` (a directory of the container holding mounts,
    /// such as `/host`) is laid out too, holding just those mounts.
    fn with_host(
        docs: &[Value],
        pod: &Value,
        container: &Value,
        host: &dyn Fn(&Value) -> Option<PathBuf>,
        parents: &[&str],
    ) -> PodFs {
        let dir = TempDir::new("zastava-pod");
        // The serving certificate is for the names its Certificate asks for, as
        // cert-manager would issue it.
        let pki = match docs.iter().find(|d| {
            d["kind"] == "Certificate" && d["spec"]["secretName"] == "zastava-webhook-tls"
        }) {
            Some(certificate) => Pki::generate_for(
                list(&certificate["spec"]["dnsNames"])
                    .iter()
                    .map(|n| str_of(n).to_owned())
                    .collect(),
            ),
            None => Pki::generate(),
        };
        let mut mounts = Vec::new();
        for (i, mount) in list(&container["volumeMounts"]).iter().enumerate() {
            let volume = named(&pod["volumes"], str_of(&mount["name"])).clone();
            let here = host(&volume).unwrap_or_else(|| dir.path().join(format!("volume-{i}")));
            std::fs::create_dir_all(&here).unwrap();
            mounts.push((str_of(&mount["mountPath"]).to_owned(), volume, here));
        }
        for (i, parent) in parents.iter().enumerate() {
            let here = dir.path().join(format!("parent-{i}"));
            for (path, _, target) in &mounts {
                if let Some(rest) = path.strip_prefix(&format!("{parent}/")) {
                    let link = here.join(rest);
                    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
                    std::os::unix::fs::symlink(target, link).unwrap();
                }
            }
            mounts.push(((*parent).to_owned(), Value::Null, here));
        }
        mounts.sort_by_key(|(path, _, _)| std::cmp::Reverse(path.len()));
        // The DPoP key an operator puts in zastava-authority-dpop.
        let dpop_key = dir.path().join("dpop-key.pem");
        common::authority::generate_dpop_key(&dpop_key);
        let fs = PodFs {
            dir,
            mounts,
            pki,
            dpop_key,
            config_maps: docs
                .iter()
                .filter(|d| d["kind"] == "ConfigMap")
                .cloned()
                .collect(),
        };
        for (_, volume, here) in &fs.mounts {
            if let Some(name) = volume["configMap"]["name"].as_str() {
                let map = object(docs, "ConfigMap", name);
                for (file, text) in map["data"].as_object().expect("ConfigMap data") {
                    std::fs::write(here.join(file), fs.translate(str_of(text))).unwrap();
                }
            } else if let Some(name) = volume["secret"]["secretName"].as_str() {
                // What the operator (or cert-manager) puts in each Secret the pods mount.
                let files: &[(&str, &Path)] = match name {
                    "zastava-webhook-tls" => &[
                        ("tls.crt", &fs.pki.server_cert),
                        ("tls.key", &fs.pki.server_key),
                    ],
                    "zastava-backend" => &[("ca.crt", &fs.pki.ca)],
                    "zastava-authority-dpop" => &[("key.pem", &fs.dpop_key)],
                    "zastava-authority-mtls" => &[
                        ("tls.crt", &fs.pki.client_cert),
                        ("tls.key", &fs.pki.client_key),
                    ],
                    other => panic!("a Secret the deployment docs do not describe: {other}"),
                };
                let mut contents: Vec<(&str, Vec<u8>)> = files
                    .iter()
                    .map(|(file, source)| (*file, std::fs::read(source).unwrap()))
                    .collect();
                if name == "zastava-backend" {
                    // The bootstrap token of the Authority-offline procedure.
                    contents.push(("token", b"operator-token\n".to_vec()));
                }
                write_secret_volume(here, &contents);
            }
        }
        fs
    }

    /// Replaces the files of the Secret volume `secret` as the kubelet does when the Secret
    /// changes.
    fn renew_secret(&self, secret: &str, files: &[(&str, Vec<u8>)]) {
        let (_, _, here) = self
            .mounts
            .iter()
            .find(|(_, v, _)| v["secret"]["secretName"] == secret)
            .unwrap_or_else(|| panic!("no volume of Secret {secret}"));
        write_secret_volume(here, files);
    }

    /// `text` with every path inside a mount moved to where that mount is here.
    fn translate(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (path, _, here) in &self.mounts {
            text = text.replace(&format!("{path}/"), &format!("{}/", here.display()));
            text = text.replace(&format!("\"{path}\""), &format!("\"{}\"", here.display()));
            if text == *path {
                text = here.display().to_string();
            }
        }
        text
    }

    /// The volume a path printed by the binary (a translated path) lies in.
    fn volume_of(&self, printed: &str) -> &Value {
        self.mounts
            .iter()
            .find(|(_, _, here)| Path::new(printed).starts_with(here))
            .map(|(_, volume, _)| volume)
            .unwrap_or_else(|| {
                panic!(
                    "{printed} is not on any volume of the pod (under {})",
                    self.dir.path().display()
                )
            })
    }

    /// The host directory behind a printed path, which must be on a hostPath volume.
    fn host_path_of(&self, printed: &str) -> String {
        let volume = self.volume_of(printed);
        let (_, _, here) = self.mounts.iter().find(|(_, v, _)| v == volume).unwrap();
        let host = volume["hostPath"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{printed} is not on a hostPath volume: {volume}"));
        match Path::new(printed).strip_prefix(here).unwrap() {
            rest if rest.as_os_str().is_empty() => host.to_owned(),
            rest => Path::new(host).join(rest).display().to_string(),
        }
    }
}

/// Writes `files` into a Secret volume's directory the way the kubelet does, so that a
/// change is atomic: the data goes into a new hidden directory, `..data` is switched to it
/// by a rename, and each file is a symbolic link through `..data`.
fn write_secret_volume(dir: &Path, files: &[(&str, Vec<u8>)]) {
    static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let data = format!("..2026_11_22_00_00_00.{generation:09}");
    std::fs::create_dir(dir.join(&data)).unwrap();
    for (file, bytes) in files {
        std::fs::write(dir.join(&data).join(file), bytes).unwrap();
    }
    std::os::unix::fs::symlink(&data, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for (file, _) in files {
        let link = dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), link).unwrap();
        }
    }
}

/// A container's command as the pod would start it (`binary` stands for the command).
fn container_command(fs: &PodFs, container: &Value, binary: &str) -> Command {
    container_command_as(fs, None, container, binary)
}

/// As `container_command`; with `pod`, run as the user and group its security context
/// names, with no capabilities (as root otherwise).
fn container_command_as(
    fs: &PodFs,
    pod: Option<&Value>,
    container: &Value,
    binary: &str,
) -> Command {
    let command: Vec<&str> = list(&container["command"]).iter().map(str_of).collect();
    assert_eq!(
        command,
        [Path::new(binary).file_name().unwrap().to_str().unwrap()],
        "the container runs the binary"
    );
    let mut run = match pod.map(|p| &p["securityContext"]) {
        Some(security) if security["runAsUser"].is_u64() => {
            let mut run = Command::new("setpriv");
            run.arg(format!("--reuid={}", security["runAsUser"]))
                .arg(format!(
                    "--regid={}",
                    security["runAsGroup"].as_u64().unwrap_or(0)
                ))
                .args(["--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
                .arg(binary);
            run
        }
        _ => Command::new(binary),
    };
    run.args(
        list(&container["args"])
            .iter()
            .map(|a| fs.translate(str_of(a))),
    )
    .env_clear();
    // envFrom first: `env` wins over it, as in Kubernetes.
    for from in list(&container["envFrom"]) {
        let name = str_of(&from["configMapRef"]["name"]);
        let map = fs
            .config_maps
            .iter()
            .find(|m| m["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("envFrom names ConfigMap {name}, which is not rendered"));
        let prefix = from["prefix"].as_str().unwrap_or_default();
        for (key, value) in map["data"].as_object().expect("ConfigMap data") {
            run.env(format!("{prefix}{key}"), str_of(value));
        }
    }
    for var in list(&container["env"]) {
        let value = match &var["valueFrom"] {
            Value::Null => fs.translate(str_of(&var["value"])),
            from => match from["fieldRef"]["fieldPath"].as_str() {
                Some("spec.nodeName") => NODE.to_owned(),
                _ => panic!("an environment variable the test cannot fill: {var}"),
            },
        };
        run.env(str_of(&var["name"]), value);
    }
    run
}

/// The name of the node the pods of these tests are scheduled on.
const NODE: &str = "worker-3.cluster.internal";

/// Runs a container's command with `--check-config`; returns the settings it printed.
fn check_config(fs: &PodFs, container: &Value, binary: &str) -> BTreeMap<String, String> {
    let mut run = container_command(fs, container, binary);
    let args: Vec<_> = run.get_args().map(|a| a.to_owned()).collect();
    let out = run.arg("--check-config").output().expect("run the binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{binary} {args:?} --check-config refused the deployment's configuration:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn container_port(container: &Value, name: &str) -> u64 {
    named(&container["ports"], name)["containerPort"]
        .as_u64()
        .unwrap()
}

/// The observer's DaemonSet in `overlay`: its configuration is valid, and everything it
/// writes or reads from the host is on the host.
fn check_observer(overlay: &str, runtime_socket: &str) -> BTreeMap<String, String> {
    let docs = render(overlay);
    let daemonset = object(&docs, "DaemonSet", "zastava-observer");
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = named(&pod["containers"], "observer");
    assert_eq!(pod["hostPID"], true, "/proc must be the host's");
    // Least privilege: four capabilities, not a privileged container (tests/containerized.rs
    // runs it so, under containerd).
    assert_eq!(container["securityContext"]["privileged"], false);
    assert_eq!(
        container["securityContext"]["capabilities"]["add"],
        serde_json::json!(["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"])
    );
    assert_eq!(
        pod["serviceAccountName"],
        object(&docs, "ServiceAccount", "zastava-observer")["metadata"]["name"]
    );
    let fs = PodFs::new(&docs, pod, container);
    let settings = check_config(&fs, container, observer_bin());

    // The spool and the NDJSON log are on the host: they outlive the pod.
    assert_eq!(
        fs.host_path_of(&settings["spool.dir"]),
        "/var/lib/zastava/spool"
    );
    let ndjson = fs.host_path_of(&settings["ndjson.path"]);
    assert!(
        ndjson.starts_with("/var/log/stellaops/runtime/") && ndjson.ends_with(".ndjson"),
        "{ndjson}"
    );
    // The host's identity files, cgroup tree and container runtime.
    // observer.host_root itself need not be a mount (only its etc/ is); what is read
    // under it is.
    let host_root = &settings["observer.host_root"];
    assert_eq!(
        fs.host_path_of(&fs.translate(&format!("{host_root}/etc/machine-id"))),
        "/etc/machine-id"
    );
    assert_eq!(
        fs.host_path_of(&settings["observer.cgroup_root"]),
        "/sys/fs/cgroup"
    );
    assert_eq!(fs.host_path_of(&settings["cri.endpoint"]), runtime_socket);
    assert_eq!(settings["observer.proc_root"], "/proc");
    assert_eq!(settings["observer.node_name"], NODE);

    // Metrics and probes meet on one port.
    let port = container_port(container, "metrics");
    assert_eq!(port_of(&settings["metrics.addr"]), port);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path);
        assert_eq!(container[probe]["httpGet"]["port"], "metrics");
    }
    assert_eq!(
        daemonset["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        port.to_string()
    );
    if settings["authority.issuer"] != "(none)" {
        check_authority(&fs, &settings);
        // The OpTok cache is on the host, beside the spool: a restarted pod reuses it.
        assert_eq!(
            fs.host_path_of(&settings["authority.token_cache_dir"]),
            "/var/lib/zastava/authority"
        );
    }
    settings
}

/// The Authority settings of a pod: DPoP and mutual TLS required, the key and the client
/// certificate from the Secrets the runbook names.
fn check_authority(fs: &PodFs, settings: &BTreeMap<String, String>) {
    assert_eq!(
        settings["authority.issuer"],
        "https://authority.stellaops.svc/"
    );
    assert_eq!(settings["authority.client_id"], "zastava-runtime");
    assert_eq!(
        settings["authority.scopes"],
        "aud:scanner api:scanner.runtime.write"
    );
    assert_eq!(settings["authority.require_dpop"], "true");
    assert_eq!(settings["authority.require_mutual_tls"], "true");
    assert_eq!(settings["authority.allow_static_token_fallback"], "false");
    for (key, secret) in [
        ("authority.dpop_key_file", "zastava-authority-dpop"),
        ("authority.client_cert_file", "zastava-authority-mtls"),
    ] {
        assert_eq!(
            fs.volume_of(&settings[key])["secret"]["secretName"],
            secret,
            "{key}"
        );
    }
}

#[test]
fn the_observer_daemonset_ships_with_both_feature_flags_off() {
    let settings = check_observer("base", CONTAINERD);
    assert_eq!(settings["zastava.attach.enabled"], "false");
    assert_eq!(settings["scanner.runtime.capture.enabled"], "false");
    assert_eq!(settings["backend.url"], "(none)");
}

const CONTAINERD: &str = "/run/containerd/containerd.sock";

#[test]
fn the_cri_o_overlay_talks_to_cri_o_and_mounts_no_containerd() {
    let settings = check_observer("overlays/cri-o", "/run/crio/crio.sock");
    assert_eq!(settings["zastava.attach.enabled"], "false");
    let docs = render("overlays/cri-o");
    let daemonset = object(&docs, "DaemonSet", "zastava-observer");
    let volumes = &daemonset["spec"]["template"]["spec"]["volumes"];
    assert!(
        !list(volumes)
            .iter()
            .any(|v| v["hostPath"]["path"] == "/run/containerd"),
        "{volumes}"
    );
}

#[test]
fn the_capture_overlays_attach_the_probes_and_ship_to_the_backend() {
    for overlay in ["overlays/capture", "overlays/complete"] {
        let settings = check_observer(overlay, CONTAINERD);
        assert_eq!(settings["zastava.attach.enabled"], "true", "{overlay}");
        assert_eq!(
            settings["scanner.runtime.capture.enabled"], "true",
            "{overlay}"
        );
        assert_eq!(settings["backend.url"], "https://scanner.stellaops.svc/");
    }
}

#[test]
fn the_observer_daemonset_attributes_a_pods_exec_as_deployed() {
    // The capture overlay's observer, started as its pod would be: the host's /etc,
    // cgroup tree and tracefs are this machine's, containerd's socket directory is a
    // private containerd's, and the spool and event log are fresh directories.
    let mut containerd = Containerd::start();
    let docs = render("overlays/capture");
    let daemonset = object(&docs, "DaemonSet", "zastava-observer");
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = named(&pod["containers"], "observer");
    let runtime_dir = containerd.socket.parent().unwrap().to_owned();
    let fs = PodFs::with_host(
        &docs,
        pod,
        container,
        &|volume| {
            let host = volume["hostPath"]["path"].as_str()?;
            match (host, volume["hostPath"]["type"].as_str()) {
                ("/run/containerd", _) => Some(runtime_dir.clone()),
                (_, Some("Directory")) => Some(PathBuf::from(host)),
                _ => None,
            }
        },
        &["/host"],
    );
    let settings = check_config(&fs, container, observer_bin());
    let events = PathBuf::from(&settings["ndjson.path"]);
    let (observer, log, mut seen) = Running::start(
        container_command(&fs, container, observer_bin()),
        "observer ready",
    );
    // As deployed, the log is JSON to its first line.
    assert_eq!(
        logging::jq(
            r#"select(.message == "observer ready") | .level"#,
            seen.as_bytes()
        ),
        "INFO\n"
    );

    let script = format!("exec sleep {}", 30 + std::process::id() % 7);
    let sandbox = containerd.run_pod(&PodSpec {
        name: "cart-7d9f8b6c5-x2x7q",
        namespace: "shop",
        // As a Deployment's ReplicaSet labels its pods.
        labels: &[
            ("stellaops.workload/tenant", "acme"),
            ("pod-template-hash", "7d9f8b6c5"),
        ],
    });
    let id = containerd.run_container(&sandbox, "cart", BUSYBOX, &["/bin/sh", "-c", &script]);
    let deadline = std::time::Instant::now() + TIMEOUT;
    let (exec, start) = loop {
        let records: Vec<Value> = std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let exec = records
            .iter()
            .find(|e| {
                e["edgeType"] == "syscall"
                    && e["containerId"] == id.as_str()
                    && e["args"][2] == script.as_str()
            })
            .cloned();
        let start = records
            .iter()
            .find(|e| e["eventType"] == "containerStart" && e["containerId"] == id.as_str())
            .cloned();
        if let (Some(exec), Some(start)) = (exec, start) {
            break (exec, start);
        }
        while let Ok(line) = log.try_recv() {
            seen.push_str(&line);
            seen.push('\n');
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pod's exec and start never reached {}:\n{seen}",
            events.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    containerd.stop_pod(&sandbox);
    drop(observer);
    for e in [&exec, &start] {
        assert_eq!(e["namespace"], "shop", "{e}");
        assert_eq!(e["pod"], "cart-7d9f8b6c5-x2x7q", "{e}");
        assert_eq!(e["workloadId"], "shop/cart", "{e}");
        assert_eq!(e["tenant"], "acme", "{e}");
        assert_eq!(
            e["imageDigest"],
            containerd.images.busybox_manifest.as_str(),
            "{e}"
        );
    }
    // The node as Kubernetes names it; its identity from the host's /etc, through /host/etc.
    let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap();
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap();
    let pretty = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .unwrap()
        .trim_matches('"');
    for e in [&exec, &start] {
        assert_eq!(e["node"], NODE, "{e}");
        assert_eq!(e["hostId"], machine_id.trim(), "{e}");
        assert_eq!(e["osRelease"], pretty, "{e}");
    }
}

/// The lines a child writes to `stream`, as they come.
fn log_lines(stream: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (lines, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stream)).map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    log
}

/// Waits for a line containing `needle`, keeping what was read in `seen`.
fn wait_for_line(log: &std::sync::mpsc::Receiver<String>, seen: &mut String, needle: &str) {
    while !seen.contains(needle) {
        match log.recv_timeout(TIMEOUT) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(_) => panic!("never logged {needle:?}:\n{seen}"),
        }
    }
}

#[test]
fn the_webhook_is_registered_only_where_its_certificate_authority_is_known() {
    for (overlay, registered) in [
        ("base", false),
        ("overlays/capture", false),
        ("overlays/cert-manager", true),
        ("overlays/complete", true),
        ("overlays/cri-o", true),
    ] {
        let docs = render(overlay);
        let registrations = docs
            .iter()
            .filter(|d| d["kind"] == "ValidatingWebhookConfiguration")
            .count();
        assert_eq!(registrations, usize::from(registered), "{overlay}");
        if registered {
            check_registered_webhook(&docs);
        }
    }
}

/// The webhook's Deployment, Service, registration and certificate in `docs` meet, and its
/// configuration is one the binary accepts.
fn check_registered_webhook(docs: &[Value]) {
    let deployment = object(docs, "Deployment", "zastava-webhook");
    let namespace = str_of(&deployment["metadata"]["namespace"]);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = named(&pod["containers"], "webhook");
    let fs = PodFs::new(docs, pod, container);
    let settings = check_config(&fs, container, webhook_bin());

    // Restricted: no root, no privilege, nothing written to the image.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);

    // API server → Service → container port → the address the webhook serves HTTPS on.
    let https = container_port(container, "https");
    assert_eq!(port_of(&settings["server.addr"]), https);
    let service = object(docs, "Service", "zastava-webhook");
    let service_port = named(&service["spec"]["ports"], "https");
    assert_eq!(service_port["targetPort"], "https");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let registration = only(docs, "ValidatingWebhookConfiguration");
    let webhooks = list(&registration["webhooks"]);
    assert_eq!(webhooks.len(), 1);
    let hook = &webhooks[0];
    let target = &hook["clientConfig"]["service"];
    assert_eq!(target["name"], service["metadata"]["name"]);
    assert_eq!(target["namespace"], namespace);
    assert_eq!(target["port"], service_port["port"]);
    assert_eq!(target["path"], "/validate");
    assert_eq!(hook["sideEffects"], "None");
    assert!(list(&hook["admissionReviewVersions"]).contains(&"v1".into()));

    // Every kind the webhook judges is sent to it.
    let mut sent = BTreeSet::new();
    for rule in list(&hook["rules"]) {
        let ops: Vec<&str> = list(&rule["operations"]).iter().map(str_of).collect();
        assert!(ops.contains(&"CREATE") && ops.contains(&"UPDATE"), "{rule}");
        for group in list(&rule["apiGroups"]) {
            for resource in list(&rule["resources"]) {
                sent.insert(format!("{}/{}", str_of(group), str_of(resource)));
            }
        }
    }
    for kind in [
        "/pods",
        "/pods/ephemeralcontainers",
        "apps/deployments",
        "apps/statefulsets",
        "apps/daemonsets",
        "apps/replicasets",
        "batch/jobs",
        "batch/cronjobs",
    ] {
        assert!(sent.contains(kind), "{kind} is not sent to the webhook");
    }

    // The webhook decides within its budget, before the API server gives up on it.
    let budget = humantime::parse_duration(&settings["policy.budget"]).unwrap();
    let timeout = hook["timeoutSeconds"].as_u64().unwrap();
    assert!(
        budget.as_secs_f64() + 1.0 <= timeout as f64,
        "budget {budget:?} leaves no room under timeoutSeconds {timeout}"
    );
    // It never judges its own namespace's pods (so it can always be redeployed) nor the
    // control plane's.
    let excluded = list(&hook["namespaceSelector"]["matchExpressions"])
        .iter()
        .find(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
        .expect("a namespace exclusion");
    for ns in [namespace, "kube-system"] {
        assert!(list(&excluded["values"]).contains(&ns.into()), "{ns}");
    }

    // The certificate: cert-manager writes it to the Secret the pods mount, for the name
    // the API server calls, and injects its CA into the registration.
    let tls = fs.volume_of(&settings["server.cert_file"]);
    assert_eq!(fs.volume_of(&settings["server.key_file"]), tls);
    let secret = str_of(&tls["secret"]["secretName"]);
    let certificate = docs
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["secretName"] == secret)
        .expect("a Certificate for the serving Secret");
    let dns_name = format!("{}.{namespace}.svc", str_of(&target["name"]));
    assert!(list(&certificate["spec"]["dnsNames"]).contains(&dns_name.clone().into()));
    assert_eq!(
        registration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{namespace}/{}", str_of(&certificate["metadata"]["name"]))
    );
    let issuer = str_of(&certificate["spec"]["issuerRef"]["name"]);
    object(docs, "Issuer", issuer);

    // OpToks for the backend, cached in memory (the root filesystem is read-only).
    check_authority(&fs, &settings);
    assert!(
        fs.volume_of(&settings["authority.token_cache_dir"])["emptyDir"].is_object(),
        "{}",
        settings["authority.token_cache_dir"]
    );

    // Probes and metrics.
    assert_eq!(
        port_of(&settings["metrics.addr"]),
        container_port(container, "metrics")
    );
    let ready = &container["readinessProbe"]["httpGet"];
    assert_eq!(
        (&ready["scheme"], &ready["port"], &ready["path"]),
        (&"HTTPS".into(), &"https".into(), &"/readyz".into())
    );
}

/// A child process stopped with SIGTERM when dropped.
struct Running(std::process::Child);

impl Running {
    /// Starts `command` and waits until its log (stderr) has a line containing `ready`.
    /// Returns the process, the rest of its log as it comes, and what it logged so far.
    fn start(
        mut command: Command,
        ready: &str,
    ) -> (Running, std::sync::mpsc::Receiver<String>, String) {
        let mut child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", command.get_program()));
        let log = log_lines(child.stderr.take().unwrap());
        let running = Running(child);
        let mut seen = String::new();
        wait_for_line(&log, &mut seen, ready);
        (running, log, seen)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: signalling a child this test started and has not reaped.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

#[test]
fn the_registered_webhook_serves_the_api_server_as_deployed() {
    let docs = render("overlays/complete");
    let deployment = object(&docs, "Deployment", "zastava-webhook");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = named(&pod["containers"], "webhook");
    let fs = PodFs::new(&docs, pod, container);
    // As the user the pod runs as, with no capabilities: the certificate and credentials
    // must be readable by it, as Secret volumes make them (mode 0644).
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    let (webhook, _log, seen) = Running::start(
        container_command_as(&fs, Some(pod), container, webhook_bin()),
        "webhook ready",
    );
    // As deployed, the log is JSON to its first line.
    assert_eq!(
        logging::jq(
            r#"select(.message == "webhook ready") | .level"#,
            seen.as_bytes()
        ),
        "INFO\n"
    );

    let status = std::fs::read_to_string(format!("/proc/{}/status", webhook.0.id())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().next().unwrap_or_default().to_owned())
    };
    assert_eq!(field("Uid:").as_deref(), Some("65532"), "{status}");
    assert_eq!(
        field("CapEff:").as_deref(),
        Some("0000000000000000"),
        "{status}"
    );

    // The API server calls the Service's DNS name; the Service forwards to the container
    // port, which the pod's network namespace maps to the same port here.
    let service = object(&docs, "Service", "zastava-webhook");
    let registration = only(&docs, "ValidatingWebhookConfiguration");
    let target = &registration["webhooks"][0]["clientConfig"]["service"];
    let host = format!(
        "{}.{}.svc",
        str_of(&target["name"]),
        str_of(&target["namespace"])
    );
    assert_eq!(
        named(&service["spec"]["ports"], "https")["targetPort"],
        "https"
    );
    let https = container_port(container, "https");
    let metrics = container_port(container, "metrics");
    let ca = fs.pki.ca.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let api_server = client_for(&ca, &host, ([127, 0, 0, 1], https as u16).into());
            // The readiness probe: over HTTPS, with the certificate issued for the name.
            let ready = api_server
                .get(format!("https://{host}:{https}/readyz"))
                .send()
                .await
                .expect("TLS to the webhook by its Service name");
            assert_eq!(ready.status(), 200);
            let live = reqwest::get(format!("http://127.0.0.1:{metrics}/healthz"))
                .await
                .unwrap();
            assert_eq!(live.status(), 200);

            // An admission review. The backend (https://scanner.stellaops.svc) does not
            // exist here, so the verdict cannot be had and the namespace fails closed.
            let image = format!("registry.example/shop/cart@{}", fresh_digest());
            let review = pod_review("deploy-1", "shop", &[("containers", "cart", &image)]);
            let path = str_of(&target["path"]);
            let sent = std::time::Instant::now();
            let reply = post_review(
                &api_server,
                &format!("https://{host}:{https}{path}"),
                &review,
            )
            .await;
            let response = &reply["response"];
            assert_eq!(response["uid"], "deploy-1", "{reply}");
            assert_eq!(response["allowed"], false, "{reply}");
            let message = str_of(&response["status"]["message"]);
            assert!(
                message.contains(&image) && message.contains("fails closed"),
                "{message}"
            );
            // Before the API server would give up, whatever the missing backend does.
            let timeout = registration["webhooks"][0]["timeoutSeconds"]
                .as_u64()
                .unwrap();
            assert!(
                sent.elapsed() < std::time::Duration::from_secs(timeout),
                "answered after {:?}",
                sent.elapsed()
            );

            // cert-manager renews the certificate (here from a new CA, so that which one
            // is served can be told apart) and the kubelet swaps the Secret volume's
            // files: the webhook serves the new one without a restart.
            let certificate = docs
                .iter()
                .find(|d| {
                    d["kind"] == "Certificate" && d["spec"]["secretName"] == "zastava-webhook-tls"
                })
                .unwrap();
            let renewed = Pki::generate_for(
                list(&certificate["spec"]["dnsNames"])
                    .iter()
                    .map(|n| str_of(n).to_owned())
                    .collect(),
            );
            fs.renew_secret(
                "zastava-webhook-tls",
                &[
                    ("tls.crt", std::fs::read(&renewed.server_cert).unwrap()),
                    ("tls.key", std::fs::read(&renewed.server_key).unwrap()),
                ],
            );
            let addr = ([127, 0, 0, 1], https as u16).into();
            let deadline = std::time::Instant::now() + TIMEOUT;
            loop {
                // A new client each time: a kept-alive connection keeps its handshake.
                let trusting_new = client_for(&renewed.ca, &host, addr);
                match trusting_new
                    .get(format!("https://{host}:{https}/readyz"))
                    .send()
                    .await
                {
                    Ok(reply) => {
                        assert_eq!(reply.status(), 200);
                        break;
                    }
                    Err(err) => assert!(
                        std::time::Instant::now() < deadline,
                        "the renewed certificate was never served: {err}"
                    ),
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            let trusting_old = client_for(&ca, &host, addr);
            assert!(
                trusting_old
                    .get(format!("https://{host}:{https}/readyz"))
                    .send()
                    .await
                    .is_err(),
                "the old certificate is still served"
            );
        });
    drop(webhook);
}

/// The unit file's `Key=value` lines (last one wins).
fn unit_settings(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The unit, with its binary and configuration where this checkout has them.
fn local_unit() -> (String, PathBuf) {
    let config = repo().join("deploy/systemd/observer.toml");
    let text = std::fs::read_to_string(repo().join("deploy/systemd/zastava-observer.service"))
        .unwrap()
        .replace("/usr/local/bin/zastava-observer", observer_bin())
        .replace("/etc/zastava/observer.toml", config.to_str().unwrap());
    (text, config)
}

#[test]
fn the_systemd_unit_verifies_and_keeps_its_state_where_the_configuration_writes() {
    let (text, _) = local_unit();
    let dir = TempDir::new("zastava-unit");
    let unit = dir.path().join("zastava-observer.service");
    std::fs::write(&unit, &text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("run systemd-analyze (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("zastava-observer.service"),
        "systemd-analyze complains about the unit:\n{stderr}"
    );

    let unit = unit_settings(&text);
    // ExecStartPre checks what ExecStart will run with.
    assert_eq!(
        unit["ExecStartPre"],
        format!("{} --check-config", unit["ExecStart"])
    );
    let args: Vec<&str> = unit["ExecStartPre"].split_whitespace().collect();
    // With the unit's environment, as systemd starts it.
    let environment = unit["Environment"]
        .split_whitespace()
        .filter_map(|a| a.split_once('='));
    let out = Command::new(args[0])
        .args(&args[1..])
        .env_clear()
        .envs(environment)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let settings: BTreeMap<&str, &str> =
        stdout.lines().filter_map(|l| l.split_once(" = ")).collect();
    assert_eq!(settings["zastava.attach.enabled"], "false");
    assert_eq!(settings["scanner.runtime.capture.enabled"], "false");
    // ProtectSystem=strict: only the directories systemd creates for the service are
    // writable, so the spool and the NDJSON log must be in them.
    assert_eq!(unit["ProtectSystem"], "strict");
    let state = format!("/var/lib/{}/", unit["StateDirectory"]);
    let logs = format!("/var/log/{}/", unit["LogsDirectory"]);
    assert!(settings["spool.dir"].starts_with(&state), "{state}");
    assert!(settings["ndjson.path"].starts_with(&logs), "{logs}");
    // A configuration that cannot work exits 2 and is not restarted in a loop.
    assert_eq!(unit["RestartPreventExitStatus"], "2");
}

#[test]
fn the_observer_works_with_only_the_capabilities_the_unit_grants() {
    require_root();
    let (text, _) = local_unit();
    let unit = unit_settings(&text);
    let caps: Vec<String> = unit["CapabilityBoundingSet"]
        .split_whitespace()
        .map(|c| {
            format!(
                "+{}",
                c.strip_prefix("CAP_").expect("CAP_ names").to_lowercase()
            )
        })
        .collect();
    let bounding = format!("--bounding-set=-all,{}", caps.join(","));

    // A shell of another user, started before the observer: the observer learns it from
    // /proc, and reading another user's /proc/<pid>/exe takes CAP_SYS_PTRACE.
    let dir = TempDir::new("zastava-caps");
    let target = dir.path().join("opened-by-nobody");
    std::fs::write(&target, "x").unwrap();
    let mut shell = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/bin/sh",
            "-c",
        ])
        .arg(format!("read line; exec 3< {}", target.display()))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("start a shell as nobody");
    let pid = shell.id();

    let observer = Observer::start_wrapped(&["setpriv", &bounding, "--"], &["--no-cri"]);
    std::io::Write::write_all(shell.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let path = target.to_str().unwrap();
    let event = observer.wait_for("the open by nobody's shell", |e| e["path"] == path);
    assert!(shell.wait().unwrap().success());
    let stopped = observer.stop();
    let process = &event["process"];
    assert_eq!(process["pid"], pid);
    assert_eq!(process["uid"], 65534);
    assert_eq!(
        process["exe"],
        std::fs::canonicalize("/bin/sh").unwrap().to_str().unwrap(),
        "{event}"
    );
    assert_eq!(process["args"][0], "/bin/sh", "{event}");
    assert!(
        stopped.stderr.contains("lost before decoding     0"),
        "{}",
        stopped.stderr
    );
}

#[test]
fn the_alert_rules_load_in_prometheus_and_fire_as_their_unit_tests_expect() {
    let promtool = repo().join("target/tools/promtool");
    let rules = repo().join("deploy/prometheus");
    for args in [
        ["check", "rules", "zastava-rules.yaml"],
        ["test", "rules", "zastava-rules.test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&rules)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}); `cargo xtask setup` fetches it",
                    promtool.display()
                )
            });
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Names of the metrics the binaries export: the one table both record by.
fn exported_metrics() -> BTreeSet<String> {
    zastava_platform::metrics::OBSERVER
        .iter()
        .chain(zastava_platform::metrics::WEBHOOK)
        .map(|m| m.name.to_owned())
        .collect()
}

/// Metric names are written in one place only: a string literal that looks like a metric
/// name anywhere else in the binaries' or the benchmarks' sources (outside unit tests)
/// would be a metric the table does not know, and one that starts with a series of a
/// metric the table has (`..._bucket{le="`) would be a copy of its name.
#[test]
fn metric_names_are_written_only_in_the_metrics_table() {
    fn walk(dir: &Path, exported: &BTreeSet<String>, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, exported, found);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.ends_with("platform/src/metrics.rs")
                && !path.ends_with("tests.rs")
            {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for literal in code.split('"').skip(1).step_by(2) {
                    let names = metric_names(literal);
                    let Some(first) = names.first() else {
                        continue;
                    };
                    let whole = first == literal;
                    let series =
                        literal.starts_with(first.as_str()) && is_exported_series(exported, first);
                    if whole || series {
                        found.push(format!("{}: \"{literal}\"", path.display()));
                    }
                }
            }
        }
    }
    let exported = exported_metrics();
    let mut found = Vec::new();
    for dir in ["observer-user", "bench"] {
        walk(&repo().join(dir), &exported, &mut found);
    }
    assert!(
        found.is_empty(),
        "metric names outside observer-user/platform/src/metrics.rs:\n{}",
        found.join("\n")
    );
}

/// Whether `name` is a series of an exported metric: the metric, or a histogram's
/// `_bucket`, `_sum` or `_count`.
fn is_exported_series(exported: &BTreeSet<String>, name: &str) -> bool {
    exported.contains(name)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|b| exported.contains(b)))
}

/// The `zastava_*` and `stella_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let at_word_start =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        // Byte comparisons: the prefixes are ASCII, so a match starts on a char boundary
        // and the name ends at the first byte outside [a-z0-9_], never inside a character.
        if at_word_start
            && (bytes[i..].starts_with(b"zastava_") || bytes[i..].starts_with(b"stella_"))
        {
            let end = bytes[i..]
                .iter()
                .position(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_'))
                .map_or(bytes.len(), |n| i + n);
            names.push(expr[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Fails if `expr` names a metric no binary exports (histogram series by their base name).
fn assert_exported(exported: &BTreeSet<String>, what: &str, expr: &str) {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{what}: {expr}");
    for name in names {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(*b)))
            .unwrap_or(&name);
        assert!(
            exported.contains(base),
            "{what} uses {name}, which no binary exports"
        );
    }
}

#[test]
fn every_alert_and_dashboard_query_names_metrics_the_binaries_export() {
    let exported = exported_metrics();
    assert!(
        exported.contains("zastava_runtime_events_seen_total")
            && exported.contains("zastava_admission_decisions_total"),
        "{exported:?}"
    );

    let text =
        std::fs::read_to_string(repo().join("deploy/prometheus/zastava-rules.yaml")).unwrap();
    let rules: Value = serde_yaml::from_str(&text).unwrap();
    let mut alerts = 0;
    for group in list(&rules["groups"]) {
        for rule in list(&group["rules"]) {
            let what = format!("alert {}", rule["alert"]);
            assert_exported(&exported, &what, str_of(&rule["expr"]));
            assert!(rule["labels"]["severity"].is_string(), "{rule}");
            assert!(rule["annotations"]["summary"].is_string(), "{rule}");
            alerts += 1;
        }
    }
    assert!(alerts >= 8, "{alerts} alerts");

    let text = std::fs::read_to_string(repo().join("deploy/grafana/zastava.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = 0;
    for panel in list(&dashboard["panels"]) {
        for target in list(&panel["targets"]) {
            let what = format!("panel {}", panel["title"]);
            assert_exported(&exported, &what, str_of(&target["expr"]));
            queries += 1;
        }
    }
    assert!(queries >= 10, "{queries} queries");
}

/// The Authority-offline procedure of docs/operations.md: the bootstrap token in the
/// Secret zastava-backend and the two variables `kubectl set env` adds make a configuration
/// both binaries accept, reading the token from that Secret.
#[test]
fn the_authority_offline_fallback_of_the_runbook_is_a_valid_configuration() {
    let docs = render("overlays/complete");
    let runbook = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let variables = [
        ("ZASTAVA__AUTHORITY__ALLOW_STATIC_TOKEN_FALLBACK", "true"),
        (
            "ZASTAVA__AUTHORITY__STATIC_TOKEN_FILE",
            "/var/run/secrets/zastava/backend/token",
        ),
    ];
    for (name, value) in variables {
        assert!(runbook.contains(&format!("{name}={value}")), "{name}");
    }
    for (kind, name, container, binary) in [
        ("DaemonSet", "zastava-observer", "observer", observer_bin()),
        ("Deployment", "zastava-webhook", "webhook", webhook_bin()),
    ] {
        let workload = object(&docs, kind, name);
        let pod = &workload["spec"]["template"]["spec"];
        let mut container = named(&pod["containers"], container).clone();
        let env = container["env"].as_array_mut().unwrap();
        for (name, value) in variables {
            env.push(serde_json::json!({"name": name, "value": value}));
        }
        let fs = PodFs::new(&docs, pod, &container);
        let settings = check_config(&fs, &container, binary);
        assert_eq!(settings["authority.allow_static_token_fallback"], "true");
        let token = &settings["authority.static_token_file"];
        assert_eq!(
            fs.volume_of(token)["secret"]["secretName"],
            "zastava-backend",
            "{binary}"
        );
        assert_eq!(std::fs::read_to_string(token).unwrap(), "operator-token\n");
    }
}
