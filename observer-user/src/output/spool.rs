//! The disk spool: every closed batch is appended here before it is sent, and removed when
//! the backend has acknowledged it. It survives restarts and SIGKILL; batches are sent in
//! the order they were written.
//!
//! Layout: `segment-<seq>.spool` files of framed records, and a `head` file naming the
//! first record not yet acknowledged. A frame is `magic u32 | length u32 | crc32 u32 |
//! payload` (little endian); the payload is an rmp-serde [`SpoolEntry`]. Appends are
//! flushed to disk (`fdatasync`) before they count as spooled. A frame cut short by a
//! crash, or whose checksum does not match, ends its segment: it is truncated away and
//! counted, never fatal.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use zastava_platform::config::bytes;

/// What to do with a batch when the spool is full (`spool.when_full`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Evict the oldest batches to make room (counted).
    DropOldest,
    /// Refuse the new batch (counted).
    DropNewest,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
/// The `[spool]` table.
pub struct SpoolConfig {
    pub dir: PathBuf,
    #[serde(deserialize_with = "bytes")]
    pub max_bytes: u64,
    pub when_full: WhenFull,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: "/var/lib/zastava/spool".into(),
            max_bytes: 256 << 20,
            when_full: WhenFull::DropOldest,
        }
    }
}

const MAGIC: u32 = 0x5A53_5031; // "ZSP1"
const FRAME_HEADER: u64 = 12;
/// A new segment starts when the current one reaches this size.
const SEGMENT_BYTES: u64 = 8 << 20;

/// One spooled batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolEntry {
    pub batch_id: String,
    /// Edge occurrences in the batch (what the loss accounting counts).
    pub events: u64,
    /// Records in the batch.
    pub records: u64,
    /// Timestamp of the oldest record, nanoseconds since the epoch.
    pub oldest_ns: i64,
    /// The request body, gzip-encoded JSON.
    #[serde(with = "serde_bytes_compat")]
    pub body: Vec<u8>,
}

/// rmp-serde writes `Vec<u8>` as an array of integers by default; binary is 1 byte per
/// byte instead of up to 2.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool entry could not be encoded: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where a pending record sits.
#[derive(Clone, Debug)]
struct Pending {
    segment: u64,
    offset: u64,
    /// Frame size on disk.
    bytes: u64,
    events: u64,
}

/// What happened to an append.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// The batch is spooled.
    pub stored: bool,
    /// Events of older batches evicted to make room (drop-oldest).
    pub evicted_events: u64,
    pub evicted_batches: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Frames found cut short or corrupt on open (truncated away).
    pub torn: u64,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    when_full: WhenFull,
    pending: VecDeque<Pending>,
    pending_bytes: u64,
    pending_events: u64,
    /// The segment being appended to, and its size.
    tail_segment: u64,
    tail_size: u64,
    tail: Option<File>,
    stats: SpoolStats,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("segment-{seq:016}.spool"))
}

