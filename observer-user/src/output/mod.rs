//! Where closed batches go: the batch envelope ([`envelope`]), the durable disk spool
//! ([`spool`]) with a cursor per sink, the sinks that empty it — the HTTPS backend, NATS
//! JetStream, Redis Streams ([`sinks`]) — the NDJSON files ([`ndjson`]), and the event
//! account every one of them keeps balanced ([`account`]).

pub mod account;
pub mod envelope;
pub mod ndjson;
pub mod sinks;
pub mod spool;

pub use account::{Delivery, DropStage, Snapshot};
