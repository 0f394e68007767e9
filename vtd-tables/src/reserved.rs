//! Reserved-field rules of every remapping structure, derived from CAP/ECAP (VT-d spec 9.x).
//!
//! Many fields of the translation structures are defined only when the unit advertises a
//! capability and are reserved (must be zero, or the entry faults) when it does not: SSADE
//! without ECAP.SLADS, SRE without ECAP.SRS, EAFE without ECAP.EAFS, PGSNP without ECAP.SC,
//! DTE without ECAP.DT, and so on. A fixed mask cannot express that; a walker that decodes
//! such a field without asking whether the capability exists ends up *obeying* a field the
//! guest was never offered (writing A/D bits nobody asked for, letting a privileged request
//! through).
//!
//! [`ReservedRules`] is therefore built once from the unit's identity, the way
//! `vtd_regs::regs::register_layout` derives each register's access masks from the
//! configuration: one table per entry type, each a function of CAP/ECAP. The emulated walker
//! ([`crate::walk`]) checks every entry through it, and so must anything else that interprets
//! a guest entry on the unit's behalf (vtd-accel's binder, before it hands a PASID entry to
//! the host IOMMU): both then accept and refuse exactly the same entries, and report the same
//! fault reason.
//!
//! Fields that older software writes and the spec now says to ignore are *not* reserved:
//! PASID-entry bits 134:133 (bit 133 was NXE, written by Linux 6.3 to 6.10 in
//! `intel_pasid_setup_first_level`; spec rev 4.1 section 9.6 says they are ignored for
//! compatibility with older software).

use vtd_regs::fault::FaultReason;
use vtd_regs::{Cap, Ecap};

use crate::entries::{
    ContextEntry, PasidDirEntry, PasidEntry, Pgtt, RootEntry, ScalableContextEntry,
    ScalableRootEntry, bits_above,
};

/// ECAP bit 53, RPRIVS (RID_PRIV support, spec 11.4.3); not decoded by [`Ecap`].
const ECAP_RPRIVS: u64 = 1 << 53;

/// The reserved-field tables of one unit (VT-d spec 9.1-9.9), derived from its CAP and ECAP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReservedRules {
    cap: Cap,
    ecap: Ecap,
    /// Bits 63:HAW of a table pointer or output address (bits 11:0 excluded).
    above_haw: u64,
}

/// Bit masks of one field, by 64-bit word of the entry.
const fn bit(n: u32) -> u64 {
    1u64 << n
}

impl ReservedRules {
    /// The rules of a unit with these capability registers.
    pub const fn from_caps(cap: Cap, ecap: Ecap) -> Self {
        Self {
            cap,
            ecap,
            above_haw: bits_above(cap.max_guest_address_width()) & !0xfff,
        }
    }

    /// Host address width the pointer checks use (MGAW + 1, as the unit models it).
    pub const fn haw(&self) -> u8 {
        self.cap.max_guest_address_width()
    }

    // --- Legacy mode ----------------------------------------------------------------------

    /// Reserved bits of a legacy root entry (spec 9.1): lo 11:1 and CTP above HAW, all of hi.
    pub const fn root_entry_mask(&self) -> [u64; 2] {
        [0xffe | self.above_haw, !0]
    }

    /// Checks a present legacy root entry (fault 0x0A, LRT.3).
    pub fn check_root_entry(&self, e: &RootEntry) -> Result<(), FaultReason> {
        check(
            &e.0,
            &self.root_entry_mask(),
            FaultReason::RootEntryReserved,
        )
    }

    /// Reserved bits of a legacy context entry (spec 9.3): lo 11:4 and SSPTPTR above HAW;
    /// hi 7:3 and 63:24. TT and AW values are checked separately (fault 0x03).
    pub const fn context_entry_mask(&self) -> [u64; 2] {
        [0xff0 | self.above_haw, 0xf8 | 0xffff_ffff_ff00_0000]
    }

