//! The ACPI DMA Remapping Reporting table (DMAR), VT-d specification chapter 8.
//!
//! [`Dmar`] is a plain model of the table: the fields of the DMAR header (§8.1) and an ordered
//! list of remapping structures (§8.2): DRHD (§8.3), RMRR (§8.4), ATSR (§8.5), RHSA (§8.6),
//! ANDD (§8.7) and SATC (§8.8), with their device scopes (§8.3.1). Structures of any other type
//! are kept verbatim as [`RemappingStructure::Unknown`].
//!
//! * [`Dmar::to_bytes`] / [`Dmar::to_sdt`] serialise the table; the 36-byte ACPI header, the
//!   table length and the checksum come from [`acpi_tables::sdt::Sdt`]. The header's creator
//!   ID and revision are therefore those of `acpi_tables` (`"RVAT"`, `[0, 0, 0, 1]`), not
//!   QEMU's `"BXPC"`; everything from byte 36 on is laid out exactly as QEMU's
//!   `build_dmar_q35` and Linux's `include/acpi/actbl1.h` expect.
//! * [`Dmar::parse`] reads a table from untrusted bytes. Every length is checked against its
//!   container, the signature and the checksum are verified, and every violation is reported
//!   as a [`DmarError`]; parsing never panics and always terminates (each remapping structure
//!   and each device scope advances the cursor by at least its minimum size).
//!
//! `Dmar::parse(&dmar.to_bytes()) == Ok(dmar)` for every table `to_bytes` accepts, provided
//! [`RemappingStructure::Unknown`] is only used with types the parser does not know (> 5).
//!
//! Reserved fields are written as zero and ignored when parsing, as are the header's revision,
//! creator ID and creator revision, and the reserved flag bits of DRHD, ATSR and SATC.

use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};

/// Table signature, `"DMAR"` (§8.1).
pub const DMAR_SIGNATURE: [u8; 4] = *b"DMAR";

/// Header revision written by [`Dmar::to_bytes`]; QEMU's `build_dmar_q35` also emits 1.
pub const DMAR_REVISION: u8 = 1;

/// Size of the standard ACPI system description table header.
pub const ACPI_HEADER_LEN: usize = 36;

/// Offset of the first remapping structure: the ACPI header, host address width, flags and
/// 10 reserved bytes (§8.1).
pub const DMAR_STRUCTURES_OFFSET: usize = 48;

/// OEM ID used by [`Dmar::for_single_unit`].
pub const DEFAULT_OEM_ID: [u8; 6] = *b"VTD   ";

/// OEM table ID used by [`Dmar::for_single_unit`].
pub const DEFAULT_OEM_TABLE_ID: [u8; 8] = *b"VTDDMAR ";

/// OEM revision used by [`Dmar::for_single_unit`] (QEMU also uses 1).
pub const DEFAULT_OEM_REVISION: u32 = 1;

/// Start bus number QEMU's q35 uses for the platform IOAPIC's device scope
/// (`Q35_PSEUDO_BUS_PLATFORM`, `include/hw/pci-host/q35.h`).
pub const Q35_IOAPIC_BUS: u8 = 0xff;

/// Device/function path QEMU's q35 uses for the platform IOAPIC's device scope
/// (`Q35_PSEUDO_DEVFN_IOAPIC` = devfn 0x00, i.e. device 0 function 0). Together with
/// [`Q35_IOAPIC_BUS`] this makes the IOAPIC's source-id 0xff00.
pub const Q35_IOAPIC_PATH: (u8, u8) = (0, 0);

/// Largest number of path entries a device scope can hold: its length byte is
/// `6 + 2 * path.len()` and must fit in a `u8`.
pub const MAX_SCOPE_PATH_LEN: usize = (u8::MAX as usize - SCOPE_HEADER_LEN) / 2;

const SCOPE_HEADER_LEN: usize = 6;
const STRUCT_HEADER_LEN: usize = 4;

const TYPE_DRHD: u16 = 0;
const TYPE_RMRR: u16 = 1;
const TYPE_ATSR: u16 = 2;
const TYPE_RHSA: u16 = 3;
const TYPE_ANDD: u16 = 4;
const TYPE_SATC: u16 = 5;

const DRHD_MIN_LEN: usize = 16;
const RMRR_MIN_LEN: usize = 24;
const ATSR_MIN_LEN: usize = 8;
const RHSA_MIN_LEN: usize = 20;
const ANDD_MIN_LEN: usize = 8;
const SATC_MIN_LEN: usize = 8;

/// The DMA Remapping Reporting structure, i.e. the whole DMAR table (§8.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dmar {
    /// OEM ID of the ACPI header.
    pub oem_id: [u8; 6],
    /// OEM table ID of the ACPI header.
    pub oem_table_id: [u8; 8],
    /// OEM revision of the ACPI header.
    pub oem_revision: u32,
    /// Maximum DMA physical addressability of the platform, in bits (e.g. 39 or 48).
    ///
    /// The table stores this value minus one (§8.1 "Host Address Width"); the conversion
    /// wraps, so 0 is stored as 0xff and read back as 0.
    pub host_address_width: u8,
    /// The DMAR flags byte (§8.1).
    pub flags: DmarFlags,
    /// The remapping structures, in table order (§8.2).
    pub structures: Vec<RemappingStructure>,
}

