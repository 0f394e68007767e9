//! What each invalidation removes from the unit's caches (spec 6.5.2.1-6.5.2.4): everything
//! in its scope, so that the guest's table changes are seen afterwards, and nothing outside
//! it, so that the caches keep serving the requesters the guest did not touch (the point of
//! caching; the cache design in src/cache.rs: "invalidations cost what they remove"), and
//! nothing one unit cached is seen by another.
//!
//! Whether an entry is still cached is read from the unit's statistics: the IOTLB is flushed
//! first so the next translation walks, and the walk either finds the requester's context
//! (or PASID) entry in its cache (a hit) or reads the tables (a miss).

use vtd_core::CacheStats;
use vtd_regs::fault::FaultReason;
use vtd_regs::inv::{ContextCacheGranularity, IotlbGranularity, PasidCacheGranularity};
use vtd_tables::GuestRam;
use vtd_tables::builder::{ContextTablesBuilder, PageSize, PageTableBuilder, PageTableFormat};
use vtd_tables::entries::ContextEntry;
use vtd_tables::walk::{AccessKind, DmaRequest, Translation};
use vtd_testkit::driver::*;

/// The IOVA every device here maps.
const IOVA: u64 = 0x40_0000;
/// Pages mapped from `IOVA` on.
const PAGES: u64 = 8;
/// Where the first table maps `IOVA`; the second table maps it to `GPA_2`.
const GPA_1: u64 = 0x20_0000;
const GPA_2: u64 = 0x80_0000;

fn translate(g: &Guest, sid: u16, pasid: Option<u32>, iova: u64) -> Translation {
    g.unit
        .translate(&DmaRequest {
            pasid,
            ..DmaRequest::new(sid, iova, AccessKind::Read)
        })
        .unwrap_or_else(|e| panic!("{sid:#x}/{pasid:?} at {iova:#x}: {e:?}"))
}

/// A 4-level second-stage table mapping `PAGES` pages at `IOVA` to `gpa` on.
fn second_stage_table(g: &mut Guest, gpa: u64) -> u64 {
    let mem = g.mem.clone();
    let format = PageTableFormat::SecondStage { levels: 4 };
    let mut pt = PageTableBuilder::new(&mem, &mut g.frames, format).expect("frames");
    for i in 0..PAGES {
        pt.map(
            &mut g.frames,
            IOVA + i * 4096,
            gpa + i * 4096,
            PageSize::Size4K,
            true,
            true,
        )
        .expect("map");
    }
    pt.root()
}

/// Legacy mode as Linux sets it up: QI, a context entry for each (sid, did) over one
/// second-stage table mapping `IOVA` to `GPA_1`, the root latched, translation on. Returns
/// the root table.
fn legacy_devices(g: &mut Guest, devices: &[(u16, u16)]) -> u64 {
    g.enable_qi(false);
    let table = second_stage_table(g, GPA_1);
    let mem = g.mem.clone();
    let mut ctx = ContextTablesBuilder::new(&mem, &mut g.frames, false).expect("frames");
    for &(sid, did) in devices {
        ctx.set_legacy_context(&mut g.frames, sid, ContextEntry::new(table, 2, did))
            .expect("context entry");
    }
    g.set_root(ctx.rtaddr());
    g.enable_translation();
    for &(sid, _) in devices {
        assert_eq!(translate(g, sid, None, IOVA).output, GPA_1);
    }
    ctx.root()
}

/// Rewrites the legacy context entry of `sid` (whose context table exists) in place.
fn set_legacy_context(g: &Guest, root: u64, sid: u16, entry: ContextEntry) {
    let root_entry = g.mem.read_u64(root + u64::from(sid >> 8) * 16).unwrap();
    let table = root_entry & !0xfff;
    g.mem
        .write_words(table + u64::from(sid & 0xff) * 16, &entry.0)
        .unwrap();
}

