//! A software host IOMMU with VT-d nested semantics: what tests and the demo bind guests to.
//!
//! It models the iommufd objects [`HostIommuBackend`] talks about (devices, IOASes, parent and
//! nested HWPTs, attachments per PASID) and the hardware behind them:
//!
//! - **Stage 2** is an IOAS: GPA ranges mapped to host-physical ranges ([`SimHostIommu::ioas_map`],
//!   what VFIO's memory listener does), over a [`HostMemory`] that stands for host physical
//!   memory.
//! - **Stage 1** is the guest's first-stage table, walked with
//!   [`vtd_tables::walk::walk_first_stage`] against the *host's* CAP/ECAP, where every read of a
//!   table entry (and every A/D update) goes through stage 2, like real nesting.
//! - **The IOTLB caches aggressively**: every successful translation stays cached, tagged by
//!   HWPT, until an `IOMMU_HWPT_INVALIDATE` covering it, a stage-2 unmap, or the HWPT's
//!   destruction. A guest that unmaps without invalidating keeps seeing the old page: which is
//!   what makes forwarding guest invalidations observable.
//! - The kernel's checks, where the kernel makes them: NEST_PARENT needs ECAP.NEST; nested
//!   allocation needs a nest parent (Linux `drivers/iommu/intel/nested.c`,
//!   `intel_nested_domain_alloc()`), while the VTD_S1 contents (`addr_width` 48, or 57 with
//!   FL5LP; SRE needs ECAP.SRS; EAFE needs ECAP.EAFS) are checked only at attach
//!   (`drivers/iommu/intel/pasid.c`, `intel_pasid_setup_nested()`), *after* the driver blocked
//!   the device (`intel_nested_attach_dev()` calls `device_block_translation()` first): a
//!   failed attach leaves the device blocked, not on its previous HWPT. PASID attach needs
//!   PASID-capable HWPTs for the PASID *and* for the requests without PASID
//!   (`drivers/iommu/iommufd/device.c`, `iommufd_hwpt_pasid_compat()`); an HWPT with a fault
//!   queue attaches only to a device with PRI (`ENODEV`, `drivers/iommu/intel/iommu.c`,
//!   `intel_iommu_enable_iopf()`); an attached HWPT or a parent with children cannot be
//!   destroyed; with ERRATA_772415_SPR17 a nest parent holds no read-only mapping, neither at
//!   HWPT allocation nor at `IOMMU_IOAS_MAP`.
//! - **The host kernel's version** ([`SimKernel`]): a 6.12-like kernel rejects
//!   `IOMMU_HWPT_ALLOC_PASID` (`EOPNOTSUPP`) and VFIO's PASID attach (`EINVAL`); a 6.18-like
//!   one (the default) accepts them. [`HostIommuBackend::caps`] says which.
//! - **Faults as Intel hosts report them**: a non-recoverable DMA fault (blocked device, a
//!   stage-1 or stage-2 miss of a device without PRI, or of an HWPT without a fault queue)
//!   goes to the host kernel log only ([`SimStats::host_log_faults`]); user space sees it only
//!   when a test declares [`BackendCaps::unrecoverable_faults`]
//!   ([`SimHostIommu::report_unrecoverable_faults`]), which no real VT-d backend does.
//! - **PRI**: a device with ATS and PRI ([`SimHostIommu::add_pri_device`]) attached to a nested
//!   HWPT with a fault queue turns a stage-1 miss into a page request group
//!   ([`HostIommuBackend::read_page_requests`], whole groups only, as
//!   `drivers/iommu/iommufd/fault.c` `iommufd_fault_fops_read()` delivers them), waits for the
//!   response ([`HostIommuBackend::respond_page_request`]; an unknown cookie is `EINVAL`, as in
//!   `iommufd_fault_fops_write()`), and retries its DMA after a success
//!   ([`SimHostIommu::pri_dma_read`]).
//! - **Failure injection** for every backend call ([`SimHostIommu::fail_next`],
//!   [`SimHostIommu::fail_always`], [`SimHostIommu::fail_invalidate_partially`]): an injected
//!   failure looks exactly like the kernel's (op, `EIO`, `entry_num`); only the simulator knows
//!   it injected it ([`SimStats::injected_failures`]).
//! - A bounded **fault queue** of host faults ([`HostFault`], only with
//!   [`BackendCaps::unrecoverable_faults`]) that [`HostIommuBackend::read_faults`] drains. Replacing or detaching a nested HWPT answers the
//!   faults still queued for it, as the kernel does (Linux
//!   `drivers/iommu/iommufd/fault.c`, `iommufd_auto_response_faults`): nothing a device
//!   leaves behind outlives its HWPT ([`SimHostIommu::device_objects`] shows what is left).
//!
//! A device's DMA is [`SimHostIommu::dma_translate`] (or `dma_read` / `dma_write`): it never
//! touches the emulated unit.
//!
//! Host memory and the stage-2 view live in `memory`, the failure-injection knobs in `inject`;
//! their types are re-exported here.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::MutexGuard;
use vtd_core::sync::Mutex;

use vtd_regs::fault::FaultReason;
use vtd_tables::GuestRam;
use vtd_tables::entries::PasidEntry;
use vtd_tables::walk::{AccessKind, WalkConfig, walk_first_stage};

use crate::backend::{
    BackendCaps, BackendError, BackendOp, DeviceId, HostFault, HostIommuBackend, HostPageRequest,
    HwptAlloc, HwptId, IoasId, PageResponseCode, Pasid, VtdS1, VtdS1Flags, VtdS1Invalidation,
};
use crate::faults::{FaultClass, classify};
use crate::host::{HostHwInfo, ViommuFlags};

mod inject;
mod memory;

use inject::FailurePlan;
pub use inject::SimOp;
pub use memory::{HostMemory, HostRegion};
use memory::{S2Map, Stage2View};

const PAGE: u64 = 4096;
const SIZES: [u64; 3] = [1 << 30, 1 << 21, 1 << 12];
/// Fault-queue depth; later faults are counted as overflow and dropped.
const FAULT_QUEUE_DEPTH: usize = 512;
/// IOTLB capacity; beyond it the whole IOTLB is dropped (counted as evictions).
const IOTLB_CAPACITY: usize = 1 << 20;
/// Invalidation calls remembered for inspection.
const INVALIDATION_LOG: usize = 4096;

/// The errnos the kernel returns for what the simulator refuses (Linux
/// `include/uapi/asm-generic/errno-base.h`, `errno.h`).
const EIO: i32 = 5;
const ENOENT: i32 = 2;
const EBUSY: i32 = 16;
const EINVAL: i32 = 22;
const EOPNOTSUPP: i32 = 95;
const ENODEV: i32 = 19;
/// Page request groups queued and not yet read; later requests overflow (counted, dropped;
/// the device's request is answered "invalid").
const PAGE_REQUEST_DEPTH: usize = 512;
/// Page request groups read and not yet answered.
const AWAITING_RESPONSE: usize = 4096;

