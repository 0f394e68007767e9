//! Test support for the vtd workspace (not published): one home for what the crates' tests,
//! the benchmarks and the demo would otherwise each carry a copy of.
//!
//! - [`driver`]: a guest driver programming a unit the way Linux 6.12 does.
//! - [`trace`]: the recorded Linux 6.12 trace, as typed events.
//! - [`process`]: child processes with a time and output bound.
//! - [`discovery`]: whether this machine can run KVM guests and has QEMU 10.x.

#![forbid(unsafe_code)]

pub mod discovery;
pub mod driver;
pub mod process;
pub mod trace;
