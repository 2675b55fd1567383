//! The kernel's own view, checked against independent witnesses: a varied workload under
//! `strace -f -y` and the observer at once, edge for edge; and threads racing the buffers a
//! syscall reads, checked against what the kernel itself says it opened or connected to.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::{CString, OsStr},
    fs,
    mem::size_of,
    net::{Ipv4Addr, Ipv6Addr, TcpListener},
    os::unix::{
        ffi::OsStrExt as _,
        fs::{symlink, PermissionsExt as _},
        net::UnixListener,
    },
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU8, Ordering},
        Arc,
    },
    thread,
};

use base64::Engine as _;
use common::{require_root, unique, Observer, TempDir};
use serde_json::Value;

// --- Edges as both witnesses state them -------------------------------------------------

/// One edge, in the terms strace and the observer share. Paths are bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Edge {
    Exec {
        syscall: String,
        path: Vec<u8>,
        /// What the process passed (as the kernel names it: `/dev/fd/N` for an fd);
        /// `None` where the observer withholds it.
        requested: Option<Vec<u8>>,
        args: Vec<Vec<u8>>,
        result: i64,
    },
    Open {
        syscall: String,
        path: Vec<u8>,
        requested: Option<Vec<u8>>,
        flags: u32,
        /// 0 for any descriptor, else `-errno`.
        outcome: i64,
    },
    Connect {
        /// `inet 127.0.0.1:80`, `unix /path`.
        target: Vec<u8>,
        result: i64,
    },
}

impl Edge {
    /// The same edge, with any requested path: a record's repeats are of its file (or
    /// address), each perhaps asked for by another name; the name is the first's.
    fn repeat(&self) -> Edge {
        let mut e = self.clone();
        match &mut e {
            Edge::Exec { requested, .. } | Edge::Open { requested, .. } => *requested = None,
            Edge::Connect { .. } => {}
        }
        e
    }

    /// Equal, where a requested path the observer withheld matches any.
    fn matches(&self, truth: &Edge) -> bool {
        fn req(a: &Option<Vec<u8>>, b: &Option<Vec<u8>>) -> bool {
            a.is_none() || a == b
        }
        match (self, truth) {
            (
                Edge::Exec {
                    syscall,
                    path,
                    requested,
                    args,
                    result,
                },
                Edge::Exec {
                    syscall: s2,
                    path: p2,
                    requested: r2,
                    args: a2,
                    result: x2,
                },
            ) => syscall == s2 && path == p2 && req(requested, r2) && args == a2 && result == x2,
            (
                Edge::Open {
                    syscall,
                    path,
                    requested,
                    flags,
                    outcome,
                },
                Edge::Open {
                    syscall: s2,
                    path: p2,
                    requested: r2,
                    flags: f2,
                    outcome: o2,
                },
            ) => syscall == s2 && path == p2 && req(requested, r2) && flags == f2 && outcome == o2,
            (a, b) => a == b,
        }
    }
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl std::fmt::Display for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let req = |r: &Option<Vec<u8>>| {
            r.as_deref()
                .map_or("(any)".to_owned(), |r| format!("{:?}", show(r)))
        };
        match self {
            Edge::Exec {
                syscall,
                path,
                requested,
                args,
                result,
            } => {
                let args: Vec<String> = args.iter().map(|a| show(a)).collect();
                write!(
                    f,
                    "{syscall} {:?} (asked {}) {args:?} = {result}",
                    show(path),
                    req(requested)
                )
            }
            Edge::Open {
                syscall,
                path,
                requested,
                flags,
                outcome,
            } => write!(
                f,
                "{syscall} {:?} (asked {}) flags {flags:#o} = {outcome}",
                show(path),
                req(requested)
            ),
            Edge::Connect { target, result } => write!(f, "connect {} = {result}", show(target)),
        }
    }
}

// --- strace's account -------------------------------------------------------------------

/// The bytes of a string strace printed with `-xx` (`"\x2f\x74..."`).
fn hex_string(s: &str) -> Vec<u8> {
    let inner = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or_else(|| panic!("not a string: {s}"));
    assert!(!inner.ends_with("..."), "strace cut a string short: {s}");
    inner
        .split("\\x")
        .skip(1)
        .map(|h| u8::from_str_radix(h, 16).unwrap_or_else(|_| panic!("bad hex in {s}")))
        .collect()
}

/// `3<\x2f...>` or `AT_FDCWD<\x2f...>`: the number (or name) and the path strace saw.
fn annotated(s: &str) -> (String, Vec<u8>) {
    let (head, rest) = s
        .split_once('<')
        .unwrap_or_else(|| panic!("no path annotation: {s}"));
    let path = rest.strip_suffix('>').unwrap();
    let bytes = path
        .split("\\x")
        .skip(1)
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    (head.to_owned(), bytes)
}

/// Splits strace's argument list at top-level commas.
fn split_args(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' | '{' | '(' | '<' => depth += 1,
            ']' | '}' | ')' | '>' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out
}

fn errno(name: &str) -> i64 {
    let n = match name {
        "ENOENT" => libc::ENOENT,
        "EACCES" => libc::EACCES,
        "ENOTDIR" => libc::ENOTDIR,
        "EISDIR" => libc::EISDIR,
        "ENXIO" => libc::ENXIO,
        "ELOOP" => libc::ELOOP,
        "ENAMETOOLONG" => libc::ENAMETOOLONG,
        "EEXIST" => libc::EEXIST,
        "EPERM" => libc::EPERM,
        "ENOEXEC" => libc::ENOEXEC,
        "EINVAL" => libc::EINVAL,
        "ECONNREFUSED" => libc::ECONNREFUSED,
        "EINPROGRESS" => libc::EINPROGRESS,
        "ENETUNREACH" => libc::ENETUNREACH,
        "EAFNOSUPPORT" => libc::EAFNOSUPPORT,
        other => panic!("errno {other} not in the test's table"),
    };
    -i64::from(n)
}

/// `0`, `3<...>`, `-1 ENOENT (No such file or directory)`: the result, and the path of a
/// returned descriptor.
fn result(s: &str) -> (i64, Option<Vec<u8>>) {
    if let Some(rest) = s.strip_prefix("-1 ") {
        return (errno(rest.split(' ').next().unwrap()), None);
    }
    if s.contains('<') {
        let (fd, path) = annotated(s);
        return (fd.parse().unwrap(), Some(path));
    }
    (
        s.split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("result {s}")),
        None,
    )
}

fn open_flags(s: &str) -> u32 {
    s.split('|')
        .map(|f| {
            let v = match f {
                "O_RDONLY" => libc::O_RDONLY,
                "O_WRONLY" => libc::O_WRONLY,
                "O_RDWR" => libc::O_RDWR,
                "O_CREAT" => libc::O_CREAT,
                "O_EXCL" => libc::O_EXCL,
                "O_NOCTTY" => libc::O_NOCTTY,
                "O_TRUNC" => libc::O_TRUNC,
                "O_APPEND" => libc::O_APPEND,
                "O_NONBLOCK" => libc::O_NONBLOCK,
                "O_DIRECTORY" => libc::O_DIRECTORY,
                "O_NOFOLLOW" => libc::O_NOFOLLOW,
                "O_CLOEXEC" => libc::O_CLOEXEC,
                "O_PATH" => libc::O_PATH,
                "O_LARGEFILE" => libc::O_LARGEFILE,
                "O_NOATIME" => libc::O_NOATIME,
                hex if hex.starts_with("0x") => i32::from_str_radix(&hex[2..], 16).unwrap(),
                other => panic!("open flag {other} not in the test's table"),
            };
            v as u32
        })
        .fold(0, |a, b| a | b)
}

/// `base` joined with `relative`, with the rewrites that name the same file whatever the
/// file system holds (the observer's rule for a path no file stands behind).
fn join_exact(base: &[u8], relative: &[u8]) -> Vec<u8> {
    let joined: Vec<u8> = if relative.starts_with(b"/") {
        relative.to_vec()
    } else {
        [base, b"/", relative].concat()
    };
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in joined.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if parts.is_empty() => {}
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return b"/".to_vec();
    }
    parts
        .iter()
        .flat_map(|p| [b"/".as_slice(), p].concat())
        .collect()
}

