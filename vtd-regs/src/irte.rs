//! Interrupt remapping: the 128-bit interrupt-remapping table entry (VT-d spec 9.10) and the
//! remappable MSI address/data format (VT-d spec 5.1.2).
//!
//! Only the remapped IRTE format (IM = 0) is modelled: the unit does not report CAP.PI, so a
//! posted-format entry (IM = 1) has a reserved bit set (as QEMU, which handles no posted
//! entries either).

use bitfield_struct::bitfield;

use crate::fault::FaultReason;

/// Low qword of a remapped-format IRTE (bits 63:0, VT-d spec 9.10).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct IrteLow {
    /// P (bit 0): the entry is present.
    pub present: bool,
    /// FPD (bit 1): do not record qualified faults for interrupts through this entry.
    pub fault_processing_disable: bool,
    /// DM (bit 2): destination mode, 0 physical, 1 logical.
    pub logical_destination: bool,
    /// RH (bit 3): redirection hint (lowest-priority style redirection allowed).
    pub redirection_hint: bool,
    /// TM (bit 4): trigger mode, 0 edge, 1 level.
    pub level_triggered: bool,
    /// DLM (bits 7:5): delivery mode (see [`delivery_mode`]).
    #[bits(3)]
    pub delivery_mode: u8,
    /// AVAIL (bits 11:8): available to software.
    #[bits(4)]
    pub available: u8,
    /// Bits 14:12, reserved.
    #[bits(3)]
    pub reserved_14_12: u8,
    /// IM (bit 15): IRTE mode, 0 remapped, 1 posted.
    pub posted: bool,
    /// V (bits 23:16): the interrupt vector.
    pub vector: u8,
    /// Bits 31:24, reserved.
    pub reserved_31_24: u8,
    /// DST (bits 63:32): destination ID. x2APIC mode (IRTA.EIME = 1) uses all 32 bits; xAPIC
    /// mode uses bits 15:8 (IRTE bits 47:40) and reserves the rest.
    pub destination_id: u32,
}

/// High qword of an IRTE (bits 127:64, VT-d spec 9.10).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct IrteHigh {
    /// SID (bits 79:64): the requester ID checked according to SVT.
    pub source_id: u16,
    /// SQ (bits 81:80): source-id qualifier, the SID function bits ignored with SVT = 1.
    #[bits(2)]
    pub source_id_qualifier: u8,
    /// SVT (bits 83:82): source validation type (see [`SourceValidation`]).
    #[bits(2)]
    pub source_validation_type: u8,
    /// Bits 127:84, reserved.
    #[bits(44)]
    pub reserved: u64,
}

/// Delivery-mode values of the IRTE's DLM field (VT-d spec 9.10; the APIC's encoding).
pub mod delivery_mode {
    /// Fixed.
    pub const FIXED: u8 = 0;
    /// Lowest priority.
    pub const LOWEST_PRIORITY: u8 = 1;
    /// SMI.
    pub const SMI: u8 = 2;
    /// NMI.
    pub const NMI: u8 = 4;
    /// INIT.
    pub const INIT: u8 = 5;
    /// ExtINT.
    pub const EXTINT: u8 = 7;
}

/// How the IRTE restricts which requester may use it: the SVT, SQ and SID fields
/// (VT-d spec 9.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceValidation {
    /// SVT = 0: any requester.
    None,
    /// SVT = 1: the requester ID must equal `sid`, ignoring the function bits `sq` selects
    /// (SQ 0: all 16 bits compared; 1: ignore bit 2; 2: ignore bits 2:1; 3: ignore bits 2:0).
    RequesterId {
        /// SID.
        sid: u16,
        /// SQ (2 bits).
        sq: u8,
    },
    /// SVT = 2: the requester's bus must lie in `start_bus..=end_bus` (SID bits 15:8 and
    /// 7:0), for interrupts forwarded by PCIe-to-PCI bridges.
    BusRange {
        /// First bus.
        start_bus: u8,
        /// Last bus.
        end_bus: u8,
    },
    /// SVT = 3: reserved.
    Reserved,
}

/// Reserved bits of the low qword in both modes: 14:12 and 31:24.
const LOW_RESERVED: u64 = 0x7000 | 0xff00_0000;
/// Additionally reserved in xAPIC mode: destination bits 39:32 and 63:48.
const LOW_RESERVED_XAPIC: u64 = 0x0000_00ff_0000_0000 | 0xffff_0000_0000_0000;
/// Reserved bits of the high qword: 127:84.
const HIGH_RESERVED: u64 = !0 << 20;

