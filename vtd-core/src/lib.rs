//! The emulated Intel VT-d remapping unit a VMM composes.
//!
//! [`VtdUnit`] is built from a [`VtdConfig`](vtd_regs::VtdConfig), guest memory and an
//! [`InterruptSink`]. The VMM routes MMIO at the unit's base (0xfed90000 on q35) to
//! [`VtdUnit::read`] / [`VtdUnit::write`], translates emulated devices' DMA with
//! [`VtdUnit::translate`] or a per-device [`DeviceAddressSpace`] (a `vm_memory::iommu::Iommu`),
//! and remaps MSIs with [`VtdUnit::remap_msi`]. Observers subscribe to the [`EventBus`].
//! With page requests configured (ECAP.PRS), devices with PRI send them with
//! [`VtdUnit::page_request`] and receive the guest's answers as
//! [`VtdEvent::PageGroupResponse`] (see the `prq` module).
//!
//! One `use vtd_core::{...}` brings what a VMM needs: the configuration ([`VtdConfig`]),
//! the DMA request and result types ([`DmaRequest`], [`AccessKind`], [`Translation`]), the
//! ACPI DMAR table ([`Dmar`], the [`dmar`] module) and the unit's own types.
//!
//! ```
//! use std::sync::Arc;
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vtd_core::{
//!     AccessKind, Dmar, DmaRequest, MsiSource, RecordingSink, TranslationKind, VtdConfig,
//!     VtdUnit,
//! };
//!
//! let mem: GuestMemoryMmap<()> =
//!     GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 24)]).unwrap();
//! let cfg = VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap();
//! // The ACPI table that tells the guest where the unit is (q35: 0xfed90000).
//! let (aw, ir) = (cfg.aw_bits, cfg.interrupt_remapping);
//! let dmar = Dmar::for_single_unit(0xfed9_0000, aw, ir, false, Some(0));
//! assert_eq!(&dmar.to_bytes()[..4], b"DMAR");
//! let unit = Arc::new(VtdUnit::new(cfg, mem, Arc::new(RecordingSink::default())).unwrap());
//! // MMIO at the register base.
//! assert_eq!(unit.read(0x08, 8), 0x01d2008c222f0606); // CAP
//! assert_eq!(unit.read(0x38, 4), 0x8000_0000); // FECTL.IM set at reset
//! // Emulated-device DMA: passed through until the guest enables translation.
//! let t = unit.translate(&DmaRequest::new(0x18, 0x1000, AccessKind::Write)).unwrap();
//! assert_eq!((t.output, t.kind), (0x1000, TranslationKind::Disabled));
//! let _as_iommu = unit.address_space(0x18, None); // a vm_memory::iommu::Iommu
//! // Interrupts pass unchanged until the guest enables interrupt remapping.
//! let msi = unit.remap_msi(MsiSource::Device(0x18), 0xfee0_0000, 0x30).unwrap();
//! assert_eq!((msi.address, msi.data), (0xfee0_0000, 0x30));
//! ```

#![forbid(unsafe_code)]
// Guest- and user-controlled values must never panic the unit: no unwrap/expect and no
// unchecked indexing outside tests (tests may assert with them).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod address_space;
mod cache;
mod delivery;
mod events;
mod faults;
mod ir;
mod irq;
mod prq;
mod qi;
mod regfile;
mod shadow;
mod state;
pub mod sync;

/// The README's example, compiled and run as a doc test so it keeps working.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExample;
mod unit;

pub use address_space::{ChunkGuard, DeviceAddressSpace};
pub use cache::{CacheStats, IotlbScope};
pub use events::{
    EventBus, EventLog, FaultDisposition, InvalidationSource, IrFault, ShadowEvent, VtdEvent,
    VtdObserver,
};
pub use ir::MsiSource;
pub use irq::{InterruptSink, Msi, RecordingSink};
pub use prq::{
    MAX_OUTSTANDING_GROUPS, OutstandingGroup, PageGroupResponseEvent, PageRequest,
    PageRequestError, PageRequestOutcome, PrqState, PrqStateError, ResponseOrigin,
};
pub use state::{
    EnabledFlags, PendingInterrupts, QueueState, REGISTER_IMAGE_SIZE, StateError, UnitState,
};
pub use unit::{CacheCapacity, RestoreError, TranslateError, UnitSnapshot, UnitStats, VtdUnit};
pub use vtd_regs::prq::ResponseCode;

// What a VMM needs next to the unit, so one `use vtd_core::{...}` serves it.
pub use vtd_regs::{Bdf, ConfigError, VtdConfig};
pub use vtd_tables::dmar::{self, Dmar};
pub use vtd_tables::walk::{
    AccessKind, DmaRequest, Fault, Perms, RootTable, Translation, TranslationKind,
};
pub use vtd_tables::{GuestRam, MemError};