/// The cache counters `which` reads, around one translation of `sid`/`pasid` at `IOVA` after
/// a global IOTLB invalidation (so the translation walks): whether it hit.
fn walk_hits(
    g: &mut Guest,
    sid: u16,
    pasid: Option<u32>,
    which: fn(&vtd_core::UnitStats) -> CacheStats,
) -> bool {
    g.submit(&[iotlb(IotlbGranularity::Global)]);
    let before = which(&g.unit.stats());
    translate(g, sid, pasid, IOVA);
    let after = which(&g.unit.stats());
    let (hits, misses) = (after.hits - before.hits, after.misses - before.misses);
    assert_eq!(hits + misses, 1, "one lookup for {sid:#x}/{pasid:?}");
    hits == 1
}

fn context_cached(g: &mut Guest, sid: u16) -> bool {
    walk_hits(g, sid, None, |s| s.context_cache)
}

fn pasid_cached(g: &mut Guest, sid: u16, pasid: Option<u32>) -> bool {
    walk_hits(g, sid, pasid, |s| s.pasid_cache)
}

// --- Context cache (spec 6.5.2.1) ------------------------------------------------------------

/// Linux moving a device to another domain (`domain_context_clear_one`, then the new context
/// entry): a device-selective context-cache invalidation and a domain-selective IOTLB one, and
/// the device's DMA goes through its new table.
#[test]
fn a_changed_context_entry_is_used_after_its_invalidation() {
    let mut g = Guest::new("", 64);
    let root = legacy_devices(&mut g, &[(0x08, 1)]);
    let table_2 = second_stage_table(&mut g, GPA_2);
    set_legacy_context(&g, root, 0x08, ContextEntry::new(table_2, 2, 2));
    g.submit(&[
        context_cache(ContextCacheGranularity::Device {
            did: 1,
            sid: 0x08,
            fm: 0,
        }),
        iotlb(IotlbGranularity::Domain { did: 1 }),
    ]);
    let t = translate(&g, 0x08, None, IOVA + 0x123);
    assert_eq!((t.output, t.did), (GPA_2 + 0x123, 2));
}

/// The context entry a walk read serves the next walks of its requester until an
/// invalidation covers it (spec 6.2.1: the context cache is what spares the walk).
#[test]
fn a_cached_context_entry_serves_the_next_walk() {
    let mut g = Guest::new("", 64);
    legacy_devices(&mut g, &[(0x08, 1), (0x10, 1)]);
    assert!(context_cached(&mut g, 0x08));
    assert!(context_cached(&mut g, 0x10));
    assert!(context_cached(&mut g, 0x08));
    g.submit(&[context_cache(ContextCacheGranularity::Global)]);
    assert!(!context_cached(&mut g, 0x08));
    assert!(!context_cached(&mut g, 0x10));
    let stats = g.unit.stats().context_cache;
    assert_eq!(stats.entries, 2, "{stats:?}");
}

/// A device-selective invalidation covers the function numbers FM masks (spec 10.4.7:
/// FM 1 masks SID bit 2, 2 bits 2:1, 3 bits 2:0) and no other requester.
#[test]
fn a_device_selective_context_invalidation_covers_exactly_the_masked_functions() {
    // Device 1 on bus 0 (functions 0-7, SIDs 0x08-0x0f) and device 2 function 0.
    let devices: Vec<(u16, u16)> = (0x08..=0x10).map(|sid| (sid, 1)).collect();
    let mut g = Guest::new("", 64);
    legacy_devices(&mut g, &devices);
    let target = 0x0a; // function 2
    for (fm, covered) in [
        (0, &[0x0a][..]),
        (1, &[0x0a, 0x0e][..]),
        (2, &[0x08, 0x0a, 0x0c, 0x0e][..]),
        (3, &[0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f][..]),
    ] {
        for &(sid, _) in &devices {
            context_cached(&mut g, sid); // (re)fill
        }
        g.submit(&[context_cache(ContextCacheGranularity::Device {
            did: 1,
            sid: target,
            fm,
        })]);
        for &(sid, _) in &devices {
            assert_eq!(
                context_cached(&mut g, sid),
                !covered.contains(&sid),
                "FM {fm}: SID {sid:#x}"
            );
        }
    }
}

