//! Who is registered: the binder's bookkeeping of devices (each with the backend it is bound
//! to), their bindings per PASID, the PASIDs followed, the invalidations waiting for the end of
//! a batch, orphaned HWPTs; and registration / unregistration (QEMU
//! `set_iommu_device` / `unset_iommu_device`).
//!
//! A device carries its own backend (its iommufd): a VMM may bind devices to several, and
//! iommufd object IDs are only unique within one, so every host object the binder remembers is
//! keyed by its backend as well.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use vtd_regs::Bdf;
use vtd_tables::GuestRam;
use vtd_tables::walk::Fault;

use super::NestedBinder;
use super::desired::{DesiredBinding, NestedState};
use crate::backend::{
    BackendError, BackendOp, DeviceId, HostIommuBackend, HwptId, Pasid, VtdS1, VtdS1Invalidation,
};
use crate::compat::{CompatError, PciTopology, check_compatibility};
use crate::events::{AccelEvent, AccelStats, BlockCause, Recovery};
use crate::host::HostIommuDevice;
use crate::ids::BindingKey;

/// PASIDs other than RID_PASID followed per device.
const MAX_TRACKED_PASIDS: usize = 1024;

/// Why a device could not be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The host cannot run the guest's first stage for it.
    #[error(transparent)]
    Compat(#[from] CompatError),
    /// Something is already registered at this BDF.
    #[error("a host device is already registered at {0}")]
    AlreadyRegistered(Bdf),
    /// The iommufd device is registered at another BDF (same backend, same device ID).
    #[error("iommufd {dev_id} is already registered at {other}")]
    DeviceIdInUse {
        /// The device ID.
        dev_id: DeviceId,
        /// Where.
        other: Bdf,
    },
}

/// Why a device could not be unregistered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnregisterError {
    /// Nothing is registered there.
    #[error("no host device registered at {0}")]
    NotRegistered(Bdf),
    /// The host refused to put the device back on its default HWPT (or to block it); the
    /// device stays registered so the VMM can retry.
    #[error("unregistering {bdf}: {error}")]
    Host {
        /// The device.
        bdf: Bdf,
        /// The last host error.
        error: BackendError,
    },
}

/// What a device (PASID) is attached to on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostAttachment {
    /// The default HWPT (GPA->HPA).
    Parent,
    /// A nested HWPT the binder allocated.
    Nested(HwptId),
    /// Nothing: DMA blocked.
    Blocked,
}

/// One binding as the binder sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingInfo {
    /// The device.
    pub bdf: Bdf,
    /// The name of the host IOMMU backend it is bound through ([`HostIommuBackend::name`]).
    pub backend: &'static str,
    /// Its iommufd device ID (in its own backend).
    pub dev_id: DeviceId,
    /// Its default (parent) HWPT.
    pub parent: HwptId,
    /// The PASID, `None` for requests without PASID.
    pub pasid: Option<Pasid>,
    /// What the host has.
    pub host: HostAttachment,
    /// The guest table, when nested.
    pub s1: Option<VtdS1>,
    /// The DID forwarded invalidations must carry, when nested.
    pub did: Option<u16>,
    /// Why the device is blocked, when blocked.
    pub blocked: Option<BlockCause>,
    /// The host state is not what the guest asked for (a host call failed); retried later.
    pub dirty: bool,
}

/// An HWPT the host refused to destroy; retried on every resync and retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrphanHwpt {
    /// The device it was allocated for (its backend holds it).
    pub bdf: Bdf,
    /// The HWPT.
    pub hwpt: HwptId,
}

/// Identifies a backend instance (its data address) while the binder holds it.
pub(super) type BackendKey = usize;

pub(super) fn backend_key(backend: &Arc<dyn HostIommuBackend>) -> BackendKey {
    Arc::as_ptr(backend).cast::<()>() as usize
}

#[derive(Clone, Debug)]
pub(super) struct Binding {
    pub(super) host: HostAttachment,
    pub(super) nested: Option<NestedState>,
    pub(super) blocked: Option<(BlockCause, Option<Fault>)>,
    pub(super) dirty: bool,
}

