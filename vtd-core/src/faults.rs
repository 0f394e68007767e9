//! Primary fault logging (VT-d spec 7.2.1) and the fault event (spec 7.3).

use vtd_regs::Cap;
use vtd_regs::fault::{FaultRecord, FaultRequestKind};
use vtd_regs::regs::{EventControl, FRCD_HI_F, Fsts, offset as reg};
use vtd_tables::walk::{AccessKind, Fault};

use crate::events::FaultDisposition;
use crate::irq::Msi;
use crate::regfile::RegisterFile;

/// FSTS bits that are interrupt conditions of the fault event (spec 7.3.1).
const INTERRUPT_CONDITIONS: u32 = 0b111_0011; // PFO, PPF, IQE, ICE, ITE

/// Where the next fault goes and how many records there are.
pub(crate) struct FaultState {
    next: u16,
    count: u16,
    base: u64,
}

impl FaultState {
    pub(crate) fn new(cap: Cap) -> Self {
        Self {
            next: 0,
            count: cap.fault_record_count(),
            base: cap.fault_recording_offset(),
        }
    }

    pub(crate) fn next(&self) -> u16 {
        self.next
    }

    pub(crate) fn set_next(&mut self, next: u16) {
        self.next = next % self.count;
    }

    fn hi_offset(&self, i: u16) -> u64 {
        self.base + 16 * i as u64 + 8
    }

    /// Records a fault (spec 7.2.1): nothing while PFO is set; coalesced into a pending record
    /// from the same requester; PFO when the next record is still owned by software; else
    /// written, PPF/FRI updated and the fault event raised if no condition was pending.
    pub(crate) fn record(
        &mut self,
        regs: &mut RegisterFile,
        msis: &mut Vec<Msi>,
        sid: u16,
        lo: u64,
        hi: u64,
    ) -> FaultDisposition {
        let pre = regs.get32(reg::FSTS);
        let fsts = Fsts::from_bits(pre);
        if fsts.pfo() {
            return FaultDisposition::Overflow;
        }
        let pending_same_source = (0..self.count).any(|i| {
            let h = regs.get64(self.hi_offset(i));
            h & FRCD_HI_F != 0 && h as u16 == sid
        });
        if pending_same_source {
            return FaultDisposition::Coalesced;
        }
        let index = self.next;
        if regs.get64(self.hi_offset(index)) & FRCD_HI_F != 0 {
            regs.update32(reg::FSTS, 0, Fsts::new().with_pfo(true).into_bits());
            raise_fault_event(regs, msis, pre);
            return FaultDisposition::Overflow;
        }
        regs.set64(self.hi_offset(index) - 8, lo);
        regs.set64(self.hi_offset(index), hi | FRCD_HI_F);
        self.next = (index + 1) % self.count;
        if !fsts.ppf() {
            let new = fsts.with_ppf(true).with_fri(index as u8);
            regs.set32(reg::FSTS, new.into_bits());
        }
        raise_fault_event(regs, msis, pre);
        FaultDisposition::Recorded { index }
    }

    /// Recomputes FSTS.PPF from the records' F bits (after software clears one).
    pub(crate) fn update_ppf(&self, regs: &mut RegisterFile) {
        let any = (0..self.count).any(|i| regs.get64(self.hi_offset(i)) & FRCD_HI_F != 0);
        let ppf = Fsts::new().with_ppf(true).into_bits();
        regs.update32(reg::FSTS, ppf, if any { ppf } else { 0 });
    }
}

/// Raises the fault event for a new condition unless one was already pending (spec 7.3.1):
/// an MSI through FEADDR/FEDATA when FECTL.IM is clear, else FECTL.IP is set.
pub(crate) fn raise_fault_event(regs: &mut RegisterFile, msis: &mut Vec<Msi>, pre_fsts: u32) {
    if pre_fsts & INTERRUPT_CONDITIONS != 0 {
        return;
    }
    let fectl = EventControl::from_bits(regs.get32(reg::FECTL));
    if fectl.ip() {
        return;
    }
    if fectl.im() {
        regs.set32(reg::FECTL, fectl.with_ip(true).into_bits());
    } else {
        msis.push(fault_event_msi(regs));
    }
}

pub(crate) fn fault_event_msi(regs: &RegisterFile) -> Msi {
    Msi {
        address: (regs.get32(reg::FEUADDR) as u64) << 32 | regs.get32(reg::FEADDR) as u64,
        data: regs.get32(reg::FEDATA),
    }
}

/// The FRCD words of a DMA fault (spec 10.4.14), F left for the recorder to set.
pub(crate) fn dma_record(fault: &Fault) -> (u64, u64) {
    FaultRecord {
        sid: fault.sid,
        pasid: fault.pasid,
        address: fault.address & !0xfff,
        reason: fault.reason,
        // T: reads (and execute requests, which are reads) are T1 = 1; writes 0.
        request: if fault.access.is_write() {
            FaultRequestKind::Write
        } else {
            FaultRequestKind::Read
        },
        exec: fault.access == AccessKind::Execute,
        privileged: fault.privileged,
        at: 0,
    }
    .encode()
}
