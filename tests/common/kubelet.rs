//! What a kubelet makes of a deployed pod: the pod template of a rendered DaemonSet or
//! Deployment turned into the CRI calls the kubelet would make — the sandbox (namespaces,
//! cgroup parent by QoS class, pod security context), then each container (image by id,
//! command, environment, volume mounts, security context, resources, log file) — and run
//! by the tests' containerd.
//!
//! One thing differs from a cluster: there is no CNI here, so pods get the node's network
//! namespace (as `hostNetwork: true` would) and serve on the node's ports.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde_json::Value;
use zastava_testing::cri::proto;

use super::{
    containerd::{Containerd, Pod},
    unique, TempDir,
};

/// A pod to start as the kubelet would.
pub struct DeployedPod<'a> {
    /// The rendered objects (for ConfigMaps).
    pub docs: &'a [Value],
    pub name: String,
    pub namespace: String,
    /// `spec.template` of the workload.
    pub template: &'a Value,
    pub node_name: &'a str,
}

/// A pod the kubelet started.
pub struct Started {
    pub pod: Pod,
    /// Container name → id.
    pub containers: BTreeMap<String, String>,
    /// The pod's log directory (`<container>/0.log` in CRI log format).
    pub log_dir: PathBuf,
    /// Where each volume is on this machine, by volume name.
    pub volumes: BTreeMap<String, PathBuf>,
    /// Holds the pod's own directories (ConfigMaps, Secrets, emptyDirs, logs).
    pub dir: TempDir,
}

impl Started {
    /// A container's log so far: the lines it wrote to stdout and stderr.
    pub fn log(&self, container: &str) -> String {
        let text =
            fs::read_to_string(self.log_dir.join(container).join("0.log")).unwrap_or_default();
        // CRI log lines: `<time> <stream> <P|F> <text>`.
        text.lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A Secret's files: (name, bytes).
pub type SecretFiles = Vec<(String, Vec<u8>)>;

/// Where the kubelet would take each volume from: `Some(dir)` for a hostPath volume the
/// test places elsewhere (a private containerd's socket directory, a fresh spool), else
/// the host path itself; ConfigMaps from the rendered objects; Secrets from `secret`.
pub struct Volumes<'a> {
    pub host_path: &'a dyn Fn(&str) -> Option<PathBuf>,
    pub secret: &'a dyn Fn(&str) -> SecretFiles,
}

fn str_of(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

impl Containerd {
    /// Starts `deployed` as the kubelet would: sandbox, then every container in order.
    /// A container the runtime refuses is an `Err` with the runtime's reason.
    pub fn start_deployed(
        &mut self,
        deployed: &DeployedPod<'_>,
        volumes: &Volumes<'_>,
    ) -> Result<Started, String> {
        let spec = &deployed.template["spec"];
        let dir = TempDir::new("zastava-kubelet-pod");
        let uid = unique("pod-uid");
        let log_dir = dir.path().join("logs");
        fs::create_dir_all(&log_dir).unwrap();
        let provisioned = provision(deployed, spec, volumes, dir.path());
        for container in list(&spec["containers"]) {
            make_nested_mountpoints(spec, container, &provisioned);
        }
        let sandbox = sandbox_config(deployed, &uid, &log_dir);
        let pod = self
            .run_sandbox(sandbox)
            .map_err(|status| format!("RunPodSandbox: {}", status.message()))?;
        let mut containers = BTreeMap::new();
        for container in list(&spec["containers"]) {
            let name = str_of(&container["name"]).to_owned();
            let image = str_of(&container["image"]);
            let image_id = self.image_id(image).ok_or_else(|| {
                format!("the node has no image {image} (the kubelet would try to pull it)")
            })?;
            // The termination message file the kubelet mounts into every container.
            let termination = dir.path().join(format!("{name}-termination-log"));
            fs::write(&termination, "").unwrap();
            let config = container_config(
                deployed,
                container,
                &uid,
                &image_id,
                &provisioned,
                &termination,
            );
            let id = self
                .run_configured(&pod, config)
                .map_err(|status| format!("container {name}: {}", status.message()))?;
            containers.insert(name, id);
        }
        Ok(Started {
            pod,
            containers,
            log_dir,
            volumes: provisioned,
            dir,
        })
    }
}

/// Lays out each volume on this machine, as the kubelet does under /var/lib/kubelet/pods.
fn provision(
    deployed: &DeployedPod<'_>,
    spec: &Value,
    volumes: &Volumes<'_>,
    dir: &Path,
) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for volume in list(&spec["volumes"]) {
        let name = str_of(&volume["name"]).to_owned();
        let here = dir.join("volumes").join(&name);
        let path = if let Some(host) = volume["hostPath"]["path"].as_str() {
            let path = (volumes.host_path)(host).unwrap_or_else(|| PathBuf::from(host));
            match volume["hostPath"]["type"].as_str() {
                Some("DirectoryOrCreate") => fs::create_dir_all(&path).unwrap(),
                Some("Directory") => assert!(path.is_dir(), "hostPath {host} is not a directory"),
                Some("File") => assert!(path.is_file(), "hostPath {host} is not a file"),
                other => panic!("a hostPath type the test does not handle: {other:?}"),
            }
            path
        } else if let Some(map) = volume["configMap"]["name"].as_str() {
            let object = deployed
                .docs
                .iter()
                .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == map)
                .unwrap_or_else(|| panic!("no ConfigMap {map}"));
            fs::create_dir_all(&here).unwrap();
            for (file, text) in object["data"].as_object().expect("ConfigMap data") {
                write_0644(&here.join(file), str_of(text).as_bytes());
            }
            here
        } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
            fs::create_dir_all(&here).unwrap();
            for (file, bytes) in (volumes.secret)(secret) {
                // Secret volumes' files are 0644 (defaultMode 420).
                write_0644(&here.join(file), &bytes);
            }
            here
        } else if volume["emptyDir"].is_object() {
            fs::create_dir_all(&here).unwrap();
            fs::set_permissions(&here, fs::Permissions::from_mode(0o777)).unwrap();
            here
        } else {
            panic!("a volume the test does not handle: {volume}");
        };
        out.insert(name, path);
    }
    out
}

