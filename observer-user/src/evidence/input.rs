//! Input files: finding them, reading them line by line with their hash, and checking each
//! line is a record of its stream. A line that is not says why, with its file and line.

use std::{
    collections::BTreeSet,
    fs::File,
    io::{self, BufRead as _, BufReader, Read},
    path::PathBuf,
};

use sha2::{Digest as _, Sha256};

use zastava_platform::deployment::Deployment;

use super::{
    canonical::Json,
    deployment::{self, Deployments, Verdict},
    hex,
    time::{self, Instant},
    EvidenceError, Stream,
};

/// The longest line accepted; longer ones are invalid (a file that is not NDJSON at all
/// must not be read into memory whole).
pub const MAX_LINE: usize = 16 << 20;

/// The longest line a bundle's stream may hold: the canonical form of an input line of
/// `MAX_LINE`. Escapes only shrink in canonical form, and the longest growth of a number
/// (`1e20`, 4 bytes, is 21 digits) is below six times.
pub const MAX_CANONICAL_LINE: usize = canonical_bound(MAX_LINE);

/// The most canonical bytes an input line of `len` bytes can become.
pub const fn canonical_bound(len: usize) -> usize {
    len * 6 + 16
}

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
                    .str(Field::Namespace)
                    .is_some_and(|ns| self.namespaces.contains(ns)))
            && (self.workloads.is_empty() || self.workloads.contains(record.workload()))
    }
}

/// The members a bundle reads. When present they must be strings (or `null`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    WorkloadId,
    Timestamp,
    EventType,
    EdgeType,
    Namespace,
    Tenant,
    Project,
    Component,
    Channel,
    ImageDigest,
    ImageDigestKind,
    Node,
    HostId,
    CodeId,
    Path,
    Entrypoint,
}

const FIELDS: usize = 16;
const ABSENT: u32 = u32::MAX;

impl Field {
    fn of(name: &str) -> Option<Field> {
        Some(match name {
            "workloadId" => Field::WorkloadId,
            "timestamp" => Field::Timestamp,
            "eventType" => Field::EventType,
            "edgeType" => Field::EdgeType,
            "namespace" => Field::Namespace,
            "tenant" => Field::Tenant,
            "project" => Field::Project,
            "component" => Field::Component,
            "channel" => Field::Channel,
            "imageDigest" => Field::ImageDigest,
            "imageDigestKind" => Field::ImageDigestKind,
            "node" => Field::Node,
            "hostId" => Field::HostId,
            "code_id" => Field::CodeId,
            "path" => Field::Path,
            "entrypoint" => Field::Entrypoint,
            _ => return None,
        })
    }
}

/// A line that is a record of its stream.
#[derive(Debug)]
pub struct Record<'a> {
    pub json: Json<'a>,
    pub instant: Instant,
    /// Where each [`Field`] is among the object's members.
    at: [u32; FIELDS],
    /// An observer record's `deployment` object, when it has one.
    pub deployment: Option<Deployment>,
}

impl Record<'_> {
    fn member(&self, field: Field) -> Option<&Json<'_>> {
        let at = self.at[field as usize];
        match &self.json {
            Json::Object(members) if at != ABSENT => members.get(at as usize).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string value of `field`, when it has one.
    pub fn str(&self, field: Field) -> Option<&str> {
        match self.member(field) {
            Some(Json::String(s)) => Some(s),
            _ => None,
        }
    }

    /// Whether the record has `field`, `null` or not.
    pub fn has(&self, field: Field) -> bool {
        self.at[field as usize] != ABSENT
    }

    pub fn workload(&self) -> &str {
        self.str(Field::WorkloadId).unwrap_or_default()
    }

    /// What breaks ties of workload and time: `edgeType`, else `eventType`.
    pub fn kind(&self) -> &str {
        self.str(Field::EdgeType)
            .or_else(|| self.str(Field::EventType))
            .unwrap_or_default()
    }

    pub fn image_digest(&self) -> Option<&str> {
        self.str(Field::ImageDigest)
    }
}

