//! The register file of a remapping unit: offsets, widths, reset values, access semantics
//! (VT-d spec chapter 11) and typed views of the registers whose fields the unit acts on.
//!
//! [`register_layout`] yields one [`RegisterDef`] per architectural register for a given
//! CAP/ECAP pair; an MMIO emulation applies the masks exactly as the spec's RW / RO / RW1C / WO
//! column says. Offsets not covered by a definition are reserved: they read as zero and ignore
//! writes (spec 10.4: "reserved registers ... read as 0").

use alloc::vec::Vec;
use bitfield_struct::bitfield;

use crate::cap::{Cap, Ecap};

/// Register offsets from the unit's base address (VT-d spec 11.4, Table "Register Address Map").
pub mod offset {
    /// VER_REG: architecture version (32-bit).
    pub const VER: u64 = 0x00;
    /// CAP_REG (64-bit).
    pub const CAP: u64 = 0x08;
    /// ECAP_REG (64-bit).
    pub const ECAP: u64 = 0x10;
    /// GCMD_REG: global command (32-bit, write-only).
    pub const GCMD: u64 = 0x18;
    /// GSTS_REG: global status (32-bit, read-only).
    pub const GSTS: u64 = 0x1c;
    /// RTADDR_REG: root-table address (64-bit).
    pub const RTADDR: u64 = 0x20;
    /// CCMD_REG: context command (64-bit).
    pub const CCMD: u64 = 0x28;
    /// FSTS_REG: fault status (32-bit).
    pub const FSTS: u64 = 0x34;
    /// FECTL_REG: fault-event control (32-bit).
    pub const FECTL: u64 = 0x38;
    /// FEDATA_REG: fault-event MSI data (32-bit).
    pub const FEDATA: u64 = 0x3c;
    /// FEADDR_REG: fault-event MSI address (32-bit).
    pub const FEADDR: u64 = 0x40;
    /// FEUADDR_REG: fault-event MSI upper address (32-bit).
    pub const FEUADDR: u64 = 0x44;
    /// AFLOG_REG: advanced fault log (64-bit).
    pub const AFLOG: u64 = 0x58;
    /// PMEN_REG: protected-memory enable (32-bit).
    pub const PMEN: u64 = 0x64;
    /// PLMBASE_REG (32-bit).
    pub const PLMBASE: u64 = 0x68;
    /// PLMLIMIT_REG (32-bit).
    pub const PLMLIMIT: u64 = 0x6c;
    /// PHMBASE_REG (64-bit).
    pub const PHMBASE: u64 = 0x70;
    /// PHMLIMIT_REG (64-bit).
    pub const PHMLIMIT: u64 = 0x78;
    /// IQH_REG: invalidation-queue head (64-bit, read-only).
    pub const IQH: u64 = 0x80;
    /// IQT_REG: invalidation-queue tail (64-bit).
    pub const IQT: u64 = 0x88;
    /// IQA_REG: invalidation-queue address (64-bit).
    pub const IQA: u64 = 0x90;
    /// ICS_REG: invalidation completion status (32-bit).
    pub const ICS: u64 = 0x9c;
    /// IECTL_REG: invalidation-event control (32-bit).
    pub const IECTL: u64 = 0xa0;
    /// IEDATA_REG (32-bit).
    pub const IEDATA: u64 = 0xa4;
    /// IEADDR_REG (32-bit).
    pub const IEADDR: u64 = 0xa8;
    /// IEUADDR_REG (32-bit).
    pub const IEUADDR: u64 = 0xac;
    /// IQERCD_REG: invalidation-queue error record (64-bit, read-only).
    pub const IQERCD: u64 = 0xb0;
    /// IRTA_REG: interrupt-remapping table address (64-bit).
    pub const IRTA: u64 = 0xb8;
    /// PQH_REG: page-request queue head (64-bit).
    pub const PQH: u64 = 0xc0;
    /// PQT_REG: page-request queue tail (64-bit).
    pub const PQT: u64 = 0xc8;
    /// PQA_REG: page-request queue address (64-bit).
    pub const PQA: u64 = 0xd0;
    /// PRS_REG: page-request status (32-bit).
    pub const PRS: u64 = 0xdc;
    /// PECTL_REG: page-request event control (32-bit).
    pub const PECTL: u64 = 0xe0;
    /// PEDATA_REG (32-bit).
    pub const PEDATA: u64 = 0xe4;
    /// PEADDR_REG (32-bit).
    pub const PEADDR: u64 = 0xe8;
    /// PEUADDR_REG (32-bit).
    pub const PEUADDR: u64 = 0xec;
}

