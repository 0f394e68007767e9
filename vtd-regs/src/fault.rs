//! Non-recoverable fault reasons and the 128-bit fault-recording register (VT-d spec 7.1.3,
//! 10.4.14 and Appendix A "Non-Recoverable Fault Reason Encodings").
//!
//! The reason codes are the union of the spec's condition codes (LRT/LCT/LSL/LGN for legacy
//! mode, RTA/SRT/SCT/SPD/SPT/SFL/SSL/SGN for scalable mode and the interrupt-remapping table)
//! as named by Linux 6.12 (`drivers/iommu/intel/dmar.c`), QEMU 10
//! (`hw/i386/intel_iommu_internal.h`, `VTDFaultReason`) and VirtualBox's spec-derived
//! `VTDADDRFAULT`/`VTDINTRFAULT` tables. Codes that only one of those sources names without
//! describing (0x29, 0x33, 0x7D, 0x88, 0x89) are deliberately absent: [`FaultReason::from_code`]
//! returns `None` for them.

use core::fmt;

/// A non-recoverable fault reason, the FR field of a fault record (VT-d spec 7.1.3, Appendix A).
///
/// `#[repr(u8)]` with the architectural code as discriminant, so `reason as u8` is the FR value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FaultReason {
    // --- Legacy-mode DMA remapping (LRT/LCT/LSL/LGN) ---
    /// 0x01 (LRT.2): the Present field of the root entry is 0.
    RootEntryNotPresent = 0x01,
    /// 0x02 (LCT.2): the Present field of the context entry is 0.
    ContextEntryNotPresent = 0x02,
    /// 0x03 (LCT.4): invalid programming of a context entry (e.g. AW or TT unsupported).
    ContextEntryInvalid = 0x03,
    /// 0x04 (LGN.1): input address above (2^MGAW - 1) or the domain's adjusted width.
    AddressBeyondMgaw = 0x04,
    /// 0x05 (LGN.2): write request to a page without write permission.
    WriteNotPermitted = 0x05,
    /// 0x06 (LGN.3): read request to a page without read permission.
    ReadNotPermitted = 0x06,
    /// 0x07 (LSL.1): error accessing a second-stage paging entry.
    PagingEntryAccessError = 0x07,
    /// 0x08 (LRT.1): error accessing the root table.
    RootTableAccessError = 0x08,
    /// 0x09 (LCT.1): error accessing the context table.
    ContextTableAccessError = 0x09,
    /// 0x0A (LRT.3): non-zero reserved field in a present root entry.
    RootEntryReserved = 0x0A,
    /// 0x0B (LCT.3): non-zero reserved field in a present context entry.
    ContextEntryReserved = 0x0B,
    /// 0x0C (LSL.2): non-zero reserved field in a present second-stage paging entry.
    PagingEntryReserved = 0x0C,
    /// 0x0D (LCT.5): the context entry's translation type blocks this kind of request.
    ContextEntryTranslationTypeBlocked = 0x0D,
    /// 0x0E (LGN.4): the translated address falls in the interrupt address range
    /// 0xFEE0_0000..=0xFEEF_FFFF (QEMU `VTD_FR_INTERRUPT_ADDR`).
    InterruptAddressRange = 0x0E,

    // --- Interrupt remapping (VT-d spec 5.1.4.1) ---
    /// 0x20: reserved field set in a remappable interrupt request.
    IrRequestReserved = 0x20,
    /// 0x21: interrupt index beyond the interrupt-remapping table size (IRTA.S).
    IrIndexOutOfBounds = 0x21,
    /// 0x22: the Present field of the IRTE is 0.
    IrteNotPresent = 0x22,
    /// 0x23: error accessing the interrupt-remapping table that IRTA points to.
    IrTableAccessError = 0x23,
    /// 0x24: non-zero reserved field in a present IRTE.
    IrteReserved = 0x24,
    /// 0x25: compatibility-format interrupt blocked (IRTA.EIME set or GSTS.CFIS clear).
    IrCompatibilityBlocked = 0x25,
    /// 0x26: requester failed the IRTE's source-id check (SVT/SQ/SID).
    IrSourceIdInvalid = 0x26,
    /// 0x27: error accessing the posted-interrupt descriptor of a posted IRTE.
    PostedDescriptorAccessError = 0x27,
    /// 0x28: non-zero reserved field in a posted-interrupt descriptor.
    PostedDescriptorReserved = 0x28,

    // --- Scalable mode: root-table address register (RTA) ---
    /// 0x30 (RTA.1): invalid root-table address in RTADDR_REG.
    SmRootTableAddressInvalid = 0x30,
    /// 0x31 (RTA.2): request with PASID while RTADDR_REG.TTM selects legacy mode.
    SmLegacyModeRequestWithPasid = 0x31,
    /// 0x32 (RTA.3): page request (PRI) while RTADDR_REG.TTM selects legacy mode.
    SmLegacyModePageRequest = 0x32,

    // --- Scalable-mode root table (SRT) ---
    /// 0x38 (SRT.1): error accessing the scalable-mode root entry.
    SmRootEntryAccessError = 0x38,
    /// 0x39 (SRT.2): the lower/upper Present field of the scalable-mode root entry is 0.
    SmRootEntryNotPresent = 0x39,
    /// 0x3A (SRT.3): non-zero reserved field in a present scalable-mode root entry.
    SmRootEntryReserved = 0x3A,

    // --- Scalable-mode context table (SCT) ---
    /// 0x40 (SCT.1): error accessing the scalable-mode context entry.
    SmContextEntryAccessError = 0x40,
    /// 0x41 (SCT.2): the Present field of the scalable-mode context entry is 0.
    SmContextEntryNotPresent = 0x41,
    /// 0x42 (SCT.3): non-zero reserved field in a present scalable-mode context entry.
    SmContextEntryReserved = 0x42,
    /// 0x43 (SCT.4): invalid programming of a scalable-mode context entry.
    SmContextEntryInvalid = 0x43,
    /// 0x44 (SCT.5): translation request while the context entry's DTE is 0.
    SmContextDeviceTlbDisabled = 0x44,
    /// 0x45 (SCT.6): request with PASID while the context entry's PASIDE is 0.
    SmContextPasidDisabled = 0x45,
    /// 0x46 (SCT.7): PASID beyond the PASID-directory size (PDTS) of the context entry.
    SmPasidBeyondDirectorySize = 0x46,
    /// 0x47 (SCT.8): page request while the context entry's PRE is 0.
    SmContextPageRequestDisabled = 0x47,
    /// 0x48 (SCT.9): invalid RID_PASID field in the context entry.
    SmContextRidPasidInvalid = 0x48,

    // --- Scalable-mode PASID directory (SPD) ---
    /// 0x50 (SPD.1): error accessing the PASID-directory entry.
    PasidDirectoryAccessError = 0x50,
    /// 0x51 (SPD.2): the Present field of the PASID-directory entry is 0.
    PasidDirectoryEntryNotPresent = 0x51,
    /// 0x52 (SPD.3): non-zero reserved field in a present PASID-directory entry.
    PasidDirectoryEntryReserved = 0x52,

    // --- Scalable-mode PASID table (SPT) ---
    /// 0x58 (SPT.1): error accessing the PASID-table entry.
    PasidEntryAccessError = 0x58,
    /// 0x59 (SPT.2): the Present field of the PASID-table entry is 0.
    PasidEntryNotPresent = 0x59,
    /// 0x5A (SPT.3): non-zero reserved field in a present PASID-table entry.
    PasidEntryReserved = 0x5A,
    /// 0x5B (SPT.4): invalid programming of a PASID-table entry (e.g. unsupported PGTT).
    PasidEntryInvalid = 0x5B,
    /// 0x5C (SPT.5): execute request while the PASID entry's ERE is 0.
    PasidEntryExecuteDisabled = 0x5C,
    /// 0x5D (SPT.6): supervisor request while the PASID entry's SRE is 0.
    PasidEntrySupervisorDisabled = 0x5D,

    // --- Scalable-mode first stage (SFL/SFS) ---
    /// 0x70 (SFL.1): error accessing a first-stage paging entry.
    FirstStageAccessError = 0x70,
    /// 0x71 (SFL.2): the Present field of a first-stage paging entry is 0.
    FirstStageNotPresent = 0x71,
    /// 0x72 (SFL.3): non-zero reserved field in a present first-stage paging entry.
    FirstStageReserved = 0x72,
    /// 0x73 (SFL.4): error accessing the first-stage root (FSPTPTR of the PASID entry).
    FirstStageTablePointerInvalid = 0x73,
    /// 0x74 (SFL.5): nested translation: a first-stage entry address is beyond MGAW.
    NestedFirstStageBeyondMgaw = 0x74,
    /// 0x75 (SFL.6): nested translation: second stage denies reading the first-stage root.
    NestedFirstStageRootReadDenied = 0x75,
    /// 0x76 (SFL.7): nested translation: second stage denies reading a first-stage entry.
    NestedFirstStageReadDenied = 0x76,
    /// 0x77 (SFL.8): nested translation: second stage denies writing a first-stage entry
    /// (Accessed/Dirty update).
    NestedFirstStageWriteDenied = 0x77,

    // --- Scalable-mode second stage (SSL/SSS) ---
    /// 0x78 (SSL.1): error accessing a second-stage paging entry.
    SecondStageAccessError = 0x78,
    /// 0x79 (SSL.2): second-stage read/write permission violation.
    SecondStagePermissionDenied = 0x79,
    /// 0x7A (SSL.3): non-zero reserved field in a present second-stage paging entry.
    SecondStageReserved = 0x7A,
    /// 0x7B (SSL.4): invalid second-stage page-table pointer (SSPTPTR).
    SecondStageTablePointerInvalid = 0x7B,
    /// 0x7C (SSL.5): second-stage Accessed/Dirty update needed on a no-snoop walk.
    SecondStageAccessedDirtyNoSnoop = 0x7C,

    // --- Scalable-mode general (SGN) ---
    /// 0x80 (SGN.1): input address is not canonical for the first-stage paging depth.
    NonCanonicalAddress = 0x80,
    /// 0x81 (SGN.2): user-privilege request to a first-stage page with U/S = 0.
    UserAccessToSupervisorPage = 0x81,
    /// 0x82 (SGN.3): execute request to a page without execute permission.
    ExecuteNotPermitted = 0x82,
    /// 0x83 (SGN.4): input address beyond the hardware's maximum address width.
    AddressBeyondHardwareMax = 0x83,
    /// 0x84 (SGN.5): second-stage output address beyond the host address width.
    SecondStageAddressBeyondMax = 0x84,
    /// 0x85 (SGN.6): write (or AtomicOp) request without write permission.
    SmWriteNotPermitted = 0x85,
    /// 0x86 (SGN.7): read (or AtomicOp) request without read permission.
    SmReadNotPermitted = 0x86,
    /// 0x87 (SGN.8): translated address falls in the interrupt address range.
    SmInterruptAddressRange = 0x87,

    // --- Scalable-mode first stage, later additions ---
    /// 0x90 (SFL.9): first-stage Accessed/Dirty update needed on a no-snoop walk.
    FirstStageAccessedDirtyNoSnoop = 0x90,
    /// 0x91 (SFL.10 / SFS.10): the first-stage Accessed/Dirty update failed
    /// (QEMU `VTD_FR_FS_BIT_UPDATE_FAILED`).
    FirstStageAccessedDirtyUpdateFailed = 0x91,
}

