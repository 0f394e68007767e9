//! Table walks: from (requester ID, PASID, IOVA, access) to a translation or a fault.
//!
//! Each step is a function of its own so that a unit with caches can resume from a cached
//! context or PASID entry: [`lookup_context`], [`lookup_pasid_entry`], [`walk_second_stage`],
//! [`walk_first_stage`]; [`translate`] composes them. Every walk is bounded by its level count
//! (at most 5 first-stage levels, each of whose table addresses takes at most 5 second-stage
//! reads when nested), so no table contents can make it loop; every read goes through
//! [`GuestRam`], so no table pointer can reach outside guest RAM.

use vtd_regs::fault::FaultReason;
use vtd_regs::regs::TranslationTableMode;
use vtd_regs::{Cap, Ecap};

use crate::entries::*;
use crate::mem::GuestRam;
use crate::reserved::ReservedRules;

/// The fault reasons the walkers report, by the walk step that detects them (VT-d spec 7.1.3).
mod fr {
    use vtd_regs::fault::FaultReason as R;
    pub const ROOT_NOT_PRESENT: R = R::RootEntryNotPresent;
    pub const CONTEXT_NOT_PRESENT: R = R::ContextEntryNotPresent;
    pub const CONTEXT_INVALID: R = R::ContextEntryInvalid;
    pub const BEYOND_AGAW: R = R::AddressBeyondMgaw;
    pub const WRITE: R = R::WriteNotPermitted;
    pub const READ: R = R::ReadNotPermitted;
    pub const PTE_ACCESS: R = R::PagingEntryAccessError;
    pub const ROOT_TABLE_INVALID: R = R::RootTableAccessError;
    pub const CONTEXT_TABLE_INVALID: R = R::ContextTableAccessError;
    pub const PTE_RESERVED: R = R::PagingEntryReserved;
    pub const SM_ROOT_TABLE_INVALID: R = R::SmRootTableAddressInvalid;
    pub const SM_ROOT_ACCESS: R = R::SmRootEntryAccessError;
    pub const SM_ROOT_NOT_PRESENT: R = R::SmRootEntryNotPresent;
    pub const SM_CONTEXT_ACCESS: R = R::SmContextEntryAccessError;
    pub const SM_CONTEXT_NOT_PRESENT: R = R::SmContextEntryNotPresent;
    pub const SM_PASID_DISABLED: R = R::SmContextPasidDisabled;
    pub const SM_PASID_TOO_LARGE: R = R::SmPasidBeyondDirectorySize;
    pub const SM_PASID_DIR_ACCESS: R = R::PasidDirectoryAccessError;
    pub const SM_PASID_DIR_NOT_PRESENT: R = R::PasidDirectoryEntryNotPresent;
    pub const SM_PASID_ACCESS: R = R::PasidEntryAccessError;
    pub const SM_PASID_NOT_PRESENT: R = R::PasidEntryNotPresent;
    pub const SM_PASID_INVALID: R = R::PasidEntryInvalid;
    pub const SM_ERE_CLEAR: R = R::PasidEntryExecuteDisabled;
    pub const SM_SRE_CLEAR: R = R::PasidEntrySupervisorDisabled;
    pub const FS_ACCESS: R = R::FirstStageAccessError;
    pub const FS_NOT_PRESENT: R = R::FirstStageNotPresent;
    pub const FS_RESERVED: R = R::FirstStageReserved;
    pub const FS_TABLE_POINTER: R = R::FirstStageTablePointerInvalid;
    pub const SS_TABLE_POINTER: R = R::SecondStageTablePointerInvalid;
    pub const NESTED_FS_BEYOND: R = R::NestedFirstStageBeyondMgaw;
    pub const NESTED_FS_TOP_READ: R = R::NestedFirstStageRootReadDenied;
    pub const NESTED_FS_READ: R = R::NestedFirstStageReadDenied;
    pub const NESTED_FS_WRITE: R = R::NestedFirstStageWriteDenied;
    pub const SS_ACCESS: R = R::SecondStageAccessError;
    pub const SS_PERMISSION: R = R::SecondStagePermissionDenied;
    pub const SS_RESERVED: R = R::SecondStageReserved;
    pub const NON_CANONICAL: R = R::NonCanonicalAddress;
    pub const FS_USER: R = R::UserAccessToSupervisorPage;
    pub const FS_EXECUTE: R = R::ExecuteNotPermitted;
    pub const SM_BEYOND_MAX: R = R::AddressBeyondHardwareMax;
    pub const SM_WRITE: R = R::SmWriteNotPermitted;
    pub const LEGACY_WITH_PASID: R = R::SmLegacyModeRequestWithPasid;
    pub const INTERRUPT_RANGE: R = R::InterruptAddressRange;
    pub const SM_INTERRUPT_RANGE: R = R::SmInterruptAddressRange;
}

/// The interrupt address range (spec 3.15, 5.1): 0xFEE0_0000-0xFEEF_FFFF.
pub const INTERRUPT_RANGE: std::ops::RangeInclusive<u64> = 0xfee0_0000..=0xfeef_ffff;

/// What a DMA request wants to do (VT-d spec 3.4: reads, writes; ER = execute-requested reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// A read.
    Read,
    /// A write.
    Write,
    /// A read with execute requested (ER = 1, only with a PASID).
    Execute,
}

impl AccessKind {
    /// Whether the access writes.
    pub const fn is_write(self) -> bool {
        matches!(self, Self::Write)
    }
}

/// An untranslated DMA request as the unit receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DmaRequest {
    /// Requester ID: bus << 8 | devfn.
    pub sid: u16,
    /// PASID carried by the request (PASID TLP prefix), if any.
    pub pasid: Option<u32>,
    /// Input address.
    pub iova: u64,
    /// Read, write or execute.
    pub access: AccessKind,
    /// Privileged (supervisor) request (PR = 1 in the PASID prefix).
    pub privileged: bool,
}

impl DmaRequest {
    /// A request without PASID.
    pub const fn new(sid: u16, iova: u64, access: AccessKind) -> Self {
        Self {
            sid,
            pasid: None,
            iova,
            access,
            privileged: false,
        }
    }
}

