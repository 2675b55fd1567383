//! The record model, at the bottom of the flow: what an event is ([`event`]), which
//! workload it belongs to ([`workload`]), the node it happened on ([`node`]), the batch
//! item that carries it ([`item`]), and its JSON ([`json`]). Every stage hands these on;
//! nothing here depends on a stage.

pub mod event;
pub mod flags;
pub mod item;
pub mod json;
pub mod node;
pub mod raw;
pub mod time;
pub mod workload;

pub use event::{
    EdgeDetail, EdgeEvent, EdgeType, HeldRepeats, Image, ProcessSnapshot, SocketTarget,
    SCHEMA_VERSION,
};
pub use flags::OpenFlags;
pub use item::{Item, Lifecycle, Record};
pub use json::RecordWriter;
pub use node::HostIdentity;
pub use raw::Raw;
pub use time::Timestamp;
pub use workload::{
    Attribution, ContainerInfo, ContainerState, Enrichment, ImageInfo, Origin, PodInfo,
};
