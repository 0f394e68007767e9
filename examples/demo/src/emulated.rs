//! Emulated virtio-blk-like devices: the device model runs on its own thread and does all its
//! DMA through `vm_memory::iommu::IommuMemory` over the unit's per-device address space, with
//! the virtio-queue crate walking the rings, exactly as a VMM's device model would.
//!
//! A request is the virtio-blk chain: a 16-byte header (type, reserved, sector), one data
//! buffer, one status byte. The "sector" carries the request's tag: a read (`IN`) makes the
//! device write the tag's pattern, a write (`OUT`) makes it read the buffer and compare it with
//! the pattern the guest wrote. A DMA the unit refuses ends the request with
//! `VIRTIO_BLK_S_IOERR`; the device tries each access once, so a deliberate fault is recorded
//! exactly once.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};

use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::bitmap::Bitmap;
use vm_memory::iommu::{Iommu, IommuMemory};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, Permissions};
use vtd_core::DeviceAddressSpace;
use vtd_tables::GuestRam;

use crate::dma::{CONTROL_IOVA, DeviceDma, HOLE_IOVA};
use crate::machine::{Ram, Unit, check_pattern, fill_pattern};
use crate::stats::Stats;

/// The device's view of memory: IOVAs through the unit.
type DeviceMem = IommuMemory<Ram, DeviceAddressSpace<Ram>>;

/// Queue size.
pub const QUEUE_SIZE: u16 = 16;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Salt of the patterns the guest writes (a device echoing its own pattern cannot pass).
pub const GUEST_SALT: u64 = 0x6775_6573_7421;
/// What the guest fills device-bound buffers with before the device writes them.
pub const POISON: u8 = 0xa5;

/// Control page layout (IOVA = `CONTROL_IOVA` + page * 4096).
const DESC_PAGE: u64 = 0;
const AVAIL_PAGE: u64 = 1;
const USED_PAGE: u64 = 2;
const HEADER_PAGE: u64 = 3;
/// Offset of the status byte in the header page.
const STATUS_OFFSET: u64 = 64;

/// What the vCPU tells a device thread.
#[derive(Debug, Clone, Copy)]
pub enum Kick {
    /// The queue notify register was written.
    Notify,
    /// The device is removed (or the machine stops).
    Stop,
}

/// The device model.
pub struct EmulatedDevice {
    index: u64,
    seed: u64,
    mem: DeviceMem,
    queue: Queue,
    stats: Arc<Stats>,
    buf: Vec<u8>,
    ram: Ram,
}

impl EmulatedDevice {
    /// Device `index` at requester `sid`, with the queue at the driver's control IOVAs.
    pub fn new(
        unit: &Arc<Unit>,
        ram: &Ram,
        sid: u16,
        index: u64,
        seed: u64,
        stats: Arc<Stats>,
    ) -> Self {
        // The IOVA-space dirty bitmap of `IommuMemory` is not used: the VMM tracks dirty guest
        // pages itself (see the migration stage).
        let iova_bitmap = AtomicBitmap::new(0, std::num::NonZeroUsize::MIN.saturating_add(4095));
        let mem = IommuMemory::new(
            ram.clone(),
            unit.address_space(sid, None),
            true,
            iova_bitmap,
        );
        let mut queue = Queue::new(QUEUE_SIZE).expect("a valid queue size");
        queue.set_size(QUEUE_SIZE);
        let at = |page: u64| CONTROL_IOVA + page * 4096;
        queue.set_desc_table_address(
            Some(at(DESC_PAGE) as u32),
            Some((at(DESC_PAGE) >> 32) as u32),
        );
        queue.set_avail_ring_address(
            Some(at(AVAIL_PAGE) as u32),
            Some((at(AVAIL_PAGE) >> 32) as u32),
        );
        queue.set_used_ring_address(
            Some(at(USED_PAGE) as u32),
            Some((at(USED_PAGE) >> 32) as u32),
        );
        queue.set_ready(true);
        Self {
            index,
            seed,
            mem,
            queue,
            stats,
            buf: Vec::new(),
            ram: ram.clone(),
        }
    }

    /// Continues a queue whose driver posted and the device completed `index` requests (the
    /// virtio queue state a migration carries: next available and next used index).
    pub fn resume_at(mut self, index: u16) -> Self {
        self.queue.set_next_avail(index);
        self.queue.set_next_used(index);
        self
    }

