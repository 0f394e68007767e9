//! Live migration with a passthrough device and an emulated device both writing while the
//! pre-copy rounds run. Guest RAM is one shared file mapped twice, as on a real host: the
//! VMM's view (`GuestMemoryMmap<AtomicBitmap>`: the unit, the emulated device, the VMM's
//! copies) and the host IOMMU's view (the simulated passthrough device's DMA), which the VMM's
//! bitmap never sees. Only the nest parent's dirty log finds the passthrough device's pages,
//! so only both logs together leave nothing behind: after the final round plus the snapshot
//! the target's memory equals the source's byte for byte, and both devices continue on the
//! target without a fault.

use std::fs::OpenOptions;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vtd_accel::compat::PciTopology;
use vtd_accel::sim::{HostMemory, SimHostIommu};
use vtd_accel::{
    Bdf, DeviceId, HW_CAP_DIRTY_TRACKING, HostAttachment, HostHwInfo, HostIommuBackend,
    HostIommuDevice, NestedBinder,
};
use vtd_core::{AccessKind, DmaRequest, RecordingSink, VtdUnit};
use vtd_migrate::{DirtyTracker, GuestMemoryDirtyLog, HwptDirtyLog, PreCopy};
use vtd_regs::VtdConfig;
use vtd_regs::inv::{DescWidth, InvDesc, IotlbGranularity, IotlbInv, StatusWrite, WaitInv};
use vtd_regs::regs::{Gcmd, Iqa, offset as reg};
use vtd_tables::GuestRam;
use vtd_tables::builder::{
    ContextTablesBuilder, FrameAllocator, PageSize, PageTableBuilder, PageTableFormat,
    PasidTablesBuilder,
};
use vtd_tables::entries::PasidEntry;

/// The VMM's view of guest RAM.
type Vmm = GuestMemoryMmap<AtomicBitmap>;
/// The host IOMMU's view of the same RAM.
type Dev = GuestMemoryMmap<()>;
type Unit = VtdUnit<Vmm>;

const RAM: u64 = 32 << 20;
const PAGE: u64 = 4096;
const HOST_BASE: u64 = 0x40_0000_0000;
const EMU_SID: u16 = 0x08;
const PT_BDF: Bdf = Bdf::new(1, 0, 0);
const IOVA: u64 = 0x4000_0000;
const PAGES: u64 = 64;
const EMU_BASE: u64 = 8 << 20;
const PT_BASE: u64 = 12 << 20;

/// Guest RAM in a file mapped twice (the file is unlinked at once; the mappings keep it).
fn shared_ram() -> (Vmm, Dev) {
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "vtd-migrate-ram-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    file.set_len(RAM).unwrap();
    let region = |f: &std::fs::File| {
        [(
            GuestAddress(0),
            RAM as usize,
            Some(FileOffset::new(f.try_clone().unwrap(), 0)),
        )]
    };
    let vmm = Vmm::from_ranges_with_files(region(&file)).unwrap();
    let dev = Dev::from_ranges_with_files(region(&file)).unwrap();
    (vmm, dev)
}

/// One side: the unit, the queue, the host IOMMU with the passthrough device registered.
struct Side {
    vmm: Vmm,
    unit: Arc<Unit>,
    sim: Arc<SimHostIommu<Dev>>,
    binder: Arc<NestedBinder<Vmm>>,
    dev: DeviceId,
    queue: u64,
    status: u64,
}

fn config() -> VtdConfig {
    VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap()
}

fn host(
    unit: &Arc<Unit>,
    dev_mem: &Dev,
) -> (Arc<SimHostIommu<Dev>>, Arc<NestedBinder<Vmm>>, DeviceId) {
    let mut info = HostHwInfo::vtd_nesting_capable();
    info.capabilities |= HW_CAP_DIRTY_TRACKING;
    let sim = Arc::new(SimHostIommu::new(
        info,
        HostMemory::new().with_region(HOST_BASE, RAM, dev_mem.clone(), 0),
    ));
    let ioas = sim.alloc_ioas();
    sim.ioas_map(ioas, 0, RAM, HOST_BASE, true).unwrap();
    let binder = NestedBinder::with_unit_faults(unit);
    let (dev, parent) = sim.vfio_bind_default(ioas, binder.viommu_flags()).unwrap();
    let backend: Arc<dyn HostIommuBackend> = sim.clone();
    let hd = HostIommuDevice::query(backend, "0000:3b:00.0", dev, parent).unwrap();
    binder.register(PT_BDF, hd, PciTopology::default()).unwrap();
    (sim, binder, dev)
}