fn canonical_bytes(path: &[u8]) -> Vec<u8> {
    fs::canonicalize(OsStr::from_bytes(path))
        .unwrap_or_else(|e| panic!("canonicalize {}: {e}", show(path)))
        .as_os_str()
        .as_bytes()
        .to_vec()
}

/// What strace saw, per thread, and the edges it implies.
struct StraceAccount {
    tids: BTreeSet<u64>,
    edges: Vec<Edge>,
}

/// Reads `prefix.<tid>` files written by `strace -ff -y -xx`. `root_cwd` is the working
/// directory the traced command started in: working directories are followed through
/// `chdir`, `fchdir` and forks to know where a relative exec looked.
fn read_strace(prefix: &Path, root_cwd: &[u8]) -> StraceAccount {
    let dir = prefix.parent().unwrap();
    let stem = prefix.file_name().unwrap().to_str().unwrap();
    let mut files: BTreeMap<u64, String> = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if let Some(tid) = name.strip_prefix(&format!("{stem}.")) {
            files.insert(
                tid.parse().unwrap(),
                fs::read_to_string(entry.path()).unwrap(),
            );
        }
    }
    // The traced command is the one no other thread forked.
    let mut forked = BTreeSet::new();
    for text in files.values() {
        for line in text.lines() {
            let forks = ["clone(", "clone3(", "fork(", "vfork("]
                .iter()
                .any(|p| line.starts_with(p));
            if forks {
                if let Some((_, r)) = line.rsplit_once(") = ") {
                    if let Ok(child) = r.trim().parse::<u64>() {
                        forked.insert(child);
                    }
                }
            }
        }
    }
    let roots: Vec<u64> = files
        .keys()
        .copied()
        .filter(|t| !forked.contains(t))
        .collect();
    assert_eq!(roots.len(), 1, "one traced command: {roots:?}");

    let mut edges = Vec::new();
    let mut queue = vec![(roots[0], root_cwd.to_vec())];
    while let Some((tid, mut cwd)) = queue.pop() {
        let text = files.get(&tid).map_or("", String::as_str);
        for line in text.lines() {
            let Some((call, args_and_result)) = line.split_once('(') else {
                continue;
            };
            let Some((args, ret)) = args_and_result.rsplit_once(") = ") else {
                continue;
            };
            let args = split_args(args);
            let (ret, fd_path) = result(ret.trim());
            match call {
                "chdir" if ret == 0 => {
                    cwd = canonical_bytes(&join_exact(&cwd, &hex_string(args[0])))
                }
                "fchdir" if ret == 0 => cwd = annotated(args[0]).1,
                "clone" | "clone3" | "fork" | "vfork" if ret > 0 => {
                    queue.push((ret as u64, cwd.clone()));
                }
                "openat" | "open" | "creat" => {
                    let (base, requested, flags) = match call {
                        "openat" => (
                            annotated(args[0]).1,
                            hex_string(args[1]),
                            open_flags(args[2]),
                        ),
                        "open" => (cwd.clone(), hex_string(args[0]), open_flags(args[1])),
                        _ => (
                            cwd.clone(),
                            hex_string(args[0]),
                            (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u32,
                        ),
                    };
                    let path = match fd_path {
                        // What the kernel opened, as /proc/<pid>/fd says.
                        Some(p) if ret >= 0 => p,
                        _ => join_exact(&base, &requested),
                    };
                    edges.push(Edge::Open {
                        syscall: call.to_owned(),
                        path,
                        requested: Some(requested),
                        flags,
                        outcome: ret.min(0),
                    });
                }
                "execve" | "execveat" => {
                    let (dir, fd, name, argv) = if call == "execve" {
                        (cwd.clone(), None, hex_string(args[0]), args[1])
                    } else {
                        let (fd, dir) = annotated(args[0]);
                        let fd = (fd != "AT_FDCWD").then_some(fd);
                        (dir, fd, hex_string(args[1]), args[2])
                    };
                    let argv: Vec<Vec<u8>> = argv
                        .strip_prefix('[')
                        .and_then(|a| a.strip_suffix(']'))
                        .map(|a| {
                            if a.is_empty() {
                                Vec::new()
                            } else {
                                split_args(a).into_iter().map(hex_string).collect()
                            }
                        })
                        .unwrap_or_else(|| panic!("argv {argv}"));
                    let target = if name.is_empty() {
                        dir.clone()
                    } else {
                        join_exact(&dir, &name)
                    };
                    // The name the kernel keeps for the new image.
                    let requested = match &fd {
                        None => name.clone(),
                        Some(_) if name.starts_with(b"/") => name.clone(),
                        Some(fd) if name.is_empty() => format!("/dev/fd/{fd}").into_bytes(),
                        Some(fd) => [format!("/dev/fd/{fd}/").as_bytes(), &name].concat(),
                    };
                    let path = if ret == 0 {
                        canonical_bytes(&target)
                    } else {
                        target
                    };
                    edges.push(Edge::Exec {
                        syscall: call.to_owned(),
                        path,
                        requested: Some(requested),
                        args: if ret == 0 { argv } else { Vec::new() },
                        result: ret,
                    });
                }
                "connect" => {
                    let target = sockaddr_target(args[1]);
                    edges.push(Edge::Connect {
                        target,
                        result: ret,
                    });
                }
                _ => {}
            }
        }
    }
    StraceAccount {
        tids: files.keys().copied().collect(),
        edges,
    }
}

