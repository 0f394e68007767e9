//! In-memory formats of the remapping structures (VT-d spec chapter 9), with builders.
//!
//! Every type decodes any bit pattern (the guest wrote it); which bits are reserved depends on
//! the unit's capabilities and lives in [`crate::reserved`]. Constructors and `with_*` methods
//! build well-formed entries for tests, examples and guests.

use bitfield_struct::bitfield;

/// Mask of the address bits 51:12 of an entry.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Bits of an address above `width` bits (a host or guest address width): must be zero.
pub const fn bits_above(width: u8) -> u64 {
    if width >= 64 {
        0
    } else {
        !((1u64 << width) - 1)
    }
}

/// Legacy root entry (spec 9.1): one per bus, 128 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RootEntry(pub [u64; 2]);

impl RootEntry {
    /// A present entry pointing at the context table of its bus.
    pub const fn new(context_table: u64) -> Self {
        Self([(context_table & ADDR_MASK) | 1, 0])
    }
    /// P.
    pub const fn present(&self) -> bool {
        self.0[0] & 1 != 0
    }
    /// CTP: context-table pointer.
    pub const fn context_table(&self) -> u64 {
        self.0[0] & ADDR_MASK
    }
}

/// Scalable-mode root entry (spec 9.2): lower and upper context-table pointers for devfn 0-127
/// and 128-255.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScalableRootEntry(pub [u64; 2]);

impl ScalableRootEntry {
    /// An entry with either half present.
    pub const fn new(lower: Option<u64>, upper: Option<u64>) -> Self {
        let lo = match lower {
            Some(a) => (a & ADDR_MASK) | 1,
            None => 0,
        };
        let hi = match upper {
            Some(a) => (a & ADDR_MASK) | 1,
            None => 0,
        };
        Self([lo, hi])
    }
    /// The context-table pointer for `devfn`, if that half is present.
    pub const fn context_table_for(&self, devfn: u8) -> Option<u64> {
        // Devfns 0-127 use the lower half, 128-255 the upper (spec 9.2).
        let [lower, upper] = self.0;
        let word = if devfn & 0x80 != 0 { upper } else { lower };
        if word & 1 != 0 {
            Some(word & ADDR_MASK)
        } else {
            None
        }
    }
}

/// Translation type of a legacy context entry (spec 9.3, TT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LegacyTranslationType {
    /// 00: untranslated requests go through the second-stage table.
    MultiLevel,
    /// 01: as 00, and translated/translation requests (device-TLB) are allowed.
    MultiLevelWithDeviceTlb,
    /// 10: pass-through (needs ECAP.PT).
    PassThrough,
    /// 11: reserved.
    Reserved,
}

/// Legacy context entry (spec 9.3), 128 bits, 256 per table (indexed by devfn).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ContextEntry(pub [u64; 2]);

impl ContextEntry {
    /// A present multi-level entry: second-stage table `sl_table`, AW field `aw` (1 = 3-level,
    /// 2 = 4-level, 3 = 5-level), domain `did`.
    pub const fn new(sl_table: u64, aw: u8, did: u16) -> Self {
        Self([
            (sl_table & ADDR_MASK) | 1,
            (aw as u64 & 7) | (did as u64) << 8,
        ])
    }
    /// A present pass-through entry (TT = 10).
    pub const fn pass_through(aw: u8, did: u16) -> Self {
        Self([0b1001, (aw as u64 & 7) | (did as u64) << 8])
    }
    /// Sets FPD (fault processing disable).
    pub const fn with_fpd(mut self, fpd: bool) -> Self {
        self.0[0] = (self.0[0] & !2) | (fpd as u64) << 1;
        self
    }
    /// Sets TT.
    pub const fn with_translation_type(mut self, tt: LegacyTranslationType) -> Self {
        self.0[0] = (self.0[0] & !0xc) | (tt as u64) << 2;
        self
    }
    /// P.
    pub const fn present(&self) -> bool {
        self.0[0] & 1 != 0
    }
    /// FPD.
    pub const fn fpd(&self) -> bool {
        self.0[0] & 2 != 0
    }
    /// TT.
    pub const fn translation_type(&self) -> LegacyTranslationType {
        match (self.0[0] >> 2) & 3 {
            0 => LegacyTranslationType::MultiLevel,
            1 => LegacyTranslationType::MultiLevelWithDeviceTlb,
            2 => LegacyTranslationType::PassThrough,
            _ => LegacyTranslationType::Reserved,
        }
    }
    /// SSPTPTR: second-stage page-table pointer.
    pub const fn sl_table(&self) -> u64 {
        self.0[0] & ADDR_MASK
    }
    /// AW: adjusted guest address width field.
    pub const fn aw(&self) -> u8 {
        (self.0[1] & 7) as u8
    }
    /// DID: domain identifier.
    pub const fn did(&self) -> u16 {
        (self.0[1] >> 8) as u16
    }
}

