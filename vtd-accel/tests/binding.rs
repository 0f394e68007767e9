//! Nested binding end to end: a Linux-like guest programs the emulated unit, an assigned
//! device's DMA runs on the simulated host IOMMU through the guest's first-stage table.

mod common;

use std::sync::Arc;

use common::*;
use vtd_accel::sim::*;
use vtd_accel::*;
use vtd_core::Msi;
use vtd_regs::VtdConfig;
use vtd_regs::fault::{FaultReason, FaultRecord, FaultRequestKind};
use vtd_regs::inv::*;
use vtd_regs::regs::offset as reg;
use vtd_tables::GuestRam;
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_tables::walk::AccessKind;

const FLTS: &str = "x-scalable-mode=on,x-flts=on";

fn host_faults(events: &[AccelEvent]) -> Vec<(HostFault, HostFaultOutcome)> {
    events
        .iter()
        .filter_map(|e| match e {
            AccelEvent::HostFault { fault, outcome, .. } => Some((*fault, *outcome)),
            _ => None,
        })
        .collect()
}

fn decode_frcd(g: &Guest, i: u64) -> Option<FaultRecord> {
    let (lo, hi) = g.frcd(i);
    (hi & FaultRecord::FAULT_BIT != 0).then(|| FaultRecord::decode(lo, hi).unwrap())
}

#[test]
fn dma_translates_giova_to_gpa_to_hpa_without_a_vtd_core_walk() {
    let rig = Rig::new(FLTS);
    let hwpt = rig.nested_hwpt().expect("PASID 0 bound to a nested HWPT");
    let b = rig.binding(0).unwrap();
    assert_eq!(
        b.s1,
        Some(VtdS1 {
            flags: VtdS1Flags::default(),
            pgtbl_addr: rig.fs_root,
            addr_width: 48
        })
    );
    assert_eq!(b.did, Some(DID));
    assert_eq!(rig.sim.attachments(rig.dev).get(&None), Some(&hwpt));
    let nested = rig.sim.hwpts().into_iter().find(|h| h.id == hwpt).unwrap();
    assert_eq!(
        nested.kind,
        SimHwptKind::Nested {
            parent: rig.parent,
            s1: b.s1.unwrap()
        }
    );

    let unit_before = rig.g.unit.stats();
    let t = rig.dma(IOVA + 0x123, AccessKind::Read).unwrap();
    assert_eq!(t.hpa, HOST_BASE + GPA + 0x123, "GIOVA -> GPA -> HPA");
    assert_eq!((t.hwpt, t.cached, t.page_size), (hwpt, false, 4096));
    // A device write lands in guest RAM at the GPA (host memory is guest RAM at HOST_BASE).
    rig.sim
        .dma_write(rig.dev, None, IOVA + 0x10, b"nested!")
        .unwrap();
    let mut buf = [0u8; 7];
    rig.g.mem.read(GPA + 0x10, &mut buf).unwrap();
    assert_eq!(&buf, b"nested!");
    assert!(rig.dma(IOVA, AccessKind::Read).unwrap().cached);
    // The host walk set A and D in the guest's leaf, through stage 2.
    let slot = rig.fs().leaf_slot(IOVA, PageSize::Size4K).unwrap().unwrap();
    let leaf = FirstStagePte::from_bits(rig.g.mem.read_u64(slot).unwrap());
    assert!(leaf.accessed() && leaf.dirty());
    // vtd-core never walked or looked anything up for the bound device.
    assert_eq!(rig.g.unit.stats(), unit_before);
    // One walk; the write and the second read hit the IOTLB (Linux leaves are already dirty).
    let sim = rig.sim.stats();
    assert_eq!((sim.iotlb_misses, sim.iotlb_hits), (1, 2));
    rig.check_host_matches_binder();
}

#[test]
fn emulated_devices_keep_being_translated_by_vtd_core() {
    let mut rig = Rig::new(FLTS);
    // An emulated device at 00:03.0 with its own first-stage domain.
    let mem = rig.g.mem.clone();
    let root = rig.new_fs_table(0x7000, 0x90_0000, true);
    let mut pasids = PasidTablesBuilder::new(&mem, &mut rig.g.frames, 0).unwrap();
    pasids
        .set_entry(
            &mut rig.g.frames,
            0,
            PasidEntry::first_stage(root, false, 9, 2),
        )
        .unwrap();
    // Bus 0's root entry and context table (the rig only populated bus 1).
    let ctx_table = rig.g.frames.alloc(&mem, 1).unwrap();
    rig.g.mem.write_u64(rig.ctx, ctx_table | 1).unwrap();
    rig.g
        .mem
        .write_words(ctx_table + 0x18 * 32, &pasids.context_entry().0)
        .unwrap();
    let t = rig
        .g
        .unit
        .translate(&vtd_tables::walk::DmaRequest::new(
            0x18,
            0x7004,
            AccessKind::Read,
        ))
        .unwrap();
    assert_eq!(t.output, 0x90_0004);
    assert_eq!(rig.g.unit.stats().iotlb.misses, 1);
    // Unaffected binding.
    assert!(rig.nested_hwpt().is_some());
}