/// Access rights a translation grants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Perms {
    /// Reads allowed.
    pub read: bool,
    /// Writes allowed.
    pub write: bool,
    /// Execute allowed.
    pub execute: bool,
}

impl Perms {
    /// All rights.
    pub const ALL: Perms = Perms {
        read: true,
        write: true,
        execute: true,
    };
    /// Whether `access` is allowed.
    pub const fn allows(&self, access: AccessKind) -> bool {
        match access {
            AccessKind::Read => self.read,
            AccessKind::Write => self.write,
            AccessKind::Execute => self.execute && self.read,
        }
    }
    const fn and(self, other: Perms) -> Perms {
        Perms {
            read: self.read && other.read,
            write: self.write && other.write,
            execute: self.execute && other.execute,
        }
    }
}

/// How a request was translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TranslationKind {
    /// Legacy context entry, second-stage table.
    LegacySecondStage,
    /// Legacy context entry, pass-through.
    LegacyPassThrough,
    /// Scalable mode, PGTT = first stage.
    FirstStage,
    /// Scalable mode, PGTT = second stage.
    SecondStage,
    /// Scalable mode, PGTT = nested.
    Nested,
    /// Scalable mode, PGTT = pass-through.
    PassThrough,
    /// Translation is disabled (GSTS.TES = 0): the output is the input (spec 3.1).
    Disabled,
}

/// A successful translation of one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Translation {
    /// Output (guest physical) address of the requested IOVA.
    pub output: u64,
    /// Size of the page that maps it: 4 KiB, 2 MiB or 1 GiB (pass-through: 4 KiB).
    pub page_size: u64,
    /// Rights granted for the whole page (after A/D were set for this access).
    pub perms: Perms,
    /// Domain ID of the context or PASID entry.
    pub did: u16,
    /// PASID the request was translated with (RID_PASID for requests without one in scalable
    /// mode; `None` in legacy mode).
    pub pasid: Option<u32>,
    /// Which path translated it.
    pub kind: TranslationKind,
    /// The leaf entry as it is in memory after the walk (0 for pass-through).
    pub leaf: u64,
}

impl Translation {
    /// The IOVA page base this translation covers.
    pub const fn iova_base(&self, iova: u64) -> u64 {
        iova & !(self.page_size - 1)
    }
    /// Output address of the page base.
    pub const fn output_base(&self) -> u64 {
        self.output & !(self.page_size - 1)
    }
}

/// A failed translation: what the unit records in a fault-recording register (spec 7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fault {
    /// Why.
    pub reason: FaultReason,
    /// Requester ID.
    pub sid: u16,
    /// PASID carried by the request (the FRCD's PV with PP = 1), if any.
    pub pasid: Option<u32>,
    /// The faulting address, page-aligned (FRCD.FI).
    pub address: u64,
    /// Access kind of the request.
    pub access: AccessKind,
    /// Privileged request.
    pub privileged: bool,
    /// A qualified fault under an entry with FPD set: not recorded, not reported (spec 7.1.2).
    pub suppressed: bool,
}

/// What a walker step reports before it is turned into a [`Fault`]: the reason and whether an
/// FPD bit of an entry already validated covers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepFault {
    /// Fault reason.
    pub reason: FaultReason,
    /// An FPD bit on the path suppresses qualified faults.
    pub fpd: bool,
}

impl StepFault {
    /// A fault for `reason`, not (yet) under FPD.
    pub const fn new(reason: FaultReason) -> Self {
        Self { reason, fpd: false }
    }
    /// Adds the FPD bit of an entry that covers the request.
    pub const fn with_fpd(mut self, fpd: bool) -> Self {
        self.fpd |= fpd;
        self
    }
    /// Turns the step fault into the fault of `req`.
    pub fn into_fault(self, req: &DmaRequest) -> Fault {
        let reason = self.reason;
        Fault {
            reason,
            sid: req.sid,
            pasid: req.pasid,
            address: req.iova & !0xfff,
            access: req.access,
            privileged: req.privileged,
            suppressed: self.fpd && reason.is_qualified(),
        }
    }
}

/// The capabilities a walk honours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkConfig {
    /// CAP_REG of the unit.
    pub cap: Cap,
    /// ECAP_REG of the unit.
    pub ecap: Ecap,
}

impl WalkConfig {
    /// A walk configuration for a unit with these capabilities.
    pub const fn new(cap: Cap, ecap: Ecap) -> Self {
        Self { cap, ecap }
    }
    /// Host address width: table pointers and output addresses above it are reserved bits.
    pub const fn haw(&self) -> u8 {
        self.cap.max_guest_address_width()
    }
    /// The reserved-field rules of this unit (computed from CAP/ECAP, so they can never be
    /// out of date with the fields above).
    pub const fn rules(&self) -> ReservedRules {
        ReservedRules::from_caps(self.cap, self.ecap)
    }
    /// The access the unit sees for `access`: without ECAP.ERS the ER field of a request is
    /// ignored and an execute request is a read (execute requests were removed in spec rev
    /// 4.0; Linux drivers/iommu/intel dropped NXE/XD programming accordingly).
    pub const fn effective_access(&self, access: AccessKind) -> AccessKind {
        match access {
            AccessKind::Execute if !self.ecap.ers() => AccessKind::Read,
            other => other,
        }
    }
}

/// Checks what the request itself may ask for before any table is read (spec 3.4.1, fault
/// conditions RTA.2): a request with PASID while the root table is in legacy mode is blocked
/// with 0x31 (legacy context entries have no PASID).
#[inline]
pub fn check_request(root: RootTable, req: &DmaRequest) -> Result<(), StepFault> {
    if root.mode == TranslationTableMode::Legacy && req.pasid.is_some() {
        return Err(StepFault::new(fr::LEGACY_WITH_PASID));
    }
    Ok(())
}

/// An untranslated request whose *output* lands in the interrupt address range is blocked
/// (spec 3.15: LGN.4 0x0E in legacy mode, SGN.8 0x87 in scalable mode; QEMU
/// hw/i386/intel_iommu.c checks the translated address for every stage too). Only the
/// request's own address counts, so a large page that merely overlaps the range still
/// translates the rest of its addresses.
#[inline]
pub fn check_output(t: &Translation) -> Result<(), StepFault> {
    if !INTERRUPT_RANGE.contains(&t.output) {
        return Ok(());
    }
    Err(StepFault::new(match t.kind {
        TranslationKind::LegacySecondStage | TranslationKind::LegacyPassThrough => {
            fr::INTERRUPT_RANGE
        }
        _ => fr::SM_INTERRUPT_RANGE,
    }))
}