/// Scalable-mode context entry (spec 9.4), 256 bits, 128 per 4 KiB table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScalableContextEntry(pub [u64; 4]);

impl ScalableContextEntry {
    /// A present entry with a PASID directory at `pasid_dir` of 2^(`pdts` + 7) entries.
    pub const fn new(pasid_dir: u64, pdts: u8) -> Self {
        Self([
            (pasid_dir & ADDR_MASK) | ((pdts as u64 & 7) << 9) | 1,
            0,
            0,
            0,
        ])
    }
    /// Sets FPD.
    pub const fn with_fpd(mut self, v: bool) -> Self {
        self.0[0] = (self.0[0] & !2) | (v as u64) << 1;
        self
    }
    /// Sets DTE (device-TLB enable).
    pub const fn with_dte(mut self, v: bool) -> Self {
        self.0[0] = (self.0[0] & !4) | (v as u64) << 2;
        self
    }
    /// Sets PASIDE (requests with PASID allowed).
    pub const fn with_paside(mut self, v: bool) -> Self {
        self.0[0] = (self.0[0] & !8) | (v as u64) << 3;
        self
    }
    /// Sets PRE (page requests allowed).
    pub const fn with_pre(mut self, v: bool) -> Self {
        self.0[0] = (self.0[0] & !0x10) | (v as u64) << 4;
        self
    }
    /// Sets RID_PASID (the PASID used for requests without PASID, with ECAP.RPS).
    pub const fn with_rid_pasid(mut self, pasid: u32) -> Self {
        self.0[1] = (self.0[1] & !0xf_ffff) | (pasid as u64 & 0xf_ffff);
        self
    }
    /// P.
    pub const fn present(&self) -> bool {
        self.0[0] & 1 != 0
    }
    /// FPD.
    pub const fn fpd(&self) -> bool {
        self.0[0] & 2 != 0
    }
    /// DTE.
    pub const fn dte(&self) -> bool {
        self.0[0] & 4 != 0
    }
    /// PASIDE.
    pub const fn paside(&self) -> bool {
        self.0[0] & 8 != 0
    }
    /// PRE.
    pub const fn pre(&self) -> bool {
        self.0[0] & 0x10 != 0
    }
    /// PDTS: the directory has 2^(PDTS + 7) entries.
    pub const fn pdts(&self) -> u8 {
        ((self.0[0] >> 9) & 7) as u8
    }
    /// Number of PASIDs the directory covers (64 per directory entry).
    pub const fn pasid_limit(&self) -> u32 {
        1 << (self.pdts() as u32 + 7 + 6)
    }
    /// PASIDDIRPTR.
    pub const fn pasid_dir(&self) -> u64 {
        self.0[0] & ADDR_MASK
    }
    /// RID_PASID.
    pub const fn rid_pasid(&self) -> u32 {
        (self.0[1] & 0xf_ffff) as u32
    }
}

/// PASID directory entry (spec 9.5), 64 bits; index = PASID >> 6.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct PasidDirEntry {
    /// P.
    pub present: bool,
    /// FPD.
    pub fpd: bool,
    #[bits(10)]
    __: u16,
    /// PASIDPTR: PASID table address, bits 63:12.
    #[bits(52)]
    pub table_pfn: u64,
}

impl PasidDirEntry {
    /// A present entry pointing at a PASID table.
    pub const fn to_table(table: u64) -> Self {
        Self::from_bits((table & !0xfff) | 1)
    }
    /// PASID table address.
    pub const fn table(&self) -> u64 {
        self.table_pfn() << 12
    }
}

