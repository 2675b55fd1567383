//! The batch envelope the backend receives: `{"batchId", "node", "tenant", "environment",
//! "cluster", "schemaVersion", "events": [...]}`, gzip-encoded; the deployment's fields
//! only when they are set (`runtime.*`). Batch ids are `<hostId>-<runId>-<n>`, unique per
//! node and run, and double as the delivery's idempotency key.

use std::io::{self, Write as _};

use crate::record::{HostIdentity, SCHEMA_VERSION};

/// Builds the envelopes of one daemon run.
pub struct Envelope {
    /// `<hostId>-<runId>-`, the prefix of every batch id.
    id_prefix: String,
    /// `"node":"...","tenant":"...",...` (the fields that say where the batch is from),
    /// rendered once.
    origin_json: String,
    next: u64,
    body: Vec<u8>,
    events: usize,
}

impl Envelope {
    pub fn new(host: &HostIdentity, run_id: &str) -> Self {
        Envelope {
            id_prefix: format!("{}-{run_id}-", host.host_id),
            origin_json: origin_fields(host),
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
            r#"{{"batchId":{},{},"schemaVersion":{SCHEMA_VERSION},"events":["#,
            serde_json::to_string(batch_id)?,
            self.origin_json,
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

/// `"node":"node-a"`, then `"tenant"`, `"environment"` and `"cluster"` when set.
fn origin_fields(host: &HostIdentity) -> String {
    let string = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into());
    let mut out = format!("\"node\":{}", string(&host.node));
    for (key, value) in host.deployment.fields() {
        out.push_str(&format!(",\"{key}\":{}", string(value)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use zastava_platform::deployment::Deployment;

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

    #[test]
    fn the_deployment_is_on_the_envelope_when_it_is_set() {
        let gunzip = |gz: Vec<u8>| {
            let mut body = String::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_string(&mut body)
                .unwrap();
            body
        };
        let deployment = Deployment {
            tenant: Some("acme".into()),
            environment: None,
            cluster: Some("eu-\"1".into()),
        };
        let host = HostIdentity::for_tests().with_deployment(deployment, false);
        let mut envelope = Envelope::new(&host, "r1");
        envelope.open("b").unwrap();
        envelope.push(br#"{"a":1}"#);
        assert_eq!(
            gunzip(envelope.close().unwrap()),
            r#"{"batchId":"b","node":"node-a","tenant":"acme","cluster":"eu-\"1","schemaVersion":1,"events":[{"a":1}]}"#
        );
    }
}
