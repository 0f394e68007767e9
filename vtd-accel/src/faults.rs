//! Host first-stage faults reaching the guest (the part upstream QEMU left as a TODO: "Fault
//! event injection to guest when HW first stage page table faults").
//!
//! The binder decides *what* the guest must see (SID, PASID, address, reason, access, and FPD
//! suppression: VT-d spec 7.1.2-7.1.3) and hands a [`Fault`] to a [`GuestFaultSink`], which
//! records it in the unit's fault-recording registers and raises the fault event.
//!
//! [`UnitFaultSink`] records the fault with `VtdUnit::inject_fault`: the unit's own fault
//! logging (coalescing, overflow, FPD, the fault MSI) applies exactly as for its own walks.

use std::sync::Weak;
use vtd_core::sync::Mutex;

use vtd_core::{FaultDisposition, VtdUnit};
use vtd_regs::fault::FaultReason;
use vtd_tables::GuestRam;
use vtd_tables::walk::Fault;

/// Which part of the translation a host fault reason concerns (VT-d spec 7.1.3 tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultClass {
    /// The guest's first-stage table or the guest PASID-entry bits mirrored into the nested
    /// HWPT (0x5C-0x5D, 0x70-0x73, 0x80-0x83, 0x85-0x87, 0x90-0x91): guest-visible, injected.
    FirstStage,
    /// The host's second stage (GPA->HPA; 0x74-0x7C, 0x84): the VMM's business, never injected.
    SecondStage,
    /// Root, context or PASID structures (0x30-0x5B): the host's own tables; what the guest
    /// sees depends on why the binding is what it is.
    Structure,
    /// Legacy-mode and interrupt-remapping reasons: not expected from a nested HWPT.
    Other,
}

/// Classifies a host fault reason.
pub const fn classify(reason: FaultReason) -> FaultClass {
    match reason.code() {
        0x5c | 0x5d | 0x70..=0x73 | 0x80..=0x83 | 0x85..=0x87 | 0x90 | 0x91 => {
            FaultClass::FirstStage
        }
        0x74..=0x7c | 0x84 => FaultClass::SecondStage,
        0x30..=0x5b => FaultClass::Structure,
        _ => FaultClass::Other,
    }
}

/// What became of a fault handed to a [`GuestFaultSink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultInjection {
    /// The unit took the fault: recorded (or suppressed under FPD, or coalesced / overflowed
    /// as the spec's fault logging says), with `reason` as the guest sees it.
    Delivered {
        /// The reason recorded.
        reason: FaultReason,
        /// Suppressed by FPD.
        suppressed: bool,
    },
    /// The unit is gone.
    Unavailable,
}

/// Records a DMA fault in the guest's fault-recording registers.
pub trait GuestFaultSink: Send + Sync {
    /// Records `fault` (its `suppressed` flag says whether FPD covers it) and raises the fault
    /// event as VT-d spec 7.3 says.
    fn inject(&self, fault: &Fault) -> FaultInjection;
}

/// The sink that records host faults in the unit's fault-recording registers with
/// [`VtdUnit::inject_fault`].
#[derive(Debug)]
pub struct UnitFaultSink<M: GuestRam> {
    unit: Weak<VtdUnit<M>>,
}

impl<M: GuestRam> UnitFaultSink<M> {
    /// A sink recording into `unit`.
    pub fn new(unit: Weak<VtdUnit<M>>) -> Self {
        Self { unit }
    }
}

impl<M: GuestRam + Send + Sync> GuestFaultSink for UnitFaultSink<M> {
    fn inject(&self, fault: &Fault) -> FaultInjection {
        let Some(unit) = self.unit.upgrade() else {
            return FaultInjection::Unavailable;
        };
        let disposition = unit.inject_fault(*fault);
        FaultInjection::Delivered {
            reason: fault.reason,
            suppressed: disposition == FaultDisposition::Suppressed,
        }
    }
}

/// A sink that keeps the faults it is given (tests; VMMs that route faults elsewhere).
#[derive(Debug, Default)]
pub struct FaultLog {
    faults: Mutex<Vec<Fault>>,
}

impl FaultLog {
    /// Takes the faults seen so far.
    pub fn take(&self) -> Vec<Fault> {
        std::mem::take(&mut *self.faults.lock())
    }
}

impl GuestFaultSink for FaultLog {
    fn inject(&self, fault: &Fault) -> FaultInjection {
        self.faults.lock().push(*fault);
        FaultInjection::Delivered {
            reason: fault.reason,
            suppressed: fault.suppressed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        use FaultReason as R;
        for r in [
            R::FirstStageNotPresent,
            R::SmWriteNotPermitted,
            R::NonCanonicalAddress,
            R::UserAccessToSupervisorPage,
            R::FirstStageReserved,
            R::PasidEntrySupervisorDisabled,
        ] {
            assert_eq!(classify(r), FaultClass::FirstStage, "{r:?}");
        }
        for r in [
            R::SecondStagePermissionDenied,
            R::NestedFirstStageReadDenied,
            R::SecondStageAddressBeyondMax,
        ] {
            assert_eq!(classify(r), FaultClass::SecondStage, "{r:?}");
        }
        for r in [
            R::PasidEntryNotPresent,
            R::SmContextEntryNotPresent,
            R::PasidEntryInvalid,
        ] {
            assert_eq!(classify(r), FaultClass::Structure, "{r:?}");
        }
        assert_eq!(classify(R::WriteNotPermitted), FaultClass::Other);
        assert_eq!(classify(R::IrteNotPresent), FaultClass::Other);
        for r in FaultReason::ALL {
            let _ = classify(r);
        }
    }
}
