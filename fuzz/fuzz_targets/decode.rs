//! Ring buffer records: whatever bytes come out of the ring decode to an event or to a
//! counted error, never a panic or a read past the record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zastava::kernel::decode::{decode, parse_sockaddr};

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = decode(data) {
        let _ = event.kind();
        let _ = event.header();
        let _ = format!("{event:?}");
    }
    let _ = format!("{:?}", parse_sockaddr(data));
});
