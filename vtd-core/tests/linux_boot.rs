//! What Linux 6.12 does on boot, replayed against the unit, with DMA checked end to end.

use vtd_core::{FaultDisposition, Msi, TranslateError, VtdEvent};
use vtd_regs::inv::*;
use vtd_regs::regs::offset as reg;
use vtd_tables::GuestRam;
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_tables::walk::{AccessKind, DmaRequest, TranslationKind};
use vtd_testkit::driver::*;

/// virtio-blk at 00:03.0 in the trace.
const SID: u16 = 0x18;
const DID: u16 = 5;

fn dma_write(g: &Guest, iova: u64, bytes: &[u8]) -> Result<u64, TranslateError> {
    let t = g
        .unit
        .translate(&DmaRequest::new(SID, iova, AccessKind::Write))?;
    g.mem.write(t.output, bytes).unwrap();
    Ok(t.output)
}

fn dma_read(g: &Guest, iova: u64, len: usize) -> Result<Vec<u8>, TranslateError> {
    let t = g
        .unit
        .translate(&DmaRequest::new(SID, iova, AccessKind::Read))?;
    let mut buf = vec![0; len];
    g.mem.read(t.output, &mut buf).unwrap();
    Ok(buf)
}

fn p_iotlb_page(addr: u64) -> InvDesc {
    InvDesc::PasidIotlb(PasidIotlbInv {
        did: DID,
        pasid: 0,
        granularity: PasidIotlbGranularity::Page {
            addr,
            am: 0,
            ih: true,
        },
        ignored: Default::default(),
    })
}

