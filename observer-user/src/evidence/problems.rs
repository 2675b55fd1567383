//! Problems verification finds, each naming its file and line, kept to a readable number
//! per file.

use std::{collections::BTreeMap, fmt};

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
pub struct Problems {
    list: Vec<Problem>,
    per_file: BTreeMap<String, usize>,
}

impl Problems {
    pub fn add(&mut self, file: &str, line: Option<u64>, message: impl Into<String>) {
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

    pub fn finish(mut self) -> Vec<Problem> {
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
