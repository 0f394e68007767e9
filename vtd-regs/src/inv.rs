//! Queued-invalidation descriptors (VT-d spec 6.5.2): typed decode and encode of all nine
//! descriptor types, in 128-bit (IQA.DW = 0) and 256-bit (IQA.DW = 1) queues.
//!
//! # Sources of the field positions
//! Positions and reserved bits follow the spec's descriptor figures (6.5.2.1-6.5.2.8, 7.10),
//! checked against Linux 6.12 (`drivers/iommu/intel/iommu.h`, the `QI_*` macros), QEMU 10
//! (`hw/i386/intel_iommu_internal.h`, the `VTD_INV_DESC_*_RSVD*` masks) and VirtualBox's
//! spec-derived `iommu-intel.h`. Where QEMU is stricter than the spec the spec wins, and the
//! difference is noted at the mask in question.
//!
//! # What decoding checks
//! Only what the descriptor itself can say: a known type (`Type[6:4]` in bits 11:9 must be zero,
//! so types above 0xF are unknown), reserved bits clear, a defined granularity, PASID-capable
//! types (6-9) only in a 256-bit queue, and in a 256-bit queue the upper 128 bits zero (no
//! type defines them since VT-d 4.0 removed page-response private data). Capability-dependent
//! checks (CAP.PSI, CAP.MAMV, ECAP.MHMV, ECAP.DT, ECAP.PDS, ...) belong to the unit.
//!
//! Fields that the hardware *ignores* at a granularity (for example the DID of a global
//! context-cache invalidation) are not reserved: a guest may leave anything there. They are
//! kept verbatim in [`IgnoredBits`] so that `encode(decode(x)) == x` for every valid `x`.

use core::fmt;
use core::ops::RangeInclusive;

/// Descriptor type codes, `Type[6:0]` (VT-d spec 6.5.2, Table "Invalidation Descriptor Types").
pub mod desc_type {
    /// Context-cache invalidate descriptor (spec 6.5.2.1).
    pub const CONTEXT_CACHE: u8 = 0x1;
    /// IOTLB invalidate descriptor (spec 6.5.2.3).
    pub const IOTLB: u8 = 0x2;
    /// Device-TLB invalidate descriptor (spec 6.5.2.5).
    pub const DEVICE_TLB: u8 = 0x3;
    /// Interrupt-entry-cache invalidate descriptor (spec 6.5.2.7).
    pub const IEC: u8 = 0x4;
    /// Invalidation wait descriptor (spec 6.5.2.8).
    pub const WAIT: u8 = 0x5;
    /// PASID-based IOTLB invalidate descriptor (spec 6.5.2.4).
    pub const PASID_IOTLB: u8 = 0x6;
    /// PASID-cache invalidate descriptor (spec 6.5.2.2).
    pub const PASID_CACHE: u8 = 0x7;
    /// PASID-based device-TLB invalidate descriptor (spec 6.5.2.6).
    pub const PASID_DEVICE_TLB: u8 = 0x8;
    /// Page-group response descriptor (spec 7.10).
    pub const PAGE_GROUP_RESPONSE: u8 = 0x9;
}

/// Width of one queue entry, selected by IQA_REG.DW (VT-d spec 10.4.23).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DescWidth {
    /// IQA.DW = 0: 128-bit descriptors (legacy queues).
    Bits128,
    /// IQA.DW = 1: 256-bit descriptors (needs ECAP.SMTS; what Linux uses on scalable units).
    Bits256,
}

impl DescWidth {
    /// The width selected by the IQA_REG.DW bit.
    pub const fn from_iqa_dw(dw: bool) -> Self {
        if dw { Self::Bits256 } else { Self::Bits128 }
    }

    /// Bytes one descriptor occupies in the queue.
    pub const fn bytes(self) -> usize {
        match self {
            Self::Bits128 => 16,
            Self::Bits256 => 32,
        }
    }

    /// Number of qwords one descriptor occupies.
    pub const fn qwords(self) -> usize {
        self.bytes() / 8
    }
}

/// The raw qwords of one descriptor as fetched from the queue (little-endian qwords, qword 0
/// first). In 128-bit mode only qwords 0 and 1 belong to the descriptor; [`InvDesc::decode`]
/// ignores the other two and [`InvDesc::encode`] leaves them zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RawDesc(pub [u64; 4]);

impl RawDesc {
    /// A descriptor whose first 128 bits are `lo` (bits 63:0) and `hi` (bits 127:64).
    pub const fn from_128(lo: u64, hi: u64) -> Self {
        Self([lo, hi, 0, 0])
    }

    /// The descriptor in `bytes` as read from guest memory: 16 bytes for a 128-bit entry, 32
    /// for a 256-bit one; `None` for any other length.
    pub fn from_le_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 16 && bytes.len() != 32 {
            return None;
        }
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(chunk);
            *word = u64::from_le_bytes(le);
        }
        Some(Self(words))
    }

    /// The 7-bit descriptor type, `Type[3:0]` from bits 3:0 and `Type[6:4]` from bits 11:9
    /// (VT-d spec 6.5.2).
    pub const fn type_code(&self) -> u8 {
        ((self.0[0] & 0xf) | (((self.0[0] >> 9) & 0x7) << 4)) as u8
    }
}

/// Why a descriptor is invalid: each of these makes the unit report an invalidation-queue
/// error (FSTS.IQE, VT-d spec 6.5.2.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DescError {
    /// `Type[6:0]` is not one of the nine defined descriptor types.
    #[error("unknown invalidation descriptor type {0:#x}")]
    UnknownType(u8),
    /// A PASID-granular type (0x6-0x9) in a 128-bit queue, which only legacy-mode software
    /// uses (QEMU rejects these too).
    #[error("descriptor type {0:#x} needs a 256-bit invalidation queue")]
    NeedsWideQueue(u8),
    /// Reserved bits are set in qword `qword` (2 and 3 are the upper half of a 256-bit entry).
    #[error("descriptor type {desc_type:#x}: reserved bits {bits:#x} set in qword {qword}")]
    ReservedBits {
        /// The descriptor type.
        desc_type: u8,
        /// Which qword (0-3).
        qword: usize,
        /// The offending bits.
        bits: u64,
    },
    /// The granularity field holds an undefined value.
    #[error("descriptor type {desc_type:#x}: invalid granularity {granularity}")]
    InvalidGranularity {
        /// The descriptor type.
        desc_type: u8,
        /// The granularity value found.
        granularity: u8,
    },
    /// Encoding only: a field of the typed descriptor does not fit its slot (e.g. a PASID
    /// above 20 bits, an unaligned address, ignored bits outside the ignorable fields).
    #[error("descriptor type {desc_type:#x}: field {field} = {value:#x} does not fit")]
    FieldOutOfRange {
        /// The descriptor type.
        desc_type: u8,
        /// The field's name.
        field: &'static str,
        /// The value given.
        value: u64,
    },
}

/// Bits of qwords 0 and 1 that the hardware ignores at the descriptor's granularity (e.g. the
/// address qword of a domain-selective IOTLB invalidation), kept so that a decoded descriptor
/// encodes back to the same bits. Software normally leaves them zero ([`Default`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IgnoredBits {
    /// Ignored bits of qword 0, in place.
    pub qw0: u64,
    /// Ignored bits of qword 1, in place.
    pub qw1: u64,
}

/// The range of addresses an address/AM pair selects: 2^AM 4 KiB pages, `addr` aligned down to
/// that size (VT-d spec 6.5.2.3: "the hardware ignores the low AM bits of `ADDR[63:12]`").
pub const fn page_range(addr: u64, am: u8) -> RangeInclusive<u64> {
    let order = 12 + am as u32;
    if order >= 64 {
        return 0..=u64::MAX;
    }
    let mask = (1u64 << order) - 1;
    (addr & !mask)..=(addr | mask)
}

/// The range a device-TLB invalidation selects (VT-d spec 6.5.2.5 and PCIe ATS "Invalidate
/// Request" size encoding): with S = 0 the 4 KiB page at `addr`; with S = 1 the size is
/// 8 KiB << (number of consecutive 1 bits of ADDR from bit 12 up), aligned to that size.
pub const fn device_tlb_range(addr: u64, size: bool) -> RangeInclusive<u64> {
    let order = if size {
        13 + (addr >> 12).trailing_ones()
    } else {
        12
    };
    if order >= 64 {
        return 0..=u64::MAX;
    }
    let mask = (1u64 << order) - 1;
    (addr & !mask)..=(addr | mask)
}

