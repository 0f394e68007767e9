//! Capability (CAP_REG, offset 0x08) and extended capability (ECAP_REG, offset 0x10)
//! registers: VT-d spec 11.4.2 and 11.4.3.
//!
//! Both are read-only to the guest; their value is fixed by the unit's
//! [`VtdConfig`](crate::VtdConfig). Decoding any 64-bit value is total: reserved bits land in
//! padding fields and never make a decode fail.

use bitfield_struct::bitfield;

/// CAP_REG (VT-d spec 11.4.2): what the remapping hardware supports.
///
/// Example: the unit a Linux 6.12 guest saw with QEMU's `x-scalable-mode=on,x-flts=on`:
/// ```
/// use vtd_regs::Cap;
/// let cap = Cap::from_bits(0x01d2008c222f0606);
/// assert_eq!(cap.domain_count(), 65536);
/// assert_eq!(cap.mgaw(), 47);
/// assert_eq!(cap.fault_recording_offset(), 0x220);
/// assert!(cap.fl1gp() && cap.psi());
/// ```
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Cap {
    /// ND: number of domains supported is 2^(4 + 2*ND).
    #[bits(3)]
    pub nd: u8,
    /// AFL: advanced fault logging.
    pub afl: bool,
    /// RWBF: required write-buffer flushing.
    pub rwbf: bool,
    /// PLMR: protected low-memory region.
    pub plmr: bool,
    /// PHMR: protected high-memory region.
    pub phmr: bool,
    /// CM: caching mode; not-present and erroneous entries may be cached, so software must
    /// invalidate after making an entry present (spec 6.1).
    pub cm: bool,
    /// SAGAW: supported adjusted guest address widths for second stage; bit 1 = 39-bit
    /// (3-level), bit 2 = 48-bit (4-level), bit 3 = 57-bit (5-level).
    #[bits(5)]
    pub sagaw: u8,
    #[bits(3)]
    __: u8,
    /// MGAW: maximum guest address width minus one.
    #[bits(6)]
    pub mgaw: u8,
    /// ZLR: zero-length DMA reads are supported.
    pub zlr: bool,
    #[bits(1)]
    __: u8,
    /// FRO: fault-recording register offset in 16-byte units.
    #[bits(10)]
    pub fro: u16,
    /// SLLPS: second-stage large page support; bit 0 = 2 MiB, bit 1 = 1 GiB.
    #[bits(4)]
    pub sllps: u8,
    #[bits(1)]
    __: u8,
    /// PSI: page-selective invalidation (register-based and queued IOTLB).
    pub psi: bool,
    /// NFR: number of fault-recording registers minus one.
    pub nfr: u8,
    /// MAMV: maximum address-mask value for page-selective invalidation.
    #[bits(6)]
    pub mamv: u8,
    /// DWD: write draining.
    pub dwd: bool,
    /// DRD: read draining.
    pub drd: bool,
    /// FL1GP: first-stage 1 GiB pages.
    pub fl1gp: bool,
    #[bits(2)]
    __: u8,
    /// PI: posted interrupts.
    pub pi: bool,
    /// FL5LP: first-stage 5-level paging.
    pub fl5lp: bool,
    /// ECMDS: enhanced command support.
    pub ecmds: bool,
    /// ESIRTPS: enhanced SIRTP: setting SIRTP also invalidates the interrupt entry cache.
    pub esirtps: bool,
    /// ESRTPS: enhanced SRTP: setting SRTP also invalidates context, PASID and IOTLB caches.
    pub esrtps: bool,
}

impl Cap {
    /// Number of domain identifiers the unit supports (spec 11.4.2, ND).
    pub const fn domain_count(&self) -> u32 {
        1 << (4 + 2 * self.nd() as u32)
    }

    /// Byte offset of the first fault-recording register from the unit's base.
    pub const fn fault_recording_offset(&self) -> u64 {
        self.fro() as u64 * 16
    }

    /// Number of fault-recording registers (NFR + 1).
    pub const fn fault_record_count(&self) -> u16 {
        self.nfr() as u16 + 1
    }

    /// Maximum guest address width in bits (MGAW + 1).
    pub const fn max_guest_address_width(&self) -> u8 {
        self.mgaw() + 1
    }

    /// Whether second-stage tables of `levels` (3, 4 or 5) levels are supported (SAGAW).
    pub const fn supports_second_stage_levels(&self, levels: u8) -> bool {
        match levels {
            3..=5 => self.sagaw() & (1 << (levels - 2)) != 0,
            _ => false,
        }
    }

    /// Whether second-stage leaves at `level` (2 = 2 MiB, 3 = 1 GiB) are supported (SLLPS).
    pub const fn supports_second_stage_large_page(&self, level: u8) -> bool {
        match level {
            2 | 3 => self.sllps() & (1 << (level - 2)) != 0,
            _ => false,
        }
    }
}

