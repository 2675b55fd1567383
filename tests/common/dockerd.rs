//! A private, real Docker Engine for tests: Debian's dockerd with its own data root, exec
//! root, pid file and socket, over a containerd of its own (started here, CRI plugin off, as
//! Docker's own containerd runs), with an image built locally from the static busybox and
//! `docker load`ed — no registry. Host networking only (`--bridge=none`, no iptables), so
//! nothing outside the temp directory changes but the cgroups of its containers, which are
//! removed with them.
//!
//! Everything started here is stopped by its pid, also when a test panics (Drop).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};

use super::TempDir;

/// The test image, known only by tag (as `docker load` leaves it: no repo digest).
pub const BUSYBOX: &str = "zastava.test/busybox:1.0";

/// Debian's binaries, by path: a `docker` elsewhere on PATH may be another version.
const DOCKERD: &str = "/usr/sbin/dockerd";
const DOCKER: &str = "/usr/bin/docker";
const COMPOSE: &str = "/usr/bin/docker-compose";

pub struct Dockerd {
    dir: TempDir,
    containerd: Option<Child>,
    dockerd: Option<Child>,
    pub socket: PathBuf,
    /// `sha256:<hex>` of the image's config: Docker's image id for it.
    pub image_id: String,
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn header(size: usize, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size as u64);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Writes a `docker save` archive of one image (one layer: busybox and its applets);
/// returns its config digest, which Docker takes as the image id.
fn build_image(out: &Path) -> String {
    let busybox = fs::read("/bin/busybox").expect("busybox-static provides /bin/busybox");
    let mut layer = tar::Builder::new(Vec::new());
    for dir in ["bin", "etc", "tmp"] {
        let mut h = header(0, 0o755, tar::EntryType::Directory);
        layer.append_data(&mut h, dir, std::io::empty()).unwrap();
    }
    let mut h = header(busybox.len(), 0o755, tar::EntryType::Regular);
    layer
        .append_data(&mut h, "bin/busybox", busybox.as_slice())
        .unwrap();
    for applet in [
        "sh", "sleep", "cat", "true", "echo", "ls", "touch", "hostname", "test", "[",
    ] {
        let mut h = header(0, 0o777, tar::EntryType::Symlink);
        layer
            .append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let layer = layer.into_inner().unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "Labels": {"image": "zastava-docker-test"}},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&layer))]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_hex = sha256_hex(&config);
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [BUSYBOX],
        "Layers": ["layer/layer.tar"],
    }]);
    let mut archive = tar::Builder::new(fs::File::create(out).unwrap());
    let mut put = |name: &str, data: &[u8]| {
        let mut h = header(data.len(), 0o644, tar::EntryType::Regular);
        archive.append_data(&mut h, name, data).unwrap();
    };
    put(&format!("{config_hex}.json"), &config);
    put("layer/layer.tar", &layer);
    put("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    archive.finish().unwrap();
    format!("sha256:{config_hex}")
}

fn containerd_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
"#
    )
}