/// One 128-bit interrupt-remapping table entry (VT-d spec 9.10).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Irte {
    /// Bits 63:0.
    pub low: IrteLow,
    /// Bits 127:64.
    pub high: IrteHigh,
}

impl Irte {
    /// The entry whose bits 63:0 are `lo` and bits 127:64 are `hi` (as read from the table,
    /// little-endian qwords). Any pattern is representable; [`Irte::validate`] checks it.
    pub const fn decode(lo: u64, hi: u64) -> Self {
        Self {
            low: IrteLow::from_bits(lo),
            high: IrteHigh::from_bits(hi),
        }
    }

    /// The (bits 63:0, bits 127:64) qwords of the entry.
    pub const fn to_words(self) -> (u64, u64) {
        (self.low.into_bits(), self.high.into_bits())
    }

    /// A present, remapped-format, edge-triggered, fixed-delivery, physical-destination entry
    /// for `vector` to APIC `destination` with no source validation.
    ///
    /// `x2apic` selects the destination layout (IRTA.EIME): 32 bits in x2APIC mode, the low
    /// 8 bits of `destination` placed in IRTE bits 47:40 in xAPIC mode.
    pub const fn remapped(vector: u8, destination: u32, x2apic: bool) -> Self {
        let destination_id = if x2apic {
            destination
        } else {
            (destination & 0xff) << 8
        };
        Self {
            low: IrteLow::new()
                .with_present(true)
                .with_vector(vector)
                .with_destination_id(destination_id),
            high: IrteHigh::new(),
        }
    }

    /// This entry with trigger mode TM set to level (`true`) or edge.
    pub const fn with_level_triggered(self, level: bool) -> Self {
        Self {
            low: self.low.with_level_triggered(level),
            ..self
        }
    }

    /// This entry with destination mode DM set to logical (`true`) or physical.
    pub const fn with_logical_destination(self, logical: bool) -> Self {
        Self {
            low: self.low.with_logical_destination(logical),
            ..self
        }
    }

    /// This entry with the redirection hint RH.
    pub const fn with_redirection_hint(self, hint: bool) -> Self {
        Self {
            low: self.low.with_redirection_hint(hint),
            ..self
        }
    }

    /// This entry with delivery mode DLM (3 bits, see [`delivery_mode`]; higher bits dropped).
    pub const fn with_delivery_mode(self, mode: u8) -> Self {
        Self {
            low: self.low.with_delivery_mode(mode & 0x7),
            ..self
        }
    }

    /// This entry with fault processing disabled (FPD).
    pub const fn with_fault_processing_disable(self, disable: bool) -> Self {
        Self {
            low: self.low.with_fault_processing_disable(disable),
            ..self
        }
    }

    /// This entry with the SVT/SQ/SID fields for `validation`. [`SourceValidation::Reserved`]
    /// writes SVT = 3 (which [`Irte::validate`] rejects); SQ is truncated to 2 bits.
    pub const fn with_source_validation(self, validation: SourceValidation) -> Self {
        let (svt, sq, sid) = match validation {
            SourceValidation::None => (0, 0, 0),
            SourceValidation::RequesterId { sid, sq } => (1, sq & 0x3, sid),
            SourceValidation::BusRange { start_bus, end_bus } => {
                (2, 0, ((start_bus as u16) << 8) | end_bus as u16)
            }
            SourceValidation::Reserved => (3, 0, 0),
        };
        Self {
            high: self
                .high
                .with_source_id(sid)
                .with_source_id_qualifier(sq)
                .with_source_validation_type(svt),
            ..self
        }
    }

    /// P: the entry is present.
    pub const fn present(&self) -> bool {
        self.low.present()
    }

    /// The interrupt vector.
    pub const fn vector(&self) -> u8 {
        self.low.vector()
    }

    /// The destination APIC ID for the mode IRTA.EIME selects: the full 32-bit DST in x2APIC
    /// mode, DST bits 15:8 (IRTE bits 47:40) in xAPIC mode.
    pub const fn destination(&self, x2apic: bool) -> u32 {
        let dst = self.low.destination_id();
        if x2apic { dst } else { (dst >> 8) & 0xff }
    }

    /// The source-validation rule of this entry.
    pub const fn source_validation(&self) -> SourceValidation {
        let sid = self.high.source_id();
        match self.high.source_validation_type() {
            0 => SourceValidation::None,
            1 => SourceValidation::RequesterId {
                sid,
                sq: self.high.source_id_qualifier(),
            },
            2 => SourceValidation::BusRange {
                start_bus: (sid >> 8) as u8,
                end_bus: sid as u8,
            },
            _ => SourceValidation::Reserved,
        }
    }

