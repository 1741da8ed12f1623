//! Traffic for tests, demos and benchmarks: `replay` of captured payloads.

pub mod replay;
