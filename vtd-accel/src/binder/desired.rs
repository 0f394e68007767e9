//! What the guest asks for: the desired host state of one binding as a pure function of the
//! guest's remapping state (configuration, TE, the latched root table, guest memory) and the
//! device's registration. Nothing here calls a backend or mutates anything, so every row of the
//! table in the [binder documentation](super) is testable with guest memory alone, and the
//! binder's other jobs (applying, forwarding) never re-decide what the guest meant.
//!
//! The guest is untrusted: every entry is read and validated with vtd-tables' walkers
//! ([`lookup_context`], [`lookup_pasid_entry`]), which fault instead of panicking, and the
//! PASID scan is bounded ([`MAX_SCAN_READS`]).

use vtd_regs::fault::FaultReason;
use vtd_regs::regs::TranslationTableMode;
use vtd_regs::{Bdf, VtdConfig};
use vtd_tables::GuestRam;
use vtd_tables::entries::{LegacyTranslationType, PasidDirEntry, PasidEntry, Pgtt};
use vtd_tables::walk::{
    AccessKind, DeviceContext, DmaRequest, Fault, RootTable, StepFault, WalkConfig, lookup_context,
    lookup_pasid_entry,
};

use crate::backend::{VtdS1, VtdS1Flags};
use crate::events::BlockCause;
use crate::ids::Pasid;

/// Guest-memory reads one PASID scan may do.
pub const MAX_SCAN_READS: u32 = 8192;

/// The guest's remapping state as the unit latched it: everything [`desired_binding`] reads.
#[derive(Clone, Copy, Debug)]
pub struct GuestRemapping<'a, M> {
    /// The unit's configuration (its CAP/ECAP decide what is valid).
    pub config: &'a VtdConfig,
    /// Guest memory, where the root, context and PASID tables live.
    pub mem: &'a M,
    /// GSTS.TES.
    pub translation_enabled: bool,
    /// The root table latched at the last SRTP (address 0, legacy, before any).
    pub root: RootTable,
}

impl<M: GuestRam> GuestRemapping<'_, M> {
    fn walk_config(&self) -> WalkConfig {
        WalkConfig::new(self.config.cap(), self.config.ecap())
    }

    fn context(&self, bdf: Bdf) -> Result<DeviceContext, StepFault> {
        lookup_context(self.mem, &self.walk_config(), self.root, bdf.sid())
    }
}

/// The root table a unit uses before the guest's first SRTP.
pub const RESET_ROOT: RootTable = RootTable {
    addr: 0,
    mode: TranslationTableMode::Legacy,
};

/// What a nested binding needs: the guest table handed to the host, and what forwarding and
/// fault injection need to know about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestedState {
    /// The VTD_S1 data for `IOMMU_HWPT_ALLOC`.
    pub s1: VtdS1,
    /// The PASID entry's DID: forwarded invalidations must name it.
    pub did: u16,
    /// FPD of the context, PASID-directory or PASID entry: faults are not reported.
    pub fpd: bool,
}

/// The host state the guest's programming asks for at one binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DesiredBinding {
    /// The default HWPT: GPA pass-through.
    Parent,
    /// A nested HWPT over the guest's first-stage table.
    Nested(NestedState),
    /// No attachment: DMA blocked.
    Blocked {
        /// Why.
        cause: BlockCause,
        /// The fault the guest sees when the device tries DMA, if the guest's tables say so.
        fault: Option<Fault>,
        /// For programming the host cannot run: the VMM's error message.
        unsupported: Option<String>,
    },
}

impl DesiredBinding {
    /// Blocked because the guest's tables fault (not present, invalid).
    fn guest_fault(fault: Fault) -> Self {
        Self::Blocked {
            cause: BlockCause::Guest {
                reason: fault.reason,
            },
            fault: Some(fault),
            unsupported: None,
        }
    }

    /// Blocked for a reason that is not the guest's tables.
    pub const fn blocked(cause: BlockCause) -> Self {
        Self::Blocked {
            cause,
            fault: None,
            unsupported: None,
        }
    }
}

/// A guest-visible fault at (`bdf`, `pasid`) with `reason`, FPD applied as the spec says.
fn guest_fault(bdf: Bdf, pasid: Option<Pasid>, reason: FaultReason, fpd: bool) -> Fault {
    StepFault::new(reason)
        .with_fpd(fpd)
        .into_fault(&request(bdf, pasid))
}

