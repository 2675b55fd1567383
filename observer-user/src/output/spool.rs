//! The disk spool: every closed batch is appended here before it is sent, and stays until
//! every sink (the HTTPS backend, NATS JetStream, Redis Streams) has settled it — delivered
//! it, or given up on it for good. It survives restarts and SIGKILL; each sink reads the
//! batches in the order they were written, with a cursor of its own, so a slow or dead
//! sink holds back no other.
//!
//! Layout: `segment-<seq>.spool` files of framed records; a `head` file naming the first
//! record some sink has not settled; and a `cursor-<sink>` file per sink naming the first
//! record that sink has not settled, followed by the records before it that the sink gave
//! up on (so a restart still knows they were not delivered everywhere). A frame is
//! `magic u32 | length u32 | crc32 u32 | payload` (little endian); the payload is an
//! rmp-serde [`SpoolEntry`]. Appends are flushed to disk (`fdatasync`) before they count as
//! spooled; a cursor is written (atomically) before the head moves, so on disk the head is
//! never past a cursor. A frame cut short by a crash, or whose checksum does not match,
//! ends its segment: it is truncated away and counted, never fatal.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use tracing::{info, warn};
use zastava_platform::config::bytes;

use cursor::Cursor;
pub use frame::SpoolEntry;
use frame::{read_frame, read_head, write_head, Frame, FRAME_HEADER};
use reserve::Reserve;

mod cursor;
mod frame;
mod open;
mod reserve;

/// A new segment starts when the current one reaches this size.
const SEGMENT_BYTES: u64 = 8 << 20;

/// A place in the spool: (segment, offset) of a frame, or the end.
type Position = (u64, u64);

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
    /// Position in the order of appends (in memory only; counted from 0 at every open).
    seq: u64,
    segment: u64,
    offset: u64,
    /// Frame size on disk.
    bytes: u64,
    events: u64,
}

impl Pending {
    fn position(&self) -> Position {
        (self.segment, self.offset)
    }
}

/// What happened to an append.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// The batch is spooled.
    pub stored: bool,
    /// Events of older batches evicted to make room (drop-oldest).
    pub evicted_events: u64,
    pub evicted_batches: u64,
    /// Of `evicted_events`, those in batches some sink had given up on (dead-lettered).
    pub evicted_given_up: u64,
    /// Per sink, in the order given to [`Spool::open`]: events evicted before that sink
    /// settled them.
    pub evicted_unsettled: Vec<u64>,
}

/// What settling a batch for one sink did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// The batch was evicted while the sink was sending it: it was already counted as
    /// evicted for this sink, and nothing changed.
    pub stale: bool,
    /// Every sink has settled the batch now, so it left the spool.
    pub released: bool,
    /// Some sink gave up on the batch (only meaningful when released).
    pub given_up: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Frames found cut short or corrupt on open (truncated away).
    pub torn: u64,
    /// Batches every sink had settled before the last run ended, found still spooled on
    /// open (a crash between a sink's acknowledgement and the head's update) and removed.
    pub settled_on_open: u64,
}