/// The DMAR header's flags byte (§8.1). All eight bits are preserved, including reserved ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DmarFlags(pub u8);

impl DmarFlags {
    /// Bit 0, INTR_REMAP: the platform supports interrupt remapping.
    pub const INTR_REMAP: DmarFlags = DmarFlags(1 << 0);
    /// Bit 1, X2APIC_OPT_OUT: firmware asks system software not to enable x2APIC mode. Only
    /// meaningful when [`DmarFlags::INTR_REMAP`] is set.
    pub const X2APIC_OPT_OUT: DmarFlags = DmarFlags(1 << 1);
    /// Bit 2, DMA_CTRL_PLATFORM_OPT_IN: firmware requests DMA protection to be kept on
    /// across the OS handoff (platform opt-in for kernel DMA protection).
    pub const DMA_CTRL_PLATFORM_OPT_IN: DmarFlags = DmarFlags(1 << 2);

    /// No flag set.
    pub const fn empty() -> Self {
        DmarFlags(0)
    }

    /// The raw flags byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: DmarFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the bits of `other` set (`on`) or cleared (`!on`).
    #[must_use]
    pub const fn with(self, other: DmarFlags, on: bool) -> Self {
        if on {
            DmarFlags(self.0 | other.0)
        } else {
            DmarFlags(self.0 & !other.0)
        }
    }
}

impl core::ops::BitOr for DmarFlags {
    type Output = DmarFlags;

    fn bitor(self, rhs: DmarFlags) -> DmarFlags {
        DmarFlags(self.0 | rhs.0)
    }
}

impl core::ops::BitOrAssign for DmarFlags {
    fn bitor_assign(&mut self, rhs: DmarFlags) {
        self.0 |= rhs.0;
    }
}

/// One remapping structure of the DMAR table (§8.2), in the order it appears in the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RemappingStructure {
    /// Type 0: DMA Remapping Hardware Unit Definition (§8.3).
    Drhd(Drhd),
    /// Type 1: Reserved Memory Region Reporting (§8.4).
    Rmrr(Rmrr),
    /// Type 2: Root Port ATS Capability Reporting (§8.5).
    Atsr(Atsr),
    /// Type 3: Remapping Hardware Static Affinity (§8.6).
    Rhsa(Rhsa),
    /// Type 4: ACPI Name-space Device Declaration (§8.7).
    Andd(Andd),
    /// Type 5: SoC Integrated Address Translation Cache (§8.8).
    Satc(Satc),
    /// A structure of a type this crate does not model (e.g. 6, SIDP, of VT-d 4.1+), kept
    /// verbatim so that a parsed table serialises back unchanged.
    Unknown {
        /// The structure's type field.
        kind: u16,
        /// The structure's bytes after its 4-byte type/length header; the length field is
        /// `4 + bytes.len()`.
        bytes: Vec<u8>,
    },
}

impl RemappingStructure {
    /// The structure's type field (§8.2, Table "DMAR remapping structure types").
    pub fn kind(&self) -> u16 {
        match self {
            RemappingStructure::Drhd(_) => TYPE_DRHD,
            RemappingStructure::Rmrr(_) => TYPE_RMRR,
            RemappingStructure::Atsr(_) => TYPE_ATSR,
            RemappingStructure::Rhsa(_) => TYPE_RHSA,
            RemappingStructure::Andd(_) => TYPE_ANDD,
            RemappingStructure::Satc(_) => TYPE_SATC,
            RemappingStructure::Unknown { kind, .. } => *kind,
        }
    }
}

impl From<Drhd> for RemappingStructure {
    fn from(value: Drhd) -> Self {
        RemappingStructure::Drhd(value)
    }
}

impl From<Rmrr> for RemappingStructure {
    fn from(value: Rmrr) -> Self {
        RemappingStructure::Rmrr(value)
    }
}

impl From<Atsr> for RemappingStructure {
    fn from(value: Atsr) -> Self {
        RemappingStructure::Atsr(value)
    }
}

impl From<Rhsa> for RemappingStructure {
    fn from(value: Rhsa) -> Self {
        RemappingStructure::Rhsa(value)
    }
}

impl From<Andd> for RemappingStructure {
    fn from(value: Andd) -> Self {
        RemappingStructure::Andd(value)
    }
}

impl From<Satc> for RemappingStructure {
    fn from(value: Satc) -> Self {
        RemappingStructure::Satc(value)
    }
}

/// DMA Remapping Hardware Unit Definition structure, type 0 (§8.3).
///
/// Layout: u16 type, u16 length, u8 flags, u8 size, u16 segment, u64 register base address,
/// then device scopes (16 bytes before the scopes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Drhd {
    /// Flags bit 0, INCLUDE_PCI_ALL: the unit covers every PCI device of `segment` not
    /// claimed by another DRHD (only IOAPIC/HPET/ACPI-namespace scopes are then listed).
    pub include_pci_all: bool,
    /// Size of the register set as a power of two number of 4 KiB pages: the set spans
    /// `2^size * 4 KiB` (§8.3 "Size", reserved in revisions before 2.x; QEMU writes 0).
    pub size: u8,
    /// PCI segment number of the devices the unit covers.
    pub segment: u16,
    /// Base address of the unit's remapping register set.
    pub register_base: u64,
    /// Device scopes (§8.3.1).
    pub scopes: Vec<DeviceScope>,
}

