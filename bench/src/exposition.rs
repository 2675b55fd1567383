//! Samples read from a `/metrics` scrape (the Prometheus text exposition format):
//! `name{label="value",...} value [timestamp]`, with the labels in any order and their
//! values unescaped, so a series is found by its name and read by its labels whatever
//! other labels (the common ones of a deployment) it carries.

/// One sample of a scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// In the order the line gives them, values unescaped.
    pub labels: Vec<(&'a str, String)>,
    /// The value as written (`12`, `0.5`, `+Inf`, `NaN`).
    pub value: &'a str,
}

impl Sample<'_> {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The samples of the series named `name` in `scrape`, in its order.
pub fn samples<'a>(scrape: &'a str, name: &'a str) -> impl Iterator<Item = Sample<'a>> + 'a {
    scrape
        .lines()
        .filter_map(sample)
        .filter(move |s| s.name == name)
}

/// A line as a sample; `None` for comments, blank lines and lines that are not samples.
pub fn sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let (name, mut rest) = line.split_at(name_end);
    if name.is_empty() {
        return None;
    }
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = read_labels(inner, &mut labels)?;
    }
    let value = rest.split_whitespace().next()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Reads `key="value"` pairs up to the closing `}`; returns what follows it.
fn read_labels<'a>(mut rest: &'a str, labels: &mut Vec<(&'a str, String)>) -> Option<&'a str> {
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Some(after);
        }
        let key_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
        let (key, after_key) = rest.split_at(key_end);
        if key.is_empty() {
            return None;
        }
        let quoted = after_key.trim_start().strip_prefix('=')?;
        let quoted = quoted.trim_start().strip_prefix('"')?;
        let (value, after_value) = unescape(quoted)?;
        labels.push((key, value));
        rest = after_value.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// A label value up to its closing quote, with `\\`, `\"` and `\n` undone; and what follows
/// the quote.
fn unescape(quoted: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, &quoted[at + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "\
# HELP decision_seconds How long a decision took.
# TYPE decision_seconds histogram
decision_seconds_bucket{le=\"0.005\"} 3
decision_seconds_bucket{cluster=\"x\",tenant=\"a \\\"b\\\" \\\\ c\",le=\"0.01\"} 7
decision_seconds_bucket{ cluster = \"x\" , le=\"+Inf\", } 9 1700000000000
decision_seconds_bucket_other{le=\"1\"} 100
decision_seconds_sum 0.25
";

    #[test]
    fn a_series_is_read_by_its_name_and_labels_whatever_labels_come_first() {
        let buckets: Vec<(String, &str)> = samples(SCRAPE, "decision_seconds_bucket")
            .map(|s| (s.label("le").unwrap().to_owned(), s.value))
            .collect();
        assert_eq!(
            buckets,
            [
                ("0.005".to_owned(), "3"),
                ("0.01".to_owned(), "7"),
                ("+Inf".to_owned(), "9")
            ]
        );
    }

    #[test]
    fn label_values_are_unescaped_and_samples_without_labels_have_none() {
        let second = samples(SCRAPE, "decision_seconds_bucket").nth(1).unwrap();
        assert_eq!(second.label("cluster"), Some("x"));
        assert_eq!(second.label("tenant"), Some("a \"b\" \\ c"));
        assert_eq!(second.label("missing"), None);
        let sum = samples(SCRAPE, "decision_seconds_sum").next().unwrap();
        assert!(sum.labels.is_empty());
        assert_eq!(sum.value, "0.25");
    }

    #[test]
    fn lines_that_are_not_samples_are_skipped() {
        assert_eq!(sample("# TYPE x counter"), None);
        assert_eq!(sample("   "), None);
        assert_eq!(sample("x{le=\"1} 3"), None);
        assert_eq!(sample("x{le=1} 3"), None);
        assert_eq!(sample("x"), None);
    }
}
