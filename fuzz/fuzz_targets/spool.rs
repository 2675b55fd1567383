//! Spool recovery after corruption: whatever a crash or a bad disk left in a segment, the
//! head and the cursors (the input split at NUL bytes), the spool opens, every batch it
//! recovered can be read and settled by every sink, and it ends empty.
#![no_main]

use std::{fs, path::PathBuf};

use libfuzzer_sys::fuzz_target;
use zastava::output::spool::{Spool, WhenFull};

const SINKS: &[&str] = &["https", "nats"];

/// On tmpfs where there is one: the spool syncs every write, which is free there.
fn dir() -> PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("zastava-fuzz-spool-{}", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let mut parts = data.splitn(4, |&b| b == 0);
    let segment = parts.next().unwrap_or_default();
    fs::write(dir.join("segment-0000000000000000.spool"), segment).unwrap();
    for (name, part) in ["head", "cursor-https", "cursor-nats"].iter().zip(parts) {
        fs::write(dir.join(name), part).unwrap();
    }
    let Ok(mut spool) = Spool::open(&dir, 1 << 30, WhenFull::DropOldest, SINKS) else {
        return;
    };
    let batches = spool.len();
    for sink in 0..SINKS.len() {
        let (pending, _) = spool.pending_for(sink);
        let mut settled = 0;
        while let Some((seq, entry)) = spool.peek(sink).expect("a recovered batch reads back") {
            let _ = entry.batch_id.len();
            assert!(!spool.settle(sink, seq, sink == 0).unwrap().stale);
            settled += 1;
        }
        assert_eq!(settled, pending, "sink {sink} of {batches} batches");
    }
    assert!(spool.is_empty());
    assert_eq!(spool.pending_events(), 0);
    drop(spool);
    let spool = Spool::open(&dir, 1 << 30, WhenFull::DropOldest, SINKS).unwrap();
    assert!(spool.is_empty(), "settled batches came back");
});
