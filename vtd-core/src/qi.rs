//! Queued invalidation (VT-d spec 6.5.2), the invalidation-completion event (spec 6.5.2.9) and
//! the cache effects of every invalidation, queued or register-based.

use vtd_regs::inv::{
    ContextCacheGranularity, DescWidth, InvDesc, IotlbGranularity, PasidCacheGranularity,
    PasidIotlbGranularity, RawDesc,
};
use vtd_regs::prq::ResponseCode;
use vtd_regs::regs::{EventControl, Fsts, Gsts, Iqa, Iqercd, offset as reg};
use vtd_tables::GuestRam;
use vtd_tables::walk::DeviceContext;

use crate::cache::IotlbScope;
use crate::events::{InvalidationSource, VtdEvent};
use crate::faults::raise_fault_event;
use crate::irq::Msi;
use crate::unit::{State, VtdUnit};

/// IQERCD.IQEI values (spec 10.4.25).
pub(crate) mod iqei {
    /// The tail points beyond the queue.
    pub const INVALID_TAIL: u8 = 1;
    /// A descriptor could not be fetched (queue outside memory).
    pub const FETCH_ERROR: u8 = 2;
    /// Unknown or unsupported descriptor type.
    pub const INVALID_TYPE: u8 = 3;
    /// A reserved field is set.
    pub const RESERVED_FIELD: u8 = 4;
    /// A descriptor that needs 256-bit mode in a 128-bit queue.
    pub const INVALID_WIDTH: u8 = 5;
    /// IQT bit 4 set in 256-bit mode (tail not on a 32-byte descriptor).
    pub const MISALIGNED_TAIL: u8 = 6;
}

impl<M: GuestRam + Send + Sync> VtdUnit<M> {
    /// GCMD.QIE changed (spec 10.4.4): enabling resets the head; disabling resets it too and is
    /// refused while the queue still holds descriptors (IQH != IQT), since the spec requires
    /// software to quiesce it first and dropping descriptors silently would lose invalidations.
    pub(crate) fn set_queue_enabled(&self, st: &mut State, enable: bool) {
        let bit = Gsts::new().with_qies(true).into_bits();
        if enable {
            st.regs.update32(reg::GSTS, 0, bit);
        } else {
            if st.regs.get64(reg::IQH) != st.regs.get64(reg::IQT) & 0x7fff0 {
                tracing::warn!(target: "vtd::qi", "QIE cleared with a non-empty queue: refused");
                return;
            }
            st.regs.update32(reg::GSTS, bit, 0);
        }
        // IQH reads 0 once the queue is disabled (spec 11.4.9.1; QEMU hw/i386/intel_iommu.c
        // vtd_handle_gcmd_qie does the same), and an enabled queue starts at slot 0; a held
        // wait's mark was for the old head.
        st.regs.set64(reg::IQH, 0);
        st.wait_mark = None;
        st.events.push(VtdEvent::QueuedInvalidationEnabled(enable));
        if enable {
            self.process_queue(st, false);
        }
    }

    /// Processes descriptors from IQH up to IQT (after a tail write or IQE being cleared).
    /// Work is bounded by the queue size; the queue stops at the first bad descriptor with
    /// FSTS.IQE and IQERCD.IQEI set and IQH pointing at it.
    ///
    /// `tail_written` says whether IQT was just written: an invalid tail is an error of that
    /// write (IQEI 1 or 6); when processing resumes for another reason (IQE cleared, QIE set,
    /// a held-back wait) a tail that is still invalid just leaves the queue idle.
    pub(crate) fn process_queue(&self, st: &mut State, tail_written: bool) {
        let mut batch = Batch::default();
        self.process_descriptors(st, tail_written, &mut batch);
        batch.close(st);
    }