impl FaultReason {
    /// Every reason this crate knows, in code order (for tables and exhaustive tests).
    pub const ALL: [FaultReason; 70] = [
        Self::RootEntryNotPresent,
        Self::ContextEntryNotPresent,
        Self::ContextEntryInvalid,
        Self::AddressBeyondMgaw,
        Self::WriteNotPermitted,
        Self::ReadNotPermitted,
        Self::PagingEntryAccessError,
        Self::RootTableAccessError,
        Self::ContextTableAccessError,
        Self::RootEntryReserved,
        Self::ContextEntryReserved,
        Self::PagingEntryReserved,
        Self::ContextEntryTranslationTypeBlocked,
        Self::InterruptAddressRange,
        Self::IrRequestReserved,
        Self::IrIndexOutOfBounds,
        Self::IrteNotPresent,
        Self::IrTableAccessError,
        Self::IrteReserved,
        Self::IrCompatibilityBlocked,
        Self::IrSourceIdInvalid,
        Self::PostedDescriptorAccessError,
        Self::PostedDescriptorReserved,
        Self::SmRootTableAddressInvalid,
        Self::SmLegacyModeRequestWithPasid,
        Self::SmLegacyModePageRequest,
        Self::SmRootEntryAccessError,
        Self::SmRootEntryNotPresent,
        Self::SmRootEntryReserved,
        Self::SmContextEntryAccessError,
        Self::SmContextEntryNotPresent,
        Self::SmContextEntryReserved,
        Self::SmContextEntryInvalid,
        Self::SmContextDeviceTlbDisabled,
        Self::SmContextPasidDisabled,
        Self::SmPasidBeyondDirectorySize,
        Self::SmContextPageRequestDisabled,
        Self::SmContextRidPasidInvalid,
        Self::PasidDirectoryAccessError,
        Self::PasidDirectoryEntryNotPresent,
        Self::PasidDirectoryEntryReserved,
        Self::PasidEntryAccessError,
        Self::PasidEntryNotPresent,
        Self::PasidEntryReserved,
        Self::PasidEntryInvalid,
        Self::PasidEntryExecuteDisabled,
        Self::PasidEntrySupervisorDisabled,
        Self::FirstStageAccessError,
        Self::FirstStageNotPresent,
        Self::FirstStageReserved,
        Self::FirstStageTablePointerInvalid,
        Self::NestedFirstStageBeyondMgaw,
        Self::NestedFirstStageRootReadDenied,
        Self::NestedFirstStageReadDenied,
        Self::NestedFirstStageWriteDenied,
        Self::SecondStageAccessError,
        Self::SecondStagePermissionDenied,
        Self::SecondStageReserved,
        Self::SecondStageTablePointerInvalid,
        Self::SecondStageAccessedDirtyNoSnoop,
        Self::NonCanonicalAddress,
        Self::UserAccessToSupervisorPage,
        Self::ExecuteNotPermitted,
        Self::AddressBeyondHardwareMax,
        Self::SecondStageAddressBeyondMax,
        Self::SmWriteNotPermitted,
        Self::SmReadNotPermitted,
        Self::SmInterruptAddressRange,
        Self::FirstStageAccessedDirtyNoSnoop,
        Self::FirstStageAccessedDirtyUpdateFailed,
    ];