/// The interrupt indices an index-selective IEC invalidation selects: 2^IM entries, `index`
/// aligned down to that count (VT-d spec 6.5.2.7).
pub const fn interrupt_index_range(index: u16, im: u8) -> RangeInclusive<u32> {
    let count_mask = if im >= 16 { 0xffff } else { (1u32 << im) - 1 };
    let start = index as u32 & !count_mask;
    start..=(start | count_mask)
}

/// Scope of a context-cache invalidation, field G in bits 5:4 (VT-d spec 6.5.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContextCacheGranularity {
    /// G = 1: every context-cache entry.
    Global,
    /// G = 2: entries tagged with domain `did` (bits 31:16).
    Domain {
        /// Domain ID.
        did: u16,
    },
    /// G = 3: entries of requester `sid` (bits 47:32) in domain `did`, with function mask `fm`
    /// (bits 49:48: 0 none, 1/2/3 ignore SID bit 2 / bits 2:1 / bits 2:0).
    Device {
        /// Domain ID.
        did: u16,
        /// Source ID (bus/device/function).
        sid: u16,
        /// Function mask (2 bits).
        fm: u8,
    },
}

/// Context-cache invalidate descriptor, type 0x1 (VT-d spec 6.5.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContextCacheInv {
    /// Which entries to invalidate.
    pub granularity: ContextCacheGranularity,
    /// Fields the granularity makes the hardware ignore.
    pub ignored: IgnoredBits,
}

/// Scope of an IOTLB invalidation, field G in bits 5:4 (VT-d spec 6.5.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IotlbGranularity {
    /// G = 1: every IOTLB entry (and paging-structure cache entry).
    Global,
    /// G = 2: entries of domain `did`.
    Domain {
        /// Domain ID.
        did: u16,
    },
    /// G = 3: 2^`am` pages at `addr` in domain `did`.
    Page {
        /// Domain ID.
        did: u16,
        /// ADDR (qword 1 bits 63:12), 4 KiB aligned.
        addr: u64,
        /// Address mask AM (qword 1 bits 5:0): invalidate 2^AM pages.
        am: u8,
        /// Invalidation hint IH (qword 1 bit 6): only leaf entries changed, so
        /// paging-structure caches may be kept.
        ih: bool,
    },
}

/// IOTLB invalidate descriptor, type 0x2 (VT-d spec 6.5.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IotlbInv {
    /// Which entries to invalidate.
    pub granularity: IotlbGranularity,
    /// DR (bit 7): drain pending DMA reads first (CAP.DRD).
    pub drain_read: bool,
    /// DW (bit 6): drain pending DMA writes first (CAP.DWD).
    pub drain_write: bool,
    /// Fields the granularity makes the hardware ignore.
    pub ignored: IgnoredBits,
}

/// Device-TLB invalidate descriptor, type 0x3 (VT-d spec 6.5.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceTlbInv {
    /// SID (bits 47:32): the endpoint whose device TLB is invalidated.
    pub sid: u16,
    /// PFSID (bits 15:12 = `PFSID[3:0]`, bits 63:52 = `PFSID[15:4]`): source ID of the physical
    /// function, for SR-IOV virtual functions.
    pub pfsid: u16,
    /// QDEP / MIP (bits 20:16): the device's invalidate queue depth (5 bits).
    pub qdep: u8,
    /// ADDR (qword 1 bits 63:12).
    pub addr: u64,
    /// S (qword 1 bit 0): the range is encoded in ADDR's low bits ([`device_tlb_range`]).
    pub size: bool,
}

/// Scope of an interrupt-entry-cache invalidation, field G in bit 4 (VT-d spec 6.5.2.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IecGranularity {
    /// G = 0: every cached IRTE.
    Global,
    /// G = 1: 2^`im` IRTEs from `index` ([`interrupt_index_range`]).
    Index {
        /// IIDX (bits 47:32).
        index: u16,
        /// IM (bits 31:27), index mask (5 bits).
        im: u8,
    },
}

/// Interrupt-entry-cache invalidate descriptor, type 0x4 (VT-d spec 6.5.2.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IecInv {
    /// Which entries to invalidate.
    pub granularity: IecGranularity,
    /// Fields the granularity makes the hardware ignore.
    pub ignored: IgnoredBits,
}

/// The status write of a wait descriptor: `data` written as a dword to `addr`
/// (VT-d spec 6.5.2.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StatusWrite {
    /// STATUS ADDRESS (qword 1 bits 63:2), dword aligned.
    pub addr: u64,
    /// STATUS DATA (bits 63:32).
    pub data: u32,
}

/// Invalidation wait descriptor, type 0x5 (VT-d spec 6.5.2.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WaitInv {
    /// SW (bit 5) with its address and data.
    pub status_write: Option<StatusWrite>,
    /// IF (bit 4): set ICS.IWC and raise the invalidation-completion event.
    pub interrupt: bool,
    /// FN (bit 6): later descriptors wait until this one completes.
    pub fence: bool,
    /// PD (bit 7): drain page requests first (needs ECAP.PDS; QEMU treats it as reserved).
    pub page_drain: bool,
    /// Status data and address when SW is 0.
    pub ignored: IgnoredBits,
}

/// Scope of a PASID-based IOTLB invalidation, field G in bits 5:4 (VT-d spec 6.5.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PasidIotlbGranularity {
    /// G = 2: every entry of the PASID in the domain.
    AllInPasid,
    /// G = 3: 2^`am` pages at `addr`.
    Page {
        /// ADDR (qword 1 bits 63:12), 4 KiB aligned.
        addr: u64,
        /// AM (qword 1 bits 5:0).
        am: u8,
        /// IH (qword 1 bit 6): only leaf entries changed.
        ih: bool,
    },
}

/// PASID-based IOTLB invalidate descriptor, type 0x6 (VT-d spec 6.5.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PasidIotlbInv {
    /// DID (bits 31:16).
    pub did: u16,
    /// PASID (bits 51:32), 20 bits.
    pub pasid: u32,
    /// Which entries to invalidate.
    pub granularity: PasidIotlbGranularity,
    /// Fields the granularity makes the hardware ignore.
    pub ignored: IgnoredBits,
}

/// Scope of a PASID-cache invalidation, field G in bits 5:4 (VT-d spec 6.5.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PasidCacheGranularity {
    /// G = 0: every PASID-cache entry of the domain.
    Domain,
    /// G = 1: the entry of `pasid` in the domain.
    Pasid {
        /// PASID (bits 51:32), 20 bits.
        pasid: u32,
    },
    /// G = 3: every PASID-cache entry (the DID is ignored).
    Global,
}

/// PASID-cache invalidate descriptor, type 0x7 (VT-d spec 6.5.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PasidCacheInv {
    /// DID (bits 31:16); ignored by the hardware at global granularity.
    pub did: u16,
    /// Which entries to invalidate.
    pub granularity: PasidCacheGranularity,
    /// Fields the granularity makes the hardware ignore.
    pub ignored: IgnoredBits,
}

/// PASID-based device-TLB invalidate descriptor, type 0x8 (VT-d spec 6.5.2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PasidDeviceTlbInv {
    /// SID (bits 31:16).
    pub sid: u16,
    /// PFSID (bits 15:12 = `PFSID[3:0]`, bits 63:52 = `PFSID[15:4]`).
    pub pfsid: u16,
    /// PASID (bits 51:32), 20 bits.
    pub pasid: u32,
    /// QDEP / MIP (bits 8:4), 5 bits.
    pub qdep: u8,
    /// ADDR (qword 1 bits 63:12).
    pub addr: u64,
    /// S (qword 1 bit 11): the range is encoded in ADDR's low bits ([`device_tlb_range`]).
    pub size: bool,
    /// G (qword 1 bit 0): invalidate the address for every PASID of the device.
    pub global: bool,
}

