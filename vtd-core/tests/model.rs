//! Model-based property test: random table edits, invalidations and translations. After an
//! invalidation covering a page, every translation of that page equals a fresh walk of the
//! current tables (the caches may only be stale where the guest did not invalidate).

use std::collections::HashSet;

use proptest::prelude::*;
use vtd_core::TranslateError;
use vtd_regs::inv::*;
use vtd_regs::regs::TranslationTableMode;
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_tables::walk::{self, AccessKind, DmaRequest, RootTable};
use vtd_testkit::driver::*;

const SID: u16 = 0x08;
const DID: u16 = 3;
const PAGES: u64 = 24;

#[derive(Clone, Debug)]
enum Op {
    Map { page: u64, target: u64, write: bool },
    Unmap { page: u64 },
    InvalidatePage { page: u64, am: u8 },
    InvalidateDomain,
    InvalidateGlobal,
    Translate { page: u64, write: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PAGES, 0u64..64, any::<bool>()).prop_map(|(page, target, write)| Op::Map { page, target, write }),
        2 => (0..PAGES).prop_map(|page| Op::Unmap { page }),
        3 => (0..PAGES, 0u8..3).prop_map(|(page, am)| Op::InvalidatePage { page, am }),
        1 => Just(Op::InvalidateDomain),
        1 => Just(Op::InvalidateGlobal),
        8 => (0..PAGES, any::<bool>()).prop_map(|(page, write)| Op::Translate { page, write }),
    ]
}

fn iova(page: u64) -> u64 {
    0x4000_0000 + page * 4096
}

fn run(scalable: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let props = if scalable {
        "x-scalable-mode=on,x-flts=on"
    } else {
        ""
    };
    let mut g = Guest::new(props, 64);
    let mem = g.mem.clone();
    g.enable_qi(scalable);
    let mut ctx = ContextTablesBuilder::new(&mem, &mut g.frames, scalable).unwrap();
    let format = if scalable {
        PageTableFormat::FirstStage { levels: 4 }
    } else {
        PageTableFormat::SecondStage { levels: 4 }
    };
    let mut pt = PageTableBuilder::new(&mem, &mut g.frames, format).unwrap();
    if scalable {
        let mut pasids = PasidTablesBuilder::new(&mem, &mut g.frames, 0).unwrap();
        pasids
            .set_entry(
                &mut g.frames,
                0,
                PasidEntry::first_stage(pt.root(), false, DID, 2),
            )
            .unwrap();
        ctx.set_scalable_context(&mut g.frames, SID, pasids.context_entry())
            .unwrap();
    } else {
        ctx.set_legacy_context(&mut g.frames, SID, ContextEntry::new(pt.root(), 2, DID))
            .unwrap();
    }
    g.set_root(ctx.rtaddr());
    g.enable_translation();
    // Keep fault records from filling up: faults are not what this test observes.
    let root = RootTable {
        addr: ctx.root(),
        mode: if scalable {
            TranslationTableMode::Scalable
        } else {
            TranslationTableMode::Legacy
        },
    };
    let cfg = walk::WalkConfig::new(g.unit.config().cap(), g.unit.config().ecap());
    // Pages changed since their last covering invalidation.
    let mut stale: HashSet<u64> = HashSet::new();
    for op in ops {
        match op {
            Op::Map {
                page,
                target,
                write,
            } => {
                pt.map(
                    &mut g.frames,
                    iova(page),
                    0x300_0000 + target * 4096,
                    PageSize::Size4K,
                    true,
                    write,
                )
                .unwrap();
                stale.insert(page);
            }
            Op::Unmap { page } => {
                pt.unmap(iova(page), PageSize::Size4K).unwrap();
                stale.insert(page);
            }
            Op::InvalidatePage { page, am } => {
                let size = 1u64 << am;
                let first = page & !(size - 1);
                let desc = if scalable {
                    InvDesc::PasidIotlb(PasidIotlbInv {
                        did: DID,
                        pasid: 0,
                        granularity: PasidIotlbGranularity::Page {
                            addr: iova(first),
                            am,
                            ih: true,
                        },
                        ignored: Default::default(),
                    })
                } else {
                    InvDesc::Iotlb(IotlbInv {
                        granularity: IotlbGranularity::Page {
                            did: DID,
                            addr: iova(first),
                            am,
                            ih: true,
                        },
                        drain_read: false,
                        drain_write: false,
                        ignored: Default::default(),
                    })
                };
                g.submit(&[desc]);
                for p in first..first + size {
                    stale.remove(&p);
                }
            }
            Op::InvalidateDomain => {
                let desc = if scalable {
                    InvDesc::PasidIotlb(PasidIotlbInv {
                        did: DID,
                        pasid: 0,
                        granularity: PasidIotlbGranularity::AllInPasid,
                        ignored: Default::default(),
                    })
                } else {
                    InvDesc::Iotlb(IotlbInv {
                        granularity: IotlbGranularity::Domain { did: DID },
                        drain_read: false,
                        drain_write: false,
                        ignored: Default::default(),
                    })
                };
                g.submit(&[desc]);
                stale.clear();
            }
            Op::InvalidateGlobal => {
                g.submit(&[InvDesc::Iotlb(IotlbInv {
                    granularity: IotlbGranularity::Global,
                    drain_read: false,
                    drain_write: false,
                    ignored: Default::default(),
                })]);
                stale.clear();
            }
            Op::Translate { page, write } => {
                let access = if write {
                    AccessKind::Write
                } else {
                    AccessKind::Read
                };
                let req = DmaRequest::new(SID, iova(page) + 0x10, access);
                let got = g.unit.translate(&req);
                // Clear any fault record so the next fault is recorded too.
                g.w32(0x22c, 0x8000_0000);
                g.w32(0x34, 0x1);
                if stale.contains(&page) {
                    continue;
                }
                let fresh = walk::translate(&g.mem, &cfg, root, &req);
                match (got, fresh) {
                    (Ok(a), Ok(b)) => {
                        prop_assert_eq!(a.output, b.output);
                        prop_assert_eq!(a.page_size, b.page_size);
                    }
                    (Err(TranslateError::Fault(a)), Err(b)) => prop_assert_eq!(a.reason, b.reason),
                    (a, b) => prop_assert!(false, "unit {:?} vs fresh walk {:?}", a, b),
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn first_stage_cache_agrees_with_fresh_walks(ops in prop::collection::vec(op(), 1..60)) {
        run(true, ops)?;
    }

    #[test]
    fn legacy_cache_agrees_with_fresh_walks(ops in prop::collection::vec(op(), 1..60)) {
        run(false, ops)?;
    }
}
