//! The paths rust-vmm devices take through the vIOMMU, set up once and measured against
//! their vm-memory baselines: what `vtd-bench` prints and what the Criterion benches time.
//!
//! Every figure is a ratio of two timings taken in the same process, one right after the
//! other (min of several runs each), because the machines this runs on are small and shared:
//! absolute nanoseconds move with the load, ratios much less. Each baseline is the cheapest
//! thing a device could do without this unit's work:
//!
//! - a hit is compared with vm-memory's own `Iotlb::lookup` of the same page (what a
//!   vhost-user-style IOTLB costs),
//! - a read through `IommuMemory` with the same read on the guest physical pages,
//! - a miss with the dependent 8-byte reads a table walk cannot avoid (4 for a 4-level first
//!   stage, 24 for first stage nested over 4-level second stage),
//! - two threads hitting with one thread doing the same work,
//! - a hit with an inspector attached (`vtd-inspect`'s server and a client following the
//!   event stream and taking snapshots) with the same hit on the unit alone.
//!
//! Memory figures come from the live-byte count of a counting global allocator that the
//! binary installs ([`CountingAllocator`]); guest RAM is `mmap`ed, so it is not counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use vm_memory::iommu::Iotlb;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory, Permissions};
use vtd_core::{CacheCapacity, RecordingSink, VtdConfig, VtdUnit};
use vtd_regs::regs::{IotlbReg, Iva, offset as reg};
use vtd_tables::GuestRam;
use vtd_tables::builder::{
    ContextTablesBuilder, FrameAllocator, PageSize, PageTableBuilder, PageTableFormat,
    PasidTablesBuilder,
};
use vtd_tables::entries::PasidEntry;
use vtd_tables::walk::{AccessKind, DmaRequest};

/// Guest memory of the fixtures.
pub type Mem = GuestMemoryMmap<()>;
/// The unit under measurement.
pub type Unit = VtdUnit<Mem>;

/// A global allocator that counts live bytes (installed by the `vtd-bench` binary).
pub struct CountingAllocator;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes currently allocated through [`CountingAllocator`].
pub fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// caller's obligations are exactly `System`'s; the counter is only bookkeeping.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is (see the impl).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is (see the impl).
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is (see the impl).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Where the fixtures put things in guest memory.
const TABLE_FRAMES: (u64, u64) = (0x100_0000, 0x400_0000);
const SS_FRAMES: (u64, u64) = (0x400_0000, 0x600_0000);
/// Data pages the IOVAs map to (4,096 of them: targets repeat beyond that).
const DATA_BASE: u64 = 0x800_0000;
const DATA_PAGES: u64 = 4096;
const RAM_BYTES: usize = 0xa00_0000;
/// The device of the single-device fixtures, and its domain.
pub const SID: u16 = 8;
const DID: u16 = 1;
/// First IOVA of the mapped pages.
pub const IOVA_BASE: u64 = 0x1000_0000;

/// How the pages of a fixture are laid out in IOVA space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout1G {
    /// Consecutive pages from [`IOVA_BASE`]: one device, one 1 GiB range.
    Contiguous,
    /// Page `p` in the `p % 64`-th 1 GiB range: spread over 64 GiB.
    Spread,
}

/// IOVA of page `p` in `layout`.
pub fn iova_of(layout: Layout1G, p: u64) -> u64 {
    match layout {
        Layout1G::Contiguous => IOVA_BASE + p * 4096,
        Layout1G::Spread => ((p % 64) << 30) + IOVA_BASE + (p / 64) * 4096,
    }
}

/// Guest physical page that IOVA page `p` maps to: scattered, never two neighbours adjacent.
pub fn gpa_of(p: u64) -> u64 {
    DATA_BASE + ((p * 7 + p / DATA_PAGES) % DATA_PAGES) * 4096
}

/// A unit with translation on and devices whose PASID entry maps `pages` pages.
pub struct Fixture {
    /// The unit.
    pub unit: Arc<Unit>,
    /// Its guest memory.
    pub mem: Mem,
    /// The first-stage root table.
    pub fs_root: u64,
    /// The second-stage root table (nested fixtures).
    pub ss_root: Option<u64>,
    /// vm-memory's IOTLB holding the same mappings (the baseline of hits).
    pub vm_iotlb: Iotlb,
    /// Layout of the pages.
    pub layout: Layout1G,
    /// Number of mapped pages.
    pub pages: u64,
}

