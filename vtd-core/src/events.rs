//! The event bus: typed events that observers (nested binding, the inspector, tracing)
//! subscribe to.
//!
//! Events are collected while the unit holds its state lock and published after it is released,
//! so an observer may call back into the unit. The translate path publishes nothing on an IOTLB
//! hit; with no observer subscribed, publishing is one relaxed atomic load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vtd_regs::inv::InvDesc;
use vtd_tables::walk::{Fault, Perms, RootTable};

use crate::sync::{Mutex, RwLock};

/// Where an invalidation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidationSource {
    /// The invalidation queue; `index` is the descriptor's slot.
    Queue {
        /// Slot of the descriptor in the queue.
        index: u32,
        /// The last invalidation of a batch: the unit processes no further invalidation
        /// descriptor before the next wait descriptor, the tail or a queue error. Software
        /// orders completion with wait descriptors (spec 6.5.2.8), so an observer that batches
        /// work (forwarding to a host IOMMU) flushes here, without re-deriving the queue layout.
        ends_batch: bool,
    },
    /// CCMD_REG or IOTLB_REG (register-based invalidation, spec 6.5.1): each one is a batch
    /// of its own.
    Register,
}

/// An interrupt-remapping fault (spec 5.1.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrFault {
    /// Fault reason (0x20-0x27).
    pub reason: vtd_regs::fault::FaultReason,
    /// Source ID of the interrupt request (0 for IOAPIC messages without a SID).
    pub sid: u16,
    /// Interrupt index (handle) the request computed.
    pub index: u16,
    /// Suppressed by the IRTE's FPD.
    pub suppressed: bool,
}

/// What happened to a fault the unit reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultDisposition {
    /// Written into fault-recording register `index`.
    Recorded {
        /// The FRCD index.
        index: u16,
    },
    /// A qualified fault under FPD: neither recorded nor reported.
    Suppressed,
    /// Not recorded because FSTS.PFO was already set or the next record was busy (PFO set).
    Overflow,
    /// Not recorded: a pending record from the same requester covers it (spec 7.2.1).
    Coalesced,
}

impl InvalidationSource {
    /// Whether an observer should act on what it batched so far: the queue's batch ends here,
    /// or the invalidation came through a register.
    pub const fn ends_batch(&self) -> bool {
        match self {
            Self::Queue { ends_batch, .. } => *ends_batch,
            Self::Register => true,
        }
    }
}

/// A mapping change seen by a shadowing observer (caching mode, spec 6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowEvent {
    /// `[iova, iova + size)` now maps to `output` with `perms`.
    Map {
        /// Requester.
        sid: u16,
        /// PASID (scalable mode).
        pasid: Option<u32>,
        /// IOVA of the page.
        iova: u64,
        /// Page size.
        size: u64,
        /// Guest-physical output.
        output: u64,
        /// Rights.
        perms: Perms,
    },
    /// The replay walk ran out of its per-doorbell budget: mappings after the last `Map` were
    /// not reported, and a shadowing VMM must resynchronise the device in full (`replay`).
    Incomplete {
        /// Requester.
        sid: u16,
        /// PASID (scalable mode).
        pasid: Option<u32>,
    },
    /// `[iova, iova + size)` is no longer mapped.
    Unmap {
        /// Requester.
        sid: u16,
        /// PASID (scalable mode).
        pasid: Option<u32>,
        /// Start.
        iova: u64,
        /// Length.
        size: u64,
    },
}