/// Page-group response descriptor, type 0x9 (VT-d spec 7.10): software's answer to a page
/// request group. VT-d 4.0 removed the private-data fields (PDP, qwords 2-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageGroupResponse {
    /// RID (bits 31:16): requester that sent the page request.
    pub rid: u16,
    /// PASID (bits 51:32) when PP (bit 4) is set.
    pub pasid: Option<u32>,
    /// Response code (bits 15:12): 0 success, 1 invalid request, 0xF response failure.
    pub response_code: u8,
    /// PRGI (qword 1 bits 11:3): page request group index, 9 bits.
    pub prg_index: u16,
    /// LPIG (qword 1 bit 2): last page in group.
    pub last_in_group: bool,
    /// The PASID field when PP is 0.
    pub ignored: IgnoredBits,
}

/// One decoded invalidation descriptor (VT-d spec 6.5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvDesc {
    /// Type 0x1.
    ContextCache(ContextCacheInv),
    /// Type 0x2.
    Iotlb(IotlbInv),
    /// Type 0x3.
    DeviceTlb(DeviceTlbInv),
    /// Type 0x4.
    Iec(IecInv),
    /// Type 0x5.
    Wait(WaitInv),
    /// Type 0x6.
    PasidIotlb(PasidIotlbInv),
    /// Type 0x7.
    PasidCache(PasidCacheInv),
    /// Type 0x8.
    PasidDeviceTlb(PasidDeviceTlbInv),
    /// Type 0x9.
    PageGroupResponse(PageGroupResponse),
}

/// Reserved bits of qwords 0 and 1 per type, excluding the type bits (VT-d spec 6.5.2.x
/// figures; QEMU's `VTD_INV_DESC_*_RSVD*` agree except where noted).
const fn reserved_masks(desc_type: u8) -> (u64, u64) {
    match desc_type {
        // 8:6, 15:12, 63:50 | all of qword 1.
        desc_type::CONTEXT_CACHE => (0x1c0 | 0xf000 | (!0 << 50), !0),
        // 8, 15:12, 63:32 | 11:7.
        desc_type::IOTLB => (0x100 | 0xf000 | (!0 << 32), 0xf80),
        // 8:4, 31:21, 51:48 | 11:1. QEMU (VTD_INV_DESC_DEVICE_IOTLB_RSVD_LO) also reserves
        // 15:12 and 63:52, which the spec (and Linux's QI_DEV_IOTLB_PFSID) use for PFSID.
        desc_type::DEVICE_TLB => (0x1f0 | 0xffe0_0000 | 0x000f_0000_0000_0000, 0xffe),
        // 8:5, 26:12, 63:48 | all of qword 1.
        desc_type::IEC => (0x1e0 | 0x07ff_f000 | (!0 << 48), !0),
        // 8, 31:12 | 1:0. QEMU (VTD_INV_DESC_WAIT_RSVD_LO) also reserves PD (bit 7) because
        // it does not implement ECAP.PDS; whether PD is allowed is the unit's decision.
        desc_type::WAIT => (0x100 | 0xffff_f000, 0x3),
        // 8:6, 15:12, 63:52 | 11:7.
        desc_type::PASID_IOTLB => (0x1c0 | 0xf000 | (!0 << 52), 0xf80),
        // 8:6, 15:12, 63:52 | all of qword 1.
        desc_type::PASID_CACHE => (0x1c0 | 0xf000 | (!0 << 52), !0),
        // Qword 0 is fully used | 10:1. QEMU (VTD_INV_DESC_PASID_DEVICE_IOTLB_RSVD_VAL0) also
        // reserves PFSID (15:12, 63:52), which the spec and Linux's QI_DEV_EIOTLB_PFSID use.
        desc_type::PASID_DEVICE_TLB => (0, 0x7fe),
        // 8:5 (PDP, bit 5, was removed in VT-d 4.0), 63:52 | 1:0, 63:12.
        desc_type::PAGE_GROUP_RESPONSE => (0x1e0 | (!0 << 52), 0x3 | (!0 << 12)),
        _ => (!0, !0),
    }
}

/// `width` bits of `value` from bit `shift`.
const fn field(value: u64, shift: u32, width: u32) -> u64 {
    (value >> shift) & ((1 << width) - 1)
}

/// Qword 0 with the type code in `Type[3:0]` and `Type[6:4]`.
const fn type_bits(desc_type: u8) -> u64 {
    (desc_type as u64 & 0xf) | (((desc_type as u64 >> 4) & 0x7) << 9)
}

const fn pfsid_from(qw0: u64) -> u16 {
    (field(qw0, 12, 4) | (field(qw0, 52, 12) << 4)) as u16
}

const fn pfsid_bits(pfsid: u16) -> u64 {
    ((pfsid as u64 & 0xf) << 12) | ((pfsid as u64 >> 4) << 52)
}

/// Field masks the ignored bits may occupy.
const CC_DID: u64 = 0xffff << 16;
const CC_SID_FM: u64 = 0x3_ffff << 32;
const DID: u64 = 0xffff << 16;
const PASID: u64 = 0xf_ffff << 32;
const ADDR_AM_IH: u64 = !0xfff | 0x7f;
const IEC_IM_IIDX: u64 = (0x1f << 27) | (0xffff << 32);
const WAIT_DATA: u64 = 0xffff_ffff << 32;
const WAIT_ADDR: u64 = !0x3;

/// Encoding-time range check.
const fn check_fits(
    desc_type: u8,
    field: &'static str,
    value: u64,
    max: u64,
) -> Result<(), DescError> {
    if value > max {
        Err(DescError::FieldOutOfRange {
            desc_type,
            field,
            value,
        })
    } else {
        Ok(())
    }
}

const fn check_aligned(
    desc_type: u8,
    field: &'static str,
    value: u64,
    align_mask: u64,
) -> Result<(), DescError> {
    if value & align_mask != 0 {
        Err(DescError::FieldOutOfRange {
            desc_type,
            field,
            value,
        })
    } else {
        Ok(())
    }
}

fn check_ignored(desc_type: u8, ignored: IgnoredBits, masks: (u64, u64)) -> Result<(), DescError> {
    check_aligned(desc_type, "ignored.qw0", ignored.qw0, !masks.0)?;
    check_aligned(desc_type, "ignored.qw1", ignored.qw1, !masks.1)
}

impl ContextCacheInv {
    /// Bits the hardware ignores at this granularity.
    const fn ignorable(&self) -> (u64, u64) {
        match self.granularity {
            ContextCacheGranularity::Global => (CC_DID | CC_SID_FM, 0),
            ContextCacheGranularity::Domain { .. } => (CC_SID_FM, 0),
            ContextCacheGranularity::Device { .. } => (0, 0),
        }
    }
}

impl IotlbInv {
    const fn ignorable(&self) -> (u64, u64) {
        match self.granularity {
            IotlbGranularity::Global => (DID, ADDR_AM_IH),
            IotlbGranularity::Domain { .. } => (0, ADDR_AM_IH),
            IotlbGranularity::Page { .. } => (0, 0),
        }
    }
}

impl IecInv {
    const fn ignorable(&self) -> (u64, u64) {
        match self.granularity {
            IecGranularity::Global => (IEC_IM_IIDX, 0),
            IecGranularity::Index { .. } => (0, 0),
        }
    }
}

impl WaitInv {
    const fn ignorable(&self) -> (u64, u64) {
        match self.status_write {
            None => (WAIT_DATA, WAIT_ADDR),
            Some(_) => (0, 0),
        }
    }
}

impl PasidIotlbInv {
    const fn ignorable(&self) -> (u64, u64) {
        match self.granularity {
            PasidIotlbGranularity::AllInPasid => (0, ADDR_AM_IH),
            PasidIotlbGranularity::Page { .. } => (0, 0),
        }
    }
}

impl PasidCacheInv {
    const fn ignorable(&self) -> (u64, u64) {
        match self.granularity {
            PasidCacheGranularity::Domain | PasidCacheGranularity::Global => (PASID, 0),
            PasidCacheGranularity::Pasid { .. } => (0, 0),
        }
    }
}

impl PageGroupResponse {
    const fn ignorable(&self) -> (u64, u64) {
        match self.pasid {
            None => (PASID, 0),
            Some(_) => (0, 0),
        }
    }
}

