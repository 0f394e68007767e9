//! Spec conformance where QEMU cannot check us: reserved fields that depend on CAP/ECAP, and
//! the fault reasons of the nested, 5-level and PASID paths QEMU does not implement.
//!
//! Each test names the VT-d spec section (rev 4.1) it holds the walker to. For every entry
//! type and every capability bit that turns a reserved field into a defined one there is a
//! pair of checks: the field faults (or is not obeyed) without the capability and is honoured
//! with it. The QEMU differential corpus (conformance/) cannot cover these: QEMU 10.0.2 has no
//! SLADS, SRS with first stage, EAFS, ERS, nesting, 5-level first stage or PASIDs beyond 0.
//!
//! The later sections hold the walker to the rules every walk depends on, each of which a
//! wrong line in `walk.rs` would break without any other test noticing: the legacy root and
//! context lookups, RID_PASID, FPD suppression, accessed/dirty updates on every entry used,
//! the rights each stage grants, and the interrupt-range checks.

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd_regs::fault::FaultReason;
use vtd_regs::regs::TranslationTableMode;
use vtd_regs::{Cap, Ecap, VtdConfig};
use vtd_tables::GuestRam;
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_tables::reserved::ReservedRules;
use vtd_tables::walk::*;

const RAM: u64 = 32 << 20;
const SID: u16 = 0x0010;
const DATA: u64 = 0x40_0000;

/// A scalable-mode unit with first and second stage, nesting, 48-bit, everything optional off.
fn base_config() -> VtdConfig {
    VtdConfig {
        scalable_mode: true,
        first_stage: true,
        second_stage: true,
        nesting: true,
        pasid_bits: 20,
        ..VtdConfig::default()
    }
}

fn caps(ecap_extra: impl FnOnce(Ecap) -> Ecap) -> (Cap, Ecap) {
    let cfg = base_config();
    (cfg.cap(), ecap_extra(cfg.ecap()))
}

struct World {
    mem: GuestMemoryMmap<()>,
    frames: FrameAllocator,
    ctx_root: u64,
    /// Legacy or scalable: which kind of root table `ctx_root` is.
    mode: TranslationTableMode,
    cfg: WalkConfig,
}

impl World {
    fn new(cap: Cap, ecap: Ecap) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let mut frames = FrameAllocator::new(0x10_0000, 0x30_0000);
        let ctx = ContextTablesBuilder::new(&mem, &mut frames, true).unwrap();
        let ctx_root = ctx.root();
        Self {
            mem,
            frames,
            ctx_root,
            mode: TranslationTableMode::Scalable,
            cfg: WalkConfig::new(cap, ecap),
        }
    }

    fn root(&self) -> RootTable {
        RootTable {
            addr: self.ctx_root,
            mode: self.mode,
        }
    }

    /// A first-stage table (4 or 5 levels) mapping 4 KiB at `iova` to DATA as user, RW.
    fn first_stage(&mut self, levels: u8, iova: u64) -> u64 {
        let mut pt = PageTableBuilder::new(
            &self.mem,
            &mut self.frames,
            PageTableFormat::FirstStage { levels },
        )
        .unwrap();
        pt.map(&mut self.frames, iova, DATA, PageSize::Size4K, true, true)
            .unwrap();
        pt.root()
    }

    /// A second-stage (4-level) table mapping [0, 4 MiB) ∪ DATA page identically, R/W.
    fn second_stage_identity(&mut self) -> u64 {
        let mut pt = PageTableBuilder::new(
            &self.mem,
            &mut self.frames,
            PageTableFormat::SecondStage { levels: 4 },
        )
        .unwrap();
        pt.map(&mut self.frames, 0, 0, PageSize::Size2M, true, true)
            .unwrap();
        pt.map(
            &mut self.frames,
            0x20_0000,
            0x20_0000,
            PageSize::Size2M,
            true,
            true,
        )
        .unwrap();
        pt.map(&mut self.frames, DATA, DATA, PageSize::Size4K, true, true)
            .unwrap();
        pt.root()
    }

    /// Installs the PASID entry for (SID, `pasid`) with a context entry built by `ctx`;
    /// returns the PASID directory's address.
    fn install(
        &mut self,
        pasid: u32,
        pe: PasidEntry,
        ctx: impl FnOnce(ScalableContextEntry) -> ScalableContextEntry,
    ) -> u64 {
        self.install_all(&[(pasid, pe)], ctx)
    }

    /// Installs several PASID entries of SID in one directory (see [`World::install`]).
    fn install_all(
        &mut self,
        entries: &[(u32, PasidEntry)],
        ctx: impl FnOnce(ScalableContextEntry) -> ScalableContextEntry,
    ) -> u64 {
        let mut pasids = PasidTablesBuilder::new(&self.mem, &mut self.frames, 0).unwrap();
        for &(pasid, pe) in entries {
            pasids.set_entry(&mut self.frames, pasid, pe).unwrap();
        }
        let ce = ctx(pasids.context_entry().with_paside(true));
        let mut b = ContextTablesBuilder::new(&self.mem, &mut self.frames, true).unwrap();
        b.set_scalable_context(&mut self.frames, SID, ce).unwrap();
        self.ctx_root = b.root();
        self.mode = TranslationTableMode::Scalable;
        pasids.dir()
    }

    /// Switches to a legacy-mode root table holding these context entries.
    fn install_legacy(&mut self, entries: &[(u16, ContextEntry)]) {
        let mut b = ContextTablesBuilder::new(&self.mem, &mut self.frames, false).unwrap();
        for &(sid, ce) in entries {
            b.set_legacy_context(&mut self.frames, sid, ce).unwrap();
        }
        self.ctx_root = b.root();
        self.mode = TranslationTableMode::Legacy;
    }

    /// A table of `format` mapping 4 KiB at `iova` to `addr` (R/W; first stage: user).
    fn table_mapping(&mut self, format: PageTableFormat, iova: u64, addr: u64) -> u64 {
        let mut pt = PageTableBuilder::new(&self.mem, &mut self.frames, format).unwrap();
        pt.map(&mut self.frames, iova, addr, PageSize::Size4K, true, true)
            .unwrap();
        pt.root()
    }

    fn translate(&self, req: DmaRequest) -> Result<Translation, FaultReason> {
        translate(&self.mem, &self.cfg, self.root(), &req).map_err(|f| f.reason)
    }

    /// The fault `req` ends in, with its FPD suppression.
    fn fault(&self, req: DmaRequest) -> Fault {
        translate(&self.mem, &self.cfg, self.root(), &req).unwrap_err()
    }

    /// The (slot, entry) pairs a walk of `levels` levels from `root` uses for `iova`, down
    /// to a leaf (both paging formats keep the address in 51:12 and PS in bit 7).
    fn path(&self, root: u64, levels: u8, iova: u64) -> Vec<(u64, u64)> {
        let mut table = root;
        let mut out = Vec::new();
        for level in (1..=levels).rev() {
            let slot = table + ((iova >> (12 + 9 * (level as u32 - 1))) & 0x1ff) * 8;
            let entry = self.mem.read_u64(slot).unwrap();
            out.push((slot, entry));
            if level > 1 && entry & (1 << 7) != 0 {
                break;
            }
            table = entry & ADDR_MASK;
        }
        out
    }
}

fn read(iova: u64) -> DmaRequest {
    DmaRequest::new(SID, iova, AccessKind::Read)
}

fn with_pasid(pasid: u32, iova: u64, access: AccessKind, privileged: bool) -> DmaRequest {
    DmaRequest {
        pasid: Some(pasid),
        privileged,
        ..DmaRequest::new(SID, iova, access)
    }
}

// --- 9.6: PASID-table entry, one row per capability-dependent field -------------------------

/// (name, qword, bit, the ECAP bit that defines the field, spec section).
type Row = (&'static str, usize, u32, fn(Ecap) -> Ecap, &'static str);

