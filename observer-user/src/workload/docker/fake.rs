//! A scripted socket for the client's and the watcher's unit tests: it answers each
//! request as the test says, including what a real dockerd never sends.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::{UnixListener, UnixStream},
    path::Path,
    sync::{Arc, Mutex},
};

/// Serves each connection on `socket` with `answer(request line)`, each in a thread of its
/// own (an event stream stays open while other calls are answered); returns the request
/// lines seen.
pub(crate) fn serve(
    socket: &Path,
    answer: impl Fn(&str, &mut UnixStream) + Send + Sync + 'static,
) -> Arc<Mutex<Vec<String>>> {
    let listener = UnixListener::bind(socket).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let answer = Arc::clone(&answer);
            let log = Arc::clone(&log);
            std::thread::spawn(move || handle(stream, &*answer, &log));
        }
    });
    seen
}

fn handle(
    mut stream: UnixStream,
    answer: &(impl Fn(&str, &mut UnixStream) + ?Sized),
    log: &Mutex<Vec<String>>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let line = text.lines().next().unwrap_or_default().to_owned();
    log.lock().unwrap().push(line.clone());
    answer(&line, &mut stream);
}

pub(crate) fn reply(stream: &mut UnixStream, status: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

pub(crate) const VERSION: &str =
    r#"{"Version":"20.10.24+dfsg1","ApiVersion":"1.41","MinAPIVersion":"1.12","Os":"linux"}"#;

/// A temp directory for a test's socket, removed on drop.
pub(crate) struct Dir(std::path::PathBuf);

impl Dir {
    pub(crate) fn new(name: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("zastava-docker-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    pub(crate) fn socket(&self) -> std::path::PathBuf {
        self.0.join("docker.sock")
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
