//! The bounds the README's "Bounds" table states for the unit, each checked where a guest
//! would push it:
//!
//! - one IQT write processes at most the queue's descriptors (2^15 at 128 bits, 2^14 at 256
//!   bits: IQA.QS = 7, spec 10.4.24) and reads each once (2 or 4 words), and publishes at most
//!   one event per descriptor after the write's own;
//! - the context cache, the PASID cache and the IOTLB hold at most their capacities
//!   ([`CacheCapacity::default`]: 256, 1024 and 16,384 entries) whatever the guest maps;
//! - page groups the unit tracks for responses: [`MAX_OUTSTANDING_GROUPS`].
//!
//! The shadow replay budget per MMIO write is checked in tests/observers.rs
//! (`one_doorbell_bounds_shadow_replay_work`), the tracked groups' eviction in
//! tests/page_requests.rs (`outstanding_groups_are_bounded_and_migrate_as_plain_data`).

use vtd_core::{CacheCapacity, MAX_OUTSTANDING_GROUPS, VtdConfig, VtdEvent};
use vtd_regs::inv::{ContextCacheGranularity, DescWidth};
use vtd_regs::regs::{Iqa, offset as reg};
use vtd_tables::GuestRam;
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_tables::walk::{AccessKind, DeviceContext, DmaRequest};
use vtd_testkit::driver::{CountingRam, Guest, context_cache};

/// Descriptors of the largest queue (IQA.QS = 7) at 128 bits.
const MAX_QUEUE_DESCRIPTORS: u32 = 1 << 15;

/// A guest fills the largest queue (all but one slot: a full queue) and writes IQT once: the
/// unit processes every descriptor in that one write, reading each exactly once, and never
/// more than the queue holds.
#[test]
fn one_tail_write_costs_at_most_the_queue_and_one_read_per_descriptor_word() {
    for (props, wide) in [("", false), ("x-scalable-mode=on", true)] {
        let cfg = VtdConfig::from_qemu_props(props).unwrap();
        let ram = CountingRam::new(64 << 20);
        let mut g = Guest::over_memory(cfg, ram.clone());
        let iqa = Iqa::new().with_qs(7).with_dw(wide);
        let (count, size) = (iqa.descriptor_count(), iqa.descriptor_size() as u64);
        assert_eq!(
            count,
            if wide {
                MAX_QUEUE_DESCRIPTORS / 2
            } else {
                MAX_QUEUE_DESCRIPTORS
            }
        );
        let base = g.frames.alloc(&g.mem, count as u64 * size / 4096).unwrap();
        g.w64(reg::IQA, iqa.with_iqa(base >> 12).into_bits());
        g.w64(reg::IQT, 0);
        g.set_queued_invalidation(true);
        let width = if wide {
            DescWidth::Bits256
        } else {
            DescWidth::Bits128
        };
        // Context-cache invalidations: they read no guest memory themselves.
        let raw = context_cache(ContextCacheGranularity::Global)
            .encode(width)
            .unwrap();
        let words = &raw.0[..(size / 8) as usize];
        let queued = count - 1;
        for slot in 0..queued as u64 {
            ram.write_words(base + slot * size, words).unwrap();
        }
        g.log.take();
        let before = ram.words_read();
        g.w64(reg::IQT, queued as u64 * size);
        let read = ram.words_read() - before;
        assert_eq!(
            g.r64(reg::IQH),
            g.r64(reg::IQT),
            "the whole queue in one write"
        );
        assert!(!g.fsts().iqe());
        assert_eq!(
            read,
            queued as u64 * size / 8,
            "each descriptor read once ({props:?})"
        );
        assert!(read <= MAX_QUEUE_DESCRIPTORS as u64 * 2);
        // The write's own event, then one per descriptor.
        let events = g.log.take();
        assert!(matches!(events[0], VtdEvent::RegisterWrite { .. }));
        assert_eq!(events.len(), 1 + queued as usize, "{props:?}");

        // Writing the same tail again costs nothing: the queue is empty.
        let before = ram.words_read();
        g.w64(reg::IQT, queued as u64 * size);
        assert_eq!(ram.words_read(), before);
    }
}