fn segment_seq(name: &str) -> Option<u64> {
    name.strip_prefix("segment-")?
        .strip_suffix(".spool")?
        .parse()
        .ok()
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovering what a previous run left.
    pub fn open(dir: &Path, max_bytes: u64, when_full: WhenFull) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let head = read_head(dir).map_err(io_err(dir))?;
        let mut segments: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .flatten()
            .filter_map(|e| segment_seq(&e.file_name().to_string_lossy()))
            .collect();
        segments.sort_unstable();
        let mut spool = Spool {
            dir: dir.to_owned(),
            max_bytes,
            when_full,
            pending: VecDeque::new(),
            pending_bytes: 0,
            pending_events: 0,
            // Never behind the head: records appended there would count as acknowledged.
            tail_segment: segments.last().copied().unwrap_or(0).max(head.0),
            tail_size: 0,
            tail: None,
            stats: SpoolStats::default(),
        };
        for &seq in &segments {
            let path = segment_path(dir, seq);
            if seq < head.0 {
                // Fully acknowledged before the last run ended.
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let start = if seq == head.0 { head.1 } else { 0 };
            let size = spool.scan_segment(seq, start)?;
            if seq == spool.tail_segment {
                spool.tail_size = size;
            }
        }
        Ok(spool)
    }

    /// Reads the frames of a segment from `start`, truncating at the first bad one.
    /// Returns the segment's (possibly truncated) size.
    fn scan_segment(&mut self, seq: u64, start: u64) -> Result<u64, SpoolError> {
        let path = segment_path(&self.dir, seq);
        let mut data = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(io_err(&path))?;
        let mut offset = start.min(data.len() as u64);
        loop {
            match read_frame(&data, offset) {
                Frame::Entry { entry, bytes } => {
                    self.pending.push_back(Pending {
                        segment: seq,
                        offset,
                        bytes,
                        events: entry.events,
                    });
                    self.pending_bytes += bytes;
                    self.pending_events += entry.events;
                    offset += bytes;
                }
                Frame::End => return Ok(offset),
                Frame::Bad => {
                    self.stats.torn += 1;
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(offset))
                        .map_err(io_err(&path))?;
                    return Ok(offset);
                }
            }
        }
    }

    pub fn stats(&self) -> SpoolStats {
        self.stats
    }

    /// Batches waiting to be acknowledged.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Edge occurrences waiting to be acknowledged.
    pub fn pending_events(&self) -> u64 {
        self.pending_events
    }

    /// Appends a batch, making room according to the spool's policy.
    pub fn append(&mut self, entry: &SpoolEntry) -> Result<Appended, SpoolError> {
        let payload = rmp_serde::to_vec_named(entry)?;
        let bytes = FRAME_HEADER + payload.len() as u64;
        let mut appended = Appended::default();
        if bytes > self.max_bytes {
            return Ok(appended);
        }
        while self.pending_bytes + bytes > self.max_bytes {
            match self.when_full {
                WhenFull::DropNewest => return Ok(appended),
                WhenFull::DropOldest => {
                    let Some(evicted) = self.drop_head()? else {
                        break;
                    };
                    appended.evicted_events += evicted;
                    appended.evicted_batches += 1;
                }
            }
        }
        if self.tail.is_none() || self.tail_size >= SEGMENT_BYTES {
            if self.tail_size >= SEGMENT_BYTES || (self.tail.is_none() && self.tail_size > 0) {
                self.tail_segment += 1;
                self.tail_size = 0;
            }
            let path = segment_path(&self.dir, self.tail_segment);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            self.tail = Some(file);
        }
        let path = segment_path(&self.dir, self.tail_segment);
        let mut frame = Vec::with_capacity(bytes as usize);
        frame.extend_from_slice(&MAGIC.to_le_bytes());
        frame.extend_from_slice(
            &u32::try_from(payload.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        if let Some(file) = self.tail.as_mut() {
            file.write_all(&frame)
                .and_then(|()| file.sync_data())
                .map_err(io_err(&path))?;
        }
        self.pending.push_back(Pending {
            segment: self.tail_segment,
            offset: self.tail_size,
            bytes,
            events: entry.events,
        });
        self.tail_size += bytes;
        self.pending_bytes += bytes;
        self.pending_events += entry.events;
        appended.stored = true;
        Ok(appended)
    }

    /// The oldest batch not yet acknowledged.
    pub fn peek(&self) -> Result<Option<SpoolEntry>, SpoolError> {
        let Some(first) = self.pending.front() else {
            return Ok(None);
        };
        let path = segment_path(&self.dir, first.segment);
        let mut file = File::open(&path).map_err(io_err(&path))?;
        file.seek(SeekFrom::Start(first.offset))
            .map_err(io_err(&path))?;
        let mut data = vec![0; usize::try_from(first.bytes).unwrap_or(0)];
        file.read_exact(&mut data).map_err(io_err(&path))?;
        match read_frame(&data, 0) {
            Frame::Entry { entry, .. } => Ok(Some(entry)),
            Frame::End | Frame::Bad => Err(SpoolError::Io {
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, "spooled frame changed on disk"),
            }),
        }
    }

    /// The oldest batch was delivered (or given up on): forget it.
    pub fn ack(&mut self) -> Result<(), SpoolError> {
        self.drop_head().map(|_| ())
    }

    /// Removes the oldest batch; returns its events.
    fn drop_head(&mut self) -> Result<Option<u64>, SpoolError> {
        let Some(first) = self.pending.pop_front() else {
            return Ok(None);
        };
        self.pending_bytes -= first.bytes;
        self.pending_events -= first.events;
        let (segment, offset) = match self.pending.front() {
            Some(next) => (next.segment, next.offset),
            None => (self.tail_segment, self.tail_size),
        };
        write_head(&self.dir, segment, offset).map_err(io_err(&self.dir))?;
        // Segments before the head are done.
        for seq in first.segment..segment {
            let path = segment_path(&self.dir, seq);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Ok(Some(first.events))
    }
}

enum Frame {
    Entry {
        entry: SpoolEntry,
        bytes: u64,
    },
    /// No more data.
    End,
    /// Cut short or corrupt.
    Bad,
}

fn read_frame(data: &[u8], offset: u64) -> Frame {
    let Ok(at) = usize::try_from(offset) else {
        return Frame::Bad;
    };
    let rest = &data[at.min(data.len())..];
    if rest.is_empty() {
        return Frame::End;
    }
    if rest.len() < FRAME_HEADER as usize {
        return Frame::Bad;
    }
    let word = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
    let (magic, len, crc) = (word(0), word(4) as usize, word(8));
    let Some(payload) = rest.get(FRAME_HEADER as usize..FRAME_HEADER as usize + len) else {
        return Frame::Bad;
    };
    if magic != MAGIC || crc32fast::hash(payload) != crc {
        return Frame::Bad;
    }
    match rmp_serde::from_slice::<SpoolEntry>(payload) {
        Ok(entry) => Frame::Entry {
            entry,
            bytes: FRAME_HEADER + len as u64,
        },
        Err(_) => Frame::Bad,
    }
}

const HEAD: &str = "head";

/// (segment, offset) of the first unacknowledged frame; (0, 0) for a new spool.
fn read_head(dir: &Path) -> io::Result<(u64, u64)> {
    match fs::read_to_string(dir.join(HEAD)) {
        Ok(text) => {
            let mut parts = text.split_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next()) {
                (Some(Ok(segment)), Some(Ok(offset))) => Ok((segment, offset)),
                // A head file that cannot be read would lose track of acknowledgements;
                // starting over resends (the backend drops duplicate batch ids).
                _ => Ok((0, 0)),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((0, 0)),
        Err(e) => Err(e),
    }
}

/// Writes the head atomically: a new file, synced, renamed over the old one.
fn write_head(dir: &Path, segment: u64, offset: u64) -> io::Result<()> {
    let tmp = dir.join("head.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(format!("{segment} {offset}\n").as_bytes())?;
    file.sync_data()?;
    fs::rename(&tmp, dir.join(HEAD))
}

#[cfg(test)]
mod tests;