    /// The FR code (VT-d spec Appendix A).
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The reason with FR code `code`, or `None` for a reserved or unknown code.
    pub const fn from_code(code: u8) -> Option<Self> {
        use FaultReason::*;
        Some(match code {
            0x01 => RootEntryNotPresent,
            0x02 => ContextEntryNotPresent,
            0x03 => ContextEntryInvalid,
            0x04 => AddressBeyondMgaw,
            0x05 => WriteNotPermitted,
            0x06 => ReadNotPermitted,
            0x07 => PagingEntryAccessError,
            0x08 => RootTableAccessError,
            0x09 => ContextTableAccessError,
            0x0A => RootEntryReserved,
            0x0B => ContextEntryReserved,
            0x0C => PagingEntryReserved,
            0x0D => ContextEntryTranslationTypeBlocked,
            0x0E => InterruptAddressRange,
            0x20 => IrRequestReserved,
            0x21 => IrIndexOutOfBounds,
            0x22 => IrteNotPresent,
            0x23 => IrTableAccessError,
            0x24 => IrteReserved,
            0x25 => IrCompatibilityBlocked,
            0x26 => IrSourceIdInvalid,
            0x27 => PostedDescriptorAccessError,
            0x28 => PostedDescriptorReserved,
            0x30 => SmRootTableAddressInvalid,
            0x31 => SmLegacyModeRequestWithPasid,
            0x32 => SmLegacyModePageRequest,
            0x38 => SmRootEntryAccessError,
            0x39 => SmRootEntryNotPresent,
            0x3A => SmRootEntryReserved,
            0x40 => SmContextEntryAccessError,
            0x41 => SmContextEntryNotPresent,
            0x42 => SmContextEntryReserved,
            0x43 => SmContextEntryInvalid,
            0x44 => SmContextDeviceTlbDisabled,
            0x45 => SmContextPasidDisabled,
            0x46 => SmPasidBeyondDirectorySize,
            0x47 => SmContextPageRequestDisabled,
            0x48 => SmContextRidPasidInvalid,
            0x50 => PasidDirectoryAccessError,
            0x51 => PasidDirectoryEntryNotPresent,
            0x52 => PasidDirectoryEntryReserved,
            0x58 => PasidEntryAccessError,
            0x59 => PasidEntryNotPresent,
            0x5A => PasidEntryReserved,
            0x5B => PasidEntryInvalid,
            0x5C => PasidEntryExecuteDisabled,
            0x5D => PasidEntrySupervisorDisabled,
            0x70 => FirstStageAccessError,
            0x71 => FirstStageNotPresent,
            0x72 => FirstStageReserved,
            0x73 => FirstStageTablePointerInvalid,
            0x74 => NestedFirstStageBeyondMgaw,
            0x75 => NestedFirstStageRootReadDenied,
            0x76 => NestedFirstStageReadDenied,
            0x77 => NestedFirstStageWriteDenied,
            0x78 => SecondStageAccessError,
            0x79 => SecondStagePermissionDenied,
            0x7A => SecondStageReserved,
            0x7B => SecondStageTablePointerInvalid,
            0x7C => SecondStageAccessedDirtyNoSnoop,
            0x80 => NonCanonicalAddress,
            0x81 => UserAccessToSupervisorPage,
            0x82 => ExecuteNotPermitted,
            0x83 => AddressBeyondHardwareMax,
            0x84 => SecondStageAddressBeyondMax,
            0x85 => SmWriteNotPermitted,
            0x86 => SmReadNotPermitted,
            0x87 => SmInterruptAddressRange,
            0x90 => FirstStageAccessedDirtyNoSnoop,
            0x91 => FirstStageAccessedDirtyUpdateFailed,
            _ => return None,
        })
    }

