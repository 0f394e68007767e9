//! Live migration of emulated devices: every byte the unit writes (wait status, A/D bits in
//! the guest's tables) and every byte an emulated device writes after translating through the
//! unit goes through vm-memory's guest memory, so a VMM whose guest memory is
//! `GuestMemoryMmap<AtomicBitmap>` finds every changed page in its dirty bitmap. Shown by a
//! pre-copy migration: a full copy, then rounds of copying the pages the bitmap reports while
//! a device keeps writing, then the final round with the unit's snapshot: the target's memory
//! equals the source's byte for byte and the device continues on the target.
//!
//! Devices built on vm-memory's `IommuMemory` are the exception: with the IOMMU on it logs
//! their writes in its own IOVA-indexed bitmap instead (vm-memory iommu.rs, "two bitmap
//! levels"), which the last test pins down.

use std::num::NonZeroUsize;
use std::sync::Arc;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::iommu::IommuMemory;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vtd_core::{AccessKind, DmaRequest, RecordingSink, VtdUnit};
use vtd_migrate::{GuestMemoryDirtyLog, PreCopy};
use vtd_regs::VtdConfig;
use vtd_regs::inv::{DescWidth, InvDesc, IotlbGranularity, IotlbInv, StatusWrite, WaitInv};
use vtd_regs::regs::{Gcmd, Iqa, offset as reg};
use vtd_tables::GuestRam;
use vtd_tables::builder::{
    ContextTablesBuilder, FrameAllocator, PageSize, PageTableBuilder, PageTableFormat,
    PasidTablesBuilder,
};
use vtd_tables::entries::PasidEntry;

type Mem = GuestMemoryMmap<AtomicBitmap>;
type Unit = VtdUnit<Mem>;

const RAM: u64 = 32 << 20;
const PAGE: u64 = 4096;
const SID: u16 = 0x08;
const IOVA: u64 = 0x4000_0000;
/// Pages the device's IOVAs map (to GPAs 8 MiB + 4 KiB * page).
const DMA_PAGES: u64 = 64;
const DMA_BASE: u64 = 8 << 20;

fn memory() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
}

/// Pages dirty since the last call, and clears them (a pre-copy round's
/// `KVM_GET_DIRTY_LOG` + clear, for the VMM's own writers).
fn collect_dirty(mem: &Mem) -> Vec<u64> {
    let mut pages = Vec::new();
    for region in mem.iter() {
        let start = region.start_addr().0;
        let mapping = region.get_mmap();
        let bitmap = mapping.bitmap();
        for (word_index, word) in bitmap.get_and_reset().into_iter().enumerate() {
            for bit in 0..64 {
                if word & (1 << bit) != 0 {
                    pages.push(start + (word_index as u64 * 64 + bit) * PAGE);
                }
            }
        }
    }
    pages
}

fn copy_pages(from: &Mem, to: &Mem, pages: &[u64]) {
    let mut buf = [0u8; PAGE as usize];
    for &gpa in pages {
        from.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
        to.write_slice(&buf, GuestAddress(gpa)).unwrap();
    }
}

fn differing_page(a: &Mem, b: &Mem) -> Option<u64> {
    let (mut x, mut y) = ([0u8; PAGE as usize], [0u8; PAGE as usize]);
    (0..RAM / PAGE).map(|p| p * PAGE).find(|&gpa| {
        a.read_slice(&mut x, GuestAddress(gpa)).unwrap();
        b.read_slice(&mut y, GuestAddress(gpa)).unwrap();
        x != y
    })
}