#[test]
fn stale_without_invalidation_faults_after_forwarded_invalidation() {
    let mut rig = Rig::new(FLTS);
    // Non-recoverable faults reach user space only where the backend says so (never on
    // VT-d hosts): this test exercises their injection, so it asks the simulator for it.
    rig.sim.report_unrecoverable_faults(true);
    rig.g.enable_fault_msi();
    let hwpt = rig.nested_hwpt().unwrap();
    rig.dma(IOVA, AccessKind::Read).unwrap();
    rig.sim.take_invalidation_log();

    // The guest unmaps without invalidating: the host IOTLB keeps serving the old page.
    assert!(rig.fs().unmap(IOVA, PageSize::Size4K).unwrap());
    let t = rig.dma(IOVA, AccessKind::Read).unwrap();
    assert!(t.cached);
    assert_eq!(t.hpa, HOST_BASE + GPA);

    // An invalidation for another domain is not this device's: nothing is forwarded.
    rig.g.submit(&[pasid_iotlb_page(DID + 1, 0, IOVA, 0, true)]);
    assert!(rig.sim.take_invalidation_log().is_empty());
    assert!(rig.dma(IOVA, AccessKind::Read).unwrap().cached);

    // The guest's page-selective PASID-IOTLB invalidation reaches the host (IH -> LEAF).
    rig.g.submit(&[pasid_iotlb_page(DID, 0, IOVA, 0, true)]);
    assert_eq!(
        rig.sim.take_invalidation_log(),
        vec![(
            hwpt,
            vec![VtdS1Invalidation {
                addr: IOVA,
                npages: 1,
                leaf: true
            }]
        )]
    );
    let f = rig.dma(IOVA, AccessKind::Read).unwrap_err();
    assert_eq!(f.reason, FaultReason::FirstStageNotPresent);
    assert_eq!((f.dev_id, f.addr, f.hwpt), (rig.dev, IOVA, Some(hwpt)));

    // The host fault reaches the guest's fault-recording register, with the fault MSI.
    rig.g.sink.take();
    assert_eq!(rig.binder.process_host_faults(), 1);
    let rec = decode_frcd(&rig.g, 0).expect("FRCD 0 holds the fault");
    assert_eq!(rec.sid, SID);
    assert_eq!(rec.address, IOVA);
    assert_eq!(rec.reason, FaultReason::FirstStageNotPresent);
    assert_eq!(rec.request, FaultRequestKind::Read);
    assert_eq!(rec.pasid, None, "request without PASID");
    assert_eq!(rig.g.r32(reg::FSTS) & 2, 2, "FSTS.PPF");
    assert_eq!(
        rig.g.sink.take(),
        vec![Msi {
            address: 0xfee0_0000,
            data: 0x4321
        }]
    );
    let ev = rig.events.take();
    assert_eq!(
        host_faults(&ev)[0].1,
        HostFaultOutcome::Injected(FaultInjection::Delivered {
            reason: FaultReason::FirstStageNotPresent,
            suppressed: false
        })
    );
    assert_eq!(rig.binder.stats().faults_injected, 1);
}

#[test]
fn pasid_selective_and_masked_invalidations() {
    let mut rig = Rig::new(FLTS);
    let hwpt = rig.nested_hwpt().unwrap();
    let mem = rig.g.mem.clone();
    let mut fs = PageTableBuilder::at(&mem, rig.fs_root, PageTableFormat::FirstStage { levels: 4 });
    for i in 1..4u64 {
        fs.map(
            &mut rig.g.frames,
            IOVA + i * 0x1000,
            GPA + i * 0x1000,
            PageSize::Size4K,
            true,
            true,
        )
        .unwrap();
    }
    for i in 0..4u64 {
        rig.dma(IOVA + i * 0x1000, AccessKind::Read).unwrap();
    }
    for i in 0..4u64 {
        fs.unmap(IOVA + i * 0x1000, PageSize::Size4K).unwrap();
    }
    rig.sim.take_invalidation_log();
    // AM = 1 at IOVA + 0x1000 covers pages 0 and 1 (aligned down to 8 KiB).
    rig.g
        .submit(&[pasid_iotlb_page(DID, 0, IOVA + 0x1000, 1, false)]);
    assert_eq!(
        rig.sim.take_invalidation_log(),
        vec![(
            hwpt,
            vec![VtdS1Invalidation::for_range(IOVA, IOVA + 0x1fff, false)]
        )]
    );
    assert!(rig.dma(IOVA, AccessKind::Read).is_err());
    assert!(rig.dma(IOVA + 0x1000, AccessKind::Read).is_err());
    assert!(rig.dma(IOVA + 0x2000, AccessKind::Read).unwrap().cached);
    // PASID-selective: everything of PASID 0 in the domain.
    rig.g.submit(&[pasid_iotlb_all(DID, 0)]);
    assert_eq!(
        rig.sim.take_invalidation_log(),
        vec![(hwpt, vec![VtdS1Invalidation::ALL])]
    );
    assert!(rig.dma(IOVA + 0x3000, AccessKind::Read).is_err());
    // Another PASID of the same domain: not this binding.
    rig.g.submit(&[pasid_iotlb_all(DID, 3)]);
    assert!(rig.sim.take_invalidation_log().is_empty());
}

#[test]
fn one_hwpt_invalidate_per_batch_per_hwpt() {
    let mut rig = Rig::new(FLTS);
    let hwpt = rig.nested_hwpt().unwrap();
    rig.sim.take_invalidation_log();
    let calls = rig.binder.stats().invalidate_calls;
    rig.g.submit(&[
        pasid_iotlb_page(DID, 0, IOVA, 0, true),
        pasid_iotlb_page(DID, 0, IOVA + 0x4000, 2, true),
        pasid_iotlb_page(DID, 0, IOVA, 0, true), // duplicate
        pasid_iotlb_page(DID + 1, 0, IOVA, 0, true), // another domain
    ]);
    assert_eq!(
        rig.sim.take_invalidation_log(),
        vec![(
            hwpt,
            vec![
                VtdS1Invalidation::for_range(IOVA, IOVA + 0xfff, true),
                VtdS1Invalidation {
                    addr: IOVA + 0x4000,
                    npages: 4,
                    leaf: true
                },
            ]
        )]
    );
    assert_eq!(rig.binder.stats().invalidate_calls, calls + 1);
    // A whole-PASID flush in the batch subsumes the page flushes.
    rig.g.submit(&[
        pasid_iotlb_page(DID, 0, IOVA, 0, true),
        pasid_iotlb_all(DID, 0),
        pasid_iotlb_page(DID, 0, IOVA + 0x1000, 0, true),
    ]);
    assert_eq!(
        rig.sim.take_invalidation_log(),
        vec![(hwpt, vec![VtdS1Invalidation::ALL])]
    );
    // More than the batch bound of distinct pages: one full flush.
    let many: Vec<InvDesc> = (0..100u64)
        .map(|i| pasid_iotlb_page(DID, 0, IOVA + i * 0x1000, 0, true))
        .collect();
    rig.g.submit(&many);
    assert_eq!(
        rig.sim.take_invalidation_log(),
        vec![(hwpt, vec![VtdS1Invalidation::ALL])]
    );
    // A batch without a wait descriptor ends at the queue tail.
    rig.g.submit_raw(&[
        pasid_iotlb_page(DID, 0, IOVA, 0, true),
        pasid_iotlb_page(DID, 0, IOVA + 0x1000, 0, true),
    ]);
    assert_eq!(rig.sim.take_invalidation_log().len(), 1);
    assert_eq!(rig.binder.stats().invalidate_calls, calls + 4);
}