/// A domain-selective invalidation covers the legacy context entries of its domain only.
#[test]
fn a_domain_selective_context_invalidation_covers_its_domain_only() {
    let mut g = Guest::new("", 64);
    legacy_devices(&mut g, &[(0x08, 1), (0x10, 2), (0x18, 1)]);
    g.submit(&[context_cache(ContextCacheGranularity::Domain { did: 1 })]);
    assert!(!context_cached(&mut g, 0x08));
    assert!(context_cached(&mut g, 0x10));
    assert!(!context_cached(&mut g, 0x18));
}

// --- PASID cache (spec 6.5.2.4) ----------------------------------------------------------------

/// Scalable mode as Linux 6.12 sets it up: devices A (SID 0x10, PASIDs 0 and 5, domain 1) and
/// B (SID 0x18, PASID 0, domain 2), each PASID with a first-stage table mapping `IOVA` to
/// `GPA_1`, translation on; every PASID entry cached by one walk.
const A: u16 = 0x10;
const B: u16 = 0x18;

fn scalable_devices(g: &mut Guest) -> (ScalableTables, [FirstStageDomain; 3]) {
    let mut sm = g.enable_scalable_mode().unwrap();
    g.setup_device(&mut sm, A, true, false).unwrap();
    g.setup_device(&mut sm, B, true, false).unwrap();
    let domains = [(A, 0, 1), (A, 5, 1), (B, 0, 2)].map(|(sid, pasid, did)| {
        let d = g.attach_first_stage(&sm, sid, pasid, did).unwrap();
        g.fs_map(&d, IOVA, GPA_1, PageSize::Size4K, true).unwrap();
        d
    });
    g.enable_translation();
    for (sid, pasid) in [(A, None), (A, Some(5)), (B, None)] {
        assert_eq!(translate(g, sid, pasid, IOVA).output, GPA_1);
    }
    (sm, domains)
}

/// Whether each of (A, 0), (A, 5), (B, 0) is in the PASID cache; refills them.
fn pasids_cached(g: &mut Guest) -> [bool; 3] {
    [(A, None), (A, Some(5)), (B, None)].map(|(sid, pasid)| pasid_cached(g, sid, pasid))
}

/// Linux tearing a PASID down (`intel_pasid_tear_down_entry`: the entry cleared, a
/// PASID-selective PASID-cache and a PASID-IOTLB invalidation): the PASID's DMA is blocked.
#[test]
fn a_torn_down_pasid_entry_blocks_dma_after_its_invalidation() {
    let mut g = Guest::new("x-scalable-mode=on,x-flts=on", 64);
    let (sm, [a0, ..]) = scalable_devices(&mut g);
    g.detach_first_stage(&sm, &a0).unwrap();
    let fault = g
        .unit
        .translate(&DmaRequest::new(A, IOVA, AccessKind::Read))
        .unwrap_err();
    assert!(
        matches!(fault, vtd_core::TranslateError::Fault(f) if f.reason == FaultReason::PasidEntryNotPresent),
        "{fault:?}"
    );
}

/// PASID-selective: the entries of that PASID in that domain, not the same PASID of another
/// domain, not another PASID of the domain.
#[test]
fn a_pasid_selective_pasid_cache_invalidation_covers_its_pasid_in_its_domain() {
    let mut g = Guest::new("x-scalable-mode=on,x-flts=on", 64);
    scalable_devices(&mut g);
    assert_eq!(pasids_cached(&mut g), [true; 3]);
    g.submit(&[pasid_cache(1, PasidCacheGranularity::Pasid { pasid: 0 })]);
    assert_eq!(pasids_cached(&mut g), [false, true, true]);
}

