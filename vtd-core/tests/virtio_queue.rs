//! A virtio-queue device doing DMA through the unit: `IommuMemory` over a
//! `DeviceAddressSpace`, with the rings and buffers at IOVAs that the guest's page tables
//! scatter over non-contiguous, out-of-order guest pages. Checked for a scalable-mode
//! first-stage table and a legacy second-stage table.

use std::collections::HashMap;
use std::io::{Read, Write};

use virtio_queue::{Queue, QueueT};
use vm_memory::iommu::IommuMemory;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vtd_core::DeviceAddressSpace;
use vtd_regs::fault::FaultReason;
use vtd_regs::regs::{FRCD_HI_F, offset as reg};
use vtd_tables::GuestRam;
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_testkit::driver::*;

type DeviceMem = IommuMemory<GuestMemoryMmap<()>, DeviceAddressSpace<GuestMemoryMmap<()>>>;

const SID: u16 = 0x20; // 00:04.0
const DID: u16 = 7;
const QSIZE: u16 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// IOVAs chosen so that every structure straddles at least one page boundary.
const DESC_IOVA: u64 = 0x1_0000_0f80; // 256 bytes: two IOVA pages
const AVAIL_IOVA: u64 = 0x2_0000_0ff0; // 38 bytes: two IOVA pages
const USED_IOVA: u64 = 0x3_0000_0fc0; // 134 bytes: two IOVA pages
const OUT0_IOVA: u64 = 0x4_0000_0800; // 6000 bytes: three IOVA pages
const OUT0_LEN: usize = 6000;
const OUT1_IOVA: u64 = 0x5_0000_0ffc; // 9 bytes across a page boundary
const OUT1_LEN: usize = 9;
const IN_IOVA: u64 = 0x6_0000_0a00; // 5000 bytes: three IOVA pages
const IN_LEN: usize = 5000;
/// Never mapped.
const HOLE_IOVA: u64 = 0x7_0000_0000;

/// Guest pages the IOVA pages land on: scattered over 0x300_0000..0x3ff_f000, out of order.
const SCATTER: [u64; 16] = [
    0x3a5_6000, 0x312_3000, 0x3f0_1000, 0x300_9000, 0x3c7_e000, 0x355_5000, 0x3e2_2000, 0x301_0000,
    0x399_9000, 0x344_d000, 0x3b0_b000, 0x377_7000, 0x30f_f000, 0x3d1_3000, 0x366_6000, 0x321_c000,
];

/// The driver's side: the guest page table plus its own record of where each IOVA page went.
struct Driver {
    g: Guest,
    pages: HashMap<u64, u64>,
}

impl Driver {
    /// Builds the tables for `SID` (first stage in scalable mode, or legacy second stage),
    /// maps every structure page to the next scattered guest page, enables translation.
    fn new(scalable: bool) -> Self {
        let props = if scalable {
            "x-scalable-mode=on,x-flts=on"
        } else {
            ""
        };
        let mut g = Guest::new(props, 64);
        let mem = g.mem.clone();
        let mut ctx = ContextTablesBuilder::new(&mem, &mut g.frames, scalable).unwrap();
        let format = if scalable {
            PageTableFormat::FirstStage { levels: 4 }
        } else {
            PageTableFormat::SecondStage { levels: 4 }
        };
        let mut pt = PageTableBuilder::new(&mem, &mut g.frames, format).unwrap();
        let ranges = [
            (DESC_IOVA, 16 * QSIZE as usize),
            (AVAIL_IOVA, 6 + 2 * QSIZE as usize),
            (USED_IOVA, 6 + 8 * QSIZE as usize),
            (OUT0_IOVA, OUT0_LEN),
            (OUT1_IOVA, OUT1_LEN),
            (IN_IOVA, IN_LEN),
        ];
        let mut pages = HashMap::new();
        let mut next = SCATTER.iter();
        for (iova, len) in ranges {
            let mut page = iova & !0xfff;
            while page < iova + len as u64 {
                let gpa = *next.next().expect("enough scattered pages");
                // Fill the guest page with junk so stale bytes cannot pass a content check.
                GuestRam::write(&mem, gpa, &[0xa5; 4096]).unwrap();
                pt.map(&mut g.frames, page, gpa, PageSize::Size4K, true, true)
                    .unwrap();
                pages.insert(page, gpa);
                page += 4096;
            }
        }
        if scalable {
            let mut pasids = PasidTablesBuilder::new(&mem, &mut g.frames, 0).unwrap();
            pasids
                .set_entry(
                    &mut g.frames,
                    0,
                    PasidEntry::first_stage(pt.root(), false, DID, 2),
                )
                .unwrap();
            ctx.set_scalable_context(&mut g.frames, SID, pasids.context_entry())
                .unwrap();
        } else {
            ctx.set_legacy_context(&mut g.frames, SID, ContextEntry::new(pt.root(), 2, DID))
                .unwrap();
        }
        g.set_root(ctx.rtaddr());
        g.enable_translation();
        Self { g, pages }
    }

