//! NDJSON output: one JSON object per line, to stdout or a file (appended).

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use serde::Serialize;

/// Where events go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout,
    File(PathBuf),
}

impl Output {
    /// `-` is stdout; anything else a file path.
    pub fn parse(value: &str) -> Self {
        if value == "-" {
            Output::Stdout
        } else {
            Output::File(PathBuf::from(value))
        }
    }
}

pub struct NdjsonSink {
    out: BufWriter<Box<dyn Write + Send>>,
    written: u64,
}

impl NdjsonSink {
    pub fn open(output: &Output) -> io::Result<Self> {
        let inner: Box<dyn Write + Send> = match output {
            Output::Stdout => Box::new(io::stdout()),
            Output::File(path) => Box::new(open_append(path)?),
        };
        Ok(NdjsonSink {
            out: BufWriter::with_capacity(64 * 1024, inner),
            written: 0,
        })
    }

    /// A sink writing into any writer (tests, benchmarks).
    pub fn to_writer(writer: Box<dyn Write + Send>) -> Self {
        NdjsonSink {
            out: BufWriter::with_capacity(64 * 1024, writer),
            written: 0,
        }
    }

    /// Writes one record as a line.
    pub fn write<T: Serialize>(&mut self, record: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")?;
        self.written += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn written(&self) -> u64 {
        self.written
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", parent.display())))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))
}
