//! Deadlines of a connection, kept below hyper by watching the bytes it reads and writes:
//!
//! - a request's head must be whole within `server.header_timeout` of its **first byte**.
//!   hyper's own `header_read_timeout` starts when hyper begins waiting for a head, so it
//!   also closes a kept-alive connection that is merely idle between reviews, racing the
//!   API server's next request on its pooled connection;
//! - a connection with no request in progress and nothing read or written for
//!   `server.idle_timeout` is closed (an end of stream, which hyper closes cleanly). A
//!   request read whole keeps it open until its response has been written.
//!
//! HTTP/1.1 is followed by [`Framing`], HTTP/2 by [`Streams`] (where a header block has
//! the header timeout, and only frames that move a request count against the idle one).
//!
//! Bodies have their own timeout, in the handler (it answers 408).

use std::{
    future::Future as _,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

use zastava_platform::metrics::{ADMISSION_IDLE_CLOSES, ADMISSION_REQUEST_TIMEOUTS};

use super::{
    framing::{Framing, HeadState},
    streams::{Due, Streams},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Armed {
    Head,
    Idle,
}

/// A connection's stream with its deadlines.
pub struct Deadlines<IO> {
    inner: IO,
    framing: Framing,
    /// When ALPN chose HTTP/2: its streams, which `framing` does not follow.
    streams: Option<Streams>,
    timeouts: Timeouts,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Armed>,
    /// The last time bytes were read or written.
    last_activity: Instant,
    /// Requests read whole so far (to notice the next one).
    completed: u64,
    /// A request was read whole and nothing has been written since.
    awaiting_response: bool,
    /// A deadline passed: the stream ends, and stays ended.
    ended: Option<Armed>,
}

impl<IO> Deadlines<IO> {
    /// `inner` speaks HTTP/1.1, or HTTP/2 when `http2` (ALPN chose it).
    pub fn new(inner: IO, timeouts: Timeouts, http2: bool) -> Self {
        let now = Instant::now();
        Deadlines {
            inner,
            framing: Framing::new(),
            streams: http2.then(|| Streams::new(now)),
            timeouts,
            sleep: Box::pin(tokio::time::sleep_until(now + timeouts.idle)),
            armed: None,
            last_activity: now,
            completed: 0,
            awaiting_response: false,
            ended: None,
        }
    }

    fn arm(&mut self, what: Armed, at: Instant) {
        if self.armed != Some(what) || self.sleep.deadline() != at {
            self.sleep.as_mut().reset(at);
        }
        self.armed = Some(what);
    }

    /// Arms what an HTTP/2 connection is waiting for.
    fn arm_streams(&mut self) {
        let Some(streams) = &self.streams else {
            return;
        };
        match streams.due() {
            Due::Head(began) => self.arm(Armed::Head, began + self.timeouts.header),
            Due::Idle(since) => self.arm(Armed::Idle, since + self.timeouts.idle),
            Due::Busy => self.armed = None,
        }
    }

    /// Whether a head's deadline has passed (checked also while bytes keep coming, one at
    /// a time, which never lets a read wait).
    fn head_late(&self) -> bool {
        self.armed == Some(Armed::Head) && self.sleep.deadline() <= Instant::now()
    }

    /// Whether an HTTP/2 connection's idle deadline has passed although frames keep coming
    /// (an HTTP/1.1 connection's is disarmed by any byte read).
    fn idle_late(&self) -> bool {
        self.armed == Some(Armed::Idle) && self.sleep.deadline() <= Instant::now()
    }

    fn end(&mut self, what: Armed) -> Poll<io::Result<()>> {
        if self.ended.is_none() {
            match what {
                Armed::Head => {
                    metrics::counter!(ADMISSION_REQUEST_TIMEOUTS.name, "part" => "headers")
                        .increment(1)
                }
                Armed::Idle => metrics::counter!(ADMISSION_IDLE_CLOSES.name).increment(1),
            }
        }
        self.ended = Some(what);
        self.armed = None;
        match what {
            Armed::Head => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request's headers were not complete within server.header_timeout of its first byte",
            ))),
            // An end of stream: hyper closes an idle connection that ends without error.
            Armed::Idle => Poll::Ready(Ok(())),
        }
    }

    /// Follows the bytes just read.
    fn follow(&mut self, bytes: &[u8]) {
        self.last_activity = Instant::now();
        if let Some(streams) = &mut self.streams {
            streams.read(bytes, self.last_activity);
            self.arm_streams();
            return;
        }
        if self.framing.is_opaque() {
            if self.armed == Some(Armed::Idle) {
                // Armed again from these bytes when the next read waits.
                self.armed = None;
            }
            return;
        }
        let state = self.framing.feed(bytes);
        if self.framing.completed() != self.completed {
            self.completed = self.framing.completed();
            self.awaiting_response = true;
        }
        match state {
            HeadState::Began => self.arm(Armed::Head, self.last_activity + self.timeouts.header),
            HeadState::Continues => {}
            HeadState::Outside => self.armed = None,
        }
    }

    /// Arms the idle timeout if the connection is idle and it is not armed yet.
    fn arm_idle(&mut self) {
        if self.streams.is_some() {
            return self.arm_streams();
        }
        let idle = if self.framing.is_opaque() {
            true
        } else {
            self.framing.is_idle() && !self.awaiting_response
        };
        if self.armed.is_none() && idle {
            let at = self.last_activity + self.timeouts.idle;
            self.arm(Armed::Idle, at);
        }
    }

    /// Notes a write. hyper may be waiting on a read it polled before the reply was due,
    /// and polls again only when woken: the idle timer is armed, and registered with this
    /// task, here.
    fn wrote<'a>(
        &mut self,
        bufs: impl IntoIterator<Item = &'a [u8]>,
        n: usize,
        cx: &mut Context<'_>,
    ) {
        if n == 0 {
            return;
        }
        self.last_activity = Instant::now();
        if let Some(streams) = &mut self.streams {
            let mut left = n;
            for buf in bufs {
                if left == 0 {
                    break;
                }
                let part = &buf[..left.min(buf.len())];
                streams.wrote(part, self.last_activity);
                left -= part.len();
            }
            self.arm_streams();
            // Registers the waker with the deadline just armed (see below), or wakes the
            // task at once for one already past.
            if self.armed.is_some() && self.sleep.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
            return;
        }
        self.awaiting_response = false;
        if self.armed == Some(Armed::Idle) {
            self.armed = None;
        }
        self.arm_idle();
        if self.armed == Some(Armed::Idle) {
            // Just armed from now, so not ready: this registers the waker.
            let _ = self.sleep.as_mut().poll(cx);
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Deadlines<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(what) = this.ended {
            return this.end(what);
        }
        if this.head_late() {
            return this.end(Armed::Head);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    this.follow(read);
                    if this.head_late() {
                        return this.end(Armed::Head);
                    }
                    if this.idle_late() {
                        // What was read did not move a request (HTTP/2 control frames):
                        // it is dropped, and the connection ends as idle.
                        buf.set_filled(before);
                        return this.end(Armed::Idle);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                this.arm_idle();
                if let Some(what) = this.armed {
                    if this.sleep.as_mut().poll(cx).is_ready() {
                        return this.end(what);
                    }
                }
                Poll::Pending
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Deadlines<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            this.wrote([buf], n, cx);
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            this.wrote(bufs.iter().map(|b| &**b), n, cx);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