/// What the kubelet does for a volume mounted inside another one that it writes itself
/// (ConfigMap, Secret, emptyDir): the mount point is made in the outer volume, which is
/// read-only in the container.
fn make_nested_mountpoints(spec: &Value, container: &Value, volumes: &BTreeMap<String, PathBuf>) {
    let mounts = list(&container["volumeMounts"]);
    for outer in mounts {
        let name = str_of(&outer["name"]);
        let volume = list(&spec["volumes"])
            .iter()
            .find(|v| v["name"] == name)
            .unwrap();
        if volume["hostPath"].is_object() {
            continue;
        }
        let base = str_of(&outer["mountPath"]).trim_end_matches('/');
        for inner in mounts {
            if let Some(rest) = str_of(&inner["mountPath"]).strip_prefix(&format!("{base}/")) {
                fs::create_dir_all(volumes[name].join(rest)).unwrap();
            }
        }
    }
}

fn write_0644(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
}

/// PID and IPC namespaces as the pod asks; the network namespace is the node's (no CNI).
fn namespaces(spec: &Value) -> proto::NamespaceOption {
    let mode = |host: &str, otherwise: proto::NamespaceMode| {
        if spec[host] == true {
            proto::NamespaceMode::Node
        } else {
            otherwise
        }
    };
    proto::NamespaceOption {
        network: proto::NamespaceMode::Node as i32,
        pid: mode("hostPID", proto::NamespaceMode::Container) as i32,
        ipc: mode("hostIPC", proto::NamespaceMode::Pod) as i32,
        target_id: String::new(),
    }
}

