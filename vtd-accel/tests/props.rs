//! Random sequences of guest actions and injected host failures, two assigned devices sharing
//! a PASID table, on one host IOMMU or on two (two iommufds, the second device on the other). After every step the host holds exactly the HWPTs the bindings need (plus
//! known orphans), every attachment is what the binder recorded, and every injected failure
//! was reported once. After the failures stop and a retry, everything converges: no orphan,
//! nothing dirty, the bindings match the guest's tables, and a guest that invalidates sees
//! DMA agree with its tables.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use vtd_accel::sim::{SimHostIommu, SimOp};
use vtd_accel::*;
use vtd_regs::inv::*;
use vtd_tables::GuestRam;
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_tables::walk::AccessKind;

const FLTS: &str = "x-scalable-mode=on,x-flts=on";
const SID_B: u16 = 0x0101;
const BDF_B: Bdf = Bdf::new(1, 0, 1);
const SLOTS: u64 = 8;
const GPA_A: u64 = 0x80_0000;
const GPA_B: u64 = 0xc0_0000;

#[derive(Clone, Debug)]
enum Pe {
    TableA,
    TableB,
    TableAFpd,
    PassThrough,
    NotPresent,
    SecondStage,
    FiveLevel,
    Garbage([u64; 8]),
}

#[derive(Clone, Debug)]
enum Op {
    Map {
        slot: u64,
        writable: bool,
    },
    /// A driver mapping a buffer and the device using it at once (both devices).
    MapDma {
        slot: u64,
    },
    Unmap {
        slot: u64,
    },
    PasidIotlbPage {
        slot: u64,
        am: u8,
        ih: bool,
    },
    PasidIotlbAll,
    IotlbGlobal,
    IotlbDomain {
        other: bool,
    },
    SetPe(Pe, bool),
    SetContextB([u64; 4]),
    PasidCache {
        g: u8,
    },
    ContextCache {
        g: u8,
    },
    ToggleTe,
    Srtp,
    /// Failures on the first device's host, or (`b`) on the second device's.
    Fail {
        op: SimOp,
        n: u32,
        b: bool,
    },
    FailPartial {
        handled: u32,
        b: bool,
    },
    Dma {
        b: bool,
        slot: u64,
        write: bool,
    },
    ProcessFaults,
    Retry,
    ToggleB,
}

fn sim_op() -> impl Strategy<Value = SimOp> {
    prop_oneof![
        Just(SimOp::AllocHwpt),
        Just(SimOp::Attach),
        Just(SimOp::Detach),
        Just(SimOp::Invalidate),
        Just(SimOp::Destroy),
        Just(SimOp::ReadFaults),
    ]
}

fn pe() -> impl Strategy<Value = Pe> {
    prop_oneof![
        6 => Just(Pe::TableA),
        4 => Just(Pe::TableB),
        1 => Just(Pe::TableAFpd),
        1 => Just(Pe::PassThrough),
        1 => Just(Pe::NotPresent),
        1 => Just(Pe::SecondStage),
        1 => Just(Pe::FiveLevel),
        1 => any::<[u64; 8]>().prop_map(|mut w| {
            w[0] |= 1; // present, so the rest of the entry is looked at
            Pe::Garbage(w)
        }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..SLOTS, any::<bool>()).prop_map(|(slot, writable)| Op::Map { slot, writable }),
        4 => (0..SLOTS).prop_map(|slot| Op::MapDma { slot }),
        3 => (0..SLOTS).prop_map(|slot| Op::Unmap { slot }),
        4 => (0..SLOTS, 0u8..3, any::<bool>())
            .prop_map(|(slot, am, ih)| Op::PasidIotlbPage { slot, am, ih }),
        1 => Just(Op::PasidIotlbAll),
        1 => Just(Op::IotlbGlobal),
        1 => any::<bool>().prop_map(|other| Op::IotlbDomain { other }),
        6 => (pe(), prop::bool::weighted(0.8)).prop_map(|(p, inv)| Op::SetPe(p, inv)),
        1 => any::<[u64; 4]>().prop_map(Op::SetContextB),
        3 => (0u8..3).prop_map(|g| Op::PasidCache { g }),
        2 => (0u8..4).prop_map(|g| Op::ContextCache { g }),
        1 => Just(Op::ToggleTe),
        1 => Just(Op::Srtp),
        3 => (sim_op(), 1u32..3, any::<bool>()).prop_map(|(op, n, b)| Op::Fail { op, n, b }),
        1 => (0u32..3, any::<bool>()).prop_map(|(handled, b)| Op::FailPartial { handled, b }),
        4 => (any::<bool>(), 0..SLOTS, any::<bool>())
            .prop_map(|(b, slot, write)| Op::Dma { b, slot, write }),
        2 => Just(Op::ProcessFaults),
        1 => Just(Op::Retry),
        1 => Just(Op::ToggleB),
    ]
}

