//! The rig of vtd-accel's tests: a guest driven by vtd-testkit's Linux-style driver (scalable
//! mode, first-stage tables, 256-bit queued invalidation), a simulated host with guest RAM at
//! HOST_BASE, and an assigned device registered with a NestedBinder.
// Each test file uses part of the rig and of the driver's re-exports.
#![allow(dead_code, unused_imports)]

use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd_accel::sim::*;
use vtd_accel::*;
use vtd_regs::VtdConfig;
use vtd_tables::GuestRam;
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_tables::walk::AccessKind;
pub use vtd_testkit::driver::{
    Guest, Mem, Unit, context_cache, iotlb, pasid_cache, pasid_iotlb_all, pasid_iotlb_page,
};

/// A guest of `RAM_MB` MiB with a unit configured as `cfg` (table frames from 16 MiB up).
pub fn guest(cfg: VtdConfig) -> Guest {
    let mem: Mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (RAM_MB << 20) as usize)]).unwrap();
    Guest::with_memory(cfg, mem)
}

/// Guest RAM appears at this host-physical address.
pub const HOST_BASE: u64 = 0x40_0000_0000;
pub const RAM_MB: u64 = 64;
/// The assigned device: 01:00.0.
pub const BDF: Bdf = Bdf::new(1, 0, 0);
pub const SID: u16 = 0x0100;
/// Linux's first-stage DMA domain ID in the trace.
pub const DID: u16 = 5;
pub const IOVA: u64 = 0x1000_0000;
pub const GPA: u64 = 0x80_0000;

/// A guest with one assigned device bound through a simulated host.
pub struct Rig {
    pub g: Guest,
    pub sim: Arc<SimHostIommu<Mem>>,
    pub ioas: IoasId,
    pub binder: Arc<NestedBinder<Mem>>,
    pub events: Arc<AccelEventLog>,
    pub dev: DeviceId,
    pub parent: HwptId,
    pub ctx: u64,
    pub pasid_dir: u64,
    pub pe0: u64,
    pub fs_root: u64,
}

pub fn host_info_for(cfg: &VtdConfig) -> HostHwInfo {
    let mut info = HostHwInfo::vtd_nesting_capable();
    if cfg.pasid_bits == 0 {
        info.max_pasid_log2 = 20;
    }
    info
}

impl Rig {
    /// Guest programmed like Linux with a first-stage domain for the device (IOVA -> GPA),
    /// QI on, translation on; the device registered (before TE, as at boot) and bound.
    pub fn new(props: &str) -> Self {
        Self::with_config(VtdConfig::from_qemu_props(props).unwrap())
    }

    pub fn with_config(cfg: VtdConfig) -> Self {
        let info = host_info_for(&cfg);
        Self::with_host(cfg, info)
    }

    pub fn with_host(cfg: VtdConfig, info: HostHwInfo) -> Self {
        let mut rig = Self::unbound(cfg, info);
        rig.g.set_translation(true);
        rig
    }

    /// As `with_host` but translation still off (device on its parent).
    pub fn unbound(cfg: VtdConfig, info: HostHwInfo) -> Self {
        Self::unbound_with_sink(cfg, info, None)
    }

    pub fn unbound_with_sink(
        cfg: VtdConfig,
        info: HostHwInfo,
        sink: Option<Arc<dyn GuestFaultSink>>,
    ) -> Self {
        Self::build(cfg, info, sink, |sim, _| sim)
    }

