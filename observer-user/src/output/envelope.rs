//! The batch envelope the backend receives: `{"batchId", "node", "schemaVersion",
//! "events": [...]}`, gzip-encoded. Batch ids are `<hostId>-<runId>-<n>`, unique per node
//! and run, and double as the delivery's idempotency key.

use std::io::{self, Write as _};

use crate::record::{HostIdentity, SCHEMA_VERSION};

/// Builds the envelopes of one daemon run.
pub struct Envelope {
    /// `<hostId>-<runId>-`, the prefix of every batch id.
    id_prefix: String,
    /// `"node":"...",` rendered once.
    node_json: String,
    next: u64,
    body: Vec<u8>,
    events: usize,
}

impl Envelope {
    pub fn new(host: &HostIdentity, run_id: &str) -> Self {
        Envelope {
            id_prefix: format!("{}-{run_id}-", host.host_id),
            node_json: serde_json::to_string(&host.node).unwrap_or_else(|_| "\"\"".into()),
            next: 1,
            body: Vec::with_capacity(64 * 1024),
            events: 0,
        }
    }

    /// The id of the next batch.
    pub fn next_batch_id(&mut self) -> String {
        let id = format!("{}{}", self.id_prefix, self.next);
        self.next += 1;
        id
    }

    /// Starts the body of `batch_id`.
    pub fn open(&mut self, batch_id: &str) -> io::Result<()> {
        self.body.clear();
        self.events = 0;
        write!(
            self.body,
            r#"{{"batchId":{},"node":{},"schemaVersion":{SCHEMA_VERSION},"events":["#,
            serde_json::to_string(batch_id)?,
            self.node_json,
        )
    }

    /// Appends one record's JSON object.
    pub fn push(&mut self, record: &[u8]) {
        if self.events > 0 {
            self.body.push(b',');
        }
        self.body.extend_from_slice(record);
        self.events += 1;
    }

    /// Ends the body and returns it gzip-encoded (`Content-Encoding: gzip`).
    pub fn close(&mut self) -> io::Result<Vec<u8>> {
        self.body.extend_from_slice(b"]}");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&self.body)?;
        gz.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn an_envelope_holds_its_records_in_order() {
        let host = HostIdentity::for_tests();
        let mut envelope = Envelope::new(&host, "r1");
        assert_eq!(envelope.next_batch_id(), "abc-r1-1");
        let id = envelope.next_batch_id();
        assert_eq!(id, "abc-r1-2");
        envelope.open(&id).unwrap();
        envelope.push(br#"{"a":1}"#);
        envelope.push(br#"{"b":2}"#);
        let gz = envelope.close().unwrap();
        let mut body = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut body)
            .unwrap();
        assert_eq!(
            body,
            r#"{"batchId":"abc-r1-2","node":"node-a","schemaVersion":1,"events":[{"a":1},{"b":2}]}"#
        );
        envelope.open("x").unwrap();
        let gz = envelope.close().unwrap();
        let mut body = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut body)
            .unwrap();
        assert!(body.ends_with(r#""events":[]}"#), "{body}");
    }
}
