//! Nested first-stage binding of passthrough (VFIO) devices to the host IOMMU.
//!
//! For an assigned device the guest's I/O page table is not shadowed: the guest's first-stage
//! table (its PASID entry's FSPTPTR) is handed to the host IOMMU as the stage 1 of a *nested*
//! HWPT whose parent is the device's default HWPT (GPA->HPA, filled by the VMM's VFIO memory
//! listener), guest invalidations are forwarded, and the binding follows everything the guest
//! does. This re-creates QEMU's `hw/i386/intel_iommu_accel.c` (QEMU series "intel_iommu:
//! Enable first stage translation for passthrough device" v10) and adds what it leaves out:
//! PASIDs other than RID_PASID, device-TLB and domain/global forwarding, batching, devices on
//! several iommufds, hotplug and unplug under a running guest, host-failure containment, and
//! page requests of PRI-capable devices delivered into the guest's page request queue.
//!
//! # What the host kernel really does (and what a guest therefore sees)
//! - **Faults.** On Intel hosts a non-recoverable DMA fault of a nested HWPT (a first-stage
//!   entry not present, a permission fault, a blocked device) is logged by the host kernel
//!   (Linux `drivers/iommu/intel/dmar.c`, `dmar_fault()`) and never reaches user space: **a
//!   guest sees nothing when a non-PRI passthrough device faults**; its DMA simply fails. Only
//!   PCIe page requests reach user space, through an iommufd fault queue, for devices with ATS
//!   and PRI attached to HWPTs allocated with `IOMMU_HWPT_FAULT_ID_VALID`; the binder puts them
//!   into the guest's page request queue and sends the guest's page group responses back
//!   (`binder` module docs). Injecting non-recoverable faults into the guest's fault
//!   recording registers exists only for backends that declare
//!   [`BackendCaps::unrecoverable_faults`] (the simulator, when a test asks; no VT-d host).
//! - **Fault queues are per device.** The Intel driver refuses (`ENODEV`) to attach an HWPT
//!   with a fault queue to a device without ATS/PRI (`drivers/iommu/intel/iommu.c`,
//!   `intel_iommu_enable_iopf()`), so only devices registered with
//!   [`HostIommuDevice::with_pri`] get one.
//! - **PASIDs depend on the kernel.** Linux 6.12 refuses `IOMMU_HWPT_ALLOC_PASID` and VFIO's
//!   PASID attach; 6.18 accepts them ([`BackendCaps::pasid_attach`],
//!   `IommufdBackend::probe_pasid_attach`); [`check_compatibility`] refuses a PASID guest on a
//!   kernel that cannot ([`CompatError::NoPasidAttach`]) and [`guest_pasid_bits`] says what to
//!   give the guest.
//! - **Replace is not atomic.** The driver blocks the device before it checks the new table
//!   (`drivers/iommu/intel/nested.c`, `intel_nested_attach_dev()`), and the VTD_S1 contents are
//!   checked only at attach (`drivers/iommu/intel/pasid.c`, `intel_pasid_setup_nested()`): a
//!   failed attach leaves the device blocked ([`HostIommuBackend::attach`]).
//! - **ERRATA_772415_SPR17.** Sapphire Rapids hosts refuse read-only mappings in a nest parent;
//!   map guest RAM read-write into it ([`HostQuirks`]).
//!
//! - [`ids`]: [`DeviceId`], [`HwptId`], [`IoasId`] (iommufd's numbers, not interchangeable),
//!   [`Pasid`] and [`BindingKey`]; how "no PASID" is spelled (`Option<Pasid>`, `None`) and how
//!   RID_PASID relates. The requester is [`Bdf`] everywhere.
//! - [`host`]: [`HostIommuDevice`] (the host view of one assigned device, with the backend it
//!   is bound to), [`HostHwInfo`], [`HostQuirks`] (ERRATA_772415_SPR17) and [`ViommuFlags`]
//!   ("I want a nesting parent").
//! - [`compat`]: the registration checks ([`check_compatibility`]).
//! - [`backend`]: the [`HostIommuBackend`] trait (iommufd's object model), its types, and
//!   [`BackendError`] (the call and its errno); dirty tracking of nest parents for live
//!   migration (`set_dirty_tracking`, `read_and_clear_dirty`: iommufd's
//!   `IOMMU_HWPT_SET_DIRTY_TRACKING` / `IOMMU_HWPT_GET_DIRTY_BITMAP`).
//! - [`binder`]: [`NestedBinder`], the `vtd_core::VtdObserver` that registers, computes the
//!   desired state ([`desired_binding`], pure), applies and fences, forwards and batches, and
//!   injects host faults; for migration, the registered devices ([`RegisteredDevice`]) and
//!   the replay of every binding after the unit's state was restored.
//! - [`faults`]: how host faults reach the guest ([`GuestFaultSink`], [`UnitFaultSink`]).
//! - [`events`]: [`AccelEvent`]s and [`AccelStats`] for the VMM.
//! - [`sim`]: `SimHostIommu`, a software host IOMMU with VT-d nested semantics (stage-1 walk
//!   through stage 2, an aggressive IOTLB, the kernel's checks, failure injection, a fault
//!   queue); its types live under `vtd_accel::sim`.
//! - [`iommufd`] (feature `iommufd`, on by default): [`IommufdBackend`] over `/dev/iommu` and
//!   VFIO cdevs, through `iommufd-ioctls` and `vfio-ioctls`.
//!
//! Emulated devices keep being translated by `vtd_core::VtdUnit`; a bound device's DMA is
//! translated by the host IOMMU and never walks in vtd-core.
//!
//! ```
//! use std::sync::Arc;
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vtd_accel::sim::{HostMemory, SimHostIommu};
//! use vtd_accel::{Bdf, HostHwInfo, HostIommuDevice, NestedBinder, PciTopology};
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
//! let binder = NestedBinder::with_unit_faults(&unit);
//! let (dev, parent) = sim.vfio_bind_default(ioas, binder.viommu_flags()).unwrap();
//! let host_dev = HostIommuDevice::query(sim.clone(), "0000:01:00.0", dev, parent).unwrap();
//! binder.register(Bdf::new(1, 0, 0), host_dev, PciTopology::default()).unwrap();
//! // Translation is off: the device DMAs to GPAs through its parent.
//! let t = sim.dma_translate(dev, None, 0x5000, vtd_tables::walk::AccessKind::Read).unwrap();
//! assert_eq!(t.hpa, (1 << 32) + 0x5000);
//! ```

