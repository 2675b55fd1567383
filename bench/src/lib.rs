//! Benchmark harness of zastava-observer: the storms that are traced, the tracers they run
//! under, and the figures made of them.

pub mod report;
pub mod storm;
pub mod tracer;
