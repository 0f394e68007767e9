//! A guest driving a unit into varied states, and the checks that two units are the same to
//! a guest: every register, translations, interrupt remapping, memory.
#![allow(dead_code)]

use std::sync::Arc;

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vtd_core::{AccessKind, DmaRequest, MsiSource, PageRequest, RecordingSink, VtdUnit};
use vtd_regs::VtdConfig;
use vtd_regs::inv::{InvDesc, IotlbGranularity, WaitInv};
use vtd_regs::irte::{Irte, SourceValidation};
use vtd_regs::prq::{PageRequestDescriptor, ResponseCode};
use vtd_regs::regs::{EventControl, offset as reg};
use vtd_tables::GuestRam;
use vtd_tables::builder::{
    ContextTablesBuilder, PageSize, PageTableBuilder, PageTableFormat, PasidTablesBuilder,
};
use vtd_tables::entries::{ContextEntry, PasidEntry};
use vtd_testkit::driver::{Guest, Mem, Unit, iotlb};

/// Guest RAM of every scenario.
pub const RAM_MB: u64 = 32;
/// Mapped IOVA pages are 0..MAPPED; pages MAPPED..PAGES fault.
pub const MAPPED: u64 = 4;
pub const PAGES: u64 = 8;
pub const IR_ENTRIES: u64 = 8;

pub fn iova(page: u64) -> u64 {
    0x4000_0000 + page * 4096
}

/// What a device is: requester ID and the PASID its requests carry.
pub type Device = (u16, Option<u32>);

/// One guest action.
#[derive(Clone, Debug)]
pub enum Op {
    /// A device DMA (mapped pages translate and set A/D; others fault).
    Dma { dev: usize, page: u64, write: bool },
    /// Software clears fault record `index` (writes F).
    ClearFault { index: u64 },
    /// Software writes FSTS (RW1C bits).
    WriteFsts { bits: u32 },
    /// FECTL.IM.
    MaskFaultEvent(bool),
    /// IECTL.IM.
    MaskCompletionEvent(bool),
    /// A global IOTLB flush and a wait with IF (ICS.IWC, completion event).
    FlushWithInterrupt,
    /// A malformed descriptor then a valid one: the queue stops at the first (mid-queue).
    BadDescriptor,
    /// Clears ICS.IWC.
    ClearIcs,
    /// An MSI through interrupt remapping.
    Msi { sid: u16, index: u16 },
    /// IRE on/off.
    InterruptRemapping(bool),
    /// RTADDR rewritten without SRTP (latched root differs from the register).
    RewriteRtaddr,
    /// A device's page request (units with page requests; ignored elsewhere).
    PageRequest { dev: usize, prg: u16, last: bool },
    /// The guest answers the oldest outstanding page group.
    RespondOldest,
    /// The guest reads the page request queue (PQH to PQT, clears PPR).
    ReadPageRequests,
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 0..PAGES, any::<bool>())
            .prop_map(|(dev, page, write)| Op::Dma { dev, page, write }),
        2 => (0..8u64).prop_map(|index| Op::ClearFault { index }),
        1 => prop_oneof![Just(0x01u32), Just(0x10), Just(0x71), Just(0)]
            .prop_map(|bits| Op::WriteFsts { bits }),
        1 => any::<bool>().prop_map(Op::MaskFaultEvent),
        1 => any::<bool>().prop_map(Op::MaskCompletionEvent),
        1 => Just(Op::FlushWithInterrupt),
        1 => Just(Op::BadDescriptor),
        1 => Just(Op::ClearIcs),
        2 => (prop_oneof![Just(0x08u16), Just(0x10), Just(0x77)], 0..(IR_ENTRIES as u16 + 2))
            .prop_map(|(sid, index)| Op::Msi { sid, index }),
        1 => any::<bool>().prop_map(Op::InterruptRemapping),
        1 => Just(Op::RewriteRtaddr),
        3 => (0..4usize, 0..6u16, any::<bool>())
            .prop_map(|(dev, prg, last)| Op::PageRequest { dev, prg, last }),
        1 => Just(Op::RespondOldest),
        1 => Just(Op::ReadPageRequests),
    ]
}

