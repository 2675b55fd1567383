//! Both workloads log one JSON object per line as deployed (`RUST_LOG_FORMAT=json` in every
//! overlay, the Compose profile too), read back with jq; the systemd unit logs text for the
//! journal, with a value the binary accepts.

use std::process::Command;

use serde_json::Value;

use super::{container_command, list, named, object, render, repo, str_of, PodFs};
use crate::common::{observer_bin, webhook_bin};

/// (kind, name, container, binary) of both workloads.
const WORKLOADS: [(&str, &str, &str); 2] = [
    ("DaemonSet", "zastava-observer", "observer"),
    ("Deployment", "zastava-webhook", "webhook"),
];

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    list(&container["env"])
        .iter()
        .find(|v| v["name"] == name)
        .map(|v| str_of(&v["value"]))
}

/// `jq -r FILTER` over `input`: what an operator runs over `kubectl logs`.
pub(super) fn jq(filter: &str, input: &[u8]) -> String {
    let dir = crate::common::TempDir::new("zastava-jq");
    let log = dir.path().join("log");
    std::fs::write(&log, input).unwrap();
    let out = Command::new("jq")
        .args(["-r", filter])
        .arg(&log)
        .output()
        .expect("jq (installed by cargo xtask setup)");
    assert!(
        out.status.success(),
        "jq {filter} failed on a line that is not JSON: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(input)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn both_workloads_log_json_in_every_overlay() {
    for overlay in [
        "base",
        "overlays/capture",
        "overlays/cert-manager",
        "overlays/complete",
        "overlays/cri-o",
    ] {
        let docs = render(overlay);
        for (kind, name, container) in WORKLOADS {
            let pod = &object(&docs, kind, name)["spec"]["template"]["spec"];
            let container = named(&pod["containers"], container);
            assert_eq!(
                env_value(container, "RUST_LOG_FORMAT"),
                Some("json"),
                "{overlay}: {kind} {name}"
            );
        }
    }
}

#[test]
fn a_deployed_binarys_error_is_a_json_line_naming_the_key() {
    // Each container as its pod starts it, with one setting it refuses: the one line it
    // writes before exiting 2 is an ERROR object (serde_json reads one object only).
    let docs = render("overlays/complete");
    for ((kind, name, container), binary) in
        WORKLOADS.into_iter().zip([observer_bin(), webhook_bin()])
    {
        let pod = &object(&docs, kind, name)["spec"]["template"]["spec"];
        let container = named(&pod["containers"], container);
        let fs = PodFs::new(&docs, pod, container);
        let out = container_command(&fs, container, binary)
            .args(["--set", "metrics.addr=\"nowhere\""])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{binary}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let binary_name = std::path::Path::new(binary).file_name().unwrap();
        assert_eq!(
            jq(r#""\(.level) \(.binary)""#, &out.stderr),
            format!("ERROR {}\n", binary_name.to_string_lossy()),
            "{stderr}"
        );
        let line: Value = serde_json::from_str(&stderr).unwrap();
        assert_eq!(
            line["message"],
            "invalid configuration:\n  metrics.addr: invalid socket address syntax\nin \
             `metrics.addr`\n",
            "{stderr}"
        );
    }
}

#[test]
fn the_compose_profile_logs_json_and_the_systemd_unit_text() {
    let compose =
        std::fs::read_to_string(repo().join("deploy/compose/docker-compose.yaml")).unwrap();
    let compose: Value = serde_yaml::from_str(&compose).unwrap();
    assert_eq!(
        compose["services"]["observer"]["environment"]["RUST_LOG_FORMAT"],
        "${RUST_LOG_FORMAT:-json}"
    );
    let unit =
        std::fs::read_to_string(repo().join("deploy/systemd/zastava-observer.service")).unwrap();
    let environment: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .flat_map(str::split_whitespace)
        .collect();
    assert_eq!(environment, ["RUST_LOG=info", "RUST_LOG_FORMAT=text"]);
}
