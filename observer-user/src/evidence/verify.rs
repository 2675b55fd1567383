//! `evidence verify`: recomputes everything a bundle claims — each file's hash, each
//! stream's order and records, the identity table, the coalesced merge, the signature — in
//! one pass over the files, and names each problem with its file and line.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    fs::File,
    io::{self, BufRead as _, BufReader, Read as _},
    path::Path,
};

use p256::ecdsa::VerifyingKey;
use serde::Serialize;
use sha2::Digest as _;

use super::{
    archive, canonical, dsse, hex,
    identity::Identity,
    input::{self, Filters, Hashing, MAX_LINE},
    manifest::{check_run_id, Manifest, RunIdSource, RUN_ID_DIGITS, SCHEMA_VERSION},
    merge::{coalesce, coalesced_line, Slot, Source},
    sha256_file, time, EvidenceError, Stream, BUNDLE_FILES, COALESCED, ENVELOPE, MANIFEST,
};

/// Problems kept per file; the rest are counted.
const SHOWN_PER_FILE: usize = 20;

/// Something that is not as the bundle claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: Option<u64>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

#[derive(Default)]
struct Problems {
    list: Vec<Problem>,
    per_file: BTreeMap<String, usize>,
}

impl Problems {
    fn add(&mut self, file: &str, line: Option<u64>, message: impl Into<String>) {
        let count = self.per_file.entry(file.to_owned()).or_default();
        *count += 1;
        if *count <= SHOWN_PER_FILE {
            self.list.push(Problem {
                file: file.to_owned(),
                line,
                message: message.into(),
            });
        }
    }

    fn finish(mut self) -> Vec<Problem> {
        for (file, count) in &self.per_file {
            if *count > SHOWN_PER_FILE {
                self.list.push(Problem {
                    file: file.clone(),
                    line: None,
                    message: format!("{} more problems not shown", count - SHOWN_PER_FILE),
                });
            }
        }
        self.list
    }
}

/// What verification found.
#[derive(Debug)]
pub struct Report {
    pub problems: Vec<Problem>,
    pub manifest: Option<Manifest>,
    /// The key id whose signature verified.
    pub signed_by: Option<String>,
}