const PASID_ENTRY_ROWS: &[Row] = &[
    (
        "SSADE",
        0,
        9,
        |e| e.with_slads(true),
        "9.6 SSADE / 11.4.3 SLADS",
    ),
    (
        "SLEE (old)",
        0,
        5,
        |e| e.with_ers(true),
        "9.6 bit 5 / 11.4.3 ERS",
    ),
    ("PGSNP", 1, 24, |e| e.with_sc(true), "9.6 PGSNP / 11.4.3 SC"),
    ("CD", 1, 25, |e| e.with_mts(true), "9.6 CD / 11.4.3 MTS"),
    ("EMTE", 1, 26, |e| e.with_mts(true), "9.6 EMTE / 11.4.3 MTS"),
    ("PAT", 1, 40, |e| e.with_mts(true), "9.6 PAT / 11.4.3 MTS"),
    ("SRE", 2, 0, |e| e.with_srs(true), "9.6 SRE / 11.4.3 SRS"),
    ("ERE", 2, 1, |e| e.with_ers(true), "9.6 ERE / 11.4.3 ERS"),
    (
        "EAFE",
        2,
        7,
        |e| e.with_eafs(true),
        "9.6 EAFE / 11.4.3 EAFS",
    ),
];

#[test]
fn pasid_entry_fields_are_reserved_without_their_capability_and_honoured_with_it() {
    for &(name, word, bit, grant, section) in PASID_ENTRY_ROWS {
        let mut pe = PasidEntry::first_stage(0x20_0000, false, 3, 2);
        pe.0[word] |= 1 << bit;
        let (cap, ecap) = caps(|e| e);
        let without = ReservedRules::from_caps(cap, ecap);
        assert_eq!(
            without.check_pasid_entry(&pe),
            Err(FaultReason::PasidEntryReserved),
            "{name} ({section}) must be reserved without the capability"
        );
        assert_ne!(without.pasid_entry_reserved_bits(&pe)[word], 0, "{name}");
        let with = ReservedRules::from_caps(cap, grant(ecap));
        assert_eq!(
            with.check_pasid_entry(&pe),
            Ok(()),
            "{name} ({section}) must be accepted with the capability"
        );
    }
}

#[test]
fn pasid_entry_bits_134_133_are_ignored_in_every_unit() {
    // Spec rev 4.1 9.6: bits 134:133 are ignored for compatibility with older software
    // (bit 133 was NXE; Linux 6.3-6.10 pasid_set_nxe() sets it for every first-stage entry).
    for (cap, ecap) in [caps(|e| e), caps(|e| e.with_ers(true).with_srs(true))] {
        let rules = ReservedRules::from_caps(cap, ecap);
        for bits in [1u64 << 5, 1 << 6, 3 << 5] {
            let mut pe = PasidEntry::first_stage(0x20_0000, false, 3, 2);
            pe.0[2] |= bits;
            assert_eq!(rules.check_pasid_entry(&pe), Ok(()), "qw2 {bits:#x}");
        }
    }
}

#[test]
fn pasid_entry_always_reserved_fields() {
    // 9.6: qw0 11:10, qw1 22:16 and 31:27, qw2 11:8, qw3-qw7: reserved whatever the unit has.
    let (cap, ecap) = caps(|e| {
        e.with_slads(true)
            .with_srs(true)
            .with_eafs(true)
            .with_sc(true)
            .with_ers(true)
            .with_mts(true)
    });
    let rules = ReservedRules::from_caps(cap, ecap);
    for (word, bit) in [
        (0, 10),
        (0, 11),
        (1, 16),
        (1, 22),
        (1, 27),
        (1, 31),
        (2, 8),
        (2, 11),
    ]
    .into_iter()
    .chain((3..8).map(|w| (w, 17)))
    {
        let mut pe = PasidEntry::first_stage(0x20_0000, false, 3, 2);
        pe.0[word] |= 1 << bit;
        assert_eq!(
            rules.check_pasid_entry(&pe),
            Err(FaultReason::PasidEntryReserved),
            "qw{word} bit {bit}"
        );
    }
    // Pointers above the host address width (48 bits here).
    let pe = PasidEntry::first_stage(1 << 50, false, 3, 2);
    assert_eq!(
        rules.check_pasid_entry(&pe),
        Err(FaultReason::PasidEntryReserved)
    );
    let pe = PasidEntry::second_stage(1 << 50, 2, 3);
    assert_eq!(
        rules.check_pasid_entry(&pe),
        Err(FaultReason::PasidEntryReserved)
    );
}

// --- 9.6 honoured fields: the walker obeys them only with the capability --------------------

#[test]
fn ssade_sets_second_stage_accessed_dirty_only_with_slads() {
    // 9.6 SSADE, 3.7.2: A/D in second-stage entries are set only when SSADE is defined.
    for slads in [false, true] {
        let (cap, ecap) = caps(|e| e.with_slads(slads));
        let mut w = World::new(cap, ecap);
        let ss = w.second_stage_identity();
        let pe = PasidEntry::second_stage(ss, 2, 4).with_ssade(true);
        w.install(0, pe, |c| c);
        let got = w.translate(DmaRequest::new(SID, DATA + 8, AccessKind::Write));
        if slads {
            let t = got.unwrap();
            assert_eq!(t.leaf & (1 << 8 | 1 << 9), 1 << 8 | 1 << 9, "A and D set");
        } else {
            assert_eq!(got.unwrap_err(), FaultReason::PasidEntryReserved);
        }
        // Called with the entry directly (a caller that skipped the lookup), the walk still
        // does not write A/D into the guest's tables without SLADS.
        let t = translate_with_pasid_entry(
            &w.mem,
            &w.cfg,
            &pe,
            0,
            &DmaRequest::new(SID, DATA, AccessKind::Write),
        )
        .unwrap();
        assert_eq!(t.leaf & (1 << 8 | 1 << 9) != 0, slads);
    }
}

#[test]
fn eafe_sets_extended_accessed_only_with_eafs() {
    // 9.6 EAFE, 3.6.2: bit 10 of first-stage entries is written only when EAFE is defined.
    for eafs in [false, true] {
        let (cap, ecap) = caps(|e| e.with_eafs(eafs));
        let mut w = World::new(cap, ecap);
        let fs = w.first_stage(4, 0x1000);
        let pe = PasidEntry::first_stage(fs, false, 3, 2).with_eafe(true);
        w.install(0, pe, |c| c);
        match w.translate(read(0x1000)) {
            Ok(t) => {
                assert!(eafs);
                assert_ne!(t.leaf & (1 << 10), 0);
            }
            Err(r) => {
                assert!(!eafs);
                assert_eq!(r, FaultReason::PasidEntryReserved);
            }
        }
        let t = translate_with_pasid_entry(&w.mem, &w.cfg, &pe, 0, &read(0x1000)).unwrap();
        assert_eq!(t.leaf & (1 << 10) != 0, eafs, "EA written iff EAFS");
    }
}

#[test]
fn sre_lets_privileged_requests_reach_supervisor_pages_only_with_srs() {
    // 9.6 SRE, 3.6.2: a privileged request needs SRE, and SRE needs ECAP.SRS.
    for srs in [false, true] {
        let (cap, ecap) = caps(|e| e.with_srs(srs).with_pasid(true));
        let mut w = World::new(cap, ecap);
        let mut pt = PageTableBuilder::new(
            &w.mem,
            &mut w.frames,
            PageTableFormat::FirstStage { levels: 4 },
        )
        .unwrap();
        // A supervisor-only leaf (U/S = 0), writable.
        let leaf = FirstStagePte::leaf(DATA, true, false).into_bits() & !(1 << 2);
        pt.set_leaf(&mut w.frames, 0x1000, PageSize::Size4K, leaf)
            .unwrap();
        let pe = PasidEntry::first_stage(pt.root(), false, 3, 2).with_sre(true);
        w.install(5, pe, |c| c);
        let req = with_pasid(5, 0x1000, AccessKind::Write, true);
        let got = w.translate(req);
        if srs {
            assert_eq!(got.unwrap().output, DATA);
        } else {
            assert_eq!(got.unwrap_err(), FaultReason::PasidEntryReserved);
        }
        let direct = translate_with_pasid_entry(&w.mem, &w.cfg, &pe, 5, &req);
        if srs {
            assert!(direct.is_ok());
        } else {
            assert_eq!(
                direct.unwrap_err().reason,
                FaultReason::PasidEntrySupervisorDisabled
            );
        }
    }
}

