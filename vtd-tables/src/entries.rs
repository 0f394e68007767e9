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

/// `word` with bit `n` set to `value`: the builders set one field at a time.
const fn with_bit(word: u64, n: u32, value: bool) -> u64 {
    if value {
        word | 1 << n
    } else {
        word & !(1 << n)
    }
}

/// `word` with the bits of `field` (a mask, in place) taken from `value` (already shifted into
/// place) and every other bit kept: a masked merge, so `value`'s bits outside the field are
/// dropped the way the entry formats require (an address is cut to bits 51:12, a width to
/// its field).
const fn with_field(word: u64, field: u64, value: u64) -> u64 {
    word ^ ((word ^ value) & field)
}

/// A present entry word pointing at `table` (P = bit 0, address in 51:12).
const fn present_pointer(table: u64) -> u64 {
    with_bit(with_field(0, ADDR_MASK, table), 0, true)
}

/// A scalable root entry half: present and pointing at `table`, or not present.
const fn half_pointer(table: Option<u64>) -> u64 {
    match table {
        Some(a) => present_pointer(a),
        None => 0,
    }
}

/// Legacy root entry (spec 9.1): one per bus, 128 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RootEntry(pub [u64; 2]);

impl RootEntry {
    /// A present entry pointing at the context table of its bus.
    pub const fn new(context_table: u64) -> Self {
        Self([present_pointer(context_table), 0])
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
        Self([half_pointer(lower), half_pointer(upper)])
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
            present_pointer(sl_table),
            with_field(with_field(0, 7, aw as u64), 0xff_ff00, (did as u64) << 8),
        ])
    }
    /// A present pass-through entry (TT = 10).
    pub const fn pass_through(aw: u8, did: u16) -> Self {
        Self::new(0, aw, did).with_translation_type(LegacyTranslationType::PassThrough)
    }
    /// Sets FPD (fault processing disable).
    pub const fn with_fpd(mut self, fpd: bool) -> Self {
        self.0[0] = with_bit(self.0[0], 1, fpd);
        self
    }
    /// Sets TT.
    pub const fn with_translation_type(mut self, tt: LegacyTranslationType) -> Self {
        self.0[0] = with_field(self.0[0], 0xc, (tt as u64) << 2);
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
            with_field(present_pointer(pasid_dir), 7 << 9, (pdts as u64) << 9),
            0,
            0,
            0,
        ])
    }
    /// Sets FPD.
    pub const fn with_fpd(mut self, v: bool) -> Self {
        self.0[0] = with_bit(self.0[0], 1, v);
        self
    }
    /// Sets DTE (device-TLB enable).
    pub const fn with_dte(mut self, v: bool) -> Self {
        self.0[0] = with_bit(self.0[0], 2, v);
        self
    }
    /// Sets PASIDE (requests with PASID allowed).
    pub const fn with_paside(mut self, v: bool) -> Self {
        self.0[0] = with_bit(self.0[0], 3, v);
        self
    }
    /// Sets PRE (page requests allowed).
    pub const fn with_pre(mut self, v: bool) -> Self {
        self.0[0] = with_bit(self.0[0], 4, v);
        self
    }
    /// Sets RID_PASID (the PASID used for requests without PASID, with ECAP.RPS).
    pub const fn with_rid_pasid(mut self, pasid: u32) -> Self {
        self.0[1] = with_field(self.0[1], 0xf_ffff, pasid as u64);
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
        Self::from_bits(present_pointer(table))
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
        Self::present_with(Pgtt::FirstStage, aw, did).with_fs_table(fs_table, five_level)
    }
    /// A present second-stage entry: SSPTPTR, AW (1/2/3), DID, PGTT = 2.
    pub const fn second_stage(ss_table: u64, aw: u8, did: u16) -> Self {
        Self::present_with(Pgtt::SecondStage, aw, did).with_ss_table(ss_table)
    }
    /// A present nested entry: first stage at `fs_table` (a guest-physical address translated
    /// by the second stage at `ss_table`).
    pub const fn nested(fs_table: u64, five_level: bool, ss_table: u64, aw: u8, did: u16) -> Self {
        Self::present_with(Pgtt::Nested, aw, did)
            .with_ss_table(ss_table)
            .with_fs_table(fs_table, five_level)
    }
    /// A present pass-through entry (PGTT = 4); Linux uses DID 1 (FLPT_DEFAULT_DID).
    pub const fn pass_through(did: u16, aw: u8) -> Self {
        Self::present_with(Pgtt::PassThrough, aw, did)
    }
    /// A present entry with PGTT, AW and DID set and every other field zero.
    const fn present_with(pgtt: Pgtt, aw: u8, did: u16) -> Self {
        let mut e = Self([0; 8]).with_pgtt(pgtt);
        e.0[0] = with_bit(with_field(e.0[0], 7 << 2, (aw as u64) << 2), 0, true);
        e.0[1] = did as u64;
        e
    }
    /// Sets SSPTPTR.
    const fn with_ss_table(mut self, ss_table: u64) -> Self {
        self.0[0] = with_field(self.0[0], ADDR_MASK, ss_table);
        self
    }
    /// Sets FSPTPTR and FSPM (0 = 4-level, 1 = 5-level).
    const fn with_fs_table(mut self, fs_table: u64, five_level: bool) -> Self {
        let word = with_field(self.0[2], ADDR_MASK, fs_table);
        self.0[2] = with_field(word, 3 << 2, (five_level as u64) << 2);
        self
    }
    /// Sets FPD.
    pub const fn with_fpd(mut self, v: bool) -> Self {
        self.0[0] = with_bit(self.0[0], 1, v);
        self
    }
    /// Sets SRE (supervisor requests allowed in first stage).
    pub const fn with_sre(mut self, v: bool) -> Self {
        self.0[2] = with_bit(self.0[2], 0, v);
        self
    }
    /// Sets ERE (execute requests allowed).
    pub const fn with_ere(mut self, v: bool) -> Self {
        self.0[2] = with_bit(self.0[2], 1, v);
        self
    }
    /// Sets WPE (write protect: supervisor writes honour R/W).
    pub const fn with_wpe(mut self, v: bool) -> Self {
        self.0[2] = with_bit(self.0[2], 4, v);
        self
    }
    /// Sets EAFE (extended accessed flag, bit 10 of first-stage entries).
    pub const fn with_eafe(mut self, v: bool) -> Self {
        self.0[2] = with_bit(self.0[2], 7, v);
        self
    }
    /// Sets PWSNP (page-walk snoop), as Linux does when ECAP.SMPWC.
    pub const fn with_pwsnp(mut self, v: bool) -> Self {
        self.0[1] = with_bit(self.0[1], 23, v);
        self
    }
    /// Sets SSADE (second-stage accessed/dirty, needs ECAP.SLADS).
    pub const fn with_ssade(mut self, v: bool) -> Self {
        self.0[0] = with_bit(self.0[0], 9, v);
        self
    }
    /// Sets PGSNP (page snoop, needs ECAP.SC), as Linux does for a domain with
    /// force_snooping.
    pub const fn with_pgsnp(mut self, v: bool) -> Self {
        self.0[1] = with_bit(self.0[1], 24, v);
        self
    }
    /// Sets PGTT to any value (tests of reserved values).
    pub const fn with_pgtt(mut self, pgtt: Pgtt) -> Self {
        self.0[0] = with_field(self.0[0], 7 << 6, (pgtt.into_bits() as u64) << 6);
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
        Self::from_bits(with_field(0b11, ADDR_MASK, next))
    }
    /// A leaf mapping `addr` with `read`/`write`; `large` sets PS (for level 2 or 3 leaves).
    pub const fn leaf(addr: u64, read: bool, write: bool, large: bool) -> Self {
        Self::from_bits(with_field(0, ADDR_MASK, addr))
            .with_read(read)
            .with_write(write)
            .with_ps(large)
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
        Self::from_bits(with_field(0b10_0111, ADDR_MASK, next))
    }
    /// A leaf the way Linux writes it (P|US|A|D, RW when `writable`, PS when `large`).
    pub const fn leaf(addr: u64, writable: bool, large: bool) -> Self {
        Self::from_bits(with_field(0b110_0101, ADDR_MASK, addr))
            .with_writable(writable)
            .with_ps(large)
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

    /// One single-bit flag of a multi-word entry: name, word, bit, setter and getter.
    type Flag<E> = (&'static str, usize, u32, fn(E, bool) -> E, fn(&E) -> bool);

    /// Each flag's setter sets or clears exactly its bit (spec layout) and leaves every other
    /// bit as it was; its getter reads exactly that bit.
    fn check_flags<const N: usize, E: Copy>(
        flags: &[Flag<E>],
        make: fn([u64; N]) -> E,
        words: fn(&E) -> [u64; N],
    ) {
        for &(name, word, bit, set, get) in flags {
            let mut only = [0u64; N];
            only[word] = 1 << bit;
            let mut all_but = [!0u64; N];
            all_but[word] = !(1 << bit);
            for (start, v, want) in [
                ([0; N], true, only),
                ([0; N], false, [0; N]),
                ([!0; N], false, all_but),
                ([!0; N], true, [!0; N]),
                (only, true, only),
                (all_but, false, all_but),
            ] {
                assert_eq!(words(&set(make(start), v)), want, "{name} <- {v}");
            }
            assert!(get(&make(only)), "{name} reads its bit");
            assert!(!get(&make(all_but)), "{name} reads only its bit");
        }
    }

    #[test]
    fn context_entry_flags_sit_where_spec_9_3_and_9_4_put_them() {
        check_flags::<2, ContextEntry>(
            &[("FPD", 0, 1, ContextEntry::with_fpd, ContextEntry::fpd)],
            ContextEntry,
            |e| e.0,
        );
        assert!(ContextEntry([1, 0]).present() && !ContextEntry([!1, !0]).present());
        check_flags::<4, ScalableContextEntry>(
            &[
                (
                    "FPD",
                    0,
                    1,
                    ScalableContextEntry::with_fpd,
                    ScalableContextEntry::fpd,
                ),
                (
                    "DTE",
                    0,
                    2,
                    ScalableContextEntry::with_dte,
                    ScalableContextEntry::dte,
                ),
                (
                    "PASIDE",
                    0,
                    3,
                    ScalableContextEntry::with_paside,
                    ScalableContextEntry::paside,
                ),
                (
                    "PRE",
                    0,
                    4,
                    ScalableContextEntry::with_pre,
                    ScalableContextEntry::pre,
                ),
            ],
            ScalableContextEntry,
            |e| e.0,
        );
        let sc = |w| ScalableContextEntry([w, 0, 0, 0]);
        assert!(sc(1).present() && !sc(!1).present());
    }

    #[test]
    fn pasid_entry_flags_sit_where_spec_9_6_puts_them() {
        check_flags::<8, PasidEntry>(
            &[
                ("FPD", 0, 1, PasidEntry::with_fpd, PasidEntry::fpd),
                ("SSADE", 0, 9, PasidEntry::with_ssade, PasidEntry::ssade),
                ("PWSNP", 1, 23, PasidEntry::with_pwsnp, PasidEntry::pwsnp),
                ("PGSNP", 1, 24, PasidEntry::with_pgsnp, PasidEntry::pgsnp),
                ("SRE", 2, 0, PasidEntry::with_sre, PasidEntry::sre),
                ("ERE", 2, 1, PasidEntry::with_ere, PasidEntry::ere),
                ("WPE", 2, 4, PasidEntry::with_wpe, PasidEntry::wpe),
                ("EAFE", 2, 7, PasidEntry::with_eafe, PasidEntry::eafe),
            ],
            PasidEntry,
            |e| e.0,
        );
        let pe = |w| PasidEntry([w, 0, 0, 0, 0, 0, 0, 0]);
        assert!(pe(1).present() && !pe(!1).present());
    }

    #[test]
    fn multi_bit_fields_decode_exactly_their_bits() {
        // 9.3: TT 3:2, AW 66:64, DID 87:72, SSPTPTR 63:12.
        for (tt, want) in [
            (0, LegacyTranslationType::MultiLevel),
            (1, LegacyTranslationType::MultiLevelWithDeviceTlb),
            (2, LegacyTranslationType::PassThrough),
            (3, LegacyTranslationType::Reserved),
        ] {
            let ce = ContextEntry([!0xc | tt << 2, 0]);
            assert_eq!(ce.translation_type(), want);
            assert_eq!(
                ContextEntry::default().with_translation_type(want).0,
                [tt << 2, 0]
            );
            assert_eq!(
                ContextEntry([!0, !0]).with_translation_type(want).0,
                [!0xc | tt << 2, !0]
            );
        }
        let ce = ContextEntry([!0, 0x00ab_cd05 | !0xff_ffff]);
        assert_eq!((ce.sl_table(), ce.aw(), ce.did()), (ADDR_MASK, 5, 0xabcd));
        // 9.4: PDTS 11:9, PASIDDIRPTR 63:12, RID_PASID 83:64.
        let sc = ScalableContextEntry([!(7 << 9) | 5 << 9, !0, 0, 0]);
        assert_eq!(
            (sc.pdts(), sc.pasid_dir(), sc.rid_pasid()),
            (5, ADDR_MASK, 0xf_ffff)
        );
        for pdts in 0..8u8 {
            let sc = ScalableContextEntry::new(0x7000, pdts);
            assert_eq!(sc.pasid_limit(), 1 << (pdts as u32 + 13), "PDTS {pdts}");
        }
        assert_eq!(
            ScalableContextEntry([0; 4]).with_rid_pasid(0x12_3456).0,
            [0, 0x2_3456, 0, 0],
            "RID_PASID is 20 bits"
        );
        assert_eq!(
            ScalableContextEntry([!0; 4]).with_rid_pasid(5).0,
            [!0, !0xf_ffff | 5, !0, !0]
        );
        // 9.6: AW 4:2, PGTT 8:6, SSPTPTR 63:12, DID 79:64, FSPM 131:130, FSPTPTR 191:140.
        let pe = PasidEntry([
            !0x1fc | 3 << 2 | 4 << 6,
            0xffff_0000_1234,
            1 | 2 << 2 | 1 << 4,
            0,
            0,
            0,
            0,
            0,
        ]);
        assert_eq!(
            (pe.aw(), pe.pgtt(), pe.ss_table()),
            (3, Pgtt::PassThrough, ADDR_MASK)
        );
        assert_eq!((pe.did(), pe.fspm(), pe.fs_table()), (0x1234, 2, 0));
        let pe = PasidEntry([0, 0, !0, 0, 0, 0, 0, 0]);
        assert_eq!(
            (pe.fspm(), pe.fs_table(), pe.aw(), pe.ss_table()),
            (3, ADDR_MASK, 0, 0)
        );
        for v in 0..8u8 {
            let pgtt = Pgtt::from_bits(v);
            assert_eq!(pgtt.into_bits(), v);
            assert_eq!(Pgtt::from_bits(v | 0xf8), pgtt, "only 3 bits count");
            let with = PasidEntry([!0; 8]).with_pgtt(pgtt);
            assert_eq!(with.0[0], !(7 << 6) | (v as u64) << 6);
            assert_eq!(with.pgtt(), pgtt);
            assert_eq!(PasidEntry([0; 8]).with_pgtt(pgtt).0[0], (v as u64) << 6);
        }
        assert_eq!(Pgtt::Reserved(0xff).into_bits(), 7);
    }

    #[test]
    fn constructors_build_present_entries_with_the_spec_layout() {
        let addr = 0x0000_0abc_def1_2000u64;
        let unaligned = addr | 0xfff | 0xfff0_0000_0000_0000;
        // 9.1 root entry: P 0, CTP 63:12.
        let re = RootEntry::new(unaligned);
        assert_eq!(re.0, [addr | 1, 0]);
        assert!(re.present() && !RootEntry([!1, 0]).present());
        assert_eq!(RootEntry([!0, 0]).context_table(), ADDR_MASK);
        // 9.2 scalable root entry: lower half for devfn 0-127, upper for 128-255.
        let sr = ScalableRootEntry::new(Some(unaligned), Some(0x5000));
        assert_eq!(sr.0, [addr | 1, 0x5001]);
        assert_eq!(sr.context_table_for(0x7f), Some(addr));
        assert_eq!(sr.context_table_for(0x80), Some(0x5000));
        assert_eq!(sr.context_table_for(0xff), Some(0x5000));
        let lower_only = ScalableRootEntry::new(Some(0x5000), None);
        assert_eq!(lower_only.0, [0x5001, 0]);
        assert_eq!(lower_only.context_table_for(0x80), None);
        assert_eq!(ScalableRootEntry([!1, 1]).context_table_for(0), None);
        assert_eq!(ScalableRootEntry([!1, 1]).context_table_for(0x80), Some(0));
        // 9.3 context entries.
        assert_eq!(
            ContextEntry::new(unaligned, 9, 0xabcd).0,
            [addr | 1, 0xab_cd01]
        );
        assert_eq!(ContextEntry::pass_through(2, 0xabcd).0, [0b1001, 0xab_cd02]);
        // 9.4 scalable context entry.
        assert_eq!(
            ScalableContextEntry::new(unaligned, 0xd).0,
            [addr | 5 << 9 | 1, 0, 0, 0]
        );
        // 9.5 PASID directory entry: P 0, PASIDPTR 63:12.
        let de = PasidDirEntry::to_table(addr | 0xfff);
        assert_eq!(de.into_bits(), addr | 1);
        assert_eq!(de.table(), addr);
        // 9.6 PASID entries: P, AW 4:2, PGTT 8:6, SSPTPTR, DID, FSPM 131:130, FSPTPTR.
        let fs = PasidEntry::first_stage(unaligned, true, 0xabcd, 0xa);
        assert_eq!(
            fs.0,
            [1 | 2 << 2 | 1 << 6, 0xabcd, addr | 1 << 2, 0, 0, 0, 0, 0]
        );
        let ss = PasidEntry::second_stage(unaligned, 3, 7);
        assert_eq!(ss.0, [addr | 1 | 3 << 2 | 2 << 6, 7, 0, 0, 0, 0, 0, 0]);
        let nested = PasidEntry::nested(0x5000, false, unaligned, 2, 9);
        assert_eq!(
            nested.0,
            [addr | 1 | 2 << 2 | 3 << 6, 9, 0x5000, 0, 0, 0, 0, 0]
        );
        let pt = PasidEntry::pass_through(1, 2);
        assert_eq!(pt.0, [1 | 2 << 2 | 4 << 6, 1, 0, 0, 0, 0, 0, 0]);
        // 9.8 second-stage entries: R 0, W 1, PS 7, ADDR 51:12; present = R or W.
        assert_eq!(SecondStagePte::table(unaligned).into_bits(), addr | 0b11);
        for (r, w, large, bits) in [
            (true, false, false, 0b1),
            (false, true, false, 0b10),
            (true, true, true, 0b1000_0011),
        ] {
            let leaf = SecondStagePte::leaf(unaligned, r, w, large);
            assert_eq!(leaf.into_bits(), addr | bits);
            assert!(leaf.present());
            assert_eq!(leaf.addr(), addr);
        }
        assert!(!SecondStagePte::from_bits(!0b11).present());
        // 9.7 first-stage entries: P 0, R/W 1, U/S 2, A 5, D 6, PS 7, ADDR 51:12.
        assert_eq!(
            FirstStagePte::table(unaligned).into_bits(),
            addr | 0b10_0111
        );
        assert_eq!(
            FirstStagePte::leaf(unaligned, false, true).into_bits(),
            addr | 0b1110_0101
        );
        let leaf = FirstStagePte::leaf(unaligned, true, false);
        assert_eq!((leaf.into_bits(), leaf.addr()), (addr | 0b110_0111, addr));
    }

    #[test]
    fn bits_above_a_width() {
        assert_eq!(bits_above(0), !0);
        assert_eq!(bits_above(1), !1);
        assert_eq!(bits_above(63), 1 << 63);
        assert_eq!(bits_above(65), 0);
        assert_eq!(bits_above(64), 0);
        assert_eq!(bits_above(48), 0xffff_0000_0000_0000);
    }
}