/// What a fixture is built with.
#[derive(Clone, Copy, Debug)]
pub struct FixtureSpec {
    /// Mapped pages.
    pub pages: u64,
    /// Devices (requester IDs `SID`, `SID + 1`, ...), all in one domain.
    pub devices: u16,
    /// Cache sizes.
    pub capacity: CacheCapacity,
    /// IOVA layout.
    pub layout: Layout1G,
    /// First stage nested over a 4-level second stage (4 KiB leaves).
    pub nested: bool,
}

impl Default for FixtureSpec {
    fn default() -> Self {
        Self {
            pages: 256,
            devices: 1,
            capacity: CacheCapacity::default(),
            layout: Layout1G::Contiguous,
            nested: false,
        }
    }
}

impl Fixture {
    /// Builds the tables and enables translation (no access made yet: the IOTLB is empty).
    pub fn new(spec: FixtureSpec) -> Self {
        let mem: Mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_BYTES)]).expect("guest RAM");
        let mut cfg = VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").expect("config");
        if spec.nested {
            cfg.second_stage = true;
            cfg.nesting = true;
        }
        let unit = Arc::new(
            VtdUnit::with_cache_capacity(
                cfg,
                mem.clone(),
                Arc::new(RecordingSink::default()),
                spec.capacity,
            )
            .expect("unit"),
        );
        let mut frames = FrameAllocator::new(TABLE_FRAMES.0, TABLE_FRAMES.1);
        let mut ctx = ContextTablesBuilder::new(&mem, &mut frames, true).expect("context");
        let mut pasids = PasidTablesBuilder::new(&mem, &mut frames, 0).expect("pasid table");
        let mut fs =
            PageTableBuilder::new(&mem, &mut frames, PageTableFormat::FirstStage { levels: 4 })
                .expect("first stage");
        let mut vm_iotlb = Iotlb::new();
        for p in 0..spec.pages {
            let (iova, gpa) = (iova_of(spec.layout, p), gpa_of(p));
            fs.map(&mut frames, iova, gpa, PageSize::Size4K, true, true)
                .expect("map");
            vm_iotlb
                .set_mapping(
                    GuestAddress(iova),
                    GuestAddress(gpa),
                    4096,
                    Permissions::ReadWrite,
                )
                .expect("vm-memory mapping");
        }
        let fs_root = fs.root();
        let (entry, ss_root) = if spec.nested {
            // Second stage: identity with 4 KiB leaves over the first-stage tables and the
            // data, so a nested walk does 5 * 4 + 4 = 24 reads.
            let mut ss_frames = FrameAllocator::new(SS_FRAMES.0, SS_FRAMES.1);
            let mut ss = PageTableBuilder::new(
                &mem,
                &mut ss_frames,
                PageTableFormat::SecondStage { levels: 4 },
            )
            .expect("second stage");
            let tables_end = frames.next_free();
            let data = DATA_BASE..DATA_BASE + DATA_PAGES * 4096;
            for gpa in (TABLE_FRAMES.0..tables_end)
                .step_by(4096)
                .chain(data.step_by(4096))
            {
                ss.map(&mut ss_frames, gpa, gpa, PageSize::Size4K, true, true)
                    .expect("identity");
            }
            (
                PasidEntry::nested(fs_root, false, ss.root(), 2, DID),
                Some(ss.root()),
            )
        } else {
            (PasidEntry::first_stage(fs_root, false, DID, 2), None)
        };
        pasids
            .set_entry(&mut frames, 0, entry)
            .expect("pasid entry");
        for d in 0..spec.devices {
            ctx.set_scalable_context(&mut frames, SID + d, pasids.context_entry())
                .expect("context entry");
        }
        unit.write(reg::RTADDR, 8, ctx.rtaddr());
        unit.write(reg::GCMD, 4, 1 << 30); // SRTP
        unit.write(reg::GCMD, 4, 1 << 31); // TE
        Self {
            unit,
            mem,
            fs_root,
            ss_root,
            vm_iotlb,
            layout: spec.layout,
            pages: spec.pages,
        }
    }

    /// IOVA of page `p`.
    pub fn iova(&self, p: u64) -> u64 {
        iova_of(self.layout, p)
    }

    /// Translates every page once for `sid` as a write (so the leaves' A and D are set and
    /// later reads and writes hit).
    pub fn warm(&self, sid: u16) {
        for p in 0..self.pages {
            self.unit
                .translate(&DmaRequest::new(sid, self.iova(p), AccessKind::Write))
                .expect("warm translation");
        }
    }

    /// One `translate` of page `p` (offset 8 in it), returning the output.
    pub fn translate(&self, sid: u16, p: u64) -> u64 {
        self.unit
            .translate(&DmaRequest::new(sid, self.iova(p) + 8, AccessKind::Read))
            .expect("translation")
            .output
    }

    /// vm-memory's `Iotlb::lookup` of page `p` (offset 8, 8 bytes), returning the output.
    pub fn vm_lookup(&self, p: u64) -> u64 {
        let it = Iotlb::lookup(
            &self.vm_iotlb,
            GuestAddress(self.iova(p) + 8),
            8,
            Permissions::Read,
        )
        .expect("vm-memory lookup");
        it.map(|m| m.base.0).sum()
    }

    /// One 8-byte table entry at `gpa`, read through vm-memory the way `how` says.
    pub fn read_entry(&self, how: FloorRead, gpa: u64) -> u64 {
        match how {
            FloorRead::ReadObj => self.mem.read_obj(GuestAddress(gpa)).expect("table read"),
            // The walk's own read, through vm-memory's region lookup and atomic load.
            FloorRead::Atomic => GuestRam::read_u64(&self.mem, gpa).expect("table read"),
        }
    }

    /// The reads a first-stage 4-level walk of `iova` cannot avoid, each depending on the
    /// last, through vm-memory; returns the output address.
    pub fn floor_first_stage(&self, iova: u64, how: FloorRead) -> u64 {
        let mut table = self.fs_root;
        for level in (1..=4u32).rev() {
            let index = (iova >> (12 + 9 * (level - 1))) & 511;
            table = self.read_entry(how, table + index * 8) & ADDRESS_MASK;
        }
        table | (iova & 0xfff)
    }

    /// The 24 dependent reads of a nested walk: each first-stage table address and the
    /// output go through the 4-level second stage.
    pub fn floor_nested(&self, iova: u64, how: FloorRead) -> u64 {
        let ss_root = self.ss_root.expect("nested fixture");
        let ss = |gpa: u64| {
            let mut table = ss_root;
            for level in (1..=4u32).rev() {
                let index = (gpa >> (12 + 9 * (level - 1))) & 511;
                table = self.read_entry(how, table + index * 8) & ADDRESS_MASK;
            }
            table | (gpa & 0xfff)
        };
        let mut table = self.fs_root;
        for level in (1..=4u32).rev() {
            let index = (iova >> (12 + 9 * (level - 1))) & 511;
            table = self.read_entry(how, ss(table) + index * 8) & ADDRESS_MASK;
        }
        ss(table) | (iova & 0xfff)
    }

    /// A page-selective IOTLB invalidation of page `p` through IVA/IOTLB_REG (spec 10.4.8).
    pub fn invalidate_page(&self, p: u64) {
        let iro = self.unit.config().ecap().iotlb_register_offset();
        let iva = Iva::new().with_addr(self.iova(p) >> 12).with_am(0);
        self.unit.write(iro, 8, iva.into_bits());
        let cmd = IotlbReg::new().with_ivt(true).with_iirg(3).with_did(DID);
        self.unit.write(iro + 8, 8, cmd.into_bits());
    }
}