impl InvDesc {
    /// Decodes one descriptor fetched from a queue of width `width` (VT-d spec 6.5.2).
    ///
    /// Never panics; any 256-bit pattern either decodes or yields the reason the unit must
    /// report an invalidation-queue error.
    pub fn decode(raw: &RawDesc, width: DescWidth) -> Result<InvDesc, DescError> {
        let [qw0, qw1, qw2, qw3] = raw.0;
        let ty = raw.type_code();
        if !(desc_type::CONTEXT_CACHE..=desc_type::PAGE_GROUP_RESPONSE).contains(&ty) {
            return Err(DescError::UnknownType(ty));
        }
        if width == DescWidth::Bits128 && ty >= desc_type::PASID_IOTLB {
            return Err(DescError::NeedsWideQueue(ty));
        }
        let (rsvd0, rsvd1) = reserved_masks(ty);
        let mut qwords = [(0usize, qw0 & rsvd0), (1, qw1 & rsvd1), (2, 0), (3, 0)];
        if width == DescWidth::Bits256 {
            // No type defines bits 255:128 (QEMU checks them for every type it knows).
            qwords[2].1 = qw2;
            qwords[3].1 = qw3;
        }
        if let Some(&(qword, bits)) = qwords.iter().find(|(_, bits)| *bits != 0) {
            return Err(DescError::ReservedBits {
                desc_type: ty,
                qword,
                bits,
            });
        }
        let granularity = field(qw0, 4, 2) as u8;
        let bad_granularity = DescError::InvalidGranularity {
            desc_type: ty,
            granularity,
        };
        let did = field(qw0, 16, 16) as u16;
        let pasid = field(qw0, 32, 20) as u32;
        let am = field(qw1, 0, 6) as u8;
        let ih = qw1 & (1 << 6) != 0;
        let addr = qw1 & !0xfff;
        // Ignored bits are filled in from the masks of the decoded granularity below.
        let none = IgnoredBits::default();
        let keep = |masks: (u64, u64)| IgnoredBits {
            qw0: qw0 & masks.0,
            qw1: qw1 & masks.1,
        };

        Ok(match ty {
            desc_type::CONTEXT_CACHE => {
                let granularity = match granularity {
                    1 => ContextCacheGranularity::Global,
                    2 => ContextCacheGranularity::Domain { did },
                    3 => ContextCacheGranularity::Device {
                        did,
                        sid: field(qw0, 32, 16) as u16,
                        fm: field(qw0, 48, 2) as u8,
                    },
                    _ => return Err(bad_granularity),
                };
                let mut inv = ContextCacheInv {
                    granularity,
                    ignored: none,
                };
                inv.ignored = keep(inv.ignorable());
                InvDesc::ContextCache(inv)
            }
            desc_type::IOTLB => {
                let granularity = match granularity {
                    1 => IotlbGranularity::Global,
                    2 => IotlbGranularity::Domain { did },
                    3 => IotlbGranularity::Page { did, addr, am, ih },
                    _ => return Err(bad_granularity),
                };
                let mut inv = IotlbInv {
                    granularity,
                    drain_read: qw0 & (1 << 7) != 0,
                    drain_write: qw0 & (1 << 6) != 0,
                    ignored: none,
                };
                inv.ignored = keep(inv.ignorable());
                InvDesc::Iotlb(inv)
            }
            desc_type::DEVICE_TLB => InvDesc::DeviceTlb(DeviceTlbInv {
                sid: field(qw0, 32, 16) as u16,
                pfsid: pfsid_from(qw0),
                qdep: field(qw0, 16, 5) as u8,
                addr,
                size: qw1 & 1 != 0,
            }),
            desc_type::IEC => {
                let granularity = if qw0 & (1 << 4) == 0 {
                    IecGranularity::Global
                } else {
                    IecGranularity::Index {
                        index: field(qw0, 32, 16) as u16,
                        im: field(qw0, 27, 5) as u8,
                    }
                };
                let mut inv = IecInv {
                    granularity,
                    ignored: none,
                };
                inv.ignored = keep(inv.ignorable());
                InvDesc::Iec(inv)
            }
            desc_type::WAIT => {
                let status_write = (qw0 & (1 << 5) != 0).then_some(StatusWrite {
                    addr: qw1 & WAIT_ADDR,
                    data: (qw0 >> 32) as u32,
                });
                let mut inv = WaitInv {
                    status_write,
                    interrupt: qw0 & (1 << 4) != 0,
                    fence: qw0 & (1 << 6) != 0,
                    page_drain: qw0 & (1 << 7) != 0,
                    ignored: none,
                };
                inv.ignored = keep(inv.ignorable());
                InvDesc::Wait(inv)
            }
            desc_type::PASID_IOTLB => {
                let granularity = match granularity {
                    2 => PasidIotlbGranularity::AllInPasid,
                    3 => PasidIotlbGranularity::Page { addr, am, ih },
                    _ => return Err(bad_granularity),
                };
                let mut inv = PasidIotlbInv {
                    did,
                    pasid,
                    granularity,
                    ignored: none,
                };
                inv.ignored = keep(inv.ignorable());
                InvDesc::PasidIotlb(inv)
            }
            desc_type::PASID_CACHE => {
                let granularity = match granularity {
                    0 => PasidCacheGranularity::Domain,
                    1 => PasidCacheGranularity::Pasid { pasid },
                    3 => PasidCacheGranularity::Global,
                    _ => return Err(bad_granularity),
                };
                let mut inv = PasidCacheInv {
                    did,
                    granularity,
                    ignored: none,
                };
                inv.ignored = keep(inv.ignorable());
                InvDesc::PasidCache(inv)
            }
            desc_type::PASID_DEVICE_TLB => InvDesc::PasidDeviceTlb(PasidDeviceTlbInv {
                sid: field(qw0, 16, 16) as u16,
                pfsid: pfsid_from(qw0),
                pasid,
                qdep: field(qw0, 4, 5) as u8,
                addr,
                size: qw1 & (1 << 11) != 0,
                global: qw1 & 1 != 0,
            }),
            _ => {
                let mut response = PageGroupResponse {
                    rid: did,
                    pasid: (qw0 & (1 << 4) != 0).then_some(pasid),
                    response_code: field(qw0, 12, 4) as u8,
                    prg_index: field(qw1, 3, 9) as u16,
                    last_in_group: qw1 & (1 << 2) != 0,
                    ignored: none,
                };
                response.ignored = keep(response.ignorable());
                InvDesc::PageGroupResponse(response)
            }
        })
    }

