//! The Scanner backend: its settings ([`config`]) and the HTTPS client both binaries call it
//! with ([`client`]).

pub mod client;
pub mod config;

pub use client::{tls_config, BackendClient, BackendError, BackendRequest, SendError};
pub use config::{BackendArgs, BackendConfig};
