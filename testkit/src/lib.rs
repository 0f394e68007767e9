//! Test support for the vtd workspace (not published): one home for what the crates' tests,
//! the benchmarks and the demo would otherwise each carry a copy of.

pub mod discovery;
pub mod process;
