//! A private, real containerd for tests: its own root, state and sockets under a temp
//! directory, local OCI images built from the static busybox, and pods driven through the
//! observer's own CRI client.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use zastava_testing::cri::{self as cri, proto};

use super::{unique, TempDir};

mod images;
use images::build_images;

/// Names of the test images.
pub const BUSYBOX: &str = "zastava.test/busybox:1.0";
pub const PAUSE: &str = "zastava.test/pause:1.0";
/// An image known only by tag: the runtime has no manifest digest for it.
pub const UNDIGESTED: &str = "zastava.test/undigested:1.0";

/// Digests of the images the harness built.
#[derive(Clone, Debug)]
pub struct Images {
    pub busybox_manifest: String,
    pub busybox_config: String,
    pub undigested_config: String,
}

/// The CRI runtime service of the test's containerd (the test side's own client, not the
/// observer's).
type RuntimeClient = proto::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

pub struct Containerd {
    dir: TempDir,
    child: Option<Child>,
    pub socket: PathBuf,
    pub images: Images,
    runtime: tokio::runtime::Runtime,
    cri: Option<RuntimeClient>,
    pods: Vec<String>,
    cgroup_dirs: Vec<String>,
}

/// A pod to run.
pub struct PodSpec<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
}

#[derive(Clone, Debug)]
pub struct Pod {
    pub sandbox_id: String,
    pub uid: String,
    pub name: String,
    pub namespace: String,
    config: proto::PodSandboxConfig,
}

fn config_toml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  disable_tcp_service = true
  disable_hugetlb_controller = true
  tolerate_missing_hugetlb_controller = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
"#
    )
}

