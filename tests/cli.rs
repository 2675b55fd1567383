//! The command line: doctor's verdict and clear errors for bad input.

mod common;

use std::process::Command;

use common::{require_root, OBSERVER};

fn observer(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(OBSERVER)
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
    assert!(stdout.contains("all 13 programs verified"), "{stdout}");
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
    assert!(
        stderr.contains("`soon` is not a number of seconds"),
        "{stderr}"
    );
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
