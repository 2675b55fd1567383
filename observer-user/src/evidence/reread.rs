//! Reading a bundle back for verification: both streams in coalesced order, each line
//! checked as it goes (valid, canonical, in order, inside the filters, of the manifest's
//! deployment), and the coalesced file compared line for line with the merge they give —
//! one pass over the three files.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, BufRead as _, BufReader, Read as _},
    path::Path,
};

use sha2::Digest as _;
use zastava_platform::deployment::Deployment;

use super::{
    deployment, hex,
    identity::Identity,
    input::{self, Filters, Hashing, MAX_CANONICAL_LINE},
    merge::{coalesce, coalesced_line, Rec, Slot, Source},
    problems::Problems,
    time, Stream, COALESCED,
};

/// One stream file read back in order, checking each line as it goes.
struct StreamReader<'a> {
    stream: Stream,
    input: BufReader<Hashing<File>>,
    filters: &'a Filters,
    /// The manifest's deployment, which every observer record naming one must name.
    deployment: &'a Deployment,
    line_number: u64,
    buf: Vec<u8>,
    slot: Slot,
    previous: Slot,
    has_head: bool,
    records: u64,
    first: Option<time::Instant>,
    last: Option<time::Instant>,
    identity: Identity,
    problems: Problems,
}

impl<'a> StreamReader<'a> {
    fn open(
        dir: &Path,
        stream: Stream,
        filters: &'a Filters,
        deployment: &'a Deployment,
    ) -> io::Result<StreamReader<'a>> {
        let file = File::open(dir.join(stream.file_name()))?;
        let mut reader = StreamReader {
            stream,
            input: BufReader::with_capacity(1 << 20, Hashing::new(file)),
            filters,
            deployment,
            line_number: 0,
            buf: Vec::new(),
            slot: Slot::default(),
            previous: Slot::default(),
            has_head: false,
            records: 0,
            first: None,
            last: None,
            identity: Identity::default(),
            problems: Problems::default(),
        };
        reader.advance()?;
        Ok(reader)
    }

    /// Reads lines until one is a valid record (the head) or the file ends.
    fn read_next(&mut self) -> io::Result<bool> {
        let name = self.stream.file_name();
        loop {
            self.buf.clear();
            let n = (&mut self.input)
                .take(MAX_CANONICAL_LINE as u64 + 1)
                .read_until(b'\n', &mut self.buf)?;
            if n == 0 {
                return Ok(false);
            }
            self.line_number += 1;
            let at = Some(self.line_number);
            if self.buf.last() == Some(&b'\n') {
                self.buf.pop();
            } else if self.buf.len() > MAX_CANONICAL_LINE {
                input::skip_line(&mut self.input)?;
                self.problems.add(name, at, "line too long");
                continue;
            } else {
                self.problems.add(name, at, "the last line has no newline");
            }
            let record = match input::check(self.stream, &self.buf) {
                Ok(record) => record,
                Err(reason) => {
                    self.problems.add(name, at, reason);
                    continue;
                }
            };
            if record.json.to_bytes() != self.buf {
                self.problems.add(
                    name,
                    at,
                    "not canonical JSON (RFC 8785): the line was changed",
                );
            }
            if !self.filters.admits(&record) {
                self.problems
                    .add(name, at, "a record the manifest's filters exclude");
            }
            if let Some(theirs) = &record.deployment {
                if theirs != self.deployment {
                    self.problems.add(
                        name,
                        at,
                        format!(
                            "deployment {} is not the manifest's ({})",
                            deployment::describe(theirs),
                            deployment::describe(self.deployment)
                        ),
                    );
                }
            }
            self.identity.add(self.stream, &record);
            self.records += 1;
            self.first = Some(self.first.map_or(record.instant, |f| f.min(record.instant)));
            self.last = Some(self.last.map_or(record.instant, |l| l.max(record.instant)));
            std::mem::swap(&mut self.slot, &mut self.previous);
            let slot = &mut self.slot;
            slot.workload.clear();
            slot.workload
                .extend_from_slice(record.workload().as_bytes());
            slot.instant = record.instant;
            slot.kind.clear();
            slot.kind.extend_from_slice(record.kind().as_bytes());
            slot.digest = record.image_digest().map(|d| d.as_bytes().to_vec());
            drop(record);
            std::mem::swap(&mut self.slot.line, &mut self.buf);
            if self.records > 1 {
                match self.previous.rec().stream_cmp(&self.slot.rec()) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => self.problems.add(
                        name,
                        at,
                        "repeats the record before it (export drops duplicates)",
                    ),
                    std::cmp::Ordering::Greater => self.problems.add(
                        name,
                        at,
                        "out of order: records sort by (workloadId, timestamp, edgeType or \
                         eventType, canonical bytes); this one belongs before the one above",
                    ),
                }
            }
            return Ok(true);
        }
    }
}

