//! The installation's identity in the Kubernetes manifests: tenant, environment and cluster
//! id come from one place (`base/deployment.env`, the ConfigMap `zastava-deployment`), both
//! workloads read it, and the overlay docs/deployment.md shows sets them for both binaries.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{check_config, container_command, list, named, object, render, repo, str_of, PodFs};
use crate::common::{observer_bin, webhook_bin, TempDir};

/// (kind, name, container, binary) of both workloads.
fn workloads() -> [(&'static str, &'static str, &'static str, &'static str); 2] {
    [
        ("DaemonSet", "zastava-observer", "observer", observer_bin()),
        ("Deployment", "zastava-webhook", "webhook", webhook_bin()),
    ]
}

/// The one ConfigMap generated from `deployment.env` (its name carries a content hash).
fn deployment_map(docs: &[Value]) -> &Value {
    let maps: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            d["kind"] == "ConfigMap"
                && str_of(&d["metadata"]["name"]).starts_with("zastava-deployment-")
        })
        .collect();
    assert_eq!(maps.len(), 1, "one zastava-deployment ConfigMap");
    maps[0]
}

/// `--check-config` of each workload's container as rendered: its settings, by binary.
fn settings_of(docs: &[Value]) -> Vec<(&'static str, BTreeMap<String, String>)> {
    let map_name = str_of(&deployment_map(docs)["metadata"]["name"]).to_owned();
    workloads()
        .into_iter()
        .map(|(kind, name, container, binary)| {
            let pod = &object(docs, kind, name)["spec"]["template"]["spec"];
            let container = named(&pod["containers"], container);
            let from: Vec<&Value> = list(&container["envFrom"]).iter().collect();
            assert_eq!(from.len(), 1, "{name}: {}", container["envFrom"]);
            assert_eq!(from[0]["configMapRef"]["name"], map_name.as_str(), "{name}");
            assert_eq!(from[0]["prefix"], "ZASTAVA__RUNTIME__", "{name}");
            let fs = PodFs::new(docs, pod, container);
            (binary, check_config(&fs, container, binary))
        })
        .collect()
}

#[test]
fn both_workloads_read_the_deployment_from_one_config_map_blank_as_shipped() {
    let docs = render("base");
    let data = deployment_map(&docs)["data"].clone();
    assert_eq!(
        data,
        serde_json::json!({"TENANT": "", "ENVIRONMENT": "", "DEPLOYMENT": ""}),
        "base/deployment.env ships blank: a guessed cluster id would be a wrong one"
    );
    for (binary, settings) in settings_of(&docs) {
        for key in [
            "runtime.tenant",
            "runtime.environment",
            "runtime.deployment",
            "runtime.metrics.common_labels",
        ] {
            assert_eq!(settings[key], "(none)", "{binary}: {key}");
        }
    }
}

/// The fenced block of docs/deployment.md, after `after`, in `language`.
fn doc_block(after: &str, language: &str) -> String {
    let doc = std::fs::read_to_string(repo().join("docs/deployment.md")).unwrap();
    let from = doc
        .find(after)
        .unwrap_or_else(|| panic!("docs/deployment.md has no {after:?}"));
    let fence = format!("```{language}\n");
    let start = from
        + doc[from..]
            .find(&fence)
            .unwrap_or_else(|| panic!("no {language} block after {after:?}"))
        + fence.len();
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_owned()
}

/// The overlay of docs/deployment.md in a directory of its own, on this checkout's
/// `complete` overlay, with `env` as its `deployment.env`.
fn documented_overlay(env: &str) -> TempDir {
    let dir = TempDir::new("zastava-overlay");
    let mut kustomization: serde_yaml::Value =
        serde_yaml::from_str(&doc_block("clusters/prod-eu-1/kustomization.yaml", "yaml"))
            .expect("the documented kustomization is YAML");
    // kustomize takes only relative roots: the way from the directory to the overlay.
    let complete =
        std::fs::canonicalize(repo().join("deploy/kubernetes/overlays/complete")).unwrap();
    let here = std::fs::canonicalize(dir.path()).unwrap();
    let up = "../".repeat(here.components().count() - 1);
    let relative = format!("{up}{}", complete.strip_prefix("/").unwrap().display());
    kustomization["resources"] = serde_yaml::to_value(vec![relative]).expect("a list of strings");
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        serde_yaml::to_string(&kustomization).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("deployment.env"), env).unwrap();
    dir
}

#[test]
fn the_documented_overlay_sets_tenant_environment_and_cluster_for_both_binaries() {
    let env = doc_block("clusters/prod-eu-1/deployment.env", "sh");
    assert!(env.contains("DEPLOYMENT=prod-eu-1"), "{env}");
    let overlay = documented_overlay(&env);
    let docs = render(overlay.path().to_str().unwrap());
    let base = render("overlays/complete");
    assert_ne!(
        deployment_map(&docs)["metadata"]["name"],
        deployment_map(&base)["metadata"]["name"],
        "a changed identity gets a new ConfigMap name, so the pods are rolled"
    );
    for (binary, settings) in settings_of(&docs) {
        let expected = [
            ("runtime.tenant", "acme"),
            ("runtime.environment", "prod"),
            ("runtime.deployment", "prod-eu-1"),
            (
                "runtime.metrics.common_labels",
                "{cluster=\"prod-eu-1\",region=\"eu-west-1\"}",
            ),
            // The rest of the complete overlay is untouched.
            ("authority.require_dpop", "true"),
        ];
        for (key, value) in expected {
            assert_eq!(settings[key], value, "{binary}: {key}");
        }
    }

    // A value no label can carry stops both binaries before they start, naming the key.
    let overlay = documented_overlay(&env.replace("DEPLOYMENT=prod-eu-1", "DEPLOYMENT=prod eu 1"));
    let docs = render(overlay.path().to_str().unwrap());
    for (kind, name, container, binary) in workloads() {
        let pod = &object(&docs, kind, name)["spec"]["template"]["spec"];
        let container = named(&pod["containers"], container);
        let fs = PodFs::new(&docs, pod, container);
        let out = container_command(&fs, container, binary)
            .arg("--check-config")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{binary}: {stderr}");
        // As deployed, the log is JSON: one ERROR object.
        let line: Value = serde_json::from_str(&stderr).unwrap_or_else(|e| panic!("{e}: {stderr}"));
        assert_eq!(line["level"], "ERROR", "{binary}: {stderr}");
        assert!(
            line["message"]
                .as_str()
                .unwrap()
                .contains("runtime.deployment: \"prod eu 1\" is not a valid value"),
            "{binary}: {stderr}"
        );
    }
}
