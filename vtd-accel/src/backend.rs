//! The host IOMMU as the binder drives it: the iommufd object model (Linux
//! `include/uapi/linux/iommufd.h`, `include/uapi/linux/vfio.h`) reduced to the calls nested
//! first-stage binding needs.
//!
//! A failed call is a [`BackendError`]: the call and the errno, as the kernel reports them
//! (plus `entry_num` for a partial `IOMMU_HWPT_INVALIDATE`). Nothing else: how a simulator
//! decided to fail a call is the simulator's business ([`crate::sim`]).
//!
//! Two implementations exist: [`IommufdBackend`](crate::iommufd::IommufdBackend) (real
//! `/dev/iommu` and VFIO cdev ioctls, feature `iommufd`) and
//! [`SimHostIommu`](crate::sim::SimHostIommu) (a software host IOMMU with VT-d nested semantics
//! for tests and demos).

use std::fmt;

use vtd_regs::fault::FaultReason;
use vtd_tables::walk::AccessKind;

use crate::host::HostHwInfo;
pub use crate::ids::{DeviceId, HwptId, IoasId, Pasid};

/// `iommu_hwpt_vtd_s1.flags` (uAPI `enum iommu_hwpt_vtd_s1_flags`): the PASID-entry bits the
/// host must honour for a guest first-stage table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VtdS1Flags(pub u64);

impl VtdS1Flags {
    /// `IOMMU_VTD_S1_SRE` (1): supervisor requests allowed (PASID entry SRE; needs host
    /// ECAP.SRS).
    pub const SRE: u64 = 1;
    /// `IOMMU_VTD_S1_EAFE` (2): extended accessed flag (PASID entry EAFE; needs host
    /// ECAP.EAFS).
    pub const EAFE: u64 = 2;
    /// `IOMMU_VTD_S1_WPE` (4): write protect enable (PASID entry WPE).
    pub const WPE: u64 = 4;

    /// Whether SRE is set.
    pub const fn sre(self) -> bool {
        self.0 & Self::SRE != 0
    }
    /// Whether EAFE is set.
    pub const fn eafe(self) -> bool {
        self.0 & Self::EAFE != 0
    }
    /// Whether WPE is set.
    pub const fn wpe(self) -> bool {
        self.0 & Self::WPE != 0
    }
}

/// `struct iommu_hwpt_vtd_s1`: a guest first-stage table handed to the host as the stage-1 of
/// a nested HWPT (data type `IOMMU_HWPT_DATA_VTD_S1` = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VtdS1 {
    /// SRE / EAFE / WPE from the guest's PASID entry.
    pub flags: VtdS1Flags,
    /// The guest's FSPTPTR: a guest-physical address the host reads through the parent.
    pub pgtbl_addr: u64,
    /// 48 (4-level, FSPM = 0) or 57 (5-level, FSPM = 1): `48 + 9 * FSPM`.
    pub addr_width: u32,
}

/// What `IOMMU_HWPT_ALLOC` is asked to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HwptAlloc {
    /// A kernel-managed HWPT over an IOAS (GPA->HPA). With `nest_parent`
    /// (`IOMMU_HWPT_ALLOC_NEST_PARENT`) it can be the parent of nested HWPTs; this is the
    /// "default HWPT" VFIO allocates when the vIOMMU asks for it
    /// ([`ViommuFlags`](crate::host::ViommuFlags)).
    Parent {
        /// The IOAS whose mappings the HWPT holds.
        ioas: IoasId,
        /// `IOMMU_HWPT_ALLOC_NEST_PARENT`.
        nest_parent: bool,
        /// `IOMMU_HWPT_ALLOC_PASID`: attachable to PASIDs (not only to requests without PASID).
        pasid: bool,
        /// `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`: the IOMMU can record which pages DMA writes
        /// through this HWPT and every HWPT nested on it (live migration of passthrough
        /// devices; only where the host reports `IOMMU_HW_CAP_DIRTY_TRACKING`).
        dirty_tracking: bool,
    },
    /// A user-managed nested HWPT: the guest's first stage over `parent`.
    Nested {
        /// The nest-parent HWPT (the device's default HWPT).
        parent: HwptId,
        /// The guest table.
        s1: VtdS1,
        /// `IOMMU_HWPT_ALLOC_PASID`.
        pasid: bool,
        /// `IOMMU_HWPT_FAULT_ID_VALID` with the backend's fault queue: the device's page
        /// requests (PRI) on this HWPT reach user space. Only for a device with ATS and PRI:
        /// attaching such an HWPT enables IOPF on the device, which the Intel driver refuses
        /// with `ENODEV` otherwise (Linux `drivers/iommu/intel/iommu.h`,
        /// `iopf_for_domain_set()` -> `drivers/iommu/intel/iommu.c`,
        /// `intel_iommu_enable_iopf()`).
        fault: bool,
    },
}

