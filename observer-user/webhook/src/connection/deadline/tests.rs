use super::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

const TIMEOUTS: Timeouts = Timeouts {
    header: Duration::from_secs(10),
    idle: Duration::from_secs(120),
};
const REQUEST: &[u8] = b"POST /validate HTTP/1.1\r\nHost: w\r\nContent-Length: 5\r\n\r\nhello";

fn pair(http2: bool) -> (Deadlines<DuplexStream>, DuplexStream) {
    let (server, client) = tokio::io::duplex(1 << 16);
    (Deadlines::new(server, TIMEOUTS, http2), client)
}

/// Reads what is there, or waits `wait` (of paused time) for it.
async fn read_within(
    d: &mut Deadlines<DuplexStream>,
    wait: Duration,
) -> Option<io::Result<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(wait, d.read(&mut buf)).await {
        Ok(Ok(n)) => Some(Ok(buf[..n].to_vec())),
        Ok(Err(e)) => Some(Err(e)),
        Err(_) => None,
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_kept_alive_connection_is_not_a_late_head() {
    let (mut d, mut client) = pair(false);
    client.write_all(REQUEST).await.unwrap();
    assert_eq!(
        read_within(&mut d, Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap(),
        REQUEST
    );
    d.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
    // Idle for longer than the header timeout, shorter than the idle one: still open.
    assert!(read_within(&mut d, Duration::from_secs(100))
        .await
        .is_none());
    client.write_all(REQUEST).await.unwrap();
    assert_eq!(
        read_within(&mut d, Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap(),
        REQUEST
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_that_stalls_fails_its_timeout_after_its_first_byte() {
    let (mut d, mut client) = pair(false);
    // Idle first: the clock starts at the head's first byte, not here.
    assert!(read_within(&mut d, Duration::from_secs(60)).await.is_none());
    client
        .write_all(b"POST /validate HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(read_within(&mut d, Duration::from_secs(1))
        .await
        .unwrap()
        .is_ok());
    let err = read_within(&mut d, Duration::from_secs(60))
        .await
        .expect("the head's deadline ends the read")
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(started.elapsed(), TIMEOUTS.header);
    // And stays ended.
    client.write_all(b"st: w\r\n\r\n").await.unwrap();
    assert!(read_within(&mut d, Duration::from_secs(1))
        .await
        .unwrap()
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn a_head_dribbled_a_byte_at_a_time_is_still_late() {
    let (mut d, mut client) = pair(false);
    let started = Instant::now();
    let mut ended = None;
    for (i, byte) in b"POST /validate HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaa"
        .iter()
        .enumerate()
    {
        client.write_all(&[*byte]).await.unwrap();
        if let Some(Err(err)) = read_within(&mut d, Duration::from_secs(1)).await {
            ended = Some((i, err));
            break;
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let (i, err) = ended.expect("the dribbled head ends in a timeout");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(i, 10, "the byte at 10 s is refused");
    assert_eq!(started.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_pipelined_head_that_stalls_is_late_too() {
    let (mut d, mut client) = pair(false);
    let mut bytes = REQUEST.to_vec();
    bytes.extend_from_slice(b"POST /validate HTTP/1.1\r\n");
    client.write_all(&bytes).await.unwrap();
    assert!(read_within(&mut d, Duration::from_secs(1))
        .await
        .unwrap()
        .is_ok());
    d.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
    let err = read_within(&mut d, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
}

#[tokio::test(start_paused = true)]
async fn a_slow_body_is_not_a_late_head() {
    let (mut d, mut client) = pair(false);
    client
        .write_all(b"POST /validate HTTP/1.1\r\nContent-Length: 100\r\n\r\nab")
        .await
        .unwrap();
    assert!(read_within(&mut d, Duration::from_secs(1))
        .await
        .unwrap()
        .is_ok());
    // The handler's body timeout is for this; the connection's deadlines are not.
    assert!(read_within(&mut d, Duration::from_secs(300))
        .await
        .is_none());
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_ends_after_the_idle_timeout_but_not_while_a_response_is_due() {
    let (mut d, mut client) = pair(false);
    client.write_all(REQUEST).await.unwrap();
    read_within(&mut d, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    // The request is whole; its response has not been written: no idle timeout.
    assert!(read_within(&mut d, Duration::from_secs(600))
        .await
        .is_none());
    d.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
    let written = Instant::now();
    let end = read_within(&mut d, Duration::from_secs(600))
        .await
        .expect("an end of stream")
        .unwrap();
    assert!(end.is_empty());
    assert_eq!(written.elapsed(), TIMEOUTS.idle);
    let mut reply = Vec::new();
    client.read_buf(&mut reply).await.unwrap();
    assert_eq!(reply, b"HTTP/1.1 200 OK\r\n\r\n");
}

/// Counts its wake-ups.
struct Wakes(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Wakes {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn the_idle_timeout_wakes_a_read_polled_before_the_reply_was_written() {
    let (mut d, mut client) = pair(false);
    client.write_all(REQUEST).await.unwrap();
    read_within(&mut d, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    // As hyper does: a read polled while the reply is due, then the reply written, and
    // no read polled again until the task is woken.
    let wakes = std::sync::Arc::new(Wakes(0.into()));
    let waker = std::task::Waker::from(std::sync::Arc::clone(&wakes));
    let mut cx = Context::from_waker(&waker);
    let mut buf = [0u8; 64];
    let mut read_buf = ReadBuf::new(&mut buf);
    assert!(Pin::new(&mut d)
        .poll_read(&mut cx, &mut read_buf)
        .is_pending());
    let reply = b"HTTP/1.1 200 OK\r\n\r\n";
    assert!(matches!(
        Pin::new(&mut d).poll_write(&mut cx, reply),
        Poll::Ready(Ok(n)) if n == reply.len()
    ));
    let woken = |w: &Wakes| w.0.load(std::sync::atomic::Ordering::SeqCst);
    let before = woken(&wakes);
    tokio::time::advance(TIMEOUTS.idle - Duration::from_millis(1)).await;
    assert_eq!(woken(&wakes), before, "woken before the idle timeout");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(woken(&wakes) > before, "the idle timeout woke nobody");
    let mut read_buf = ReadBuf::new(&mut buf);
    assert!(matches!(
        Pin::new(&mut d).poll_read(&mut cx, &mut read_buf),
        Poll::Ready(Ok(()))
    ));
    assert!(read_buf.filled().is_empty(), "an end of stream");
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const PING: (u8, u8, u32, &[u8]) = (6, 0, 0, &[0; 8]);

/// An HTTP/2 connection after the preface and empty SETTINGS.
async fn h2_opened() -> (Deadlines<DuplexStream>, DuplexStream) {
    let (mut d, mut client) = pair(true);
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(h2_frame(4, 0, 0, &[]));
    client.write_all(&bytes).await.unwrap();
    read_within(&mut d, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    (d, client)
}

#[tokio::test(start_paused = true)]
async fn http2_pings_and_their_acks_do_not_hold_an_idle_connection_open() {
    let (mut d, mut client) = h2_opened().await;
    let opened = Instant::now();
    loop {
        tokio::time::advance(Duration::from_secs(10)).await;
        let (kind, flags, stream, payload) = PING;
        client
            .write_all(&h2_frame(kind, flags, stream, payload))
            .await
            .unwrap();
        match read_within(&mut d, Duration::from_secs(1)).await {
            Some(Ok(bytes)) if bytes.is_empty() => break,
            Some(Ok(_)) => d.write_all(&h2_frame(6, 1, 0, &[0; 8])).await.unwrap(),
            other => panic!("{other:?}"),
        }
        assert!(opened.elapsed() < Duration::from_secs(600), "never idle");
    }
    // Ended by the idle timeout from the connection's start, although pings kept coming.
    assert_eq!(opened.elapsed(), TIMEOUTS.idle);
}

#[tokio::test(start_paused = true)]
async fn http2_header_block_dribbled_in_continuations_is_late_after_its_first_byte() {
    let (mut d, mut client) = h2_opened().await;
    client
        .write_all(&h2_frame(1, 0, 1, &[0x83, 0x87]))
        .await
        .unwrap();
    let began = Instant::now();
    let err = loop {
        match read_within(&mut d, Duration::from_secs(1)).await {
            Some(Ok(_)) => {}
            Some(Err(err)) => break err,
            None => {}
        }
        // A byte of the block every second: never quiet, never whole.
        tokio::time::advance(Duration::from_secs(1)).await;
        client.write_all(&h2_frame(9, 0, 1, &[0x84])).await.unwrap();
        assert!(began.elapsed() < Duration::from_secs(60), "never late");
    };
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(began.elapsed(), TIMEOUTS.header);
}

#[tokio::test(start_paused = true)]
async fn http2_request_waiting_for_its_response_is_not_idle_and_its_reply_restarts_the_clock() {
    let (mut d, mut client) = h2_opened().await;
    // A request whose headers are whole and whose body never ends: the handler's.
    client
        .write_all(&h2_frame(1, 4, 1, &[0x83, 0x87, 0x84]))
        .await
        .unwrap();
    read_within(&mut d, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert!(read_within(&mut d, Duration::from_secs(600))
        .await
        .is_none());
    // Its response: HEADERS, then DATA ending the stream, then the RST_STREAM.
    let mut reply = h2_frame(1, 4, 1, &[0x88]);
    reply.extend(h2_frame(0, 1, 1, b"late"));
    reply.extend(h2_frame(3, 0, 1, &[0; 4]));
    d.write_all(&reply).await.unwrap();
    let answered = Instant::now();
    let end = read_within(&mut d, Duration::from_secs(600))
        .await
        .expect("an end of stream")
        .unwrap();
    assert!(end.is_empty());
    assert_eq!(answered.elapsed(), TIMEOUTS.idle);
}
