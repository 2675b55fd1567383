//! A closed batch as bytes: its records' JSON, one line each, for the NDJSON file, and the
//! same records in the batch envelope for the sinks.

use std::io;

use crate::{
    output::envelope::Envelope,
    record::{HostIdentity, RecordWriter},
};

use super::batch::Batch;

/// Appends the batch's records to `lines`, each newline-terminated, and pushes the same
/// bytes (without the newline) into `envelope` when one is given (it must be open).
pub fn encode_batch(
    host: &HostIdentity,
    run_id: &str,
    batch: &Batch,
    lines: &mut Vec<u8>,
    mut envelope: Option<&mut Envelope>,
) -> io::Result<()> {
    lines.clear();
    let mut writer = RecordWriter::new(host, run_id);
    for item in &batch.items {
        let start = lines.len();
        writer.write(lines, item)?;
        if let Some(envelope) = envelope.as_deref_mut() {
            envelope.push(&lines[start..]);
        }
        lines.push(b'\n');
    }
    Ok(())
}

#[cfg(test)]
mod golden;
