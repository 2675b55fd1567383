//! Where closed batches go: the batch envelope sent to the backend ([`envelope`]), the
//! durable disk spool ([`spool`]) and the shipper task that empties it ([`shipper`]), the
//! NDJSON files ([`ndjson`]), and the event account every one of them keeps balanced
//! ([`account`]).

pub mod account;
pub mod envelope;
pub mod ndjson;
pub mod shipper;
pub mod spool;

pub use account::{Delivery, DropStage, Snapshot};
