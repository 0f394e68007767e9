//! The host side of one assigned device: [`HostIommuDevice`] (QEMU's `HostIOMMUDevice` /
//! `VTDHostIOMMUDevice`), what the host IOMMU reports about itself ([`HostHwInfo`], from
//! `IOMMU_GET_HW_INFO`), its [`HostQuirks`], and the [`ViommuFlags`] the vIOMMU gives the VMM's
//! VFIO layer (QEMU's `get_viommu_flags()`, upstream series v10 patches 05-08).

use std::fmt;
use std::sync::Arc;

use vtd_regs::{Cap, Ecap, VtdConfig};

use crate::backend::{BackendError, DeviceId, HostIommuBackend, HwptId};

/// The vendor type of the host IOMMU behind a device: `iommu_hw_info.out_data_type`
/// (uAPI `enum iommu_hw_info_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostIommuType {
    /// `IOMMU_HW_INFO_TYPE_NONE` (0): the driver reports nothing.
    None,
    /// `IOMMU_HW_INFO_TYPE_INTEL_VTD` (1).
    IntelVtd,
    /// `IOMMU_HW_INFO_TYPE_ARM_SMMUV3` (2).
    ArmSmmuV3,
    /// `IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV` (3).
    Tegra241Cmdqv,
    /// `IOMMU_HW_INFO_TYPE_AMD` (4).
    Amd,
    /// A type this crate does not know.
    Other(u32),
}

impl HostIommuType {
    /// From the uAPI value.
    pub const fn from_uapi(v: u32) -> Self {
        match v {
            0 => Self::None,
            1 => Self::IntelVtd,
            2 => Self::ArmSmmuV3,
            3 => Self::Tegra241Cmdqv,
            4 => Self::Amd,
            other => Self::Other(other),
        }
    }
}

/// `iommu_hw_info_vtd.flags` bit 0, `IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17`: read-only
/// mappings are not allowed in a nest-parent domain (Sapphire Rapids erratum 772415).
pub const VTD_ERRATA_772415_SPR17: u32 = 1;

/// What `IOMMU_GET_HW_INFO` reports for the IOMMU behind a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostHwInfo {
    /// Vendor type.
    pub iommu_type: HostIommuType,
    /// The host unit's CAP_REG (`iommu_hw_info_vtd.cap_reg`; 0 for other vendors).
    pub cap: Cap,
    /// The host unit's ECAP_REG (`iommu_hw_info_vtd.ecap_reg`).
    pub ecap: Ecap,
    /// `iommu_hw_info_vtd.flags` ([`VTD_ERRATA_772415_SPR17`]).
    pub vtd_flags: u32,
    /// `iommu_hw_info.out_max_pasid_log2`: PASID width the device may use, 0 = none.
    pub max_pasid_log2: u8,
    /// `iommu_hw_info.out_capabilities` (`IOMMU_HW_CAP_*`).
    pub capabilities: u64,
}

impl HostHwInfo {
    /// A VT-d host with these registers, no errata, no PASID.
    pub const fn vtd(cap: Cap, ecap: Ecap) -> Self {
        Self {
            iommu_type: HostIommuType::IntelVtd,
            cap,
            ecap,
            vtd_flags: 0,
            max_pasid_log2: 0,
            capabilities: 0,
        }
    }

    /// A host VT-d unit that can nest: what a Sapphire-Rapids-class server reports (scalable
    /// mode with first and second stage, NEST, 48-bit MGAW, FL1GP, 20-bit PASIDs, SRS, EAFS)
    /// *with* ERRATA_772415_SPR17, as the Intel driver reports it on those parts (Linux
    /// `drivers/iommu/intel/iommu.c`, `intel_iommu_hw_info()` sets
    /// `IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17`): guest RAM must be mapped read-write into the
    /// nest parent.
    pub fn vtd_nesting_capable() -> Self {
        let cfg = VtdConfig {
            scalable_mode: true,
            first_stage: true,
            second_stage: true,
            nesting: true,
            pasid_bits: 20,
            supervisor_requests: true,
            ..VtdConfig::default()
        };
        let mut info = Self::vtd(cfg.cap(), cfg.ecap().with_eafs(true).with_smpwc(true));
        info.max_pasid_log2 = 20;
        info.vtd_flags = VTD_ERRATA_772415_SPR17;
        info
    }