    /// Marks the guest pages behind `[iova, iova + len)` dirty in guest memory's bitmap.
    ///
    /// `IommuMemory` logs the writes it makes with the IOMMU on in its own IOVA-indexed bitmap
    /// instead of guest memory's (vm-memory iommu.rs replaces the slices' bitmap), so the
    /// device model, the VMM's code, marks the guest-physical pages itself: live migration's
    /// pre-copy rounds read guest memory's bitmap, and a page this device wrote must be sent
    /// again. The range was written a moment ago and is still mapped (the guest unmaps only
    /// after the completion), so the translation hits the unit's IOTLB.
    fn mark_written(&self, iova: u64, len: usize) {
        let Ok(ranges) = self
            .mem
            .iommu()
            .translate(GuestAddress(iova), len, Permissions::Write)
        else {
            return;
        };
        for r in ranges {
            if let Some((region, offset)) = self.ram.to_region_addr(r.base) {
                region.bitmap().mark_dirty(offset.0 as usize, r.length);
            }
        }
    }

    /// The device thread's loop: process the queue on each notify, then interrupt.
    pub fn run(mut self, kicks: Receiver<Kick>, irq: Sender<u64>) {
        while let Ok(Kick::Notify) = kicks.recv() {
            self.process();
            if irq.send(self.index).is_err() {
                break;
            }
        }
    }

    fn process(&mut self) {
        loop {
            let chain = match self.queue.pop_descriptor_chain(&self.mem) {
                Some(c) => c,
                None => return,
            };
            let head = chain.head_index();
            let mut descs = [None; 3];
            let mut count = 0;
            for d in chain {
                if count < 3 {
                    descs[count] = Some(d);
                }
                count += 1;
            }
            let [Some(hdr), Some(data), Some(status)] = descs else {
                self.stats.fail(format!(
                    "emulated device {}: chain of {count} descriptors",
                    self.index
                ));
                continue;
            };
            let mut header = [0u8; 16];
            let written = if self.mem.read_slice(&mut header, hdr.addr()).is_err() {
                self.stats.fail(format!(
                    "emulated device {}: header not readable",
                    self.index
                ));
                0
            } else {
                let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
                let tag = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
                let (st, moved) = self.transfer(kind, tag, data.addr(), data.len() as usize);
                if self.mem.write_slice(&[st], status.addr()).is_err() {
                    self.stats.fail(format!(
                        "emulated device {}: status not writable",
                        self.index
                    ));
                } else {
                    self.mark_written(status.addr().0, 1);
                }
                moved + 1
            };
            if let Err(e) = self.queue.add_used(&self.mem, head, written) {
                self.stats
                    .fail(format!("emulated device {}: used ring: {e}", self.index));
            } else {
                // add_used wrote the element and the index: both in the used ring's page.
                self.mark_written(CONTROL_IOVA + USED_PAGE * 4096, 4096);
            }
        }
    }

