//! A private Redis server on loopback, from Debian's `redis-server`: its own port and data
//! directory, the append-only file on and synced on every write (`appendfsync always`, so
//! what it acknowledged survives a SIGKILL; `everysec` on request), owned by PID, killed and its data removed on
//! drop. It can be killed and restarted with its data.

use std::{path::PathBuf, process::Command};

use crate::servers::{free_port, Process};

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `requirepass`: the default user's password.
    pub password: Option<String>,
    /// Serve TLS only, with this certificate, key and CA (PEM files).
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// `appendfsync everysec` instead of `always`: faster, and a crash may lose the last
    /// second of acknowledged writes.
    pub fsync_every_second: bool,
}

pub struct Server {
    pub port: u16,
    dir: PathBuf,
    options: Options,
    process: Option<Process>,
    starts: usize,
}

impl Server {
    pub fn start(options: &Options) -> Server {
        let mut server = Server {
            port: free_port(),
            dir: crate::fresh_dir("zastava-redis"),
            options: options.clone(),
            process: None,
            starts: 0,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--loglevel", "notice"]);
        match &self.options.tls {
            Some((cert, key, ca)) => {
                command
                    .args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .arg("--tls-ca-cert-file")
                    .arg(ca)
                    .args(["--tls-auth-clients", "no"]);
            }
            None => {
                command.args(["--port", &self.port.to_string()]);
            }
        }
        if let Some(password) = &self.options.password {
            command.args(["--requirepass", password]);
        }
        let log = self.dir.join("redis.log");
        self.starts += 1;
        let mut process = Process::spawn("redis-server", command, &log);
        let starts = self.starts;
        // Each start logs this once it has loaded the append-only file.
        process.wait_until("ready", |p| {
            p.log_text().matches("Ready to accept connections").count() >= starts
        });
        self.process = Some(process);
    }

    /// `redis://127.0.0.1:<port>` (or `rediss://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.signal_and_wait(libc::SIGKILL);
        }
    }

    /// Starts the server again on the same port with its data.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
