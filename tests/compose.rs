//! The Compose profile for Docker hosts (`deploy/compose/`): every environment file linted
//! by Debian's `docker-compose config`, alone and with the capture file; what it renders is
//! the DaemonSet's least privilege, host directories and image; and the configuration it
//! gives the observer is one the binary accepts, with every path on a host directory.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use common::{authority::generate_dpop_key, backend::Pki, observer_bin, TempDir};
use serde_json::Value;

const COMPOSE: &str = "/usr/bin/docker-compose";

fn compose_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/compose")
}

fn env_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(compose_dir().join("env"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".env.example"))
        .collect();
    files.sort();
    files
}

/// `docker-compose --env-file ENV -f ... config`, parsed; or its error.
fn config(env: &Path, files: &[&str], unset: &[&str]) -> Result<Value, String> {
    let mut cmd = Command::new(COMPOSE);
    cmd.current_dir(compose_dir()).arg("--env-file").arg(env);
    for file in files {
        cmd.args(["-f", file]);
    }
    for var in unset {
        cmd.env_remove(var);
    }
    let out = cmd
        .arg("config")
        .output()
        .expect("docker-compose (Debian package docker-compose; `cargo xtask setup`)");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_yaml::from_slice(&out.stdout).unwrap())
}

/// The DaemonSet as the base renders it.
fn daemonset() -> Value {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(compose_dir().join("../kubernetes/base"))
        .output()
        .expect("kubectl");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split("\n---\n")
        .map(|d| serde_yaml::from_str::<Value>(d).unwrap())
        .find(|d| d["kind"] == "DaemonSet")
        .unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Volumes as (host path, container path, read-only).
fn volumes(service: &Value) -> Vec<(String, String, bool)> {
    strings(&service["volumes"])
        .iter()
        .map(|v| {
            let parts: Vec<&str> = v.split(':').collect();
            (
                parts[0].to_owned(),
                parts[1].to_owned(),
                parts.get(2) == Some(&"ro"),
            )
        })
        .collect()
}

#[test]
fn every_environment_lints_and_keeps_the_daemonsets_least_privilege() {
    let envs = env_files();
    let names: Vec<String> = envs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "airgap.env.example",
            "dev.env.example",
            "prod.env.example",
            "stage.env.example"
        ]
    );
    let daemonset = daemonset();
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let granted = strings(&container["securityContext"]["capabilities"]["add"]);
    let host_paths: BTreeSet<String> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str().map(str::to_owned))
        .collect();
    for env in &envs {
        for files in [
            &["docker-compose.yaml"][..],
            &["docker-compose.yaml", "docker-compose.capture.yaml"],
        ] {
            let rendered = config(env, files, &[])
                .unwrap_or_else(|e| panic!("{} {files:?}: {e}", env.display()));
            let service = &rendered["services"]["observer"];
            assert_eq!(service["pid"], "host");
            assert_eq!(service["read_only"], true);
            assert_eq!(strings(&service["cap_drop"]), ["ALL"]);
            let added: BTreeSet<String> = strings(&service["cap_add"]).into_iter().collect();
            let wanted: BTreeSet<String> = granted.iter().cloned().collect();
            assert_eq!(added, wanted, "the DaemonSet's capabilities");
            let security = strings(&service["security_opt"]);
            assert!(
                security.contains(&"no-new-privileges:true".to_owned()),
                "{security:?}"
            );
            assert!(
                security.contains(&"apparmor:unconfined".to_owned()),
                "{security:?}"
            );
            assert!(
                !security.iter().any(|s| s.starts_with("seccomp")),
                "{security:?}"
            );
            assert_ne!(service["privileged"], true);
            assert_eq!(
                service["image"], container["image"],
                "the image the DaemonSet runs"
            );
            // The host directories the DaemonSet mounts, but containerd's socket directory
            // (Docker's is under /run).
            let mounted: BTreeSet<String> = volumes(service)
                .into_iter()
                .map(|(host, _, _)| host)
                .filter(|h| {
                    h.starts_with('/')
                        && !h.ends_with("observer.toml")
                        && !h.starts_with("/etc/zastava")
                })
                .collect();
            let mut expected = host_paths.clone();
            expected.remove("/run/containerd");
            expected.insert("/run".into());
            assert_eq!(mounted, expected, "{}", env.display());
        }
    }
    // A node without a name is refused before anything runs, saying what to set.
    let dir = TempDir::new("zastava-compose-env");
    let nameless = dir.path().join("nameless.env");
    let text = std::fs::read_to_string(&envs[0]).unwrap();
    std::fs::write(
        &nameless,
        text.lines()
            .filter(|l| !l.starts_with("ZASTAVA_NODE_NAME="))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let err = config(&nameless, &["docker-compose.yaml"], &["ZASTAVA_NODE_NAME"]).unwrap_err();
    assert!(
        err.contains("set ZASTAVA_NODE_NAME in the env file"),
        "{err}"
    );
}

