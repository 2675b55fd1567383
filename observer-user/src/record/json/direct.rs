//! JSON values written straight into an output buffer, byte for byte as `serde_json`
//! writes them (the golden test in `pipeline/encode` holds the two to the same bytes): no
//! intermediate `String`, no serializer state. Used for the fields of edge records, which
//! are most of what the daemon writes.

use base64::Engine as _;

use crate::record::Raw;

/// Whether any of the eight bytes in `word` needs an escape inside a JSON string: below
/// 0x20, `"` or `\\` (everything else, non-ASCII included, is written as is). The classic
/// SWAR tests: `(x - 0x01…·n) & !x & 0x80…` is non-zero when a byte of `x` is below `n`.
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    (below(word, 0x20) | below(word ^ (ONES * 0x22), 1) | below(word ^ (ONES * 0x5c), 1)) != 0
}

/// The escape of a byte, if it needs one: the short forms JSON has, else `\u00xx`.
fn escape(b: u8) -> Option<[u8; 6]> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = |c: u8| Some([b'\\', c, 0, 0, 0, 0]);
    match b {
        b'"' => short(b'"'),
        b'\\' => short(b'\\'),
        0x08 => short(b'b'),
        b'\t' => short(b't'),
        b'\n' => short(b'n'),
        0x0c => short(b'f'),
        b'\r' => short(b'r'),
        0x00..=0x1f => Some([
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]),
        _ => None,
    }
}

/// The contents of a JSON string (no quotes), escaped as `serde_json` and RFC 8785 both
/// escape them. Most strings need no escape: eight bytes at a time are checked and copied
/// whole.
pub fn escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if !needs_escape(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        }
        if let Some(escaped) = escape(bytes[i]) {
            out.extend_from_slice(&bytes[start..i]);
            let len = if escaped[1] == b'u' { 6 } else { 2 };
            out.extend_from_slice(&escaped[..len]);
            start = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// A JSON string.
pub fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escaped(out, s.as_bytes());
    out.push(b'"');
}

/// `,"key":` (the comma unless the object was just opened). Keys are ours: plain ASCII.
pub fn key(out: &mut Vec<u8>, key: &str) {
    if out.last() != Some(&b'{') {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

pub fn uint(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

pub fn int(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

pub fn str_entry(out: &mut Vec<u8>, name: &str, value: &str) {
    key(out, name);
    string(out, value);
}

pub fn uint_entry(out: &mut Vec<u8>, name: &str, n: u64) {
    key(out, name);
    uint(out, n);
}

pub fn int_entry(out: &mut Vec<u8>, name: &str, n: i64) {
    key(out, name);
    int(out, n);
}

pub fn true_entry(out: &mut Vec<u8>, name: &str) {
    key(out, name);
    out.extend_from_slice(b"true");
}

/// Bytes as text, invalid UTF-8 replaced by U+FFFD (as `String::from_utf8_lossy`).
fn lossy(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    for chunk in bytes.utf8_chunks() {
        escaped(out, chunk.valid().as_bytes());
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
    out.push(b'"');
}

fn base64(out: &mut Vec<u8>, bytes: &[u8]) {
    // Base64 needs no escaping.
    out.push(b'"');
    let start = out.len();
    let len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    out.resize(start + len, 0);
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(bytes, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
    out.push(b'"');
}

/// `key` as text and, when the bytes are not UTF-8, `bytes_key` as their base64 (the
/// counterpart of `raw::serialize_entry`).
pub fn raw_entry(out: &mut Vec<u8>, name: &str, bytes_name: &str, value: &Raw) {
    key(out, name);
    lossy(out, value.as_bytes());
    if value.as_utf8().is_none() {
        key(out, bytes_name);
        base64(out, value.as_bytes());
    }
}

/// A list as `key` (texts) and, when any is not UTF-8, `bytes_key` with the base64 of every
/// entry (the counterpart of `raw::serialize_list`).
pub fn raw_list(out: &mut Vec<u8>, name: &str, bytes_name: &str, values: &[Raw]) {
    key(out, name);
    out.push(b'[');
    let mut all_utf8 = true;
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        lossy(out, v.as_bytes());
        all_utf8 &= v.as_utf8().is_some();
    }
    out.push(b']');
    if !all_utf8 {
        key(out, bytes_name);
        out.push(b'[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            base64(out, v.as_bytes());
        }
        out.push(b']');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut all: Vec<u8> = (0u8..=0x7f).collect();
        all.extend_from_slice("café € 🐳 \u{2028}".as_bytes());
        let text = String::from_utf8(all).unwrap();
        let mut out = Vec::new();
        string(&mut out, &text);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&text).unwrap()
        );
    }

    /// The word-at-a-time scan finds a byte that needs an escape wherever it is.
    #[test]
    fn every_byte_that_needs_an_escape_is_found_at_every_position() {
        for b in 0u8..=0x7f {
            for at in 0..20 {
                let mut text = "abcdefghijklmnopqrs".to_owned();
                text.insert(at, char::from(b));
                let mut out = Vec::new();
                string(&mut out, &text);
                assert_eq!(out, serde_json::to_vec(&text).unwrap(), "{b:#x} at {at}");
            }
        }
    }

    #[test]
    fn raw_bytes_are_written_as_serde_would_write_them() {
        let values = [
            Raw::new(b"plain"),
            Raw::new(b"bad-\xff-\"x\"\n"),
            Raw::new(b"cut-\xe2\x82"),
            Raw::new(b""),
        ];
        for v in &values {
            let mut out = b"{".to_vec();
            raw_entry(&mut out, "path", "pathBytes", v);
            out.push(b'}');
            let mut expect = Vec::new();
            {
                use serde::ser::{SerializeMap as _, Serializer as _};
                let mut ser = serde_json::Serializer::new(&mut expect);
                let mut map = ser.serialize_map(None).unwrap();
                crate::record::raw::serialize_entry(&mut map, "path", "pathBytes", v).unwrap();
                map.end().unwrap();
            }
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&expect)
            );
        }
        for list in [&values[..], &values[..1], &[]] {
            let mut out = b"{".to_vec();
            raw_list(&mut out, "args", "argsBytes", list);
            out.push(b'}');
            let mut expect = Vec::new();
            {
                use serde::ser::{SerializeMap as _, Serializer as _};
                let mut ser = serde_json::Serializer::new(&mut expect);
                let mut map = ser.serialize_map(None).unwrap();
                crate::record::raw::serialize_list(&mut map, "args", "argsBytes", list).unwrap();
                map.end().unwrap();
            }
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&expect)
            );
        }
    }
}
