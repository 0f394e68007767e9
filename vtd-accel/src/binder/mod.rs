//! [`NestedBinder`]: keeps each assigned device's host attachment in step with the guest's
//! remapping state (QEMU `hw/i386/intel_iommu_accel.c`: `vtd_propagate_guest_pasid`,
//! `vtd_flush_pasid_iotlb`, replay on SRTP/TE/context invalidation; generalised to every
//! PASID, every invalidation kind, several iommufds, hotplug, unregister, restore, and host
//! faults).
//!
//! The binder is a [`VtdObserver`] on the unit's event bus. Events arrive after the unit has
//! released its lock, in the order they happened, so the binder reads the guest's current
//! tables from guest memory. Its jobs, one module each:
//!
//! - [`registry`]: who is registered (each device with its own backend), the bookkeeping,
//!   register / unregister.
//! - [`desired`]: what the guest asks for, a pure function of guest memory and the device's
//!   registration ([`desired_binding`]), tested without any backend.
//! - `apply`: driving the host there through the device's backend, fencing on failure.
//! - `forward`: turning guest invalidations into re-evaluations and batched host
//!   invalidations, per backend and HWPT.
//! - `host_faults`: host faults into the guest's fault-recording registers (only from
//!   backends that report non-recoverable faults, which no VT-d host does: see
//!   [`BackendCaps`](crate::BackendCaps)).
//! - `page_requests`: a PRI device's page requests into the guest's page request queue and
//!   the guest's page group responses back to the host.
//!
//! # Binding (per device and PASID)
//! | guest state | host state |
//! |---|---|
//! | translation off, requests without PASID | parent (GPA pass-through, spec 3.1) |
//! | translation off, PASIDs | blocked |
//! | context/PASID entry not present or invalid | blocked; the guest gets that fault on DMA |
//! | PGTT = first stage | nested HWPT: VTD_S1 {FSPTPTR, 48 + 9 * FSPM, SRE/WPE/EAFE} over the parent |
//! | PGTT = pass-through (or legacy TT = pass-through) | parent |
//! | anything else (second-stage, nested PGTT, legacy tables) | blocked; guest fault 0x5B (0x03 legacy) on DMA, [`AccelEvent::GuestConfigUnsupported`] for the VMM |
//!
//! Requests without PASID follow the guest's PASID entry RID_PASID (0; see [`crate::ids`]).
//!
//! # Re-evaluation triggers
//! PASID-cache invalidations (the named PASID, or all followed PASIDs for domain/global),
//! SRTP, TE changes, context-cache invalidations of any granularity (device granularity
//! honours the function mask), registration (also while the guest runs: hotplug binds at once),
//! unregistration, reset and restore (vtd-core publishes SRTP and TE events on restore).

mod apply;
pub mod desired;
mod forward;
mod host_faults;
pub mod migration;
mod page_requests;
pub mod registry;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard, Weak};
use vtd_core::sync::{Mutex, RwLock};

use vtd_core::{VtdEvent, VtdObserver, VtdUnit};
use vtd_regs::{Bdf, VtdConfig};
use vtd_tables::GuestRam;

pub use desired::{
    DesiredBinding, GuestRemapping, NestedState, PasidScan, desired_binding, present_pasids, s1_of,
};
pub use migration::RegisteredDevice;
pub use registry::{BindingInfo, HostAttachment, OrphanHwpt, RegisterError, UnregisterError};

use crate::events::{AccelEvent, AccelObserver, AccelStats, BlockCause};
use crate::faults::{GuestFaultSink, UnitFaultSink};
use crate::host::ViommuFlags;
use crate::ids::BindingKey;
use registry::Inner;

/// Binds assigned devices' DMA to the guest's first-stage tables on their host IOMMUs. See the
/// module documentation.
pub struct NestedBinder<M: GuestRam + Send + Sync + 'static> {
    unit: Weak<VtdUnit<M>>,
    config: VtdConfig,
    faults: Arc<dyn GuestFaultSink>,
    inner: Mutex<Inner>,
    has_pending: AtomicBool,
    observers: RwLock<Vec<Arc<dyn AccelObserver>>>,
    page_requests: Mutex<page_requests::PageRequestMap>,
}

impl<M: GuestRam + Send + Sync + 'static> fmt::Debug for NestedBinder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NestedBinder")
            .field("devices", &self.lock().devices.len())
            .finish_non_exhaustive()
    }
}