impl Binding {
    pub(super) fn on_parent() -> Self {
        Self {
            host: HostAttachment::Parent,
            nested: None,
            blocked: None,
            dirty: false,
        }
    }
    pub(super) fn detached() -> Self {
        Self {
            host: HostAttachment::Blocked,
            nested: None,
            blocked: None,
            dirty: false,
        }
    }
    pub(super) fn nested_hwpt(&self) -> Option<HwptId> {
        match self.host {
            HostAttachment::Nested(h) => Some(h),
            _ => None,
        }
    }
}

pub(super) struct Device {
    pub(super) host: HostIommuDevice,
    pub(super) backend: Arc<dyn HostIommuBackend>,
    pub(super) dev_id: DeviceId,
    pub(super) parent: HwptId,
    pub(super) bindings: BTreeMap<Option<Pasid>, Binding>,
    /// PASIDs followed besides requests without PASID (always followed).
    pub(super) tracked: BTreeSet<Pasid>,
}

/// Invalidations for one HWPT waiting for the end of the batch.
pub(super) struct Pending {
    pub(super) backend: Arc<dyn HostIommuBackend>,
    pub(super) binding: BindingKey,
    pub(super) entries: Vec<VtdS1Invalidation>,
}

pub(super) struct Orphan {
    pub(super) backend: Arc<dyn HostIommuBackend>,
    pub(super) bdf: Bdf,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) devices: BTreeMap<Bdf, Device>,
    pub(super) pending: BTreeMap<(BackendKey, HwptId), Pending>,
    pub(super) orphans: BTreeMap<(BackendKey, HwptId), Orphan>,
    pub(super) events: Vec<AccelEvent>,
    pub(super) stats: AccelStats,
}

impl Inner {
    /// Records a failed host call: one event, one count. Returns the event's index so the
    /// recovery can be filled in once known.
    pub(super) fn report(
        &mut self,
        error: BackendError,
        binding: Option<BindingKey>,
        hwpt: Option<HwptId>,
        recovery: Recovery,
    ) -> usize {
        tracing::warn!(target: "vtd::accel", ?binding, ?hwpt, %error, ?recovery, "host call failed");
        self.stats.host_errors += 1;
        self.events.push(AccelEvent::HostError {
            binding,
            hwpt,
            error,
            recovery,
        });
        self.events.len() - 1
    }

    pub(super) fn set_recovery(&mut self, index: usize, to: Recovery) {
        if let Some(AccelEvent::HostError { recovery, .. }) = self.events.get_mut(index) {
            *recovery = to;
        }
    }

    /// Every binding of every device, for the VMM.
    pub(super) fn binding_infos(&self) -> Vec<BindingInfo> {
        let mut out = Vec::new();
        for (&bdf, d) in &self.devices {
            for (&pasid, b) in &d.bindings {
                out.push(BindingInfo {
                    bdf,
                    backend: d.backend.name(),
                    dev_id: d.dev_id,
                    parent: d.parent,
                    pasid,
                    host: b.host,
                    s1: b.nested.map(|n| n.s1),
                    did: b.nested.map(|n| n.did),
                    blocked: b.blocked.as_ref().map(|(c, _)| c.clone()),
                    dirty: b.dirty,
                });
            }
        }
        out
    }
}