#[test]
fn pgsnp_is_accepted_only_with_snoop_control() {
    // 9.6 PGSNP / 11.4.3 SC. Linux sets PGSNP only for a domain with force_snooping, which
    // it allows only when every unit has ECAP.SC.
    for sc in [false, true] {
        let (cap, ecap) = caps(|e| e.with_sc(sc));
        let mut w = World::new(cap, ecap);
        let fs = w.first_stage(4, 0x1000);
        w.install(
            0,
            PasidEntry::first_stage(fs, false, 3, 2).with_pgsnp(true),
            |c| c,
        );
        assert_eq!(
            w.translate(read(0x1000)).map(|t| t.output),
            if sc {
                Ok(DATA)
            } else {
                Err(FaultReason::PasidEntryReserved)
            }
        );
    }
}

#[test]
fn execute_requests_exist_only_with_ers() {
    // 11.4.3 ERS; 9.6 ERE; 9.7 XD. Rev 4.x removed execute requests: without ERS the ER
    // field is ignored (the request is a read, XD does not apply), with ERS it is honoured.
    for ers in [false, true] {
        let (cap, ecap) = caps(|e| e.with_ers(ers).with_pasid(true));
        let mut w = World::new(cap, ecap);
        let mut pt = PageTableBuilder::new(
            &w.mem,
            &mut w.frames,
            PageTableFormat::FirstStage { levels: 4 },
        )
        .unwrap();
        let xd_leaf = FirstStagePte::leaf(DATA, true, false).into_bits() | 1 << 63;
        pt.set_leaf(&mut w.frames, 0x1000, PageSize::Size4K, xd_leaf)
            .unwrap();
        let fs_root = pt.root();
        // ERE clear: an execute request is blocked (0x5C) only where execute requests exist.
        w.install(7, PasidEntry::first_stage(fs_root, false, 3, 2), |c| c);
        let exec = with_pasid(7, 0x1000, AccessKind::Execute, false);
        assert_eq!(
            w.translate(exec).map(|t| t.output),
            if ers {
                Err(FaultReason::PasidEntryExecuteDisabled)
            } else {
                Ok(DATA)
            }
        );
        // ERE set: reserved without ERS; with ERS the leaf's XD blocks the execute (0x82).
        w.install(
            7,
            PasidEntry::first_stage(fs_root, false, 3, 2).with_ere(true),
            |c| c,
        );
        assert_eq!(
            w.translate(exec).map(|t| t.output),
            Err(if ers {
                FaultReason::ExecuteNotPermitted
            } else {
                FaultReason::PasidEntryReserved
            })
        );
    }
}

// --- 9.4: scalable-mode context entry -------------------------------------------------------

#[test]
fn scalable_context_fields_are_reserved_without_their_capability() {
    // 9.4: DTE needs ECAP.DT, PRE needs ECAP.PRS, RID_PRIV (bit 84) needs ECAP.RPRIVS (53).
    let rows: &[Row] = &[
        ("DTE", 0, 2, |e| e.with_dt(true), "9.4 DTE / 11.4.3 DT"),
        ("PRE", 0, 4, |e| e.with_prs(true), "9.4 PRE / 11.4.3 PRS"),
        (
            "RID_PRIV",
            1,
            20,
            |e| Ecap::from_bits(e.into_bits() | 1 << 53),
            "9.4 RID_PRIV / 11.4.3 RPRIVS",
        ),
    ];
    for &(name, word, bit, grant, section) in rows {
        let (cap, ecap) = caps(|e| e);
        let mut ce = ScalableContextEntry::new(0x20_0000, 0);
        ce.0[word] |= 1 << bit;
        assert_eq!(
            ReservedRules::from_caps(cap, ecap).check_scalable_context_entry(&ce),
            Err(FaultReason::SmContextEntryReserved),
            "{name} ({section}) without its capability"
        );
        assert_eq!(
            ReservedRules::from_caps(cap, grant(ecap)).check_scalable_context_entry(&ce),
            Ok(()),
            "{name} ({section}) with its capability"
        );
    }
    // The walk reports it as 0x42.
    let (cap, ecap) = caps(|e| e);
    let mut w = World::new(cap, ecap);
    let fs = w.first_stage(4, 0x1000);
    w.install(0, PasidEntry::first_stage(fs, false, 3, 2), |c| {
        c.with_dte(true)
    });
    assert_eq!(
        w.translate(read(0x1000)).unwrap_err(),
        FaultReason::SmContextEntryReserved
    );
}

// --- 9.1, 9.2, 9.3, 9.5: pointers beyond the host address width -----------------------------

#[test]
fn table_pointers_beyond_haw_are_reserved() {
    let cfg39 = VtdConfig::from_qemu_props("aw-bits=39").unwrap();
    let r39 = ReservedRules::from_caps(cfg39.cap(), cfg39.ecap());
    let (cap, ecap) = caps(|e| e);
    let r48 = ReservedRules::from_caps(cap, ecap);
    assert_eq!(
        r39.check_root_entry(&RootEntry::new(1 << 40)),
        Err(FaultReason::RootEntryReserved)
    );
    assert_eq!(r48.check_root_entry(&RootEntry::new(1 << 40)), Ok(()));
    assert_eq!(
        r48.check_context_entry(&ContextEntry([1 | 0x10, 0x8])),
        Err(FaultReason::ContextEntryReserved)
    );
    assert_eq!(
        r48.check_scalable_root_entry(&ScalableRootEntry::new(None, Some(1 << 50)), 0x80),
        Err(FaultReason::SmRootEntryReserved)
    );
    assert_eq!(
        r48.check_pasid_dir_entry(&PasidDirEntry::to_table(1 << 50)),
        Err(FaultReason::PasidDirectoryEntryReserved)
    );
    assert_eq!(
        r48.check_scalable_context_entry(&ScalableContextEntry::new(0x7000, 0)),
        Ok(())
    );
}

// --- 9.7, 9.8: paging entries ---------------------------------------------------------------

#[test]
fn paging_entry_fields_follow_the_capabilities() {
    // 9.8: SNP (11) needs ECAP.SC on a leaf; TM (62) needs ECAP.DT; PS at level 3 needs
    // CAP.SLLPS bit 1. 9.7: PS in a PDPTE needs CAP.FL1GP; PS in a PML4E never.
    let (cap, ecap) = caps(|e| e);
    let none = ReservedRules::from_caps(cap.with_sllps(0).with_fl1gp(false), ecap);
    let all = ReservedRules::from_caps(
        cap.with_sllps(0b11).with_fl1gp(true),
        ecap.with_sc(true).with_dt(true),
    );
    assert_ne!(none.second_stage_pte_mask(1, false) & (1 << 11), 0);
    assert_eq!(all.second_stage_pte_mask(1, false) & (1 << 11), 0);
    assert_ne!(none.second_stage_pte_mask(2, false) & (1 << 62), 0);
    assert_eq!(all.second_stage_pte_mask(2, false) & (1 << 62), 0);
    assert_ne!(none.second_stage_pte_mask(3, true) & (1 << 7), 0);
    assert_eq!(all.second_stage_pte_mask(3, true) & (1 << 7), 0);
    assert_ne!(all.second_stage_pte_mask(4, true) & (1 << 7), 0);
    assert_ne!(none.first_stage_pte_mask(3, true) & (1 << 7), 0);
    assert_eq!(all.first_stage_pte_mask(3, true) & (1 << 7), 0);
    assert_ne!(all.first_stage_pte_mask(4, true) & (1 << 7), 0);
    // XD (63) and the ignored bits 62:52 of a first-stage entry are never reserved.
    assert_eq!(
        all.first_stage_pte_mask(1, false) & 0xfff0_0000_0000_0000,
        0
    );
    assert_eq!(
        none.first_stage_pte_mask(1, false) & 0xfff0_0000_0000_0000,
        0
    );
}

