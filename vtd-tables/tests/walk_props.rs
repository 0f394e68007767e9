//! Property tests of the walkers: mappings built with the builders walk to what was mapped,
//! unmapped addresses fault with the spec's reason, and arbitrary bytes as tables never panic,
//! never read outside guest RAM and never yield an output beyond the host address width.

use std::cell::Cell;

use proptest::prelude::*;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd_regs::VtdConfig;
use vtd_regs::regs::TranslationTableMode;
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_tables::walk::*;
use vtd_tables::{GuestRam, MemError};

const RAM: u64 = 64 << 20;
const TABLES: (u64, u64) = (0x10_0000, 0x80_0000);
const SID: u16 = 0x0008;

fn ram() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
}

fn wc(props: &str) -> WalkConfig {
    let cfg = VtdConfig::from_qemu_props(props).unwrap();
    WalkConfig::new(cfg.cap(), cfg.ecap())
}

fn nested_wc() -> WalkConfig {
    let cfg = VtdConfig {
        scalable_mode: true,
        first_stage: true,
        second_stage: true,
        nesting: true,
        ..VtdConfig::default()
    };
    WalkConfig::new(cfg.cap(), cfg.ecap())
}

#[derive(Clone, Copy, Debug)]
struct Mapping {
    iova: u64,
    gpa: u64,
    size: PageSize,
    write: bool,
}

fn mapping_strategy(max_size: PageSize) -> impl Strategy<Value = Mapping> {
    let sizes = match max_size {
        PageSize::Size4K => vec![PageSize::Size4K],
        PageSize::Size2M => vec![PageSize::Size4K, PageSize::Size2M],
        PageSize::Size1G => vec![PageSize::Size4K, PageSize::Size2M, PageSize::Size1G],
    };
    (
        prop::sample::select(sizes),
        0u64..(1 << 26),
        0u64..(1 << 14),
        any::<bool>(),
    )
        .prop_map(|(size, iova_page, gpa_page, write)| {
            let b = size.bytes();
            // IOVAs across the whole 39-bit space, outputs inside RAM (page-aligned to size).
            let iova = (iova_page << 13) & ((1 << 39) - 1) & !(b - 1);
            let gpa = ((gpa_page << 12) % RAM) & !(b - 1);
            Mapping {
                iova,
                gpa,
                size,
                write,
            }
        })
}

/// Keeps only mappings that do not overlap an earlier one (builders refuse overlaps).
fn disjoint(ms: Vec<Mapping>) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for m in ms {
        let (s, e) = (m.iova, m.iova + m.size.bytes());
        if out
            .iter()
            .all(|o| e <= o.iova || s >= o.iova + o.size.bytes())
        {
            out.push(m);
        }
    }
    out
}

