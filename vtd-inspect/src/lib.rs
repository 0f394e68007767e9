//! Inspection of a running VT-d unit: a server a VMM embeds, and the `vtd-inspect` TUI that
//! attaches to it.
//!
//! - [`accel`]: the passthrough side: a vtd-accel binder's bindings and binding changes;
//! - [`protocol`]: versioned JSON-lines messages (hello, snapshot, event stream) and why JSON;
//! - [`server`]: the Unix-socket server (0600, same-uid peers, read-only, never blocks the VMM);
//! - [`feed`]: the unit observer feeding a bounded drop-oldest event queue, and the counters;
//! - [`collect`]: snapshot building: registers and a bounded walk of the guest's tables;
//! - [`client`]: connecting, with a clear error for each way it fails;
//! - [`tui`]: the terminal interface (ratatui), its state and rendering.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn demo(unit: Arc<vtd_core::VtdUnit<vm_memory::GuestMemoryMmap<()>>>) {
//! use vtd_inspect::server::{InspectServer, ServerOptions};
//! let server = InspectServer::start(unit, "/run/user/1000/vtd.sock", ServerOptions::default())
//!     .expect("socket");
//! // ... run the VMM; dropping `server` removes the socket.
//! # drop(server);
//! # }
//! ```
#![forbid(unsafe_code)]
// Socket input and the snapshots a server reports must never panic this crate: no unwrap/expect and no unchecked indexing
// outside tests (tests may assert with them).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod accel;
pub mod client;
pub mod collect;
pub mod feed;
pub mod protocol;
pub mod server;
pub mod tui;