/// The source: first-stage tables for the emulated device (IOVA -> EMU_BASE) and the
/// passthrough device (IOVA -> PT_BASE), leaves with A/D clear, queue on, translation on.
fn source() -> Side {
    let (vmm, dev_mem) = shared_ram();
    let unit =
        Arc::new(Unit::new(config(), vmm.clone(), Arc::new(RecordingSink::default())).unwrap());
    let mut frames = FrameAllocator::new(16 << 20, 32 << 20);
    let mut ctx = ContextTablesBuilder::new(&vmm, &mut frames, true).unwrap();
    for (sid, base, did) in [(EMU_SID, EMU_BASE, 1), (PT_BDF.sid(), PT_BASE, 2)] {
        let mut fs =
            PageTableBuilder::new(&vmm, &mut frames, PageTableFormat::FirstStage { levels: 4 })
                .unwrap();
        for p in 0..PAGES {
            fs.set_leaf(
                &mut frames,
                IOVA + p * PAGE,
                PageSize::Size4K,
                (base + p * PAGE) | 0b111,
            )
            .unwrap();
        }
        let mut pasids = PasidTablesBuilder::new(&vmm, &mut frames, 0).unwrap();
        pasids
            .set_entry(
                &mut frames,
                0,
                PasidEntry::first_stage(fs.root(), false, did, 2),
            )
            .unwrap();
        ctx.set_scalable_context(&mut frames, sid, pasids.context_entry())
            .unwrap();
    }
    let queue = frames.alloc(&vmm, 1).unwrap();
    let status = frames.alloc(&vmm, 1).unwrap();
    unit.write(reg::RTADDR, 8, ctx.rtaddr());
    unit.write(reg::GCMD, 4, Gcmd::new().with_srtp(true).into_bits() as u64);
    unit.write(
        reg::IQA,
        8,
        Iqa::new().with_dw(true).with_iqa(queue >> 12).into_bits(),
    );
    let on = Gcmd::new().with_te(true).with_qie(true);
    unit.write(reg::GCMD, 4, on.into_bits() as u64);
    let (sim, binder, dev) = host(&unit, &dev_mem);
    assert!(matches!(
        binder.bindings()[0].host,
        HostAttachment::Nested(_)
    ));
    Side {
        vmm,
        unit,
        sim,
        binder,
        dev,
        queue,
        status,
    }
}

impl Side {
    /// The emulated device writes through the unit (translate, then the VMM's memory).
    fn emulated_write(&self, page: u64, data: &[u8]) {
        let t = self
            .unit
            .translate(&DmaRequest::new(
                EMU_SID,
                IOVA + page * PAGE,
                AccessKind::Write,
            ))
            .expect("emulated device mapped");
        self.vmm.write_slice(data, GuestAddress(t.output)).unwrap();
    }

    /// The passthrough device writes through the host IOMMU.
    fn passthrough_write(&self, page: u64, data: &[u8]) {
        self.sim
            .dma_write(self.dev, None, IOVA + page * PAGE + 0x40, data)
            .expect("passthrough device mapped");
    }

