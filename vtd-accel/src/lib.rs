//! Nested first-stage binding of passthrough (VFIO) devices to the host IOMMU.
//!
//! For an assigned device the guest's I/O page table is not shadowed: the guest's first-stage
//! table (its PASID entry's FSPTPTR) is handed to the host IOMMU as the stage 1 of a *nested*
//! HWPT whose parent is the device's default HWPT (GPA->HPA, filled by the VMM's VFIO memory
//! listener), guest invalidations are forwarded, and the binding follows everything the guest
//! does. This re-creates QEMU's `intel_iommu_accel.c` (the "intel_iommu: Enable first stage
//! translation for passthrough device" series, v10; shared/seed/cover-letter-v10.txt) and adds
//! what it leaves out: PASIDs other than 0, device-TLB and domain/global forwarding, batching,
//! host-failure containment, and host first-stage faults injected into the guest.
//!
//! - [`host`]: [`HostIommuDevice`] (the host view of one assigned device), [`HostHwInfo`],
//!   [`HostQuirks`] (ERRATA_772415_SPR17) and [`ViommuFlags`] ("I want a nesting parent").
//! - [`compat`]: the registration checks ([`check_compatibility`]).
//! - [`backend`]: the [`HostIommuBackend`] trait (iommufd's object model) and its types.
//! - [`binder`]: [`NestedBinder`], the `vtd_core::VtdObserver` that binds, replays, forwards
//!   and injects faults.
//! - [`faults`]: how host faults reach the guest ([`GuestFaultSink`], [`UnitFaultSink`]).
//! - [`events`]: [`AccelEvent`]s and [`AccelStats`] for the VMM.
//! - [`sim`]: [`SimHostIommu`], a software host IOMMU with VT-d nested semantics (stage-1 walk
//!   through stage 2, an aggressive IOTLB, the kernel's checks, failure injection, a fault
//!   queue).
//! - [`iommufd`] (feature `iommufd`, on by default): [`IommufdBackend`] over `/dev/iommu` and
//!   VFIO cdevs, through `iommufd-ioctls` and `vfio-ioctls`.
//!
//! Emulated devices keep being translated by `vtd_core::VtdUnit`; a bound device's DMA is
//! translated by the host IOMMU and never walks in vtd-core.
//!
//! ```
//! use std::sync::Arc;
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vtd_accel::{Bdf, HostHwInfo, HostIommuDevice, HostMemory, NestedBinder, PciTopology, SimHostIommu};
//! use vtd_core::{RecordingSink, VtdUnit};
//! use vtd_regs::VtdConfig;
//!
//! type Mem = GuestMemoryMmap<()>;
//! let ram: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 24)]).unwrap();
//! let cfg = VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap();
//! let unit = Arc::new(VtdUnit::new(cfg, ram.clone(), Arc::new(RecordingSink::default())).unwrap());
//!
//! // The host: guest RAM lives at HPA 0x1_0000_0000; VFIO maps GPA -> HPA in an IOAS.
//! let host = HostMemory::new().with_region(1 << 32, 1 << 24, ram.clone(), 0);
//! let sim = Arc::new(SimHostIommu::new(HostHwInfo::vtd_nesting_capable(), host));
//! let ioas = sim.alloc_ioas();
//! sim.ioas_map(ioas, 0, 1 << 24, 1 << 32, true).unwrap();
//!
//! let binder = NestedBinder::with_unit_faults(&unit, sim.clone());
//! let (dev, parent) = sim.vfio_bind_default(ioas, binder.viommu_flags()).unwrap();
//! let host_dev = HostIommuDevice::query(&*sim, "0000:01:00.0", dev, parent).unwrap();
//! binder.register(Bdf::new(1, 0, 0), host_dev, PciTopology::default()).unwrap();
//! // Translation is off: the device DMAs to GPAs through its parent.
//! let t = sim.dma_translate(dev, None, 0x5000, vtd_tables::walk::AccessKind::Read).unwrap();
//! assert_eq!(t.hpa, (1 << 32) + 0x5000);
//! ```

pub mod backend;
pub mod binder;
pub mod compat;
pub mod events;
pub mod faults;
pub mod host;
#[cfg(feature = "iommufd")]
pub mod iommufd;
pub mod sim;

pub use backend::{
    BackendError, BackendOp, DeviceId, HostFault, HostIommuBackend, HwptAlloc, HwptId, IoasId,
    NO_PASID, VtdS1, VtdS1Flags, VtdS1Invalidation,
};
pub use binder::{
    Bdf, BindingInfo, HostAttachment, NestedBinder, RegisterError, UnregisterError, s1_of,
};
pub use compat::{CompatError, PciTopology, check_compatibility};
pub use events::{
    AccelEvent, AccelEventLog, AccelObserver, AccelStats, BlockCause, HostFaultOutcome, Recovery,
};
pub use faults::{FaultClass, FaultInjection, FaultLog, GuestFaultSink, UnitFaultSink, classify};
pub use host::{
    HostBacking, HostHwInfo, HostIommuDevice, HostIommuType, HostQuirks, VTD_ERRATA_772415_SPR17,
    ViommuFlags,
};
#[cfg(feature = "iommufd")]
pub use iommufd::{DeviceAttach, IommufdBackend};
pub use sim::{
    HostMemory, HostRegion, HostTranslation, SimHostIommu, SimHwpt, SimHwptKind, SimOp, SimStats,
};
