//! Applying and fencing: drives the host from what a binding has to what
//! [`desired_binding`](super::desired::desired_binding) asks for, one backend call at a time,
//! through the device's own backend.
//!
//! A new nested HWPT replaces the old attachment (`VFIO_DEVICE_ATTACH_IOMMUFD_PT` replace),
//! then the old HWPT is destroyed. The replace is not atomic on Intel hosts: the driver blocks
//! the device before it validates the new table and does not revert a failure (see
//! [`HostIommuBackend::attach`]), so after a failed attach the binding is *blocked*, never
//! "still on the previous HWPT"; the binder then detaches so iommufd's bookkeeping agrees.
//! When the host refuses any other step the binder never leaves the device on a table the
//! guest has abandoned either: it *fences* the binding (detach, DMA blocked) and marks it
//! dirty for a retry. HWPTs the host will not destroy become known
//! orphans, retried later. Every failure is reported once ([`Inner::report`]).

use std::sync::Arc;

use vtd_tables::GuestRam;

use super::NestedBinder;
use super::desired::{DesiredBinding, NestedState};
use super::registry::{BackendKey, Binding, HostAttachment, Inner, Orphan, backend_key};
use crate::backend::{HostIommuBackend, HwptAlloc, HwptId};
use crate::events::{AccelEvent, BlockCause, Recovery};
use crate::ids::BindingKey;