    /// The general constructor: `backend` may wrap the simulator (probes, delays).
    pub fn build(
        cfg: VtdConfig,
        info: HostHwInfo,
        sink: Option<Arc<dyn GuestFaultSink>>,
        backend: impl FnOnce(Arc<SimHostIommu<Mem>>, &Guest) -> Arc<dyn HostIommuBackend>,
    ) -> Self {
        let mut g = guest(cfg);
        let mem = g.mem.clone();
        let host = HostMemory::new().with_region(HOST_BASE, RAM_MB << 20, mem.clone(), 0);
        let sim = Arc::new(SimHostIommu::new(info, host));
        let ioas = sim.alloc_ioas();
        sim.ioas_map(ioas, 0, RAM_MB << 20, HOST_BASE, true)
            .unwrap();
        g.enable_qi(true);
        let be = backend(sim.clone(), &g);
        let binder = match sink {
            Some(s) => NestedBinder::new(&g.unit, s),
            None => NestedBinder::with_unit_faults(&g.unit),
        };
        let events = Arc::new(AccelEventLog::default());
        binder.subscribe(events.clone());
        let (dev, parent) = sim.vfio_bind_default(ioas, binder.viommu_flags()).unwrap();

        let mut ctxb = ContextTablesBuilder::new(&mem, &mut g.frames, true).unwrap();
        let mut pasids = PasidTablesBuilder::new(&mem, &mut g.frames, 0).unwrap();
        let mut fs = PageTableBuilder::new(
            &mem,
            &mut g.frames,
            PageTableFormat::FirstStage { levels: 4 },
        )
        .unwrap();
        fs.map(&mut g.frames, IOVA, GPA, PageSize::Size4K, true, true)
            .unwrap();
        let pe0 = pasids
            .set_entry(
                &mut g.frames,
                0,
                PasidEntry::first_stage(fs.root(), false, DID, 2),
            )
            .unwrap();
        let mut ce = pasids.context_entry();
        if g.unit.config().pasid_bits > 0 {
            ce = ce.with_paside(true);
        }
        // Linux sets PRE when it enables PRI for the device (drivers/iommu/intel/pasid.c,
        // context_entry_set_pre).
        if g.unit.config().page_requests {
            ce = ce.with_pre(true);
        }
        ctxb.set_scalable_context(&mut g.frames, SID, ce).unwrap();
        let ctx = ctxb.root();
        let pasid_dir = pasids.dir();
        g.set_root(ctxb.rtaddr());

        let hd = HostIommuDevice::query(be, "0000:01:00.0", dev, parent).unwrap();
        binder.register(BDF, hd, PciTopology::default()).unwrap();
        Self {
            g,
            sim,
            ioas,
            binder,
            events,
            dev,
            parent,
            ctx,
            pasid_dir,
            pe0,
            fs_root: fs.root(),
        }
    }

    pub fn fs(&self) -> PageTableBuilder<'_, Mem> {
        PageTableBuilder::at(
            &self.g.mem,
            self.fs_root,
            PageTableFormat::FirstStage { levels: 4 },
        )
    }

    /// A new first-stage table with `iova -> gpa` (4 KiB, writable).
    pub fn new_fs_table(&mut self, iova: u64, gpa: u64, writable: bool) -> u64 {
        let mem = self.g.mem.clone();
        let mut fs = PageTableBuilder::new(
            &mem,
            &mut self.g.frames,
            PageTableFormat::FirstStage { levels: 4 },
        )
        .unwrap();
        fs.map(
            &mut self.g.frames,
            iova,
            gpa,
            PageSize::Size4K,
            true,
            writable,
        )
        .unwrap();
        fs.root()
    }

    /// Writes PASID entry `pasid` in the guest's tables (no invalidation).
    pub fn write_pasid_entry(&mut self, pasid: u32, pe: PasidEntry) -> u64 {
        let mem = self.g.mem.clone();
        pasid_builder_at(&mem, self.pasid_dir)
            .set_entry(&mut self.g.frames, pasid, pe)
            .unwrap()
    }

    pub fn dma(&self, iova: u64, access: AccessKind) -> Result<HostTranslation, HostFault> {
        self.sim.dma_translate(self.dev, None, iova, access)
    }

    /// The binding of the guest's PASID-table index `pasid` (0: requests without PASID).
    pub fn binding(&self, pasid: u32) -> Option<BindingInfo> {
        self.binder
            .bindings()
            .into_iter()
            .find(|b| b.bdf == BDF && b.pasid == Pasid::from_table_index(pasid))
    }

    pub fn nested_hwpt(&self) -> Option<HwptId> {
        match self.binding(0)?.host {
            HostAttachment::Nested(h) => Some(h),
            _ => None,
        }
    }

    /// Every HWPT the host holds is needed by a binding or known as an orphan; every
    /// attachment is what the binder believes.
    pub fn check_host_matches_binder(&self) {
        check_host_matches_binder(&self.sim, &self.binder, &[(BDF, self.dev, self.parent)]);
    }
}

