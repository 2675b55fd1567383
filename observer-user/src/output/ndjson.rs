//! NDJSON output: one JSON record per line, to stdout or to a file that is rotated by
//! size (`zastava.runtime.ndjson` → `zastava.runtime.1.ndjson` → ...; `.1` is the newest).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use serde::Serialize;

/// Where records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout,
    /// A file, rotated when it would grow beyond `max_bytes`, keeping `keep` rotated files.
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: usize,
    },
}

impl Output {
    /// `-` is stdout; anything else a file path.
    pub fn parse(value: &str, max_bytes: u64, keep: usize) -> Self {
        if value == "-" {
            Output::Stdout
        } else {
            Output::File {
                path: PathBuf::from(value),
                max_bytes,
                keep,
            }
        }
    }
}

enum Target {
    Stdout(BufWriter<io::Stdout>),
    File {
        out: BufWriter<File>,
        path: PathBuf,
        /// Bytes in the current file.
        size: u64,
        max_bytes: u64,
        keep: usize,
    },
    Writer(BufWriter<Box<dyn Write + Send + Sync>>),
}

pub struct NdjsonSink {
    target: Target,
    line: Vec<u8>,
    written: u64,
    rotations: u64,
}

const BUFFER: usize = 64 * 1024;

impl NdjsonSink {
    pub fn open(output: &Output) -> io::Result<Self> {
        let target = match output {
            Output::Stdout => Target::Stdout(BufWriter::with_capacity(BUFFER, io::stdout())),
            Output::File {
                path,
                max_bytes,
                keep,
            } => {
                let file = open_append(path)?;
                let size = file.metadata()?.len();
                Target::File {
                    out: BufWriter::with_capacity(BUFFER, file),
                    path: path.clone(),
                    size,
                    max_bytes: *max_bytes,
                    keep: *keep,
                }
            }
        };
        Ok(NdjsonSink {
            target,
            line: Vec::with_capacity(1024),
            written: 0,
            rotations: 0,
        })
    }

    /// A sink writing into any writer (tests, benchmarks, or nowhere).
    pub fn to_writer(writer: Box<dyn Write + Send + Sync>) -> Self {
        NdjsonSink {
            target: Target::Writer(BufWriter::with_capacity(BUFFER, writer)),
            line: Vec::with_capacity(1024),
            written: 0,
            rotations: 0,
        }
    }

    /// Writes one record as a line.
    pub fn write<T: Serialize>(&mut self, record: &T) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record)?;
        self.push_line()
    }

    /// Writes `count` records already serialized one per line, each ending in a newline
    /// (the caller knows how many; they are not counted again). A file rotates between
    /// lines, never inside one.
    pub fn write_lines(&mut self, lines: &[u8], count: u64) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        debug_assert_eq!(lines.last(), Some(&b'\n'));
        debug_assert_eq!(line_count(lines), count);
        let fits = match &self.target {
            Target::File {
                size, max_bytes, ..
            } => size.saturating_add(lines.len() as u64) <= *max_bytes,
            Target::Stdout(_) | Target::Writer(_) => true,
        };
        if fits {
            self.emit(lines)?;
            self.written += count;
            return Ok(());
        }
        for line in lines.split_inclusive(|&b| b == b'\n') {
            self.emit(line)?;
            self.written += 1;
        }
        Ok(())
    }

    fn push_line(&mut self) -> io::Result<()> {
        self.line.push(b'\n');
        let line = std::mem::take(&mut self.line);
        let result = self.emit(&line);
        self.line = line;
        self.written += 1;
        result
    }

    /// Writes whole lines, rotating the file first when they would take it past its size.
    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.target {
            Target::Stdout(out) => out.write_all(bytes),
            Target::Writer(out) => out.write_all(bytes),
            Target::File {
                out,
                path,
                size,
                max_bytes,
                keep,
            } => {
                let len = bytes.len() as u64;
                if *size > 0 && *size + len > *max_bytes {
                    out.flush()?;
                    rotate(path, *keep)?;
                    *out = BufWriter::with_capacity(BUFFER, open_append(path)?);
                    *size = 0;
                    self.rotations += 1;
                }
                out.write_all(bytes)?;
                *size += len;
                Ok(())
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.target {
            Target::Stdout(out) => out.flush(),
            Target::Writer(out) => out.flush(),
            Target::File { out, .. } => out.flush(),
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn rotations(&self) -> u64 {
        self.rotations
    }
}

fn line_count(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// `dir/name.ndjson` → `dir/name.<n>.ndjson`; other names get `.<n>` appended.
pub fn rotated_name(path: &Path, n: usize) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rotated = match name.strip_suffix(".ndjson") {
        Some(stem) => format!("{stem}.{n}.ndjson"),
        None => format!("{name}.{n}"),
    };
    path.with_file_name(rotated)
}

/// Shifts `.1` → `.2` ... dropping what falls beyond `keep`, then the current file → `.1`.
fn rotate(path: &Path, keep: usize) -> io::Result<()> {
    let oldest = rotated_name(path, keep);
    match fs::remove_file(&oldest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("removing {}: {e}", oldest.display()),
            ))
        }
    }
    for n in (1..keep).rev() {
        let from = rotated_name(path, n);
        if from.exists() {
            fs::rename(&from, rotated_name(path, n + 1))?;
        }
    }
    fs::rename(path, rotated_name(path, 1))
        .map_err(|e| io::Error::new(e.kind(), format!("rotating {}: {e}", path.display())))
}

