//! A small "guest driver" that programs a unit the way Linux 6.12 does, for the tests.
#![allow(dead_code)]

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd_core::{EventLog, RecordingSink, VtdUnit};
use vtd_regs::VtdConfig;
use vtd_regs::inv::{DescWidth, InvDesc, StatusWrite, WaitInv};
use vtd_regs::regs::offset as reg;
use vtd_tables::GuestRam;
use vtd_tables::builder::{
    ContextTablesBuilder, FrameAllocator, PageSize, PageTableBuilder, PageTableFormat,
};
use vtd_tables::entries::ContextEntry;

pub type Mem = GuestMemoryMmap<()>;
pub type Unit = VtdUnit<Mem>;

pub const GCMD_TE: u32 = 1 << 31;
pub const GCMD_SRTP: u32 = 1 << 30;
pub const GCMD_QIE: u32 = 1 << 26;
pub const GCMD_IRE: u32 = 1 << 25;
pub const GCMD_SIRTP: u32 = 1 << 24;
pub const GCMD_CFI: u32 = 1 << 23;

pub struct Guest {
    pub mem: Mem,
    pub unit: Arc<Unit>,
    pub sink: Arc<RecordingSink>,
    pub log: Arc<EventLog>,
    pub frames: FrameAllocator,
    /// Linux keeps a shadow of the persistent GCMD bits (TE, QIE, IRE) and ORs one-shot bits in.
    pub gcmd: u32,
    pub queue: Option<Queue>,
}

pub struct Queue {
    pub base: u64,
    pub wide: bool,
    pub count: u32,
    pub tail: u32,
    pub status: u64,
    pub seq: u32,
}

impl Guest {
    pub fn new(props: &str, ram_mb: u64) -> Self {
        let cfg = VtdConfig::from_qemu_props(props).unwrap();
        Self::with_config(cfg, ram_mb)
    }

    pub fn with_config(cfg: VtdConfig, ram_mb: u64) -> Self {
        let mem: Mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (ram_mb << 20) as usize)]).unwrap();
        let sink = Arc::new(RecordingSink::default());
        let unit = Arc::new(VtdUnit::new(cfg, mem.clone(), sink.clone()).unwrap());
        let log = Arc::new(EventLog::default());
        unit.subscribe(log.clone());
        Self {
            mem,
            unit,
            sink,
            log,
            frames: FrameAllocator::new(0x100_0000, 0x200_0000),
            gcmd: 0,
            queue: None,
        }
    }

    pub fn r32(&self, off: u64) -> u32 {
        self.unit.read(off, 4) as u32
    }
    pub fn r64(&self, off: u64) -> u64 {
        self.unit.read(off, 8)
    }
    pub fn w32(&self, off: u64, v: u32) {
        self.unit.write(off, 4, v as u64)
    }
    pub fn w64(&self, off: u64, v: u64) {
        self.unit.write(off, 8, v)
    }

    /// Legacy tables for `sid` in domain `did`: a second-stage table of `levels` levels (AW =
    /// levels - 2) mapping the 4 KiB page `iova` to `gpa` read-write, the root latched and
    /// translation on. Returns the table's root for `PageTableBuilder::at`.
    pub fn legacy_one_page(&mut self, sid: u16, did: u16, levels: u8, iova: u64, gpa: u64) -> u64 {
        let mem = self.mem.clone();
        let mut ctx = ContextTablesBuilder::new(&mem, &mut self.frames, false).unwrap();
        let format = PageTableFormat::SecondStage { levels };
        let mut pt = PageTableBuilder::new(&mem, &mut self.frames, format).unwrap();
        pt.map(&mut self.frames, iova, gpa, PageSize::Size4K, true, true)
            .unwrap();
        let entry = ContextEntry::new(pt.root(), levels - 2, did);
        ctx.set_legacy_context(&mut self.frames, sid, entry)
            .unwrap();
        self.set_root(ctx.rtaddr());
        self.enable_translation();
        pt.root()
    }

    /// Writes a command the Linux way and checks GSTS reports it.
    pub fn command(&mut self, bit: u32, persistent: bool, on: bool) {
        if persistent {
            if on {
                self.gcmd |= bit
            } else {
                self.gcmd &= !bit
            }
            self.w32(reg::GCMD, self.gcmd);
        } else {
            self.w32(reg::GCMD, self.gcmd | bit);
        }
        let gsts = self.r32(reg::GSTS);
        assert_eq!(gsts & bit != 0, on, "GSTS {gsts:#x} after command {bit:#x}");
    }

    pub fn set_root(&mut self, rtaddr: u64) {
        self.w64(reg::RTADDR, rtaddr);
        self.command(GCMD_SRTP, false, true);
    }

    pub fn enable_translation(&mut self) {
        self.command(GCMD_TE, true, true);
    }

    /// As Linux 6.12 dmar_enable_qi: IQT = 0, IQA = base | DW | QS, QIE.
    pub fn enable_qi(&mut self, wide: bool) {
        let qs = 1u64;
        let base = self.frames.alloc(&self.mem, 2).unwrap();
        let status = self.frames.alloc(&self.mem, 1).unwrap();
        self.w32(reg::IQT, 0);
        self.w64(reg::IQA, base | if wide { 1 << 11 } else { 0 } | qs);
        self.command(GCMD_QIE, true, true);
        let count = if wide { 256 } else { 512 };
        self.queue = Some(Queue {
            base,
            wide,
            count,
            tail: 0,
            status,
            seq: 0,
        });
    }

    /// Submits descriptors plus a wait with status write, as qi_submit_sync does, and checks
    /// the status was written and no queue error happened.
    pub fn submit(&mut self, descs: &[InvDesc]) {
        let q = self.queue.as_mut().expect("QI enabled");
        q.seq = q.seq.wrapping_add(1);
        let status = q.status;
        let seq = q.seq;
        let mut all = descs.to_vec();
        all.push(InvDesc::Wait(WaitInv {
            status_write: Some(StatusWrite {
                addr: status,
                data: seq,
            }),
            interrupt: false,
            fence: true,
            page_drain: false,
            ignored: Default::default(),
        }));
        self.submit_raw(&all);
        assert_eq!(
            self.mem.read_u64(status).unwrap() as u32,
            seq,
            "wait status written"
        );
        assert_eq!(self.r32(reg::FSTS) & 0x10, 0, "no IQE");
    }

    /// Places descriptors at the tail and writes IQT, with no checks.
    pub fn submit_raw(&mut self, descs: &[InvDesc]) {
        let q = self.queue.as_mut().expect("QI enabled");
        let width = if q.wide {
            DescWidth::Bits256
        } else {
            DescWidth::Bits128
        };
        let size = if q.wide { 32 } else { 16 };
        for d in descs {
            let raw = d.encode(width).unwrap();
            let words = if q.wide { 4 } else { 2 };
            self.mem
                .write_words(q.base + q.tail as u64 * size, &raw.0[..words])
                .unwrap();
            q.tail = (q.tail + 1) % q.count;
        }
        let shift = if q.wide { 5 } else { 4 };
        let tail = (q.tail as u64) << shift;
        self.w64(reg::IQT, tail);
    }
}