/// Whether the page `t` maps overlaps the interrupt address range: such a translation must
/// not be cached, or a later hit at another offset of the page would skip [`check_output`].
pub const fn overlaps_interrupt_range(t: &Translation) -> bool {
    let base = t.output_base();
    let last = base.saturating_add(t.page_size - 1);
    base <= *INTERRUPT_RANGE.end() && last >= *INTERRUPT_RANGE.start()
}

/// The root table the unit latched at SRTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RootTable {
    /// Root-table address.
    pub addr: u64,
    /// Legacy or scalable.
    pub mode: TranslationTableMode,
}

/// The context entry that serves a requester ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceContext {
    /// Legacy mode.
    Legacy(ContextEntry),
    /// Scalable mode.
    Scalable(ScalableContextEntry),
}

impl DeviceContext {
    /// FPD of the entry.
    pub const fn fpd(&self) -> bool {
        match self {
            Self::Legacy(c) => c.fpd(),
            Self::Scalable(c) => c.fpd(),
        }
    }
}

/// Reads and validates the root and context entry for `sid` (spec 3.4.2, 3.4.3).
pub fn lookup_context(
    mem: &impl GuestRam,
    cfg: &WalkConfig,
    root: RootTable,
    sid: u16,
) -> Result<DeviceContext, StepFault> {
    let bus = (sid >> 8) as u64;
    let devfn = sid as u8;
    let rules = cfg.rules();
    // RTADDR is guest-chosen: a root table that wraps the address space cannot be read.
    let Some(root_addr) = root.addr.checked_add(bus * 16) else {
        let reason = match root.mode {
            TranslationTableMode::Legacy => fr::ROOT_TABLE_INVALID,
            _ => fr::SM_ROOT_ACCESS,
        };
        return Err(StepFault::new(reason));
    };
    match root.mode {
        TranslationTableMode::Legacy => {
            let re = RootEntry(
                mem.read_words::<2>(root_addr)
                    .map_err(|_| StepFault::new(fr::ROOT_TABLE_INVALID))?,
            );
            if !re.present() {
                return Err(StepFault::new(fr::ROOT_NOT_PRESENT));
            }
            rules.check_root_entry(&re).map_err(StepFault::new)?;
            let ce_addr = re.context_table() + devfn as u64 * 16;
            let ce = ContextEntry(
                mem.read_words::<2>(ce_addr)
                    .map_err(|_| StepFault::new(fr::CONTEXT_TABLE_INVALID))?,
            );
            // FPD is evaluated irrespective of P (spec 9.3), so it covers these faults too.
            if !ce.present() {
                return Err(StepFault::new(fr::CONTEXT_NOT_PRESENT).with_fpd(ce.fpd()));
            }
            rules
                .check_context_entry(&ce)
                .map_err(|r| StepFault::new(r).with_fpd(ce.fpd()))?;
            let valid = match ce.translation_type() {
                LegacyTranslationType::MultiLevel => {
                    cfg.cap.supports_second_stage_levels(ce.aw() + 2)
                }
                LegacyTranslationType::MultiLevelWithDeviceTlb => {
                    cfg.ecap.dt() && cfg.cap.supports_second_stage_levels(ce.aw() + 2)
                }
                LegacyTranslationType::PassThrough => cfg.ecap.pt(),
                LegacyTranslationType::Reserved => false,
            };
            if !valid {
                return Err(StepFault::new(fr::CONTEXT_INVALID).with_fpd(ce.fpd()));
            }
            Ok(DeviceContext::Legacy(ce))
        }
        TranslationTableMode::Scalable => {
            let re = ScalableRootEntry(
                mem.read_words::<2>(root_addr)
                    .map_err(|_| StepFault::new(fr::SM_ROOT_ACCESS))?,
            );
            let Some(table) = re.context_table_for(devfn) else {
                return Err(StepFault::new(fr::SM_ROOT_NOT_PRESENT));
            };
            rules
                .check_scalable_root_entry(&re, devfn)
                .map_err(StepFault::new)?;
            let ce_addr = table + (devfn & 0x7f) as u64 * 32;
            let ce = ScalableContextEntry(
                mem.read_words::<4>(ce_addr)
                    .map_err(|_| StepFault::new(fr::SM_CONTEXT_ACCESS))?,
            );
            // FPD is evaluated irrespective of P (spec 9.4).
            if !ce.present() {
                return Err(StepFault::new(fr::SM_CONTEXT_NOT_PRESENT).with_fpd(ce.fpd()));
            }
            rules
                .check_scalable_context_entry(&ce)
                .map_err(|r| StepFault::new(r).with_fpd(ce.fpd()))?;
            Ok(DeviceContext::Scalable(ce))
        }
        TranslationTableMode::Reserved2 | TranslationTableMode::AbortDma => {
            Err(StepFault::new(fr::SM_ROOT_TABLE_INVALID))
        }
    }
}

/// The PASID a request is translated with in scalable mode: its own, or RID_PASID (with
/// ECAP.RPS; otherwise PASID 0, spec 9.4).
#[inline]
pub fn effective_pasid(cfg: &WalkConfig, ctx: &ScalableContextEntry, pasid: Option<u32>) -> u32 {
    match pasid {
        Some(p) => p,
        None if cfg.ecap.rps() => ctx.rid_pasid(),
        None => 0,
    }
}