    /// Whether an interrupt from `requester` passes the entry's source-id check
    /// (VT-d spec 9.10, SVT/SQ). With the reserved SVT value nothing passes.
    pub const fn source_id_matches(&self, requester: u16) -> bool {
        match self.source_validation() {
            SourceValidation::None => true,
            SourceValidation::RequesterId { sid, sq } => {
                // SQ 1/2/3 ignore SID bit 2 / bits 2:1 / bits 2:0 (the function number's bits).
                let ignored: u16 = match sq {
                    0 => 0,
                    1 => 0b100,
                    2 => 0b110,
                    _ => 0b111,
                };
                (sid & !ignored) == (requester & !ignored)
            }
            SourceValidation::BusRange { start_bus, end_bus } => {
                let bus = (requester >> 8) as u8;
                start_bus <= bus && bus <= end_bus
            }
            SourceValidation::Reserved => false,
        }
    }

    /// Checks the entry as the unit does before using it (VT-d spec 5.1.4.1, 9.10):
    /// [`FaultReason::IrteNotPresent`] (0x22) when P is 0, otherwise
    /// [`FaultReason::IrteReserved`] (0x24) when a reserved field is set for the interrupt mode
    /// (`x2apic` = IRTA.EIME: xAPIC mode also reserves DST bits 39:32 and 63:48), when IM
    /// selects the unsupported posted format, or when SVT holds the reserved value 3.
    ///
    /// QEMU checks the same fields except the xAPIC-mode destination bits, which it masks
    /// off instead; the spec calls them reserved.
    pub const fn validate(&self, x2apic: bool) -> Result<(), FaultReason> {
        if !self.low.present() {
            return Err(FaultReason::IrteNotPresent);
        }
        let low_reserved = if x2apic {
            LOW_RESERVED
        } else {
            LOW_RESERVED | LOW_RESERVED_XAPIC
        };
        if self.low.into_bits() & low_reserved != 0
            || self.high.into_bits() & HIGH_RESERVED != 0
            || self.low.posted()
            || self.high.source_validation_type() == 3
        {
            return Err(FaultReason::IrteReserved);
        }
        Ok(())
    }
}

/// The interrupt address window: MSI writes to 0xFEEx_xxxx are interrupt requests
/// (VT-d spec 5.1.2).
pub const INTERRUPT_ADDRESS_BASE: u64 = 0xfee0_0000;

/// An interrupt request (a DMA write to the interrupt address window) classified by format
/// (VT-d spec 5.1.2): address bit 4 selects compatibility (0) or remappable (1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterruptRequest {
    /// Compatibility format: passed through unchanged only when GSTS.CFIS allows (with
    /// IRTA.EIME clear); otherwise blocked with fault 0x25.
    Compatibility {
        /// The MSI address (bits 31:0).
        address: u32,
        /// The MSI data.
        data: u32,
    },
    /// Remappable format.
    Remappable(RemappableMsi),
}

/// Why an interrupt write cannot be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum InterruptRequestError {
    /// The address is not in the 0xFEEx_xxxx window (including any address above 4 GiB), so
    /// this is not an interrupt request.
    #[error("address {0:#x} is outside the interrupt window 0xfeexxxxx")]
    NotInterruptAddress(u64),
    /// A remappable request with reserved data bits 31:16 set (fault 0x20).
    #[error("remappable interrupt request with reserved data bits {0:#x}")]
    ReservedDataBits(u32),
}

impl InterruptRequestError {
    /// The fault to record for this request, if any (VT-d spec 5.1.4.1).
    pub const fn fault_reason(&self) -> Option<FaultReason> {
        match self {
            Self::NotInterruptAddress(_) => None,
            Self::ReservedDataBits(_) => Some(FaultReason::IrRequestReserved),
        }
    }
}

/// A remappable-format MSI (VT-d spec 5.1.2.2): address 0xFEE0_0000 | `HANDLE[14:0]` << 5 |
/// 1 << 4 (format) | SHV << 3 | `HANDLE[15]` << 2, data = SUBHANDLE when SHV.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RemappableMsi {
    /// HANDLE: address bits 19:5 are `HANDLE[14:0]`, bit 2 is `HANDLE[15]`.
    pub handle: u16,
    /// SUBHANDLE (data bits 15:0) when SHV (address bit 3) is set.
    pub subhandle: Option<u16>,
}