// --- Fault-reason tables: PASID path (3.4.3, 7.1.3) -----------------------------------------

#[test]
fn pasid_path_fault_reasons() {
    let (cap, ecap) = caps(|e| e.with_pasid(true));
    let mut w = World::new(cap, ecap);
    let fs = w.first_stage(4, 0x1000);
    let good = PasidEntry::first_stage(fs, false, 3, 2);

    // SCT.6 0x45: request with PASID, PASIDE clear.
    w.install(9, good, |c| c.with_paside(false));
    assert_eq!(
        w.translate(with_pasid(9, 0x1000, AccessKind::Read, false))
            .unwrap_err(),
        FaultReason::SmContextPasidDisabled
    );
    // SCT.7 0x46: PASID beyond the directory (PDTS 0: 2^13 PASIDs).
    w.install(9, good, |c| c);
    assert_eq!(
        w.translate(with_pasid(1 << 13, 0x1000, AccessKind::Read, false))
            .unwrap_err(),
        FaultReason::SmPasidBeyondDirectorySize
    );
    // SPD.2 0x51: directory entry not present (PASID 64 lives in directory slot 1).
    assert_eq!(
        w.translate(with_pasid(64, 0x1000, AccessKind::Read, false))
            .unwrap_err(),
        FaultReason::PasidDirectoryEntryNotPresent
    );
    // SPT.2 0x59: PASID entry not present (same table, other slot).
    assert_eq!(
        w.translate(with_pasid(10, 0x1000, AccessKind::Read, false))
            .unwrap_err(),
        FaultReason::PasidEntryNotPresent
    );
    // SPT.4 0x5B: FSPM reserved encoding; 5-level without CAP.FL5LP.
    let mut bad = good;
    bad.0[2] |= 2 << 2;
    w.install(9, bad, |c| c);
    assert_eq!(
        w.translate(with_pasid(9, 0x1000, AccessKind::Read, false))
            .unwrap_err(),
        FaultReason::PasidEntryInvalid
    );
    w.install(9, PasidEntry::first_stage(fs, true, 3, 2), |c| c);
    assert_eq!(
        w.translate(with_pasid(9, 0x1000, AccessKind::Read, false))
            .unwrap_err(),
        FaultReason::PasidEntryInvalid
    );
    // SPT.6 0x5D: privileged request, SRE clear.
    w.install(9, good, |c| c);
    assert_eq!(
        w.translate(with_pasid(9, 0x1000, AccessKind::Read, true))
            .unwrap_err(),
        FaultReason::PasidEntrySupervisorDisabled
    );
    // SPD.1 0x50: the directory is outside guest RAM.
    let ce = ScalableContextEntry::new(RAM + 0x10_0000, 0).with_paside(true);
    let mut b = ContextTablesBuilder::new(&w.mem, &mut w.frames, true).unwrap();
    b.set_scalable_context(&mut w.frames, SID, ce).unwrap();
    w.ctx_root = b.root();
    assert_eq!(
        w.translate(with_pasid(9, 0x1000, AccessKind::Read, false))
            .unwrap_err(),
        FaultReason::PasidDirectoryAccessError
    );
}

#[test]
fn a_pasid_wider_than_pss_is_walked_like_any_other() {
    // 11.4.3 PSS describes the PASID width software may configure in devices; the spec
    // defines no fault for a wider one, and QEMU 10.0.2 (x-pasid-mode advertises PSS = 0)
    // walks every PASID. The directory size (PDTS, 0x46) is what bounds the walk.
    let (cap, ecap) = caps(|e| e.with_pasid(true).with_pss(0));
    let mut w = World::new(cap, ecap);
    let fs = w.first_stage(4, 0x1000);
    w.install(5, PasidEntry::first_stage(fs, false, 3, 2), |c| c);
    assert_eq!(
        w.translate(with_pasid(5, 0x1000, AccessKind::Read, false))
            .map(|t| t.output),
        Ok(DATA)
    );
}

#[test]
fn legacy_mode_blocks_requests_with_pasid() {
    // 3.4.1 / fault RTA.2 (0x31): TTM = legacy and the request carries a PASID.
    let cfg = VtdConfig::default();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let mut frames = FrameAllocator::new(0x10_0000, 0x30_0000);
    let mut ctx = ContextTablesBuilder::new(&mem, &mut frames, false).unwrap();
    let mut pt = PageTableBuilder::new(
        &mem,
        &mut frames,
        PageTableFormat::SecondStage { levels: 4 },
    )
    .unwrap();
    pt.map(&mut frames, 0x1000, DATA, PageSize::Size4K, true, true)
        .unwrap();
    ctx.set_legacy_context(&mut frames, SID, ContextEntry::new(pt.root(), 2, 1))
        .unwrap();
    let wc = WalkConfig::new(cfg.cap(), cfg.ecap());
    let root = RootTable {
        addr: ctx.root(),
        mode: TranslationTableMode::Legacy,
    };
    assert!(translate(&mem, &wc, root, &read(0x1000)).is_ok());
    let f = translate(
        &mem,
        &wc,
        root,
        &with_pasid(0, 0x1000, AccessKind::Read, false),
    )
    .unwrap_err();
    assert_eq!(f.reason, FaultReason::SmLegacyModeRequestWithPasid);
    assert_eq!(f.reason.code(), 0x31);
}

// --- Fault-reason tables: nested translation (3.8, 7.1.3 SFL.5-8, SSL.1/4, SGN.4) ------------

/// A nested unit with a first stage at FS_GPA whose tables are at guest-physical addresses
/// translated by a second stage the test shapes.
struct Nested {
    w: World,
    fs_root: u64,
    ss: u64,
}

fn nested() -> Nested {
    let (cap, ecap) = caps(|e| e.with_pasid(true));
    let mut w = World::new(cap, ecap);
    let fs_root = w.first_stage(4, 0x1000);
    let ss = w.second_stage_identity();
    Nested { w, fs_root, ss }
}

impl Nested {
    fn run(&mut self, ss: u64, req: DmaRequest) -> Result<Translation, FaultReason> {
        let pe = PasidEntry::nested(self.fs_root, false, ss, 2, 6);
        self.w.install(0, pe, |c| c);
        self.w.translate(req)
    }
}

#[test]
fn nested_translation_works_through_both_stages() {
    let mut n = nested();
    let ss = n.ss;
    let t = n.run(ss, read(0x1000)).unwrap();
    assert_eq!((t.output, t.kind), (DATA, TranslationKind::Nested));
}

