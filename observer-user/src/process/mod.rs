//! The process stage: keeps what every process runs ([`table`], seeded from /proc, then
//! fork/exec/exit), turns kernel events into edge events with their process ([`tracker`],
//! with [`paths`] and [`buildid`]), and accounts for repeats the kernel held back
//! ([`repeats`]). Hands on `EdgeEvent`s.

pub mod buildid;
pub mod paths;
pub mod recent;
pub mod repeats;
pub mod table;
pub mod tracker;

pub use table::ProcessTable;
pub use tracker::Tracker;