    /// Checks a present legacy context entry (fault 0x0B, LCT.3).
    pub fn check_context_entry(&self, e: &ContextEntry) -> Result<(), FaultReason> {
        check(
            &e.0,
            &self.context_entry_mask(),
            FaultReason::ContextEntryReserved,
        )
    }

    // --- Scalable mode --------------------------------------------------------------------

    /// Reserved bits of the half of a scalable-mode root entry that serves a devfn (spec
    /// 9.2): 11:1 and the pointer above HAW.
    pub const fn scalable_root_half_mask(&self) -> u64 {
        0xffe | self.above_haw
    }

    /// Checks the present half of a scalable-mode root entry for `devfn` (fault 0x3A, SRT.3).
    pub fn check_scalable_root_entry(
        &self,
        e: &ScalableRootEntry,
        devfn: u8,
    ) -> Result<(), FaultReason> {
        let [lower, upper] = e.0;
        let word = if devfn & 0x80 != 0 { upper } else { lower };
        check(
            &[word],
            &[self.scalable_root_half_mask()],
            FaultReason::SmRootEntryReserved,
        )
    }

    /// Reserved bits of a scalable-mode context entry (spec 9.4): lo 8:5, DTE (bit 2) without
    /// ECAP.DT, PRE (bit 4) without ECAP.PRS, the pointer above HAW; hi 63:21 and RID_PRIV
    /// (bit 84) without ECAP.RPRIVS; the upper 128 bits.
    pub const fn scalable_context_entry_mask(&self) -> [u64; 4] {
        let mut lo = 0x1e0 | self.above_haw;
        if !self.ecap.dt() {
            lo |= bit(2);
        }
        if !self.ecap.prs() {
            lo |= bit(4);
        }
        let mut hi = !0x1f_ffffu64;
        if self.ecap.into_bits() & ECAP_RPRIVS == 0 {
            hi |= bit(20);
        }
        [lo, hi, !0, !0]
    }

    /// Checks a present scalable-mode context entry (fault 0x42, SCT.3).
    pub fn check_scalable_context_entry(
        &self,
        e: &ScalableContextEntry,
    ) -> Result<(), FaultReason> {
        check(
            &e.0,
            &self.scalable_context_entry_mask(),
            FaultReason::SmContextEntryReserved,
        )
    }

    /// Reserved bits of a PASID-directory entry (spec 9.5): 11:2 and the pointer above HAW.
    pub const fn pasid_dir_entry_mask(&self) -> u64 {
        0xffc | self.above_haw
    }

    /// Checks a present PASID-directory entry (fault 0x52, SPD.3).
    pub fn check_pasid_dir_entry(&self, e: &PasidDirEntry) -> Result<(), FaultReason> {
        check(
            &[e.into_bits()],
            &[self.pasid_dir_entry_mask()],
            FaultReason::PasidDirectoryEntryReserved,
        )
    }

    /// Reserved bits of a PASID-table entry (spec 9.6, rev 4.1 layout):
    ///
    /// - qw0: bit 5 (SLEE in older revisions) without ECAP.ERS, SSADE (bit 9) without
    ///   ECAP.SLADS, 11:10, SSPTPTR above HAW;
    /// - qw1: 22:16, PGSNP (bit 88) without ECAP.SC, CD/EMTE (89, 90) and PAT (127:96) without
    ///   ECAP.MTS, 95:91;
    /// - qw2: SRE (bit 128) without ECAP.SRS, ERE (bit 129) without ECAP.ERS, EAFE (bit 135)
    ///   without ECAP.EAFS, 139:136, FSPTPTR above HAW. Bits 134:133 are ignored (bit 133
    ///   was NXE: Linux 6.3-6.10 set it), WPE (bit 132) only matters with SRE and is allowed;
    /// - qw3-qw7: all.
    pub const fn pasid_entry_mask(&self) -> [u64; 8] {
        let e = self.ecap;
        let mut qw0 = 0xc00 | self.above_haw;
        if !e.ers() {
            qw0 |= bit(5);
        }
        if !e.slads() {
            qw0 |= bit(9);
        }
        let mut qw1 = 0x7f_0000 | 0xf800_0000;
        if !e.sc() {
            qw1 |= bit(24);
        }
        if !e.mts() {
            qw1 |= bit(25) | bit(26) | 0xffff_ffff_0000_0000;
        }
        let mut qw2 = 0xf00 | self.above_haw;
        if !e.srs() {
            qw2 |= bit(0);
        }
        if !e.ers() {
            qw2 |= bit(1);
        }
        if !e.eafs() {
            qw2 |= bit(7);
        }
        [qw0, qw1, qw2, !0, !0, !0, !0, !0]
    }