// Unsafe code is confined to the ioctl boundary (`iommufd`, each block with its `// SAFETY:`);
// `forbid` is not possible there, so the rest of the crate denies it.
#![deny(unsafe_code)]
// Guest-controlled values (PASID entries, descriptors) and host answers must never panic this crate: no unwrap/expect and no unchecked indexing
// outside tests (tests may assert with them).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod backend;
pub mod binder;
pub mod compat;
pub mod events;
pub mod faults;
pub mod host;
pub mod ids;
#[cfg(feature = "iommufd")]
#[allow(unsafe_code)]
pub mod iommufd;
pub mod sim;

pub use backend::{
    BackendCaps, BackendError, BackendOp, HostFault, HostIommuBackend, HostPageRequest, HwptAlloc,
    PageResponseCode, VtdS1, VtdS1Flags, VtdS1Invalidation,
};
pub use binder::{
    BindingInfo, DesiredBinding, GuestRemapping, HostAttachment, NestedBinder, OrphanHwpt,
    RegisterError, RegisteredDevice, UnregisterError, desired_binding, s1_of,
};
pub use compat::{CompatError, PciTopology, check_compatibility, guest_pasid_bits};
pub use events::{
    AccelEvent, AccelEventLog, AccelObserver, AccelStats, BlockCause, HostFaultOutcome, Recovery,
};
pub use faults::{FaultClass, FaultInjection, FaultLog, GuestFaultSink, UnitFaultSink, classify};
pub use host::{
    HW_CAP_DIRTY_TRACKING, HWPT_ALLOC_DIRTY_TRACKING, HostBacking, HostHwInfo, HostIommuDevice,
    HostIommuType, HostQuirks, VTD_ERRATA_772415_SPR17, ViommuFlags,
};
pub use ids::{BindingKey, DeviceId, HwptId, IoasId, Pasid};
#[cfg(feature = "iommufd")]
pub use iommufd::{DeviceAttach, IommufdBackend};
/// The requester ID: one type for it everywhere (defined in vtd-regs).
pub use vtd_regs::Bdf;

/// The README's example runs as a doc test, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
