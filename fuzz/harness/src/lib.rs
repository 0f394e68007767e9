//! The fuzz targets of vtd as plain functions of the input bytes.
//!
//! Each target module has a `run(&[u8])` that panics when an invariant breaks and returns
//! otherwise. cargo-fuzz's binaries (`fuzz/fuzz_targets/`) call them under libFuzzer with
//! coverage feedback; `tests/corpus.rs` replays the committed seed corpus (`fuzz/corpus/`)
//! through the same functions on a stable toolchain, so a machine without nightly still
//! checks every seed and every fixed crash.
//!
//! Inputs are a small hand-rolled binary format ([`input`]) rather than `arbitrary`'s:
//! the seeds are made from real inputs (the recorded Linux trace, the tests' tables), which
//! needs an encoding that can be written as easily as it is read; `arbitrary`'s byte layout
//! is not documented as stable or invertible. Every read past the end yields zeros, so every
//! byte string is a valid input and libFuzzer's mutations all reach the code under test.
//!
//! Targets: [`unit`] (the whole remapping unit), [`inv_desc`] (invalidation descriptor
//! decode), [`walk`] (every table walker and the enumerator), [`dmar`] (ACPI DMAR parse),
//! [`inspect_protocol`] (the inspector's line reader and JSON messages), [`scenario`]
//! (conformance scenario JSON and module encoder/decoder), [`multiboot`] (the VMM's
//! multiboot/ELF loader), [`snapshot`] (vtd-migrate's snapshot decode and restore).

pub mod dmar;
pub mod input;
pub mod inspect_protocol;
pub mod inv_desc;
pub mod multiboot;
pub mod ram;
pub mod scenario;
pub mod snapshot;
pub mod unit;
pub mod walk;

/// A target: its harness function.
pub type Harness = fn(&[u8]);

/// Every target by its cargo-fuzz name (the binary in `fuzz_targets/`, the corpus directory).
pub const TARGETS: &[(&str, Harness)] = &[
    ("unit", unit::run),
    ("inv_desc", inv_desc::run),
    ("walk", walk::run),
    ("dmar", dmar::run),
    ("inspect_protocol", inspect_protocol::run),
    ("scenario", scenario::run),
    ("multiboot", multiboot::run),
    ("snapshot", snapshot::run),
];