#[test]
fn domain_global_iotlb_and_device_tlb_invalidations_are_forwarded() {
    let mut rig = Rig::new("x-scalable-mode=on,x-flts=on,device-iotlb=on");
    let hwpt = rig.nested_hwpt().unwrap();
    rig.sim.take_invalidation_log();
    let cases: Vec<(InvDesc, Option<VtdS1Invalidation>)> = vec![
        (
            iotlb(IotlbGranularity::Global),
            Some(VtdS1Invalidation::ALL),
        ),
        (
            iotlb(IotlbGranularity::Domain { did: DID }),
            Some(VtdS1Invalidation::ALL),
        ),
        (iotlb(IotlbGranularity::Domain { did: DID + 1 }), None),
        (
            iotlb(IotlbGranularity::Page {
                did: DID,
                addr: IOVA,
                am: 1,
                ih: true,
            }),
            Some(VtdS1Invalidation::for_range(IOVA, IOVA + 0x1fff, true)),
        ),
        // Page-selective for another domain: not this device's pages.
        (
            iotlb(IotlbGranularity::Page {
                did: DID + 1,
                addr: IOVA,
                am: 1,
                ih: true,
            }),
            None,
        ),
        (
            InvDesc::DeviceTlb(DeviceTlbInv {
                sid: SID,
                pfsid: 0,
                qdep: 0,
                addr: IOVA,
                size: false,
            }),
            Some(VtdS1Invalidation::for_range(IOVA, IOVA + 0xfff, false)),
        ),
        (
            // S = 1 with ADDR bit 12 set: 16 KiB.
            InvDesc::DeviceTlb(DeviceTlbInv {
                sid: SID,
                pfsid: 0,
                qdep: 0,
                addr: IOVA | 0x1000,
                size: true,
            }),
            Some(VtdS1Invalidation::for_range(IOVA, IOVA + 0x3fff, false)),
        ),
        (
            InvDesc::DeviceTlb(DeviceTlbInv {
                sid: SID + 1,
                pfsid: 0,
                qdep: 0,
                addr: IOVA,
                size: false,
            }),
            None,
        ),
        (
            InvDesc::PasidDeviceTlb(PasidDeviceTlbInv {
                sid: SID,
                pfsid: 0,
                pasid: 0,
                qdep: 0,
                addr: IOVA,
                size: false,
                global: false,
            }),
            Some(VtdS1Invalidation::for_range(IOVA, IOVA + 0xfff, false)),
        ),
        (
            InvDesc::PasidDeviceTlb(PasidDeviceTlbInv {
                sid: SID,
                pfsid: 0,
                pasid: 4,
                qdep: 0,
                addr: IOVA,
                size: false,
                global: false,
            }),
            None,
        ),
    ];
    for (desc, want) in cases {
        rig.g.submit(&[desc]);
        let got = rig.sim.take_invalidation_log();
        match want {
            Some(e) => assert_eq!(got, vec![(hwpt, vec![e])], "{desc}"),
            None => assert!(got.is_empty(), "{desc}: {got:?}"),
        }
    }
}

#[test]
fn replay_after_srtp_rebinds_to_the_new_tables() {
    let mut rig = Rig::new(FLTS);
    let old = rig.nested_hwpt().unwrap();
    rig.dma(IOVA, AccessKind::Read).unwrap();
    // A whole new set of tables (as kexec'd or re-initialised guests do).
    let mem = rig.g.mem.clone();
    let gpa2 = 0x90_0000;
    let root2 = rig.new_fs_table(IOVA, gpa2, true);
    let mut ctxb = ContextTablesBuilder::new(&mem, &mut rig.g.frames, true).unwrap();
    let mut pasids = PasidTablesBuilder::new(&mem, &mut rig.g.frames, 0).unwrap();
    pasids
        .set_entry(
            &mut rig.g.frames,
            0,
            PasidEntry::first_stage(root2, false, DID, 2),
        )
        .unwrap();
    ctxb.set_scalable_context(&mut rig.g.frames, SID, pasids.context_entry())
        .unwrap();
    rig.events.take();
    rig.g.set_root(ctxb.rtaddr());
    let new = rig.nested_hwpt().unwrap();
    assert_ne!(new, old);
    assert_eq!(rig.binding(0).unwrap().s1.unwrap().pgtbl_addr, root2);
    assert!(
        !rig.sim.hwpts().iter().any(|h| h.id == old),
        "old HWPT destroyed"
    );
    assert!(
        rig.events
            .take()
            .iter()
            .any(|e| matches!(e, AccelEvent::Bound { hwpt, .. } if *hwpt == new))
    );
    let t = rig.dma(IOVA, AccessKind::Read).unwrap();
    assert_eq!((t.hpa, t.cached), (HOST_BASE + gpa2, false));
    rig.check_host_matches_binder();
}

#[test]
fn replay_on_translation_off_and_on() {
    let mut rig = Rig::new(FLTS);
    // Non-recoverable faults reach user space only where the backend says so (never on
    // VT-d hosts): this test exercises their injection, so it asks the simulator for it.
    rig.sim.report_unrecoverable_faults(true);
    let first = rig.nested_hwpt().unwrap();
    rig.g.set_translation(false);
    assert_eq!(rig.binding(0).unwrap().host, HostAttachment::Parent);
    assert_eq!(rig.sim.attachments(rig.dev).get(&None), Some(&rig.parent));
    assert!(!rig.sim.hwpts().iter().any(|h| h.id == first));
    // Translation off: the device's addresses are GPAs.
    assert_eq!(
        rig.dma(GPA, AccessKind::Write).unwrap().hpa,
        HOST_BASE + GPA
    );
    // IOVA is beyond guest RAM: a second-stage fault, the VMM's business.
    let f = rig.dma(IOVA, AccessKind::Read).unwrap_err();
    assert_eq!(f.reason, FaultReason::SecondStagePermissionDenied);
    rig.binder.process_host_faults();
    assert_eq!(
        host_faults(&rig.events.take()).last().unwrap().1,
        HostFaultOutcome::HostSide
    );
    assert!(decode_frcd(&rig.g, 0).is_none(), "nothing for the guest");

    rig.g.set_translation(true);
    let second = rig.nested_hwpt().unwrap();
    assert_ne!(second, first);
    assert_eq!(
        rig.dma(IOVA, AccessKind::Read).unwrap().hpa,
        HOST_BASE + GPA
    );
    rig.check_host_matches_binder();
}

