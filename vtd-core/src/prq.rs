//! Page requests (ECAP.PRS, VT-d spec 7.5): the unit writes page request descriptors into the
//! guest's page request queue, raises the page request event, and forwards the guest's page
//! group responses (invalidation-queue type 9) to whoever delivers responses to the device.
//!
//! # Who raises requests, who receives responses
//! A device with PRI (a passthrough device whose host IOMMU reports I/O page faults, or an
//! emulated PRI-capable device) sends page requests through [`VtdUnit::page_request`]. The
//! guest answers a group with a page group response descriptor; the unit publishes it as
//! [`VtdEvent::PageGroupResponse`] and the observer that owns the device (vtd-accel) forwards
//! it to the host. Responses the unit generates itself (below) are published the same way, so
//! the device side has exactly one place to listen.
//!
//! # Why the behaviour is what it is
//! - **Event**: the page request event is raised when PRS goes from clear to non-zero: a request
//!   that ends a group sets PPR (spec 11.4.11.5, PECTL.IP: "a page group request with Last Page
//!   in Group Set was added ... resulting in hardware setting PPR"; with PPR or PRO already set
//!   it is no new condition, as QEMU hw/i386/intel_iommu.c `vtd_generate_page_request_event`
//!   also checks). Requests that do not end a group are queued without an interrupt: nothing
//!   can be answered before the last page arrives. (QEMU sets PPR for every request; Linux
//!   drivers/iommu/intel/prq.c `prq_event_thread` processes PQH..PQT either way.) PECTL.IM/IP
//!   behave as FECTL's: masked, IP stays set and unmasking sends the MSI; clearing PPR and PRO
//!   clears IP (QEMU `vtd_handle_prs_write`).
//! - **Overflow**: the queue is full when PQT + 1 == PQH. The request is dropped and PRS.PRO
//!   set (raising the event if PRS was clear); while PRO stays set every request is dropped
//!   (QEMU `vtd_pri_request_page`: "no action ... to report a fault"). A dropped request that
//!   ends a group is answered by the unit with Success: otherwise the device would wait
//!   forever for a group the guest never saw, and Success makes it retry its translation and
//!   request the page again once the guest has drained the queue. Linux expects exactly this:
//!   after an overflow it discards its partial groups because "last page faults in a group may
//!   have been lost" (drivers/iommu/io-pgfault.c `iopf_queue_discard_partial`) and answers none
//!   of them; the RISC-V IOMMU specification, modelled on the same protocol, makes the
//!   auto-response Success explicit. QEMU responds to nothing here; a QEMU device would hang.
//! - **Blocked requests**: a request from a device whose scalable-mode context entry does not
//!   allow page requests (PRE = 0) is a fault, reason 0x47 (spec 7.1.3, SCT.8), recorded unless
//!   FPD; while translation is off, no scalable root is latched or the context entry cannot be
//!   read, the request cannot be attributed to a guest that enabled page requests. Either way a
//!   request ending a group is answered Invalid Request (the device must not retry).
//! - **Responses**: VT-d forwards a valid page group response to the device whether or not it
//!   matches an outstanding group (a device that gets an unexpected PRG index just flags it,
//!   PCIe "Unexpected Page Request Group Index"). The unit still tracks outstanding groups so
//!   the event says whether the response `matched` one, which a host-side forwarder that needs
//!   a cookie per group (iommufd) relies on. The tracking is bounded ([`MAX_OUTSTANDING_GROUPS`],
//!   oldest evicted first) because the device, not the guest, decides how many groups exist.
//! - **Queue bounds**: PQH, PQT and PQA are guest-written. Offsets beyond the configured queue
//!   wrap into it, so the unit never writes outside the 2^PQS pages the guest gave it; a queue
//!   outside RAM drops the request like an overflow (nothing could be written) without
//!   setting PRO.

use std::collections::BTreeMap;

