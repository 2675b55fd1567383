//! The JSON of records. Field names are a contract (schemas/runtime-events.v1.schema.json,
//! docs/runtime-events.md): a record is its head (type, id, time), the workload fields, and
//! its tail (what happened); [`fields`] holds each part, the writer joins them.

pub mod direct;
mod edge;
mod fields;
#[cfg(test)]
mod serde_edge;

use std::sync::Arc;

use serde::Serialize;

use super::{ContainerInfo, Enrichment, HostIdentity, Item, Record, Timestamp};
pub use fields::EventId;
use fields::{EventIds, LifecycleHead, LifecycleTail, NoFields, PatchHead, WorkloadJson};

/// Writes the JSON of a batch's records.
///
/// A record is its head (type, id, time), the workload fields, and its tail (what
/// happened). The workload fields are the same for every record of a workload, and a batch
/// is sorted by workload: they are rendered once per run of records and copied after that.
pub struct RecordWriter<'a> {
    host: &'a HostIdentity,
    run_id: &'a str,
    /// What the rendered workload fields describe; holding the `Arc`s keeps the pointers
    /// compared below from being reused by other containers.
    workload_of: Option<WorkloadOf>,
    /// `"node":...,"hostId":...` (an object's fields, without the braces).
    workload: Vec<u8>,
    scratch: Vec<u8>,
    processes: edge::ProcessCache,
}

struct WorkloadOf {
    enrichment: Enrichment,
    container_id: Option<Arc<str>>,
    container: Option<Arc<ContainerInfo>>,
}

impl WorkloadOf {
    fn is(
        &self,
        enrichment: Enrichment,
        container_id: Option<&Arc<str>>,
        container: Option<&Arc<ContainerInfo>>,
    ) -> bool {
        self.enrichment == enrichment
            && match (&self.container_id, container_id) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (None, None) => true,
                _ => false,
            }
            && match (&self.container, container) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

impl<'a> RecordWriter<'a> {
    pub fn new(host: &'a HostIdentity, run_id: &'a str) -> Self {
        RecordWriter {
            host,
            run_id,
            workload_of: None,
            workload: Vec::new(),
            scratch: Vec::new(),
            processes: edge::ProcessCache::default(),
        }
    }

    /// Appends the record's JSON object (no newline) to `out`.
    pub fn write(&mut self, out: &mut Vec<u8>, item: &Item) -> serde_json::Result<()> {
        let timestamp = Timestamp::from_unix_ns(item.at_ns);
        match &item.record {
            Record::Edge { event, attribution } => {
                self.render_workload(
                    attribution.enrichment,
                    attribution.container_id.as_ref(),
                    attribution.container.as_ref(),
                )?;
                out.push(b'{');
                edge::head(out, item, event, self.run_id);
                push_fields(out, &self.workload);
                edge::tail(out, event, &mut self.processes);
                out.push(b'}');
                Ok(())
            }
            Record::Lifecycle {
                lifecycle,
                container,
                enrichment,
            } => {
                let id: Arc<str> = Arc::from(container.id.as_str());
                self.compose(
                    out,
                    &LifecycleHead {
                        lifecycle: *lifecycle,
                        timestamp,
                        late: item.late,
                    },
                    *enrichment,
                    Some(&id),
                    Some(container),
                    &LifecycleTail {
                        lifecycle: *lifecycle,
                        container,
                    },
                )
            }
            Record::Patch {
                container,
                seqs,
                enrichment,
            } => {
                let id: Arc<str> = Arc::from(container.id.as_str());
                self.compose(
                    out,
                    &PatchHead {
                        timestamp,
                        ids: EventIds {
                            run_id: self.run_id,
                            seqs,
                        },
                    },
                    *enrichment,
                    Some(&id),
                    Some(container),
                    &NoFields,
                )
            }
        }
    }

    /// The record as the serde writer of edge fields wrote it (tests compare the two).
    #[cfg(test)]
    pub(crate) fn write_with_serde(
        &mut self,
        out: &mut Vec<u8>,
        item: &Item,
    ) -> serde_json::Result<()> {
        let Record::Edge { event, attribution } = &item.record else {
            return self.write(out, item);
        };
        self.compose(
            out,
            &serde_edge::EdgeHead {
                item,
                event,
                timestamp: Timestamp::from_unix_ns(item.at_ns),
                run_id: self.run_id,
            },
            attribution.enrichment,
            attribution.container_id.as_ref(),
            attribution.container.as_ref(),
            &serde_edge::EdgeTail(event),
        )
    }

    /// `{head fields, workload fields, tail fields}`.
    #[allow(clippy::too_many_arguments, reason = "the parts of one record")]
    fn compose(
        &mut self,
        out: &mut Vec<u8>,
        head: &impl Serialize,
        enrichment: Enrichment,
        container_id: Option<&Arc<str>>,
        container: Option<&Arc<ContainerInfo>>,
        tail: &impl Serialize,
    ) -> serde_json::Result<()> {
        self.render_workload(enrichment, container_id, container)?;
        out.push(b'{');
        append_fields(out, &mut self.scratch, head)?;
        push_fields(out, &self.workload);
        append_fields(out, &mut self.scratch, tail)?;
        out.push(b'}');
        Ok(())
    }

    /// Renders the workload fields, unless they are those rendered last.
    fn render_workload(
        &mut self,
        enrichment: Enrichment,
        container_id: Option<&Arc<str>>,
        container: Option<&Arc<ContainerInfo>>,
    ) -> serde_json::Result<()> {
        let fresh = !self
            .workload_of
            .as_ref()
            .is_some_and(|w| w.is(enrichment, container_id, container));
        if fresh {
            self.scratch.clear();
            serde_json::to_writer(
                &mut self.scratch,
                &WorkloadJson {
                    host: self.host,
                    enrichment,
                    container_id: container_id.map(|id| &**id),
                    container: container.map(|c| &**c),
                },
            )?;
            self.workload.clear();
            self.workload.extend_from_slice(fields_of(&self.scratch));
            self.workload_of = Some(WorkloadOf {
                enrichment,
                container_id: container_id.cloned(),
                container: container.cloned(),
            });
        }
        Ok(())
    }
}

/// Appends the fields of `value` (which serializes as an object) to an open object.
fn append_fields(
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    value: &impl Serialize,
) -> serde_json::Result<()> {
    scratch.clear();
    serde_json::to_writer(&mut *scratch, value)?;
    push_fields(out, fields_of(scratch));
    Ok(())
}

fn push_fields(out: &mut Vec<u8>, fields: &[u8]) {
    if fields.is_empty() {
        return;
    }
    if out.last() != Some(&b'{') {
        out.push(b',');
    }
    out.extend_from_slice(fields);
}

/// The fields of a serialized JSON object: what is between its braces.
fn fields_of(object: &[u8]) -> &[u8] {
    object
        .strip_prefix(b"{")
        .and_then(|o| o.strip_suffix(b"}"))
        .unwrap_or(object)
}

#[cfg(test)]
mod tests;
