//! Where an HTTP/2 connection's streams are, from the frames read and written (RFC 9113
//! §4.1: every frame starts with a 9-byte header of length, type, flags and stream id), so
//! that an HTTP/2 connection has the deadlines an HTTP/1.1 one has:
//!
//! - a header block (HEADERS and its CONTINUATIONs, up to the end of the frame carrying
//!   END_HEADERS) must be whole within `server.header_timeout` of its first byte. While a
//!   block is open no other frame may come (§6.10) and HPACK's state is the connection's,
//!   so a late one ends the connection, not only its stream;
//! - with no request waiting for its response, the connection is idle from the last frame
//!   that moved a request: a new stream opened, or a response's HEADERS or DATA written.
//!   Control frames (PING, SETTINGS, WINDOW_UPDATE, PRIORITY, GOAWAY) and frames on streams
//!   already answered do not count, so a client cannot hold a connection open with them.
//!
//! A request whose headers are whole is the handler's: its body has `server.body_timeout`
//! (answered 408), its decision the budget. hyper parses the frames; this only follows.

use std::collections::HashSet;

use tokio::time::Instant;

/// The client's connection preface (§3.4), before its first frame.
const PREFACE_LEN: u8 = 24;
const HEADER_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const CONTINUATION: u8 = 0x9;

const END_HEADERS: u8 = 0x4;

/// Most streams followed as waiting for their responses: far above the concurrent streams
/// the server allows, whose excess it resets (which this sees).
const MAX_FOLLOWED: usize = 4096;

/// A frame header just read whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    /// When its first byte was fed.
    began: Instant,
}

/// Splits one direction's bytes into frames.
#[derive(Debug)]
struct Frames {
    /// Preface bytes still to skip.
    preface: u8,
    header: [u8; HEADER_LEN],
    have: usize,
    began: Option<Instant>,
    /// Payload bytes of the current frame still to come.
    payload: u64,
}

impl Frames {
    fn new(preface: u8) -> Self {
        Frames {
            preface,
            header: [0; HEADER_LEN],
            have: 0,
            began: None,
            payload: 0,
        }
    }

    /// Feeds `bytes`; calls `header` for each frame header read whole and `ended` when a
    /// frame's payload has been read whole.
    fn feed(&mut self, mut bytes: &[u8], now: Instant, mut on: impl FnMut(Event)) {
        while !bytes.is_empty() {
            if self.preface > 0 {
                let skip = bytes.len().min(usize::from(self.preface));
                self.preface -= u8::try_from(skip).unwrap_or(self.preface);
                bytes = &bytes[skip..];
                continue;
            }
            if self.payload > 0 {
                let skip = bytes
                    .len()
                    .min(usize::try_from(self.payload).unwrap_or(usize::MAX));
                self.payload -= skip as u64;
                bytes = &bytes[skip..];
                if self.payload == 0 {
                    on(Event::Ended);
                }
                continue;
            }
            let began = *self.began.get_or_insert(now);
            let take = bytes.len().min(HEADER_LEN - self.have);
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have < HEADER_LEN {
                continue;
            }
            let h = self.header;
            self.have = 0;
            self.began = None;
            self.payload = u64::from(h[0]) << 16 | u64::from(h[1]) << 8 | u64::from(h[2]);
            on(Event::Header(Frame {
                kind: h[3],
                flags: h[4],
                stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                began,
            }));
            if self.payload == 0 {
                on(Event::Ended);
            }
        }
    }
}

enum Event {
    Header(Frame),
    Ended,
}

/// What the connection is waiting for, and since when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// The header block that began then must end.
    Head(Instant),
    /// Nothing is waiting for an answer; the last frame that moved a request was then.
    Idle(Instant),
    /// A request is being answered (the handler's own deadlines bound it).
    Busy,
}

/// One HTTP/2 connection's streams, as the server sees them.
#[derive(Debug)]
pub struct Streams {
    read: Frames,
    written: Frames,
    /// The open header block's first byte, and whether the frame being read ends it.
    block: Option<Instant>,
    block_ends: bool,
    /// Client streams opened whose response headers have not been written (neither hyper's
    /// HTTP/2 nor the handlers send informational responses, so a response's first HEADERS
    /// is its final one).
    waiting: HashSet<u32>,
    /// The highest client stream id opened: a new stream's id is higher (§5.1.1).
    last_opened: u32,
    last_activity: Instant,
}

impl Streams {
    pub fn new(now: Instant) -> Self {
        Streams {
            read: Frames::new(PREFACE_LEN),
            written: Frames::new(0),
            block: None,
            block_ends: false,
            waiting: HashSet::new(),
            last_opened: 0,
            last_activity: now,
        }
    }

    /// Follows bytes read from the client.
    pub fn read(&mut self, bytes: &[u8], now: Instant) {
        let mut read = std::mem::replace(&mut self.read, Frames::new(0));
        read.feed(bytes, now, |event| match event {
            Event::Header(frame) => self.client_frame(frame, now),
            Event::Ended => {
                if self.block_ends {
                    self.block = None;
                    self.block_ends = false;
                }
            }
        });
        self.read = read;
    }

    fn client_frame(&mut self, frame: Frame, now: Instant) {
        match frame.kind {
            HEADERS | CONTINUATION => {
                self.block.get_or_insert(frame.began);
                self.block_ends = frame.flags & END_HEADERS != 0;
                if frame.kind == HEADERS && frame.stream > self.last_opened {
                    self.last_opened = frame.stream;
                    if self.waiting.len() < MAX_FOLLOWED {
                        self.waiting.insert(frame.stream);
                    }
                    self.last_activity = now;
                }
            }
            RST_STREAM => self.answered(frame.stream, now),
            _ => {}
        }
    }

