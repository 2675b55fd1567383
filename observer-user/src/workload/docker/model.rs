//! The Engine API's replies, as far as the observer reads them. Fields it does not need are
//! ignored; `null` lists and maps (as the engine sends for "none") read as `None`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `GET /version`.
#[derive(Debug, Deserialize)]
pub(super) struct VersionReply {
    #[serde(rename = "Version")]
    pub(super) version: String,
    #[serde(rename = "ApiVersion")]
    pub(super) api_version: String,
}

/// One entry of `GET /containers/json?all=1`.
#[derive(Clone, Debug, Deserialize)]
pub struct ContainerSummary {
    #[serde(rename = "Id")]
    pub id: String,
    /// `created`, `running`, `paused`, `restarting`, `removing`, `exited`, `dead`.
    #[serde(rename = "State", default)]
    pub state: String,
}

/// `GET /containers/{id}/json`, the fields the observer reads.
#[derive(Clone, Debug, Deserialize)]
pub struct ContainerInspect {
    #[serde(rename = "Id")]
    pub id: String,
    /// `/<name>`.
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "State")]
    pub state: InspectState,
    /// The image id (`sha256:<config>`).
    #[serde(rename = "Image", default)]
    pub image: String,
    #[serde(rename = "Config")]
    pub config: InspectConfig,
}

#[derive(Clone, Debug, Deserialize)]
pub struct InspectState {
    #[serde(rename = "Status", default)]
    pub status: String,
    #[serde(rename = "Pid", default)]
    pub pid: i64,
    #[serde(rename = "ExitCode", default)]
    pub exit_code: i64,
    #[serde(rename = "StartedAt", default)]
    pub started_at: String,
    #[serde(rename = "FinishedAt", default)]
    pub finished_at: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct InspectConfig {
    /// The image as the container was created with it (`repo:tag`, `repo@sha256:...`, an id).
    #[serde(rename = "Image", default)]
    pub image: String,
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// `GET /images/{id}/json`, the fields the observer reads.
#[derive(Clone, Debug, Deserialize)]
pub struct ImageInspect {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "RepoDigests", default)]
    pub repo_digests: Option<Vec<String>>,
}

/// One message of `GET /events`.
#[derive(Clone, Debug, Deserialize)]
pub struct Event {
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(rename = "Action", default)]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: Actor,
    #[serde(rename = "timeNano", default)]
    pub time_nano: i64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Actor {
    #[serde(rename = "ID")]
    pub id: String,
    /// For containers: `name`, `image`, every label, and `exitCode` on `die`.
    #[serde(rename = "Attributes", default)]
    pub attributes: Option<BTreeMap<String, String>>,
}
