//! Export and import of the unit's guest-observable state, for save/restore and live migration.
//!
//! [`UnitState`] is plain data: no serde, no format version. The versioned, checksummed
//! encoding lives in the `vtd-migrate` crate, which converts from and to these structs, so a
//! change to the unit's internals shows up here as a compile error in that conversion rather
//! than as a silent change of the wire format.
//!
//! What is state and what is not follows QEMU's `vmstate_vtd` (QEMU hw/i386/intel_iommu.c):
//! - state: the 4 KiB register image, the root-table and interrupt-remapping-table pointers
//!   latched by SRTP/SIRTP (they may differ from RTADDR/IRTA, which the guest can rewrite
//!   without latching), the next fault-recording index, the type of the last descriptor the
//!   queue executed, the page groups awaiting a response;
//! - derived, recomputed on import: GSTS.TES as the translate path reads it, the decoded root
//!   and interrupt table;
//! - not state: the IOTLB, context and PASID caches (spec 6.1 lets hardware drop cached
//!   entries at any time, so a unit whose caches start empty is one the guest cannot tell
//!   apart), counters, and the observers a VMM subscribed (it subscribes them again).
//!
//! The queue, pending-interrupt and enable flags in [`QueueState`], [`PendingInterrupts`] and
//! [`EnabledFlags`] are derived from the registers on export and are cross-checked on import:
//! they make a snapshot readable on its own (an inspector need not decode registers), and a
//! snapshot whose summary disagrees with its register image is refused as corrupt.
//!
//! Import is all-or-nothing: [`VtdUnit::validate_state`] checks everything a guest could not
//! have produced (bits no write or hardware update can set, indices out of range, latch status
//! bits without a latched pointer) before the unit is touched, so a refused import leaves the
//! unit exactly as it was.

use std::sync::atomic::Ordering;

use vtd_regs::regs::{
    EventControl, FRCD_HI_F, Fsts, Gsts, Iqa, Rtaddr, TranslationTableMode, offset as reg,
    register_layout,
};
use vtd_regs::{Cap, Ecap};
use vtd_tables::GuestRam;
use vtd_tables::walk::RootTable;

use crate::events::VtdEvent;
use crate::ir::IrTable;
use crate::prq::{GroupTracker, PrqState, PrqStateError};
use crate::unit::{VtdUnit, encode_root};

/// Size of the register image (the unit's 4 KiB MMIO window).
pub const REGISTER_IMAGE_SIZE: usize = vtd_regs::regs::MMIO_SIZE as usize;

/// RTADDR bits the guest can write (RTA 63:12, TTM 11:10; spec 11.4.5).
const RTADDR_BITS: u64 = 0xffff_ffff_ffff_fc00;
/// IRTA bits the guest can write (IRTA 63:12, EIME 11, S 3:0; spec 11.4.10.1).
const IRTA_BITS: u64 = 0xffff_ffff_ffff_f80f;

/// Everything of a unit that the guest can observe or that cannot be rebuilt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitState {
    /// The register image, [`REGISTER_IMAGE_SIZE`] bytes, as stored (write-only registers
    /// hold the last value written).
    pub registers: Vec<u8>,
    /// The fault-recording register the next fault goes to (spec 7.2.1).
    pub next_fault_record: u16,
    /// RTADDR as latched by the last SRTP, if any.
    pub latched_root: Option<u64>,
    /// IRTA as latched by the last SIRTP, if any.
    pub latched_irta: Option<u64>,
    /// Invalidation queue.
    pub queue: QueueState,
    /// Interrupt conditions pending.
    pub pending: PendingInterrupts,
    /// What the guest turned on.
    pub enabled: EnabledFlags,
    /// Page groups the guest has not answered yet (ECAP.PRS; the page request queue's
    /// registers are in `registers`).
    pub page_requests: PrqState,
}