    /// Whether this is an interrupt-remapping fault (codes 0x20-0x2F, VT-d spec 5.1.4.1).
    ///
    /// For these the fault record's FI field holds the interrupt index in bits 63:48
    /// instead of a page address (spec 10.4.14).
    pub const fn is_interrupt_remapping(self) -> bool {
        matches!(self.code(), 0x20..=0x2F)
    }

    /// Whether this is a scalable-mode DMA-remapping fault (codes 0x30 and above).
    pub const fn is_scalable_mode(self) -> bool {
        self.code() >= 0x30
    }

    /// Whether the fault is *qualified*: recorded only while the Fault Processing Disable (FPD)
    /// field of the structure that applies is 0 (VT-d spec 7.1.2; the "Qualified" column of the
    /// fault-condition tables in 7.1.3 and 5.1.4.1).
    ///
    /// Unqualified faults are detected before any structure carrying an FPD field is
    /// available: root-table and root-entry faults (0x01, 0x08, 0x0A, 0x30-0x3A), errors
    /// fetching the context entry, the PASID-directory entry or the PASID-table entry
    /// themselves (0x09, 0x40, 0x50, 0x58; QEMU's `vtd_qualified_faults` agrees), and interrupt
    /// faults raised before the IRTE is read (0x20, 0x21, 0x23, 0x25). Faults found at or
    /// after a context entry, PASID entry or IRTE are qualified: that entry's FPD suppresses
    /// them. QEMU omits 0x0B from its table (so treats it as unqualified); the spec's LCT.3
    /// follows the other present-context-entry faults and is qualified here.
    pub const fn is_qualified(self) -> bool {
        use FaultReason::*;
        !matches!(
            self,
            RootEntryNotPresent
                | RootTableAccessError
                | ContextTableAccessError
                | RootEntryReserved
                | IrRequestReserved
                | IrIndexOutOfBounds
                | IrTableAccessError
                | IrCompatibilityBlocked
                | SmRootTableAddressInvalid
                | SmLegacyModeRequestWithPasid
                | SmLegacyModePageRequest
                | SmRootEntryAccessError
                | SmRootEntryNotPresent
                | SmRootEntryReserved
                | SmContextEntryAccessError
                | PasidDirectoryAccessError
                | PasidEntryAccessError
        )
    }