/// Reserved Memory Region Reporting structure, type 1 (§8.4).
///
/// Layout: u16 type, u16 length, u16 reserved, u16 segment, u64 base, u64 limit, then device
/// scopes (24 bytes before the scopes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rmrr {
    /// PCI segment of the devices in `scopes`.
    pub segment: u16,
    /// Base address of the reserved region (4 KiB aligned).
    pub base: u64,
    /// Last address of the reserved region, inclusive (`limit + 1` is 4 KiB aligned).
    pub limit: u64,
    /// The devices that use the region (§8.3.1).
    pub scopes: Vec<DeviceScope>,
}

/// Root Port ATS Capability Reporting structure, type 2 (§8.5).
///
/// Layout: u16 type, u16 length, u8 flags, u8 reserved, u16 segment, then device scopes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Atsr {
    /// Flags bit 0, ALL_PORTS: every root port of `segment` supports ATS.
    pub all_ports: bool,
    /// PCI segment of the root ports.
    pub segment: u16,
    /// The ATS-capable root ports (bridge scopes) when `all_ports` is clear.
    pub scopes: Vec<DeviceScope>,
}

/// Remapping Hardware Static Affinity structure, type 3 (§8.6).
///
/// Layout: u16 type, u16 length (20), u32 reserved, u64 register base, u32 proximity domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rhsa {
    /// Register base address of the DRHD this structure refers to.
    pub register_base: u64,
    /// ACPI proximity domain of that unit.
    pub proximity_domain: u32,
}

/// ACPI Name-space Device Declaration structure, type 4 (§8.7).
///
/// Layout: u16 type, u16 length, 3 reserved bytes, u8 ACPI device number, then the
/// NUL-terminated ACPI object name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Andd {
    /// The number ACPI-namespace device scopes (type 5) use as enumeration ID for this device.
    pub acpi_device_number: u8,
    /// Fully qualified ACPI object name of the device, e.g. `\_SB.PCI0.DEV0`. Stored in the
    /// table followed by a NUL byte, so it must not itself contain NUL.
    pub object_name: String,
}

/// SoC Integrated Address Translation Cache reporting structure, type 5 (§8.8).
///
/// Layout: u16 type, u16 length, u8 flags, u8 reserved, u16 segment, then device scopes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Satc {
    /// Flags bit 0, ATC_REQUIRED: the devices require their ATC to be enabled for correct
    /// operation.
    pub atc_required: bool,
    /// PCI segment of the devices.
    pub segment: u16,
    /// The SoC-integrated devices with an ATC.
    pub scopes: Vec<DeviceScope>,
}

/// Device scope entry (§8.3.1).
///
/// Layout: u8 type, u8 length (`6 + 2 * path.len()`), u16 reserved (byte 2 is a flags byte in
/// recent ACPICA; it is written as 0 and ignored), u8 enumeration ID, u8 start bus number,
/// then `(device, function)` byte pairs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceScope {
    /// What the scope designates.
    pub kind: ScopeKind,
    /// IOAPIC ID, HPET number or ACPI device number (see [`Andd`]) for those kinds; 0 for
    /// PCI endpoints and bridges.
    pub enumeration_id: u8,
    /// Bus number of the first hop of `path`.
    pub start_bus: u8,
    /// Hierarchical path from `start_bus` to the device: one `(device, function)` pair per
    /// bridge crossed plus the device itself. At most [`MAX_SCOPE_PATH_LEN`] entries.
    pub path: Vec<(u8, u8)>,
}

/// Device scope entry types (§8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ScopeKind {
    /// 1: a PCI endpoint device.
    Endpoint = 1,
    /// 2: a PCI-PCI bridge; the scope covers everything below it.
    Bridge = 2,
    /// 3: an I/O APIC; the enumeration ID is its IOAPIC ID.
    IoApic = 3,
    /// 4: an MSI-capable HPET; the enumeration ID is its HPET number.
    Hpet = 4,
    /// 5: an ACPI name-space device; the enumeration ID is its ANDD device number.
    AcpiNamespace = 5,
}

impl ScopeKind {
    /// The scope type for a raw type byte, if it is one of the defined ones.
    pub const fn from_raw(raw: u8) -> Option<ScopeKind> {
        match raw {
            1 => Some(ScopeKind::Endpoint),
            2 => Some(ScopeKind::Bridge),
            3 => Some(ScopeKind::IoApic),
            4 => Some(ScopeKind::Hpet),
            5 => Some(ScopeKind::AcpiNamespace),
            _ => None,
        }
    }

    /// The raw type byte.
    pub const fn raw(self) -> u8 {
        self as u8
    }
}