/// Which host kernel the simulator behaves like, where kernels differ for nesting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SimKernel {
    /// Linux 6.12: no `IOMMU_HWPT_ALLOC_PASID` (`EOPNOTSUPP`, `drivers/iommu/iommufd/
    /// hw_pagetable.c` `iommufd_hwpt_alloc()`), no `VFIO_DEVICE_ATTACH_PASID` (`EINVAL`,
    /// `drivers/vfio/device_cdev.c` `vfio_df_ioctl_attach_pt()` refuses any flag).
    Linux6_12,
    /// Linux 6.18 and later: PASID allocation and attach accepted.
    #[default]
    Linux6_18,
}

/// A page request group the simulated host holds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SimPageGroup {
    dev: DeviceId,
    pasid: Option<Pasid>,
    hwpt: HwptId,
    requests: Vec<HostPageRequest>,
}

/// A page response the simulated device received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimPageResponse {
    /// The device.
    pub dev: DeviceId,
    /// The group's PASID.
    pub pasid: Option<Pasid>,
    /// The group index.
    pub prg_index: u16,
    /// The code.
    pub code: PageResponseCode,
    /// Answered by the kernel itself (the HWPT was replaced or detached), not by user space.
    pub auto: bool,
}

/// What a PRI-capable device's DMA came to ([`SimHostIommu::pri_dma_read`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriDma {
    /// Translated and done.
    Done(HostTranslation),
    /// A page request is outstanding: the device waits for its response.
    Waiting {
        /// The group index the device used.
        prg_index: u16,
    },
    /// The response was "invalid" (or the request could not be queued): the DMA failed.
    Failed,
    /// A non-recoverable fault.
    Fault(HostFault),
}

/// What an HWPT is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimHwptKind {
    /// Kernel-managed GPA->HPA over an IOAS.
    Parent {
        /// The IOAS.
        ioas: IoasId,
        /// Allocated with NEST_PARENT.
        nest_parent: bool,
        /// Allocated with DIRTY_TRACKING.
        dirty_tracking: bool,
    },
    /// A guest first stage nested over `parent`.
    Nested {
        /// The parent HWPT.
        parent: HwptId,
        /// The guest table.
        s1: VtdS1,
    },
}

/// An HWPT the simulator holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SimHwpt {
    /// Its ID.
    pub id: HwptId,
    /// The device it was allocated for.
    pub dev: DeviceId,
    /// Parent or nested.
    pub kind: SimHwptKind,
    /// Allocated with `IOMMU_HWPT_ALLOC_PASID`.
    pub pasid_capable: bool,
    /// Allocated with `IOMMU_HWPT_FAULT_ID_VALID` (nested only).
    pub fault: bool,
}

/// A DMA translation the simulated host IOMMU produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostTranslation {
    /// Host-physical address of the requested byte.
    pub hpa: u64,
    /// Size of the page (min of the stage-1 and stage-2 pages).
    pub page_size: u64,
    /// Writes allowed through this translation.
    pub writable: bool,
    /// The HWPT that translated it.
    pub hwpt: HwptId,
    /// Served from the IOTLB (possibly stale: that is the point).
    pub cached: bool,
}

/// Counters of the simulator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Calls per op (including failed ones).
    pub calls: BTreeMap<SimOp, u64>,
    /// Failures injected (each counted once, partial invalidations included).
    pub injected_failures: u64,
    /// DMA translations served from the IOTLB.
    pub iotlb_hits: u64,
    /// DMA translations that walked.
    pub iotlb_misses: u64,
    /// IOTLB entries dropped by invalidations, unmaps and destroys.
    pub iotlb_invalidated: u64,
    /// Faults raised (queued or overflowed).
    pub faults_raised: u64,
    /// Faults dropped because the queue was full.
    pub fault_overflows: u64,
    /// Invalidation entries handled.
    pub invalidation_entries: u64,
    /// Queued faults answered because their HWPT was replaced or detached.
    pub faults_auto_responded: u64,
    /// Non-recoverable faults that went to the host kernel log only (not to user space).
    pub host_log_faults: u64,
    /// Page request groups raised.
    pub page_requests: u64,
    /// Page requests dropped because the queue was full.
    pub page_request_overflows: u64,
}

/// Everything the simulated host still holds for one device: what a VMM checks after
/// unplugging it (only its default HWPT should remain attached).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimDeviceObjects {
    /// Nested HWPTs allocated for the device that still exist.
    pub nested_hwpts: Vec<HwptId>,
    /// Its attachments: PASID (`None`: requests without PASID) -> HWPT.
    pub attachments: BTreeMap<Option<Pasid>, HwptId>,
    /// Faults from the device still queued on nested HWPTs.
    pub queued_faults: usize,
}

impl SimStats {
    /// Calls of `op` so far.
    pub fn calls(&self, op: SimOp) -> u64 {
        self.calls.get(&op).copied().unwrap_or(0)
    }
}

#[derive(Clone, Copy, Debug)]
struct IotlbEntry {
    size: u64,
    hpa_base: u64,
    /// The guest-physical page it maps (stage-2 input), for dirty tracking.
    gpa_base: u64,
    writable: bool,
}

#[derive(Default)]
struct SimState {
    next_id: u32,
    /// Attachments: device -> PASID -> HWPT.
    devices: BTreeMap<DeviceId, BTreeMap<Option<Pasid>, HwptId>>,
    ioas: BTreeMap<IoasId, BTreeMap<u64, S2Map>>,
    hwpts: BTreeMap<HwptId, SimHwpt>,
    /// (HWPT, input page base) -> entry.
    iotlb: BTreeMap<(HwptId, u64), IotlbEntry>,
    faults: VecDeque<HostFault>,
    caps: BackendCaps,
    pri_devices: BTreeSet<DeviceId>,
    page_groups: VecDeque<SimPageGroup>,
    awaiting: BTreeMap<u32, SimPageGroup>,
    next_cookie: u32,
    next_prg: BTreeMap<DeviceId, u16>,
    /// Groups the device waits on: (device, PASID, page) -> group index.
    waiting: BTreeMap<(DeviceId, Option<Pasid>, u64), u16>,
    /// Answers the device received, oldest first (bounded).
    responses: VecDeque<SimPageResponse>,
    /// The last answer per page the device asked for, until its retry (bounded).
    answers: BTreeMap<(DeviceId, Option<Pasid>, u64), PageResponseCode>,
    plan: FailurePlan,
    stats: SimStats,
    inv_log: VecDeque<(HwptId, Vec<VtdS1Invalidation>)>,
    /// Parents with dirty tracking on -> guest-physical pages written since the last read
    /// (the second stage's dirty bits).
    dirty: BTreeMap<HwptId, BTreeSet<u64>>,
}

impl SimState {
    fn new_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    fn drop_iotlb(&mut self, mut doomed: impl FnMut(&(HwptId, u64), &IotlbEntry) -> bool) {
        let before = self.iotlb.len();
        self.iotlb.retain(|k, e| !doomed(k, e));
        self.stats.iotlb_invalidated += (before - self.iotlb.len()) as u64;
    }