/// Size of the MMIO window a VMM maps for one unit (one 4 KiB page, as on hardware).
pub const MMIO_SIZE: u64 = 0x1000;

/// Architecture version reported in VER_REG: 1.0, as QEMU 10.0.2 reports.
pub const VERSION_1_0: u32 = 0x10;

/// How a register's bits behave on access (VT-d spec 11.2 "Register Attributes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterDef {
    /// Architectural name, e.g. `"GCMD"` or `"FRCD0_HI"`.
    pub name: &'static str,
    /// Byte offset from the unit's base.
    pub offset: u64,
    /// Width in bytes: 4 or 8.
    pub size: u8,
    /// Value after reset.
    pub reset: u64,
    /// RW bits: a write stores them.
    pub rw_mask: u64,
    /// RW1C bits: writing 1 clears them, writing 0 leaves them.
    pub w1c_mask: u64,
    /// WO bits: writes are seen by the unit but the bits always read back as 0.
    pub wo_mask: u64,
}

impl RegisterDef {
    const fn new(name: &'static str, offset: u64, size: u8, reset: u64) -> Self {
        Self {
            name,
            offset,
            size,
            reset,
            rw_mask: 0,
            w1c_mask: 0,
            wo_mask: 0,
        }
    }
    const fn rw(mut self, mask: u64) -> Self {
        self.rw_mask = mask;
        self
    }
    const fn w1c(mut self, mask: u64) -> Self {
        self.w1c_mask = mask;
        self
    }
    const fn wo(mut self, mask: u64) -> Self {
        self.wo_mask = mask;
        self
    }

    /// The value stored after a guest writes `value` over `old` (all bits of this register):
    /// RO bits keep `old`, RW bits take `value`, RW1C bits clear where `value` has a 1, WO bits
    /// are not stored (the unit acts on them separately).
    pub const fn apply_write(&self, old: u64, value: u64) -> u64 {
        let kept = old & !self.rw_mask & !self.wo_mask;
        let kept = kept & !(self.w1c_mask & value);
        kept | (value & self.rw_mask)
    }

    /// What a guest read returns for a stored value: WO bits read as 0.
    pub const fn read_value(&self, stored: u64) -> u64 {
        stored & !self.wo_mask
    }
}

