//! `evidence export`: inputs → sorted, deduplicated streams → their coalesced merge →
//! the manifest, written to a staging directory and renamed into place as a whole, so a
//! bundle directory is either complete or absent.

use std::{
    fs::{self, File},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use sha2::{Digest as _, Sha256};
use zastava_platform::deployment::Deployment;

use super::{
    deployment::{self, Deployments},
    hex,
    identity::Identity,
    input::{self, Filters, InputSummary},
    manifest::{
        check_run_id, CoalescedEntry, FiltersJson, InputEntry, InvalidJson, Manifest, RunIdSource,
        StreamEntry, Streams, RUN_ID_DIGITS, SCHEMA_VERSION,
    },
    merge::{coalesce, coalesced_parts, Rec},
    sha256_file,
    sort::Sorter,
    time::{self, Instant},
    EvidenceError, ScratchDir, Stream, COALESCED, MANIFEST,
};

/// What to export, and how.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// The observer's NDJSON files or directories of them.
    pub runtime: Vec<PathBuf>,
    /// Scanner EntryTrace NDJSON files or directories of them.
    pub entrytrace: Vec<PathBuf>,
    /// Bundles go to `<out>/runtime/<runId>/`.
    pub out: PathBuf,
    pub run_id: Option<String>,
    pub filters: Filters,
    pub skip_invalid: bool,
    /// Memory for sorting, in bytes; beyond it records are sorted in runs on disk.
    pub memory: usize,
    /// Where sort runs go (default: beside the bundles).
    pub tmp_dir: Option<PathBuf>,
    /// The deployment being exported (`None`: the one the records name, if any).
    pub deployment: Option<Deployment>,
}

/// Default memory for sorting.
pub const DEFAULT_MEMORY: usize = 128 << 20;

/// A bundle on disk.
#[derive(Debug)]
pub struct Exported {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The same bundle was already there (same files, byte for byte); it was kept.
    pub already_present: bool,
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One output file of the bundle.
struct Output {
    path: PathBuf,
    out: BufWriter<Hashing<File>>,
    records: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Output {
    fn create(path: PathBuf) -> Result<Output, EvidenceError> {
        let file = File::create(&path).map_err(EvidenceError::io("create", &path))?;
        Ok(Output {
            out: BufWriter::with_capacity(
                1 << 20,
                Hashing {
                    inner: file,
                    hasher: Sha256::new(),
                    bytes: 0,
                },
            ),
            path,
            records: 0,
            first: None,
            last: None,
        })
    }

    /// Writes one line made of `parts`, and its newline.
    fn line(&mut self, parts: &[&[u8]], instant: Instant) -> io::Result<()> {
        self.records += 1;
        self.first = Some(self.first.map_or(instant, |f| f.min(instant)));
        self.last = Some(self.last.map_or(instant, |l| l.max(instant)));
        for part in parts {
            self.out.write_all(part)?;
        }
        self.out.write_all(b"\n")
    }

    /// Flushes and syncs the file.
    fn finish(self) -> Result<Written, EvidenceError> {
        let path = self.path;
        let hashing = self
            .out
            .into_inner()
            .map_err(|e| EvidenceError::io("write", &path)(e.into_error()))?;
        hashing
            .inner
            .sync_all()
            .map_err(EvidenceError::io("write", &path))?;
        Ok(Written {
            sha256: hex(&hashing.hasher.finalize()),
            bytes: hashing.bytes,
            records: self.records,
            first: self.first,
            last: self.last,
        })
    }
}

/// What an output file holds.
struct Written {
    sha256: String,
    bytes: u64,
    records: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Exports a bundle; see docs/evidence.md.
pub fn export(options: &ExportOptions) -> Result<Exported, EvidenceError> {
    if let Some(id) = &options.run_id {
        check_run_id(id).map_err(EvidenceError::Refused)?;
    }
    let runtime_files = input::discover(Stream::Runtime, &options.runtime)?;
    let entrytrace_files = input::discover(Stream::EntryTrace, &options.entrytrace)?;
    if runtime_files.is_empty() {
        return Err(EvidenceError::Refused(
            "no runtime input: name the observer's NDJSON files or their directory".into(),
        ));
    }
    let root = options.out.join("runtime");
    fs::create_dir_all(&root).map_err(EvidenceError::io("create", &root))?;
    let staging = ScratchDir::create(&root, ".export")?;
    let sort_dir = ScratchDir::create(options.tmp_dir.as_deref().unwrap_or(&root), ".sort")?;

    let mut identity = Identity::default();
    let mut summaries = Vec::new();
    let mut deployments = Deployments::new(options.deployment.clone());
    let mut read_stream = |files: &[input::InputFile], sorter: &mut Sorter| {
        for file in files {
            let summary = input::read(
                file,
                &options.filters,
                options.skip_invalid,
                &mut deployments,
                |record, line| {
                    identity.add(file.stream, record);
                    let key = Rec {
                        workload: record.workload().as_bytes(),
                        instant: record.instant,
                        kind: record.kind().as_bytes(),
                        digest: record.image_digest().map(str::as_bytes),
                        line: &[],
                    };
                    sorter
                        .push_with(&key, input::canonical_bound(line.len()), |arena| {
                            record.json.write(arena)
                        })
                        .map_err(EvidenceError::io("write a sort run in", sort_dir.path()))
                },
            )?;
            summaries.push(summary);
        }
        Ok::<(), EvidenceError>(())
    };
    let mut runtime = Sorter::new(sort_dir.path(), "runtime", options.memory);
    read_stream(&runtime_files, &mut runtime)?;
    // The EntryTrace stream gets what the runtime stream leaves of the budget. A runtime
    // stream that went to disk already (its memory was filled once), or that leaves
    // little, goes to disk whole and frees its memory.
    let mut left = options.memory.saturating_sub(runtime.used());
    if runtime.runs() > 0 || left < options.memory / 4 {
        runtime
            .release()
            .map_err(EvidenceError::io("write a sort run in", sort_dir.path()))?;
        left = options.memory;
    }
    let mut entrytrace = Sorter::new(sort_dir.path(), "entrytrace", left);
    read_stream(&entrytrace_files, &mut entrytrace)?;

    let run_error = EvidenceError::io("merge sort runs in", sort_dir.path());
    let mut runtime = runtime.finish().map_err(run_error)?;
    let mut entrytrace = entrytrace
        .finish()
        .map_err(EvidenceError::io("merge sort runs in", sort_dir.path()))?;
    let mut outputs = [
        Output::create(staging.path().join(Stream::EntryTrace.file_name()))?,
        Output::create(staging.path().join(Stream::Runtime.file_name()))?,
    ];
    let mut coalesced = Output::create(staging.path().join(COALESCED))?;
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    coalesce(&mut entrytrace, &mut runtime, |stream, rec| {
        let output = &mut outputs[usize::from(stream == Stream::Runtime)];
        output.line(&[rec.line], rec.instant)?;
        head.clear();
        tail.clear();
        coalesced_parts(stream, output.records, &rec, &mut head, &mut tail);
        coalesced.line(&[&head, rec.line, &tail], rec.instant)
    })
    .map_err(EvidenceError::io("write the bundle in", staging.path()))?;
    let duplicates = [entrytrace.duplicates, runtime.duplicates];
    drop((entrytrace, runtime));
    drop(sort_dir);

    let [entrytrace_out, runtime_out] = outputs;
    let stream_entry = |output: Output, stream: Stream, duplicates: u64| {
        let written = output.finish()?;
        Ok::<_, EvidenceError>(StreamEntry {
            file: stream.file_name().to_owned(),
            sha256: written.sha256,
            bytes: written.bytes,
            records: written.records,
            duplicates_dropped: duplicates,
            first_timestamp: written.first.map(time::format),
            last_timestamp: written.last.map(time::format),
        })
    };
    let streams = Streams {
        entrytrace: stream_entry(entrytrace_out, Stream::EntryTrace, duplicates[0])?,
        runtime: stream_entry(runtime_out, Stream::Runtime, duplicates[1])?,
        coalesced: {
            let written = coalesced.finish()?;
            CoalescedEntry {
                file: COALESCED.to_owned(),
                sha256: written.sha256,
                bytes: written.bytes,
                records: written.records,
            }
        },
    };
    let mut manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        run_id: String::new(),
        run_id_source: RunIdSource::Content,
        deployment: deployment::to_manifest(&deployments.deployment()),
        filters: filters_json(&options.filters),
        inputs: input_entries(summaries),
        streams,
        workloads: identity.workloads(),
        build_ids: identity.build_ids(),
    };
    match &options.run_id {
        Some(id) => {
            manifest.run_id = id.clone();
            manifest.run_id_source = RunIdSource::Given;
        }
        None => manifest.run_id = manifest.content_hash()?[..RUN_ID_DIGITS].to_owned(),
    }
    let manifest_path = staging.path().join(MANIFEST);
    write_synced(&manifest_path, &manifest.to_bytes()?)?;
    sync_dir(staging.path())?;