#[test]
fn replay_on_every_context_invalidation_granularity() {
    let mut rig = Rig::new(FLTS);
    let cases = [
        (ContextCacheGranularity::Global, true),
        (ContextCacheGranularity::Domain { did: 0 }, true),
        (
            ContextCacheGranularity::Device {
                did: 0,
                sid: SID,
                fm: 0,
            },
            true,
        ),
        // Function mask 3 ignores function bits 2:0: 01:00.5 covers 01:00.0.
        (
            ContextCacheGranularity::Device {
                did: 0,
                sid: SID | 5,
                fm: 3,
            },
            true,
        ),
        (
            ContextCacheGranularity::Device {
                did: 0,
                sid: SID | 5,
                fm: 0,
            },
            false,
        ),
        // Function mask 1 ignores bit 2 only: 01:00.4 covers 01:00.0, 01:00.1 does not.
        (
            ContextCacheGranularity::Device {
                did: 0,
                sid: SID | 4,
                fm: 1,
            },
            true,
        ),
        (
            ContextCacheGranularity::Device {
                did: 0,
                sid: SID | 1,
                fm: 1,
            },
            false,
        ),
        // Function mask 2 ignores bits 2:1: 01:00.6 covers 01:00.0, 01:00.1 does not.
        (
            ContextCacheGranularity::Device {
                did: 0,
                sid: SID | 6,
                fm: 2,
            },
            true,
        ),
        (
            ContextCacheGranularity::Device {
                did: 0,
                sid: SID | 1,
                fm: 2,
            },
            false,
        ),
        (
            ContextCacheGranularity::Device {
                did: 0,
                sid: 0x0200,
                fm: 0,
            },
            false,
        ),
    ];
    for (i, (granularity, rebinds)) in cases.into_iter().enumerate() {
        let gpa = 0xa0_0000 + i as u64 * 0x1000;
        let root = rig.new_fs_table(IOVA, gpa, true);
        let before = rig.binding(0).unwrap();
        // The guest rewrites PASID entry 0 and flushes only the context cache.
        rig.write_pasid_entry(0, PasidEntry::first_stage(root, false, DID, 2));
        rig.g.submit(&[context_cache(granularity)]);
        let after = rig.binding(0).unwrap();
        if rebinds {
            assert_eq!(after.s1.unwrap().pgtbl_addr, root, "{granularity:?}");
            assert_eq!(
                rig.dma(IOVA, AccessKind::Read).unwrap().hpa,
                HOST_BASE + gpa
            );
        } else {
            assert_eq!(after, before, "{granularity:?} must not rebind 01:00.0");
        }
        rig.check_host_matches_binder();
    }
}

#[test]
fn pasid_cache_invalidations_follow_the_pasid_entry() {
    let mut rig = Rig::new(FLTS);
    // Non-recoverable faults reach user space only where the backend says so (never on
    // VT-d hosts): this test exercises their injection, so it asks the simulator for it.
    rig.sim.report_unrecoverable_faults(true);
    rig.g.enable_fault_msi();
    // Not present.
    rig.write_pasid_entry(0, PasidEntry::default());
    rig.g
        .submit(&[pasid_cache(DID, PasidCacheGranularity::Pasid { pasid: 0 })]);
    let b = rig.binding(0).unwrap();
    assert_eq!(b.host, HostAttachment::Blocked);
    assert_eq!(
        b.blocked,
        Some(BlockCause::Guest {
            reason: FaultReason::PasidEntryNotPresent
        })
    );
    assert!(rig.sim.attachments(rig.dev).is_empty());
    assert!(rig.sim.hwpts().iter().all(|h| h.id == rig.parent));
    // The blocked device's DMA: the guest sees "PASID entry not present".
    let f = rig.dma(IOVA, AccessKind::Write).unwrap_err();
    assert_eq!(f.hwpt, None);
    rig.binder.process_host_faults();
    let rec = decode_frcd(&rig.g, 0).unwrap();
    assert_eq!(
        (rec.sid, rec.reason, rec.address, rec.request),
        (
            SID,
            FaultReason::PasidEntryNotPresent,
            IOVA,
            FaultRequestKind::Write
        )
    );

    // Pass-through: the parent.
    rig.write_pasid_entry(0, PasidEntry::pass_through(1, 2));
    rig.g
        .submit(&[pasid_cache(1, PasidCacheGranularity::Domain)]);
    assert_eq!(rig.binding(0).unwrap().host, HostAttachment::Parent);
    assert_eq!(rig.dma(GPA, AccessKind::Read).unwrap().hpa, HOST_BASE + GPA);

    // First stage again, after a global PASID-cache invalidation.
    rig.write_pasid_entry(0, PasidEntry::first_stage(rig.fs_root, false, DID, 2));
    rig.g
        .submit(&[pasid_cache(0, PasidCacheGranularity::Global)]);
    assert!(rig.nested_hwpt().is_some());

    // Same table again: no new HWPT.
    let hwpt = rig.nested_hwpt().unwrap();
    rig.g
        .submit(&[pasid_cache(DID, PasidCacheGranularity::Pasid { pasid: 0 })]);
    assert_eq!(rig.nested_hwpt(), Some(hwpt));

    // PGTT = second stage is invalid for this unit (no ECAP.SLTS): blocked, 0x5B.
    rig.write_pasid_entry(0, PasidEntry::second_stage(rig.fs_root, 2, DID));
    rig.g
        .submit(&[pasid_cache(DID, PasidCacheGranularity::Pasid { pasid: 0 })]);
    assert_eq!(
        rig.binding(0).unwrap().blocked,
        Some(BlockCause::Guest {
            reason: FaultReason::PasidEntryInvalid
        })
    );
    // 5-level paging on a unit without FL5LP: invalid too.
    rig.write_pasid_entry(0, PasidEntry::first_stage(rig.fs_root, true, DID, 2));
    rig.g
        .submit(&[pasid_cache(DID, PasidCacheGranularity::Pasid { pasid: 0 })]);
    assert_eq!(rig.binding(0).unwrap().host, HostAttachment::Blocked);
    rig.check_host_matches_binder();
}