/// The access semantics of every register the unit implements for `cap`/`ecap`.
///
/// Masks follow the spec; where QEMU's register masks differ, the spec wins and the difference
/// is named: QEMU makes only PFO and IQE RW1C in FSTS, while ITE and ICE are RW1C too (spec
/// 11.4.4.3), and this layout includes them because the unit models both errors.
/// IVA/IOTLB move with ECAP.IRO and the fault-recording registers with CAP.FRO/NFR.
pub fn register_layout(cap: Cap, ecap: Ecap) -> Vec<RegisterDef> {
    use offset::*;
    let eim_upper = if ecap.eim() { 0xffff_ffff } else { 0 };
    let iqa_mask = if ecap.smts() {
        // DW (bit 11) selects 256-bit descriptors, only in scalable mode (spec 11.4.9.3).
        0xffff_ffff_ffff_f807
    } else {
        0xffff_ffff_ffff_f007
    };
    let mut regs = alloc::vec![
        RegisterDef::new("VER", VER, 4, VERSION_1_0 as u64),
        RegisterDef::new("CAP", CAP, 8, cap.into_bits()),
        RegisterDef::new("ECAP", ECAP, 8, ecap.into_bits()),
        RegisterDef::new("GCMD", GCMD, 4, 0).wo(0xff80_0000),
        RegisterDef::new("GSTS", GSTS, 4, 0),
        // RTA 63:12 and TTM 11:10 (spec 11.4.5).
        RegisterDef::new("RTADDR", RTADDR, 8, 0).rw(0xffff_ffff_ffff_fc00),
        // ICC 63, CIRG 62:61, FM 33:32, SID 31:16, DID 15:0; CAIG 60:59 is hardware-written.
        RegisterDef::new("CCMD", CCMD, 8, 0).rw(0xe000_0003_ffff_ffff),
        // PFO 0, IQE 4, ICE 5, ITE 6 are RW1C; PPF and FRI are derived by hardware.
        RegisterDef::new("FSTS", FSTS, 4, 0).w1c(0x71),
        // IM 31 is RW; IP 30 is hardware-managed.
        RegisterDef::new("FECTL", FECTL, 4, 0x8000_0000).rw(0x8000_0000),
        RegisterDef::new("FEDATA", FEDATA, 4, 0).rw(0xffff),
        RegisterDef::new("FEADDR", FEADDR, 4, 0).rw(0xffff_fffc),
        RegisterDef::new("FEUADDR", FEUADDR, 4, 0).rw(eim_upper),
        RegisterDef::new("PMEN", PMEN, 4, 0),
        RegisterDef::new("IQH", IQH, 8, 0),
        // QT 18:4 (spec 11.4.9.2).
        RegisterDef::new("IQT", IQT, 8, 0).rw(0x7fff0),
        RegisterDef::new("IQA", IQA, 8, 0).rw(iqa_mask),
        RegisterDef::new("ICS", ICS, 4, 0).w1c(0x1),
        RegisterDef::new("IECTL", IECTL, 4, 0x8000_0000).rw(0x8000_0000),
        RegisterDef::new("IEDATA", IEDATA, 4, 0).rw(0xffff_ffff),
        RegisterDef::new("IEADDR", IEADDR, 4, 0).rw(0xffff_fffc),
        RegisterDef::new("IEUADDR", IEUADDR, 4, 0).rw(eim_upper),
        RegisterDef::new("IQERCD", IQERCD, 8, 0),
        // IRTA 63:12, EIME 11, S 3:0 (spec 11.4.10.1).
        RegisterDef::new("IRTA", IRTA, 8, 0).rw(0xffff_ffff_ffff_f80f),
    ];
    if ecap.prs() {
        // The page request queue (spec 11.4.11); without ECAP.PRS these offsets are reserved.
        // PQH/PQT: byte offset of a 256-bit descriptor in bits 18:5; software owns PQH and
        // initialises PQT (Linux intel_iommu_enable_prq writes both as 0), the unit advances
        // PQT. PQA: base 63:12 and PQS 2:0.
        regs.push(RegisterDef::new("PQH", PQH, 8, 0).rw(crate::prq::QUEUE_OFFSET_MASK));
        regs.push(RegisterDef::new("PQT", PQT, 8, 0).rw(crate::prq::QUEUE_OFFSET_MASK));
        regs.push(RegisterDef::new("PQA", PQA, 8, 0).rw(0xffff_ffff_ffff_f007));
        // PPR 0 and PRO 1 are RW1C (Linux prq_event_thread clears PPR, later PRO, by writing 1).
        regs.push(RegisterDef::new("PRS", PRS, 4, 0).w1c(0x3));
        // IM 31 is set at reset like FECTL's (spec 11.4.11.5; QEMU resets PECTL to 0, the
        // spec and Intel's datasheets say 1); IP 30 is hardware-managed.
        regs.push(RegisterDef::new("PECTL", PECTL, 4, 0x8000_0000).rw(0x8000_0000));
        regs.push(RegisterDef::new("PEDATA", PEDATA, 4, 0).rw(0xffff));
        regs.push(RegisterDef::new("PEADDR", PEADDR, 4, 0).rw(0xffff_fffc));
        regs.push(RegisterDef::new("PEUADDR", PEUADDR, 4, 0).rw(eim_upper));
    }
    let iva = ecap.iotlb_register_offset();
    // ADDR 63:12, IH 6, AM 5:0; write-only per spec 11.4.8.2.
    regs.push(RegisterDef::new("IVA", iva, 8, 0).wo(0xffff_ffff_ffff_f07f));
    // IVT 63, IIRG 61:60, DR 49, DW 48, DID 47:32; IAIG 58:57 is hardware-written.
    regs.push(RegisterDef::new("IOTLB", iva + 8, 8, 0).rw(0xb003_ffff_0000_0000));
    let fro = cap.fault_recording_offset();
    for i in 0..cap.fault_record_count() as u64 {
        let base = fro + i * 16;
        regs.push(RegisterDef::new(
            FRCD_NAMES_LO
                .get(i as usize % 8)
                .copied()
                .unwrap_or("FRCD_LO"),
            base,
            8,
            0,
        ));
        // F (bit 127, bit 63 of the high half) is RW1C: software clears a record by writing 1.
        regs.push(
            RegisterDef::new(
                FRCD_NAMES_HI
                    .get(i as usize % 8)
                    .copied()
                    .unwrap_or("FRCD_HI"),
                base + 8,
                8,
                0,
            )
            .w1c(1 << 63),
        );
    }
    regs
}