#[test]
fn nested_fault_reasons() {
    // SFL.6 0x75: the second stage denies reading the first-stage root (FSPTPTR's page).
    let mut n = nested();
    let mut ss = PageTableBuilder::new(
        &n.w.mem,
        &mut n.w.frames,
        PageTableFormat::SecondStage { levels: 4 },
    )
    .unwrap();
    ss.map(&mut n.w.frames, DATA, DATA, PageSize::Size4K, true, true)
        .unwrap();
    let empty_ss = ss.root();
    assert_eq!(
        n.run(empty_ss, read(0x1000)).unwrap_err(),
        FaultReason::NestedFirstStageRootReadDenied
    );
    // SFL.7 0x76: the root is readable but a lower first-stage table is not mapped.
    let fs_root = n.fs_root;
    let mut ss = PageTableBuilder::at(
        &n.w.mem,
        empty_ss,
        PageTableFormat::SecondStage { levels: 4 },
    );
    ss.map(
        &mut n.w.frames,
        fs_root,
        fs_root,
        PageSize::Size4K,
        true,
        false,
    )
    .unwrap();
    assert_eq!(
        n.run(empty_ss, read(0x1000)).unwrap_err(),
        FaultReason::NestedFirstStageReadDenied
    );
    // SFL.8 0x77: the first-stage tables are read-only in the second stage and the walk
    // must set A in them. Map every first-stage table read-only.
    let mut ro = PageTableBuilder::new(
        &n.w.mem,
        &mut n.w.frames,
        PageTableFormat::SecondStage { levels: 4 },
    )
    .unwrap();
    ro.map(&mut n.w.frames, 0, 0, PageSize::Size2M, true, false)
        .unwrap();
    ro.map(
        &mut n.w.frames,
        0x20_0000,
        0x20_0000,
        PageSize::Size2M,
        true,
        false,
    )
    .unwrap();
    ro.map(&mut n.w.frames, DATA, DATA, PageSize::Size4K, true, true)
        .unwrap();
    // Clear A in the first-stage root entry so the walk must write it.
    let pml4e = n.fs_root;
    let raw = n.w.mem.read_u64(pml4e).unwrap();
    n.w.mem.write_words(pml4e, &[raw & !(1 << 5)]).unwrap();
    let ro_root = ro.root();
    assert_eq!(
        n.run(ro_root, read(0x1000)).unwrap_err(),
        FaultReason::NestedFirstStageWriteDenied
    );
    // SSL.4 0x7B: SSPTPTR outside guest RAM (same reason as PGTT = second stage).
    let mut n = nested();
    assert_eq!(
        n.run(RAM + 0x1000, read(0x1000)).unwrap_err(),
        FaultReason::SecondStageTablePointerInvalid
    );
    // SSL.1 0x78: a second-stage table below the root is outside guest RAM.
    let ss = n.ss;
    let raw = n.w.mem.read_u64(ss).unwrap();
    n.w.mem
        .write_words(ss, &[(raw & 0xfff) | (RAM + 0x10_0000)])
        .unwrap();
    assert_eq!(
        n.run(ss, read(0x1000)).unwrap_err(),
        FaultReason::SecondStageAccessError
    );
    // SFL.5 0x74: a first-stage table address beyond the second stage's width (3-level, 39
    // bits): the first-stage root lives above 2^39.
    let mut n = nested();
    let pe = PasidEntry::nested(1 << 40, false, n.ss, 1, 6);
    n.w.install(0, pe, |c| c);
    assert_eq!(
        n.w.translate(read(0x1000)).unwrap_err(),
        FaultReason::NestedFirstStageBeyondMgaw
    );
    // SGN.4 0x83: the first-stage output is beyond the second stage's width.
    let mut n = nested();
    let mut fs = PageTableBuilder::new(
        &n.w.mem,
        &mut n.w.frames,
        PageTableFormat::FirstStage { levels: 4 },
    )
    .unwrap();
    fs.map(
        &mut n.w.frames,
        0x1000,
        1 << 40,
        PageSize::Size4K,
        true,
        true,
    )
    .unwrap();
    let mut ss3 = PageTableBuilder::new(
        &n.w.mem,
        &mut n.w.frames,
        PageTableFormat::SecondStage { levels: 3 },
    )
    .unwrap();
    ss3.map(&mut n.w.frames, 0, 0, PageSize::Size2M, true, true)
        .unwrap();
    ss3.map(
        &mut n.w.frames,
        0x20_0000,
        0x20_0000,
        PageSize::Size2M,
        true,
        true,
    )
    .unwrap();
    let pe = PasidEntry::nested(fs.root(), false, ss3.root(), 1, 6);
    n.w.install(0, pe, |c| c);
    assert_eq!(
        n.w.translate(read(0x1000)).unwrap_err(),
        FaultReason::AddressBeyondHardwareMax
    );
}

#[test]
fn second_stage_pointer_faults_agree_between_pgtt_2_and_3() {
    // SSL.4 (0x7B) names the SSPTPTR of the PASID entry, whichever PGTT uses it.
    let (cap, ecap) = caps(|e| e);
    let mut w = World::new(cap, ecap);
    w.install(0, PasidEntry::second_stage(RAM + 0x1000, 2, 3), |c| c);
    assert_eq!(
        w.translate(read(0x1000)).unwrap_err(),
        FaultReason::SecondStageTablePointerInvalid
    );
    let mut n = nested();
    assert_eq!(
        n.run(RAM + 0x1000, read(0x1000)).unwrap_err(),
        FaultReason::SecondStageTablePointerInvalid
    );
}

// --- 5-level first stage (3.6, CAP.FL5LP) ---------------------------------------------------

#[test]
fn five_level_first_stage() {
    let cfg = VtdConfig {
        aw_bits: 57,
        ..base_config()
    };
    assert!(cfg.cap().fl5lp());
    let mut w = World::new(cfg.cap(), cfg.ecap());
    let high = 1u64 << 52; // only reachable with 5 levels
    let fs = w.first_stage(5, high);
    w.install(0, PasidEntry::first_stage(fs, true, 3, 3), |c| c);
    assert_eq!(w.translate(read(high + 8)).map(|t| t.output), Ok(DATA + 8));
    // SGN.1 0x80: canonical for 57 bits means bits 63:56 equal bit 56.
    assert_eq!(
        w.translate(read(1 << 57)).unwrap_err(),
        FaultReason::NonCanonicalAddress
    );
    // The same input is non-canonical for a 4-level table.
    let fs4 = w.first_stage(4, 0x1000);
    w.install(0, PasidEntry::first_stage(fs4, false, 3, 3), |c| c);
    assert_eq!(
        w.translate(read(high)).unwrap_err(),
        FaultReason::NonCanonicalAddress
    );
}

// --- 3.15: outputs in the interrupt range --------------------------------------------------

#[test]
fn outputs_in_the_interrupt_range_are_blocked() {
    // First stage mapping an ordinary IOVA onto 0xFEE0_0000: SGN.8 0x87.
    let (cap, ecap) = caps(|e| e);
    let mut w = World::new(cap, ecap);
    let mut pt = PageTableBuilder::new(
        &w.mem,
        &mut w.frames,
        PageTableFormat::FirstStage { levels: 4 },
    )
    .unwrap();
    pt.map(
        &mut w.frames,
        0x1000,
        0xfee0_0000,
        PageSize::Size4K,
        true,
        true,
    )
    .unwrap();
    pt.map(&mut w.frames, 0x2000, DATA, PageSize::Size4K, true, true)
        .unwrap();
    w.install(0, PasidEntry::first_stage(pt.root(), false, 3, 2), |c| c);
    for access in [AccessKind::Read, AccessKind::Write] {
        assert_eq!(
            w.translate(DmaRequest::new(SID, 0x1004, access))
                .unwrap_err(),
            FaultReason::SmInterruptAddressRange
        );
    }
    assert!(w.translate(read(0x2000)).is_ok());
    // A 2 MiB page overlapping the range translates its other addresses.
    let mut pt2 = PageTableBuilder::new(
        &w.mem,
        &mut w.frames,
        PageTableFormat::SecondStage { levels: 4 },
    )
    .unwrap();
    pt2.map(&mut w.frames, 0, 0xfee0_0000, PageSize::Size2M, true, true)
        .unwrap();
    w.install(0, PasidEntry::second_stage(pt2.root(), 2, 3), |c| c);
    let t = w.translate(read(0x10_0000)).unwrap();
    assert_eq!(t.output, 0xfef0_0000);
    assert!(overlaps_interrupt_range(&t));
    assert_eq!(
        w.translate(read(0x1000)).unwrap_err(),
        FaultReason::SmInterruptAddressRange
    );
    // Pass-through with PASID: the input is not an interrupt, the output is in the range.
    w.install(3, PasidEntry::pass_through(1, 2), |c| c);
    assert_eq!(
        w.translate(with_pasid(3, 0xfee0_1000, AccessKind::Read, false))
            .unwrap_err(),
        FaultReason::SmInterruptAddressRange
    );
}

// --- Legacy mode: root and context lookups (3.4.2, 9.1, 9.3) --------------------------------

