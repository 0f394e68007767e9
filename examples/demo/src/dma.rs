//! The guest's streaming-DMA bookkeeping for one device: where buffers live in guest RAM, which
//! IOVAs they get, and when an IOVA may be used again.
//!
//! This is what Linux's DMA API does for a driver (`dma_map_single`/`dma_unmap_single` over
//! drivers/iommu/dma-iommu.c): an IOVA per buffer, first-stage leaves for it, and on unmap
//! either an immediate invalidation (strict) or a parked IOVA that is reused only after the
//! flush queue's invalidation (lazy). Buffers of up to five 4 KiB pages are scattered over the
//! device's page pool in a seeded, non-contiguous order; larger ones sit in the device's 2 MiB
//! page and are mapped with one 2 MiB leaf. IOVA slots come from fixed windows with a guard
//! gap after each, so a device running past its buffer faults instead of touching a neighbour,
//! and the set of page-table frames a device ever needs is fixed (bounded memory in a soak).

use vm_memory::Bytes;
use vtd_tables::GuestRam;
use vtd_tables::builder::PageSize;
use vtd_testkit::driver::{FirstStageDomain, FlushQueue, Guest};

use crate::machine::{Ram, Rng, SMALL_POOL, check_pattern, fill_pattern};
use crate::stats::Stats;
use std::sync::atomic::Ordering;

/// IOVA of the device's permanently mapped control pages (rings, headers, command block).
pub const CONTROL_IOVA: u64 = 0x1000_0000;
/// Control pages at the start of the device's region.
pub const CONTROL_PAGES: u64 = 4;
/// Window of 4 KiB-page buffers.
const WIN_4K: u64 = 0x10_0000_0000;
/// One 4 KiB slot: up to five pages of buffer, then unmapped guard pages.
const SLOT_4K: u64 = 0x8000;
const SLOTS_4K: u32 = 64;
/// Window of 2 MiB-page buffers.
const WIN_2M: u64 = 0x20_0000_0000;
/// One 2 MiB slot: the page, then a 2 MiB guard.
const SLOT_2M: u64 = 4 << 20;
const SLOTS_2M: u32 = 4;
/// IOVAs that are never mapped (deliberate faults).
pub const HOLE_IOVA: u64 = 0x30_0000_0000;
/// Longest 4 KiB-page buffer (spans at most five pages).
pub const MAX_SMALL_LEN: u64 = 16 << 10;
/// Longest buffer in the 2 MiB page.
pub const MAX_HUGE_LEN: u64 = 64 << 10;
/// Ranges parked before the lazy flush queue is flushed.
const FLUSH_QUEUE: usize = 8;

/// A mapped buffer.
#[derive(Debug, Clone)]
pub struct Buffer {
    /// IOVA of the first byte.
    pub iova: u64,
    /// Length in bytes.
    pub len: u64,
    /// Guest-physical pages backing the mapping, in IOVA order (one 2 MiB page or 4 KiB
    /// pages).
    pub pages: Vec<u64>,
    /// Leaf size.
    pub size: PageSize,
    /// Start of the mapped range (page-aligned).
    pub map_iova: u64,
    /// Length of the mapped range.
    pub map_len: u64,
}

impl Buffer {
    /// Guest-physical address of byte `offset` of the buffer, and how many bytes follow it on
    /// the same page.
    fn gpa(&self, offset: u64) -> (u64, u64) {
        let at = self.iova - self.map_iova + offset;
        let page = self.size.bytes();
        let gpa = self.pages[(at / page) as usize] + at % page;
        (gpa, page - at % page)
    }

    /// Visits the buffer page-chunk by page-chunk: (offset in buffer, GPA, length).
    fn chunks(&self, mut f: impl FnMut(u64, u64, u64) -> bool) -> bool {
        let mut off = 0;
        while off < self.len {
            let (gpa, room) = self.gpa(off);
            let n = room.min(self.len - off);
            if !f(off, gpa, n) {
                return false;
            }
            off += n;
        }
        true
    }
}