/// Why a DMAR table could not be parsed or serialised.
///
/// Offsets are byte offsets from the start of the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmarError {
    /// The input is shorter than the ACPI header or than the header's length field says.
    #[error("DMAR table truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes required.
        needed: usize,
        /// Bytes supplied.
        available: usize,
    },
    /// The signature is not `"DMAR"`.
    #[error("bad signature {found:02x?}, expected \"DMAR\"")]
    BadSignature {
        /// The four signature bytes found.
        found: [u8; 4],
    },
    /// The header's length is smaller than the fixed part of the DMAR table (48 bytes).
    #[error("DMAR length {length} is smaller than the 48-byte fixed part")]
    LengthTooSmall {
        /// The header's length field.
        length: u32,
    },
    /// The bytes of the table do not sum to zero modulo 256.
    #[error("DMAR checksum mismatch: bytes sum to {sum:#04x} instead of 0")]
    BadChecksum {
        /// The byte sum of the table as found.
        sum: u8,
    },
    /// Fewer than 4 bytes remain for a remapping structure's type/length header.
    #[error("remapping structure header at offset {offset} truncated ({remaining} bytes left)")]
    StructureHeaderTruncated {
        /// Offset of the structure.
        offset: usize,
        /// Bytes left in the table.
        remaining: usize,
    },
    /// A remapping structure's length is below the minimum for its type (this includes a
    /// zero length, which would otherwise loop forever).
    #[error(
        "remapping structure of type {kind} at offset {offset} has length {length}, \
         below its minimum {min}"
    )]
    StructureTooShort {
        /// Offset of the structure.
        offset: usize,
        /// Its type field.
        kind: u16,
        /// Its length field.
        length: u16,
        /// The minimum length for that type.
        min: usize,
    },
    /// A remapping structure extends past the end of the table.
    #[error(
        "remapping structure at offset {offset} with length {length} overruns the table \
         ({remaining} bytes left)"
    )]
    StructureOverrun {
        /// Offset of the structure.
        offset: usize,
        /// Its length field.
        length: u16,
        /// Bytes left in the table from `offset`.
        remaining: usize,
    },
    /// Fewer than 6 bytes remain in a structure for a device scope.
    #[error("device scope at offset {offset} truncated ({remaining} bytes left in structure)")]
    ScopeTruncated {
        /// Offset of the scope.
        offset: usize,
        /// Bytes left in the enclosing structure.
        remaining: usize,
    },
    /// A device scope's length is not of the form `6 + 2 * n`.
    #[error("device scope at offset {offset} has invalid length {length}")]
    ScopeBadLength {
        /// Offset of the scope.
        offset: usize,
        /// Its length field.
        length: u8,
    },
    /// A device scope extends past the end of its structure.
    #[error(
        "device scope at offset {offset} with length {length} overruns its structure \
         ({remaining} bytes left)"
    )]
    ScopeOverrun {
        /// Offset of the scope.
        offset: usize,
        /// Its length field.
        length: u8,
        /// Bytes left in the enclosing structure from `offset`.
        remaining: usize,
    },
    /// A device scope has a type other than 1..=5.
    #[error("device scope at offset {offset} has unknown type {kind}")]
    UnknownScopeKind {
        /// Offset of the scope.
        offset: usize,
        /// Its type byte.
        kind: u8,
    },
    /// An ANDD object name has no terminating NUL within the structure.
    #[error("ANDD at offset {offset}: object name is not NUL-terminated")]
    AnddNameUnterminated {
        /// Offset of the ANDD structure.
        offset: usize,
    },
    /// An ANDD object name is not valid UTF-8 (the specification requires ASCII).
    #[error("ANDD at offset {offset}: object name is not valid UTF-8")]
    AnddNameInvalid {
        /// Offset of the ANDD structure.
        offset: usize,
    },
    /// Serialising: an ANDD object name contains a NUL byte.
    #[error("ANDD object name contains a NUL byte")]
    AnddNameContainsNul,
    /// Serialising: a device scope path has more than [`MAX_SCOPE_PATH_LEN`] entries.
    #[error("device scope path has {len} entries, at most {MAX_SCOPE_PATH_LEN} fit")]
    ScopePathTooLong {
        /// The path's length.
        len: usize,
    },
    /// Serialising: a remapping structure would be longer than 65535 bytes.
    #[error("remapping structure of type {kind} would be {len} bytes, more than 65535")]
    StructureTooLarge {
        /// Its type.
        kind: u16,
        /// Its encoded length.
        len: usize,
    },
    /// Serialising: the table would be longer than `u32::MAX` bytes.
    #[error("DMAR table would be {len} bytes, more than u32::MAX")]
    TableTooLarge {
        /// The encoded length.
        len: usize,
    },
}