struct World {
    rig: Rig,
    table_a: u64,
    table_b: u64,
    pe: Pe,
    te: bool,
    ctx_table: u64,
    good_ctx: [u64; 4],
    ctx_b_good: bool,
    /// The second device's host: the rig's own, or a second one.
    sim_b: Arc<SimHostIommu<Mem>>,
    dev_b: DeviceId,
    parent_b: HwptId,
    b_registered: bool,
}

impl World {
    fn new() -> Self {
        Self::build(false)
    }

    /// The second device bound to another iommufd.
    fn two_hosts() -> Self {
        Self::build(true)
    }

    fn build(second_host_for_b: bool) -> Self {
        let mut rig = Rig::new(FLTS);
        // The model checks fault routing: the simulator reports non-recoverable faults.
        rig.sim.report_unrecoverable_faults(true);
        let table_a = rig.fs_root;
        // Table A starts with the rig's IOVA -> GPA mapping; move it to slot space.
        rig.fs().unmap(IOVA, PageSize::Size4K).unwrap();
        let table_b = rig.new_fs_table(IOVA + SLOTS * 0x1000, GPA_B, true);
        // Device B (01:00.1) shares A's PASID directory.
        let ctx_table = rig.g.mem.read_u64(rig.ctx + 16).unwrap() & ADDR_MASK;
        let good_ctx: [u64; 4] = rig.g.mem.read_words(ctx_table).unwrap();
        rig.g
            .mem
            .write_words(ctx_table + (SID_B & 0x7f) as u64 * 32, &good_ctx)
            .unwrap();
        let (sim_b, ioas_b) = if second_host_for_b {
            second_host(&rig.g, *rig.sim.info(), HOST_BASE)
        } else {
            (rig.sim.clone(), rig.ioas)
        };
        let (dev_b, parent_b) = sim_b
            .vfio_bind_default(ioas_b, rig.binder.viommu_flags())
            .unwrap();
        let hd = HostIommuDevice::query(sim_b.clone(), "0000:01:00.1", dev_b, parent_b).unwrap();
        rig.binder
            .register(BDF_B, hd, PciTopology::default())
            .unwrap();
        rig.g.submit(&[pasid_iotlb_all(DID, 0)]);
        Self {
            rig,
            table_a,
            table_b,
            pe: Pe::TableA,
            te: true,
            ctx_table,
            good_ctx,
            ctx_b_good: true,
            sim_b,
            dev_b,
            parent_b,
            b_registered: true,
        }
    }

    fn current_table(&self) -> (u64, u64) {
        match self.pe {
            Pe::TableB => (self.table_b, GPA_B),
            _ => (self.table_a, GPA_A),
        }
    }