// Names cycle after 8 records; a unit with more records is still addressed by offset.
const FRCD_NAMES_LO: [&str; 8] = [
    "FRCD0_LO", "FRCD1_LO", "FRCD2_LO", "FRCD3_LO", "FRCD4_LO", "FRCD5_LO", "FRCD6_LO", "FRCD7_LO",
];
const FRCD_NAMES_HI: [&str; 8] = [
    "FRCD0_HI", "FRCD1_HI", "FRCD2_HI", "FRCD3_HI", "FRCD4_HI", "FRCD5_HI", "FRCD6_HI", "FRCD7_HI",
];

/// GCMD_REG (spec 11.4.4.1): one command bit per field; GSTS_REG reports the matching status
/// at the same position (see [`Gsts`]).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Gcmd {
    #[bits(23)]
    __: u32,
    /// CFI: compatibility-format interrupts allowed (while IR is on, without EIME).
    pub cfi: bool,
    /// SIRTP: set interrupt-remap table pointer (one-shot).
    pub sirtp: bool,
    /// IRE: interrupt-remapping enable.
    pub ire: bool,
    /// QIE: queued-invalidation enable.
    pub qie: bool,
    /// WBF: write-buffer flush (one-shot, only with CAP.RWBF).
    pub wbf: bool,
    /// EAFL: enable advanced fault logging.
    pub eafl: bool,
    /// SFL: set fault log (one-shot).
    pub sfl: bool,
    /// SRTP: set root-table pointer (one-shot).
    pub srtp: bool,
    /// TE: translation enable.
    pub te: bool,
}

/// GSTS_REG (spec 11.4.4.2): the status the unit reports for each [`Gcmd`] bit.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Gsts {
    #[bits(23)]
    __: u32,
    /// CFIS: compatibility-format interrupts status.
    pub cfis: bool,
    /// IRTPS: interrupt-remap table pointer status (set when SIRTP completed).
    pub irtps: bool,
    /// IRES: interrupt remapping enabled.
    pub ires: bool,
    /// QIES: queued invalidation enabled.
    pub qies: bool,
    /// WBFS: write-buffer flush in progress.
    pub wbfs: bool,
    /// AFLS: advanced fault logging enabled.
    pub afls: bool,
    /// FLS: fault log pointer set.
    pub fls: bool,
    /// RTPS: root-table pointer status (set when SRTP completed).
    pub rtps: bool,
    /// TES: translation enabled.
    pub tes: bool,
}

/// Translation table mode in RTADDR_REG.TTM (spec 11.4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TranslationTableMode {
    /// 00: legacy root and context entries.
    Legacy,
    /// 01: scalable-mode root, context and PASID tables.
    Scalable,
    /// 10: reserved (was advanced/extended mode in VT-d 2.x).
    Reserved2,
    /// 11: abort DMA mode.
    AbortDma,
}

impl TranslationTableMode {
    /// Decodes the two TTM bits.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::Legacy,
            1 => Self::Scalable,
            2 => Self::Reserved2,
            _ => Self::AbortDma,
        }
    }
    /// Encodes the two TTM bits.
    pub const fn into_bits(self) -> u8 {
        self as u8
    }
}