    /// The kernel answers the faults and page requests still pending for an HWPT a device
    /// (PASID) leaves (Linux `drivers/iommu/iommufd/fault.c`, `iommufd_auto_response_faults()`:
    /// `IOMMU_PAGE_RESP_INVALID`).
    fn auto_respond(&mut self, dev: DeviceId, pasid: Option<Pasid>, left: HwptId) {
        let leaving = |g: &SimPageGroup| g.dev == dev && g.pasid == pasid && g.hwpt == left;
        let mut answered: Vec<SimPageGroup> = Vec::new();
        let mut kept = VecDeque::new();
        for g in self.page_groups.drain(..) {
            if leaving(&g) {
                answered.push(g);
            } else {
                kept.push_back(g);
            }
        }
        self.page_groups = kept;
        let cookies: Vec<u32> = self
            .awaiting
            .iter()
            .filter(|(_, g)| leaving(g))
            .map(|(&c, _)| c)
            .collect();
        for c in cookies {
            answered.extend(self.awaiting.remove(&c));
        }
        for g in answered {
            self.device_answered(&g, PageResponseCode::Invalid, true);
        }
        if !matches!(
            self.hwpts.get(&left).map(|h| h.kind),
            Some(SimHwptKind::Nested { .. })
        ) {
            return;
        }
        let before = self.faults.len();
        self.faults
            .retain(|f| !(f.dev_id == dev && f.pasid == pasid && f.hwpt == Some(left)));
        self.stats.faults_auto_responded += (before - self.faults.len()) as u64;
    }

    /// Checks that `hwpt` can do dirty tracking: the kernel refuses HWPTs allocated without
    /// IOMMU_HWPT_ALLOC_DIRTY_TRACKING (and nested ones, which have no dirty ops of their own)
    /// with `EOPNOTSUPP`, and unknown ones with `ENOENT`.
    fn dirty_tracking_parent(&self, op: BackendOp, hwpt: HwptId) -> Result<(), BackendError> {
        match self.hwpts.get(&hwpt).map(|h| h.kind) {
            None => Err(err(op, ENOENT, format!("no {hwpt}"))),
            Some(SimHwptKind::Parent {
                dirty_tracking: true,
                ..
            }) => Ok(()),
            Some(_) => Err(err(
                op,
                EOPNOTSUPP,
                format!("{hwpt} was not allocated with dirty tracking"),
            )),
        }
    }

    /// A DMA write through `hwpt` reached guest-physical `gpa`: the parent's second stage
    /// records the page when its dirty tracking is on (VT-d second-stage D bit, spec 9.8).
    fn mark_dirty(&mut self, hwpt: HwptId, gpa: u64) {
        let parent = match self.hwpts.get(&hwpt).map(|h| h.kind) {
            Some(SimHwptKind::Nested { parent, .. }) => parent,
            _ => hwpt,
        };
        if let Some(pages) = self.dirty.get_mut(&parent) {
            pages.insert(gpa & !(PAGE - 1));
        }
    }

    /// A page request group answered: the device stops waiting on its pages.
    fn device_answered(&mut self, g: &SimPageGroup, code: PageResponseCode, auto: bool) {
        let prg_index = g.requests.first().map_or(0, |r| r.prg_index);
        for r in &g.requests {
            self.waiting.remove(&(g.dev, g.pasid, r.addr));
            if self.answers.len() < AWAITING_RESPONSE {
                self.answers.insert((g.dev, g.pasid, r.addr), code);
            }
        }
        if self.responses.len() >= AWAITING_RESPONSE {
            self.responses.pop_front();
        }
        self.responses.push_back(SimPageResponse {
            dev: g.dev,
            pasid: g.pasid,
            prg_index,
            code,
            auto,
        });
    }

    /// A non-recoverable fault: user space sees it only if the backend declares
    /// [`BackendCaps::unrecoverable_faults`]; on Intel hosts it is a line in the host kernel
    /// log (Linux `drivers/iommu/intel/dmar.c`, `dmar_fault()` / `dmar_fault_do_one()`).
    fn raise(&mut self, fault: HostFault) {
        if !self.caps.unrecoverable_faults {
            self.stats.host_log_faults += 1;
            return;
        }
        self.stats.faults_raised += 1;
        if self.faults.len() >= FAULT_QUEUE_DEPTH {
            self.stats.fault_overflows += 1;
        } else {
            self.faults.push_back(fault);
        }
    }
}

/// The software host IOMMU. See the module documentation.
pub struct SimHostIommu<M> {
    info: HostHwInfo,
    mem: HostMemory<M>,
    state: Mutex<SimState>,
}

impl<M> std::fmt::Debug for SimHostIommu<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHostIommu")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn err(op: BackendOp, errno: i32, message: impl Into<String>) -> BackendError {
    BackendError::with_errno(op, errno, message)
}

impl<M: GuestRam + Send + Sync> SimHostIommu<M> {
    /// A host IOMMU that reports `info` for every device, over host memory `mem`, behind a
    /// 6.18-like kernel with a fault queue for page requests.
    pub fn new(info: HostHwInfo, mem: HostMemory<M>) -> Self {
        let state = SimState {
            caps: BackendCaps {
                pasid_attach: true,
                page_requests: true,
                unrecoverable_faults: false,
            },
            ..SimState::default()
        };
        Self {
            info,
            mem,
            state: Mutex::new(state),
        }
    }

    /// The same host behind kernel `kernel`.
    #[must_use]
    pub fn with_kernel(self, kernel: SimKernel) -> Self {
        self.set_kernel(kernel);
        self
    }

    /// Makes the host behave like kernel `kernel` from now on.
    pub fn set_kernel(&self, kernel: SimKernel) {
        self.lock().caps.pasid_attach = kernel == SimKernel::Linux6_18;
    }

    /// Whether non-recoverable DMA faults are reported to user space
    /// ([`BackendCaps::unrecoverable_faults`]). Off by default, as on every Intel host: only
    /// tests of fault injection into the guest turn it on.
    pub fn report_unrecoverable_faults(&self, on: bool) {
        self.lock().caps.unrecoverable_faults = on;
    }

    /// Binds a new device with ATS and PRI (`VFIO_DEVICE_BIND_IOMMUFD`).
    pub fn add_pri_device(&self) -> DeviceId {
        let dev = self.add_device();
        self.lock().pri_devices.insert(dev);
        dev
    }

    /// Gives `dev` ATS and PRI, or takes them away.
    pub fn set_device_pri(&self, dev: DeviceId, pri: bool) {
        let mut st = self.lock();
        if pri {
            st.pri_devices.insert(dev);
        } else {
            st.pri_devices.remove(&dev);
        }
    }

    /// The page responses devices received, oldest first.
    pub fn page_responses(&self) -> Vec<SimPageResponse> {
        self.lock().responses.iter().copied().collect()
    }

    /// Page request groups queued for reading plus those read and not answered.
    pub fn pending_page_groups(&self) -> (usize, usize) {
        let st = self.lock();
        (st.page_groups.len(), st.awaiting.len())
    }