/// `struct iommu_hwpt_vtd_s1_invalidate`: one entry of an `IOMMU_HWPT_INVALIDATE` array
/// (data type `IOMMU_HWPT_INVALIDATE_DATA_VTD_S1` = 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VtdS1Invalidation {
    /// Start address, 4 KiB aligned.
    pub addr: u64,
    /// Number of 4 KiB pages; `u64::MAX` with `addr` 0 means everything.
    pub npages: u64,
    /// `IOMMU_VTD_INV_FLAGS_LEAF`: only leaf entries changed (the guest's IH), so paging-
    /// structure caches may be kept.
    pub leaf: bool,
}

impl VtdS1Invalidation {
    /// Everything the HWPT caches (uAPI: addr 0, npages `U64_MAX`).
    pub const ALL: Self = Self {
        addr: 0,
        npages: u64::MAX,
        leaf: false,
    };

    /// The entry covering the inclusive address range `first..=last` (4 KiB granular).
    pub fn for_range(first: u64, last: u64, leaf: bool) -> Self {
        let first = first & !0xfff;
        if first == 0 && last == u64::MAX {
            return Self { leaf, ..Self::ALL };
        }
        let pages = ((last.saturating_sub(first)) >> 12).saturating_add(1);
        Self {
            addr: first,
            npages: pages,
            leaf,
        }
    }

    /// Whether this entry flushes everything.
    pub const fn is_all(&self) -> bool {
        self.addr == 0 && self.npages == u64::MAX
    }

    /// Whether the entry covers `addr` (a byte address).
    pub const fn covers(&self, addr: u64) -> bool {
        if self.is_all() {
            return true;
        }
        let len = self.npages.saturating_mul(4096);
        addr >= self.addr && addr - self.addr < len
    }

    /// Whether the entry overlaps the byte range `[start, start + len)`.
    pub const fn overlaps(&self, start: u64, len: u64) -> bool {
        if self.is_all() {
            return true;
        }
        let end = self.addr.saturating_add(self.npages.saturating_mul(4096));
        let other_end = start.saturating_add(len);
        start < end && self.addr < other_end
    }
}

/// A DMA fault the host IOMMU raised for an assigned device (a non-recoverable fault on a
/// nested HWPT, or a page request read from an iommufd fault queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFault {
    /// The iommufd device that issued the request.
    pub dev_id: DeviceId,
    /// The PASID the request carried (`None` for requests without PASID).
    pub pasid: Option<Pasid>,
    /// The faulting input address (GIOVA), page aligned.
    pub addr: u64,
    /// The host's fault reason (VT-d spec 7.1.3 codes). First-stage reasons concern the guest's
    /// table; second-stage and structure reasons concern the host's own state.
    pub reason: FaultReason,
    /// Read, write or execute.
    pub access: AccessKind,
    /// Privileged (supervisor) request.
    pub privileged: bool,
    /// The HWPT the device was attached to when it faulted, if the host says.
    pub hwpt: Option<HwptId>,
}

/// `EOPNOTSUPP` (Linux `include/uapi/asm-generic/errno.h`): what a backend without an
/// optional call answers.
pub const EOPNOTSUPP: i32 = 95;
/// One page request (PCIe PRI) read from the host's fault queue: `struct iommu_hwpt_pgfault`
/// (Linux `include/uapi/linux/iommufd.h`). On Intel hosts this is the only kind of DMA fault a
/// nested HWPT reports to user space (see [`BackendCaps`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPageRequest {
    /// The iommufd device that issued the request.
    pub dev_id: DeviceId,
    /// The PASID the request carried (`None` for requests without PASID).
    pub pasid: Option<Pasid>,
    /// The page, 4 KiB aligned.
    pub addr: u64,
    /// Page request group index (`grpid`, 9 bits on PCIe).
    pub prg_index: u16,
    /// `IOMMU_PGFAULT_FLAGS_LAST_PAGE`: the group's last request.
    pub last_in_group: bool,
    /// Read access requested.
    pub read: bool,
    /// Write access requested (`IOMMU_PGFAULT_PERM_WRITE`).
    pub write: bool,
    /// Execute access requested (`IOMMU_PGFAULT_PERM_EXEC`).
    pub execute: bool,
    /// Privileged request (`IOMMU_PGFAULT_PERM_PRIV`).
    pub privileged: bool,
    /// The cookie the group's response must carry (`struct iommu_hwpt_page_response`).
    pub cookie: u32,
}