#[test]
fn unsupported_guest_programming_is_a_guest_fault_and_a_vmm_error() {
    // A unit offering first and second stage (and nesting): PGTT = second stage is valid for
    // the guest but cannot run on the host.
    let cfg = VtdConfig {
        scalable_mode: true,
        first_stage: true,
        second_stage: true,
        nesting: true,
        ..VtdConfig::default()
    };
    let log = Arc::new(FaultLog::default());
    let info = host_info_for(&cfg);
    let mut rig = Rig::unbound_with_sink(cfg, info, Some(log.clone()));
    // Non-recoverable faults reach user space only where the backend says so (never on
    // VT-d hosts): this test exercises their injection, so it asks the simulator for it.
    rig.sim.report_unrecoverable_faults(true);
    rig.g.set_translation(true);
    assert!(rig.nested_hwpt().is_some());
    let ss = rig.new_fs_table(0, 0, false);
    rig.write_pasid_entry(0, PasidEntry::second_stage(ss, 2, DID).with_fpd(false));
    rig.g
        .submit(&[pasid_cache(DID, PasidCacheGranularity::Pasid { pasid: 0 })]);
    let b = rig.binding(0).unwrap();
    assert_eq!(
        (b.host, b.blocked),
        (HostAttachment::Blocked, Some(BlockCause::Unsupported))
    );
    let ev = rig.events.take();
    assert!(
        ev.iter().any(|e| matches!(e, AccelEvent::GuestConfigUnsupported { what, .. } if what.contains("SecondStage"))),
        "{ev:?}"
    );
    assert_eq!(rig.binder.stats().guest_config_errors, 1);
    rig.dma(IOVA, AccessKind::Read).unwrap_err();
    rig.binder.process_host_faults();
    let faults = log.take();
    assert_eq!(faults.len(), 1);
    assert_eq!(
        (faults[0].sid, faults[0].reason, faults[0].address),
        (SID, FaultReason::PasidEntryInvalid, IOVA)
    );

    // A legacy-mode root table with a second-stage context entry: the same.
    let mem = rig.g.mem.clone();
    let mut ctxb = ContextTablesBuilder::new(&mem, &mut rig.g.frames, false).unwrap();
    let sl = rig.g.frames.alloc(&mem, 1).unwrap();
    ctxb.set_legacy_context(&mut rig.g.frames, SID, ContextEntry::new(sl, 2, 3))
        .unwrap();
    rig.g.set_root(ctxb.rtaddr());
    assert_eq!(
        rig.binding(0).unwrap().blocked,
        Some(BlockCause::Unsupported)
    );
    // Legacy pass-through runs on the parent.
    ctxb.set_legacy_context(&mut rig.g.frames, SID, ContextEntry::pass_through(2, 3))
        .unwrap();
    rig.g
        .submit(&[context_cache(ContextCacheGranularity::Global)]);
    assert_eq!(rig.binding(0).unwrap().host, HostAttachment::Parent);
    rig.check_host_matches_binder();
}

#[test]
fn host_first_stage_faults_honour_fpd_and_stay_out_of_the_guest_when_second_stage() {
    let mut rig = Rig::new(FLTS);
    // Non-recoverable faults reach user space only where the backend says so (never on
    // VT-d hosts): this test exercises their injection, so it asks the simulator for it.
    rig.sim.report_unrecoverable_faults(true);
    rig.g.enable_fault_msi();
    let ro = IOVA + 0x10_0000;
    let mem = rig.g.mem.clone();
    let mut fs = PageTableBuilder::at(&mem, rig.fs_root, PageTableFormat::FirstStage { levels: 4 });
    fs.map(&mut rig.g.frames, ro, GPA, PageSize::Size4K, true, false)
        .unwrap();
    // A write to a read-only first-stage page: 0x85, with the write request type.
    let f = rig.dma(ro, AccessKind::Write).unwrap_err();
    assert_eq!(f.reason, FaultReason::SmWriteNotPermitted);
    rig.g.sink.take();
    rig.binder.process_host_faults();
    let rec = decode_frcd(&rig.g, 0).unwrap();
    assert_eq!(
        (rec.sid, rec.reason, rec.address, rec.request),
        (
            SID,
            FaultReason::SmWriteNotPermitted,
            ro,
            FaultRequestKind::Write
        )
    );
    assert_eq!(rig.g.sink.take().len(), 1, "fault MSI");
    // The guest handles it: clears F and the status.
    rig.g.w32(0x220 + 12, 0x8000_0000);
    rig.g.w32(reg::FSTS, 0x7f);
    assert!(decode_frcd(&rig.g, 0).is_none());

    // FPD in the PASID entry (plus the PASID-cache invalidation): suppressed.
    rig.write_pasid_entry(
        0,
        PasidEntry::first_stage(rig.fs_root, false, DID, 2).with_fpd(true),
    );
    let hwpt = rig.nested_hwpt();
    rig.g
        .submit(&[pasid_cache(DID, PasidCacheGranularity::Pasid { pasid: 0 })]);
    assert_eq!(
        rig.nested_hwpt(),
        hwpt,
        "FPD alone does not need a new HWPT"
    );
    rig.dma(ro, AccessKind::Write).unwrap_err();
    rig.events.take();
    rig.binder.process_host_faults();
    assert_eq!(
        host_faults(&rig.events.take())[0].1,
        HostFaultOutcome::SuppressedByFpd
    );
    assert!(decode_frcd(&rig.g, 0).is_none());
    assert!(rig.g.sink.take().is_empty());
    assert_eq!(rig.binder.stats().faults_suppressed, 1);

    // A GPA outside the parent: a second-stage fault, never the guest's.
    let outside = IOVA + 0x20_0000;
    fs.map(
        &mut rig.g.frames,
        outside,
        0x1_0000_0000,
        PageSize::Size4K,
        true,
        true,
    )
    .unwrap();
    assert_eq!(
        rig.dma(outside, AccessKind::Read).unwrap_err().reason,
        FaultReason::SecondStagePermissionDenied
    );
    rig.binder.process_host_faults();
    assert_eq!(
        host_faults(&rig.events.take())[0].1,
        HostFaultOutcome::HostSide
    );
    assert!(decode_frcd(&rig.g, 0).is_none());

    // A fault from an HWPT the device no longer uses is stale.
    rig.sim.raise_fault(HostFault {
        dev_id: rig.dev,
        pasid: None,
        addr: IOVA,
        reason: FaultReason::FirstStageNotPresent,
        access: AccessKind::Read,
        privileged: false,
        hwpt: Some(HwptId(9999)),
    });
    rig.sim.raise_fault(HostFault {
        dev_id: DeviceId(4242),
        pasid: None,
        addr: IOVA,
        reason: FaultReason::FirstStageNotPresent,
        access: AccessKind::Read,
        privileged: false,
        hwpt: None,
    });
    assert_eq!(rig.binder.process_host_faults(), 2);
    let outcomes: Vec<_> = host_faults(&rig.events.take())
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    assert_eq!(
        outcomes,
        vec![HostFaultOutcome::Stale, HostFaultOutcome::UnknownDevice]
    );
}

