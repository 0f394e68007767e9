//! The numbers the binder juggles, each with its own type so they cannot be swapped: iommufd
//! object IDs ([`DeviceId`], [`HwptId`], [`IoasId`]; three `u32` namespaces of the kernel that
//! happen to share one counter) and the guest's PASIDs ([`Pasid`]). The requester ID is
//! [`vtd_regs::Bdf`] everywhere.
//!
//! # Requests without PASID
//! One representation: `Option<Pasid>`, where `None` is "requests without PASID" (the device's
//! requester ID itself) and [`Pasid`] is never 0. The binder, its events, the backend trait and
//! the simulator all use it; the ioctl boundary alone translates it (VFIO's
//! `VFIO_DEVICE_ATTACH_PASID` flag absent, iommufd's `IOMMU_NO_PASID` = 0 in Linux
//! `include/linux/iommu.h`, `IOMMU_PGFAULT_FLAGS_PASID_VALID` clear).
//!
//! In scalable mode a request without PASID is translated through the PASID-table entry
//! RID_PASID (VT-d spec 9.4): the context entry's RID_PASID field when ECAP.RPS is set, PASID
//! 0 otherwise. This crate's units never advertise ECAP.RPS (nor does QEMU's), so RID_PASID is
//! 0: the guest's PASID entry 0 *is* the binding `None`, and PASID 0 is never handed out for
//! requests with PASID (Linux reserves it as `IOMMU_NO_PASID`). A guest invalidation naming
//! PASID 0 therefore concerns the binding `None` ([`Pasid::from_table_index`]).

use core::fmt;
use core::num::NonZeroU32;

macro_rules! iommufd_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($what, " {}"), self.0)
            }
        }
    };
}

iommufd_id!(
    /// An iommufd device object ID: `out_devid` of `VFIO_DEVICE_BIND_IOMMUFD`. Unique within
    /// one iommufd only: two backends may hand out the same number.
    DeviceId,
    "device"
);
iommufd_id!(
    /// An iommufd HWPT (hardware page table) object ID: `out_hwpt_id` of `IOMMU_HWPT_ALLOC`,
    /// or the default HWPT VFIO attached the device to. Unique within one iommufd only.
    HwptId,
    "HWPT"
);
iommufd_id!(
    /// An iommufd IOAS (I/O address space) object ID: what a parent HWPT takes its GPA->HPA
    /// mappings from.
    IoasId,
    "IOAS"
);

/// The PASID of a request *with* PASID: never 0 (see the module documentation: `None` in an
/// `Option<Pasid>` is the request without PASID, served by RID_PASID 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pasid(NonZeroU32);

impl Pasid {
    /// The PASID-table index that serves requests without PASID while ECAP.RPS is clear
    /// (VT-d spec 9.4).
    pub const RID_PASID: u32 = 0;

    /// A PASID other than RID_PASID; `None` for 0.
    pub const fn new(value: u32) -> Option<Self> {
        match NonZeroU32::new(value) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// The binding a guest PASID-table index (a PASID-cache or PASID-IOTLB invalidation's
    /// PASID, a PASID entry's slot) stands for: RID_PASID is the binding without PASID.
    pub const fn from_table_index(index: u32) -> Option<Self> {
        Self::new(index)
    }

    /// The guest PASID-table index of a binding: its PASID, or RID_PASID.
    pub const fn table_index(pasid: Option<Self>) -> u32 {
        match pasid {
            Some(p) => p.get(),
            None => Self::RID_PASID,
        }
    }

    /// The value.
    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

impl fmt::Display for Pasid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PASID {}", self.0)
    }
}

/// One binding: a device's requests without PASID (`pasid: None`) or with one PASID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindingKey {
    /// The requester.
    pub bdf: vtd_regs::Bdf,
    /// The PASID, `None` for requests without PASID.
    pub pasid: Option<Pasid>,
}

impl BindingKey {
    /// The binding of `bdf` at `pasid`.
    pub const fn new(bdf: vtd_regs::Bdf, pasid: Option<Pasid>) -> Self {
        Self { bdf, pasid }
    }
}

impl fmt::Display for BindingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pasid {
            Some(p) => write!(f, "{} {p}", self.bdf),
            None => write!(f, "{} (no PASID)", self.bdf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vtd_regs::Bdf;

    #[test]
    fn rid_pasid_is_the_binding_without_pasid() {
        assert_eq!(Pasid::new(0), None);
        assert_eq!(Pasid::from_table_index(Pasid::RID_PASID), None);
        let p5 = Pasid::new(5).unwrap();
        assert_eq!(p5.get(), 5);
        assert_eq!(Pasid::table_index(Some(p5)), 5);
        assert_eq!(Pasid::table_index(None), 0);
        // Requests without PASID sort first, as the RID comes first everywhere.
        assert!(None < Some(p5));
        let bdf = Bdf::new(1, 0, 0);
        assert_eq!(
            BindingKey::new(bdf, Some(p5)).to_string(),
            "01:00.0 PASID 5"
        );
        assert_eq!(BindingKey::new(bdf, None).to_string(), "01:00.0 (no PASID)");
        assert_eq!(HwptId(7).to_string(), "HWPT 7");
        assert_eq!(DeviceId(3).to_string(), "device 3");
    }
}
