//! Page requests (ECAP.PRS): the page request queue's registers, the page request descriptor the
//! unit writes into the guest's queue, and the response codes of the page group response
//! descriptor (the descriptor itself is [`crate::inv::PageGroupResponse`]).
//!
//! # Sources
//! - Registers (VT-d spec 11.4.11: PQH 0xc0, PQT 0xc8, PQA 0xd0, PRS 0xdc, PECTL 0xe0, PEDATA
//!   0xe4, PEADDR 0xe8, PEUADDR 0xec), as Linux `drivers/iommu/intel/iommu.h` (`DMAR_PQH_REG`
//!   ...) and QEMU `hw/i386/intel_iommu_internal.h` name them. PQH/PQT hold byte offsets of
//!   256-bit descriptors in bits 18:5; PQA holds a 4 KiB-aligned base and PQS in bits 2:0, the
//!   queue being 2^PQS pages, i.e. 2^(PQS + 7) descriptors (QEMU `vtd_prq_size`, Linux
//!   `PRQ_RING_MASK = (0x1000 << PRQ_ORDER) - 0x20`).
//! - The page request descriptor (spec 7.5.1.1, `page_req_dsc`): Linux
//!   `drivers/iommu/intel/prq.c` `struct page_req_dsc` and QEMU's `VTD_PRD_*` macros agree:
//!   qw0 type 1 (7:0), PASID present (8), requester ID (31:16), PASID (51:32), execute (52),
//!   privileged (53); qw1 read (0), write (1), last page in group (2), PRG index (11:3), page
//!   address (63:12). Qwords 2-3 carried private data up to VT-d 3.x; VT-d 4.0 removed it (as it
//!   removed PDP from the page group response), so the unit writes them as zero.
//! - Response codes (spec 6.5.2.x page group response, PCIe "PRG Response Message"): 0 Success,
//!   1 Invalid Request, 0xF Response Failure; 2-0xE are reserved.

use bitfield_struct::bitfield;

/// Descriptor type of a page request descriptor in the page request queue (qw0 bits 7:0).
pub const PAGE_REQUEST_TYPE: u8 = 0x1;

/// Bytes of one page request descriptor (256 bits).
pub const PAGE_REQUEST_SIZE: u64 = 32;

/// PQH/PQT: the descriptor offset field, bits 18:5 (spec 11.4.11.1-2).
pub const QUEUE_OFFSET_MASK: u64 = 0x7_ffe0;

/// PQA_REG (spec 11.4.11.3).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Pqa {
    /// PQS: the queue is 2^PQS 4 KiB pages.
    #[bits(3)]
    pub pqs: u8,
    #[bits(9)]
    __: u16,
    /// PQA: 4 KiB-aligned queue base, bits 63:12.
    #[bits(52)]
    pub pqa: u64,
}

impl Pqa {
    /// Queue base physical address.
    pub const fn base(&self) -> u64 {
        self.pqa() << 12
    }
    /// Number of 32-byte descriptors the queue holds: 2^(PQS + 7).
    pub const fn descriptor_count(&self) -> u32 {
        1 << (self.pqs() as u32 + 7)
    }
}

/// PRS_REG (spec 11.4.11.4): both bits are RW1C.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Prs {
    /// PPR: pending page request: the unit added a request that ends a group.
    pub ppr: bool,
    /// PRO: page request overflow: a request found the queue full and was dropped; while set,
    /// every further request is dropped.
    pub pro: bool,
    #[bits(30)]
    __: u32,
}

/// The response code of a page group response (spec 6.5.2.x, PCIe PRG Response).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseCode {
    /// 0: the pages are now resident; the device retries its translation.
    Success,
    /// 1: the request cannot be satisfied; the device must not retry it.
    InvalidRequest,
    /// 0xF: a catastrophic error; the device disables its page request interface.
    Failure,
}

impl ResponseCode {
    /// Decodes the 4-bit field; `None` for the reserved values 2-0xE.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::Success),
            1 => Some(Self::InvalidRequest),
            0xf => Some(Self::Failure),
            _ => None,
        }
    }

    /// The 4-bit field.
    pub const fn into_bits(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::InvalidRequest => 1,
            Self::Failure => 0xf,
        }
    }
}