const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// How a miss floor reads a table entry through vm-memory. Both are measured and the
/// cheaper one is the floor: `read_obj` goes through `read_slice`'s generic copy, whose cost
/// changed by 1.9x between two builds of this crate that differed only in unrelated code
/// (callgrind: 516 and 972 instructions per four reads, as LLVM did or did not inline
/// vm-memory's slice iterator), which moved the miss ratio from 3.4x to 1.8x with the miss
/// itself unchanged; the atomic load does not depend on that choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloorRead {
    /// `Bytes::read_obj::<u64>`, vm-memory's general read.
    ReadObj,
    /// The region lookup and one aligned 8-byte atomic load (`to_region_addr`, `get_slice`,
    /// `get_atomic_ref`): the cheapest read vm-memory offers, and the one the unit's walks
    /// make (`vtd_tables::GuestRam::read_u64`, which this calls).
    Atomic,
}

impl FloorRead {
    /// Both ways.
    pub const ALL: [FloorRead; 2] = [FloorRead::ReadObj, FloorRead::Atomic];
}

/// Nanoseconds per operation of `op` run `n` times, min of `runs` runs.
pub fn ns_per_op(runs: usize, n: u64, mut op: impl FnMut(u64)) -> f64 {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            for i in 0..n {
                op(i);
            }
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// Per-operation cost of `threads` threads each running `op` `n` times at once (the slowest
/// thread's time), min of `runs`.
pub fn ns_per_op_threads(
    runs: usize,
    threads: usize,
    n: u64,
    op: impl Fn(usize, u64) + Sync,
) -> f64 {
    (0..runs)
        .map(|_| {
            let barrier = Barrier::new(threads);
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let (barrier, op) = (&barrier, &op);
                        s.spawn(move || {
                            barrier.wait();
                            let start = Instant::now();
                            for i in 0..n {
                                op(t, i);
                            }
                            start.elapsed().as_nanos() as f64 / n as f64
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("bench thread"))
                    .fold(0.0, f64::max)
            })
        })
        .fold(f64::INFINITY, f64::min)
}