    /// Queues a page request group of `pages` (4 KiB aligned addresses) from `dev` at `pasid`
    /// on its attached HWPT, as a PRI device raising several requests of one group would.
    /// Returns the group index, or `None` when the device has no PRI, is not on an HWPT with a
    /// fault queue, or the queue is full.
    pub fn raise_page_group(
        &self,
        dev: DeviceId,
        pasid: Option<Pasid>,
        pages: &[u64],
        write: bool,
    ) -> Option<u16> {
        let mut st = self.lock();
        let hwpt = st.devices.get(&dev).and_then(|a| a.get(&pasid)).copied()?;
        Self::page_request(&mut st, dev, pasid, hwpt, pages, write, false)
    }

    /// Raises a page request group if the device and HWPT can (PRI, fault queue).
    fn page_request(
        st: &mut SimState,
        dev: DeviceId,
        pasid: Option<Pasid>,
        hwpt: HwptId,
        pages: &[u64],
        write: bool,
        privileged: bool,
    ) -> Option<u16> {
        let fault_hwpt = st.hwpts.get(&hwpt).is_some_and(|h| h.fault);
        if !fault_hwpt || !st.pri_devices.contains(&dev) || pages.is_empty() {
            return None;
        }
        if st.page_groups.len() + st.awaiting.len() >= PAGE_REQUEST_DEPTH {
            st.stats.page_request_overflows += 1;
            return None;
        }
        let next = st.next_prg.entry(dev).or_default();
        let prg_index = *next;
        *next = (*next + 1) & 0x1ff;
        let requests = pages
            .iter()
            .enumerate()
            .map(|(i, &addr)| HostPageRequest {
                dev_id: dev,
                pasid,
                addr: addr & !(PAGE - 1),
                prg_index,
                last_in_group: i + 1 == pages.len(),
                read: !write,
                write,
                execute: false,
                privileged,
                cookie: 0,
            })
            .collect();
        for &addr in pages {
            st.waiting
                .insert((dev, pasid, addr & !(PAGE - 1)), prg_index);
        }
        st.stats.page_requests += 1;
        st.page_groups.push_back(SimPageGroup {
            dev,
            pasid,
            hwpt,
            requests,
        });
        Some(prg_index)
    }

