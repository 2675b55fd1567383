//! What operators see: the HTTP endpoints ([`server`]: `/metrics`, `/healthz`, `/readyz`),
//! the shutdown summary ([`summary`]) and the node checks of `doctor` ([`doctor`]).

pub mod doctor;
pub mod server;
pub mod summary;

pub use summary::Summary;
