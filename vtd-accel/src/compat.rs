//! Compatibility between the emulated unit and a host device's IOMMU, checked when the VMM
//! registers an assigned device (QEMU `vtd_check_hiod`, upstream series v10 patches 09-10).
//!
//! With first-stage translation on, the guest's first-stage tables run on the host IOMMU
//! unchanged, so every first-stage feature the guest may use must exist on the host: nesting
//! itself (host scalable mode and ECAP.NEST; Linux `intel_iommu` refuses nested domains
//! otherwise), the address width, 1 GiB and 5-level first-stage paging, supervisor requests.

use vtd_regs::VtdConfig;

use crate::host::{HostBacking, HostIommuDevice, HostIommuType};

/// Where the device sits in the guest's PCI topology, as far as the vIOMMU cares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PciTopology {
    /// The device's requests reach the vIOMMU with another requester ID (it sits behind a
    /// conventional PCI or PCIe-to-PCI bridge, which takes ownership of the transactions).
    /// Such devices share an address space with their bridge, which a per-device nested HWPT
    /// cannot express (the series' first limitation).
    pub aliased_requester_id: bool,
}

/// Why a device cannot be registered for nested binding. Every message names the property to
/// change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompatError {
    /// The unit is not in scalable mode with first-stage translation.
    #[error(
        "nested first-stage binding needs x-scalable-mode=on,x-flts=on on the vIOMMU; \
         without it use caching-mode shadowing"
    )]
    FirstStageOff,
    /// The device is not bound through iommufd.
    #[error(
        "device {name} is not backed by iommufd (legacy VFIO container): nested HWPTs need \
         the VFIO cdev bound to an iommufd"
    )]
    NotIommufd {
        /// The device.
        name: String,
    },
    /// The host IOMMU is not Intel VT-d.
    #[error(
        "device {name}: host IOMMU is {found:?}, not Intel VT-d: a VT-d first-stage table \
         cannot be nested on it"
    )]
    NotVtd {
        /// The device.
        name: String,
        /// The host's type.
        found: HostIommuType,
    },
    /// The host VT-d unit cannot nest.
    #[error(
        "device {name}: host VT-d has no nested translation (ECAP.NEST = {nest}, \
         ECAP.SMTS = {smts})"
    )]
    NoNesting {
        /// The device.
        name: String,
        /// Host ECAP.NEST.
        nest: bool,
        /// Host ECAP.SMTS.
        smts: bool,
    },
    /// The host's address width is smaller than the guest's.
    #[error("device {name}: host address width {host} bits is below the vIOMMU's aw-bits={guest}")]
    AddressWidth {
        /// The device.
        name: String,
        /// Host CAP.MGAW + 1.
        host: u8,
        /// The guest's `aw-bits`.
        guest: u8,
    },
    /// The guest may use 1 GiB first-stage pages but the host cannot.
    #[error(
        "device {name}: vIOMMU advertises fs1gp=on but the host lacks CAP.FL1GP; set fs1gp=off"
    )]
    NoFirstStage1g {
        /// The device.
        name: String,
    },
    /// The guest may use 5-level first-stage tables but the host cannot.
    #[error(
        "device {name}: vIOMMU advertises 5-level first-stage paging (aw-bits=57) but the \
         host lacks CAP.FL5LP"
    )]
    NoFirstStage5Level {
        /// The device.
        name: String,
    },
    /// The guest may set SRE but the host has no supervisor requests.
    #[error(
        "device {name}: vIOMMU advertises supervisor requests (ECAP.SRS) but the host lacks them"
    )]
    NoSupervisorRequests {
        /// The device.
        name: String,
    },
    /// The guest is given PASIDs, the host IOMMU has them, but the host kernel cannot attach
    /// them.
    #[error(
        "device {name}: the vIOMMU advertises PASIDs (x-pasid-mode=on) but the host kernel \
         cannot attach PASIDs to a nested HWPT (IOMMU_HWPT_ALLOC_PASID and \
         VFIO_DEVICE_ATTACH_PASID need Linux 6.18 or later; 6.12 refuses them); set \
         x-pasid-mode=off or run a newer host kernel"
    )]
    NoPasidAttach {
        /// The device.
        name: String,
    },
    /// The device's requester ID is aliased by a conventional PCI bridge.
    #[error(
        "device {name} is behind a conventional PCI bridge (aliased requester ID): not \
         supported with x-flts=on; place it on a PCIe root port"
    )]
    AliasedRequesterId {
        /// The device.
        name: String,
    },
}