    /// The guest-physical address the driver placed `iova` at.
    fn gpa(&self, iova: u64) -> u64 {
        self.pages[&(iova & !0xfff)] | (iova & 0xfff)
    }

    /// CPU write by the driver: byte by byte through its own page list.
    fn write(&self, iova: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            GuestRam::write(&self.g.mem, self.gpa(iova + i as u64), &[*b]).unwrap();
        }
    }

    fn read(&self, iova: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| {
                let mut b = [0u8];
                GuestRam::read(&self.g.mem, self.gpa(iova + i), &mut b).unwrap();
                b[0]
            })
            .collect()
    }

    fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = Vec::with_capacity(16);
        d.extend_from_slice(&addr.to_le_bytes());
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        self.write(DESC_IOVA + 16 * index as u64, &d);
    }

    /// Publishes head `head` in avail slot `slot`, then the new avail index.
    fn make_available(&self, slot: u16, head: u16) {
        self.write(AVAIL_IOVA + 4 + 2 * slot as u64, &head.to_le_bytes());
        self.write(AVAIL_IOVA + 2, &(slot + 1).to_le_bytes());
    }

    fn device_memory(&self) -> DeviceMem {
        IommuMemory::new(
            self.g.mem.clone(),
            self.g.unit.address_space(SID, None),
            true,
            (),
        )
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(DESC_IOVA as u32), Some((DESC_IOVA >> 32) as u32));
        q.set_avail_ring_address(Some(AVAIL_IOVA as u32), Some((AVAIL_IOVA >> 32) as u32));
        q.set_used_ring_address(Some(USED_IOVA as u32), Some((USED_IOVA >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// FRCD0 (the only record of these configurations): (F, SID, FR, FI).
    fn fault_record(&self) -> (bool, u16, u8, u64) {
        let fro = (self.g.r64(reg::CAP) >> 24 & 0x3ff) * 16;
        let lo = self.g.r64(fro);
        let hi = self.g.r64(fro + 8);
        (
            hi & FRCD_HI_F != 0,
            hi as u16,
            (hi >> 32) as u8,
            lo & !0xfff,
        )
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn pop_read_write_and_complete(scalable: bool) {
    let d = Driver::new(scalable);
    // Every structure really is scattered: consecutive IOVA pages land on guest pages that are
    // neither adjacent nor ascending.
    for iova in [DESC_IOVA, AVAIL_IOVA, USED_IOVA, OUT0_IOVA, IN_IOVA] {
        let a = d.gpa(iova & !0xfff);
        let b = d.gpa((iova & !0xfff) + 4096);
        assert!(
            b != a + 4096,
            "{iova:#x}: pages {a:#x} {b:#x} are contiguous"
        );
    }
    let out0 = pattern(OUT0_LEN, 1);
    let out1 = pattern(OUT1_LEN, 77);
    d.write(OUT0_IOVA, &out0);
    d.write(OUT1_IOVA, &out1);
    d.write(USED_IOVA, &[0; 6 + 8 * QSIZE as usize]);
    d.write(AVAIL_IOVA, &[0; 6 + 2 * QSIZE as usize]);
    // A three-descriptor chain starting at index 5: out0 -> out1 -> in (device-writable).
    d.desc(5, OUT0_IOVA, OUT0_LEN as u32, F_NEXT, 11);
    d.desc(11, OUT1_IOVA, OUT1_LEN as u32, F_NEXT, 2);
    d.desc(2, IN_IOVA, IN_LEN as u32, F_WRITE, 0);
    d.make_available(0, 5);

    let mem = d.device_memory();
    let mut q = d.queue();
    assert!(q.is_valid(&mem), "rings reachable through the IOMMU");
    let chain = q.pop_descriptor_chain(&mem).expect("one chain available");
    assert_eq!(chain.head_index(), 5);
    let descs: Vec<_> = chain.clone().collect();
    assert_eq!(descs.len(), 3);
    assert_eq!(
        descs
            .iter()
            .map(|x| (x.addr().0, x.len(), x.is_write_only()))
            .collect::<Vec<_>>(),
        [
            (OUT0_IOVA, OUT0_LEN as u32, false),
            (OUT1_IOVA, OUT1_LEN as u32, false),
            (IN_IOVA, IN_LEN as u32, true)
        ]
    );

    // The device reads the driver-readable part through the chain.
    let mut reader = chain.clone().reader(&mem).unwrap();
    assert_eq!(reader.available_bytes(), OUT0_LEN + OUT1_LEN);
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert_eq!(got[..OUT0_LEN], out0[..], "first buffer");
    assert_eq!(got[OUT0_LEN..], out1[..], "second buffer");

    // ... and writes a reply that depends on what it read.
    let reply: Vec<u8> = (0..IN_LEN)
        .map(|i| got[i % got.len()] ^ 0x5a ^ (i as u8))
        .collect();
    let mut writer = chain.writer(&mem).unwrap();
    assert_eq!(writer.available_bytes(), IN_LEN);
    writer.write_all(&reply).unwrap();
    assert_eq!(writer.bytes_written(), IN_LEN);
    q.add_used(&mem, 5, IN_LEN as u32).unwrap();

    // The reply landed on the scattered guest pages the driver chose, nowhere else.
    assert_eq!(d.read(IN_IOVA, IN_LEN), reply);
    let first_in_page = d.gpa(IN_IOVA);
    let mut before = [0u8; 16];
    GuestRam::read(&d.g.mem, first_in_page - 16, &mut before).unwrap();
    assert_eq!(before, [0xa5; 16], "bytes before the buffer untouched");
    // Used ring: idx 1, element {id 5, len IN_LEN}, read back through guest physical pages.
    let used = d.read(USED_IOVA, 12);
    assert_eq!(u16::from_le_bytes([used[2], used[3]]), 1, "used idx");
    assert_eq!(
        u32::from_le_bytes(used[4..8].try_into().unwrap()),
        5,
        "used id"
    );
    assert_eq!(
        u32::from_le_bytes(used[8..12].try_into().unwrap()),
        IN_LEN as u32,
        "used len"
    );
    // The driver's buffers were not written by the device.
    assert_eq!(d.read(OUT0_IOVA, OUT0_LEN), out0);
    assert_eq!(d.read(OUT1_IOVA, OUT1_LEN), out1);
    assert!(!d.fault_record().0, "no fault for mapped DMA");

    if scalable {
        // First stage: written leaves are dirty, read-only-used leaves only accessed.
        let root = d.g.unit.read_pasid_entry(SID, 0).unwrap().fs_table();
        let pt = PageTableBuilder::at(&d.g.mem, root, PageTableFormat::FirstStage { levels: 4 });
        let leaf = |iova: u64| {
            let slot = pt.leaf_slot(iova, PageSize::Size4K).unwrap().unwrap();
            FirstStagePte::from_bits(d.g.mem.read_u64(slot).unwrap())
        };
        for page in [IN_IOVA, IN_IOVA + 4096, USED_IOVA] {
            assert!(leaf(page).dirty(), "{page:#x} dirty");
        }
        // Builder leaves start with A|D (Linux's way); a read keeps them as they are.
        assert!(leaf(OUT0_IOVA).accessed());
    }

    // A second chain whose only buffer is unmapped: the access fails and the unit records it.
    d.desc(3, HOLE_IOVA + 0x10, 64, 0, 0);
    d.make_available(1, 3);
    let chain = q.pop_descriptor_chain(&mem).expect("second chain");
    assert_eq!(chain.head_index(), 3);
    assert!(
        chain.reader(&mem).is_err(),
        "unmapped buffer must not be readable"
    );
    let (f, sid, fr, fi) = d.fault_record();
    assert!(f, "fault recorded");
    assert_eq!(sid, SID);
    assert_eq!(fi, HOLE_IOVA);
    let want = if scalable {
        FaultReason::FirstStageNotPresent
    } else {
        FaultReason::ReadNotPermitted
    };
    assert_eq!(fr, want.code(), "fault reason {fr:#x}");
    assert_eq!(d.g.r32(reg::FSTS) & 2, 2, "FSTS.PPF");
    // The same through a device-writable descriptor: a write access, also refused.
    let mut b = [0u8; 8];
    assert!(
        mem.read_slice(&mut b, GuestAddress(HOLE_IOVA + 0x2000))
            .is_err()
    );
    assert!(
        mem.write_slice(&b, GuestAddress(HOLE_IOVA + 0x3000))
            .is_err()
    );
}

#[test]
fn virtio_chain_through_first_stage_tables() {
    pop_read_write_and_complete(true);
}

#[test]
fn virtio_chain_through_legacy_second_stage_tables() {
    pop_read_write_and_complete(false);
}
