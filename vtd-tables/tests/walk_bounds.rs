//! The guest-memory accesses one translation may cost, per translation mode: the bounds the
//! README's "Bounds" table states. A walk is bounded by its level counts (walk.rs module doc);
//! these tests count what the walkers actually do on the deepest tables each mode allows, with a
//! guest that races every accessed/dirty update and tables whose last pointer leaves RAM (the
//! walk is retried once, `retry_once`), and check the count against the stated bound.
//!
//! An access is one 8-byte read or one compare-exchange (an A/D update, spec 3.6.2, 3.7.2).
//! The bounds, from the walkers' structure:
//!
//! - context lookup: root entry (2 reads) + legacy context entry (2) = 4; scalable: root (2) +
//!   scalable context entry (4) + PASID directory entry (1) + PASID entry (8) = 15;
//! - one second-stage walk: at most 5 levels, each a read and, with SSADE, at most two
//!   compare-exchanges (the second merges A/D another agent set meanwhile): 5 x 3 = 15; a
//!   legacy walk sets no A/D: 5;
//! - one first-stage walk: at most 5 levels of a read and at most two compare-exchanges: 15;
//!   nested, each level's table address goes through a second-stage walk for the read (15)
//!   and another for the A/D update (15): 5 x (15 + 1 + 15 + 2) = 165, and the output through
//!   one more (15): 180;
//! - a walk that fails with an access error (a raced A/D update, a pointer outside RAM) is
//!   retried once: x 2.

use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd_regs::VtdConfig;
use vtd_regs::regs::TranslationTableMode;
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_tables::walk::*;
use vtd_tables::{GuestRam, MemError};

/// Accesses of one legacy-mode translation: 4 + 2 x 5.
const MAX_LEGACY_ACCESSES: u64 = 4 + 2 * 5;
/// Accesses of one scalable-mode second-stage translation: 15 + 2 x 15.
const MAX_SECOND_STAGE_ACCESSES: u64 = 15 + 2 * 15;
/// Accesses of one scalable-mode first-stage translation: 15 + 2 x 15.
const MAX_FIRST_STAGE_ACCESSES: u64 = 15 + 2 * 15;
/// Accesses of one nested translation: 15 + 2 x (5 x (15 + 1 + 15 + 2) + 15).
const MAX_NESTED_ACCESSES: u64 = 15 + 2 * (5 * (15 + 1 + 15 + 2) + 15);

const RAM: u64 = 16 << 20;
/// Where the context and PASID tables and second-stage tables go.
const TABLES: (u64, u64) = (0x10_0000, 0x40_0000);
/// Where first-stage tables go (identity-mapped by the second stage when nested).
const FS_TABLES: (u64, u64) = (0x40_0000, 0x50_0000);
const DATA: u64 = 0x80_0000;
/// Inside every width the tests use, outside RAM.
const OUTSIDE_RAM: u64 = 0x8000_0000;
const SID: u16 = 0x0010;

/// Guest RAM that counts accesses and, when `racing`, plays a guest setting the same A/D bits
/// at the moment the walker tries to: the walker's first compare-exchange fails and it merges
/// with a second one (the most a walker spends on one update).
struct CountingRam {
    inner: GuestMemoryMmap<()>,
    accesses: AtomicU64,
    racing: bool,
}

impl CountingRam {
    fn new(racing: bool) -> Self {
        Self {
            inner: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap(),
            accesses: AtomicU64::new(0),
            racing,
        }
    }

    /// Runs `f` and returns what it returned and the accesses it made.
    fn count<T>(&self, f: impl FnOnce() -> T) -> (T, u64) {
        let before = self.accesses.load(Ordering::Relaxed);
        let out = f();
        (out, self.accesses.load(Ordering::Relaxed) - before)
    }
}

impl GuestRam for CountingRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.accesses
            .fetch_add(buf.len().div_ceil(8) as u64, Ordering::Relaxed);
        self.inner.read(gpa, buf)
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        self.inner.write(gpa, buf)
    }

    fn compare_exchange_u64(
        &self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        if self.racing && new & !current != 0 && self.inner.read_u64(gpa)? == current {
            // The guest sets the bits first: the walker sees only A/D changed and merges.
            self.inner.write_u64(gpa, current | (new & !current))?;
        }
        self.inner.compare_exchange_u64(gpa, current, new)
    }
}

/// A 57-bit unit with every stage, 5-level first-stage tables and second-stage A/D.
fn config() -> WalkConfig {
    let cfg = VtdConfig {
        aw_bits: 57,
        scalable_mode: true,
        first_stage: true,
        second_stage: true,
        nesting: true,
        ..VtdConfig::default()
    };
    WalkConfig::new(cfg.cap().with_fl5lp(true), cfg.ecap().with_slads(true))
}

fn legacy_config() -> WalkConfig {
    let cfg = VtdConfig {
        aw_bits: 57,
        ..VtdConfig::default()
    };
    WalkConfig::new(cfg.cap(), cfg.ecap())
}