/// strace's sockaddr, in the test's terms.
fn sockaddr_target(s: &str) -> Vec<u8> {
    let fields: BTreeMap<&str, &str> = split_args(s.trim_start_matches('{').trim_end_matches('}'))
        .into_iter()
        .filter_map(|f| f.split_once('='))
        .collect();
    match fields.get("sa_family").copied() {
        Some("AF_INET") => {
            let port = fields["sin_port"]
                .trim_start_matches("htons(")
                .trim_end_matches(')');
            let addr = fields["sin_addr"]
                .trim_start_matches("inet_addr(")
                .trim_end_matches(')');
            format!("inet {}:{port}", show(&hex_string(addr))).into_bytes()
        }
        Some("AF_INET6") => {
            let port = fields["sin6_port"]
                .trim_start_matches("htons(")
                .trim_end_matches(')');
            // inet_pton(AF_INET6, "\x3a\x3a\x31", &sin6_addr) is not a key=value field.
            let pton = split_args(s.trim_start_matches('{').trim_end_matches('}'))
                .into_iter()
                .find(|f| f.starts_with("inet_pton("))
                .unwrap()
                .to_owned();
            let addr = split_args(pton.trim_start_matches("inet_pton(").trim_end_matches(')'))[1]
                .to_owned();
            let addr: Ipv6Addr = show(&hex_string(&addr)).parse().unwrap();
            format!("inet6 {addr}:{port}").into_bytes()
        }
        Some("AF_UNIX") => [b"unix ".as_slice(), &hex_string(fields["sun_path"])].concat(),
        other => format!("{other:?}").into_bytes(),
    }
}

// --- The observer's account -------------------------------------------------------------

fn bytes_of(e: &Value, text: &str, bytes: &str) -> Option<Vec<u8>> {
    if let Some(b64) = e.get(bytes).and_then(Value::as_str) {
        return Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        );
    }
    e.get(text)
        .and_then(Value::as_str)
        .map(|s| s.as_bytes().to_vec())
}

/// The observer's edge, and how many occurrences it stands for.
fn observed(e: &Value) -> Option<(Edge, u64)> {
    if e["eventType"] != "edge" {
        return None;
    }
    let count = e["count"].as_u64().unwrap_or(1);
    let path = || bytes_of(e, "path", "pathBytes").unwrap_or_default();
    let shared = e["sharedMemory"] == true;
    let requested = || {
        if (shared || e["repeatsOnly"] == true) && e.get("requestedPath").is_none() {
            None
        } else {
            Some(bytes_of(e, "requestedPath", "requestedPathBytes").unwrap_or_else(path))
        }
    };
    let edge = match e["edgeType"].as_str()? {
        "syscall" => {
            let args: Vec<Vec<u8>> = match e.get("argsBytes").and_then(Value::as_array) {
                Some(raw) => raw
                    .iter()
                    .map(|a| {
                        base64::engine::general_purpose::STANDARD
                            .decode(a.as_str().unwrap())
                            .unwrap()
                    })
                    .collect(),
                None => e["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().as_bytes().to_vec())
                    .collect(),
            };
            let result = e["result"].as_i64().unwrap();
            Edge::Exec {
                syscall: e["syscall"].as_str().unwrap().to_owned(),
                path: path(),
                requested: requested(),
                // A failed exec carries the caller's image's argv: not compared.
                args: if result == 0 { args } else { Vec::new() },
                result,
            }
        }
        "fs" => Edge::Open {
            syscall: e["syscall"].as_str().unwrap().to_owned(),
            path: path(),
            requested: requested(),
            flags: e["flags"].as_u64().unwrap() as u32,
            outcome: e["result"].as_i64().unwrap().min(0),
        },
        "net" => {
            let target = match e["family"].as_str().unwrap() {
                "inet" => format!("inet {}:{}", e["address"].as_str().unwrap(), e["port"]),
                "inet6" => format!("inet6 {}:{}", e["address"].as_str().unwrap(), e["port"]),
                "unix" => {
                    return Some((
                        Edge::Connect {
                            target: [b"unix ".as_slice(), &path()].concat(),
                            result: e["result"].as_i64().unwrap(),
                        },
                        count,
                    ))
                }
                other => other.to_owned(),
            };
            Edge::Connect {
                target: target.into_bytes(),
                result: e["result"].as_i64().unwrap(),
            }
        }
        _ => return None,
    };
    Some((edge, count))
}

// --- The ground truth -------------------------------------------------------------------

/// A cgroup of its own (v2) for the traced command. The kernel merges an edge's repeats per
/// cgroup: in the test's cgroup, another test's observer reading a build-id from a file of
/// this workload would be the same edge, and take its count.
struct Cgroup {
    dir: PathBuf,
    procs: CString,
}

impl Cgroup {
    fn new() -> Cgroup {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        // "36 25 0:31 / /sys/fs/cgroup/unified rw,... - cgroup2 cgroup2 rw"
        let mount = mountinfo
            .lines()
            .find(|l| {
                l.split(" - ")
                    .nth(1)
                    .is_some_and(|f| f.starts_with("cgroup2 "))
            })
            .and_then(|l| l.split(' ').nth(4))
            .expect("a cgroup v2 hierarchy");
        let dir = Path::new(mount).join(unique("zastava-truth"));
        fs::create_dir(&dir).unwrap();
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
        Cgroup { dir, procs }
    }

    /// The id the kernel gives its tasks' events: the directory's inode.
    fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(&self.dir).unwrap().ino()
    }

    /// Starts `command` inside the cgroup.
    fn enter(&self, command: &mut Command) {
        use std::os::unix::process::CommandExt as _;
        let procs = self.procs.clone();
        // SAFETY: between fork and exec only open, write and close (async-signal-safe),
        // with a path built before the fork.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once the traced command has been reaped.
        let _ = fs::remove_dir(&self.dir);
    }
}

const WORKLOAD: &str = r#"
set -u
cd data && cat ./f2 > /dev/null
cat ./f2 ../f1 > /dev/null
cd ..
cat "sub dir/x" > /dev/null
cat ./link > /dev/null
cat "./café ü" > /dev/null
cat $'./bad-\xff-name' > /dev/null
cat ./data/./../f1 > /dev/null
cat ./missing 2> /dev/null || true
cat data/../missing 2> /dev/null || true
cat "$LONG" > /dev/null
./tool one "two words"
/usr/bin/python3 -S -c "$PY"
"#;