impl<M: GuestRam + Send + Sync + 'static> NestedBinder<M> {
    /// Drives the host towards `desired` for `key`, fencing on failure. `emit` says whether a
    /// guest configuration the host cannot run is reported (not while unregistering).
    pub(super) fn apply(
        &self,
        inner: &mut Inner,
        key: BindingKey,
        desired: DesiredBinding,
        emit: bool,
    ) {
        let Some(dev) = inner.devices.get(&key.bdf) else {
            return;
        };
        let (backend, dev_id, parent) = (dev.backend.clone(), dev.dev_id, dev.parent);
        let pasid = key.pasid;
        let mut b = dev
            .bindings
            .get(&pasid)
            .cloned()
            .unwrap_or_else(Binding::detached);
        match desired {
            DesiredBinding::Parent => {
                if b.host == HostAttachment::Parent && !b.dirty {
                    b.blocked = None;
                } else {
                    match backend.attach(dev_id, pasid, parent) {
                        Ok(()) => {
                            let old = b.nested_hwpt();
                            b = Binding::on_parent();
                            inner.stats.parent_attaches += 1;
                            inner
                                .events
                                .push(AccelEvent::AttachedParent { binding: key });
                            self.dispose(inner, &backend, old, key);
                        }
                        Err(e) => {
                            inner.report(e, Some(key), Some(parent), Recovery::Blocked);
                            self.after_failed_attach(inner, &backend, key, &mut b);
                        }
                    }
                }
            }
            DesiredBinding::Nested(want) => {
                let same = matches!(b.host, HostAttachment::Nested(_))
                    && b.nested.is_some_and(|n| n.s1 == want.s1);
                if same && !b.dirty {
                    // Same table: DID or FPD may have changed; the host state stays.
                    b.nested = Some(want);
                } else {
                    self.bind_nested(inner, &backend, parent, key, want, &mut b);
                }
            }
            DesiredBinding::Blocked {
                cause,
                fault,
                unsupported,
            } => {
                let changed = b.blocked.as_ref().map(|(c, _)| c) != Some(&cause)
                    || b.host != HostAttachment::Blocked;
                if let (Some(what), true, true) = (unsupported, changed, emit) {
                    tracing::warn!(target: "vtd::accel", %key, %what, "guest configuration unsupported");
                    inner.stats.guest_config_errors += 1;
                    inner
                        .events
                        .push(AccelEvent::GuestConfigUnsupported { binding: key, what });
                }
                if b.host == HostAttachment::Blocked {
                    b.blocked = Some((cause, fault));
                    b.dirty = false;
                } else {
                    match backend.detach(dev_id, pasid) {
                        Ok(()) => {
                            let old = b.nested_hwpt();
                            b = Binding {
                                host: HostAttachment::Blocked,
                                nested: None,
                                blocked: Some((cause.clone(), fault)),
                                dirty: false,
                            };
                            inner.stats.detaches += 1;
                            inner.events.push(AccelEvent::Blocked {
                                binding: key,
                                cause,
                            });
                            self.dispose(inner, &backend, old, key);
                        }
                        Err(e) => {
                            inner.report(e, Some(key), b.nested_hwpt(), Recovery::KeptPrevious);
                            b.dirty = true;
                        }
                    }
                }
            }
        }
        if let Some(dev) = inner.devices.get_mut(&key.bdf) {
            dev.bindings.insert(pasid, b);
        }
    }

    /// Allocates and attaches a nested HWPT for `want`, replacing what `b` has.
    fn bind_nested(
        &self,
        inner: &mut Inner,
        backend: &Arc<dyn HostIommuBackend>,
        parent: HwptId,
        key: BindingKey,
        want: NestedState,
        b: &mut Binding,
    ) {
        let Some(dev) = inner.devices.get(&key.bdf) else {
            return;
        };
        let dev_id = dev.dev_id;
        let req = HwptAlloc::Nested {
            parent,
            s1: want.s1,
            pasid: self.pasids_enabled(dev),
            // Only a device with ATS and PRI may have a fault queue on its HWPT: the Intel
            // driver refuses to attach one to any other device (ENODEV; Linux
            // `drivers/iommu/intel/iommu.c`, `intel_iommu_enable_iopf()`).
            fault: self.page_requests_enabled(dev),
        };
        let new = match backend.alloc_hwpt(dev_id, &req) {
            Ok(h) => h,
            Err(e) => {
                let at = inner.report(e, Some(key), None, Recovery::KeptPrevious);
                let r = self.fence(inner, backend, key, b);
                inner.set_recovery(at, r);
                return;
            }
        };
        inner.stats.hwpts_allocated += 1;
        if let Err(e) = backend.attach(dev_id, key.pasid, new) {
            inner.report(e, Some(key), Some(new), Recovery::Blocked);
            self.after_failed_attach(inner, backend, key, b);
            self.dispose(inner, backend, Some(new), key);
            return;
        }
        let old = b.nested_hwpt();
        *b = Binding {
            host: HostAttachment::Nested(new),
            nested: Some(want),
            blocked: None,
            dirty: false,
        };
        inner.stats.nested_attaches += 1;
        tracing::info!(target: "vtd::accel", %key, %new, ?want.s1, "bound guest first stage");
        inner.events.push(AccelEvent::Bound {
            binding: key,
            hwpt: new,
            s1: want.s1,
            did: want.did,
        });
        self.dispose(inner, backend, old, key);
    }

    /// After a failure to reach the guest's state: block the binding rather than leave it on a
    /// table the guest abandoned. Returns what happened.
    pub(super) fn fence(
        &self,
        inner: &mut Inner,
        backend: &Arc<dyn HostIommuBackend>,
        key: BindingKey,
        b: &mut Binding,
    ) -> Recovery {
        b.dirty = true;
        if b.host == HostAttachment::Blocked {
            return Recovery::KeptPrevious;
        }
        let Some(dev_id) = inner.devices.get(&key.bdf).map(|d| d.dev_id) else {
            return Recovery::KeptPrevious;
        };
        match backend.detach(dev_id, key.pasid) {
            Ok(()) => {
                let old = b.nested_hwpt();
                *b = Binding {
                    host: HostAttachment::Blocked,
                    nested: None,
                    blocked: Some((BlockCause::HostFailure, None)),
                    dirty: true,
                };
                inner.stats.detaches += 1;
                inner.events.push(AccelEvent::Blocked {
                    binding: key,
                    cause: BlockCause::HostFailure,
                });
                self.dispose(inner, backend, old, key);
                Recovery::Blocked
            }
            Err(e) => {
                inner.report(e, Some(key), b.nested_hwpt(), Recovery::KeptPrevious);
                Recovery::KeptPrevious
            }
        }
    }

    /// After `VFIO_DEVICE_ATTACH_IOMMUFD_PT` failed: the Intel driver has already blocked the
    /// device (Linux `drivers/iommu/intel/nested.c`, `intel_nested_attach_dev()` calls
    /// `device_block_translation()` before `intel_pasid_setup_nested()` checks the table) and
    /// does not revert, so the binding is blocked now. The binder detaches so that iommufd's
    /// bookkeeping agrees (a failure of that is reported; the binding stays blocked), drops
    /// the HWPT it left, and retries later.
    fn after_failed_attach(
        &self,
        inner: &mut Inner,
        backend: &Arc<dyn HostIommuBackend>,
        key: BindingKey,
        b: &mut Binding,
    ) {
        let was_blocked = b.host == HostAttachment::Blocked;
        let old = b.nested_hwpt();
        *b = Binding {
            host: HostAttachment::Blocked,
            nested: None,
            blocked: Some((BlockCause::HostFailure, None)),
            dirty: true,
        };
        if was_blocked {
            return;
        }
        if let Some(dev_id) = inner.devices.get(&key.bdf).map(|d| d.dev_id) {
            match backend.detach(dev_id, key.pasid) {
                Ok(()) => inner.stats.detaches += 1,
                Err(e) => {
                    inner.report(e, Some(key), old, Recovery::Blocked);
                }
            }
        }
        inner.events.push(AccelEvent::Blocked {
            binding: key,
            cause: BlockCause::HostFailure,
        });
        self.dispose(inner, backend, old, key);
    }

    /// Fences the binding that uses `hwpt` of `backend`, if it still does.
    pub(super) fn fence_hwpt(
        &self,
        inner: &mut Inner,
        backend: BackendKey,
        key: BindingKey,
        hwpt: HwptId,
    ) -> Recovery {
        let Some(dev) = inner
            .devices
            .get(&key.bdf)
            .filter(|d| backend_key(&d.backend) == backend)
        else {
            return Recovery::None;
        };
        let backend = dev.backend.clone();
        let Some(mut b) = dev.bindings.get(&key.pasid).cloned() else {
            return Recovery::None;
        };
        if b.host != HostAttachment::Nested(hwpt) {
            return Recovery::None;
        }
        let r = self.fence(inner, &backend, key, &mut b);
        if let Some(dev) = inner.devices.get_mut(&key.bdf) {
            dev.bindings.insert(key.pasid, b);
        }
        r
    }

    /// Destroys an HWPT the binder no longer uses, with its pending invalidations (orphaning
    /// it if the host refuses).
    pub(super) fn dispose(
        &self,
        inner: &mut Inner,
        backend: &Arc<dyn HostIommuBackend>,
        hwpt: Option<HwptId>,
        key: BindingKey,
    ) {
        let Some(hwpt) = hwpt else { return };
        let slot = (backend_key(backend), hwpt);
        inner.pending.remove(&slot);
        // The binding left this HWPT: the kernel has answered its pending page requests itself
        // (Linux `drivers/iommu/iommufd/fault.c`, `iommufd_auto_response_faults()`), so their
        // cookies are dead; a late guest answer must not be written to the host.
        self.page_requests.lock().forget_binding(key.bdf, key.pasid);
        match backend.destroy(hwpt) {
            Ok(()) => inner.stats.hwpts_destroyed += 1,
            Err(e) => {
                inner.report(e, Some(key), Some(hwpt), Recovery::Orphaned);
                inner.orphans.insert(
                    slot,
                    Orphan {
                        backend: backend.clone(),
                        bdf: key.bdf,
                    },
                );
            }
        }
    }

    /// Retries destroying every orphan, each on its own backend.
    pub(super) fn destroy_orphans(&self, inner: &mut Inner) {
        let orphans: Vec<((BackendKey, HwptId), Arc<dyn HostIommuBackend>)> = inner
            .orphans
            .iter()
            .map(|(&slot, o)| (slot, o.backend.clone()))
            .collect();
        for (slot, backend) in orphans {
            let hwpt = slot.1;
            match backend.destroy(hwpt) {
                Ok(()) => {
                    inner.orphans.remove(&slot);
                    inner.stats.hwpts_destroyed += 1;
                    inner.events.push(AccelEvent::OrphanDestroyed { hwpt });
                }
                Err(e) => {
                    inner.report(e, None, Some(hwpt), Recovery::Orphaned);
                }
            }
        }
    }
}