impl Dmar {
    /// A table for a VMM with a single remapping unit, shaped like QEMU's q35 DMAR
    /// (`build_dmar_q35` in `hw/i386/acpi-build.c`) as QEMU 2.7 to 6.0 emitted it, with
    /// INCLUDE_PCI_ALL. QEMU 6.1 and later (commit "hw/i386/acpi-build: Add DMAR support to
    /// bypass iommu") clear INCLUDE_PCI_ALL and list one endpoint/bridge scope per device on
    /// each root bus instead; build such a table with [`Dmar`]'s fields directly.
    ///
    /// * header flags: INTR_REMAP if `intr_remap`, X2APIC_OPT_OUT if `x2apic_opt_out` (the
    ///   spec only gives that bit meaning when INTR_REMAP is set; QEMU never sets it);
    /// * one DRHD on segment 0 with INCLUDE_PCI_ALL, `size` 0 (one 4 KiB page, as QEMU) and
    ///   the given register base (QEMU: 0xfed9_0000);
    /// * if `ioapic_id` is `Some`, an IOAPIC device scope in that DRHD exactly as QEMU emits
    ///   it: type 3, enumeration ID = the IOAPIC ID (QEMU: 0), start bus
    ///   [`Q35_IOAPIC_BUS`] (0xff), path [`Q35_IOAPIC_PATH`] (device 0, function 0), so the
    ///   IOAPIC's interrupt requests carry source-id 0xff00. QEMU emits this scope whether or
    ///   not interrupt remapping is enabled, and so does this function; pass `None` to omit
    ///   it. Interrupt remapping requires every IOAPIC to be listed.
    ///
    /// The OEM fields are [`DEFAULT_OEM_ID`], [`DEFAULT_OEM_TABLE_ID`] and
    /// [`DEFAULT_OEM_REVISION`]; they are public fields and may be changed afterwards.
    pub fn for_single_unit(
        register_base: u64,
        host_address_width: u8,
        intr_remap: bool,
        x2apic_opt_out: bool,
        ioapic_id: Option<u8>,
    ) -> Dmar {
        let flags = DmarFlags::empty()
            .with(DmarFlags::INTR_REMAP, intr_remap)
            .with(DmarFlags::X2APIC_OPT_OUT, x2apic_opt_out);
        let scopes = ioapic_id
            .map(|id| DeviceScope {
                kind: ScopeKind::IoApic,
                enumeration_id: id,
                start_bus: Q35_IOAPIC_BUS,
                path: vec![Q35_IOAPIC_PATH],
            })
            .into_iter()
            .collect();
        Dmar {
            oem_id: DEFAULT_OEM_ID,
            oem_table_id: DEFAULT_OEM_TABLE_ID,
            oem_revision: DEFAULT_OEM_REVISION,
            host_address_width,
            flags,
            structures: vec![RemappingStructure::Drhd(Drhd {
                include_pci_all: true,
                size: 0,
                segment: 0,
                register_base,
                scopes,
            })],
        }
    }

    /// The complete table: ACPI header (signature `"DMAR"`, revision [`DMAR_REVISION`],
    /// length and checksum filled in by [`acpi_tables::sdt::Sdt`]) followed by the DMAR
    /// fields and structures.
    ///
    /// # Panics
    ///
    /// If the table cannot be encoded; see [`Dmar::try_to_bytes`] for the conditions.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_sdt().as_slice().to_vec()
    }

    /// Like [`Dmar::to_bytes`], but reports a table that cannot be encoded: an ANDD name
    /// containing NUL, a scope path longer than [`MAX_SCOPE_PATH_LEN`], a structure longer
    /// than 65535 bytes or a table longer than `u32::MAX` bytes.
    pub fn try_to_bytes(&self) -> Result<Vec<u8>, DmarError> {
        Ok(self.try_to_sdt()?.as_slice().to_vec())
    }

    /// The table as an [`acpi_tables::sdt::Sdt`], for VMMs that assemble their ACPI tables
    /// with `acpi_tables` (the `Sdt` implements [`acpi_tables::Aml`]).
    ///
    /// # Panics
    ///
    /// If the table cannot be encoded; see [`Dmar::try_to_bytes`] for the conditions.
    pub fn to_sdt(&self) -> Sdt {
        match self.try_to_sdt() {
            Ok(sdt) => sdt,
            Err(e) => panic!("cannot encode DMAR table: {e}"),
        }
    }

    /// Like [`Dmar::to_sdt`], but reports a table that cannot be encoded (see
    /// [`Dmar::try_to_bytes`]).
    pub fn try_to_sdt(&self) -> Result<Sdt, DmarError> {
        let body = self.encode_body()?;
        let total = ACPI_HEADER_LEN + body.len();
        if u32::try_from(total).is_err() {
            return Err(DmarError::TableTooLarge { len: total });
        }
        let mut sdt = Sdt::new(
            DMAR_SIGNATURE,
            ACPI_HEADER_LEN as u32,
            DMAR_REVISION,
            self.oem_id,
            self.oem_table_id,
            self.oem_revision,
        );
        // Updates the header's length and checksum.
        sdt.append_slice(&body);
        Ok(sdt)
    }

    /// Everything after the ACPI header.
    fn encode_body(&self) -> Result<Vec<u8>, DmarError> {
        let mut out = Vec::new();
        out.byte(self.host_address_width.wrapping_sub(1));
        out.byte(self.flags.bits());
        out.vec(&[0; 10]);
        for s in &self.structures {
            encode_structure(s, &mut out)?;
        }
        Ok(out)
    }

    /// Parses a DMAR table from untrusted bytes.
    ///
    /// `bytes` must start with the table; bytes past the header's length field are ignored.
    /// The signature, the length (at least 48 and within `bytes`) and the checksum are
    /// verified, then every remapping structure and device scope is bounds-checked. The
    /// header's revision and creator fields are not interpreted.
    pub fn parse(bytes: &[u8]) -> Result<Dmar, DmarError> {
        if bytes.len() < ACPI_HEADER_LEN {
            return Err(DmarError::Truncated {
                needed: ACPI_HEADER_LEN,
                available: bytes.len(),
            });
        }
        let signature = array::<4>(bytes, 0);
        if signature != DMAR_SIGNATURE {
            return Err(DmarError::BadSignature { found: signature });
        }
        let length = u32::from_le_bytes(array(bytes, 4));
        // A u32 always fits in usize on the 32/64-bit targets this crate supports; saturate
        // otherwise so the comparison below still rejects it.
        let len = usize::try_from(length).unwrap_or(usize::MAX);
        if len > bytes.len() {
            return Err(DmarError::Truncated {
                needed: len,
                available: bytes.len(),
            });
        }
        if len < DMAR_STRUCTURES_OFFSET {
            return Err(DmarError::LengthTooSmall { length });
        }
        let Some(table) = bytes.get(..len) else {
            return Err(DmarError::Truncated {
                needed: len,
                available: bytes.len(),
            });
        };
        let sum = table.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
        if sum != 0 {
            return Err(DmarError::BadChecksum { sum });
        }

        let mut structures = Vec::new();
        let mut offset = DMAR_STRUCTURES_OFFSET;
        while offset < len {
            let remaining = len - offset;
            if remaining < STRUCT_HEADER_LEN {
                return Err(DmarError::StructureHeaderTruncated { offset, remaining });
            }
            let kind = u16::from_le_bytes(array(table, offset));
            let length = u16::from_le_bytes(array(table, offset + 2));
            let min = match kind {
                TYPE_DRHD => DRHD_MIN_LEN,
                TYPE_RMRR => RMRR_MIN_LEN,
                TYPE_ATSR => ATSR_MIN_LEN,
                TYPE_RHSA => RHSA_MIN_LEN,
                TYPE_ANDD => ANDD_MIN_LEN,
                TYPE_SATC => SATC_MIN_LEN,
                _ => STRUCT_HEADER_LEN,
            };
            if usize::from(length) < min {
                return Err(DmarError::StructureTooShort {
                    offset,
                    kind,
                    length,
                    min,
                });
            }
            if usize::from(length) > remaining {
                return Err(DmarError::StructureOverrun {
                    offset,
                    length,
                    remaining,
                });
            }
            let s = slice(table, offset, usize::from(length));
            structures.push(parse_structure(kind, s, offset)?);
            offset += usize::from(length);
        }

        Ok(Dmar {
            oem_id: array(table, 10),
            oem_table_id: array(table, 16),
            oem_revision: u32::from_le_bytes(array(table, 24)),
            host_address_width: byte(table, 36).wrapping_add(1),
            flags: DmarFlags(byte(table, 37)),
            structures,
        })
    }
}