use vtd_regs::inv::PageGroupResponse;
use vtd_regs::prq::{
    PAGE_REQUEST_SIZE, PageRequestDescError, PageRequestDescriptor, Pqa, Prs, QUEUE_OFFSET_MASK,
    ResponseCode,
};
use vtd_regs::regs::{EventControl, TranslationTableMode, offset as reg};
use vtd_tables::GuestRam;
use vtd_tables::walk::{self, AccessKind, DeviceContext, DmaRequest, Fault, StepFault};

use crate::events::VtdEvent;
use crate::irq::Msi;
use crate::regfile::RegisterFile;
use crate::unit::{State, VtdUnit};

/// Outstanding page groups the unit remembers (every requester together): one full PRG index
/// space (512) for each of 16 requester/PASID pairs. Beyond it the oldest group is forgotten;
/// a response to it is still forwarded, as unmatched.
pub const MAX_OUTSTANDING_GROUPS: usize = 8192;

/// A page request from a device (PCIe PRI "Page Request Message"), what [`VtdUnit::page_request`]
/// takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageRequest {
    /// Requester ID (bus << 8 | devfn).
    pub sid: u16,
    /// PASID of the request, if it carried one (20 bits).
    pub pasid: Option<u32>,
    /// The page: bits 11:0 are ignored.
    pub address: u64,
    /// Read access requested.
    pub read: bool,
    /// Write access requested.
    pub write: bool,
    /// Execute access requested.
    pub execute: bool,
    /// Privileged-mode access requested.
    pub privileged: bool,
    /// The last request of its group: the group can now be answered.
    pub last_in_group: bool,
    /// Page request group index (9 bits).
    pub prg_index: u16,
}

/// What became of a page request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageRequestOutcome {
    /// Written into the guest's queue at descriptor slot `slot`.
    Queued {
        /// Slot index (PQT before the write, in descriptors).
        slot: u32,
    },
    /// Dropped: the queue was full or PRS.PRO was already set.
    Overflow {
        /// The response the unit generated (Success) when the request ended its group; it is
        /// also published as [`VtdEvent::PageGroupResponse`].
        auto_response: Option<PageGroupResponseEvent>,
    },
    /// Dropped: the guest has not enabled page requests for this requester.
    Blocked {
        /// The fault recorded for it (reason 0x47 when PRE is clear), if any.
        fault: Option<Fault>,
        /// The response the unit generated (Invalid Request) when the request ended its group.
        auto_response: Option<PageGroupResponseEvent>,
    },
    /// Dropped: the page request queue lies outside guest RAM.
    QueueUnreachable,
    /// The unit does not offer page requests (ECAP.PRS clear): the request was ignored.
    Disabled,
}

/// A page request that cannot be described in a page request descriptor (a caller error,
/// nothing the guest did).
pub type PageRequestError = PageRequestDescError;

/// Who produced a page group response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseOrigin {
    /// The guest's page group response descriptor at invalidation-queue slot `index`.
    Guest {
        /// Invalidation-queue slot.
        index: u32,
    },
    /// The unit answered a request it dropped on overflow (Success).
    Overflow,
    /// The unit answered a request it blocked (Invalid Request).
    Blocked,
}

/// A page group response for the device, as observers receive it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageGroupResponseEvent {
    /// Requester ID of the device the response goes to.
    pub sid: u16,
    /// PASID, when the response carries one (PP).
    pub pasid: Option<u32>,
    /// Page request group index.
    pub prg_index: u16,
    /// The response code.
    pub code: ResponseCode,
    /// Whether an outstanding group of this requester, PASID and index was known to the unit
    /// (and is now answered).
    pub matched: bool,
    /// Guest descriptor or the unit itself.
    pub origin: ResponseOrigin,
}

/// One outstanding page group: requests were queued for it and no response answered it yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutstandingGroup {
    /// Requester ID.
    pub sid: u16,
    /// PASID of the group's requests.
    pub pasid: Option<u32>,
    /// Page request group index (9 bits).
    pub prg_index: u16,
}

/// The page request state that is not in the register image, as plain data for migration
/// (PQH, PQT, PQA, PRS and PECTL/PEDATA/PEADDR/PEUADDR are registers and travel with it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrqState {
    /// Outstanding groups, oldest first.
    pub outstanding: Vec<OutstandingGroup>,
}

