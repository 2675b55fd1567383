//! What the spool stores and how: a batch ([`SpoolEntry`]) in a checksummed frame
//! (`magic u32 | length u32 | crc32 u32 | payload`, little endian; the payload rmp-serde),
//! and the `head` file naming the first frame some sink has not settled.

use std::{
    fs::{self, File},
    io::{self, Write as _},
    path::Path,
};

use serde::{Deserialize, Serialize};

pub(super) const MAGIC: u32 = 0x5A53_5031; // "ZSP1"
pub(super) const FRAME_HEADER: u64 = 12;

/// One spooled batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolEntry {
    pub batch_id: String,
    /// Edge occurrences in the batch (what the loss accounting counts).
    pub events: u64,
    /// Records in the batch.
    pub records: u64,
    /// Timestamp of the oldest record, nanoseconds since the epoch.
    pub oldest_ns: i64,
    /// The request body, gzip-encoded JSON.
    #[serde(with = "serde_bytes_compat")]
    pub body: Vec<u8>,
}

/// rmp-serde writes `Vec<u8>` as an array of integers by default; binary is 1 byte per
/// byte instead of up to 2.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

/// A frame holding `payload`.
pub(super) fn encode(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEADER as usize + payload.len());
    frame.extend_from_slice(&MAGIC.to_le_bytes());
    frame.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    frame.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

pub(super) enum Frame {
    Entry {
        entry: SpoolEntry,
        bytes: u64,
    },
    /// No more data.
    End,
    /// Cut short or corrupt.
    Bad,
}

pub(super) fn read_frame(data: &[u8], offset: u64) -> Frame {
    let Ok(at) = usize::try_from(offset) else {
        return Frame::Bad;
    };
    let rest = &data[at.min(data.len())..];
    if rest.is_empty() {
        return Frame::End;
    }
    if rest.len() < FRAME_HEADER as usize {
        return Frame::Bad;
    }
    let word = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
    let (magic, len, crc) = (word(0), word(4) as usize, word(8));
    let Some(payload) = rest.get(FRAME_HEADER as usize..FRAME_HEADER as usize + len) else {
        return Frame::Bad;
    };
    if magic != MAGIC || crc32fast::hash(payload) != crc {
        return Frame::Bad;
    }
    match rmp_serde::from_slice::<SpoolEntry>(payload) {
        Ok(entry) => Frame::Entry {
            entry,
            bytes: FRAME_HEADER + len as u64,
        },
        Err(_) => Frame::Bad,
    }
}

const HEAD: &str = "head";

/// (segment, offset) of the first unacknowledged frame; (0, 0) for a new spool.
pub(super) fn read_head(dir: &Path) -> io::Result<(u64, u64)> {
    match fs::read_to_string(dir.join(HEAD)) {
        Ok(text) => {
            let mut parts = text.split_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next()) {
                (Some(Ok(segment)), Some(Ok(offset))) => Ok((segment, offset)),
                // A head file that cannot be read would lose track of acknowledgements;
                // starting over resends (the backend drops duplicate batch ids).
                _ => Ok((0, 0)),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((0, 0)),
        Err(e) => Err(e),
    }
}

/// Writes the head atomically: a new file, synced, renamed over the old one.
pub(super) fn write_head(dir: &Path, segment: u64, offset: u64) -> io::Result<()> {
    let tmp = dir.join("head.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(format!("{segment} {offset}\n").as_bytes())?;
    file.sync_data()?;
    fs::rename(&tmp, dir.join(HEAD))
}