fn lookup(ms: &[Mapping], iova: u64) -> Option<&Mapping> {
    ms.iter()
        .find(|m| iova >= m.iova && iova < m.iova + m.size.bytes())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Legacy mode, 3- and 4-level second stage with 2 MiB and 1 GiB pages.
    #[test]
    fn legacy_second_stage_walks_what_was_mapped(
        levels in 3u8..=4,
        maps in prop::collection::vec(mapping_strategy(PageSize::Size1G), 1..12),
        probes in prop::collection::vec((0u64..(1 << 39), any::<bool>()), 1..24),
    ) {
        let mem = ram();
        let cfg = wc("");
        let mut frames = FrameAllocator::new(TABLES.0, TABLES.1);
        let mut ctx = ContextTablesBuilder::new(&mem, &mut frames, false).unwrap();
        let mut pt = PageTableBuilder::new(&mem, &mut frames, PageTableFormat::SecondStage { levels }).unwrap();
        let maps = disjoint(maps);
        for m in &maps {
            pt.map(&mut frames, m.iova, m.gpa, m.size, true, m.write).unwrap();
        }
        ctx.set_legacy_context(&mut frames, SID, ContextEntry::new(pt.root(), levels - 2, 3)).unwrap();
        let root = RootTable { addr: ctx.root(), mode: TranslationTableMode::Legacy };
        // Probe mapped addresses and random ones.
        let mut iovas: Vec<(u64, bool)> = maps.iter().map(|m| (m.iova + 0x123, m.write)).collect();
        iovas.extend(probes);
        for (iova, write) in iovas {
            let access = if write { AccessKind::Write } else { AccessKind::Read };
            let got = translate(&mem, &cfg, root, &DmaRequest::new(SID, iova, access));
            match lookup(&maps, iova) {
                Some(m) if !write || m.write => {
                    let t = got.unwrap();
                    prop_assert_eq!(t.output, m.gpa + (iova - m.iova));
                    prop_assert_eq!(t.page_size, m.size.bytes());
                    prop_assert_eq!(t.did, 3);
                    prop_assert_eq!(t.perms.write, m.write);
                }
                Some(_) => {
                    let f = got.unwrap_err();
                    prop_assert_eq!(f.reason.code(), 0x5, "write to a read-only page");
                }
                None => {
                    let f = got.unwrap_err();
                    let expected = if write { 0x5 } else { 0x6 };
                    prop_assert_eq!(f.reason.code(), expected, "unmapped {:#x}", iova);
                    prop_assert_eq!(f.address, iova & !0xfff);
                    prop_assert_eq!(f.sid, SID);
                }
            }
        }
    }

    /// Scalable mode, first stage (4-level, 2 MiB and 1 GiB with FL1GP), A/D set on success.
    #[test]
    fn first_stage_walks_what_was_mapped(
        maps in prop::collection::vec(mapping_strategy(PageSize::Size1G), 1..12),
        probes in prop::collection::vec((0u64..(1 << 39), any::<bool>()), 1..24),
    ) {
        let mem = ram();
        let cfg = wc("x-scalable-mode=on,x-flts=on");
        let mut frames = FrameAllocator::new(TABLES.0, TABLES.1);
        let mut ctx = ContextTablesBuilder::new(&mem, &mut frames, true).unwrap();
        let mut pasids = PasidTablesBuilder::new(&mem, &mut frames, 0).unwrap();
        let mut pt = PageTableBuilder::new(&mem, &mut frames, PageTableFormat::FirstStage { levels: 4 }).unwrap();
        let maps = disjoint(maps);
        for m in &maps {
            pt.map(&mut frames, m.iova, m.gpa, m.size, true, m.write).unwrap();
        }
        pasids.set_entry(&mut frames, 0, PasidEntry::first_stage(pt.root(), false, 5, 2)).unwrap();
        ctx.set_scalable_context(&mut frames, SID, pasids.context_entry()).unwrap();
        let root = RootTable { addr: ctx.root(), mode: TranslationTableMode::Scalable };
        let mut iovas: Vec<(u64, bool)> = maps.iter().map(|m| (m.iova + 0x80, m.write)).collect();
        iovas.extend(probes);
        for (iova, write) in iovas {
            let access = if write { AccessKind::Write } else { AccessKind::Read };
            let got = translate(&mem, &cfg, root, &DmaRequest::new(SID, iova, access));
            match lookup(&maps, iova) {
                Some(m) if !write || m.write => {
                    let t = got.unwrap();
                    prop_assert_eq!(t.output, m.gpa + (iova - m.iova));
                    prop_assert_eq!(t.page_size, m.size.bytes());
                    prop_assert_eq!((t.did, t.pasid, t.kind), (5, Some(0), TranslationKind::FirstStage));
                    let leaf = FirstStagePte::from_bits(t.leaf);
                    prop_assert!(leaf.accessed());
                    if write { prop_assert!(leaf.dirty()); }
                    let slot = pt.leaf_slot(m.iova, m.size).unwrap().unwrap();
                    prop_assert_eq!(mem.read_u64(slot).unwrap(), t.leaf, "A/D written to memory");
                }
                Some(_) => prop_assert_eq!(got.unwrap_err().reason.code(), 0x85),
                None => prop_assert_eq!(got.unwrap_err().reason.code(), 0x71),
            }
        }
    }

    /// Nested: the first-stage table lives at guest-physical addresses the second stage maps
    /// elsewhere; output goes through the second stage too.
    #[test]
    fn nested_walks_through_both_stages(
        maps in prop::collection::vec(mapping_strategy(PageSize::Size2M), 1..8),
        shift_pages in 1u64..64,
    ) {
        let mem = ram();
        let cfg = nested_wc();
        let mut frames = FrameAllocator::new(TABLES.0, TABLES.1);
        // Second stage: identity for the low 32 MiB except that GPA x maps to x + shift for
        // the data area; tables are identity-mapped.
        let mut ss = PageTableBuilder::new(&mem, &mut frames, PageTableFormat::SecondStage { levels: 4 }).unwrap();
        let shift = shift_pages << 21;
        for gpa in (0..(32u64 << 20)).step_by(2 << 20) {
            let hpa = if gpa >= TABLES.1 { (gpa + shift) % RAM } else { gpa };
            ss.map(&mut frames, gpa, hpa & !((2 << 20) - 1), PageSize::Size2M, true, true).unwrap();
        }
        let mut fs = PageTableBuilder::new(&mem, &mut frames, PageTableFormat::FirstStage { levels: 4 }).unwrap();
        let maps: Vec<Mapping> = disjoint(maps).into_iter().map(|mut m| {
            m.gpa = (TABLES.1 + (m.gpa % (16 << 20))) & !(m.size.bytes() - 1);
            m
        }).filter(|m| m.gpa >= TABLES.1 && m.gpa + m.size.bytes() <= 32 << 20).collect();
        for m in &maps {
            fs.map(&mut frames, m.iova, m.gpa, m.size, true, m.write).unwrap();
        }
        let pe = PasidEntry::nested(fs.root(), false, ss.root(), 2, 9);
        let mut pasids = PasidTablesBuilder::new(&mem, &mut frames, 0).unwrap();
        pasids.set_entry(&mut frames, 0, pe).unwrap();
        let mut ctx = ContextTablesBuilder::new(&mem, &mut frames, true).unwrap();
        ctx.set_scalable_context(&mut frames, SID, pasids.context_entry()).unwrap();
        let root = RootTable { addr: ctx.root(), mode: TranslationTableMode::Scalable };
        for m in &maps {
            let t = translate(&mem, &cfg, root, &DmaRequest::new(SID, m.iova + 0x40, AccessKind::Read)).unwrap();
            let hpa = ((m.gpa + shift) % RAM) + 0x40;
            prop_assert_eq!(t.output, hpa);
            prop_assert_eq!(t.kind, TranslationKind::Nested);
        }
    }
}