/// Checks that `line` is a record of `stream`; the error says what is wrong.
pub fn check(stream: Stream, line: &[u8]) -> Result<Record<'_>, String> {
    let json = Json::parse(line)?;
    let Json::Object(members) = &json else {
        return Err("not a JSON object".into());
    };
    let mut at = [ABSENT; FIELDS];
    let mut deployment = None;
    for (i, (name, value)) in members.iter().enumerate() {
        if stream == Stream::Runtime && name == "deployment" {
            deployment = Some(deployment::parse(value)?);
        } else if let Some(field) = Field::of(name) {
            if !matches!(value, Json::String(_) | Json::Null) {
                return Err(format!("`{name}` must be a string"));
            }
            at[field as usize] = u32::try_from(i).unwrap_or(ABSENT);
        }
    }
    let record = Record {
        json,
        instant: 0,
        at,
        deployment,
    };
    let required: &[(Field, &str)] = match stream {
        Stream::Runtime => &[
            (Field::WorkloadId, "workloadId"),
            (Field::Timestamp, "timestamp"),
            (Field::EventType, "eventType"),
        ],
        Stream::EntryTrace => &[
            (Field::WorkloadId, "workloadId"),
            (Field::Timestamp, "timestamp"),
            (Field::Namespace, "namespace"),
            (Field::Node, "node"),
            (Field::EdgeType, "edgeType"),
        ],
    };
    for (field, name) in required {
        match record.str(*field) {
            Some(s) if !s.is_empty() => {}
            _ if record.has(*field) => return Err(format!("`{name}` must be a non-empty string")),
            _ => return Err(format!("`{name}` is missing")),
        }
    }
    if stream == Stream::Runtime
        && record.str(Field::EventType) == Some("edge")
        && record.str(Field::EdgeType).is_none()
    {
        return Err("an edge event without `edgeType`".into());
    }
    let instant = time::parse(record.str(Field::Timestamp).unwrap_or_default())?;
    Ok(Record { instant, ..record })
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

/// Reads `file`, handing each record the filters admit, and its line, to `accept`. An
/// invalid line fails the read unless `skip_invalid`, which counts it; so does an observer
/// record of another deployment than the one `deployments` holds the export to. Records of
/// two deployments, when the export was given none, fail it whatever `skip_invalid` says.
pub fn read(
    file: &InputFile,
    filters: &Filters,
    skip_invalid: bool,
    deployments: &mut Deployments,
    mut accept: impl FnMut(&Record<'_>, &[u8]) -> Result<(), EvidenceError>,
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
        let (reason, other_deployment) = match outcome {
            Ok(record) if !filters.admits(&record) => {
                summary.records += 1;
                summary.filtered_out += 1;
                continue;
            }
            Ok(mut record) => {
                match deployments.check(record.deployment.take(), path, summary.lines) {
                    Verdict::Agrees => {
                        summary.records += 1;
                        accept(&record, &line)?;
                        continue;
                    }
                    Verdict::NotTheGiven(reason) => (reason, true),
                    Verdict::Mixed(reason) => {
                        return Err(EvidenceError::MixedDeployments {
                            path: path.clone(),
                            line: summary.lines,
                            reason,
                        })
                    }
                }
            }
            Err(reason) => (reason, false),
        };
        if !skip_invalid {
            return Err(if other_deployment {
                EvidenceError::OtherDeployment {
                    path: path.clone(),
                    line: summary.lines,
                    reason,
                }
            } else {
                EvidenceError::InvalidLine {
                    path: path.clone(),
                    line: summary.lines,
                    reason,
                }
            });
        }
        summary.invalid += 1;
        summary.first_invalid.get_or_insert(Invalid {
            line: summary.lines,
            reason,
        });
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