    /// The guest flushes and waits with a status write (the unit writes guest memory).
    fn flush_and_wait(&self, seq: u32) {
        let head = self.unit.read(reg::IQT, 8) >> 5;
        let descs = [
            InvDesc::Iotlb(IotlbInv {
                granularity: IotlbGranularity::Global,
                drain_read: false,
                drain_write: false,
                ignored: Default::default(),
            }),
            InvDesc::Wait(WaitInv {
                status_write: Some(StatusWrite {
                    addr: self.status,
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
            self.vmm
                .write_words(self.queue + tail * 32, &raw.0)
                .unwrap();
            tail = (tail + 1) % 128;
        }
        self.unit.write(reg::IQT, 8, tail << 5);
        assert_eq!(self.vmm.read_u64(self.status).unwrap() as u32, seq);
    }

    /// One round of guest activity on both devices.
    fn activity(&self, round: u64) {
        for k in 0..6u64 {
            let data = [(round as u8).wrapping_mul(29) ^ k as u8; 64];
            self.emulated_write((round * 5 + k * 7) % PAGES, &data);
            self.passthrough_write((round * 3 + k * 11) % PAGES, &data);
        }
        self.flush_and_wait(round as u32);
    }
}

fn copy_pages(from: &Vmm, to: &Vmm, pages: impl IntoIterator<Item = u64>) {
    let mut buf = [0u8; PAGE as usize];
    for gpa in pages {
        from.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
        to.write_slice(&buf, GuestAddress(gpa)).unwrap();
    }
}

fn differing_page(a: &Vmm, b: &Vmm) -> Option<u64> {
    let (mut x, mut y) = ([0u8; PAGE as usize], [0u8; PAGE as usize]);
    (0..RAM / PAGE).map(|p| p * PAGE).find(|&gpa| {
        a.read_slice(&mut x, GuestAddress(gpa)).unwrap();
        b.read_slice(&mut y, GuestAddress(gpa)).unwrap();
        x != y
    })
}

#[test]
fn only_the_nest_parents_log_sees_passthrough_dma() {
    let s = source();
    let mut vmm_log = GuestMemoryDirtyLog::new(s.vmm.clone());
    let mut logs = HwptDirtyLog::for_binder(&s.binder, &[(0, RAM)]);
    assert_eq!(logs.len(), 1);
    let mut iommu_log = logs.pop().unwrap();
    vmm_log.start().unwrap();
    iommu_log.start().unwrap();
    s.passthrough_write(5, b"dma by the device");
    let (mut from_vmm, mut from_iommu) = Default::default();
    vmm_log.collect(&mut from_vmm).unwrap();
    iommu_log.collect(&mut from_iommu).unwrap();
    let page = PT_BASE + 5 * PAGE;
    assert!(
        !from_vmm.contains(&page),
        "vm-memory never sees passthrough DMA"
    );
    assert!(
        from_iommu.contains(&page),
        "the nest parent's dirty bits do"
    );
    // The host walk set A/D in the guest's leaf through stage 2: that page is dirty too.
    assert!(from_iommu.len() >= 2, "{from_iommu:x?}");
    let mut again = Default::default();
    iommu_log.collect(&mut again).unwrap();
    assert!(again.is_empty(), "collecting clears");
    iommu_log.stop().unwrap();
    s.passthrough_write(6, b"untracked");
    let mut after = Default::default();
    iommu_log.collect(&mut after).unwrap();
    assert!(after.is_empty(), "nothing recorded while tracking is off");
}

#[test]
fn both_devices_keep_writing_through_pre_copy_and_nothing_is_left_behind() {
    let s = source();
    let (target_vmm, target_dev) = shared_ram();

    let mut trackers: Vec<Box<dyn DirtyTracker>> =
        vec![Box::new(GuestMemoryDirtyLog::new(s.vmm.clone()))];
    for log in HwptDirtyLog::for_binder(&s.binder, &[(0, RAM)]) {
        trackers.push(Box::new(log));
    }
    let mut precopy = PreCopy::start(trackers).unwrap();
    copy_pages(&s.vmm, &target_vmm, (0..RAM / PAGE).map(|p| p * PAGE));
    for round in 1..=6u64 {
        s.activity(round);
        let pages = precopy.round().unwrap();
        assert!(
            pages.contains(&(PT_BASE + ((round * 3) % PAGES) * PAGE)),
            "round {round}"
        );
        copy_pages(&s.vmm, &target_vmm, pages);
    }
    // Final round: the guest and both devices are paused after this last activity.
    s.activity(7);
    let last = precopy
        .finish(&s.unit, |u| vtd_migrate::save_with_binder(u, &s.binder))
        .unwrap();
    copy_pages(&s.vmm, &target_vmm, last.pages);
    assert_eq!(
        differing_page(&s.vmm, &target_vmm),
        None,
        "a written page was left behind"
    );

    // The target: the unit restored, the device registered again and bound by replay.
    let unit = Arc::new(
        Unit::new(
            config(),
            target_vmm.clone(),
            Arc::new(RecordingSink::default()),
        )
        .unwrap(),
    );
    let (sim, binder, dev) = host(&unit, &target_dev);
    vtd_migrate::restore_with_binder(&unit, &binder, &last.snapshot).unwrap();
    let t = Side {
        vmm: target_vmm.clone(),
        unit,
        sim,
        binder,
        dev,
        queue: s.queue,
        status: s.status,
    };
    assert!(matches!(
        t.binder.bindings()[0].host,
        HostAttachment::Nested(_)
    ));
    // Both continue, the same way on both sides, with no fault.
    for round in 8..=9 {
        s.activity(round);
        t.activity(round);
    }
    assert_eq!(
        differing_page(&s.vmm, &t.vmm),
        None,
        "both continue identically"
    );
    assert_eq!(t.unit.stats().dma_faults, 0);
    assert_eq!(t.sim.stats().faults_raised, 0);
    assert_eq!(s.sim.stats().faults_raised, 0);
}