/// A guest with tables for four devices (legacy: four requesters; scalable: one requester
/// with RID_PASID and PASIDs 1 and 5, and another with RID_PASID), interrupt remapping set
/// up, the queue enabled.
pub struct Scenario {
    pub g: Guest,
    pub devices: Vec<Device>,
    pub ir_table: u64,
    pub page_requests: bool,
    /// The passthrough device's PASIDs with tables (`None`: requests without PASID), if the
    /// scenario has one at [`PASSTHROUGH_SID`].
    pub passthrough: Vec<Option<u32>>,
}

/// Requester ID of the scenario's passthrough device (01:00.0).
pub const PASSTHROUGH_SID: u16 = 0x100;
/// PASIDs the passthrough device's tables define besides requests without PASID.
pub const PASSTHROUGH_PASIDS: [u32; 2] = [1, 7];

/// Where the passthrough device's IOVA pages map: its own frames per PASID.
pub fn passthrough_gpa(pasid: Option<u32>, page: u64) -> u64 {
    0xa0_0000 + (pasid.unwrap_or(0) as u64 * 16 + page) * 4096
}

pub fn config(scalable: bool) -> VtdConfig {
    let props = if scalable {
        "x-scalable-mode=on,x-flts=on,intremap=on,eim=off"
    } else {
        "intremap=on,eim=off"
    };
    let mut cfg = VtdConfig::from_qemu_props(props).expect("config");
    if scalable {
        cfg.pasid_bits = 8;
    }
    // Several fault-recording registers, so the next-record index matters (QEMU has one).
    cfg.fault_records = 4;
    cfg
}

/// The scalable configuration with page requests (ECAP.PRS needs device-iotlb).
pub fn config_with_page_requests() -> VtdConfig {
    let mut cfg = VtdConfig::from_qemu_props(
        "x-scalable-mode=on,x-flts=on,intremap=on,eim=off,device-iotlb=on,x-vtd-page-requests=on",
    )
    .expect("config");
    cfg.pasid_bits = 8;
    cfg.fault_records = 4;
    cfg
}

impl Scenario {
    pub fn new(scalable: bool) -> Self {
        Self::with_config(config(scalable), scalable, false)
    }

    /// The scalable scenario plus a passthrough device at [`PASSTHROUGH_SID`] whose requests
    /// without PASID and with [`PASSTHROUGH_PASIDS`] have first-stage tables.
    pub fn with_passthrough() -> Self {
        Self::with_config(config(true), true, true)
    }

    /// The scalable scenario on a unit with page requests, the queue enabled (16 slots) and
    /// PRE set for the devices.
    pub fn with_page_requests() -> Self {
        Self::with_config(config_with_page_requests(), true, false)
    }