/// The settings `--check-config` printed, and each volume as (path in the container, where
/// it is here, host path).
type Checked = (BTreeMap<String, String>, Vec<(String, PathBuf, String)>);

/// Runs the service's command with `--check-config` as the container would see its files:
/// each container path under a volume moved to where that volume is here.
fn check_config(service: &Value, dir: &Path) -> Checked {
    let mut mounts: Vec<(String, PathBuf, String)> = Vec::new();
    for (i, (host, inside, _)) in volumes(service).into_iter().enumerate() {
        let here = match host.as_str() {
            // What the host has, read as it is.
            "/etc" | "/sys/fs/cgroup" | "/sys/kernel/tracing" | "/usr/lib/os-release" => {
                PathBuf::from(&host)
            }
            // Written below, with its paths moved as the others.
            h if h.ends_with("observer.toml") => dir.join("observer.toml"),
            // The spool, the log and the secrets: fresh directories here.
            _ => {
                let here = dir.join(format!("volume-{i}"));
                std::fs::create_dir_all(&here).unwrap();
                if inside == "/var/run/secrets/zastava" {
                    // What the operator puts there.
                    let pki = Pki::generate();
                    for (file, from) in [
                        ("ca.crt", &pki.ca),
                        ("client.crt", &pki.client_cert),
                        ("client.key", &pki.client_key),
                    ] {
                        std::fs::copy(from, here.join(file)).unwrap();
                    }
                    generate_dpop_key(&here.join("dpop-key.pem"));
                }
                here
            }
        };
        mounts.push((inside, here, host));
    }
    mounts.sort_by_key(|(inside, _, _)| std::cmp::Reverse(inside.len()));
    let translate = |text: &str| -> String {
        for (inside, here, _) in &mounts {
            if let Some(rest) = text.strip_prefix(inside.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    return format!("{}{rest}", here.display());
                }
            }
        }
        text.to_owned()
    };
    let (config_host, _, _) = volumes(service)
        .into_iter()
        .find(|(host, _, _)| host.ends_with("observer.toml"))
        .expect("the configuration file is mounted");
    let text = std::fs::read_to_string(config_host).unwrap();
    let moved: String = text
        .lines()
        .map(|line| match line.split_once(" = \"") {
            Some((key, value)) => format!("{key} = \"{}\"", translate(value.trim_end_matches('"'))),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("observer.toml"), moved).unwrap();
    let mut run = Command::new(observer_bin());
    run.args(strings(&service["command"]).iter().map(|a| translate(a)))
        .arg("--check-config")
        .env_clear();
    for (key, value) in service["environment"].as_object().unwrap() {
        run.env(key, translate(value.as_str().unwrap()));
    }
    let out = run.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the Compose profile's configuration is refused:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let settings = stdout
        .lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (settings, mounts)
}

#[test]
fn the_profile_gives_the_observer_a_configuration_it_accepts_on_host_directories() {
    let prod = compose_dir().join("env/prod.env.example");
    for (files, capture) in [
        (&["docker-compose.yaml"][..], false),
        (
            &["docker-compose.yaml", "docker-compose.capture.yaml"],
            true,
        ),
    ] {
        let rendered = config(&prod, files, &[]).unwrap();
        let service = &rendered["services"]["observer"];
        let dir = TempDir::new("zastava-compose");
        let (settings, mounts) = check_config(service, dir.path());
        // The host path behind a path the binary printed (a moved one).
        let on_host = |printed: &str| -> String {
            let (_, here, host) = mounts
                .iter()
                .find(|(_, here, _)| Path::new(printed).starts_with(here))
                .unwrap_or_else(|| panic!("{printed} is on no volume"));
            format!("{host}{}", &printed[here.to_str().unwrap().len()..])
        };
        let flag = capture.to_string();
        assert_eq!(settings["zastava.attach.enabled"], flag);
        assert_eq!(settings["scanner.runtime.capture.enabled"], flag);
        assert_eq!(settings["cri.endpoint"], "(off)");
        assert_eq!(
            settings["observer.node_name"],
            "docker-host-1.example.internal"
        );
        assert_eq!(settings["observer.proc_root"], "/proc");
        // The installation's identity, from the env file through the [runtime] keys.
        assert_eq!(settings["runtime.tenant"], "acme");
        assert_eq!(settings["runtime.environment"], "prod");
        assert_eq!(settings["runtime.deployment"], "docker-prod-eu-1");
        // Through the volumes to the host: dockerd's socket, cgroups, identity, and the
        // spool and log on host directories that outlive the container.
        assert_eq!(on_host(&settings["docker.endpoint"]), "/run/docker.sock");
        assert_eq!(on_host(&settings["observer.cgroup_root"]), "/sys/fs/cgroup");
        let host_root = &settings["observer.host_root"];
        let machine_id = mounts
            .iter()
            .find(|(inside, _, _)| *inside == format!("{host_root}/etc"))
            .map(|(_, _, host)| host.clone());
        assert_eq!(machine_id.as_deref(), Some("/etc"));
        assert_eq!(on_host(&settings["spool.dir"]), "/var/lib/zastava/spool");
        assert_eq!(
            on_host(&settings["ndjson.path"]),
            "/var/log/stellaops/runtime/zastava.runtime.ndjson"
        );
        if capture {
            assert_eq!(settings["backend.url"], "https://scanner.example.internal/");
            assert_eq!(
                settings["authority.issuer"],
                "https://authority.example.internal/"
            );
            assert_eq!(settings["authority.require_dpop"], "true");
            assert_eq!(settings["authority.require_mutual_tls"], "true");
        } else {
            assert_eq!(settings["backend.url"], "(none)");
        }
    }
}

