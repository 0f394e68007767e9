//! What live migration needs from the binder: the registered devices as a snapshot records
//! them, the nest parents whose dirty bits see passthrough DMA, and the replay of every
//! binding once the unit's state was restored.
//!
//! The binder keeps no state of its own that a migration must carry: every binding is a
//! function of the guest's tables (in guest memory, which migrates) and the unit's latched
//! root and enables (in the unit's snapshot). So the target registers the same devices, the
//! unit's state is imported, and [`NestedBinder::replay_after_restore`] re-derives every
//! binding, as QEMU's `vtd_post_load` replays PASID bindings
//! (QEMU hw/i386/intel_iommu.c).

use std::sync::Arc;

use vtd_regs::Bdf;
use vtd_tables::GuestRam;

use super::NestedBinder;
use super::registry::{BindingInfo, HostAttachment};
use crate::backend::{DeviceId, HostIommuBackend, HwptId, Pasid};
use crate::host::HostHwInfo;

/// A registered device as a migration sees it.
#[derive(Clone)]
pub struct RegisteredDevice {
    /// Guest requester ID.
    pub bdf: Bdf,
    /// Host device name.
    pub name: String,
    /// What its host IOMMU reported at registration.
    pub info: HostHwInfo,
    /// Its backend.
    pub backend: Arc<dyn HostIommuBackend>,
    /// Its iommufd device ID.
    pub dev_id: DeviceId,
    /// Its default HWPT: the nest parent whose second stage (GPA -> HPA) every DMA of the
    /// device goes through, nested or not.
    pub parent: HwptId,
    /// Bindings the host has nested on the guest's tables: `None` for requests without
    /// PASID, else the PASID.
    pub nested: Vec<Option<Pasid>>,
}

impl std::fmt::Debug for RegisteredDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredDevice")
            .field("bdf", &self.bdf)
            .field("name", &self.name)
            .field("backend", &self.backend.name())
            .field("dev_id", &self.dev_id)
            .field("parent", &self.parent)
            .field("nested", &self.nested)
            .finish_non_exhaustive()
    }
}

impl<M: GuestRam + Send + Sync + 'static> NestedBinder<M> {
    /// Every registered device, in BDF order.
    pub fn registered_devices(&self) -> Vec<RegisteredDevice> {
        let inner = self.lock();
        inner
            .devices
            .iter()
            .map(|(&bdf, d)| RegisteredDevice {
                bdf,
                name: d.host.name.clone(),
                info: d.host.info,
                backend: d.backend.clone(),
                dev_id: d.dev_id,
                parent: d.parent,
                nested: d
                    .bindings
                    .iter()
                    .filter(|(_, b)| matches!(b.host, HostAttachment::Nested(_)))
                    .map(|(&p, _)| p)
                    .collect(),
            })
            .collect()
    }

    /// After the unit's state was imported on a migration target: re-derives every binding of
    /// every registered device from the restored tables (what the binder also does on the
    /// root-table and translation-enable events the import publishes; calling it again is
    /// harmless), and returns the bindings for the VMM to check.
    pub fn replay_after_restore(&self) -> Vec<BindingInfo> {
        self.resync_all();
        self.bindings()
    }
}