#[test]
fn a_request_with_pasid_in_legacy_mode_faults_0x31_before_any_table_is_read() {
    // 3.4.1 (RTA.2, 0x31): the request itself is refused in legacy mode, so an empty root
    // table does not turn it into a root-entry fault (0x1) the way a request without PASID is.
    let (cap, ecap) = caps(|e| e);
    let mut w = World::new(cap, ecap);
    w.install_legacy(&[]);
    assert_eq!(
        w.translate(read(0x1000)).unwrap_err(),
        FaultReason::RootEntryNotPresent
    );
    let f = w.fault(with_pasid(1, 0x1000, AccessKind::Read, false));
    assert_eq!(f.reason, FaultReason::SmLegacyModeRequestWithPasid);
    assert_eq!(f.pasid, Some(1));
}

#[test]
fn each_bus_has_its_own_root_entry() {
    // 9.1: the root table holds one 16-byte entry per bus, indexed by the requester's bus.
    let (cap, ecap) = caps(|e| e);
    let mut w = World::new(cap, ecap);
    let ss = w.second_stage_identity();
    w.install_legacy(&[
        (0x0300, ContextEntry::new(ss, 2, 3)),
        (0x0508, ContextEntry::new(ss, 2, 5)),
    ]);
    for (sid, did) in [(0x0300, 3), (0x0508, 5)] {
        let t = w
            .translate(DmaRequest::new(sid, DATA, AccessKind::Read))
            .unwrap();
        assert_eq!((t.did, t.output), (did, DATA), "sid {sid:#x}");
    }
    assert_eq!(
        w.translate(DmaRequest::new(0x0400, DATA, AccessKind::Read))
            .unwrap_err(),
        FaultReason::RootEntryNotPresent
    );
}

#[test]
fn a_root_table_that_wraps_the_address_space_faults_as_a_root_table_access_error() {
    // RTADDR is guest-written: a root entry address past 2^64 cannot be read (legacy LRT.1
    // 0x8, scalable SRT.1 0x30), and neither is a root entry found at a wrapped address.
    let (cap, ecap) = caps(|e| e);
    let w = World::new(cap, ecap);
    for (mode, reason) in [
        (
            TranslationTableMode::Legacy,
            FaultReason::RootTableAccessError,
        ),
        (
            TranslationTableMode::Scalable,
            FaultReason::SmRootEntryAccessError,
        ),
    ] {
        let root = RootTable {
            addr: u64::MAX - 0xf,
            mode,
        };
        let req = DmaRequest::new(0x0100, 0x1000, AccessKind::Read);
        assert_eq!(
            translate(&w.mem, &w.cfg, root, &req).unwrap_err().reason,
            reason,
            "{mode:?}"
        );
    }
}

#[test]
fn the_context_fpd_is_what_the_looked_up_context_reports() {
    // 9.3, 9.4 FPD: a cached context carries its FPD so faults found later are suppressed.
    let (cap, ecap) = caps(|e| e);
    let mut w = World::new(cap, ecap);
    let ss = w.second_stage_identity();
    let fs = w.first_stage(4, 0x1000);
    for fpd in [false, true] {
        w.install_legacy(&[(SID, ContextEntry::new(ss, 2, 1).with_fpd(fpd))]);
        let ctx = lookup_context(&w.mem, &w.cfg, w.root(), SID).unwrap();
        assert!(matches!(ctx, DeviceContext::Legacy(_)));
        assert_eq!(ctx.fpd(), fpd, "legacy");
        w.install(0, PasidEntry::first_stage(fs, false, 3, 2), |c| {
            c.with_fpd(fpd)
        });
        let ctx = lookup_context(&w.mem, &w.cfg, w.root(), SID).unwrap();
        assert!(matches!(ctx, DeviceContext::Scalable(_)));
        assert_eq!(ctx.fpd(), fpd, "scalable");
    }
}

#[test]
fn device_tlb_context_entries_need_ecap_dt_and_a_supported_width() {
    // 9.3 TT = 01 (multi-level with device-TLB) is valid only with ECAP.DT and, like TT = 00,
    // an AW the unit's SAGAW offers (LCT.4 0x3); it then translates like TT = 00.
    for dt in [false, true] {
        let (cap, ecap) = caps(|e| e.with_dt(dt));
        let mut w = World::new(cap, ecap);
        for (levels, aw) in [(3u8, 1u8), (4, 2)] {
            let root = w.table_mapping(PageTableFormat::SecondStage { levels }, 0x1000, DATA);
            let ce = ContextEntry::new(root, aw, 2)
                .with_translation_type(LegacyTranslationType::MultiLevelWithDeviceTlb);
            assert_eq!(
                ce.translation_type(),
                LegacyTranslationType::MultiLevelWithDeviceTlb
            );
            w.install_legacy(&[(SID, ce)]);
            let got = w.translate(read(0x1008));
            if dt {
                assert_eq!(got.map(|t| t.output), Ok(DATA + 8), "AW {aw}");
            } else {
                assert_eq!(got.unwrap_err(), FaultReason::ContextEntryInvalid);
            }
        }
        // AW 3 (5-level) is not in this 48-bit unit's SAGAW.
        let ce = ContextEntry::new(0x20_0000, 3, 2)
            .with_translation_type(LegacyTranslationType::MultiLevelWithDeviceTlb);
        w.install_legacy(&[(SID, ce)]);
        assert_eq!(
            w.translate(read(0x1000)).unwrap_err(),
            FaultReason::ContextEntryInvalid
        );
    }
}

#[test]
fn legacy_outputs_in_the_interrupt_range_fault_0x0e() {
    // 3.15, LGN.4: in legacy mode an output in 0xFEEx_xxxx faults 0x0E (scalable: 0x87),
    // through a second-stage table and through pass-through alike.
    let (cap, ecap) = caps(|e| e.with_pt(true));
    let mut w = World::new(cap, ecap);
    let root = w.table_mapping(
        PageTableFormat::SecondStage { levels: 4 },
        0x1000,
        0xfee0_0000,
    );
    w.install_legacy(&[(SID, ContextEntry::new(root, 2, 1))]);
    assert_eq!(
        w.translate(read(0x1004)).unwrap_err(),
        FaultReason::InterruptAddressRange
    );
    w.install_legacy(&[(SID, ContextEntry::pass_through(2, 1))]);
    assert_eq!(
        w.translate(read(0xfee0_1000)).unwrap_err(),
        FaultReason::InterruptAddressRange
    );
    assert_eq!(w.translate(read(DATA)).map(|t| t.output), Ok(DATA));
}

#[test]
fn second_stage_rights_are_the_and_of_every_level() {
    // 3.7.2: a request needs the right in every entry of the walk, not only in the leaf.
    let (cap, ecap) = caps(|e| e);
    let mut w = World::new(cap, ecap);
    let root = w.table_mapping(PageTableFormat::SecondStage { levels: 4 }, 0x1000, DATA);
    // The top-level entry allows writes only.
    let (slot, entry) = w.path(root, 4, 0x1000)[0];
    w.mem.write_u64(slot, entry & !1).unwrap();
    w.install_legacy(&[(SID, ContextEntry::new(root, 2, 1))]);
    assert_eq!(
        w.translate(read(0x1000)).unwrap_err(),
        FaultReason::ReadNotPermitted
    );
    let t = w
        .translate(DmaRequest::new(SID, 0x1000, AccessKind::Write))
        .unwrap();
    assert_eq!((t.output, t.perms.read, t.perms.write), (DATA, false, true));
}

// --- Translation results (3.6, 3.7, 3.15) ---------------------------------------------------