/// The invalidation queue (spec 6.5.2), decoded from IQA/IQH/IQT plus the one thing the
/// registers do not hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueState {
    /// Queue base (IQA 63:12).
    pub base: u64,
    /// Number of descriptors the queue holds at its width.
    pub descriptor_count: u32,
    /// 256-bit descriptors (IQA.DW in scalable mode).
    pub wide: bool,
    /// Descriptor index of IQH.
    pub head: u32,
    /// Descriptor index of IQT (QT 18:4 shifted by the descriptor size).
    pub tail: u32,
    /// Type code of the last descriptor executed (QEMU's `iq_last_desc_type`), `None` if none
    /// since reset. QEMU consults it when the guest disables the queue.
    pub last_descriptor_type: Option<u8>,
}

/// Interrupt conditions pending in the registers (spec 7.3.1, 6.5.2.9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingInterrupts {
    /// FSTS as stored.
    pub fault_status: u32,
    /// FECTL.IP: a fault event is pending behind the mask.
    pub fault_event: bool,
    /// ICS.IWC: an invalidation wait completed with IF.
    pub wait_completion: bool,
    /// IECTL.IP: the completion event is pending behind the mask.
    pub completion_event: bool,
}

/// The GSTS enables, as QEMU keeps them in `dmar_enabled`, `qi_enabled`, `intr_enabled` and
/// `intr_eime`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnabledFlags {
    /// GSTS.TES.
    pub translation: bool,
    /// GSTS.QIES.
    pub queued_invalidation: bool,
    /// GSTS.IRES.
    pub interrupt_remapping: bool,
    /// GSTS.CFIS.
    pub compatibility_format: bool,
    /// EIME of the latched interrupt table (x2APIC destinations).
    pub extended_interrupt_mode: bool,
}

/// Why a state was refused. The unit is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The register image is not 4 KiB.
    #[error("register image has {0} bytes, expected {REGISTER_IMAGE_SIZE}")]
    RegisterImageSize(usize),
    /// The state is of a unit with another configuration.
    #[error(
        "state is of a unit with CAP {saved_cap:#x} ECAP {saved_ecap:#x} VER {saved_ver:#x}; \
         this unit has CAP {cap:#x} ECAP {ecap:#x} VER {ver:#x}: configure the target unit \
         with the source's properties"
    )]
    ConfigMismatch {
        /// CAP in the state.
        saved_cap: u64,
        /// ECAP in the state.
        saved_ecap: u64,
        /// VER in the state.
        saved_ver: u32,
        /// This unit's CAP.
        cap: u64,
        /// This unit's ECAP.
        ecap: u64,
        /// This unit's VER.
        ver: u32,
    },
    /// A register holds a value in bits neither the guest nor the unit can set.
    #[error(
        "register {name} (offset {offset:#x}) holds {value:#x}, but bits {bits:#x} can only \
         read {expected:#x} on this unit"
    )]
    RegisterBits {
        /// Register name, or "reserved".
        name: &'static str,
        /// Offset of the register.
        offset: u64,
        /// Value in the state.
        value: u64,
        /// The bits that differ from what the unit allows.
        bits: u64,
        /// What those bits must read.
        expected: u64,
    },
    /// A latched pointer has bits RTADDR/IRTA cannot hold.
    #[error("latched {which} {value:#x} has reserved bits set")]
    LatchedPointer {
        /// "root table" or "interrupt table".
        which: &'static str,
        /// The value.
        value: u64,
    },
    /// A GSTS latch status bit disagrees with the latched pointer.
    #[error("GSTS.{bit} is {status} but a latched {which} is {}", if *.latched { "present" } else { "absent" })]
    LatchStatus {
        /// "RTPS" or "IRTPS".
        bit: &'static str,
        /// "root table" or "interrupt table".
        which: &'static str,
        /// The status bit.
        status: bool,
        /// Whether a pointer is latched.
        latched: bool,
    },
    /// A fault-record index out of range.
    #[error("{what} {index} out of range: the unit has {count} fault-recording registers")]
    FaultRecordIndex {
        /// "next fault record" or "FSTS.FRI".
        what: &'static str,
        /// The index.
        index: u16,
        /// Number of records.
        count: u16,
    },
    /// FSTS.PPF does not match the fault records' F bits.
    #[error("FSTS.PPF is {ppf} but {pending} fault records have F set")]
    PendingFaults {
        /// FSTS.PPF.
        ppf: bool,
        /// Records with F set.
        pending: u16,
    },
    /// IQH does not point at a descriptor of the queue.
    #[error("IQH {iqh:#x} is not a descriptor slot of a {count}-descriptor queue")]
    QueueHead {
        /// IQH.
        iqh: u64,
        /// Descriptors in the queue.
        count: u32,
    },
    /// The last descriptor type is not one the unit executes.
    #[error("last descriptor type {0:#x} is not an invalidation descriptor type")]
    DescriptorType(u8),
    /// The outstanding page groups are not ones this unit can hold.
    #[error("page request state: {0}")]
    PageRequests(#[from] PrqStateError),
    /// A summary field disagrees with the register image.
    #[error("{field} is {saved:#x} but the register image says {from_registers:#x}")]
    Inconsistent {
        /// The field.
        field: &'static str,
        /// Value in the state.
        saved: u64,
        /// Value derived from the registers.
        from_registers: u64,
    },
}