impl RemappableMsi {
    /// Classifies and decodes the interrupt write of `data` to `addr` (VT-d spec 5.1.2).
    ///
    /// Address bits 1:0 are ignored; in remappable format with SHV clear the data is ignored
    /// except that bits 31:16 must be zero, as QEMU checks (`VTD_IR_MSI_DATA_RESERVED`).
    pub const fn decode(addr: u64, data: u32) -> Result<InterruptRequest, InterruptRequestError> {
        if addr >> 20 != INTERRUPT_ADDRESS_BASE >> 20 {
            return Err(InterruptRequestError::NotInterruptAddress(addr));
        }
        if addr & (1 << 4) == 0 {
            return Ok(InterruptRequest::Compatibility {
                address: addr as u32,
                data,
            });
        }
        if data >> 16 != 0 {
            return Err(InterruptRequestError::ReservedDataBits(data & 0xffff_0000));
        }
        let handle = ((addr >> 5) & 0x7fff) as u16 | (((addr >> 2) & 1) as u16) << 15;
        let subhandle = if addr & (1 << 3) != 0 {
            Some(data as u16)
        } else {
            None
        };
        Ok(InterruptRequest::Remappable(RemappableMsi {
            handle,
            subhandle,
        }))
    }

    /// The (address, data) of this request; the inverse of [`RemappableMsi::decode`] for
    /// addresses with bits 1:0 clear and, without SHV, data 0.
    pub const fn encode(&self) -> (u64, u32) {
        let handle = self.handle as u64;
        let mut addr =
            INTERRUPT_ADDRESS_BASE | ((handle & 0x7fff) << 5) | (1 << 4) | ((handle >> 15) << 2);
        let data = match self.subhandle {
            Some(subhandle) => {
                addr |= 1 << 3;
                subhandle as u32
            }
            None => 0,
        };
        (addr, data)
    }