    /// Moves one data buffer; returns the virtio status and the bytes the device wrote.
    fn transfer(&mut self, kind: u32, tag: u64, addr: GuestAddress, len: usize) -> (u8, u32) {
        self.buf.resize(len, 0);
        match kind {
            VIRTIO_BLK_T_IN => {
                fill_pattern(&mut self.buf, self.seed, self.index, tag, 0);
                if self.mem.write_slice(&self.buf, addr).is_err() {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                self.mark_written(addr.0, len);
                self.stats.emulated.add(len as u64);
                (VIRTIO_BLK_S_OK, len as u32)
            }
            VIRTIO_BLK_T_OUT => {
                if self.mem.read_slice(&mut self.buf, addr).is_err() {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let bad = check_pattern(&self.buf, self.seed ^ GUEST_SALT, self.index, tag, 0);
                if !self.stats.check(bad.is_none(), || {
                    format!(
                        "emulated device {}: request {tag} read wrong data at offset {bad:?}",
                        self.index
                    )
                }) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                self.stats.emulated.add(len as u64);
                (VIRTIO_BLK_S_OK, 0)
            }
            _ => (VIRTIO_BLK_S_IOERR, 0),
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The device writes the buffer.
    Read,
    /// The device reads the buffer.
    Write,
    /// Deliberate fault: the data descriptor points at an IOVA never mapped (device read).
    BadIova,
    /// Deliberate fault: the device must write a buffer the guest mapped read-only.
    ReadOnly,
}

/// The driver's side of one emulated device.
#[derive(Debug)]
pub struct EmulatedDriver {
    /// Device index (pattern key).
    pub index: u64,
    /// Requester ID.
    pub sid: u16,
    /// DMA bookkeeping.
    pub dma: DeviceDma,
    avail_idx: u16,
    used_idx: u16,
}

impl EmulatedDriver {
    /// The driver for a device whose DMA state is `dma`; zeroes the rings.
    pub fn new(index: u64, sid: u16, dma: DeviceDma, mem: &Ram) -> Self {
        for page in [DESC_PAGE, AVAIL_PAGE, USED_PAGE, HEADER_PAGE] {
            // Control pages are inside guest RAM by construction of the layout.
            let _ = GuestRam::write(mem, dma.control_gpa(page), &[0u8; 4096]);
        }
        Self {
            index,
            sid,
            dma,
            avail_idx: 0,
            used_idx: 0,
        }
    }

    /// Writes one request into the queue (descriptors 0, 1, 2; the next avail slot).
    pub fn post(&mut self, mem: &Ram, request: Request, tag: u64, data: (u64, u64)) {
        let kind = match request {
            Request::Read | Request::ReadOnly => VIRTIO_BLK_T_IN,
            Request::Write | Request::BadIova => VIRTIO_BLK_T_OUT,
        };
        let device_writes = kind == VIRTIO_BLK_T_IN;
        let hdr_iova = CONTROL_IOVA + HEADER_PAGE * 4096;
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&tag.to_le_bytes());
        let hdr_gpa = self.dma.control_gpa(HEADER_PAGE);
        let desc_gpa = self.dma.control_gpa(DESC_PAGE);
        let avail_gpa = self.dma.control_gpa(AVAIL_PAGE);
        let descs: [(u64, u32, u16, u16); 3] = [
            (hdr_iova, 16, VIRTQ_DESC_F_NEXT, 1),
            (
                data.0,
                data.1 as u32,
                VIRTQ_DESC_F_NEXT | if device_writes { VIRTQ_DESC_F_WRITE } else { 0 },
                2,
            ),
            (hdr_iova + STATUS_OFFSET, 1, VIRTQ_DESC_F_WRITE, 0),
        ];
        let mut raw = [0u8; 48];
        for (i, (addr, len, flags, next)) in descs.into_iter().enumerate() {
            let d = &mut raw[i * 16..i * 16 + 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
        }
        // The layout keeps control pages inside RAM, so these writes cannot fail.
        let _ = GuestRam::write(mem, hdr_gpa, &header);
        let _ = GuestRam::write(mem, hdr_gpa + STATUS_OFFSET, &[0xff]);
        let _ = GuestRam::write(mem, desc_gpa, &raw);
        let slot = u64::from(self.avail_idx % QUEUE_SIZE);
        let _ = GuestRam::write(mem, avail_gpa + 4 + 2 * slot, &0u16.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = GuestRam::write(mem, avail_gpa + 2, &self.avail_idx.to_le_bytes());
    }

    /// After the interrupt: the used ring's new entry and the status byte. Returns the status
    /// or why the completion is wrong.
    pub fn complete(&mut self, mem: &Ram) -> Result<u8, String> {
        let used_gpa = self.dma.control_gpa(USED_PAGE);
        let mut used = [0u8; 4];
        mem.read_slice(&mut used, GuestAddress(used_gpa))
            .map_err(|e| format!("used ring: {e}"))?;
        let idx = u16::from_le_bytes([used[2], used[3]]);
        let want = self.used_idx.wrapping_add(1);
        if idx != want {
            return Err(format!("used idx {idx}, expected {want}"));
        }
        let slot = u64::from(self.used_idx % QUEUE_SIZE);
        let mut elem = [0u8; 8];
        mem.read_slice(&mut elem, GuestAddress(used_gpa + 4 + 8 * slot))
            .map_err(|e| format!("used element: {e}"))?;
        self.used_idx = want;
        let id = u32::from_le_bytes(elem[0..4].try_into().unwrap_or_default());
        if id != 0 {
            return Err(format!("used id {id}, expected head 0"));
        }
        let mut status = [0u8];
        mem.read_slice(
            &mut status,
            GuestAddress(self.dma.control_gpa(HEADER_PAGE) + STATUS_OFFSET),
        )
        .map_err(|e| format!("status: {e}"))?;
        Ok(status[0])
    }

    /// Requests posted (and, between rounds, completed): the queue's ring index.
    pub fn ring_index(&self) -> u16 {
        self.avail_idx
    }

    /// The data IOVA of a deliberate bad-IOVA request.
    pub fn hole(tag: u64) -> u64 {
        HOLE_IOVA + (tag & 0xff) * 4096 + 0x10
    }
}