    /// A DMA read by a PRI-capable device: translate; on a stage-1 miss on an HWPT with a
    /// fault queue raise a page request and wait; once the response came, retry (PCIe PRI:
    /// the device retries the translation after a "success" response). Call again to
    /// retry.
    pub fn pri_dma_read(
        &self,
        dev: DeviceId,
        pasid: Option<Pasid>,
        iova: u64,
        buf: &mut [u8],
    ) -> PriDma {
        let page = iova & !(PAGE - 1);
        {
            let mut st = self.lock();
            if let Some(&prg_index) = st.waiting.get(&(dev, pasid, page)) {
                return PriDma::Waiting { prg_index };
            }
            // A device answered "invalid" for this page gives up (PCIe PRI: Invalid Request
            // ends the request with an error).
            if st.answers.remove(&(dev, pasid, page)) == Some(PageResponseCode::Invalid) {
                return PriDma::Failed;
            }
        }
        match self.dma_read(dev, pasid, iova, buf) {
            Ok(t) => PriDma::Done(t),
            Err(f) => match self.lock().waiting.get(&(dev, pasid, page)) {
                Some(&prg_index) => PriDma::Waiting { prg_index },
                None => PriDma::Fault(f),
            },
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock()
    }

    /// What the host reports about itself.
    pub fn info(&self) -> &HostHwInfo {
        &self.info
    }

    /// Host physical memory.
    pub fn memory(&self) -> &HostMemory<M> {
        &self.mem
    }

    /// Binds a new device (`VFIO_DEVICE_BIND_IOMMUFD`): its DMA is blocked until attached.
    pub fn add_device(&self) -> DeviceId {
        let mut st = self.lock();
        let id = DeviceId(st.new_id());
        st.devices.insert(id, BTreeMap::new());
        id
    }

    /// Allocates an empty IOAS (`IOMMU_IOAS_ALLOC`).
    pub fn alloc_ioas(&self) -> IoasId {
        let mut st = self.lock();
        let id = IoasId(st.new_id());
        st.ioas.insert(id, BTreeMap::new());
        id
    }

    /// Maps `[gpa, gpa + len)` to host-physical `hpa` in `ioas` (`IOMMU_IOAS_MAP`), read-only
    /// unless `writable`. Refused for unaligned or overlapping ranges, and for a read-only
    /// mapping under a nest parent when the host has ERRATA_772415_SPR17.
    pub fn ioas_map(
        &self,
        ioas: IoasId,
        gpa: u64,
        len: u64,
        hpa: u64,
        writable: bool,
    ) -> Result<(), BackendError> {
        let op = BackendOp::IoasMap;
        if len == 0 || (gpa | len | hpa) & (PAGE - 1) != 0 || gpa.checked_add(len).is_none() {
            return Err(err(op, EINVAL, "unaligned or empty range"));
        }
        let mut st = self.lock();
        let nest_parent = st.hwpts.values().any(
            |h| matches!(h.kind, SimHwptKind::Parent { ioas: i, nest_parent: true, .. } if i == ioas),
        );
        if !writable && nest_parent && self.info.quirks().nest_parent_no_readonly {
            return Err(err(
                op,
                EINVAL,
                "ERRATA_772415_SPR17: read-only mapping refused in a nest-parent IOAS",
            ));
        }
        let maps = st
            .ioas
            .get_mut(&ioas)
            .ok_or_else(|| err(op, ENOENT, format!("no {ioas}")))?;
        let overlaps = maps
            .range(..gpa.saturating_add(len))
            .next_back()
            .is_some_and(|(&s, m)| s + m.len > gpa);
        if overlaps {
            return Err(err(
                op,
                EINVAL,
                format!("{gpa:#x}+{len:#x} overlaps a mapping"),
            ));
        }
        maps.insert(gpa, S2Map { len, hpa, writable });
        Ok(())
    }

    /// Unmaps every mapping that starts inside `[gpa, gpa + len)` (`IOMMU_IOAS_UNMAP`); the
    /// host flushes the parent and every nested HWPT over it. Returns the bytes unmapped.
    pub fn ioas_unmap(&self, ioas: IoasId, gpa: u64, len: u64) -> u64 {
        let mut st = self.lock();
        let Some(maps) = st.ioas.get_mut(&ioas) else {
            return 0;
        };
        let doomed: Vec<u64> = maps
            .range(gpa..gpa.saturating_add(len))
            .map(|(&s, _)| s)
            .collect();
        let mut bytes = 0;
        for s in doomed {
            bytes += maps.remove(&s).map_or(0, |m| m.len);
        }
        st.drop_iotlb(|_, _| true);
        bytes
    }

    /// What a VMM's VFIO layer does for an assigned device: bind it, allocate its default HWPT
    /// over `ioas` with the vIOMMU's `flags` (NEST_PARENT, PASID), attach it. Returns the
    /// device and its default HWPT.
    pub fn vfio_bind_default(
        &self,
        ioas: IoasId,
        flags: ViommuFlags,
    ) -> Result<(DeviceId, HwptId), BackendError> {
        let dev = self.add_device();
        let parent = self.alloc_hwpt(
            dev,
            &HwptAlloc::Parent {
                ioas,
                nest_parent: flags.want_nesting_parent,
                pasid: flags.want_pasid_parent,
                // As a VMM's VFIO layer does: with dirty tracking wherever the host offers it.
                dirty_tracking: self.info.supports_dirty_tracking(),
            },
        )?;
        self.attach(dev, None, parent)?;
        Ok((dev, parent))
    }

    /// Queues a host fault as if the hardware had raised it.
    pub fn raise_fault(&self, fault: HostFault) {
        self.lock().raise(fault);
    }

    /// Every HWPT the host holds.
    pub fn hwpts(&self) -> Vec<SimHwpt> {
        self.lock().hwpts.values().copied().collect()
    }

    /// The attachments of `dev`: PASID (`None`: requests without PASID) -> HWPT (absent =
    /// blocked).
    pub fn attachments(&self, dev: DeviceId) -> BTreeMap<Option<Pasid>, HwptId> {
        self.lock().devices.get(&dev).cloned().unwrap_or_default()
    }

    /// What the host still holds for `dev` (see [`SimDeviceObjects`]).
    pub fn device_objects(&self, dev: DeviceId) -> SimDeviceObjects {
        let st = self.lock();
        let nested = |h: &SimHwpt| matches!(h.kind, SimHwptKind::Nested { .. });
        SimDeviceObjects {
            nested_hwpts: st
                .hwpts
                .values()
                .filter(|h| h.dev == dev && nested(h))
                .map(|h| h.id)
                .collect(),
            attachments: st.devices.get(&dev).cloned().unwrap_or_default(),
            queued_faults: st
                .faults
                .iter()
                .filter(|f| f.dev_id == dev)
                .filter(|f| f.hwpt.and_then(|h| st.hwpts.get(&h)).is_some_and(nested))
                .count(),
        }
    }

    /// Number of IOTLB entries.
    pub fn iotlb_len(&self) -> usize {
        self.lock().iotlb.len()
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        self.lock().stats.clone()
    }

    /// Takes the log of `IOMMU_HWPT_INVALIDATE` calls that succeeded or partly succeeded:
    /// (HWPT, entries as given).
    pub fn take_invalidation_log(&self) -> Vec<(HwptId, Vec<VtdS1Invalidation>)> {
        self.lock().inv_log.drain(..).collect()
    }

    /// Translates one DMA request of `dev` (the request's PASID or none) the way the host IOMMU
    /// would: IOTLB, else the attached HWPT's walk. A fault is queued for
    /// [`HostIommuBackend::read_faults`] and returned.
    pub fn dma_translate(
        &self,
        dev: DeviceId,
        pasid: Option<Pasid>,
        iova: u64,
        access: AccessKind,
    ) -> Result<HostTranslation, HostFault> {
        self.dma_translate_privileged(dev, pasid, iova, access, false)
    }

    /// As [`Self::dma_translate`], for a request that may be privileged (supervisor).
    pub fn dma_translate_privileged(
        &self,
        dev: DeviceId,
        pasid: Option<Pasid>,
        iova: u64,
        access: AccessKind,
        privileged: bool,
    ) -> Result<HostTranslation, HostFault> {
        let mut st = self.lock();
        let fault = |reason: FaultReason, hwpt: Option<HwptId>| HostFault {
            dev_id: dev,
            pasid,
            addr: iova & !(PAGE - 1),
            reason,
            access,
            privileged,
            hwpt,
        };
        let attached = st.devices.get(&dev).and_then(|a| a.get(&pasid)).copied();
        let Some(hwpt_id) = attached else {
            // Blocked: the host's PASID-table entry for the device is not present.
            let f = fault(FaultReason::PasidEntryNotPresent, None);
            st.raise(f);
            return Err(f);
        };
        let write = access.is_write();
        for size in SIZES {
            if let Some(e) = st.iotlb.get(&(hwpt_id, iova & !(size - 1))).copied() {
                if e.size == size && (!write || e.writable) {
                    let t = HostTranslation {
                        hpa: e.hpa_base | (iova & (size - 1)),
                        page_size: size,
                        writable: e.writable,
                        hwpt: hwpt_id,
                        cached: true,
                    };
                    st.stats.iotlb_hits += 1;
                    if write {
                        st.mark_dirty(hwpt_id, e.gpa_base | (iova & (size - 1)));
                    }
                    return Ok(t);
                }
            }
        }
        st.stats.iotlb_misses += 1;
        let (result, table_writes) = self.walk(&st, hwpt_id, iova, access, privileged);
        for gpa in table_writes {
            st.mark_dirty(hwpt_id, gpa);
        }
        match result {
            Ok((t, gpa)) => {
                if st.iotlb.len() >= IOTLB_CAPACITY {
                    st.drop_iotlb(|_, _| true);
                }
                st.iotlb.insert(
                    (hwpt_id, iova & !(t.page_size - 1)),
                    IotlbEntry {
                        size: t.page_size,
                        hpa_base: t.hpa & !(t.page_size - 1),
                        gpa_base: gpa & !(t.page_size - 1),
                        writable: t.writable,
                    },
                );
                if write {
                    st.mark_dirty(hwpt_id, gpa);
                }
                Ok(t)
            }
            Err(reason) => {
                let f = fault(reason, Some(hwpt_id));
                // A stage-1 miss of a PRI device on an HWPT with a fault queue is a page
                // request (recoverable); anything else is not.
                let recoverable = classify(reason) == FaultClass::FirstStage
                    && Self::page_request(
                        &mut st,
                        dev,
                        pasid,
                        hwpt_id,
                        &[iova & !(PAGE - 1)],
                        access.is_write(),
                        privileged,
                    )
                    .is_some();
                if !recoverable {
                    st.raise(f);
                }
                Err(f)
            }
        }
    }

    fn walk(
        &self,
        st: &SimState,
        hwpt_id: HwptId,
        iova: u64,
        access: AccessKind,
        privileged: bool,
    ) -> (Result<(HostTranslation, u64), FaultReason>, Vec<u64>) {
        let mut table_writes = Vec::new();
        let result = self.walk_recording(st, hwpt_id, iova, access, privileged, &mut table_writes);
        (result, table_writes)
    }

    /// The walk; the guest-physical addresses of the guest's table entries it updated (A/D)
    /// go to `table_writes`, faulting walks included.
    fn walk_recording(
        &self,
        st: &SimState,
        hwpt_id: HwptId,
        iova: u64,
        access: AccessKind,
        privileged: bool,
        table_writes: &mut Vec<u64>,
    ) -> Result<(HostTranslation, u64), FaultReason> {
        let ss_perm = FaultReason::SecondStagePermissionDenied;
        let hwpt = st.hwpts.get(&hwpt_id).ok_or(ss_perm)?;
        let (ioas, gpa, max_size, s1_write) = match hwpt.kind {
            SimHwptKind::Parent { ioas, .. } => (ioas, iova, 1u64 << 30, true),
            SimHwptKind::Nested { parent, s1 } => {
                let Some(SimHwptKind::Parent { ioas, .. }) = st.hwpts.get(&parent).map(|p| p.kind)
                else {
                    return Err(ss_perm);
                };
                let maps = st.ioas.get(&ioas).ok_or(ss_perm)?;
                let view = Stage2View {
                    maps,
                    mem: &self.mem,
                    written: Default::default(),
                };
                let pe = PasidEntry::first_stage(s1.pgtbl_addr, s1.addr_width == 57, 0, 2)
                    .with_sre(s1.flags.sre())
                    .with_wpe(s1.flags.wpe())
                    .with_eafe(s1.flags.eafe());
                let wc = WalkConfig::new(self.info.cap, self.info.ecap);
                let leaf = walk_first_stage(&view, &wc, &pe, iova, access, privileged);
                table_writes.extend(view.written.take());
                let leaf = leaf.map_err(|f| f.reason)?;
                let gpa = leaf.page_base | (iova & (leaf.page_size - 1));
                (ioas, gpa, leaf.page_size, leaf.perms.write)
            }
        };
        let maps = st.ioas.get(&ioas).ok_or(ss_perm)?;
        let view = Stage2View {
            maps,
            mem: &self.mem,
            written: Default::default(),
        };
        let (start, m, hpa) = view.lookup(gpa).ok_or(ss_perm)?;
        if access.is_write() && !m.writable {
            return Err(ss_perm);
        }
        let size = SIZES
            .into_iter()
            .find(|&s| {
                let base = gpa & !(s - 1);
                s <= max_size
                    && base >= start
                    && base + s <= start + m.len
                    && (m.hpa + (base - start)) % s == 0
            })
            .unwrap_or(PAGE);
        Ok((
            HostTranslation {
                hpa,
                page_size: size,
                writable: s1_write && m.writable,
                hwpt: hwpt_id,
                cached: false,
            },
            gpa,
        ))
    }

    /// A DMA read of `buf.len()` bytes at `iova` (within one 4 KiB page) into `buf`.
    pub fn dma_read(
        &self,
        dev: DeviceId,
        pasid: Option<Pasid>,
        iova: u64,
        buf: &mut [u8],
    ) -> Result<HostTranslation, HostFault> {
        let t = self.dma_translate(dev, pasid, iova, AccessKind::Read)?;
        self.mem
            .read(t.hpa, buf)
            .map_err(|_| self.bus_error(dev, pasid, iova, AccessKind::Read))?;
        Ok(t)
    }

    /// A DMA write of `data` at `iova` (within one 4 KiB page).
    pub fn dma_write(
        &self,
        dev: DeviceId,
        pasid: Option<Pasid>,
        iova: u64,
        data: &[u8],
    ) -> Result<HostTranslation, HostFault> {
        let t = self.dma_translate(dev, pasid, iova, AccessKind::Write)?;
        self.mem
            .write(t.hpa, data)
            .map_err(|_| self.bus_error(dev, pasid, iova, AccessKind::Write))?;
        Ok(t)
    }

    fn bus_error(
        &self,
        dev: DeviceId,
        pasid: Option<Pasid>,
        iova: u64,
        access: AccessKind,
    ) -> HostFault {
        HostFault {
            dev_id: dev,
            pasid,
            addr: iova & !(PAGE - 1),
            reason: FaultReason::SecondStageAddressBeyondMax,
            access,
            privileged: false,
            hwpt: None,
        }
    }
}

impl<M: GuestRam + Send + Sync> SimHostIommu<M> {
    /// What the Intel driver refuses when it attaches `dev` to `h` (after blocking it).
    fn driver_refuses(&self, st: &SimState, dev: DeviceId, h: &SimHwpt) -> Option<BackendError> {
        let op = BackendOp::Attach;
        let info = &self.info;
        // Linux `drivers/iommu/intel/iommu.h` `iopf_for_domain_set()` ->
        // `drivers/iommu/intel/iommu.c` `intel_iommu_enable_iopf()`: no ATS/PRI is ENODEV.
        if h.fault && !st.pri_devices.contains(&dev) {
            return Some(err(
                op,
                ENODEV,
                format!("{} has a fault queue and {dev} has no ATS/PRI", h.id),
            ));
        }
        let SimHwptKind::Nested { s1, .. } = h.kind else {
            return None;
        };
        // Linux `drivers/iommu/intel/pasid.c`, `intel_pasid_setup_nested()`.
        let known = VtdS1Flags::SRE | VtdS1Flags::EAFE | VtdS1Flags::WPE;
        let why = if s1.flags.0 & !known != 0 {
            "unknown VTD_S1 flags".to_string()
        } else if !(s1.addr_width == 48 || (s1.addr_width == 57 && info.cap.fl5lp())) {
            format!(
                "VTD_S1 addr_width {} unsupported by the host",
                s1.addr_width
            )
        } else if s1.flags.sre() && !info.ecap.srs() {
            "VTD_S1 SRE needs host ECAP.SRS".to_string()
        } else if s1.flags.eafe() && !info.ecap.eafs() {
            "VTD_S1 EAFE needs host ECAP.EAFS".to_string()
        } else if s1.pgtbl_addr & (PAGE - 1) != 0 {
            "VTD_S1 pgtbl_addr not 4 KiB aligned".to_string()
        } else {
            return None;
        };
        Some(err(op, EINVAL, why))
    }

