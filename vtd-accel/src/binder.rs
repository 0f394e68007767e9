//! [`NestedBinder`]: keeps each assigned device's host attachment in step with the guest's
//! remapping state (QEMU `intel_iommu_accel.c`: `vtd_propagate_guest_pasid`,
//! `vtd_flush_pasid_iotlb`, replay on SRTP/TE/context invalidation; generalised to every
//! PASID, every invalidation kind, unregister, restore, and host faults).
//!
//! The binder is a [`VtdObserver`] on the unit's event bus. Events arrive after the unit has
//! released its lock, in the order they happened, so the binder reads the guest's current
//! context and PASID entries with [`VtdUnit::read_context`] / [`VtdUnit::read_pasid_entry`].
//!
//! # Binding (per device and PASID)
//! | guest state | host state |
//! |---|---|
//! | translation off, PASID 0 | parent (GPA pass-through, spec 3.1) |
//! | translation off, other PASIDs | blocked |
//! | context/PASID entry not present or invalid | blocked; the guest gets that fault on DMA |
//! | PGTT = first stage | nested HWPT: VTD_S1 {FSPTPTR, 48 + 9 * FSPM, SRE/WPE/EAFE} over the parent |
//! | PGTT = pass-through (or legacy TT = pass-through) | parent |
//! | anything else (second-stage, nested PGTT, legacy tables) | blocked; guest fault 0x5B (0x03 legacy) on DMA, [`AccelEvent::GuestConfigUnsupported`] for the VMM |
//!
//! A new nested HWPT replaces the old attachment atomically (`VFIO_DEVICE_ATTACH_IOMMUFD_PT`
//! replace), then the old HWPT is destroyed. When the host refuses a step the binder never
//! leaves the device on a table the guest has abandoned: it fences the device (detach) and
//! retries on the next re-evaluation or [`NestedBinder::retry_failed`]. HWPTs that could not be
//! destroyed are kept as orphans and retried.
//!
//! # Re-evaluation triggers
//! PASID-cache invalidations (the named PASID, or all tracked PASIDs for domain/global), SRTP,
//! TE changes, context-cache invalidations of any granularity (device granularity honours the
//! function mask), registration, unregistration, and restore (vtd-core publishes SRTP and TE
//! events on restore).
//!
//! # Forwarding
//! PASID-IOTLB (page: `AM` -> `npages = 2^AM`, `IH` -> LEAF; whole PASID), IOTLB (global,
//! domain, page), device-TLB and PASID device-TLB invalidations go to every nested HWPT whose
//! binding matches (DID and PASID; SID for device-TLB). They are collected per HWPT and sent as
//! one `IOMMU_HWPT_INVALIDATE` per HWPT per batch. A batch ends at its last invalidation before
//! a wait descriptor or the queue tail (found by looking at the next queue slot; Linux ends
//! every batch with a wait, and vtd-core completes a wait only after the events before it were
//! delivered, so the host is invalidated before the guest sees completion); also at a queue
//! error, a register-based invalidation, `WaitCompleted`, and the next MMIO write.
//! A failed or partial invalidation is retried as one full flush; if that fails too the device
//! is fenced.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
pub use vtd_regs::Bdf;

use vtd_core::{VtdEvent, VtdObserver, VtdUnit};
use vtd_regs::VtdConfig;
use vtd_regs::fault::FaultReason;
use vtd_regs::inv::{
    ContextCacheGranularity, InvDesc, IotlbGranularity, PasidCacheGranularity,
    PasidIotlbGranularity, device_tlb_range, page_range,
};
use vtd_tables::GuestRam;
use vtd_tables::entries::{
    LegacyTranslationType, PasidDirEntry, PasidEntry, Pgtt, ScalableContextEntry,
};
use vtd_tables::walk::{AccessKind, DeviceContext, DmaRequest, Fault, StepFault};

use crate::backend::{
    BackendError, BackendOp, DeviceId, HostFault, HostIommuBackend, HwptAlloc, HwptId, VtdS1,
    VtdS1Flags, VtdS1Invalidation,
};
use crate::compat::{CompatError, PciTopology, check_compatibility};
use crate::events::{
    AccelEvent, AccelObserver, AccelStats, BlockCause, HostFaultOutcome, Recovery,
};
use crate::faults::{FaultClass, GuestFaultSink, UnitFaultSink, classify};
use crate::host::{HostIommuDevice, ViommuFlags};

/// Entries per HWPT and batch before the batch collapses into one full flush.
const MAX_BATCH_ENTRIES: usize = 64;
/// PASIDs other than 0 tracked per device.
const MAX_TRACKED_PASIDS: usize = 1024;
/// Guest-memory reads one PASID scan may do.
const MAX_SCAN_READS: u32 = 8192;
/// Host faults handled per [`NestedBinder::process_host_faults`] call.
const MAX_FAULTS_PER_POLL: usize = 256;

/// Why a device could not be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The host cannot run the guest's first stage for it.
    #[error(transparent)]
    Compat(#[from] CompatError),
    /// Something is already registered at this BDF.
    #[error("a host device is already registered at {0}")]
    AlreadyRegistered(Bdf),
    /// The iommufd device ID is registered at another BDF.
    #[error("iommufd device {dev_id} is already registered at {other}")]
    DeviceIdInUse {
        /// The device ID.
        dev_id: DeviceId,
        /// Where.
        other: Bdf,
    },
}

/// Why a device could not be unregistered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnregisterError {
    /// Nothing is registered there.
    #[error("no host device registered at {0}")]
    NotRegistered(Bdf),
    /// The host refused to put the device back on its default HWPT (or to block it); the
    /// device stays registered so the VMM can retry.
    #[error("unregistering {bdf}: {error}")]
    Host {
        /// The device.
        bdf: Bdf,
        /// The last host error.
        error: BackendError,
    },
}

/// What a device (PASID) is attached to on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostAttachment {
    /// The default HWPT (GPA->HPA).
    Parent,
    /// A nested HWPT the binder allocated.
    Nested(HwptId),
    /// Nothing: DMA blocked.
    Blocked,
}