    fn apply(&mut self, op: &Op) {
        let mem = self.rig.g.mem.clone();
        match op {
            Op::Map { slot, writable } => {
                let (root, gpa) = self.current_table();
                let mut pt =
                    PageTableBuilder::at(&mem, root, PageTableFormat::FirstStage { levels: 4 });
                pt.map(
                    &mut self.rig.g.frames,
                    IOVA + slot * 0x1000,
                    gpa + slot * 0x1000,
                    PageSize::Size4K,
                    true,
                    *writable,
                )
                .unwrap();
            }
            Op::MapDma { slot } => {
                self.apply(&Op::Map {
                    slot: *slot,
                    writable: true,
                });
                for b in [false, true] {
                    self.apply(&Op::Dma {
                        b,
                        slot: *slot,
                        write: false,
                    });
                }
            }
            Op::Unmap { slot } => {
                let (root, _) = self.current_table();
                let mut pt =
                    PageTableBuilder::at(&mem, root, PageTableFormat::FirstStage { levels: 4 });
                pt.unmap(IOVA + slot * 0x1000, PageSize::Size4K).unwrap();
            }
            Op::PasidIotlbPage { slot, am, ih } => {
                self.rig
                    .g
                    .submit(&[pasid_iotlb_page(DID, 0, IOVA + slot * 0x1000, *am, *ih)])
            }
            Op::PasidIotlbAll => self.rig.g.submit(&[pasid_iotlb_all(DID, 0)]),
            Op::IotlbGlobal => self.rig.g.submit(&[iotlb(IotlbGranularity::Global)]),
            Op::IotlbDomain { other } => self.rig.g.submit(&[iotlb(IotlbGranularity::Domain {
                did: DID + u16::from(*other),
            })]),
            Op::SetPe(kind, invalidate) => {
                let e = match kind {
                    Pe::TableA => PasidEntry::first_stage(self.table_a, false, DID, 2),
                    Pe::TableB => PasidEntry::first_stage(self.table_b, false, DID, 2),
                    Pe::TableAFpd => {
                        PasidEntry::first_stage(self.table_a, false, DID, 2).with_fpd(true)
                    }
                    Pe::PassThrough => PasidEntry::pass_through(DID, 2),
                    Pe::NotPresent => PasidEntry::default(),
                    Pe::SecondStage => PasidEntry::second_stage(self.table_a, 2, DID),
                    Pe::FiveLevel => PasidEntry::first_stage(self.table_a, true, DID, 2),
                    Pe::Garbage(w) => PasidEntry(*w),
                };
                self.rig.write_pasid_entry(0, e);
                self.pe = kind.clone();
                if *invalidate {
                    self.rig
                        .g
                        .submit(&[pasid_cache(DID, PasidCacheGranularity::Pasid { pasid: 0 })]);
                }
            }
            Op::SetContextB(words) => {
                // Garbage half the time, the good entry otherwise.
                let w = if words[3] & 1 == 0 {
                    self.good_ctx
                } else {
                    *words
                };
                self.ctx_b_good = w == self.good_ctx;
                mem.write_words(self.ctx_table + (SID_B & 0x7f) as u64 * 32, &w)
                    .unwrap();
            }
            Op::PasidCache { g } => {
                let granularity = match g {
                    0 => PasidCacheGranularity::Pasid { pasid: 0 },
                    1 => PasidCacheGranularity::Domain,
                    _ => PasidCacheGranularity::Global,
                };
                self.rig.g.submit(&[pasid_cache(DID, granularity)]);
            }
            Op::ContextCache { g } => {
                let granularity = match g {
                    0 => ContextCacheGranularity::Global,
                    1 => ContextCacheGranularity::Domain { did: DID },
                    2 => ContextCacheGranularity::Device {
                        did: DID,
                        sid: SID,
                        fm: 0,
                    },
                    _ => ContextCacheGranularity::Device {
                        did: DID,
                        sid: SID_B,
                        fm: 0,
                    },
                };
                self.rig.g.submit(&[context_cache(granularity)]);
            }
            Op::ToggleTe => {
                self.te = !self.te;
                self.rig.g.set_translation(self.te);
            }
            Op::Srtp => {
                let rt = self.rig.g.r64(vtd_regs::regs::offset::RTADDR);
                self.rig.g.set_root(rt);
            }
            Op::Fail { op, n, b } => self.sim(*b).fail_next(*op, *n),
            Op::FailPartial { handled, b } => self.sim(*b).fail_invalidate_partially(*handled),
            Op::Dma { b, slot, write } => {
                let dev = if *b { self.dev_b } else { self.rig.dev };
                let sim = self.sim(*b).clone();
                let access = if *write {
                    AccessKind::Write
                } else {
                    AccessKind::Read
                };
                let _ = sim.dma_translate(dev, None, IOVA + slot * 0x1000, access);
            }
            Op::ProcessFaults => {
                self.rig.binder.process_host_faults();
            }
            Op::Retry => self.rig.binder.retry_failed(),
            Op::ToggleB => {
                if self.b_registered {
                    if self.rig.binder.unregister(BDF_B).is_ok() {
                        self.b_registered = false;
                    }
                } else {
                    let hd = HostIommuDevice::iommufd(
                        "0000:01:00.1",
                        self.sim_b.clone(),
                        self.dev_b,
                        self.parent_b,
                        *self.rig.sim.info(),
                    );
                    self.rig
                        .binder
                        .register(BDF_B, hd, PciTopology::default())
                        .unwrap();
                    self.b_registered = true;
                }
            }
        }
    }

    fn sim(&self, b: bool) -> &Arc<SimHostIommu<Mem>> {
        if b { &self.sim_b } else { &self.rig.sim }
    }

    fn separate_hosts(&self) -> bool {
        !Arc::ptr_eq(&self.sim_b, &self.rig.sim)
    }

    fn check(&self) {
        let rig = &self.rig;
        let a = (BDF, rig.dev, rig.parent);
        let b = (BDF_B, self.dev_b, self.parent_b);
        if self.separate_hosts() {
            check_host_matches_binder(&rig.sim, &rig.binder, &[a]);
            check_host_matches_binder(&self.sim_b, &rig.binder, &[b]);
        } else {
            check_host_matches_binder(&rig.sim, &rig.binder, &[a, b]);
        }
        if !self.b_registered {
            assert_eq!(
                self.sim_b.attachments(self.dev_b),
                BTreeMap::from([(None, self.parent_b)]),
                "an unregistered device is back on its default HWPT"
            );
        }
        let injected = if self.separate_hosts() {
            rig.sim.stats().injected_failures + self.sim_b.stats().injected_failures
        } else {
            rig.sim.stats().injected_failures
        };
        assert_eq!(
            rig.binder.stats().host_errors,
            injected,
            "every injected failure reported once"
        );
    }