/// RTADDR_REG (spec 11.4.5).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Rtaddr {
    #[bits(10)]
    __: u16,
    /// TTM: translation table mode.
    #[bits(2)]
    pub ttm: TranslationTableMode,
    /// RTA: 4 KiB-aligned root-table address, bits 63:12.
    #[bits(52)]
    pub rta: u64,
}

impl Rtaddr {
    /// Root-table physical address.
    pub const fn root_table_address(&self) -> u64 {
        self.rta() << 12
    }
}

/// CCMD_REG (spec 11.4.6): register-based context-cache invalidation.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Ccmd {
    /// DID: domain for domain- and device-selective invalidation.
    pub did: u16,
    /// SID: source ID for device-selective invalidation.
    pub sid: u16,
    /// FM: function mask for device-selective invalidation.
    #[bits(2)]
    pub fm: u8,
    #[bits(25)]
    __: u32,
    /// CAIG: actual granularity the hardware performed.
    #[bits(2)]
    pub caig: u8,
    /// CIRG: requested granularity: 1 global, 2 domain, 3 device.
    #[bits(2)]
    pub cirg: u8,
    /// ICC: invalidate context cache (set by software, cleared by hardware when done).
    pub icc: bool,
}

/// FSTS_REG (spec 11.4.4.3).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Fsts {
    /// PFO: primary fault overflow (RW1C).
    pub pfo: bool,
    /// PPF: primary pending fault: some FRCD has F set (RO, derived).
    pub ppf: bool,
    /// AFO: advanced fault overflow.
    pub afo: bool,
    /// APF: advanced pending fault.
    pub apf: bool,
    /// IQE: invalidation-queue error (RW1C).
    pub iqe: bool,
    /// ICE: invalidation completion error (RW1C).
    pub ice: bool,
    /// ITE: invalidation time-out error (RW1C).
    pub ite: bool,
    /// PRO: page-request overflow.
    pub pro: bool,
    /// FRI: index of the fault-recording register of the first pending fault.
    pub fri: u8,
    #[bits(16)]
    __: u16,
}

/// FECTL_REG and IECTL_REG share this layout (spec 11.4.4.4, 11.4.9.5).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct EventControl {
    #[bits(30)]
    __: u32,
    /// IP: interrupt pending (hardware-managed, read-only).
    pub ip: bool,
    /// IM: interrupt mask (set at reset).
    pub im: bool,
}

/// IQA_REG (spec 11.4.9.3).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Iqa {
    /// QS: the queue holds 2^(QS + 8) 128-bit slots (half as many 256-bit descriptors).
    #[bits(3)]
    pub qs: u8,
    #[bits(8)]
    __: u8,
    /// DW: 256-bit descriptors (scalable mode only).
    pub dw: bool,
    /// IQA: 4 KiB-aligned queue base, bits 63:12.
    #[bits(52)]
    pub iqa: u64,
}

impl Iqa {
    /// Queue base physical address.
    pub const fn base(&self) -> u64 {
        self.iqa() << 12
    }
    /// Number of descriptors in the queue for its descriptor width.
    pub const fn descriptor_count(&self) -> u32 {
        let slots = 1u32 << (self.qs() as u32 + 8);
        if self.dw() { slots / 2 } else { slots }
    }
    /// Size of one descriptor in bytes.
    pub const fn descriptor_size(&self) -> u32 {
        if self.dw() { 32 } else { 16 }
    }
}

/// IQERCD_REG (spec 11.4.9.7): which error the queue stopped on.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Iqercd {
    /// IQEI: invalidation-queue error information (1 = bad tail/DW combination, ... see spec).
    #[bits(4)]
    pub iqei: u8,
    #[bits(28)]
    __: u32,
    /// ITESID: source ID of the device-TLB invalidation that timed out.
    pub itesid: u16,
    /// ICESID: source ID of the device-TLB invalidation that completed in error.
    pub icesid: u16,
}

/// IRTA_REG (spec 11.4.10.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Irta {
    /// S: the table has 2^(S + 1) entries.
    #[bits(4)]
    pub s: u8,
    #[bits(7)]
    __: u8,
    /// EIME: extended interrupt mode (x2APIC, 32-bit destination IDs).
    pub eime: bool,
    /// IRTA: 4 KiB-aligned table base, bits 63:12.
    #[bits(52)]
    pub irta: u64,
}