    fn with_config(cfg: VtdConfig, scalable: bool, with_passthrough: bool) -> Self {
        let page_requests = cfg.page_requests;
        let mut g = Guest::with_config(cfg, RAM_MB);
        let mem = g.mem.clone();
        g.enable_qi(scalable);
        let mut ctx = ContextTablesBuilder::new(&mem, &mut g.frames, scalable).unwrap();
        let devices: Vec<Device> = if scalable {
            vec![(0x08, None), (0x08, Some(1)), (0x08, Some(5)), (0x10, None)]
        } else {
            vec![(0x08, None), (0x10, None), (0x18, None), (0x20, None)]
        };
        let mut pasid_dirs: Vec<(u16, PasidTablesBuilder<'_, Mem>)> = Vec::new();
        for (i, &(sid, pasid)) in devices.iter().enumerate() {
            let did = 1 + i as u16;
            let format = if scalable {
                PageTableFormat::FirstStage { levels: 4 }
            } else {
                PageTableFormat::SecondStage { levels: 4 }
            };
            let mut pt = PageTableBuilder::new(&mem, &mut g.frames, format).unwrap();
            for page in 0..MAPPED {
                // Each device maps its pages to its own frames; page 3 is read-only.
                let gpa = 0x80_0000 + (i as u64 * 16 + page) * 4096;
                pt.map(
                    &mut g.frames,
                    iova(page),
                    gpa,
                    PageSize::Size4K,
                    true,
                    page != 3,
                )
                .unwrap();
            }
            if scalable {
                if !pasid_dirs.iter().any(|(s, _)| *s == sid) {
                    let dir = PasidTablesBuilder::new(&mem, &mut g.frames, 0).unwrap();
                    pasid_dirs.push((sid, dir));
                }
                let dir = &mut pasid_dirs.iter_mut().find(|(s, _)| *s == sid).unwrap().1;
                dir.set_entry(
                    &mut g.frames,
                    pasid.unwrap_or(0),
                    PasidEntry::first_stage(pt.root(), false, did, 2),
                )
                .unwrap();
            } else {
                ctx.set_legacy_context(&mut g.frames, sid, ContextEntry::new(pt.root(), 2, did))
                    .unwrap();
            }
        }
        let mut passthrough = Vec::new();
        if with_passthrough {
            let mut dir = PasidTablesBuilder::new(&mem, &mut g.frames, 0).unwrap();
            for pasid in std::iter::once(None).chain(PASSTHROUGH_PASIDS.map(Some)) {
                let mut pt = PageTableBuilder::new(
                    &mem,
                    &mut g.frames,
                    PageTableFormat::FirstStage { levels: 4 },
                )
                .unwrap();
                for page in 0..MAPPED {
                    let gpa = passthrough_gpa(pasid, page);
                    pt.map(
                        &mut g.frames,
                        iova(page),
                        gpa,
                        PageSize::Size4K,
                        true,
                        page != 3,
                    )
                    .unwrap();
                }
                let did = 20 + pasid.unwrap_or(0) as u16;
                dir.set_entry(
                    &mut g.frames,
                    pasid.unwrap_or(0),
                    PasidEntry::first_stage(pt.root(), false, did, 2),
                )
                .unwrap();
                passthrough.push(pasid);
            }
            pasid_dirs.push((PASSTHROUGH_SID, dir));
        }
        for (sid, dir) in &pasid_dirs {
            let entry = dir
                .context_entry()
                .with_paside(true)
                .with_pre(page_requests);
            ctx.set_scalable_context(&mut g.frames, *sid, entry)
                .unwrap();
        }
        g.set_root(ctx.rtaddr());
        g.enable_translation();
        let ir_table = g.frames.alloc(&g.mem, 1).unwrap();
        for index in 0..IR_ENTRIES {
            let mut irte = Irte::remapped(0x40 + index as u8, index as u32, false);
            if index % 2 == 1 {
                irte =
                    irte.with_source_validation(SourceValidation::RequesterId { sid: 0x08, sq: 0 });
            }
            if index == IR_ENTRIES - 1 {
                irte = Irte::decode(0, 0); // not present
            }
            let (lo, hi) = irte.to_words();
            g.mem.write_words(ir_table + index * 16, &[lo, hi]).unwrap();
        }
        // IRTA.S = 2: 8 entries.
        g.w64(reg::IRTA, ir_table | 2);
        g.latch_interrupt_table();
        g.set_interrupt_remapping(true);
        if page_requests {
            // 2^0 pages: 16 descriptors of 256 bits.
            g.enable_prq(0);
        }
        Self {
            g,
            devices,
            ir_table,
            page_requests,
            passthrough,
        }
    }

    pub fn apply(&mut self, op: &Op) {
        let g = &mut self.g;
        match *op {
            Op::Dma { dev, page, write } => {
                let (sid, pasid) = self.devices[dev % self.devices.len()];
                let _ = g.unit.translate(&request(sid, pasid, page, write));
            }
            Op::ClearFault { index } => {
                let n = g.unit.config().cap().fault_record_count() as u64;
                let fro = g.unit.config().cap().fault_recording_offset();
                g.w64(fro + 16 * (index % n) + 8, 1 << 63);
            }
            Op::WriteFsts { bits } => g.w32(reg::FSTS, bits),
            Op::MaskFaultEvent(m) => g.w32(reg::FECTL, EventControl::new().with_im(m).into_bits()),
            Op::MaskCompletionEvent(m) => {
                g.w32(reg::IECTL, EventControl::new().with_im(m).into_bits())
            }
            Op::FlushWithInterrupt => {
                if g.fsts().iqe() {
                    return;
                }
                let wait = InvDesc::Wait(WaitInv {
                    status_write: None,
                    interrupt: true,
                    fence: false,
                    page_drain: false,
                    ignored: Default::default(),
                });
                g.submit_raw(&[iotlb(IotlbGranularity::Global), wait]);
            }
            Op::BadDescriptor => {
                if g.fsts().iqe() {
                    return;
                }
                // Type 0xf: not an invalidation descriptor (IQEI 3), then a valid one behind.
                g.place_words([0xf, 0, 0, 0]);
                g.place(&iotlb(IotlbGranularity::Global));
                g.ring_doorbell();
            }
            Op::ClearIcs => g.w32(reg::ICS, 1),
            Op::Msi { sid, index } => {
                let _ = g
                    .unit
                    .remap_msi(MsiSource::Device(sid), remappable(index), 0);
            }
            Op::InterruptRemapping(on) => g.set_interrupt_remapping(on),
            Op::RewriteRtaddr => g.w64(reg::RTADDR, 0x1f0_0000),
            Op::PageRequest { dev, prg, last } => {
                if !self.page_requests {
                    return;
                }
                let (sid, pasid) = self.devices[dev % self.devices.len()];
                let _ = g.unit.page_request(&PageRequest {
                    sid,
                    pasid,
                    address: iova(prg as u64),
                    read: true,
                    write: prg % 2 == 0,
                    execute: false,
                    privileged: false,
                    last_in_group: last,
                    prg_index: prg,
                });
            }
            Op::RespondOldest => {
                let oldest = g
                    .unit
                    .export_state()
                    .page_requests
                    .outstanding
                    .first()
                    .copied();
                let Some(group) = oldest else { return };
                if g.fsts().iqe() {
                    return;
                }
                let desc = PageRequestDescriptor {
                    rid: group.sid,
                    pasid: group.pasid,
                    execute: false,
                    privileged: false,
                    read: true,
                    write: false,
                    last_in_group: true,
                    prg_index: group.prg_index,
                    address: 0,
                };
                g.submit_raw(&[Guest::page_group_response(&desc, ResponseCode::Success)]);
            }
            Op::ReadPageRequests => {
                if self.page_requests {
                    g.read_page_requests();
                }
            }
        }
    }
}

pub fn request(sid: u16, pasid: Option<u32>, page: u64, write: bool) -> DmaRequest {
    DmaRequest {
        pasid,
        ..DmaRequest::new(
            sid,
            iova(page),
            if write {
                AccessKind::Write
            } else {
                AccessKind::Read
            },
        )
    }
}

/// A remappable-format MSI address for `handle` (spec 5.1.2.2).
pub fn remappable(handle: u16) -> u64 {
    0xfee0_0000 | ((handle as u64 & 0x7fff) << 5) | 0x10 | ((handle as u64 >> 15) << 2)
}

/// A byte-for-byte copy of `mem` (what a migrated guest's RAM is on the target).
pub fn copy_memory(mem: &Mem) -> Mem {
    let size = RAM_MB << 20;
    let copy: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for at in (0..size).step_by(buf.len()) {
        mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
        copy.write_slice(&buf, GuestAddress(at)).unwrap();
    }
    copy
}

/// First differing offset of two memories.
pub fn memory_difference(a: &Mem, b: &Mem) -> Option<u64> {
    let size = RAM_MB << 20;
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for at in (0..size).step_by(x.len()) {
        a.read_slice(&mut x, GuestAddress(at)).unwrap();
        b.read_slice(&mut y, GuestAddress(at)).unwrap();
        if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
            return Some(at + i as u64);
        }
    }
    None
}

