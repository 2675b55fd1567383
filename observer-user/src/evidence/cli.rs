//! `zastava-observer evidence export|sign|verify|debug-path`: flags, and what each command
//! prints. Exit status: 0 done (verified, found), 1 not (problems, invalid input, missing
//! file), 2 wrong usage.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use zastava_platform::{
    config::Sources,
    deployment::{Deployment, DeploymentArgs, RuntimeConfig},
};

use super::{
    archive,
    debug_path::{self, Presence},
    deployment, dsse,
    export::{self, ExportOptions, Exported},
    input::Filters,
    manifest, sha256_file,
    time::{self, Instant},
    verify::{self, Report},
    EvidenceError, ScratchDir, Stream, COALESCED, ENVELOPE, MANIFEST,
};

#[derive(clap::Args)]
pub struct EvidenceArgs {
    #[command(subcommand)]
    command: EvidenceCommand,
}

#[derive(clap::Subcommand)]
enum EvidenceCommand {
    /// Write a runtime evidence bundle, offline/runtime/<runId>/, from the observer's
    /// NDJSON files (and a Scanner EntryTrace file); prints the bundle's directory.
    Export(Box<ExportArgs>),
    /// Sign a bundle: manifest.dsse.json, a DSSE envelope over an in-toto Statement of the
    /// bundle's files, with an ECDSA P-256 key.
    Sign(SignArgs),
    /// Check a bundle (its directory or its .tar.zst): every hash, the order of the
    /// streams, the identity table, the coalesced merge and the signature.
    Verify(VerifyArgs),
    /// Print where the debug file of a GNU build-id is, and whether it is there.
    DebugPath(DebugPathArgs),
}

#[derive(clap::Args)]
struct ExportArgs {
    /// The observer's NDJSON files, or directories of them (every *.ndjson in each), e.g.
    /// /var/log/stellaops/runtime/.
    #[arg(required = true, value_name = "PATH")]
    runtime: Vec<PathBuf>,
    /// A Scanner EntryTrace NDJSON file, or a directory of them (repeatable).
    #[arg(long, value_name = "PATH")]
    entrytrace: Vec<PathBuf>,
    /// Where bundles go: <DIR>/runtime/<runId>/.
    #[arg(long, value_name = "DIR", default_value = "offline")]
    out: PathBuf,
    /// Name the bundle (default: the first 16 hex digits of its content hash).
    #[arg(long, value_name = "ID", value_parser = parse_run_id)]
    run_id: Option<String>,
    /// Only records at or after this instant (RFC 3339, e.g. 2026-11-22T05:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    since: Option<Instant>,
    /// Only records before this instant (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    until: Option<Instant>,
    /// Only records of this Kubernetes namespace (repeatable).
    #[arg(long = "namespace", value_name = "NS")]
    namespaces: Vec<String>,
    /// Only records of this workload id (repeatable).
    #[arg(long = "workload", value_name = "ID")]
    workloads: Vec<String>,
    /// Skip lines that are not valid records, counting them in the manifest, instead of
    /// failing.
    #[arg(long)]
    skip_invalid: bool,
    /// Also sign the bundle with this ECDSA P-256 private key (PEM).
    #[arg(long, value_name = "PEM")]
    key: Option<PathBuf>,
    /// Also write <DIR>/runtime/<runId>.tar.zst (after signing, when --key is given).
    #[arg(long)]
    archive: bool,
    /// Memory for sorting; larger inputs are sorted in runs on disk (K, M, G suffixes).
    #[arg(long, value_name = "BYTES", default_value = "128M", value_parser = parse_memory)]
    memory: u64,
    /// Where sort runs go (default: <DIR>/runtime/).
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<PathBuf>,
    /// A configuration file (the observer's or the webhook's); only its [runtime] table is
    /// read: the deployment the records come from. `ZASTAVA__RUNTIME__*` variables and the
    /// flags below override it, as for `run`.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(flatten)]
    deployment: DeploymentArgs,
}

