//! Input files: finding them, reading them line by line with their hash, and checking each
//! line is a record of its stream. A line that is not says why, with its file and line.

use std::{
    collections::BTreeSet,
    fs::File,
    io::{self, BufRead as _, BufReader, Read},
    path::PathBuf,
};

use sha2::{Digest as _, Sha256};

use super::{
    canonical::Json,
    hex,
    time::{self, Instant},
    EvidenceError, Stream,
};

/// The longest line accepted; longer ones are invalid (a file that is not NDJSON at all
/// must not be read into memory whole).
pub const MAX_LINE: usize = 16 << 20;

/// One input file of one stream.
#[derive(Clone, Debug)]
pub struct InputFile {
    pub stream: Stream,
    /// As the user gave it (for messages).
    pub path: PathBuf,
    /// The file's name (for the manifest: the same on every machine).
    pub name: String,
}

/// The input files `paths` name: files as given, and every `*.ndjson` file in a directory
/// (not recursively).
pub fn discover(stream: Stream, paths: &[PathBuf]) -> Result<Vec<InputFile>, EvidenceError> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(EvidenceError::io("read", path))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            for entry in std::fs::read_dir(path).map_err(EvidenceError::io("list", path))? {
                let entry = entry.map_err(EvidenceError::io("list", path))?;
                let file = entry.path();
                let is_file = std::fs::metadata(&file).is_ok_and(|m| m.is_file());
                if is_file && file.extension().is_some_and(|e| e == "ndjson") {
                    found.push(file);
                }
            }
            if found.is_empty() {
                return Err(EvidenceError::Refused(format!(
                    "{}: no *.ndjson files in this directory; name the files to export",
                    path.display()
                )));
            }
            found.sort();
            for file in found {
                files.push(input_file(stream, file)?);
            }
        } else {
            files.push(input_file(stream, path.clone())?);
        }
    }
    Ok(files)
}

fn input_file(stream: Stream, path: PathBuf) -> Result<InputFile, EvidenceError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            EvidenceError::Refused(format!(
                "{}: the file name is not UTF-8; rename the file to export it",
                path.display()
            ))
        })?
        .to_owned();
    Ok(InputFile { stream, path, name })
}

/// Which records an export keeps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    /// Records at or after this instant.
    pub since: Option<Instant>,
    /// Records before this instant.
    pub until: Option<Instant>,
    /// Records of these namespaces (all when empty); a record without one is not kept.
    pub namespaces: BTreeSet<String>,
    /// Records of these workloads (all when empty).
    pub workloads: BTreeSet<String>,
}

impl Filters {
    pub fn admits(&self, record: &Record<'_>) -> bool {
        self.since.is_none_or(|since| record.instant >= since)
            && self.until.is_none_or(|until| record.instant < until)
            && (self.namespaces.is_empty()
                || record
                    .json
                    .str_of("namespace")
                    .is_some_and(|ns| self.namespaces.contains(ns)))
            && (self.workloads.is_empty() || self.workloads.contains(record.workload()))
    }
}

/// A line that is a record of its stream.
#[derive(Debug)]
pub struct Record<'a> {
    pub json: Json<'a>,
    pub instant: Instant,
}

impl Record<'_> {
    pub fn workload(&self) -> &str {
        self.json.str_of("workloadId").unwrap_or_default()
    }

    /// What breaks ties of workload and time: `edgeType`, else `eventType`.
    pub fn kind(&self) -> &str {
        self.json
            .str_of("edgeType")
            .or_else(|| self.json.str_of("eventType"))
            .unwrap_or_default()
    }

    pub fn image_digest(&self) -> Option<&str> {
        self.json.str_of("imageDigest")
    }
}

/// Fields the bundle reads: when present they must be strings (or null).
const STRING_FIELDS: [&str; 14] = [
    "namespace",
    "tenant",
    "project",
    "component",
    "channel",
    "imageDigest",
    "imageDigestKind",
    "node",
    "hostId",
    "code_id",
    "path",
    "entrypoint",
    "edgeType",
    "eventType",
];