/// Why [`VtdUnit::restore_prq_state`] refused a state; the unit is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrqStateError {
    /// More groups than the unit tracks.
    #[error("{0} outstanding page groups, at most {MAX_OUTSTANDING_GROUPS} are tracked")]
    TooManyGroups(usize),
    /// A group's PRG index above 9 bits or PASID above 20 bits.
    #[error("outstanding page group {0:?} does not fit the descriptor fields")]
    GroupOutOfRange(OutstandingGroup),
    /// The state has groups but the unit has no page requests.
    #[error("page request state for a unit without ECAP.PRS")]
    NotSupported,
}

/// Outstanding groups, bounded, with eviction of the oldest.
#[derive(Debug, Default)]
pub(crate) struct GroupTracker {
    by_group: BTreeMap<OutstandingGroup, u64>,
    by_age: BTreeMap<u64, OutstandingGroup>,
    next_age: u64,
}

impl GroupTracker {
    fn insert(&mut self, group: OutstandingGroup) {
        if self.by_group.contains_key(&group) {
            return;
        }
        if self.by_group.len() >= MAX_OUTSTANDING_GROUPS {
            if let Some((_, oldest)) = self.by_age.pop_first() {
                self.by_group.remove(&oldest);
            }
        }
        let age = self.next_age;
        self.next_age += 1;
        self.by_group.insert(group, age);
        self.by_age.insert(age, group);
    }

    /// Removes the group; whether it was outstanding.
    fn answer(&mut self, group: &OutstandingGroup) -> bool {
        match self.by_group.remove(group) {
            Some(age) => {
                self.by_age.remove(&age);
                true
            }
            None => false,
        }
    }

    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }

    pub(crate) fn snapshot(&self) -> PrqState {
        PrqState {
            outstanding: self.by_age.values().copied().collect(),
        }
    }
}

impl<M: GuestRam + Send + Sync> VtdUnit<M> {
    /// Delivers a device's page request to the guest (spec 7.5.1): the descriptor is written
    /// at PQT, PQT advances, and a request ending its group sets PRS.PPR and raises the page
    /// request event. See the module documentation for overflow and blocked requests.
    pub fn page_request(&self, req: &PageRequest) -> Result<PageRequestOutcome, PageRequestError> {
        let desc = PageRequestDescriptor {
            rid: req.sid,
            pasid: req.pasid,
            execute: req.execute,
            privileged: req.privileged,
            read: req.read,
            write: req.write,
            last_in_group: req.last_in_group,
            prg_index: req.prg_index,
            address: req.address & !0xfff,
        };
        let words = desc.encode()?;
        if !self.walk.ecap.prs() {
            return Ok(PageRequestOutcome::Disabled);
        }
        let _span = tracing::trace_span!("vtd.prq").entered();
        if let Some(blocked) = self.page_requests_blocked(req) {
            let fault = blocked.map(|step| self.report_dma_fault(step.into_fault(&dma_view(req))));
            let mut st = self.lock();
            let auto_response = self.auto_respond(
                &mut st,
                req,
                ResponseCode::InvalidRequest,
                ResponseOrigin::Blocked,
            );
            self.finish(st);
            return Ok(PageRequestOutcome::Blocked {
                fault,
                auto_response,
            });
        }
        let mut st = self.lock();
        let outcome = self.enqueue(&mut st, req, &words);
        self.finish(st);
        Ok(outcome)
    }

    /// Whether the guest's tables allow page requests from the requester: `None` if they do,
    /// `Some(fault)` if not, with the fault to record when there is an entry to blame.
    fn page_requests_blocked(&self, req: &PageRequest) -> Option<Option<StepFault>> {
        let root = self.latched_root();
        if !self.translation_enabled() || root.mode != TranslationTableMode::Scalable {
            return Some(None);
        }
        match walk::lookup_context(&self.mem, &self.walk, root, req.sid) {
            Ok(DeviceContext::Scalable(sc)) if sc.pre() => None,
            Ok(DeviceContext::Scalable(sc)) => Some(Some(
                StepFault::new(vtd_regs::fault::FaultReason::SmContextPageRequestDisabled)
                    .with_fpd(sc.fpd()),
            )),
            Ok(DeviceContext::Legacy(_)) => Some(None),
            Err(step) => Some(Some(step)),
        }
    }