/// One measured figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// What it measures.
    pub name: &'static str,
    /// The measurement.
    pub value: f64,
    /// Its unit ("x" for ratios).
    pub unit: &'static str,
    /// The target, if the figure has one.
    pub target: Option<Target>,
}

/// A bound a figure must meet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// At most this.
    AtMost(f64),
    /// At least this.
    AtLeast(f64),
}

impl Target {
    /// Whether `value` meets it.
    pub fn met_by(self, value: f64) -> bool {
        match self {
            Self::AtMost(t) => value <= t,
            Self::AtLeast(t) => value >= t,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AtMost(t) => write!(f, "<= {t}"),
            Self::AtLeast(t) => write!(f, ">= {t}"),
        }
    }
}

impl Figure {
    fn info(name: &'static str, value: f64, unit: &'static str) -> Self {
        Self {
            name,
            value,
            unit,
            target: None,
        }
    }
    fn goal(name: &'static str, value: f64, unit: &'static str, target: Target) -> Self {
        Self {
            name,
            value,
            unit,
            target: Some(target),
        }
    }
    /// Whether it meets its target (`None` without one).
    pub fn pass(&self) -> Option<bool> {
        self.target.map(|t| t.met_by(self.value))
    }
}

/// How long the measurements run: `scale` multiplies every iteration count.
#[derive(Clone, Copy, Debug)]
pub struct Effort {
    /// Iteration multiplier (1 = the few-seconds default).
    pub scale: u64,
    /// Runs per timing (the minimum is kept).
    pub runs: usize,
}

impl Default for Effort {
    fn default() -> Self {
        Self { scale: 1, runs: 3 }
    }
}

