//! A private NATS server or JetStream cluster on loopback, from Debian's `nats-server`:
//! its own ports (client, cluster routes, monitoring) and data directory per node,
//! processes owned by PID, killed and the data removed on drop. Nodes can be killed
//! (SIGKILL) and restarted with their data, as a crash and a recovery would.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use crate::servers::{free_port, http_get, Process};

/// Who may connect.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    #[default]
    None,
    UserPassword(String, String),
    Token(String),
}

/// How the servers are set up.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub auth: Auth,
    /// Serve clients over TLS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
}

pub struct Node {
    pub name: String,
    pub port: u16,
    pub cluster_port: u16,
    pub monitor_port: u16,
    config: PathBuf,
    process: Option<Process>,
}

/// One server, or a cluster of them with JetStream.
pub struct Cluster {
    dir: PathBuf,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Starts `size` nodes (1: a single server; more: a cluster with routes between all)
    /// and waits until every one is healthy with JetStream.
    pub fn start(size: usize, options: &Options) -> Cluster {
        let dir = crate::fresh_dir("zastava-nats");
        let ports: Vec<(u16, u16, u16)> = (0..size)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, &(port, cluster_port, monitor_port))| {
                let name = format!("n{i}");
                let config = dir.join(format!("{name}.conf"));
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, p)| format!("\"nats-route://127.0.0.1:{}\"", p.1))
                    .collect();
                let mut text = format!(
                    "server_name: \"{name}\"\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{monitor_port}\"\n\
                     jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 2GB\n}}\n",
                    dir.join(&name).display()
                );
                if size > 1 {
                    let _ = write!(
                        text,
                        "cluster {{\n  name: \"zastava-test\"\n  listen: \"127.0.0.1:{cluster_port}\"\n  routes: [{}]\n}}\n",
                        routes.join(", ")
                    );
                }
                match &options.auth {
                    Auth::None => {}
                    Auth::UserPassword(user, password) => {
                        let _ = write!(
                            text,
                            "authorization {{\n  user: \"{user}\"\n  password: \"{password}\"\n}}\n"
                        );
                    }
                    Auth::Token(token) => {
                        let _ = write!(text, "authorization {{\n  token: \"{token}\"\n}}\n");
                    }
                }
                if let Some((cert, key)) = &options.tls {
                    let _ = write!(
                        text,
                        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 5\n}}\n",
                        cert.display(),
                        key.display()
                    );
                }
                std::fs::write(&config, text).expect("write the server configuration");
                Node {
                    name,
                    port,
                    cluster_port,
                    monitor_port,
                    config,
                    process: None,
                }
            })
            .collect();
        let mut cluster = Cluster { dir, nodes };
        for i in 0..size {
            cluster.launch(i);
        }
        for i in 0..size {
            cluster.wait_healthy(i);
        }
        cluster
    }

    fn launch(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut command = Command::new("nats-server");
        command.arg("-c").arg(&node.config);
        let log = self.dir.join(format!("{}.log", node.name));
        node.process = Some(Process::spawn(
            &format!("nats-server {}", node.name),
            command,
            &log,
        ));
    }

    /// Waits until node `i` answers `/healthz` with 200: its JetStream is up and, in a
    /// cluster, it knows the meta leader.
    pub fn wait_healthy(&mut self, i: usize) {
        let port = self.nodes[i].monitor_port;
        if let Some(process) = self.nodes[i].process.as_mut() {
            process.wait_until("healthy", |_| {
                http_get(port, "/healthz").is_some_and(|(status, _)| status == 200)
            });
        }
    }

    /// Client URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| self.url_of(n)).collect()
    }

    fn url_of(&self, node: &Node) -> String {
        format!("nats://127.0.0.1:{}", node.port)
    }

    /// The node named `name` (as a stream's cluster info names its leader).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// SIGKILLs node `i`, as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.nodes[i].process.take() {
            process.signal_and_wait(libc::SIGKILL);
        }
    }

    /// Starts node `i` again with its data, and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.launch(i);
        self.wait_healthy(i);
    }

    /// What node `i` logged.
    pub fn log(&self, i: usize) -> String {
        self.nodes[i]
            .process
            .as_ref()
            .map(Process::log_text)
            .unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