/// The durable queue every sink reads with a cursor of its own; see the module docs.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    when_full: WhenFull,
    pending: VecDeque<Pending>,
    /// The sequence number the next append gets.
    next_seq: u64,
    pending_bytes: u64,
    pending_events: u64,
    cursors: Vec<Cursor>,
    /// The segment being appended to, and its size.
    tail_segment: u64,
    tail_size: u64,
    tail: Option<File>,
    /// Room kept for cursor and head updates on a full filesystem.
    reserve: Reserve,
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
    pub fn stats(&self) -> SpoolStats {
        self.stats
    }

    /// Batches in the spool (waiting for at least one sink).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Edge occurrences in the spool.
    pub fn pending_events(&self) -> u64 {
        self.pending_events
    }

    /// The sinks, in the order given to [`Spool::open`].
    pub fn sinks(&self) -> impl Iterator<Item = &str> {
        self.cursors.iter().map(|c| c.name.as_str())
    }

    /// Batches and events sink `sink` has not settled yet.
    pub fn pending_for(&self, sink: usize) -> (u64, u64) {
        self.cursors
            .get(sink)
            .map_or((0, 0), |c| (c.pending_batches, c.pending_events))
    }

    /// Events of batches still spooled that sink `sink` settled in an earlier run:
    /// (delivered, given up).
    pub fn recovered(&self, sink: usize) -> (u64, u64) {
        self.cursors
            .get(sink)
            .map_or((0, 0), |c| (c.recovered_delivered, c.recovered_given_up))
    }

    /// Appends a batch, making room according to the spool's policy.
    pub fn append(&mut self, entry: &SpoolEntry) -> Result<Appended, SpoolError> {
        let payload = rmp_serde::to_vec_named(entry)?;
        let bytes = FRAME_HEADER + payload.len() as u64;
        let mut appended = Appended {
            evicted_unsettled: vec![0; self.cursors.len()],
            ..Appended::default()
        };
        if bytes > self.max_bytes {
            return Ok(appended);
        }
        // Without its reserve the spool could not record deliveries on a full disk: the
        // batch is refused rather than taking that room.
        if !self.reserve.held() {
            if let Err(err) = self.reserve.take() {
                if reserve::is_full(&err) {
                    return Err(io_err(&self.dir)(err));
                }
            }
        }
        if self.when_full == WhenFull::DropNewest && self.pending_bytes + bytes > self.max_bytes {
            return Ok(appended);
        }
        // Older batches are evicted only once the new one is written: a write that fails
        // leaves the spool (and so the account) exactly as it was.
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
        let frame = frame::encode(&payload);
        if let Some(file) = self.tail.as_mut() {
            if let Err(err) = file.write_all(&frame).and_then(|()| file.sync_data()) {
                // A frame written in part would sit where the next one is expected: cut
                // it off (which also gives its space back), or start a new segment.
                if file.set_len(self.tail_size).is_err() {
                    self.tail = None;
                    self.tail_segment += 1;
                    self.tail_size = 0;
                }
                return Err(io_err(&path)(err));
            }
        }
        self.pending.push_back(Pending {
            seq: self.next_seq,
            segment: self.tail_segment,
            offset: self.tail_size,
            bytes,
            events: entry.events,
        });
        self.next_seq += 1;
        self.tail_size += bytes;
        self.pending_bytes += bytes;
        self.pending_events += entry.events;
        for cursor in &mut self.cursors {
            cursor.pending_events += entry.events;
            cursor.pending_batches += 1;
        }
        while self.pending_bytes > self.max_bytes && self.pending.len() > 1 {
            if !self.evict_head(&mut appended)? {
                break;
            }
        }
        appended.stored = true;
        Ok(appended)
    }

    /// The oldest batch sink `sink` has not settled, with its sequence number (for
    /// [`Spool::settle`]).
    pub fn peek(&self, sink: usize) -> Result<Option<(u64, SpoolEntry)>, SpoolError> {
        let (Some(cursor), Some(front)) = (self.cursors.get(sink), self.pending.front()) else {
            return Ok(None);
        };
        let index = usize::try_from(cursor.next.saturating_sub(front.seq)).unwrap_or(usize::MAX);
        let Some(at) = self.pending.get(index) else {
            return Ok(None);
        };
        let path = segment_path(&self.dir, at.segment);
        let mut file = File::open(&path).map_err(io_err(&path))?;
        file.seek(SeekFrom::Start(at.offset))
            .map_err(io_err(&path))?;
        let mut data = vec![0; usize::try_from(at.bytes).unwrap_or(0)];
        file.read_exact(&mut data).map_err(io_err(&path))?;
        match read_frame(&data, 0) {
            Frame::Entry { entry, .. } => Ok(Some((at.seq, entry))),
            Frame::End | Frame::Bad => Err(SpoolError::Io {
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, "spooled frame changed on disk"),
            }),
        }
    }

    /// Sink `sink` is done with batch `seq`: delivered, or given up on. Its cursor moves
    /// past it (durably); once every sink has settled a batch, it leaves the spool.
    pub fn settle(
        &mut self,
        sink: usize,
        seq: u64,
        delivered: bool,
    ) -> Result<Settled, SpoolError> {
        let Some(front_seq) = self.pending.front().map(|p| p.seq) else {
            return Ok(Settled {
                stale: true,
                ..Settled::default()
            });
        };
        let index = usize::try_from(seq.saturating_sub(front_seq)).unwrap_or(usize::MAX);
        let (Some(cursor), Some(entry)) = (self.cursors.get_mut(sink), self.pending.get(index))
        else {
            return Ok(Settled {
                stale: true,
                ..Settled::default()
            });
        };
        if cursor.next != seq || seq < front_seq {
            return Ok(Settled {
                stale: true,
                ..Settled::default()
            });
        }
        let events = entry.events;
        // Saved first: the cursor moves (in memory, and in the account) only once it is
        // durable, so a failed write leaves everything as it was and the batch is resent.
        let next_at = self
            .pending
            .get(index + 1)
            .map_or((self.tail_segment, self.tail_size), Pending::position);
        let mut given_up: Vec<Position> = cursor
            .given_up
            .iter()
            .filter_map(|&s| {
                let i = usize::try_from(s.checked_sub(front_seq)?).ok()?;
                self.pending.get(i).map(Pending::position)
            })
            .collect();
        if !delivered {
            given_up.push(entry.position());
        }
        let (dir, name) = (&self.dir, &cursor.name);
        self.reserve
            .write_with(|| cursor::write(dir, name, next_at, &given_up))
            .map_err(io_err(&self.dir))?;
        cursor.next = seq + 1;
        cursor.pending_events -= events;
        cursor.pending_batches -= 1;
        if !delivered {
            cursor.given_up.insert(seq);
        }
        let mut settled = Settled::default();
        // Only the oldest batch can leave, and only when this sink was the last to settle it.
        if seq == front_seq && self.cursors.iter().all(|c| c.next > seq) {
            if let Some((_, given_up)) = self.pop_front() {
                settled.released = true;
                settled.given_up = given_up;
            }
        }
        Ok(settled)
    }

    /// Evicts the oldest batch to make room, counting it for every sink that had not
    /// settled it. False when there is nothing to evict.
    fn evict_head(&mut self, appended: &mut Appended) -> Result<bool, SpoolError> {
        let Some(front) = self.pending.front().cloned() else {
            return Ok(false);
        };
        for (cursor, evicted) in self
            .cursors
            .iter_mut()
            .zip(appended.evicted_unsettled.iter_mut())
        {
            if cursor.next <= front.seq {
                cursor.next = front.seq + 1;
                cursor.pending_events -= front.events;
                cursor.pending_batches -= 1;
                *evicted += front.events;
            }
        }
        let given_up = self.pop_front().is_some_and(|(_, given_up)| given_up);
        appended.evicted_events += front.events;
        appended.evicted_batches += 1;
        if given_up {
            appended.evicted_given_up += front.events;
        }
        Ok(true)
    }

    /// Removes the oldest batch and moves the head past it; returns it and whether some
    /// sink had given up on it. A head or segment that cannot be updated on disk is only
    /// warned about: a head left behind is safe (on open, batches every cursor passed are
    /// removed), and so is a segment left over.
    fn pop_front(&mut self) -> Option<(Pending, bool)> {
        let first = self.pending.pop_front()?;
        self.pending_bytes -= first.bytes;
        self.pending_events -= first.events;
        let mut given_up = false;
        for cursor in &mut self.cursors {
            given_up |= cursor.given_up.remove(&first.seq);
        }
        if self.pending.is_empty() && self.tail_size > 0 {
            // Nothing is left to send: the next batch starts a new segment, so the whole
            // tail can go now rather than once it has grown to a full segment — on a
            // small or full disk that is the space new batches need.
            self.tail = None;
            self.tail_segment += 1;
            self.tail_size = 0;
        }
        let (segment, offset) = self
            .pending
            .front()
            .map_or((self.tail_segment, self.tail_size), Pending::position);
        let dir = &self.dir;
        if let Err(err) = self.reserve.write_with(|| write_head(dir, segment, offset)) {
            warn!("spool {}: cannot move the head: {err}", self.dir.display());
            return Some((first, given_up));
        }
        // Segments before the head are done.
        let mut freed = false;
        for seq in first.segment..segment {
            let path = segment_path(&self.dir, seq);
            match fs::remove_file(&path) {
                Ok(()) => freed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!("cannot remove {}: {e}", path.display()),
            }
        }
        if freed && !self.reserve.held() && self.reserve.take().is_ok() {
            info!(
                "spool {}: space is back; new batches are spooled again",
                self.dir.display()
            );
        }
        Some((first, given_up))
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cursors;
#[cfg(test)]
mod tests_full;