    /// Failures off, retry, and the guest's full invalidation: everything converges.
    fn converge(&mut self) {
        self.rig.sim.clear_failures();
        self.sim_b.clear_failures();
        self.rig.binder.retry_failed();
        self.rig.binder.resync_all();
        // The guest's own page-selective invalidations, as Linux issues them.
        let pages: Vec<InvDesc> = (0..SLOTS)
            .map(|slot| pasid_iotlb_page(DID, 0, IOVA + slot * 0x1000, 0, true))
            .collect();
        self.rig.g.submit(&pages);
        self.check();
        assert!(self.rig.binder.orphans().is_empty(), "orphans destroyed");
        let bindings = self.rig.binder.bindings();
        assert!(bindings.iter().all(|b| !b.dirty), "{bindings:?}");
        let devices: Vec<(Bdf, DeviceId, bool, Arc<SimHostIommu<Mem>>)> = if self.b_registered {
            vec![
                (BDF, self.rig.dev, true, self.rig.sim.clone()),
                (BDF_B, self.dev_b, self.ctx_b_good, self.sim_b.clone()),
            ]
        } else {
            vec![(BDF, self.rig.dev, true, self.rig.sim.clone())]
        };
        for (bdf, dev, ctx_good, sim) in devices {
            let b = bindings
                .iter()
                .find(|b| b.bdf == bdf && b.pasid.is_none())
                .unwrap();
            if !self.te {
                assert_eq!(b.host, HostAttachment::Parent, "{bdf}: translation off");
                continue;
            }
            if !ctx_good {
                continue;
            }
            let (root, gpa) = self.current_table();
            match self.pe {
                Pe::TableA | Pe::TableB | Pe::TableAFpd => {
                    assert!(matches!(b.host, HostAttachment::Nested(_)), "{bdf}: {b:?}");
                    assert_eq!(b.s1.unwrap().pgtbl_addr, root);
                    // DMA agrees with the guest's table.
                    let pt = PageTableBuilder::at(
                        &self.rig.g.mem,
                        root,
                        PageTableFormat::FirstStage { levels: 4 },
                    );
                    for slot in 0..SLOTS {
                        let iova = IOVA + slot * 0x1000;
                        let mapped = pt
                            .leaf_slot(iova, PageSize::Size4K)
                            .unwrap()
                            .is_some_and(|s| self.rig.g.mem.read_u64(s).unwrap() & 1 != 0);
                        let got = sim.dma_translate(dev, None, iova, AccessKind::Read);
                        if mapped {
                            assert_eq!(got.unwrap().hpa, HOST_BASE + gpa + slot * 0x1000);
                        } else {
                            assert!(got.is_err(), "{bdf} slot {slot}: stale translation");
                        }
                    }
                }
                Pe::PassThrough => assert_eq!(b.host, HostAttachment::Parent),
                Pe::NotPresent | Pe::SecondStage | Pe::FiveLevel => {
                    assert_eq!(b.host, HostAttachment::Blocked, "{bdf}: {b:?}")
                }
                Pe::Garbage(_) => {}
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn host_state_tracks_bindings_under_failures(ops in prop::collection::vec(op(), 1..40)) {
        let mut w = World::new();
        w.check();
        for op in &ops {
            w.apply(op);
            w.check();
        }
        w.converge();
    }

    /// The same with the second device on another iommufd: each host holds exactly what its
    /// devices' bindings need, whichever host fails.
    #[test]
    fn two_hosts_track_bindings_under_failures(ops in prop::collection::vec(op(), 1..40)) {
        let mut w = World::two_hosts();
        w.check();
        for op in &ops {
            w.apply(op);
            w.check();
        }
        w.converge();
    }

    /// Whatever a guest puts in its context and PASID entries, the binder neither panics nor
    /// loses track of host objects.
    #[test]
    fn untrusted_entries_never_break_the_binder(
        pe_words in any::<[u64; 8]>(),
        ctx_words in any::<[u64; 4]>(),
        present in any::<bool>(),
    ) {
        let mut w = World::new();
        let mut pe = pe_words;
        if present {
            pe[0] |= 1;
        }
        w.apply(&Op::SetPe(Pe::Garbage(pe), true));
        w.apply(&Op::PasidCache { g: 0 });
        w.check();
        w.apply(&Op::SetContextB(ctx_words));
        w.apply(&Op::ContextCache { g: 0 });
        w.check();
        w.apply(&Op::PasidIotlbAll);
        w.apply(&Op::Dma { b: false, slot: 0, write: true });
        w.apply(&Op::ProcessFaults);
        w.check();
        w.converge();
    }
}
