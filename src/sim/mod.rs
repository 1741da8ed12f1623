//! Traffic for tests, demos and benchmarks: `replay` of captured payloads (and of the public
//! V2X-Seq CSV) and `simulate`, a deterministic synthetic zone.

pub mod replay;
pub mod simulate;
pub mod v2xseq;
pub mod zone;