    fn process_descriptors(&self, st: &mut State, tail_written: bool, batch: &mut Batch) {
        let gsts = Gsts::from_bits(st.regs.get32(reg::GSTS));
        if !gsts.qies() || Fsts::from_bits(st.regs.get32(reg::FSTS)).iqe() {
            return;
        }
        let _span = tracing::trace_span!("vtd.qi").entered();
        let iqa = Iqa::from_bits(st.regs.get64(reg::IQA));
        let wide = iqa.dw() && self.walk.ecap.smts();
        let (width, size, shift) = if wide {
            (DescWidth::Bits256, 32u64, 5)
        } else {
            (DescWidth::Bits128, 16, 4)
        };
        let count = if wide {
            iqa.descriptor_count()
        } else {
            1u32 << (iqa.qs() as u32 + 8)
        };
        let tail_reg = st.regs.get64(reg::IQT);
        let mut head = ((st.regs.get64(reg::IQH) >> shift) as u32) % count;
        if wide && tail_reg & 0x10 != 0 {
            if tail_written {
                self.queue_error(st, head, iqei::MISALIGNED_TAIL);
            }
            return;
        }
        let tail = ((tail_reg & 0x7fff0) >> shift) as u32;
        if tail >= count {
            if tail_written {
                self.queue_error(st, head, iqei::INVALID_TAIL);
            }
            return;
        }
        for _ in 0..count {
            if head == tail {
                break;
            }
            // The base is guest-chosen: an address that wraps is a fetch error, like one
            // outside RAM.
            let Some(at) = iqa.base().checked_add(head as u64 * size) else {
                return self.queue_error(st, head, iqei::FETCH_ERROR);
            };
            let fetched = if wide {
                self.mem.read_words::<4>(at)
            } else {
                self.mem.read_words::<2>(at).map(|[a, b]| [a, b, 0, 0])
            };
            let Ok(words) = fetched else {
                return self.queue_error(st, head, iqei::FETCH_ERROR);
            };
            let raw = RawDesc(words);
            let desc = match InvDesc::decode(&raw, width) {
                Ok(d) => d,
                Err(e) => return self.queue_error(st, head, iqei_for(&e)),
            };
            if let Err(code) = self.validate(&desc) {
                return self.queue_error(st, head, code);
            }
            // Response codes 2-0xE are reserved (spec 6.5.2.x): a descriptor programming one
            // is invalid, not a response to forward (QEMU forwards them as Response Failure).
            let response_code = match &desc {
                InvDesc::PageGroupResponse(r) => match ResponseCode::from_bits(r.response_code) {
                    Some(code) => Some(code),
                    None => return self.queue_error(st, head, iqei::RESERVED_FIELD),
                },
                _ => None,
            };
            let source = InvalidationSource::Queue {
                index: head,
                ends_batch: false,
            };
            if let InvDesc::Wait(wait) = &desc {
                batch.close(st);
                // The guest takes the wait's completion as proof that everything before it is
                // done, including what observers do with it (invalidations forwarded to a host
                // IOMMU): hold the wait until those events were delivered. Only those: once held,
                // the wait waits for the mark fixed when they were ticketed (`wait_mark`), not
                // for batches other threads produced since, which would put it off as long as
                // they keep coming.
                if !self.publishing_here() && self.unpublished(st) {
                    st.wait_deferred = true;
                    return;
                }
                if let Some(sw) = &wait.status_write {
                    if self.mem.write(sw.addr, &sw.data.to_le_bytes()).is_err() {
                        return self.queue_error(st, head, iqei::FETCH_ERROR);
                    }
                }
                if wait.interrupt {
                    raise_completion_event(st);
                }
                st.events.push(VtdEvent::WaitCompleted {
                    status_addr: wait.status_write.as_ref().map(|s| s.addr),
                    interrupt: wait.interrupt,
                });
            } else {
                self.execute_invalidation(st, &desc, source);
                batch.opened(st);
                if let (InvDesc::PageGroupResponse(r), Some(code)) = (&desc, response_code) {
                    self.page_group_response(st, r, code, head);
                }
            }
            st.descriptors += 1;
            st.last_descriptor_type = Some(raw.type_code());
            head = (head + 1) % count;
            st.regs.set64(reg::IQH, (head as u64) << shift);
            // A held wait was at the old head (it just executed, or the head moved past it):
            // its mark must not apply to a later wait.
            st.wait_mark = None;
        }
    }

    /// Whether the unit offers what the descriptor needs (spec 6.5.2: a descriptor for a
    /// capability the unit lacks is an invalid descriptor).
    fn supports(&self, desc: &InvDesc) -> bool {
        let ecap = self.walk.ecap;
        match desc {
            InvDesc::DeviceTlb(_) | InvDesc::PasidDeviceTlb(_) => ecap.dt(),
            InvDesc::Iec(_) => ecap.ir(),
            // PASID-IOTLB and PASID-cache: 256-bit only, so decoding already needed ECAP.SMTS.
            InvDesc::PageGroupResponse(_) => ecap.prs(),
            _ => true,
        }
    }