    /// The reserved bits a PASID-table entry sets (all zero when it has none).
    pub const fn pasid_entry_reserved_bits(&self, e: &PasidEntry) -> [u64; 8] {
        let [m0, m1, m2, m3, m4, m5, m6, m7] = self.pasid_entry_mask();
        let [e0, e1, e2, e3, e4, e5, e6, e7] = e.0;
        [
            e0 & m0,
            e1 & m1,
            e2 & m2,
            e3 & m3,
            e4 & m4,
            e5 & m5,
            e6 & m6,
            e7 & m7,
        ]
    }

    /// Checks a present PASID-table entry the way the unit does before using it: reserved
    /// fields (fault 0x5A, SPT.3), then the programming of PGTT, AW and FSPM against the
    /// capabilities (fault 0x5B, SPT.4). Any code that interprets a guest PASID entry on the
    /// unit's behalf (vtd-accel's binder) calls exactly this, so that both paths accept the
    /// same entries.
    pub fn check_pasid_entry(&self, e: &PasidEntry) -> Result<(), FaultReason> {
        check(
            &e.0,
            &self.pasid_entry_mask(),
            FaultReason::PasidEntryReserved,
        )?;
        let (cap, ecap) = (self.cap, self.ecap);
        let ss_ok = cap.supports_second_stage_levels(e.aw().saturating_add(2));
        // FSPM 1 (5-level) needs CAP.FL5LP; 2 and 3 are reserved encodings.
        let fs_ok = e.fspm() == 0 || (e.fspm() == 1 && cap.fl5lp());
        let valid = match e.pgtt() {
            Pgtt::FirstStage => ecap.flts() && fs_ok,
            Pgtt::SecondStage => ecap.slts() && ss_ok,
            Pgtt::Nested => ecap.nest() && ss_ok && fs_ok,
            Pgtt::PassThrough => ecap.pt(),
            Pgtt::Reserved(_) => false,
        };
        if valid {
            Ok(())
        } else {
            Err(FaultReason::PasidEntryInvalid)
        }
    }

    // --- Paging entries -------------------------------------------------------------------

    /// Reserved bits of a second-stage paging entry at `level` (1 = PTE ... 5) that is a leaf
    /// or a table (spec 9.8): address bits 51:HAW; TM (bit 62) without ECAP.DT; PS where the
    /// unit has no page of that size (CAP.SLLPS; always at levels 4 and 5); on a leaf, SNP
    /// (bit 11) without ECAP.SC and the address bits below a large page. Bits 63 and 61:52
    /// are ignored.
    pub const fn second_stage_pte_mask(&self, level: u8, ps: bool) -> u64 {
        // Bits 63 and 61:52 are ignored; TM (62) is defined with ECAP.DT (QEMU
        // hw/i386/intel_iommu_internal.h VTD_SPTE_PAGE_L*_RSVD_MASK agree).
        let ignored = 0xbff0_0000_0000_0000u64;
        let mut m = self.above_haw & !ignored & !bit(62);
        if !self.ecap.dt() {
            m |= bit(62);
        }
        let leaf = level == 1 || ps;
        if level >= 2 && ps && !self.cap.supports_second_stage_large_page(level) {
            m |= bit(7);
        }
        if leaf {
            if !self.ecap.sc() {
                m |= bit(11);
            }
            if level >= 2 && level <= 3 {
                let shift = 12 + 9 * (level as u32 - 1);
                m |= ((1u64 << shift) - 1) & !0xfff;
            }
        }
        m
    }

