//! Device threads translate while a vCPU thread rewrites tables and invalidates: no deadlock,
//! and no translation that starts after an invalidation completed returns the old mapping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vtd_regs::inv::*;
use vtd_regs::regs::offset as reg;
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_tables::walk::{AccessKind, DmaRequest};
use vtd_testkit::driver::*;

const DID: u16 = 7;

fn target(generation: u64) -> u64 {
    0x300_0000 + (generation % 512) * 4096
}

#[test]
fn translations_never_see_a_mapping_older_than_the_last_completed_invalidation() {
    let mut g = Guest::new("x-scalable-mode=on,x-flts=on", 64);
    let mem = g.mem.clone();
    g.enable_qi(true);
    let mut ctx = ContextTablesBuilder::new(&mem, &mut g.frames, true).unwrap();
    let mut pasids = PasidTablesBuilder::new(&mem, &mut g.frames, 0).unwrap();
    let mut fs = PageTableBuilder::new(
        &mem,
        &mut g.frames,
        PageTableFormat::FirstStage { levels: 4 },
    )
    .unwrap();
    const IOVA: u64 = 0x7000_0000;
    fs.map(&mut g.frames, IOVA, target(0), PageSize::Size4K, true, true)
        .unwrap();
    // Unchanging pages that other devices hammer (IOTLB hits under contention).
    for p in 1..64u64 {
        fs.map(
            &mut g.frames,
            IOVA + p * 4096,
            0x200_0000 + p * 4096,
            PageSize::Size4K,
            true,
            true,
        )
        .unwrap();
    }
    pasids
        .set_entry(
            &mut g.frames,
            0,
            PasidEntry::first_stage(fs.root(), false, DID, 2),
        )
        .unwrap();
    for sid in [0x08u16, 0x10, 0x18, 0x20] {
        ctx.set_scalable_context(&mut g.frames, sid, pasids.context_entry())
            .unwrap();
    }
    g.set_root(ctx.rtaddr());
    g.enable_translation();

    let completed = Arc::new(AtomicU64::new(0));
    let start_line = Arc::new(std::sync::Barrier::new(5));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for sid in [0x08u16, 0x10, 0x18, 0x20] {
        let unit = g.unit.clone();
        let completed = completed.clone();
        let stop = stop.clone();
        let start_line = start_line.clone();
        threads.push(std::thread::spawn(move || {
            start_line.wait();
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let floor = completed.load(Ordering::Acquire);
                let t = unit
                    .translate(&DmaRequest::new(sid, IOVA, AccessKind::Read))
                    .unwrap();
                let generation = (t.output - 0x300_0000) / 4096;
                // The mapping is target(k) for some k >= floor (fewer than 512 generations run).
                assert!(
                    generation >= floor,
                    "sid {sid:#x}: saw generation {generation} after {floor} completed"
                );
                for p in 1..8u64 {
                    let t = unit.translate(&DmaRequest::new(
                        sid,
                        IOVA + p * 4096 * (n % 8 + 1) % (64 * 4096),
                        AccessKind::Write,
                    ));
                    assert!(t.is_ok());
                }
                n += 1;
            }
            n
        }));
    }
    start_line.wait();
    let start = Instant::now();
    let mut generation = 0u64;
    // Paced so the device threads interleave with every generation on a 2-core machine.
    while start.elapsed() < Duration::from_secs(5) && generation < 300 {
        std::thread::sleep(Duration::from_micros(300));
        generation += 1;
        fs.map(
            &mut g.frames,
            IOVA,
            target(generation),
            PageSize::Size4K,
            true,
            true,
        )
        .unwrap();
        g.submit(&[InvDesc::PasidIotlb(PasidIotlbInv {
            did: DID,
            pasid: 0,
            granularity: PasidIotlbGranularity::Page {
                addr: IOVA,
                am: 0,
                ih: true,
            },
            ignored: Default::default(),
        })]);
        // The wait descriptor's status write is the completion the guest observes.
        completed.store(generation, Ordering::Release);
        // Registers keep being read and written by the vCPU meanwhile.
        let _ = g.r32(reg::GSTS);
        g.w32(reg::FEDATA, generation as u32);
    }
    stop.store(true, Ordering::Release);
    let counts: Vec<u64> = threads
        .into_iter()
        .map(|t| t.join().expect("device thread"))
        .collect();
    assert!(generation >= 20, "vCPU made progress: {generation}");
    assert!(
        counts.iter().all(|&n| n > 0),
        "every device thread made progress: {counts:?}"
    );
    assert_eq!(g.unit.stats().dma_faults, 0);
}

