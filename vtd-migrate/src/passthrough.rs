//! Passthrough devices in a migration: what the snapshot records of them, the checks the
//! target runs before it changes anything, the replay of their bindings after restore, and
//! the host IOMMU's dirty log of their DMA.
//!
//! A passthrough device's binding is derived state: the guest's first-stage tables (in guest
//! memory) and the unit's latched root and enables (in the snapshot) determine it. The
//! snapshot therefore records only what the target must provide: the same device at the same
//! BDF, on a host IOMMU that can run the guest's configuration and the PASIDs the guest bound.
//! [`restore_with_binder`] checks exactly that, for every device, before importing the unit;
//! then the binder re-derives every binding ([`NestedBinder::replay_after_restore`]).
//!
//! Passthrough DMA is done by the host IOMMU, not through vm-memory, so guest memory's dirty
//! bitmap never sees it. The nest parent's second stage does: [`HwptDirtyLog`] reads and
//! clears its dirty bits (`IOMMU_HWPT_GET_DIRTY_BITMAP`) for the pre-copy loop.

use std::sync::Arc;

use vtd_accel::compat::{PciTopology, check_compatibility};
use vtd_accel::{
    BindingInfo, HostAttachment, HostIommuBackend, HostIommuDevice, HostIommuType, HwptId,
    NestedBinder, Pasid, RegisteredDevice,
};
use vtd_core::VtdUnit;
use vtd_regs::Bdf;
use vtd_tables::GuestRam;

use crate::precopy::{DIRTY_PAGE_SIZE, DirtyError, DirtyPages, DirtyTracker};
use crate::snapshot::{HostCapabilities, PassthroughDevice, Snapshot, SnapshotError, decode};

impl HostCapabilities {
    fn of(info: &vtd_accel::HostHwInfo) -> Self {
        let iommu_type = match info.iommu_type {
            HostIommuType::None => 0,
            HostIommuType::IntelVtd => 1,
            HostIommuType::ArmSmmuV3 => 2,
            HostIommuType::Tegra241Cmdqv => 3,
            HostIommuType::Amd => 4,
            HostIommuType::Other(v) => v,
        };
        Self {
            iommu_type,
            cap: info.cap.into_bits(),
            ecap: info.ecap.into_bits(),
            vtd_flags: info.vtd_flags,
            max_pasid_log2: info.max_pasid_log2,
            capabilities: info.capabilities,
        }
    }
}

/// The unit's state and every device registered with `binder`, with the PASIDs its host has
/// nested (RID_PASID 0 for requests without PASID).
pub fn snapshot_with_binder<M: GuestRam + Send + Sync + 'static>(
    unit: &VtdUnit<M>,
    binder: &NestedBinder<M>,
) -> Snapshot {
    let devices = binder
        .registered_devices()
        .into_iter()
        .map(|d| {
            let mut pasids: Vec<u32> = d.nested.iter().map(|&p| Pasid::table_index(p)).collect();
            pasids.sort_unstable();
            pasids.dedup();
            PassthroughDevice {
                bdf: d.bdf,
                name: d.name,
                pasids,
                host: HostCapabilities::of(&d.info),
            }
        })
        .collect();
    Snapshot {
        unit: unit.export_state(),
        devices,
    }
}

/// [`snapshot_with_binder`], encoded.
pub fn save_with_binder<M: GuestRam + Send + Sync + 'static>(
    unit: &VtdUnit<M>,
    binder: &NestedBinder<M>,
) -> Vec<u8> {
    crate::encode(&snapshot_with_binder(unit, binder))
}

/// Checks that the target's registered devices can take over the snapshot's: the same set of
/// BDFs, each on a host IOMMU that can run the guest's configuration and the PASIDs the
/// guest bound on the source.
pub fn check_devices(
    saved: &[PassthroughDevice],
    target: &[RegisteredDevice],
    config: &vtd_regs::VtdConfig,
) -> Result<(), SnapshotError> {
    for s in saved {
        let Some(t) = target.iter().find(|t| t.bdf == s.bdf) else {
            return Err(SnapshotError::MissingDevice {
                bdf: s.bdf,
                name: s.name.clone(),
            });
        };
        let incompatible = |reason: String| SnapshotError::IncompatibleDevice {
            bdf: s.bdf,
            name: t.name.clone(),
            reason,
        };
        let host = HostIommuDevice::iommufd(
            t.name.clone(),
            t.backend.clone(),
            t.dev_id,
            t.parent,
            t.info,
        );
        check_compatibility(config, &host, &PciTopology::default())
            .map_err(|e| incompatible(e.to_string()))?;
        if let Some(&widest) = s.pasids.iter().filter(|&&p| p != 0).max() {
            let needed = u32::BITS - widest.leading_zeros();
            if !t.info.supports_pasid() || u32::from(t.info.max_pasid_log2) < needed {
                return Err(incompatible(format!(
                    "the guest bound PASID {widest}, but the target host IOMMU supports \
                     {}-bit PASIDs{}",
                    t.info.max_pasid_log2,
                    if t.info.ecap.pasid() {
                        ""
                    } else {
                        " (no ECAP.PASID)"
                    }
                )));
            }
        }
    }
    if let Some(extra) = target
        .iter()
        .find(|t| !saved.iter().any(|s| s.bdf == t.bdf))
    {
        return Err(SnapshotError::UnexpectedDevice {
            bdf: extra.bdf,
            name: extra.name.clone(),
        });
    }
    Ok(())
}