/// Hits: `translate` and the `Iommu` adapter against vm-memory's lookup of the same pages,
/// and a 64 KiB read over 16 scattered pages through `IommuMemory` against the same read of
/// the guest physical pages.
pub fn hit_figures(effort: Effort, out: &mut Vec<Figure>) {
    let f = Fixture::new(FixtureSpec::default());
    f.warm(SID);
    let n = 200_000 * effort.scale;
    let pages = f.pages;
    for _ in 0..2 {
        // Twice, the first as warm-up of caches and branch predictors.
        let lookup = ns_per_op(effort.runs, n, |i| {
            black_box(f.vm_lookup(i % pages));
        });
        let hit = ns_per_op(effort.runs, n, |i| {
            black_box(f.translate(SID, i % pages));
        });
        let space = f.unit.address_space(SID, None);
        let adapter = ns_per_op(effort.runs, n, |i| {
            use vm_memory::iommu::Iommu;
            let it = space
                .translate(GuestAddress(f.iova(i % pages) + 8), 8, Permissions::Read)
                .expect("adapter translation");
            for m in it {
                black_box(m.base);
            }
        });
        out.retain(|fig| !fig.name.starts_with("hit."));
        out.push(Figure::info("hit.vm_memory_lookup", lookup, "ns"));
        out.push(Figure::info("hit.translate", hit, "ns"));
        out.push(Figure::goal(
            "hit.translate_vs_lookup",
            hit / lookup,
            "x",
            Target::AtMost(0.35),
        ));
        out.push(Figure::info("hit.iommu_adapter", adapter, "ns"));
        out.push(Figure::goal(
            "hit.iommu_adapter_vs_lookup",
            adapter / lookup,
            "x",
            Target::AtMost(0.5),
        ));
    }

    // 64 KiB over 16 scattered pages.
    let iommu_mem = IommuMemory::new(f.mem.clone(), f.unit.address_space(SID, None), true, ());
    let mut buf = vec![0u8; 64 << 10];
    let reads = 20_000 * effort.scale;
    let direct = ns_per_op(effort.runs, reads, |i| {
        let first = (i % 16) * 16;
        for (k, chunk) in buf.chunks_mut(4096).enumerate() {
            f.mem
                .read_slice(chunk, GuestAddress(gpa_of(first + k as u64)))
                .expect("direct read");
        }
        black_box(buf[0]);
    });
    let through = ns_per_op(effort.runs, reads, |i| {
        let first = (i % 16) * 16;
        iommu_mem
            .read_slice(&mut buf, GuestAddress(f.iova(first)))
            .expect("IOVA read");
        black_box(buf[0]);
    });
    // What vm-memory's own IOTLB costs for the same 16 mappings (lookup and iteration, no
    // copy): the least any `Iommu` whose guard is an `Iotlb` can add to the direct read.
    let mut range_tlb = Iotlb::new();
    for p in 0..256u64 {
        range_tlb
            .set_mapping(
                GuestAddress(f.iova(p)),
                GuestAddress(gpa_of(p)),
                4096,
                Permissions::ReadWrite,
            )
            .expect("vm-memory mapping");
    }
    let vm_range = ns_per_op(effort.runs, reads, |i| {
        let first = (i % 16) * 16;
        let it = Iotlb::lookup(
            &range_tlb,
            GuestAddress(f.iova(first)),
            64 << 10,
            Permissions::Read,
        )
        .expect("vm-memory lookup");
        for m in it {
            black_box(m.base);
        }
    });
    out.push(Figure::info("read64k.direct", direct, "ns"));
    out.push(Figure::info(
        "read64k.vm_memory_iotlb_lookup_16_pages",
        vm_range,
        "ns",
    ));
    out.push(Figure::info(
        "read64k.least_possible_ratio_through_an_iotlb",
        (direct + vm_range) / direct,
        "x",
    ));
    out.push(Figure::info("read64k.iommu_memory", through, "ns"));
    out.push(Figure::goal(
        "read64k.iommu_memory_vs_direct",
        through / direct,
        "x",
        Target::AtMost(1.15),
    ));
}

/// Hits from 2 threads against 1 thread, on the same pages and on pages of other 1 GiB
/// ranges (different shards of a sharded cache).
pub fn scaling_figures(effort: Effort, out: &mut Vec<Figure>) {
    let f = Fixture::new(FixtureSpec {
        pages: 512,
        devices: 2,
        layout: Layout1G::Spread,
        ..FixtureSpec::default()
    });
    f.warm(SID);
    f.warm(SID + 1);
    let n = 400_000 * effort.scale;
    let runs = effort.runs + 2;
    let one = ns_per_op_threads(runs, 1, n, |_, i| {
        black_box(f.translate(SID, i % 64));
    });
    let same = ns_per_op_threads(runs, 2, n, |_, i| {
        black_box(f.translate(SID, i % 64));
    });
    // Pages p and p + 1 are in different 1 GiB ranges (Layout1G::Spread); thread t takes
    // every page with p % 2 == t, from its own device.
    let other = ns_per_op_threads(runs, 2, n, |t, i| {
        black_box(f.translate(SID + t as u16, (i % 32) * 2 + t as u64));
    });
    out.push(Figure::info("threads.one", one, "ns"));
    out.push(Figure::goal(
        "threads.two_same_pages_vs_one",
        same / one,
        "x",
        Target::AtMost(1.2),
    ));
    out.push(Figure::goal(
        "threads.two_other_pages_vs_one",
        other / one,
        "x",
        Target::AtMost(1.2),
    ));
}

