//! Spec conformance of the unit where the QEMU corpus cannot hold us to anything: the request
//! checks around the walk, capability-dependent descriptor fields, and what each Linux
//! generation writes into a first-stage PASID entry, replayed through the unit.
//!
//! Every test names the VT-d spec section (rev 4.1) or the Linux source it reproduces.

use vtd_core::{TranslateError, VtdEvent};
use vtd_regs::VtdConfig;
use vtd_regs::fault::FaultReason;
use vtd_regs::inv::*;
use vtd_regs::regs::offset as reg;
use vtd_tables::GuestRam;
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_tables::walk::{AccessKind, DmaRequest};
use vtd_testkit::driver::*;

const SID: u16 = 0x18;
const DID: u16 = 5;
/// The FRCD of the units built here (CAP.FRO = 34): FR in bits 39:32 of the upper qword.
const FRCD_HI: u64 = 0x228;

fn recorded_reason(g: &Guest) -> Option<u8> {
    let hi = g.r64(FRCD_HI);
    (hi >> 63 != 0).then_some((hi >> 32) as u8)
}

fn clear_fault(g: &Guest) {
    g.w32(FRCD_HI as u32 as u64 + 4, 0x8000_0000);
    g.w32(reg::FSTS, 0x1);
}

fn fault_of(r: Result<vtd_tables::walk::Translation, TranslateError>) -> FaultReason {
    match r {
        Err(TranslateError::Fault(f)) => f.reason,
        other => panic!("expected a fault, got {other:?}"),
    }
}

// --- Guest compatibility: first-stage setup as each Linux generation writes it --------------

/// What `intel_pasid_setup_first_level` (Linux drivers/iommu/intel/pasid.c) and the first-
/// stage mapping code (drivers/iommu/intel/iommu.c) of one kernel generation write.
struct LinuxGeneration {
    name: &'static str,
    /// `pasid_set_nxe()`: PASID-entry bit 133. Added by "iommu/vt-d: Set No Execute Enable
    /// bit in PASID table entry" (6.3 merge window) and removed by "iommu/vt-d: Remove
    /// control over Execute-Requested requests" (e995fcde, 6.11, backported to 6.10.y).
    nxe: bool,
    /// `DMA_FL_PTE_XD` (bit 63) in first-stage leaves and in tables created by
    /// `pfn_to_dma_pte`: set until the same 6.11 commit removed it.
    xd: bool,
}

const GENERATIONS: &[LinuxGeneration] = &[
    LinuxGeneration {
        name: "6.1",
        nxe: false,
        xd: true,
    },
    LinuxGeneration {
        name: "6.3-6.10",
        nxe: true,
        xd: true,
    },
    LinuxGeneration {
        name: "6.12",
        nxe: false,
        xd: false,
    },
];