    /// The device's `pasid` loses its attachment (the driver blocked it).
    fn block(st: &mut SimState, dev: DeviceId, pasid: Option<Pasid>) {
        if let Some(old) = st.devices.get_mut(&dev).and_then(|a| a.remove(&pasid)) {
            st.auto_respond(dev, pasid, old);
        }
    }
}

impl<M: GuestRam + Send + Sync> HostIommuBackend for SimHostIommu<M> {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn get_hw_info(&self, dev: DeviceId) -> Result<HostHwInfo, BackendError> {
        let mut st = self.lock();
        self.enter(&mut st, SimOp::GetHwInfo)?;
        if !st.devices.contains_key(&dev) {
            return Err(err(BackendOp::GetHwInfo, ENOENT, format!("no {dev}")));
        }
        Ok(self.info)
    }

    fn alloc_hwpt(&self, dev: DeviceId, req: &HwptAlloc) -> Result<HwptId, BackendError> {
        let op = BackendOp::AllocHwpt;
        let mut st = self.lock();
        self.enter(&mut st, SimOp::AllocHwpt)?;
        if !st.devices.contains_key(&dev) {
            return Err(err(op, ENOENT, format!("no {dev}")));
        }
        let info = &self.info;
        let pasid_req = match req {
            HwptAlloc::Parent { pasid, .. } | HwptAlloc::Nested { pasid, .. } => *pasid,
        };
        let fault = matches!(req, HwptAlloc::Nested { fault: true, .. });
        if pasid_req && !st.caps.pasid_attach {
            // Linux 6.12 `drivers/iommu/iommufd/hw_pagetable.c`, `iommufd_hwpt_alloc()`:
            // an unknown flag is EOPNOTSUPP.
            return Err(err(
                op,
                EOPNOTSUPP,
                "IOMMU_HWPT_ALLOC_PASID: unknown to this host kernel (before Linux 6.18)",
            ));
        }
        if fault && !st.caps.page_requests {
            return Err(err(
                op,
                EOPNOTSUPP,
                "IOMMU_HWPT_FAULT_ID_VALID: no fault queue",
            ));
        }
        if pasid_req && !info.supports_pasid() {
            return Err(err(
                op,
                EOPNOTSUPP,
                "IOMMU_HWPT_ALLOC_PASID: host has no PASID support",
            ));
        }
        let kind = match *req {
            HwptAlloc::Parent {
                ioas,
                nest_parent,
                dirty_tracking,
                ..
            } => {
                let maps = st
                    .ioas
                    .get(&ioas)
                    .ok_or_else(|| err(op, ENOENT, format!("no {ioas}")))?;
                if nest_parent && !info.ecap.nest() {
                    return Err(err(op, EOPNOTSUPP, "NEST_PARENT: host has no ECAP.NEST"));
                }
                if nest_parent
                    && info.quirks().nest_parent_no_readonly
                    && maps.values().any(|m| !m.writable)
                {
                    return Err(err(
                        op,
                        EINVAL,
                        "ERRATA_772415_SPR17: the IOAS holds read-only mappings",
                    ));
                }
                if dirty_tracking && !info.supports_dirty_tracking() {
                    return Err(err(
                        op,
                        EOPNOTSUPP,
                        "DIRTY_TRACKING: host has no IOMMU_HW_CAP_DIRTY_TRACKING",
                    ));
                }
                SimHwptKind::Parent {
                    ioas,
                    nest_parent,
                    dirty_tracking,
                }
            }
            HwptAlloc::Nested { parent, s1, .. } => {
                // Linux `drivers/iommu/intel/nested.c`, `intel_nested_domain_alloc()`: only
                // the parent is checked here; the table's contents wait for attach.
                match st.hwpts.get(&parent).map(|p| p.kind) {
                    Some(SimHwptKind::Parent {
                        nest_parent: true, ..
                    }) => {}
                    _ => return Err(err(op, EINVAL, format!("{parent} is not a nest parent"))),
                }
                SimHwptKind::Nested { parent, s1 }
            }
        };
        let id = HwptId(st.new_id());
        st.hwpts.insert(
            id,
            SimHwpt {
                id,
                dev,
                kind,
                pasid_capable: pasid_req,
                fault,
            },
        );
        Ok(id)
    }