/// A fresh unit of `cfg` over `mem` with its own sink.
pub fn fresh_unit(cfg: VtdConfig, mem: Mem) -> (Arc<Unit>, Arc<RecordingSink>) {
    let sink = Arc::new(RecordingSink::default());
    let unit = Arc::new(VtdUnit::new(cfg, mem, sink.clone()).unwrap());
    (unit, sink)
}

/// Every 32- and 64-bit MMIO read of the window.
pub fn mmio_reads<M: GuestRam + Send + Sync>(unit: &VtdUnit<M>) -> Vec<(u64, u8, u64)> {
    let mut out = Vec::new();
    for off in (0..0x1000u64).step_by(4) {
        out.push((off, 4, unit.read(off, 4)));
        if off % 8 == 0 {
            out.push((off, 8, unit.read(off, 8)));
        }
    }
    out
}

/// Asserts that `b` reads exactly like `a` at every register.
pub fn assert_same_registers<M: GuestRam + Send + Sync>(a: &VtdUnit<M>, b: &VtdUnit<M>) {
    for ((off, size, x), (_, _, y)) in mmio_reads(a).into_iter().zip(mmio_reads(b)) {
        assert_eq!(
            x, y,
            "MMIO read of {size} bytes at {off:#x}: source {x:#x}, target {y:#x}"
        );
    }
}