/// Builds the scalable tables for SID the way `linux` does: first-stage PGTT, AW = agaw (2),
/// DID, PWSNP from ECAP.SMPWC (0 on QEMU's unit), NXE per generation, FPD/SRE/WPE/EAFE clear;
/// leaves P|RW|US|A|D(+XD), tables P|RW|US|A(+XD). Maps IOVA 0x1000 to `gpa`.
fn linux_first_stage(g: &mut Guest, linux: &LinuxGeneration, gpa: u64) {
    let mem = g.mem.clone();
    let xd = if linux.xd { 1u64 << 63 } else { 0 };
    let mut fs = PageTableBuilder::new(
        &mem,
        &mut g.frames,
        PageTableFormat::FirstStage { levels: 4 },
    )
    .unwrap();
    let leaf = FirstStagePte::leaf(gpa, true, false).into_bits() | xd;
    fs.set_leaf(&mut g.frames, 0x1000, PageSize::Size4K, leaf)
        .unwrap();
    if linux.xd {
        // pfn_to_dma_pte ORs XD into every table entry it creates (first-level domains).
        let mut table = fs.root();
        for level in (2..=4u32).rev() {
            let slot = table + ((0x1000u64 >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
            let raw = mem.read_u64(slot).unwrap();
            mem.write_words(slot, &[raw | xd]).unwrap();
            table = raw & ADDR_MASK;
        }
    }
    let mut pe = PasidEntry::first_stage(fs.root(), false, DID, 2);
    if linux.nxe {
        pe.0[2] |= 1 << 5; // bit 133
    }
    let mut pasids = PasidTablesBuilder::new(&mem, &mut g.frames, 0).unwrap();
    pasids.set_entry(&mut g.frames, 0, pe).unwrap();
    let mut ctx = ContextTablesBuilder::new(&mem, &mut g.frames, true).unwrap();
    ctx.set_scalable_context(&mut g.frames, SID, pasids.context_entry())
        .unwrap();
    g.set_root(ctx.rtaddr());
    g.enable_translation();
}

#[test]
fn every_linux_generation_gets_first_stage_dma() {
    // 9.6: PASID-entry bits 134:133 are ignored "for compatibility with older software".
    // On the unit a Linux 6.12 guest saw (QEMU x-scalable-mode=on,x-flts=on), every
    // generation's entries translate reads and writes without a fault.
    for linux in GENERATIONS {
        let mut g = Guest::new("x-scalable-mode=on,x-flts=on", 64);
        let page = g.frames.alloc(&g.mem, 1).unwrap();
        linux_first_stage(&mut g, linux, page);
        for access in [AccessKind::Read, AccessKind::Write] {
            let t = g
                .unit
                .translate(&DmaRequest::new(SID, 0x1008, access))
                .unwrap_or_else(|e| panic!("Linux {}: {access:?} faulted: {e}", linux.name));
            assert_eq!(t.output, page + 8, "Linux {}", linux.name);
        }
        assert_eq!(recorded_reason(&g), None, "Linux {}: no fault", linux.name);
    }
}

#[test]
fn linux_6_3_nxe_entries_also_work_on_a_unit_with_every_first_stage_capability() {
    let cfg = VtdConfig {
        supervisor_requests: true,
        snoop_control: true,
        ..VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap()
    };
    let mut g = Guest::with_config(cfg, 64);
    let page = g.frames.alloc(&g.mem, 1).unwrap();
    linux_first_stage(&mut g, &GENERATIONS[1], page);
    let t = g
        .unit
        .translate(&DmaRequest::new(SID, 0x1000, AccessKind::Write))
        .unwrap();
    assert_eq!(t.output, page);
}

// --- 3.4.1 / RTA.2: requests with PASID in legacy mode --------------------------------------

#[test]
fn legacy_mode_records_0x31_for_a_request_with_pasid() {
    let mut g = Guest::new("", 64);
    g.legacy_one_page(SID, 1, 4, 0x1000, 0x40_0000);
    let ok = g
        .unit
        .translate(&DmaRequest::new(SID, 0x1000, AccessKind::Read));
    assert_eq!(ok.unwrap().output, 0x40_0000);
    let with_pasid = DmaRequest {
        pasid: Some(1),
        ..DmaRequest::new(SID, 0x1000, AccessKind::Read)
    };
    assert_eq!(
        fault_of(g.unit.translate(&with_pasid)),
        FaultReason::SmLegacyModeRequestWithPasid
    );
    assert_eq!(recorded_reason(&g), Some(0x31));
    // Also for PASID 0: a legacy context entry has no PASID at all.
    clear_fault(&g);
    let pasid0 = DmaRequest {
        pasid: Some(0),
        ..with_pasid
    };
    assert_eq!(
        fault_of(g.unit.translate(&pasid0)),
        FaultReason::SmLegacyModeRequestWithPasid
    );
}

// --- 3.15: translated addresses in the interrupt range ---------------------------------------

#[test]
fn a_translation_into_the_interrupt_range_is_blocked_and_recorded() {
    // Legacy (LGN.4, 0x0E): an ordinary IOVA mapped onto 0xFEE0_0000.
    let mut g = Guest::new("", 64);
    g.legacy_one_page(SID, 1, 4, 0x1000, 0xfee0_0000);
    for access in [AccessKind::Read, AccessKind::Write] {
        let r = g.unit.translate(&DmaRequest::new(SID, 0x1004, access));
        assert_eq!(
            fault_of(r),
            FaultReason::InterruptAddressRange,
            "{access:?}"
        );
        assert_eq!(recorded_reason(&g), Some(0x0e));
        clear_fault(&g);
    }
    // Scalable (SGN.8, 0x87): second stage 2 MiB page over 0xFEE0_0000-0xFEFF_FFFF; the
    // page's other addresses translate, and none of it is cached, so the blocked part stays
    // blocked after a successful access to the rest.
    let mut g = Guest::new("x-scalable-mode=on", 64);
    let mem = g.mem.clone();
    let mut ss = PageTableBuilder::new(
        &mem,
        &mut g.frames,
        PageTableFormat::SecondStage { levels: 4 },
    )
    .unwrap();
    ss.map(&mut g.frames, 0, 0xfee0_0000, PageSize::Size2M, true, true)
        .unwrap();
    let mut pasids = PasidTablesBuilder::new(&mem, &mut g.frames, 0).unwrap();
    pasids
        .set_entry(
            &mut g.frames,
            0,
            PasidEntry::second_stage(ss.root(), 2, DID),
        )
        .unwrap();
    let mut ctx = ContextTablesBuilder::new(&mem, &mut g.frames, true).unwrap();
    ctx.set_scalable_context(&mut g.frames, SID, pasids.context_entry())
        .unwrap();
    g.set_root(ctx.rtaddr());
    g.enable_translation();
    let fine = g
        .unit
        .translate(&DmaRequest::new(SID, 0x10_0000, AccessKind::Read))
        .unwrap();
    assert_eq!(fine.output, 0xfef0_0000);
    for _ in 0..2 {
        let r = g
            .unit
            .translate(&DmaRequest::new(SID, 0x2000, AccessKind::Read));
        assert_eq!(fault_of(r), FaultReason::SmInterruptAddressRange);
        assert_eq!(recorded_reason(&g), Some(0x87));
        clear_fault(&g);
    }
}

// --- 11.4.3 ERS: execute requests without the capability ------------------------------------

#[test]
fn an_execute_request_is_a_read_without_ers() {
    let mut g = Guest::new("x-scalable-mode=on,x-flts=on", 64);
    let page = g.frames.alloc(&g.mem, 1).unwrap();
    linux_first_stage(&mut g, &GENERATIONS[1], page); // leaves carry XD
    let exec = DmaRequest::new(SID, 0x1000, AccessKind::Execute);
    let t = g.unit.translate(&exec).unwrap();
    assert_eq!(t.output, page);
}

// --- 6.5.2: capability-dependent descriptor fields -----------------------------------------

fn wait_with_pd(status: u64) -> InvDesc {
    InvDesc::Wait(WaitInv {
        status_write: Some(StatusWrite {
            addr: status,
            data: 1,
        }),
        interrupt: false,
        fence: false,
        page_drain: true,
        ignored: Default::default(),
    })
}

fn queue_error(g: &Guest) -> Option<(u64, u8)> {
    let fsts = g.r32(reg::FSTS);
    (fsts & 0x10 != 0).then(|| (g.r64(reg::IQH), (g.r64(reg::IQERCD) & 0xf) as u8))
}

#[test]
fn a_wait_with_page_drain_needs_ecap_pds() {
    // 6.5.2.8: PD is defined with ECAP.PDS (page requests); otherwise it is a reserved field
    // (QEMU hw/i386/intel_iommu.c VTD_INV_DESC_WAIT_RSVD_LO and openvmm's intel_vtd agree).
    for wide in [false, true] {
        let mut g = Guest::new("x-scalable-mode=on", 64);
        g.enable_qi(wide);
        let status = g.frames.alloc(&g.mem, 1).unwrap();
        g.submit_raw(&[wait_with_pd(status)]);
        assert_eq!(queue_error(&g), Some((0, 4)), "IQE at the wait, IQEI 4");
        assert_eq!(g.mem.read_u64(status).unwrap(), 0, "status not written");
    }
}

#[test]
fn a_queued_iotlb_page_invalidation_beyond_mamv_is_an_error() {
    // 6.5.2.3 / 11.4.2 MAMV: QEMU's vtd_process_iotlb_desc rejects AM > MAMV (IQE); Linux
    // qi_flush_iotlb never sends one. The PASID-based IOTLB descriptor is exempt: 11.4.2
    // requires every defined AM to work there regardless of MAMV.
    let mut g = Guest::new("x-scalable-mode=on", 64);
    let mamv = g.unit.config().cap().mamv();
    g.enable_qi(true);
    g.submit(&[InvDesc::PasidIotlb(PasidIotlbInv {
        did: DID,
        pasid: 0,
        granularity: PasidIotlbGranularity::Page {
            addr: 0,
            am: mamv + 1,
            ih: false,
        },
        ignored: Default::default(),
    })]);
    g.submit(&[InvDesc::Iotlb(IotlbInv {
        granularity: IotlbGranularity::Page {
            did: DID,
            addr: 0,
            am: mamv,
            ih: false,
        },
        drain_read: false,
        drain_write: false,
        ignored: Default::default(),
    })]);
    let head = g.r64(reg::IQH);
    g.submit_raw(&[InvDesc::Iotlb(IotlbInv {
        granularity: IotlbGranularity::Page {
            did: DID,
            addr: 0,
            am: mamv + 1,
            ih: false,
        },
        drain_read: false,
        drain_write: false,
        ignored: Default::default(),
    })]);
    assert_eq!(queue_error(&g), Some((head, 4)));
    assert!(
        !g.log
            .take()
            .iter()
            .any(|e| matches!(e, VtdEvent::QueueError { iqei, .. } if *iqei != 4)),
        "only the AM error"
    );
}