/// One binding as the binder sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingInfo {
    /// The device.
    pub bdf: Bdf,
    /// Its iommufd device ID.
    pub dev_id: DeviceId,
    /// Its default (parent) HWPT.
    pub parent: HwptId,
    /// The PASID (0 = requests without PASID).
    pub pasid: u32,
    /// What the host has.
    pub host: HostAttachment,
    /// The guest table, when nested.
    pub s1: Option<VtdS1>,
    /// The DID forwarded invalidations must carry, when nested.
    pub did: Option<u16>,
    /// Why the device is blocked, when blocked.
    pub blocked: Option<BlockCause>,
    /// The host state is not what the guest asked for (a host call failed); retried later.
    pub dirty: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NestedState {
    s1: VtdS1,
    did: u16,
    fpd: bool,
}

#[derive(Clone, Debug)]
struct Binding {
    host: HostAttachment,
    nested: Option<NestedState>,
    blocked: Option<(BlockCause, Option<Fault>)>,
    dirty: bool,
}

impl Binding {
    fn on_parent() -> Self {
        Self {
            host: HostAttachment::Parent,
            nested: None,
            blocked: None,
            dirty: false,
        }
    }
    fn detached() -> Self {
        Self {
            host: HostAttachment::Blocked,
            nested: None,
            blocked: None,
            dirty: false,
        }
    }
    fn nested_hwpt(&self) -> Option<HwptId> {
        match self.host {
            HostAttachment::Nested(h) => Some(h),
            _ => None,
        }
    }
}

struct Device {
    host: HostIommuDevice,
    dev_id: DeviceId,
    parent: HwptId,
    bindings: BTreeMap<u32, Binding>,
    tracked: BTreeSet<u32>,
}

#[derive(Clone, Debug)]
enum Desired {
    Parent,
    Nested(NestedState),
    Blocked {
        cause: BlockCause,
        fault: Option<Fault>,
        unsupported: Option<String>,
    },
}

struct Pending {
    sid: u16,
    pasid: u32,
    entries: Vec<VtdS1Invalidation>,
}

#[derive(Default)]
struct Inner {
    devices: BTreeMap<u16, Device>,
    pending: BTreeMap<HwptId, Pending>,
    orphans: BTreeSet<HwptId>,
    events: Vec<AccelEvent>,
    stats: AccelStats,
}

impl Inner {
    fn report(
        &mut self,
        error: BackendError,
        sid: Option<u16>,
        pasid: Option<u32>,
        hwpt: Option<HwptId>,
        recovery: Recovery,
    ) -> usize {
        tracing::warn!(target: "vtd::accel", ?sid, ?pasid, ?hwpt, %error, ?recovery, "host call failed");
        self.stats.host_errors += 1;
        self.events.push(AccelEvent::HostError {
            sid,
            pasid,
            hwpt,
            error,
            recovery,
        });
        self.events.len() - 1
    }

    fn set_recovery(&mut self, index: usize, to: Recovery) {
        if let Some(AccelEvent::HostError { recovery, .. }) = self.events.get_mut(index) {
            *recovery = to;
        }
    }
}

/// Binds assigned devices' DMA to the guest's first-stage tables on the host IOMMU. See the
/// module documentation.
pub struct NestedBinder<M: GuestRam + Send + Sync + 'static> {
    unit: Weak<VtdUnit<M>>,
    config: VtdConfig,
    backend: Arc<dyn HostIommuBackend>,
    faults: Arc<dyn GuestFaultSink>,
    inner: Mutex<Inner>,
    has_pending: AtomicBool,
    observers: RwLock<Vec<Arc<dyn AccelObserver>>>,
}

impl<M: GuestRam + Send + Sync + 'static> fmt::Debug for NestedBinder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NestedBinder")
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}