/// PASID-granular translation type (spec 9.6, PGTT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pgtt {
    /// 001: first-stage only.
    FirstStage,
    /// 010: second-stage only.
    SecondStage,
    /// 011: nested (first stage over second stage).
    Nested,
    /// 100: pass-through.
    PassThrough,
    /// Any other value: reserved.
    Reserved(u8),
}

impl Pgtt {
    /// Decodes the 3-bit field.
    pub const fn from_bits(v: u8) -> Self {
        match v & 7 {
            1 => Self::FirstStage,
            2 => Self::SecondStage,
            3 => Self::Nested,
            4 => Self::PassThrough,
            other => Self::Reserved(other),
        }
    }
    /// Encodes the 3-bit field.
    pub const fn into_bits(self) -> u8 {
        match self {
            Self::FirstStage => 1,
            Self::SecondStage => 2,
            Self::Nested => 3,
            Self::PassThrough => 4,
            Self::Reserved(v) => v & 7,
        }
    }
}

/// Scalable-mode PASID table entry (spec 9.6), 512 bits, 64 per 4 KiB table; slot = PASID & 0x3f.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PasidEntry(pub [u64; 8]);

impl PasidEntry {
    /// A present first-stage entry the way Linux 6.12 writes it
    /// (intel_pasid_setup_first_level): FSPTPTR, FSPM (0 = 4-level, 1 = 5-level), DID, AW,
    /// PGTT = 1.
    pub const fn first_stage(fs_table: u64, five_level: bool, did: u16, aw: u8) -> Self {
        let mut e = Self([0; 8]);
        e.0[0] = 1 | (aw as u64 & 7) << 2 | (Pgtt::FirstStage.into_bits() as u64) << 6;
        e.0[1] = did as u64;
        e.0[2] = (fs_table & ADDR_MASK) | (five_level as u64) << 2;
        e
    }
    /// A present second-stage entry: SSPTPTR, AW (1/2/3), DID, PGTT = 2.
    pub const fn second_stage(ss_table: u64, aw: u8, did: u16) -> Self {
        let mut e = Self([0; 8]);
        e.0[0] = 1
            | (aw as u64 & 7) << 2
            | (Pgtt::SecondStage.into_bits() as u64) << 6
            | (ss_table & ADDR_MASK);
        e.0[1] = did as u64;
        e
    }
    /// A present nested entry: first stage at `fs_table` (a guest-physical address translated
    /// by the second stage at `ss_table`).
    pub const fn nested(fs_table: u64, five_level: bool, ss_table: u64, aw: u8, did: u16) -> Self {
        let mut e = Self::second_stage(ss_table, aw, did);
        e.0[0] = (e.0[0] & !(7 << 6)) | (Pgtt::Nested.into_bits() as u64) << 6;
        e.0[2] = (fs_table & ADDR_MASK) | (five_level as u64) << 2;
        e
    }
    /// A present pass-through entry (PGTT = 4); Linux uses DID 1 (FLPT_DEFAULT_DID).
    pub const fn pass_through(did: u16, aw: u8) -> Self {
        let mut e = Self([0; 8]);
        e.0[0] = 1 | (aw as u64 & 7) << 2 | (Pgtt::PassThrough.into_bits() as u64) << 6;
        e.0[1] = did as u64;
        e
    }
    /// Sets FPD.
    pub const fn with_fpd(mut self, v: bool) -> Self {
        self.0[0] = (self.0[0] & !2) | (v as u64) << 1;
        self
    }
    /// Sets SRE (supervisor requests allowed in first stage).
    pub const fn with_sre(mut self, v: bool) -> Self {
        self.0[2] = (self.0[2] & !1) | v as u64;
        self
    }
    /// Sets ERE (execute requests allowed).
    pub const fn with_ere(mut self, v: bool) -> Self {
        self.0[2] = (self.0[2] & !2) | (v as u64) << 1;
        self
    }
    /// Sets WPE (write protect: supervisor writes honour R/W).
    pub const fn with_wpe(mut self, v: bool) -> Self {
        self.0[2] = (self.0[2] & !0x10) | (v as u64) << 4;
        self
    }
    /// Sets EAFE (extended accessed flag, bit 10 of first-stage entries).
    pub const fn with_eafe(mut self, v: bool) -> Self {
        self.0[2] = (self.0[2] & !0x80) | (v as u64) << 7;
        self
    }
    /// Sets PWSNP (page-walk snoop), as Linux does when ECAP.SMPWC.
    pub const fn with_pwsnp(mut self, v: bool) -> Self {
        self.0[1] = (self.0[1] & !(1 << 23)) | (v as u64) << 23;
        self
    }
    /// Sets SSADE (second-stage accessed/dirty, needs ECAP.SLADS).
    pub const fn with_ssade(mut self, v: bool) -> Self {
        self.0[0] = (self.0[0] & !(1 << 9)) | (v as u64) << 9;
        self
    }
    /// Sets PGSNP (page snoop, needs ECAP.SC), as Linux does for a domain with
    /// force_snooping.
    pub const fn with_pgsnp(mut self, v: bool) -> Self {
        self.0[1] = (self.0[1] & !(1 << 24)) | (v as u64) << 24;
        self
    }
    /// Sets PGTT to any value (tests of reserved values).
    pub const fn with_pgtt(mut self, pgtt: Pgtt) -> Self {
        self.0[0] = (self.0[0] & !(7 << 6)) | (pgtt.into_bits() as u64) << 6;
        self
    }
    /// P.
    pub const fn present(&self) -> bool {
        self.0[0] & 1 != 0
    }
    /// FPD.
    pub const fn fpd(&self) -> bool {
        self.0[0] & 2 != 0
    }
    /// AW: second-stage address width field (1 = 3-level, 2 = 4-level, 3 = 5-level).
    pub const fn aw(&self) -> u8 {
        ((self.0[0] >> 2) & 7) as u8
    }
    /// PGTT.
    pub const fn pgtt(&self) -> Pgtt {
        Pgtt::from_bits(((self.0[0] >> 6) & 7) as u8)
    }
    /// SSADE: second-stage accessed/dirty enable.
    pub const fn ssade(&self) -> bool {
        self.0[0] & (1 << 9) != 0
    }
    /// SSPTPTR.
    pub const fn ss_table(&self) -> u64 {
        self.0[0] & ADDR_MASK
    }
    /// DID.
    pub const fn did(&self) -> u16 {
        self.0[1] as u16
    }
    /// PWSNP.
    pub const fn pwsnp(&self) -> bool {
        self.0[1] & (1 << 23) != 0
    }
    /// PGSNP.
    pub const fn pgsnp(&self) -> bool {
        self.0[1] & (1 << 24) != 0
    }
    /// SRE.
    pub const fn sre(&self) -> bool {
        self.0[2] & 1 != 0
    }
    /// ERE.
    pub const fn ere(&self) -> bool {
        self.0[2] & 2 != 0
    }
    /// FSPM: 0 = 4-level, 1 = 5-level, 2-3 reserved.
    pub const fn fspm(&self) -> u8 {
        ((self.0[2] >> 2) & 3) as u8
    }
    /// WPE.
    pub const fn wpe(&self) -> bool {
        self.0[2] & 0x10 != 0
    }
    /// EAFE.
    pub const fn eafe(&self) -> bool {
        self.0[2] & 0x80 != 0
    }
    /// FSPTPTR.
    pub const fn fs_table(&self) -> u64 {
        self.0[2] & ADDR_MASK
    }
}

