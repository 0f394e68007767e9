//! Interrupt wiring of the platform: device INTx lines into the IOAPIC, IOAPIC messages through
//! interrupt remapping, remapped messages to the local APICs.
//!
//! ```text
//! edu INTA# --set_intx--> IrqRouter --IoApic::set_irq--> message (RTE) --VtdUnit::remap_msi
//!     (MsiSource::IoApic)--> ApicBus::send_msi  (KVM: KVM_SIGNAL_MSI)
//! edu MSI --VtdUnit::translate/remap_msi (MsiSource::Device(rid))--> ApicBus::send_msi
//! ```
//!
//! Nothing here knows KVM: the VMM implements [`ApicBus`] with KVM_SIGNAL_MSI, tests with a
//! recorder.

use std::sync::{Arc, MutexGuard};
use vtd_core::sync::Mutex;

use vtd_core::{Msi, MsiSource, VtdUnit};
use vtd_tables::GuestRam;

use crate::ioapic::{IoApic, IoApicMessage};

/// Where a device's interrupts go: what the edu device (and any other device model) drives.
pub trait DeviceInterrupts: Send + Sync {
    /// Delivers an MSI that has already been through interrupt remapping.
    fn send_msi(&self, msi: Msi);
    /// Drives the device's INTx line (level-sensitive).
    fn set_intx(&self, asserted: bool);
}

/// The local APICs: where remapped messages are delivered.
pub trait ApicBus: Send + Sync {
    /// Delivers one message to the APICs.
    fn send_msi(&self, msi: Msi);
    /// The IOAPIC delivered `msi` for level-triggered `pin`; the EOI of its vector must come
    /// back through [`IrqRouter::eoi`]. (With KVM's split irqchip the in-kernel LAPIC only
    /// exits on EOI for vectors that a level-triggered GSI route names.)
    fn level_triggered(&self, pin: u8, msi: Msi) {
        let _ = (pin, msi);
    }
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqStats {
    /// IOAPIC messages delivered.
    pub ioapic_delivered: u64,
    /// IOAPIC messages blocked by interrupt remapping (the unit recorded the fault).
    pub ioapic_blocked: u64,
}

/// The platform's interrupt router: the IOAPIC, the remapping unit and the APIC bus.
pub struct IrqRouter<M: GuestRam + Send + Sync> {
    unit: Arc<VtdUnit<M>>,
    apic: Arc<dyn ApicBus>,
    ioapic: Mutex<IoApic>,
    stats: Mutex<IrqStats>,
}

impl<M: GuestRam + Send + Sync> std::fmt::Debug for IrqRouter<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrqRouter")
            .field("ioapic", &self.ioapic)
            .finish_non_exhaustive()
    }
}

impl<M: GuestRam + Send + Sync> IrqRouter<M> {
    /// A router with an IOAPIC in its reset state.
    pub fn new(unit: Arc<VtdUnit<M>>, apic: Arc<dyn ApicBus>) -> Self {
        Self {
            unit,
            apic,
            ioapic: Mutex::new(IoApic::new()),
            stats: Mutex::new(IrqStats::default()),
        }
    }

    fn ioapic(&self) -> MutexGuard<'_, IoApic> {
        // The IOAPIC state stays consistent across a panic elsewhere: keep using it.
        self.ioapic.lock()
    }

    /// Counters.
    pub fn stats(&self) -> IrqStats {
        *self.stats.lock()
    }

    /// The RTE of `pin`.
    pub fn rte(&self, pin: usize) -> Option<u64> {
        self.ioapic().rte(pin)
    }

    /// Guest read of the IOAPIC window (`offset` from 0xfec00000).
    pub fn ioapic_read(&self, offset: u64) -> u32 {
        self.ioapic().read(offset)
    }

    /// Guest write of the IOAPIC window.
    pub fn ioapic_write(&self, offset: u64, value: u32) {
        let out = self.ioapic().write(offset, value);
        self.deliver(out);
    }

    /// Drives IOAPIC input `pin`.
    pub fn set_irq(&self, pin: usize, level: bool) {
        let out = self.ioapic().set_irq(pin, level);
        self.deliver(out);
    }

    /// The APICs ended `vector` (a LAPIC EOI the IOAPIC must see).
    pub fn eoi(&self, vector: u8) {
        let out = self.ioapic().eoi(vector);
        self.deliver(out);
    }

    /// Sends IOAPIC messages through interrupt remapping (the IOAPIC has no requester ID the
    /// unit checks: QEMU hw/i386/intel_iommu.c) to the APICs. Called without the IOAPIC lock:
    /// the unit may raise its own fault event on the way.
    fn deliver(&self, messages: Vec<IoApicMessage>) {
        for m in messages {
            let result = self.unit.remap_msi(MsiSource::IoApic, m.address, m.data);
            let mut stats = self.stats.lock();
            match result {
                Ok(msi) => {
                    stats.ioapic_delivered += 1;
                    drop(stats);
                    if m.level {
                        self.apic.level_triggered(m.pin, msi);
                    }
                    self.apic.send_msi(msi);
                }
                // Blocked: the fault is recorded; Remote IRR stays set for a level pin until
                // the guest rewrites the RTE, as on QEMU.
                Err(_) => stats.ioapic_blocked += 1,
            }
        }
    }
}