#[test]
fn scalable_first_stage_boot_and_dma() {
    let mut g = Guest::new("x-scalable-mode=on,x-flts=on", 64);
    let mem = g.mem.clone();
    // intel_iommu_init: QI first (256-bit descriptors since ECAP.SMTS).
    g.enable_qi(true);
    // Tables: scalable root/context, PASID directory, PASID 0 first-stage entry, FS table.
    let mut ctx = ContextTablesBuilder::new(&mem, &mut g.frames, true).unwrap();
    let mut pasids = PasidTablesBuilder::new(&mem, &mut g.frames, 0).unwrap();
    let mut fs = PageTableBuilder::new(
        &mem,
        &mut g.frames,
        PageTableFormat::FirstStage { levels: 4 },
    )
    .unwrap();
    // Linux's IOVA allocator hands out pages downward from 4 GiB.
    let pages = [
        (0xffff_f000u64, 0x300_0000u64),
        (0xffff_e000, 0x300_5000),
        (0xffff_d000, 0x2ff_0000),
    ];
    for (iova, gpa) in pages {
        fs.map(&mut g.frames, iova, gpa, PageSize::Size4K, true, true)
            .unwrap();
    }
    pasids
        .set_entry(
            &mut g.frames,
            0,
            PasidEntry::first_stage(fs.root(), false, DID, 2),
        )
        .unwrap();
    ctx.set_scalable_context(&mut g.frames, SID, pasids.context_entry())
        .unwrap();
    g.set_root(ctx.rtaddr());
    assert_eq!(g.r64(reg::RTADDR), ctx.rtaddr());
    g.submit(&[
        InvDesc::ContextCache(ContextCacheInv {
            granularity: ContextCacheGranularity::Global,
            ignored: Default::default(),
        }),
        InvDesc::Iotlb(IotlbInv {
            granularity: IotlbGranularity::Global,
            drain_read: true,
            drain_write: true,
            ignored: Default::default(),
        }),
    ]);
    g.enable_translation();

    // DMA through the first stage: writes land where the PTEs say.
    for (i, (iova, gpa)) in pages.iter().enumerate() {
        let out = dma_write(&g, iova + 0x10, &[i as u8 + 1; 16]).unwrap();
        assert_eq!(out, gpa + 0x10);
        assert_eq!(
            dma_read(&g, iova + 0x10, 16).unwrap(),
            vec![i as u8 + 1; 16]
        );
        let mut b = [0u8; 16];
        g.mem.read(gpa + 0x10, &mut b).unwrap();
        assert_eq!(b, [i as u8 + 1; 16]);
    }
    // A and D bits: A at every level, D on the written leaf.
    let slot = fs.leaf_slot(pages[0].0, PageSize::Size4K).unwrap().unwrap();
    let leaf = FirstStagePte::from_bits(g.mem.read_u64(slot).unwrap());
    assert!(leaf.accessed() && leaf.dirty());
    let top = FirstStagePte::from_bits(
        g.mem
            .read_u64(fs.root() + ((pages[0].0 >> 39) & 0x1ff) * 8)
            .unwrap(),
    );
    assert!(top.accessed());

    // Strict mode unmap: clear the PTE, page-selective PASID-IOTLB invalidation with IH.
    fs.unmap(pages[1].0, PageSize::Size4K).unwrap();
    g.submit(&[p_iotlb_page(pages[1].0)]);
    g.w32(reg::FECTL, 0); // unmask fault events
    let err = dma_read(&g, pages[1].0, 4).unwrap_err();
    let TranslateError::Fault(f) = err else {
        panic!("{err:?}")
    };
    assert_eq!(f.reason.code(), 0x71, "first-stage entry not present");
    // Recorded in FRCD0 with the fault MSI.
    let fsts = g.r32(reg::FSTS);
    assert_eq!(fsts & 0x2, 0x2, "PPF");
    let hi = g.r64(0x228);
    assert_eq!(hi >> 63, 1, "F");
    assert_eq!(hi as u16, SID);
    assert_eq!((hi >> 32) as u8, 0x71);
    assert_eq!(g.r64(0x220), pages[1].0);
    assert_eq!(
        g.sink.take(),
        vec![Msi {
            address: 0,
            data: 0
        }],
        "fault event with FEADDR/FEDATA = 0"
    );
    // Other pages still translate (only the invalidated page was dropped).
    assert!(dma_read(&g, pages[0].0, 4).is_ok());
    // Every page-selective invalidation was seen as such on the bus.
    let invs: Vec<_> = g
        .log
        .take()
        .into_iter()
        .filter_map(|e| match e {
            VtdEvent::Invalidation {
                desc: InvDesc::PasidIotlb(p),
                ..
            } => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(invs.len(), 1);
    assert_eq!(
        invs[0].granularity,
        PasidIotlbGranularity::Page {
            addr: pages[1].0,
            am: 0,
            ih: true
        }
    );
    let stats = g.unit.stats();
    assert!(stats.iotlb.hits >= 3, "{stats:?}");
    assert_eq!(stats.dma_faults, 1);
}

#[test]
fn legacy_second_stage_boot_and_dma() {
    let mut g = Guest::new("", 64);
    let mem = g.mem.clone();
    g.enable_qi(false);
    let mut ctx = ContextTablesBuilder::new(&mem, &mut g.frames, false).unwrap();
    let mut ss = PageTableBuilder::new(
        &mem,
        &mut g.frames,
        PageTableFormat::SecondStage { levels: 4 },
    )
    .unwrap();
    ss.map(
        &mut g.frames,
        0xffff_f000,
        0x300_0000,
        PageSize::Size4K,
        true,
        true,
    )
    .unwrap();
    ss.map(
        &mut g.frames,
        0x4000_0000,
        0x200_0000,
        PageSize::Size2M,
        true,
        false,
    )
    .unwrap();
    ctx.set_legacy_context(&mut g.frames, SID, ContextEntry::new(ss.root(), 2, DID))
        .unwrap();
    g.set_root(ctx.rtaddr());
    g.submit(&[
        InvDesc::ContextCache(ContextCacheInv {
            granularity: ContextCacheGranularity::Global,
            ignored: Default::default(),
        }),
        InvDesc::Iotlb(IotlbInv {
            granularity: IotlbGranularity::Global,
            drain_read: false,
            drain_write: false,
            ignored: Default::default(),
        }),
    ]);
    g.enable_translation();
    assert_eq!(dma_write(&g, 0xffff_f008, b"legacy!!").unwrap(), 0x300_0008);
    assert_eq!(dma_read(&g, 0xffff_f008, 8).unwrap(), b"legacy!!");
    let t = g
        .unit
        .translate(&DmaRequest::new(SID, 0x4012_3456, AccessKind::Read))
        .unwrap();
    assert_eq!(
        (t.output, t.page_size, t.kind),
        (0x212_3456, 2 << 20, TranslationKind::LegacySecondStage)
    );
    // Writing a read-only 2 MiB page faults with reason 5.
    let TranslateError::Fault(f) = dma_write(&g, 0x4000_0000, b"x").unwrap_err() else {
        panic!()
    };
    assert_eq!((f.reason.code(), f.address), (0x5, 0x4000_0000));
    // Remap the 4 KiB page and invalidate page-selectively: the next DMA sees the new page.
    ss.map(
        &mut g.frames,
        0xffff_f000,
        0x310_0000,
        PageSize::Size4K,
        true,
        true,
    )
    .unwrap();
    g.submit(&[InvDesc::Iotlb(IotlbInv {
        granularity: IotlbGranularity::Page {
            did: DID,
            addr: 0xffff_f000,
            am: 0,
            ih: false,
        },
        drain_read: false,
        drain_write: false,
        ignored: Default::default(),
    })]);
    assert_eq!(dma_write(&g, 0xffff_f000, b"y").unwrap(), 0x310_0000);
}

#[test]
fn legacy_register_based_invalidation() {
    let mut g = Guest::new("", 64);
    let mem = g.mem.clone();
    let root = g.legacy_one_page(SID, DID, 3, 0x5000, 0x300_0000);
    let mut ss = PageTableBuilder::at(&mem, root, PageTableFormat::SecondStage { levels: 3 });
    assert_eq!(dma_write(&g, 0x5000, b"a").unwrap(), 0x300_0000);
    ss.map(
        &mut g.frames,
        0x5000,
        0x301_0000,
        PageSize::Size4K,
        true,
        true,
    )
    .unwrap();
    // IVA = page, IOTLB = IVT | page granularity | DID (spec 10.4.8).
    g.w64(0xf0, 0x5000);
    g.w64(0xf8, 1 << 63 | 3 << 60 | (DID as u64) << 32);
    let iotlb = g.r64(0xf8);
    assert_eq!(iotlb >> 63, 0, "IVT cleared when done");
    assert_eq!((iotlb >> 57) & 3, 3, "IAIG reports page granularity");
    assert_eq!(dma_write(&g, 0x5000, b"b").unwrap(), 0x301_0000);
    // Context-cache invalidation, device-selective.
    g.w64(
        reg::CCMD,
        1 << 63 | 3 << 61 | (SID as u64) << 16 | DID as u64,
    );
    let ccmd = g.r64(reg::CCMD);
    assert_eq!((ccmd >> 63, (ccmd >> 59) & 3), (0, 3));
    // An invalid granularity is reported as CAIG 0.
    g.w64(reg::CCMD, 1 << 63);
    assert_eq!((g.r64(reg::CCMD) >> 59) & 3, 0);
}

#[test]
fn fault_records_pfo_coalescing_and_event_masking() {
    let mut g = Guest::new("", 64);
    let mem = g.mem.clone();
    let ctx = ContextTablesBuilder::new(&mem, &mut g.frames, false).unwrap();
    g.set_root(ctx.rtaddr());
    g.enable_translation();
    // Masked: the event stays pending in FECTL.IP.
    g.w32(reg::FEDATA, 0x21);
    g.w32(reg::FEADDR, 0xfee0_0000);
    let TranslateError::Fault(f) = dma_read(&g, 0x1000, 4).unwrap_err() else {
        panic!()
    };
    assert_eq!(f.reason.code(), 0x1, "root entry not present");
    assert_eq!(g.r32(reg::FECTL), 0xc000_0000, "IM and IP");
    assert!(g.sink.take().is_empty());
    // Same requester again: coalesced (no PFO).
    let _ = dma_read(&g, 0x2000, 4);
    assert_eq!(g.r32(reg::FSTS) & 1, 0);
    // Another requester: the only record is busy -> PFO.
    let other = g
        .unit
        .translate(&DmaRequest::new(0x20, 0x1000, AccessKind::Write));
    assert!(other.is_err());
    assert_eq!(g.r32(reg::FSTS) & 0x3, 0x3, "PFO and PPF");
    // Unmasking delivers the pending event once.
    g.w32(reg::FECTL, 0);
    assert_eq!(
        g.sink.take(),
        vec![Msi {
            address: 0xfee0_0000,
            data: 0x21
        }]
    );
    assert_eq!(g.r32(reg::FECTL), 0);
    // Software clears the record and PFO, as Linux does.
    g.w32(0x22c, 0x8000_0000);
    g.w32(reg::FSTS, 0x1);
    assert_eq!(g.r32(reg::FSTS) & 0x3, 0);
    // The next fault is recorded again and signalled.
    let _ = g
        .unit
        .translate(&DmaRequest::new(0x20, 0x3000, AccessKind::Write));
    let hi = g.r64(0x228);
    assert_eq!((hi as u16, (hi >> 62) & 1), (0x20, 0), "T = 0 for a write");
    assert_eq!(g.sink.take().len(), 1);
    let dispositions: Vec<_> = g
        .log
        .take()
        .into_iter()
        .filter_map(|e| match e {
            VtdEvent::DmaFault { disposition, .. } => Some(disposition),
            _ => None,
        })
        .collect();
    assert_eq!(
        dispositions,
        vec![
            FaultDisposition::Recorded { index: 0 },
            FaultDisposition::Coalesced,
            FaultDisposition::Overflow,
            FaultDisposition::Recorded { index: 0 },
        ]
    );
}

#[test]
fn fpd_suppresses_recording() {
    let mut g = Guest::new("", 64);
    let mem = g.mem.clone();
    let mut ctx = ContextTablesBuilder::new(&mem, &mut g.frames, false).unwrap();
    let ss = PageTableBuilder::new(
        &mem,
        &mut g.frames,
        PageTableFormat::SecondStage { levels: 4 },
    )
    .unwrap();
    ctx.set_legacy_context(
        &mut g.frames,
        SID,
        ContextEntry::new(ss.root(), 2, DID).with_fpd(true),
    )
    .unwrap();
    g.set_root(ctx.rtaddr());
    g.enable_translation();
    let TranslateError::Fault(f) = dma_read(&g, 0x1000, 4).unwrap_err() else {
        panic!()
    };
    assert!(f.suppressed);
    assert_eq!(g.r32(reg::FSTS), 0);
    assert_eq!(g.r64(0x228), 0);
}

#[test]
fn translation_off_passes_through_and_interrupt_range_is_not_memory() {
    let mut g = Guest::new("", 64);
    let mem = g.mem.clone();
    let t = g
        .unit
        .translate(&DmaRequest::new(SID, 0x1234, AccessKind::Write))
        .unwrap();
    assert_eq!((t.output, t.kind), (0x1234, TranslationKind::Disabled));
    let ctx = ContextTablesBuilder::new(&mem, &mut g.frames, false).unwrap();
    g.set_root(ctx.rtaddr());
    g.enable_translation();
    assert_eq!(
        g.unit
            .translate(&DmaRequest::new(SID, 0xfee0_0000, AccessKind::Write)),
        Err(TranslateError::InterruptRequest)
    );
}
