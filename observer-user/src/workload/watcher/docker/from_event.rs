//! A container described from its events' attributes: one the engine removed before it
//! could be inspected (name, image, labels from the event; its image digest known only when
//! the image was named by one), and the exit a `die` event reports for a container already
//! described. Hands on the [`ContainerInfo`] the watcher publishes.

use std::{collections::BTreeMap, sync::Arc};

use observer_common::identity::is_digest;
use tracing::warn;

use super::{role, sandbox_pod, DockerSource, Result, Role};
use crate::{
    record::{ContainerInfo, ContainerState, PodInfo},
    workload::{
        docker::Event,
        image::image_info,
        watcher::{Update, Updates},
    },
};

/// Event attributes that are not the container's labels.
const NOT_LABELS: [&str; 4] = ["name", "image", "exitCode", "signal"];

impl DockerSource {
    /// A container the engine no longer has, described from what its event says.
    pub(super) async fn describe_from_event(&mut self, event: &Event, out: &Updates) -> Result<()> {
        let id = event.actor.id.as_str();
        let attributes = event.actor.attributes.clone().unwrap_or_default();
        let name = attributes
            .get("name")
            .cloned()
            .unwrap_or_else(|| id.chars().take(12).collect());
        let image = attributes.get("image").cloned().unwrap_or_default();
        let exit_code = attributes.get("exitCode").and_then(|c| c.parse().ok());
        let labels: BTreeMap<String, String> = attributes
            .into_iter()
            .filter(|(k, _)| !NOT_LABELS.contains(&k.as_str()))
            .collect();
        let pod = match role(&labels) {
            Role::Sandbox => {
                let pod = Arc::new(sandbox_pod(id, &labels));
                self.pods.insert(id.to_owned(), Arc::clone(&pod));
                out.send(Update::Pod(pod)).await?;
                return Ok(());
            }
            Role::InPod(sandbox) => match self.pods.get(sandbox) {
                Some(pod) => Arc::clone(pod),
                None => return Ok(()),
            },
            Role::Standalone => Arc::new(PodInfo::docker_container(id.to_owned(), &name, labels)),
        };
        let (state, started_at_ns, finished_at_ns) = match event.action.as_str() {
            "create" => (ContainerState::Created, 0, 0),
            "die" => (ContainerState::Exited, 0, event.time_nano),
            "start" | "rename" => (ContainerState::Running, event.time_nano, 0),
            _ => (ContainerState::Unknown, 0, 0),
        };
        // Only an image given by digest says which image ran; a tag may have moved since.
        let image_ref = if is_digest(&image) {
            image.as_str()
        } else {
            ""
        };
        let image_info = image_info(&image, image_ref, None);
        let digest = if image_info.digest.is_some() {
            "with the digest its image is named by"
        } else {
            "without its image digest"
        };
        warn!("Docker container {id} ({name}) was removed before it could be inspected; it is described from its {} event, {digest}", event.action);
        let earlier = self.containers.get(id);
        let info = ContainerInfo {
            id: id.to_owned(),
            name,
            pod,
            image: image_info,
            state,
            started_at_ns: earlier.map_or(started_at_ns, |c| c.started_at_ns.max(started_at_ns)),
            finished_at_ns,
            exit_code: if state == ContainerState::Exited {
                exit_code
            } else {
                None
            },
            init_pid: earlier.and_then(|c| c.init_pid),
            entrypoint: earlier.and_then(|c| c.entrypoint.clone()),
            entrypoint_code_id: earlier.and_then(|c| c.entrypoint_code_id.clone()),
        };
        self.publish(info, out).await
    }

    /// A container died: its description with the exit the event reports.
    pub(super) fn died(&self, event: &Event) -> Option<ContainerInfo> {
        let known = self.containers.get(&event.actor.id)?;
        let code = event
            .actor
            .attributes
            .as_ref()?
            .get("exitCode")?
            .parse()
            .ok()?;
        let mut info = ContainerInfo::clone(known);
        info.state = ContainerState::Exited;
        info.exit_code = Some(code);
        info.finished_at_ns = event.time_nano;
        Some(info)
    }
}