    fn enqueue(&self, st: &mut State, req: &PageRequest, words: &[u64; 4]) -> PageRequestOutcome {
        let prs = Prs::from_bits(st.regs.get32(reg::PRS));
        if prs.pro() {
            let auto_response =
                self.auto_respond(st, req, ResponseCode::Success, ResponseOrigin::Overflow);
            return PageRequestOutcome::Overflow { auto_response };
        }
        let pqa = Pqa::from_bits(st.regs.get64(reg::PQA));
        let count = pqa.descriptor_count() as u64;
        let slot_of = |offset: u64| ((offset & QUEUE_OFFSET_MASK) / PAGE_REQUEST_SIZE) % count;
        let tail = slot_of(st.regs.get64(reg::PQT));
        let head = slot_of(st.regs.get64(reg::PQH));
        let next = (tail + 1) % count;
        if next == head {
            st.regs.set32(reg::PRS, prs.with_pro(true).into_bits());
            raise_page_request_event(&mut st.regs, &mut st.msis, prs);
            let auto_response =
                self.auto_respond(st, req, ResponseCode::Success, ResponseOrigin::Overflow);
            tracing::debug!(target: "vtd::prq", sid = req.sid, "page request queue overflow");
            return PageRequestOutcome::Overflow { auto_response };
        }
        // The base is guest-chosen: one that wraps is as unreachable as one outside RAM.
        let written = pqa
            .base()
            .checked_add(tail * PAGE_REQUEST_SIZE)
            .ok_or(())
            .and_then(|at| self.mem.write_words(at, words).map_err(|_| ()));
        if written.is_err() {
            tracing::debug!(target: "vtd::prq", base = pqa.base(), "page request queue not in RAM");
            return PageRequestOutcome::QueueUnreachable;
        }
        st.regs.set64(reg::PQT, next * PAGE_REQUEST_SIZE);
        st.prq.insert(OutstandingGroup {
            sid: req.sid,
            pasid: req.pasid,
            prg_index: req.prg_index,
        });
        if req.last_in_group {
            st.regs.set32(reg::PRS, prs.with_ppr(true).into_bits());
            raise_page_request_event(&mut st.regs, &mut st.msis, prs);
        }
        st.events.push(VtdEvent::PageRequestQueued {
            request: *req,
            slot: tail as u32,
        });
        PageRequestOutcome::Queued { slot: tail as u32 }
    }

    /// The unit's own response to a request it dropped, if the request ended its group.
    fn auto_respond(
        &self,
        st: &mut State,
        req: &PageRequest,
        code: ResponseCode,
        origin: ResponseOrigin,
    ) -> Option<PageGroupResponseEvent> {
        if !req.last_in_group {
            return None;
        }
        let group = OutstandingGroup {
            sid: req.sid,
            pasid: req.pasid,
            prg_index: req.prg_index,
        };
        let response = PageGroupResponseEvent {
            sid: req.sid,
            pasid: req.pasid,
            prg_index: req.prg_index,
            code,
            matched: st.prq.answer(&group),
            origin,
        };
        st.events.push(VtdEvent::PageGroupResponse(response));
        Some(response)
    }

    /// A page group response descriptor the queue executed (the caller checked the response
    /// code): answers the group and publishes the response for the device.
    pub(crate) fn page_group_response(
        &self,
        st: &mut State,
        desc: &PageGroupResponse,
        code: ResponseCode,
        index: u32,
    ) {
        let group = OutstandingGroup {
            sid: desc.rid,
            pasid: desc.pasid,
            prg_index: desc.prg_index,
        };
        let matched = st.prq.answer(&group);
        if !matched {
            tracing::debug!(target: "vtd::prq", ?group, "response to no outstanding page group");
        }
        st.events
            .push(VtdEvent::PageGroupResponse(PageGroupResponseEvent {
                sid: desc.rid,
                pasid: desc.pasid,
                prg_index: desc.prg_index,
                code,
                matched,
                origin: ResponseOrigin::Guest { index },
            }));
    }