    /// A one-line human description of the fault condition (VT-d spec 7.1.3 wording, shortened).
    pub const fn description(self) -> &'static str {
        use FaultReason::*;
        match self {
            RootEntryNotPresent => "root entry not present",
            ContextEntryNotPresent => "context entry not present",
            ContextEntryInvalid => "context entry programmed invalidly",
            AddressBeyondMgaw => "input address beyond the guest address width",
            WriteNotPermitted => "write to a page without write permission",
            ReadNotPermitted => "read from a page without read permission",
            PagingEntryAccessError => "error fetching a second-stage paging entry",
            RootTableAccessError => "error fetching the root table",
            ContextTableAccessError => "error fetching the context table",
            RootEntryReserved => "reserved bits set in a present root entry",
            ContextEntryReserved => "reserved bits set in a present context entry",
            PagingEntryReserved => "reserved bits set in a present second-stage paging entry",
            ContextEntryTranslationTypeBlocked => {
                "request type blocked by the context entry's translation type"
            }
            InterruptAddressRange => "translated address in the interrupt address range",
            IrRequestReserved => "reserved bits set in a remappable interrupt request",
            IrIndexOutOfBounds => "interrupt index beyond the remapping table size",
            IrteNotPresent => "interrupt-remapping table entry not present",
            IrTableAccessError => "error fetching the interrupt-remapping table",
            IrteReserved => "reserved bits set in a present interrupt-remapping table entry",
            IrCompatibilityBlocked => "compatibility-format interrupt blocked",
            IrSourceIdInvalid => "interrupt requester failed the source-id check",
            PostedDescriptorAccessError => "error fetching a posted-interrupt descriptor",
            PostedDescriptorReserved => "reserved bits set in a posted-interrupt descriptor",
            SmRootTableAddressInvalid => "invalid root-table address",
            SmLegacyModeRequestWithPasid => "request with PASID while in legacy mode",
            SmLegacyModePageRequest => "page request while in legacy mode",
            SmRootEntryAccessError => "error fetching a scalable-mode root entry",
            SmRootEntryNotPresent => "scalable-mode root entry not present",
            SmRootEntryReserved => "reserved bits set in a scalable-mode root entry",
            SmContextEntryAccessError => "error fetching a scalable-mode context entry",
            SmContextEntryNotPresent => "scalable-mode context entry not present",
            SmContextEntryReserved => "reserved bits set in a scalable-mode context entry",
            SmContextEntryInvalid => "scalable-mode context entry programmed invalidly",
            SmContextDeviceTlbDisabled => "translation request while the context entry's DTE is 0",
            SmContextPasidDisabled => "request with PASID while the context entry's PASIDE is 0",
            SmPasidBeyondDirectorySize => "PASID beyond the context entry's PASID-directory size",
            SmContextPageRequestDisabled => "page request while the context entry's PRE is 0",
            SmContextRidPasidInvalid => "invalid RID_PASID in the context entry",
            PasidDirectoryAccessError => "error fetching a PASID-directory entry",
            PasidDirectoryEntryNotPresent => "PASID-directory entry not present",
            PasidDirectoryEntryReserved => "reserved bits set in a PASID-directory entry",
            PasidEntryAccessError => "error fetching a PASID-table entry",
            PasidEntryNotPresent => "PASID-table entry not present",
            PasidEntryReserved => "reserved bits set in a PASID-table entry",
            PasidEntryInvalid => "PASID-table entry programmed invalidly",
            PasidEntryExecuteDisabled => "execute request while the PASID entry's ERE is 0",
            PasidEntrySupervisorDisabled => "supervisor request while the PASID entry's SRE is 0",
            FirstStageAccessError => "error fetching a first-stage paging entry",
            FirstStageNotPresent => "first-stage paging entry not present",
            FirstStageReserved => "reserved bits set in a first-stage paging entry",
            FirstStageTablePointerInvalid => "error fetching the first-stage root table",
            NestedFirstStageBeyondMgaw => "nested: first-stage entry address beyond MGAW",
            NestedFirstStageRootReadDenied => {
                "nested: second stage denies reading the first-stage root"
            }
            NestedFirstStageReadDenied => "nested: second stage denies reading a first-stage entry",
            NestedFirstStageWriteDenied => {
                "nested: second stage denies writing a first-stage entry"
            }
            SecondStageAccessError => "error fetching a second-stage paging entry",
            SecondStagePermissionDenied => "second-stage read/write permission violation",
            SecondStageReserved => "reserved bits set in a second-stage paging entry",
            SecondStageTablePointerInvalid => "invalid second-stage page-table pointer",
            SecondStageAccessedDirtyNoSnoop => {
                "second-stage accessed/dirty update needed on a no-snoop walk"
            }
            NonCanonicalAddress => "input address not canonical for first-stage paging",
            UserAccessToSupervisorPage => "user request to a first-stage supervisor page",
            ExecuteNotPermitted => "execute request without execute permission",
            AddressBeyondHardwareMax => "input address beyond the hardware's address width",
            SecondStageAddressBeyondMax => "second-stage address beyond the host address width",
            SmWriteNotPermitted => "write request without write permission",
            SmReadNotPermitted => "read request without read permission",
            SmInterruptAddressRange => "translated address in the interrupt address range",
            FirstStageAccessedDirtyNoSnoop => {
                "first-stage accessed/dirty update needed on a no-snoop walk"
            }
            FirstStageAccessedDirtyUpdateFailed => "first-stage accessed/dirty update failed",
        }
    }
}

impl fmt::Display for FaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x} ({})", self.code(), self.description())
    }
}

/// The kind of request that faulted: the T1 (bit 126) and T2 (bit 92) fields of a fault record
/// (VT-d spec 10.4.14).
///
/// Linux reads only T1 (`readl(+12)` bit 30: 1 = read, 0 = write) and QEMU writes only T1
/// (1 for reads); T2 was added in VT-d 3.x to tell page requests and AtomicOps apart
/// (encoding as implemented by VirtualBox's spec-derived `VTDREQTYPE`: T1:T2 = 00 write,
/// 01 page request, 10 read, 11 AtomicOp).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultRequestKind {
    /// T1 = 0, T2 = 0: a write request.
    Write,
    /// T1 = 1, T2 = 0: a read request.
    Read,
    /// T1 = 0, T2 = 1: a page (PRI) request.
    PageRequest,
    /// T1 = 1, T2 = 1: an AtomicOp request.
    AtomicOp,
}

