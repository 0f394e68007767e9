//! A userspace IOAPIC (82093AA register interface, version 0x20, 24 pins) at 0xfec00000 for a
//! split-irqchip VM (QEMU hw/intc/ioapic.c).
//!
//! Each redirection entry (RTE) turns into a message-signalled interrupt whose address and data
//! are built exactly as QEMU's `ioapic_entry_parse` builds them, so a remappable-format RTE
//! yields a remappable-format message for the interrupt-remapping unit: address
//! `0xfee00000 | RTE[63:48] << 4 | RTE[11] << 2`, data `vector | delivery mode << 8 |
//! trigger mode << 15`. This module is only the state machine; the caller sends the
//! [`IoApicMessage`]s through `VtdUnit::remap_msi(MsiSource::IoApic, ..)` and on to the APICs.
//!
//! Semantics follow QEMU hw/intc/ioapic.c: an edge-triggered pin sends on assertion while
//! unmasked; a level-triggered pin sends while asserted, unmasked and Remote IRR is clear, sets
//! Remote IRR, and sends again after the EOI of its vector if still asserted. Writes to an RTE
//! keep Remote IRR and delivery status (read-only), clear Remote IRR for edge entries, and
//! service pending pins (so unmasking an asserted level pin delivers).

/// Number of redirection entries (pins).
pub const PINS: usize = 24;
/// Guest-physical base of the register window.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Size of the register window (QEMU maps 4 KiB).
pub const IOAPIC_SIZE: u64 = 0x1000;

/// IOAPIC version register value: 24 entries (maximum index 23), version 0x20 (with the EOI
/// register at 0x40).
pub const IOAPIC_VERSION: u32 = 0x0017_0020;

const RTE_DELIVERY_STATUS: u64 = 1 << 12;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_MASK: u64 = 1 << 16;
const RTE_RO: u64 = RTE_REMOTE_IRR | RTE_DELIVERY_STATUS;

/// MMIO register offsets.
pub mod reg {
    /// IOREGSEL: index of the register IOWIN reaches.
    pub const IOREGSEL: u64 = 0x00;
    /// IOWIN: the selected register.
    pub const IOWIN: u64 = 0x10;
    /// EOI register (version 0x20): writing a vector ends it as a LAPIC EOI broadcast would.
    pub const EOI: u64 = 0x40;
}

/// An interrupt message the IOAPIC sends, before remapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApicMessage {
    /// The pin it comes from.
    pub pin: u8,
    /// MSI address built from the RTE.
    pub address: u64,
    /// MSI data built from the RTE.
    pub data: u32,
    /// Whether the RTE is level-triggered (the sender must get an EOI back).
    pub level: bool,
}

/// The IOAPIC state.
#[derive(Clone, Debug)]
pub struct IoApic {
    select: u8,
    id: u8,
    rte: [u64; PINS],
    /// Interrupt request register: asserted level pins, and edges not yet delivered.
    irr: u32,
}

impl Default for IoApic {
    fn default() -> Self {
        Self {
            select: 0,
            id: 0,
            rte: [RTE_MASK; PINS],
            irr: 0,
        }
    }
}

impl IoApic {
    /// An IOAPIC in its reset state: ID 0, every pin masked.
    pub fn new() -> Self {
        Self::default()
    }

    /// The RTE of `pin` (for tests and inspection).
    pub fn rte(&self, pin: usize) -> Option<u64> {
        self.rte.get(pin).copied()
    }

    /// MMIO read of the register window; `offset` is from [`IOAPIC_BASE`]. Registers are 32
    /// bits; other offsets read 0.
    pub fn read(&self, offset: u64) -> u32 {
        match offset {
            reg::IOREGSEL => self.select as u32,
            reg::IOWIN => self.read_indirect(self.select),
            _ => 0,
        }
    }

