//! The command line: doctor's verdict and clear errors for bad input.

mod common;

use std::process::Command;

use common::{observer_bin, require_root};

fn observer(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(observer_bin())
        .args(args)
        .output()
        .expect("run zastava-observer");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn doctor_passes_on_this_machine_and_loads_the_probes() {
    require_root();
    let (ok, stdout, stderr) = observer(&["doctor"]);
    assert!(ok, "doctor failed:\n{stdout}\n{stderr}");
    for check in [
        "kernel",
        "privileges",
        "tracefs",
        "tracepoints",
        "tracepoint layouts",
        "BPF load",
    ] {
        let line = stdout
            .lines()
            .find(|l| l[6..].trim_start().starts_with(check))
            .unwrap_or_else(|| panic!("no `{check}` check in:\n{stdout}"));
        assert!(line.starts_with("[ok  ]"), "{line}");
    }
    let programs = zastava::kernel::probes::attachments(true).count();
    assert!(
        stdout.contains(&format!(
            "all {programs} programs verified (with the kernel view)"
        )),
        "{stdout}"
    );
    // What the kernel view reads, found in this kernel's BTF.
    let btf = stdout
        .lines()
        .find(|l| l.contains("kernel BTF"))
        .unwrap_or_else(|| panic!("no BTF check in:\n{stdout}"));
    for member in [
        "task_struct.fs@",
        "file.f_path@",
        "mm_struct.exe_file@",
        "sock_common.skc_daddr@",
    ] {
        assert!(btf.contains(member), "{member} missing from: {btf}");
    }
    assert!(
        stdout.contains("the observer can run on this node"),
        "{stdout}"
    );
}

#[test]
fn a_ring_size_that_is_not_a_power_of_two_is_rejected_before_loading() {
    let (ok, _, stderr) = observer(&["run", "--ring-buffer-bytes", "5000"]);
    assert!(!ok);
    assert!(stderr.contains("--ring-buffer-bytes"), "{stderr}");
    assert!(stderr.contains("must be a power of two"), "{stderr}");
    let (ok, _, stderr) = observer(&["run", "--duration", "soon"]);
    assert!(!ok);
    assert!(stderr.contains("`soon` is not a duration"), "{stderr}");
}

#[test]
fn an_unwritable_output_fails_with_the_path_in_the_error() {
    require_root();
    // A regular file where a directory is needed: even root cannot create under it.
    let blocker = std::env::temp_dir().join(common::unique("zastava-blocker"));
    std::fs::write(&blocker, "").unwrap();
    let target = blocker.join("events.ndjson");
    let (ok, _, stderr) = observer(&[
        "run",
        "--duration",
        "1",
        "--ndjson",
        target.to_str().unwrap(),
    ]);
    std::fs::remove_file(&blocker).unwrap();
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("cannot write events"), "{stderr}");
    assert!(stderr.contains(blocker.to_str().unwrap()), "{stderr}");
}

fn summary_of(stderr: &str) -> &str {
    let at = stderr
        .find("zastava-observer summary after")
        .unwrap_or_else(|| panic!("no summary in:\n{stderr}"));
    &stderr[at..]
}