/// Little-endian read from the image (offset and size are constants of the layout, always
/// inside the 4 KiB image once its size was checked).
fn image_get(image: &[u8], offset: u64, size: u8) -> u64 {
    let mut v = 0u64;
    for i in (0..size as usize).rev() {
        v = v << 8 | image.get(offset as usize + i).copied().unwrap_or(0) as u64;
    }
    v
}

/// Bits of a register the unit itself updates (status and hardware-written fields), which a
/// saved image may therefore hold whatever their reset value. Everything else the guest cannot
/// write keeps its reset value.
fn hardware_bits(name: &str, offset: u64, cap: Cap, ecap: Ecap) -> u64 {
    let fro = cap.fault_recording_offset();
    if (fro..fro + 16 * cap.fault_record_count() as u64).contains(&offset) {
        // Fault records are written whole by the unit (spec 10.4.14).
        return u64::MAX;
    }
    match name {
        "GSTS" => {
            // TES, RTPS, QIES, IRTPS; IRES and CFIS only with interrupt remapping (the unit
            // never sets them otherwise, spec 10.4.4).
            let mut bits = Gsts::new()
                .with_tes(true)
                .with_rtps(true)
                .with_qies(true)
                .with_irtps(true);
            if ecap.ir() {
                bits = bits.with_ires(true).with_cfis(true);
            }
            bits.into_bits() as u64
        }
        // CAIG 60:59.
        "CCMD" => 0x1800_0000_0000_0000,
        // PPF 1, FRI 15:8.
        "FSTS" => 0xff02,
        // IP 30.
        "FECTL" | "IECTL" | "PECTL" => 0x4000_0000,
        // QH 18:4.
        "IQH" => 0x7fff0,
        // IQEI 3:0: the only IQERCD field the unit reports (no device-TLB timeouts).
        "IQERCD" => 0xf,
        // IAIG 58:57.
        "IOTLB" => 0x0600_0000_0000_0000,
        _ => 0,
    }
}

impl UnitState {
    fn reg(&self, offset: u64, size: u8) -> u64 {
        image_get(&self.registers, offset, size)
    }