#[test]
fn pasids_other_than_zero_bind_forward_and_unbind() {
    let cfg = VtdConfig {
        pasid_bits: 8,
        ..VtdConfig::from_qemu_props(FLTS).unwrap()
    };
    let mut rig = Rig::with_config(cfg);
    // Non-recoverable faults reach user space only where the backend says so (never on
    // VT-d hosts): this test exercises their injection, so it asks the simulator for it.
    rig.sim.report_unrecoverable_faults(true);
    assert!(rig.binder.viommu_flags().want_pasid_parent);
    let gpa5 = 0xb0_0000;
    let root5 = rig.new_fs_table(IOVA, gpa5, true);
    rig.write_pasid_entry(5, PasidEntry::first_stage(root5, false, 7, 2));
    rig.g
        .submit(&[pasid_cache(7, PasidCacheGranularity::Pasid { pasid: 5 })]);
    let b5 = rig.binding(5).expect("PASID 5 bound");
    let HostAttachment::Nested(h5) = b5.host else {
        panic!("{b5:?}")
    };
    assert_eq!(rig.sim.attachments(rig.dev).get(&Pasid::new(5)), Some(&h5));
    let t = rig
        .sim
        .dma_translate(rig.dev, Pasid::new(5), IOVA, AccessKind::Read)
        .unwrap();
    assert_eq!(t.hpa, HOST_BASE + gpa5);
    assert_eq!(
        rig.dma(IOVA, AccessKind::Read).unwrap().hpa,
        HOST_BASE + GPA,
        "PASID 0 unchanged"
    );
    // Forwarding picks the PASID's HWPT only.
    rig.sim.take_invalidation_log();
    rig.g.submit(&[pasid_iotlb_page(7, 5, IOVA, 0, false)]);
    assert_eq!(
        rig.sim.take_invalidation_log(),
        vec![(
            h5,
            vec![VtdS1Invalidation::for_range(IOVA, IOVA + 0xfff, false)]
        )]
    );
    // A host fault with PASID 5 reaches the guest with PP and the PASID.
    rig.fs().unmap(IOVA, PageSize::Size4K).unwrap();
    let root5_pt =
        PageTableBuilder::at(&rig.g.mem, root5, PageTableFormat::FirstStage { levels: 4 });
    let slot = root5_pt.leaf_slot(IOVA, PageSize::Size4K).unwrap().unwrap();
    rig.g.mem.write_u64(slot, 0).unwrap();
    rig.g.submit(&[pasid_iotlb_all(7, 5)]);
    rig.sim
        .dma_translate(rig.dev, Pasid::new(5), IOVA, AccessKind::Read)
        .unwrap_err();
    rig.binder.process_host_faults();
    let rec = decode_frcd(&rig.g, 0).unwrap();
    assert_eq!(
        (rec.sid, rec.pasid, rec.reason),
        (SID, Some(5), FaultReason::FirstStageNotPresent)
    );

    // A PASID created without any invalidation is found by the scan on TE off/on.
    let root9 = rig.new_fs_table(IOVA, gpa5, true);
    rig.write_pasid_entry(9, PasidEntry::first_stage(root9, false, 7, 2));
    assert!(rig.binding(9).is_none());
    rig.g.set_translation(false);
    assert!(
        rig.binding(5).is_none(),
        "PASIDs blocked with translation off"
    );
    assert!(!rig.sim.attachments(rig.dev).contains_key(&Pasid::new(5)));
    rig.g.set_translation(true);
    assert!(matches!(
        rig.binding(9).unwrap().host,
        HostAttachment::Nested(_)
    ));
    assert!(matches!(
        rig.binding(5).unwrap().host,
        HostAttachment::Nested(_)
    ));

    // Clearing PASID 5: its HWPT goes away.
    rig.write_pasid_entry(5, PasidEntry::default());
    rig.g
        .submit(&[pasid_cache(7, PasidCacheGranularity::Pasid { pasid: 5 })]);
    assert!(rig.binding(5).is_none());
    assert!(!rig.sim.attachments(rig.dev).contains_key(&Pasid::new(5)));
    rig.check_host_matches_binder();
}

#[test]
fn restore_replays_the_bindings() {
    let rig = Rig::new(FLTS);
    let snap = rig.g.unit.snapshot();
    // The destination: the same guest RAM, a fresh unit, host and binder.
    let cfg = rig.g.unit.config().clone();
    let dst = Guest::with_memory(cfg, rig.g.mem.clone());
    let host = HostMemory::new().with_region(HOST_BASE, RAM_MB << 20, dst.mem.clone(), 0);
    let sim = Arc::new(SimHostIommu::new(host_info_for(dst.unit.config()), host));
    let ioas = sim.alloc_ioas();
    sim.ioas_map(ioas, 0, RAM_MB << 20, HOST_BASE, true)
        .unwrap();
    let binder = NestedBinder::with_unit_faults(&dst.unit);
    let (dev, parent) = sim.vfio_bind_default(ioas, binder.viommu_flags()).unwrap();
    let hd = HostIommuDevice::query(sim.clone(), "0000:01:00.0", dev, parent).unwrap();
    binder.register(BDF, hd, PciTopology::default()).unwrap();
    assert_eq!(binder.bindings()[0].host, HostAttachment::Parent);
    dst.unit.restore(&snap).unwrap();
    let b = binder.bindings();
    assert!(matches!(b[0].host, HostAttachment::Nested(_)), "{b:?}");
    assert_eq!(b[0].s1.unwrap().pgtbl_addr, rig.fs_root);
    assert_eq!(
        sim.dma_translate(dev, None, IOVA, AccessKind::Read)
            .unwrap()
            .hpa,
        HOST_BASE + GPA
    );
    check_host_matches_binder(&sim, &binder, &[(BDF, dev, parent)]);
    // What a migration records of the source: the device, its host objects, its nested
    // bindings (requests without PASID here).
    let src = rig.binder.registered_devices();
    assert_eq!(src.len(), 1);
    let d = &src[0];
    assert_eq!(
        (d.bdf, d.name.as_str(), d.dev_id, d.parent, d.nested.clone()),
        (BDF, "0000:01:00.0", rig.dev, rig.parent, vec![None])
    );
    let debug = format!("{d:?}");
    assert!(
        debug.contains("0000:01:00.0") && debug.contains("nested"),
        "{debug}"
    );
    // The target's replay returns the bindings it re-derived.
    assert_eq!(binder.replay_after_restore(), binder.bindings());
    assert_eq!(binder.registered_devices()[0].nested, vec![None]);
}

