//! Where an HTTP/1.1 connection's request stream is: between requests, inside a request's
//! head, or inside its body. Just enough of the framing (RFC 9112: the empty line that ends
//! a head, `Content-Length`, chunked bodies) to tell where the next request begins, also
//! when requests are pipelined, so that a head's deadline can start at its first byte.
//!
//! hyper parses the requests themselves; this only follows along. Framing it cannot follow
//! (HTTP/2's preface, a malformed length) makes it stop following: hyper refuses such a
//! request and closes the connection anyway.

/// Longest start of a header line kept: enough for the fields the framing depends on.
const LINE_KEPT: usize = 256;
/// Longest chunk-size line (with extensions) followed; hyper refuses longer ones too.
const CHUNK_LINE_MAX: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Between requests: the next byte other than an empty line begins one.
    Idle,
    /// Inside a request's head.
    Head(Head),
    /// Inside a body of known length: this many bytes remain.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunked),
    /// HTTP/2, or framing this tracker cannot follow: nothing more to say.
    Opaque,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Head {
    /// The start of the line being read (at most `LINE_KEPT` bytes).
    line: Vec<u8>,
    /// Whether the line being read is the request line.
    first_line: bool,
    content_length: Option<u64>,
    chunked: bool,
    /// A field the framing depends on that it cannot read.
    unfollowable: bool,
    /// The request line is HTTP/2's connection preface.
    h2_preface: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Chunked {
    /// Reading a chunk-size line (its bytes so far).
    Size(Vec<u8>),
    /// Inside a chunk's data: this many bytes remain, then CRLF.
    Data(u64),
    /// After a chunk's data: its line end.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; whether the line being
    /// read is still empty.
    Trailers(bool),
}

/// Where the bytes fed so far left the request stream, as far as a head is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadState {
    /// Not inside a request's head.
    Outside,
    /// Inside a head that began in the bytes just fed.
    Began,
    /// Inside the head that was already being read before them.
    Continues,
}

/// Follows one connection's requests.
#[derive(Clone, Debug)]
pub struct Framing {
    phase: Phase,
    /// Requests whose head (and body) have been read whole.
    completed: u64,
}

impl Default for Framing {
    fn default() -> Self {
        Framing::new()
    }
}

