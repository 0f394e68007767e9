//! Interrupt remapping of device MSIs and IOAPIC messages (spec 5.1), and its faults.

use vtd_core::{Msi, MsiSource};
use vtd_regs::irte::{Irte, SourceValidation};
use vtd_regs::regs::offset as reg;
use vtd_tables::GuestRam;
use vtd_testkit::driver::*;

const EDU: u16 = 0x0008;

/// A remappable-format MSI address for `handle` (spec 5.1.2.2).
fn remappable(handle: u16, shv: bool) -> u64 {
    0xfee0_0000
        | ((handle as u64 & 0x7fff) << 5)
        | 0x10
        | if shv { 0x8 } else { 0 }
        | ((handle as u64 >> 15) << 2)
}

fn setup(g: &mut Guest, entries_log2: u8) -> u64 {
    let table = g.frames.alloc(&g.mem, 1).unwrap();
    g.w64(reg::IRTA, table | (entries_log2 as u64 - 1));
    g.latch_interrupt_table();
    g.set_interrupt_remapping(true);
    table
}

fn put(g: &Guest, table: u64, index: u64, irte: Irte) {
    let (lo, hi) = irte.to_words();
    g.mem.write_words(table + index * 16, &[lo, hi]).unwrap();
}

#[test]
fn device_msi_and_ioapic_messages_are_remapped() {
    let mut g = Guest::new("", 64);
    let table = setup(&mut g, 8);
    put(
        &g,
        table,
        3,
        Irte::remapped(0x41, 1, false)
            .with_source_validation(SourceValidation::RequesterId { sid: EDU, sq: 0 }),
    );
    put(
        &g,
        table,
        4,
        Irte::remapped(0x42, 0, false).with_level_triggered(true),
    );
    let msi = g
        .unit
        .remap_msi(MsiSource::Device(EDU), remappable(3, false), 0)
        .unwrap();
    assert_eq!(
        msi,
        Msi {
            address: 0xfee0_1000,
            data: 0x4041
        }
    );
    // SHV: handle 2 + subhandle 1 = entry 3.
    let msi = g
        .unit
        .remap_msi(MsiSource::Device(EDU), remappable(2, true), 1)
        .unwrap();
    assert_eq!(msi.data & 0xff, 0x41);
    // The IOAPIC's message (RTE in remappable format, handle 4), no SID check.
    let msi = g
        .unit
        .remap_msi(MsiSource::IoApic, remappable(4, false), 0)
        .unwrap();
    assert_eq!(
        msi,
        Msi {
            address: 0xfee0_0000,
            data: 0xc042
        }
    );
    assert_eq!(g.unit.stats().interrupts_remapped, 3);
}

#[test]
fn interrupt_remapping_faults() {
    let mut g = Guest::new("", 64);
    let table = setup(&mut g, 4);
    g.w32(reg::FECTL, 0);
    put(
        &g,
        table,
        1,
        Irte::remapped(0x41, 1, false)
            .with_source_validation(SourceValidation::RequesterId { sid: 0x10, sq: 0 }),
    );
    // Index beyond the 16-entry table.
    let f = g
        .unit
        .remap_msi(MsiSource::Device(EDU), remappable(20, false), 0)
        .unwrap_err();
    assert_eq!(f.reason.code(), 0x21);
    assert_eq!(g.r64(0x220), 20 << 48, "FI carries the interrupt index");
    assert_eq!((g.r64(0x228) >> 32) as u8, 0x21);
    assert_eq!(g.sink.take().len(), 1);
    g.w32(0x22c, 0x8000_0000);
    // Not present.
    let f = g
        .unit
        .remap_msi(MsiSource::Device(EDU), remappable(2, false), 0)
        .unwrap_err();
    assert_eq!(f.reason.code(), 0x22);
    g.w32(0x22c, 0x8000_0000);
    // Source-ID verification.
    let f = g
        .unit
        .remap_msi(MsiSource::Device(EDU), remappable(1, false), 0)
        .unwrap_err();
    assert_eq!(f.reason.code(), 0x26);
    g.w32(0x22c, 0x8000_0000);
    // Compatibility format is blocked unless CFI.
    let f = g
        .unit
        .remap_msi(MsiSource::Device(EDU), 0xfee0_0000, 0x30)
        .unwrap_err();
    assert_eq!(f.reason.code(), 0x25);
    g.set_compat_format(true);
    assert_eq!(
        g.unit
            .remap_msi(MsiSource::Device(EDU), 0xfee0_0000, 0x30)
            .unwrap()
            .data,
        0x30
    );
}

#[test]
fn remapping_off_passes_messages_through() {
    let g = Guest::new("", 64);
    let msi = g
        .unit
        .remap_msi(MsiSource::Device(EDU), 0xfee0_1000, 0x31)
        .unwrap();
    assert_eq!(
        msi,
        Msi {
            address: 0xfee0_1000,
            data: 0x31
        }
    );
}