impl<M: GuestRam + Send + Sync + 'static> NestedBinder<M> {
    /// A binder for `unit`, recording host first-stage faults through `faults`; subscribed to
    /// the unit's event bus. The binder holds the unit weakly (the unit's bus holds the
    /// binder). Devices bring their backends when they register.
    pub fn new(unit: &Arc<VtdUnit<M>>, faults: Arc<dyn GuestFaultSink>) -> Arc<Self> {
        let binder = Arc::new(Self {
            unit: Arc::downgrade(unit),
            config: unit.config().clone(),
            faults,
            inner: Mutex::new(Inner::default()),
            has_pending: AtomicBool::new(false),
            observers: RwLock::new(Vec::new()),
            page_requests: Mutex::new(page_requests::PageRequestMap::default()),
        });
        unit.subscribe(binder.clone());
        binder
    }

    /// [`Self::new`] with a [`UnitFaultSink`] into the same unit.
    pub fn with_unit_faults(unit: &Arc<VtdUnit<M>>) -> Arc<Self> {
        let sink = Arc::new(UnitFaultSink::new(Arc::downgrade(unit)));
        Self::new(unit, sink)
    }

    /// What the VMM's VFIO layer must know before allocating a device's default HWPT.
    pub fn viommu_flags(&self) -> ViommuFlags {
        ViommuFlags::for_config(&self.config)
    }

    /// Adds an observer of [`AccelEvent`]s.
    pub fn subscribe(&self, observer: Arc<dyn AccelObserver>) {
        self.observers.write().push(observer);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
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
        let observers = self.observers.read().clone();
        for e in &events {
            for o in &observers {
                o.on_accel_event(e);
            }
        }
    }

    /// Every binding of every registered device.
    pub fn bindings(&self) -> Vec<BindingInfo> {
        self.lock().binding_infos()
    }

    /// HWPTs the host refused to destroy, to be retried.
    pub fn orphans(&self) -> Vec<OrphanHwpt> {
        self.lock()
            .orphans
            .iter()
            .map(|(&(_, hwpt), o)| OrphanHwpt { bdf: o.bdf, hwpt })
            .collect()
    }

    /// Counters.
    pub fn stats(&self) -> AccelStats {
        self.lock().stats
    }

    /// Re-evaluates every binding of every device against the guest's tables (also scanning for
    /// present PASIDs), retries orphan destruction. What the binder does on SRTP, TE changes
    /// and reset.
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
        let dirty: Vec<BindingKey> = inner
            .devices
            .iter()
            .flat_map(|(&bdf, d)| {
                d.bindings
                    .iter()
                    .filter(|(_, b)| b.dirty)
                    .map(move |(&p, _)| BindingKey::new(bdf, p))
            })
            .collect();
        for key in dirty {
            self.sync_one(&mut inner, key);
        }
        self.destroy_orphans(&mut inner);
        self.finish(inner);
    }

    fn resync_all_locked(&self, inner: &mut Inner) {
        let bdfs: Vec<Bdf> = inner.devices.keys().copied().collect();
        for bdf in bdfs {
            self.sync_device(inner, bdf);
        }
    }

    /// Finds the device's present PASIDs, then re-evaluates every binding it follows.
    fn sync_device(&self, inner: &mut Inner, bdf: Bdf) {
        self.scan_pasids(inner, bdf);
        let Some(dev) = inner.devices.get(&bdf) else {
            return;
        };
        let keys: Vec<BindingKey> = std::iter::once(None)
            .chain(dev.tracked.iter().copied().map(Some))
            .map(|p| BindingKey::new(bdf, p))
            .collect();
        for key in keys {
            self.sync_one(inner, key);
        }
    }

    /// Starts following the guest's present PASIDs of `bdf` (see [`present_pasids`]).
    fn scan_pasids(&self, inner: &mut Inner, bdf: Bdf) {
        let Some(dev) = inner.devices.get(&bdf) else {
            return;
        };
        if !self.pasids_enabled(dev) {
            return;
        }
        let host_bits = dev.host.info.max_pasid_log2;
        let Some(unit) = self.unit.upgrade() else {
            return;
        };
        let scan = present_pasids(&self.guest(&unit), bdf, host_bits);
        for pasid in scan.found {
            self.track(inner, BindingKey::new(bdf, Some(pasid)));
        }
        if scan.truncated {
            inner.events.push(AccelEvent::PasidScanTruncated {
                bdf,
                scanned: desired::MAX_SCAN_READS,
            });
        }
    }

    /// The guest's remapping state as the unit has it now.
    fn guest<'a>(&'a self, unit: &'a VtdUnit<M>) -> GuestRemapping<'a, M> {
        GuestRemapping {
            config: &self.config,
            mem: unit.memory(),
            translation_enabled: unit.translation_enabled(),
            root: unit.root_table().unwrap_or(desired::RESET_ROOT),
        }
    }

    /// Re-evaluates one binding and applies the result.
    fn sync_one(&self, inner: &mut Inner, key: BindingKey) {
        let Some(dev) = inner.devices.get(&key.bdf) else {
            return;
        };
        let device_pasids = self.pasids_enabled(dev);
        let Some(unit) = self.unit.upgrade() else {
            return;
        };
        let desired = desired_binding(&self.guest(&unit), key.bdf, key.pasid, device_pasids);
        inner.stats.syncs += 1;
        self.apply(inner, key, desired, true);
        // A PASID that is blocked for the guest's reasons needs no host state: stop following
        // it until the guest names it again. (Detached, clean and blocked for the guest: one
        // state, matched as one pattern.)
        if let (Some(pasid), Some(dev)) = (key.pasid, inner.devices.get_mut(&key.bdf)) {
            let idle = dev.bindings.get(&key.pasid).is_some_and(|b| {
                matches!(
                    b,
                    registry::Binding {
                        host: registry::HostAttachment::Blocked,
                        dirty: false,
                        blocked: Some((BlockCause::Guest { .. } | BlockCause::TranslationOff, _)),
                        ..
                    }
                )
            });
            if idle {
                dev.bindings.remove(&key.pasid);
                dev.tracked.remove(&pasid);
            }
        }
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
            VtdEvent::PageGroupResponse(r) => self.on_page_group_response(r),
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