/// A scalable unit with first-stage tables for `SID` whose leaves have A and D clear (the
/// walk sets them), queued invalidation on; returns the unit, the queue's base and status
/// addresses, and the first-stage table's root.
fn setup(mem: &Mem) -> (Arc<Unit>, u64, u64, u64) {
    let cfg = VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap();
    let unit =
        Arc::new(VtdUnit::new(cfg, mem.clone(), Arc::new(RecordingSink::default())).unwrap());
    let mut frames = FrameAllocator::new(16 << 20, 32 << 20);
    let mut ctx = ContextTablesBuilder::new(mem, &mut frames, true).unwrap();
    let mut pasids = PasidTablesBuilder::new(mem, &mut frames, 0).unwrap();
    let mut fs =
        PageTableBuilder::new(mem, &mut frames, PageTableFormat::FirstStage { levels: 4 }).unwrap();
    for p in 0..DMA_PAGES {
        // P, R/W, U/S; A (bit 5) and D (bit 6) clear (spec 9.9).
        let leaf = (DMA_BASE + p * PAGE) | 0b111;
        fs.set_leaf(&mut frames, IOVA + p * PAGE, PageSize::Size4K, leaf)
            .unwrap();
    }
    pasids
        .set_entry(
            &mut frames,
            0,
            PasidEntry::first_stage(fs.root(), false, 1, 2),
        )
        .unwrap();
    ctx.set_scalable_context(&mut frames, SID, pasids.context_entry())
        .unwrap();
    let queue = frames.alloc(mem, 1).unwrap();
    let status = frames.alloc(mem, 1).unwrap();
    unit.write(reg::RTADDR, 8, ctx.rtaddr());
    unit.write(reg::GCMD, 4, Gcmd::new().with_srtp(true).into_bits() as u64);
    let iqa = Iqa::new().with_dw(true).with_iqa(queue >> 12);
    unit.write(reg::IQA, 8, iqa.into_bits());
    let on = Gcmd::new().with_te(true).with_qie(true);
    unit.write(reg::GCMD, 4, on.into_bits() as u64);
    (unit, queue, status, fs.root())
}

/// The guest flushes the IOTLB and waits with a status write of `seq`: the unit writes the
/// status through guest memory.
fn flush_and_wait(unit: &Unit, mem: &Mem, queue: u64, status: u64, seq: u32) {
    let head = unit.read(reg::IQT, 8) >> 5;
    let descs = [
        InvDesc::Iotlb(IotlbInv {
            granularity: IotlbGranularity::Global,
            drain_read: false,
            drain_write: false,
            ignored: Default::default(),
        }),
        InvDesc::Wait(WaitInv {
            status_write: Some(StatusWrite {
                addr: status,
                data: seq,
            }),
            interrupt: false,
            fence: true,
            page_drain: false,
            ignored: Default::default(),
        }),
    ];
    let mut tail = head;
    for d in &descs {
        let raw = d.encode(DescWidth::Bits256).unwrap();
        mem.write_words(queue + tail * 32, &raw.0).unwrap();
        tail = (tail + 1) % 128;
    }
    unit.write(reg::IQT, 8, tail << 5);
    assert_eq!(mem.read_u64(status).unwrap() as u32, seq);
}

/// A device DMA write as VMMs do it (cloud-hypervisor's `AccessPlatform`): translate the IOVA
/// through the unit, write the guest-physical address through guest memory.
fn dma_write(unit: &Unit, iova: u64, data: &[u8]) {
    let t = unit
        .translate(&DmaRequest::new(SID, iova, AccessKind::Write))
        .expect("mapped IOVA");
    assert!(iova % PAGE + data.len() as u64 <= PAGE);
    unit.memory()
        .write_slice(data, GuestAddress(t.output))
        .unwrap();
}

/// The device writes `round`-dependent data to some of its pages.
fn device_writes(unit: &Unit, round: u64) {
    for k in 0..8u64 {
        let page = (round * 7 + k * 5) % DMA_PAGES;
        let data = [(round as u8).wrapping_mul(31) ^ k as u8; 100];
        dma_write(unit, IOVA + page * PAGE + k * 16, &data);
    }
}

