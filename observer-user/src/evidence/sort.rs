//! Sorting a stream within a memory budget: records collect in memory until the budget is
//! reached, then leave sorted to a run file; at the end the runs and what is still in
//! memory are merged (an external merge sort), and exact duplicates — adjacent by then —
//! are dropped and counted.

use std::{
    fs::File,
    io::{self, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use super::{
    merge::{Rec, Slot, Source},
    time::Instant,
};

/// At most this many runs are merged at once (each holds a read buffer and a descriptor);
/// more are merged in rounds.
pub const FAN_IN: usize = 64;
const READ_BUFFER: usize = 128 << 10;
const WRITE_BUFFER: usize = 1 << 20;
/// `digest` length meaning "no digest".
const NO_DIGEST: u32 = u32::MAX;

/// A record in memory: where its bytes are in the arena (workload, kind, digest, line).
#[derive(Clone, Copy)]
struct Entry {
    instant: Instant,
    offset: usize,
    workload: u32,
    kind: u32,
    digest: u32,
    line: u32,
}

impl Entry {
    fn rec<'a>(&self, arena: &'a [u8]) -> Rec<'a> {
        let mut at = self.offset;
        let mut take = |len: u32| {
            let part = &arena[at..at + len as usize];
            at += len as usize;
            part
        };
        let workload = take(self.workload);
        let kind = take(self.kind);
        let digest = (self.digest != NO_DIGEST).then(|| take(self.digest));
        let line = take(self.line);
        Rec {
            workload,
            instant: self.instant,
            kind,
            digest,
            line,
        }
    }
}

/// Records of one stream on their way to sorted order.
pub struct Sorter {
    arena: Vec<u8>,
    entries: Vec<Entry>,
    arena_limit: usize,
    entry_limit: usize,
    dir: PathBuf,
    tag: &'static str,
    runs: Vec<PathBuf>,
    /// Duplicates dropped while merging runs in rounds.
    carried_duplicates: u64,
}

impl Sorter {
    /// A sorter holding at most about `budget` bytes in memory, spilling runs to `dir`.
    pub fn new(dir: &Path, tag: &'static str, budget: usize) -> Sorter {
        let budget = budget.max(1 << 10);
        let arena_limit = budget / 4 * 3;
        let entry_limit = (budget / 4 / size_of::<Entry>()).max(1);
        Sorter {
            arena: Vec::new(),
            entries: Vec::new(),
            arena_limit,
            entry_limit,
            dir: dir.to_owned(),
            tag,
            runs: Vec::new(),
            carried_duplicates: 0,
        }
    }

    /// Run files written so far.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Bytes of records held in memory now.
    pub fn used(&self) -> usize {
        self.arena.len() + self.entries.len() * size_of::<Entry>()
    }

    /// Bytes reserved in memory now.
    pub fn resident(&self) -> usize {
        self.arena.capacity() + self.entries.capacity() * size_of::<Entry>()
    }

    /// Adds a record; `line` is its canonical JSON.
    pub fn push(&mut self, rec: &Rec<'_>) -> io::Result<()> {
        self.push_with(rec, rec.line.len(), |arena| {
            arena.extend_from_slice(rec.line)
        })
    }

    /// Adds a record whose canonical JSON, at most `max_line` bytes, `write_line` appends
    /// straight into memory; `rec.line` is not used.
    pub fn push_with(
        &mut self,
        rec: &Rec<'_>,
        max_line: usize,
        write_line: impl FnOnce(&mut Vec<u8>),
    ) -> io::Result<()> {
        let size =
            rec.workload.len() + rec.kind.len() + rec.digest.map_or(0, <[u8]>::len) + max_line;
        if !self.entries.is_empty()
            && (self.arena.len() + size > self.arena_limit
                || self.entries.len() >= self.entry_limit)
        {
            self.spill()?;
        }
        if self.arena.capacity() == 0 {
            // Reserved once: growing by doubling would overshoot the budget.
            self.arena.reserve_exact(self.arena_limit.max(size));
            self.entries.reserve_exact(self.entry_limit);
        }
        let length = |n: usize| u32::try_from(n).map_err(|_| io::Error::other("record too long"));
        let offset = self.arena.len();
        let digest = match rec.digest {
            Some(d) if d.len() < NO_DIGEST as usize => length(d.len())?,
            Some(_) => return Err(io::Error::other("digest too long")),
            None => NO_DIGEST,
        };
        self.arena.extend_from_slice(rec.workload);
        self.arena.extend_from_slice(rec.kind);
        if let Some(d) = rec.digest {
            self.arena.extend_from_slice(d);
        }
        let line_start = self.arena.len();
        write_line(&mut self.arena);
        let entry = Entry {
            instant: rec.instant,
            offset,
            workload: length(rec.workload.len())?,
            kind: length(rec.kind.len())?,
            digest,
            line: length(self.arena.len() - line_start)?,
        };
        self.entries.push(entry);
        Ok(())
    }