/// One stream file read back in order, checking each line as it goes.
struct StreamReader<'a> {
    stream: Stream,
    input: BufReader<Hashing<File>>,
    filters: &'a Filters,
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
    fn open(dir: &Path, stream: Stream, filters: &'a Filters) -> io::Result<StreamReader<'a>> {
        let file = File::open(dir.join(stream.file_name()))?;
        let mut reader = StreamReader {
            stream,
            input: BufReader::with_capacity(1 << 20, Hashing::new(file)),
            filters,
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
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut self.buf)?;
            if n == 0 {
                return Ok(false);
            }
            self.line_number += 1;
            let at = Some(self.line_number);
            if self.buf.last() == Some(&b'\n') {
                self.buf.pop();
            } else if self.buf.len() > MAX_LINE {
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
    fn head(&self) -> Option<super::merge::Rec<'_>> {
        self.has_head.then(|| self.slot.rec())
    }

    fn advance(&mut self) -> io::Result<()> {
        self.has_head = self.read_next()?;
        Ok(())
    }
}

/// Differences between what the manifest says (`claimed`) and what the files show.
fn differences<T: Serialize>(what: &str, claimed: &T, actual: &T) -> Vec<String> {
    let (Ok(claimed), Ok(actual)) = (serde_json::to_value(claimed), serde_json::to_value(actual))
    else {
        return vec![format!("{what} cannot be compared")];
    };
    match (claimed.as_object(), actual.as_object()) {
        (Some(c), Some(a)) => {
            let keys: BTreeSet<&String> = c.keys().chain(a.keys()).collect();
            keys.into_iter()
                .filter(|k| c.get(*k) != a.get(*k))
                .map(|k| {
                    format!(
                        "{what}.{k} is {}, the files say {}",
                        c.get(k).map_or("absent".into(), |v| v.to_string()),
                        a.get(k).map_or("absent".into(), |v| v.to_string())
                    )
                })
                .collect()
        }
        _ if claimed != actual => vec![format!("{what} is {claimed}, the files say {actual}")],
        _ => Vec::new(),
    }
}

/// What one pass over the three files found.
struct Content {
    sha256: BTreeMap<&'static str, (String, u64)>,
    records: BTreeMap<Stream, (u64, Option<time::Instant>, Option<time::Instant>)>,
    coalesced_records: u64,
    identity: Identity,
}

/// Reads both streams in coalesced order and the coalesced file beside them, comparing
/// each coalesced line with the one the merge gives.
fn check_content(dir: &Path, filters: &Filters, problems: &mut Problems) -> io::Result<Content> {
    let mut entrytrace = StreamReader::open(dir, Stream::EntryTrace, filters)?;
    let mut runtime = StreamReader::open(dir, Stream::Runtime, filters)?;
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
        (&mut coalesced)
            .take(MAX_LINE as u64 * 2)
            .read_until(b'\n', &mut found)?;
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
    loop {
        found.clear();
        if (&mut coalesced)
            .take(MAX_LINE as u64 * 2)
            .read_until(b'\n', &mut found)?
            == 0
        {
            break;
        }
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

/// The filters a manifest records, as export applied them.
fn filters_of(manifest: &Manifest, problems: &mut Problems) -> Filters {
    let mut instant = |what: &str, text: &Option<String>| {
        text.as_deref().and_then(|t| match time::parse(t) {
            Ok(i) => Some(i),
            Err(e) => {
                problems.add(MANIFEST, None, format!("filters.{what}: {e}"));
                None
            }
        })
    };
    Filters {
        since: instant("since", &manifest.filters.since),
        until: instant("until", &manifest.filters.until),
        namespaces: manifest.filters.namespaces.iter().cloned().collect(),
        workloads: manifest.filters.workloads.iter().cloned().collect(),
    }
}

/// Verifies the bundle in `dir`; with `key`, its signature too.
pub fn verify_dir(dir: &Path, key: Option<&VerifyingKey>) -> Result<Report, EvidenceError> {
    let mut problems = Problems::default();
    let mut report = Report {
        problems: Vec::new(),
        manifest: None,
        signed_by: None,
    };
    for entry in std::fs::read_dir(dir).map_err(EvidenceError::io("list", dir))? {
        let entry = entry.map_err(EvidenceError::io("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !BUNDLE_FILES.contains(&name.as_str()) {
            problems.add(&name, None, "not a file of a bundle");
        } else if !entry.file_type().is_ok_and(|t| t.is_file()) {
            problems.add(&name, None, "not a regular file");
        }
    }
    let required = [
        MANIFEST,
        COALESCED,
        Stream::EntryTrace.file_name(),
        Stream::Runtime.file_name(),
    ];
    let mut missing = false;
    for name in required {
        if !dir.join(name).is_file() {
            problems.add(name, None, "missing");
            missing = true;
        }
    }
    if missing {
        report.problems = problems.finish();
        return Ok(report);
    }
    let manifest_path = dir.join(MANIFEST);
    let bytes = std::fs::read(&manifest_path).map_err(EvidenceError::io("read", &manifest_path))?;
    match canonical::is_canonical(&bytes) {
        Ok(true) => {}
        Ok(false) => problems.add(MANIFEST, None, "not canonical JSON (RFC 8785)"),
        Err(e) => problems.add(MANIFEST, None, e),
    }
    let manifest: Manifest = match serde_json::from_slice(&bytes) {
        Ok(manifest) => manifest,
        Err(e) => {
            problems.add(MANIFEST, None, format!("not a bundle manifest: {e}"));
            report.problems = problems.finish();
            return Ok(report);
        }
    };
    check_manifest_itself(&manifest, dir, &mut problems);
    let filters = filters_of(&manifest, &mut problems);
    let content = check_content(dir, &filters, &mut problems)
        .map_err(EvidenceError::io("read the bundle in", dir))?;
    compare(&manifest, &content, &mut problems);

    let (manifest_sha, _) = sha256_file(&manifest_path)?;
    if let Some(key) = key {
        let envelope_path = dir.join(ENVELOPE);
        match std::fs::read(&envelope_path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => problems.add(
                ENVELOPE,
                None,
                "missing: the bundle is not signed (sign it with `zastava-observer evidence \
                 sign`, or verify without a signature with --no-signature)",
            ),
            Err(e) => return Err(EvidenceError::io("read", &envelope_path)(e)),
            Ok(envelope) => {
                let mut files: BTreeMap<String, String> = content
                    .sha256
                    .iter()
                    .map(|(name, (sha, _))| ((*name).to_owned(), sha.clone()))
                    .collect();
                files.insert(MANIFEST.to_owned(), manifest_sha);
                let found = dsse::check(&envelope, key, &manifest.run_id, &files);
                if found.is_empty() {
                    report.signed_by = Some(dsse::key_id(key)?);
                }
                for message in found {
                    problems.add(ENVELOPE, None, message);
                }
            }
        }
    }
    report.manifest = Some(manifest);
    report.problems = problems.finish();
    Ok(report)
}

/// What the manifest can be checked against without the streams.
fn check_manifest_itself(manifest: &Manifest, dir: &Path, problems: &mut Problems) {
    if manifest.schema_version != SCHEMA_VERSION {
        problems.add(
            MANIFEST,
            None,
            format!(
                "schemaVersion {} is not {SCHEMA_VERSION}, the version this tool reads",
                manifest.schema_version
            ),
        );
    }
    if let Err(e) = check_run_id(&manifest.run_id) {
        problems.add(MANIFEST, None, e);
    }
    let dir_name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    if dir_name.as_deref() != Some(manifest.run_id.as_str()) {
        problems.add(
            MANIFEST,
            None,
            format!(
                "runId {:?} is not the bundle directory's name {:?} (bundles live at \
                 offline/runtime/<runId>/)",
                manifest.run_id,
                dir_name.unwrap_or_default()
            ),
        );
    }
    if manifest.run_id_source == RunIdSource::Content {
        match manifest.content_hash() {
            Ok(hash) if hash[..RUN_ID_DIGITS] == *manifest.run_id => {}
            Ok(hash) => problems.add(
                MANIFEST,
                None,
                format!(
                    "runId {:?} is not the prefix of the manifest's content hash {hash}: the \
                     manifest was changed",
                    manifest.run_id
                ),
            ),
            Err(e) => problems.add(MANIFEST, None, e.to_string()),
        }
    }
    // Every line of an input is a record or invalid; the records kept are the stream's
    // records plus the duplicates dropped.
    let mut kept: BTreeMap<&str, u64> = BTreeMap::new();
    for (i, input) in manifest.inputs.iter().enumerate() {
        if Stream::from_name(&input.stream).is_none() {
            problems.add(
                MANIFEST,
                None,
                format!("inputs[{i}].stream {:?} is not a stream", input.stream),
            );
        }
        if input.lines != input.records + input.invalid {
            problems.add(
                MANIFEST,
                None,
                format!(
                    "inputs[{i}] ({}): lines {} != records {} + invalid {}",
                    input.name, input.lines, input.records, input.invalid
                ),
            );
        }
        *kept.entry(input.stream.as_str()).or_default() +=
            input.records.saturating_sub(input.filtered_out);
    }
    if !manifest.inputs.windows(2).all(|w| {
        (&w[0].stream, &w[0].name, &w[0].sha256) <= (&w[1].stream, &w[1].name, &w[1].sha256)
    }) {
        problems.add(
            MANIFEST,
            None,
            "inputs are not sorted by (stream, name, sha256)",
        );
    }
    for (stream, entry) in [
        (Stream::Runtime, &manifest.streams.runtime),
        (Stream::EntryTrace, &manifest.streams.entrytrace),
    ] {
        let inputs = kept.get(stream.name()).copied().unwrap_or(0);
        if inputs != entry.records + entry.duplicates_dropped {
            problems.add(
                MANIFEST,
                None,
                format!(
                    "the {stream} inputs hold {inputs} records after filtering, but the stream \
                     has {} and {} duplicates were dropped",
                    entry.records, entry.duplicates_dropped
                ),
            );
        }
    }
}

/// The manifest's claims against what the files hold.
fn compare(manifest: &Manifest, content: &Content, problems: &mut Problems) {
    for (stream, claimed) in [
        (Stream::Runtime, &manifest.streams.runtime),
        (Stream::EntryTrace, &manifest.streams.entrytrace),
    ] {
        let file = stream.file_name();
        let (sha256, bytes) = content.sha256.get(file).cloned().unwrap_or_default();
        let (records, first, last) = content.records.get(&stream).copied().unwrap_or_default();
        let mut actual = claimed.clone();
        actual.file = file.to_owned();
        actual.sha256 = sha256;
        actual.bytes = bytes;
        actual.records = records;
        actual.first_timestamp = first.map(time::format);
        actual.last_timestamp = last.map(time::format);
        for d in differences(&format!("streams.{stream}"), claimed, &actual) {
            // A wrong hash is the file's problem; a wrong claim otherwise the manifest's.
            let owner = if d.contains(".sha256 ") || d.contains(".bytes ") {
                file
            } else {
                MANIFEST
            };
            problems.add(owner, None, d);
        }
    }
    let (sha256, bytes) = content.sha256.get(COALESCED).cloned().unwrap_or_default();
    let claimed = &manifest.streams.coalesced;
    let mut actual = claimed.clone();
    actual.file = COALESCED.to_owned();
    actual.sha256 = sha256;
    actual.bytes = bytes;
    actual.records = content.coalesced_records;
    for d in differences("streams.coalesced", claimed, &actual) {
        let owner = if d.contains(".sha256 ") || d.contains(".bytes ") {
            COALESCED
        } else {
            MANIFEST
        };
        problems.add(owner, None, d);
    }

    let rows = content.identity.workloads();
    let claimed: BTreeMap<&str, _> = manifest
        .workloads
        .iter()
        .map(|r| (r.workload_id.as_str(), r))
        .collect();
    let actual: BTreeMap<&str, _> = rows.iter().map(|r| (r.workload_id.as_str(), r)).collect();
    if manifest.workloads.len() != claimed.len() {
        problems.add(MANIFEST, None, "workloads lists a workload twice");
    }
    if !manifest
        .workloads
        .windows(2)
        .all(|w| w[0].workload_id < w[1].workload_id)
    {
        problems.add(MANIFEST, None, "workloads are not sorted by workloadId");
    }
    for (id, row) in &actual {
        match claimed.get(id) {
            None => problems.add(
                MANIFEST,
                None,
                format!("workloads has no row for {id:?}, which the streams hold"),
            ),
            Some(claimed) => {
                for d in differences(&format!("workloads[{id:?}]"), *claimed, *row) {
                    problems.add(MANIFEST, None, d);
                }
            }
        }
    }
    for id in claimed.keys().filter(|id| !actual.contains_key(*id)) {
        problems.add(
            MANIFEST,
            None,
            format!("workloads has a row for {id:?}, which no record of the streams has"),
        );
    }
    let build_ids = content.identity.build_ids();
    if manifest.build_ids != build_ids {
        problems.add(
            MANIFEST,
            None,
            format!(
                "buildIds differ from the streams' records: the streams say {}",
                serde_json::to_string(&build_ids).unwrap_or_default()
            ),
        );
    }
}

/// Verifies an archive: unpacks it into a directory under `scratch` named after the run id
/// inside, verifies that, and checks the archive is exactly the one its files make.
pub fn verify_archive(
    archive_path: &Path,
    key: Option<&VerifyingKey>,
    scratch: &Path,
) -> Result<Report, EvidenceError> {
    let shown = archive_path.file_name().map_or_else(
        || archive_path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let unpack = scratch.join("bundle");
    std::fs::create_dir_all(&unpack).map_err(EvidenceError::io("create", &unpack))?;
    let extracted = archive::extract(archive_path, &unpack)?;
    let mut problems: Vec<Problem> = extracted
        .problems
        .iter()
        .map(|m| Problem {
            file: shown.clone(),
            line: None,
            message: m.clone(),
        })
        .collect();
    if !problems.is_empty() || check_run_id(&extracted.run_id).is_err() {
        if problems.is_empty() {
            problems.push(Problem {
                file: shown,
                line: None,
                message: format!(
                    "the archive's directory {:?} is not a run id",
                    extracted.run_id
                ),
            });
        }
        return Ok(Report {
            problems,
            manifest: None,
            signed_by: None,
        });
    }
    let dir = scratch.join(&extracted.run_id);
    std::fs::rename(&unpack, &dir).map_err(EvidenceError::io("create", &dir))?;
    let mut report = verify_dir(&dir, key)?;
    let expected = archive::expected_sha256(&dir, &extracted.run_id)
        .map_err(EvidenceError::io("read", &dir))?;
    let (actual, _) = sha256_file(archive_path)?;
    if expected != actual {
        report.problems.push(Problem {
            file: shown,
            line: None,
            message: "not the archive its files make (entries, their order or their headers \
                      were changed)"
                .into(),
        });
    }
    Ok(report)
}
