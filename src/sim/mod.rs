//! Traffic for tests, demos and benchmarks: `replay` of captured payloads and `simulate`, a
//! deterministic synthetic zone.

pub mod replay;
pub mod simulate;
pub mod zone;