fn request(bdf: Bdf, pasid: Option<Pasid>) -> DmaRequest {
    DmaRequest {
        pasid: pasid.map(Pasid::get),
        ..DmaRequest::new(bdf.sid(), 0, AccessKind::Read)
    }
}

/// FPD of the PASID-directory entry that covers `index` (spec 9.5), false if unreadable.
fn dir_fpd(mem: &impl GuestRam, pasid_dir: u64, index: u32) -> bool {
    pasid_dir
        .checked_add(u64::from(index >> 6) * 8)
        .and_then(|at| mem.read_u64(at).ok())
        .is_some_and(|raw| PasidDirEntry::from_bits(raw).fpd())
}

/// The VTD_S1 data for a first-stage PASID entry (QEMU `vtd_pe_get_fs_flags`,
/// `VTD_SM_PASID_ENTRY_FSPM`): FSPTPTR, `48 + 9 * FSPM`, SRE/WPE/EAFE.
pub fn s1_of(pe: &PasidEntry) -> VtdS1 {
    let mut flags = 0;
    if pe.sre() {
        flags |= VtdS1Flags::SRE;
    }
    if pe.eafe() {
        flags |= VtdS1Flags::EAFE;
    }
    if pe.wpe() {
        flags |= VtdS1Flags::WPE;
    }
    VtdS1 {
        flags: VtdS1Flags(flags),
        pgtbl_addr: pe.fs_table(),
        addr_width: 48 + 9 * u32::from(pe.fspm()),
    }
}

/// What the guest asks for at (`bdf`, `pasid`): see the table in the
/// [binder documentation](super). `device_pasids` says whether the registered device can use
/// PASIDs on its host (guest PASIDs and host PASID support).
pub fn desired_binding<M: GuestRam>(
    guest: &GuestRemapping<'_, M>,
    bdf: Bdf,
    pasid: Option<Pasid>,
    device_pasids: bool,
) -> DesiredBinding {
    let unsupported = |reason: FaultReason, fpd: bool, what: String| DesiredBinding::Blocked {
        cause: BlockCause::Unsupported,
        fault: Some(guest_fault(bdf, pasid, reason, fpd)),
        unsupported: Some(what),
    };
    if !guest.translation_enabled {
        // Spec 3.1: with translation off, requests without PASID pass through and requests
        // with PASID are blocked.
        return match pasid {
            None => DesiredBinding::Parent,
            Some(_) => DesiredBinding::blocked(BlockCause::TranslationOff),
        };
    }
    let req = request(bdf, pasid);
    let sc = match guest.context(bdf) {
        Err(f) => return DesiredBinding::guest_fault(f.into_fault(&req)),
        Ok(DeviceContext::Legacy(ce)) => {
            return if pasid.is_some() {
                DesiredBinding::guest_fault(guest_fault(
                    bdf,
                    pasid,
                    FaultReason::SmLegacyModeRequestWithPasid,
                    false,
                ))
            } else if ce.translation_type() == LegacyTranslationType::PassThrough {
                DesiredBinding::Parent
            } else {
                unsupported(
                    FaultReason::ContextEntryInvalid,
                    ce.fpd(),
                    "legacy-mode second-stage tables cannot be nested on the host \
                     (the guest must use scalable mode with first-stage tables)"
                        .into(),
                )
            };
        }
        Ok(DeviceContext::Scalable(sc)) => sc,
    };
    if let Some(p) = pasid {
        if !sc.paside() {
            return DesiredBinding::guest_fault(guest_fault(
                bdf,
                pasid,
                FaultReason::SmContextPasidDisabled,
                sc.fpd(),
            ));
        }
        if !device_pasids {
            return unsupported(
                FaultReason::PasidEntryInvalid,
                sc.fpd(),
                format!("{p}: the host device has no PASID support"),
            );
        }
    }
    // Requests without PASID use RID_PASID (0: the unit never sets ECAP.RPS; see crate::ids).
    let index = Pasid::table_index(pasid);
    let pe = match lookup_pasid_entry(guest.mem, &guest.walk_config(), &sc, index, false) {
        Err(f) => return DesiredBinding::guest_fault(f.into_fault(&req)),
        Ok(pe) => pe,
    };
    let fpd = sc.fpd() || dir_fpd(guest.mem, sc.pasid_dir(), index) || pe.fpd();
    let what = pasid.map_or_else(|| "RID_PASID".to_string(), |p| p.to_string());
    match pe.pgtt() {
        // SRE and EAFE without ECAP.SRS / ECAP.EAFS are reserved fields (spec 9.6): the lookup
        // above already refused such an entry (0x5A) with vtd-tables' `ReservedRules`, the very
        // rules the unit's own walks apply, so a nested HWPT never carries a flag the vIOMMU
        // does not advertise (and the host, lacking SRS/EAFS, would refuse it too).
        Pgtt::FirstStage => DesiredBinding::Nested(NestedState {
            s1: s1_of(&pe),
            did: pe.did(),
            fpd,
        }),
        Pgtt::PassThrough => DesiredBinding::Parent,
        other => unsupported(
            FaultReason::PasidEntryInvalid,
            fpd,
            format!(
                "{what}: PGTT {other:?} cannot be bound (only first-stage and pass-through run \
                 on the host)"
            ),
        ),
    }
}