/// One page request descriptor (spec 7.5.1.1), as the unit writes it into the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageRequestDescriptor {
    /// Requester ID (bus << 8 | devfn), qw0 bits 31:16.
    pub rid: u16,
    /// PASID (qw0 bits 51:32) when PASID present (qw0 bit 8) is set.
    pub pasid: Option<u32>,
    /// Execute requested (qw0 bit 52).
    pub execute: bool,
    /// Privileged-mode request (qw0 bit 53).
    pub privileged: bool,
    /// Read access requested (qw1 bit 0).
    pub read: bool,
    /// Write access requested (qw1 bit 1).
    pub write: bool,
    /// Last page in group (qw1 bit 2): the group may now be answered.
    pub last_in_group: bool,
    /// Page request group index (qw1 bits 11:3), 9 bits.
    pub prg_index: u16,
    /// Page address (qw1 bits 63:12), 4 KiB aligned.
    pub address: u64,
}

/// Why a page request descriptor does not decode or encode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PageRequestDescError {
    /// qw0 bits 7:0 are not 1.
    #[error("page request descriptor type {0:#x}, expected 1")]
    WrongType(u8),
    /// Reserved bits set in qword `qword`.
    #[error("reserved bits {bits:#x} set in qword {qword} of a page request descriptor")]
    ReservedBits {
        /// Which qword (0-3).
        qword: usize,
        /// The offending bits.
        bits: u64,
    },
    /// A field does not fit its slot (PASID above 20 bits, PRG index above 9 bits, an
    /// unaligned address).
    #[error("page request field {field} = {value:#x} does not fit")]
    FieldOutOfRange {
        /// The field's name.
        field: &'static str,
        /// The value given.
        value: u64,
    },
}

/// Reserved bits of qword 0: 15:9 and 63:54 (Linux `rsvd`, `rsvd2`).
const QW0_RESERVED: u64 = 0xfe00 | (!0 << 54);

impl PageRequestDescriptor {
    /// The four little-endian qwords the unit writes at PQT.
    pub fn encode(&self) -> Result<[u64; 4], PageRequestDescError> {
        let out_of_range = |field, value| PageRequestDescError::FieldOutOfRange { field, value };
        if self.prg_index > 0x1ff {
            return Err(out_of_range("prg_index", self.prg_index as u64));
        }
        if self.address & 0xfff != 0 {
            return Err(out_of_range("address", self.address));
        }
        let mut qw0 = PAGE_REQUEST_TYPE as u64
            | (self.rid as u64) << 16
            | (self.execute as u64) << 52
            | (self.privileged as u64) << 53;
        if let Some(pasid) = self.pasid {
            if pasid > 0xf_ffff {
                return Err(out_of_range("pasid", pasid as u64));
            }
            qw0 |= 1 << 8 | (pasid as u64) << 32;
        }
        let qw1 = self.read as u64
            | (self.write as u64) << 1
            | (self.last_in_group as u64) << 2
            | (self.prg_index as u64) << 3
            | self.address;
        Ok([qw0, qw1, 0, 0])
    }

