//! Shared by the integration tests: the vtd-vmm binary and the self-test kernel this package's
//! build script built, programs run with a time limit, and KVM and QEMU discovery (the last two
//! from vtd-testkit).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use vtd_testkit::discovery;
pub use vtd_testkit::process::Output as Run;

/// The vtd-vmm binary cargo built for these tests.
pub fn vmm() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vtd-vmm"))
}

/// vtd-guest, built from examples/guests by build.rs (vtd-guests).
pub fn guest_kernel() -> &'static Path {
    Path::new(concat!(env!("OUT_DIR"), "/vtd-guest.elf"))
}

/// Runs `cmd` with no standard input, killing it after `limit`.
pub fn run_bounded(cmd: Command, limit: Duration) -> Run {
    vtd_testkit::process::run_bounded(cmd, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether KVM can be used here (vtd-vmm needs /dev/kvm read-write); says why not.
pub fn kvm_available() -> bool {
    match discovery::kvm() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("NOTICE: {e}: skipping");
            false
        }
    }
}

/// QEMU 10.x, if installed (`VTD_QEMU`, else qemu-system-x86_64 on PATH); says why not.
pub fn qemu() -> Option<PathBuf> {
    match discovery::qemu10() {
        Ok(q) => Some(q.binary),
        Err(e) => {
            eprintln!("NOTICE: {e}");
            None
        }
    }
}