/// Restores a snapshot into `unit` whose passthrough devices are registered with `binder` on
/// the target (all or nothing up to the import): decodes, checks the devices
/// ([`check_devices`]) and the unit state, imports it, then replays every binding and checks
/// that each PASID the source had nested is nested again.
///
/// A host call that fails during the replay is the one error left after the import (the
/// binder keeps retrying it, [`NestedBinder::retry_failed`]): it is reported as
/// [`SnapshotError::ReplayIncomplete`], naming the binding.
pub fn restore_with_binder<M: GuestRam + Send + Sync + 'static>(
    unit: &VtdUnit<M>,
    binder: &NestedBinder<M>,
    bytes: &[u8],
) -> Result<Snapshot, SnapshotError> {
    let snapshot = decode(bytes)?;
    check_devices(
        &snapshot.devices,
        &binder.registered_devices(),
        unit.config(),
    )?;
    unit.import_state(&snapshot.unit)?;
    let bindings = binder.replay_after_restore();
    for d in &snapshot.devices {
        for &index in &d.pasids {
            let pasid = Pasid::from_table_index(index);
            let bound = bindings.iter().any(|b: &BindingInfo| {
                b.bdf == d.bdf && b.pasid == pasid && matches!(b.host, HostAttachment::Nested(_))
            });
            if !bound {
                return Err(SnapshotError::ReplayIncomplete {
                    bdf: d.bdf,
                    pasid: index,
                });
            }
        }
    }
    Ok(snapshot)
}

/// The dirty log of one nest parent: DMA writes of every device attached to it or to an
/// HWPT nested on it, by guest-physical page.
pub struct HwptDirtyLog {
    backend: Arc<dyn HostIommuBackend>,
    hwpt: HwptId,
    /// Guest-physical ranges `(start, length)` to read, 4 KiB aligned.
    ranges: Vec<(u64, u64)>,
    devices: Vec<Bdf>,
}

impl std::fmt::Debug for HwptDirtyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HwptDirtyLog")
            .field("hwpt", &self.hwpt)
            .field("ranges", &self.ranges)
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

impl HwptDirtyLog {
    /// One log per distinct nest parent of `binder`'s devices, each reading the guest-physical
    /// `ranges` (`(start, length)`, 4 KiB aligned: guest RAM as the VMM mapped it into the
    /// IOAS).
    pub fn for_binder<M: GuestRam + Send + Sync + 'static>(
        binder: &NestedBinder<M>,
        ranges: &[(u64, u64)],
    ) -> Vec<Self> {
        let mut logs: Vec<Self> = Vec::new();
        for d in binder.registered_devices() {
            let same = |l: &&mut Self| {
                l.hwpt == d.parent
                    && std::ptr::addr_eq(Arc::as_ptr(&l.backend), Arc::as_ptr(&d.backend))
            };
            match logs.iter_mut().find(|l| same(l)) {
                Some(l) => l.devices.push(d.bdf),
                None => logs.push(Self {
                    backend: d.backend.clone(),
                    hwpt: d.parent,
                    ranges: ranges.to_vec(),
                    devices: vec![d.bdf],
                }),
            }
        }
        logs
    }

    fn error(&self, e: impl std::fmt::Display) -> DirtyError {
        DirtyError {
            tracker: self.name(),
            reason: e.to_string(),
        }
    }
}

impl DirtyTracker for HwptDirtyLog {
    fn name(&self) -> String {
        let devices: Vec<String> = self.devices.iter().map(|b| b.to_string()).collect();
        format!(
            "nest parent {} of passthrough {}",
            self.hwpt,
            devices.join(", ")
        )
    }

    fn start(&mut self) -> Result<(), DirtyError> {
        self.backend
            .set_dirty_tracking(self.hwpt, true)
            .map_err(|e| self.error(e))?;
        // What was recorded before (an earlier, abandoned migration) does not count.
        let mut discard = DirtyPages::new();
        self.collect(&mut discard)
    }

    fn collect(&mut self, pages: &mut DirtyPages) -> Result<(), DirtyError> {
        // One bitmap call per chunk of at most 2^18 pages (1 GiB), a 32 KiB bitmap.
        const CHUNK_PAGES: u64 = 1 << 18;
        let mut bitmap = vec![0u64; (CHUNK_PAGES / 64) as usize];
        for &(start, length) in &self.ranges {
            let mut at = start;
            let end = start.saturating_add(length);
            while at < end {
                let len = (end - at).min(CHUNK_PAGES * DIRTY_PAGE_SIZE);
                bitmap.iter_mut().for_each(|w| *w = 0);
                self.backend
                    .read_and_clear_dirty(self.hwpt, at, len, DIRTY_PAGE_SIZE, &mut bitmap)
                    .map_err(|e| self.error(e))?;
                for (i, &word) in bitmap.iter().enumerate() {
                    let mut bits = word;
                    while bits != 0 {
                        let bit = bits.trailing_zeros() as u64;
                        bits &= bits - 1;
                        pages.insert(at + (i as u64 * 64 + bit) * DIRTY_PAGE_SIZE);
                    }
                }
                at += len;
            }
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), DirtyError> {
        self.backend
            .set_dirty_tracking(self.hwpt, false)
            .map_err(|e| self.error(e))
    }
}