/// Re-opens an existing PASID directory (one 4 KiB page, PDTS 0).
pub fn pasid_builder_at(mem: &Mem, dir: u64) -> PasidTablesBuilder<'_, Mem> {
    PasidTablesBuilder::at(mem, dir, 0)
}

/// The invariant of the binder: `sim` holds exactly the HWPTs the bindings of its `devices`
/// need (plus the orphans the binder knows and retries), and every attachment is the one the
/// binder recorded. `devices` are every device registered (or once registered) on `sim`:
/// (guest BDF, iommufd device, default HWPT).
pub fn check_host_matches_binder(
    sim: &SimHostIommu<Mem>,
    binder: &NestedBinder<Mem>,
    devices: &[(Bdf, DeviceId, HwptId)],
) {
    use std::collections::{BTreeMap, BTreeSet};
    let on_sim = |bdf: Bdf| devices.iter().any(|&(b, _, _)| b == bdf);
    let bindings: Vec<BindingInfo> = binder
        .bindings()
        .into_iter()
        .filter(|b| on_sim(b.bdf))
        .collect();
    let mut needed: BTreeSet<HwptId> = bindings
        .iter()
        .filter_map(|b| match b.host {
            HostAttachment::Nested(h) => Some(h),
            _ => None,
        })
        .collect();
    needed.extend(
        binder
            .orphans()
            .into_iter()
            .filter(|o| on_sim(o.bdf))
            .map(|o| o.hwpt),
    );
    let held: BTreeSet<HwptId> = sim
        .hwpts()
        .into_iter()
        .filter(|h| matches!(h.kind, SimHwptKind::Nested { .. }))
        .map(|h| h.id)
        .collect();
    assert_eq!(
        held, needed,
        "nested HWPTs on the host vs. bindings + orphans"
    );
    for &(_, dev, parent) in devices {
        let want: BTreeMap<Option<Pasid>, HwptId> = bindings
            .iter()
            .filter(|b| b.dev_id == dev)
            .filter_map(|b| match b.host {
                HostAttachment::Parent => Some((b.pasid, parent)),
                HostAttachment::Nested(h) => Some((b.pasid, h)),
                HostAttachment::Blocked => None,
            })
            .collect();
        if bindings.iter().any(|b| b.dev_id == dev) {
            assert_eq!(sim.attachments(dev), want, "attachments of device {dev}");
        }
    }
}

impl Rig {
    /// The guest driver's probe of another device at `bdf`: a scalable context entry (PASIDs
    /// enabled if the unit has them, PRE if it has page requests) over a fresh PASID directory holding `entries`, written
    /// straight into the rig's root table (no invalidation). Returns the PASID directory.
    pub fn program_device(&mut self, bdf: Bdf, entries: &[(u32, PasidEntry)]) -> u64 {
        let mem = self.g.mem.clone();
        let mut pasids = PasidTablesBuilder::new(&mem, &mut self.g.frames, 0).unwrap();
        for &(pasid, pe) in entries {
            pasids.set_entry(&mut self.g.frames, pasid, pe).unwrap();
        }
        let mut ce = pasids.context_entry();
        if self.g.unit.config().pasid_bits > 0 {
            ce = ce.with_paside(true);
        }
        // PRE as in `build` (Linux sets it when it enables PRI for the device).
        if self.g.unit.config().page_requests {
            ce = ce.with_pre(true);
        }
        // Scalable root entry: the lower context table (devfn < 0x80) of the bus.
        assert!(bdf.devfn < 0x80, "lower context table only");
        let slot = self.ctx + u64::from(bdf.bus) * 16;
        let mut table = mem.read_u64(slot).unwrap() & !0xfff;
        if mem.read_u64(slot).unwrap() & 1 == 0 {
            table = self.g.frames.alloc(&mem, 1).unwrap();
            mem.write_u64(slot, table | 1).unwrap();
        }
        mem.write_words(table + u64::from(bdf.devfn) * 32, &ce.0)
            .unwrap();
        pasids.dir()
    }