/// The unit state the golden snapshot holds: the scalable scenario stopped mid-queue with a
/// pending fault, masked fault and completion events, interrupt remapping on.
pub fn golden_scenario() -> Scenario {
    use Op::*;
    let mut s = Scenario::new(true);
    for op in [
        MaskFaultEvent(true),
        MaskCompletionEvent(true),
        Dma {
            dev: 0,
            page: 6,
            write: true,
        },
        Msi {
            sid: 0x77,
            index: 1,
        },
        Dma {
            dev: 3,
            page: 1,
            write: true,
        },
        FlushWithInterrupt,
        BadDescriptor,
        RewriteRtaddr,
    ] {
        s.apply(&op);
    }
    s
}

/// Builds a snapshot by hand from the documented layout (magic, version, flags, length,
/// CRC-64/XZ over header-with-zero-checksum and payload): lets tests put any payload, version
/// or flags behind a valid checksum.
pub fn seal(version: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = b"VTDSNAP\0".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(payload);
    let crc = crc::Crc::<u64>::new(&crc::CRC_64_XZ).checksum(&out);
    out[24..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The state golden-v2.bin holds: the page request scenario with groups awaiting a response,
/// one answered, requests read by the guest, on top of golden_scenario's activity.
pub fn golden_v2_scenario() -> Scenario {
    use Op::*;
    let mut s = Scenario::with_page_requests();
    for op in [
        MaskFaultEvent(true),
        Dma {
            dev: 0,
            page: 6,
            write: true,
        },
        PageRequest {
            dev: 0,
            prg: 1,
            last: false,
        },
        PageRequest {
            dev: 0,
            prg: 1,
            last: true,
        },
        PageRequest {
            dev: 1,
            prg: 2,
            last: true,
        },
        PageRequest {
            dev: 3,
            prg: 3,
            last: true,
        },
        ReadPageRequests,
        RespondOldest,
        PageRequest {
            dev: 2,
            prg: 4,
            last: true,
        },
    ] {
        s.apply(&op);
    }
    s
}