fn open_append(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", parent.display())))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_keep_the_ndjson_extension() {
        assert_eq!(
            rotated_name(
                Path::new("/var/log/stellaops/runtime/zastava.runtime.ndjson"),
                3
            ),
            PathBuf::from("/var/log/stellaops/runtime/zastava.runtime.3.ndjson")
        );
        assert_eq!(
            rotated_name(Path::new("/tmp/events.log"), 1),
            PathBuf::from("/tmp/events.log.1")
        );
    }

    #[test]
    fn files_rotate_by_size_and_old_ones_are_dropped() {
        let dir = std::env::temp_dir().join(format!("zastava-rotate-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("zastava.runtime.ndjson");
        // Each line is 12 bytes ({"n":12345}\n); two fit in 30 bytes.
        let mut sink = NdjsonSink::open(&Output::parse(path.to_str().unwrap(), 30, 2)).unwrap();
        for n in 10000..10007 {
            sink.write(&serde_json::json!({ "n": n })).unwrap();
        }
        sink.flush().unwrap();
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        // 7 lines: current holds the last one; .1 and .2 the two pairs before; the first
        // pair was dropped (keep = 2).
        assert_eq!(read(&path), "{\"n\":10006}\n");
        assert_eq!(
            read(&rotated_name(&path, 1)),
            "{\"n\":10004}\n{\"n\":10005}\n"
        );
        assert_eq!(
            read(&rotated_name(&path, 2)),
            "{\"n\":10002}\n{\"n\":10003}\n"
        );
        assert!(!rotated_name(&path, 3).exists());
        assert_eq!(sink.rotations(), 3);
        assert_eq!(sink.written(), 7);

        // Reopening appends to the current file and counts its size.
        let mut again = NdjsonSink::open(&Output::parse(path.to_str().unwrap(), 30, 2)).unwrap();
        again.write(&serde_json::json!({ "n": 10007 })).unwrap();
        again.write(&serde_json::json!({ "n": 10008 })).unwrap();
        again.flush().unwrap();
        assert_eq!(read(&path), "{\"n\":10008}\n");
        assert_eq!(
            read(&rotated_name(&path, 1)),
            "{\"n\":10006}\n{\"n\":10007}\n"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_block_of_lines_rotates_between_lines() {
        let dir = std::env::temp_dir().join(format!("zastava-block-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("zastava.runtime.ndjson");
        let mut sink = NdjsonSink::open(&Output::parse(path.to_str().unwrap(), 30, 5)).unwrap();
        // Fits whole: written in one piece.
        sink.write_lines(b"{\"n\":10000}\n{\"n\":10001}\n", 2)
            .unwrap();
        // Would take the file past 30 bytes: split at line boundaries across rotations.
        sink.write_lines(b"{\"n\":10002}\n{\"n\":10003}\n{\"n\":10004}\n", 3)
            .unwrap();
        sink.write_lines(b"", 0).unwrap();
        sink.flush().unwrap();
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), "{\"n\":10004}\n");
        assert_eq!(
            read(&rotated_name(&path, 1)),
            "{\"n\":10002}\n{\"n\":10003}\n"
        );
        assert_eq!(
            read(&rotated_name(&path, 2)),
            "{\"n\":10000}\n{\"n\":10001}\n"
        );
        assert_eq!(sink.written(), 5);
        assert_eq!(sink.rotations(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}