/// What the scalable-mode context entry decides about a request's PASID before any PASID
/// structure is read (spec 9.4): a request *with* PASID needs PASIDE (0x45, SCT.6:
/// [`fr::SM_PASID_DISABLED`]), and the PASID must be below the directory's size
/// ([`fr::SM_PASID_TOO_LARGE`]). It depends on the request, not only on the entries, so a
/// cached PASID entry (keyed by requester and PASID, shared by requests with and without
/// PASID through RID_PASID) must still pass it.
#[inline]
pub fn check_pasid_request(
    ctx: &ScalableContextEntry,
    pasid: u32,
    with_pasid: bool,
) -> Result<(), StepFault> {
    let fpd = ctx.fpd();
    if with_pasid && !ctx.paside() {
        return Err(StepFault::new(fr::SM_PASID_DISABLED).with_fpd(fpd));
    }
    if pasid >= ctx.pasid_limit() {
        return Err(StepFault::new(fr::SM_PASID_TOO_LARGE).with_fpd(fpd));
    }
    Ok(())
}

/// Reads and validates the PASID directory and PASID table entry for `pasid` (spec 3.4.3,
/// 9.5, 9.6). `with_pasid` says whether the request itself carried the PASID.
pub fn lookup_pasid_entry(
    mem: &impl GuestRam,
    cfg: &WalkConfig,
    ctx: &ScalableContextEntry,
    pasid: u32,
    with_pasid: bool,
) -> Result<PasidEntry, StepFault> {
    let fpd = ctx.fpd();
    let rules = cfg.rules();
    check_pasid_request(ctx, pasid, with_pasid)?;
    let de_addr = ctx.pasid_dir() + (pasid >> 6) as u64 * 8;
    let de = PasidDirEntry::from_bits(
        mem.read_u64(de_addr)
            .map_err(|_| StepFault::new(fr::SM_PASID_DIR_ACCESS).with_fpd(fpd))?,
    );
    // A directory or PASID entry's FPD counts even when P is clear (spec 9.5, 9.6).
    let fpd = fpd || de.fpd();
    if !de.present() {
        return Err(StepFault::new(fr::SM_PASID_DIR_NOT_PRESENT).with_fpd(fpd));
    }
    rules
        .check_pasid_dir_entry(&de)
        .map_err(|r| StepFault::new(r).with_fpd(fpd))?;
    let pe_addr = de.table() + (pasid & 0x3f) as u64 * 64;
    let pe = PasidEntry(
        mem.read_words::<8>(pe_addr)
            .map_err(|_| StepFault::new(fr::SM_PASID_ACCESS).with_fpd(fpd))?,
    );
    let fpd = fpd || pe.fpd();
    if !pe.present() {
        return Err(StepFault::new(fr::SM_PASID_NOT_PRESENT).with_fpd(fpd));
    }
    // Reserved fields (0x5A) and then PGTT/AW/FSPM programming (0x5B), by the same rules
    // vtd-accel's binder applies before binding the entry on the host.
    rules
        .check_pasid_entry(&pe)
        .map_err(|reason| StepFault::new(reason).with_fpd(fpd))?;
    Ok(pe)
}

/// The leaf a stage walk ends at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Output address of the page base.
    pub page_base: u64,
    /// Page size in bytes.
    pub page_size: u64,
    /// Rights accumulated over every level.
    pub perms: Perms,
    /// The leaf entry as in memory after the walk.
    pub entry: u64,
}

impl Leaf {
    /// The output address of `input`: the page base plus `input`'s offset within the page
    /// (the offset bits pass through untranslated, spec 3.6 and 3.7).
    pub const fn output_of(&self, input: u64) -> u64 {
        self.page_base + (input & (self.page_size - 1))
    }
}

/// Which fault codes a second-stage walk reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecondStageMode {
    /// Legacy context entry (reasons 0x4-0xC).
    Legacy,
    /// Scalable-mode PASID entry, PGTT = second stage (reasons 0x78-0x7B, 0x83).
    Scalable,
    /// Translating a first-stage paging-structure address in a nested walk (0x74-0x76);
    /// `top` marks the first-stage root table (FL-PML4/5).
    NestedTable {
        /// Whether the structure is the first-stage root.
        top: bool,
    },
    /// Setting A/D in a first-stage entry in a nested walk (needs write permission, 0x77).
    NestedTableWrite,
    /// Translating the first-stage output in a nested walk.
    NestedOutput,
}

/// A second-stage table and how to walk it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecondStageTable {
    /// Root table address (SSPTPTR).
    pub root: u64,
    /// Number of levels: 3, 4 or 5 (AW + 2).
    pub levels: u8,
    /// Which fault reasons apply.
    pub mode: SecondStageMode,
    /// PASID entry SSADE: set A on every entry used and D on the leaf of a write.
    pub set_ad: bool,
}