/// Guest RAM that records every access and refuses anything outside it.
struct Watched {
    inner: GuestMemoryMmap<()>,
    accesses: Cell<u32>,
    /// Stays true while every access that succeeded lay inside RAM.
    in_ram: Cell<bool>,
}

impl GuestRam for Watched {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let r = self.inner.read(gpa, buf);
        self.check(gpa, buf.len(), r.is_ok());
        r
    }
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        let r = self.inner.write(gpa, buf);
        self.check(gpa, buf.len(), r.is_ok());
        r
    }
    fn compare_exchange_u64(&self, gpa: u64, c: u64, n: u64) -> Result<Result<u64, u64>, MemError> {
        let r = self.inner.compare_exchange_u64(gpa, c, n);
        self.check(gpa, 8, r.is_ok());
        r
    }
}

impl Watched {
    fn check(&self, gpa: u64, len: usize, succeeded: bool) {
        self.accesses.set(self.accesses.get() + 1);
        if succeeded
            && gpa
                .checked_add(len as u64)
                .is_none_or(|end| end > SMALL_RAM)
        {
            self.in_ram.set(false);
        }
    }
}

const SMALL_RAM: u64 = 1 << 20;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random bytes everywhere: every walk ends in a translation or a fault, performs a bounded
    /// number of accesses, and any address it could not read came back as a fault.
    #[test]
    fn random_tables_never_panic(
        seed_words in prop::collection::vec(any::<u64>(), 512),
        // Pointers biased into RAM so walks get deep.
        pointers in prop::collection::vec(0u64..(SMALL_RAM / 4096), 64),
        iova in any::<u64>(),
        sid in any::<u16>(),
        pasid in prop::option::of(0u32..(1 << 20)),
        kind in 0u8..3,
        privileged in any::<bool>(),
        scalable in any::<bool>(),
        nested in any::<bool>(),
    ) {
        let inner: GuestMemoryMmap<()> = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), SMALL_RAM as usize)]).unwrap();
        // Fill RAM with random words, mixing in plausible table pointers with P/R/W set.
        for page in 0..(SMALL_RAM / 4096) {
            for i in 0..512u64 {
                let w = seed_words[((page * 7 + i) % 512) as usize];
                let p = pointers[((page + i) % 64) as usize] << 12;
                let v = if (w >> 60) & 1 == 0 { p | (w & 0xfff) } else { w };
                inner.write_u64(page * 4096 + i * 8, v).unwrap();
            }
        }
        let mem = Watched { inner, accesses: Cell::new(0), in_ram: Cell::new(true) };
        let cfg = if nested { nested_wc() } else if scalable { wc("x-scalable-mode=on,x-flts=on") } else { wc("") };
        let access = [AccessKind::Read, AccessKind::Write, AccessKind::Execute][kind as usize];
        let req = DmaRequest { sid, pasid, iova, access, privileged };
        let mode = if scalable || nested { TranslationTableMode::Scalable } else { TranslationTableMode::Legacy };
        let root = RootTable { addr: pointers[0] << 12, mode };
        match translate(&mem, &cfg, root, &req) {
            Ok(t) => {
                prop_assert!(t.output >> cfg.haw() == 0, "output {:#x} beyond HAW", t.output);
                prop_assert!(t.perms.allows(access), "granted {:?} for {:?}", t.perms, access);
            }
            Err(f) => prop_assert_eq!(f.sid, sid),
        }
        // root + context + dir + pasid + 5 FS levels each through 5 SS levels + output + A/D.
        prop_assert!(mem.accesses.get() <= 80, "{} accesses", mem.accesses.get());
        prop_assert!(mem.in_ram.get(), "an access succeeded outside guest RAM");
    }
}