/// The lock-free hit path (optimistic set reads, per-thread adapter maps) against every
/// invalidation granularity that can remove a hot page: readers that hit through
/// `translate` and through the `Iommu` adapter, from two requesters in the domain, never see
/// a mapping older than the last invalidation whose wait descriptor completed.
#[test]
fn lock_free_hits_never_outlive_a_completed_page_pasid_or_global_invalidation() {
    use vm_memory::iommu::Iommu;
    use vm_memory::{GuestAddress, Permissions};

    let mut g = Guest::new("x-scalable-mode=on,x-flts=on", 64);
    let mem = g.mem.clone();
    g.enable_qi(true);
    let mut ctx = ContextTablesBuilder::new(&mem, &mut g.frames, true).unwrap();
    let mut pasids = PasidTablesBuilder::new(&mem, &mut g.frames, 0).unwrap();
    let mut fs = PageTableBuilder::new(
        &mem,
        &mut g.frames,
        PageTableFormat::FirstStage { levels: 4 },
    )
    .unwrap();
    const IOVA: u64 = 0x5000_0000;
    fs.map(&mut g.frames, IOVA, target(0), PageSize::Size4K, true, true)
        .unwrap();
    // Neighbours in the same 64 KiB chunk and in other sets keep the sets busy.
    for p in 1..16u64 {
        fs.map(
            &mut g.frames,
            IOVA + p * 4096,
            0x200_0000 + p * 4096,
            PageSize::Size4K,
            true,
            true,
        )
        .unwrap();
    }
    pasids
        .set_entry(
            &mut g.frames,
            0,
            PasidEntry::first_stage(fs.root(), false, DID, 2),
        )
        .unwrap();
    for sid in [0x08u16, 0x10] {
        ctx.set_scalable_context(&mut g.frames, sid, pasids.context_entry())
            .unwrap();
    }
    g.set_root(ctx.rtaddr());
    g.enable_translation();

    let completed = Arc::new(AtomicU64::new(0));
    let start_line = Arc::new(std::sync::Barrier::new(5));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (sid, through_adapter) in [(0x08u16, false), (0x10, false), (0x08, true), (0x10, true)] {
        let unit = g.unit.clone();
        let (completed, stop, start_line) = (completed.clone(), stop.clone(), start_line.clone());
        threads.push(std::thread::spawn(move || {
            let space = unit.address_space(sid, None);
            start_line.wait();
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let floor = completed.load(Ordering::Acquire);
                let output = if through_adapter {
                    let mut it = space
                        .translate(GuestAddress(IOVA), 8, Permissions::Read)
                        .unwrap();
                    it.next().unwrap().base.0
                } else {
                    unit.translate(&DmaRequest::new(sid, IOVA, AccessKind::Read))
                        .unwrap()
                        .output
                };
                let generation = (output - 0x300_0000) / 4096;
                assert!(
                    generation >= floor,
                    "sid {sid:#x} (adapter: {through_adapter}): saw generation {generation} \
                     after {floor} completed"
                );
                let p = 1 + n % 15;
                if through_adapter {
                    assert!(
                        space
                            .translate(GuestAddress(IOVA + p * 4096), 4096, Permissions::Write)
                            .is_ok()
                    );
                } else {
                    let r = DmaRequest::new(sid, IOVA + p * 4096, AccessKind::Write);
                    assert!(unit.translate(&r).is_ok());
                }
                n += 1;
            }
            n
        }));
    }
    start_line.wait();
    let start = Instant::now();
    let mut generation = 0u64;
    while start.elapsed() < Duration::from_secs(5) && generation < 300 {
        std::thread::sleep(Duration::from_micros(300));
        generation += 1;
        fs.map(
            &mut g.frames,
            IOVA,
            target(generation),
            PageSize::Size4K,
            true,
            true,
        )
        .unwrap();
        let granularity = match generation % 3 {
            0 => PasidIotlbGranularity::Page {
                addr: IOVA,
                am: 0,
                ih: false,
            },
            1 => PasidIotlbGranularity::AllInPasid,
            _ => {
                // A global IOTLB invalidation (sweeps every set, forgets every requester).
                g.submit(&[InvDesc::Iotlb(IotlbInv {
                    granularity: IotlbGranularity::Global,
                    drain_read: false,
                    drain_write: false,
                    ignored: Default::default(),
                })]);
                completed.store(generation, Ordering::Release);
                continue;
            }
        };
        g.submit(&[InvDesc::PasidIotlb(PasidIotlbInv {
            did: DID,
            pasid: 0,
            granularity,
            ignored: Default::default(),
        })]);
        completed.store(generation, Ordering::Release);
    }
    stop.store(true, Ordering::Release);
    let counts: Vec<u64> = threads
        .into_iter()
        .map(|t| t.join().expect("device thread"))
        .collect();
    assert!(generation >= 20, "vCPU made progress: {generation}");
    assert!(
        counts.iter().all(|&n| n > 0),
        "every device thread made progress: {counts:?}"
    );
    let stats = g.unit.stats();
    assert_eq!(stats.dma_faults, 0);
    assert!(
        stats.iotlb.hits > 0,
        "the hit path was exercised: {stats:?}"
    );
}

/// Device threads hitting the IOTLB at the same time each count on a stripe of their own
/// (src/cache.rs, `HitCounters`), so the statistics add up exactly: no count lost to two
/// threads bumping the same counter (up to 64 threads, the stripes there are). The threads
/// run for a while rather than a number of lookups, so they do overlap on a busy machine.
#[test]
fn hit_counts_of_concurrent_device_threads_add_up() {
    const THREADS: usize = 4;
    let mut g = Guest::new("", 64);
    g.legacy_one_page(0x08, DID, 4, 0x5000, 0x300_0000);
    let request = DmaRequest::new(0x08, 0x5000, AccessKind::Read);
    g.unit.translate(&request).unwrap();
    let before = g.unit.stats().iotlb;
    let start_line = Arc::new(std::sync::Barrier::new(THREADS + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (unit, start_line, stop) = (g.unit.clone(), start_line.clone(), stop.clone());
            std::thread::spawn(move || {
                start_line.wait();
                let mut lookups = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    unit.translate(&request).unwrap();
                    lookups += 1;
                }
                lookups
            })
        })
        .collect();
    start_line.wait();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let lookups: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let after = g.unit.stats().iotlb;
    assert_eq!(
        (after.hits - before.hits, after.misses - before.misses),
        (lookups, 0),
        "{after:?}"
    );
}