/// Serialises the table as [`Dmar::to_bytes`] does.
///
/// # Panics
///
/// If the table cannot be encoded; see [`Dmar::try_to_bytes`].
impl Aml for Dmar {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.to_sdt().as_slice());
    }
}

/// `N` bytes of `bytes` from `offset`. The callers check the bounds first (to report the
/// error the ACPI table deserves); should one not, the missing bytes read as zeros rather
/// than panicking on firmware- or guest-supplied input.
fn array<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(slice(bytes, offset, N).get(..N).unwrap_or(&[0; N]));
    a
}

/// The byte at `offset` (0 past the end; see [`array`]).
fn byte(bytes: &[u8], offset: usize) -> u8 {
    bytes.get(offset).copied().unwrap_or(0)
}

/// `len` bytes from `offset`, cut short at the end of `bytes` (see [`array`]).
fn slice(bytes: &[u8], offset: usize, len: usize) -> &[u8] {
    let start = offset.min(bytes.len());
    let end = offset.saturating_add(len).min(bytes.len());
    bytes.get(start..end).unwrap_or(&[])
}

/// Everything from `offset` on (empty past the end).
fn tail(bytes: &[u8], offset: usize) -> &[u8] {
    bytes.get(offset..).unwrap_or(&[])
}

/// Appends `s` to `out`, with its length field patched in once known.
fn encode_structure(s: &RemappingStructure, out: &mut Vec<u8>) -> Result<(), DmarError> {
    let start = out.len();
    let kind = s.kind();
    out.word(kind);
    out.word(0); // length, patched below
    match s {
        RemappingStructure::Drhd(d) => {
            out.byte(u8::from(d.include_pci_all));
            out.byte(d.size);
            out.word(d.segment);
            out.qword(d.register_base);
            encode_scopes(&d.scopes, out)?;
        }
        RemappingStructure::Rmrr(r) => {
            out.word(0);
            out.word(r.segment);
            out.qword(r.base);
            out.qword(r.limit);
            encode_scopes(&r.scopes, out)?;
        }
        RemappingStructure::Atsr(a) => {
            out.byte(u8::from(a.all_ports));
            out.byte(0);
            out.word(a.segment);
            encode_scopes(&a.scopes, out)?;
        }
        RemappingStructure::Rhsa(r) => {
            out.dword(0);
            out.qword(r.register_base);
            out.dword(r.proximity_domain);
        }
        RemappingStructure::Andd(a) => {
            if a.object_name.as_bytes().contains(&0) {
                return Err(DmarError::AnddNameContainsNul);
            }
            out.vec(&[0; 3]);
            out.byte(a.acpi_device_number);
            out.vec(a.object_name.as_bytes());
            out.byte(0);
        }
        RemappingStructure::Satc(a) => {
            out.byte(u8::from(a.atc_required));
            out.byte(0);
            out.word(a.segment);
            encode_scopes(&a.scopes, out)?;
        }
        RemappingStructure::Unknown { bytes, .. } => out.vec(bytes),
    }
    let len = out.len() - start;
    let len16 = u16::try_from(len).map_err(|_| DmarError::StructureTooLarge { kind, len })?;
    if let Some(field) = out.get_mut(start + 2..start + 4) {
        field.copy_from_slice(&len16.to_le_bytes());
    }
    Ok(())
}