/// `enum iommufd_page_response_code` (Linux `include/uapi/linux/iommufd.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageResponseCode {
    /// `IOMMUFD_PAGE_RESP_SUCCESS` (0): the device retries.
    Success,
    /// `IOMMUFD_PAGE_RESP_INVALID` (1): the request fails at the device.
    Invalid,
}

impl PageResponseCode {
    /// The uAPI value.
    pub const fn uapi(self) -> u32 {
        match self {
            Self::Success => 0,
            Self::Invalid => 1,
        }
    }
}

/// What the host kernel behind a backend can do, beyond what `IOMMU_GET_HW_INFO` says about
/// the hardware.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendCaps {
    /// PASIDs can be attached: `IOMMU_HWPT_ALLOC_PASID` and VFIO's
    /// `VFIO_DEVICE_ATTACH_PASID`. Linux 6.12 rejects the first with `EOPNOTSUPP`
    /// (`drivers/iommu/iommufd/hw_pagetable.c`, `iommufd_hwpt_alloc()` flag check) and the
    /// second with `EINVAL` (`drivers/vfio/device_cdev.c`,
    /// `vfio_df_ioctl_attach_pt()`); 6.18 accepts both.
    pub pasid_attach: bool,
    /// Page requests (PRI) of nested HWPTs allocated with a fault queue can be read
    /// ([`HostIommuBackend::read_page_requests`]) and answered
    /// ([`HostIommuBackend::respond_page_request`]).
    pub page_requests: bool,
    /// Non-recoverable DMA faults of nested HWPTs reach user space
    /// ([`HostIommuBackend::read_faults`]). Never on Intel VT-d today: the Intel driver logs
    /// them in the host kernel log (`drivers/iommu/intel/dmar.c`, `dmar_fault()`), so a guest
    /// sees nothing when a non-PRI passthrough device faults.
    pub unrecoverable_faults: bool,
}