    fn sort(&mut self) {
        let arena = &self.arena;
        self.entries
            .sort_unstable_by(|a, b| a.rec(arena).stream_cmp(&b.rec(arena)));
    }

    /// Writes what is in memory to a new run file.
    fn spill(&mut self) -> io::Result<()> {
        self.sort();
        let path = self
            .dir
            .join(format!("{}-{}.run", self.tag, self.runs.len()));
        let mut out = RunWriter::create(&path)?;
        for entry in &self.entries {
            out.write(&entry.rec(&self.arena))?;
        }
        out.finish()?;
        self.runs.push(path);
        self.arena.clear();
        self.entries.clear();
        Ok(())
    }

    /// Spills what is in memory and frees the memory (the stream has no more input, and
    /// the other stream needs the budget).
    pub fn release(&mut self) -> io::Result<()> {
        if !self.entries.is_empty() {
            self.spill()?;
        }
        self.arena = Vec::new();
        self.entries = Vec::new();
        Ok(())
    }

    /// The stream in order, without duplicates.
    pub fn finish(mut self) -> io::Result<Merger> {
        let mut round = 0;
        while self.runs.len() + usize::from(!self.entries.is_empty()) > FAN_IN {
            // Merge the oldest runs into one, until one merge can take them all.
            let group: Vec<PathBuf> = self.runs.drain(..FAN_IN).collect();
            let mut sources = Vec::with_capacity(group.len());
            for path in &group {
                sources.push(RunSource::File(RunReader::open(path)?));
            }
            let mut merger = Merger::new(sources)?;
            let path = self.dir.join(format!("{}-merged-{round}.run", self.tag));
            round += 1;
            let mut out = RunWriter::create(&path)?;
            while let Some(rec) = merger.head() {
                out.write(&rec)?;
                merger.advance()?;
            }
            out.finish()?;
            let carried = merger.duplicates;
            drop(merger);
            for path in group {
                std::fs::remove_file(path)?;
            }
            self.runs.push(path);
            self.carried_duplicates += carried;
        }
        let mut sources = Vec::with_capacity(self.runs.len() + 1);
        for path in &self.runs {
            sources.push(RunSource::File(RunReader::open(path)?));
        }
        if !self.entries.is_empty() {
            self.sort();
            sources.push(RunSource::Memory {
                arena: std::mem::take(&mut self.arena),
                entries: std::mem::take(&mut self.entries),
                next: 0,
            });
        }
        let mut merger = Merger::new(sources)?;
        merger.duplicates += self.carried_duplicates;
        Ok(merger)
    }
}

/// Writes records as frames: the lengths of workload, kind, digest and line (u32 LE; the
/// digest's is `u32::MAX` when there is none), the instant (i128 LE), then the bytes.
struct RunWriter {
    out: BufWriter<File>,
}

impl RunWriter {
    fn create(path: &Path) -> io::Result<RunWriter> {
        Ok(RunWriter {
            out: BufWriter::with_capacity(WRITE_BUFFER, File::create(path)?),
        })
    }