/// The scalable root for `SID` with `pe` as its PASID 0 entry (RID_PASID).
fn scalable_root(mem: &CountingRam, frames: &mut FrameAllocator, pe: PasidEntry) -> RootTable {
    let mut pasids = PasidTablesBuilder::new(mem, frames, 0).unwrap();
    pasids.set_entry(frames, 0, pe).unwrap();
    let mut ctx = ContextTablesBuilder::new(mem, frames, true).unwrap();
    ctx.set_scalable_context(frames, SID, pasids.context_entry())
        .unwrap();
    RootTable {
        addr: ctx.root(),
        mode: TranslationTableMode::Scalable,
    }
}

/// Points the level-2 entry of `iova` (the pointer to its last-level table) outside RAM: the
/// walk reads every level, then fails on the last one and is retried.
fn last_table_outside_ram(mem: &CountingRam, root: u64, levels: u8, iova: u64, flags: u64) {
    let mut table = root;
    for level in (3..=levels).rev() {
        let raw = mem
            .read_u64(table + ((iova >> (12 + 9 * (level as u32 - 1))) & 0x1ff) * 8)
            .unwrap();
        table = raw & ADDR_MASK;
    }
    let slot = table + ((iova >> 21) & 0x1ff) * 8;
    mem.write_u64(slot, OUTSIDE_RAM | flags).unwrap();
}

/// Clears the accessed and dirty bits (5, 6) of every first-stage entry on `iova`'s path: the
/// builder writes them set, as Linux does; a walk of clear entries updates each one.
fn clear_first_stage_ad(mem: &CountingRam, root: u64, levels: u8, iova: u64) {
    let mut table = root;
    for level in (1..=levels).rev() {
        let slot = table + ((iova >> (12 + 9 * (level as u32 - 1))) & 0x1ff) * 8;
        let raw = mem.read_u64(slot).unwrap();
        mem.write_u64(slot, raw & !(1 << 5 | 1 << 6)).unwrap();
        table = raw & ADDR_MASK;
    }
}

#[test]
fn a_legacy_translation_costs_at_most_14_accesses() {
    let mem = CountingRam::new(true);
    let cfg = legacy_config();
    let mut frames = FrameAllocator::new(TABLES.0, TABLES.1);
    let mut ss = PageTableBuilder::new(
        &mem,
        &mut frames,
        PageTableFormat::SecondStage { levels: 5 },
    )
    .unwrap();
    ss.map(&mut frames, 0x1000, DATA, PageSize::Size4K, true, true)
        .unwrap();
    let mut ctx = ContextTablesBuilder::new(&mem, &mut frames, false).unwrap();
    // AW 3: 5-level second-stage table (spec 9.3).
    ctx.set_legacy_context(&mut frames, SID, ContextEntry::new(ss.root(), 3, 1))
        .unwrap();
    let root = RootTable {
        addr: ctx.root(),
        mode: TranslationTableMode::Legacy,
    };
    let req = DmaRequest::new(SID, 0x1000, AccessKind::Write);
    let (t, used) = mem.count(|| translate(&mem, &cfg, root, &req));
    eprintln!("{used} accesses");
    assert_eq!(t.unwrap().output, DATA);
    assert_eq!(used, 4 + 5, "a 5-level legacy walk");

    last_table_outside_ram(&mem, ss.root(), 5, 0x1000, 0b11);
    let (t, used) = mem.count(|| translate(&mem, &cfg, root, &req));
    eprintln!("{used} accesses");
    assert!(t.is_err());
    assert_eq!(
        used, MAX_LEGACY_ACCESSES,
        "the worst case is reached: every level twice"
    );
}

#[test]
fn a_second_stage_translation_costs_at_most_45_accesses() {
    let mem = CountingRam::new(true);
    let cfg = config();
    let mut frames = FrameAllocator::new(TABLES.0, TABLES.1);
    let mut ss = PageTableBuilder::new(
        &mem,
        &mut frames,
        PageTableFormat::SecondStage { levels: 5 },
    )
    .unwrap();
    ss.map(&mut frames, 0x1000, DATA, PageSize::Size4K, true, true)
        .unwrap();
    let pe = PasidEntry::second_stage(ss.root(), 3, 1).with_ssade(true);
    let root = scalable_root(&mem, &mut frames, pe);
    let req = DmaRequest::new(SID, 0x1000, AccessKind::Write);
    let (t, used) = mem.count(|| translate(&mem, &cfg, root, &req));
    eprintln!("{used} accesses");
    assert_eq!(t.unwrap().output, DATA);
    assert!(
        used > 15 + 5 && used <= MAX_SECOND_STAGE_ACCESSES,
        "{used} accesses (A/D raced on every level)"
    );

    // A fresh table with A/D clear whose last table is outside RAM: a full walk with raced
    // A/D updates, a failed read, and the retry.
    let mut ss = PageTableBuilder::new(
        &mem,
        &mut frames,
        PageTableFormat::SecondStage { levels: 5 },
    )
    .unwrap();
    ss.map(&mut frames, 0x1000, DATA, PageSize::Size4K, true, true)
        .unwrap();
    last_table_outside_ram(&mem, ss.root(), 5, 0x1000, 0b11);
    let pe = PasidEntry::second_stage(ss.root(), 3, 1).with_ssade(true);
    let root = scalable_root(&mem, &mut frames, pe);
    let (t, used) = mem.count(|| translate(&mem, &cfg, root, &req));
    eprintln!("{used} accesses");
    assert!(t.is_err());
    assert!(
        used > 15 + 2 * 5 && used <= MAX_SECOND_STAGE_ACCESSES,
        "{used} accesses"
    );
}