/// Walks a second-stage table for `addr` (spec 3.7).
pub fn walk_second_stage(
    mem: &impl GuestRam,
    cfg: &WalkConfig,
    ss: &SecondStageTable,
    addr: u64,
    access: AccessKind,
) -> Result<Leaf, StepFault> {
    use SecondStageMode::*;
    let SecondStageTable {
        root: table,
        levels,
        mode,
        set_ad,
    } = *ss;
    let (beyond, read_fail, perm_read, perm_write, reserved) = match mode {
        Legacy => (
            fr::BEYOND_AGAW,
            fr::PTE_ACCESS,
            fr::READ,
            fr::WRITE,
            fr::PTE_RESERVED,
        ),
        Scalable | NestedOutput => (
            fr::SM_BEYOND_MAX,
            fr::SS_ACCESS,
            fr::SS_PERMISSION,
            fr::SS_PERMISSION,
            fr::SS_RESERVED,
        ),
        NestedTable { top } => {
            let perm = if top {
                fr::NESTED_FS_TOP_READ
            } else {
                fr::NESTED_FS_READ
            };
            (
                fr::NESTED_FS_BEYOND,
                fr::SS_ACCESS,
                perm,
                perm,
                fr::SS_RESERVED,
            )
        }
        NestedTableWrite => (
            fr::NESTED_FS_BEYOND,
            fr::SS_ACCESS,
            fr::NESTED_FS_WRITE,
            fr::NESTED_FS_WRITE,
            fr::SS_RESERVED,
        ),
    };
    let levels = levels.clamp(1, 5);
    let width = 12 + 9 * levels as u32;
    let mgaw = cfg.cap.max_guest_address_width() as u32;
    if addr >> width.min(63) != 0 || addr >> mgaw.min(63) != 0 {
        return Err(StepFault::new(beyond));
    }
    let rules = cfg.rules();
    // Table pointers are page addresses: a caller-supplied pointer's low bits are ignored, and
    // an entry offset (at most 0xff8) can then not wrap the address space.
    let mut table = table & !0xfff;
    let mut perms = Perms::ALL;
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level as u32 - 1);
        let entry_addr = table + ((addr >> shift) & 0x1ff) * 8;
        // Failing to read the root of a scalable-mode second stage means SSPTPTR is invalid
        // (0x7B, SSL.4), whichever PGTT uses the table (second stage only or nested); further
        // down it is an access error (0x78).
        let read_fault = if level == levels && mode != Legacy {
            fr::SS_TABLE_POINTER
        } else {
            read_fail
        };
        let raw = mem
            .read_u64(entry_addr)
            .map_err(|_| StepFault::new(read_fault))?;
        let pte = SecondStagePte::from_bits(raw);
        let write_fault = if access.is_write() {
            perm_write
        } else {
            perm_read
        };
        if !pte.present() {
            return Err(StepFault::new(write_fault));
        }
        let leaf = level == 1 || pte.ps();
        if raw & rules.second_stage_pte_mask(level, pte.ps()) != 0 {
            return Err(StepFault::new(reserved));
        }
        perms = perms.and(Perms {
            read: pte.read(),
            write: pte.write(),
            execute: !cfg.ecap.ers() || pte.execute(),
        });
        if leaf {
            if !perms.allows(access) {
                return Err(StepFault::new(write_fault));
            }
            let mut entry = raw;
            if set_ad {
                // A, and D for a write; a D already set stays set.
                let want = pte
                    .with_accessed(true)
                    .with_dirty(pte.dirty() || access.is_write())
                    .into_bits();
                entry =
                    set_bits(mem, entry_addr, raw, want).map_err(|_| StepFault::new(read_fail))?;
            }
            let page_size = 1u64 << shift;
            return Ok(Leaf {
                page_base: pte.addr() & !(page_size - 1),
                page_size,
                perms,
                entry,
            });
        }
        if set_ad {
            let want = pte.with_accessed(true).into_bits();
            set_bits(mem, entry_addr, raw, want).map_err(|_| StepFault::new(read_fail))?;
        }
        table = pte.addr();
    }
    Err(StepFault::new(read_fail))
}

/// Sets bits in an entry with a locked compare-exchange (spec 3.6.2, 3.7.2). Returns the entry
/// as written. If the guest changed the entry meanwhile, the bits are set on the new value only
/// when its address and permission bits are unchanged; otherwise the walk has used a stale
/// entry and reports an access error, which the caller retries at most once per walk.
fn set_bits(mem: &impl GuestRam, gpa: u64, seen: u64, want: u64) -> Result<u64, ()> {
    if want == seen {
        return Ok(seen);
    }
    match mem.compare_exchange_u64(gpa, seen, want) {
        Ok(Ok(_)) => Ok(want),
        Ok(Err(actual)) => {
            let ad = want & !seen;
            if actual & !ad == seen & !ad {
                // Only A/D changed (another walker or the guest set them): merge.
                match mem.compare_exchange_u64(gpa, actual, actual | ad) {
                    Ok(Ok(_)) => Ok(actual | ad),
                    _ => Err(()),
                }
            } else {
                Err(())
            }
        }
        Err(_) => Err(()),
    }
}

// The first-stage bits a walk sets, as masks evaluated at compile time (the entry type's
// setters are functions of another crate, which a walk would otherwise call per miss): A, with
// EA where the PASID entry enables it, and D besides on the leaf of a write.
const FS_A: u64 = FirstStagePte::new().with_accessed(true).into_bits();
const FS_A_D: u64 = FirstStagePte::from_bits(FS_A).with_dirty(true).into_bits();
const FS_A_EA: u64 = FirstStagePte::from_bits(FS_A)
    .with_extended_accessed(true)
    .into_bits();
const FS_A_EA_D: u64 = FirstStagePte::from_bits(FS_A_EA)
    .with_dirty(true)
    .into_bits();