    /// The host's address width: CAP.MGAW + 1 (QEMU compares this with `aw-bits`).
    pub const fn address_width(&self) -> u8 {
        self.cap.max_guest_address_width()
    }

    /// The quirks the host's flags imply.
    pub const fn quirks(&self) -> HostQuirks {
        HostQuirks {
            nest_parent_no_readonly: self.vtd_flags & VTD_ERRATA_772415_SPR17 != 0,
        }
    }

    /// Whether the host IOMMU can track DMA writes ([`HW_CAP_DIRTY_TRACKING`]): a parent
    /// HWPT may then be allocated with dirty tracking, for live migration.
    pub const fn supports_dirty_tracking(&self) -> bool {
        self.capabilities & HW_CAP_DIRTY_TRACKING != 0
    }

    /// Whether the device can use PASIDs through this host (PASID attach,
    /// `IOMMU_HWPT_ALLOC_PASID`).
    pub const fn supports_pasid(&self) -> bool {
        self.max_pasid_log2 > 0 && self.ecap.pasid()
    }
}

/// Host quirks the VMM must honour when it fills the nest parent
/// (QEMU's `get_host_iommu_quirks()`, series v8+).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostQuirks {
    /// ERRATA_772415_SPR17: the nest parent must hold no read-only mappings; the VMM maps
    /// guest RAM (and any read-only region it would map) read-write into the parent's IOAS.
    pub nest_parent_no_readonly: bool,
}

impl HostQuirks {
    /// Whether a region the VMM wants mapped with `writable` must be mapped read-write into
    /// a nest parent instead (the erratum's workaround).
    pub const fn parent_map_writable(&self, writable: bool) -> bool {
        writable || self.nest_parent_no_readonly
    }
}

/// How the VMM reaches the host device's IOMMU.
#[derive(Clone)]
pub enum HostBacking {
    /// A VFIO cdev bound to an iommufd: nested HWPTs are possible.
    Iommufd {
        /// The iommufd the device is bound to: every call for the device goes there. A VMM may
        /// use several (one per host IOMMU group of devices, or one per device); IDs are only
        /// unique within one.
        backend: Arc<dyn HostIommuBackend>,
        /// The iommufd device ID (`VFIO_DEVICE_BIND_IOMMUFD.out_devid`).
        dev_id: DeviceId,
        /// The default HWPT VFIO attached the device to: GPA->HPA, allocated with
        /// NEST_PARENT because the vIOMMU asked for it ([`ViommuFlags`]).
        parent_hwpt: HwptId,
    },
    /// A legacy VFIO container/group (type1 IOMMU): no nesting.
    LegacyContainer,
}

impl fmt::Debug for HostBacking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Iommufd {
                backend,
                dev_id,
                parent_hwpt,
            } => f
                .debug_struct("Iommufd")
                .field("backend", &backend.name())
                .field("dev_id", dev_id)
                .field("parent_hwpt", parent_hwpt)
                .finish(),
            Self::LegacyContainer => f.write_str("LegacyContainer"),
        }
    }
}

/// Two backings are equal when they name the same objects of the same backend instance.
impl PartialEq for HostBacking {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::Iommufd {
                    backend: a,
                    dev_id: da,
                    parent_hwpt: pa,
                },
                Self::Iommufd {
                    backend: b,
                    dev_id: db,
                    parent_hwpt: pb,
                },
            ) => same_backend(a, b) && da == db && pa == pb,
            (Self::LegacyContainer, Self::LegacyContainer) => true,
            _ => false,
        }
    }
}

impl Eq for HostBacking {}