/// `resync_all` re-reads the guest's tables even when no event said they changed (what a VMM
/// calls after importing state behind the unit's back): a PASID entry rewritten without an
/// invalidation is bound.
#[test]
fn resync_all_rereads_the_guest_tables() {
    let mut rig = Rig::new(FLTS);
    let root = rig.new_fs_table(IOVA, 0x90_0000, true);
    rig.write_pasid_entry(0, PasidEntry::first_stage(root, false, DID, 2));
    assert_ne!(rig.binding(0).unwrap().s1.unwrap().pgtbl_addr, root);
    rig.binder.resync_all();
    assert_eq!(rig.binding(0).unwrap().s1.unwrap().pgtbl_addr, root);
    assert_eq!(
        rig.dma(IOVA, AccessKind::Read).unwrap().hpa,
        HOST_BASE + 0x90_0000
    );
    rig.check_host_matches_binder();
}

#[test]
fn unregister_returns_the_device_to_its_default_hwpt() {
    let mut rig = Rig::new(FLTS);
    assert!(rig.nested_hwpt().is_some());
    let hd = rig.binder.unregister(BDF).unwrap();
    assert_eq!(hd.iommufd_ids(), Some((rig.dev, rig.parent)));
    assert!(rig.binder.bindings().is_empty());
    assert_eq!(
        rig.sim.attachments(rig.dev),
        [(None, rig.parent)].into_iter().collect()
    );
    assert!(rig.sim.hwpts().iter().all(|h| h.id == rig.parent));
    // Guest activity no longer reaches the host for it.
    rig.sim.take_invalidation_log();
    rig.g.submit(&[pasid_iotlb_all(DID, 0)]);
    assert!(rig.sim.take_invalidation_log().is_empty());
    assert_eq!(
        rig.binder.unregister(BDF),
        Err(UnregisterError::NotRegistered(BDF))
    );
    // And it can come back.
    rig.binder
        .register(BDF, hd, PciTopology::default())
        .unwrap();
    assert!(rig.nested_hwpt().is_some());
    assert_eq!(rig.binder.stats().devices, 1);
}

#[test]
fn registration_refuses_duplicates() {
    let rig = Rig::new(FLTS);
    let info = *rig.sim.info();
    let again = HostIommuDevice::iommufd("dup", rig.sim.clone(), rig.dev, rig.parent, info);
    assert_eq!(
        rig.binder
            .register(BDF, again.clone(), PciTopology::default()),
        Err(RegisterError::AlreadyRegistered(BDF))
    );
    assert_eq!(
        rig.binder
            .register(Bdf::new(2, 0, 0), again, PciTopology::default()),
        Err(RegisterError::DeviceIdInUse {
            dev_id: rig.dev,
            other: BDF
        })
    );
    let legacy = HostIommuDevice::legacy_container("0000:02:00.0", info);
    assert!(matches!(
        rig.binder
            .register(Bdf::new(2, 0, 0), legacy, PciTopology::default()),
        Err(RegisterError::Compat(CompatError::NotIommufd { .. }))
    ));
    assert_eq!(BDF.to_string(), "01:00.0");
    assert_eq!(Bdf::from_sid(0x0a1f).to_string(), "0a:03.7");
}

#[test]
fn errata_772415_forbids_read_only_mappings_in_a_nest_parent() {
    let mut info = HostHwInfo::vtd_nesting_capable();
    info.vtd_flags = VTD_ERRATA_772415_SPR17;
    let mem: Mem =
        vm_memory::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
    let sim = SimHostIommu::new(
        info,
        HostMemory::new().with_region(HOST_BASE, 1 << 20, mem, 0),
    );
    let flags = ViommuFlags::for_config(&VtdConfig::from_qemu_props(FLTS).unwrap());
    assert!(info.quirks().nest_parent_no_readonly);
    assert!(
        info.quirks().parent_map_writable(false),
        "map RAM read-write"
    );
    // A nest parent over an IOAS: read-only mappings refused afterwards.
    let ioas = sim.alloc_ioas();
    sim.vfio_bind_default(ioas, flags).unwrap();
    let e = sim.ioas_map(ioas, 0, 0x1000, HOST_BASE, false).unwrap_err();
    assert!(e.message.contains("ERRATA_772415_SPR17"), "{e}");
    sim.ioas_map(ioas, 0, 0x1000, HOST_BASE, true).unwrap();
    // An IOAS that already holds a read-only mapping cannot get a nest parent.
    let ioas2 = sim.alloc_ioas();
    sim.ioas_map(ioas2, 0, 0x1000, HOST_BASE, false).unwrap();
    let e = sim.vfio_bind_default(ioas2, flags).unwrap_err();
    assert!(e.message.contains("ERRATA_772415_SPR17"), "{e}");
    // Without the nesting request (first stage off) nothing is refused.
    sim.vfio_bind_default(ioas2, ViommuFlags::default())
        .unwrap();
}

/// The host is invalidated before the guest can see its wait descriptor complete: the status
/// dword of the batch's wait is still the old value whenever `IOMMU_HWPT_INVALIDATE` runs.
#[test]
fn host_invalidation_happens_before_the_guest_sees_completion() {
    // The wait-status dword each IOMMU_HWPT_INVALIDATE call saw, read as the host runs it.
    let seen = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let cfg = VtdConfig::from_qemu_props(FLTS).unwrap();
    let info = host_info_for(&cfg);
    let mut status = 0;
    let mut rig = Rig::build(cfg, info, None, |sim, g| {
        let (mem, at) = (g.mem.clone(), g.queue.as_ref().unwrap().status);
        status = at;
        let seen = seen.clone();
        Arc::new(InvalidateHook {
            sim,
            invalidate: Box::new(move |sim, hwpt, entries| {
                seen.lock().unwrap().push(mem.read_u64(at).unwrap() as u32);
                sim.invalidate(hwpt, entries)
            }),
        })
    });
    rig.g.set_translation(true);
    for round in 1..=3u32 {
        let before = rig.g.mem.read_u64(status).unwrap() as u32;
        rig.g.submit(&[
            pasid_iotlb_page(DID, 0, IOVA, 0, true),
            pasid_iotlb_page(DID, 0, IOVA + 0x1000, 0, true),
        ]);
        let calls = std::mem::take(&mut *seen.lock().unwrap());
        assert_eq!(
            calls,
            vec![before],
            "round {round}: one call, before completion"
        );
        assert_ne!(rig.g.mem.read_u64(status).unwrap() as u32, before);
    }
}