    /// Encodes the descriptor for a queue of width `width`; the inverse of
    /// [`InvDesc::decode`].
    ///
    /// Fails with [`DescError::NeedsWideQueue`] for types 0x6-0x9 in a 128-bit queue, and with
    /// [`DescError::FieldOutOfRange`] when a field does not fit its slot.
    pub fn encode(&self, width: DescWidth) -> Result<RawDesc, DescError> {
        let ty = self.type_code();
        if width == DescWidth::Bits128 && ty >= desc_type::PASID_IOTLB {
            return Err(DescError::NeedsWideQueue(ty));
        }
        let mut qw0 = type_bits(ty);
        let mut qw1 = 0u64;
        let (ignored, masks) = match self {
            InvDesc::ContextCache(inv) => {
                match inv.granularity {
                    ContextCacheGranularity::Global => qw0 |= 1 << 4,
                    ContextCacheGranularity::Domain { did } => {
                        qw0 |= (2 << 4) | ((did as u64) << 16)
                    }
                    ContextCacheGranularity::Device { did, sid, fm } => {
                        check_fits(ty, "fm", fm as u64, 0x3)?;
                        qw0 |= (3 << 4)
                            | ((did as u64) << 16)
                            | ((sid as u64) << 32)
                            | ((fm as u64) << 48);
                    }
                }
                (inv.ignored, inv.ignorable())
            }
            InvDesc::Iotlb(inv) => {
                match inv.granularity {
                    IotlbGranularity::Global => qw0 |= 1 << 4,
                    IotlbGranularity::Domain { did } => qw0 |= (2 << 4) | ((did as u64) << 16),
                    IotlbGranularity::Page { did, addr, am, ih } => {
                        qw0 |= (3 << 4) | ((did as u64) << 16);
                        qw1 = encode_addr_am_ih(ty, addr, am, ih)?;
                    }
                }
                qw0 |= ((inv.drain_read as u64) << 7) | ((inv.drain_write as u64) << 6);
                (inv.ignored, inv.ignorable())
            }
            InvDesc::DeviceTlb(inv) => {
                check_fits(ty, "qdep", inv.qdep as u64, 0x1f)?;
                check_aligned(ty, "addr", inv.addr, 0xfff)?;
                qw0 |= pfsid_bits(inv.pfsid) | ((inv.qdep as u64) << 16) | ((inv.sid as u64) << 32);
                qw1 = inv.addr | inv.size as u64;
                (IgnoredBits::default(), (0, 0))
            }
            InvDesc::Iec(inv) => {
                if let IecGranularity::Index { index, im } = inv.granularity {
                    check_fits(ty, "im", im as u64, 0x1f)?;
                    qw0 |= (1 << 4) | ((im as u64) << 27) | ((index as u64) << 32);
                }
                (inv.ignored, inv.ignorable())
            }
            InvDesc::Wait(inv) => {
                if let Some(StatusWrite { addr, data }) = inv.status_write {
                    check_aligned(ty, "status addr", addr, 0x3)?;
                    qw0 |= (1 << 5) | ((data as u64) << 32);
                    qw1 = addr;
                }
                qw0 |= ((inv.interrupt as u64) << 4)
                    | ((inv.fence as u64) << 6)
                    | ((inv.page_drain as u64) << 7);
                (inv.ignored, inv.ignorable())
            }
            InvDesc::PasidIotlb(inv) => {
                check_fits(ty, "pasid", inv.pasid as u64, 0xf_ffff)?;
                qw0 |= ((inv.did as u64) << 16) | ((inv.pasid as u64) << 32);
                match inv.granularity {
                    PasidIotlbGranularity::AllInPasid => qw0 |= 2 << 4,
                    PasidIotlbGranularity::Page { addr, am, ih } => {
                        qw0 |= 3 << 4;
                        qw1 = encode_addr_am_ih(ty, addr, am, ih)?;
                    }
                }
                (inv.ignored, inv.ignorable())
            }
            InvDesc::PasidCache(inv) => {
                qw0 |= (inv.did as u64) << 16;
                match inv.granularity {
                    PasidCacheGranularity::Domain => {}
                    PasidCacheGranularity::Pasid { pasid } => {
                        check_fits(ty, "pasid", pasid as u64, 0xf_ffff)?;
                        qw0 |= (1 << 4) | ((pasid as u64) << 32);
                    }
                    PasidCacheGranularity::Global => qw0 |= 3 << 4,
                }
                (inv.ignored, inv.ignorable())
            }
            InvDesc::PasidDeviceTlb(inv) => {
                check_fits(ty, "pasid", inv.pasid as u64, 0xf_ffff)?;
                check_fits(ty, "qdep", inv.qdep as u64, 0x1f)?;
                check_aligned(ty, "addr", inv.addr, 0xfff)?;
                qw0 |= ((inv.qdep as u64) << 4)
                    | pfsid_bits(inv.pfsid)
                    | ((inv.sid as u64) << 16)
                    | ((inv.pasid as u64) << 32);
                qw1 = inv.addr | ((inv.size as u64) << 11) | inv.global as u64;
                (IgnoredBits::default(), (0, 0))
            }
            InvDesc::PageGroupResponse(response) => {
                check_fits(ty, "response_code", response.response_code as u64, 0xf)?;
                check_fits(ty, "prg_index", response.prg_index as u64, 0x1ff)?;
                qw0 |= ((response.response_code as u64) << 12) | ((response.rid as u64) << 16);
                if let Some(pasid) = response.pasid {
                    check_fits(ty, "pasid", pasid as u64, 0xf_ffff)?;
                    qw0 |= (1 << 4) | ((pasid as u64) << 32);
                }
                qw1 = ((response.prg_index as u64) << 3) | ((response.last_in_group as u64) << 2);
                (response.ignored, response.ignorable())
            }
        };
        check_ignored(ty, ignored, masks)?;
        Ok(RawDesc([qw0 | ignored.qw0, qw1 | ignored.qw1, 0, 0]))
    }

    /// The descriptor type code, `Type[6:0]` (see [`desc_type`]).
    pub const fn type_code(&self) -> u8 {
        match self {
            InvDesc::ContextCache(_) => desc_type::CONTEXT_CACHE,
            InvDesc::Iotlb(_) => desc_type::IOTLB,
            InvDesc::DeviceTlb(_) => desc_type::DEVICE_TLB,
            InvDesc::Iec(_) => desc_type::IEC,
            InvDesc::Wait(_) => desc_type::WAIT,
            InvDesc::PasidIotlb(_) => desc_type::PASID_IOTLB,
            InvDesc::PasidCache(_) => desc_type::PASID_CACHE,
            InvDesc::PasidDeviceTlb(_) => desc_type::PASID_DEVICE_TLB,
            InvDesc::PageGroupResponse(_) => desc_type::PAGE_GROUP_RESPONSE,
        }
    }

    /// The type name QEMU prints in its `vtd_inv_desc` trace event ("context-cache", "iotlb",
    /// "device", "iec", "wait", "p-iotlb", "device-piotlb", "page group response"); QEMU 10
    /// prints no name for PASID-cache descriptors, for which this returns "pasid-cache".
    pub const fn trace_name(&self) -> &'static str {
        match self {
            InvDesc::ContextCache(_) => "context-cache",
            InvDesc::Iotlb(_) => "iotlb",
            InvDesc::DeviceTlb(_) => "device",
            InvDesc::Iec(_) => "iec",
            InvDesc::Wait(_) => "wait",
            InvDesc::PasidIotlb(_) => "p-iotlb",
            InvDesc::PasidCache(_) => "pasid-cache",
            InvDesc::PasidDeviceTlb(_) => "device-piotlb",
            InvDesc::PageGroupResponse(_) => "page group response",
        }
    }
}

fn encode_addr_am_ih(desc_type: u8, addr: u64, am: u8, ih: bool) -> Result<u64, DescError> {
    check_aligned(desc_type, "addr", addr, 0xfff)?;
    check_fits(desc_type, "am", am as u64, 0x3f)?;
    Ok(addr | ((ih as u64) << 6) | am as u64)
}