/// Whether two handles are the same backend instance (data pointers; vtables may differ
/// between codegen units).
pub(crate) fn same_backend(a: &Arc<dyn HostIommuBackend>, b: &Arc<dyn HostIommuBackend>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// The host view of one assigned device (QEMU's `HostIOMMUDeviceIOMMUFD` +
/// `VTDHostIOMMUDevice`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIommuDevice {
    /// A name for messages (the VFIO device's sysfs name, e.g. `0000:3b:00.0`).
    pub name: String,
    /// iommufd or legacy container.
    pub backing: HostBacking,
    /// What the host IOMMU reported.
    pub info: HostHwInfo,
    /// The device has ATS and PRI (PCIe extended capabilities the VMM reads from its config
    /// space; `IOMMU_GET_HW_INFO` does not report them). Only such a device may be attached
    /// to an HWPT with a fault queue (see [`HwptAlloc::Nested`](crate::HwptAlloc)).
    pub pri: bool,
}

impl HostIommuDevice {
    /// A device bound to `backend`'s iommufd as `dev_id`, attached by VFIO to `parent_hwpt`.
    pub fn iommufd(
        name: impl Into<String>,
        backend: Arc<dyn HostIommuBackend>,
        dev_id: DeviceId,
        parent_hwpt: HwptId,
        info: HostHwInfo,
    ) -> Self {
        Self {
            name: name.into(),
            backing: HostBacking::Iommufd {
                backend,
                dev_id,
                parent_hwpt,
            },
            info,
            pri: false,
        }
    }

    /// The same device, with (or without) ATS and PRI.
    #[must_use]
    pub fn with_pri(mut self, pri: bool) -> Self {
        self.pri = pri;
        self
    }

    /// Whether PASIDs can be attached for this device: the hardware has them
    /// ([`HostHwInfo::supports_pasid`]) and the host kernel accepts PASID attach
    /// ([`BackendCaps::pasid_attach`](crate::BackendCaps)).
    pub fn supports_pasid_attach(&self) -> bool {
        self.info.supports_pasid() && self.backend().is_some_and(|b| b.caps().pasid_attach)
    }

    /// A device behind a legacy VFIO container (refused by registration with first stage on).
    pub fn legacy_container(name: impl Into<String>, info: HostHwInfo) -> Self {
        Self {
            name: name.into(),
            backing: HostBacking::LegacyContainer,
            info,
            pri: false,
        }
    }

    /// Asks `backend` for the device's host IOMMU info (`IOMMU_GET_HW_INFO`) and builds the
    /// host view; the device's calls will go to `backend`.
    pub fn query(
        backend: Arc<dyn HostIommuBackend>,
        name: impl Into<String>,
        dev_id: DeviceId,
        parent_hwpt: HwptId,
    ) -> Result<Self, BackendError> {
        let info = backend.get_hw_info(dev_id)?;
        Ok(Self::iommufd(name, backend, dev_id, parent_hwpt, info))
    }

    /// The iommufd device ID and default HWPT, if iommufd-backed.
    pub const fn iommufd_ids(&self) -> Option<(DeviceId, HwptId)> {
        match self.backing {
            HostBacking::Iommufd {
                dev_id,
                parent_hwpt,
                ..
            } => Some((dev_id, parent_hwpt)),
            HostBacking::LegacyContainer => None,
        }
    }

    /// The backend the device is bound to, if iommufd-backed.
    pub fn backend(&self) -> Option<&Arc<dyn HostIommuBackend>> {
        match &self.backing {
            HostBacking::Iommufd { backend, .. } => Some(backend),
            HostBacking::LegacyContainer => None,
        }
    }

    /// The host address width (CAP.MGAW + 1).
    pub const fn address_width(&self) -> u8 {
        self.info.address_width()
    }

    /// The host's quirks.
    pub const fn quirks(&self) -> HostQuirks {
        self.info.quirks()
    }
}

/// What the vIOMMU tells the VMM's VFIO layer before it allocates a device's default HWPT
/// (QEMU `PCIIOMMUOps::get_viommu_flags`, `VIOMMU_FLAG_WANT_NESTING_PARENT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ViommuFlags {
    /// First-stage translation is on: allocate the default HWPT with
    /// `IOMMU_HWPT_ALLOC_NEST_PARENT` so guest tables can be nested over it.
    pub want_nesting_parent: bool,
    /// The guest has PASIDs: allocate it with `IOMMU_HWPT_ALLOC_PASID` too, so PASIDs
    /// can be attached (the kernel requires the domain of requests without PASID to be
    /// PASID-capable).
    pub want_pasid_parent: bool,
}