impl FaultRequestKind {
    /// The (T1, T2) bits of this kind.
    pub const fn type_bits(self) -> (bool, bool) {
        match self {
            Self::Write => (false, false),
            Self::Read => (true, false),
            Self::PageRequest => (false, true),
            Self::AtomicOp => (true, true),
        }
    }

    /// The kind encoded by the T1 and T2 bits.
    pub const fn from_type_bits(t1: bool, t2: bool) -> Self {
        match (t1, t2) {
            (false, false) => Self::Write,
            (true, false) => Self::Read,
            (false, true) => Self::PageRequest,
            (true, true) => Self::AtomicOp,
        }
    }
}

/// One primary fault record, the content of a 128-bit FRCD register without its F bit
/// (VT-d spec 10.4.14; QEMU hw/i386/intel_iommu_internal.h `VTD_FRCD_*`, Linux
/// drivers/iommu/intel/dmar.c `dmar_fault()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultRecord {
    /// SID (bits 79:64): requester ID of the faulting request.
    pub sid: u16,
    /// PV (bits 123:104) when PP (bit 95) is set: the request's PASID (20 bits).
    pub pasid: Option<u32>,
    /// FI (bits 63:12): the page address of a DMA fault, or for interrupt-remapping faults the
    /// interrupt index in bits 63:48 (see [`FaultRecord::for_interrupt`]). Bits 11:0 are
    /// reserved and are not recorded.
    pub address: u64,
    /// FR (bits 103:96).
    pub reason: FaultReason,
    /// T1 (bit 126) and T2 (bit 92).
    pub request: FaultRequestKind,
    /// EXE (bit 94): execute permission was requested.
    pub exec: bool,
    /// PRIV (bit 93): supervisor privilege was requested.
    pub privileged: bool,
    /// AT (bits 125:124): the PCIe address type of the request (2 bits).
    pub at: u8,
}

/// Bit positions of the FRCD register's high qword (bits 127:64; spec 10.4.14).
mod frcd_hi {
    pub const SID_MASK: u64 = 0xffff;
    pub const RESERVED: u64 = 0x0fff_0000;
    pub const T2: u64 = 1 << 28;
    pub const PRIV: u64 = 1 << 29;
    pub const EXE: u64 = 1 << 30;
    pub const PP: u64 = 1 << 31;
    pub const FR_SHIFT: u32 = 32;
    pub const PV_SHIFT: u32 = 40;
    pub const PV_MASK: u64 = 0xf_ffff;
    pub const AT_SHIFT: u32 = 60;
    pub const T1: u64 = 1 << 62;
    pub const F: u64 = 1 << 63;
}

/// Bits 11:0 of the FRCD low qword are reserved (FI occupies 63:12).
const FRCD_LO_RESERVED: u64 = 0xfff;

impl FaultRecord {
    /// A record for an interrupt-remapping fault: FI holds the interrupt index in bits 63:48
    /// and bits 47:12 are clear (VT-d spec 10.4.14). `request` is [`FaultRequestKind::Write`]
    /// because interrupt requests are memory writes.
    pub const fn for_interrupt(sid: u16, interrupt_index: u16, reason: FaultReason) -> Self {
        Self {
            sid,
            pasid: None,
            address: (interrupt_index as u64) << 48,
            reason,
            request: FaultRequestKind::Write,
            exec: false,
            privileged: false,
            at: 0,
        }
    }

    /// The interrupt index of an interrupt-remapping fault (FI bits 63:48), `None` for DMA faults.
    pub const fn interrupt_index(&self) -> Option<u16> {
        if self.reason.is_interrupt_remapping() {
            Some((self.address >> 48) as u16)
        } else {
            None
        }
    }

    /// The (low, high) qwords of the FRCD register for this record, with F (bit 127) clear:
    /// the unit sets F itself once the rest of the record is visible (spec 7.1.3).
    ///
    /// Fields wider than their slot are truncated to it: `address` to bits 63:12, `pasid` to
    /// 20 bits, `at` to 2 bits.
    pub const fn encode(&self) -> (u64, u64) {
        let lo = self.address & !FRCD_LO_RESERVED;
        let (t1, t2) = self.request.type_bits();
        let mut hi = self.sid as u64 & frcd_hi::SID_MASK;
        hi |= (self.reason.code() as u64) << frcd_hi::FR_SHIFT;
        hi |= ((self.at & 0x3) as u64) << frcd_hi::AT_SHIFT;
        if let Some(pasid) = self.pasid {
            hi |= frcd_hi::PP | ((pasid as u64 & frcd_hi::PV_MASK) << frcd_hi::PV_SHIFT);
        }
        if self.exec {
            hi |= frcd_hi::EXE;
        }
        if self.privileged {
            hi |= frcd_hi::PRIV;
        }
        if t1 {
            hi |= frcd_hi::T1;
        }
        if t2 {
            hi |= frcd_hi::T2;
        }
        (lo, hi)
    }