    fn write(&mut self, rec: &Rec<'_>) -> io::Result<()> {
        let len = |n: usize| u32::try_from(n).map_err(|_| io::Error::other("record too long"));
        let mut head = [0u8; 32];
        head[0..4].copy_from_slice(&len(rec.workload.len())?.to_le_bytes());
        head[4..8].copy_from_slice(&len(rec.kind.len())?.to_le_bytes());
        let digest = match rec.digest {
            Some(d) => len(d.len())?,
            None => NO_DIGEST,
        };
        head[8..12].copy_from_slice(&digest.to_le_bytes());
        head[12..16].copy_from_slice(&len(rec.line.len())?.to_le_bytes());
        head[16..32].copy_from_slice(&rec.instant.to_le_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(rec.workload)?;
        self.out.write_all(rec.kind)?;
        if let Some(d) = rec.digest {
            self.out.write_all(d)?;
        }
        self.out.write_all(rec.line)
    }

    /// Runs are scratch: flushed, not synced.
    fn finish(mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Reads a run file back, one record at a time.
struct RunReader {
    input: BufReader<File>,
    slot: Slot,
    done: bool,
}

impl RunReader {
    fn open(path: &Path) -> io::Result<RunReader> {
        let mut reader = RunReader {
            input: BufReader::with_capacity(READ_BUFFER, File::open(path)?),
            slot: Slot::default(),
            done: false,
        };
        reader.next()?;
        Ok(reader)
    }

    fn next(&mut self) -> io::Result<()> {
        let mut head = [0u8; 32];
        match self.input.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.done = true;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let u32_at =
            |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
        let mut instant = [0u8; 16];
        instant.copy_from_slice(&head[16..32]);
        let slot = &mut self.slot;
        slot.instant = i128::from_le_bytes(instant);
        read_into(&mut self.input, &mut slot.workload, u32_at(0))?;
        read_into(&mut self.input, &mut slot.kind, u32_at(4))?;
        match u32_at(8) {
            NO_DIGEST => slot.digest = None,
            n => read_into(&mut self.input, slot.digest.get_or_insert_with(Vec::new), n)?,
        }
        read_into(&mut self.input, &mut slot.line, u32_at(12))
    }
}

fn read_into(input: &mut impl Read, buf: &mut Vec<u8>, len: u32) -> io::Result<()> {
    buf.resize(len as usize, 0);
    input.read_exact(buf)
}

/// One sorted run: a file, or the records still in memory.
enum RunSource {
    File(RunReader),
    Memory {
        arena: Vec<u8>,
        entries: Vec<Entry>,
        next: usize,
    },
}

impl Source for RunSource {
    fn head(&self) -> Option<Rec<'_>> {
        match self {
            RunSource::File(reader) => (!reader.done).then(|| reader.slot.rec()),
            RunSource::Memory {
                arena,
                entries,
                next,
            } => entries.get(*next).map(|e| e.rec(arena)),
        }
    }

    fn advance(&mut self) -> io::Result<()> {
        match self {
            RunSource::File(reader) => reader.next(),
            RunSource::Memory { next, .. } => {
                *next += 1;
                Ok(())
            }
        }
    }
}

/// The k-way merge of sorted runs, dropping records equal to the one before.
pub struct Merger {
    sources: Vec<RunSource>,
    /// Indices of the sources with records left, as a binary min-heap by their heads.
    heap: Vec<usize>,
    last: Vec<u8>,
    /// Exact duplicates dropped.
    pub duplicates: u64,
}

impl Merger {
    fn new(sources: Vec<RunSource>) -> io::Result<Merger> {
        let heap: Vec<usize> = (0..sources.len())
            .filter(|&i| sources[i].head().is_some())
            .collect();
        let mut merger = Merger {
            sources,
            heap,
            last: Vec::new(),
            duplicates: 0,
        };
        for i in (0..merger.heap.len() / 2).rev() {
            merger.sift_down(i);
        }
        Ok(merger)
    }

    fn less(&self, a: usize, b: usize) -> bool {
        match (self.sources[a].head(), self.sources[b].head()) {
            (Some(x), Some(y)) => x.stream_cmp(&y).is_lt(),
            _ => false,
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut min = i;
            if l < self.heap.len() && self.less(self.heap[l], self.heap[min]) {
                min = l;
            }
            if r < self.heap.len() && self.less(self.heap[r], self.heap[min]) {
                min = r;
            }
            if min == i {
                return;
            }
            self.heap.swap(i, min);
            i = min;
        }
    }

    /// Moves the top source on, keeping the heap.
    fn pop_top(&mut self) -> io::Result<()> {
        let Some(&top) = self.heap.first() else {
            return Ok(());
        };
        self.sources[top].advance()?;
        if self.sources[top].head().is_none() {
            let last = self.heap.len() - 1;
            self.heap.swap(0, last);
            self.heap.pop();
        }
        self.sift_down(0);
        Ok(())
    }
}

impl Source for Merger {
    fn head(&self) -> Option<Rec<'_>> {
        self.heap.first().and_then(|&i| self.sources[i].head())
    }

    fn advance(&mut self) -> io::Result<()> {
        let mut last = std::mem::take(&mut self.last);
        last.clear();
        match self.head() {
            Some(current) => last.extend_from_slice(current.line),
            None => return Ok(()),
        }
        self.last = last;
        self.pop_top()?;
        while self
            .head()
            .is_some_and(|next| next.line == self.last.as_slice())
        {
            self.duplicates += 1;
            self.pop_top()?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "sort_tests.rs"]
mod tests;
