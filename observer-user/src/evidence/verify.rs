//! `evidence verify`: recomputes everything a bundle claims — each file's hash, each
//! stream's order and records, the identity table, the coalesced merge, the signature — in
//! one pass over the files ([`super::reread`]), and names each problem with its file and
//! line.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    path::Path,
};

use p256::ecdsa::VerifyingKey;
use serde::Serialize;

pub use super::problems::Problem;
use super::{
    archive, canonical, deployment, dsse,
    input::Filters,
    manifest::{check_run_id, Manifest, RunIdSource, RUN_ID_DIGITS, SCHEMA_VERSION},
    problems::Problems,
    reread::{check_content, Content},
    sha256_file, time, EvidenceError, Stream, BUNDLE_FILES, COALESCED, ENVELOPE, MANIFEST,
};

/// What verification found.
#[derive(Debug)]
pub struct Report {
    pub problems: Vec<Problem>,
    pub manifest: Option<Manifest>,
    /// The key id whose signature verified.
    pub signed_by: Option<String>,
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
    let deployment = deployment::from_manifest(manifest.deployment.as_ref());
    let content = check_content(dir, &filters, &deployment, &mut problems)
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
    if let Some(deployment) = &manifest.deployment {
        for problem in deployment::check_manifest(deployment) {
            problems.add(MANIFEST, None, problem);
        }
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