/// Misses: a 64-entry IOTLB cycled over 4,096 pages (every access misses) against the reads
/// of the walk alone.
pub fn miss_figures(effort: Effort, out: &mut Vec<Figure>) {
    for nested in [false, true] {
        miss_figure(effort, nested, out);
    }
}

/// The miss figure of a first-stage 4-level walk, or (`nested`) of a nested one.
pub fn miss_figure(effort: Effort, nested: bool, out: &mut Vec<Figure>) {
    {
        let f = Fixture::new(FixtureSpec {
            pages: 4096,
            capacity: CacheCapacity {
                iotlb: 64,
                ..CacheCapacity::default()
            },
            nested,
            ..FixtureSpec::default()
        });
        f.warm(SID);
        let n = 50_000 * effort.scale;
        let pages = f.pages;
        let before = f.unit.stats().iotlb;
        let miss = ns_per_op(effort.runs, n, |i| {
            black_box(f.translate(SID, i % pages));
        });
        let after = f.unit.stats().iotlb;
        let hits = after.hits - before.hits;
        let floors = FloorRead::ALL.map(|how| {
            ns_per_op(effort.runs, n, |i| {
                let iova = f.iova(i % pages) + 8;
                black_box(if nested {
                    f.floor_nested(iova, how)
                } else {
                    f.floor_first_stage(iova, how)
                });
            })
        });
        let floor = floors.into_iter().fold(f64::INFINITY, f64::min);
        let (name, reads, [read_obj, atomic]) = if nested {
            (
                "miss.nested_vs_24_reads",
                "miss.nested",
                [
                    "miss.nested_24_reads_read_obj",
                    "miss.nested_24_reads_atomic",
                ],
            )
        } else {
            (
                "miss.first_stage_4level_vs_4_reads",
                "miss.first_stage_4level",
                [
                    "miss.first_stage_4_reads_read_obj",
                    "miss.first_stage_4_reads_atomic",
                ],
            )
        };
        out.push(Figure::info(reads, miss, "ns"));
        out.push(Figure::info(read_obj, floors[0], "ns"));
        out.push(Figure::info(atomic, floors[1], "ns"));
        out.push(Figure::goal(name, miss / floor, "x", Target::AtMost(2.5)));
        if hits * 100 > effort.runs as u64 * n {
            eprintln!("warning: {name}: {hits} of the timed accesses hit the IOTLB");
        }
    }
}

/// Capacity and memory: entries one device keeps in one 1 GiB range with the default sizes,
/// bytes per entry, and a unit with 256 devices and a full IOTLB.
pub fn memory_figures(out: &mut Vec<Figure>) {
    let pages = 65_536;
    let f = Fixture::new(FixtureSpec {
        pages,
        ..FixtureSpec::default()
    });
    f.warm(SID);
    let held = f.unit.stats().iotlb.entries;
    out.push(Figure::goal(
        "capacity.one_device_1gib_entries",
        held as f64,
        "entries",
        Target::AtLeast(16_384.0),
    ));
    drop(f);

    // Bytes per entry: a unit whose IOTLB is full against one whose IOTLB holds one entry.
    let spec = FixtureSpec {
        pages: 4096,
        devices: 16,
        ..FixtureSpec::default()
    };
    let empty_start = live_bytes();
    let small = Fixture::new(FixtureSpec {
        capacity: CacheCapacity {
            iotlb: 1,
            ..CacheCapacity::default()
        },
        ..spec
    });
    small.warm(SID);
    let small_bytes = live_bytes() - empty_start;
    let full_start = live_bytes();
    let full = Fixture::new(spec);
    for d in 0..spec.devices {
        full.warm(SID + d);
    }
    let full_bytes = live_bytes() - full_start;
    let entries = full.unit.stats().iotlb.entries.max(1);
    out.push(Figure::goal(
        "memory.bytes_per_iotlb_entry",
        (full_bytes.saturating_sub(small_bytes)) as f64 / entries as f64,
        "bytes",
        Target::AtMost(64.0),
    ));
    drop((small, full));

    let start = live_bytes();
    let f = Fixture::new(FixtureSpec {
        pages: 256,
        devices: 256,
        ..FixtureSpec::default()
    });
    for d in 0..256 {
        f.warm(SID + d);
    }
    let bytes = live_bytes() - start;
    out.push(Figure::info(
        "memory.unit_256_devices_entries",
        f.unit.stats().iotlb.entries as f64,
        "entries",
    ));
    out.push(Figure::goal(
        "memory.unit_256_devices_full_iotlb",
        bytes as f64 / (1 << 20) as f64,
        "MiB",
        Target::AtMost(16.0),
    ));
}

