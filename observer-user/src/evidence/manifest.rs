//! The manifest (`manifest.json`): what went in, what each file of the bundle holds, and
//! the workload identity table. Written as canonical JSON; every member is always present
//! (empty lists, `null`) except `deployment` and `firstInvalid`, so its shape never
//! depends on the data.

use serde::{Deserialize, Serialize};

use super::{canonical, hex, EvidenceError};

/// The version of this format.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u32,
    pub run_id: String,
    pub run_id_source: RunIdSource,
    /// The deployment the records come from: the one the export was given, else the one
    /// the records' `deployment` objects name; absent when neither says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Deployment>,
    pub filters: FiltersJson,
    pub inputs: Vec<InputEntry>,
    pub streams: Streams,
    pub workloads: Vec<WorkloadRow>,
    pub build_ids: Vec<BuildIdRow>,
}

/// Where the run id came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunIdSource {
    /// A prefix of the manifest's content hash (the default).
    Content,
    /// Named with `--run-id`.
    Given,
}

/// Where the records were captured: the installation's `[runtime]` tenant, environment and
/// cluster id, those that are set (at least one; the member is absent when none is).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deployment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FiltersJson {
    pub since: Option<String>,
    pub until: Option<String>,
    pub namespaces: Vec<String>,
    pub workloads: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InputEntry {
    /// `runtime` or `entrytrace`.
    pub stream: String,
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
    pub lines: u64,
    pub records: u64,
    pub filtered_out: u64,
    pub invalid: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_invalid: Option<InvalidJson>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InvalidJson {
    pub line: u64,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Streams {
    pub runtime: StreamEntry,
    pub entrytrace: StreamEntry,
    pub coalesced: CoalescedEntry,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamEntry {
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    pub records: u64,
    pub duplicates_dropped: u64,
    pub first_timestamp: Option<String>,
    pub last_timestamp: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CoalescedEntry {
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    pub records: u64,
}

/// One row of the workload identity table: every value the streams' records of the
/// workload carry, sorted; a workload whose records disagree shows every value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadRow {
    pub workload_id: String,
    /// Which streams have records of it.
    pub sources: Vec<String>,
    pub namespaces: Vec<String>,
    pub tenants: Vec<String>,
    pub projects: Vec<String>,
    pub components: Vec<String>,
    pub channels: Vec<String>,
    pub images: Vec<ImageJson>,
    pub nodes: Vec<String>,
    pub host_ids: Vec<String>,
    pub first_seen: String,
    pub last_seen: String,
}

/// An image digest with what kind of digest it is; `digest: null` for records whose
/// image has no digest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageJson {
    pub digest: Option<String>,
    pub kind: Option<String>,
}

/// The GNU build-ids seen running from one image digest (`null`: records without one,
/// such as the node's own processes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuildIdRow {
    pub image_digest: Option<String>,
    pub code_ids: Vec<CodeIdJson>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CodeIdJson {
    pub code_id: String,
    /// The executables (exec paths, container entrypoints) that had it.
    pub paths: Vec<String>,
}

impl Manifest {
    /// The manifest's canonical bytes: the file's exact content.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EvidenceError> {
        canonical::to_canonical(self).map_err(EvidenceError::Refused)
    }

    /// The content hash a default run id is a prefix of: the SHA-256 of the canonical
    /// manifest without its `runId` member.
    pub fn content_hash(&self) -> Result<String, EvidenceError> {
        use sha2::{Digest as _, Sha256};
        let mut value =
            serde_json::to_value(self).map_err(|e| EvidenceError::Refused(e.to_string()))?;
        if let Some(object) = value.as_object_mut() {
            object.remove("runId");
        }
        let bytes = canonical::to_canonical(&value).map_err(EvidenceError::Refused)?;
        Ok(hex(&Sha256::digest(bytes)))
    }
}

/// Hex digits of the content hash that make a default run id.
pub const RUN_ID_DIGITS: usize = 16;

/// Checks a run id: it names a directory and an archive entry, so it is 1 to 64 of
/// `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
pub fn check_run_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !id.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "run id {id:?} is not 1 to 64 of A-Z a-z 0-9 . _ - (not starting with . or -)"
        ))
    }
}