/// Everything the unit tells its observers.
#[derive(Clone, Debug, PartialEq)]
pub enum VtdEvent {
    /// The guest wrote a register (every MMIO write, as the guest made it).
    RegisterWrite {
        /// Offset from the unit's base.
        offset: u64,
        /// 4 or 8.
        size: u8,
        /// Value written.
        value: u64,
    },
    /// SRTP latched a root table (also on a re-latch with an unchanged value).
    RootTableLatched {
        /// The root table and its mode.
        root: RootTable,
        /// Whether it differs from the previous one.
        changed: bool,
    },
    /// GSTS.TES changed.
    TranslationEnabled(bool),
    /// GSTS.QIES changed.
    QueuedInvalidationEnabled(bool),
    /// GSTS.IRES changed.
    InterruptRemappingEnabled(bool),
    /// SIRTP latched an interrupt-remapping table.
    InterruptTableLatched {
        /// Table base.
        base: u64,
        /// Number of entries.
        entries: u32,
        /// Extended interrupt mode.
        eime: bool,
    },
    /// An invalidation was carried out (decoded scope).
    Invalidation {
        /// Queue or register.
        source: InvalidationSource,
        /// The descriptor (register-based requests are expressed as the equivalent descriptor).
        desc: InvDesc,
    },
    /// The queue stopped on an error (FSTS.IQE), with IQERCD.IQEI.
    QueueError {
        /// Slot of the offending descriptor (IQH).
        head: u32,
        /// IQERCD.IQEI.
        iqei: u8,
    },
    /// A wait descriptor completed.
    WaitCompleted {
        /// Status address written, if SW.
        status_addr: Option<u64>,
        /// ICS.IWC raised.
        interrupt: bool,
    },
    /// A DMA translation fault.
    DmaFault {
        /// The fault.
        fault: Fault,
        /// What became of it.
        disposition: FaultDisposition,
    },
    /// An interrupt-remapping fault.
    InterruptFault {
        /// The fault.
        fault: IrFault,
        /// What became of it.
        disposition: FaultDisposition,
    },
    /// A mapping change for a watched device in caching mode.
    Shadow(ShadowEvent),
    /// A device's page request was written into the guest's page request queue.
    PageRequestQueued {
        /// The request.
        request: crate::prq::PageRequest,
        /// Descriptor slot it occupies.
        slot: u32,
    },
    /// A page group response for a device: from the guest's page group response descriptor,
    /// or generated by the unit for a request it dropped. Whoever delivers the device's page
    /// requests (vtd-accel for a passthrough device) forwards it to the device.
    PageGroupResponse(crate::prq::PageGroupResponseEvent),
    /// The unit was reset: translation off, no root or interrupt table latched, caches empty.
    Reset,
}

/// Something that wants to know what the unit does.
///
/// An observer may call back into the unit. Events its own calls cause are delivered right
/// after the event it is handling, in the same delivery: an observer that answers every event
/// with a call producing another event of the same kind (e.g. a DMA that faults on each fault)
/// never lets the delivery end, so it must bound such chains itself.
///
/// A panic in `on_event` is caught and logged: the other observers still get the event, the
/// unit goes on, and the observer stays subscribed (see the `delivery` module of this crate).
pub trait VtdObserver: Send + Sync {
    /// Called after the unit released its lock, in the order events happened.
    fn on_event(&self, event: &VtdEvent);
}

/// The list of observers.
#[derive(Default)]
pub struct EventBus {
    observers: RwLock<Vec<Arc<dyn VtdObserver>>>,
    any: AtomicBool,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("observers", &self.len())
            .finish()
    }
}

impl EventBus {
    /// Adds an observer.
    pub fn subscribe(&self, observer: Arc<dyn VtdObserver>) {
        let mut list = self.observers.write();
        list.push(observer);
        self.any.store(true, Ordering::Release);
    }

    /// Removes an observer (by identity).
    pub fn unsubscribe(&self, observer: &Arc<dyn VtdObserver>) {
        let mut list = self.observers.write();
        list.retain(|o| !Arc::ptr_eq(o, observer));
        self.any.store(!list.is_empty(), Ordering::Release);
    }

    /// Number of observers.
    pub fn len(&self) -> usize {
        self.observers.read().len()
    }

    /// Whether anyone listens.
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }

    /// Delivers events to every observer, and to `tracing`. An observer that panics is logged
    /// and skipped for that event; it stays subscribed.
    pub fn publish(&self, events: &[VtdEvent]) {
        for e in events {
            tracing::trace!(target: "vtd::event", event = ?e);
        }
        if self.is_empty() || events.is_empty() {
            return;
        }
        let list = self.observers.read().clone();
        for e in events {
            for o in &list {
                // One observer's panic must neither hide the event from the others nor stop
                // the unit (see `crate::delivery`).
                crate::delivery::contain_panic("observer", || o.on_event(e));
            }
        }
    }
}

/// An observer that keeps every event (tests, the inspector's history).
#[derive(Debug, Default)]
pub struct EventLog {
    events: Mutex<Vec<VtdEvent>>,
}

impl EventLog {
    /// Takes the events seen so far.
    pub fn take(&self) -> Vec<VtdEvent> {
        std::mem::take(&mut *self.events.lock())
    }
}

impl VtdObserver for EventLog {
    fn on_event(&self, event: &VtdEvent) {
        self.events.lock().push(event.clone());
    }
}