/// Second-stage paging entry (spec 9.8): any level.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct SecondStagePte {
    /// R.
    pub read: bool,
    /// W.
    pub write: bool,
    /// X (execute, with ECAP.ERS).
    pub execute: bool,
    /// EMT: extended memory type (leaf).
    #[bits(3)]
    pub emt: u8,
    /// IPAT: ignore PAT (leaf).
    pub ipat: bool,
    /// PS: page size (leaf at level 2 or 3).
    pub ps: bool,
    /// A: accessed (with SSADE).
    pub accessed: bool,
    /// D: dirty (with SSADE).
    pub dirty: bool,
    #[bits(1)]
    __: u8,
    /// SNP: snoop (leaf, with ECAP.SC).
    pub snp: bool,
    /// ADDR 51:12.
    #[bits(40)]
    pub pfn: u64,
    #[bits(10)]
    __: u16,
    /// TM: transient mapping (with ECAP.DT).
    pub tm: bool,
    #[bits(1)]
    __: u8,
}

impl SecondStagePte {
    /// A non-leaf entry the way Linux writes it: R|W pointing at the next table.
    pub const fn table(next: u64) -> Self {
        Self::from_bits((next & ADDR_MASK) | 0b11)
    }
    /// A leaf mapping `addr` with `read`/`write`; `large` sets PS (for level 2 or 3 leaves).
    pub const fn leaf(addr: u64, read: bool, write: bool, large: bool) -> Self {
        Self::from_bits(
            (addr & ADDR_MASK) | read as u64 | (write as u64) << 1 | (large as u64) << 7,
        )
    }
    /// Address field.
    pub const fn addr(&self) -> u64 {
        self.into_bits() & ADDR_MASK
    }
    /// Present means R or W (spec 9.8: an entry with neither is not present).
    pub const fn present(&self) -> bool {
        self.into_bits() & 0b11 != 0
    }
}

