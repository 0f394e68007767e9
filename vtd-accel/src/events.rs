//! What the binder tells the VMM: typed events ([`AccelEvent`]) for observers, and counters
//! ([`AccelStats`]). Every failed host call produces exactly one [`AccelEvent::HostError`] and
//! one count in [`AccelStats::host_errors`].

use vtd_core::sync::Mutex;

use vtd_regs::fault::FaultReason;
use vtd_tables::walk::Fault;

use crate::backend::{BackendError, HostFault, HwptId, VtdS1};
use crate::faults::FaultInjection;
use crate::ids::BindingKey;
use vtd_regs::Bdf;

/// Why a binding blocks the device's DMA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockCause {
    /// The guest's tables say so (not present, invalid): `reason` is what the guest sees when
    /// the device tries DMA.
    Guest {
        /// The guest fault reason.
        reason: FaultReason,
    },
    /// Translation is off: requests with PASID are blocked (spec 3.1).
    TranslationOff,
    /// The guest programmed something the host cannot run (legacy second-stage table,
    /// second-stage or nested PGTT, PASID without host support).
    Unsupported,
    /// The host refused what the binding needed; the device is fenced until a retry works.
    HostFailure,
    /// The device is being unregistered (its PASIDs are released).
    Unregistered,
}

/// What the binder did after a host call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Recovery {
    /// Nothing to do (e.g. a failed fault-queue read).
    None,
    /// The previous host state was kept; the binding is retried later.
    KeptPrevious,
    /// The device (PASID) was detached: its DMA is blocked until a retry works.
    Blocked,
    /// An HWPT that could not be destroyed is kept in the orphan list and retried later.
    Orphaned,
    /// A failed or partial invalidation was retried as one full flush of the HWPT.
    FullFlush,
}

/// What the binder did with a host fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostFaultOutcome {
    /// Handed to the guest's fault sink.
    Injected(FaultInjection),
    /// Covered by FPD at the guest's context / PASID-directory / PASID entry (spec 7.1.2).
    SuppressedByFpd,
    /// A second-stage fault or a block the binder caused: the VMM's problem, not the guest's.
    HostSide,
    /// From an HWPT the device no longer uses (raised before a rebind).
    Stale,
    /// From a device that is not registered.
    UnknownDevice,
}

/// One thing the binder did or saw.
#[derive(Clone, Debug, PartialEq)]
pub enum AccelEvent {
    /// A nested HWPT for the guest's first-stage table is attached.
    Bound {
        /// The device and PASID.
        binding: BindingKey,
        /// The new HWPT.
        hwpt: HwptId,
        /// The guest table handed over.
        s1: VtdS1,
        /// The PASID entry's DID.
        did: u16,
    },
    /// The device (PASID) is attached to its parent: GPA pass-through.
    AttachedParent {
        /// The device and PASID.
        binding: BindingKey,
    },
    /// The device (PASID) is detached: DMA blocked.
    Blocked {
        /// The device and PASID.
        binding: BindingKey,
        /// Why.
        cause: BlockCause,
    },
    /// The guest programmed something that cannot be bound: the guest gets a fault when the
    /// device uses it; this is the VMM's clear error.
    GuestConfigUnsupported {
        /// The device and PASID.
        binding: BindingKey,
        /// What and why.
        what: String,
    },
    /// A host call failed.
    HostError {
        /// The binding concerned, if the call was for one.
        binding: Option<BindingKey>,
        /// The HWPT concerned, if any.
        hwpt: Option<HwptId>,
        /// What the host said (op, errno, message, entries handled).
        error: BackendError,
        /// What the binder did about it.
        recovery: Recovery,
    },
    /// An orphaned HWPT was finally destroyed.
    OrphanDestroyed {
        /// The HWPT.
        hwpt: HwptId,
    },
    /// A host fault was read and handled.
    HostFault {
        /// The fault as the host reported it.
        fault: HostFault,
        /// The device, if registered.
        bdf: Option<Bdf>,
        /// What the guest saw, if anything was injected.
        guest: Option<Fault>,
        /// What was done.
        outcome: HostFaultOutcome,
    },
    /// A scan for the guest's present PASID entries stopped at its bound.
    PasidScanTruncated {
        /// The device.
        bdf: Bdf,
        /// PASIDs examined.
        scanned: u32,
    },
}

/// Receives the binder's events (after its lock is released).
pub trait AccelObserver: Send + Sync {
    /// Called in the order events happened.
    fn on_accel_event(&self, event: &AccelEvent);
}

/// An observer that keeps every event (tests, an inspector's history).
#[derive(Debug, Default)]
pub struct AccelEventLog {
    events: Mutex<Vec<AccelEvent>>,
}

impl AccelEventLog {
    /// Takes the events seen so far.
    pub fn take(&self) -> Vec<AccelEvent> {
        std::mem::take(&mut *self.events.lock())
    }
}

impl AccelObserver for AccelEventLog {
    fn on_accel_event(&self, event: &AccelEvent) {
        self.events.lock().push(event.clone());
    }
}

/// The binder's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccelStats {
    /// Devices registered now.
    pub devices: u64,
    /// Nested HWPTs allocated.
    pub hwpts_allocated: u64,
    /// Nested HWPTs destroyed (orphans included once destroyed).
    pub hwpts_destroyed: u64,
    /// Successful attaches of a nested HWPT.
    pub nested_attaches: u64,
    /// Successful attaches of the parent.
    pub parent_attaches: u64,
    /// Successful detaches.
    pub detaches: u64,
    /// Re-evaluations of a binding (device, PASID) against the guest's tables.
    pub syncs: u64,
    /// `IOMMU_HWPT_INVALIDATE` calls made.
    pub invalidate_calls: u64,
    /// Invalidation entries handed to the host (and handled).
    pub invalidation_entries: u64,
    /// Guest invalidation descriptors that reached at least one HWPT.
    pub invalidations_forwarded: u64,
    /// Host calls that failed (each also an [`AccelEvent::HostError`]).
    pub host_errors: u64,
    /// Guest programming that could not be bound.
    pub guest_config_errors: u64,
    /// Host faults read.
    pub host_faults: u64,
    /// Host faults handed to the guest's fault sink.
    pub faults_injected: u64,
    /// Host faults suppressed by the guest's FPD.
    pub faults_suppressed: u64,
    /// Host faults not meant for the guest (second stage, stale, unknown device).
    pub faults_not_injected: u64,
    /// Page requests read from the host.
    pub page_requests: u64,
    /// Page requests answered "invalid" without reaching the guest (unregistered device, no
    /// room, queue unreachable, malformed).
    pub page_requests_refused: u64,
    /// Page group responses passed to the host.
    pub page_responses: u64,
}