#[test]
fn a_first_stage_translation_costs_at_most_45_accesses() {
    let mem = CountingRam::new(true);
    let cfg = config();
    let mut frames = FrameAllocator::new(TABLES.0, TABLES.1);
    let mut fs =
        PageTableBuilder::new(&mem, &mut frames, PageTableFormat::FirstStage { levels: 5 })
            .unwrap();
    fs.map(&mut frames, 0x1000, DATA, PageSize::Size4K, true, true)
        .unwrap();
    clear_first_stage_ad(&mem, fs.root(), 5, 0x1000);
    let pe = PasidEntry::first_stage(fs.root(), true, 1, 3);
    let root = scalable_root(&mem, &mut frames, pe);
    let req = DmaRequest::new(SID, 0x1000, AccessKind::Write);
    let (t, used) = mem.count(|| translate(&mem, &cfg, root, &req));
    eprintln!("{used} accesses");
    assert_eq!(t.unwrap().output, DATA);
    assert!(
        used > 15 + 5 && used <= MAX_FIRST_STAGE_ACCESSES,
        "{used} accesses (A/D raced on every level)"
    );

    let mut fs =
        PageTableBuilder::new(&mem, &mut frames, PageTableFormat::FirstStage { levels: 5 })
            .unwrap();
    fs.map(&mut frames, 0x1000, DATA, PageSize::Size4K, true, true)
        .unwrap();
    clear_first_stage_ad(&mem, fs.root(), 5, 0x1000);
    last_table_outside_ram(&mem, fs.root(), 5, 0x1000, 0b111);
    let pe = PasidEntry::first_stage(fs.root(), true, 1, 3);
    let root = scalable_root(&mem, &mut frames, pe);
    let (t, used) = mem.count(|| translate(&mem, &cfg, root, &req));
    eprintln!("{used} accesses");
    assert!(t.is_err());
    assert!(
        used > 15 + 2 * 5 && used <= MAX_FIRST_STAGE_ACCESSES,
        "{used} accesses"
    );
}

#[test]
fn a_nested_translation_costs_at_most_375_accesses() {
    let mem = CountingRam::new(true);
    let cfg = config();
    let mut frames = FrameAllocator::new(TABLES.0, TABLES.1);
    let mut fs_frames = FrameAllocator::new(FS_TABLES.0, FS_TABLES.1);
    // Second stage: 5 levels of 4 KiB pages, identity over the first-stage tables' frames and
    // the data page.
    let mut ss = PageTableBuilder::new(
        &mem,
        &mut frames,
        PageTableFormat::SecondStage { levels: 5 },
    )
    .unwrap();
    for gpa in (FS_TABLES.0..FS_TABLES.1).step_by(4096) {
        ss.map(&mut frames, gpa, gpa, PageSize::Size4K, true, true)
            .unwrap();
    }
    ss.map(&mut frames, DATA, DATA, PageSize::Size4K, true, true)
        .unwrap();
    let mut fs = PageTableBuilder::new(
        &mem,
        &mut fs_frames,
        PageTableFormat::FirstStage { levels: 5 },
    )
    .unwrap();
    fs.map(&mut fs_frames, 0x1000, DATA, PageSize::Size4K, true, true)
        .unwrap();
    clear_first_stage_ad(&mem, fs.root(), 5, 0x1000);
    let pe = PasidEntry::nested(fs.root(), true, ss.root(), 3, 1).with_ssade(true);
    let root = scalable_root(&mem, &mut frames, pe);
    let req = DmaRequest::new(SID, 0x1000, AccessKind::Write);
    let (t, used) = mem.count(|| translate(&mem, &cfg, root, &req));
    eprintln!("{used} accesses");
    assert_eq!(t.unwrap().output, DATA);
    assert!(
        used > 15 + 5 * 5 && used <= MAX_NESTED_ACCESSES,
        "{used} accesses (every first-stage table through a 5-level second stage, A/D raced)"
    );

    // The output's last second-stage table is outside RAM: every first-stage level is walked,
    // the output fails, and the walk is retried.
    last_table_outside_ram(&mem, ss.root(), 5, DATA, 0b11);
    let (t, used) = mem.count(|| translate(&mem, &cfg, root, &req));
    eprintln!("{used} accesses");
    assert!(t.is_err());
    assert!(
        used > 15 + 2 * 5 * 5 && used <= MAX_NESTED_ACCESSES,
        "{used} accesses"
    );
}