    fn read_indirect(&self, index: u8) -> u32 {
        match index {
            0x00 => (self.id as u32) << 24,
            0x01 => IOAPIC_VERSION,
            0x02 => 0,
            0x10..=0x3f => {
                let v = self.rte[(index as usize - 0x10) / 2];
                if index % 2 == 0 {
                    v as u32
                } else {
                    (v >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// MMIO write of a 32-bit `value`; returns the messages to send.
    pub fn write(&mut self, offset: u64, value: u32) -> Vec<IoApicMessage> {
        match offset {
            reg::IOREGSEL => self.select = value as u8,
            reg::IOWIN => match self.select {
                0x00 => self.id = ((value >> 24) & 0xf) as u8,
                index @ 0x10..=0x3f => {
                    let pin = (index as usize - 0x10) / 2;
                    let old = self.rte[pin];
                    let mut new = if index % 2 == 0 {
                        (old & !0xffff_ffff) | value as u64
                    } else {
                        (old & 0xffff_ffff) | (value as u64) << 32
                    };
                    new = (new & !RTE_RO) | (old & RTE_RO);
                    if new & RTE_LEVEL == 0 {
                        // Remote IRR has no meaning for edge entries (QEMU
                        // ioapic_fix_edge_remote_irr).
                        new &= !RTE_REMOTE_IRR;
                    }
                    self.rte[pin] = new;
                    return self.service();
                }
                _ => {}
            },
            reg::EOI => return self.eoi(value as u8),
            _ => {}
        }
        Vec::new()
    }

    /// Drives the line of `pin` to `level`; returns the messages to send. Pins past 23 are
    /// ignored.
    pub fn set_irq(&mut self, pin: usize, level: bool) -> Vec<IoApicMessage> {
        let Some(&rte) = self.rte.get(pin) else {
            return Vec::new();
        };
        let bit = 1u32 << pin;
        if rte & RTE_LEVEL != 0 {
            if level {
                self.irr |= bit;
                if rte & RTE_REMOTE_IRR == 0 {
                    return self.service();
                }
            } else {
                self.irr &= !bit;
            }
        } else if level && rte & RTE_MASK == 0 {
            // Edges on a masked pin are lost (82093AA datasheet, as QEMU).
            self.irr |= bit;
            return self.service();
        }
        Vec::new()
    }

    /// End of interrupt for `vector` (the LAPIC's EOI broadcast, KVM's IOAPIC-EOI exit, or the
    /// EOI register): clears Remote IRR of the level-triggered entries with that vector and
    /// sends again for pins still asserted.
    pub fn eoi(&mut self, vector: u8) -> Vec<IoApicMessage> {
        let mut any = false;
        for rte in &mut self.rte {
            if *rte & RTE_LEVEL != 0 && *rte as u8 == vector && *rte & RTE_REMOTE_IRR != 0 {
                *rte &= !RTE_REMOTE_IRR;
                any = true;
            }
        }
        if any { self.service() } else { Vec::new() }
    }

    /// Delivers every pending, unmasked pin (QEMU `ioapic_service`).
    fn service(&mut self) -> Vec<IoApicMessage> {
        let mut out = Vec::new();
        for pin in 0..PINS {
            let bit = 1u32 << pin;
            let rte = self.rte[pin];
            if self.irr & bit == 0 || rte & RTE_MASK != 0 {
                continue;
            }
            let level = rte & RTE_LEVEL != 0;
            if level {
                if rte & RTE_REMOTE_IRR != 0 {
                    // The guest is still handling the previous one.
                    continue;
                }
                self.rte[pin] |= RTE_REMOTE_IRR;
            } else {
                self.irr &= !bit;
            }
            out.push(message(pin as u8, rte));
        }
        out
    }
}

/// The message an RTE produces (QEMU `ioapic_entry_parse`). Bits 63:48 mean destination in
/// compatibility format and interrupt_index[14:0] plus the format bit in remappable format; bit
/// 11 is the destination mode or interrupt_index[15]. Either way they land where the
/// corresponding MSI address fields are.
pub fn message(pin: u8, rte: u64) -> IoApicMessage {
    let address = 0xfee0_0000 | ((rte >> 48) & 0xffff) << 4 | ((rte >> 11) & 1) << 2;
    let data = ((rte & 0xff) | ((rte >> 8) & 7) << 8 | ((rte >> 15) & 1) << 15) as u32;
    IoApicMessage {
        pin,
        address,
        data,
        level: rte & RTE_LEVEL != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_rte(io: &mut IoApic, pin: u8, value: u64) -> Vec<IoApicMessage> {
        io.write(reg::IOREGSEL, 0x11 + 2 * pin as u32);
        io.write(reg::IOWIN, (value >> 32) as u32);
        io.write(reg::IOREGSEL, 0x10 + 2 * pin as u32);
        io.write(reg::IOWIN, value as u32)
    }

    #[test]
    fn identity_and_reset_state() {
        let mut io = IoApic::new();
        io.write(reg::IOREGSEL, 1);
        assert_eq!(io.read(reg::IOWIN), 0x0017_0020);
        assert_eq!(io.read(reg::IOREGSEL), 1);
        io.write(reg::IOREGSEL, 0);
        io.write(reg::IOWIN, 0x0f00_0000 | 0xff);
        assert_eq!(io.read(reg::IOWIN), 0x0f00_0000);
        for pin in 0..PINS {
            assert_eq!(io.rte(pin), Some(RTE_MASK), "masked at reset");
        }
        assert!(io.set_irq(3, true).is_empty(), "masked edge is lost");
        assert!(io.set_irq(99, true).is_empty());
        assert_eq!(io.read(0x20), 0);
    }

    #[test]
    fn remappable_level_rte() {
        let mut io = IoApic::new();
        // Pin 10, level, vector 0x41, handle 1: RTE[63:49] = 1, RTE[48] = 1 (remappable).
        let rte = (1u64 << 49) | (1 << 48) | RTE_LEVEL | 0x41;
        assert!(write_rte(&mut io, 10, rte).is_empty());
        let m = io.set_irq(10, true);
        assert_eq!(
            m,
            vec![IoApicMessage {
                pin: 10,
                address: 0xfee0_0000 | 1 << 5 | 1 << 4,
                data: 0x8041,
                level: true
            }]
        );
        assert_ne!(io.rte(10).unwrap() & RTE_REMOTE_IRR, 0);
        assert!(io.set_irq(10, true).is_empty(), "Remote IRR set: coalesced");
        // The RTE's RO bits survive a rewrite.
        assert!(write_rte(&mut io, 10, rte).is_empty());
        assert_ne!(io.rte(10).unwrap() & RTE_REMOTE_IRR, 0);
        assert!(io.eoi(0x40).is_empty(), "other vector");
        assert_eq!(
            io.eoi(0x41).len(),
            1,
            "still asserted after EOI: sent again"
        );
        io.set_irq(10, false);
        assert!(io.eoi(0x41).is_empty());
        assert_eq!(io.rte(10).unwrap() & RTE_REMOTE_IRR, 0);
        // The EOI register does the same.
        io.set_irq(10, true);
        assert_eq!(io.write(reg::EOI, 0x41).len(), 1);
    }

    #[test]
    fn unmasking_an_asserted_level_pin_delivers() {
        let mut io = IoApic::new();
        write_rte(&mut io, 10, RTE_MASK | RTE_LEVEL | 0x30);
        assert!(io.set_irq(10, true).is_empty());
        let m = write_rte(&mut io, 10, RTE_LEVEL | 0x30);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].data, 0x8030);
    }

    #[test]
    fn compatibility_edge_rte() {
        let mut io = IoApic::new();
        // Destination 3, logical, lowest priority, vector 0x22, edge.
        let rte = (3u64 << 56) | (1 << 11) | (1 << 8) | 0x22;
        write_rte(&mut io, 4, rte);
        let m = io.set_irq(4, true);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].address, 0xfee0_0000 | 3 << 12 | 1 << 2);
        assert_eq!(m[0].data, 0x0122);
        assert!(!m[0].level);
        // Each assertion is an edge; nothing is left pending.
        assert_eq!(io.set_irq(4, true).len(), 1);
        assert!(io.eoi(0x22).is_empty());
    }
}