impl<M: GuestRam + Send + Sync + 'static> NestedBinder<M> {
    /// A binder for `unit`, driving `backend`, recording host first-stage faults through
    /// `faults`; subscribed to the unit's event bus. The binder holds the unit weakly (the
    /// unit's bus holds the binder).
    pub fn new(
        unit: &Arc<VtdUnit<M>>,
        backend: Arc<dyn HostIommuBackend>,
        faults: Arc<dyn GuestFaultSink>,
    ) -> Arc<Self> {
        let binder = Arc::new(Self {
            unit: Arc::downgrade(unit),
            config: unit.config().clone(),
            backend,
            faults,
            inner: Mutex::new(Inner::default()),
            has_pending: AtomicBool::new(false),
            observers: RwLock::new(Vec::new()),
        });
        unit.subscribe(binder.clone());
        binder
    }

    /// [`Self::new`] with a [`UnitFaultSink`] into the same unit.
    pub fn with_unit_faults(
        unit: &Arc<VtdUnit<M>>,
        backend: Arc<dyn HostIommuBackend>,
    ) -> Arc<Self> {
        let sink = Arc::new(UnitFaultSink::new(Arc::downgrade(unit)));
        Self::new(unit, backend, sink)
    }

    /// What the VMM's VFIO layer must know before allocating a device's default HWPT.
    pub fn viommu_flags(&self) -> ViommuFlags {
        ViommuFlags::for_config(&self.config)
    }

    /// Adds an observer of [`AccelEvent`]s.
    pub fn subscribe(&self, observer: Arc<dyn AccelObserver>) {
        self.observers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(observer);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Releases the lock, then delivers the events produced under it.
    fn finish(&self, mut inner: MutexGuard<'_, Inner>) {
        let events = std::mem::take(&mut inner.events);
        self.has_pending
            .store(!inner.pending.is_empty(), Ordering::Release);
        drop(inner);
        if events.is_empty() {
            return;
        }
        for e in &events {
            tracing::debug!(target: "vtd::accel", event = ?e);
        }
        let observers = self
            .observers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for e in &events {
            for o in &observers {
                o.on_accel_event(e);
            }
        }
    }

    /// Registers an assigned device at `bdf` (QEMU `set_iommu_device`): checks compatibility,
    /// then binds it to the guest's current state. The device must be attached (by the VFIO
    /// layer) to its default HWPT, allocated with the flags of [`Self::viommu_flags`].
    pub fn register(
        &self,
        bdf: Bdf,
        device: HostIommuDevice,
        topology: PciTopology,
    ) -> Result<(), RegisterError> {
        check_compatibility(&self.config, &device, &topology)?;
        let Some((dev_id, parent)) = device.iommufd_ids() else {
            return Err(RegisterError::Compat(CompatError::NotIommufd {
                name: device.name.clone(),
            }));
        };
        let sid = bdf.sid();
        let mut inner = self.lock();
        if inner.devices.contains_key(&sid) {
            return Err(RegisterError::AlreadyRegistered(bdf));
        }
        if let Some((&other, _)) = inner.devices.iter().find(|(_, d)| d.dev_id == dev_id) {
            return Err(RegisterError::DeviceIdInUse {
                dev_id,
                other: Bdf::from_sid(other),
            });
        }
        inner.devices.insert(
            sid,
            Device {
                host: device,
                dev_id,
                parent,
                bindings: BTreeMap::from([(0, Binding::on_parent())]),
                tracked: BTreeSet::from([0]),
            },
        );
        inner.stats.devices += 1;
        self.sync_device(&mut inner, sid, true);
        self.finish(inner);
        Ok(())
    }

    /// Unregisters the device at `bdf` (QEMU `unset_iommu_device`): PASIDs other than 0 are
    /// detached, PASID 0 goes back to the default HWPT, the binder's HWPTs are destroyed.
    /// Returns the host view it was registered with.
    pub fn unregister(&self, bdf: Bdf) -> Result<HostIommuDevice, UnregisterError> {
        let sid = bdf.sid();
        let mut inner = self.lock();
        let Some(dev) = inner.devices.get(&sid) else {
            return Err(UnregisterError::NotRegistered(bdf));
        };
        let mut pasids: Vec<u32> = dev.bindings.keys().copied().collect();
        // PASIDs other than 0 first, then the RID.
        pasids.sort_by_key(|&p| (p == 0, p));
        let errors_before = inner.stats.host_errors;
        for pasid in pasids {
            let desired = if pasid == 0 {
                Desired::Parent
            } else {
                Desired::Blocked {
                    cause: BlockCause::Unregistered,
                    fault: None,
                    unsupported: None,
                }
            };
            self.apply(&mut inner, sid, pasid, desired, false);
        }
        let clean = inner.devices.get(&sid).is_some_and(|d| {
            d.bindings.iter().all(|(&p, b)| {
                !b.dirty
                    && b.host
                        == if p == 0 {
                            HostAttachment::Parent
                        } else {
                            HostAttachment::Blocked
                        }
            })
        });
        if !clean {
            let error = inner
                .events
                .iter()
                .rev()
                .find_map(|e| match e {
                    AccelEvent::HostError { error, .. } => Some(error.clone()),
                    _ => None,
                })
                .filter(|_| inner.stats.host_errors > errors_before)
                .unwrap_or_else(|| BackendError::new(BackendOp::Attach, "device not released"));
            self.finish(inner);
            return Err(UnregisterError::Host { bdf, error });
        }
        let dev = inner.devices.remove(&sid);
        inner.stats.devices = inner.stats.devices.saturating_sub(1);
        self.finish(inner);
        dev.map(|d| d.host)
            .ok_or(UnregisterError::NotRegistered(bdf))
    }

    /// Whether a device is registered at `bdf`.
    pub fn is_registered(&self, bdf: Bdf) -> bool {
        self.lock().devices.contains_key(&bdf.sid())
    }

    /// Every binding of every registered device.
    pub fn bindings(&self) -> Vec<BindingInfo> {
        let inner = self.lock();
        let mut out = Vec::new();
        for (&sid, d) in &inner.devices {
            for (&pasid, b) in &d.bindings {
                out.push(BindingInfo {
                    bdf: Bdf::from_sid(sid),
                    dev_id: d.dev_id,
                    parent: d.parent,
                    pasid,
                    host: b.host,
                    s1: b.nested.map(|n| n.s1),
                    did: b.nested.map(|n| n.did),
                    blocked: b.blocked.as_ref().map(|(c, _)| c.clone()),
                    dirty: b.dirty,
                });
            }
        }
        out
    }

    /// HWPTs the host refused to destroy, to be retried.
    pub fn orphans(&self) -> Vec<HwptId> {
        self.lock().orphans.iter().copied().collect()
    }

    /// Counters.
    pub fn stats(&self) -> AccelStats {
        self.lock().stats
    }

    /// Re-evaluates every binding of every device against the guest's tables (also scanning for
    /// present PASIDs), retries orphan destruction. What the binder does on SRTP and TE
    /// changes; a VMM calls it after `VtdUnit::reset` (which publishes no event).
    pub fn resync_all(&self) {
        let mut inner = self.lock();
        self.flush(&mut inner);
        self.resync_all_locked(&mut inner);
        self.destroy_orphans(&mut inner);
        self.finish(inner);
    }

    /// Sends the invalidations collected so far (normally sent at the end of each batch).
    pub fn flush_pending(&self) {
        let mut inner = self.lock();
        self.flush(&mut inner);
        self.finish(inner);
    }

    /// Retries what failed: bindings whose host state is not what the guest asked for, and
    /// orphaned HWPTs.
    pub fn retry_failed(&self) {
        let mut inner = self.lock();
        self.flush(&mut inner);
        let dirty: Vec<(u16, u32)> = inner
            .devices
            .iter()
            .flat_map(|(&sid, d)| {
                d.bindings
                    .iter()
                    .filter(|(_, b)| b.dirty)
                    .map(move |(&p, _)| (sid, p))
            })
            .collect();
        for (sid, pasid) in dirty {
            self.sync_one(&mut inner, sid, pasid);
        }
        self.destroy_orphans(&mut inner);
        self.finish(inner);
    }

    /// Reads the host's fault queue and hands first-stage faults to the guest (honouring FPD),
    /// with the SID, PASID, address and access of the faulting request. Faults on a blocked
    /// binding get the guest fault the binding stands for (e.g. PASID entry not present).
    /// Second-stage faults and faults the binder caused stay with the VMM (events). Returns the
    /// number of faults read.
    pub fn process_host_faults(&self) -> usize {
        let faults = match self.backend.read_faults(MAX_FAULTS_PER_POLL) {
            Ok(f) => f,
            Err(e) => {
                let mut inner = self.lock();
                inner.report(e, None, None, None, Recovery::None);
                self.finish(inner);
                return 0;
            }
        };
        let count = faults.len();
        let mut plan = Vec::with_capacity(count);
        {
            let mut inner = self.lock();
            for hf in faults {
                inner.stats.host_faults += 1;
                let (sid, guest, outcome) = Self::route_fault(&inner, &hf);
                plan.push((hf, sid, guest, outcome));
            }
        }
        let mut done = Vec::with_capacity(plan.len());
        for (hf, sid, guest, outcome) in plan {
            let outcome = match (outcome, &guest) {
                (None, Some(g)) => HostFaultOutcome::Injected(self.faults.inject(g)),
                (Some(o), _) => o,
                (None, None) => HostFaultOutcome::HostSide,
            };
            done.push((hf, sid, guest, outcome));
        }
        let mut inner = self.lock();
        for (fault, sid, guest, outcome) in done {
            match outcome {
                HostFaultOutcome::Injected(_) => inner.stats.faults_injected += 1,
                HostFaultOutcome::SuppressedByFpd => inner.stats.faults_suppressed += 1,
                _ => inner.stats.faults_not_injected += 1,
            }
            inner.events.push(AccelEvent::HostFault {
                fault,
                sid,
                guest,
                outcome,
            });
        }
        self.finish(inner);
        count
    }

    /// Decides what a host fault means for the guest: `(sid, guest fault, outcome)`; an outcome
    /// of `None` means "inject the guest fault".
    fn route_fault(
        inner: &Inner,
        hf: &HostFault,
    ) -> (Option<u16>, Option<Fault>, Option<HostFaultOutcome>) {
        let Some((&sid, dev)) = inner.devices.iter().find(|(_, d)| d.dev_id == hf.dev_id) else {
            return (None, None, Some(HostFaultOutcome::UnknownDevice));
        };
        let pasid = hf.pasid.unwrap_or(0);
        let Some(b) = dev.bindings.get(&pasid) else {
            return (Some(sid), None, Some(HostFaultOutcome::HostSide));
        };
        let make = |reason: FaultReason, suppressed: bool| Fault {
            reason,
            sid,
            pasid: hf.pasid,
            address: hf.addr & !0xfff,
            access: hf.access,
            privileged: hf.privileged,
            suppressed,
        };
        let guest = match classify(hf.reason) {
            FaultClass::FirstStage => match (b.host, b.nested) {
                (HostAttachment::Nested(h), Some(n)) if hf.hwpt.is_none_or(|x| x == h) => {
                    make(hf.reason, n.fpd && hf.reason.is_qualified())
                }
                _ => return (Some(sid), None, Some(HostFaultOutcome::Stale)),
            },
            FaultClass::Structure => match (&b.host, &b.blocked) {
                (HostAttachment::Blocked, Some((_, Some(gf)))) => make(gf.reason, gf.suppressed),
                (HostAttachment::Blocked, _) => {
                    return (Some(sid), None, Some(HostFaultOutcome::HostSide));
                }
                _ => return (Some(sid), None, Some(HostFaultOutcome::Stale)),
            },
            FaultClass::SecondStage | FaultClass::Other => {
                return (Some(sid), None, Some(HostFaultOutcome::HostSide));
            }
        };
        if guest.suppressed {
            return (
                Some(sid),
                Some(guest),
                Some(HostFaultOutcome::SuppressedByFpd),
            );
        }
        (Some(sid), Some(guest), None)
    }

    fn resync_all_locked(&self, inner: &mut Inner) {
        let sids: Vec<u16> = inner.devices.keys().copied().collect();
        for sid in sids {
            self.sync_device(inner, sid, true);
        }
    }

    fn pasids_enabled(&self, dev: &Device) -> bool {
        self.config.pasid_bits > 0 && dev.host.info.supports_pasid()
    }

    /// Re-evaluates every tracked PASID of a device (after a scan for present PASIDs).
    fn sync_device(&self, inner: &mut Inner, sid: u16, scan: bool) {
        if scan {
            self.scan_pasids(inner, sid);
        }
        let Some(dev) = inner.devices.get(&sid) else {
            return;
        };
        let pasids: Vec<u32> = dev.tracked.iter().copied().collect();
        for pasid in pasids {
            self.sync_one(inner, sid, pasid);
        }
    }

    /// Starts tracking `pasid` of `sid` (bounded).
    fn track(&self, inner: &mut Inner, sid: u16, pasid: u32) -> bool {
        let Some(dev) = inner.devices.get_mut(&sid) else {
            return false;
        };
        if dev.tracked.contains(&pasid) {
            return true;
        }
        if pasid != 0 && dev.tracked.len() > MAX_TRACKED_PASIDS {
            return false;
        }
        dev.tracked.insert(pasid);
        true
    }

    /// Finds the guest's present PASID entries of a device (bounded by the guest's and the
    /// host's PASID widths, the directory size and [`MAX_SCAN_READS`]).
    fn scan_pasids(&self, inner: &mut Inner, sid: u16) {
        let Some(dev) = inner.devices.get(&sid) else {
            return;
        };
        if !self.pasids_enabled(dev) {
            return;
        }
        let host_bits = dev.host.info.max_pasid_log2.min(20);
        let Some(unit) = self.unit.upgrade() else {
            return;
        };
        if !unit.translation_enabled() {
            return;
        }
        let Ok(DeviceContext::Scalable(sc)) = unit.read_context(sid) else {
            return;
        };
        if !sc.paside() {
            return;
        }
        let limit = u64::from(sc.pasid_limit())
            .min(1u64 << self.config.pasid_bits.min(20))
            .min(1u64 << host_bits);
        let mem = unit.memory();
        let mut reads = 0u32;
        let mut found = Vec::new();
        let mut truncated = false;
        'dir: for d in 0..limit.div_ceil(64) {
            reads += 1;
            if reads > MAX_SCAN_READS {
                truncated = true;
                break;
            }
            let Some(at) = sc.pasid_dir().checked_add(d * 8) else {
                break;
            };
            let Ok(raw) = mem.read_u64(at) else { break };
            let de = PasidDirEntry::from_bits(raw);
            if !de.present() {
                continue;
            }
            for slot in 0..64u64 {
                let pasid = d * 64 + slot;
                if pasid == 0 || pasid >= limit {
                    continue;
                }
                reads += 1;
                if reads > MAX_SCAN_READS {
                    truncated = true;
                    break 'dir;
                }
                let Some(at) = de.table().checked_add(slot * 64) else {
                    continue 'dir;
                };
                if mem.read_u64(at).is_ok_and(|qw0| qw0 & 1 != 0) {
                    found.push(pasid as u32);
                }
            }
        }
        for pasid in found {
            self.track(inner, sid, pasid);
        }
        if truncated {
            inner.events.push(AccelEvent::PasidScanTruncated {
                sid,
                scanned: MAX_SCAN_READS,
            });
        }
    }

    /// Re-evaluates one binding and applies the result.
    fn sync_one(&self, inner: &mut Inner, sid: u16, pasid: u32) {
        let Some(dev) = inner.devices.get(&sid) else {
            return;
        };
        let pasids_ok = self.pasids_enabled(dev);
        let Some(desired) = self.desired(sid, pasid, pasids_ok) else {
            return;
        };
        inner.stats.syncs += 1;
        self.apply(inner, sid, pasid, desired, true);
        // A PASID other than 0 that is blocked for the guest's reasons needs no host state.
        if pasid != 0 {
            if let Some(dev) = inner.devices.get_mut(&sid) {
                let idle = dev.bindings.get(&pasid).is_some_and(|b| {
                    b.host == HostAttachment::Blocked
                        && !b.dirty
                        && matches!(
                            b.blocked,
                            Some((BlockCause::Guest { .. } | BlockCause::TranslationOff, _))
                        )
                });
                if idle {
                    dev.bindings.remove(&pasid);
                    dev.tracked.remove(&pasid);
                }
            }
        }
    }

    /// What the guest's current state asks for at (`sid`, `pasid`); `None` if the unit is gone.
    fn desired(&self, sid: u16, pasid: u32, pasids_ok: bool) -> Option<Desired> {
        let unit = self.unit.upgrade()?;
        let blocked = |fault: Fault| Desired::Blocked {
            cause: BlockCause::Guest {
                reason: fault.reason,
            },
            fault: Some(fault),
            unsupported: None,
        };
        let unsupported = |reason: FaultReason, fpd: bool, what: String| Desired::Blocked {
            cause: BlockCause::Unsupported,
            fault: Some(guest_fault(sid, pasid, reason, fpd)),
            unsupported: Some(what),
        };
        if !unit.translation_enabled() {
            return Some(if pasid == 0 {
                Desired::Parent
            } else {
                Desired::Blocked {
                    cause: BlockCause::TranslationOff,
                    fault: None,
                    unsupported: None,
                }
            });
        }
        let sc = match unit.read_context(sid) {
            Err(f) => return Some(blocked(f)),
            Ok(DeviceContext::Legacy(ce)) => {
                return Some(if pasid != 0 {
                    blocked(guest_fault(
                        sid,
                        pasid,
                        FaultReason::SmLegacyModeRequestWithPasid,
                        false,
                    ))
                } else if ce.translation_type() == LegacyTranslationType::PassThrough {
                    Desired::Parent
                } else {
                    unsupported(
                        FaultReason::ContextEntryInvalid,
                        ce.fpd(),
                        "legacy-mode second-stage tables cannot be nested on the host \
                         (the guest must use scalable mode with first-stage tables)"
                            .into(),
                    )
                });
            }
            Ok(DeviceContext::Scalable(sc)) => sc,
        };
        if pasid != 0 {
            if !sc.paside() {
                return Some(blocked(guest_fault(
                    sid,
                    pasid,
                    FaultReason::SmContextPasidDisabled,
                    sc.fpd(),
                )));
            }
            if !pasids_ok {
                return Some(unsupported(
                    FaultReason::PasidEntryInvalid,
                    sc.fpd(),
                    format!("PASID {pasid}: the host device has no PASID support"),
                ));
            }
        }
        let pe = match unit.read_pasid_entry(sid, pasid) {
            Err(f) => return Some(blocked(f)),
            Ok(pe) => pe,
        };
        let fpd = sc.fpd() || dir_fpd(unit.memory(), &sc, pasid) || pe.fpd();
        Some(match pe.pgtt() {
            Pgtt::FirstStage => {
                let ecap = self.config.ecap();
                // SRE and EAFE are reserved without ECAP.SRS / ECAP.EAFS (spec 9.6); the host
                // would refuse them too.
                if (pe.sre() && !ecap.srs()) || (pe.eafe() && !ecap.eafs()) {
                    unsupported(
                        FaultReason::PasidEntryReserved,
                        fpd,
                        format!(
                            "PASID {pasid}: SRE/EAFE set but the vIOMMU does not advertise \
                             ECAP.SRS/EAFS"
                        ),
                    )
                } else {
                    Desired::Nested(NestedState {
                        s1: s1_of(&pe),
                        did: pe.did(),
                        fpd,
                    })
                }
            }
            Pgtt::PassThrough => Desired::Parent,
            other => unsupported(
                FaultReason::PasidEntryInvalid,
                fpd,
                format!(
                    "PASID {pasid}: PGTT {other:?} cannot be bound (only first-stage and \
                     pass-through run on the host)"
                ),
            ),
        })
    }

    /// Drives the host towards `desired` for (`sid`, `pasid`), fencing on failure.
    fn apply(&self, inner: &mut Inner, sid: u16, pasid: u32, desired: Desired, emit: bool) {
        let Some(dev) = inner.devices.get(&sid) else {
            return;
        };
        let (dev_id, parent) = (dev.dev_id, dev.parent);
        let mut b = dev
            .bindings
            .get(&pasid)
            .cloned()
            .unwrap_or_else(Binding::detached);
        match desired {
            Desired::Parent => {
                if b.host == HostAttachment::Parent && !b.dirty {
                    b.blocked = None;
                } else {
                    match self.backend.attach(dev_id, pasid, parent) {
                        Ok(()) => {
                            let old = b.nested_hwpt();
                            b = Binding::on_parent();
                            inner.stats.parent_attaches += 1;
                            inner.events.push(AccelEvent::AttachedParent { sid, pasid });
                            self.dispose(inner, old, sid, pasid);
                        }
                        Err(e) => {
                            let at = inner.report(
                                e,
                                Some(sid),
                                Some(pasid),
                                Some(parent),
                                Recovery::KeptPrevious,
                            );
                            let r = self.fence(inner, dev_id, sid, pasid, &mut b);
                            inner.set_recovery(at, r);
                        }
                    }
                }
            }
            Desired::Nested(want) => {
                let same = matches!(b.host, HostAttachment::Nested(_))
                    && b.nested.is_some_and(|n| n.s1 == want.s1);
                if same && !b.dirty {
                    // Same table: DID or FPD may have changed; the host state stays.
                    b.nested = Some(want);
                } else {
                    self.bind_nested(inner, dev_id, parent, sid, pasid, want, &mut b);
                }
            }
            Desired::Blocked {
                cause,
                fault,
                unsupported,
            } => {
                let changed = b.blocked.as_ref().map(|(c, _)| c) != Some(&cause)
                    || b.host != HostAttachment::Blocked;
                if let (Some(what), true, true) = (unsupported, changed, emit) {
                    tracing::warn!(target: "vtd::accel", sid, pasid, %what, "guest configuration unsupported");
                    inner.stats.guest_config_errors += 1;
                    inner
                        .events
                        .push(AccelEvent::GuestConfigUnsupported { sid, pasid, what });
                }
                if b.host == HostAttachment::Blocked {
                    b.blocked = Some((cause, fault));
                    b.dirty = false;
                } else {
                    match self.backend.detach(dev_id, pasid) {
                        Ok(()) => {
                            let old = b.nested_hwpt();
                            b = Binding {
                                host: HostAttachment::Blocked,
                                nested: None,
                                blocked: Some((cause.clone(), fault)),
                                dirty: false,
                            };
                            inner.stats.detaches += 1;
                            inner.events.push(AccelEvent::Blocked { sid, pasid, cause });
                            self.dispose(inner, old, sid, pasid);
                        }
                        Err(e) => {
                            inner.report(
                                e,
                                Some(sid),
                                Some(pasid),
                                b.nested_hwpt(),
                                Recovery::KeptPrevious,
                            );
                            b.dirty = true;
                        }
                    }
                }
            }
        }
        if let Some(dev) = inner.devices.get_mut(&sid) {
            dev.bindings.insert(pasid, b);
        }
    }

    /// Allocates and attaches a nested HWPT for `want`, replacing what `b` has.
    #[allow(clippy::too_many_arguments)]
    fn bind_nested(
        &self,
        inner: &mut Inner,
        dev_id: DeviceId,
        parent: HwptId,
        sid: u16,
        pasid: u32,
        want: NestedState,
        b: &mut Binding,
    ) {
        let pasid_capable = inner
            .devices
            .get(&sid)
            .is_some_and(|d| self.pasids_enabled(d));
        let req = HwptAlloc::Nested {
            parent,
            s1: want.s1,
            pasid: pasid_capable,
        };
        let new = match self.backend.alloc_hwpt(dev_id, &req) {
            Ok(h) => h,
            Err(e) => {
                let at = inner.report(e, Some(sid), Some(pasid), None, Recovery::KeptPrevious);
                let r = self.fence(inner, dev_id, sid, pasid, b);
                inner.set_recovery(at, r);
                return;
            }
        };
        inner.stats.hwpts_allocated += 1;
        if let Err(e) = self.backend.attach(dev_id, pasid, new) {
            let at = inner.report(e, Some(sid), Some(pasid), Some(new), Recovery::KeptPrevious);
            self.dispose(inner, Some(new), sid, pasid);
            let r = self.fence(inner, dev_id, sid, pasid, b);
            inner.set_recovery(at, r);
            return;
        }
        let old = b.nested_hwpt();
        *b = Binding {
            host: HostAttachment::Nested(new),
            nested: Some(want),
            blocked: None,
            dirty: false,
        };
        inner.stats.nested_attaches += 1;
        tracing::info!(target: "vtd::accel", sid, pasid, hwpt = new, ?want.s1, "bound guest first stage");
        inner.events.push(AccelEvent::Bound {
            sid,
            pasid,
            hwpt: new,
            s1: want.s1,
            did: want.did,
        });
        self.dispose(inner, old, sid, pasid);
    }

    /// After a failure to reach the guest's state: block the device (PASID) rather than leave
    /// it on a table the guest abandoned. Returns what happened.
    fn fence(
        &self,
        inner: &mut Inner,
        dev_id: DeviceId,
        sid: u16,
        pasid: u32,
        b: &mut Binding,
    ) -> Recovery {
        b.dirty = true;
        if b.host == HostAttachment::Blocked {
            return Recovery::KeptPrevious;
        }
        match self.backend.detach(dev_id, pasid) {
            Ok(()) => {
                let old = b.nested_hwpt();
                *b = Binding {
                    host: HostAttachment::Blocked,
                    nested: None,
                    blocked: Some((BlockCause::HostFailure, None)),
                    dirty: true,
                };
                inner.stats.detaches += 1;
                inner.events.push(AccelEvent::Blocked {
                    sid,
                    pasid,
                    cause: BlockCause::HostFailure,
                });
                self.dispose(inner, old, sid, pasid);
                Recovery::Blocked
            }
            Err(e) => {
                inner.report(
                    e,
                    Some(sid),
                    Some(pasid),
                    b.nested_hwpt(),
                    Recovery::KeptPrevious,
                );
                Recovery::KeptPrevious
            }
        }
    }

    /// Destroys an HWPT the binder no longer uses (orphaning it if the host refuses).
    fn dispose(&self, inner: &mut Inner, hwpt: Option<HwptId>, sid: u16, pasid: u32) {
        let Some(hwpt) = hwpt else { return };
        inner.pending.remove(&hwpt);
        match self.backend.destroy(hwpt) {
            Ok(()) => inner.stats.hwpts_destroyed += 1,
            Err(e) => {
                inner.report(e, Some(sid), Some(pasid), Some(hwpt), Recovery::Orphaned);
                inner.orphans.insert(hwpt);
            }
        }
    }

    fn destroy_orphans(&self, inner: &mut Inner) {
        let orphans: Vec<HwptId> = inner.orphans.iter().copied().collect();
        for hwpt in orphans {
            match self.backend.destroy(hwpt) {
                Ok(()) => {
                    inner.orphans.remove(&hwpt);
                    inner.stats.hwpts_destroyed += 1;
                    inner.events.push(AccelEvent::OrphanDestroyed { hwpt });
                }
                Err(e) => {
                    inner.report(e, None, None, Some(hwpt), Recovery::Orphaned);
                }
            }
        }
    }

    /// Handles one guest invalidation: re-evaluation and forwarding.
    fn on_invalidation(&self, inner: &mut Inner, desc: &InvDesc) {
        match desc {
            InvDesc::ContextCache(cc) => match cc.granularity {
                ContextCacheGranularity::Global | ContextCacheGranularity::Domain { .. } => {
                    // Scalable context entries carry no DID: a domain flush covers them all.
                    self.resync_all_locked(inner);
                }
                ContextCacheGranularity::Device { sid, fm, .. } => {
                    let mask: u16 = match fm & 3 {
                        0 => 0,
                        1 => 0b100,
                        2 => 0b110,
                        _ => 0b111,
                    };
                    let sids: Vec<u16> = inner
                        .devices
                        .keys()
                        .copied()
                        .filter(|&s| s & !mask == sid & !mask)
                        .collect();
                    for s in sids {
                        self.sync_device(inner, s, true);
                    }
                }
            },
            InvDesc::PasidCache(pc) => match pc.granularity {
                PasidCacheGranularity::Pasid { pasid } => {
                    let sids: Vec<u16> = inner.devices.keys().copied().collect();
                    for sid in sids {
                        let ok = inner
                            .devices
                            .get(&sid)
                            .is_some_and(|d| pasid == 0 || self.pasids_enabled(d));
                        if ok && self.track(inner, sid, pasid) {
                            self.sync_one(inner, sid, pasid);
                        }
                    }
                }
                PasidCacheGranularity::Domain | PasidCacheGranularity::Global => {
                    self.resync_all_locked(inner);
                }
            },
            InvDesc::PasidIotlb(p) if p.pasid != 0 => {
                // A PASID the binder has not seen: its entry may have been created without a
                // PASID-cache invalidation (CM = 0). Bind it before forwarding.
                let sids: Vec<u16> = inner
                    .devices
                    .iter()
                    .filter(|(_, d)| !d.tracked.contains(&p.pasid) && self.pasids_enabled(d))
                    .map(|(&s, _)| s)
                    .collect();
                for sid in sids {
                    if self.track(inner, sid, p.pasid) {
                        self.sync_one(inner, sid, p.pasid);
                    }
                }
                self.forward(inner, desc);
            }
            _ => self.forward(inner, desc),
        }
    }

    /// Queues the host invalidations `desc` implies for every matching nested HWPT.
    fn forward(&self, inner: &mut Inner, desc: &InvDesc) {
        let mut targets: Vec<(HwptId, u16, u32, VtdS1Invalidation)> = Vec::new();
        for (&sid, dev) in &inner.devices {
            for (&pasid, b) in &dev.bindings {
                let (HostAttachment::Nested(hwpt), Some(n)) = (b.host, b.nested) else {
                    continue;
                };
                let entry = match desc {
                    InvDesc::PasidIotlb(p) if p.did == n.did && p.pasid == pasid => {
                        match p.granularity {
                            PasidIotlbGranularity::AllInPasid => Some(VtdS1Invalidation::ALL),
                            PasidIotlbGranularity::Page { addr, am, ih } => {
                                let r = page_range(addr, am);
                                Some(VtdS1Invalidation::for_range(*r.start(), *r.end(), ih))
                            }
                        }
                    }
                    InvDesc::Iotlb(i) => match i.granularity {
                        IotlbGranularity::Global => Some(VtdS1Invalidation::ALL),
                        IotlbGranularity::Domain { did } if did == n.did => {
                            Some(VtdS1Invalidation::ALL)
                        }
                        // Conservative, like QEMU: a page-selective IOTLB invalidation also
                        // drops first-stage entries of the domain's pages.
                        IotlbGranularity::Page { did, addr, am, ih } if did == n.did => {
                            let r = page_range(addr, am);
                            Some(VtdS1Invalidation::for_range(*r.start(), *r.end(), ih))
                        }
                        _ => None,
                    },
                    InvDesc::DeviceTlb(d) if d.sid == sid && pasid == 0 => {
                        let r = device_tlb_range(d.addr, d.size);
                        Some(VtdS1Invalidation::for_range(*r.start(), *r.end(), false))
                    }
                    InvDesc::PasidDeviceTlb(d)
                        if d.sid == sid && (d.global || d.pasid == pasid) =>
                    {
                        let r = device_tlb_range(d.addr, d.size);
                        Some(VtdS1Invalidation::for_range(*r.start(), *r.end(), false))
                    }
                    _ => None,
                };
                if let Some(e) = entry {
                    targets.push((hwpt, sid, pasid, e));
                }
            }
        }
        if !targets.is_empty() {
            inner.stats.invalidations_forwarded += 1;
        }
        for (hwpt, sid, pasid, entry) in targets {
            let p = inner.pending.entry(hwpt).or_insert(Pending {
                sid,
                pasid,
                entries: Vec::new(),
            });
            if p.entries.first().is_some_and(VtdS1Invalidation::is_all)
                || p.entries.contains(&entry)
            {
                continue;
            }
            if entry.is_all() || p.entries.len() >= MAX_BATCH_ENTRIES {
                p.entries = vec![VtdS1Invalidation::ALL];
            } else {
                p.entries.push(entry);
            }
        }
    }

    /// Sends one `IOMMU_HWPT_INVALIDATE` per HWPT with everything collected.
    fn flush(&self, inner: &mut Inner) {
        let pending = std::mem::take(&mut inner.pending);
        for (hwpt, p) in pending {
            let n = p.entries.len();
            inner.stats.invalidate_calls += 1;
            let failure = match self.backend.invalidate(hwpt, &p.entries) {
                Ok(done) if done as usize == n => {
                    inner.stats.invalidation_entries += u64::from(done);
                    continue;
                }
                Ok(done) => BackendError::new(
                    BackendOp::Invalidate,
                    format!("host handled {done} of {n} entries"),
                )
                .with_handled(done),
                Err(e) => e,
            };
            inner.stats.invalidation_entries += u64::from(failure.handled.unwrap_or(0));
            inner.report(
                failure,
                Some(p.sid),
                Some(p.pasid),
                Some(hwpt),
                Recovery::FullFlush,
            );
            inner.stats.invalidate_calls += 1;
            let retry = match self.backend.invalidate(hwpt, &[VtdS1Invalidation::ALL]) {
                Ok(1) => {
                    inner.stats.invalidation_entries += 1;
                    continue;
                }
                Ok(done) => BackendError::new(
                    BackendOp::Invalidate,
                    format!("host handled {done} of 1 entries"),
                )
                .with_handled(done),
                Err(e) => e,
            };
            // The host may still cache what the guest invalidated: fence the device.
            let at = inner.report(
                retry,
                Some(p.sid),
                Some(p.pasid),
                Some(hwpt),
                Recovery::KeptPrevious,
            );
            let recovery = self.fence_hwpt(inner, p.sid, p.pasid, hwpt);
            inner.set_recovery(at, recovery);
        }
    }

    /// Fences the binding that uses `hwpt`, if it still does.
    fn fence_hwpt(&self, inner: &mut Inner, sid: u16, pasid: u32, hwpt: HwptId) -> Recovery {
        let Some(dev) = inner.devices.get(&sid) else {
            return Recovery::None;
        };
        let dev_id = dev.dev_id;
        let Some(mut b) = dev.bindings.get(&pasid).cloned() else {
            return Recovery::None;
        };
        if b.host != HostAttachment::Nested(hwpt) {
            return Recovery::None;
        }
        let r = self.fence(inner, dev_id, sid, pasid, &mut b);
        if let Some(dev) = inner.devices.get_mut(&sid) {
            dev.bindings.insert(pasid, b);
        }
        r
    }
}