/// A platform reset (`VtdUnit::reset` publishes `VtdEvent::Reset`): the device goes back to
/// its parent (translation off) with no call from the VMM.
#[test]
fn resync_after_platform_reset() {
    let rig = Rig::new(FLTS);
    assert!(rig.nested_hwpt().is_some());
    rig.g.unit.reset();
    assert_eq!(rig.binding(0).unwrap().host, HostAttachment::Parent);
    assert!(rig.sim.hwpts().iter().all(|h| h.id == rig.parent));
    rig.check_host_matches_binder();
}

/// A batch of forwarded invalidations is held until its end and then sent as one
/// `IOMMU_HWPT_INVALIDATE`. vtd-core marks the batch's last invalidation, and the binder also
/// ends a batch at whatever the unit does next (module doc of the binder's forwarding: a
/// `WaitCompleted`, a queue error, the next MMIO write), or when the VMM asks
/// (`flush_pending`). The events are published to the binder as the unit would, one
/// invalidation that does not end its batch followed by each way the batch can end.
#[test]
fn an_open_batch_is_sent_at_whatever_ends_it() {
    use vtd_core::{InvalidationSource, VtdEvent, VtdObserver};
    let rig = Rig::new(FLTS);
    let hwpt = rig.nested_hwpt().unwrap();
    rig.sim.take_invalidation_log();
    let open = |addr: u64| {
        rig.binder.on_event(&VtdEvent::Invalidation {
            source: InvalidationSource::Queue {
                index: 0,
                ends_batch: false,
            },
            desc: pasid_iotlb_page(DID, 0, addr, 0, true),
        });
        assert!(
            rig.sim.take_invalidation_log().is_empty(),
            "held until the batch ends"
        );
    };
    let end = |what: &str| match what {
        "WaitCompleted" => rig.binder.on_event(&VtdEvent::WaitCompleted {
            status_addr: None,
            interrupt: false,
        }),
        "QueueError" => rig
            .binder
            .on_event(&VtdEvent::QueueError { head: 1, iqei: 1 }),
        "RegisterWrite" => rig.binder.on_event(&VtdEvent::RegisterWrite {
            offset: reg::IQT,
            size: 8,
            value: 0,
        }),
        _ => rig.binder.flush_pending(),
    };
    let enders = [
        "WaitCompleted",
        "QueueError",
        "RegisterWrite",
        "flush_pending",
    ];
    for (i, what) in enders.into_iter().enumerate() {
        let addr = IOVA + i as u64 * 0x1000;
        open(addr);
        open(addr + 0x10_0000);
        end(what);
        assert_eq!(
            rig.sim.take_invalidation_log(),
            vec![(
                hwpt,
                vec![
                    VtdS1Invalidation::for_range(addr, addr + 0xfff, true),
                    VtdS1Invalidation::for_range(addr + 0x10_0000, addr + 0x10_0fff, true),
                ]
            )],
            "{what}"
        );
        // Nothing is left to send twice.
        end(what);
        assert!(rig.sim.take_invalidation_log().is_empty(), "{what}");
    }
    // A register-based invalidation is a batch of its own.
    rig.binder.on_event(&VtdEvent::Invalidation {
        source: InvalidationSource::Register,
        desc: pasid_iotlb_all(DID, 0),
    });
    assert_eq!(
        rig.sim.take_invalidation_log(),
        vec![(hwpt, vec![VtdS1Invalidation::ALL])]
    );
}

/// The binder's `Debug` output (what a VMM logs) says how many devices it binds.
#[test]
fn debug_output_counts_the_registered_devices() {
    let rig = Rig::new(FLTS);
    let text = format!("{:?}", rig.binder);
    assert!(
        text.starts_with("NestedBinder") && text.contains("devices: 1"),
        "{text}"
    );
    rig.binder.unregister(BDF).unwrap();
    assert!(!rig.binder.is_registered(BDF));
    assert!(format!("{:?}", rig.binder).contains("devices: 0"));
}

/// A guest configuration the host cannot run is reported to the VMM once when the binding
/// becomes unsupported, not again on every re-evaluation of the same programming, and again
/// when the guest comes back to it from another blocked state.
#[test]
fn unsupported_programming_is_reported_once_per_change() {
    let cfg = VtdConfig {
        scalable_mode: true,
        first_stage: true,
        second_stage: true,
        nesting: true,
        ..VtdConfig::default()
    };
    let info = host_info_for(&cfg);
    let mut rig = Rig::unbound(cfg, info);
    rig.g.set_translation(true);
    let reports = |rig: &Rig| {
        rig.events
            .take()
            .iter()
            .filter(|e| matches!(e, AccelEvent::GuestConfigUnsupported { .. }))
            .count()
    };
    reports(&rig);
    let ss = rig.new_fs_table(0, 0, false);
    let flush = |rig: &mut Rig| {
        rig.g
            .submit(&[pasid_cache(DID, PasidCacheGranularity::Pasid { pasid: 0 })])
    };
    rig.write_pasid_entry(0, PasidEntry::second_stage(ss, 2, DID));
    flush(&mut rig);
    assert_eq!(reports(&rig), 1, "unsupported");
    flush(&mut rig);
    rig.g
        .submit(&[context_cache(ContextCacheGranularity::Global)]);
    assert_eq!(reports(&rig), 0, "the same programming again");
    // Not present (the guest's own fault, nothing for the VMM), then second stage again.
    rig.write_pasid_entry(0, PasidEntry::default());
    flush(&mut rig);
    assert_eq!(
        rig.binding(0).unwrap().blocked,
        Some(BlockCause::Guest {
            reason: FaultReason::PasidEntryNotPresent
        })
    );
    assert_eq!(reports(&rig), 0, "not present");
    rig.write_pasid_entry(0, PasidEntry::second_stage(ss, 2, DID));
    flush(&mut rig);
    assert_eq!(reports(&rig), 1, "unsupported again");
    assert_eq!(rig.binder.stats().guest_config_errors, 2);
    rig.check_host_matches_binder();
}