    fn attach(
        &self,
        dev: DeviceId,
        pasid: Option<Pasid>,
        hwpt: HwptId,
    ) -> Result<(), BackendError> {
        let op = BackendOp::Attach;
        let mut st = self.lock();
        if let Err(e) = self.enter(&mut st, SimOp::Attach) {
            // An injected failure stands for one the driver reports: the device is blocked.
            Self::block(&mut st, dev, pasid);
            return Err(e);
        }
        // Checks iommufd core and VFIO make before the driver runs: nothing changes.
        let h = *st
            .hwpts
            .get(&hwpt)
            .ok_or_else(|| err(op, ENOENT, format!("no {hwpt}")))?;
        let at = st
            .devices
            .get(&dev)
            .ok_or_else(|| err(op, ENOENT, format!("no {dev}")))?;
        if let Some(p) = pasid {
            if !st.caps.pasid_attach {
                // Linux 6.12 `drivers/vfio/device_cdev.c`, `vfio_df_ioctl_attach_pt()`:
                // `VFIO_DEVICE_ATTACH_PASID` is an unknown flag there.
                return Err(err(
                    op,
                    EINVAL,
                    format!("{p}: VFIO PASID attach unknown to this host kernel (before 6.18)"),
                ));
            }
            let limit = 1u64 << self.info.max_pasid_log2.min(20);
            if !self.info.supports_pasid() || u64::from(p.get()) >= limit {
                return Err(err(
                    op,
                    EOPNOTSUPP,
                    format!("{p} attach unsupported by host"),
                ));
            }
            // Linux `drivers/iommu/iommufd/device.c`, `iommufd_hwpt_pasid_compat()`: the
            // PASID's HWPT and the HWPT of the requests without PASID must both be
            // PASID-capable.
            if !h.pasid_capable {
                return Err(err(
                    op,
                    EINVAL,
                    format!("{hwpt} was not allocated with IOMMU_HWPT_ALLOC_PASID"),
                ));
            }
            let rid_ok = at
                .get(&None)
                .and_then(|r| st.hwpts.get(r))
                .is_none_or(|r| r.pasid_capable);
            if !rid_ok {
                return Err(err(
                    op,
                    EINVAL,
                    format!("{dev}: the HWPT of its requests without PASID is not PASID-capable"),
                ));
            }
        } else if !h.pasid_capable && at.keys().any(Option::is_some) {
            return Err(err(
                op,
                EINVAL,
                format!("{hwpt} is not PASID-capable and {dev} has PASIDs attached"),
            ));
        }
        // The driver: it blocks the device (tears the PASID entry down) first, then checks
        // the new table (Linux `drivers/iommu/intel/nested.c`, `intel_nested_attach_dev()`;
        // `drivers/iommu/intel/pasid.c`, `intel_pasid_setup_nested()`), and does not revert.
        if let Some(e) = self.driver_refuses(&st, dev, &h) {
            Self::block(&mut st, dev, pasid);
            return Err(e);
        }
        let at = st
            .devices
            .get_mut(&dev)
            .ok_or_else(|| err(op, ENOENT, format!("no {dev}")))?;
        if let Some(old) = at.insert(pasid, hwpt).filter(|&old| old != hwpt) {
            st.auto_respond(dev, pasid, old);
        }
        Ok(())
    }

    fn detach(&self, dev: DeviceId, pasid: Option<Pasid>) -> Result<(), BackendError> {
        let mut st = self.lock();
        self.enter(&mut st, SimOp::Detach)?;
        let at = st
            .devices
            .get_mut(&dev)
            .ok_or_else(|| err(BackendOp::Detach, ENOENT, format!("no {dev}")))?;
        if let Some(old) = at.remove(&pasid) {
            st.auto_respond(dev, pasid, old);
        }
        Ok(())
    }