/// A `seccompProfile` / `appArmorProfile` as the CRI's SecurityProfile.
fn profile(value: &Value) -> Option<proto::SecurityProfile> {
    use proto::security_profile::ProfileType;
    let kind = match value["type"].as_str()? {
        "RuntimeDefault" => ProfileType::RuntimeDefault,
        "Unconfined" => ProfileType::Unconfined,
        "Localhost" => ProfileType::Localhost,
        other => panic!("an unknown profile type {other}"),
    };
    Some(proto::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: value["localhostProfile"]
            .as_str()
            .map(|p| format!("/var/lib/kubelet/seccomp/{p}"))
            .unwrap_or_default(),
    })
}

fn int64(value: &Value) -> Option<proto::Int64Value> {
    value.as_i64().map(|value| proto::Int64Value { value })
}

/// `100m` → 100, `2` → 2000.
fn milli_cpu(value: &Value) -> Option<i64> {
    let text = value
        .as_str()
        .map(str::to_owned)
        .or_else(|| value.as_i64().map(|n| n.to_string()))?;
    Some(match text.strip_suffix('m') {
        Some(milli) => milli.parse().unwrap(),
        None => (text.parse::<f64>().unwrap() * 1000.0) as i64,
    })
}

/// `128Mi` → 134217728.
fn bytes(value: &Value) -> Option<i64> {
    let text = value
        .as_str()
        .map(str::to_owned)
        .or_else(|| value.as_i64().map(|n| n.to_string()))?;
    for (suffix, unit) in [
        ("Ki", 1i64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ] {
        if let Some(n) = text.strip_suffix(suffix) {
            return Some(n.parse::<i64>().unwrap() * unit);
        }
    }
    Some(text.parse().unwrap())
}

/// The pod's QoS class, which names its cgroup parent.
fn qos_class(spec: &Value) -> &'static str {
    let containers = list(&spec["containers"]);
    let any = |part: &str| {
        containers.iter().any(|c| {
            c["resources"][part]
                .as_object()
                .is_some_and(|m| !m.is_empty())
        })
    };
    if !any("requests") && !any("limits") {
        return "besteffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = &c["resources"]["limits"][r];
            let request = &c["resources"]["requests"][r];
            !limit.is_null() && (request.is_null() || request == limit)
        })
    });
    if guaranteed {
        "guaranteed"
    } else {
        "burstable"
    }
}

fn sandbox_config(
    deployed: &DeployedPod<'_>,
    uid: &str,
    log_dir: &Path,
) -> proto::PodSandboxConfig {
    let template = deployed.template;
    let spec = &template["spec"];
    let mut labels: std::collections::HashMap<String, String> = template["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), str_of(v).to_owned()))
                .collect()
        })
        .unwrap_or_default();
    labels.insert("io.kubernetes.pod.name".into(), deployed.name.clone());
    labels.insert(
        "io.kubernetes.pod.namespace".into(),
        deployed.namespace.clone(),
    );
    labels.insert("io.kubernetes.pod.uid".into(), uid.to_owned());
    let annotations = template["metadata"]["annotations"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), str_of(v).to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let qos = qos_class(spec);
    let cgroup_parent = match qos {
        "guaranteed" => format!("/kubepods/pod{uid}"),
        other => format!("/kubepods/{other}/pod{uid}"),
    };
    let pod_security = &spec["securityContext"];
    let privileged = list(&spec["containers"])
        .iter()
        .any(|c| c["securityContext"]["privileged"] == true);
    proto::PodSandboxConfig {
        metadata: Some(proto::PodSandboxMetadata {
            name: deployed.name.clone(),
            uid: uid.to_owned(),
            namespace: deployed.namespace.clone(),
            attempt: 0,
        }),
        // Empty with the node's network namespace (runc cannot set a hostname without a
        // UTS namespace of its own).
        hostname: String::new(),
        log_directory: log_dir.display().to_string(),
        labels,
        annotations,
        linux: Some(proto::LinuxPodSandboxConfig {
            cgroup_parent,
            security_context: Some(proto::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(spec)),
                run_as_user: int64(&pod_security["runAsUser"]),
                run_as_group: int64(&pod_security["runAsGroup"]),
                readonly_rootfs: false,
                privileged,
                seccomp: profile(&pod_security["seccompProfile"]),
                apparmor: profile(&pod_security["appArmorProfile"]),
            }),
        }),
    }
}