/// `IOMMU_HWPT_ALLOC_NEST_PARENT` (uAPI `enum iommufd_hwpt_alloc_flags`).
pub const HWPT_ALLOC_NEST_PARENT: u32 = 1;
/// `IOMMU_HWPT_ALLOC_PASID`.
pub const HWPT_ALLOC_PASID: u32 = 8;
/// `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`.
pub const HWPT_ALLOC_DIRTY_TRACKING: u32 = 2;
/// `IOMMU_HW_CAP_DIRTY_TRACKING` in `iommu_hw_info.out_capabilities` (uAPI
/// `enum iommufd_hw_capabilities`): `IOMMU_HWPT_SET_DIRTY_TRACKING` and
/// `IOMMU_HWPT_GET_DIRTY_BITMAP` work on HWPTs allocated with dirty tracking.
pub const HW_CAP_DIRTY_TRACKING: u64 = 1;

impl ViommuFlags {
    /// The flags for a unit with this configuration: a nesting parent iff scalable mode with
    /// first-stage translation (QEMU: `x-flts=on`).
    pub fn for_config(cfg: &VtdConfig) -> Self {
        let fs = cfg.scalable_mode && cfg.first_stage;
        Self {
            want_nesting_parent: fs,
            want_pasid_parent: fs && cfg.pasid_bits > 0,
        }
    }

    /// `iommu_hwpt_alloc.flags` for the default HWPT.
    pub const fn parent_alloc_flags(&self) -> u32 {
        let mut f = 0;
        if self.want_nesting_parent {
            f |= HWPT_ALLOC_NEST_PARENT;
        }
        if self.want_pasid_parent {
            f |= HWPT_ALLOC_PASID;
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_follow_first_stage() {
        let flts = VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap();
        let f = ViommuFlags::for_config(&flts);
        assert!(f.want_nesting_parent && !f.want_pasid_parent);
        assert_eq!(f.parent_alloc_flags(), HWPT_ALLOC_NEST_PARENT);
        let legacy = VtdConfig::default();
        assert_eq!(ViommuFlags::for_config(&legacy), ViommuFlags::default());
        let ss = VtdConfig::from_qemu_props("x-scalable-mode=on").unwrap();
        assert!(!ViommuFlags::for_config(&ss).want_nesting_parent);
        let pasid = VtdConfig {
            pasid_bits: 8,
            ..flts
        };
        assert_eq!(
            ViommuFlags::for_config(&pasid).parent_alloc_flags(),
            HWPT_ALLOC_NEST_PARENT | HWPT_ALLOC_PASID
        );
    }

    #[test]
    fn host_info() {
        let mut info = HostHwInfo::vtd_nesting_capable();
        assert!(info.ecap.nest() && info.ecap.smts() && info.cap.fl1gp());
        assert_eq!(info.address_width(), 48);
        assert!(info.supports_pasid());
        // Sapphire Rapids reports the erratum.
        assert!(info.quirks().nest_parent_no_readonly);
        info.vtd_flags = 0;
        assert!(!info.quirks().parent_map_writable(false));
        info.vtd_flags = VTD_ERRATA_772415_SPR17;
        assert!(info.quirks().parent_map_writable(false));
        assert_eq!(HostIommuType::from_uapi(1), HostIommuType::IntelVtd);
        assert_eq!(HostIommuType::from_uapi(9), HostIommuType::Other(9));
        let mem = crate::sim::HostMemory::<vm_memory::GuestMemoryMmap<()>>::new();
        let sim: Arc<dyn HostIommuBackend> = Arc::new(crate::sim::SimHostIommu::new(info, mem));
        let dev =
            HostIommuDevice::iommufd("0000:3b:00.0", sim.clone(), DeviceId(3), HwptId(9), info);
        assert_eq!(dev.iommufd_ids(), Some((DeviceId(3), HwptId(9))));
        assert!(same_backend(dev.backend().unwrap(), &sim));
        assert_eq!(dev.clone(), dev);
        assert_eq!(
            HostIommuDevice::legacy_container("x", info).iommufd_ids(),
            None
        );
    }
}
