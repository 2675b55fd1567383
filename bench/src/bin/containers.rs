//! `zastava-containers-bench`: the observer's resident set on a node running N containers.
//!
//! Makes N containers as a node has them, as far as the observer can tell: a cgroup each
//! (named by a 64-hex container id, as containerd's cgroupfs driver names them), processes
//! living in it, and a CRI runtime on a unix socket that describes each container, its pod
//! (100 deployments' replicas across 20 namespaces) and its image. The runtime is the
//! tests' fake (the container runtime itself is not what is measured); processes, cgroups
//! and the observer are real. Each container's processes exec and open a file, so every
//! container reaches the observer's process, cgroup and workload tables.
//!
//! Runs the release observer twice in one run — with no containers (the floor), then with
//! N — and reports the resident set (VmRSS) once everything is attributed and has settled,
//! the peak (VmHWM), and the cost per container.

use std::{
    collections::HashSet,
    ffi::CString,
    fs,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use serde_json::{json, Value};

use zastava_bench::programs;
use zastava_testing::cri::{proto, FakeRuntime};

#[derive(Parser)]
#[command(about = "zastava-observer's resident set with N live containers")]
struct Cli {
    #[arg(long, default_value_t = 1000)]
    containers: usize,
    /// Processes per container.
    #[arg(long, default_value_t = 2)]
    processes: usize,
    /// How long to wait, once every container is attributed, before reading the resident set.
    #[arg(long, default_value_t = 10)]
    settle_seconds: u64,
    /// Where zastava-observer is (default: beside this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

const DEPLOYMENTS: usize = 100;
const NAMESPACES: usize = 20;

fn main() {
    if let Err(err) = real_main() {
        eprintln!("zastava-containers-bench: {err:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: the observer loads eBPF programs and this makes cgroups");
    }
    let [observer] = programs(cli.bin_dir.as_deref(), ["zastava-observer"])?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let floor = runtime.block_on(measure(&observer, 0, 0, cli.settle_seconds))?;
    let node = runtime.block_on(measure(
        &observer,
        cli.containers,
        cli.processes,
        cli.settle_seconds,
    ))?;
    let per_container =
        (node.rss_kib.saturating_sub(floor.rss_kib)) as f64 / cli.containers.max(1) as f64;
    if cli.json {
        println!(
            "{}",
            json!({
                "containers": cli.containers,
                "processesPerContainer": cli.processes,
                "floor": floor.to_json(),
                "node": node.to_json(),
                "kibPerContainer": per_container,
            })
        );
    } else {
        println!("| observer | containers | attributed | processes | RSS MiB | peak MiB | seconds to attribute all |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (name, m) in [("no containers (the floor)", &floor), ("node", &node)] {
            println!(
                "| {name} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
                m.containers,
                m.attributed,
                m.processes,
                m.rss_kib as f64 / 1024.0,
                m.peak_kib as f64 / 1024.0,
                m.attribute_seconds
            );
        }
        println!(
            "\n{:.1} KiB of resident set per container above the floor",
            per_container
        );
    }
    Ok(())
}

struct Measured {
    containers: usize,
    attributed: usize,
    processes: usize,
    rss_kib: u64,
    peak_kib: u64,
    attribute_seconds: f64,
}

impl Measured {
    fn to_json(&self) -> Value {
        json!({
            "containers": self.containers,
            "attributed": self.attributed,
            "processes": self.processes,
            "rssKib": self.rss_kib,
            "peakKib": self.peak_kib,
            "attributeSeconds": self.attribute_seconds,
        })
    }
}

/// Kills what it started and removes what it made, also on an error.
struct Node {
    dir: PathBuf,
    cgroup_parent: PathBuf,
    cgroups: Vec<PathBuf>,
    children: Vec<Child>,
    observer: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        for child in self.children.iter_mut().chain(self.observer.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for cgroup in &self.cgroups {
            let _ = fs::remove_dir(cgroup);
        }
        let _ = fs::remove_dir(&self.cgroup_parent);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Where cgroup v2 is: beside the v1 controllers on hybrid hosts, else the root.
fn unified_root() -> Result<PathBuf> {
    for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        let root = Path::new(root);
        if root.join("cgroup.procs").exists() && !root.join("cpu.cfs_quota_us").exists() {
            return Ok(root.to_owned());
        }
    }
    bail!("no cgroup v2 hierarchy at /sys/fs/cgroup/unified or /sys/fs/cgroup")
}

/// Five characters of the alphabet Kubernetes names generated pods with.
fn pod_suffix(mut i: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| {
            let c = ALPHABET[i % ALPHABET.len()];
            i /= ALPHABET.len();
            char::from(c)
        })
        .collect()
}

fn container_id(run: u32, i: usize) -> String {
    format!("{:032x}{:032x}", u128::from(run) << 64 | 0xc0de, i as u128)
}

fn describe(runtime: &FakeRuntime, ids: &[String]) {
    let mut state = runtime.state.lock().expect("the fake runtime's state");
    for (i, id) in ids.iter().enumerate() {
        let deployment = i % DEPLOYMENTS;
        let namespace = format!("team-{}", deployment % NAMESPACES);
        let sandbox = format!("sandbox-{i}");
        let image = format!("registry.example/team/svc-{deployment}:1.{deployment}");
        let config = format!("sha256:{:064x}", 0xc0f1_9000_u64 + deployment as u64);
        let manifest = format!("sha256:{:064x}", 0x3a1f_e500_u64 + deployment as u64);
        state.sandboxes.push(proto::PodSandboxStatus {
            id: sandbox.clone(),
            metadata: Some(proto::PodSandboxMetadata {
                name: format!("svc-{deployment}-5d8f7c9b4-{}", pod_suffix(i)),
                uid: format!("uid-{i}"),
                namespace,
                attempt: 0,
            }),
            labels: [
                ("app".to_owned(), format!("svc-{deployment}")),
                ("pod-template-hash".to_owned(), "5d8f7c9b4".to_owned()),
            ]
            .into(),
            ..Default::default()
        });
        state.containers.push(proto::ContainerStatus {
            id: id.clone(),
            metadata: Some(proto::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            state: proto::ContainerState::ContainerRunning as i32,
            started_at: 1_700_000_000_000_000_000,
            image: Some(proto::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            image_ref: config.clone(),
            ..Default::default()
        });
        state.sandbox_of.insert(id.clone(), sandbox);
        if i < DEPLOYMENTS {
            state.images.push(proto::Image {
                id: config,
                repo_tags: vec![image.clone()],
                repo_digests: vec![format!(
                    "{}@{manifest}",
                    image
                        .rsplit_once(':')
                        .map_or(image.as_str(), |(repo, _)| repo)
                )],
                size: 1,
            });
        }
    }
}

/// A process in `cgroup` that execs, opens a file and then sleeps.
fn spawn_in(cgroup: &Path) -> Result<Child> {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_encoded_bytes())?;
    let mut command = Command::new("/bin/sh");
    command
        .args(["-c", "cat /etc/hostname >/dev/null; exec sleep 3600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec: open, write, close.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process itself.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().context("start a container's process")
}

async fn measure(
    observer: &Path,
    containers: usize,
    processes: usize,
    settle_seconds: u64,
) -> Result<Measured> {
    let run = std::process::id();
    let dir = std::env::temp_dir().join(format!("zastava-containers-{run}-{containers}"));
    fs::create_dir_all(&dir)?;
    let cgroup_parent = unified_root()?.join(format!("zastava-containers-{run}-{containers}"));
    let mut node = Node {
        dir: dir.clone(),
        cgroup_parent: cgroup_parent.clone(),
        cgroups: Vec::new(),
        children: Vec::new(),
        observer: None,
    };
    fs::create_dir(&cgroup_parent)
        .with_context(|| format!("create {}", cgroup_parent.display()))?;
    let ids: Vec<String> = (0..containers).map(|i| container_id(run, i)).collect();
    for id in &ids {
        let cgroup = cgroup_parent.join(id);
        fs::create_dir(&cgroup).with_context(|| format!("create {}", cgroup.display()))?;
        node.cgroups.push(cgroup);
    }
    let socket = dir.join("cri.sock");
    let (runtime, _events) = FakeRuntime::serve(&socket);
    describe(&runtime, &ids);

    let ndjson = dir.join("events.ndjson");
    let log = dir.join("observer.log");
    let child = Command::new(observer)
        .arg("run")
        .arg("--cri-endpoint")
        .arg(&socket)
        .args(["--no-docker", "--ndjson"])
        .arg(&ndjson)
        .arg("--stats-json")
        .arg(dir.join("stats.json"))
        // One file: this reads all of it, and other processes of the node add to it.
        .args(["--set", "ndjson.max_file_bytes=\"64G\""])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log)?)
        .spawn()
        .context("start zastava-observer")?;
    let pid = child.id();
    node.observer = Some(child);
    wait_for("the observer to be ready", Duration::from_secs(60), || {
        Ok(fs::read_to_string(&log)?.contains("observer ready"))
    })
    .await?;

    let started = Instant::now();
    for cgroup in node.cgroups.clone() {
        for _ in 0..processes {
            node.children.push(spawn_in(&cgroup)?);
        }
    }
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut attributed = HashSet::new();
    let mut offset = 0;
    wait_for(
        "every container's edges, attributed to its pod",
        Duration::from_secs(300),
        || {
            offset = read_attributed(&ndjson, offset, &wanted, &mut attributed)?;
            Ok(attributed.len() == wanted.len())
        },
    )
    .await
    .with_context(|| {
        format!(
            "{} of {} containers attributed; the observer's log: {}",
            attributed.len(),
            wanted.len(),
            log.display()
        )
    })?;
    let attribute_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(settle_seconds)).await;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{name} in /proc/{pid}/status"))
    };
    Ok(Measured {
        containers,
        attributed: attributed.len(),
        processes: containers * processes,
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
        attribute_seconds,
    })
}

/// Reads the NDJSON file from `offset`, noting containers whose records name their pod.
fn read_attributed<'a>(
    path: &Path,
    offset: u64,
    wanted: &HashSet<&'a str>,
    attributed: &mut HashSet<&'a str>,
) -> Result<u64> {
    use std::io::{Seek as _, SeekFrom};
    let Ok(mut file) = fs::File::open(path) else {
        return Ok(offset);
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::new(file);
    let mut read = offset;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            return Ok(read);
        }
        read += n as u64;
        let Ok(record) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let (Some(id), Some(pod)) = (record["containerId"].as_str(), record["pod"].as_str()) else {
            continue;
        };
        if let Some(&id) = wanted.get(id) {
            if pod.starts_with("svc-") {
                attributed.insert(id);
            }
        }
    }
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("waited {timeout:?} for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