    /// Follows bytes written to the client.
    pub fn wrote(&mut self, bytes: &[u8], now: Instant) {
        let mut written = std::mem::replace(&mut self.written, Frames::new(0));
        written.feed(bytes, now, |event| {
            if let Event::Header(frame) = event {
                match frame.kind {
                    HEADERS | DATA => {
                        self.last_activity = now;
                        self.answered(frame.stream, now);
                    }
                    RST_STREAM => self.answered(frame.stream, now),
                    _ => {}
                }
            }
        });
        self.written = written;
    }

    fn answered(&mut self, stream: u32, now: Instant) {
        if self.waiting.remove(&stream) && self.waiting.is_empty() {
            self.last_activity = now;
        }
    }

    pub fn due(&self) -> Due {
        if let Some(began) = self.block {
            Due::Head(began)
        } else if self.waiting.is_empty() {
            Due::Idle(self.last_activity)
        } else {
            Due::Busy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn at(s: u64) -> Instant {
        // Instants only compared with each other.
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *START.get_or_init(Instant::now) + Duration::from_secs(s)
    }

    fn opened(now: Instant) -> Streams {
        let mut s = Streams::new(now);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(4, 0, 0, &[]));
        s.read(&bytes, now);
        s
    }

    #[test]
    fn pings_and_window_updates_do_not_keep_a_connection_busy() {
        let mut s = opened(at(0));
        assert_eq!(s.due(), Due::Idle(at(0)));
        s.read(&frame(6, 0, 0, &[0; 8]), at(5));
        s.read(&frame(8, 0, 0, &[0, 0, 1, 0]), at(6));
        s.wrote(&frame(6, 1, 0, &[0; 8]), at(5));
        s.wrote(&frame(4, 1, 0, &[]), at(6));
        assert_eq!(s.due(), Due::Idle(at(0)));
    }

    #[test]
    fn a_request_is_busy_until_its_response_headers_are_written() {
        let mut s = opened(at(0));
        s.read(&frame(HEADERS, END_HEADERS, 1, &[0x83, 0x87, 0x84]), at(1));
        assert_eq!(s.due(), Due::Busy);
        // Its body and the client's pings change nothing.
        s.read(&frame(DATA, 0, 1, b"{\"a\""), at(2));
        s.read(&frame(6, 0, 0, &[0; 8]), at(3));
        assert_eq!(s.due(), Due::Busy);
        s.wrote(&frame(HEADERS, END_HEADERS, 1, &[0x88]), at(4));
        assert_eq!(s.due(), Due::Idle(at(4)));
        s.wrote(&frame(DATA, 1, 1, b"ok"), at(5));
        assert_eq!(s.due(), Due::Idle(at(5)));
        // Frames on the answered stream (trailers, data) do not open it again.
        s.read(&frame(HEADERS, END_HEADERS | 1, 1, &[0x88]), at(6));
        s.read(&frame(DATA, 1, 1, b"}"), at(7));
        assert_eq!(s.due(), Due::Idle(at(5)));
    }

    #[test]
    fn a_stream_reset_by_either_side_is_no_longer_waited_for() {
        let mut s = opened(at(0));
        s.read(&frame(HEADERS, END_HEADERS, 1, &[0x83]), at(1));
        s.read(&frame(HEADERS, END_HEADERS, 3, &[0x83]), at(1));
        s.read(&frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]), at(2));
        assert_eq!(s.due(), Due::Busy);
        s.wrote(&frame(RST_STREAM, 0, 3, &[0, 0, 0, 7]), at(3));
        assert_eq!(s.due(), Due::Idle(at(3)));
    }

    #[test]
    fn a_header_block_is_open_from_its_first_byte_to_the_end_of_its_last_frame() {
        let mut s = opened(at(0));
        let headers = frame(HEADERS, 0, 1, &[0x83, 0x87]);
        // The frame header dribbled: the block began with its first byte.
        s.read(&headers[..4], at(1));
        assert_eq!(s.due(), Due::Idle(at(0)));
        s.read(&headers[4..], at(2));
        assert_eq!(s.due(), Due::Head(at(1)));
        s.read(&frame(CONTINUATION, 0, 1, &[0x84]), at(3));
        let last = frame(CONTINUATION, END_HEADERS, 1, &[0x41, 0x01, b'w']);
        s.read(&last[..10], at(4));
        assert_eq!(s.due(), Due::Head(at(1)), "its payload is not whole yet");
        s.read(&last[10..], at(5));
        assert_eq!(s.due(), Due::Busy);
    }

    #[test]
    fn frames_split_anywhere_are_followed_the_same() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        bytes.extend(frame(HEADERS, END_HEADERS, 1, &[0x83, 0x87, 0x84]));
        bytes.extend(frame(DATA, 1, 1, &[b'x'; 300]));
        bytes.extend(frame(HEADERS, 0, 3, &[0x83]));
        for split in 0..bytes.len() {
            let mut s = Streams::new(at(0));
            s.read(&bytes[..split], at(1));
            s.read(&bytes[split..], at(1));
            assert_eq!(s.due(), Due::Head(at(1)), "split at {split}");
            assert_eq!(s.waiting, HashSet::from([1, 3]), "split at {split}");
        }
    }
}