/// A device's INTx wired to one IOAPIC pin (edu: INTA# to pin 10 on this platform).
pub struct IntxPin<M: GuestRam + Send + Sync> {
    router: Arc<IrqRouter<M>>,
    pin: usize,
}

impl<M: GuestRam + Send + Sync> std::fmt::Debug for IntxPin<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntxPin").field("pin", &self.pin).finish()
    }
}

impl<M: GuestRam + Send + Sync> IntxPin<M> {
    /// INTx of a device on IOAPIC input `pin`.
    pub fn new(router: Arc<IrqRouter<M>>, pin: usize) -> Self {
        Self { router, pin }
    }
}

impl<M: GuestRam + Send + Sync> DeviceInterrupts for IntxPin<M> {
    fn send_msi(&self, msi: Msi) {
        self.router.apic.send_msi(msi);
    }
    fn set_intx(&self, asserted: bool) {
        self.router.set_irq(self.pin, asserted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vtd_core::RecordingSink;
    use vtd_regs::VtdConfig;

    #[derive(Default)]
    struct Apics {
        sent: Mutex<Vec<Msi>>,
        level: Mutex<Vec<(u8, Msi)>>,
    }
    impl ApicBus for Apics {
        fn send_msi(&self, msi: Msi) {
            self.sent.lock().push(msi);
        }
        fn level_triggered(&self, pin: u8, msi: Msi) {
            self.level.lock().push((pin, msi));
        }
    }

    #[test]
    fn remappable_rte_goes_through_the_irte() {
        let mem: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 24)]).unwrap();
        let cfg = VtdConfig::from_qemu_props("intremap=on").unwrap();
        let unit = Arc::new(VtdUnit::new(cfg, mem, Arc::new(RecordingSink::default())).unwrap());
        let apics = Arc::new(Apics::default());
        let router = Arc::new(IrqRouter::new(unit.clone(), apics.clone()));
        // IRTE 1: vector 0x41, level (TM bit 4), destination 0, no SID check.
        let irt = 0x10_0000u64;
        vtd_tables::GuestRam::write_words(unit.memory(), irt + 16, &[1 | 1 << 4 | 0x41 << 16, 0])
            .unwrap();
        unit.write(0xb8, 8, irt | 7);
        unit.write(0x18, 4, 1 << 24);
        unit.write(0x18, 4, 1 << 25);
        // Pin 10: remappable, handle 1, level, vector 0x41.
        router.ioapic_write(0, 0x10 + 21);
        router.ioapic_write(0x10, (1 << 17) | (1 << 16));
        router.ioapic_write(0, 0x10 + 20);
        router.ioapic_write(0x10, 0x8041);
        let intx = IntxPin::new(router.clone(), 10);
        intx.set_intx(true);
        let sent = apics.sent.lock().clone();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0].data & 0x80ff,
            0x8041,
            "vector and level from the IRTE"
        );
        assert_eq!(apics.level.lock()[0].0, 10);
        router.eoi(0x41);
        assert_eq!(apics.sent.lock().len(), 2, "still asserted");
        intx.set_intx(false);
        router.eoi(0x41);
        assert_eq!(apics.sent.lock().len(), 2);
        assert_eq!(router.stats().ioapic_delivered, 2);
        // A handle past the table: blocked and recorded.
        router.ioapic_write(0, 0x10 + 21);
        router.ioapic_write(0x10, (300 << 17) | (1 << 16));
        intx.set_intx(true);
        assert_eq!(router.stats().ioapic_blocked, 1);
        assert_eq!(unit.read(0x34, 4) & 2, 2, "fault recorded");
    }
}