impl Irta {
    /// Table base physical address.
    pub const fn base(&self) -> u64 {
        self.irta() << 12
    }
    /// Number of 128-bit entries.
    pub const fn entry_count(&self) -> u32 {
        1 << (self.s() as u32 + 1)
    }
}

/// IVA_REG (spec 11.4.8.2): the address of a page-selective IOTLB invalidation.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Iva {
    /// AM: the invalidation covers 2^AM pages, naturally aligned.
    #[bits(6)]
    pub am: u8,
    /// IH: invalidation hint: only leaf entries changed, paging-structure caches may stay.
    pub ih: bool,
    #[bits(5)]
    __: u8,
    /// ADDR: page address, bits 63:12.
    #[bits(52)]
    pub addr: u64,
}

/// IOTLB_REG (spec 11.4.8.1): register-based IOTLB invalidation.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct IotlbReg {
    #[bits(32)]
    __: u32,
    /// DID: domain for domain- and page-selective invalidation.
    pub did: u16,
    /// DW: drain writes.
    pub dw: bool,
    /// DR: drain reads.
    pub dr: bool,
    #[bits(7)]
    __: u8,
    /// IAIG: actual granularity the hardware performed.
    #[bits(2)]
    pub iaig: u8,
    #[bits(1)]
    __: u8,
    /// IIRG: requested granularity: 1 global, 2 domain, 3 page.
    #[bits(2)]
    pub iirg: u8,
    #[bits(1)]
    __: u8,
    /// IVT: invalidate IOTLB (set by software, cleared by hardware when done).
    pub ivt: bool,
}

