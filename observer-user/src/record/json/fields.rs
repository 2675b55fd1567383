//! The parts of a record's JSON: its head (type, id, time), the workload fields, and its
//! tail (what happened), each a map of fields the writer joins.

use observer_common::TASK_COMM_LEN;
use serde::{ser::SerializeMap as _, ser::SerializeSeq as _, Serialize, Serializer};

use crate::record::{
    ContainerInfo, Enrichment, HostIdentity, Lifecycle, Origin, PodInfo, Timestamp, SCHEMA_VERSION,
};

/// A run-unique event id: `<run id>-<sequence>`.
#[derive(Clone, Copy, Debug)]
pub struct EventId<'a> {
    pub run_id: &'a str,
    pub seq: u64,
}

impl Serialize for EventId<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}-{}", self.run_id, self.seq))
    }
}

/// The task name without its NUL padding.
pub(super) fn comm_bytes(comm: &[u8; TASK_COMM_LEN]) -> &[u8] {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    &comm[..end]
}

/// The fields that say which workload a record belongs to, shared by every record type.
pub(super) fn serialize_workload<M: serde::ser::SerializeMap>(
    map: &mut M,
    host: &HostIdentity,
    enrichment: Enrichment,
    container_id: Option<&str>,
    container: Option<&ContainerInfo>,
) -> Result<(), M::Error> {
    map.serialize_entry("node", &host.node)?;
    map.serialize_entry("hostId", &host.host_id)?;
    map.serialize_entry("osRelease", &host.os_release)?;
    if host.deployment_on_records && !host.deployment.is_empty() {
        map.serialize_entry("deployment", &DeploymentJson(&host.deployment))?;
    }
    match (container, container_id) {
        (Some(c), _) => {
            map.serialize_entry("workloadId", &c.pod.identity.id)?;
            map.serialize_entry("workloadIdSource", c.pod.identity.id_source.as_str())?;
        }
        // A container the runtime has not described (yet): a provisional id.
        (None, Some(id)) => {
            map.serialize_entry("workloadId", &format_args!("container:{id}").to_string())?;
            map.serialize_entry("workloadIdSource", "container")?;
        }
        (None, None) => map.serialize_entry("workloadId", &host.workload_id)?,
    }
    map.serialize_entry("enrichment", enrichment.as_str())?;
    if let Some(id) = container_id {
        map.serialize_entry("containerId", id)?;
    }
    if let Some(c) = container {
        serialize_pod(map, &c.pod)?;
        map.serialize_entry("containerName", &c.name)?;
        map.serialize_entry("imageRef", &c.image.reference)?;
        map.serialize_entry("imageDigest", &c.image.digest)?;
        map.serialize_entry("imageDigestKind", c.image.digest_kind.as_str())?;
    }
    Ok(())
}

pub(super) fn serialize_pod<M: serde::ser::SerializeMap>(
    map: &mut M,
    pod: &PodInfo,
) -> Result<(), M::Error> {
    map.serialize_entry("namespace", &pod.pod.namespace)?;
    map.serialize_entry("pod", &pod.pod.name)?;
    map.serialize_entry("podUid", &pod.pod.uid)?;
    match &pod.origin {
        Origin::CriPod => {}
        Origin::DockerPod => map.serialize_entry("containerRuntime", "docker")?,
        Origin::DockerContainer { compose } => {
            map.serialize_entry("containerRuntime", "docker")?;
            if let Some((project, service)) = compose {
                map.serialize_entry("composeProject", project)?;
                map.serialize_entry("composeService", service)?;
            }
        }
    }
    let identity = &pod.identity;
    for (key, value) in [
        ("tenant", &identity.tenant),
        ("project", &identity.project),
        ("component", &identity.component),
        ("channel", &identity.channel),
    ] {
        if let Some(value) = value {
            map.serialize_entry(key, value)?;
        }
    }
    Ok(())
}

pub(super) struct LifecycleHead {
    pub(super) lifecycle: Lifecycle,
    pub(super) timestamp: Timestamp,
    pub(super) late: bool,
}

impl Serialize for LifecycleHead {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("schemaVersion", &SCHEMA_VERSION)?;
        let kind = match self.lifecycle {
            Lifecycle::Start => "containerStart",
            Lifecycle::Stop => "containerStop",
        };
        map.serialize_entry("eventType", kind)?;
        map.serialize_entry("timestamp", &self.timestamp)?;
        if self.late {
            map.serialize_entry("late", &true)?;
        }
        map.end()
    }
}

pub(super) struct LifecycleTail<'a> {
    pub(super) lifecycle: Lifecycle,
    pub(super) container: &'a ContainerInfo,
}

impl Serialize for LifecycleTail<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.container;
        let mut map = serializer.serialize_map(None)?;
        if let Some(pid) = c.init_pid {
            map.serialize_entry("initPid", &pid)?;
        }
        if let Some(entrypoint) = &c.entrypoint {
            map.serialize_entry("entrypoint", entrypoint)?;
        }
        if let Some(code_id) = &c.entrypoint_code_id {
            map.serialize_entry("code_id", code_id)?;
        }
        if self.lifecycle == Lifecycle::Stop {
            if let Some(code) = c.exit_code {
                map.serialize_entry("exitCode", &code)?;
            }
        }
        map.end()
    }
}

pub(super) struct PatchHead<'a> {
    pub(super) timestamp: Timestamp,
    pub(super) ids: EventIds<'a>,
}

impl Serialize for PatchHead<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("schemaVersion", &SCHEMA_VERSION)?;
        map.serialize_entry("eventType", "enrichmentPatch")?;
        map.serialize_entry("timestamp", &self.timestamp)?;
        map.serialize_entry("eventIds", &self.ids)?;
        map.end()
    }
}

/// `{"tenant", "environment", "cluster"}`, those that are set.
struct DeploymentJson<'a>(&'a zastava_platform::deployment::Deployment);

impl Serialize for DeploymentJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.0.fields() {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

pub(super) struct NoFields;

impl Serialize for NoFields {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_map(Some(0))?.end()
    }
}

pub(super) struct WorkloadJson<'a> {
    pub(super) host: &'a HostIdentity,
    pub(super) enrichment: Enrichment,
    pub(super) container_id: Option<&'a str>,
    pub(super) container: Option<&'a ContainerInfo>,
}

impl Serialize for WorkloadJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        serialize_workload(
            &mut map,
            self.host,
            self.enrichment,
            self.container_id,
            self.container,
        )?;
        map.end()
    }
}

pub(super) struct EventIds<'a> {
    pub(super) run_id: &'a str,
    pub(super) seqs: &'a [u64],
}

impl Serialize for EventIds<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.seqs.len()))?;
        for &s in self.seqs {
            seq.serialize_element(&EventId {
                run_id: self.run_id,
                seq: s,
            })?;
        }
        seq.end()
    }
}