    /// Checks that `self` is a state a unit with `cap`/`ecap` can be in: the register image's
    /// size and identity, every bit against what guest writes and the unit can produce, the
    /// latched pointers, indices, and the summaries against the registers.
    pub fn validate(&self, cap: Cap, ecap: Ecap) -> Result<(), StateError> {
        if self.registers.len() != REGISTER_IMAGE_SIZE {
            return Err(StateError::RegisterImageSize(self.registers.len()));
        }
        let (saved_cap, saved_ecap, saved_ver) = (
            self.reg(reg::CAP, 8),
            self.reg(reg::ECAP, 8),
            self.reg(reg::VER, 4) as u32,
        );
        if saved_cap != cap.into_bits()
            || saved_ecap != ecap.into_bits()
            || saved_ver != vtd_regs::regs::VERSION_1_0
        {
            return Err(StateError::ConfigMismatch {
                saved_cap,
                saved_ecap,
                saved_ver,
                cap: cap.into_bits(),
                ecap: ecap.into_bits(),
                ver: vtd_regs::regs::VERSION_1_0,
            });
        }
        self.validate_register_bits(cap, ecap)?;
        self.validate_latches()?;
        self.validate_faults(cap)?;
        self.validate_queue(ecap)?;
        GroupTracker::from_state(&self.page_requests, ecap.prs())?;
        let derived = derive(&self.registers, ecap, self.latched_irta, self.queue);
        self.check_summary(&derived)
    }

    fn validate_register_bits(&self, cap: Cap, ecap: Ecap) -> Result<(), StateError> {
        let mut covered = vec![false; REGISTER_IMAGE_SIZE];
        for def in register_layout(cap, ecap) {
            let (off, n) = (def.offset as usize, def.size as usize);
            let Some(span) = covered.get_mut(off..off + n) else {
                continue;
            };
            span.iter_mut().for_each(|c| *c = true);
            let width_mask = if n == 8 {
                u64::MAX
            } else {
                (1u64 << (8 * n)) - 1
            };
            let free = def.rw_mask
                | def.w1c_mask
                | def.wo_mask
                | hardware_bits(def.name, def.offset, cap, ecap);
            let fixed = !free & width_mask;
            let value = self.reg(def.offset, def.size);
            let bits = (value ^ def.reset) & fixed;
            if bits != 0 {
                return Err(StateError::RegisterBits {
                    name: def.name,
                    offset: def.offset,
                    value,
                    bits,
                    expected: def.reset & bits,
                });
            }
        }
        // Offsets no register occupies read 0 and ignore writes (spec 10.2).
        if let Some(at) = covered
            .iter()
            .zip(self.registers.iter())
            .position(|(&covered, &byte)| !covered && byte != 0)
        {
            let offset = at as u64 & !7;
            return Err(StateError::RegisterBits {
                name: "reserved",
                offset,
                value: self.reg(offset, 8),
                bits: 0xff << (8 * (at as u64 - offset)),
                expected: 0,
            });
        }
        Ok(())
    }

    fn validate_latches(&self) -> Result<(), StateError> {
        let gsts = Gsts::from_bits(self.reg(reg::GSTS, 4) as u32);
        for (which, bit, latched, status, mask) in [
            (
                "root table",
                "RTPS",
                self.latched_root,
                gsts.rtps(),
                RTADDR_BITS,
            ),
            (
                "interrupt table",
                "IRTPS",
                self.latched_irta,
                gsts.irtps(),
                IRTA_BITS,
            ),
        ] {
            if let Some(value) = latched {
                if value & !mask != 0 {
                    return Err(StateError::LatchedPointer { which, value });
                }
            }
            // The unit sets the status bit exactly when it latches and clears both on reset.
            if status != latched.is_some() {
                return Err(StateError::LatchStatus {
                    bit,
                    which,
                    status,
                    latched: latched.is_some(),
                });
            }
        }
        Ok(())
    }

    fn validate_faults(&self, cap: Cap) -> Result<(), StateError> {
        let count = cap.fault_record_count();
        if self.next_fault_record >= count {
            return Err(StateError::FaultRecordIndex {
                what: "next fault record",
                index: self.next_fault_record,
                count,
            });
        }
        let fsts = Fsts::from_bits(self.reg(reg::FSTS, 4) as u32);
        if fsts.fri() as u16 >= count {
            return Err(StateError::FaultRecordIndex {
                what: "FSTS.FRI",
                index: fsts.fri() as u16,
                count,
            });
        }
        let fro = cap.fault_recording_offset();
        let pending = (0..count)
            .filter(|i| self.reg(fro + 16 * *i as u64 + 8, 8) & FRCD_HI_F != 0)
            .count() as u16;
        // PPF is recomputed from the F bits after every FRCD write (spec 10.4.9).
        if fsts.ppf() != (pending > 0) {
            return Err(StateError::PendingFaults {
                ppf: fsts.ppf(),
                pending,
            });
        }
        Ok(())
    }

