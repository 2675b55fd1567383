//! Runs the test Authority (tests/authority/authority.py, Debian's python3 with PyJWT and
//! cryptography) on loopback: an OAuth2/OIDC Authority and a Scanner backend that checks
//! the tokens it issued, both over TLS with client certificates, plus a plain-HTTP admin
//! endpoint through which a test reads what happened and changes behaviour.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{backend::Pki, TIMEOUT};

/// The interpreter Debian's python3-jwt and python3-cryptography are installed for.
pub const PYTHON: &str = "/usr/bin/python3";

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/authority/authority.py")
}

pub struct TestAuthority {
    child: Child,
    /// The issuer URL (`https://127.0.0.1:<port>`).
    pub issuer: String,
    /// The backend's base URL.
    pub backend: String,
    admin: String,
}

impl TestAuthority {
    /// Serves `pki`'s server certificate and takes client certificates issued by its CA.
    pub fn start(pki: &Pki) -> TestAuthority {
        let mut child = Command::new(PYTHON)
            .arg(script())
            .arg("--cert")
            .arg(&pki.server_cert)
            .arg("--key")
            .arg(&pki.server_key)
            .arg("--client-ca")
            .arg(&pki.ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {PYTHON} ({e}); `cargo xtask setup` installs python3-jwt and python3-cryptography")
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the Authority prints its URLs");
        let urls: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            let _ = child.kill();
            panic!("the test Authority did not start ({e}): {line:?}")
        });
        let url = |name: &str| urls[name].as_str().expect("a URL").to_owned();
        TestAuthority {
            issuer: url("issuer"),
            backend: url("backend"),
            admin: url("admin"),
            child,
        }
    }

    fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        let addr = self.admin.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).expect("the admin endpoint");
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or_default();
        assert!(
            head.starts_with("HTTP/1.0 200"),
            "{method} {path}: {head}\n{body}"
        );
        serde_json::from_str(body).unwrap_or(Value::Null)
    }

    /// Changes settings (see CONFIG in authority.py).
    pub fn configure(&self, settings: Value) {
        self.call("POST", "/config", &settings);
    }

    /// Takes `server` (`authority` or `backend`) down: its port refuses connections.
    pub fn down(&self, server: &str) {
        self.call("POST", &format!("/down/{server}"), &Value::Null);
    }

    pub fn up(&self, server: &str) {
        self.call("POST", &format!("/up/{server}"), &Value::Null);
    }

    /// Every token issued so far is refused by the backend from now on (`invalid_token`).
    pub fn revoke_all(&self) {
        self.call("POST", "/revoke", &Value::Null);
    }

    /// `issued`, `proofs`, `refused`, `backend`, `handshake_failures`, `config`.
    pub fn state(&self) -> Value {
        self.call("GET", "/state", &Value::Null)
    }

    pub fn issued(&self) -> Vec<Value> {
        list(&self.state()["issued"])
    }

    pub fn backend_requests(&self) -> Vec<Value> {
        list(&self.state()["backend"])
    }

    /// Waits until `done` holds for the state.
    pub fn wait_until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let state = self.state();
            if done(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "test Authority: {what} did not happen within {TIMEOUT:?}:\n{}",
                serde_json::to_string_pretty(&summary(&state)).unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The state without the events, for failure messages.
fn summary(state: &Value) -> Value {
    let mut state = state.clone();
    if let Some(requests) = state["backend"].as_array_mut() {
        for r in requests {
            if let Some(events) = r.get("events").and_then(Value::as_array) {
                r["events"] = Value::from(events.len());
            }
            r["proof"] = Value::Null;
            r["authorization"] = Value::Null;
        }
    }
    state["proofs"] = Value::from(list(&state["proofs"]).len());
    state
}

pub fn list(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

impl Drop for TestAuthority {
    fn drop(&mut self) {
        // Closing its stdin ends it; SIGTERM too, in case it is stuck.
        drop(self.child.stdin.take());
        // SAFETY: signalling a child this harness started and has not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A fresh P-256 key as `openssl ecparam` writes it (SEC1 PEM), at `path`.
pub fn generate_dpop_key(path: &Path) {
    let out = Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ])
        .arg(path)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The key's RFC 7638 thumbprint, computed by the test Authority's code (Python), not ours.
pub fn thumbprint(key: &Path) -> String {
    let out = Command::new(PYTHON)
        .arg(script())
        .arg("--thumbprint")
        .arg(key)
        .output()
        .expect("run the thumbprint helper");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