#[derive(clap::Args)]
struct SignArgs {
    /// The bundle's directory.
    #[arg(value_name = "DIR")]
    bundle: PathBuf,
    /// ECDSA P-256 private key (PEM: PKCS#8 or SEC1).
    #[arg(long, value_name = "PEM")]
    key: PathBuf,
    /// Also (re)write the bundle's .tar.zst beside it.
    #[arg(long)]
    archive: bool,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The bundle's directory, or its .tar.zst.
    #[arg(value_name = "DIR|ARCHIVE")]
    bundle: PathBuf,
    /// The signer's ECDSA P-256 public key (PEM).
    #[arg(long, value_name = "PEM", required_unless_present = "no_signature")]
    key: Option<PathBuf>,
    /// Check the content only, not the signature.
    #[arg(long, conflicts_with = "key")]
    no_signature: bool,
    /// Where an archive is unpacked to be checked (default: the system's temp directory).
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct DebugPathArgs {
    /// The GNU build-id (hex, as in a record's code_id).
    build_id: String,
    /// The debug tree.
    #[arg(long, value_name = "DIR", default_value = debug_path::DEFAULT_ROOT)]
    debug_root: PathBuf,
}

fn parse_run_id(text: &str) -> Result<String, String> {
    manifest::check_run_id(text).map(|()| text.to_owned())
}

fn parse_instant(text: &str) -> Result<Instant, String> {
    time::parse(text)
}

fn parse_memory(text: &str) -> Result<u64, String> {
    let bytes = zastava_platform::config::parse_bytes(text)?;
    if bytes < 1 << 20 {
        return Err("at least 1M".into());
    }
    Ok(bytes)
}

/// Runs an evidence command.
pub fn run(args: EvidenceArgs) -> ExitCode {
    let result = match args.command {
        EvidenceCommand::Export(args) => run_export(*args),
        EvidenceCommand::Sign(args) => run_sign(args),
        EvidenceCommand::Verify(args) => run_verify(args),
        EvidenceCommand::DebugPath(args) => return run_debug_path(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("zastava-observer evidence: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The deployment `export` was told: file, then environment, then flags.
fn given_deployment(args: &ExportArgs) -> Result<Deployment, String> {
    let mut sources = Sources::from_process(args.config.as_deref()).map_err(|e| e.to_string())?;
    args.deployment.apply(&mut sources);
    let runtime = RuntimeConfig::from_sources(&sources).map_err(|e| e.to_string())?;
    Ok(runtime.deployment())
}

fn run_export(args: ExportArgs) -> Result<ExitCode, EvidenceError> {
    let deployment = match given_deployment(&args) {
        Ok(deployment) => deployment,
        Err(err) => {
            eprintln!("zastava-observer evidence export: {err}");
            return Ok(ExitCode::from(2));
        }
    };
    let signing_key = args
        .key
        .as_deref()
        .map(dsse::load_signing_key)
        .transpose()?;
    let options = ExportOptions {
        runtime: args.runtime,
        entrytrace: args.entrytrace,
        out: args.out,
        run_id: args.run_id,
        filters: Filters {
            since: args.since,
            until: args.until,
            namespaces: args.namespaces.into_iter().collect(),
            workloads: args.workloads.into_iter().collect(),
        },
        skip_invalid: args.skip_invalid,
        memory: usize::try_from(args.memory).unwrap_or(usize::MAX),
        tmp_dir: args.tmp_dir,
        deployment: Some(deployment),
    };
    let Exported {
        dir,
        manifest,
        already_present,
    } = export::export(&options)?;
    let invalid: u64 = manifest.inputs.iter().map(|i| i.invalid).sum();
    let filtered: u64 = manifest.inputs.iter().map(|i| i.filtered_out).sum();
    let streams = &manifest.streams;
    eprintln!(
        "{} {}: {} runtime records ({} duplicates dropped), {} EntryTrace records ({} \
         duplicates dropped), {} workloads, deployment {}; {filtered} records filtered out, \
         {invalid} invalid lines skipped",
        if already_present {
            "already exported, identical:"
        } else {
            "exported"
        },
        dir.display(),
        streams.runtime.records,
        streams.runtime.duplicates_dropped,
        streams.entrytrace.records,
        streams.entrytrace.duplicates_dropped,
        manifest.workloads.len(),
        deployment::describe(&deployment::from_manifest(manifest.deployment.as_ref())),
    );
    if let Some(key) = &signing_key {
        let files = bundle_hashes(&dir)?;
        sign_into(&dir, key, &manifest.run_id, &files)?;
    }
    if args.archive {
        let archive = archive::write(&dir, &manifest.run_id)?;
        eprintln!("archived: {}", archive.display());
    }
    println!("{}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The SHA-256 of each file a signature covers.
fn bundle_hashes(dir: &std::path::Path) -> Result<BTreeMap<String, String>, EvidenceError> {
    let mut files = BTreeMap::new();
    for name in [
        MANIFEST,
        COALESCED,
        Stream::EntryTrace.file_name(),
        Stream::Runtime.file_name(),
    ] {
        files.insert(name.to_owned(), sha256_file(&dir.join(name))?.0);
    }
    Ok(files)
}

fn sign_into(
    dir: &std::path::Path,
    key: &p256::ecdsa::SigningKey,
    run_id: &str,
    files: &BTreeMap<String, String>,
) -> Result<(), EvidenceError> {
    let envelope = dsse::sign(key, run_id, files)?;
    let path = dir.join(ENVELOPE);
    export::write_synced(&path, &envelope)?;
    eprintln!(
        "signed: {} (keyid {})",
        path.display(),
        dsse::key_id(key.verifying_key())?
    );
    Ok(())
}

fn run_sign(args: SignArgs) -> Result<ExitCode, EvidenceError> {
    let key = dsse::load_signing_key(&args.key)?;
    // Sign only what checks out.
    let report = verify::verify_dir(&args.bundle, None)?;
    if !report.problems.is_empty() {
        print_problems(&report);
        eprintln!("not signed: the bundle has problems; export it again");
        return Ok(ExitCode::FAILURE);
    }
    let Some(manifest) = report.manifest else {
        return Err(EvidenceError::Refused("the bundle has no manifest".into()));
    };
    let files = bundle_hashes(&args.bundle)?;
    sign_into(&args.bundle, &key, &manifest.run_id, &files)?;
    if args.archive {
        let archive = archive::write(&args.bundle, &manifest.run_id)?;
        eprintln!("archived: {}", archive.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_problems(report: &Report) {
    for problem in &report.problems {
        println!("problem: {problem}");
    }
}

fn run_verify(args: VerifyArgs) -> Result<ExitCode, EvidenceError> {
    let key = args
        .key
        .as_deref()
        .map(dsse::load_verifying_key)
        .transpose()?;
    let report = if args.bundle.is_dir() {
        verify::verify_dir(&args.bundle, key.as_ref())?
    } else {
        let parent = args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
        let scratch = ScratchDir::create(&parent, ".zastava-verify")?;
        verify::verify_archive(&args.bundle, key.as_ref(), scratch.path())?
    };
    print_problems(&report);
    if !report.problems.is_empty() {
        println!(
            "FAILED: {}: {} problems",
            args.bundle.display(),
            report.problems.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    let Some(manifest) = &report.manifest else {
        return Err(EvidenceError::Refused("no manifest was read".into()));
    };
    let signature = match &report.signed_by {
        Some(keyid) => format!("signature by keyid {keyid} verified"),
        None => "signature not checked (--no-signature)".to_owned(),
    };
    println!(
        "verified: {}: run {}, {} runtime and {} EntryTrace records, {} workloads; {signature}",
        args.bundle.display(),
        manifest.run_id,
        manifest.streams.runtime.records,
        manifest.streams.entrytrace.records,
        manifest.workloads.len(),
    );
    Ok(ExitCode::SUCCESS)
}

fn run_debug_path(args: &DebugPathArgs) -> ExitCode {
    let path = match debug_path::debug_path(&args.build_id, &args.debug_root) {
        Ok(path) => path,
        Err(err) => {
            eprintln!("zastava-observer evidence debug-path: {err}");
            return ExitCode::from(2);
        }
    };
    let (state, code) = match debug_path::presence(&path) {
        Presence::Found => ("found".to_owned(), ExitCode::SUCCESS),
        Presence::Missing => ("missing".to_owned(), ExitCode::FAILURE),
        Presence::Dangling(target) => (
            format!(
                "missing (a symbolic link to {}, which is not there)",
                target.display()
            ),
            ExitCode::FAILURE,
        ),
        Presence::NotAFile => ("not a file".to_owned(), ExitCode::FAILURE),
    };
    println!("{}: {state}", path.display());
    code
}