/// One device's DMA state on the guest side.
#[derive(Debug)]
pub struct DeviceDma {
    /// The device's first-stage domain.
    pub domain: FirstStageDomain,
    /// The device's guest-physical region.
    pub region: u64,
    free_4k: Vec<u32>,
    free_2m: Vec<u32>,
    queue: FlushQueue,
    scratch: Vec<u8>,
}

impl DeviceDma {
    /// State for a device whose domain and region are given; maps its control pages
    /// read-write at [`CONTROL_IOVA`] (Linux's coherent allocations stay mapped).
    pub fn new(
        guest: &mut Guest<Ram>,
        domain: FirstStageDomain,
        region: u64,
        stats: &Stats,
    ) -> Result<Self, String> {
        let mut dma = Self {
            domain,
            region,
            free_4k: (0..SLOTS_4K).rev().collect(),
            free_2m: (0..SLOTS_2M).rev().collect(),
            queue: FlushQueue::new(FLUSH_QUEUE),
            scratch: Vec::with_capacity(MAX_HUGE_LEN as usize),
        };
        dma.map_control(guest, stats)?;
        Ok(dma)
    }

    /// Maps the control pages (again, after a replug).
    pub fn map_control(&mut self, guest: &mut Guest<Ram>, stats: &Stats) -> Result<(), String> {
        for p in 0..CONTROL_PAGES {
            guest
                .fs_map(
                    &self.domain,
                    CONTROL_IOVA + p * 4096,
                    self.region + p * 4096,
                    PageSize::Size4K,
                    true,
                )
                .map_err(|e| format!("mapping control page {p}: {e}"))?;
            stats.maps_4k.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Unmaps the control pages strictly (before an unplug).
    pub fn unmap_control(&mut self, guest: &mut Guest<Ram>) -> Result<(), String> {
        guest
            .fs_unmap_strict(
                &self.domain,
                CONTROL_IOVA,
                CONTROL_PAGES * 4096,
                PageSize::Size4K,
            )
            .map_err(|e| format!("unmapping control pages: {e}"))
    }

    /// Guest-physical address of control page `page`.
    pub fn control_gpa(&self, page: u64) -> u64 {
        self.region + page * 4096
    }

    /// Maps a buffer of `len` bytes: 4 KiB pages scattered over the pool, or (`huge`) in the
    /// 2 MiB page with one 2 MiB leaf. `device_writes`: the device may write it (DMA from the
    /// device); otherwise it is mapped read-only, as Linux maps DMA_TO_DEVICE buffers.
    pub fn map(
        &mut self,
        guest: &mut Guest<Ram>,
        rng: &mut Rng,
        len: u64,
        huge: bool,
        device_writes: bool,
        stats: &Stats,
    ) -> Result<Buffer, String> {
        let buf = if huge {
            let len = len.clamp(1, MAX_HUGE_LEN);
            let slot = self.slot(guest, true)?;
            let map_iova = WIN_2M + u64::from(slot) * SLOT_2M;
            let offset = rng.below((2 << 20) - len);
            guest
                .fs_map(
                    &self.domain,
                    map_iova,
                    self.region + SMALL_POOL,
                    PageSize::Size2M,
                    device_writes,
                )
                .map_err(|e| format!("2 MiB map at {map_iova:#x}: {e}"))?;
            stats.maps_2m.fetch_add(1, Ordering::Relaxed);
            Buffer {
                iova: map_iova + offset,
                len,
                pages: vec![self.region + SMALL_POOL],
                size: PageSize::Size2M,
                map_iova,
                map_len: 2 << 20,
            }
        } else {
            let len = len.clamp(1, MAX_SMALL_LEN);
            let slot = self.slot(guest, false)?;
            let map_iova = WIN_4K + u64::from(slot) * SLOT_4K;
            let offset = rng.below(4096);
            let npages = (offset + len).div_ceil(4096);
            // Scatter: a random start and an odd stride over the pool's pages, so consecutive
            // IOVA pages land on guest pages that are neither adjacent nor in order.
            let pool = SMALL_POOL / 4096 - CONTROL_PAGES;
            let start = rng.below(pool);
            let mut stride = 2 * rng.below(pool / 2 - 2) + 3;
            // The pool has 508 = 4 * 127 pages: an odd stride that is not a multiple of 127
            // is coprime with it, so the five pages are distinct.
            if stride % 127 == 0 {
                stride += 2;
            }
            let mut pages = Vec::with_capacity(npages as usize);
            for i in 0..npages {
                let idx = CONTROL_PAGES + (start + i * stride) % pool;
                let gpa = self.region + idx * 4096;
                guest
                    .fs_map(
                        &self.domain,
                        map_iova + i * 4096,
                        gpa,
                        PageSize::Size4K,
                        device_writes,
                    )
                    .map_err(|e| format!("4 KiB map at {:#x}: {e}", map_iova + i * 4096))?;
                stats.maps_4k.fetch_add(1, Ordering::Relaxed);
                pages.push(gpa);
            }
            Buffer {
                iova: map_iova + offset,
                len,
                pages,
                size: PageSize::Size4K,
                map_iova,
                map_len: npages * 4096,
            }
        };
        Ok(buf)
    }

    /// A buffer of `len` bytes (at most [`MAX_SMALL_LEN`]) whose IOVA slot and guest pages
    /// are chosen as [`DeviceDma::map`] chooses them, but not mapped: the guest maps each page
    /// when the device asks for it with a page request ([`DeviceDma::map_page`]), as a guest
    /// that shares its address space with a PRI device (SVA) populates it on demand.
    pub fn reserve(
        &mut self,
        guest: &mut Guest<Ram>,
        rng: &mut Rng,
        len: u64,
    ) -> Result<Buffer, String> {
        let len = len.clamp(1, MAX_SMALL_LEN);
        let slot = self.slot(guest, false)?;
        let map_iova = WIN_4K + u64::from(slot) * SLOT_4K;
        let offset = rng.below(4096);
        let npages = (offset + len).div_ceil(4096);
        let pool = SMALL_POOL / 4096 - CONTROL_PAGES;
        let start = rng.below(pool);
        let pages = (0..npages)
            .map(|i| self.region + (CONTROL_PAGES + (start + 7 * i) % pool) * 4096)
            .collect();
        Ok(Buffer {
            iova: map_iova + offset,
            len,
            pages,
            size: PageSize::Size4K,
            map_iova,
            map_len: npages * 4096,
        })
    }

    /// Maps page `iova` (4 KiB aligned, inside the reserved buffer `buf`) to its guest page.
    /// The entry goes from not present to present, so without caching mode no invalidation
    /// is needed (VT-d spec 6.1: not-present entries are cached only when CAP.CM is set;
    /// `Guest::fs_map` flushes the range when it is, as Linux's `iommu_flush_iotlb_psi` path).
    pub fn map_page(
        &mut self,
        guest: &mut Guest<Ram>,
        buf: &Buffer,
        iova: u64,
        writable: bool,
        stats: &Stats,
    ) -> Result<(), String> {
        let index = iova
            .checked_sub(buf.map_iova)
            .filter(|&off| off < buf.map_len && off % 4096 == 0)
            .ok_or_else(|| format!("page {iova:#x} is not in the buffer at {:#x}", buf.map_iova))?
            / 4096;
        guest
            .fs_map(
                &self.domain,
                iova,
                buf.pages[index as usize],
                PageSize::Size4K,
                writable,
            )
            .map_err(|e| format!("4 KiB map at {iova:#x}: {e}"))?;
        stats.maps_4k.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A free IOVA slot; when none is left, the lazy queue is flushed first (as the IOVA
    /// allocator does when it runs dry).
    fn slot(&mut self, guest: &mut Guest<Ram>, huge: bool) -> Result<u32, String> {
        let free = |s: &mut Self| {
            if huge {
                s.free_2m.pop()
            } else {
                s.free_4k.pop()
            }
        };
        if let Some(slot) = free(self) {
            return Ok(slot);
        }
        self.flush(guest);
        free(self).ok_or_else(|| "no free IOVA slot after a flush".to_owned())
    }

    /// Unmaps a buffer, strictly or lazily.
    pub fn unmap(
        &mut self,
        guest: &mut Guest<Ram>,
        buf: &Buffer,
        lazy: bool,
        stats: &Stats,
    ) -> Result<(), String> {
        if lazy {
            let freed = guest
                .fs_unmap_lazy(
                    &self.domain,
                    &mut self.queue,
                    buf.map_iova,
                    buf.map_len,
                    buf.size,
                )
                .map_err(|e| format!("lazy unmap at {:#x}: {e}", buf.map_iova))?;
            stats.lazy_unmaps.fetch_add(1, Ordering::Relaxed);
            self.release(&freed);
        } else {
            guest
                .fs_unmap_strict(&self.domain, buf.map_iova, buf.map_len, buf.size)
                .map_err(|e| format!("strict unmap at {:#x}: {e}", buf.map_iova))?;
            stats.strict_unmaps.fetch_add(1, Ordering::Relaxed);
            self.release(&[(buf.map_iova, buf.map_len)]);
        }
        Ok(())
    }

    /// Flushes the lazy queue; its IOVAs become free.
    pub fn flush(&mut self, guest: &mut Guest<Ram>) {
        let freed = guest.flush_queue(&self.domain, &mut self.queue);
        self.release(&freed);
    }

    fn release(&mut self, ranges: &[(u64, u64)]) {
        for &(iova, _) in ranges {
            if iova >= WIN_2M {
                self.free_2m.push(((iova - WIN_2M) / SLOT_2M) as u32);
            } else {
                self.free_4k.push(((iova - WIN_4K) / SLOT_4K) as u32);
            }
        }
    }

    /// The guest writes the pattern of (`seed`, `device`, `tag`) into the buffer through guest
    /// physical memory.
    pub fn write_pattern(&mut self, mem: &Ram, buf: &Buffer, seed: u64, device: u64, tag: u64) {
        let scratch = &mut self.scratch;
        buf.chunks(|off, gpa, n| {
            scratch.resize(n as usize, 0);
            fill_pattern(scratch, seed, device, tag, off);
            GuestRam::write(mem, gpa, scratch).is_ok()
        });
    }

    /// The guest fills the buffer with `byte` (so stale contents cannot pass a check).
    pub fn fill(&mut self, mem: &Ram, buf: &Buffer, byte: u8) {
        let scratch = &mut self.scratch;
        buf.chunks(|_, gpa, n| {
            scratch.clear();
            scratch.resize(n as usize, byte);
            GuestRam::write(mem, gpa, scratch).is_ok()
        });
    }

    /// Reads the buffer back through guest physical memory and returns the first offset that
    /// does not hold the pattern, if any.
    pub fn check_pattern(
        &mut self,
        mem: &Ram,
        buf: &Buffer,
        seed: u64,
        device: u64,
        tag: u64,
    ) -> Option<u64> {
        let scratch = &mut self.scratch;
        let mut bad = None;
        buf.chunks(|off, gpa, n| {
            scratch.resize(n as usize, 0);
            if mem
                .read_slice(scratch, vm_memory::GuestAddress(gpa))
                .is_err()
            {
                bad = Some(off);
                return false;
            }
            if let Some(i) = check_pattern(scratch, seed, device, tag, off) {
                bad = Some(off + i as u64);
                return false;
            }
            true
        });
        bad
    }

    /// Whether every byte of the buffer still holds `byte`.
    pub fn check_fill(&mut self, mem: &Ram, buf: &Buffer, byte: u8) -> bool {
        let scratch = &mut self.scratch;
        buf.chunks(|_, gpa, n| {
            scratch.resize(n as usize, 0);
            mem.read_slice(scratch, vm_memory::GuestAddress(gpa))
                .is_ok()
                && scratch.iter().all(|&b| b == byte)
        })
    }
}
