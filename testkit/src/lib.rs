//! Test support for the vtd workspace (not published): one home for what the crates' tests,
//! the benchmarks and the demo would otherwise each carry a copy of.
//!
//! - [`driver`]: a guest driver programming a unit the way Linux 6.12 does.
//! - [`trace`]: the recorded Linux 6.12 trace, as typed events.

#![forbid(unsafe_code)]

pub mod driver;
pub mod trace;