/// FRCD high qword flags (spec 11.4.11): F is bit 63 of the high half (bit 127 of the record).
pub const FRCD_HI_F: u64 = 1 << 63;

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_flts() -> (Cap, Ecap) {
        (
            Cap::from_bits(0x01d2008c222f0606),
            Ecap::from_bits(0x0000880000f00f4a),
        )
    }

    #[test]
    fn layout_places_iva_and_frcd_from_cap_ecap() {
        let (cap, ecap) = qemu_flts();
        let regs = register_layout(cap, ecap);
        let find = |name: &str| regs.iter().find(|r| r.name == name).copied().unwrap();
        assert_eq!(find("IVA").offset, 0xf0);
        assert_eq!(find("IOTLB").offset, 0xf8);
        assert_eq!(find("FRCD0_LO").offset, 0x220);
        assert_eq!(find("FRCD0_HI").offset, 0x228);
        assert_eq!(find("FECTL").reset, 0x8000_0000);
        assert_eq!(find("IECTL").reset, 0x8000_0000);
        assert_eq!(find("CAP").reset, cap.into_bits());
        // No two registers overlap and all fit the MMIO window.
        let mut spans: Vec<_> = regs
            .iter()
            .map(|r| (r.offset, r.offset + r.size as u64))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{w:?} overlap");
        }
        assert!(spans.last().unwrap().1 <= MMIO_SIZE);
    }

    #[test]
    fn write_semantics_follow_the_masks() {
        let (cap, ecap) = qemu_flts();
        let regs = register_layout(cap, ecap);
        let fsts = regs.iter().find(|r| r.name == "FSTS").unwrap();
        // PFO|PPF|IQE set; guest writes 1 to PFO and PPF: PFO clears, PPF (RO) stays.
        assert_eq!(fsts.apply_write(0x13, 0x3), 0x12);
        let gcmd = regs.iter().find(|r| r.name == "GCMD").unwrap();
        assert_eq!(gcmd.read_value(gcmd.apply_write(0, 0x8000_0000)), 0);
        let iqa = regs.iter().find(|r| r.name == "IQA").unwrap();
        assert_eq!(iqa.apply_write(0, u64::MAX), 0xffff_ffff_ffff_f807);
        // Without scalable mode DW is reserved.
        let legacy = register_layout(
            Cap::from_bits(0x00d2008c222f0606),
            Ecap::from_bits(0xf00f4a),
        );
        let iqa = legacy.iter().find(|r| r.name == "IQA").unwrap();
        assert_eq!(iqa.apply_write(0, u64::MAX), 0xffff_ffff_ffff_f007);
    }

    #[test]
    fn page_request_registers_exist_only_with_prs() {
        let (cap, ecap) = qemu_flts();
        let regs = register_layout(cap, ecap);
        assert!(!regs.iter().any(|r| r.offset == offset::PQH));
        let regs = register_layout(cap, ecap.with_prs(true));
        let find = |name: &str| regs.iter().find(|r| r.name == name).copied().unwrap();
        let expect = [
            ("PQH", 0xc0, 8),
            ("PQT", 0xc8, 8),
            ("PQA", 0xd0, 8),
            ("PRS", 0xdc, 4),
            ("PECTL", 0xe0, 4),
            ("PEDATA", 0xe4, 4),
            ("PEADDR", 0xe8, 4),
            ("PEUADDR", 0xec, 4),
        ];
        for (name, off, size) in expect {
            assert_eq!((find(name).offset, find(name).size), (off, size), "{name}");
        }
        // PQH/PQT keep only bits 18:5; PQA keeps base and PQS.
        assert_eq!(find("PQH").apply_write(0, u64::MAX), 0x7ffe0);
        assert_eq!(find("PQT").apply_write(0, u64::MAX), 0x7ffe0);
        assert_eq!(find("PQA").apply_write(0, u64::MAX), 0xffff_ffff_ffff_f007);
        // PRS: PPR and PRO are RW1C, nothing else sticks.
        let prs = find("PRS");
        assert_eq!(prs.apply_write(0x3, 0x1), 0x2);
        assert_eq!(prs.apply_write(0x3, 0x2), 0x1);
        assert_eq!(prs.apply_write(0, u64::MAX), 0);
        // PECTL: IM set at reset and RW, IP read-only.
        let pectl = find("PECTL");
        assert_eq!(pectl.reset, 0x8000_0000);
        assert_eq!(pectl.apply_write(0x4000_0000, 0), 0x4000_0000);
        assert_eq!(pectl.apply_write(0, 0xc000_0000), 0x8000_0000);
        // Without EIM the upper address is reserved.
        assert_eq!(find("PEUADDR").apply_write(0, u64::MAX), 0);
        // The page request registers sit between IRTA and IVA without overlapping either.
        let mut spans: Vec<_> = regs
            .iter()
            .map(|r| (r.offset, r.offset + r.size as u64))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{w:?} overlap");
        }
        assert_eq!(find("PEADDR").apply_write(0, u64::MAX), 0xffff_fffc);
    }

    #[test]
    fn typed_views_decode_fields() {
        let rt = Rtaddr::from_bits(0x1234_5400);
        assert_eq!(rt.ttm(), TranslationTableMode::Scalable);
        assert_eq!(rt.root_table_address(), 0x1234_5000);
        let iqa = Iqa::from_bits(0x7654_3000 | 1 << 11 | 1);
        assert_eq!(iqa.base(), 0x7654_3000);
        assert_eq!(iqa.descriptor_count(), 256);
        assert_eq!(iqa.descriptor_size(), 32);
        let gcmd = Gcmd::from_bits(0x8000_0000 | 1 << 26);
        assert!(gcmd.te() && gcmd.qie() && !gcmd.srtp());
        let ccmd = Ccmd::from_bits(1 << 63 | 3 << 61 | 0x0008 << 16 | 5);
        assert!(ccmd.icc());
        assert_eq!((ccmd.cirg(), ccmd.sid(), ccmd.did()), (3, 8, 5));
        let reg = IotlbReg::from_bits(1 << 63 | 2 << 60 | 5 << 32);
        assert!(reg.ivt());
        assert_eq!((reg.iirg(), reg.did()), (2, 5));
        let irta = Irta::from_bits(0x5000 | 1 << 11 | 7);
        assert_eq!(
            (irta.base(), irta.entry_count(), irta.eime()),
            (0x5000, 256, true)
        );
        let iva = Iva::from_bits(0xabc000 | 1 << 6 | 3);
        assert_eq!((iva.addr() << 12, iva.ih(), iva.am()), (0xabc000, true, 3));
    }
}