const PY: &str = r#"
import os, socket
d = os.open("data", os.O_RDONLY | os.O_DIRECTORY)
os.close(os.open("f2", os.O_RDONLY, dir_fd=d))
os.close(d)
# The same descriptor number, now another directory.
d2 = os.open("sub dir", os.O_RDONLY | os.O_DIRECTORY)
assert d2 == d
os.close(os.open("x", os.O_RDONLY, dir_fd=d2))
try:
    os.open("nope", os.O_RDONLY, dir_fd=d2)
except FileNotFoundError:
    pass
os.close(d2)
os.close(os.open("created", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
for family, address in [
    (socket.AF_INET, ("127.0.0.1", int(os.environ["PORT"]))),
    (socket.AF_INET, ("127.0.0.1", int(os.environ["CLOSED"]))),
    (socket.AF_INET6, ("::1", int(os.environ["PORT6"]))),
    (socket.AF_UNIX, os.getcwd() + "/sock"),
]:
    s = socket.socket(family)
    try:
        s.connect(address)
    except ConnectionRefusedError:
        pass
    s.close()
try:
    os.execv("./no-such-tool", ["no-such-tool"])
except FileNotFoundError:
    pass
fd = os.open("tool", os.O_RDONLY)
pid = os.fork()
if pid == 0:
    os.execve(fd, ["tool-by-fd", "x"], {})
os.waitpid(pid, 0)
"#;

/// The test's directory tree: relative names, a symlink, names with a space, unicode and
/// a 0xff byte, and a path close to PATH_MAX.
fn tree(root: &Path) -> PathBuf {
    fs::create_dir_all(root.join("data")).unwrap();
    fs::create_dir_all(root.join("sub dir")).unwrap();
    fs::write(root.join("f1"), "1").unwrap();
    fs::write(root.join("data/f2"), "2").unwrap();
    fs::write(root.join("sub dir/x"), "x").unwrap();
    fs::write(root.join("café ü"), "u").unwrap();
    fs::write(root.join(OsStr::from_bytes(b"bad-\xff-name")), "ff").unwrap();
    symlink("f1", root.join("link")).unwrap();
    fs::copy("/bin/true", root.join("tool")).unwrap();
    fs::set_permissions(root.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
    let mut long = root.join("deep");
    while long.as_os_str().len() < 3_800 {
        long.push("d".repeat(200));
    }
    fs::create_dir_all(&long).unwrap();
    // 4 000 bytes: within PATH_MAX (4 096 with the terminator) and the probes' bound.
    let name = "f".repeat(4_000 - 1 - long.as_os_str().len());
    let long = long.join(name);
    fs::write(&long, "long").unwrap();
    assert_eq!(long.as_os_str().len(), 4_000);
    long
}

#[test]
fn strace_and_the_observer_agree_on_every_edge() {
    require_root();
    let dir = TempDir::new("zastava-truth");
    let root = fs::canonicalize(dir.path()).unwrap();
    let long = tree(&root);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let listener6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
    let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let _unix = UnixListener::bind(root.join("sock")).unwrap();
    let ports: BTreeSet<u16> = [
        listener.local_addr().unwrap().port(),
        listener6.local_addr().unwrap().port(),
        closed_port,
    ]
    .into();
    // strace writes its files outside the tree the workload's opens are compared in.
    let trace_dir = TempDir::new("zastava-truth-trace");
    let trace = trace_dir.path().join("t");
    let cgroup = Cgroup::new();

    let observer = Observer::start(&["--no-cri"]);
    let mut strace = Command::new("strace");
    cgroup.enter(&mut strace);
    let status = strace
        .args(["-ff", "-y", "-xx", "-qq", "-s", "65536", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=execve,execveat,open,openat,openat2,creat,connect,chdir,fchdir,clone,clone3,fork,vfork",
            "/bin/bash",
            "-c",
            WORKLOAD,
        ])
        .current_dir(&root)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C")
        .env("LONG", &long)
        .env("PY", PY)
        .env("PORT", listener.local_addr().unwrap().port().to_string())
        .env("PORT6", listener6.local_addr().unwrap().port().to_string())
        .env("CLOSED", closed_port.to_string())
        .status()
        .expect("run strace");
    assert!(
        status.success(),
        "the workload failed under strace: {status}"
    );
    let truth = read_strace(&trace, root.as_os_str().as_bytes());
    // Every edge of the traced threads reaches the observer's output before it stops.
    let last = truth.tids.iter().max().copied().unwrap();
    observer.wait_for("the last traced thread's edge", |e| {
        e["process"]["tid"].as_u64() == Some(last)
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let stopped = observer.stop();

    // The edges that are the test's own: opens under its directory, connects to its ports
    // and socket, and every exec of the traced threads.
    let under = |p: &[u8]| p.starts_with(root.as_os_str().as_bytes());
    let ours = |edge: &Edge| match edge {
        Edge::Exec { .. } => true,
        Edge::Open { path, .. } => under(path),
        Edge::Connect { target, .. } => {
            let t = show(target);
            t.strip_prefix("unix ").is_some_and(|p| under(p.as_bytes()))
                || ports.iter().any(|port| t.ends_with(&format!(":{port}")))
        }
    };
    let mut expected: Vec<Edge> = truth.edges.into_iter().filter(|e| ours(e)).collect();
    // Every occurrence the observer reported; those that name what was asked for are
    // matched first, so that one with any name cannot take another's.
    let mut occurrences = Vec::new();
    for e in &stopped.events {
        let tid = e["process"]["tid"].as_u64().unwrap_or(0);
        if !truth.tids.contains(&tid) {
            continue;
        }
        let Some((edge, count)) = observed(e) else {
            continue;
        };
        if !ours(&edge) {
            continue;
        }
        assert_eq!(
            e["cgroupId"],
            cgroup.id(),
            "a traced thread outside its cgroup: {e}"
        );
        // A record's first occurrence is the one it names; the rest, and all of a record of
        // repeats only, are of the same file or address by any name.
        let named = u64::from(e["repeatsOnly"] != true);
        for n in 0..count {
            let edge = if n < named {
                edge.clone()
            } else {
                edge.repeat()
            };
            occurrences.push((edge, e));
        }
    }
    occurrences.sort_by_key(|(edge, _)| edge.repeat() == *edge);
    let mut extra = Vec::new();
    let mut matched = 0;
    for (edge, e) in occurrences {
        match expected.iter().position(|t| edge.matches(t)) {
            Some(i) => {
                expected.remove(i);
                matched += 1;
            }
            None => extra.push((edge, e.clone())),
        }
    }

    // A missing edge is shown with every record of its path, whoever made it.
    let describe = |edges: &[Edge]| {
        edges
            .iter()
            .map(|edge| {
                let path = match edge {
                    Edge::Exec { path, .. } | Edge::Open { path, .. } => path.clone(),
                    Edge::Connect { target, .. } => target.clone(),
                };
                let records: Vec<String> = stopped
                    .events
                    .iter()
                    .filter(|e| bytes_of(e, "path", "pathBytes").as_deref() == Some(&path[..]))
                    .map(|e| format!("    {e}"))
                    .collect();
                format!("  {edge}\n{}", records.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        expected.is_empty() && extra.is_empty(),
        "{matched} edges agree; strace saw, the observer did not report:\n{}\n\
         the observer reported, strace did not see:\n{}\nsummary: {}",
        describe(&expected),
        extra
            .iter()
            .map(|(edge, e)| format!("  {edge}\n    {e}"))
            .collect::<Vec<_>>()
            .join("\n"),
        stopped.summary
    );
    // The workload is not trivial: it did what the test says it does.
    assert!(matched >= 30, "only {matched} edges");
    drop((listener, listener6));
}

// --- Racing the caller's buffers --------------------------------------------------------

/// A NUL-terminated buffer another thread rewrites while syscalls read it.
struct Flipping(Vec<AtomicU8>);

impl Flipping {
    fn new(first: &[u8], capacity: usize) -> Arc<Self> {
        let buf = Flipping((0..capacity).map(|_| AtomicU8::new(0)).collect());
        buf.set(first);
        Arc::new(buf)
    }

    fn set(&self, bytes: &[u8]) {
        for (slot, &b) in self.0.iter().zip(bytes) {
            slot.store(b, Ordering::Relaxed);
        }
    }

    fn ptr(&self) -> *const u8 {
        // AtomicU8 has the layout of u8; the kernel reads the bytes as they are.
        self.0.as_ptr().cast()
    }
}

/// Rewrites `buf` between `a` and `b` as fast as it can until `stop`.
fn flipper(
    buf: Arc<Flipping>,
    a: Vec<u8>,
    b: Vec<u8>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            buf.set(&b);
            buf.set(&a);
        }
    })
}

fn tid() -> u64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u64 }
}

#[test]
fn a_path_rewritten_while_it_is_opened_is_reported_as_the_file_the_kernel_opened() {
    require_root();
    let dir = TempDir::new("zastava-race-open");
    let root = fs::canonicalize(dir.path()).unwrap();
    // Two files with names of one length; a torn mix of them names no file.
    let real = root.join("real-file");
    let fake = root.join("fake-file");
    fs::write(&real, "r").unwrap();
    fs::write(&fake, "f").unwrap();
    let real_b = real.as_os_str().as_bytes().to_vec();
    let fake_b = fake.as_os_str().as_bytes().to_vec();
    const OPENS: usize = 20_000;

    let observer = Observer::start(&["--no-cri"]);
    let buf = Flipping::new(&real_b, real_b.len() + 1);
    let stop = Arc::new(AtomicBool::new(false));
    let flip = flipper(
        Arc::clone(&buf),
        real_b.clone(),
        fake_b.clone(),
        Arc::clone(&stop),
    );
    let opener = {
        let buf = Arc::clone(&buf);
        thread::spawn(move || {
            // What the kernel says each open opened: /proc/self/fd, read before the close.
            let mut opened: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
            let mut failed = 0u64;
            for _ in 0..OPENS {
                // SAFETY: a NUL-terminated buffer that outlives the call.
                let fd = unsafe { libc::open(buf.ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
                if fd < 0 {
                    failed += 1;
                    continue;
                }
                let link = fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
                // SAFETY: fd was just opened here.
                unsafe { libc::close(fd) };
                *opened
                    .entry(link.as_os_str().as_bytes().to_vec())
                    .or_default() += 1;
            }
            (tid(), opened, failed)
        })
    };
    let (opener_tid, opened, failed) = opener.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    flip.join().unwrap();
    // The last open's record, then everything the kernel still holds back.
    observer.wait_for("the opener's last edge", |e| {
        e["process"]["tid"] == opener_tid
    });
    let stopped = observer.stop();

    assert!(
        opened.get(&real_b).copied().unwrap_or(0) > 0
            && opened.get(&fake_b).copied().unwrap_or(0) > 0,
        "the race must open both files: {opened:?}"
    );
    let mut reported: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut reported_failed = 0;
    for e in stopped
        .events
        .iter()
        .filter(|e| e["edgeType"] == "fs" && e["process"]["tid"] == opener_tid)
    {
        let path = bytes_of(e, "path", "pathBytes").unwrap();
        if !path.starts_with(root.as_os_str().as_bytes()) {
            continue;
        }
        let count = e["count"].as_u64().unwrap_or(1);
        if e["result"].as_i64().unwrap() >= 0 {
            // The kernel's file, and no name from the racing buffer beside it.
            assert!(e.get("pathFromCaller").is_none(), "{e}");
            assert!(e.get("requestedPath").is_none(), "{e}");
            assert_eq!(e["sharedMemory"], true, "{e}");
            *reported.entry(path).or_default() += count;
        } else {
            // No file: only the caller's buffer to go by, and the record says so.
            assert_eq!(e["pathFromCaller"], true, "{e}");
            assert_eq!(e["sharedMemory"], true, "{e}");
            reported_failed += count;
        }
    }
    let show_map = |m: &BTreeMap<Vec<u8>, u64>| {
        m.iter()
            .map(|(k, v)| format!("{}: {v}", show(k)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    assert_eq!(
        show_map(&reported),
        show_map(&opened),
        "every successful open, under the name of the file the kernel opened"
    );
    assert_eq!(reported_failed, failed, "every failed open counted");
}

#[test]
fn an_address_rewritten_while_it_is_connected_is_reported_as_the_peer_the_kernel_connected() {
    require_root();
    let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let b = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let (port_a, port_b) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    // Accept and drop, so the backlog never fills.
    let acceptors: Vec<_> = [a, b]
        .into_iter()
        .map(|l| {
            l.set_nonblocking(true).unwrap();
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok(conn) => drop(conn),
                        Err(_) => thread::sleep(std::time::Duration::from_micros(200)),
                    }
                }
            })
        })
        .collect();
    let sockaddr = |port: u16| -> Vec<u8> {
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: a plain C struct viewed as its bytes.
        unsafe {
            std::slice::from_raw_parts(
                (&raw const addr).cast::<u8>(),
                size_of::<libc::sockaddr_in>(),
            )
        }
        .to_vec()
    };
    const CONNECTS: usize = 2_000;

    let observer = Observer::start(&["--no-cri"]);
    let buf = Flipping::new(&sockaddr(port_a), size_of::<libc::sockaddr_in>());
    let flip = flipper(
        Arc::clone(&buf),
        sockaddr(port_a),
        sockaddr(port_b),
        Arc::clone(&stop),
    );
    let connector = {
        let buf = Arc::clone(&buf);
        thread::spawn(move || {
            // What the kernel says each socket connected to: getpeername.
            let mut connected: BTreeMap<u16, u64> = BTreeMap::new();
            let mut failed = 0u64;
            for _ in 0..CONNECTS {
                // SAFETY: plain socket calls on a descriptor owned here; the address
                // buffer outlives the call and has the length passed.
                unsafe {
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                    assert!(fd >= 0);
                    let rc = libc::connect(
                        fd,
                        buf.ptr().cast(),
                        size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    );
                    if rc == 0 {
                        let mut peer: libc::sockaddr_in = std::mem::zeroed();
                        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                        assert_eq!(libc::getpeername(fd, (&raw mut peer).cast(), &mut len), 0);
                        *connected.entry(u16::from_be(peer.sin_port)).or_default() += 1;
                    } else {
                        failed += 1;
                    }
                    libc::close(fd);
                }
            }
            (tid(), connected, failed)
        })
    };
    let (connector_tid, connected, failed) = connector.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    flip.join().unwrap();
    for t in acceptors {
        t.join().unwrap();
    }
    observer.wait_for("the connector's last edge", |e| {
        e["process"]["tid"] == connector_tid
    });
    let stopped = observer.stop();

    assert!(
        connected.get(&port_a).copied().unwrap_or(0) > 0
            && connected.get(&port_b).copied().unwrap_or(0) > 0,
        "the race must reach both listeners: {connected:?}"
    );
    let mut reported: BTreeMap<u16, u64> = BTreeMap::new();
    let mut reported_failed = 0;
    for e in stopped
        .events
        .iter()
        .filter(|e| e["edgeType"] == "net" && e["process"]["tid"] == connector_tid)
    {
        let count = e["count"].as_u64().unwrap_or(1);
        if e["result"] == 0 {
            // The socket's peer, from the kernel.
            assert!(e.get("addressFromCaller").is_none(), "{e}");
            assert_eq!(e["address"], "127.0.0.1", "{e}");
            *reported
                .entry(e["port"].as_u64().unwrap() as u16)
                .or_default() += count;
        } else {
            assert_eq!(e["addressFromCaller"], true, "{e}");
            assert_eq!(e["sharedMemory"], true, "{e}");
            reported_failed += count;
        }
    }
    assert_eq!(
        reported, connected,
        "every connect, to the peer the kernel connected to"
    );
    assert_eq!(reported_failed, failed, "every failed connect counted");
}

// --- Descriptors read from a shared table -----------------------------------------------

/// Opens, failed `openat(dfd, ...)`s and connects by a process alone with its descriptor
/// table, then the same and more with a second thread alive (sharing the table), and what
/// is read from no descriptor: the working directory, absolute names, the caller's
/// address, a requested path where the kernel's walk reached no root. Imports
/// come first, from `/`, so that nothing the interpreter opens lands in the test's tree.
const SHARED_TABLE_PY: &str = r#"
import os, socket, threading
root, port, closed = os.environ["ROOT"], int(os.environ["PORT"]), int(os.environ["CLOSED"])
def connect(p):
    s = socket.socket(socket.AF_INET)
    try:
        s.connect(("127.0.0.1", p))
    except ConnectionRefusedError:
        pass
    s.close()
def missing(name, **kw):
    try:
        os.open(name, os.O_RDONLY, **kw)
    except FileNotFoundError:
        return
    raise SystemExit(name + " exists")
os.chdir(root)
# Alone: no other task uses the descriptor table.
os.close(os.open(root + "/alone", os.O_RDONLY))
d = os.open(root + "/dir", os.O_RDONLY | os.O_DIRECTORY)
missing("missing-1", dir_fd=d)
connect(port)
# A second thread, alive until the end: the table is shared.
release = threading.Event()
t = threading.Thread(target=release.wait)
t.start()
os.close(os.open(root + "/shared", os.O_RDONLY))
os.close(os.open(root + "/alone", os.O_RDONLY))
missing("missing-2", dir_fd=d)
missing("missing-3")
missing(root + "/missing-4")
# A pipe, reopened: the kernel's walk of it reaches no root, so the path is the caller's.
r, w = os.pipe()
os.dup2(r, 100)
os.close(os.open("/proc/self/fd/100", os.O_RDONLY))
connect(port)
connect(closed)
release.set()
t.join()
"#;

/// One observer edge in a line that says where its value came from.
fn provenance(e: &Value) -> String {
    let target = match e["edgeType"].as_str() {
        Some("net") => format!("{}:{}", str_of(&e["address"]), e["port"]),
        _ => show(&bytes_of(e, "path", "pathBytes").unwrap_or_default()),
    };
    let from_caller = e["pathFromCaller"] == true || e["addressFromCaller"] == true;
    // Any descriptor an open returned is `fd`.
    let result = match e["result"].as_i64() {
        Some(fd) if fd > 0 && e["edgeType"] == "fs" => "fd".to_owned(),
        _ => e["result"].to_string(),
    };
    format!(
        "{} {target} result={result} fromCaller={from_caller} filesShared={}",
        str_of(&e["edgeType"]),
        e["filesShared"] == true
    )
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

#[test]
fn a_value_read_through_a_descriptor_table_another_thread_shares_is_marked() {
    require_root();
    let dir = TempDir::new("zastava-files-shared");
    let root = fs::canonicalize(dir.path()).unwrap();
    fs::create_dir(root.join("dir")).unwrap();
    fs::write(root.join("alone"), "a").unwrap();
    fs::write(root.join("shared"), "s").unwrap();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);

    let observer = Observer::start(&["--no-cri"]);
    let helper = Command::new("/usr/bin/python3")
        .args(["-S", "-c", SHARED_TABLE_PY])
        .current_dir("/")
        .env_clear()
        .env("ROOT", &root)
        .env("PORT", port.to_string())
        .env("CLOSED", closed_port.to_string())
        .spawn()
        .expect("run python3");
    let pid = u64::from(helper.id());
    let status = helper.wait_with_output().unwrap().status;
    assert!(status.success(), "the helper failed: {status}");
    observer.wait_for("the helper's refused connect", |e| {
        common::pid_of(e) == pid && e["port"] == closed_port
    });
    let stopped = observer.stop();

    let r = root.to_str().unwrap();
    let under = |e: &Value| {
        bytes_of(e, "path", "pathBytes").is_some_and(|p| p.starts_with(root.as_os_str().as_bytes()))
    };
    let mut seen: Vec<String> = Vec::new();
    for e in stopped.events.iter().filter(|e| {
        e["eventType"] == "edge"
            && common::pid_of(e) == pid
            && match e["edgeType"].as_str() {
                Some("fs") => under(e) || e["path"] == "/proc/self/fd/100",
                Some("net") => e["port"] == port || e["port"] == closed_port,
                _ => false,
            }
    }) {
        for _ in 0..e["count"].as_u64().unwrap_or(1) {
            seen.push(provenance(e));
        }
    }
    seen.sort();
    let mut expected = vec![
        // Alone: the descriptor could not have been replaced.
        format!("fs {r}/alone result=fd fromCaller=false filesShared=false"),
        format!("fs {r}/dir result=fd fromCaller=false filesShared=false"),
        format!("fs {r}/dir/missing-1 result=-2 fromCaller=true filesShared=false"),
        format!("net 127.0.0.1:{port} result=0 fromCaller=false filesShared=false"),
        // Shared: every value that came through a descriptor says so, and an edge it marks
        // is not merged with the same edge unmarked.
        format!("fs {r}/shared result=fd fromCaller=false filesShared=true"),
        format!("fs {r}/alone result=fd fromCaller=false filesShared=true"),
        format!("fs {r}/dir/missing-2 result=-2 fromCaller=true filesShared=true"),
        format!("net 127.0.0.1:{port} result=0 fromCaller=false filesShared=true"),
        // Shared, but nothing came through a descriptor: the working directory, an
        // absolute path, the caller's address.
        format!("fs {r}/missing-3 result=-2 fromCaller=true filesShared=false"),
        format!("fs {r}/missing-4 result=-2 fromCaller=true filesShared=false"),
        "fs /proc/self/fd/100 result=fd fromCaller=true filesShared=false".to_owned(),
        format!("net 127.0.0.1:{closed_port} result=-111 fromCaller=true filesShared=false"),
    ];
    expected.sort();
    assert_eq!(
        seen.join("\n"),
        expected.join("\n"),
        "the helper's edges, as the observer reported them"
    );
    drop(listener);
}

/// One thread opens `MINE` over and over while another puts a duplicate of `DECOY` on the
/// descriptor numbers the opens get (and closes it again), so that the number an open
/// returned may hold the decoy by the time the probe reads it. Prints the opener's tid.
const SWAP_PY: &str = r#"
import os, threading
mine, decoy, opens = os.environ["MINE"], os.environ["DECOY"], int(os.environ["OPENS"])
# Other flags than the opener's: these opens are other edges.
d = os.open(decoy, os.O_RDONLY | os.O_NONBLOCK)
# The lowest free number: the one the opener's descriptors get.
n = os.open(mine, os.O_RDONLY | os.O_NONBLOCK)
os.close(n)
stop = threading.Event()
def swap():
    while not stop.is_set():
        for fd in (n, n + 1):
            try:
                os.dup2(d, fd)
                os.close(fd)
            except OSError:
                pass
opener_tid = []
def opener():
    opener_tid.append(threading.get_native_id())
    for _ in range(opens):
        fd = os.open(mine, os.O_RDONLY)
        try:
            os.close(fd)
        except OSError:
            pass
s = threading.Thread(target=swap)
s.start()
o = threading.Thread(target=opener)
o.start()
o.join()
stop.set()
s.join()
print(opener_tid[0])
"#;

#[test]
fn a_descriptor_swapped_before_the_probe_reads_it_is_never_reported_unmarked() {
    require_root();
    let dir = TempDir::new("zastava-fd-swap");
    let root = fs::canonicalize(dir.path()).unwrap();
    let mine = root.join("mine");
    let decoy = root.join("decoy");
    fs::write(&mine, "m").unwrap();
    fs::write(&decoy, "d").unwrap();
    const OPENS: u64 = 20_000;

    let observer = Observer::start(&["--no-cri"]);
    let out = Command::new("/usr/bin/python3")
        .args(["-S", "-c", SWAP_PY])
        .current_dir("/")
        .env_clear()
        .env("MINE", &mine)
        .env("DECOY", &decoy)
        .env("OPENS", OPENS.to_string())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "the helper failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let opener: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    observer.wait_for("the opener's edge", |e| e["process"]["tid"] == opener);
    let stopped = observer.stop();

    let mine_b = mine.as_os_str().as_bytes();
    let decoy_b = decoy.as_os_str().as_bytes();
    let mut total = 0;
    let mut swapped = 0;
    let mut emptied = 0;
    for e in stopped
        .events
        .iter()
        .filter(|e| e["edgeType"] == "fs" && e["process"]["tid"] == opener)
    {
        let count = e["count"].as_u64().unwrap_or(1);
        total += count;
        let path = bytes_of(e, "path", "pathBytes").unwrap();
        assert!(e["result"].as_i64().unwrap() >= 0, "{e}");
        // Whatever the race did: a path other than the file opened is marked.
        if path != mine_b {
            assert_eq!(path, decoy_b, "{e}");
            assert_eq!(e["filesShared"], true, "{e}");
            swapped += count;
        }
        // And every path read through the shared table is marked, race or not; one that
        // is not the table's (the slot was empty when read) is the caller's, and says so.
        if e.get("pathFromCaller").is_none() {
            assert_eq!(e["filesShared"], true, "{e}");
        } else {
            assert_eq!(path, mine_b, "{e}");
            emptied += count;
        }
    }
    assert_eq!(total, OPENS, "every open reported");
    eprintln!(
        "of {OPENS} opens, {swapped} were reported with the swapped-in descriptor's file, \
         {emptied} with the caller's path (the descriptor was closed before the read)"
    );
}

// --- The path bound ----------------------------------------------------------------------

#[test]
fn a_path_of_the_longest_length_the_kernel_accepts_is_whole_and_a_longer_one_is_cut() {
    require_root();
    let dir = TempDir::new("zastava-path-max");
    let root = fs::canonicalize(dir.path()).unwrap();
    // PATH_MAX - 1 = 4 095 bytes: the longest name the kernel takes, as long as the
    // probe's capture.
    const LONGEST: usize = libc::PATH_MAX as usize - 1;
    let mut deep = root.clone();
    while LONGEST - deep.as_os_str().len() - 1 > 255 {
        deep.push("d".repeat(200));
    }
    fs::create_dir_all(&deep).unwrap();
    let rest = LONGEST - deep.as_os_str().len() - 1;
    let file = deep.join("f".repeat(rest));
    fs::write(&file, "x").unwrap();
    let missing = deep.join("m".repeat(rest));
    let mut too_long = deep.join("q".repeat(rest)).into_os_string();
    too_long.push("q".repeat(50));
    assert_eq!(file.as_os_str().len(), LONGEST);
    assert_eq!(missing.as_os_str().len(), LONGEST);
    let cut = &too_long.as_bytes()[..LONGEST];

    let observer = Observer::start(&["--no-cri"]);
    let open = |path: &OsStr| {
        let c = CString::new(path.as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; a descriptor is closed at once.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: fd was just opened here.
            unsafe { libc::close(fd) };
            0
        } else {
            -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap())
        }
    };
    assert_eq!(open(file.as_os_str()), 0);
    assert_eq!(open(missing.as_os_str()), -i64::from(libc::ENOENT));
    assert_eq!(open(&too_long), -i64::from(libc::ENAMETOOLONG));
    let by_path = |p: &[u8]| {
        let p = p.to_vec();
        move |e: &Value| {
            e["edgeType"] == "fs" && bytes_of(e, "path", "pathBytes") == Some(p.clone())
        }
    };
    let opened = observer.wait_for(
        "the open of the longest path",
        by_path(file.as_os_str().as_bytes()),
    );
    let failed = observer.wait_for(
        "the failed open of the longest path",
        by_path(missing.as_os_str().as_bytes()),
    );
    let refused = observer.wait_for("the open of a path too long", by_path(cut));
    observer.stop();

    // Whole: the kernel's walk of the file, and the same name as asked for.
    assert!(opened["result"].as_i64().unwrap() >= 0, "{opened}");
    for key in [
        "pathTruncated",
        "pathResolved",
        "pathFromCaller",
        "requestedPath",
    ] {
        assert!(opened.get(key).is_none(), "{key}: {opened}");
    }
    // Whole: the caller's name, all of it.
    assert_eq!(failed["result"], -i64::from(libc::ENOENT), "{failed}");
    assert_eq!(failed["pathFromCaller"], true, "{failed}");
    assert!(failed.get("pathTruncated").is_none(), "{failed}");
    // Cut: the capture holds its first 4 095 bytes, and says so.
    assert_eq!(
        refused["result"],
        -i64::from(libc::ENAMETOOLONG),
        "{refused}"
    );
    assert_eq!(refused["pathTruncated"], true, "{refused}");
    assert_eq!(refused["pathFromCaller"], true, "{refused}");
}

// --- Without the kernel view ------------------------------------------------------------

#[test]
fn without_the_kernel_view_strings_come_from_the_caller_and_say_so() {
    require_root();
    let dir = TempDir::new("zastava-no-kview");
    let root = fs::canonicalize(dir.path()).unwrap();
    fs::write(root.join("f"), "f").unwrap();
    let absolute = root.join("f");
    let absolute_s = absolute.to_str().unwrap().to_owned();
    let c_absolute = std::ffi::CString::new(absolute_s.as_str()).unwrap();
    let tool = root.join("tool");
    fs::copy("/bin/true", &tool).unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();

    // As on a kernel without BTF.
    let observer = Observer::start(&["--no-cri", "--set", "observer.kernel_view=\"off\""]);
    let status = Command::new(&tool)
        .args(["one", "two words"])
        .status()
        .unwrap();
    assert!(status.success());
    let cat = Command::new("/bin/cat")
        .arg("./f")
        .current_dir(&root)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(cat.success());
    // SAFETY: a valid path; the descriptor is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_open, c_absolute.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0);
    // SAFETY: fd came from the open above.
    unsafe { libc::close(fd as i32) };
    let exec = observer.wait_for("the tool's exec", |e| {
        e["edgeType"] == "syscall" && e["args"][0] == tool.to_str().unwrap()
    });
    let relative = observer.wait_for("cat's relative open", |e| {
        e["edgeType"] == "fs" && e["path"] == "./f"
    });
    let legacy = observer.wait_for("the legacy open", |e| {
        e["edgeType"] == "fs" && e["syscall"] == "open" && e["path"] == absolute_s.as_str()
    });
    let stopped = observer.stop();
    assert!(
        stopped.stderr.contains("kernel view") || stopped.stderr.contains("kernel_view"),
        "the observer says it runs without the kernel view:\n{}",
        stopped.stderr
    );

    assert_eq!(exec["path"], tool.to_str().unwrap(), "{exec}");
    assert_eq!(
        exec["args"],
        serde_json::json!([tool.to_str().unwrap(), "one", "two words"])
    );
    // Nothing the caller's memory said is dressed as the kernel's.
    assert_eq!(relative["pathResolved"], false, "{relative}");
    assert_eq!(relative["pathFromCaller"], true, "{relative}");
    assert!(relative["process"].get("cwd").is_none(), "{relative}");
    assert_eq!(legacy["pathFromCaller"], true, "{legacy}");
    assert_eq!(legacy["result"], fd, "{legacy}");
}

// --- argv from the new image ------------------------------------------------------------

#[test]
fn an_exec_storm_of_fresh_forks_reports_every_argv_in_full() {
    require_root();
    let dir = TempDir::new("zastava-exec-storm");
    let root = fs::canonicalize(dir.path()).unwrap();
    let binary = root.join("true");
    fs::copy("/bin/true", &binary).unwrap();
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
    let binary_s = binary.to_str().unwrap().to_owned();
    let c_binary = std::ffi::CString::new(binary_s.as_str()).unwrap();
    const EXECS: u64 = 2_000;

    let observer = Observer::start(&["--no-cri"]);
    for _ in 0..EXECS {
        // SAFETY: the child only calls execl and _exit (async-signal-safe); the parent
        // reaps it.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::execl(
                    c_binary.as_ptr(),
                    c"true".as_ptr(),
                    std::ptr::null::<libc::c_char>(),
                );
                libc::_exit(127);
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        }
    }
    let is_storm = |e: &Value| e["edgeType"] == "syscall" && e["path"] == binary_s.as_str();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while common::occurrences(&observer.events_matching(is_storm), |_| true) < EXECS {
        assert!(
            std::time::Instant::now() < deadline,
            "not every exec was reported"
        );
        thread::sleep(std::time::Duration::from_millis(100));
    }
    let stopped = observer.stop();

    let execs: Vec<&Value> = stopped.events.iter().filter(|e| is_storm(e)).collect();
    assert_eq!(common::occurrences(execs.iter().copied(), |_| true), EXECS);
    for e in &execs {
        assert_eq!(e["args"], serde_json::json!(["true"]), "{e}");
        assert!(e.get("argsTruncated").is_none(), "{e}");
        assert_eq!(e["result"], 0, "{e}");
        assert_eq!(e["process"]["exe"], binary_s.as_str(), "{e}");
    }
    assert_eq!(
        stopped.summary["kernel"]["read_failed"]["exec"], 0,
        "{}",
        stopped.summary
    );
}