    /// Reserved bits of a first-stage paging entry at `level` (spec 9.7, IA-32e format):
    /// address bits 51:HAW (62:52 are ignored, 63 is XD); PS in a PML5E/PML4E, or in a PDPTE
    /// without CAP.FL1GP; on a large leaf, the address bits below the page above PAT (bit 12).
    pub const fn first_stage_pte_mask(&self, level: u8, ps: bool) -> u64 {
        let mut m = self.above_haw & crate::entries::ADDR_MASK;
        if ps && (level >= 4 || (level == 3 && !self.cap.fl1gp())) {
            m |= bit(7);
        }
        if ps && (level == 2 || level == 3) {
            let shift = 12 + 9 * (level as u32 - 1);
            m |= ((1u64 << shift) - 1) & !0x1fff;
        }
        m
    }

    // --- Fields honoured only with their capability -----------------------------------------

    /// Whether the walker sets second-stage A/D bits for this entry: SSADE with ECAP.SLADS.
    pub const fn second_stage_ad(&self, e: &PasidEntry) -> bool {
        e.ssade() && self.ecap.slads()
    }

    /// Whether supervisor requests are allowed: SRE with ECAP.SRS.
    pub const fn supervisor_requests(&self, e: &PasidEntry) -> bool {
        e.sre() && self.ecap.srs()
    }

    /// Whether first-stage walks set the extended-accessed bit (10): EAFE with ECAP.EAFS.
    pub const fn extended_accessed(&self, e: &PasidEntry) -> bool {
        e.eafe() && self.ecap.eafs()
    }

    /// Whether execute requests exist at all (ECAP.ERS). Without it the ER field of a request
    /// is ignored and the request is a read (spec rev 4.x removed execute requests; Linux
    /// drivers/iommu/intel stopped setting NXE/XD for that reason).
    pub const fn execute_requests(&self) -> bool {
        self.ecap.ers()
    }
}

fn check<const N: usize>(
    words: &[u64; N],
    masks: &[u64; N],
    reason: FaultReason,
) -> Result<(), FaultReason> {
    if words.iter().zip(masks).any(|(w, m)| w & m != 0) {
        Err(reason)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vtd_regs::VtdConfig;

    fn rules(props: &str) -> ReservedRules {
        let cfg = VtdConfig::from_qemu_props(props).unwrap();
        ReservedRules::from_caps(cfg.cap(), cfg.ecap())
    }

    #[test]
    fn linux_first_stage_entries_pass_on_qemus_unit() {
        let r = rules("x-scalable-mode=on,x-flts=on");
        let pe = PasidEntry::first_stage(0x5000, false, 5, 2);
        assert_eq!(r.check_pasid_entry(&pe), Ok(()));
        let mut nxe = pe;
        nxe.0[2] |= 1 << 5;
        assert_eq!(r.check_pasid_entry(&nxe), Ok(()));
        assert_eq!(r.pasid_entry_reserved_bits(&nxe), [0; 8]);
    }

    #[test]
    fn masks_follow_the_capabilities() {
        let base = Ecap::new();
        let cap = Cap::new().with_mgaw(47);
        let without = ReservedRules::from_caps(cap, base);
        let with = ReservedRules::from_caps(
            cap,
            base.with_slads(true)
                .with_srs(true)
                .with_eafs(true)
                .with_sc(true)
                .with_ers(true)
                .with_mts(true),
        );
        let w = without.pasid_entry_mask();
        let h = with.pasid_entry_mask();
        for (word, b) in [(0, 9), (0, 5), (1, 24), (1, 25), (2, 0), (2, 1), (2, 7)] {
            assert_ne!(w[word] & bit(b), 0, "qw{word} bit {b} reserved without cap");
            assert_eq!(h[word] & bit(b), 0, "qw{word} bit {b} allowed with cap");
        }
        // Ignored in every unit.
        assert_eq!(w[2] & (bit(5) | bit(6) | bit(4)), 0);
    }
}
