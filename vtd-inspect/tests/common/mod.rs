//! A scalable-mode guest programmed the way Linux 6.12's intel-iommu driver does it
//! (drivers/iommu/intel/iommu.c, pasid.c): scalable root and context tables, a PASID directory,
//! first-stage PASID entries, queued invalidation with 256-bit descriptors, and a PASID-cache
//! plus PASID-IOTLB flush after each entry is set up (intel_pasid_setup_first_level ->
//! pasid_flush_caches), each batch closed by a wait descriptor (qi_submit_sync).
#![allow(dead_code)]

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd_core::{RecordingSink, VtdUnit};
use vtd_regs::VtdConfig;
use vtd_regs::inv::{
    DescWidth, InvDesc, PasidCacheGranularity, PasidCacheInv, PasidIotlbGranularity, PasidIotlbInv,
    StatusWrite, WaitInv,
};
use vtd_regs::regs::offset as reg;
use vtd_tables::GuestRam;
use vtd_tables::builder::{
    ContextTablesBuilder, FrameAllocator, PageSize, PageTableBuilder, PageTableFormat,
    PasidTablesBuilder,
};
use vtd_tables::entries::PasidEntry;
use vtd_tables::walk::{AccessKind, DmaRequest};

pub type Mem = GuestMemoryMmap<()>;
pub type Unit = VtdUnit<Mem>;

const GCMD_TE: u32 = 1 << 31;
const GCMD_SRTP: u32 = 1 << 30;
const GCMD_QIE: u32 = 1 << 26;

/// The device the guest programs: 00:03.0.
pub const SID: u16 = 0x0018;
/// PASIDs with a first-stage entry, and their domain IDs.
pub const PASIDS: [(u32, u16); 3] = [(0, 1), (1, 2), (5, 3)];
/// IOVA mapped in each first-stage table, and where it goes.
pub const IOVA: u64 = 0x1000;
pub const GPA: u64 = 0x50_0000;

pub struct Guest {
    pub mem: Mem,
    pub unit: Arc<Unit>,
    frames: FrameAllocator,
    gcmd: u32,
    queue_base: u64,
    status: u64,
    tail: u32,
    seq: u32,
    pub fs_roots: Vec<u64>,
}

impl Guest {
    /// A unit in its reset state (serve it before programming to see every event).
    pub fn new() -> Self {
        let mem: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let cfg = VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap();
        let unit =
            Arc::new(VtdUnit::new(cfg, mem.clone(), Arc::new(RecordingSink::default())).unwrap());
        Self {
            mem,
            unit,
            frames: FrameAllocator::new(0x100_0000, 0x200_0000),
            gcmd: 0,
            queue_base: 0,
            status: 0,
            tail: 0,
            seq: 0,
            fs_roots: Vec::new(),
        }
    }

    fn command(&mut self, bit: u32, persistent: bool) {
        if persistent {
            self.gcmd |= bit;
            self.unit.write(reg::GCMD, 4, self.gcmd as u64);
        } else {
            self.unit.write(reg::GCMD, 4, (self.gcmd | bit) as u64);
        }
        assert_ne!(
            self.unit.read(reg::GSTS, 4) as u32 & bit,
            0,
            "GSTS after {bit:#x}"
        );
    }

    /// Tables, root, queue, translation on; then one first-stage PASID entry at a time, each
    /// followed by its cache flush. Returns the number of invalidations by type it submitted.
    pub fn program(&mut self) {
        let mem = self.mem.clone();
        let mut ctx = ContextTablesBuilder::new(&mem, &mut self.frames, true).unwrap();
        let mut pasids = PasidTablesBuilder::new(&mem, &mut self.frames, 0).unwrap();
        ctx.set_scalable_context(
            &mut self.frames,
            SID,
            pasids.context_entry().with_paside(true),
        )
        .unwrap();
        self.unit.write(reg::RTADDR, 8, ctx.rtaddr());
        self.command(GCMD_SRTP, false);
        // dmar_enable_qi: IQT = 0, IQA = base | DW (256-bit in scalable mode) | QS 0.
        self.queue_base = self.frames.alloc(&self.mem, 1).unwrap();
        self.status = self.frames.alloc(&self.mem, 1).unwrap();
        self.unit.write(reg::IQT, 8, 0);
        self.unit.write(reg::IQA, 8, self.queue_base | 1 << 11);
        self.command(GCMD_QIE, true);
        self.command(GCMD_TE, true);
        for (pasid, did) in PASIDS {
            let mut pt = PageTableBuilder::new(
                &mem,
                &mut self.frames,
                PageTableFormat::FirstStage { levels: 4 },
            )
            .unwrap();
            pt.map(&mut self.frames, IOVA, GPA, PageSize::Size4K, true, true)
                .unwrap();
            self.fs_roots.push(pt.root());
            let entry = PasidEntry::first_stage(pt.root(), false, did, 2);
            pasids.set_entry(&mut self.frames, pasid, entry).unwrap();
            self.submit(&[
                InvDesc::PasidCache(PasidCacheInv {
                    did,
                    granularity: PasidCacheGranularity::Pasid { pasid },
                    ignored: Default::default(),
                }),
                InvDesc::PasidIotlb(PasidIotlbInv {
                    did,
                    pasid,
                    granularity: PasidIotlbGranularity::AllInPasid,
                    ignored: Default::default(),
                }),
            ]);
        }
    }

    /// A page-selective PASID-IOTLB flush (after an unmap, with IH: leaf only).
    pub fn flush_page(&mut self, pasid: u32, did: u16, addr: u64) {
        self.submit(&[InvDesc::PasidIotlb(PasidIotlbInv {
            did,
            pasid,
            granularity: PasidIotlbGranularity::Page {
                addr,
                am: 0,
                ih: true,
            },
            ignored: Default::default(),
        })]);
    }

    /// Descriptors plus a wait with status write; checks the status arrived.
    pub fn submit(&mut self, descs: &[InvDesc]) {
        self.seq += 1;
        let mut all = descs.to_vec();
        all.push(InvDesc::Wait(WaitInv {
            status_write: Some(StatusWrite {
                addr: self.status,
                data: self.seq,
            }),
            interrupt: false,
            fence: true,
            page_drain: false,
            ignored: Default::default(),
        }));
        for d in &all {
            let raw = d.encode(DescWidth::Bits256).unwrap();
            self.mem
                .write_words(self.queue_base + self.tail as u64 * 32, &raw.0)
                .unwrap();
            self.tail = (self.tail + 1) % 128;
        }
        self.unit.write(reg::IQT, 8, (self.tail as u64) << 5);
        assert_eq!(
            self.mem.read_u64(self.status).unwrap() as u32,
            self.seq,
            "wait status"
        );
    }

    /// A DMA with PASID through the unit.
    pub fn dma(&self, pasid: u32, iova: u64) -> Result<u64, vtd_core::TranslateError> {
        let req = DmaRequest {
            pasid: Some(pasid),
            ..DmaRequest::new(SID, iova, AccessKind::Read)
        };
        self.unit
            .translate(&req)
            .map(|t| t.output_base() | (iova & 0xfff))
    }
}