/// Page-selective invalidation with 65,536 entries cached against 1,024 (same capacity).
pub fn invalidation_figures(effort: Effort, out: &mut Vec<Figure>) {
    let capacity = CacheCapacity {
        iotlb: 131_072,
        ..CacheCapacity::default()
    };
    let mut cost = [0.0f64; 2];
    for (slot, cached) in [1_024u64, 65_536].into_iter().enumerate() {
        let f = Fixture::new(FixtureSpec {
            pages: cached,
            capacity,
            layout: Layout1G::Spread,
            ..FixtureSpec::default()
        });
        let ops = 256;
        let mut best = f64::INFINITY;
        for _ in 0..effort.runs * effort.scale as usize {
            f.warm(SID);
            // Invalidate pages spread over what is cached.
            let stride = cached / ops;
            let start = Instant::now();
            for k in 0..ops {
                f.invalidate_page(k * stride);
            }
            best = best.min(start.elapsed().as_nanos() as f64 / ops as f64);
        }
        let held = f.unit.stats().iotlb.entries;
        if held + ops < cached {
            eprintln!("warning: invalidation figure: {held} of {cached} entries cached");
        }
        cost[slot] = best;
    }
    out.push(Figure::info("invalidate.page_1024_cached", cost[0], "ns"));
    out.push(Figure::info("invalidate.page_65536_cached", cost[1], "ns"));
    out.push(Figure::goal(
        "invalidate.page_65536_vs_1024_cached",
        cost[1] / cost[0],
        "x",
        Target::AtMost(1.2),
    ));
}

/// How often the measuring client asks for a snapshot: ten times the TUI's refresh
/// (`vtd-inspect`'s `tui::REFRESH`, 500 ms), so the figure bounds what a watching person costs.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(50);

/// An inspector attached to a unit: the server (subscribed to the unit's events) and one
/// client that follows the event stream and asks for a snapshot every [`SNAPSHOT_EVERY`],
/// as the TUI does. Dropping it detaches the client, then stops the server.
pub struct AttachedInspector {
    /// Serves while attached; dropped last.
    _server: vtd_inspect::server::InspectServer,
    stop: Arc<AtomicBool>,
    client: Option<std::thread::JoinHandle<u64>>,
    _dir: tempfile::TempDir,
}

impl AttachedInspector {
    /// Starts a server on `unit` and attaches the client.
    pub fn attach(unit: &Arc<Unit>) -> Self {
        use vtd_inspect::client::Client;
        use vtd_inspect::protocol::{ClientMessage, ServerMessage};
        let dir = tempfile::tempdir().expect("socket directory");
        let path = dir.path().join("inspect.sock");
        let server = vtd_inspect::server::InspectServer::start(
            Arc::clone(unit),
            &path,
            vtd_inspect::server::ServerOptions::default(),
        )
        .expect("inspection server");
        let mut client = Client::connect(&path).expect("inspector client");
        client
            .send(&ClientMessage::Subscribe)
            .expect("subscribe to events");
        let mut requester = client.requester().expect("second handle on the socket");
        let stop = Arc::new(AtomicBool::new(false));
        let stop_ticks = Arc::clone(&stop);
        let client = std::thread::spawn(move || {
            let ticker = std::thread::spawn(move || {
                while !stop_ticks.load(Ordering::Relaxed) {
                    if requester.send(&ClientMessage::GetSnapshot).is_err() {
                        break;
                    }
                    std::thread::sleep(SNAPSHOT_EVERY);
                }
                // Ends the reader's `recv` below.
                requester.shutdown();
            });
            let mut snapshots = 0;
            while let Ok(message) = client.recv() {
                if let ServerMessage::Snapshot(_) = message {
                    snapshots += 1;
                }
            }
            ticker.join().expect("snapshot ticker");
            snapshots
        });
        Self {
            _server: server,
            stop,
            client: Some(client),
            _dir: dir,
        }
    }