    /// Decodes an FRCD register pair; the F bit is ignored.
    ///
    /// `None` when FR is not a known reason, a reserved bit (low 11:0, high 91:80) is set, or
    /// PV is non-zero without PP (a record [`FaultRecord::encode`] cannot produce).
    pub const fn decode(lo: u64, hi: u64) -> Option<Self> {
        if lo & FRCD_LO_RESERVED != 0 || hi & frcd_hi::RESERVED != 0 {
            return None;
        }
        let Some(reason) = FaultReason::from_code((hi >> frcd_hi::FR_SHIFT) as u8) else {
            return None;
        };
        let pv = ((hi >> frcd_hi::PV_SHIFT) & frcd_hi::PV_MASK) as u32;
        let pasid = if hi & frcd_hi::PP != 0 {
            Some(pv)
        } else if pv != 0 {
            return None;
        } else {
            None
        };
        Some(Self {
            sid: (hi & frcd_hi::SID_MASK) as u16,
            pasid,
            address: lo,
            reason,
            request: FaultRequestKind::from_type_bits(hi & frcd_hi::T1 != 0, hi & frcd_hi::T2 != 0),
            exec: hi & frcd_hi::EXE != 0,
            privileged: hi & frcd_hi::PRIV != 0,
            at: ((hi >> frcd_hi::AT_SHIFT) & 0x3) as u8,
        })
    }

    /// The F (fault) bit of the FRCD high qword (bit 127), which the unit sets after writing
    /// the rest of the record and software clears by writing 1.
    pub const FAULT_BIT: u64 = frcd_hi::F;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_none() {
        let mut known = 0;
        for code in 0..=u8::MAX {
            match FaultReason::from_code(code) {
                Some(reason) => {
                    known += 1;
                    assert_eq!(reason.code(), code);
                    assert!(!reason.description().is_empty());
                }
                None => {
                    assert!(
                        matches!(code, 0 | 0x0F..=0x1F | 0x29..=0x2F | 0x33..=0x37 | 0x3B..=0x3F
                            | 0x49..=0x4F | 0x53..=0x57 | 0x5E..=0x6F | 0x7D..=0x7F
                            | 0x88..=0x8F | 0x92..=0xFF),
                        "code {code:#x} should be known"
                    );
                }
            }
        }
        assert_eq!(known, 70);
    }

    #[test]
    fn all_lists_every_known_reason() {
        for code in 0..=u8::MAX {
            if let Some(reason) = FaultReason::from_code(code) {
                assert!(
                    FaultReason::ALL.contains(&reason),
                    "{reason:?} missing from ALL"
                );
            }
        }
    }

    #[test]
    fn qualified_faults_follow_the_spec_tables() {
        use FaultReason::*;
        for unqualified in [
            RootEntryNotPresent,
            RootTableAccessError,
            RootEntryReserved,
            ContextTableAccessError,
            SmRootEntryNotPresent,
            SmRootEntryAccessError,
            SmRootEntryReserved,
            SmContextEntryAccessError,
            PasidDirectoryAccessError,
            PasidEntryAccessError,
            IrIndexOutOfBounds,
            IrCompatibilityBlocked,
        ] {
            assert!(!unqualified.is_qualified(), "{unqualified:?}");
        }
        for qualified in [
            ContextEntryNotPresent,
            ContextEntryReserved,
            WriteNotPermitted,
            ReadNotPermitted,
            PagingEntryAccessError,
            ContextEntryTranslationTypeBlocked,
            SmContextEntryNotPresent,
            SmContextPageRequestDisabled,
            PasidDirectoryEntryNotPresent,
            PasidEntryNotPresent,
            PasidEntryInvalid,
            FirstStageNotPresent,
            NonCanonicalAddress,
            UserAccessToSupervisorPage,
            SmWriteNotPermitted,
            SmInterruptAddressRange,
            FirstStageAccessedDirtyUpdateFailed,
            IrteNotPresent,
            IrteReserved,
            IrSourceIdInvalid,
        ] {
            assert!(qualified.is_qualified(), "{qualified:?}");
        }
    }

    #[test]
    fn interrupt_remapping_range() {
        assert!(FaultReason::IrRequestReserved.is_interrupt_remapping());
        assert!(FaultReason::PostedDescriptorReserved.is_interrupt_remapping());
        assert!(!FaultReason::InterruptAddressRange.is_interrupt_remapping());
        assert!(!FaultReason::SmRootTableAddressInvalid.is_interrupt_remapping());
        assert!(FaultReason::SmRootTableAddressInvalid.is_scalable_mode());
        assert!(!FaultReason::IrteReserved.is_scalable_mode());
    }

    #[test]
    fn display_names_code_and_condition() {
        assert_eq!(
            alloc::format!("{}", FaultReason::NonCanonicalAddress),
            "0x80 (input address not canonical for first-stage paging)"
        );
    }

