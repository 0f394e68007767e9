//! Architectural definitions of the Intel VT-d remapping unit.
//!
//! Everything here is a fact of the VT-d specification (Intel "Virtualization Technology for
//! Directed I/O", rev. 4.x/5.x) as implemented by Linux 6.12 and QEMU 10.0.2: register offsets
//! and bitfields with their access semantics, the CAP/ECAP values implied by a [`VtdConfig`],
//! fault reasons, invalidation descriptors and interrupt-remapping table entries.
//!
//! The crate performs no I/O and is `no_std` (with `alloc`) when the default `std` feature is
//! off, so it can also describe the unit to bare-metal guests.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
// Guest- and user-controlled values must never panic the unit: no unwrap/expect and no
// unchecked indexing outside tests (tests may assert with them).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

extern crate alloc;

pub mod bdf;
pub mod cap;
pub mod config;
pub mod fault;
pub mod inv;
pub mod irte;
pub mod prq;
pub mod regs;

pub use bdf::Bdf;
pub use cap::{Cap, Ecap};
pub use config::{ConfigError, VtdConfig};

/// The README's usage example, compiled and run as a doctest so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
