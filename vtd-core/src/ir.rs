//! Interrupt remapping (VT-d spec chapter 5): the latched table and MSI remapping.

use vtd_regs::fault::{FaultReason, FaultRecord};
use vtd_regs::irte::{InterruptRequest, Irte, RemappableMsi};
use vtd_regs::regs::{Gsts, Irta, offset as reg};
use vtd_tables::GuestRam;

use crate::events::{FaultDisposition, IrFault, VtdEvent};
use crate::irq::Msi;
use crate::unit::{State, VtdUnit};

/// Who sent an interrupt message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsiSource {
    /// A PCI function: its requester ID is checked against the IRTE's SVT/SQ/SID.
    Device(u16),
    /// The IOAPIC, which sends without a requester ID QEMU would check (platform facts):
    /// source-ID verification is skipped.
    IoApic,
}

/// The interrupt-remapping table latched at SIRTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IrTable {
    pub(crate) base: u64,
    pub(crate) entries: u32,
    pub(crate) eime: bool,
}

impl IrTable {
    pub(crate) fn from_irta(raw: u64) -> Self {
        let irta = Irta::from_bits(raw);
        Self {
            base: irta.base(),
            entries: irta.entry_count(),
            eime: irta.eime(),
        }
    }
}

impl<M: GuestRam + Send + Sync> VtdUnit<M> {
    /// SIRTP (spec 10.4.4): latch IRTA and report IRTPS.
    pub(crate) fn latch_interrupt_table(&self, st: &mut State) {
        let raw = st.regs.get64(reg::IRTA);
        let mut table = IrTable::from_irta(raw);
        if !self.walk.ecap.eim() {
            // EIME is reserved without ECAP.EIM (spec 10.4.29).
            table.eime = false;
        }
        st.ir = Some((table, raw));
        st.regs
            .update32(reg::GSTS, 0, Gsts::new().with_irtps(true).into_bits());
        st.events.push(VtdEvent::InterruptTableLatched {
            base: table.base,
            entries: table.entries,
            eime: table.eime,
        });
    }

    /// Remaps an MSI (spec 5.1): unchanged while remapping is off; a compatibility-format
    /// message passes only with GSTS.CFIS in xAPIC mode; a remappable message is looked up in
    /// the IRTE its handle selects. A fault is recorded (unless the IRTE's FPD suppresses it)
    /// and the message is blocked.
    pub fn remap_msi(&self, source: MsiSource, address: u64, data: u32) -> Result<Msi, IrFault> {
        let mut st = self.lock();
        let gsts = Gsts::from_bits(st.regs.get32(reg::GSTS));
        if !gsts.ires() {
            drop(st);
            return Ok(Msi { address, data });
        }
        let table = st.ir.map(|(t, _)| t).unwrap_or(IrTable {
            base: 0,
            entries: 2,
            eime: false,
        });
        let result = self.remap_locked(&table, gsts, source, address, data);
        match result {
            Ok(msi) => {
                drop(st);
                self.interrupts_remapped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(msi)
            }
            Err(fault) => {
                let disposition = if fault.suppressed {
                    FaultDisposition::Suppressed
                } else {
                    // FI holds the interrupt index in bits 63:48 (spec 10.4.14).
                    let (lo, hi) =
                        FaultRecord::for_interrupt(fault.sid, fault.index, fault.reason).encode();
                    let State {
                        regs, faults, msis, ..
                    } = &mut *st;
                    faults.record(regs, msis, fault.sid, lo, hi)
                };
                st.events
                    .push(VtdEvent::InterruptFault { fault, disposition });
                self.finish(st);
                Err(fault)
            }
        }
    }

    fn remap_locked(
        &self,
        table: &IrTable,
        gsts: Gsts,
        source: MsiSource,
        address: u64,
        data: u32,
    ) -> Result<Msi, IrFault> {
        let sid = match source {
            MsiSource::Device(sid) => sid,
            // QEMU's IOAPIC sends with no requester ID (0xffff); faults record that.
            MsiSource::IoApic => 0xffff,
        };
        let fault = |reason: FaultReason, index: u16, suppressed: bool| IrFault {
            reason,
            sid,
            index,
            suppressed: suppressed && reason.is_qualified(),
        };
        let msi = match RemappableMsi::decode(address, data) {
            Ok(InterruptRequest::Compatibility { .. }) => {
                // Compatibility format passes only with CFIS in xAPIC mode (spec 5.1.2.1).
                if gsts.cfis() && !table.eime {
                    return Ok(Msi { address, data });
                }
                return Err(fault(FaultReason::IrCompatibilityBlocked, 0, false));
            }
            Ok(InterruptRequest::Remappable(msi)) => msi,
            Err(_) => return Err(fault(FaultReason::IrRequestReserved, 0, false)),
        };
        let index = msi.interrupt_index();
        let index16 = index as u16;
        if index >= table.entries {
            return Err(fault(FaultReason::IrIndexOutOfBounds, index16, false));
        }
        let words = table
            .base
            .checked_add(index as u64 * 16)
            .and_then(|at| self.mem.read_words::<2>(at).ok());
        let Some([lo, hi]) = words else {
            return Err(fault(FaultReason::IrTableAccessError, index16, false));
        };
        let irte = Irte::decode(lo, hi);
        if !irte.present() {
            return Err(fault(
                FaultReason::IrteNotPresent,
                index16,
                irte.low.fault_processing_disable(),
            ));
        }
        if let Err(reason) = irte.validate(table.eime) {
            return Err(fault(reason, index16, irte.low.fault_processing_disable()));
        }
        if let MsiSource::Device(sid) = source {
            if !irte.source_id_matches(sid) {
                return Err(fault(
                    FaultReason::IrSourceIdInvalid,
                    index16,
                    irte.low.fault_processing_disable(),
                ));
            }
        }
        Ok(irte_to_msi(&irte, table.eime))
    }
}

/// The message an IRTE describes, in the format the platform's APICs accept: destination in
/// address bits 19:12 (xAPIC) or split across address 19:12 and the upper address (x2APIC).
fn irte_to_msi(irte: &Irte, eime: bool) -> Msi {
    let dest = irte.destination(eime);
    let mut address = 0xfee0_0000u64 | ((dest as u64 & 0xff) << 12);
    if eime {
        address |= (dest as u64 & 0xffff_ff00) << 32;
    }
    address |=
        (irte.low.redirection_hint() as u64) << 3 | (irte.low.logical_destination() as u64) << 2;
    // Bit 14 (level: assert) is always set, as QEMU's remapped messages show in the Linux
    // trace (`-> (addr 0xfee00008, data 0x4030)` for an edge-triggered IRTE); it is a don't-care
    // for edge-triggered interrupts.
    let data = irte.vector() as u32
        | (irte.low.delivery_mode() as u32) << 8
        | 1 << 14
        | (irte.low.level_triggered() as u32) << 15;
    Msi { address, data }
}