    fn validate_queue(&self, ecap: Ecap) -> Result<(), StateError> {
        let iqa = Iqa::from_bits(self.reg(reg::IQA, 8));
        let (count, shift) = queue_geometry(iqa, ecap);
        let iqh = self.reg(reg::IQH, 8);
        if iqh & ((1 << shift) - 1) != 0 || (iqh >> shift) >= count as u64 {
            return Err(StateError::QueueHead { iqh, count });
        }
        if let Some(ty) = self.queue.last_descriptor_type {
            use vtd_regs::inv::desc_type;
            if !(desc_type::CONTEXT_CACHE..=desc_type::PAGE_GROUP_RESPONSE).contains(&ty) {
                return Err(StateError::DescriptorType(ty));
            }
        }
        Ok(())
    }

    fn check_summary(&self, derived: &Derived) -> Result<(), StateError> {
        let q = (&self.queue, &derived.queue);
        let p = (&self.pending, &derived.pending);
        let e = (&self.enabled, &derived.enabled);
        let fields: [(&'static str, u64, u64); 14] = [
            ("queue base", q.0.base, q.1.base),
            (
                "queue descriptor count",
                q.0.descriptor_count.into(),
                q.1.descriptor_count.into(),
            ),
            ("queue width", q.0.wide.into(), q.1.wide.into()),
            ("queue head", q.0.head.into(), q.1.head.into()),
            ("queue tail", q.0.tail.into(), q.1.tail.into()),
            ("FSTS", p.0.fault_status.into(), p.1.fault_status.into()),
            ("FECTL.IP", p.0.fault_event.into(), p.1.fault_event.into()),
            (
                "ICS.IWC",
                p.0.wait_completion.into(),
                p.1.wait_completion.into(),
            ),
            (
                "IECTL.IP",
                p.0.completion_event.into(),
                p.1.completion_event.into(),
            ),
            ("GSTS.TES", e.0.translation.into(), e.1.translation.into()),
            (
                "GSTS.QIES",
                e.0.queued_invalidation.into(),
                e.1.queued_invalidation.into(),
            ),
            (
                "GSTS.IRES",
                e.0.interrupt_remapping.into(),
                e.1.interrupt_remapping.into(),
            ),
            (
                "GSTS.CFIS",
                e.0.compatibility_format.into(),
                e.1.compatibility_format.into(),
            ),
            (
                "interrupt table EIME",
                e.0.extended_interrupt_mode.into(),
                e.1.extended_interrupt_mode.into(),
            ),
        ];
        match fields.iter().find(|(_, saved, derived)| saved != derived) {
            Some(&(field, saved, from_registers)) => Err(StateError::Inconsistent {
                field,
                saved,
                from_registers,
            }),
            None => Ok(()),
        }
    }
}

/// Descriptor count and log2 of the descriptor size of the queue IQA describes, as the unit
/// processes it (qi.rs): DW counts only with ECAP.SMTS.
fn queue_geometry(iqa: Iqa, ecap: Ecap) -> (u32, u32) {
    if iqa.dw() && ecap.smts() {
        (iqa.descriptor_count(), 5)
    } else {
        (1u32 << (iqa.qs() as u32 + 8), 4)
    }
}

struct Derived {
    queue: QueueState,
    pending: PendingInterrupts,
    enabled: EnabledFlags,
}

/// The summaries as the registers and latched IRTA imply them (`last_descriptor_type` is
/// taken from `queue`: the registers do not hold it).
fn derive(image: &[u8], ecap: Ecap, latched_irta: Option<u64>, queue: QueueState) -> Derived {
    let iqa = Iqa::from_bits(image_get(image, reg::IQA, 8));
    let (count, shift) = queue_geometry(iqa, ecap);
    let gsts = Gsts::from_bits(image_get(image, reg::GSTS, 4) as u32);
    let eime = latched_irta.is_some_and(|raw| IrTable::from_irta(raw).eime && ecap.eim());
    Derived {
        queue: QueueState {
            base: iqa.base(),
            descriptor_count: count,
            wide: shift == 5,
            head: (image_get(image, reg::IQH, 8) >> shift) as u32,
            tail: ((image_get(image, reg::IQT, 8) & 0x7fff0) >> shift) as u32,
            last_descriptor_type: queue.last_descriptor_type,
        },
        pending: PendingInterrupts {
            fault_status: image_get(image, reg::FSTS, 4) as u32,
            fault_event: EventControl::from_bits(image_get(image, reg::FECTL, 4) as u32).ip(),
            wait_completion: image_get(image, reg::ICS, 4) & 1 != 0,
            completion_event: EventControl::from_bits(image_get(image, reg::IECTL, 4) as u32).ip(),
        },
        enabled: EnabledFlags {
            translation: gsts.tes(),
            queued_invalidation: gsts.qies(),
            interrupt_remapping: gsts.ires(),
            compatibility_format: gsts.cfis(),
            extended_interrupt_mode: eime,
        },
    }
}

/// The root table an RTADDR value latches (as SRTP decodes it: TTM 01 without ECAP.SMTS is
/// the reserved encoding, spec 10.4.6).
fn root_of(raw: u64, ecap: Ecap) -> RootTable {
    let rt = Rtaddr::from_bits(raw);
    let mut mode = rt.ttm();
    if mode == TranslationTableMode::Scalable && !ecap.smts() {
        mode = TranslationTableMode::Reserved2;
    }
    RootTable {
        addr: rt.root_table_address(),
        mode,
    }
}

impl<M: GuestRam + Send + Sync> VtdUnit<M> {
    /// The unit's guest-observable state (see the [module docs](self)).
    pub fn export_state(&self) -> UnitState {
        let st = self.lock();
        let registers = st.regs.image().to_vec();
        let latched_irta = st.ir.map(|(_, raw)| raw);
        let queue = QueueState {
            last_descriptor_type: st.last_descriptor_type,
            ..QueueState::default()
        };
        let derived = derive(&registers, self.walk.ecap, latched_irta, queue);
        UnitState {
            next_fault_record: st.faults.next(),
            latched_root: st.root.map(|(_, raw)| raw),
            latched_irta,
            queue: derived.queue,
            pending: derived.pending,
            enabled: derived.enabled,
            page_requests: st.prq.snapshot(),
            registers,
        }
    }

