//! A device's DMA address space as a `vm_memory::iommu::Iommu`, so device models built on
//! `IommuMemory` (virtio-queue and friends) do DMA by IOVA with no further glue.

use std::sync::Arc;

use vm_memory::iommu::{Error as IommuError, Iommu, Iotlb, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, Permissions};
use vtd_tables::GuestRam;
use vtd_tables::walk::{AccessKind, DmaRequest};

use crate::unit::{TranslateError, VtdUnit};

/// The address space of one requester (and optionally one PASID).
///
/// Each `translate` builds a private `Iotlb` holding exactly the pages of the request, from
/// the unit's translations: nothing is cached here, so an invalidation of the unit takes
/// effect on the next access with no second cache to keep in step.
pub struct DeviceAddressSpace<M: GuestRam> {
    unit: Arc<VtdUnit<M>>,
    sid: u16,
    pasid: Option<u32>,
}

impl<M: GuestRam> std::fmt::Debug for DeviceAddressSpace<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAddressSpace")
            .field("sid", &self.sid)
            .field("pasid", &self.pasid)
            .finish()
    }
}

impl<M: GuestRam + Send + Sync> DeviceAddressSpace<M> {
    /// The address space of requester `sid` (bus << 8 | devfn), with requests carrying `pasid`.
    pub fn new(unit: Arc<VtdUnit<M>>, sid: u16, pasid: Option<u32>) -> Self {
        Self { unit, sid, pasid }
    }

    /// The requester ID.
    pub fn sid(&self) -> u16 {
        self.sid
    }

    fn translate_page(
        &self,
        iova: u64,
        access: AccessKind,
    ) -> Result<vtd_tables::walk::Translation, IommuError> {
        let req = DmaRequest {
            sid: self.sid,
            pasid: self.pasid,
            iova,
            access,
            privileged: false,
        };
        self.unit
            .translate(&req)
            .map_err(|e| IommuError::CannotResolve {
                iova_range: IovaRange {
                    base: GuestAddress(iova),
                    length: 1,
                },
                reason: match e {
                    TranslateError::Fault(f) => {
                        format!("VT-d fault {:#x} ({:?})", f.reason.code(), f.reason)
                    }
                    TranslateError::InterruptRequest => "interrupt address range".into(),
                },
            })
    }
}

impl<M: GuestRam + Send + Sync> Iommu for DeviceAddressSpace<M> {
    type IotlbGuard<'a>
        = Box<Iotlb>
    where
        Self: 'a;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, IommuError> {
        let mut tlb = Box::new(Iotlb::new());
        let end = iova
            .0
            .checked_add(length as u64)
            .ok_or_else(|| IommuError::CannotResolve {
                iova_range: IovaRange { base: iova, length },
                reason: "range wraps around".into(),
            })?;
        let mut at = iova.0;
        while at < end {
            // A read-write access must be allowed both ways; the write walk also sets D.
            let t = match access {
                Permissions::Write | Permissions::ReadWrite => {
                    self.translate_page(at, AccessKind::Write)?
                }
                _ => self.translate_page(at, AccessKind::Read)?,
            };
            if access == Permissions::ReadWrite && !t.perms.read {
                self.translate_page(at, AccessKind::Read)?;
            }
            let page_end = (at | (t.page_size - 1)).saturating_add(1).min(end);
            let len = (page_end - at) as usize;
            let perm = match (t.perms.read, t.perms.write) {
                (true, true) => Permissions::ReadWrite,
                (true, false) => Permissions::Read,
                (false, true) => Permissions::Write,
                (false, false) => Permissions::No,
            };
            tlb.set_mapping(GuestAddress(at), GuestAddress(t.output), len, perm)?;
            at = page_end;
        }
        Iotlb::lookup(tlb, iova, length, access).map_err(|fails| IommuError::CannotResolve {
            iova_range: IovaRange { base: iova, length },
            reason: format!("not accessible: {fails:?}"),
        })
    }
}

impl<M: GuestRam + Send + Sync> VtdUnit<M> {
    /// The address space of requester `sid` as a `vm_memory::iommu::Iommu`.
    pub fn address_space(self: &Arc<Self>, sid: u16, pasid: Option<u32>) -> DeviceAddressSpace<M> {
        DeviceAddressSpace::new(Arc::clone(self), sid, pasid)
    }
}
