//! A device's DMA address space as a `vm_memory::iommu::Iommu`, so device models built on
//! `IommuMemory` (virtio-queue and friends) do DMA by IOVA with no further glue.
//!
//! vm-memory's `Iommu::translate` must return an iterator over a `vm_memory::iommu::Iotlb`
//! (a range map) that holds the request's pages. Building that map on every call (a heap
//! allocation and a B-tree insert per page) cost a hit twice vm-memory's own lookup, so each
//! thread keeps the maps it built, one per 64 KiB IOVA chunk of a device (16 chunks, direct
//! mapped), and reuses a chunk's map while nothing was invalidated:
//!
//! - A chunk's map is tagged with the unit's invalidation epoch read before its pages were
//!   translated, and used only while the epoch is unchanged. Every invalidation advances the
//!   epoch before it removes anything (as for the unit's own IOTLB fills), so once an
//!   invalidation completed no access is served from a map built before it.
//! - A map holds only what the unit's translations granted for the access made (a page first
//!   read is mapped read-only), so the first write to a page still goes through the unit and
//!   its walk sets the D bit.
//! - Per thread, so a hit writes nothing another thread reads; the map is lent to the
//!   returned iterator and given back when it is dropped (a nested call on the same thread
//!   meanwhile builds its own). Small maps (at most 16 pages) keep vm-memory's lookup cheap.
//! - Requests that cross a 64 KiB boundary get a map of their own, built and dropped per call.
//!
//! Hits served here do not show in the unit's IOTLB counters: they never reach it.

// Indices here are masked or reduced to the fixed sizes of the caches' own arrays (sets,
// ways, stripes, slots, page-size shifts) and never taken from guest data unchecked; the
// file belongs to the cache rework, which converts them to checked accesses.
#![allow(
    clippy::indexing_slicing,
    reason = "indices masked to fixed array sizes; converted by the cache rework"
)]

use std::cell::RefCell;
use std::ops::Deref;
use std::sync::Arc;

use vm_memory::iommu::{Error as IommuError, Iommu, Iotlb, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, Permissions};
use vtd_tables::GuestRam;
use vtd_tables::walk::{AccessKind, DmaRequest, Translation};

use crate::unit::{TranslateError, VtdUnit};

/// The address space of one requester (and optionally one PASID).
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

/// log2 of the IOVA chunk one cached map covers.
const CHUNK_SHIFT: u32 = 16;
/// Cached chunk maps per thread.
const CHUNKS: usize = 16;

/// Which map a cached chunk is: of which unit (its IOTLB's id), requester, PASID, chunk and
/// epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ChunkKey {
    unit: u64,
    sid: u16,
    pasid: Option<u32>,
    chunk: u64,
    epoch: u64,
}

#[derive(Debug)]
struct Chunk {
    key: ChunkKey,
    tlb: Iotlb,
}

thread_local! {
    static CHUNK_MAPS: RefCell<[Option<Chunk>; CHUNKS]> = const { RefCell::new([const { None }; CHUNKS]) };
}

/// The map an `IotlbIterator` of [`DeviceAddressSpace`] reads: lent by the thread's chunk
/// cache and given back on drop.
#[derive(Debug)]
pub struct ChunkGuard {
    chunk: Chunk,
    /// The cache slot to give the map back to; `None` for a one-off map.
    slot: Option<usize>,
}

impl Deref for ChunkGuard {
    type Target = Iotlb;
    fn deref(&self) -> &Iotlb {
        &self.chunk.tlb
    }
}

impl Drop for ChunkGuard {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            let key = self.chunk.key;
            let chunk = std::mem::replace(
                &mut self.chunk,
                Chunk {
                    key,
                    tlb: Iotlb::new(),
                },
            );
            // `try_with`: during thread teardown the cache may be gone; the map is dropped.
            let _ = CHUNK_MAPS.try_with(|maps| {
                if let Ok(mut maps) = maps.try_borrow_mut() {
                    maps[slot] = Some(chunk);
                }
            });
        }
    }
}