/// Checks that `dev` can have the guest's first-stage tables nested on its host IOMMU, for a
/// unit configured as `cfg` and the device placed at `topo`.
///
/// The checks, in order: first stage on; iommufd-backed; host is VT-d; host can nest
/// (ECAP.SMTS and ECAP.NEST); host AW >= guest `aw-bits`; FL1GP if the guest advertises it;
/// FL5LP if the guest advertises it; SRS if the guest advertises it; PASID attach by the host
/// kernel ([`BackendCaps::pasid_attach`](crate::BackendCaps)) if the guest has PASIDs and the
/// host IOMMU has them; no requester-ID alias.
pub fn check_compatibility(
    cfg: &VtdConfig,
    dev: &HostIommuDevice,
    topo: &PciTopology,
) -> Result<(), CompatError> {
    if !(cfg.scalable_mode && cfg.first_stage) {
        return Err(CompatError::FirstStageOff);
    }
    let name = dev.name.clone();
    if dev.backing == HostBacking::LegacyContainer {
        return Err(CompatError::NotIommufd { name });
    }
    let info = &dev.info;
    if info.iommu_type != HostIommuType::IntelVtd {
        return Err(CompatError::NotVtd {
            name,
            found: info.iommu_type,
        });
    }
    if !(info.ecap.nest() && info.ecap.smts()) {
        return Err(CompatError::NoNesting {
            name,
            nest: info.ecap.nest(),
            smts: info.ecap.smts(),
        });
    }
    if info.address_width() < cfg.aw_bits {
        return Err(CompatError::AddressWidth {
            name,
            host: info.address_width(),
            guest: cfg.aw_bits,
        });
    }
    let guest_cap = cfg.cap();
    if guest_cap.fl1gp() && !info.cap.fl1gp() {
        return Err(CompatError::NoFirstStage1g { name });
    }
    if guest_cap.fl5lp() && !info.cap.fl5lp() {
        return Err(CompatError::NoFirstStage5Level { name });
    }
    if cfg.ecap().srs() && !info.ecap.srs() {
        return Err(CompatError::NoSupervisorRequests { name });
    }
    // Hardware without PASIDs keeps the existing behaviour (only requests without PASID are
    // bound); hardware with PASIDs behind a kernel that cannot attach them is refused here,
    // rather than every PASID bind failing later.
    let kernel_pasid = dev.backend().is_none_or(|b| b.caps().pasid_attach);
    if cfg.pasid_bits > 0 && dev.info.supports_pasid() && !kernel_pasid {
        return Err(CompatError::NoPasidAttach { name });
    }
    if topo.aliased_requester_id {
        return Err(CompatError::AliasedRequesterId { name });
    }
    Ok(())
}

/// The PASID width (`VtdConfig::pasid_bits`) to give the guest when `requested` is what the
/// VMM would like and `devices` are the assigned devices: 0 when any of them cannot attach
/// PASIDs on this host (hardware or kernel: a 6.12 host), so the guest-visible ECAP.PASID
/// follows what the host can run instead of every PASID bind failing later.
pub fn guest_pasid_bits(requested: u8, devices: &[&HostIommuDevice]) -> u8 {
    if devices.iter().all(|d| d.supports_pasid_attach()) {
        requested
    } else {
        0
    }
}