    /// Detaches; returns the snapshots the client received.
    pub fn detach(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let snapshots = self
            .client
            .take()
            .map_or(0, |c| c.join().expect("inspector client"));
        // Dropping `self` stops the server now that its client is gone.
        snapshots
    }
}

/// Mean nanoseconds per hit of `f`'s device over at least `window`.
fn hit_ns_over(f: &Fixture, window: Duration) -> f64 {
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < window {
        for i in 0..10_000 {
            black_box(f.translate(SID, i % f.pages));
        }
        ops += 10_000;
    }
    start.elapsed().as_nanos() as f64 / ops as f64
}

/// The IOTLB hit with an inspector attached against the unit alone. Rounds alternate
/// (alone, attached, alone, ...) over windows long enough to include several snapshots, and
/// each side keeps its best round's mean: the inspector's periodic work counts in the mean,
/// while a burst of someone else's work in one round does not decide the figure.
pub fn inspector_figures(effort: Effort, out: &mut Vec<Figure>) {
    let f = Fixture::new(FixtureSpec::default());
    f.warm(SID);
    let window = SNAPSHOT_EVERY * 4 * effort.scale as u32;
    let (mut alone, mut attached, mut snapshots) = (f64::INFINITY, f64::INFINITY, 0);
    hit_ns_over(&f, window / 4); // warm-up
    for _ in 0..effort.runs {
        alone = alone.min(hit_ns_over(&f, window));
        let inspector = AttachedInspector::attach(&f.unit);
        attached = attached.min(hit_ns_over(&f, window));
        snapshots += inspector.detach();
    }
    out.push(Figure::info("inspector.hit_alone", alone, "ns"));
    out.push(Figure::info("inspector.hit_attached", attached, "ns"));
    out.push(Figure::info(
        "inspector.snapshots_taken",
        snapshots as f64,
        "snapshots",
    ));
    out.push(Figure::goal(
        "inspector.hit_attached_vs_alone",
        attached / alone,
        "x",
        Target::AtMost(1.05),
    ));
}

/// A group of figures, measured by one function of this crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    /// [`hit_figures`].
    Hit,
    /// [`scaling_figures`].
    Threads,
    /// [`miss_figures`].
    Miss,
    /// [`miss_figure`] of the first stage alone.
    MissFirstStage,
    /// [`miss_figure`] of nested translation alone.
    MissNested,
    /// [`memory_figures`].
    Memory,
    /// [`invalidation_figures`].
    Invalidate,
    /// [`inspector_figures`].
    Inspector,
}

impl Group {
    /// Every group, in the order [`all_figures`] measures them.
    pub const ALL: [Group; 8] = [
        Group::Hit,
        Group::Threads,
        Group::Miss,
        Group::MissFirstStage,
        Group::MissNested,
        Group::Memory,
        Group::Invalidate,
        Group::Inspector,
    ];
}

/// The figures of `groups` (each once, in [`Group::ALL`] order).
pub fn figures_of(groups: &[Group], effort: Effort) -> Vec<Figure> {
    let mut out = Vec::new();
    for group in Group::ALL.into_iter().filter(|g| groups.contains(g)) {
        match group {
            Group::Hit => hit_figures(effort, &mut out),
            Group::Threads => scaling_figures(effort, &mut out),
            Group::Miss => miss_figures(effort, &mut out),
            Group::MissFirstStage => miss_figure(effort, false, &mut out),
            Group::MissNested => miss_figure(effort, true, &mut out),
            Group::Memory => memory_figures(&mut out),
            Group::Invalidate => invalidation_figures(effort, &mut out),
            Group::Inspector => inspector_figures(effort, &mut out),
        }
    }
    out
}

/// Every figure.
pub fn all_figures(effort: Effort) -> Vec<Figure> {
    figures_of(
        &[
            Group::Hit,
            Group::Threads,
            Group::Miss,
            Group::Memory,
            Group::Invalidate,
            Group::Inspector,
        ],
        effort,
    )
}