    /// The IRTE index: HANDLE, plus SUBHANDLE when SHV is set (VT-d spec 5.1.2.2). Up to
    /// 0x1FFFE, so callers compare it against the table size (fault 0x21 beyond it).
    pub const fn interrupt_index(&self) -> u32 {
        match self.subhandle {
            Some(subhandle) => self.handle as u32 + subhandle as u32,
            None => self.handle as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_entries_linux_wrote() {
        // From the QEMU trace (QEMU labels the qwords the other way round): index 17, the
        // virtio-blk MSI-X vector 38 with SVT = 1 and SID 00:03.0.
        let irte = Irte::decode(0x26_0009, 0x4_0018);
        assert!(irte.present());
        assert_eq!(irte.vector(), 38);
        assert!(irte.low.redirection_hint());
        assert!(!irte.low.level_triggered());
        assert!(!irte.low.logical_destination());
        assert_eq!(irte.low.delivery_mode(), delivery_mode::FIXED);
        assert_eq!(irte.destination(false), 0);
        assert_eq!(
            irte.source_validation(),
            SourceValidation::RequesterId { sid: 0x18, sq: 0 }
        );
        assert_eq!(irte.validate(false), Ok(()));
        assert!(irte.source_id_matches(0x18));
        assert!(!irte.source_id_matches(0x19));
        assert_eq!(irte.to_words(), (0x26_0009, 0x4_0018));
    }

    #[test]
    fn builder_round_trips() {
        let irte = Irte::remapped(0x30, 3, false)
            .with_level_triggered(true)
            .with_logical_destination(true)
            .with_redirection_hint(true)
            .with_delivery_mode(delivery_mode::LOWEST_PRIORITY)
            .with_fault_processing_disable(true)
            .with_source_validation(SourceValidation::BusRange {
                start_bus: 2,
                end_bus: 4,
            });
        let (lo, hi) = irte.to_words();
        assert_eq!(lo, (3 << 40) | (0x30 << 16) | (1 << 5) | 0b11111);
        assert_eq!(hi, (2 << 18) | 0x0204);
        assert_eq!(Irte::decode(lo, hi), irte);
        assert_eq!(irte.destination(false), 3);
        assert_eq!(irte.validate(false), Ok(()));
        let x2 = Irte::remapped(0x40, 0x1234_5678, true);
        assert_eq!(x2.destination(true), 0x1234_5678);
        assert_eq!(x2.validate(true), Ok(()));
        assert_eq!(x2.validate(false), Err(FaultReason::IrteReserved));
    }

    #[test]
    fn validate_reports_the_ir_fault() {
        let good = Irte::remapped(0x30, 1, false);
        assert_eq!(
            Irte::default().validate(true),
            Err(FaultReason::IrteNotPresent)
        );
        let (lo, hi) = good.to_words();
        for bit in [12, 14, 24, 31] {
            assert_eq!(
                Irte::decode(lo | (1 << bit), hi).validate(true),
                Err(FaultReason::IrteReserved)
            );
        }
        for bit in [32, 39, 48, 63] {
            assert_eq!(
                Irte::decode(lo | (1 << bit), hi).validate(false),
                Err(FaultReason::IrteReserved)
            );
            assert_eq!(Irte::decode(lo | (1 << bit), hi).validate(true), Ok(()));
        }
        for bit in [20, 40, 63] {
            assert_eq!(
                Irte::decode(lo, hi | (1 << bit)).validate(true),
                Err(FaultReason::IrteReserved)
            );
        }
        assert_eq!(
            Irte::decode(lo | (1 << 15), hi).validate(true),
            Err(FaultReason::IrteReserved),
            "posted"
        );
        let svt3 = good.with_source_validation(SourceValidation::Reserved);
        assert_eq!(svt3.validate(false), Err(FaultReason::IrteReserved));
        assert!(!svt3.source_id_matches(0));
        // AVAIL and FPD are not reserved.
        assert_eq!(Irte::decode(lo | 0xf02, hi).validate(false), Ok(()));
    }

    #[test]
    fn source_id_qualifier_masks_function_bits() {
        let base = Irte::remapped(1, 0, true);
        let check = |sq: u8, requester: u16| {
            base.with_source_validation(SourceValidation::RequesterId { sid: 0x0318, sq })
                .source_id_matches(requester)
        };
        assert!(check(0, 0x0318));
        assert!(!check(0, 0x031c));
        assert!(check(1, 0x031c));
        assert!(!check(1, 0x031a));
        assert!(check(2, 0x031e));
        assert!(!check(2, 0x0319));
        assert!(check(3, 0x031f));
        assert!(!check(3, 0x0320));
        assert!(!check(3, 0x0418));
        assert!(base.source_id_matches(0xffff), "SVT 0 checks nothing");
        let bridge = base.with_source_validation(SourceValidation::BusRange {
            start_bus: 2,
            end_bus: 4,
        });
        assert!(bridge.source_id_matches(0x0200));
        assert!(bridge.source_id_matches(0x04ff));
        assert!(!bridge.source_id_matches(0x0100));
        assert!(!bridge.source_id_matches(0x0500));
    }

    #[test]
    fn remappable_msi() {
        // From the trace: IOAPIC pin handles and the virtio-blk MSI-X (SHV, handle 0x11).
        for (addr, data, index) in [
            (0xfee0_0010, 1, 0),
            (0xfee0_0030, 2, 1),
            (0xfee0_0170, 0xc, 11),
            (0xfee0_0238, 0, 17),
        ] {
            let Ok(InterruptRequest::Remappable(msi)) = RemappableMsi::decode(addr, data) else {
                panic!("{addr:#x} is remappable");
            };
            assert_eq!(msi.interrupt_index(), index);
        }
        let msi = RemappableMsi {
            handle: 0x8000 | 0x7fff,
            subhandle: Some(0xffff),
        };
        let (addr, data) = msi.encode();
        assert_eq!(addr, 0xfeef_fffc);
        assert_eq!(
            RemappableMsi::decode(addr, data),
            Ok(InterruptRequest::Remappable(msi))
        );
        assert_eq!(msi.interrupt_index(), 0x1_fffe);
        assert_eq!(
            RemappableMsi::decode(0xfee0_0000, 0x4030),
            Ok(InterruptRequest::Compatibility {
                address: 0xfee0_0000,
                data: 0x4030
            })
        );
        assert_eq!(
            RemappableMsi::decode(0xfee0_0010, 0x1_0000),
            Err(InterruptRequestError::ReservedDataBits(0x1_0000))
        );
        assert_eq!(
            InterruptRequestError::ReservedDataBits(0x1_0000).fault_reason(),
            Some(FaultReason::IrRequestReserved)
        );
        for addr in [0xfed0_0010, 0x1_fee0_0010, 0xfef0_0010] {
            assert_eq!(
                RemappableMsi::decode(addr, 0),
                Err(InterruptRequestError::NotInterruptAddress(addr))
            );
        }
    }
}