#[test]
fn run_stops_by_itself_after_duration_and_accounts_for_what_it_saw() {
    require_root();
    let dir = std::env::temp_dir().join(common::unique("zastava-duration"));
    let output = dir.join("events.ndjson");
    let stats = dir.join("summary.json");
    let started = std::time::Instant::now();
    let (ok, _, stderr) = observer(&[
        "run",
        "--duration",
        "1.5",
        "--ndjson",
        output.to_str().unwrap(),
        "--stats-json",
        stats.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(1500));
    assert!(
        stderr.contains("duration reached: shutting down"),
        "{stderr}"
    );
    let summary = summary_of(&stderr);
    for line in [
        "received",
        "written",
        "kernel ring_full",
        "kernel pending_map_full",
        "decode errors",
        "lost before decoding",
    ] {
        assert!(summary.contains(line), "summary lacks `{line}`:\n{summary}");
    }
    // The file holds exactly the events the summary says were written.
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let written: u64 = json["written"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let lines = std::fs::read_to_string(&output).unwrap().lines().count() as u64;
    assert_eq!(lines, written);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigint_stops_the_observer_cleanly_with_a_summary() {
    require_root();
    let mut child = Command::new(observer_bin())
        .args(["run", "--ndjson", "/dev/null"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("observer ready") {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(n > 0, "observer exited before it was ready:\n{seen}");
        seen.push_str(&line);
    }
    // SAFETY: signalling the child this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}:\n{seen}{rest}");
    assert!(rest.contains("SIGINT: shutting down"), "{rest}");
    summary_of(&rest);
}

fn run_with_config(toml: &str) -> (Option<i32>, String) {
    let path = std::env::temp_dir().join(common::unique("zastava-config"));
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(observer_bin())
        .args(["run", "--config", path.to_str().unwrap(), "--duration", "1"])
        .output()
        .expect("run zastava-observer");
    std::fs::remove_file(&path).unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_malformed_config_is_refused_with_the_key_named() {
    let (code, stderr) = run_with_config("[batch]\nmax_events = \"many\"\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("batch.max_events:"), "{stderr}");

    let (code, stderr) = run_with_config("[backend]\nurll = \"https://scanner\"\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("backend.urll: unknown field `urll`"),
        "{stderr}"
    );

    let (code, stderr) = run_with_config("[observer\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not valid TOML"), "{stderr}");
}

#[test]
fn every_problem_of_a_config_is_reported_at_once() {
    let (code, stderr) = run_with_config(
        "[scanner.runtime.capture]\nenabled = true\n[observer]\nring_buffer_bytes = 5000\n[spool]\nmax_bytes = 100\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    for key in [
        "observer.ring_buffer_bytes:",
        "backend.url: is required",
        "spool.max_bytes: must be at least 64K",
    ] {
        assert!(stderr.contains(key), "missing {key:?} in:\n{stderr}");
    }
}

/// Runs the observer with `args`; it must refuse its configuration (exit 2) saying
/// `problem`.
fn assert_refused(args: &[&str], problem: &str) {
    let out = Command::new(observer_bin()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(problem), "no {problem:?} in:\n{stderr}");
}

#[test]
fn set_overrides_any_key_and_names_it_when_wrong() {
    assert_refused(
        &["run", "--set", "batch.max_age=forever", "--duration", "1"],
        "batch.max_age: `forever` is not a duration",
    );
}

#[test]
fn check_config_prints_the_effective_settings_and_loads_nothing() {
    let path = std::env::temp_dir().join(common::unique("zastava-config"));
    std::fs::write(
        &path,
        "[zastava.attach]\nenabled = true\n[spool]\ndir = \"/srv/spool\"\n[metrics]\naddr = \"127.0.0.1:9464\"\n",
    )
    .unwrap();
    let out = Command::new(observer_bin())
        .args(["run", "--config", path.to_str().unwrap(), "--check-config"])
        .env("ZASTAVA__NDJSON__PATH", "/srv/events.ndjson")
        .output()
        .expect("run zastava-observer");
    std::fs::remove_file(&path).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "zastava.attach.enabled = true",
        "scanner.runtime.capture.enabled = false",
        "spool.dir = /srv/spool",
        "ndjson.path = /srv/events.ndjson",
        "metrics.addr = 127.0.0.1:9464",
        "the configuration is valid",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in:\n{stdout}"
        );
    }
    // Nothing was started: no probes, no output file.
    assert!(!stderr.contains("observer ready"), "{stderr}");
    assert!(!std::path::Path::new("/srv/events.ndjson").exists());

    assert_refused(
        &["run", "--set", "batch.max_events=0", "--check-config"],
        "batch.max_events: must be at least 1",
    );
}

#[test]
fn a_configuration_with_nothing_to_observe_exits_2_so_it_is_not_restarted() {
    require_root();
    let (code, stderr) = run_with_config(
        "[zastava.attach]\nenabled = false\n[cri]\nenabled = false\n[docker]\nenabled = false\n[ndjson]\npath = \"-\"\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("nothing to observe: zastava.attach.enabled is false and no container runtime is connected"),
        "{stderr}"
    );
}

#[test]
fn check_config_shows_and_checks_the_bus_sinks() {
    let path = std::env::temp_dir().join(common::unique("zastava-config"));
    std::fs::write(
        &path,
        r#"
[zastava.attach]
enabled = true
[sinks.nats]
enabled = true
servers = ["nats://nats-0.bus:4222", "nats://nats-1.bus:4222"]
tenant = "acme"
[sinks.nats.stream]
create = true
replicas = 3
[sinks.redis]
enabled = true
url = "redis://redis.bus:6379/0"
max_len = 200000
"#,
    )
    .unwrap();
    let out = Command::new(observer_bin())
        .args(["run", "--config", path.to_str().unwrap(), "--check-config"])
        .output()
        .expect("run zastava-observer");
    std::fs::remove_file(&path).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "sinks.nats.servers = [\"nats://nats-0.bus:4222\", \"nats://nats-1.bus:4222\"]",
        "sinks.nats.subject = zastava.runtime.events.acme",
        "sinks.nats.stream = ZASTAVA_RUNTIME_EVENTS (create = true, check = true, replicas = 3, duplicate_window = 10m)",
        "sinks.redis.url = redis://redis.bus:6379/0",
        "sinks.redis.stream = zastava.runtime.events (max_len ~ 200000)",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in:\n{stdout}"
        );
    }
    assert_refused(
        &["run", "--set", "sinks.nats.enabled=true", "--check-config"],
        "sinks.nats.servers: is required when sinks.nats.enabled is true",
    );
    assert_refused(
        &[
            "run",
            "--set",
            "sinks.redis.enabled=true",
            "--set",
            "sinks.redis.url=\"redis://:hunter2@redis.bus:6379\"",
            "--check-config",
        ],
        "sinks.redis.url: holds credentials; put them in sinks.redis.user and sinks.redis.password_file",
    );
}

/// `zastava-observer ARGS` with only `RUST_LOG_FORMAT` (and `RUST_LOG`) in its environment.
fn observer_with_format(format: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(observer_bin())
        .args(args)
        .env_clear()
        .env("RUST_LOG", "info")
        .env("RUST_LOG_FORMAT", format)
        .output()
        .expect("run zastava-observer");
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

/// `jq -r FILTER` over `log`, which must be JSON to the last line.
fn jq(filter: &str, log: &str) -> String {
    let file = std::env::temp_dir().join(common::unique("zastava-jq"));
    std::fs::write(&file, log).unwrap();
    let out = Command::new("jq")
        .args(["-r", filter])
        .arg(&file)
        .output()
        .expect("jq (installed by cargo xtask setup)");
    std::fs::remove_file(&file).unwrap();
    assert!(
        out.status.success(),
        "not JSON throughout: {}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn json_logs_are_json_from_the_first_line_to_the_summary() {
    require_root();
    let dir = std::env::temp_dir().join(common::unique("zastava-json-log"));
    let output = dir.join("events.ndjson");
    // The flag wins over the variable.
    let (code, stderr) = observer_with_format(
        "text",
        &[
            "--log-format",
            "json",
            "run",
            "--duration",
            "1",
            "--ring-buffer-bytes",
            "1M",
            "--ndjson",
            output.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        jq(
            r#"select(.message == "observer ready") | "\(.level) \(.ring_buffer_bytes)""#,
            &stderr
        ),
        "INFO 1048576\n"
    );
    // The report on stopping is one object too, its text the message.
    let summary = jq(
        r#"select(.message | startswith("zastava-observer summary after")) | .level"#,
        &stderr,
    );
    assert_eq!(summary, "INFO\n", "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();

    // An error that stops it: one ERROR object naming the binary.
    let (code, stderr) =
        observer_with_format("json", &["run", "--config", "/nonexistent/observer.toml"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        jq(r#""\(.level) \(.binary) \(.message)""#, &stderr),
        "ERROR zastava-observer invalid configuration:\n  --config: cannot read \
         /nonexistent/observer.toml: No such file or directory (os error 2)\n"
    );
    // As text, the same words.
    let (_, stderr) =
        observer_with_format("text", &["run", "--config", "/nonexistent/observer.toml"]);
    assert_eq!(
        stderr,
        "zastava-observer: invalid configuration:\n  --config: cannot read \
         /nonexistent/observer.toml: No such file or directory (os error 2)\n"
    );
}

#[test]
fn a_log_format_that_is_neither_text_nor_json_is_refused_with_exit_2() {
    let (code, stderr) = observer_with_format("xml", &["run", "--check-config"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        "zastava-observer: RUST_LOG_FORMAT=\"xml\" is neither \"text\" nor \"json\": set one \
         of them, or unset it for text (--log-format overrides it)\n"
    );
    let (code, stderr) = observer_with_format("text", &["--log-format", "xml", "doctor"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("invalid value 'xml' for '--log-format <FORMAT>'"),
        "{stderr}"
    );
}
