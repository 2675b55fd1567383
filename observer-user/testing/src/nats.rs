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
    /// The largest message a client may publish (the server's default is 1 MiB).
    pub max_payload: Option<u32>,
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
    options: Options,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Starts `size` nodes (1: a single server; more: a cluster with routes between all)
    /// and waits until every one is healthy with JetStream.
    pub fn start(size: usize, options: &Options) -> Cluster {
        let dir = crate::fresh_dir("zastava-nats");
        let nodes = (0..size)
            .map(|i| {
                let name = format!("n{i}");
                Node {
                    config: dir.join(format!("{name}.conf")),
                    name,
                    port: free_port(),
                    cluster_port: free_port(),
                    monitor_port: free_port(),
                    process: None,
                }
            })
            .collect();
        let mut cluster = Cluster {
            dir,
            options: options.clone(),
            nodes,
        };
        for i in 0..size {
            cluster.write_config(i);
            cluster.launch(i);
        }
        for i in 0..size {
            cluster.wait_healthy(i);
        }
        cluster
    }

    /// Writes node `i`'s configuration file from the cluster's options.
    fn write_config(&self, i: usize) {
        let node = &self.nodes[i];
        let name = &node.name;
        let routes: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.name != node.name)
            .map(|n| format!("\"nats-route://127.0.0.1:{}\"", n.cluster_port))
            .collect();
        let mut text = format!(
            "server_name: \"{name}\"\nlisten: \"127.0.0.1:{}\"\nhttp: \"127.0.0.1:{}\"\n\
             jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 2GB\n}}\n",
            node.port,
            node.monitor_port,
            self.dir.join(name).display()
        );
        if self.nodes.len() > 1 {
            let _ = write!(
                text,
                "cluster {{\n  name: \"zastava-test\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                node.cluster_port,
                routes.join(", ")
            );
        }
        match &self.options.auth {
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
        if let Some(bytes) = self.options.max_payload {
            let _ = writeln!(text, "max_payload: {bytes}");
        }
        if let Some((cert, key)) = &self.options.tls {
            let _ = write!(
                text,
                "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 5\n}}\n",
                cert.display(),
                key.display()
            );
        }
        std::fs::write(&node.config, text).expect("write the server configuration");
    }

    /// Restarts every node with other credentials (a rotation on the server side).
    pub fn change_auth(&mut self, auth: Auth) {
        self.options.auth = auth;
        for i in 0..self.nodes.len() {
            self.write_config(i);
            self.restart(i);
        }
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