    /// The capability-dependent checks of a decoded descriptor, as the IQEI code of the
    /// error (vtd-regs decodes the fixed format; what depends on CAP/ECAP is decided here):
    ///
    /// - a type the unit does not implement: IQEI 3;
    /// - a wait descriptor with PD (bit 7) without ECAP.PDS: PD is a reserved field there
    ///   (spec 6.5.2.8; QEMU hw/i386/intel_iommu.c `VTD_INV_DESC_WAIT_RSVD_LO` and openvmm's
    ///   intel_vtd both reserve it), IQEI 4;
    /// - a page-selective IOTLB descriptor with AM above CAP.MAMV (spec 6.5.2.3, 11.4.2):
    ///   QEMU's `vtd_process_iotlb_desc` rejects it, and Linux `qi_flush_iotlb` never sends
    ///   one (it falls back to a domain flush), IQEI 4. The PASID-based IOTLB descriptor is
    ///   exempt: spec 11.4.2 requires any defined AM to work there regardless of MAMV.
    fn validate(&self, desc: &InvDesc) -> Result<(), u8> {
        if !self.supports(desc) {
            return Err(iqei::INVALID_TYPE);
        }
        match desc {
            InvDesc::Wait(w) if w.page_drain && !self.walk.ecap.pds() => Err(iqei::RESERVED_FIELD),
            InvDesc::Iotlb(i) => match i.granularity {
                IotlbGranularity::Page { am, .. } if am > self.walk.cap.mamv() => {
                    Err(iqei::RESERVED_FIELD)
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn queue_error(&self, st: &mut State, head: u32, code: u8) {
        let pre = st.regs.get32(reg::FSTS);
        st.regs
            .update32(reg::FSTS, 0, Fsts::new().with_iqe(true).into_bits());
        let rec = Iqercd::from_bits(st.regs.get64(reg::IQERCD)).with_iqei(code);
        st.regs.set64(reg::IQERCD, rec.into_bits());
        let State { regs, msis, .. } = st;
        raise_fault_event(regs, msis, pre);
        st.events.push(VtdEvent::QueueError { head, iqei: code });
        tracing::debug!(target: "vtd::qi", head, iqei = code, "invalidation queue error");
    }

    /// Applies one invalidation to the caches and publishes it.
    pub(crate) fn execute_invalidation(
        &self,
        st: &mut State,
        desc: &InvDesc,
        source: InvalidationSource,
    ) {
        self.epoch.advance();
        match desc {
            InvDesc::ContextCache(cc) => {
                // Dropping PASID-cache entries of the same requesters too is always allowed
                // and covers guests that rely on context invalidation in scalable mode.
                let granularity = cc.granularity;
                let mut sids = Vec::new();
                self.context_cache.retain(|s, c| {
                    let hit = context_matches(&granularity, *s, c);
                    if hit {
                        sids.push(*s);
                    }
                    !hit
                });
                let global = matches!(cc.granularity, ContextCacheGranularity::Global);
                self.pasid_cache
                    .retain(|(s, _), _| !(global || sids.contains(s)));
            }
            InvDesc::Iotlb(iotlb) => {
                let scope = match iotlb.granularity {
                    IotlbGranularity::Global => IotlbScope::Global,
                    IotlbGranularity::Domain { did } => IotlbScope::Domain { did },
                    IotlbGranularity::Page { did, addr, am, .. } => {
                        let (addr, size) = page_range(addr, am);
                        IotlbScope::DomainPages { did, addr, size }
                    }
                };
                self.iotlb.invalidate(scope);
            }
            InvDesc::PasidIotlb(p) => {
                let scope = match p.granularity {
                    PasidIotlbGranularity::AllInPasid => IotlbScope::Pasid {
                        did: p.did,
                        pasid: p.pasid,
                    },
                    PasidIotlbGranularity::Page { addr, am, .. } => {
                        let (addr, size) = page_range(addr, am);
                        IotlbScope::PasidPages {
                            did: p.did,
                            pasid: p.pasid,
                            addr,
                            size,
                        }
                    }
                };
                self.iotlb.invalidate(scope);
            }
            InvDesc::PasidCache(p) => {
                let did = p.did;
                match p.granularity {
                    PasidCacheGranularity::Global => self.pasid_cache.retain(|_, _| false),
                    PasidCacheGranularity::Domain => {
                        self.pasid_cache.retain(|_, pe| pe.did() != did)
                    }
                    PasidCacheGranularity::Pasid { pasid } => self
                        .pasid_cache
                        .retain(|(_, pa), pe| !(pe.did() == did && *pa == pasid)),
                };
            }
            // No emulated device has an ATC and interrupt entries are not cached: these only
            // matter to observers (device-TLB forwarding for passthrough devices).
            InvDesc::DeviceTlb(_)
            | InvDesc::PasidDeviceTlb(_)
            | InvDesc::Iec(_)
            | InvDesc::Wait(_)
            | InvDesc::PageGroupResponse(_) => {}
        }
        // Advanced again once the caches are clean: a translation that began while they were
        // being cleaned may have used an entry about to go, and whatever it was cached under
        // (the `Iommu` adapter's chunk maps) must not outlive this invalidation.
        self.epoch.advance();
        st.events.push(VtdEvent::Invalidation {
            source,
            desc: *desc,
        });
        self.shadow_after_invalidation(st, desc);
    }

    /// FSTS was written: if no interrupt condition is left, FECTL.IP clears (spec 7.3.1); a
    /// cleared IQE lets the queue resume from IQH.
    pub(crate) fn after_fsts_write(&self, st: &mut State) {
        let fsts = st.regs.get32(reg::FSTS);
        if fsts & 0b111_0011 == 0 {
            let ip = EventControl::new().with_ip(true).into_bits();
            st.regs.update32(reg::FECTL, ip, 0);
        }
        if !Fsts::from_bits(fsts).iqe() {
            self.process_queue(st, false);
        }
    }

    /// FECTL was written: unmasking with IP set delivers the pending fault event.
    pub(crate) fn after_fectl_write(&self, st: &mut State) {
        let fectl = EventControl::from_bits(st.regs.get32(reg::FECTL));
        if !fectl.im() && fectl.ip() {
            st.regs.set32(reg::FECTL, fectl.with_ip(false).into_bits());
            let msi = crate::faults::fault_event_msi(&st.regs);
            st.msis.push(msi);
        }
    }

    /// ICS or IECTL was written (spec 6.5.2.9): clearing IWC clears IECTL.IP; unmasking with
    /// IP set delivers the pending completion event.
    pub(crate) fn after_ics_iectl_write(&self, st: &mut State) {
        let mut iectl = EventControl::from_bits(st.regs.get32(reg::IECTL));
        if st.regs.get32(reg::ICS) & 1 == 0 {
            iectl = iectl.with_ip(false);
        }
        if !iectl.im() && iectl.ip() {
            iectl = iectl.with_ip(false);
            st.msis.push(completion_msi(st));
        }
        st.regs.set32(reg::IECTL, iectl.into_bits());
    }
}

/// Whether a context-cache invalidation of `granularity` covers the cached entry of `sid`
/// (spec 6.5.2.1).
fn context_matches(granularity: &ContextCacheGranularity, sid: u16, ctx: &DeviceContext) -> bool {
    match *granularity {
        ContextCacheGranularity::Global => true,
        ContextCacheGranularity::Domain { did } => match ctx {
            DeviceContext::Legacy(ce) => ce.did() == did,
            // Scalable context entries carry no DID: a domain-selective flush covers them all.
            DeviceContext::Scalable(_) => true,
        },
        ContextCacheGranularity::Device {
            sid: target, fm, ..
        } => {
            // FM masks the low bits of the function number (spec 10.4.7).
            let mask: u16 = match fm & 3 {
                0 => 0,
                1 => 0b100,
                2 => 0b110,
                _ => 0b111,
            };
            sid & !mask == target & !mask
        }
    }
}

/// A wait descriptor with IF: ICS.IWC, then the completion MSI unless masked or already pending.
fn raise_completion_event(st: &mut State) {
    if st.regs.get32(reg::ICS) & 1 != 0 {
        return;
    }
    st.regs.update32(reg::ICS, 0, 1);
    let iectl = EventControl::from_bits(st.regs.get32(reg::IECTL));
    if iectl.im() {
        st.regs.set32(reg::IECTL, iectl.with_ip(true).into_bits());
    } else {
        let msi = completion_msi(st);
        st.msis.push(msi);
    }
}

/// The invalidation-completion event's message (IEDATA to IEUADDR:IEADDR).
fn completion_msi(st: &State) -> Msi {
    // IEADDR (0xa8) and IEUADDR (0xac) are the halves of one address (IEADDR_REG, IEUADDR_REG).
    let (address, data) = (st.regs.get64(reg::IEADDR), st.regs.get32(reg::IEDATA));
    Msi { address, data }
}

/// The naturally aligned range of 2^am pages containing `addr` (spec 6.5.2.3), as a start
/// and a length that saturates for the whole address space.
fn page_range(addr: u64, am: u8) -> (u64, u64) {
    let r = vtd_regs::inv::page_range(addr, am);
    (*r.start(), (r.end() - r.start()).saturating_add(1))
}

fn iqei_for(e: &vtd_regs::inv::DescError) -> u8 {
    use vtd_regs::inv::DescError;
    match e {
        DescError::UnknownType(_) => iqei::INVALID_TYPE,
        DescError::NeedsWideQueue(_) => iqei::INVALID_WIDTH,
        // Reserved bits set, or a reserved value in a field (granularity): IQEI 4.
        _ => iqei::RESERVED_FIELD,
    }
}

/// The queued invalidation events of one doorbell that no wait descriptor has closed yet:
/// the last one is marked `ends_batch` when a wait, the tail or an error ends the run.
#[derive(Default)]
struct Batch {
    /// Index in `State::events` of the newest `Invalidation` event from the queue.
    last: Option<usize>,
}

impl Batch {
    /// Called right after `execute_invalidation` pushed a queued `Invalidation` event.
    fn opened(&mut self, st: &State) {
        self.last = st
            .events
            .iter()
            .rposition(|e| matches!(e, VtdEvent::Invalidation { .. }));
    }

    /// A wait descriptor, the tail or an error ends the batch.
    fn close(&mut self, st: &mut State) {
        if let Some(i) = self.last.take() {
            if let Some(VtdEvent::Invalidation {
                source: InvalidationSource::Queue { ends_batch, .. },
                ..
            }) = st.events.get_mut(i)
            {
                *ends_batch = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vtd_regs::VtdConfig;
    use vtd_regs::inv::{StatusWrite, WaitInv};
    use vtd_regs::regs::Gcmd;

    use super::*;
    use crate::RecordingSink;
    use crate::cache::tests::bounded;

    /// Linux's `qi_submit_sync` on a unit nobody observes: the wait it spins on completes
    /// within the doorbell (IQT write) that submitted it, with its status written (spec
    /// 6.5.2.8) and the queue idle, however the unit orders completion behind publication.
    #[test]
    fn a_wait_completes_within_its_doorbell() {
        bounded(|| {
            let mem: GuestMemoryMmap<()> =
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
            let cfg = VtdConfig::from_qemu_props("").unwrap();
            let unit = VtdUnit::new(cfg, mem, Arc::new(RecordingSink::default())).unwrap();
            let (queue, status) = (0x1_0000, 0x2_0000);
            unit.write(reg::IQA, 8, Iqa::new().with_iqa(queue >> 12).into_bits());
            unit.write(reg::GCMD, 4, Gcmd::new().with_qie(true).into_bits().into());
            for (slot, data) in [(0u64, 0x55), (1, 0x56)] {
                let wait = InvDesc::Wait(WaitInv {
                    status_write: Some(StatusWrite { addr: status, data }),
                    interrupt: false,
                    fence: true,
                    page_drain: false,
                    ignored: Default::default(),
                });
                let raw = wait.encode(DescWidth::Bits128).unwrap();
                unit.memory()
                    .write_words(queue + slot * 16, &raw.0[..2])
                    .unwrap();
                unit.write(reg::IQT, 8, (slot + 1) * 16);
                assert_eq!(unit.memory().read_u64(status).unwrap(), u64::from(data));
                assert_eq!(unit.read(reg::IQH, 8), (slot + 1) * 16);
            }
        });
    }
}