impl fmt::Display for InvDesc {
    /// A short description in the style of QEMU's traces, e.g.
    /// `p-iotlb page did 5 pasid 0 addr 0xfff81000 am 0 ih 1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.trace_name();
        match self {
            InvDesc::ContextCache(inv) => match inv.granularity {
                ContextCacheGranularity::Global => write!(f, "{name} global"),
                ContextCacheGranularity::Domain { did } => write!(f, "{name} domain did {did}"),
                ContextCacheGranularity::Device { did, sid, fm } => {
                    write!(f, "{name} device did {did} sid {sid:#06x} fm {fm}")
                }
            },
            InvDesc::Iotlb(inv) => {
                match inv.granularity {
                    IotlbGranularity::Global => write!(f, "{name} global")?,
                    IotlbGranularity::Domain { did } => write!(f, "{name} domain did {did}")?,
                    IotlbGranularity::Page { did, addr, am, ih } => write!(
                        f,
                        "{name} page did {did} addr {addr:#x} am {am} ih {}",
                        ih as u8
                    )?,
                }
                if inv.drain_read {
                    f.write_str(" dr")?;
                }
                if inv.drain_write {
                    f.write_str(" dw")?;
                }
                Ok(())
            }
            InvDesc::DeviceTlb(inv) => write!(
                f,
                "{name} sid {:#06x} pfsid {:#06x} qdep {} addr {:#x} s {}",
                inv.sid, inv.pfsid, inv.qdep, inv.addr, inv.size as u8
            ),
            InvDesc::Iec(inv) => match inv.granularity {
                IecGranularity::Global => write!(f, "{name} global"),
                IecGranularity::Index { index, im } => write!(f, "{name} index {index} im {im}"),
            },
            InvDesc::Wait(inv) => {
                f.write_str(name)?;
                if let Some(StatusWrite { addr, data }) = inv.status_write {
                    write!(f, " sw addr {addr:#x} data {data:#x}")?;
                }
                for (set, flag) in [
                    (inv.interrupt, " if"),
                    (inv.fence, " fn"),
                    (inv.page_drain, " pd"),
                ] {
                    if set {
                        f.write_str(flag)?;
                    }
                }
                Ok(())
            }
            InvDesc::PasidIotlb(inv) => match inv.granularity {
                PasidIotlbGranularity::AllInPasid => {
                    write!(f, "{name} pasid did {} pasid {}", inv.did, inv.pasid)
                }
                PasidIotlbGranularity::Page { addr, am, ih } => write!(
                    f,
                    "{name} page did {} pasid {} addr {addr:#x} am {am} ih {}",
                    inv.did, inv.pasid, ih as u8
                ),
            },
            InvDesc::PasidCache(inv) => match inv.granularity {
                PasidCacheGranularity::Domain => write!(f, "{name} domain did {}", inv.did),
                PasidCacheGranularity::Pasid { pasid } => {
                    write!(f, "{name} pasid did {} pasid {pasid}", inv.did)
                }
                PasidCacheGranularity::Global => write!(f, "{name} global"),
            },
            InvDesc::PasidDeviceTlb(inv) => write!(
                f,
                "{name} sid {:#06x} pfsid {:#06x} pasid {} qdep {} addr {:#x} s {} g {}",
                inv.sid, inv.pfsid, inv.pasid, inv.qdep, inv.addr, inv.size as u8, inv.global as u8
            ),
            InvDesc::PageGroupResponse(response) => {
                write!(f, "{name} rid {:#06x}", response.rid)?;
                if let Some(pasid) = response.pasid {
                    write!(f, " pasid {pasid}")?;
                }
                write!(
                    f,
                    " rc {} prgi {} lpig {}",
                    response.response_code, response.prg_index, response.last_in_group as u8
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use proptest::prelude::*;

    /// Bits that hold `Type[3:0]` and `Type[6:4]`.
    const TYPE_BITS: u64 = 0xf | (0x7 << 9);
    const W128: DescWidth = DescWidth::Bits128;
    const W256: DescWidth = DescWidth::Bits256;

    fn decode2(lo: u64, hi: u64, width: DescWidth) -> Result<InvDesc, DescError> {
        InvDesc::decode(&RawDesc::from_128(lo, hi), width)
    }

    /// Decodes, then checks that encoding gives back the same qwords.
    fn round_trip(lo: u64, hi: u64, width: DescWidth) -> InvDesc {
        let desc = decode2(lo, hi, width).expect("valid descriptor");
        assert_eq!(
            desc.encode(width),
            Ok(RawDesc::from_128(lo, hi)),
            "{desc:?}"
        );
        desc
    }

    #[test]
    fn type_field_includes_bits_11_9() {
        assert_eq!(RawDesc::from_128(0x205, 0).type_code(), 0x15);
        assert_eq!(decode2(0x205, 0, W256), Err(DescError::UnknownType(0x15)));
        assert_eq!(
            decode2(0xe00 | 0x2, 0, W256),
            Err(DescError::UnknownType(0x72))
        );
        for ty in [0u64, 0xa, 0xf] {
            assert_eq!(decode2(ty, 0, W256), Err(DescError::UnknownType(ty as u8)));
        }
    }

    #[test]
    fn context_cache() {
        // Linux's global invalidation, as in the trace.
        let desc = round_trip(0x11, 0, W128);
        assert_eq!(
            desc,
            InvDesc::ContextCache(ContextCacheInv {
                granularity: ContextCacheGranularity::Global,
                ignored: IgnoredBits::default()
            })
        );
        assert_eq!(desc.to_string(), "context-cache global");
        let device = round_trip(0x0003_0018_0005_0031, 0, W256);
        assert_eq!(
            device,
            InvDesc::ContextCache(ContextCacheInv {
                granularity: ContextCacheGranularity::Device {
                    did: 5,
                    sid: 0x18,
                    fm: 3
                },
                ignored: IgnoredBits::default()
            })
        );
        assert_eq!(
            device.to_string(),
            "context-cache device did 5 sid 0x0018 fm 3"
        );
        // DID/SID/FM are ignored (not reserved) at global granularity and survive encoding.
        let global = round_trip(0x0003_abcd_1234_0011, 0, W128);
        assert!(matches!(
            global,
            InvDesc::ContextCache(ContextCacheInv {
                granularity: ContextCacheGranularity::Global,
                ..
            })
        ));
        assert_eq!(
            decode2(0x01, 0, W128),
            Err(DescError::InvalidGranularity {
                desc_type: 1,
                granularity: 0
            })
        );
        for bit in [6, 7, 8, 12, 15, 50, 63] {
            assert!(matches!(
                decode2(0x11 | (1 << bit), 0, W128),
                Err(DescError::ReservedBits { qword: 0, .. })
            ));
        }
        assert!(matches!(
            decode2(0x11, 1, W128),
            Err(DescError::ReservedBits { qword: 1, .. })
        ));
    }

    #[test]
    fn iotlb() {
        // Linux's global flush with both drains, as in the trace.
        let desc = round_trip(0xd2, 0, W256);
        assert_eq!(
            desc,
            InvDesc::Iotlb(IotlbInv {
                granularity: IotlbGranularity::Global,
                drain_read: true,
                drain_write: true,
                ignored: IgnoredBits::default()
            })
        );
        assert_eq!(desc.to_string(), "iotlb global dr dw");
        let page = round_trip(0x0005_0032, 0x1234_5000 | 0x40 | 3, W128);
        assert_eq!(
            page,
            InvDesc::Iotlb(IotlbInv {
                granularity: IotlbGranularity::Page {
                    did: 5,
                    addr: 0x1234_5000,
                    am: 3,
                    ih: true
                },
                drain_read: false,
                drain_write: false,
                ignored: IgnoredBits::default()
            })
        );
        // Address qword is ignored for a domain flush.
        round_trip(0x0005_0022, 0xffff_f07f, W128);
        assert!(decode2(0x02, 0, W128).is_err());
        for (lo, hi) in [
            (0x32 | (1 << 8), 0),
            (0x32 | (1 << 32), 0),
            (0x32, 1 << 7),
            (0x32, 1 << 11),
        ] {
            assert!(
                matches!(decode2(lo, hi, W128), Err(DescError::ReservedBits { .. })),
                "{lo:#x} {hi:#x}"
            );
        }
    }

    #[test]
    fn device_tlb() {
        let lo = 0x3 | (0xa << 12) | (0x1f << 16) | (0x0018 << 32) | (0xabc << 52);
        let hi = 0x7000 | 1;
        let desc = round_trip(lo, hi, W128);
        assert_eq!(
            desc,
            InvDesc::DeviceTlb(DeviceTlbInv {
                sid: 0x18,
                pfsid: 0xabca,
                qdep: 0x1f,
                addr: 0x7000,
                size: true
            })
        );
        assert_eq!(
            desc.to_string(),
            "device sid 0x0018 pfsid 0xabca qdep 31 addr 0x7000 s 1"
        );
        for (lo, hi) in [
            (0x3 | (1 << 4), 0),
            (0x3 | (1 << 21), 0),
            (0x3 | (1 << 48), 0),
            (0x3, 2),
        ] {
            assert!(
                matches!(decode2(lo, hi, W128), Err(DescError::ReservedBits { .. })),
                "{lo:#x} {hi:#x}"
            );
        }
    }

    #[test]
    fn device_tlb_ranges() {
        assert_eq!(device_tlb_range(0x5000, false), 0x5000..=0x5fff);
        // S = 1, ADDR bit 12 = 0: 8 KiB.
        assert_eq!(device_tlb_range(0x4000, true), 0x4000..=0x5fff);
        // S = 1, bits 13:12 = 01: 16 KiB.
        assert_eq!(device_tlb_range(0x9000, true), 0x8000..=0xbfff);
        // S = 1, every address bit set: the whole space.
        assert_eq!(device_tlb_range(!0xfff, true), 0..=u64::MAX);
    }

    #[test]
    fn iec() {
        let global = round_trip(0x4, 0, W128);
        assert_eq!(global.to_string(), "iec global");
        let index = round_trip(0x11_0000_0014, 0, W256);
        assert_eq!(
            index,
            InvDesc::Iec(IecInv {
                granularity: IecGranularity::Index { index: 0x11, im: 0 },
                ignored: IgnoredBits::default()
            })
        );
        assert_eq!(index.to_string(), "iec index 17 im 0");
        let masked = round_trip(0x0010_f800_0014 | (0x1f << 27), 0, W128);
        assert!(matches!(
            masked,
            InvDesc::Iec(IecInv {
                granularity: IecGranularity::Index { im: 0x1f, .. },
                ..
            })
        ));
        for bit in [5, 8, 12, 26, 48, 63] {
            assert!(decode2(0x14 | (1 << bit), 0, W128).is_err(), "bit {bit}");
        }
        assert!(decode2(0x14, 1, W128).is_err());
        assert_eq!(interrupt_index_range(0x13, 2), 0x10..=0x13);
        assert_eq!(interrupt_index_range(0x13, 31), 0..=0xffff);
    }

    #[test]
    fn wait() {
        // Linux's wait: SW, status data 2.
        let desc = round_trip(0x2_0000_0025, 0x11d_2004, W256);
        assert_eq!(
            desc,
            InvDesc::Wait(WaitInv {
                status_write: Some(StatusWrite {
                    addr: 0x11d_2004,
                    data: 2
                }),
                interrupt: false,
                fence: false,
                page_drain: false,
                ignored: IgnoredBits::default()
            })
        );
        assert_eq!(desc.to_string(), "wait sw addr 0x11d2004 data 0x2");
        // SW and IF together are valid (QEMU 10.0.2 asserts on it; the spec allows it).
        let both = round_trip(0x2_0000_0035 | 0xc0, 0x1000, W128);
        assert_eq!(both.to_string(), "wait sw addr 0x1000 data 0x2 if fn pd");
        // Without SW the data and address are ignored, but address bits 1:0 stay reserved.
        round_trip(0xffff_ffff_0000_0015, 0xffff_ffff_ffff_fffc, W128);
        assert!(matches!(
            decode2(0x25, 0x1002, W128),
            Err(DescError::ReservedBits {
                qword: 1,
                bits: 2,
                ..
            })
        ));
        assert!(matches!(
            decode2(0x25 | (1 << 8), 0, W128),
            Err(DescError::ReservedBits { qword: 0, .. })
        ));
        assert!(matches!(
            decode2(0x25 | (1 << 31), 0, W128),
            Err(DescError::ReservedBits { qword: 0, .. })
        ));
        let unaligned = InvDesc::Wait(WaitInv {
            status_write: Some(StatusWrite {
                addr: 0x1001,
                data: 0,
            }),
            interrupt: false,
            fence: false,
            page_drain: false,
            ignored: IgnoredBits::default(),
        });
        assert!(matches!(
            unaligned.encode(W128),
            Err(DescError::FieldOutOfRange { .. })
        ));
    }

    #[test]
    fn pasid_iotlb() {
        // The descriptor Linux 6.12 issues for every unmap in strict mode (from the trace).
        let desc = round_trip(0x50036, 0xfff8_1040, W256);
        assert_eq!(
            desc,
            InvDesc::PasidIotlb(PasidIotlbInv {
                did: 5,
                pasid: 0,
                granularity: PasidIotlbGranularity::Page {
                    addr: 0xfff8_1000,
                    am: 0,
                    ih: true
                },
                ignored: IgnoredBits::default()
            })
        );
        assert_eq!(
            desc.to_string(),
            "p-iotlb page did 5 pasid 0 addr 0xfff81000 am 0 ih 1"
        );
        let all = round_trip(0x000a_bcde_0005_0026, 0, W256);
        assert_eq!(all.to_string(), "p-iotlb pasid did 5 pasid 703710");
        for g in [0u64, 1] {
            assert_eq!(
                decode2(0x6 | (g << 4), 0, W256),
                Err(DescError::InvalidGranularity {
                    desc_type: 6,
                    granularity: g as u8
                })
            );
        }
        assert_eq!(
            decode2(0x50036, 0xfff8_1040, W128),
            Err(DescError::NeedsWideQueue(6))
        );
        for bit in [6, 7, 8, 12, 52, 63] {
            assert!(decode2(0x36 | (1 << bit), 0, W256).is_err(), "bit {bit}");
        }
        assert!(decode2(0x36, 1 << 7, W256).is_err());
    }

    #[test]
    fn pasid_cache() {
        let pasid = round_trip(0x0000_0007_0005_0017, 0, W256);
        assert_eq!(pasid.to_string(), "pasid-cache pasid did 5 pasid 7");
        let domain = round_trip(0x0005_0007, 0, W256);
        assert_eq!(domain.to_string(), "pasid-cache domain did 5");
        let global = round_trip(0x000f_ffff_ffff_0037, 0, W256);
        assert_eq!(global.to_string(), "pasid-cache global");
        assert_eq!(
            decode2(0x27, 0, W256),
            Err(DescError::InvalidGranularity {
                desc_type: 7,
                granularity: 2
            })
        );
        assert_eq!(decode2(0x17, 0, W128), Err(DescError::NeedsWideQueue(7)));
        assert!(decode2(0x17, 1, W256).is_err());
    }

    #[test]
    fn pasid_device_tlb() {
        let lo = 0x8 | (0x10 << 4) | (0x5 << 12) | (0x18 << 16) | (0x42 << 32) | (0xfff << 52);
        let hi = 0xa000 | (1 << 11) | 1;
        let desc = round_trip(lo, hi, W256);
        assert_eq!(
            desc,
            InvDesc::PasidDeviceTlb(PasidDeviceTlbInv {
                sid: 0x18,
                pfsid: 0xfff5,
                pasid: 0x42,
                qdep: 0x10,
                addr: 0xa000,
                size: true,
                global: true
            })
        );
        assert_eq!(
            desc.to_string(),
            "device-piotlb sid 0x0018 pfsid 0xfff5 pasid 66 qdep 16 addr 0xa000 s 1 g 1"
        );
        assert!(decode2(0x8, 1 << 1, W256).is_err());
        assert!(decode2(0x8, 1 << 10, W256).is_err());
        assert_eq!(decode2(0x8, 0, W128), Err(DescError::NeedsWideQueue(8)));
    }

    #[test]
    fn page_group_response() {
        let lo = 0x9 | (1 << 4) | (0xf << 12) | (0x18 << 16) | (0x3 << 32);
        let hi = (0x1ff << 3) | (1 << 2);
        let desc = round_trip(lo, hi, W256);
        assert_eq!(
            desc,
            InvDesc::PageGroupResponse(PageGroupResponse {
                rid: 0x18,
                pasid: Some(3),
                response_code: 0xf,
                prg_index: 0x1ff,
                last_in_group: true,
                ignored: IgnoredBits::default()
            })
        );
        assert_eq!(
            desc.to_string(),
            "page group response rid 0x0018 pasid 3 rc 15 prgi 511 lpig 1"
        );
        // PDP (bit 5) was removed in VT-d 4.0; private data in qwords 2-3 is reserved too.
        assert!(decode2(lo | (1 << 5), hi, W256).is_err());
        let raw = RawDesc([lo, hi, 0x1234, 0]);
        assert_eq!(
            InvDesc::decode(&raw, W256),
            Err(DescError::ReservedBits {
                desc_type: 9,
                qword: 2,
                bits: 0x1234
            })
        );
        assert!(decode2(lo, hi | 1, W256).is_err());
        assert!(decode2(lo, hi | (1 << 12), W256).is_err());
        assert_eq!(decode2(lo, hi, W128), Err(DescError::NeedsWideQueue(9)));
    }

    #[test]
    fn upper_half_must_be_zero_in_256_bit_mode_only() {
        for qword in [2usize, 3] {
            let mut raw = RawDesc::from_128(0x11, 0);
            raw.0[qword] = 1 << 40;
            assert_eq!(
                InvDesc::decode(&raw, W256),
                Err(DescError::ReservedBits {
                    desc_type: 1,
                    qword,
                    bits: 1 << 40
                })
            );
            // Not part of a 128-bit descriptor at all.
            assert!(InvDesc::decode(&raw, W128).is_ok());
        }
    }

    #[test]
    fn encode_rejects_fields_that_do_not_fit() {
        let pasid = InvDesc::PasidIotlb(PasidIotlbInv {
            did: 1,
            pasid: 1 << 20,
            granularity: PasidIotlbGranularity::AllInPasid,
            ignored: IgnoredBits::default(),
        });
        assert!(matches!(
            pasid.encode(W256),
            Err(DescError::FieldOutOfRange { field: "pasid", .. })
        ));
        assert_eq!(pasid.encode(W128), Err(DescError::NeedsWideQueue(6)));
        let page = InvDesc::Iotlb(IotlbInv {
            granularity: IotlbGranularity::Page {
                did: 1,
                addr: 0x1800,
                am: 0,
                ih: false,
            },
            drain_read: false,
            drain_write: false,
            ignored: IgnoredBits::default(),
        });
        assert!(matches!(
            page.encode(W128),
            Err(DescError::FieldOutOfRange { field: "addr", .. })
        ));
        let misplaced = InvDesc::ContextCache(ContextCacheInv {
            granularity: ContextCacheGranularity::Domain { did: 1 },
            ignored: IgnoredBits {
                qw0: 0xffff << 16,
                qw1: 0,
            },
        });
        assert!(matches!(
            misplaced.encode(W128),
            Err(DescError::FieldOutOfRange {
                field: "ignored.qw0",
                ..
            })
        ));
    }

    #[test]
    fn from_le_bytes() {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&0x50036u64.to_le_bytes());
        bytes[8..16].copy_from_slice(&0xfff8_1040u64.to_le_bytes());
        assert_eq!(
            RawDesc::from_le_bytes(&bytes),
            Some(RawDesc::from_128(0x50036, 0xfff8_1040))
        );
        assert_eq!(
            RawDesc::from_le_bytes(&bytes[..16]),
            Some(RawDesc::from_128(0x50036, 0xfff8_1040))
        );
        assert_eq!(RawDesc::from_le_bytes(&bytes[..24]), None);
    }

    #[test]
    fn page_ranges() {
        assert_eq!(page_range(0xfff8_1000, 0), 0xfff8_1000..=0xfff8_1fff);
        assert_eq!(page_range(0xffd0_0000, 8), 0xffd0_0000..=0xffdf_ffff);
        assert_eq!(page_range(0x1234_5678, 63), 0..=u64::MAX);
    }

    fn width() -> impl Strategy<Value = DescWidth> {
        prop_oneof![Just(W128), Just(W256)]
    }

    /// Raw descriptors of a defined type with no reserved bit set: most of them decode.
    fn plausible_raw() -> impl Strategy<Value = RawDesc> {
        (1u8..=9, any::<u64>(), any::<u64>()).prop_map(|(ty, qw0, qw1)| {
            let (rsvd0, rsvd1) = reserved_masks(ty);
            RawDesc::from_128((qw0 & !(rsvd0 | TYPE_BITS)) | type_bits(ty), qw1 & !rsvd1)
        })
    }

    fn addr4k() -> impl Strategy<Value = u64> {
        any::<u64>().prop_map(|a| a & !0xfff)
    }

    fn pasid20() -> impl Strategy<Value = u32> {
        0u32..=0xf_ffff
    }

    fn valid_desc() -> impl Strategy<Value = InvDesc> {
        let none = IgnoredBits::default();
        prop_oneof![
            prop_oneof![
                Just(ContextCacheGranularity::Global),
                any::<u16>().prop_map(|did| ContextCacheGranularity::Domain { did }),
                (any::<u16>(), any::<u16>(), 0u8..=3)
                    .prop_map(|(did, sid, fm)| ContextCacheGranularity::Device { did, sid, fm }),
            ]
            .prop_map(move |granularity| InvDesc::ContextCache(ContextCacheInv {
                granularity,
                ignored: none
            })),
            (
                prop_oneof![
                    Just(IotlbGranularity::Global),
                    any::<u16>().prop_map(|did| IotlbGranularity::Domain { did }),
                    (any::<u16>(), addr4k(), 0u8..=63, any::<bool>()).prop_map(
                        |(did, addr, am, ih)| IotlbGranularity::Page { did, addr, am, ih }
                    ),
                ],
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(move |(granularity, drain_read, drain_write)| {
                    InvDesc::Iotlb(IotlbInv {
                        granularity,
                        drain_read,
                        drain_write,
                        ignored: none,
                    })
                }),
            (
                any::<u16>(),
                any::<u16>(),
                0u8..=31,
                addr4k(),
                any::<bool>()
            )
                .prop_map(|(sid, pfsid, qdep, addr, size)| InvDesc::DeviceTlb(
                    DeviceTlbInv {
                        sid,
                        pfsid,
                        qdep,
                        addr,
                        size
                    }
                )),
            prop_oneof![
                Just(IecGranularity::Global),
                (any::<u16>(), 0u8..=31)
                    .prop_map(|(index, im)| IecGranularity::Index { index, im }),
            ]
            .prop_map(move |granularity| InvDesc::Iec(IecInv {
                granularity,
                ignored: none
            })),
            (
                proptest::option::of(
                    (any::<u64>(), any::<u32>())
                        .prop_map(|(a, data)| StatusWrite { addr: a & !3, data })
                ),
                any::<bool>(),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(move |(status_write, interrupt, fence, page_drain)| {
                    InvDesc::Wait(WaitInv {
                        status_write,
                        interrupt,
                        fence,
                        page_drain,
                        ignored: none,
                    })
                }),
            (
                any::<u16>(),
                pasid20(),
                prop_oneof![
                    Just(PasidIotlbGranularity::AllInPasid),
                    (addr4k(), 0u8..=63, any::<bool>())
                        .prop_map(|(addr, am, ih)| PasidIotlbGranularity::Page { addr, am, ih }),
                ]
            )
                .prop_map(move |(did, pasid, granularity)| {
                    InvDesc::PasidIotlb(PasidIotlbInv {
                        did,
                        pasid,
                        granularity,
                        ignored: none,
                    })
                }),
            (
                any::<u16>(),
                prop_oneof![
                    Just(PasidCacheGranularity::Domain),
                    pasid20().prop_map(|pasid| PasidCacheGranularity::Pasid { pasid }),
                    Just(PasidCacheGranularity::Global),
                ]
            )
                .prop_map(move |(did, granularity)| {
                    InvDesc::PasidCache(PasidCacheInv {
                        did,
                        granularity,
                        ignored: none,
                    })
                }),
            (
                any::<u16>(),
                any::<u16>(),
                pasid20(),
                0u8..=31,
                addr4k(),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(sid, pfsid, pasid, qdep, addr, size, global)| {
                    InvDesc::PasidDeviceTlb(PasidDeviceTlbInv {
                        sid,
                        pfsid,
                        pasid,
                        qdep,
                        addr,
                        size,
                        global,
                    })
                }),
            (
                any::<u16>(),
                proptest::option::of(pasid20()),
                0u8..=15,
                0u16..=0x1ff,
                any::<bool>()
            )
                .prop_map(
                    move |(rid, pasid, response_code, prg_index, last_in_group)| {
                        InvDesc::PageGroupResponse(PageGroupResponse {
                            rid,
                            pasid,
                            response_code,
                            prg_index,
                            last_in_group,
                            ignored: none,
                        })
                    }
                ),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics(words in any::<[u64; 4]>(), width in width()) {
            let _ = InvDesc::decode(&RawDesc(words), width);
        }

        #[test]
        fn valid_raw_descriptors_round_trip(raw in plausible_raw(), width in width()) {
            if let Ok(desc) = InvDesc::decode(&raw, width) {
                prop_assert_eq!(desc.encode(width), Ok(raw));
                let _ = desc.to_string();
            }
        }

        #[test]
        fn typed_descriptors_round_trip(desc in valid_desc(), width in width()) {
            match desc.encode(width) {
                Ok(raw) => prop_assert_eq!(InvDesc::decode(&raw, width), Ok(desc)),
                Err(err) => {
                    prop_assert_eq!(width, W128);
                    prop_assert_eq!(err, DescError::NeedsWideQueue(desc.type_code()));
                }
            }
        }
    }
}
