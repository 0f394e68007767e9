//! In-memory formats of the Intel VT-d remapping structures and the walks over them.
//!
//! - [`entries`]: root, context, PASID directory/table and paging entries (VT-d spec chapter 9),
//!   each decodable from any bit pattern and buildable for tests, examples and guests;
//! - [`reserved`]: which fields of each entry are reserved, derived from CAP/ECAP, shared by
//!   the walker and anything else that interprets guest entries for the unit;
//! - [`walk`]: legacy second-stage, scalable first-stage, second-stage, nested and pass-through
//!   walks that end in a translation or in the spec's fault;
//! - [`builder`]: page-table builders over guest memory;
//! - [`dmar`]: the ACPI DMAR table;
//! - [`mem`]: the narrow guest-memory trait the walks read through (implemented for vm-memory).

#![forbid(unsafe_code)]
// Guest- and user-controlled values must never panic the unit: no unwrap/expect and no
// unchecked indexing outside tests (tests may assert with them).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod builder;
pub mod dmar;
pub mod entries;
pub mod enumerate;
pub mod mem;
pub mod reserved;
pub mod walk;

pub use mem::{GuestRam, MemError};

/// The README's usage example, compiled and run as a doctest so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
