//! The workload identity table and the build-ids per image digest, gathered from the
//! records of both streams. Every part is a set or a minimum/maximum, so a record seen
//! twice changes nothing: the table gathered while reading inputs (duplicates and all)
//! equals the one `verify` gathers from the bundle's deduplicated streams.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    input::{Field, Record},
    manifest::{BuildIdRow, CodeIdJson, ImageJson, WorkloadRow},
    time::{self, Instant},
    Stream,
};

#[derive(Default)]
struct Row {
    sources: BTreeSet<Stream>,
    namespaces: BTreeSet<String>,
    tenants: BTreeSet<String>,
    projects: BTreeSet<String>,
    components: BTreeSet<String>,
    channels: BTreeSet<String>,
    images: BTreeSet<ImageJson>,
    nodes: BTreeSet<String>,
    host_ids: BTreeSet<String>,
    first: Instant,
    last: Instant,
}

/// What the records say about their workloads.
#[derive(Default)]
pub struct Identity {
    rows: BTreeMap<String, Row>,
    /// image digest (`None`: none) → build-id → executable paths.
    build_ids: BTreeMap<Option<String>, BTreeMap<String, BTreeSet<String>>>,
}

fn note(set: &mut BTreeSet<String>, value: Option<&str>) {
    if let Some(value) = value {
        if !set.contains(value) {
            set.insert(value.to_owned());
        }
    }
}

impl Identity {
    pub fn add(&mut self, stream: Stream, record: &Record<'_>) {
        let workload = record.workload();
        let row = match self.rows.get_mut(workload) {
            Some(row) => row,
            None => self.rows.entry(workload.to_owned()).or_insert_with(|| Row {
                first: record.instant,
                last: record.instant,
                ..Row::default()
            }),
        };
        row.sources.insert(stream);
        note(&mut row.namespaces, record.str(Field::Namespace));
        note(&mut row.tenants, record.str(Field::Tenant));
        note(&mut row.projects, record.str(Field::Project));
        note(&mut row.components, record.str(Field::Component));
        note(&mut row.channels, record.str(Field::Channel));
        note(&mut row.nodes, record.str(Field::Node));
        note(&mut row.host_ids, record.str(Field::HostId));
        if record.has(Field::ImageDigest) {
            let image = ImageJson {
                digest: record.image_digest().map(str::to_owned),
                kind: record.str(Field::ImageDigestKind).map(str::to_owned),
            };
            if !row.images.contains(&image) {
                row.images.insert(image);
            }
        }
        row.first = row.first.min(record.instant);
        row.last = row.last.max(record.instant);

        if let Some(code_id) = record.str(Field::CodeId) {
            let digest = record.image_digest();
            let per_image = match self.build_ids.get_mut(&digest.map(str::to_owned)) {
                Some(per_image) => per_image,
                None => self.build_ids.entry(digest.map(str::to_owned)).or_default(),
            };
            let paths = match per_image.get_mut(code_id) {
                Some(paths) => paths,
                None => per_image.entry(code_id.to_owned()).or_default(),
            };
            // The executable: a container's entrypoint, an exec's path.
            let path = record.str(Field::Entrypoint).or_else(|| {
                (record.str(Field::EdgeType) == Some("syscall"))
                    .then(|| record.str(Field::Path))
                    .flatten()
            });
            note(paths, path);
        }
    }

    /// The identity table, by workload id.
    pub fn workloads(&self) -> Vec<WorkloadRow> {
        let list = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>();
        self.rows
            .iter()
            .map(|(id, row)| WorkloadRow {
                workload_id: id.clone(),
                sources: row.sources.iter().map(|s| s.name().to_owned()).collect(),
                namespaces: list(&row.namespaces),
                tenants: list(&row.tenants),
                projects: list(&row.projects),
                components: list(&row.components),
                channels: list(&row.channels),
                images: images(&row.images),
                nodes: list(&row.nodes),
                host_ids: list(&row.host_ids),
                first_seen: time::format(row.first),
                last_seen: time::format(row.last),
            })
            .collect()
    }

    /// Build-ids per image digest (records without a digest last).
    pub fn build_ids(&self) -> Vec<BuildIdRow> {
        let mut rows: Vec<BuildIdRow> = self
            .build_ids
            .iter()
            .map(|(digest, ids)| BuildIdRow {
                image_digest: digest.clone(),
                code_ids: ids
                    .iter()
                    .map(|(code_id, paths)| CodeIdJson {
                        code_id: code_id.clone(),
                        paths: paths.iter().cloned().collect(),
                    })
                    .collect(),
            })
            .collect();
        // BTreeMap puts `None` first; the table reads better with it last.
        let none_first = rows.first().is_some_and(|r| r.image_digest.is_none());
        rows.rotate_left(usize::from(none_first));
        rows
    }
}

/// Each image digest with each kind records gave it; a digest that some records give no
/// kind is listed without one only when no record gives it a kind.
fn images(seen: &BTreeSet<ImageJson>) -> Vec<ImageJson> {
    seen.iter()
        .filter(|image| {
            image.kind.is_some()
                || !seen
                    .iter()
                    .any(|other| other.digest == image.digest && other.kind.is_some())
        })
        .cloned()
        .collect()
}

impl Identity {
    /// Adds what `other` gathered.
    pub fn merge(&mut self, other: Identity) {
        for (id, theirs) in other.rows {
            match self.rows.get_mut(&id) {
                None => {
                    self.rows.insert(id, theirs);
                }
                Some(ours) => {
                    ours.sources.extend(theirs.sources);
                    ours.namespaces.extend(theirs.namespaces);
                    ours.tenants.extend(theirs.tenants);
                    ours.projects.extend(theirs.projects);
                    ours.components.extend(theirs.components);
                    ours.channels.extend(theirs.channels);
                    ours.images.extend(theirs.images);
                    ours.nodes.extend(theirs.nodes);
                    ours.host_ids.extend(theirs.host_ids);
                    ours.first = ours.first.min(theirs.first);
                    ours.last = ours.last.max(theirs.last);
                }
            }
        }
        for (digest, ids) in other.build_ids {
            let ours = self.build_ids.entry(digest).or_default();
            for (code_id, paths) in ids {
                ours.entry(code_id).or_default().extend(paths);
            }
        }
    }
}