    #[test]
    fn encode_places_every_field() {
        let record = FaultRecord {
            sid: 0x0018,
            pasid: Some(0xabcde),
            address: 0x1234_5000,
            reason: FaultReason::SmWriteNotPermitted,
            request: FaultRequestKind::Read,
            exec: true,
            privileged: true,
            at: 2,
        };
        let (lo, hi) = record.encode();
        assert_eq!(lo, 0x1234_5000);
        assert_eq!(hi & 0xffff, 0x18);
        assert_eq!((hi >> 32) & 0xff, 0x85);
        assert_eq!((hi >> 40) & 0xf_ffff, 0xabcde);
        assert_eq!((hi >> 60) & 3, 2);
        assert_ne!(hi & (1 << 31), 0, "PP");
        assert_ne!(hi & (1 << 30), 0, "EXE");
        assert_ne!(hi & (1 << 29), 0, "PRIV");
        assert_ne!(hi & (1 << 62), 0, "T1 = read");
        assert_eq!(hi & (1 << 28), 0, "T2");
        assert_eq!(hi & FaultRecord::FAULT_BIT, 0, "F is the caller's");
        assert_eq!(
            FaultRecord::decode(lo, hi | FaultRecord::FAULT_BIT),
            Some(record)
        );
    }

    #[test]
    fn linux_reads_what_qemu_records() {
        // QEMU 10.0.2 records a first-stage write to a read-only page of a request without
        // PASID in scalable mode as FR 0x85, PP = 1, PASID 0, T = 0 (write).
        let record = FaultRecord {
            sid: 0x0018,
            pasid: Some(0),
            address: 0xffd0_0000,
            reason: FaultReason::SmWriteNotPermitted,
            request: FaultRequestKind::Write,
            exec: false,
            privileged: false,
            at: 0,
        };
        let (lo, hi) = record.encode();
        // Linux: readl(+12) → F 31, T 30, PASID 27:8, FR 7:0; readl(+8) → SID 15:0, PP 31.
        let dword3 = (hi >> 32) as u32;
        let dword2 = hi as u32;
        assert_eq!(dword3 & 0xff, 0x85);
        assert_eq!((dword3 >> 30) & 1, 0);
        assert_eq!((dword3 >> 8) & 0xf_ffff, 0);
        assert_eq!(dword2 & 0xffff, 0x18);
        assert_eq!(dword2 >> 31, 1);
        assert_eq!(lo, 0xffd0_0000);
    }

    #[test]
    fn request_kinds_round_trip() {
        for kind in [
            FaultRequestKind::Write,
            FaultRequestKind::Read,
            FaultRequestKind::PageRequest,
            FaultRequestKind::AtomicOp,
        ] {
            let (t1, t2) = kind.type_bits();
            assert_eq!(FaultRequestKind::from_type_bits(t1, t2), kind);
            let record = FaultRecord {
                request: kind,
                ..FaultRecord::for_interrupt(1, 2, FaultReason::IrteNotPresent)
            };
            let (lo, hi) = record.encode();
            assert_eq!(FaultRecord::decode(lo, hi), Some(record));
        }
    }

    #[test]
    fn interrupt_faults_carry_the_index_in_bits_63_48() {
        let record = FaultRecord::for_interrupt(0xff00, 0x11, FaultReason::IrSourceIdInvalid);
        let (lo, hi) = record.encode();
        assert_eq!(lo, 0x0011_0000_0000_0000);
        assert_eq!(
            FaultRecord::decode(lo, hi).and_then(|r| r.interrupt_index()),
            Some(0x11)
        );
        let dma = FaultRecord {
            reason: FaultReason::ReadNotPermitted,
            ..record
        };
        assert_eq!(dma.interrupt_index(), None);
    }

    #[test]
    fn decode_rejects_what_encode_cannot_produce() {
        let (lo, hi) = FaultRecord::for_interrupt(1, 0, FaultReason::IrteReserved).encode();
        assert!(
            FaultRecord::decode(lo | 0x800, hi).is_none(),
            "low reserved"
        );
        assert!(
            FaultRecord::decode(lo, hi | (1 << 16)).is_none(),
            "high reserved"
        );
        assert!(
            FaultRecord::decode(lo, hi | (5 << 40)).is_none(),
            "PV without PP"
        );
        let unknown = (hi & !(0xff << 32)) | (0x33 << 32);
        assert!(FaultRecord::decode(lo, unknown).is_none(), "unknown FR");
        assert!(FaultRecord::decode(0, 0).is_none(), "FR 0 is reserved");
    }

    #[test]
    fn encode_truncates_oversized_fields() {
        let record = FaultRecord {
            sid: 1,
            pasid: Some(0x0012_3456),
            address: 0x1fff,
            reason: FaultReason::ReadNotPermitted,
            request: FaultRequestKind::Read,
            exec: false,
            privileged: false,
            at: 0xff,
        };
        let (lo, hi) = record.encode();
        assert_eq!(lo, 0x1000);
        let decoded = FaultRecord::decode(lo, hi).expect("decodes");
        assert_eq!(decoded.pasid, Some(0x2_3456));
        assert_eq!(decoded.at, 3);
    }

    #[test]
    fn every_known_fr_decodes_and_round_trips() {
        let mut decoded = 0;
        for fr in 0..=u8::MAX as u64 {
            for hi_extra in [0, !frcd_hi::RESERVED & !(0xff << frcd_hi::FR_SHIFT)] {
                let hi = (fr << frcd_hi::FR_SHIFT) | hi_extra;
                let record = FaultRecord::decode(0xffff_ffff_ffff_f000, hi);
                assert_eq!(record.is_some(), FaultReason::from_code(fr as u8).is_some());
                if let Some(record) = record {
                    decoded += 1;
                    assert_eq!(record.encode(), (0xffff_ffff_ffff_f000, hi & !frcd_hi::F));
                }
            }
        }
        assert_eq!(decoded, 2 * FaultReason::ALL.len());
    }
}
