//! Spec conformance where QEMU cannot check us: reserved fields that depend on CAP/ECAP, and
//! the fault reasons of the nested, 5-level and PASID paths QEMU does not implement.
//!
//! Each test names the VT-d spec section (rev 4.1) it holds the walker to. For every entry
//! type and every capability bit that turns a reserved field into a defined one there is a
//! pair of checks: the field faults (or is not obeyed) without the capability and is honoured
//! with it. The QEMU differential corpus (conformance/) cannot cover these: QEMU 10.0.2 has no
//! SLADS, SRS with first stage, EAFS, ERS, nesting, 5-level first stage or PASIDs beyond 0.

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
            cfg: WalkConfig::new(cap, ecap),
        }
    }

    fn root(&self) -> RootTable {
        RootTable {
            addr: self.ctx_root,
            mode: TranslationTableMode::Scalable,
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

    /// Installs the PASID entry for (SID, `pasid`) with a context entry built by `ctx`.
    fn install(
        &mut self,
        pasid: u32,
        pe: PasidEntry,
        ctx: impl FnOnce(ScalableContextEntry) -> ScalableContextEntry,
    ) {
        let mut pasids = PasidTablesBuilder::new(&self.mem, &mut self.frames, 0).unwrap();
        pasids.set_entry(&mut self.frames, pasid, pe).unwrap();
        let ce = ctx(pasids.context_entry().with_paside(true));
        let mut b = ContextTablesBuilder::new(&self.mem, &mut self.frames, true).unwrap();
        b.set_scalable_context(&mut self.frames, SID, ce).unwrap();
        self.ctx_root = b.root();
    }

    fn translate(&self, req: DmaRequest) -> Result<Translation, FaultReason> {
        translate(&self.mem, &self.cfg, self.root(), &req).map_err(|f| f.reason)
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
