//! A container as Docker Engine's inspection describes it: its name, its image with the
//! digest the engine knows (cached per reference and image id), its state, its run's times
//! and exit, and its entrypoint (kept from the same run once the process is gone). Hands on
//! the [`ContainerInfo`] the watcher publishes.

use std::{collections::BTreeMap, sync::Arc};

use tracing::warn;

use super::{k8s, DockerSource, Result};
use crate::{
    record::{ContainerInfo, ContainerState, ImageInfo, PodInfo},
    workload::{
        docker::{parse_time_ns, ContainerInspect, DockerClient},
        image::{image_info, ImageFacts},
        watcher::Stop,
    },
};

impl DockerSource {
    /// The description of an inspected container, as a container of `pod`.
    pub(super) async fn container_info(
        &mut self,
        client: &DockerClient,
        inspect: &ContainerInspect,
        labels: &BTreeMap<String, String>,
        pod: Arc<PodInfo>,
    ) -> Result<ContainerInfo> {
        let image = self
            .image(client, &inspect.config.image, &inspect.image)
            .await?;
        let state = super::state_of(&inspect.state.status);
        let started_at_ns = parse_time_ns(&inspect.state.started_at);
        let running_pid = u32::try_from(inspect.state.pid).ok().filter(|&p| p > 0);
        // An exited container has no pid any more; its run's entrypoint stays what it was.
        let earlier = self
            .containers
            .get(&inspect.id)
            .filter(|c| c.started_at_ns == started_at_ns);
        let (init_pid, entrypoint, entrypoint_code_id) = match (running_pid, earlier) {
            (None, Some(c)) => (
                c.init_pid,
                c.entrypoint.clone(),
                c.entrypoint_code_id.clone(),
            ),
            _ => {
                let (entrypoint, code_id) = self.entrypoints.of(running_pid);
                (running_pid, entrypoint, code_id)
            }
        };
        let name = match labels.get(k8s::CONTAINER_NAME) {
            Some(name) if !pod.pod.namespace.is_empty() => name.clone(),
            _ => name_of(inspect),
        };
        let exited = state == ContainerState::Exited;
        Ok(ContainerInfo {
            id: inspect.id.clone(),
            name,
            pod,
            image,
            state,
            started_at_ns,
            // dockerd takes StartedAt once the process runs, the finish from the process's
            // exit: a container that exits within a millisecond can finish "before" it
            // started. Its stop is then reported at its start, never before it.
            finished_at_ns: match parse_time_ns(&inspect.state.finished_at) {
                finished if exited && finished > 0 => finished.max(started_at_ns),
                _ => 0,
            },
            exit_code: if exited {
                i32::try_from(inspect.state.exit_code).ok()
            } else {
                None
            },
            init_pid,
            entrypoint,
            entrypoint_code_id,
        })
    }

    /// What the engine knows about an image's digest (cached per reference and id).
    async fn image(
        &mut self,
        client: &DockerClient,
        requested: &str,
        image_id: &str,
    ) -> Result<ImageInfo> {
        let key = (requested.to_owned(), image_id.to_owned());
        if let Some(known) = self.images.get(&key) {
            return Ok(known.clone());
        }
        let image = if image_id.is_empty() {
            None
        } else {
            client
                .inspect_image(image_id)
                .await
                .map_err(Stop::Runtime)?
        };
        let (tags, digests) = image.as_ref().map_or((None, None), |i| {
            (i.repo_tags.as_deref(), i.repo_digests.as_deref())
        });
        let facts = image.as_ref().map(|i| ImageFacts {
            id: &i.id,
            repo_tags: tags.unwrap_or_default(),
            repo_digests: digests.unwrap_or_default(),
        });
        let info = image_info(requested, image_id, facts);
        if !info.has_usable_digest() {
            warn!(
                "image {requested:?}: Docker Engine knows no manifest digest for it (it was not pulled from a registry); its containers' events carry its {} digest ({}) and are marked partial",
                info.digest_kind.as_str(),
                info.digest.as_deref().unwrap_or("none")
            );
        }
        self.images.insert(key, info.clone());
        Ok(info)
    }
}

/// `/web` → `web`.
pub(super) fn name_of(inspect: &ContainerInspect) -> String {
    let name = inspect.name.trim_start_matches('/');
    if name.is_empty() {
        inspect.id.chars().take(12).collect()
    } else {
        name.to_owned()
    }
}