    /// A second PRI-capable passthrough device at `bdf` on the rig's host IOMMU (the same
    /// iommufd), registered with the binder and probed by the guest: requests without PASID
    /// go through a first-stage table of its own (domain `did`) mapping `iova` to `gpa`, and
    /// the context cache is invalidated globally. Returns its iommufd device ID.
    pub fn plug_pri_device(&mut self, bdf: Bdf, iova: u64, gpa: u64, did: u16) -> DeviceId {
        let (dev, parent) = self
            .sim
            .vfio_bind_default(self.ioas, self.binder.viommu_flags())
            .unwrap();
        self.sim.set_device_pri(dev, true);
        let name = format!("0000:{bdf}");
        let hd = HostIommuDevice::query(self.sim.clone(), &name, dev, parent).unwrap();
        self.binder
            .register(bdf, hd.with_pri(true), PciTopology::default())
            .unwrap();
        let root = self.new_fs_table(iova, gpa, true);
        self.program_device(bdf, &[(0, PasidEntry::first_stage(root, false, did, 2))]);
        self.g.submit(&[context_cache(
            vtd_regs::inv::ContextCacheGranularity::Global,
        )]);
        dev
    }

    /// Clears the context entry of `bdf` (the guest driver's release), no invalidation.
    pub fn clear_context(&self, bdf: Bdf) {
        let mem = &self.g.mem;
        let table = mem.read_u64(self.ctx + u64::from(bdf.bus) * 16).unwrap() & !0xfff;
        mem.write_words(table + u64::from(bdf.devfn) * 32, &[0u64; 4])
            .unwrap();
    }
}

/// Another host IOMMU (another iommufd) over the same guest RAM, placed at `host_base`, with an
/// IOAS mapping all of guest RAM.
pub fn second_host(
    g: &Guest,
    info: HostHwInfo,
    host_base: u64,
) -> (Arc<SimHostIommu<Mem>>, IoasId) {
    let host = HostMemory::new().with_region(host_base, RAM_MB << 20, g.mem.clone(), 0);
    let sim = Arc::new(SimHostIommu::new(info, host));
    let ioas = sim.alloc_ioas();
    sim.ioas_map(ioas, 0, RAM_MB << 20, host_base, true)
        .unwrap();
    (sim, ioas)
}

/// First stage plus the guest's page request queue (ECAP.PRS needs device-iotlb).
pub const FLTS_PRQ: &str = "x-scalable-mode=on,x-flts=on,device-iotlb=on,x-vtd-page-requests=on";

/// A [`FLTS_PRQ`] rig whose device is re-registered as having ATS and PRI (and has PRI on the
/// simulated host), its host calls going through `backend` (which may wrap the simulator);
/// translation on, the guest's page request queue not set up yet, the events taken.
pub fn pri_device_rig_on(
    backend: impl FnOnce(Arc<SimHostIommu<Mem>>, &Guest) -> Arc<dyn HostIommuBackend>,
) -> Rig {
    let cfg = VtdConfig::from_qemu_props(FLTS_PRQ).unwrap();
    let info = host_info_for(&cfg);
    let mut rig = Rig::build(cfg, info, None, backend);
    rig.g.set_translation(true);
    rig.sim.set_device_pri(rig.dev, true);
    let host = rig.binder.unregister(BDF).unwrap();
    rig.binder
        .register(BDF, host.with_pri(true), PciTopology::default())
        .unwrap();
    rig.events.take();
    rig
}

/// The calls a test backend wrapping the simulator (a `sim` field) passes through unchanged:
/// everything but `name`, `invalidate` and the fault-queue and dirty-tracking calls, which
/// each wrapper states itself.
macro_rules! sim_passthrough {
    () => {
        fn get_hw_info(&self, dev: DeviceId) -> Result<HostHwInfo, BackendError> {
            self.sim.get_hw_info(dev)
        }
        fn alloc_hwpt(&self, dev: DeviceId, req: &HwptAlloc) -> Result<HwptId, BackendError> {
            self.sim.alloc_hwpt(dev, req)
        }
        fn attach(
            &self,
            dev: DeviceId,
            pasid: Option<Pasid>,
            hwpt: HwptId,
        ) -> Result<(), BackendError> {
            self.sim.attach(dev, pasid, hwpt)
        }
        fn detach(&self, dev: DeviceId, pasid: Option<Pasid>) -> Result<(), BackendError> {
            self.sim.detach(dev, pasid)
        }
        fn destroy(&self, hwpt: HwptId) -> Result<(), BackendError> {
            self.sim.destroy(hwpt)
        }
        fn read_faults(&self, max: usize) -> Result<Vec<HostFault>, BackendError> {
            self.sim.read_faults(max)
        }
        fn caps(&self) -> BackendCaps {
            self.sim.caps()
        }
    };
}