/// A 4-level second-stage table mapping `pages` consecutive 4 KiB pages from IOVA 0 to one
/// data page.
fn second_stage(g: &mut Guest, pages: u64) -> u64 {
    let data = g.frames.alloc(&g.mem, 1).unwrap();
    let mut pt = PageTableBuilder::new(
        &g.mem,
        &mut g.frames,
        PageTableFormat::SecondStage { levels: 4 },
    )
    .unwrap();
    for page in 0..pages {
        pt.map(
            &mut g.frames,
            page << 12,
            data,
            PageSize::Size4K,
            true,
            true,
        )
        .unwrap();
    }
    pt.root()
}

#[test]
fn the_context_cache_and_the_iotlb_hold_at_most_their_capacity() {
    let default = CacheCapacity::default();
    assert_eq!(
        (default.iotlb, default.context, default.pasid),
        (16_384, 256, 1024),
        "the README's Bounds table states these"
    );
    // What one entry of each map cache holds (key and value), as the README states it.
    assert_eq!(std::mem::size_of::<(u16, DeviceContext)>(), 48);
    assert_eq!(std::mem::size_of::<((u16, u32), PasidEntry)>(), 72);
    let mut g = Guest::new("", 64);
    let pages = default.iotlb as u64 + default.iotlb as u64 / 4;
    let table = second_stage(&mut g, pages);
    let requesters = default.context as u16 + 64;
    let mut ctx = ContextTablesBuilder::new(&g.mem, &mut g.frames, false).unwrap();
    for sid in 0..requesters {
        ctx.set_legacy_context(&mut g.frames, sid, ContextEntry::new(table, 2, 1))
            .unwrap();
    }
    let rtaddr = ctx.rtaddr();
    g.set_root(rtaddr);
    g.enable_translation();
    assert_eq!(g.unit.cache_capacity(), default);

    for sid in 0..requesters {
        g.unit
            .translate(&DmaRequest::new(sid, 0, AccessKind::Read))
            .unwrap();
    }
    let stats = g.unit.stats().context_cache;
    assert_eq!(stats.entries, default.context as u64, "{stats:?}");
    assert!(stats.evictions >= requesters as u64 - default.context as u64);

    for page in 0..pages {
        g.unit
            .translate(&DmaRequest::new(0, page << 12, AccessKind::Read))
            .unwrap();
    }
    let stats = g.unit.stats().iotlb;
    assert!(stats.entries <= default.iotlb as u64, "{stats:?}");
    assert!(
        stats.entries >= default.iotlb as u64 * 9 / 10,
        "one device can fill the IOTLB: {stats:?}"
    );
    assert!(stats.evictions >= pages - default.iotlb as u64);
}

#[test]
fn the_pasid_cache_holds_at_most_its_capacity() {
    let capacity = CacheCapacity::default().pasid as u32;
    let cfg = VtdConfig {
        scalable_mode: true,
        pasid_bits: 20,
        ..VtdConfig::default()
    };
    let mut g = Guest::with_config(cfg, 64);
    let sid = 0x10;
    let pasids = capacity + 100;
    let mut table = PasidTablesBuilder::new(&g.mem, &mut g.frames, 0).unwrap();
    for pasid in 0..=pasids {
        table
            .set_entry(&mut g.frames, pasid, PasidEntry::pass_through(1, 2))
            .unwrap();
    }
    let entry = table.context_entry().with_paside(true);
    let mut ctx = ContextTablesBuilder::new(&g.mem, &mut g.frames, true).unwrap();
    ctx.set_scalable_context(&mut g.frames, sid, entry).unwrap();
    let rtaddr = ctx.rtaddr();
    g.set_root(rtaddr);
    g.enable_translation();
    for pasid in 1..=pasids {
        let req = DmaRequest {
            pasid: Some(pasid),
            ..DmaRequest::new(sid, 0x1000, AccessKind::Read)
        };
        let t = g.unit.translate(&req).unwrap();
        assert_eq!(t.output, 0x1000);
    }
    let stats = g.unit.stats().pasid_cache;
    assert_eq!(stats.entries, capacity as u64, "{stats:?}");
    assert!(stats.evictions >= (pasids - capacity) as u64);
}

/// The tracked page groups (prq.rs) are bounded by this number, as the README states; the
/// eviction itself is tested in tests/page_requests.rs.
#[test]
fn tracked_page_groups_are_bounded_as_stated() {
    assert_eq!(MAX_OUTSTANDING_GROUPS, 8192);
}
