//! Write-only register semantics (spec 11.2 "WO": writes are acted on, reads return 0, and
//! nothing of an earlier write survives into a later one): GCMD's persistent commands can be
//! turned off again, its one-shot commands fire once per write that sets them, and IVA holds
//! exactly the last address written.

use vtd_core::VtdEvent;
use vtd_regs::regs::offset as reg;
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_tables::walk::{AccessKind, DmaRequest};
use vtd_testkit::driver::*;

const SID: u16 = 0x08;
const DID: u16 = 3;

/// Linux's iommu_disable_translation / dmar_disable_qi / disable_irq_remapping: clear the bit
/// in its GCMD shadow, write it, wait for GSTS to follow (IOMMU_WAIT_OP panics otherwise).
#[test]
fn persistent_commands_can_be_turned_off() {
    let mut g = Guest::new("", 64);
    g.enable_qi(false);
    g.set_root(0x10_0000);
    g.enable_translation();
    g.set_interrupt_remapping(true);
    g.set_compat_format(true);
    assert!(g.unit.translation_enabled());

    g.set_compat_format(false);
    g.set_interrupt_remapping(false);
    g.set_translation(false);
    assert!(!g.unit.translation_enabled());
    g.set_queued_invalidation(false);
    let gsts = g.gsts();
    assert!(
        !gsts.tes() && !gsts.qies() && !gsts.ires() && !gsts.cfis(),
        "{gsts:?}"
    );
}

/// SRTP latches RTADDR when written as 1, and only then: a later GCMD write that does not set
/// SRTP (here: enabling translation) must not latch a root table the guest has written to
/// RTADDR but not yet committed.
#[test]
fn srtp_fires_only_when_written() {
    let mut g = Guest::new("", 64);
    g.set_root(0x10_0000);
    g.w64(reg::RTADDR, 0x20_0000);
    g.log.take();
    g.enable_translation();
    assert_eq!(
        g.unit.root_table().map(|r| r.addr),
        Some(0x10_0000),
        "root table re-latched without SRTP"
    );
    assert!(
        !g.log
            .take()
            .iter()
            .any(|e| matches!(e, VtdEvent::RootTableLatched { .. })),
        "RootTableLatched published for a GCMD write without SRTP"
    );
}

/// Register-based page-selective IOTLB invalidation (no QI, as older guests do it): each
/// invalidation covers the page whose address was written last to IVA, not the OR of every
/// address written so far.
#[test]
fn register_based_page_invalidation_uses_the_last_iva() {
    let mut g = Guest::new("", 64);
    let mem = g.mem.clone();
    let mut ctx = ContextTablesBuilder::new(&mem, &mut g.frames, false).unwrap();
    let mut pt = PageTableBuilder::new(
        &mem,
        &mut g.frames,
        PageTableFormat::SecondStage { levels: 4 },
    )
    .unwrap();
    for (iova, gpa) in [(0x1000u64, 0x300_0000u64), (0x2000, 0x300_1000)] {
        pt.map(&mut g.frames, iova, gpa, PageSize::Size4K, true, true)
            .unwrap();
    }
    ctx.set_legacy_context(&mut g.frames, SID, ContextEntry::new(pt.root(), 2, DID))
        .unwrap();
    g.set_root(ctx.rtaddr());
    g.enable_translation();
    let out = |g: &Guest, iova: u64| {
        g.unit
            .translate(&DmaRequest::new(SID, iova, AccessKind::Read))
            .unwrap()
            .output
    };
    assert_eq!(out(&g, 0x1000), 0x300_0000);
    assert_eq!(out(&g, 0x2000), 0x300_1000);
    // Both pages move; the guest invalidates them one by one through IVA/IOTLB_REG.
    for (iova, gpa) in [(0x1000u64, 0x310_0000u64), (0x2000, 0x310_1000)] {
        pt.map(&mut g.frames, iova, gpa, PageSize::Size4K, true, true)
            .unwrap();
    }
    let iva = 0xf0;
    let invalidate_page = |g: &Guest, addr: u64| {
        g.w64(iva, addr);
        g.w64(iva + 8, 1 << 63 | 3 << 60 | (DID as u64) << 32);
        assert_eq!(g.r64(iva + 8) >> 63, 0, "IVT cleared when done");
    };
    invalidate_page(&g, 0x1000);
    assert_eq!(out(&g, 0x1000), 0x310_0000);
    invalidate_page(&g, 0x2000);
    assert_eq!(
        out(&g, 0x2000),
        0x310_1000,
        "stale: the second invalidation did not cover 0x2000"
    );
}
