//! The order of records and the coalescing of the two streams.
//!
//! A stream is sorted by (workloadId, timestamp, kind) and then by the record's canonical
//! bytes, which makes the order total: the same records give the same file whatever order
//! they were read in, and exact duplicates end up side by side. The coalesced file is the
//! stable merge of the two sorted streams by (workloadId, timestamp, kind): neither
//! stream's records change their relative order, and on equal keys the EntryTrace record
//! comes first.

use std::{cmp::Ordering, io};

use super::{canonical::write_string, time::Instant, Stream};

/// A record as the sort sees it, borrowed from wherever it is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rec<'a> {
    pub workload: &'a [u8],
    pub instant: Instant,
    /// `edgeType`, else `eventType`.
    pub kind: &'a [u8],
    /// `imageDigest`, when it is a string.
    pub digest: Option<&'a [u8]>,
    /// The record's canonical JSON.
    pub line: &'a [u8],
}

impl Rec<'_> {
    /// The coalescing key: the streams' order without its last tie-break.
    pub fn key_cmp(&self, other: &Rec<'_>) -> Ordering {
        self.workload
            .cmp(other.workload)
            .then(self.instant.cmp(&other.instant))
            .then(self.kind.cmp(other.kind))
    }

    /// The streams' order: the key, then the canonical bytes.
    pub fn stream_cmp(&self, other: &Rec<'_>) -> Ordering {
        self.key_cmp(other).then_with(|| self.line.cmp(other.line))
    }
}

/// Records in order, one at a time.
pub trait Source {
    fn head(&self) -> Option<Rec<'_>>;
    fn advance(&mut self) -> io::Result<()>;
}

/// Merges two sorted streams, stably: calls `emit` for every record of both, in
/// coalesced order. Only ever taking the head of one of them is what keeps each stream's
/// order; on equal keys the EntryTrace record goes first.
pub fn coalesce<E, R, X>(
    entrytrace: &mut E,
    runtime: &mut R,
    mut emit: impl FnMut(Stream, Rec<'_>) -> Result<(), X>,
) -> Result<(), X>
where
    E: Source + ?Sized,
    R: Source + ?Sized,
    X: From<io::Error>,
{
    loop {
        let (which, rec) = match (entrytrace.head(), runtime.head()) {
            (None, None) => return Ok(()),
            (Some(e), None) => (Stream::EntryTrace, e),
            (None, Some(r)) => (Stream::Runtime, r),
            (Some(e), Some(r)) => {
                if e.key_cmp(&r) == Ordering::Greater {
                    (Stream::Runtime, r)
                } else {
                    (Stream::EntryTrace, e)
                }
            }
        };
        emit(which, rec)?;
        match which {
            Stream::EntryTrace => entrytrace.advance()?,
            Stream::Runtime => runtime.advance()?,
        }
    }
}

/// A line of the coalesced file (without its newline): the record wrapped with where it
/// came from and its join key,
/// `{"imageDigest":…,"line":N,"record":{…},"source":"runtime","workloadId":"…"}`.
/// The members are written in canonical order and the record is already canonical, so the
/// line is canonical JSON.
pub fn coalesced_line(stream: Stream, line_number: u64, rec: &Rec<'_>, out: &mut Vec<u8>) {
    let mut tail = Vec::new();
    coalesced_parts(stream, line_number, rec, out, &mut tail);
    out.extend_from_slice(rec.line);
    out.extend_from_slice(&tail);
}

/// The coalesced line without the record: what goes before it and what after.
pub fn coalesced_parts(
    stream: Stream,
    line_number: u64,
    rec: &Rec<'_>,
    head: &mut Vec<u8>,
    tail: &mut Vec<u8>,
) {
    head.extend_from_slice(b"{\"imageDigest\":");
    match rec.digest {
        Some(digest) => write_string(&String::from_utf8_lossy(digest), head),
        None => head.extend_from_slice(b"null"),
    }
    head.extend_from_slice(b",\"line\":");
    head.extend_from_slice(itoa::Buffer::new().format(line_number).as_bytes());
    head.extend_from_slice(b",\"record\":");
    tail.extend_from_slice(b",\"source\":\"");
    tail.extend_from_slice(stream.name().as_bytes());
    tail.extend_from_slice(b"\",\"workloadId\":");
    write_string(&String::from_utf8_lossy(rec.workload), tail);
    tail.push(b'}');
}

/// A record held in owned buffers that are reused from one record to the next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub workload: Vec<u8>,
    pub instant: Instant,
    pub kind: Vec<u8>,
    pub digest: Option<Vec<u8>>,
    pub line: Vec<u8>,
}

impl Slot {
    pub fn rec(&self) -> Rec<'_> {
        Rec {
            workload: &self.workload,
            instant: self.instant,
            kind: &self.kind,
            digest: self.digest.as_deref(),
            line: &self.line,
        }
    }

    pub fn set(&mut self, rec: &Rec<'_>) {
        fn copy(to: &mut Vec<u8>, from: &[u8]) {
            to.clear();
            to.extend_from_slice(from);
        }
        copy(&mut self.workload, rec.workload);
        self.instant = rec.instant;
        copy(&mut self.kind, rec.kind);
        match (rec.digest, &mut self.digest) {
            (Some(from), Some(to)) => copy(to, from),
            (Some(from), to) => *to = Some(from.to_vec()),
            (None, to) => *to = None,
        }
        copy(&mut self.line, rec.line);
    }
}

/// Records held in memory, already in order (tests, and small inputs).
pub struct VecSource {
    records: Vec<Slot>,
    next: usize,
}

impl VecSource {
    pub fn new(records: Vec<Slot>) -> Self {
        VecSource { records, next: 0 }
    }
}

impl Source for VecSource {
    fn head(&self) -> Option<Rec<'_>> {
        self.records.get(self.next).map(Slot::rec)
    }

    fn advance(&mut self) -> io::Result<()> {
        self.next += 1;
        Ok(())
    }
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