    /// Decodes a descriptor read from the queue (what a guest driver does); the inverse of
    /// [`PageRequestDescriptor::encode`].
    pub fn decode(words: [u64; 4]) -> Result<Self, PageRequestDescError> {
        let [qw0, qw1, qw2, qw3] = words;
        let ty = qw0 as u8;
        if ty != PAGE_REQUEST_TYPE {
            return Err(PageRequestDescError::WrongType(ty));
        }
        for (qword, bits) in [(0, qw0 & QW0_RESERVED), (2, qw2), (3, qw3)] {
            if bits != 0 {
                return Err(PageRequestDescError::ReservedBits { qword, bits });
            }
        }
        Ok(Self {
            rid: (qw0 >> 16) as u16,
            pasid: (qw0 & 1 << 8 != 0).then_some(((qw0 >> 32) & 0xf_ffff) as u32),
            execute: qw0 & 1 << 52 != 0,
            privileged: qw0 & 1 << 53 != 0,
            read: qw1 & 1 != 0,
            write: qw1 & 2 != 0,
            last_in_group: qw1 & 4 != 0,
            prg_index: ((qw1 >> 3) & 0x1ff) as u16,
            address: qw1 & !0xfff,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field positions of Linux's `struct page_req_dsc` (drivers/iommu/intel/prq.c),
    /// written out bit by bit: a PASID request for a write, last in group 0x1a5.
    #[test]
    fn encodes_the_linux_layout() {
        let desc = PageRequestDescriptor {
            rid: 0x0118,
            pasid: Some(0xabcde),
            execute: false,
            privileged: true,
            read: false,
            write: true,
            last_in_group: true,
            prg_index: 0x1a5,
            address: 0x7fff_1234_5000,
        };
        let words = desc.encode().unwrap();
        let qw0 = 1 | 1 << 8 | 0x0118 << 16 | 0xabcde << 32 | 1 << 53;
        let qw1 = 1 << 1 | 1 << 2 | 0x1a5 << 3 | 0x7fff_1234_5000;
        assert_eq!(words, [qw0, qw1, 0, 0]);
        assert_eq!(PageRequestDescriptor::decode(words), Ok(desc));
        // Without PASID the PASID field stays zero; execute sits at bit 52.
        let desc = PageRequestDescriptor {
            pasid: None,
            execute: true,
            privileged: false,
            read: true,
            write: false,
            last_in_group: false,
            prg_index: 0,
            ..desc
        };
        let words = desc.encode().unwrap();
        assert_eq!(words[0], 1 | 0x0118 << 16 | 1 << 52);
        assert_eq!(words[1], 1 | 0x7fff_1234_5000);
        assert_eq!(PageRequestDescriptor::decode(words), Ok(desc));
    }

    #[test]
    fn encoding_and_decoding_refuse_what_does_not_fit() {
        let base = PageRequestDescriptor {
            rid: 1,
            pasid: None,
            execute: false,
            privileged: false,
            read: true,
            write: false,
            last_in_group: true,
            prg_index: 0,
            address: 0x1000,
        };
        for bad in [
            PageRequestDescriptor {
                prg_index: 0x200,
                ..base
            },
            PageRequestDescriptor {
                pasid: Some(1 << 20),
                ..base
            },
            PageRequestDescriptor {
                address: 0x1800,
                ..base
            },
        ] {
            assert!(matches!(
                bad.encode(),
                Err(PageRequestDescError::FieldOutOfRange { .. })
            ));
        }
        let good = base.encode().unwrap();
        assert_eq!(
            PageRequestDescriptor::decode([good[0] | 2, good[1], 0, 0]),
            Err(PageRequestDescError::WrongType(3))
        );
        assert_eq!(
            PageRequestDescriptor::decode([good[0] | 1 << 9, good[1], 0, 0]),
            Err(PageRequestDescError::ReservedBits {
                qword: 0,
                bits: 1 << 9
            })
        );
        assert_eq!(
            PageRequestDescriptor::decode([good[0], good[1], 0, 5]),
            Err(PageRequestDescError::ReservedBits { qword: 3, bits: 5 })
        );
    }

    #[test]
    fn registers_and_codes() {
        // Linux: PQA = virt_to_phys(prq) | PRQ_ORDER (4): 16 pages, 2048 descriptors.
        let pqa = Pqa::from_bits(0x1234_5000 | 4);
        assert_eq!((pqa.base(), pqa.descriptor_count()), (0x1234_5000, 2048));
        assert_eq!(Pqa::from_bits(0).descriptor_count(), 128);
        assert_eq!(Pqa::from_bits(7).descriptor_count() as u64 * 32, 0x80000);
        // The largest queue's offsets fit PQH/PQT bits 18:5.
        assert_eq!((0x80000 - 32) & !QUEUE_OFFSET_MASK, 0);
        let prs = Prs::from_bits(3);
        assert!(prs.ppr() && prs.pro());
        for (bits, code) in [
            (0, ResponseCode::Success),
            (1, ResponseCode::InvalidRequest),
            (0xf, ResponseCode::Failure),
        ] {
            assert_eq!(ResponseCode::from_bits(bits), Some(code));
            assert_eq!(code.into_bits(), bits);
        }
        for reserved in 2..0xf {
            assert_eq!(ResponseCode::from_bits(reserved), None);
        }
    }
}