/// Walks the first-stage table of a PASID entry (PGTT first stage or nested) for `req`
/// (spec 3.6). In nested mode every table address and the output go through the entry's
/// second stage.
pub fn walk_first_stage(
    mem: &impl GuestRam,
    cfg: &WalkConfig,
    pe: &PasidEntry,
    iova: u64,
    access: AccessKind,
    privileged: bool,
) -> Result<Leaf, StepFault> {
    let nested = pe.pgtt() == Pgtt::Nested;
    let levels: u8 = if pe.fspm() == 1 { 5 } else { 4 };
    let width = 12 + 9 * levels as u32; // 48 or 57
    // Canonical: bits 63:width-1 all equal (spec 3.6.1).
    let upper = (iova as i64) >> (width - 1);
    if upper != 0 && upper != -1 {
        return Err(StepFault::new(fr::NON_CANONICAL));
    }
    let rules = cfg.rules();
    // SRE, ERE, EAFE and SSADE count only where the unit has the capability (spec 9.6; an
    // entry setting them without it faults 0x5A at lookup, this covers callers that pass an
    // entry of their own).
    if privileged && !rules.supervisor_requests(pe) {
        return Err(StepFault::new(fr::SM_SRE_CLEAR));
    }
    let access = cfg.effective_access(access);
    if access == AccessKind::Execute && !pe.ere() {
        return Err(StepFault::new(fr::SM_ERE_CLEAR));
    }
    let ss_levels = pe.aw().saturating_add(2);
    let through_ss = |gpa: u64, mode: SecondStageMode, acc: AccessKind| -> Result<u64, StepFault> {
        if !nested {
            return Ok(gpa);
        }
        let ss = SecondStageTable {
            root: pe.ss_table(),
            levels: ss_levels,
            mode,
            set_ad: rules.second_stage_ad(pe),
        };
        let leaf = walk_second_stage(mem, cfg, &ss, gpa, acc)?;
        Ok(leaf.output_of(gpa))
    };
    let mut table = pe.fs_table();
    let mut perms = Perms::ALL;
    // A (bit 5), and EA (bit 10) where the entry enables it (spec 3.6.2, 9.7); with D (bit 6)
    // for the leaf of a write.
    let (accessed, accessed_dirty) = if rules.extended_accessed(pe) {
        (FS_A_EA, FS_A_EA_D)
    } else {
        (FS_A, FS_A_D)
    };
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level as u32 - 1);
        let entry_gpa = table + ((iova >> shift) & 0x1ff) * 8;
        let top = level == levels;
        let entry_addr = through_ss(
            entry_gpa,
            SecondStageMode::NestedTable { top },
            AccessKind::Read,
        )?;
        // The root table's address is FSPTPTR: failing to read it is an invalid table pointer
        // (0x73); a failed read further down is an access error (0x70).
        let read_fault = if top {
            fr::FS_TABLE_POINTER
        } else {
            fr::FS_ACCESS
        };
        let raw = mem
            .read_u64(entry_addr)
            .map_err(|_| StepFault::new(read_fault))?;
        let pte = FirstStagePte::from_bits(raw);
        if !pte.present() {
            return Err(StepFault::new(fr::FS_NOT_PRESENT));
        }
        let leaf = level == 1 || (pte.ps() && level <= 3);
        if raw & rules.first_stage_pte_mask(level, pte.ps()) != 0 {
            return Err(StepFault::new(fr::FS_RESERVED));
        }
        perms = perms.and(Perms {
            read: true,
            write: pte.writable(),
            // XD counts only where execute requests exist (ECAP.ERS).
            execute: !(pte.xd() && rules.execute_requests()),
        });
        if !pte.user() && !privileged {
            return Err(StepFault::new(fr::FS_USER));
        }
        if !leaf {
            if raw & accessed != accessed {
                let at = through_ss(
                    entry_gpa,
                    SecondStageMode::NestedTableWrite,
                    AccessKind::Write,
                )?;
                set_bits(mem, at, raw, raw | accessed)
                    .map_err(|_| StepFault::new(fr::FS_ACCESS))?;
            }
            table = pte.addr();
            continue;
        }
        // Supervisor writes ignore R/W unless WPE (spec 3.6.2, like CR0.WP); `privileged` here
        // implies SRE with ECAP.SRS (checked above).
        let may_write = perms.write || (privileged && !pe.wpe());
        if access.is_write() && !may_write {
            return Err(StepFault::new(fr::SM_WRITE));
        }
        if access == AccessKind::Execute && !perms.execute {
            return Err(StepFault::new(fr::FS_EXECUTE));
        }
        // A (and EA), and D for a write; a D already set stays set.
        let want = raw
            | if access.is_write() {
                accessed_dirty
            } else {
                accessed
            };
        let mut entry = raw;
        if want != raw {
            let at = through_ss(
                entry_gpa,
                SecondStageMode::NestedTableWrite,
                AccessKind::Write,
            )?;
            entry = set_bits(mem, at, raw, want).map_err(|_| StepFault::new(fr::FS_ACCESS))?;
        }
        let page_size = 1u64 << shift;
        // A clean leaf grants write only once D is set; a read leaves it clean, so a later
        // write must walk again (spec 3.6.2: D is set before the write completes).
        let dirty = entry & (1 << 6) != 0;
        let perms = Perms {
            read: true,
            write: may_write && dirty,
            execute: perms.execute,
        };
        let page_gpa = pte.addr() & !(page_size - 1);
        if !nested {
            return Ok(Leaf {
                page_base: page_gpa,
                page_size,
                perms,
                entry,
            });
        }
        // The output goes through the second stage; the resulting page is the smaller one.
        let out_gpa = page_gpa + (iova & (page_size - 1));
        let ss = walk_second_stage(
            mem,
            cfg,
            &SecondStageTable {
                root: pe.ss_table(),
                levels: ss_levels,
                mode: SecondStageMode::NestedOutput,
                set_ad: rules.second_stage_ad(pe),
            },
            out_gpa,
            access,
        )?;
        let size = page_size.min(ss.page_size);
        let out = ss.output_of(out_gpa);
        return Ok(Leaf {
            page_base: out & !(size - 1),
            page_size: size,
            perms: perms.and(ss.perms),
            entry,
        });
    }
    Err(StepFault::new(fr::FS_ACCESS))
}

/// Translates `req` from the root table (no caches): the reference walk (spec 3.4-3.9).
///
/// A walk that races with a guest rewriting an entry it is setting A/D in is retried once.
pub fn translate(
    mem: &impl GuestRam,
    cfg: &WalkConfig,
    root: RootTable,
    req: &DmaRequest,
) -> Result<Translation, Fault> {
    check_request(root, req).map_err(|f| f.into_fault(req))?;
    let ctx = lookup_context(mem, cfg, root, req.sid).map_err(|f| f.into_fault(req))?;
    translate_with_context(mem, cfg, &ctx, req).map_err(|f| f.into_fault(req))
}

/// Translates `req` given its (possibly cached) context entry.
pub fn translate_with_context(
    mem: &impl GuestRam,
    cfg: &WalkConfig,
    ctx: &DeviceContext,
    req: &DmaRequest,
) -> Result<Translation, StepFault> {
    match ctx {
        DeviceContext::Legacy(ce) => {
            if req.pasid.is_some() {
                // A cached legacy context never serves a request with PASID (0x31).
                return Err(StepFault::new(fr::LEGACY_WITH_PASID));
            }
            translate_legacy(mem, cfg, ce, req)
                .and_then(|t| check_output(&t).map(|()| t))
                .map_err(|f| f.with_fpd(ce.fpd()))
        }
        DeviceContext::Scalable(sc) => {
            let pasid = effective_pasid(cfg, sc, req.pasid);
            let pe = lookup_pasid_entry(mem, cfg, sc, pasid, req.pasid.is_some())?;
            translate_with_pasid_entry(mem, cfg, &pe, pasid, req)
                .map_err(|f| f.with_fpd(sc.fpd() || pe.fpd()))
        }
    }
}