/// First-stage paging entry (spec 9.7, IA-32e paging structure format): any level.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct FirstStagePte {
    /// P.
    pub present: bool,
    /// R/W: writes allowed.
    pub writable: bool,
    /// U/S: user accesses allowed.
    pub user: bool,
    /// PWT.
    pub pwt: bool,
    /// PCD.
    pub pcd: bool,
    /// A: accessed.
    pub accessed: bool,
    /// D: dirty (leaf).
    pub dirty: bool,
    /// PS: page size (leaf at level 2 or 3).
    pub ps: bool,
    /// G: global (leaf).
    pub global: bool,
    #[bits(1)]
    __: u8,
    /// Extended accessed (with EAFE in the PASID entry).
    pub extended_accessed: bool,
    #[bits(1)]
    __: u8,
    /// ADDR 51:12 (for large pages bit 12 is PAT).
    #[bits(40)]
    pub pfn: u64,
    #[bits(11)]
    __: u16,
    /// XD: execute disable.
    pub xd: bool,
}

impl FirstStagePte {
    /// A non-leaf entry the way Linux writes it: P|RW|US|A.
    pub const fn table(next: u64) -> Self {
        Self::from_bits((next & ADDR_MASK) | 0b10_0111)
    }
    /// A leaf the way Linux writes it (P|US|A|D, RW when `writable`, PS when `large`).
    pub const fn leaf(addr: u64, writable: bool, large: bool) -> Self {
        Self::from_bits(
            (addr & ADDR_MASK) | 0b110_0101 | (writable as u64) << 1 | (large as u64) << 7,
        )
    }
    /// Address field.
    pub const fn addr(&self) -> u64 {
        self.into_bits() & ADDR_MASK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_the_documented_bits() {
        // The legacy example scenario: root 0x1000000 -> ctx table 0x1001000, devfn 8 entry.
        assert_eq!(RootEntry::new(0x1001000).0, [0x1001001, 0]);
        assert_eq!(ContextEntry::new(0x1002000, 2, 8).0, [0x1002001, 0x802]);
        let pe = PasidEntry::first_stage(0x5000, false, 5, 2);
        assert_eq!(pe.pgtt(), Pgtt::FirstStage);
        assert_eq!(
            (pe.did(), pe.aw(), pe.fs_table(), pe.fspm()),
            (5, 2, 0x5000, 0)
        );
        let sc = ScalableContextEntry::new(0x7000, 0);
        assert_eq!((sc.pasid_dir(), sc.pasid_limit()), (0x7000, 1 << 13));
        assert_eq!(
            FirstStagePte::leaf(0x1400000, true, false).into_bits(),
            0x1400067
        );
        assert_eq!(FirstStagePte::table(0x2000).into_bits(), 0x2027);
        assert!(SecondStagePte::leaf(0, true, false, false).present());
        assert!(!SecondStagePte::from_bits(0x1000).present());
        let sr = ScalableRootEntry::new(Some(0x3000), None);
        assert_eq!(sr.context_table_for(0x08), Some(0x3000));
        assert_eq!(sr.context_table_for(0x80), None);
        assert_eq!(PasidDirEntry::to_table(0x9000).table(), 0x9000);
    }

    #[test]
    fn bits_above_a_width() {
        assert_eq!(bits_above(64), 0);
        assert_eq!(bits_above(48), 0xffff_0000_0000_0000);
    }
}