/// The kubelet's oom_score_adj: -997 for node-critical pods, else by QoS class and memory
/// request against the node's memory.
fn oom_score_adj(spec: &Value, container: &Value, qos: &str) -> i64 {
    if spec["priorityClassName"] == "system-node-critical"
        || spec["priorityClassName"] == "system-cluster-critical"
    {
        return -997;
    }
    match qos {
        "guaranteed" => -997,
        "besteffort" => 1000,
        _ => {
            let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
            let total_kib: i64 = meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap();
            let request = bytes(&container["resources"]["requests"]["memory"]).unwrap_or(0);
            (1000 - 1000 * request / (total_kib * 1024)).clamp(3, 999)
        }
    }
}

/// A container's environment as the kubelet sets it: every key of each `envFrom`
/// ConfigMap (with its prefix) first, then `env`, which wins over it.
fn environment(deployed: &DeployedPod<'_>, container: &Value) -> Vec<proto::KeyValue> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut set = |key: String, value: String| match vars.iter_mut().find(|(k, _)| *k == key) {
        Some(var) => var.1 = value,
        None => vars.push((key, value)),
    };
    for from in list(&container["envFrom"]) {
        let name = from["configMapRef"]["name"].as_str().unwrap_or_else(|| {
            panic!("an envFrom source the test cannot fill (only configMapRef): {from}")
        });
        let Some(map) = deployed
            .docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
        else {
            assert!(
                from["configMapRef"]["optional"] == true,
                "envFrom names ConfigMap {name}, which is not rendered (the kubelet would not \
                 start the container)"
            );
            continue;
        };
        let prefix = from["prefix"].as_str().unwrap_or_default();
        if let Some(data) = map["data"].as_object() {
            for (key, value) in data {
                set(format!("{prefix}{key}"), str_of(value).to_owned());
            }
        }
    }
    for var in list(&container["env"]) {
        let value = match &var["valueFrom"] {
            Value::Null => str_of(&var["value"]).to_owned(),
            from => match from["fieldRef"]["fieldPath"].as_str() {
                Some("spec.nodeName") => deployed.node_name.to_owned(),
                Some("metadata.name") => deployed.name.clone(),
                Some("metadata.namespace") => deployed.namespace.clone(),
                _ => panic!("an environment variable the test cannot fill: {var}"),
            },
        };
        set(str_of(&var["name"]).to_owned(), value);
    }
    vars.into_iter()
        .map(|(key, value)| proto::KeyValue { key, value })
        .collect()
}