/// Checks that `line` is a record of `stream`; the error says what is wrong.
pub fn check(stream: Stream, line: &[u8]) -> Result<Record<'_>, String> {
    let json = Json::parse(line)?;
    if !matches!(json, Json::Object(_)) {
        return Err("not a JSON object".into());
    }
    let required: &[&str] = match stream {
        Stream::Runtime => &["workloadId", "timestamp", "eventType"],
        Stream::EntryTrace => &["workloadId", "timestamp", "namespace", "node", "edgeType"],
    };
    for field in required {
        match json.get(field) {
            Some(Json::String(s)) if !s.is_empty() => {}
            Some(_) => return Err(format!("`{field}` must be a non-empty string")),
            None => return Err(format!("`{field}` is missing")),
        }
    }
    if stream == Stream::Runtime
        && json.str_of("eventType") == Some("edge")
        && json.str_of("edgeType").is_none()
    {
        return Err("an edge event without `edgeType`".into());
    }
    for field in STRING_FIELDS {
        if let Some(value) = json.get(field) {
            if !matches!(value, Json::String(_) | Json::Null) {
                return Err(format!("`{field}` must be a string"));
            }
        }
    }
    let instant = time::parse(json.str_of("timestamp").unwrap_or_default())?;
    Ok(Record { json, instant })
}

/// An invalid line, as the manifest notes the first of an input's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub line: u64,
    pub reason: String,
}

/// What reading one input found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSummary {
    pub stream: Stream,
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
    pub lines: u64,
    /// Lines that are records (kept or filtered out).
    pub records: u64,
    pub filtered_out: u64,
    pub invalid: u64,
    pub first_invalid: Option<Invalid>,
}

/// A reader that hashes and counts what passes through it.
pub struct Hashing<R> {
    pub inner: R,
    pub hasher: Sha256,
    pub bytes: u64,
}

impl<R> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Reads `file`, handing each record the filters admit to `accept`. An invalid line fails
/// the read unless `skip_invalid`, which counts it.
pub fn read(
    file: &InputFile,
    filters: &Filters,
    skip_invalid: bool,
    mut accept: impl FnMut(&Record<'_>) -> Result<(), EvidenceError>,
) -> Result<InputSummary, EvidenceError> {
    let path = &file.path;
    let handle = File::open(path).map_err(EvidenceError::io("open", path))?;
    let mut reader = BufReader::with_capacity(1 << 20, Hashing::new(handle));
    let mut summary = InputSummary {
        stream: file.stream,
        name: file.name.clone(),
        sha256: String::new(),
        bytes: 0,
        lines: 0,
        records: 0,
        filtered_out: 0,
        invalid: 0,
        first_invalid: None,
    };
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(EvidenceError::io("read", path))?;
        if n == 0 {
            break;
        }
        summary.lines += 1;
        let outcome = if line.last() == Some(&b'\n') {
            line.pop();
            check(file.stream, &line)
        } else if line.len() > MAX_LINE {
            skip_line(&mut reader).map_err(EvidenceError::io("read", path))?;
            Err(format!("longer than {} MiB", MAX_LINE >> 20))
        } else {
            check(file.stream, &line).map_err(|e| {
                format!("{e} (the last line has no newline: is the file still being written?)")
            })
        };
        match outcome {
            Ok(record) => {
                summary.records += 1;
                if filters.admits(&record) {
                    accept(&record)?;
                } else {
                    summary.filtered_out += 1;
                }
            }
            Err(reason) if skip_invalid => {
                summary.invalid += 1;
                summary.first_invalid.get_or_insert(Invalid {
                    line: summary.lines,
                    reason,
                });
            }
            Err(reason) => {
                return Err(EvidenceError::InvalidLine {
                    path: path.clone(),
                    line: summary.lines,
                    reason,
                })
            }
        }
    }
    let hashing = reader.into_inner();
    summary.sha256 = hex(&hashing.hasher.finalize());
    summary.bytes = hashing.bytes;
    Ok(summary)
}

/// Consumes the rest of an over-long line.
pub fn skip_line(reader: &mut impl io::BufRead) -> io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            reader.consume(i + 1);
            return Ok(());
        }
        let n = buf.len();
        reader.consume(n);
    }
}