    fn invalidate(&self, hwpt: HwptId, entries: &[VtdS1Invalidation]) -> Result<u32, BackendError> {
        let op = BackendOp::Invalidate;
        let mut st = self.lock();
        self.enter(&mut st, SimOp::Invalidate)?;
        match st.hwpts.get(&hwpt).map(|h| h.kind) {
            Some(SimHwptKind::Nested { .. }) => {}
            Some(_) => {
                return Err(err(op, EINVAL, format!("{hwpt} is not user-managed")).with_handled(0));
            }
            None => return Err(err(op, ENOENT, format!("no {hwpt}")).with_handled(0)),
        }
        let limit = st
            .plan
            .partial_invalidate
            .take()
            .map(|h| (h as usize).min(entries.len().saturating_sub(1)));
        if limit.is_some() {
            st.stats.injected_failures += 1;
        }
        let mut handled = 0u32;
        let mut failure = None;
        for (i, e) in entries.iter().enumerate() {
            if limit == Some(i) {
                failure = Some(
                    err(op, EIO, "partial invalidation injected by the simulator")
                        .with_handled(handled),
                );
                break;
            }
            if e.addr & (PAGE - 1) != 0 || e.npages == 0 {
                failure = Some(
                    err(
                        op,
                        EINVAL,
                        format!("entry {i}: unaligned address or no pages"),
                    )
                    .with_handled(handled),
                );
                break;
            }
            let e = *e;
            st.drop_iotlb(|&(h, base), entry| h == hwpt && e.overlaps(base, entry.size));
            handled += 1;
        }
        st.stats.invalidation_entries += u64::from(handled);
        if st.inv_log.len() >= INVALIDATION_LOG {
            st.inv_log.pop_front();
        }
        st.inv_log.push_back((hwpt, entries.to_vec()));
        match failure {
            Some(f) => Err(f),
            None => Ok(handled),
        }
    }

    fn destroy(&self, hwpt: HwptId) -> Result<(), BackendError> {
        let op = BackendOp::Destroy;
        let mut st = self.lock();
        self.enter(&mut st, SimOp::Destroy)?;
        if !st.hwpts.contains_key(&hwpt) {
            return Err(err(op, ENOENT, format!("no {hwpt}")));
        }
        if st.devices.values().any(|a| a.values().any(|&h| h == hwpt)) {
            return Err(err(op, EBUSY, format!("{hwpt} is attached")));
        }
        let has_children = st
            .hwpts
            .values()
            .any(|h| matches!(h.kind, SimHwptKind::Nested { parent, .. } if parent == hwpt));
        if has_children {
            return Err(err(op, EBUSY, format!("{hwpt} has nested children")));
        }
        st.hwpts.remove(&hwpt);
        st.dirty.remove(&hwpt);
        st.drop_iotlb(|&(h, _), _| h == hwpt);
        Ok(())
    }

    fn read_faults(&self, max: usize) -> Result<Vec<HostFault>, BackendError> {
        let mut st = self.lock();
        self.enter(&mut st, SimOp::ReadFaults)?;
        let n = max.min(st.faults.len());
        Ok(st.faults.drain(..n).collect())
    }

    fn set_dirty_tracking(&self, hwpt: HwptId, enable: bool) -> Result<(), BackendError> {
        let op = BackendOp::SetDirtyTracking;
        let mut st = self.lock();
        st.dirty_tracking_parent(op, hwpt)?;
        if enable {
            st.dirty.entry(hwpt).or_default();
            // Translations cached before tracking began would write without setting D
            // (the kernel flushes the IOTLB when it turns dirty tracking on).
            let children: BTreeSet<HwptId> = st
                .hwpts
                .values()
                .filter(|h| matches!(h.kind, SimHwptKind::Nested { parent, .. } if parent == hwpt))
                .map(|h| h.id)
                .collect();
            st.drop_iotlb(|&(h, _), _| h == hwpt || children.contains(&h));
        } else {
            st.dirty.remove(&hwpt);
        }
        Ok(())
    }

    fn read_and_clear_dirty(
        &self,
        hwpt: HwptId,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u64],
    ) -> Result<(), BackendError> {
        let op = BackendOp::GetDirtyBitmap;
        let mut st = self.lock();
        st.dirty_tracking_parent(op, hwpt)?;
        // The kernel's checks (iommufd_check_iova_range): a power-of-two page size of at least
        // 4 KiB, an aligned range that does not wrap, a bitmap that covers it.
        let pages = length.checked_div(page_size).unwrap_or(0);
        let valid = page_size.is_power_of_two()
            && page_size >= PAGE
            && iova % page_size == 0
            && length % page_size == 0
            && length > 0
            && iova.checked_add(length - 1).is_some()
            && (bitmap.len() as u64).saturating_mul(64) >= pages;
        if !valid {
            return Err(err(
                op,
                EINVAL,
                format!("range {iova:#x}+{length:#x}, page size {page_size:#x}"),
            ));
        }
        let Some(dirty) = st.dirty.get_mut(&hwpt) else {
            // Tracking off: nothing was recorded.
            return Ok(());
        };
        let last = iova + (length - 1);
        let hits: Vec<u64> = dirty.range(iova..=last).copied().collect();
        for gpa in hits {
            dirty.remove(&gpa);
            let bit = (gpa - iova) / page_size;
            // The range check above sized the bitmap for every page of the range.
            if let Some(word) = bitmap.get_mut((bit / 64) as usize) {
                *word |= 1 << (bit % 64);
            }
        }
        Ok(())
    }

    fn caps(&self) -> BackendCaps {
        self.lock().caps
    }

    /// Whole groups, oldest first, as many as fit in `max` records; a first group larger than
    /// `max` is delivered whole anyway (the real backend grows its buffer for it: Linux
    /// `drivers/iommu/iommufd/fault.c`, `iommufd_fault_fops_read()`, never splits a group).
    fn read_page_requests(&self, max: usize) -> Result<Vec<HostPageRequest>, BackendError> {
        let mut st = self.lock();
        self.enter(&mut st, SimOp::ReadFaults)?;
        let mut out: Vec<HostPageRequest> = Vec::new();
        while let Some(g) = st.page_groups.front() {
            if !out.is_empty() && out.len() + g.requests.len() > max {
                break;
            }
            if st.awaiting.len() >= AWAITING_RESPONSE {
                break;
            }
            let Some(mut g) = st.page_groups.pop_front() else {
                break;
            };
            st.next_cookie = st.next_cookie.wrapping_add(1).max(1);
            let cookie = st.next_cookie;
            for r in &mut g.requests {
                r.cookie = cookie;
            }
            out.extend(g.requests.iter().copied());
            st.awaiting.insert(cookie, g);
        }
        Ok(out)
    }

    fn respond_page_request(
        &self,
        cookie: u32,
        code: PageResponseCode,
    ) -> Result<(), BackendError> {
        let mut st = self.lock();
        // Linux `drivers/iommu/iommufd/fault.c`, `iommufd_fault_fops_write()`: a cookie with
        // no group is EINVAL.
        let g = st.awaiting.remove(&cookie).ok_or_else(|| {
            err(
                BackendOp::PageResponse,
                EINVAL,
                format!("no page request group with cookie {cookie}"),
            )
        })?;
        st.device_answered(&g, code, false);
        Ok(())
    }
}