/// A guest-visible fault for (`sid`, `pasid`) with `reason`, FPD applied as the spec says.
fn guest_fault(sid: u16, pasid: u32, reason: FaultReason, fpd: bool) -> Fault {
    let req = DmaRequest {
        sid,
        pasid: (pasid != 0).then_some(pasid),
        iova: 0,
        access: AccessKind::Read,
        privileged: false,
    };
    StepFault::new(reason).with_fpd(fpd).into_fault(&req)
}

/// FPD of the PASID-directory entry that covers `pasid` (spec 9.5), false if unreadable.
fn dir_fpd(mem: &impl GuestRam, sc: &ScalableContextEntry, pasid: u32) -> bool {
    sc.pasid_dir()
        .checked_add(u64::from(pasid >> 6) * 8)
        .and_then(|at| mem.read_u64(at).ok())
        .is_some_and(|raw| PasidDirEntry::from_bits(raw).fpd())
}

/// The VTD_S1 data for a first-stage PASID entry (QEMU `vtd_pe_get_fs_flags`,
/// `VTD_SM_PASID_ENTRY_FSPM`): FSPTPTR, `48 + 9 * FSPM`, SRE/WPE/EAFE.
pub fn s1_of(pe: &PasidEntry) -> VtdS1 {
    let mut flags = 0;
    if pe.sre() {
        flags |= VtdS1Flags::SRE;
    }
    if pe.eafe() {
        flags |= VtdS1Flags::EAFE;
    }
    if pe.wpe() {
        flags |= VtdS1Flags::WPE;
    }
    VtdS1 {
        flags: VtdS1Flags(flags),
        pgtbl_addr: pe.fs_table(),
        addr_width: 48 + 9 * u32::from(pe.fspm()),
    }
}

impl<M: GuestRam + Send + Sync + 'static> VtdObserver for NestedBinder<M> {
    fn on_event(&self, event: &VtdEvent) {
        match event {
            VtdEvent::RegisterWrite { .. }
            | VtdEvent::WaitCompleted { .. }
            | VtdEvent::QueueError { .. } => {
                // The end of a batch (or the start of the next MMIO write).
                if !self.has_pending.load(Ordering::Acquire) {
                    return;
                }
                let mut inner = self.lock();
                self.flush(&mut inner);
                self.finish(inner);
            }
            VtdEvent::RootTableLatched { .. }
            | VtdEvent::TranslationEnabled(_)
            | VtdEvent::Reset => {
                let mut inner = self.lock();
                if inner.devices.is_empty() {
                    return;
                }
                self.flush(&mut inner);
                self.resync_all_locked(&mut inner);
                self.destroy_orphans(&mut inner);
                self.finish(inner);
            }
            VtdEvent::Invalidation { source, desc } => {
                let mut inner = self.lock();
                if inner.devices.is_empty() {
                    return;
                }
                self.on_invalidation(&mut inner, desc);
                if source.ends_batch() {
                    self.flush(&mut inner);
                }
                self.finish(inner);
            }
            _ => {}
        }
    }
}