/// Shell words of a command line: blanks separate words, double quotes keep theirs.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut in_word) = (false, false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The `docker run` command docs/deployment.md gives for hosts without Compose runs the
/// container the Compose profile describes: the same image and command, capabilities,
/// security options, namespaces, read-only root, volumes and environment.
#[test]
fn the_docker_run_command_in_the_docs_is_the_compose_service() {
    let doc = std::fs::read_to_string(compose_dir().join("../../docs/deployment.md")).unwrap();
    let block = doc
        .split("```sh\ndocker run ")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("deployment.md shows how to run the observer with docker run");
    let words = shell_words(&block.replace("\\\n", " "));
    let (mut caps_added, mut caps_dropped, mut security, mut env, mut mounts) = (
        BTreeSet::new(),
        Vec::new(),
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
    );
    let (mut pid, mut network, mut read_only, mut name) = (None, None, false, None);
    let mut rest = words.iter();
    let image = loop {
        let word = rest.next().expect("an image after the options").as_str();
        let mut value = || rest.next().expect("a value after an option").clone();
        match word {
            "-d" => {}
            "--name" => name = Some(value()),
            "--restart" => assert_eq!(value(), "unless-stopped"),
            "--pid" => pid = Some(value()),
            "--network" => network = Some(value()),
            "--read-only" => read_only = true,
            "--cap-drop" => caps_dropped.push(value()),
            "--cap-add" => {
                caps_added.insert(value());
            }
            // Compose writes `no-new-privileges:true` and `apparmor:unconfined`.
            "--security-opt" => {
                let opt = value().replace('=', ":");
                security.insert(if opt.contains(':') {
                    opt
                } else {
                    format!("{opt}:true")
                });
            }
            "-e" => {
                env.insert(value().split_once('=').expect("-e NAME=VALUE").0.to_owned());
            }
            "-v" => {
                let v = value();
                let parts: Vec<&str> = v.split(':').collect();
                let host = if parts[0].ends_with("/deploy/compose/observer.toml") {
                    "observer.toml".to_owned()
                } else {
                    parts[0].to_owned()
                };
                mounts.insert((host, parts[1].to_owned(), parts.get(2) == Some(&"ro")));
            }
            option if option.starts_with('-') => {
                panic!("an option the test does not know: {option}")
            }
            image => break image.to_owned(),
        }
    };
    let command: Vec<String> = rest.cloned().collect();

    let rendered = config(
        &compose_dir().join("env/prod.env.example"),
        &["docker-compose.yaml"],
        &[],
    )
    .unwrap();
    let service = &rendered["services"]["observer"];
    assert_eq!(name.as_deref(), service["container_name"].as_str());
    assert_eq!(image, service["image"].as_str().unwrap());
    assert_eq!(command, strings(&service["command"]));
    assert_eq!(pid.as_deref(), Some("host"));
    assert_eq!(service["pid"], "host");
    assert_eq!(network.as_deref(), service["network_mode"].as_str());
    assert!(read_only && service["read_only"] == true);
    assert_eq!(caps_dropped, strings(&service["cap_drop"]));
    let compose_caps: BTreeSet<String> = strings(&service["cap_add"]).into_iter().collect();
    assert_eq!(caps_added, compose_caps);
    let compose_security: BTreeSet<String> =
        strings(&service["security_opt"]).into_iter().collect();
    assert_eq!(security, compose_security);
    let compose_mounts: BTreeSet<(String, String, bool)> = volumes(service)
        .into_iter()
        .map(|(host, inside, ro)| {
            let host = if host.ends_with("/deploy/compose/observer.toml") {
                "observer.toml".to_owned()
            } else {
                host
            };
            (host, inside, ro)
        })
        .collect();
    assert_eq!(mounts, compose_mounts);
    // The variables it sets are the profile's; the profile's others are optional there
    // (log level, the installation's identity), but not the node name and the log format.
    let compose_env: BTreeSet<String> = service["environment"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(env.is_subset(&compose_env), "{env:?} vs {compose_env:?}");
    for required in ["ZASTAVA__OBSERVER__NODE_NAME", "RUST_LOG_FORMAT"] {
        assert!(env.contains(required), "{env:?}");
    }
}