/// The result of [`present_pasids`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PasidScan {
    /// PASIDs (never RID_PASID) whose entries are present, in order.
    pub found: Vec<Pasid>,
    /// The scan stopped at [`MAX_SCAN_READS`].
    pub truncated: bool,
}

/// Finds the guest's present PASID entries of `bdf` other than RID_PASID, bounded by the
/// context's PASID limit, the guest's and the host's PASID widths (`host_pasid_log2`) and
/// [`MAX_SCAN_READS`]. Nothing when translation is off, the context is not scalable or PASIDs
/// are disabled in it.
pub fn present_pasids<M: GuestRam>(
    guest: &GuestRemapping<'_, M>,
    bdf: Bdf,
    host_pasid_log2: u8,
) -> PasidScan {
    let mut scan = PasidScan::default();
    if !guest.translation_enabled {
        return scan;
    }
    let Ok(DeviceContext::Scalable(sc)) = guest.context(bdf) else {
        return scan;
    };
    if !sc.paside() {
        return scan;
    }
    let limit = u64::from(sc.pasid_limit())
        .min(1u64 << guest.config.pasid_bits.min(20))
        .min(1u64 << host_pasid_log2.min(20));
    let mem = guest.mem;
    let mut reads = 0u32;
    'dir: for d in 0..limit.div_ceil(64) {
        reads += 1;
        if reads > MAX_SCAN_READS {
            scan.truncated = true;
            break;
        }
        let Some(at) = sc.pasid_dir().checked_add(d * 8) else {
            break;
        };
        let Ok(raw) = mem.read_u64(at) else { break };
        let de = PasidDirEntry::from_bits(raw);
        if !de.present() {
            continue;
        }
        for slot in 0..64u64 {
            let index = d * 64 + slot;
            if index >= limit {
                break;
            }
            // `index` < 2^20: the cast is exact.
            let Some(pasid) = Pasid::new(index as u32) else {
                continue;
            };
            reads += 1;
            if reads > MAX_SCAN_READS {
                scan.truncated = true;
                break 'dir;
            }
            let Some(at) = de.table().checked_add(slot * 64) else {
                continue 'dir;
            };
            if mem.read_u64(at).is_ok_and(|qw0| qw0 & 1 != 0) {
                scan.found.push(pasid);
            }
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vtd_tables::builder::{ContextTablesBuilder, FrameAllocator, PasidTablesBuilder};
    use vtd_tables::entries::ScalableContextEntry;

    type Mem = GuestMemoryMmap<()>;
    const BDF: Bdf = Bdf::new(1, 0, 0);
    const FS_ROOT: u64 = 0x20_0000;

    /// Guest memory with scalable tables for BDF (PASID entries as given), and the root.
    fn guest_tables(cfg: &VtdConfig, entries: &[(u32, PasidEntry)]) -> (Mem, RootTable) {
        let t = scalable_tables(cfg, 0, false, entries);
        (t.mem, t.root)
    }

    /// Tables built by [`scalable_tables`].
    struct Tables {
        mem: Mem,
        root: RootTable,
        /// The PASID directory of BDF.
        dir: u64,
    }

    /// Guest memory with scalable tables for BDF: a PASID directory of 2^(`pdts` + 7)
    /// entries holding `entries`, the context entry's FPD as `context_fpd`.
    fn scalable_tables(
        cfg: &VtdConfig,
        pdts: u8,
        context_fpd: bool,
        entries: &[(u32, PasidEntry)],
    ) -> Tables {
        let mem: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 24)]).unwrap();
        let mut frames = FrameAllocator::new(0x10_0000, 0x20_0000);
        let mut ctx = ContextTablesBuilder::new(&mem, &mut frames, true).unwrap();
        let mut pasids = PasidTablesBuilder::new(&mem, &mut frames, pdts).unwrap();
        for &(index, pe) in entries {
            pasids.set_entry(&mut frames, index, pe).unwrap();
        }
        let mut ce: ScalableContextEntry = pasids.context_entry().with_fpd(context_fpd);
        if cfg.pasid_bits > 0 {
            ce = ce.with_paside(true);
        }
        ctx.set_scalable_context(&mut frames, BDF.sid(), ce)
            .unwrap();
        let root = RootTable {
            addr: ctx.root(),
            mode: TranslationTableMode::Scalable,
        };
        let dir = pasids.dir();
        Tables { mem, root, dir }
    }

    fn flts(pasid_bits: u8) -> VtdConfig {
        VtdConfig {
            pasid_bits,
            ..VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap()
        }
    }

    #[test]
    fn each_row_of_the_binding_table() {
        let cfg = flts(8);
        let fs = PasidEntry::first_stage(FS_ROOT, false, 5, 2);
        let (mem, root) = guest_tables(
            &cfg,
            &[
                (0, fs),
                (3, PasidEntry::pass_through(6, 2)),
                (4, PasidEntry::second_stage(FS_ROOT, 2, 7)),
                (7, fs.with_fpd(true)),
            ],
        );
        let off = GuestRemapping {
            config: &cfg,
            mem: &mem,
            translation_enabled: false,
            root,
        };
        let on = GuestRemapping {
            translation_enabled: true,
            ..off
        };
        let p = |v| Pasid::new(v);
        // Translation off: the RID passes through, PASIDs are blocked.
        assert_eq!(
            desired_binding(&off, BDF, None, true),
            DesiredBinding::Parent
        );
        assert_eq!(
            desired_binding(&off, BDF, p(3), true),
            DesiredBinding::blocked(BlockCause::TranslationOff)
        );
        // First stage: the guest table, the DID, FPD.
        let nested = DesiredBinding::Nested(NestedState {
            s1: VtdS1 {
                flags: VtdS1Flags::default(),
                pgtbl_addr: FS_ROOT,
                addr_width: 48,
            },
            did: 5,
            fpd: false,
        });
        assert_eq!(desired_binding(&on, BDF, None, true), nested);
        let DesiredBinding::Nested(n7) = desired_binding(&on, BDF, p(7), true) else {
            panic!("PASID 7 is first stage")
        };
        assert!(n7.fpd);
        // Pass-through runs on the parent.
        assert_eq!(
            desired_binding(&on, BDF, p(3), true),
            DesiredBinding::Parent
        );
        // PGTT second stage is invalid for this unit (no ECAP.SLTS): the guest's own fault.
        assert!(matches!(
            desired_binding(&on, BDF, p(4), true),
            DesiredBinding::Blocked {
                cause: BlockCause::Guest {
                    reason: FaultReason::PasidEntryInvalid
                },
                ..
            }
        ));
        // Not present: the guest's fault, with the PASID the request would carry.
        let DesiredBinding::Blocked {
            cause,
            fault: Some(f),
            unsupported: None,
        } = desired_binding(&on, BDF, p(9), true)
        else {
            panic!("PASID 9 is not present")
        };
        assert_eq!(
            (cause, f.sid, f.pasid),
            (
                BlockCause::Guest {
                    reason: FaultReason::PasidEntryNotPresent
                },
                BDF.sid(),
                Some(9)
            )
        );
        // A PASID on a host device without PASID support: unsupported, a VMM error.
        assert!(matches!(
            desired_binding(&on, BDF, p(3), false),
            DesiredBinding::Blocked {
                cause: BlockCause::Unsupported,
                unsupported: Some(_),
                ..
            }
        ));
        // Another device has no context entry.
        assert!(matches!(
            desired_binding(&on, Bdf::new(2, 0, 0), None, true),
            DesiredBinding::Blocked {
                cause: BlockCause::Guest { .. },
                ..
            }
        ));
        // Before any SRTP: the reset root (legacy, address 0, nothing present).
        let reset = GuestRemapping {
            root: RESET_ROOT,
            ..on
        };
        assert!(matches!(
            desired_binding(&reset, BDF, None, true),
            DesiredBinding::Blocked { .. }
        ));
    }

    #[test]
    fn sre_and_eafe_follow_the_units_reserved_field_rules() {
        let fs = PasidEntry::first_stage(FS_ROOT, false, 5, 2);
        for pe in [fs.with_sre(true), fs.with_eafe(true)] {
            let cfg = flts(0);
            let (mem, root) = guest_tables(&cfg, &[(0, pe)]);
            let on = GuestRemapping {
                config: &cfg,
                mem: &mem,
                translation_enabled: true,
                root,
            };
            // Without the capability the field is reserved: the guest's own fault, as the
            // unit's walk would report it, not a host limitation.
            let reserved = FaultReason::PasidEntryReserved;
            let DesiredBinding::Blocked {
                cause: BlockCause::Guest { reason },
                fault: Some(f),
                unsupported: None,
            } = desired_binding(&on, BDF, None, true)
            else {
                panic!("{pe:?} without ECAP.SRS/EAFS")
            };
            assert_eq!((reason, f.reason), (reserved, reserved));
        }
        // With ECAP.SRS, SRE is handed to the host.
        let cfg = VtdConfig {
            supervisor_requests: true,
            ..flts(0)
        };
        let (mem, root) = guest_tables(&cfg, &[(0, fs.with_sre(true))]);
        let on = GuestRemapping {
            config: &cfg,
            mem: &mem,
            translation_enabled: true,
            root,
        };
        let DesiredBinding::Nested(n) = desired_binding(&on, BDF, None, true) else {
            panic!("SRE with ECAP.SRS")
        };
        assert!(n.s1.flags.sre());
    }

    #[test]
    fn the_scan_finds_present_pasids_within_the_widths() {
        let cfg = flts(8);
        let fs = PasidEntry::first_stage(FS_ROOT, false, 5, 2);
        let (mem, root) = guest_tables(&cfg, &[(0, fs), (5, fs), (63, fs)]);
        let on = GuestRemapping {
            config: &cfg,
            mem: &mem,
            translation_enabled: true,
            root,
        };
        let found = |host_bits| present_pasids(&on, BDF, host_bits).found;
        assert_eq!(
            found(20),
            vec![Pasid::new(5).unwrap(), Pasid::new(63).unwrap()]
        );
        // A host with 3-bit PASIDs can attach nothing at or above 8.
        assert_eq!(found(3), vec![Pasid::new(5).unwrap()]);
        assert!(
            present_pasids(
                &GuestRemapping {
                    translation_enabled: false,
                    ..on
                },
                BDF,
                20
            )
            .found
            .is_empty()
        );
        // Garbage root: nothing, no panic.
        let garbage = GuestRemapping {
            root: RootTable {
                addr: !0xfff,
                mode: TranslationTableMode::Scalable,
            },
            ..on
        };
        assert_eq!(present_pasids(&garbage, BDF, 20), PasidScan::default());
    }

    /// The VTD_S1 data is the PASID entry's (QEMU `vtd_pe_get_fs_flags`, Linux
    /// `include/uapi/linux/iommufd.h` `struct iommu_hwpt_vtd_s1`): each of SRE, EAFE and WPE
    /// sets its own `IOMMU_VTD_S1_*` bit and nothing else, and the address width is 48 bits
    /// for 4-level paging, 57 for 5-level (FSPM = 1, spec 9.6).
    #[test]
    fn s1_of_hands_each_flag_and_the_paging_width_to_the_host() {
        let fs = PasidEntry::first_stage(FS_ROOT, false, 5, 2);
        let cases = [
            (fs, 0),
            (fs.with_sre(true), VtdS1Flags::SRE),
            (fs.with_eafe(true), VtdS1Flags::EAFE),
            (fs.with_wpe(true), VtdS1Flags::WPE),
            (
                fs.with_sre(true).with_eafe(true).with_wpe(true),
                VtdS1Flags::SRE | VtdS1Flags::EAFE | VtdS1Flags::WPE,
            ),
        ];
        for (pe, flags) in cases {
            assert_eq!(
                s1_of(&pe),
                VtdS1 {
                    flags: VtdS1Flags(flags),
                    pgtbl_addr: FS_ROOT,
                    addr_width: 48,
                },
                "{pe:?}"
            );
        }
        let five = s1_of(&PasidEntry::first_stage(FS_ROOT, true, 5, 2).with_wpe(true));
        assert_eq!(
            (five.addr_width, five.flags, five.pgtbl_addr),
            (57, VtdS1Flags(VtdS1Flags::WPE), FS_ROOT)
        );
    }

    /// FPD set in the context entry (spec 9.4), in the PASID-directory entry covering the
    /// PASID (spec 9.5: entry PASID >> 6) or in the PASID entry (spec 9.6) suppresses the
    /// binding's faults; FPD of one directory entry says nothing about the PASIDs of another.
    #[test]
    fn fpd_of_the_context_the_directory_entry_or_the_pasid_entry() {
        let cfg = flts(8);
        let fs = PasidEntry::first_stage(FS_ROOT, false, 5, 2);
        let fpd_of = |t: &Tables, pasid: u32| {
            let on = GuestRemapping {
                config: &cfg,
                mem: &t.mem,
                translation_enabled: true,
                root: t.root,
            };
            let p = Pasid::from_table_index(pasid);
            match desired_binding(&on, BDF, p, true) {
                DesiredBinding::Nested(n) => n.fpd,
                other => panic!("PASID {pasid}: {other:?}"),
            }
        };
        let entries = [(0, fs), (70, fs), (130, fs), (200, fs.with_fpd(true))];
        let t = scalable_tables(&cfg, 0, false, &entries);
        // Directory entry 1 (PASIDs 64-127) gets FPD.
        let de1 = t.dir + 8;
        let raw = t.mem.read_u64(de1).unwrap();
        t.mem.write_u64(de1, raw | 2).unwrap();
        assert_eq!(
            [0, 70, 130, 200].map(|p| fpd_of(&t, p)),
            [false, true, false, true]
        );
        // FPD in the context entry covers every PASID of the device.
        let t = scalable_tables(&cfg, 0, true, &entries);
        assert_eq!(
            [0, 70, 130, 200].map(|p| fpd_of(&t, p)),
            [true, true, true, true]
        );
    }

    /// The scan reads at most MAX_SCAN_READS entries: a directory that fits (2^13 entries
    /// with nothing present: exactly MAX_SCAN_READS reads) is scanned whole, a larger one
    /// (2^14 entries, PDTS 7) is cut short and says so.
    #[test]
    fn the_scan_of_an_empty_directory_is_bounded() {
        let cfg = flts(20);
        for (pdts, truncated) in [(6, false), (7, true)] {
            let t = scalable_tables(&cfg, pdts, false, &[]);
            let on = GuestRemapping {
                config: &cfg,
                mem: &t.mem,
                translation_enabled: true,
                root: t.root,
            };
            assert_eq!(
                present_pasids(&on, BDF, 20),
                PasidScan {
                    found: Vec::new(),
                    truncated
                },
                "PDTS {pdts}"
            );
        }
    }

    /// PASID-table reads count towards MAX_SCAN_READS as directory reads do: 4096 directory
    /// entries (PDTS 5) of which the last 64 are present cost 4096 + 64 * 64 = MAX_SCAN_READS
    /// reads and the scan completes, finding the present PASID in each of those tables; one
    /// more present directory entry is one table too many.
    #[test]
    fn the_scan_counts_pasid_table_reads() {
        let cfg = flts(20);
        let fs = PasidEntry::first_stage(FS_ROOT, false, 5, 2);
        let t = scalable_tables(&cfg, 5, false, &[]);
        // One PASID table, slot 63 present, shared by directory entries 4032..=4095.
        let table = 0x30_0000;
        t.mem.write_words(table + 63 * 64, &fs.0).unwrap();
        let present = |d: u64| t.mem.write_u64(t.dir + d * 8, table | 1).unwrap();
        for d in 4032..4096 {
            present(d);
        }
        let on = GuestRemapping {
            config: &cfg,
            mem: &t.mem,
            translation_enabled: true,
            root: t.root,
        };
        let scan = present_pasids(&on, BDF, 20);
        let want: Vec<Pasid> = (4032..4096u32)
            .map(|d| Pasid::new(d * 64 + 63).unwrap())
            .collect();
        assert_eq!(
            scan,
            PasidScan {
                found: want,
                truncated: false
            }
        );
        present(4031);
        assert!(present_pasids(&on, BDF, 20).truncated);
    }
}
