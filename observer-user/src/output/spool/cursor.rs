//! Each sink's place in the spool, and the files that keep it across restarts.
//!
//! `cursor-<sink>` holds one line `<segment> <offset>` (the first record the sink has not
//! settled) and then a line `given-up <segment> <offset>` for each record before it that
//! the sink gave up on and that is still spooled. It is replaced atomically (a new file,
//! synced, renamed over the old one).

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use super::Position;

const PREFIX: &str = "cursor-";

/// One sink's cursor, in memory.
#[derive(Clone, Debug)]
pub(super) struct Cursor {
    pub name: String,
    /// Sequence number of the first batch this sink has not settled.
    pub next: u64,
    /// Batches (and their events) from `next` on.
    pub pending_batches: u64,
    pub pending_events: u64,
    /// Batches before `next`, still spooled, that this sink gave up on.
    pub given_up: BTreeSet<u64>,
    /// At open: events of batches still spooled that this sink had settled in an earlier
    /// run, delivered or given up.
    pub recovered_delivered: u64,
    pub recovered_given_up: u64,
}

impl Cursor {
    pub fn new(name: &str) -> Self {
        Cursor {
            name: name.to_owned(),
            next: 0,
            pending_batches: 0,
            pending_events: 0,
            given_up: BTreeSet::new(),
            recovered_delivered: 0,
            recovered_given_up: 0,
        }
    }
}

/// A cursor as saved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Saved {
    pub next: Position,
    pub given_up: BTreeSet<Position>,
}

fn path(dir: &Path, sink: &str) -> PathBuf {
    dir.join(format!("{PREFIX}{sink}"))
}

fn parse_position<'a>(mut words: impl Iterator<Item = &'a str>) -> Option<Position> {
    let segment = words.next()?.parse().ok()?;
    let offset = words.next()?.parse().ok()?;
    words.next().is_none().then_some((segment, offset))
}

/// The saved cursor of `sink`; `None` when there is none, or it cannot be read (the sink
/// then starts at the head again: resending is safe, every sink drops duplicate batch ids).
pub(super) fn read(dir: &Path, sink: &str) -> io::Result<Option<Saved>> {
    let text = match fs::read_to_string(path(dir, sink)) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut lines = text.lines();
    let Some(next) = lines
        .next()
        .and_then(|l| parse_position(l.split_whitespace()))
    else {
        return Ok(None);
    };
    let mut saved = Saved {
        next,
        given_up: BTreeSet::new(),
    };
    for line in lines {
        let mut words = line.split_whitespace();
        if words.next() == Some("given-up") {
            if let Some(at) = parse_position(words) {
                saved.given_up.insert(at);
            }
        }
    }
    Ok(Some(saved))
}

pub(super) fn write(
    dir: &Path,
    sink: &str,
    next: Position,
    given_up: &[Position],
) -> io::Result<()> {
    let mut text = format!("{} {}\n", next.0, next.1);
    for (segment, offset) in given_up {
        text.push_str(&format!("given-up {segment} {offset}\n"));
    }
    let tmp = dir.join(format!("{PREFIX}{sink}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_data()?;
    fs::rename(&tmp, path(dir, sink))
}

/// Removes the cursors of sinks not in `sinks` (a sink added again later starts at the
/// head).
pub(super) fn remove_others(dir: &Path, sinks: &[&str]) -> io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(sink) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let sink = sink.strip_suffix(".tmp").unwrap_or(sink);
        if !sinks.contains(&sink) || name.ends_with(".tmp") {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_a_round_trip_and_a_damaged_one_is_none() {
        let dir = std::env::temp_dir().join(format!("zastava-cursor-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(read(&dir, "nats").unwrap(), None);
        write(&dir, "nats", (3, 4096), &[(2, 0), (3, 12)]).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("cursor-nats")).unwrap(),
            "3 4096\ngiven-up 2 0\ngiven-up 3 12\n"
        );
        assert_eq!(
            read(&dir, "nats").unwrap(),
            Some(Saved {
                next: (3, 4096),
                given_up: [(2, 0), (3, 12)].into_iter().collect(),
            })
        );
        fs::write(dir.join("cursor-redis"), "three 4\n").unwrap();
        assert_eq!(read(&dir, "redis").unwrap(), None);
        fs::write(dir.join("cursor-old"), "0 0\n").unwrap();
        remove_others(&dir, &["nats"]).unwrap();
        assert!(dir.join("cursor-nats").exists());
        assert!(!dir.join("cursor-old").exists());
        assert!(!dir.join("cursor-redis").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