fn container_config(
    deployed: &DeployedPod<'_>,
    container: &Value,
    uid: &str,
    image_id: &str,
    volumes: &BTreeMap<String, PathBuf>,
    termination_log: &Path,
) -> proto::ContainerConfig {
    let spec = &deployed.template["spec"];
    let name = str_of(&container["name"]);
    let security = &container["securityContext"];
    let pod_security = &spec["securityContext"];
    let either = |key: &str| -> Value {
        if security[key].is_null() {
            pod_security[key].clone()
        } else {
            security[key].clone()
        }
    };
    let run_as_user = either("runAsUser");
    if either("runAsNonRoot") == true {
        // The kubelet refuses to start a container that would run as root.
        assert!(
            run_as_user.as_i64().is_some_and(|u| u != 0),
            "runAsNonRoot with a root (or unknown) user: the kubelet would not start {name}"
        );
    }
    let envs = environment(deployed, container);
    let mut mounts: Vec<proto::Mount> = list(&container["volumeMounts"])
        .iter()
        .map(|mount| {
            let volume = str_of(&mount["name"]);
            let host = &volumes[volume];
            let propagation = match mount["mountPropagation"].as_str() {
                None | Some("None") => proto::MountPropagation::PropagationPrivate,
                Some("HostToContainer") => proto::MountPropagation::PropagationHostToContainer,
                Some("Bidirectional") => proto::MountPropagation::PropagationBidirectional,
                Some(other) => panic!("unknown mountPropagation {other}"),
            };
            proto::Mount {
                container_path: str_of(&mount["mountPath"]).to_owned(),
                host_path: host.display().to_string(),
                readonly: mount["readOnly"] == true,
                selinux_relabel: false,
                propagation: propagation as i32,
            }
        })
        .collect();
    mounts.push(proto::Mount {
        container_path: container["terminationMessagePath"]
            .as_str()
            .unwrap_or("/dev/termination-log")
            .to_owned(),
        host_path: termination_log.display().to_string(),
        ..Default::default()
    });
    let capabilities = &security["capabilities"];
    let names = |key: &str| -> Vec<String> {
        list(&capabilities[key])
            .iter()
            .map(|c| str_of(c).to_owned())
            .collect()
    };
    let resources = &container["resources"];
    let cpu_limit = milli_cpu(&resources["limits"]["cpu"]);
    let qos = qos_class(spec);
    let mut labels = std::collections::HashMap::new();
    labels.insert("io.kubernetes.container.name".to_owned(), name.to_owned());
    labels.insert("io.kubernetes.pod.name".to_owned(), deployed.name.clone());
    labels.insert(
        "io.kubernetes.pod.namespace".to_owned(),
        deployed.namespace.clone(),
    );
    labels.insert("io.kubernetes.pod.uid".to_owned(), uid.to_owned());
    proto::ContainerConfig {
        metadata: Some(proto::ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(proto::ImageSpec {
            image: image_id.to_owned(),
            user_specified_image: str_of(&container["image"]).to_owned(),
            ..Default::default()
        }),
        command: list(&container["command"])
            .iter()
            .map(|c| str_of(c).to_owned())
            .collect(),
        args: list(&container["args"])
            .iter()
            .map(|a| str_of(a).to_owned())
            .collect(),
        working_dir: container["workingDir"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        envs,
        mounts,
        labels,
        log_path: format!("{name}/0.log"),
        linux: Some(proto::LinuxContainerConfig {
            resources: Some(proto::LinuxContainerResources {
                cpu_period: cpu_limit.map_or(0, |_| 100_000),
                cpu_quota: cpu_limit.map_or(0, |m| m * 100),
                cpu_shares: milli_cpu(&resources["requests"]["cpu"])
                    .map_or(2, |m| (m * 1024 / 1000).max(2)),
                memory_limit_in_bytes: bytes(&resources["limits"]["memory"]).unwrap_or(0),
                oom_score_adj: oom_score_adj(spec, container, qos),
            }),
            security_context: Some(proto::LinuxContainerSecurityContext {
                capabilities: Some(proto::Capability {
                    add_capabilities: names("add"),
                    drop_capabilities: names("drop"),
                }),
                privileged: security["privileged"] == true,
                namespace_options: Some(namespaces(spec)),
                run_as_user: int64(&run_as_user),
                run_as_group: int64(&either("runAsGroup")),
                readonly_rootfs: security["readOnlyRootFilesystem"] == true,
                no_new_privs: security["allowPrivilegeEscalation"] == false,
                seccomp: profile(&either("seccompProfile")),
                apparmor: profile(&either("appArmorProfile")),
            }),
        }),
        ..Default::default()
    }
}