#[test]
fn a_translation_reports_the_bases_of_its_page() {
    // A 2 MiB leaf maps the 2 MiB-aligned IOVA page to the 2 MiB-aligned output page.
    let (cap, ecap) = caps(|e| e);
    let mut w = World::new(cap, ecap);
    let mut pt = PageTableBuilder::new(
        &w.mem,
        &mut w.frames,
        PageTableFormat::SecondStage { levels: 4 },
    )
    .unwrap();
    pt.map(
        &mut w.frames,
        0x80_0000,
        0x120_0000,
        PageSize::Size2M,
        true,
        true,
    )
    .unwrap();
    w.install(0, PasidEntry::second_stage(pt.root(), 2, 3), |c| c);
    let t = w.translate(read(0x83_4567)).unwrap();
    assert_eq!((t.output, t.page_size), (0x123_4567, 2 << 20));
    assert_eq!(t.iova_base(0x83_4567), 0x80_0000);
    assert_eq!(t.output_base(), 0x120_0000);
    assert!(!overlaps_interrupt_range(&t));
}

#[test]
fn only_pages_reaching_into_0xfeex_xxxx_overlap_the_interrupt_range() {
    // 3.15: 0xFEE0_0000-0xFEEF_FFFF. A translation whose page overlaps it must not be
    // cached (a hit at another offset would skip the output check).
    let page = |output: u64, page_size: u64| Translation {
        output,
        page_size,
        perms: Perms::ALL,
        did: 1,
        pasid: None,
        kind: TranslationKind::LegacySecondStage,
        leaf: 0,
    };
    for (output, size, overlaps) in [
        (DATA, 4 << 10, false),
        (0xfedf_f010, 4 << 10, false),   // the 4 KiB page just below
        (0xfef0_0000, 4 << 10, false),   // just above
        (0xfec0_0010, 2 << 20, false),   // the 2 MiB page ending at 0xFEE0_0000
        (0x1_0000_0000, 1 << 30, false), // far above
        (0xfee0_0000, 4 << 10, true),
        (0xfeef_f123, 4 << 10, true),
        (0xfee0_0000 + (1 << 20) + 5, 2 << 20, true),
        (0xc000_1234, 1 << 30, true), // a 1 GiB page containing the range
    ] {
        assert_eq!(
            overlaps_interrupt_range(&page(output, size)),
            overlaps,
            "{output:#x} in a page of {size:#x}"
        );
    }
}

// --- Scalable mode: PASID lookups and FPD (9.4-9.6, 7.1.2) ----------------------------------

#[test]
fn requests_without_pasid_use_rid_pasid_only_with_ecap_rps() {
    // 9.4 RID_PASID / 11.4.3 RPS: with RPS a request without PASID is translated with the
    // context's RID_PASID; without RPS with PASID 0.
    for rps in [false, true] {
        let (cap, ecap) = caps(|e| e.with_rps(rps));
        let mut w = World::new(cap, ecap);
        let fs = w.first_stage(4, 0x1000);
        w.install_all(
            &[
                (0, PasidEntry::first_stage(fs, false, 10, 2)),
                (7, PasidEntry::first_stage(fs, false, 17, 2)),
            ],
            |c| c.with_rid_pasid(7),
        );
        let t = w.translate(read(0x1000)).unwrap();
        let want = if rps { (Some(7), 17) } else { (Some(0), 10) };
        assert_eq!((t.pasid, t.did), want, "RPS {rps}");
    }
}

#[test]
fn pasids_beyond_the_first_directory_entry_are_walked() {
    // 9.5: PASID p uses directory entry p >> 6 and slot p & 0x3f of its table.
    let (cap, ecap) = caps(|e| e.with_pasid(true));
    let mut w = World::new(cap, ecap);
    let fs = w.first_stage(4, 0x1000);
    let pasid = 3 * 64 + 5;
    w.install(pasid, PasidEntry::first_stage(fs, false, 8, 2), |c| c);
    let t = w
        .translate(with_pasid(pasid, 0x1010, AccessKind::Read, false))
        .unwrap();
    assert_eq!((t.output, t.did, t.pasid), (DATA + 0x10, 8, Some(pasid)));
    assert_eq!(
        w.translate(with_pasid(5, 0x1000, AccessKind::Read, false))
            .unwrap_err(),
        FaultReason::PasidDirectoryEntryNotPresent
    );
}

#[test]
fn fpd_suppresses_only_qualified_faults_under_an_entry_that_sets_it() {
    // 7.1.2: FPD in the context, PASID-directory or PASID entry (even one with P clear)
    // suppresses the qualified faults of the requests it covers; non-qualified faults are
    // recorded anyway, and without FPD nothing is suppressed.
    let (cap, ecap) = caps(|e| e.with_pasid(true));
    let mut w = World::new(cap, ecap);
    let req = with_pasid(4, 0x1000, AccessKind::Read, false);
    let fault = |w: &World| {
        let f = w.fault(req);
        (f.reason, f.suppressed)
    };
    w.install(4, PasidEntry::default(), |c| c);
    assert_eq!(fault(&w), (FaultReason::PasidEntryNotPresent, false));
    w.install(4, PasidEntry::default(), |c| c.with_fpd(true));
    assert_eq!(fault(&w), (FaultReason::PasidEntryNotPresent, true));
    w.install(4, PasidEntry::default().with_fpd(true), |c| c);
    assert_eq!(fault(&w), (FaultReason::PasidEntryNotPresent, true));
    // A directory entry with only FPD set (PASID 64 lives in directory entry 1).
    let dir = w.install(4, PasidEntry::default(), |c| c);
    w.mem.write_u64(dir + 8, 0b10).unwrap();
    let f = w.fault(with_pasid(64, 0x1000, AccessKind::Read, false));
    assert_eq!(
        (f.reason, f.suppressed),
        (FaultReason::PasidDirectoryEntryNotPresent, true)
    );
    // The directory is outside RAM (0x50 is not qualified): recorded despite the FPD.
    let ce = ScalableContextEntry::new(RAM + 0x10_0000, 0)
        .with_paside(true)
        .with_fpd(true);
    let mut b = ContextTablesBuilder::new(&w.mem, &mut w.frames, true).unwrap();
    b.set_scalable_context(&mut w.frames, SID, ce).unwrap();
    w.ctx_root = b.root();
    assert_eq!(fault(&w), (FaultReason::PasidDirectoryAccessError, false));
}

// --- Accessed/dirty and rights in the paging walks (3.6.2, 3.7.2) ---------------------------

#[test]
fn ssade_sets_accessed_in_every_entry_used_and_never_clears_accessed_or_dirty() {
    // 3.7.2 with SSADE: A in every second-stage entry the walk uses, D in the leaf of a
    // write; bits already set stay set on later walks.
    let (cap, ecap) = caps(|e| e.with_slads(true));
    let mut w = World::new(cap, ecap);
    let ss = w.second_stage_identity();
    w.install(
        0,
        PasidEntry::second_stage(ss, 2, 4).with_ssade(true),
        |c| c,
    );
    let (a, d) = (1u64 << 8, 1u64 << 9);
    for access in [AccessKind::Write, AccessKind::Write, AccessKind::Read] {
        let t = w.translate(DmaRequest::new(SID, DATA + 8, access)).unwrap();
        let path = w.path(ss, 4, DATA);
        assert_eq!(path.len(), 4);
        for (level, &(_, entry)) in path.iter().enumerate() {
            assert_ne!(entry & a, 0, "A at walk step {level} after a {access:?}");
        }
        let leaf = path[3].1;
        assert_eq!(leaf & d, d, "D set by the first write stays set");
        assert_eq!(t.leaf, leaf);
    }
}

#[test]
fn eafe_sets_extended_accessed_in_every_first_stage_entry_used() {
    // 3.6.2 with EAFE (and ECAP.EAFS): bit 10 is set alongside A in every entry used,
    // including the non-leaf ones whose A was already set, without clearing A.
    let (cap, ecap) = caps(|e| e.with_eafs(true));
    let mut w = World::new(cap, ecap);
    let fs = w.first_stage(4, 0x1000);
    w.install(
        0,
        PasidEntry::first_stage(fs, false, 3, 2).with_eafe(true),
        |c| c,
    );
    w.translate(read(0x1000)).unwrap();
    for (level, &(_, entry)) in w.path(fs, 4, 0x1000).iter().enumerate() {
        assert_eq!(entry & (1 << 5 | 1 << 10), 1 << 5 | 1 << 10, "step {level}");
    }
}

