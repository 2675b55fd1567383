//! Reading a review's body: at most `server.max_body_bytes`, within `server.body_timeout`
//! of its headers, and only with room for it among `server.max_bodies_in_flight`.
//!
//! A body is buffered whole, then parsed: what many large reviews at once cost is bounded
//! by the bytes of bodies being read or judged at a time, not by the number of
//! connections. Each request reserves its declared length (the most a body without one
//! may be, when it declares none) before reading, and keeps it until it has been answered.
//! One that finds no room waits, within its body timeout, then gets 503: the API server
//! applies its `failurePolicy` to it, and the memory stays where it was.

use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::{header, HeaderMap},
};
use bytes::BytesMut;
use http_body_util::BodyExt as _;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use zastava_platform::metrics::ADMISSION_BODY_BYTES_RESERVED;

/// Room is counted in KiB (a reservation is a `u32` of permits).
const UNIT: u64 = 1024;

/// Why a body was not read.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    TooLong,
    Late,
    NoRoom,
    Broken(String),
}

/// The bodies being read or judged.
pub struct Bodies {
    pub max_bytes: usize,
    pub timeout: Duration,
    /// `server.max_bodies_in_flight`, in bytes.
    pub room_bytes: u64,
    room: Arc<Semaphore>,
}

/// A body read whole, holding its room until dropped.
pub struct ReadBody {
    pub bytes: Bytes,
    _room: Room,
}

struct Room {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
}

impl Drop for Room {
    fn drop(&mut self) {
        #[allow(clippy::cast_precision_loss, reason = "a gauge of bytes")]
        metrics::gauge!(ADMISSION_BODY_BYTES_RESERVED.name).decrement(self.bytes as f64);
    }
}

fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

impl Bodies {
    /// `room_bytes` is at least `max_bytes` (checked by the configuration).
    pub fn new(max_bytes: usize, timeout: Duration, room_bytes: u64) -> Self {
        let permits = usize::try_from(room_bytes.div_ceil(UNIT))
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Bodies {
            max_bytes,
            timeout,
            room_bytes,
            room: Arc::new(Semaphore::new(permits)),
        }
    }

    /// Reads the body whose request has `headers`.
    pub async fn read(&self, headers: &HeaderMap, body: Body) -> Result<ReadBody, BodyError> {
        let deadline = Instant::now() + self.timeout;
        let max = self.max_bytes as u64;
        // A declared length over the limit is refused before this; an unreadable one
        // reserves the most a body may be.
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&n| n <= max);
        let reserve = units(declared.unwrap_or(max).max(1));
        let acquire = Arc::clone(&self.room).acquire_many_owned(reserve);
        let permit = match tokio::time::timeout_at(deadline, acquire).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed.
            Ok(Err(_)) | Err(_) => return Err(BodyError::NoRoom),
        };
        let room = Room {
            _permit: permit,
            bytes: u64::from(reserve) * UNIT,
        };
        #[allow(clippy::cast_precision_loss, reason = "a gauge of bytes")]
        metrics::gauge!(ADMISSION_BODY_BYTES_RESERVED.name).increment(room.bytes as f64);
        let limited = http_body_util::Limited::new(body, self.max_bytes);
        let capacity = usize::try_from(declared.unwrap_or(0)).unwrap_or(0);
        match tokio::time::timeout_at(deadline, gather(limited, capacity)).await {
            Err(_) => Err(BodyError::Late),
            Ok(Ok(bytes)) => Ok(ReadBody { bytes, _room: room }),
            Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLong),
            Ok(Err(err)) => Err(BodyError::Broken(err.to_string())),
        }
    }
}

/// The body's bytes in one buffer of its declared length, each frame copied in as it
/// comes and then freed: collecting the frames first and joining them after held the body
/// twice.
async fn gather(
    mut body: http_body_util::Limited<Body>,
    capacity: usize,
) -> Result<Bytes, axum::BoxError> {
    let mut bytes = BytesMut::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(length: Option<usize>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(n) = length {
            headers.insert(header::CONTENT_LENGTH, n.into());
        }
        headers
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waits_for_room_within_its_timeout_then_is_refused() {
        let bodies = Bodies::new(64 << 10, Duration::from_secs(2), 100 << 10);
        let first = bodies
            .read(&headers(Some(60 << 10)), Body::from(vec![b'a'; 60 << 10]))
            .await
            .unwrap();
        assert_eq!(first.bytes.len(), 60 << 10);
        // 40 KiB are left: 41 KiB must wait, and find no room in time.
        let started = Instant::now();
        let err = bodies
            .read(&headers(Some(41 << 10)), Body::from(vec![b'b'; 41 << 10]))
            .await
            .err();
        assert_eq!(err, Some(BodyError::NoRoom));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // 40 KiB fit beside it.
        let second = bodies
            .read(&headers(Some(40 << 10)), Body::from(vec![b'c'; 40 << 10]))
            .await
            .unwrap();
        assert_eq!(bodies.room.available_permits(), 0);
        drop((first, second));
        // Without a declared length, the most a body may be is reserved: 64 KiB.
        let third = bodies
            .read(&headers(None), Body::from(vec![b'd'; 10]))
            .await
            .unwrap();
        assert_eq!(&third.bytes[..], b"dddddddddd");
        assert_eq!(bodies.room.available_permits(), 36);
        drop(third);
        assert_eq!(bodies.room.available_permits(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_body_gets_the_room_freed_before_its_deadline() {
        let bodies = Arc::new(Bodies::new(64 << 10, Duration::from_secs(2), 64 << 10));
        let first = bodies
            .read(&headers(Some(64 << 10)), Body::from(vec![b'a'; 64 << 10]))
            .await
            .unwrap();
        let waiting = {
            let bodies = Arc::clone(&bodies);
            tokio::spawn(async move {
                bodies
                    .read(&headers(Some(5)), Body::from("hello"))
                    .await
                    .map(|b| b.bytes)
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first);
        assert_eq!(&waiting.await.unwrap().unwrap()[..], b"hello");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_too_long() {
        let bodies = Bodies::new(4096, Duration::from_secs(2), 1 << 20);
        let err = bodies
            .read(&headers(None), Body::from(vec![b'x'; 4097]))
            .await
            .err();
        assert_eq!(err, Some(BodyError::TooLong));
        assert_eq!(bodies.room.available_permits(), 1024);
    }
}