    let dir = root.join(&manifest.run_id);
    let already_present = if dir.exists() {
        if !same_bundle(staging.path(), &dir)? {
            return Err(EvidenceError::Refused(format!(
                "{} already holds a different bundle: remove it, or export with another --run-id",
                dir.display()
            )));
        }
        true
    } else {
        fs::rename(staging.path(), &dir).map_err(EvidenceError::io("create", &dir))?;
        staging.keep();
        sync_dir(&root)?;
        false
    };
    Ok(Exported {
        dir,
        manifest,
        already_present,
    })
}

fn filters_json(filters: &Filters) -> FiltersJson {
    FiltersJson {
        since: filters.since.map(time::format),
        until: filters.until.map(time::format),
        namespaces: filters.namespaces.iter().cloned().collect(),
        workloads: filters.workloads.iter().cloned().collect(),
    }
}

/// Inputs in a fixed order, whatever order they were given in.
fn input_entries(summaries: Vec<InputSummary>) -> Vec<InputEntry> {
    let mut entries: Vec<InputEntry> = summaries
        .into_iter()
        .map(|s| InputEntry {
            stream: s.stream.name().to_owned(),
            name: s.name,
            sha256: s.sha256,
            bytes: s.bytes,
            lines: s.lines,
            records: s.records,
            filtered_out: s.filtered_out,
            invalid: s.invalid,
            first_invalid: s.first_invalid.map(|i| InvalidJson {
                line: i.line,
                reason: i.reason,
            }),
        })
        .collect();
    entries.sort_by(|a, b| (&a.stream, &a.name, &a.sha256).cmp(&(&b.stream, &b.name, &b.sha256)));
    entries
}

/// Whether `existing` holds the files of `fresh` byte for byte (a signature beside them is
/// allowed: it signs the same content).
fn same_bundle(fresh: &Path, existing: &Path) -> Result<bool, EvidenceError> {
    for name in [
        MANIFEST,
        COALESCED,
        Stream::EntryTrace.file_name(),
        Stream::Runtime.file_name(),
    ] {
        let theirs = existing.join(name);
        if !theirs.is_file() || sha256_file(&fresh.join(name))? != sha256_file(&theirs)? {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), EvidenceError> {
    let mut file = File::create(path).map_err(EvidenceError::io("create", path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(EvidenceError::io("write", path))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), EvidenceError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(EvidenceError::io("sync", dir))
}