/// What a test does in place of the simulator's `invalidate`: gets the simulator, the HWPT
/// and the entries, returns what the backend reports.
pub type InvalidateFn = dyn Fn(&SimHostIommu<Mem>, HwptId, &[VtdS1Invalidation]) -> Result<u32, BackendError>
    + Send
    + Sync;

/// The simulator as a backend, every call passed through unchanged except `invalidate`, which
/// runs the test's [`InvalidateFn`] (to watch what the host sees when, or to break the
/// backend contract on purpose).
pub struct InvalidateHook {
    pub sim: Arc<SimHostIommu<Mem>>,
    pub invalidate: Box<InvalidateFn>,
}

impl HostIommuBackend for InvalidateHook {
    fn name(&self) -> &'static str {
        "invalidate-hook"
    }
    sim_passthrough!();
    fn invalidate(&self, hwpt: HwptId, entries: &[VtdS1Invalidation]) -> Result<u32, BackendError> {
        (self.invalidate)(&self.sim, hwpt, entries)
    }
    fn read_page_requests(&self, max: usize) -> Result<Vec<HostPageRequest>, BackendError> {
        self.sim.read_page_requests(max)
    }
    fn respond_page_request(
        &self,
        cookie: u32,
        code: PageResponseCode,
    ) -> Result<(), BackendError> {
        self.sim.respond_page_request(cookie, code)
    }
    fn set_dirty_tracking(&self, hwpt: HwptId, enable: bool) -> Result<(), BackendError> {
        self.sim.set_dirty_tracking(hwpt, enable)
    }
    fn read_and_clear_dirty(
        &self,
        hwpt: HwptId,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u64],
    ) -> Result<(), BackendError> {
        self.sim
            .read_and_clear_dirty(hwpt, iova, length, page_size, bitmap)
    }
}

/// A backend wrapping the simulator whose fault queue holds the page requests a test puts
/// there, and which records the answers it gets.
pub struct Flood {
    pub sim: Arc<SimHostIommu<Mem>>,
    pub queue: Mutex<Vec<HostPageRequest>>,
    pub answers: Mutex<Vec<(u32, PageResponseCode)>>,
}
impl Flood {
    /// A flood backend over `sim`, its queue empty.
    pub fn new(sim: Arc<SimHostIommu<Mem>>) -> Self {
        Self {
            sim,
            queue: Mutex::default(),
            answers: Mutex::default(),
        }
    }
}

impl HostIommuBackend for Flood {
    fn name(&self) -> &'static str {
        "flood"
    }
    sim_passthrough!();
    fn invalidate(&self, hwpt: HwptId, entries: &[VtdS1Invalidation]) -> Result<u32, BackendError> {
        self.sim.invalidate(hwpt, entries)
    }
    fn read_page_requests(&self, max: usize) -> Result<Vec<HostPageRequest>, BackendError> {
        let mut q = self.queue.lock().unwrap();
        let n = q.len().min(max);
        Ok(q.drain(..n).collect())
    }
    fn respond_page_request(
        &self,
        cookie: u32,
        code: PageResponseCode,
    ) -> Result<(), BackendError> {
        self.answers.lock().unwrap().push((cookie, code));
        Ok(())
    }
}

/// A single-page read request of `dev` (cookie: its group's).
pub fn page_request(
    dev: DeviceId,
    pasid: Option<Pasid>,
    prg_index: u16,
    last: bool,
    cookie: u32,
) -> HostPageRequest {
    HostPageRequest {
        dev_id: dev,
        pasid,
        addr: 0x5000_0000,
        prg_index,
        last_in_group: last,
        read: true,
        write: false,
        execute: false,
        privileged: false,
        cookie,
    }
}
