//! Identity of the node the observer runs on: hostname, machine id and OS release.
//!
//! Files are read under a host root (`/` on bare metal; the host's filesystem mounted into
//! the container when running as a DaemonSet), so the identity is the node's, not the pod's.

use std::{
    fs,
    path::{Path, PathBuf},
};

use zastava_platform::deployment::Deployment;

/// Who this node is, as written on every event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIdentity {
    /// `node`: the configured node name, else the hostname.
    pub node: String,
    /// `hostId`: `/etc/machine-id`.
    pub host_id: String,
    /// `osRelease`: `PRETTY_NAME` from os-release.
    pub os_release: String,
    /// `workloadId` of host processes: `host:<hostId>`.
    pub workload_id: String,
    /// The same, shared by every host record (sorting and merging key).
    pub workload_id_shared: std::sync::Arc<str>,
    /// Problems found while reading the identity (reported, not fatal).
    pub warnings: Vec<String>,
    /// The installation the node belongs to (`runtime.*`): on every batch's envelope...
    pub deployment: Deployment,
    /// ...and, with `ndjson.include_deployment`, on every record.
    pub deployment_on_records: bool,
}

impl HostIdentity {
    /// Reads the identity under `host_root`. `node_name`, when given, is the node's name
    /// (a Kubernetes node's `spec.nodeName`, which need not be its hostname); otherwise the
    /// hostname is.
    pub fn read(host_root: &Path, node_name: Option<&str>) -> Self {
        let mut warnings = Vec::new();
        let under = |p: &str| -> PathBuf { host_root.join(p.trim_start_matches('/')) };

        let node = node_name
            .map(str::to_owned)
            .or_else(|| read_trimmed(&under("/proc/sys/kernel/hostname")))
            .or_else(|| read_trimmed(&under("/etc/hostname")))
            .unwrap_or_else(|| {
                warnings.push("hostname unreadable (/proc/sys/kernel/hostname, /etc/hostname); using \"unknown\"".into());
                "unknown".into()
            });
        let host_id = read_trimmed(&under("/etc/machine-id"))
            .or_else(|| read_trimmed(&under("/var/lib/dbus/machine-id")))
            .unwrap_or_else(|| {
                warnings.push(format!(
                    "no machine id in {0}/etc/machine-id or {0}/var/lib/dbus/machine-id; \
                     hostId falls back to the hostname (create one with systemd-machine-id-setup)",
                    host_root.display()
                ));
                format!("hostname-{node}")
            });
        let os_release = ["/etc/os-release", "/usr/lib/os-release"]
            .iter()
            .find_map(|p| fs::read_to_string(under(p)).ok())
            .map(|text| parse_os_release(&text))
            .unwrap_or_else(|| {
                warnings.push("no os-release file; osRelease is \"unknown\"".into());
                "unknown".into()
            });
        let workload_id = format!("host:{host_id}");
        HostIdentity {
            workload_id_shared: std::sync::Arc::from(workload_id.as_str()),
            workload_id,
            node,
            host_id,
            os_release,
            warnings,
            deployment: Deployment::default(),
            deployment_on_records: false,
        }
    }

    /// The same node, deployed as `deployment`; records carry it when `on_records`.
    pub fn with_deployment(mut self, deployment: Deployment, on_records: bool) -> Self {
        self.deployment = deployment;
        self.deployment_on_records = on_records;
        self
    }
}

impl HostIdentity {
    /// A fixed identity for tests: node `node-a`, host id `abc`.
    pub fn for_tests() -> Self {
        HostIdentity {
            node: "node-a".into(),
            host_id: "abc".into(),
            os_release: "Test OS".into(),
            workload_id: "host:abc".into(),
            workload_id_shared: std::sync::Arc::from("host:abc"),
            warnings: vec![],
            deployment: Deployment::default(),
            deployment_on_records: false,
        }
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// `PRETTY_NAME`, else `NAME VERSION_ID`, else "unknown". Values may be quoted.
pub fn parse_os_release(text: &str) -> String {
    let value = |key: &str| {
        text.lines().find_map(|line| {
            let v = line.trim().strip_prefix(key)?.strip_prefix('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            (!v.is_empty()).then(|| v.replace("\\\"", "\""))
        })
    };
    value("PRETTY_NAME")
        .or_else(|| match (value("NAME"), value("VERSION_ID")) {
            (Some(n), Some(v)) => Some(format!("{n} {v}")),
            (Some(n), None) => Some(n),
            _ => None,
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_prefers_pretty_name_and_unquotes() {
        let text = "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(parse_os_release(text), "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(
            parse_os_release("NAME=Alpine\nVERSION_ID=3.20.1\n"),
            "Alpine 3.20.1"
        );
        assert_eq!(parse_os_release("PRETTY_NAME_X=1\n"), "unknown");
        assert_eq!(
            parse_os_release("PRETTY_NAME='Single Quoted'"),
            "Single Quoted"
        );
    }

    #[test]
    fn reads_identity_under_a_host_root() {
        let root = std::env::temp_dir().join(format!("zastava-host-{}", std::process::id()));
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
        fs::write(
            root.join("etc/machine-id"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        fs::write(root.join("proc/sys/kernel/hostname"), "node-7\n").unwrap();
        fs::write(root.join("etc/os-release"), "PRETTY_NAME=\"Test OS 1\"\n").unwrap();
        let id = HostIdentity::read(&root, None);
        assert_eq!(id.node, "node-7");
        assert_eq!(id.host_id, "0123456789abcdef0123456789abcdef");
        assert_eq!(id.workload_id, "host:0123456789abcdef0123456789abcdef");
        assert_eq!(id.os_release, "Test OS 1");
        assert!(id.warnings.is_empty(), "{:?}", id.warnings);

        // A Kubernetes node's name need not be its hostname.
        let id = HostIdentity::read(&root, Some("ip-10-0-3-7.eu-west-1.compute.internal"));
        assert_eq!(id.node, "ip-10-0-3-7.eu-west-1.compute.internal");
        assert_eq!(id.host_id, "0123456789abcdef0123456789abcdef");

        fs::remove_file(root.join("etc/machine-id")).unwrap();
        let id = HostIdentity::read(&root, None);
        assert_eq!(id.host_id, "hostname-node-7");
        assert_eq!(id.warnings.len(), 1, "{:?}", id.warnings);
        fs::remove_dir_all(&root).unwrap();
    }
}