fn permissions(read: bool, write: bool) -> Permissions {
    match (read, write) {
        (true, true) => Permissions::ReadWrite,
        (true, false) => Permissions::Read,
        (false, true) => Permissions::Write,
        (false, false) => Permissions::No,
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

    fn translate_page(&self, iova: u64, access: AccessKind) -> Result<Translation, IommuError> {
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

    /// Translates `[start, end)` page by page through the unit and maps each page's part
    /// inside `[lo, hi)` into `tlb` with the rights the access was granted.
    fn fill(
        &self,
        tlb: &mut Iotlb,
        (start, end): (u64, u64),
        (lo, hi): (u64, u64),
        access: Permissions,
    ) -> Result<(), IommuError> {
        let mut at = start;
        while at < end {
            // A read-write access must be allowed both ways; the write walk also sets D.
            let writes = matches!(access, Permissions::Write | Permissions::ReadWrite);
            let t = if writes {
                self.translate_page(at, AccessKind::Write)?
            } else {
                self.translate_page(at, AccessKind::Read)?
            };
            let mut read = t.perms.read;
            if access == Permissions::ReadWrite && !read {
                self.translate_page(at, AccessKind::Read)?;
                read = true;
            }
            // Only what was asked for and granted: a page translated for a read is mapped
            // read-only, so a later write reaches the unit (and sets D).
            let perm = permissions(read, writes && t.perms.write);
            let page = t.iova_base(at);
            let from = page.max(lo);
            let to = page.saturating_add(t.page_size).min(hi);
            let output = t.output_base() + (from - page);
            tlb.set_mapping(
                GuestAddress(from),
                GuestAddress(output),
                (to - from) as usize,
                perm,
            )?;
            at = to;
        }
        Ok(())
    }
}

fn not_accessible(iova: GuestAddress, length: usize, fails: impl std::fmt::Debug) -> IommuError {
    IommuError::CannotResolve {
        iova_range: IovaRange { base: iova, length },
        reason: format!("not accessible: {fails:?}"),
    }
}

impl<M: GuestRam + Send + Sync> Iommu for DeviceAddressSpace<M> {
    type IotlbGuard<'a>
        = ChunkGuard
    where
        Self: 'a;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<ChunkGuard>, IommuError> {
        let end = iova
            .0
            .checked_add(length as u64)
            .ok_or_else(|| IommuError::CannotResolve {
                iova_range: IovaRange { base: iova, length },
                reason: "range wraps around".into(),
            })?;
        // Read before any page is translated (see the module doc).
        let epoch = self.unit.epoch.current();
        let chunk = iova.0 >> CHUNK_SHIFT;
        let key = ChunkKey {
            unit: self.unit.iotlb.id(),
            sid: self.sid,
            pasid: self.pasid,
            chunk,
            epoch,
        };
        if end.saturating_sub(1) >> CHUNK_SHIFT != chunk {
            // Across chunks: a map for this request only.
            let mut tlb = Iotlb::new();
            self.fill(&mut tlb, (iova.0, end), (iova.0, end), access)?;
            let guard = ChunkGuard {
                chunk: Chunk { key, tlb },
                slot: None,
            };
            return Iotlb::lookup(guard, iova, length, access)
                .map_err(|fails| not_accessible(iova, length, fails));
        }
        let slot = (chunk % CHUNKS as u64) as usize;
        let take = || {
            CHUNK_MAPS
                .with(|maps| maps.try_borrow_mut().ok().and_then(|mut m| m[slot].take()))
                .filter(|c| c.key == key)
        };
        if let Some(chunk) = take() {
            let guard = ChunkGuard {
                chunk,
                slot: Some(slot),
            };
            if let Ok(it) = Iotlb::lookup(guard, iova, length, access) {
                return Ok(it);
            }
            // Not all mapped with this access: the guard went back to the cache; fill below.
        }
        let mut chunk = take().unwrap_or(Chunk {
            key,
            tlb: Iotlb::new(),
        });
        let lo = chunk.key.chunk << CHUNK_SHIFT;
        let hi = lo.saturating_add(1 << CHUNK_SHIFT);
        self.fill(&mut chunk.tlb, (iova.0, end), (lo, hi), access)?;
        let guard = ChunkGuard {
            chunk,
            slot: Some(slot),
        };
        Iotlb::lookup(guard, iova, length, access)
            .map_err(|fails| not_accessible(iova, length, fails))
    }
}

impl<M: GuestRam + Send + Sync> VtdUnit<M> {
    /// The address space of requester `sid` as a `vm_memory::iommu::Iommu`.
    pub fn address_space(self: &Arc<Self>, sid: u16, pasid: Option<u32>) -> DeviceAddressSpace<M> {
        DeviceAddressSpace::new(Arc::clone(self), sid, pasid)
    }
}
