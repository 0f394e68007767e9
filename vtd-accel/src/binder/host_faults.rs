//! Host faults reaching the guest (the part upstream QEMU leaves as a TODO in
//! `hw/i386/intel_iommu_accel.c`: "Fault event injection to guest when HW first stage page
//! table faults").
//!
//! Each backend of a registered device has its own fault queue; every one is read, and a fault
//! is matched to the device by (backend, iommufd device ID). First-stage faults on the HWPT the
//! binding uses go to the guest (honouring FPD, VT-d spec 7.1.2); faults on a blocked binding
//! get the guest fault the binding stands for (e.g. PASID entry not present); second-stage
//! faults and blocks the binder caused stay with the VMM ([`AccelEvent::HostFault`]).
//! The guest sink is called without the binder's lock held.

use std::sync::Arc;

use vtd_regs::Bdf;
use vtd_regs::fault::FaultReason;
use vtd_tables::GuestRam;
use vtd_tables::walk::Fault;

use super::NestedBinder;
use super::registry::{BackendKey, HostAttachment, Inner, backend_key};
use crate::backend::{HostFault, HostIommuBackend};
use crate::events::{AccelEvent, HostFaultOutcome, Recovery};
use crate::faults::{FaultClass, classify};

/// Host faults handled per backend per [`NestedBinder::process_host_faults`] call.
const MAX_FAULTS_PER_POLL: usize = 256;

impl<M: GuestRam + Send + Sync + 'static> NestedBinder<M> {
    /// Reads the fault queue of every backend a registered device uses: page requests go to
    /// the guest's page request queue (see `page_requests`); non-recoverable faults, from the
    /// backends that report them at all ([`BackendCaps::unrecoverable_faults`]; no VT-d host
    /// does), go to the guest's fault recording (honouring FPD), with the SID, PASID, address
    /// and access of the faulting request. Returns the number of faults and page requests
    /// read.
    ///
    /// [`BackendCaps::unrecoverable_faults`]: crate::BackendCaps
    pub fn process_host_faults(&self) -> usize {
        // Each backend once, with whether any of its devices has page requests.
        let backends: Vec<(Arc<dyn HostIommuBackend>, bool)> = {
            let inner = self.lock();
            let mut seen: Vec<(Arc<dyn HostIommuBackend>, bool)> = Vec::new();
            for d in inner.devices.values() {
                let pri = self.page_requests_enabled(d);
                match seen
                    .iter_mut()
                    .find(|(b, _)| backend_key(b) == backend_key(&d.backend))
                {
                    Some((_, any)) => *any |= pri,
                    None => seen.push((d.backend.clone(), pri)),
                }
            }
            seen
        };
        let mut count = 0;
        for (backend, any_pri) in backends {
            if any_pri {
                count += self.process_page_requests_of(&backend);
            }
            if backend.caps().unrecoverable_faults {
                count += self.process_faults_of(&backend);
            }
        }
        count
    }

    fn process_faults_of(&self, backend: &Arc<dyn HostIommuBackend>) -> usize {
        let faults = match backend.read_faults(MAX_FAULTS_PER_POLL) {
            Ok(f) => f,
            Err(e) => {
                let mut inner = self.lock();
                inner.report(e, None, None, Recovery::None);
                self.finish(inner);
                return 0;
            }
        };
        let key = backend_key(backend);
        let count = faults.len();
        let mut plan = Vec::with_capacity(count);
        {
            let mut inner = self.lock();
            for hf in faults {
                inner.stats.host_faults += 1;
                let (bdf, guest, outcome) = Self::route_fault(&inner, key, &hf);
                plan.push((hf, bdf, guest, outcome));
            }
        }
        let mut done = Vec::with_capacity(plan.len());
        for (hf, bdf, guest, outcome) in plan {
            let outcome = match (outcome, &guest) {
                (None, Some(g)) => HostFaultOutcome::Injected(self.faults.inject(g)),
                (Some(o), _) => o,
                (None, None) => HostFaultOutcome::HostSide,
            };
            done.push((hf, bdf, guest, outcome));
        }
        let mut inner = self.lock();
        for (fault, bdf, guest, outcome) in done {
            match outcome {
                HostFaultOutcome::Injected(_) => inner.stats.faults_injected += 1,
                HostFaultOutcome::SuppressedByFpd => inner.stats.faults_suppressed += 1,
                _ => inner.stats.faults_not_injected += 1,
            }
            inner.events.push(AccelEvent::HostFault {
                fault,
                bdf,
                guest,
                outcome,
            });
        }
        self.finish(inner);
        count
    }

    /// Decides what a host fault from `backend` means for the guest: `(bdf, guest fault,
    /// outcome)`; an outcome of `None` means "inject the guest fault".
    fn route_fault(
        inner: &Inner,
        backend: BackendKey,
        hf: &HostFault,
    ) -> (Option<Bdf>, Option<Fault>, Option<HostFaultOutcome>) {
        let Some((&bdf, dev)) = inner
            .devices
            .iter()
            .find(|(_, d)| d.dev_id == hf.dev_id && backend_key(&d.backend) == backend)
        else {
            return (None, None, Some(HostFaultOutcome::UnknownDevice));
        };
        let Some(b) = dev.bindings.get(&hf.pasid) else {
            return (Some(bdf), None, Some(HostFaultOutcome::HostSide));
        };
        let make = |reason: FaultReason, suppressed: bool| Fault {
            reason,
            sid: bdf.sid(),
            pasid: hf.pasid.map(|p| p.get()),
            address: hf.addr & !0xfff,
            access: hf.access,
            privileged: hf.privileged,
            suppressed,
        };
        let guest = match classify(hf.reason) {
            FaultClass::FirstStage => match (b.host, b.nested) {
                (HostAttachment::Nested(h), Some(n)) if hf.hwpt.is_none_or(|x| x == h) => {
                    make(hf.reason, n.fpd && hf.reason.is_qualified())
                }
                _ => return (Some(bdf), None, Some(HostFaultOutcome::Stale)),
            },
            FaultClass::Structure => match (&b.host, &b.blocked) {
                (HostAttachment::Blocked, Some((_, Some(gf)))) => make(gf.reason, gf.suppressed),
                (HostAttachment::Blocked, _) => {
                    return (Some(bdf), None, Some(HostFaultOutcome::HostSide));
                }
                _ => return (Some(bdf), None, Some(HostFaultOutcome::Stale)),
            },
            FaultClass::SecondStage | FaultClass::Other => {
                return (Some(bdf), None, Some(HostFaultOutcome::HostSide));
            }
        };
        if guest.suppressed {
            return (
                Some(bdf),
                Some(guest),
                Some(HostFaultOutcome::SuppressedByFpd),
            );
        }
        (Some(bdf), Some(guest), None)
    }
}