    /// Checks that `state` can be imported into this unit, without changing it.
    pub fn validate_state(&self, state: &UnitState) -> Result<(), StateError> {
        state.validate(self.walk.cap, self.walk.ecap)
    }

    /// Replaces the unit's state with `state` after [validating](Self::validate_state) it:
    /// on error the unit is unchanged. Derived state is recomputed, the caches start empty
    /// (address spaces switch to the imported tables), observers are told about the latched
    /// tables and enables (so a nested binder re-binds passthrough devices), and a queue
    /// holding unprocessed descriptors resumes.
    pub fn import_state(&self, state: &UnitState) -> Result<(), StateError> {
        self.validate_state(state)?;
        let ecap = self.walk.ecap;
        let page_groups = GroupTracker::from_state(&state.page_requests, ecap.prs())?;
        let mut st = self.lock();
        st.prq = page_groups;
        st.regs.load_image(&state.registers);
        st.faults.set_next(state.next_fault_record);
        st.last_descriptor_type = state.queue.last_descriptor_type;
        st.root = state.latched_root.map(|raw| (root_of(raw, ecap), raw));
        st.ir = state.latched_irta.map(|raw| {
            let mut table = IrTable::from_irta(raw);
            // EIME is reserved without ECAP.EIM (spec 10.4.29), as at SIRTP.
            table.eime &= ecap.eim();
            (table, raw)
        });
        st.wait_deferred = false;
        // Ticket counts are this process's; the resumed queue's wait starts from the strict
        // test again (every pending event and ticket), which the import's own batch satisfies.
        st.wait_mark = None;
        self.root.store(
            st.root.map(|(r, _)| encode_root(r)).unwrap_or(0),
            Ordering::Release,
        );
        self.te.store(state.enabled.translation, Ordering::Release);
        self.flush_all_caches();
        if let Some((root, _)) = st.root {
            st.events.push(VtdEvent::RootTableLatched {
                root,
                changed: true,
            });
        }
        if let Some((table, _)) = st.ir {
            st.events.push(VtdEvent::InterruptTableLatched {
                base: table.base,
                entries: table.entries,
                eime: table.eime,
            });
        }
        st.events
            .push(VtdEvent::TranslationEnabled(state.enabled.translation));
        st.events.push(VtdEvent::InterruptRemappingEnabled(
            state.enabled.interrupt_remapping,
        ));
        // A queue saved between a tail write and its held-back wait resumes; otherwise
        // IQH == IQT or the queue is stopped (IQE) and this does nothing.
        self.process_queue(&mut st, false);
        self.finish_write(st);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vtd_regs::VtdConfig;

    use super::*;
    use crate::{EventLog, RecordingSink};

    fn unit(props: &str) -> VtdUnit<GuestMemoryMmap<()>> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let cfg = VtdConfig::from_qemu_props(props).unwrap();
        VtdUnit::new(cfg, mem, Arc::new(RecordingSink::default())).unwrap()
    }

