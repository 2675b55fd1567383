//! EntryTrace and runtime NDJSON lines read by the evidence export: a line is a record or
//! a reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zastava::evidence::{input::check, Stream};

fuzz_target!(|data: &[u8]| {
    for stream in [Stream::EntryTrace, Stream::Runtime] {
        match check(stream, data) {
            Ok(record) => {
                let _ = record.workload();
                let _ = record.kind();
                let _ = record.image_digest();
            }
            Err(reason) => assert!(!reason.is_empty()),
        }
    }
});