impl Framing {
    pub fn new() -> Self {
        Framing {
            phase: Phase::Idle,
            completed: 0,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Idle
    }

    pub fn is_opaque(&self) -> bool {
        self.phase == Phase::Opaque
    }

    /// How many requests have been read whole so far.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Takes the next bytes read from the connection.
    pub fn feed(&mut self, mut bytes: &[u8]) -> HeadState {
        let was_in_head = matches!(self.phase, Phase::Head(_));
        let mut began = false;
        while !bytes.is_empty() {
            let used = match &mut self.phase {
                Phase::Opaque => break,
                Phase::Idle => {
                    // Empty lines before a request line are ignored (RFC 9112, 2.2).
                    if matches!(bytes[0], b'\r' | b'\n') {
                        1
                    } else {
                        began = true;
                        self.phase = Phase::Head(Head {
                            first_line: true,
                            ..Head::default()
                        });
                        0
                    }
                }
                Phase::Head(head) => {
                    let (used, ended) = head_bytes(head, bytes);
                    if ended {
                        let head = std::mem::take(head);
                        self.end_head(&head);
                    }
                    used
                }
                Phase::Body(remaining) => {
                    let used = (*remaining).min(bytes.len() as u64);
                    *remaining -= used;
                    if *remaining == 0 {
                        self.end_request();
                    }
                    // At most `bytes.len()`, which is a usize.
                    usize::try_from(used).unwrap_or(bytes.len())
                }
                Phase::Chunked(chunked) => match chunked_bytes(chunked, bytes) {
                    Some((used, false)) => used,
                    Some((used, true)) => {
                        self.end_request();
                        used
                    }
                    None => {
                        self.phase = Phase::Opaque;
                        break;
                    }
                },
            };
            bytes = &bytes[used..];
        }
        match self.phase {
            Phase::Head(_) if began => HeadState::Began,
            Phase::Head(_) if was_in_head => HeadState::Continues,
            Phase::Head(_) => HeadState::Began,
            _ => HeadState::Outside,
        }
    }

    fn end_head(&mut self, head: &Head) {
        self.phase = if head.h2_preface || head.unfollowable {
            Phase::Opaque
        } else if head.chunked {
            Phase::Chunked(Chunked::Size(Vec::new()))
        } else {
            match head.content_length {
                Some(n) if n > 0 => Phase::Body(n),
                // No body: the request is whole with its head.
                _ => {
                    self.completed += 1;
                    Phase::Idle
                }
            }
        };
    }

    fn end_request(&mut self) {
        self.completed += 1;
        self.phase = Phase::Idle;
    }
}

/// Reads head bytes; returns how many were used and whether the head ended.
fn head_bytes(head: &mut Head, bytes: &[u8]) -> (usize, bool) {
    for (i, &byte) in bytes.iter().enumerate() {
        if byte != b'\n' {
            if head.line.len() < LINE_KEPT {
                head.line.push(byte);
            }
            continue;
        }
        let mut line = std::mem::take(&mut head.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() && !head.first_line {
            return (i + 1, true);
        }
        if head.first_line {
            head.first_line = false;
            head.h2_preface = line == b"PRI * HTTP/2.0";
        } else {
            field(head, &line);
        }
    }
    (bytes.len(), false)
}

/// Notes what a header field line says about the body's framing.
fn field(head: &mut Head, line: &[u8]) {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return;
    };
    let name = &line[..colon];
    let value = String::from_utf8_lossy(&line[colon + 1..]);
    let value = value.trim();
    if name.eq_ignore_ascii_case(b"content-length") {
        match value.parse::<u64>() {
            Ok(n) if head.content_length.is_none_or(|m| m == n) && line.len() < LINE_KEPT => {
                head.content_length = Some(n);
            }
            _ => head.unfollowable = true,
        }
    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
        // The last coding decides; a request body not ending in chunked is refused.
        let last = value.rsplit(',').next().unwrap_or_default().trim();
        if last.eq_ignore_ascii_case("chunked") && line.len() < LINE_KEPT {
            head.chunked = true;
        } else {
            head.unfollowable = true;
        }
    }
}

/// Reads chunked-body bytes; returns how many were used and whether the body ended, or
/// `None` when they are not a chunked body.
fn chunked_bytes(state: &mut Chunked, bytes: &[u8]) -> Option<(usize, bool)> {
    let mut i = 0;
    while i < bytes.len() {
        match state {
            Chunked::Size(line) => {
                let byte = bytes[i];
                i += 1;
                if byte != b'\n' {
                    if line.len() >= CHUNK_LINE_MAX {
                        return None;
                    }
                    line.push(byte);
                    continue;
                }
                let text = String::from_utf8_lossy(line);
                let digits = text
                    .trim_end_matches('\r')
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .trim();
                let size = u64::from_str_radix(digits, 16).ok()?;
                *state = if size == 0 {
                    Chunked::Trailers(true)
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(remaining) => {
                let used = (*remaining).min((bytes.len() - i) as u64);
                *remaining -= used;
                i += usize::try_from(used).unwrap_or(bytes.len() - i);
                if *remaining == 0 {
                    *state = Chunked::DataEnd;
                }
            }
            Chunked::DataEnd => {
                let byte = bytes[i];
                i += 1;
                match byte {
                    b'\r' => {}
                    b'\n' => *state = Chunked::Size(Vec::new()),
                    _ => return None,
                }
            }
            Chunked::Trailers(empty) => {
                let byte = bytes[i];
                i += 1;
                match byte {
                    b'\n' if *empty => return Some((i, true)),
                    b'\n' => *empty = true,
                    b'\r' => {}
                    _ => *empty = false,
                }
            }
        }
    }
    Some((i, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &[u8] = b"POST /validate HTTP/1.1\r\nHost: w\r\nContent-Length: 5\r\n\r\nhello";

    /// Feeds `bytes` one at a time; returns the state after each.
    fn bytewise(framing: &mut Framing, bytes: &[u8]) -> Vec<HeadState> {
        bytes.iter().map(|b| framing.feed(&[*b])).collect()
    }

    #[test]
    fn a_head_begins_at_its_first_byte_and_ends_at_the_empty_line() {
        let mut f = Framing::new();
        let states = bytewise(&mut f, REQUEST);
        let head_len = REQUEST.len() - 5;
        assert_eq!(states[0], HeadState::Began);
        assert!(states[1..head_len - 1]
            .iter()
            .all(|s| *s == HeadState::Continues));
        assert!(states[head_len - 1..]
            .iter()
            .all(|s| *s == HeadState::Outside));
        assert_eq!(f.completed(), 1);
        assert!(f.is_idle());
    }

    #[test]
    fn pipelined_requests_are_followed_in_one_read() {
        let mut f = Framing::new();
        let mut bytes = REQUEST.repeat(3);
        bytes.extend_from_slice(b"POST /validate HTTP/1.1\r\nHo");
        // Three whole requests and the start of a fourth: a head began in these bytes.
        assert_eq!(f.feed(&bytes), HeadState::Began);
        assert_eq!(f.completed(), 3);
        assert_eq!(f.feed(b"st: w\r\n"), HeadState::Continues);
        assert_eq!(f.feed(b"\r\n"), HeadState::Outside);
        assert_eq!(f.completed(), 4);
    }

    #[test]
    fn a_body_is_not_mistaken_for_a_head() {
        let mut f = Framing::new();
        let body = b"GET / HTTP/1.1\r\n\r\n";
        let head = format!(
            "POST /validate HTTP/1.1\r\ncontent-LENGTH:  {} \r\n\r\n",
            body.len()
        );
        assert_eq!(f.feed(head.as_bytes()), HeadState::Outside);
        // A body that looks like a request is still the body.
        assert_eq!(f.feed(&body[..4]), HeadState::Outside);
        assert_eq!(f.completed(), 0);
        assert_eq!(f.feed(&body[4..]), HeadState::Outside);
        assert_eq!(f.completed(), 1);
        assert_eq!(f.feed(b"G"), HeadState::Began);
    }

    #[test]
    fn chunked_bodies_are_followed_to_their_end() {
        let mut f = Framing::new();
        let request = b"POST /v HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
            5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nPOST";
        let states = bytewise(&mut f, request);
        assert_eq!(f.completed(), 1);
        let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 3;
        let next = request.len() - 4;
        assert!(states[head_end..next]
            .iter()
            .all(|s| *s == HeadState::Outside));
        assert_eq!(states[next], HeadState::Began);
        assert_eq!(*states.last().unwrap(), HeadState::Continues);

        let mut f = Framing::new();
        f.feed(b"POST /v HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        assert_eq!(f.completed(), 1);
        assert!(f.is_idle());
    }

    #[test]
    fn requests_without_a_body_end_with_their_head_and_empty_lines_begin_nothing() {
        let mut f = Framing::new();
        assert_eq!(f.feed(b"\r\n\r\n"), HeadState::Outside);
        assert!(f.is_idle());
        assert_eq!(
            f.feed(b"GET /healthz HTTP/1.1\nHost: w\n\n"),
            HeadState::Outside
        );
        assert_eq!(f.completed(), 1);
        // A line that is only "\r" inside a head does not end it; the empty line does.
        assert_eq!(f.feed(b"GET / HTTP/1.1\r\nA: b\r\n"), HeadState::Began);
        assert_eq!(f.feed(b"\r\n"), HeadState::Outside);
        assert_eq!(f.completed(), 2);
    }

    #[test]
    fn framing_it_cannot_follow_ends_following() {
        for head in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            let mut f = Framing::new();
            assert_eq!(f.feed(head), HeadState::Outside);
            assert!(f.is_opaque(), "{}", String::from_utf8_lossy(head));
            assert_eq!(f.feed(b"POST / HTTP/1.1\r\n"), HeadState::Outside);
        }
        let mut f = Framing::new();
        f.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        assert!(f.is_opaque());
        // The same length twice is one length.
        let mut f = Framing::new();
        f.feed(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab");
        assert_eq!(f.completed(), 1);
    }

    #[test]
    fn a_long_header_line_is_kept_only_in_part() {
        let mut f = Framing::new();
        let mut head = b"POST / HTTP/1.1\r\nX-Long: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 100_000));
        head.extend_from_slice(b"\r\nContent-Length: 1\r\n\r\nx");
        assert_eq!(f.feed(&head), HeadState::Outside);
        assert_eq!(f.completed(), 1);
    }
}