fn translate_legacy(
    mem: &impl GuestRam,
    cfg: &WalkConfig,
    ce: &ContextEntry,
    req: &DmaRequest,
) -> Result<Translation, StepFault> {
    if ce.translation_type() == LegacyTranslationType::PassThrough {
        if req.iova >> cfg.haw().min(63) != 0 {
            return Err(StepFault::new(fr::BEYOND_AGAW));
        }
        return Ok(Translation {
            output: req.iova,
            page_size: 4096,
            perms: Perms::ALL,
            did: ce.did(),
            pasid: None,
            kind: TranslationKind::LegacyPassThrough,
            leaf: 0,
        });
    }
    let leaf = retry_once(|| {
        walk_second_stage(
            mem,
            cfg,
            &SecondStageTable {
                root: ce.sl_table(),
                levels: ce.aw() + 2,
                mode: SecondStageMode::Legacy,
                set_ad: false,
            },
            req.iova,
            cfg.effective_access(req.access),
        )
    })?;
    Ok(Translation {
        output: leaf.output_of(req.iova),
        page_size: leaf.page_size,
        perms: leaf.perms,
        did: ce.did(),
        pasid: None,
        kind: TranslationKind::LegacySecondStage,
        leaf: leaf.entry,
    })
}

/// Translates `req` given its (possibly cached) PASID entry for `pasid`; an output in the
/// interrupt address range faults (0x87, [`check_output`]).
pub fn translate_with_pasid_entry(
    mem: &impl GuestRam,
    cfg: &WalkConfig,
    pe: &PasidEntry,
    pasid: u32,
    req: &DmaRequest,
) -> Result<Translation, StepFault> {
    let t = translate_pasid_entry(mem, cfg, pe, pasid, req)?;
    check_output(&t)?;
    Ok(t)
}

fn translate_pasid_entry(
    mem: &impl GuestRam,
    cfg: &WalkConfig,
    pe: &PasidEntry,
    pasid: u32,
    req: &DmaRequest,
) -> Result<Translation, StepFault> {
    let access = cfg.effective_access(req.access);
    let (leaf, kind) = match pe.pgtt() {
        Pgtt::PassThrough => {
            if req.iova >> cfg.haw().min(63) != 0 {
                return Err(StepFault::new(fr::SM_BEYOND_MAX));
            }
            return Ok(Translation {
                output: req.iova,
                page_size: 4096,
                perms: Perms::ALL,
                did: pe.did(),
                pasid: Some(pasid),
                kind: TranslationKind::PassThrough,
                leaf: 0,
            });
        }
        Pgtt::SecondStage => (
            retry_once(|| {
                walk_second_stage(
                    mem,
                    cfg,
                    &SecondStageTable {
                        root: pe.ss_table(),
                        levels: pe.aw() + 2,
                        mode: SecondStageMode::Scalable,
                        set_ad: cfg.rules().second_stage_ad(pe),
                    },
                    req.iova,
                    access,
                )
            })?,
            TranslationKind::SecondStage,
        ),
        Pgtt::FirstStage | Pgtt::Nested => (
            retry_once(|| walk_first_stage(mem, cfg, pe, req.iova, access, req.privileged))?,
            if pe.pgtt() == Pgtt::Nested {
                TranslationKind::Nested
            } else {
                TranslationKind::FirstStage
            },
        ),
        Pgtt::Reserved(_) => return Err(StepFault::new(fr::SM_PASID_INVALID)),
    };
    Ok(Translation {
        output: leaf.output_of(req.iova),
        page_size: leaf.page_size,
        perms: leaf.perms,
        did: pe.did(),
        pasid: Some(pasid),
        kind,
        leaf: leaf.entry,
    })
}