#[test]
fn the_unit_and_emulated_devices_leave_no_dirty_page_behind() {
    let source = memory();
    let (unit, queue, status, _) = setup(&source);

    // Round 0: tracking starts, then the whole of memory is copied.
    let target = memory();
    let mut precopy =
        PreCopy::start(vec![Box::new(GuestMemoryDirtyLog::new(source.clone()))]).unwrap();
    copy_pages(
        &source,
        &target,
        &(0..RAM / PAGE).map(|p| p * PAGE).collect::<Vec<_>>(),
    );

    for round in 1..=5u64 {
        device_writes(&unit, round);
        flush_and_wait(&unit, &source, queue, status, round as u32);
        // Translations that only read still set A bits in the tables.
        let _ = unit.translate(&DmaRequest::new(
            SID,
            IOVA + (round + 40) * PAGE,
            AccessKind::Read,
        ));
        let dirty = precopy.round().unwrap();
        assert!(dirty.contains(&status), "round {round}: the status write");
        copy_pages(&source, &target, &dirty.into_iter().collect::<Vec<_>>());
    }
    // Final round: the VMM pauses the guest and devices, copies what is left, saves the unit.
    device_writes(&unit, 6);
    flush_and_wait(&unit, &source, queue, status, 6);
    let last = precopy.finish(&unit, vtd_migrate::save).unwrap();
    copy_pages(
        &source,
        &target,
        &last.pages.into_iter().collect::<Vec<_>>(),
    );
    assert_eq!(
        differing_page(&source, &target),
        None,
        "a changed page was not dirty"
    );

    // The target resumes: the device keeps writing there, through the restored unit.
    let restored = Arc::new(
        VtdUnit::new(
            unit.config().clone(),
            target.clone(),
            Arc::new(RecordingSink::default()),
        )
        .unwrap(),
    );
    vtd_migrate::restore(&restored, &last.snapshot).unwrap();
    device_writes(&restored, 7);
    device_writes(&unit, 7);
    flush_and_wait(&restored, &target, queue, status, 7);
    flush_and_wait(&unit, &source, queue, status, 7);
    assert_eq!(
        differing_page(&source, &target),
        None,
        "both continue identically"
    );
    assert_eq!(restored.stats().dma_faults, 0);
}

#[test]
fn each_kind_of_write_by_the_unit_marks_its_page() {
    let mem = memory();
    let (unit, queue, status, fs_root) = setup(&mem);
    // The page holding the first-stage leaf entries: where the walk sets A/D.
    let leaf = PageTableBuilder::at(&mem, fs_root, PageTableFormat::FirstStage { levels: 4 })
        .leaf_slot(IOVA + 3 * PAGE, PageSize::Size4K)
        .unwrap()
        .unwrap();
    let entry = mem.read_u64(leaf).unwrap();
    assert_eq!(entry & 0x60, 0, "A/D clear before the walk");
    let leaf = leaf & !(PAGE - 1);
    // Warm the upper levels' A bits, then start clean.
    unit.translate(&DmaRequest::new(SID, IOVA, AccessKind::Read))
        .unwrap();
    collect_dirty(&mem);
    // A/D set by a write translation (compare-exchange on the entry).
    unit.translate(&DmaRequest::new(SID, IOVA + 3 * PAGE, AccessKind::Write))
        .unwrap();
    assert_eq!(collect_dirty(&mem), [leaf], "A/D update");
    assert_eq!(
        mem.read_u64(leaf + ((IOVA >> 12) + 3) % 512 * 8).unwrap() & 0x60,
        0x60,
        "A and D set by the walk"
    );
    // A wait descriptor's status write.
    let written = {
        flush_and_wait(&unit, &mem, queue, status, 9);
        collect_dirty(&mem)
    };
    assert!(written.contains(&status), "status write: {written:x?}");
    // A device write translated through the unit.
    dma_write(&unit, IOVA + 5 * PAGE + 8, &[1, 2, 3]);
    assert_eq!(
        collect_dirty(&mem),
        [DMA_BASE + 5 * PAGE, leaf],
        "DMA write (and its leaf's A/D)"
    );
}

#[test]
fn iommu_memory_logs_device_writes_by_iova_not_in_guest_memory() {
    let mem = memory();
    let (unit, _, _, _) = setup(&mem);
    // Warm the walk so its A/D updates are not part of what is measured.
    dma_write(&unit, IOVA + 5 * PAGE, &[0]);
    collect_dirty(&mem);
    let iova_log = AtomicBitmap::new(
        (IOVA + DMA_PAGES * PAGE) as usize,
        NonZeroUsize::new(PAGE as usize).unwrap(),
    );
    let dev = IommuMemory::new(mem.clone(), unit.address_space(SID, None), true, iova_log);
    dev.write_slice(&[1, 2, 3], GuestAddress(IOVA + 5 * PAGE + 8))
        .unwrap();
    let mut check = [0u8; 3];
    mem.read_slice(&mut check, GuestAddress(DMA_BASE + 5 * PAGE + 8))
        .unwrap();
    assert_eq!(check, [1, 2, 3], "the write reached guest memory");
    assert!(
        dev.bitmap().is_addr_set((IOVA + 5 * PAGE) as usize),
        "logged by IOVA"
    );
    // Not in the guest-physical bitmap: a VMM migrating devices built on IommuMemory must
    // read each device's IOVA log and map it to guest-physical pages itself.
    assert_eq!(collect_dirty(&mem), Vec::<u64>::new());
}