impl Containerd {
    /// Starts a private containerd with the test images imported.
    pub fn start() -> Containerd {
        super::require_root();
        for tool in ["containerd", "ctr", "runc"] {
            assert!(
                Command::new("which")
                    .arg(tool)
                    .output()
                    .is_ok_and(|o| o.status.success()),
                "{tool} is not installed; `cargo xtask setup` installs containerd and runc"
            );
        }
        let dir = TempDir::new("zastava-containerd");
        fs::create_dir_all(dir.path().join("cni/bin")).unwrap();
        fs::create_dir_all(dir.path().join("cni/conf")).unwrap();
        fs::write(dir.path().join("config.toml"), config_toml(dir.path())).unwrap();
        let images = build_images(&dir.path().join("images.tar"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut containerd = Containerd {
            socket: dir.path().join("containerd.sock"),
            dir,
            child: None,
            images,
            runtime,
            cri: None,
            pods: Vec::new(),
            cgroup_dirs: Vec::new(),
        };
        containerd.spawn();
        let status = Command::new("ctr")
            .arg("--address")
            .arg(&containerd.socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(containerd.dir.path().join("images.tar"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "ctr images import failed");
        containerd
    }

    fn spawn(&mut self) {
        let log = fs::File::create(self.dir.path().join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let connected = self.runtime.block_on(async {
                let (mut runtime, _) = cri::connect(&self.socket, Duration::from_secs(2)).await?;
                runtime
                    .version(proto::VersionRequest::default())
                    .await
                    .map_err(|status| status.to_string())?;
                Ok::<_, Box<dyn std::error::Error>>(runtime)
            });
            match connected {
                Ok(client) => {
                    self.cri = Some(client);
                    return;
                }
                Err(err) => {
                    assert!(
                        Instant::now() < deadline,
                        "containerd did not come up: {err}\n{}",
                        self.log()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// containerd's own log, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Stops containerd (SIGTERM); containers keep running under their shims.
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling the containerd this harness started.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait().unwrap();
        }
        self.cri = None;
    }

    /// Kills containerd (SIGKILL), as a crash or the OOM killer would; containers keep
    /// running under their shims.
    pub fn kill_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling the containerd this harness started.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            child.wait().unwrap();
        }
        self.cri = None;
    }

    /// Starts containerd again on the same state.
    pub fn start_daemon(&mut self) {
        self.spawn();
    }

    fn cri(&self) -> RuntimeClient {
        self.cri.clone().expect("containerd is running")
    }

    /// A container's status (verbose), or `None` if the runtime does not know it.
    pub fn container_status(&self, id: &str) -> Option<proto::ContainerStatusResponse> {
        let mut runtime = self.cri();
        match self
            .runtime
            .block_on(runtime.container_status(proto::ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: true,
            })) {
            Ok(reply) => Some(reply.into_inner()),
            Err(status) if status.code() == tonic::Code::NotFound => None,
            Err(status) => panic!("ContainerStatus {id}: {status}\n{}", self.log()),
        }
    }

    /// Runs a future on the runtime the CRI client's connection lives on.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> T {
        self.runtime
            .block_on(fut)
            .unwrap_or_else(|status| panic!("CRI call failed: {status}\n{}", self.log()))
            .into_inner()
    }

    /// Imports an OCI archive into the `k8s.io` namespace, as an air-gapped node would.
    pub fn import(&self, archive: &Path) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(archive)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr images import {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The image id (config digest) of an image by name, as the kubelet asks before it
    /// creates a container; `None` if the runtime does not have it.
    pub fn image_id(&self, name: &str) -> Option<String> {
        let reply = self.runtime.block_on(async {
            let (_, mut images) = cri::connect(&self.socket, Duration::from_secs(5))
                .await
                .expect("connect to containerd");
            images
                .image_status(proto::ImageStatusRequest {
                    image: Some(proto::ImageSpec {
                        image: name.to_owned(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
        });
        let reply = reply
            .unwrap_or_else(|status| panic!("ImageStatus {name}: {status}\n{}", self.log()))
            .into_inner();
        reply.image.map(|image| image.id)
    }

    /// Runs a sandbox from a whole configuration (`run_pod` builds a simple one), removed
    /// with the rest when the harness is dropped.
    pub fn run_sandbox(&mut self, config: proto::PodSandboxConfig) -> Result<Pod, tonic::Status> {
        let metadata = config.metadata.clone().unwrap_or_default();
        let mut runtime = self.cri();
        let reply = self
            .runtime
            .block_on(runtime.run_pod_sandbox(proto::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))?
            .into_inner();
        self.pods.push(reply.pod_sandbox_id.clone());
        if let Some(linux) = &config.linux {
            self.cgroup_dirs.push(linux.cgroup_parent.clone());
        }
        Ok(Pod {
            sandbox_id: reply.pod_sandbox_id,
            uid: metadata.uid,
            name: metadata.name,
            namespace: metadata.namespace,
            config,
        })
    }

    /// Creates and starts a container from a whole configuration; the runtime's refusal is
    /// returned, not a panic.
    pub fn run_configured(
        &self,
        pod: &Pod,
        config: proto::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let mut runtime = self.cri();
        let id = self
            .runtime
            .block_on(runtime.create_container(proto::CreateContainerRequest {
                pod_sandbox_id: pod.sandbox_id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }))?
            .into_inner()
            .container_id;
        self.runtime
            .block_on(runtime.start_container(proto::StartContainerRequest {
                container_id: id.clone(),
            }))?;
        Ok(id)
    }

    /// Runs a pod sandbox with host networking, under `/kubepods/besteffort/pod<uid>`.
    pub fn run_pod(&mut self, spec: &PodSpec<'_>) -> Pod {
        let uid = unique("uid");
        let cgroup_parent = format!("/kubepods/besteffort/pod{uid}");
        let mut labels: std::collections::HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.insert("io.kubernetes.pod.name".into(), spec.name.into());
        labels.insert("io.kubernetes.pod.namespace".into(), spec.namespace.into());
        labels.insert("io.kubernetes.pod.uid".into(), uid.clone());
        let config = proto::PodSandboxConfig {
            metadata: Some(proto::PodSandboxMetadata {
                name: spec.name.into(),
                uid: uid.clone(),
                namespace: spec.namespace.into(),
                attempt: 0,
            }),
            labels,
            linux: Some(proto::LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.clone(),
                security_context: Some(proto::LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let mut runtime = self.cri();
        let reply = self.call(runtime.run_pod_sandbox(proto::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        }));
        self.pods.push(reply.pod_sandbox_id.clone());
        self.cgroup_dirs.push(cgroup_parent);
        Pod {
            sandbox_id: reply.pod_sandbox_id,
            uid,
            name: spec.name.into(),
            namespace: spec.namespace.into(),
            config,
        }
    }

    /// Creates and starts a container running `command` from `image`.
    pub fn run_container(&self, pod: &Pod, name: &str, image: &str, command: &[&str]) -> String {
        let id = self.create_container(pod, name, image, command);
        let mut runtime = self.cri();
        self.call(runtime.start_container(proto::StartContainerRequest {
            container_id: id.clone(),
        }));
        id
    }

    pub fn create_container(&self, pod: &Pod, name: &str, image: &str, command: &[&str]) -> String {
        let mut runtime = self.cri();
        let mut labels = std::collections::HashMap::new();
        labels.insert("io.kubernetes.container.name".to_owned(), name.to_owned());
        labels.insert("io.kubernetes.pod.name".to_owned(), pod.name.clone());
        labels.insert(
            "io.kubernetes.pod.namespace".to_owned(),
            pod.namespace.clone(),
        );
        labels.insert("io.kubernetes.pod.uid".to_owned(), pod.uid.clone());
        let reply = self.call(runtime.create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod.sandbox_id.clone(),
            config: Some(proto::ContainerConfig {
                metadata: Some(proto::ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(proto::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: command.iter().map(|s| (*s).to_owned()).collect(),
                labels,
                linux: Some(proto::LinuxContainerConfig {
                    security_context: Some(proto::LinuxContainerSecurityContext {
                        namespace_options: Some(host_network()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: Some(pod.config.clone()),
        }));
        reply.container_id
    }

    pub fn start_container(&self, id: &str) {
        let mut runtime = self.cri();
        self.call(runtime.start_container(proto::StartContainerRequest {
            container_id: id.into(),
        }));
    }

    /// Runs a command in a running container, as `kubectl exec` does.
    pub fn exec_sync(&self, container: &str, cmd: &[&str]) -> (i32, String) {
        let mut runtime = self.cri();
        let reply = self.call(runtime.exec_sync(proto::ExecSyncRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: 10,
        }));
        (
            reply.exit_code,
            String::from_utf8_lossy(&reply.stdout).into_owned(),
        )
    }

    /// Waits until a container has exited.
    pub fn wait_exited(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self
                .container_status(id)
                .and_then(|r| r.status)
                .expect("container exists");
            if status.state == proto::ContainerState::ContainerExited as i32 {
                return;
            }
            assert!(Instant::now() < deadline, "container {id} did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of a container's first process.
    pub fn init_pid(&self, id: &str) -> u32 {
        let reply = self.container_status(id).expect("container exists");
        let info: serde_json::Value = serde_json::from_str(&reply.info["info"]).unwrap();
        info["pid"].as_u64().unwrap() as u32
    }

    pub fn stop_pod(&self, pod: &Pod) {
        let mut runtime = self.cri();
        self.call(runtime.stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: pod.sandbox_id.clone(),
        }));
    }
}

fn host_network() -> proto::NamespaceOption {
    proto::NamespaceOption {
        network: proto::NamespaceMode::Node as i32,
        pid: proto::NamespaceMode::Container as i32,
        ipc: proto::NamespaceMode::Pod as i32,
        target_id: String::new(),
    }
}

/// Removes a cgroup directory and everything below it, depth first, in every hierarchy.
fn remove_cgroup_tree(rel: &str) {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = hierarchies.flatten().map(|e| e.path()).collect();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    for root in roots {
        let dir = root.join(rel.trim_start_matches('/'));
        remove_depth_first(&dir);
    }
}

fn remove_depth_first(dir: &Path) {
    if let Ok(children) = fs::read_dir(dir) {
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                remove_depth_first(&child.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Stop and remove pods through CRI before stopping containerd, or their shims and
        // containers would outlive it.
        if self.cri.is_none() && self.child.is_none() {
            self.spawn();
        }
        if let Some(mut runtime) = self.cri.clone() {
            for id in std::mem::take(&mut self.pods) {
                let _ =
                    self.runtime
                        .block_on(runtime.stop_pod_sandbox(proto::StopPodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        }));
                let _ = self.runtime.block_on(
                    runtime
                        .remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id }),
                );
            }
        }
        self.stop_daemon();
        for dir in std::mem::take(&mut self.cgroup_dirs) {
            remove_cgroup_tree(&dir);
        }
        // Snapshot mounts of removed containers are gone; anything left would keep the
        // temp dir busy, so unmount what remains under it.
        if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
            let prefix = self.dir.path().display().to_string();
            let mut targets: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|t| t.starts_with(&prefix))
                .collect();
            targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
            for target in targets {
                if let Ok(c) = std::ffi::CString::new(target) {
                    // SAFETY: a valid path; MNT_DETACH never blocks.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
    }
}