    /// PRS was written: with PPR and PRO both clear, a held-back event is void (QEMU
    /// `vtd_handle_prs_write`; spec 11.4.11.5: IP clears when software services PPR).
    pub(crate) fn after_prs_write(&self, st: &mut State) {
        if st.regs.get32(reg::PRS) & 0x3 == 0 {
            let ip = EventControl::new().with_ip(true).into_bits();
            st.regs.update32(reg::PECTL, ip, 0);
        }
    }

    /// PECTL was written: unmasking with IP set delivers the held-back event (as FECTL).
    pub(crate) fn after_pectl_write(&self, st: &mut State) {
        let pectl = EventControl::from_bits(st.regs.get32(reg::PECTL));
        if !pectl.im() && pectl.ip() {
            st.regs.set32(reg::PECTL, pectl.with_ip(false).into_bits());
            let msi = page_request_msi(&st.regs);
            st.msis.push(msi);
        }
    }

    /// The outstanding page groups, as plain data for migration.
    pub fn prq_state(&self) -> PrqState {
        self.lock().prq.snapshot()
    }

    /// Restores the outstanding page groups saved by [`VtdUnit::prq_state`] (after the
    /// register image was restored).
    pub fn restore_prq_state(&self, state: &PrqState) -> Result<(), PrqStateError> {
        let tracker = GroupTracker::from_state(state, self.walk.ecap.prs())?;
        self.lock().prq = tracker;
        Ok(())
    }
}

impl GroupTracker {
    /// The tracker holding `state`'s groups, if a unit with (`prs`) or without ECAP.PRS can
    /// hold them.
    pub(crate) fn from_state(state: &PrqState, prs: bool) -> Result<Self, PrqStateError> {
        if !state.outstanding.is_empty() && !prs {
            return Err(PrqStateError::NotSupported);
        }
        if state.outstanding.len() > MAX_OUTSTANDING_GROUPS {
            return Err(PrqStateError::TooManyGroups(state.outstanding.len()));
        }
        if let Some(bad) = state
            .outstanding
            .iter()
            .find(|g| g.prg_index > 0x1ff || g.pasid.is_some_and(|p| p > 0xf_ffff))
        {
            return Err(PrqStateError::GroupOutOfRange(*bad));
        }
        let mut tracker = GroupTracker::default();
        for group in &state.outstanding {
            tracker.insert(*group);
        }
        Ok(tracker)
    }
}

/// The DMA request a blocked page request is recorded as (FRCD: requester, PASID, page,
/// write or read, privileged).
fn dma_view(req: &PageRequest) -> DmaRequest {
    let access = if req.write {
        AccessKind::Write
    } else if req.execute {
        AccessKind::Execute
    } else {
        AccessKind::Read
    };
    DmaRequest {
        pasid: req.pasid,
        privileged: req.privileged,
        ..DmaRequest::new(req.sid, req.address & !0xfff, access)
    }
}

/// Raises the page request event for a new condition unless PRS already held one: an MSI
/// through PEADDR/PEDATA when PECTL.IM is clear, else PECTL.IP is set.
fn raise_page_request_event(regs: &mut RegisterFile, msis: &mut Vec<Msi>, before: Prs) {
    if before.ppr() || before.pro() {
        return;
    }
    let pectl = EventControl::from_bits(regs.get32(reg::PECTL));
    if pectl.ip() {
        return;
    }
    if pectl.im() {
        regs.set32(reg::PECTL, pectl.with_ip(true).into_bits());
    } else {
        msis.push(page_request_msi(regs));
    }
}

fn page_request_msi(regs: &RegisterFile) -> Msi {
    Msi {
        address: (regs.get32(reg::PEUADDR) as u64) << 32 | regs.get32(reg::PEADDR) as u64,
        data: regs.get32(reg::PEDATA),
    }
}