impl<M: GuestRam + Send + Sync + 'static> NestedBinder<M> {
    /// Registers an assigned device at `bdf` (QEMU `set_iommu_device`): checks compatibility,
    /// then binds it to the guest's current state at once, whether the guest is still booting
    /// or has long enabled translation (hotplug). The device must be attached (by the VFIO
    /// layer) to its default HWPT, allocated with the flags of [`Self::viommu_flags`]; its
    /// calls go to the backend it carries ([`HostIommuDevice::backend`]).
    pub fn register(
        &self,
        bdf: Bdf,
        device: HostIommuDevice,
        topology: PciTopology,
    ) -> Result<(), RegisterError> {
        check_compatibility(&self.config, &device, &topology)?;
        let (Some((dev_id, parent)), Some(backend)) =
            (device.iommufd_ids(), device.backend().cloned())
        else {
            return Err(RegisterError::Compat(CompatError::NotIommufd {
                name: device.name.clone(),
            }));
        };
        let mut inner = self.lock();
        if inner.devices.contains_key(&bdf) {
            return Err(RegisterError::AlreadyRegistered(bdf));
        }
        let key = backend_key(&backend);
        if let Some((&other, _)) = inner
            .devices
            .iter()
            .find(|(_, d)| d.dev_id == dev_id && backend_key(&d.backend) == key)
        {
            return Err(RegisterError::DeviceIdInUse { dev_id, other });
        }
        inner.devices.insert(
            bdf,
            Device {
                host: device,
                backend,
                dev_id,
                parent,
                bindings: BTreeMap::from([(None, Binding::on_parent())]),
                tracked: BTreeSet::new(),
            },
        );
        inner.stats.devices += 1;
        self.sync_device(&mut inner, bdf);
        self.finish(inner);
        Ok(())
    }

    /// Unregisters the device at `bdf` (QEMU `unset_iommu_device`, hot-unplug): PASIDs are
    /// detached, requests without PASID go back to the default HWPT, the binder's HWPTs are
    /// destroyed (their pending invalidations dropped; the host answers their queued faults).
    /// Returns the host view it was registered with.
    pub fn unregister(&self, bdf: Bdf) -> Result<HostIommuDevice, UnregisterError> {
        let mut inner = self.lock();
        let Some(dev) = inner.devices.get(&bdf) else {
            return Err(UnregisterError::NotRegistered(bdf));
        };
        // PASIDs first, then requests without PASID (`None` sorts first).
        let mut pasids: Vec<Option<Pasid>> = dev.bindings.keys().copied().collect();
        pasids.sort_by_key(|p| (p.is_none(), *p));
        let events_before = inner.events.len();
        for pasid in pasids {
            let desired = match pasid {
                None => DesiredBinding::Parent,
                Some(_) => DesiredBinding::blocked(BlockCause::Unregistered),
            };
            self.apply(&mut inner, BindingKey::new(bdf, pasid), desired, false);
        }
        // Released: requests without PASID on the default HWPT, PASIDs blocked, nothing left
        // to retry.
        let clean = inner.devices.get(&bdf).is_some_and(|d| {
            d.bindings.iter().all(|binding| {
                matches!(
                    binding,
                    (
                        None,
                        Binding {
                            host: HostAttachment::Parent,
                            dirty: false,
                            ..
                        }
                    ) | (
                        Some(_),
                        Binding {
                            host: HostAttachment::Blocked,
                            dirty: false,
                            ..
                        }
                    )
                )
            })
        });
        if !clean {
            // The last host error of this unregistration (a binding stays unreleased only
            // when a host call failed, and every failure is reported).
            let error = inner
                .events
                .iter()
                .skip(events_before)
                .rev()
                .find_map(|e| match e {
                    AccelEvent::HostError { error, .. } => Some(error.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| BackendError::new(BackendOp::Attach, "device not released"));
            self.finish(inner);
            return Err(UnregisterError::Host { bdf, error });
        }
        let dev = inner.devices.remove(&bdf);
        inner.stats.devices = inner.stats.devices.saturating_sub(1);
        self.finish(inner);
        self.page_requests.lock().forget_device(bdf);
        dev.map(|d| d.host)
            .ok_or(UnregisterError::NotRegistered(bdf))
    }

    /// Whether a device is registered at `bdf`.
    pub fn is_registered(&self, bdf: Bdf) -> bool {
        self.lock().devices.contains_key(&bdf)
    }

    /// Whether the registered device can use PASIDs: the guest has them and its host does.
    pub(super) fn pasids_enabled(&self, dev: &Device) -> bool {
        self.config.pasid_bits > 0 && dev.host.supports_pasid_attach()
    }

    /// Whether the device's nested HWPTs get the backend's fault queue: the device has ATS and
    /// PRI, the backend reads page requests, and the guest has a page request queue
    /// (ECAP.PRS) to deliver them to.
    pub(super) fn page_requests_enabled(&self, dev: &Device) -> bool {
        dev.host.pri && dev.backend.caps().page_requests && self.config.ecap().prs()
    }

    /// Starts following `pasid` of `bdf` (bounded). Requests without PASID are always
    /// followed.
    pub(super) fn track(&self, inner: &mut Inner, key: BindingKey) -> bool {
        let Some(dev) = inner.devices.get_mut(&key.bdf) else {
            return false;
        };
        let Some(pasid) = key.pasid else {
            return true;
        };
        if dev.tracked.contains(&pasid) {
            return true;
        }
        if dev.tracked.len() >= MAX_TRACKED_PASIDS {
            return false;
        }
        dev.tracked.insert(pasid);
        true
    }
}