#[test]
fn walk_faults_with_spec_reasons() {
    let mem = ram();
    let cfg = wc("x-scalable-mode=on,x-flts=on");
    let mut frames = FrameAllocator::new(TABLES.0, TABLES.1);
    let mut ctx = ContextTablesBuilder::new(&mem, &mut frames, true).unwrap();
    let root = RootTable {
        addr: ctx.root(),
        mode: TranslationTableMode::Scalable,
    };
    let req = DmaRequest::new(SID, 0x1000, AccessKind::Read);
    let code =
        |mem: &GuestMemoryMmap<()>| translate(mem, &cfg, root, &req).unwrap_err().reason.code();
    assert_eq!(code(&mem), 0x39, "root entry not present");
    let mut pasids = PasidTablesBuilder::new(&mem, &mut frames, 0).unwrap();
    ctx.set_scalable_context(&mut frames, SID, ScalableContextEntry::default())
        .unwrap();
    assert_eq!(code(&mem), 0x41, "context entry not present");
    ctx.set_scalable_context(&mut frames, SID, pasids.context_entry())
        .unwrap();
    assert_eq!(code(&mem), 0x51, "PASID directory entry not present");
    let pt = PageTableBuilder::new(&mem, &mut frames, PageTableFormat::FirstStage { levels: 4 })
        .unwrap();
    pasids
        .set_entry(&mut frames, 0, PasidEntry::default())
        .unwrap();
    assert_eq!(code(&mem), 0x59, "PASID entry not present");
    pasids
        .set_entry(
            &mut frames,
            0,
            PasidEntry::first_stage(pt.root(), false, 5, 2).with_pgtt(Pgtt::Reserved(7)),
        )
        .unwrap();
    assert_eq!(code(&mem), 0x5b, "reserved PGTT");
    pasids
        .set_entry(&mut frames, 0, PasidEntry::second_stage(pt.root(), 2, 5))
        .unwrap();
    assert_eq!(code(&mem), 0x5b, "second stage not offered with x-flts");
    pasids
        .set_entry(
            &mut frames,
            0,
            PasidEntry::first_stage(pt.root(), true, 5, 2),
        )
        .unwrap();
    assert_eq!(code(&mem), 0x5b, "5-level without FL5LP");
    pasids
        .set_entry(
            &mut frames,
            0,
            PasidEntry::first_stage(pt.root(), false, 5, 2).with_fpd(true),
        )
        .unwrap();
    let f = translate(&mem, &cfg, root, &req).unwrap_err();
    assert_eq!(
        (f.reason.code(), f.suppressed),
        (0x71, true),
        "FPD suppresses qualified faults"
    );
    pasids
        .set_entry(
            &mut frames,
            0,
            PasidEntry::first_stage(pt.root(), false, 5, 2),
        )
        .unwrap();
    let nc = DmaRequest::new(SID, 0x0000_8000_0000_0000, AccessKind::Read);
    assert_eq!(
        translate(&mem, &cfg, root, &nc).unwrap_err().reason.code(),
        0x80,
        "non-canonical"
    );
    let sup = DmaRequest {
        privileged: true,
        ..req
    };
    assert_eq!(
        translate(&mem, &cfg, root, &sup).unwrap_err().reason.code(),
        0x5d,
        "SRE clear"
    );
    // A supervisor-only leaf refuses a user request.
    let mut fsb = PageTableBuilder::at(&mem, pt.root(), PageTableFormat::FirstStage { levels: 4 });
    fsb.set_leaf(&mut frames, 0x1000, PageSize::Size4K, 0x20_0000 | 0b1)
        .unwrap();
    assert_eq!(code(&mem), 0x81, "U/S clear for a user request");
    fsb.set_leaf(
        &mut frames,
        0x1000,
        PageSize::Size4K,
        0x20_0000 | 0b101 | 1 << 51,
    )
    .unwrap();
    assert_eq!(code(&mem), 0x72, "reserved address bit above HAW");
}