/// ECAP_REG (VT-d spec 11.4.3): extended capabilities.
///
/// ```
/// use vtd_regs::Ecap;
/// let ecap = Ecap::from_bits(0x0000880000f00f4a);
/// assert!(ecap.qi() && ecap.ir() && ecap.pt() && ecap.smts() && ecap.flts());
/// assert!(!ecap.slts() && !ecap.srs());
/// assert_eq!(ecap.iotlb_register_offset(), 0xf0);
/// ```
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Ecap {
    /// C: page-walk coherency.
    pub c: bool,
    /// QI: queued invalidation.
    pub qi: bool,
    /// DT: device-TLB (ATS).
    pub dt: bool,
    /// IR: interrupt remapping.
    pub ir: bool,
    /// EIM: extended interrupt mode (32-bit x2APIC destination IDs).
    pub eim: bool,
    #[bits(1)]
    __: u8,
    /// PT: pass-through translation type.
    pub pt: bool,
    /// SC: snoop control.
    pub sc: bool,
    /// IRO: IOTLB register offset (the IVA register) in 16-byte units.
    #[bits(10)]
    pub iro: u16,
    #[bits(2)]
    __: u8,
    /// MHMV: maximum handle-mask value for IEC index invalidation.
    #[bits(4)]
    pub mhmv: u8,
    #[bits(1)]
    __: u8,
    /// MTS: memory type support.
    pub mts: bool,
    /// NEST: nested translation (first stage over second stage).
    pub nest: bool,
    #[bits(2)]
    __: u8,
    /// PRS: page requests.
    pub prs: bool,
    /// ERS: execute requests.
    pub ers: bool,
    /// SRS: supervisor requests.
    pub srs: bool,
    #[bits(1)]
    __: u8,
    /// NWFS: no write flag (ATS).
    pub nwfs: bool,
    /// EAFS: extended accessed flag.
    pub eafs: bool,
    /// PSS: supported PASID width minus one.
    #[bits(5)]
    pub pss: u8,
    /// PASID: process address space IDs.
    pub pasid: bool,
    /// DIT: device-TLB invalidation throttling.
    pub dit: bool,
    /// PDS: page-request drain.
    pub pds: bool,
    /// SMTS: scalable-mode translation.
    pub smts: bool,
    /// VCS: virtual command.
    pub vcs: bool,
    /// SLADS: second-stage accessed/dirty.
    pub slads: bool,
    /// SLTS: second-stage translation in scalable mode.
    pub slts: bool,
    /// FLTS: first-stage translation in scalable mode.
    pub flts: bool,
    /// SMPWC: scalable-mode page-walk coherency.
    pub smpwc: bool,
    /// RPS: RID_PASID support.
    pub rps: bool,
    #[bits(1)]
    __: u8,
    /// PMS: performance monitoring.
    pub pms: bool,
    #[bits(12)]
    __: u16,
}

impl Ecap {
    /// Byte offset of the IVA register; the IOTLB invalidate register follows at +8.
    pub const fn iotlb_register_offset(&self) -> u64 {
        self.iro() as u64 * 16
    }

    /// Number of PASID bits supported (PSS + 1) when ECAP.PASID is set, else 0.
    pub const fn pasid_bits(&self) -> u8 {
        if self.pasid() { self.pss() + 1 } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unit a Linux 6.12 guest reported as `cap 1d2008c222f0606 ecap 880000f00f4a`
    /// (QEMU 10.0.2, x-scalable-mode=on,x-flts=on), decoded field by field.
    #[test]
    fn decodes_the_unit_linux_saw() {
        let cap = Cap::from_bits(0x1d2008c222f0606);
        assert_eq!(cap.nd(), 6);
        assert_eq!(cap.domain_count(), 65536);
        assert!(!cap.afl() && !cap.rwbf() && !cap.plmr() && !cap.phmr() && !cap.cm());
        assert_eq!(cap.sagaw(), 0b00110);
        assert!(cap.supports_second_stage_levels(3));
        assert!(cap.supports_second_stage_levels(4));
        assert!(!cap.supports_second_stage_levels(5));
        assert_eq!(cap.mgaw(), 47);
        assert_eq!(cap.max_guest_address_width(), 48);
        assert!(!cap.zlr());
        assert_eq!(cap.fro(), 34);
        assert_eq!(cap.fault_recording_offset(), 0x220);
        assert_eq!(cap.sllps(), 0b11);
        assert!(cap.supports_second_stage_large_page(2));
        assert!(cap.supports_second_stage_large_page(3));
        assert!(cap.psi());
        assert_eq!(cap.nfr(), 0);
        assert_eq!(cap.fault_record_count(), 1);
        assert_eq!(cap.mamv(), 18);
        assert!(cap.dwd() && cap.drd() && cap.fl1gp());
        assert!(!cap.pi() && !cap.fl5lp() && !cap.ecmds() && !cap.esirtps() && !cap.esrtps());
        assert_eq!(cap.into_bits(), 0x1d2008c222f0606);

        let ecap = Ecap::from_bits(0x880000f00f4a);
        assert!(!ecap.c() && ecap.qi() && !ecap.dt() && ecap.ir() && !ecap.eim());
        assert!(ecap.pt() && !ecap.sc());
        assert_eq!(ecap.iro(), 15);
        assert_eq!(ecap.iotlb_register_offset(), 0xf0);
        assert_eq!(ecap.mhmv(), 15);
        assert!(!ecap.nest() && !ecap.prs() && !ecap.ers() && !ecap.srs());
        assert!(!ecap.pasid());
        assert_eq!(ecap.pasid_bits(), 0);
        assert!(ecap.smts() && !ecap.slts() && ecap.flts() && !ecap.smpwc());
        assert_eq!(ecap.into_bits(), 0x880000f00f4a);
    }

    #[test]
    fn every_value_round_trips() {
        for v in [0u64, u64::MAX, 0x8000_0000_0000_0001, 0x0123_4567_89ab_cdef] {
            let cap = Cap::from_bits(v);
            let _ = (cap.domain_count(), cap.fault_recording_offset());
            let ecap = Ecap::from_bits(v);
            let _ = ecap.pasid_bits();
        }
        // Named fields cover every defined bit: a value with only defined bits survives.
        let defined = Cap::new()
            .with_nd(7)
            .with_sagaw(0x1f)
            .with_mgaw(0x3f)
            .with_fro(0x3ff)
            .with_esrtps(true);
        assert_eq!(Cap::from_bits(defined.into_bits()), defined);
    }
}
