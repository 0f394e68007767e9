//! The emulated Intel VT-d remapping unit a VMM composes.
//!
//! [`VtdUnit`] is built from a [`VtdConfig`](vtd_regs::VtdConfig), guest memory and an
//! [`InterruptSink`]. The VMM routes MMIO at the unit's base (0xfed90000 on q35) to
//! [`VtdUnit::read`] / [`VtdUnit::write`], translates emulated devices' DMA with
//! [`VtdUnit::translate`] or a per-device [`DeviceAddressSpace`] (a `vm_memory::iommu::Iommu`),
//! and remaps MSIs with [`VtdUnit::remap_msi`]. Observers subscribe to the [`EventBus`].
//!
//! ```
//! use std::sync::Arc;
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vtd_core::{RecordingSink, VtdUnit};
//! use vtd_regs::VtdConfig;
//!
//! let mem: GuestMemoryMmap<()> = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 24)]).unwrap();
//! let cfg = VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap();
//! let unit = VtdUnit::new(cfg, mem, Arc::new(RecordingSink::default())).unwrap();
//! assert_eq!(unit.read(0x08, 8), 0x01d2008c222f0606); // CAP
//! assert_eq!(unit.read(0x38, 4), 0x8000_0000); // FECTL.IM set at reset
//! ```

mod address_space;
mod cache;
mod events;
mod faults;
mod ir;
mod irq;
mod qi;
mod regfile;
mod shadow;
mod state;
mod unit;

pub use address_space::DeviceAddressSpace;
pub use cache::{CacheStats, IotlbScope};
pub use events::{
    EventBus, EventLog, FaultDisposition, InvalidationSource, IrFault, ShadowEvent, VtdEvent,
    VtdObserver,
};
pub use ir::MsiSource;
pub use irq::{InterruptSink, Msi, RecordingSink};
pub use state::{
    EnabledFlags, PendingInterrupts, QueueState, REGISTER_IMAGE_SIZE, StateError, UnitState,
};
pub use unit::{RestoreError, TranslateError, UnitSnapshot, UnitStats, VtdUnit};
