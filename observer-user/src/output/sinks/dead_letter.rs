//! Batches a sink will never accept, kept as NDJSON lines (`batchId`, `sink`, `status`,
//! `reason`, `events`, and the batch itself when its body can be read) beside the spool.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use tracing::warn;

use crate::output::{
    ndjson::{NdjsonSink, Output},
    spool::SpoolEntry,
};

pub struct DeadLetter {
    sink: &'static str,
    path: PathBuf,
    file: Option<NdjsonSink>,
}

impl DeadLetter {
    /// The dead-letter file of `sink` in `dir`: `dead-letter.ndjson` for the HTTPS backend
    /// (where it always was), `dead-letter.<sink>.ndjson` for the others.
    pub fn in_dir(dir: &Path, sink: &'static str) -> Self {
        let name = if sink == super::https::NAME {
            "dead-letter.ndjson".to_owned()
        } else {
            format!("dead-letter.{sink}.ndjson")
        };
        DeadLetter {
            sink,
            path: dir.join(name),
            file: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, entry: &SpoolEntry, status: Option<u16>, reason: &str) {
        if self.file.is_none() {
            match NdjsonSink::open(&Output::parse(&self.path.to_string_lossy(), 16 << 20, 4)) {
                Ok(file) => self.file = Some(file),
                Err(err) => {
                    warn!(
                        "cannot open the dead-letter file {}: {err}; batch {} is lost",
                        self.path.display(),
                        entry.batch_id
                    );
                    return;
                }
            }
        }
        let mut json = String::new();
        let batch: Option<serde_json::Value> = flate2::read::GzDecoder::new(entry.body.as_slice())
            .read_to_string(&mut json)
            .ok()
            .and_then(|_| serde_json::from_str(&json).ok());
        let mut line = serde_json::json!({
            "batchId": entry.batch_id,
            "sink": self.sink,
            "status": status,
            "reason": reason,
            "events": entry.events,
        });
        if let Some(batch) = batch {
            line["batch"] = batch;
        }
        if let Some(file) = self.file.as_mut() {
            if let Err(err) = file.write(&line).and_then(|()| file.flush()) {
                warn!(
                    "cannot write the dead-letter file {}: {err}",
                    self.path.display()
                );
            }
        }
    }
}