/// The host call that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendOp {
    /// Opening `/dev/iommu` or a VFIO cdev.
    Open,
    /// `IOMMU_GET_HW_INFO`.
    GetHwInfo,
    /// `IOMMU_HWPT_ALLOC`.
    AllocHwpt,
    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` (attach or replace).
    Attach,
    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
    Detach,
    /// `IOMMU_HWPT_INVALIDATE`.
    Invalidate,
    /// `IOMMU_DESTROY`.
    Destroy,
    /// Reading the fault queue.
    ReadFaults,
    /// `IOMMU_FAULT_QUEUE_ALLOC`.
    FaultQueueAlloc,
    /// `IOMMU_IOAS_MAP` / unmap (the sim's stage-2 maps).
    IoasMap,
    /// `IOMMU_HWPT_SET_DIRTY_TRACKING`.
    SetDirtyTracking,
    /// `IOMMU_HWPT_GET_DIRTY_BITMAP`.
    GetDirtyBitmap,
    /// Writing a page response to the fault queue.
    PageResponse,
}

impl fmt::Display for BackendOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Open => "open",
            Self::GetHwInfo => "IOMMU_GET_HW_INFO",
            Self::AllocHwpt => "IOMMU_HWPT_ALLOC",
            Self::Attach => "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
            Self::Detach => "VFIO_DEVICE_DETACH_IOMMUFD_PT",
            Self::Invalidate => "IOMMU_HWPT_INVALIDATE",
            Self::Destroy => "IOMMU_DESTROY",
            Self::ReadFaults => "fault queue read",
            Self::FaultQueueAlloc => "IOMMU_FAULT_QUEUE_ALLOC",
            Self::IoasMap => "IOMMU_IOAS_MAP",
            Self::SetDirtyTracking => "IOMMU_HWPT_SET_DIRTY_TRACKING",
            Self::GetDirtyBitmap => "IOMMU_HWPT_GET_DIRTY_BITMAP",
            Self::PageResponse => "fault queue response",
        })
    }
}

/// A failed host call, as the kernel reports it: which call, its errno, and (for
/// `IOMMU_HWPT_INVALIDATE`) how many entries it handled; plus the objects involved, in words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{op} failed: {message}{}", errno.map(|e| format!(" (errno {e})")).unwrap_or_default())]
pub struct BackendError {
    /// The call.
    pub op: BackendOp,
    /// The error number the call returned; `None` when the failure was found before any
    /// call (e.g. a device the backend does not know).
    pub errno: Option<i32>,
    /// The objects involved and what went wrong, in words.
    pub message: String,
    /// For `IOMMU_HWPT_INVALIDATE`: how many entries the host handled before failing
    /// (`entry_num` on return).
    pub handled: Option<u32>,
}

impl BackendError {
    /// An error with a message and no errno.
    pub fn new(op: BackendOp, message: impl Into<String>) -> Self {
        Self {
            op,
            errno: None,
            message: message.into(),
            handled: None,
        }
    }

    /// An error the call returned with `errno`.
    pub fn with_errno(op: BackendOp, errno: i32, message: impl Into<String>) -> Self {
        Self {
            errno: Some(errno),
            ..Self::new(op, message)
        }
    }

    /// An error from an OS call.
    pub fn os(op: BackendOp, err: &std::io::Error, what: &str) -> Self {
        Self {
            op,
            errno: err.raw_os_error(),
            message: format!("{what}: {err}"),
            handled: None,
        }
    }

    /// Sets the handled-entries count.
    pub fn with_handled(mut self, handled: u32) -> Self {
        self.handled = Some(handled);
        self
    }
}

/// The host IOMMU calls nested binding needs (iommufd uAPI; see the module docs).
///
/// A failed call changes nothing, except attach (see [`HostIommuBackend::attach`]): there the
/// Intel driver has already blocked the device when it finds the new table unusable.
/// Implementations are shared between the vCPU threads that publish the unit's events, hence
/// `Send + Sync`.
pub trait HostIommuBackend: Send + Sync {
    /// A short name for messages ("iommufd", "sim").
    fn name(&self) -> &'static str;

    /// `IOMMU_GET_HW_INFO` for a bound device: vendor type, CAP/ECAP, errata flags, PASID
    /// width.
    fn get_hw_info(&self, dev: DeviceId) -> Result<HostHwInfo, BackendError>;

    /// `IOMMU_HWPT_ALLOC` for `dev`.
    fn alloc_hwpt(&self, dev: DeviceId, req: &HwptAlloc) -> Result<HwptId, BackendError>;

    /// Attaches `dev`'s requests without PASID (`pasid` `None`) or with `pasid` to `hwpt`,
    /// replacing what they were attached to (`VFIO_DEVICE_ATTACH_IOMMUFD_PT`, with
    /// `VFIO_DEVICE_ATTACH_PASID` for a PASID).
    ///
    /// Replacing is **not** atomic on Intel hosts, and a failed attach is not reverted: the
    /// driver blocks the device's translation (for a PASID: tears its PASID entry down) before
    /// it validates and installs the new table (Linux `drivers/iommu/intel/nested.c`,
    /// `intel_nested_attach_dev()` calls `device_block_translation()` first;
    /// `drivers/iommu/intel/pasid.c`, `intel_pasid_setup_nested()` checks the stage-1 only
    /// then). After an `Err` whose errno comes from the driver the device (PASID) is blocked,
    /// not on its previous HWPT; callers must treat it so.
    fn attach(&self, dev: DeviceId, pasid: Option<Pasid>, hwpt: HwptId)
    -> Result<(), BackendError>;

    /// Detaches `dev` at `pasid`: its DMA there is blocked (`VFIO_DEVICE_DETACH_IOMMUFD_PT`).
    fn detach(&self, dev: DeviceId, pasid: Option<Pasid>) -> Result<(), BackendError>;

    /// `IOMMU_HWPT_INVALIDATE` of a nested HWPT with VT-d stage-1 entries. `Ok(n)` means
    /// all `n = entries.len()` were handled; a partial failure is an error whose
    /// [`BackendError::handled`] says how many were.
    fn invalidate(&self, hwpt: HwptId, entries: &[VtdS1Invalidation]) -> Result<u32, BackendError>;

    /// `IOMMU_DESTROY` of an HWPT the binder allocated (it must no longer be attached).
    fn destroy(&self, hwpt: HwptId) -> Result<(), BackendError>;

    /// Up to `max` non-recoverable faults the host raised on nested HWPTs since the last call
    /// (non-blocking); only backends whose [`BackendCaps::unrecoverable_faults`] is set report
    /// any.
    fn read_faults(&self, max: usize) -> Result<Vec<HostFault>, BackendError>;

    /// `IOMMU_HWPT_SET_DIRTY_TRACKING`: starts (`enable`) or stops recording which pages DMA
    /// writes through `hwpt`, a parent allocated with `dirty_tracking`, including DMA through
    /// HWPTs nested on it (the second stage's dirty bits see every write, whatever stage 1
    /// did). A backend without dirty tracking refuses with `EOPNOTSUPP`, as the kernel does
    /// for an HWPT allocated without it.
    fn set_dirty_tracking(&self, hwpt: HwptId, enable: bool) -> Result<(), BackendError> {
        let _ = enable;
        Err(BackendError::with_errno(
            BackendOp::SetDirtyTracking,
            EOPNOTSUPP,
            format!("{hwpt}: the {} backend has no dirty tracking", self.name()),
        ))
    }

    /// `IOMMU_HWPT_GET_DIRTY_BITMAP`: for each `page_size` page of `[iova, iova + length)`
    /// written since the last call, sets bit `(addr - iova) / page_size` of `bitmap` (bit `n`
    /// is bit `n % 64` of word `n / 64`), and clears the record in the IOMMU. `iova` and
    /// `length` are multiples of `page_size`, a power of two of at least 4 KiB; `bitmap` holds
    /// at least `length / page_size` bits. The addresses are the parent's input addresses:
    /// guest-physical.
    fn read_and_clear_dirty(
        &self,
        hwpt: HwptId,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u64],
    ) -> Result<(), BackendError> {
        let _ = (iova, length, page_size, bitmap);
        Err(BackendError::with_errno(
            BackendOp::GetDirtyBitmap,
            EOPNOTSUPP,
            format!("{hwpt}: the {} backend has no dirty tracking", self.name()),
        ))
    }

    /// What the host kernel supports (PASID attach, page requests, fault reporting).
    fn caps(&self) -> BackendCaps {
        BackendCaps::default()
    }

    /// Up to `max` page requests read from the fault queue (non-blocking). Requests come whole
    /// groups at a time, as the kernel delivers them.
    fn read_page_requests(&self, _max: usize) -> Result<Vec<HostPageRequest>, BackendError> {
        Ok(Vec::new())
    }

    /// Answers the page request group identified by `cookie` (the fault queue's response
    /// write, `struct iommu_hwpt_page_response`).
    fn respond_page_request(
        &self,
        cookie: u32,
        _code: PageResponseCode,
    ) -> Result<(), BackendError> {
        Err(BackendError::new(
            BackendOp::PageResponse,
            format!("no fault queue to answer cookie {cookie}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_ranges() {
        let e = VtdS1Invalidation::for_range(0x5000, 0x5fff, true);
        assert_eq!((e.addr, e.npages, e.leaf), (0x5000, 1, true));
        assert!(e.covers(0x5abc) && !e.covers(0x6000) && !e.covers(0x4fff));
        let e = VtdS1Invalidation::for_range(0x20_0000, 0x3f_ffff, false);
        assert_eq!(e.npages, 512);
        assert!(e.overlaps(0x3f_f000, 0x1000) && !e.overlaps(0x40_0000, 0x1000));
        assert!(VtdS1Invalidation::for_range(0, u64::MAX, false).is_all());
        assert!(VtdS1Invalidation::ALL.covers(u64::MAX));
        // The highest page: no overflow.
        let top = VtdS1Invalidation::for_range(!0xfff, u64::MAX, false);
        assert_eq!(top.npages, 1);
        assert!(top.covers(u64::MAX));
    }

    #[test]
    fn errors_say_what_failed() {
        let e = BackendError::new(BackendOp::AllocHwpt, "parent is not a nest parent");
        assert_eq!(
            e.to_string(),
            "IOMMU_HWPT_ALLOC failed: parent is not a nest parent"
        );
        let io = std::io::Error::from_raw_os_error(25);
        let e = BackendError::os(BackendOp::Invalidate, &io, "hwpt 7").with_handled(3);
        assert!(e.to_string().contains("errno 25"), "{e}");
        assert_eq!(e.handled, Some(3));
    }
}