#[test]
fn first_stage_write_rights_follow_the_dirty_bit() {
    // 3.6.2: D is set before a write completes. A read sets only A and leaves the leaf
    // clean, so its translation grants no write (a later write walks again and sets D); a
    // read-only leaf grants no write even when dirty.
    let (cap, ecap) = caps(|e| e);
    let mut w = World::new(cap, ecap);
    let mut pt = PageTableBuilder::new(
        &w.mem,
        &mut w.frames,
        PageTableFormat::FirstStage { levels: 4 },
    )
    .unwrap();
    let (a, d) = (1u64 << 5, 1u64 << 6);
    let clean = FirstStagePte::leaf(DATA, true, false).into_bits() & !(a | d);
    pt.set_leaf(&mut w.frames, 0x1000, PageSize::Size4K, clean)
        .unwrap();
    let read_only = FirstStagePte::leaf(DATA + 0x1000, false, false).into_bits();
    assert_eq!(read_only & (a | d), a | d);
    pt.set_leaf(&mut w.frames, 0x2000, PageSize::Size4K, read_only)
        .unwrap();
    let slot = pt.leaf_slot(0x1000, PageSize::Size4K).unwrap().unwrap();
    w.install(0, PasidEntry::first_stage(pt.root(), false, 3, 2), |c| c);
    let write = |iova| DmaRequest::new(SID, iova, AccessKind::Write);

    let t = w.translate(read(0x1000)).unwrap();
    assert_eq!(
        (t.leaf & (a | d), t.perms.write),
        (a, false),
        "read: A only"
    );
    assert_eq!(w.mem.read_u64(slot).unwrap(), clean | a);
    let t = w.translate(write(0x1000)).unwrap();
    assert_eq!(
        (t.leaf & (a | d), t.perms.write),
        (a | d, true),
        "write: A|D"
    );
    assert_eq!(w.mem.read_u64(slot).unwrap(), clean | a | d);
    let t = w.translate(read(0x1000)).unwrap();
    assert_eq!(
        (t.leaf & (a | d), t.perms.write),
        (a | d, true),
        "dirty stays"
    );
    let t = w.translate(write(0x1000)).unwrap();
    assert_eq!(
        t.leaf & (a | d),
        a | d,
        "a write to a dirty leaf keeps A and D"
    );

    let t = w.translate(read(0x2000)).unwrap();
    assert_eq!((t.output, t.perms.write), (DATA + 0x1000, false));
    assert_eq!(
        w.translate(write(0x2000)).unwrap_err(),
        FaultReason::SmWriteNotPermitted
    );
}

#[test]
fn supervisor_writes_ignore_read_only_pages_unless_wpe() {
    // 3.6.2 / 9.6 WPE: like CR0.WP, a supervisor write to a read-only page is allowed
    // unless WPE is set (needs SRE with ECAP.SRS).
    let (cap, ecap) = caps(|e| e.with_srs(true).with_pasid(true));
    let mut w = World::new(cap, ecap);
    let mut pt = PageTableBuilder::new(
        &w.mem,
        &mut w.frames,
        PageTableFormat::FirstStage { levels: 4 },
    )
    .unwrap();
    pt.map(&mut w.frames, 0x1000, DATA, PageSize::Size4K, true, false)
        .unwrap();
    let fs = pt.root();
    let req = with_pasid(2, 0x1000, AccessKind::Write, true);
    for wpe in [false, true] {
        let pe = PasidEntry::first_stage(fs, false, 3, 2)
            .with_sre(true)
            .with_wpe(wpe);
        w.install(2, pe, |c| c);
        let got = w.translate(req);
        if wpe {
            assert_eq!(got.unwrap_err(), FaultReason::SmWriteNotPermitted);
        } else {
            assert_eq!(got.map(|t| (t.output, t.perms.write)), Ok((DATA, true)));
        }
    }
    // A user write to the same page is refused whatever WPE says.
    assert_eq!(
        w.translate(with_pasid(2, 0x1000, AccessKind::Write, false))
            .unwrap_err(),
        FaultReason::SmWriteNotPermitted
    );
}

#[test]
fn with_ers_execute_follows_xd_in_the_first_stage_and_x_in_the_second() {
    // 11.4.3 ERS, 9.7 XD, 9.8 X: an execute request (ERE set) reaches a page without XD;
    // a read reaches an XD page; in the second stage X must be set in every entry used.
    let (cap, ecap) = caps(|e| e.with_ers(true).with_pasid(true));
    let mut w = World::new(cap, ecap);
    let mut pt = PageTableBuilder::new(
        &w.mem,
        &mut w.frames,
        PageTableFormat::FirstStage { levels: 4 },
    )
    .unwrap();
    pt.map(&mut w.frames, 0x1000, DATA, PageSize::Size4K, true, true)
        .unwrap();
    let xd = FirstStagePte::leaf(DATA + 0x1000, true, false).into_bits() | 1 << 63;
    pt.set_leaf(&mut w.frames, 0x2000, PageSize::Size4K, xd)
        .unwrap();
    w.install(
        6,
        PasidEntry::first_stage(pt.root(), false, 3, 2).with_ere(true),
        |c| c,
    );
    let t = w
        .translate(with_pasid(6, 0x1000, AccessKind::Execute, false))
        .unwrap();
    assert_eq!((t.output, t.perms.execute), (DATA, true));
    let t = w
        .translate(with_pasid(6, 0x2000, AccessKind::Read, false))
        .unwrap();
    assert_eq!((t.output, t.perms.execute), (DATA + 0x1000, false));

    // Second stage: X set on the whole path of 0x1000, on no entry of 0x2000's leaf.
    let mut ss = PageTableBuilder::new(
        &w.mem,
        &mut w.frames,
        PageTableFormat::SecondStage { levels: 4 },
    )
    .unwrap();
    ss.map(&mut w.frames, 0x1000, DATA, PageSize::Size4K, true, false)
        .unwrap();
    ss.map(&mut w.frames, 0x2000, DATA, PageSize::Size4K, true, false)
        .unwrap();
    for (slot, entry) in w.path(ss.root(), 4, 0x1000) {
        w.mem.write_u64(slot, entry | 1 << 2).unwrap();
    }
    let slot2 = ss.leaf_slot(0x2000, PageSize::Size4K).unwrap().unwrap();
    let raw = w.mem.read_u64(slot2).unwrap();
    w.mem.write_u64(slot2, raw & !(1 << 2)).unwrap();
    w.install(6, PasidEntry::second_stage(ss.root(), 2, 3), |c| c);
    let t = w
        .translate(with_pasid(6, 0x1000, AccessKind::Execute, false))
        .unwrap();
    assert_eq!((t.output, t.perms.execute), (DATA, true));
    assert_eq!(
        w.translate(with_pasid(6, 0x2000, AccessKind::Execute, false))
            .unwrap_err(),
        FaultReason::SecondStagePermissionDenied
    );
    assert!(
        w.translate(with_pasid(6, 0x2000, AccessKind::Read, false))
            .is_ok()
    );
}

#[test]
fn a_three_level_second_stage_pasid_entry_is_walked_with_three_levels() {
    // 9.6 AW = 1: a 3-level (39-bit) second-stage table.
    let (cap, ecap) = caps(|e| e);
    let mut w = World::new(cap, ecap);
    let root = w.table_mapping(PageTableFormat::SecondStage { levels: 3 }, 0x1000, DATA);
    w.install(0, PasidEntry::second_stage(root, 1, 3), |c| c);
    assert_eq!(w.translate(read(0x1010)).map(|t| t.output), Ok(DATA + 0x10));
    assert_eq!(
        w.translate(read(1 << 39)).unwrap_err(),
        FaultReason::AddressBeyondHardwareMax
    );
}