/// Waits until `ready` holds, or panics with `what` and the log.
fn wait_until(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} did not come up:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM to a child this harness started, and waits for it (SIGKILL after 20 s).
fn stop_child(child: &mut Child) {
    // SAFETY: signalling a process this harness started and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Dockerd {
    /// Starts containerd and dockerd, and loads the test image.
    pub fn start() -> Dockerd {
        super::require_root();
        for tool in [
            DOCKERD,
            DOCKER,
            COMPOSE,
            "/usr/bin/containerd",
            "/usr/sbin/runc",
        ] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is not installed; `cargo xtask setup` installs docker.io, docker-compose, containerd and runc"
            );
        }
        let dir = TempDir::new("zastava-dockerd");
        fs::write(
            dir.path().join("containerd.toml"),
            containerd_config(dir.path()),
        )
        .unwrap();
        let image = dir.path().join("image.tar");
        let image_id = build_image(&image);
        let mut dockerd = Dockerd {
            socket: dir.path().join("docker.sock"),
            dir,
            containerd: None,
            dockerd: None,
            image_id,
        };
        dockerd.start_containerd();
        dockerd.start_daemon();
        dockerd.docker_ok(&["load", "-i", image.to_str().unwrap()]);
        dockerd
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_containerd(&mut self) {
        let log_path = self.path("containerd.log");
        let log = fs::File::create(&log_path).unwrap();
        let child = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(self.path("containerd.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        self.containerd = Some(child);
        let socket = self.path("containerd.sock");
        wait_until("containerd", &log_path, || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }

    /// Starts dockerd (again, on the same state after `stop_daemon`).
    pub fn start_daemon(&mut self) {
        assert!(self.dockerd.is_none(), "dockerd is running already");
        let log_path = self.path("dockerd.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let d = self.dir.path().display().to_string();
        let child = Command::new(DOCKERD)
            .args(["--data-root", &format!("{d}/data")])
            .args(["--exec-root", &format!("{d}/exec")])
            .args(["--pidfile", &format!("{d}/dockerd.pid")])
            .args(["--host", &format!("unix://{d}/docker.sock")])
            .args(["--containerd", &format!("{d}/containerd.sock")])
            // No networks of its own: no iptables here, and tests use host networking.
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
            ])
            .args(["--ip-masq=false", "--bridge=none"])
            // Containers outlive a restart of dockerd, as on a production host.
            .arg("--live-restore")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.dockerd = Some(child);
        wait_until("dockerd", &log_path, || {
            self.docker(&["version", "--format", "{{.Server.Version}}"])
                .status
                .success()
        });
    }

    /// Stops dockerd with SIGTERM (its containers keep running: `--live-restore`).
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.dockerd.take() {
            stop_child(&mut child);
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.path("dockerd.log")).unwrap_or_default()
    }

    /// Runs the docker CLI against this dockerd.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.path("cli"))
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    /// Runs the docker CLI and returns its trimmed stdout; panics if it fails.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `docker run -d --network host ARGS`: the new container's id.
    pub fn run(&self, args: &[&str]) -> String {
        let mut full = vec!["run", "-d", "--network", "host"];
        full.extend_from_slice(args);
        self.docker_ok(&full)
    }

    /// `docker inspect --format FORMAT ID`.
    pub fn inspect(&self, id: &str, format: &str) -> String {
        self.docker_ok(&["inspect", "--format", format, id])
    }

    /// Runs Debian's docker-compose in `project_dir` against this dockerd.
    pub fn compose(&self, project_dir: &Path, project: &str, args: &[&str]) -> Output {
        Command::new(COMPOSE)
            .current_dir(project_dir)
            .args(["--project-name", project])
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", self.path("cli"))
            .stdin(Stdio::null())
            .output()
            .expect("run docker-compose")
    }

    /// Waits until a container has exited; returns its exit code.
    pub fn wait_exited(&self, id: &str) -> i64 {
        let code = self.docker_ok(&["wait", id]);
        code.parse()
            .unwrap_or_else(|_| panic!("docker wait {id} printed {code:?}"))
    }
}

/// Removes what is left of a cgroup directory, depth first, in every hierarchy.
fn remove_cgroup(rel: &str) {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = hierarchies.flatten().map(|e| e.path()).collect();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    for root in roots {
        let _ = fs::remove_dir(root.join(rel.trim_start_matches('/')));
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Remove the containers through dockerd first, or their shims and processes would
        // outlive it (live-restore keeps them running).
        if self.dockerd.is_none() && self.containerd.is_some() {
            let log = self.path("dockerd.log");
            let restarted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.start_daemon();
            }));
            if restarted.is_err() {
                eprintln!(
                    "dockerd did not restart for cleanup:\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
        let ids = self.docker(&["ps", "-aq", "--no-trunc"]);
        let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = self.docker(&args);
        }
        self.stop_daemon();
        if let Some(mut child) = self.containerd.take() {
            stop_child(&mut child);
        }
        for id in &ids {
            remove_cgroup(&format!("/docker/{id}"));
        }
        remove_cgroup("/docker");
        // dockerd leaves its data root and network namespace mounts behind; unmount what is
        // under the temp dir so that it can be removed.
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
