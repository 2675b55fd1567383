//! What operators see: the HTTP endpoints ([`server`]: `/metrics`, `/healthz`, `/readyz`),
//! the shutdown summary ([`summary`]), the node checks of `doctor` ([`doctor`]) and errors
//! with their causes ([`causes`]).

pub mod causes;
pub mod doctor;
pub mod server;
pub mod summary;

pub use summary::Summary;