impl Source for StreamReader<'_> {
    fn head(&self) -> Option<Rec<'_>> {
        self.has_head.then(|| self.slot.rec())
    }

    fn advance(&mut self) -> io::Result<()> {
        self.has_head = self.read_next()?;
        Ok(())
    }
}

/// What one pass over the three files found.
pub struct Content {
    pub sha256: BTreeMap<&'static str, (String, u64)>,
    pub records: BTreeMap<Stream, (u64, Option<time::Instant>, Option<time::Instant>)>,
    pub coalesced_records: u64,
    pub identity: Identity,
}

/// Reads both streams in coalesced order and the coalesced file beside them, comparing
/// each coalesced line with the one the merge gives.
pub fn check_content(
    dir: &Path,
    filters: &Filters,
    deployment: &Deployment,
    problems: &mut Problems,
) -> io::Result<Content> {
    let mut entrytrace = StreamReader::open(dir, Stream::EntryTrace, filters, deployment)?;
    let mut runtime = StreamReader::open(dir, Stream::Runtime, filters, deployment)?;
    let mut coalesced =
        BufReader::with_capacity(1 << 20, Hashing::new(File::open(dir.join(COALESCED))?));
    let mut counts = [0u64; 2];
    let mut line_number = 0u64;
    let mut expected = Vec::new();
    let mut found = Vec::new();
    let mut differing = 0u64;
    coalesce(&mut entrytrace, &mut runtime, |stream, rec| {
        let count = &mut counts[usize::from(stream == Stream::Runtime)];
        *count += 1;
        expected.clear();
        coalesced_line(stream, *count, &rec, &mut expected);
        expected.push(b'\n');
        found.clear();
        // No more than the expected line: a longer one differs, and its rest is passed over.
        (&mut coalesced)
            .take(expected.len() as u64)
            .read_until(b'\n', &mut found)?;
        if found.last() != Some(&b'\n') && found.len() == expected.len() {
            input::skip_line(&mut coalesced)?;
        }
        line_number += 1;
        if found != expected {
            differing += 1;
            if differing == 1 {
                let what = if found.is_empty() {
                    "missing: the file ends early".to_owned()
                } else {
                    "differs".to_owned()
                };
                problems.add(
                    COALESCED,
                    Some(line_number),
                    format!(
                        "{what}; the stable merge of the streams puts here the {stream} record of \
                         {} line {}",
                        stream.file_name(),
                        count
                    ),
                );
            }
        }
        Ok::<(), io::Error>(())
    })?;
    if differing > 1 {
        problems.add(
            COALESCED,
            None,
            format!(
                "{} more lines differ from the stable merge of the streams",
                differing - 1
            ),
        );
    }
    let mut extra = 0u64;
    while !coalesced.fill_buf()?.is_empty() {
        input::skip_line(&mut coalesced)?;
        extra += 1;
    }
    if extra > 0 {
        problems.add(
            COALESCED,
            Some(line_number + 1),
            format!("{extra} lines more than the streams' records"),
        );
    }
    let mut content = Content {
        sha256: BTreeMap::new(),
        records: BTreeMap::new(),
        coalesced_records: line_number + extra,
        identity: Identity::default(),
    };
    let coalesced = coalesced.into_inner();
    content.sha256.insert(
        COALESCED,
        (hex(&coalesced.hasher.finalize()), coalesced.bytes),
    );
    for reader in [entrytrace, runtime] {
        // Anything after the last record was read by `advance` already; the hash is whole.
        let file = reader.stream.file_name();
        let hashing = reader.input.into_inner();
        content
            .sha256
            .insert(file, (hex(&hashing.hasher.finalize()), hashing.bytes));
        content
            .records
            .insert(reader.stream, (reader.records, reader.first, reader.last));
        content.identity.merge(reader.identity);
        for problem in reader.problems.finish() {
            problems.add(&problem.file, problem.line, problem.message);
        }
    }
    Ok(content)
}