fn encode_scopes(scopes: &[DeviceScope], out: &mut Vec<u8>) -> Result<(), DmarError> {
    for sc in scopes {
        if sc.path.len() > MAX_SCOPE_PATH_LEN {
            return Err(DmarError::ScopePathTooLong { len: sc.path.len() });
        }
        // Cannot truncate: checked against MAX_SCOPE_PATH_LEN above.
        let len = (SCOPE_HEADER_LEN + 2 * sc.path.len()) as u8;
        out.byte(sc.kind.raw());
        out.byte(len);
        out.word(0);
        out.byte(sc.enumeration_id);
        out.byte(sc.start_bus);
        for &(device, function) in &sc.path {
            out.byte(device);
            out.byte(function);
        }
    }
    Ok(())
}

/// Parses one remapping structure; `s` is exactly its bytes (length already validated
/// against the type's minimum) and `offset` its position in the table.
fn parse_structure(kind: u16, s: &[u8], offset: usize) -> Result<RemappingStructure, DmarError> {
    let u16_at = |o: usize| u16::from_le_bytes(array(s, o));
    let u32_at = |o: usize| u32::from_le_bytes(array(s, o));
    let u64_at = |o: usize| u64::from_le_bytes(array(s, o));
    Ok(match kind {
        TYPE_DRHD => RemappingStructure::Drhd(Drhd {
            include_pci_all: byte(s, 4) & 1 != 0,
            size: byte(s, 5),
            segment: u16_at(6),
            register_base: u64_at(8),
            scopes: parse_scopes(tail(s, DRHD_MIN_LEN), offset + DRHD_MIN_LEN)?,
        }),
        TYPE_RMRR => RemappingStructure::Rmrr(Rmrr {
            segment: u16_at(6),
            base: u64_at(8),
            limit: u64_at(16),
            scopes: parse_scopes(tail(s, RMRR_MIN_LEN), offset + RMRR_MIN_LEN)?,
        }),
        TYPE_ATSR => RemappingStructure::Atsr(Atsr {
            all_ports: byte(s, 4) & 1 != 0,
            segment: u16_at(6),
            scopes: parse_scopes(tail(s, ATSR_MIN_LEN), offset + ATSR_MIN_LEN)?,
        }),
        TYPE_RHSA => RemappingStructure::Rhsa(Rhsa {
            register_base: u64_at(8),
            proximity_domain: u32_at(16),
        }),
        TYPE_ANDD => {
            let name = tail(s, ANDD_MIN_LEN);
            let nul = name
                .iter()
                .position(|&b| b == 0)
                .ok_or(DmarError::AnddNameUnterminated { offset })?;
            let object_name = core::str::from_utf8(slice(name, 0, nul))
                .map_err(|_| DmarError::AnddNameInvalid { offset })?
                .to_owned();
            RemappingStructure::Andd(Andd {
                acpi_device_number: byte(s, 7),
                object_name,
            })
        }
        TYPE_SATC => RemappingStructure::Satc(Satc {
            atc_required: byte(s, 4) & 1 != 0,
            segment: u16_at(6),
            scopes: parse_scopes(tail(s, SATC_MIN_LEN), offset + SATC_MIN_LEN)?,
        }),
        _ => RemappingStructure::Unknown {
            kind,
            bytes: tail(s, STRUCT_HEADER_LEN).to_vec(),
        },
    })
}