/// A walk that lost an A/D race with the guest reports an access error; walk once more with
/// the entry the guest left, as hardware would on its next attempt.
fn retry_once(mut walk: impl FnMut() -> Result<Leaf, StepFault>) -> Result<Leaf, StepFault> {
    match walk() {
        Err(f)
            if f.reason == fr::FS_ACCESS
                || f.reason == fr::SS_ACCESS
                || f.reason == fr::PTE_ACCESS =>
        {
            walk()
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vtd_regs::VtdConfig;

    use super::*;
    use crate::builder::{FrameAllocator, PageSize, PageTableBuilder, PageTableFormat};
    use crate::mem::MemError;

    const DATA: u64 = 0x40_0000;
    const OTHER: u64 = 0x60_0000;
    const A: u64 = 1 << 5;
    const D: u64 = 1 << 6;

    /// Guest RAM in which the guest (or another walker) rewrites one entry at a chosen moment
    /// of a walk: just after the walk's first read of it, or just before the walk's first
    /// compare-exchange on it. This is the race spec 3.6.2 / 3.7.2 leave to software: the
    /// hardware must set A/D only in the entry it used.
    struct Racing {
        ram: GuestMemoryMmap<()>,
        after_read: Cell<Option<(u64, u64)>>,
        before_cas: Cell<Option<(u64, u64)>>,
    }

    impl Racing {
        fn new() -> Self {
            Self {
                ram: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap(),
                after_read: Cell::new(None),
                before_cas: Cell::new(None),
            }
        }
    }

    impl GuestRam for Racing {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
            let r = GuestRam::read(&self.ram, gpa, buf);
            if let Some((at, value)) = self.after_read.get()
                && at == gpa
            {
                self.after_read.set(None);
                self.ram.write_u64(at, value).unwrap();
            }
            r
        }
        fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
            GuestRam::write(&self.ram, gpa, buf)
        }
        fn compare_exchange_u64(
            &self,
            gpa: u64,
            current: u64,
            new: u64,
        ) -> Result<Result<u64, u64>, MemError> {
            if let Some((at, value)) = self.before_cas.get()
                && at == gpa
            {
                self.before_cas.set(None);
                self.ram.write_u64(at, value).unwrap();
            }
            self.ram.compare_exchange_u64(gpa, current, new)
        }
    }

    fn unit(ecap: impl FnOnce(vtd_regs::Ecap) -> vtd_regs::Ecap) -> WalkConfig {
        let cfg = VtdConfig {
            scalable_mode: true,
            first_stage: true,
            second_stage: true,
            ..VtdConfig::default()
        };
        WalkConfig::new(cfg.cap(), ecap(cfg.ecap()))
    }

    /// A 4-level table of `format` with one 4 KiB leaf `leaf` for IOVA 0x1000; returns the
    /// root and the leaf's slot.
    fn one_leaf(mem: &Racing, format: PageTableFormat, leaf: u64) -> (u64, u64) {
        let mut frames = FrameAllocator::new(0x10_0000, 0x30_0000);
        let mut pt = PageTableBuilder::new(mem, &mut frames, format).unwrap();
        pt.set_leaf(&mut frames, 0x1000, PageSize::Size4K, leaf)
            .unwrap();
        let slot = pt.leaf_slot(0x1000, PageSize::Size4K).unwrap().unwrap();
        (pt.root(), slot)
    }

    fn read_at(iova: u64) -> DmaRequest {
        DmaRequest::new(0x10, iova, AccessKind::Read)
    }

    #[test]
    fn a_walk_that_lost_the_accessed_race_to_a_remap_walks_again_and_uses_the_new_entry() {
        // Spec 3.6.2: A is set in the entry the translation used. The guest remaps the leaf
        // between the walk's read and its locked A update: the update must fail rather than
        // set A in (and translate through) the new entry, and the walk is done again.
        let mem = Racing::new();
        let clean = FirstStagePte::leaf(DATA, true, false).into_bits() & !(A | D);
        let (root, slot) = one_leaf(&mem, PageTableFormat::FirstStage { levels: 4 }, clean);
        let remapped = FirstStagePte::leaf(OTHER, true, false).into_bits();
        mem.before_cas.set(Some((slot, remapped)));
        let pe = PasidEntry::first_stage(root, false, 1, 2);
        let t = translate_with_pasid_entry(&mem, &unit(|e| e), &pe, 0, &read_at(0x1008)).unwrap();
        assert_eq!(t.output, OTHER + 8);
        assert_eq!(mem.ram.read_u64(slot).unwrap(), remapped);
    }

    #[test]
    fn a_second_stage_walk_that_lost_the_ad_race_walks_again() {
        // Spec 3.7.2 with SSADE: the same race in a second-stage table (access error 0x78
        // internally, retried once).
        let mem = Racing::new();
        let clean = SecondStagePte::leaf(DATA, true, true, false).into_bits();
        let (root, slot) = one_leaf(&mem, PageTableFormat::SecondStage { levels: 4 }, clean);
        let remapped = SecondStagePte::leaf(OTHER, true, true, false).into_bits();
        mem.before_cas.set(Some((slot, remapped)));
        let pe = PasidEntry::second_stage(root, 2, 1).with_ssade(true);
        let cfg = unit(|e| e.with_slads(true));
        let t = translate_with_pasid_entry(&mem, &cfg, &pe, 0, &read_at(0x1010)).unwrap();
        assert_eq!(t.output, OTHER + 0x10);
        assert_eq!(mem.ram.read_u64(slot).unwrap(), remapped | 1 << 8);
    }

    #[test]
    fn a_not_present_fault_is_reported_for_the_entry_the_walk_saw() {
        // Only a lost A/D race repeats a walk: an entry the guest makes present after the
        // walk read it as not present still faults (0x71, spec 7.1.3 SFL.2), as hardware
        // reports the fault of the walk it did.
        let mem = Racing::new();
        let (root, slot) = one_leaf(&mem, PageTableFormat::FirstStage { levels: 4 }, 0);
        let present = FirstStagePte::leaf(DATA, true, false).into_bits();
        mem.after_read.set(Some((slot, present)));
        let pe = PasidEntry::first_stage(root, false, 1, 2);
        let f = translate_with_pasid_entry(&mem, &unit(|e| e), &pe, 0, &read_at(0x1000));
        assert_eq!(f.unwrap_err().reason, FaultReason::FirstStageNotPresent);
        assert_eq!(
            mem.ram.read_u64(slot).unwrap(),
            present,
            "the guest's write"
        );
    }

    #[test]
    fn set_bits_writes_the_wanted_entry_when_memory_still_holds_the_seen_one() {
        // Spec 3.6.2: the locked update lands when the entry is unchanged; nothing to set
        // means no write at all.
        let mem = Racing::new();
        let seen = DATA | 0b111;
        mem.ram.write_u64(0x2000, seen).unwrap();
        assert_eq!(set_bits(&mem, 0x2000, seen, seen), Ok(seen));
        assert_eq!(set_bits(&mem, 0x2000, seen, seen | A | D), Ok(seen | A | D));
        assert_eq!(mem.ram.read_u64(0x2000).unwrap(), seen | A | D);
    }

    #[test]
    fn set_bits_merges_with_accessed_dirty_bits_set_concurrently() {
        // Another walker set A in the entry meanwhile: only the bits being set differ, so the
        // entry is still the one used and D is added to it (spec 3.6.2 locked update).
        let mem = Racing::new();
        let seen = DATA | 0b111;
        mem.ram.write_u64(0x2000, seen | A).unwrap();
        assert_eq!(set_bits(&mem, 0x2000, seen, seen | A | D), Ok(seen | A | D));
        assert_eq!(mem.ram.read_u64(0x2000).unwrap(), seen | A | D);
    }

    #[test]
    fn set_bits_refuses_an_entry_the_guest_rewrote() {
        // The guest changed the address (or permissions): the walk used a stale entry, no bit
        // is set in the new one.
        let mem = Racing::new();
        let seen = DATA | 0b111;
        let rewritten = OTHER | 0b111;
        mem.ram.write_u64(0x2000, rewritten).unwrap();
        assert_eq!(set_bits(&mem, 0x2000, seen, seen | A), Err(()));
        assert_eq!(mem.ram.read_u64(0x2000).unwrap(), rewritten);
        // Bits outside RAM cannot be set either.
        assert_eq!(set_bits(&mem, 16 << 20, seen, seen | A), Err(()));
    }

    #[test]
    fn an_execute_request_needs_read_and_execute_rights() {
        // Spec 3.6.2, 3.7.2: an execute request is a read with ER set: it needs both rights.
        let x_only = Perms {
            read: false,
            write: false,
            execute: true,
        };
        let r_only = Perms {
            read: true,
            write: false,
            execute: false,
        };
        assert!(!x_only.allows(AccessKind::Execute));
        assert!(!r_only.allows(AccessKind::Execute));
        assert!(Perms::ALL.allows(AccessKind::Execute));
        assert!(r_only.allows(AccessKind::Read) && !r_only.allows(AccessKind::Write));
    }
}