/// Domain-selective: every PASID of the domain, nothing of other domains; global: all.
#[test]
fn domain_and_global_pasid_cache_invalidations_cover_their_scope() {
    let mut g = Guest::new("x-scalable-mode=on,x-flts=on", 64);
    scalable_devices(&mut g);
    g.submit(&[pasid_cache(1, PasidCacheGranularity::Domain)]);
    assert_eq!(pasids_cached(&mut g), [false, false, true]);
    g.submit(&[pasid_cache(2, PasidCacheGranularity::Domain)]);
    assert_eq!(pasids_cached(&mut g), [true, true, false]);
    g.submit(&[pasid_cache(0, PasidCacheGranularity::Global)]);
    assert_eq!(pasids_cached(&mut g), [false; 3]);
}

/// A PASID entry is found through its requester's context entry (the PASID directory
/// pointer, spec 9.4), so a context-cache invalidation drops the PASID-cache entries of the
/// requesters it covers too (always allowed, and what a guest that changed only the context
/// entry relies on), and keeps those of other requesters.
#[test]
fn a_context_cache_invalidation_drops_the_pasid_entries_of_its_requesters() {
    let mut g = Guest::new("x-scalable-mode=on,x-flts=on", 64);
    scalable_devices(&mut g);
    g.submit(&[context_cache(ContextCacheGranularity::Device {
        did: 1,
        sid: A,
        fm: 0,
    })]);
    assert_eq!(pasids_cached(&mut g), [false, false, true]);
    g.submit(&[context_cache(ContextCacheGranularity::Device {
        did: 2,
        sid: B,
        fm: 0,
    })]);
    assert_eq!(pasids_cached(&mut g), [true, true, false]);
    g.submit(&[context_cache(ContextCacheGranularity::Global)]);
    assert_eq!(pasids_cached(&mut g), [false; 3]);
}

// --- IOTLB (spec 6.5.2.3) ----------------------------------------------------------------------

/// A page-selective IOTLB invalidation removes the 2^AM pages of its naturally aligned range
/// and keeps the domain's other pages cached.
#[test]
fn a_page_selective_iotlb_invalidation_covers_its_aligned_range_only() {
    let mut g = Guest::new("", 64);
    legacy_devices(&mut g, &[(0x08, 1)]);
    // (address inside the range, AM, pages covered)
    for (addr, am, covered) in [
        (IOVA + 2 * 4096, 0, 2..3),
        (IOVA + 3 * 4096, 1, 2..4),
        (IOVA + 5 * 4096, 2, 4..8),
    ] {
        for page in 0..PAGES {
            translate(&g, 0x08, None, IOVA + page * 4096);
        }
        g.submit(&[iotlb(IotlbGranularity::Page {
            did: 1,
            addr: addr & !0xfff,
            am,
            ih: false,
        })]);
        for page in 0..PAGES {
            let before = g.unit.stats().iotlb;
            translate(&g, 0x08, None, IOVA + page * 4096);
            let hit = g.unit.stats().iotlb.hits > before.hits;
            assert_eq!(hit, !covered.contains(&page), "AM {am}: page {page}");
        }
    }
}

// --- Units ---------------------------------------------------------------------------------------

/// What one unit caches is never seen by another (a VMM may run several, e.g. one per PCI
/// segment), even on one thread, for the same requester after the same history: here two
/// guests whose tables differ only in where they are in their RAM each get their own walk.
#[test]
fn two_units_never_share_cached_entries() {
    let mut first = Guest::new("", 64);
    let mut second = Guest::new("", 64);
    // The second guest's tables sit one frame higher than the first's.
    second.frames.alloc(&second.mem, 1).unwrap();
    legacy_devices(&mut first, &[(0x08, 1)]);
    legacy_devices(&mut second, &[(0x08, 1)]);
    for page in 0..PAGES {
        for g in [&first, &second] {
            let t = translate(g, 0x08, None, IOVA + page * 4096);
            assert_eq!(t.output, GPA_1 + page * 4096);
        }
    }
}