/// Parses the device scopes filling `data`, which starts at table offset `base`.
fn parse_scopes(data: &[u8], base: usize) -> Result<Vec<DeviceScope>, DmarError> {
    let mut scopes = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let offset = base + pos;
        let remaining = data.len() - pos;
        if remaining < SCOPE_HEADER_LEN {
            return Err(DmarError::ScopeTruncated { offset, remaining });
        }
        let raw_kind = byte(data, pos);
        let length = byte(data, pos + 1);
        let len = usize::from(length);
        // 6 + 2 * n: at least the header, and even (the header length is even).
        if len < SCOPE_HEADER_LEN || len & 1 != 0 {
            return Err(DmarError::ScopeBadLength { offset, length });
        }
        if len > remaining {
            return Err(DmarError::ScopeOverrun {
                offset,
                length,
                remaining,
            });
        }
        let kind = ScopeKind::from_raw(raw_kind).ok_or(DmarError::UnknownScopeKind {
            offset,
            kind: raw_kind,
        })?;
        let path = slice(data, pos + SCOPE_HEADER_LEN, len - SCOPE_HEADER_LEN)
            .chunks_exact(2)
            .filter_map(|p| match *p {
                [device, function] => Some((device, function)),
                _ => None,
            })
            .collect();
        scopes.push(DeviceScope {
            kind,
            enumeration_id: byte(data, pos + 4),
            start_bus: byte(data, pos + 5),
            path,
        });
        pos += len;
    }
    Ok(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    #[test]
    fn single_unit_layout() {
        let d = Dmar::for_single_unit(0xfed9_0000, 48, true, false, Some(0));
        let b = d.to_bytes();
        assert_eq!(b.len(), 48 + 16 + 8);
        assert_eq!(&b[0..4], b"DMAR");
        assert_eq!(u32::from_le_bytes(array(&b, 4)), 72);
        assert_eq!(b[8], DMAR_REVISION);
        assert!(checksum_ok(&b));
        assert_eq!(b[36], 47);
        assert_eq!(b[37], 1);
        assert_eq!(&b[38..48], &[0; 10]);
        assert_eq!(&b[48..52], &[0, 0, 24, 0]);
        assert_eq!(&b[64..72], &[3, 8, 0, 0, 0, 0xff, 0, 0]);
        assert_eq!(Dmar::parse(&b), Ok(d));
    }

    #[test]
    fn sdt_matches_bytes_and_aml() {
        let d = Dmar::for_single_unit(0xfed9_0000, 39, false, false, None);
        let sdt = d.to_sdt();
        assert_eq!(sdt.as_slice(), d.to_bytes().as_slice());
        assert_eq!(sdt.len(), 64);
        let mut aml = Vec::new();
        d.to_aml_bytes(&mut aml);
        assert_eq!(aml, d.to_bytes());
    }

    #[test]
    fn zero_length_structure_is_an_error() {
        let mut d = Dmar::for_single_unit(0x1000, 48, false, false, None);
        d.structures.clear();
        let mut b = d.to_bytes();
        b.extend_from_slice(&[7, 0, 0, 0]); // unknown type, length 0
        fix_header(&mut b);
        assert_eq!(
            Dmar::parse(&b),
            Err(DmarError::StructureTooShort {
                offset: 48,
                kind: 7,
                length: 0,
                min: 4
            })
        );
    }

    #[test]
    fn try_to_bytes_rejects_unencodable() {
        let mut d = Dmar::for_single_unit(0x1000, 48, false, false, Some(1));
        if let RemappingStructure::Drhd(drhd) = &mut d.structures[0] {
            drhd.scopes[0].path = vec![(0, 0); MAX_SCOPE_PATH_LEN + 1];
        }
        assert_eq!(
            d.try_to_bytes(),
            Err(DmarError::ScopePathTooLong {
                len: MAX_SCOPE_PATH_LEN + 1
            })
        );
        d.structures = vec![RemappingStructure::Andd(Andd {
            acpi_device_number: 1,
            object_name: "a\0b".into(),
        })];
        assert_eq!(d.try_to_bytes(), Err(DmarError::AnddNameContainsNul));
        d.structures = vec![RemappingStructure::Unknown {
            kind: 9,
            bytes: vec![0; 65532],
        }];
        assert_eq!(
            d.try_to_bytes(),
            Err(DmarError::StructureTooLarge {
                kind: 9,
                len: 65536
            })
        );
        d.structures = vec![RemappingStructure::Unknown {
            kind: 9,
            bytes: vec![0; 65531],
        }];
        assert_eq!(d.try_to_bytes().map(|b| b.len()), Ok(48 + 65535));
    }

    #[test]
    fn host_address_width_wraps() {
        let mut d = Dmar::for_single_unit(0x1000, 0, false, false, None);
        let b = d.to_bytes();
        assert_eq!(b[36], 0xff);
        assert_eq!(Dmar::parse(&b).map(|p| p.host_address_width), Ok(0));
        d.host_address_width = 1;
        assert_eq!(d.to_bytes()[36], 0);
    }

    #[test]
    fn flags_helpers() {
        let f = DmarFlags::INTR_REMAP | DmarFlags::DMA_CTRL_PLATFORM_OPT_IN;
        assert_eq!(f.bits(), 0b101);
        assert!(f.contains(DmarFlags::INTR_REMAP));
        assert!(!f.contains(DmarFlags::X2APIC_OPT_OUT));
        assert_eq!(f.with(DmarFlags::INTR_REMAP, false).bits(), 0b100);
        let mut g = DmarFlags::empty();
        g |= DmarFlags::X2APIC_OPT_OUT;
        assert_eq!(g, DmarFlags(2));
        for raw in 0..=u8::MAX {
            match ScopeKind::from_raw(raw) {
                Some(k) => assert_eq!(k.raw(), raw),
                None => assert!(raw == 0 || raw > 5),
            }
        }
    }

    /// Rewrites the length and checksum of a hand-modified table.
    fn fix_header(b: &mut [u8]) {
        let len = b.len() as u32;
        b[4..8].copy_from_slice(&len.to_le_bytes());
        b[9] = 0;
        let sum = b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
        b[9] = sum.wrapping_neg();
    }
}