    #[test]
    fn a_reset_unit_exports_a_state_that_validates_and_round_trips() {
        let a = unit("x-scalable-mode=on,x-flts=on");
        let state = a.export_state();
        assert_eq!(state.registers.len(), REGISTER_IMAGE_SIZE);
        assert_eq!(state.latched_root, None);
        assert_eq!(state.queue.last_descriptor_type, None);
        let b = unit("x-scalable-mode=on,x-flts=on");
        b.import_state(&state).unwrap();
        assert_eq!(b.export_state(), state);
    }

    #[test]
    fn import_tells_observers_about_the_latched_tables_and_enables() {
        let a = unit("x-scalable-mode=on,x-flts=on,intremap=on,eim=off");
        a.write(reg::RTADDR, 8, 0x10_0000 | 1 << 10);
        a.write(reg::GCMD, 4, Gsts::new().with_rtps(true).into_bits() as u64);
        a.write(reg::IRTA, 8, 0x20_0000 | 3);
        a.write(
            reg::GCMD,
            4,
            Gsts::new().with_irtps(true).into_bits() as u64,
        );
        a.write(reg::GCMD, 4, Gsts::new().with_tes(true).into_bits() as u64);
        let state = a.export_state();
        assert!(state.enabled.translation);
        let b = unit("x-scalable-mode=on,x-flts=on,intremap=on,eim=off");
        let log = Arc::new(EventLog::default());
        b.subscribe(log.clone());
        b.import_state(&state).unwrap();
        let events = log.take();
        assert!(events.contains(&VtdEvent::RootTableLatched {
            root: RootTable {
                addr: 0x10_0000,
                mode: TranslationTableMode::Scalable
            },
            changed: true
        }));
        assert!(events.contains(&VtdEvent::InterruptTableLatched {
            base: 0x20_0000,
            entries: 16,
            eime: false
        }));
        assert!(events.contains(&VtdEvent::TranslationEnabled(true)));
        assert!(b.translation_enabled());
        assert_eq!(b.root_table(), a.root_table());
    }

    #[test]
    fn a_refused_import_changes_nothing() {
        let a = unit("");
        let mut state = a.export_state();
        let b = unit("");
        b.write(reg::FECTL, 4, 0);
        let before = b.export_state();
        state.registers[0x300] = 1;
        assert!(matches!(
            b.import_state(&state),
            Err(StateError::RegisterBits { .. })
        ));
        assert_eq!(b.export_state(), before);
    }
}