#[test]
fn legacy_faults_with_spec_reasons() {
    let mem = ram();
    let cfg = wc("");
    let mut frames = FrameAllocator::new(TABLES.0, TABLES.1);
    let mut ctx = ContextTablesBuilder::new(&mem, &mut frames, false).unwrap();
    let root = RootTable {
        addr: ctx.root(),
        mode: TranslationTableMode::Legacy,
    };
    let req = DmaRequest::new(SID, 0x1000, AccessKind::Read);
    let code = || translate(&mem, &cfg, root, &req).unwrap_err().reason.code();
    assert_eq!(code(), 0x1);
    ctx.set_legacy_context(&mut frames, SID, ContextEntry::default())
        .unwrap();
    assert_eq!(code(), 0x2);
    let pt = PageTableBuilder::new(
        &mem,
        &mut frames,
        PageTableFormat::SecondStage { levels: 3 },
    )
    .unwrap();
    ctx.set_legacy_context(&mut frames, SID, ContextEntry::new(pt.root(), 3, 1))
        .unwrap();
    assert_eq!(code(), 0x3, "AW 3 (5-level) not in SAGAW");
    ctx.set_legacy_context(&mut frames, SID, ContextEntry::new(pt.root(), 1, 1))
        .unwrap();
    assert_eq!(code(), 0x6);
    let far = DmaRequest::new(SID, 1 << 39, AccessKind::Read);
    assert_eq!(
        translate(&mem, &cfg, root, &far).unwrap_err().reason.code(),
        0x4,
        "beyond AGAW"
    );
    ctx.set_legacy_context(&mut frames, SID, ContextEntry::pass_through(1, 1))
        .unwrap();
    let t = translate(&mem, &cfg, root, &req).unwrap();
    assert_eq!(
        (t.output, t.kind),
        (0x1000, TranslationKind::LegacyPassThrough)
    );
    let bad_root = RootTable {
        addr: RAM + 0x1000,
        mode: TranslationTableMode::Legacy,
    };
    assert_eq!(
        translate(&mem, &cfg, bad_root, &req)
            .unwrap_err()
            .reason
            .code(),
        0x8
    );
}
