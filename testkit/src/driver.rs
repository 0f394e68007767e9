//! A guest driver that programs a unit the way Linux 6.12 does (drivers/iommu/intel/iommu.c,
//! dmar.c, irq_remapping.c), for the tests, the benchmarks and the demo.
//!
//! The sequences are Linux's, not a convenient shortcut, because the unit must work for the
//! driver guests actually run:
//!
//! - GCMD is written from a shadow of the persistent command bits (Linux's `iommu->gcmd`:
//!   TE, QIE, IRE, CFI), with a one-shot bit (SRTP, SIRTP) ORed in for one write only, and
//!   each write is followed by a wait for GSTS to follow (Linux's `IOMMU_WAIT_OP`, which panics
//!   the guest on a timeout; here a failed assertion).
//! - Queued invalidation is enabled as `dmar_enable_qi` does: IQT = 0, IQA = base | DW | QS,
//!   then QIE; descriptors are submitted as `qi_submit_sync` does: the descriptors, a wait
//!   descriptor with a status write, one IQT write, then a poll of the status while checking
//!   FSTS.IQE (`qi_check_fault`).
//!
//! - The page request queue is set up as `intel_iommu_enable_prq` does (the MSI programmed and
//!   unmasked, PQH = PQT = 0, PQA = base | order), drained as `prq_event_thread` does (clear
//!   PPR first, read PQT and PQH, handle head..tail, write PQH = tail, then clear PRO once the
//!   queue is empty) and answered as `intel_iommu_page_response` does (one page group response
//!   through `qi_submit_sync`), all from Linux drivers/iommu/intel/prq.c.
//!
//! Registers are named by `vtd_regs::regs::offset` and their fields by the typed registers
//! (`Gcmd`, `Gsts`, `Iqa`, `Fsts`, `EventControl`), not by bit constants of their own.
//! The unit executes a doorbell synchronously, so each poll succeeds or fails on its first
//! read; a failure is reported, never waited for.

use std::collections::BTreeMap;
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd_core::{EventLog, RecordingSink, VtdUnit};
use vtd_regs::VtdConfig;
use vtd_regs::inv::PageGroupResponse;
use vtd_regs::inv::{
    ContextCacheGranularity, ContextCacheInv, DescWidth, InvDesc, IotlbGranularity, IotlbInv,
    PasidCacheGranularity, PasidCacheInv, PasidIotlbGranularity, PasidIotlbInv, StatusWrite,
    WaitInv,
};
use vtd_regs::prq::{
    PAGE_REQUEST_SIZE, PageRequestDescError, PageRequestDescriptor, Pqa, Prs, QUEUE_OFFSET_MASK,
    ResponseCode,
};
use vtd_regs::regs::{EventControl, Fsts, Gcmd, Gsts, Iqa, Iqercd, Irta, offset as reg};
use vtd_tables::GuestRam;
use vtd_tables::builder::{
    BuildError, ContextTablesBuilder, FrameAllocator, PageSize, PageTableBuilder, PageTableFormat,
    PasidTablesBuilder,
};
use vtd_tables::entries::{ContextEntry, PasidEntry};

/// Guest memory as the tests build it.
pub type Mem = GuestMemoryMmap<()>;
/// The unit over that memory.
pub type Unit = VtdUnit<Mem>;

/// Guest memory that counts the 8-byte words read from it: the unit of work the README's
/// Bounds table states (reads are counted, writes and compare-exchanges are not). Clones
/// share the memory and the count, so a test can hand one to the unit and read the count.
#[derive(Clone)]
pub struct CountingRam {
    inner: Mem,
    words_read: Arc<std::sync::atomic::AtomicU64>,
}

impl CountingRam {
    /// `bytes` of RAM from address 0.
    pub fn new(bytes: usize) -> Self {
        Self {
            inner: Mem::from_ranges(&[(GuestAddress(0), bytes)]).expect("guest RAM"),
            words_read: Arc::default(),
        }
    }

    /// Words read since this memory was made.
    pub fn words_read(&self) -> u64 {
        self.words_read.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl GuestRam for CountingRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), vtd_tables::MemError> {
        self.words_read.fetch_add(
            buf.len().div_ceil(8) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.inner.read(gpa, buf)
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), vtd_tables::MemError> {
        self.inner.write(gpa, buf)
    }

    fn compare_exchange_u64(
        &self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, vtd_tables::MemError> {
        self.inner.compare_exchange_u64(gpa, current, new)
    }
}

/// Where [`Guest::with_config`] puts table frames: from 16 MiB up to 32 MiB, so tests can use
/// the first 16 MiB and everything above 32 MiB for data of their own.
const FRAMES: (u64, u64) = (0x100_0000, 0x200_0000);
/// Where [`Guest::with_memory`] puts table frames: 16 MiB to 48 MiB (room for many domains).
const FRAMES_LARGE: (u64, u64) = (0x100_0000, 0x300_0000);

/// The persistent GCMD commands: Linux keeps them in its shadow; the others are one-shot.
const PERSISTENT: Gcmd = Gcmd::new()
    .with_te(true)
    .with_qie(true)
    .with_ire(true)
    .with_cfi(true)
    .with_eafl(true);

/// The invalidation queue as the driver set it up.
#[derive(Clone, Debug)]
pub struct Queue {
    /// Queue base (IQA).
    pub base: u64,
    /// 256-bit descriptors (IQA.DW).
    pub wide: bool,
    /// Descriptors the queue holds.
    pub count: u32,
    /// Next free slot (the driver's copy of IQT, in descriptors).
    pub tail: u32,
    /// The wait descriptors' status dword.
    pub status: u64,
    /// The last status value a wait wrote (Linux uses a per-slot status; one sequence number
    /// serves the same purpose: each wait writes a value no earlier wait wrote).
    pub seq: u32,
}

impl Queue {
    fn width(&self) -> DescWidth {
        if self.wide {
            DescWidth::Bits256
        } else {
            DescWidth::Bits128
        }
    }

    fn descriptor_size(&self) -> u64 {
        if self.wide { 32 } else { 16 }
    }
}

/// Why a synchronous submission did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueStall {
    /// FSTS.IQE: the queue stopped on a descriptor (Linux's `qi_check_fault` sees this).
    Error {
        /// IQERCD.IQEI.
        iqei: u8,
        /// IQH: the slot of the offending descriptor.
        head: u64,
    },
    /// The wait's status was not written and no error was reported.
    StatusNotWritten,
}

/// The page request queue as the driver set it up.
#[derive(Clone, Copy, Debug)]
pub struct PageRequestQueue {
    /// Queue base (PQA).
    pub base: u64,
    /// Descriptors the queue holds.
    pub count: u32,
}

/// What one run of the page request handler found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageRequestBatch {
    /// The descriptors from PQH to PQT, in order (a descriptor that does not decode is kept
    /// as its error: Linux would log it as an invalid page request).
    pub requests: Vec<Result<PageRequestDescriptor, PageRequestDescError>>,
    /// PRS.PRO was set, and cleared because the queue was empty afterwards.
    pub overflow_cleared: bool,
}

/// A guest with its RAM, the unit, an event log subscribed first, and its driver state.
///
/// Generic over the guest memory type so a VMM-like user (the demo) can run the same driver
/// over memory with a dirty bitmap (`GuestMemoryMmap<AtomicBitmap>`); the tests use [`Mem`].
pub struct Guest<M: GuestRam = Mem> {
    /// Guest RAM.
    pub mem: M,
    /// The unit.
    pub unit: Arc<VtdUnit<M>>,
    /// The unit's interrupt sink (fault and completion MSIs).
    pub sink: Arc<RecordingSink>,
    /// Every event the unit published, from creation on.
    pub log: Arc<EventLog>,
    /// Where table frames come from.
    pub frames: FrameAllocator,
    /// Linux's shadow of the persistent GCMD bits.
    pub gcmd: Gcmd,
    /// The invalidation queue, once enabled.
    pub queue: Option<Queue>,
    /// The page request queue, once enabled.
    pub prq: Option<PageRequestQueue>,
}

impl<M: GuestRam> std::fmt::Debug for Guest<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("gcmd", &self.gcmd)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Guest<Mem> {
    /// A guest of `ram_mb` MiB with a unit configured by QEMU property syntax.
    pub fn new(props: &str, ram_mb: u64) -> Self {
        let cfg = VtdConfig::from_qemu_props(props).expect("valid intel-iommu properties");
        Self::with_config(cfg, ram_mb)
    }

    /// A guest of `ram_mb` MiB (at least 32) with a unit of configuration `cfg`; table frames
    /// come from 16..32 MiB.
    pub fn with_config(cfg: VtdConfig, ram_mb: u64) -> Self {
        let mem: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (ram_mb << 20) as usize)])
            .expect("guest RAM");
        Self::build(cfg, mem, FRAMES)
    }

    /// A guest over existing memory (at least 48 MiB from 0; a VMM test maps it elsewhere on
    /// the host); table frames come from 16..48 MiB.
    pub fn with_memory(cfg: VtdConfig, mem: Mem) -> Self {
        Self::build(cfg, mem, FRAMES_LARGE)
    }

    /// [`wait_descriptor`], as the tests spell it (`Guest::wait_descriptor`).
    pub fn wait_descriptor(status: u64, data: u32) -> InvDesc {
        wait_descriptor(status, data)
    }

    /// [`page_group_response`], as the tests spell it (`Guest::page_group_response`).
    pub fn page_group_response(req: &PageRequestDescriptor, code: ResponseCode) -> InvDesc {
        page_group_response(req, code)
    }
}

impl<M: GuestRam + Clone + Send + Sync> Guest<M> {
    /// A guest over existing memory of any type (at least 48 MiB from 0); table frames come
    /// from 16..48 MiB, as with [`Guest::with_memory`].
    pub fn over_memory(cfg: VtdConfig, mem: M) -> Self {
        Self::build(cfg, mem, FRAMES_LARGE)
    }

    fn build(cfg: VtdConfig, mem: M, frames: (u64, u64)) -> Self {
        let sink = Arc::new(RecordingSink::default());
        let unit = Arc::new(VtdUnit::new(cfg, mem.clone(), sink.clone()).expect("valid config"));
        let log = Arc::new(EventLog::default());
        unit.subscribe(log.clone());
        Self {
            mem,
            unit,
            sink,
            log,
            frames: FrameAllocator::new(frames.0, frames.1),
            gcmd: Gcmd::new(),
            queue: None,
            prq: None,
        }
    }

    /// 32-bit MMIO read.
    pub fn r32(&self, off: u64) -> u32 {
        self.unit.read(off, 4) as u32
    }
    /// 64-bit MMIO read.
    pub fn r64(&self, off: u64) -> u64 {
        self.unit.read(off, 8)
    }
    /// 32-bit MMIO write.
    pub fn w32(&self, off: u64, v: u32) {
        self.unit.write(off, 4, v as u64)
    }
    /// 64-bit MMIO write.
    pub fn w64(&self, off: u64, v: u64) {
        self.unit.write(off, 8, v)
    }

    /// GSTS, typed.
    pub fn gsts(&self) -> Gsts {
        Gsts::from_bits(self.r32(reg::GSTS))
    }

    /// FSTS, typed.
    pub fn fsts(&self) -> Fsts {
        Fsts::from_bits(self.r32(reg::FSTS))
    }

    /// Issues the command bits of `cmd` the Linux way and checks that GSTS reports `on` for
    /// each (GSTS bits sit where their GCMD bits are). Persistent bits (TE, QIE, IRE, CFI,
    /// EAFL) are set or cleared in the shadow, which is written whole; one-shot bits (SRTP,
    /// SIRTP, SFL, WBF) are ORed into one write of the shadow.
    pub fn command(&mut self, cmd: Gcmd, on: bool) {
        let bits = cmd.into_bits();
        let persistent = bits & PERSISTENT.into_bits();
        let one_shot = bits & !PERSISTENT.into_bits();
        let mut shadow = self.gcmd.into_bits();
        if persistent != 0 {
            shadow = if on {
                shadow | persistent
            } else {
                shadow & !persistent
            };
            self.gcmd = Gcmd::from_bits(shadow);
        }
        self.w32(reg::GCMD, shadow | one_shot);
        let gsts = self.r32(reg::GSTS);
        let want = if on { bits } else { 0 };
        assert_eq!(
            gsts & bits,
            want,
            "GSTS {gsts:#x} after command {bits:#x} (on = {on})"
        );
    }

    /// RTADDR, then SRTP (Linux `iommu_set_root_entry`).
    pub fn set_root(&mut self, rtaddr: u64) {
        self.w64(reg::RTADDR, rtaddr);
        self.command(Gcmd::new().with_srtp(true), true);
    }

    /// TE on (Linux `iommu_enable_translation`).
    pub fn enable_translation(&mut self) {
        self.set_translation(true);
    }

    /// TE on or off (Linux `iommu_enable_translation` / `iommu_disable_translation`), and the
    /// unit agrees.
    pub fn set_translation(&mut self, on: bool) {
        self.command(Gcmd::new().with_te(true), on);
        assert_eq!(self.unit.translation_enabled(), on);
    }

    /// SIRTP: latches IRTA (Linux `iommu_set_irq_remapping`, after it wrote IRTA).
    pub fn latch_interrupt_table(&mut self) {
        self.command(Gcmd::new().with_sirtp(true), true);
    }

    /// IRTA = `irta`, then SIRTP.
    pub fn set_interrupt_table(&mut self, irta: Irta) {
        self.w64(reg::IRTA, irta.into_bits());
        self.latch_interrupt_table();
    }

    /// IRE on or off (Linux `iommu_enable_irq_remapping` / `iommu_disable_irq_remapping`).
    pub fn set_interrupt_remapping(&mut self, on: bool) {
        self.command(Gcmd::new().with_ire(true), on);
    }

    /// CFI on or off (Linux sets it when x2APIC is off and compatibility interrupts are
    /// allowed, `iommu_set_irq_remapping`).
    pub fn set_compat_format(&mut self, on: bool) {
        self.command(Gcmd::new().with_cfi(true), on);
    }

    /// QIE on or off as a bare command (Linux `__dmar_enable_qi` / `dmar_disable_qi` after
    /// the queue drained); [`Guest::enable_qi`] sets the queue up first.
    pub fn set_queued_invalidation(&mut self, on: bool) {
        self.command(Gcmd::new().with_qie(true), on);
    }

    /// Legacy tables for `sid` in domain `did`: a second-stage table of `levels` levels (AW =
    /// levels - 2) mapping the 4 KiB page `iova` to `gpa` read-write, the root latched and
    /// translation on. Returns the table's root for `PageTableBuilder::at`.
    pub fn legacy_one_page(&mut self, sid: u16, did: u16, levels: u8, iova: u64, gpa: u64) -> u64 {
        let mem = self.mem.clone();
        let mut ctx = ContextTablesBuilder::new(&mem, &mut self.frames, false).expect("frames");
        let format = PageTableFormat::SecondStage { levels };
        let mut pt = PageTableBuilder::new(&mem, &mut self.frames, format).expect("frames");
        pt.map(&mut self.frames, iova, gpa, PageSize::Size4K, true, true)
            .expect("map");
        let entry = ContextEntry::new(pt.root(), levels - 2, did);
        ctx.set_legacy_context(&mut self.frames, sid, entry)
            .expect("context entry");
        self.set_root(ctx.rtaddr());
        self.enable_translation();
        pt.root()
    }

    /// As Linux 6.12 `dmar_enable_qi`: a queue of QS = 1 (two pages: 512 128-bit or 256
    /// 256-bit descriptors), IQT = 0, IQA = base | DW | QS, QIE.
    pub fn enable_qi(&mut self, wide: bool) {
        let base = self.frames.alloc(&self.mem, 2).expect("frames");
        let status = self.frames.alloc(&self.mem, 1).expect("frames");
        let iqa = Iqa::new().with_qs(1).with_dw(wide).with_iqa(base >> 12);
        self.w32(reg::IQT, 0);
        self.w64(reg::IQA, iqa.into_bits());
        self.set_queued_invalidation(true);
        self.queue = Some(Queue {
            base,
            wide,
            count: iqa.descriptor_count(),
            tail: 0,
            status,
            seq: 0,
        });
    }

    /// Unmasks the fault event with a recognisable MSI (FEDATA 0x4321 to 0xfee00000).
    pub fn enable_fault_msi(&self) {
        self.w32(reg::FEDATA, 0x4321);
        self.w32(reg::FEADDR, 0xfee0_0000);
        self.w32(reg::FECTL, EventControl::new().into_bits());
    }

    /// As Linux 6.12 `intel_iommu_enable_prq`: a queue of 2^`order` pages (Linux: PRQ_ORDER =
    /// 4), its MSI programmed (PEDATA 0x4322 to 0xfee00000) and unmasked as
    /// `request_threaded_irq` does through dmar.c's MSI ops, then PQH = PQT = 0 and
    /// PQA = base | order.
    pub fn enable_prq(&mut self, order: u8) {
        let base = self.frames.alloc(&self.mem, 1 << order).expect("frames");
        self.w32(reg::PEDATA, 0x4322);
        self.w32(reg::PEADDR, 0xfee0_0000);
        self.w32(reg::PECTL, EventControl::new().into_bits());
        self.w64(reg::PQH, 0);
        self.w64(reg::PQT, 0);
        let pqa = Pqa::new().with_pqs(order).with_pqa(base >> 12);
        self.w64(reg::PQA, pqa.into_bits());
        self.prq = Some(PageRequestQueue {
            base,
            count: pqa.descriptor_count(),
        });
    }

    /// One run of Linux's `prq_event_thread`: PRS.PPR cleared first (so a request that comes
    /// later raises a new event), PQT and PQH read, the descriptors between them read, PQH =
    /// PQT written; then, if PRS.PRO is set and the queue is empty, PRO cleared.
    pub fn read_page_requests(&mut self) -> PageRequestBatch {
        let q = self.prq.expect("page request queue enabled");
        self.w32(reg::PRS, Prs::new().with_ppr(true).into_bits());
        let ring = q.count as u64 * PAGE_REQUEST_SIZE;
        // Linux's PRQ_RING_MASK: the queue's size less one descriptor.
        let ring_mask = ring - PAGE_REQUEST_SIZE;
        let tail = self.r64(reg::PQT) & ring_mask;
        let mut head = self.r64(reg::PQH) & ring_mask;
        let mut batch = PageRequestBatch::default();
        // At most one lap: the unit never fills the last slot, so head meets tail before.
        for _ in 0..q.count {
            if head == tail {
                break;
            }
            let words = self
                .mem
                .read_words::<4>(q.base + head)
                .expect("queue in RAM");
            batch.requests.push(PageRequestDescriptor::decode(words));
            head = (head + PAGE_REQUEST_SIZE) % ring;
        }
        self.w64(reg::PQH, tail);
        if Prs::from_bits(self.r32(reg::PRS)).pro() {
            let head = self.r64(reg::PQH) & QUEUE_OFFSET_MASK;
            let tail = self.r64(reg::PQT) & QUEUE_OFFSET_MASK;
            if head == tail {
                self.w32(reg::PRS, Prs::new().with_pro(true).into_bits());
                batch.overflow_cleared = true;
            }
        }
        batch
    }

    /// Answers the group `req` ends, as `intel_iommu_page_response` does: one page group
    /// response submitted with `qi_submit_sync` (a wait descriptor behind it).
    pub fn respond(&mut self, req: &PageRequestDescriptor, code: ResponseCode) {
        self.submit(&[page_group_response(req, code)]);
    }

    /// A scalable-mode device `sid` with a pass-through PASID entry for PASID 0 in domain
    /// `did`, its context entry's PRE = `pre` (Linux sets PRE when it enables PRI for the
    /// device, `context_entry_set_pre` in drivers/iommu/intel/pasid.c), the root latched, the
    /// caches invalidated and translation on. Needs queued invalidation enabled.
    pub fn scalable_device(&mut self, sid: u16, did: u16, pre: bool) {
        let mem = self.mem.clone();
        let mut ctx = ContextTablesBuilder::new(&mem, &mut self.frames, true).expect("frames");
        let mut pasids = PasidTablesBuilder::new(&mem, &mut self.frames, 0).expect("frames");
        pasids
            .set_entry(&mut self.frames, 0, PasidEntry::pass_through(did, 2))
            .expect("PASID entry");
        let entry = pasids.context_entry().with_pre(pre);
        ctx.set_scalable_context(&mut self.frames, sid, entry)
            .expect("context entry");
        self.set_root(ctx.rtaddr());
        self.submit(&[
            context_cache(ContextCacheGranularity::Global),
            iotlb(IotlbGranularity::Global),
        ]);
        self.enable_translation();
    }

    /// Fault-recording register `i` (at CAP.FRO): (low, high) qwords.
    pub fn frcd(&self, i: u64) -> (u64, u64) {
        let base = self.unit.config().cap().fault_recording_offset() + 16 * i;
        (self.r64(base), self.r64(base + 8))
    }

    /// Submits descriptors plus a wait with status write, as `qi_submit_sync` does, and
    /// returns once the status was written, or why not.
    pub fn try_submit(&mut self, descs: &[InvDesc]) -> Result<(), QueueStall> {
        let q = self.queue.as_mut().expect("QI enabled");
        q.seq = q.seq.wrapping_add(1);
        let (status, seq) = (q.status, q.seq);
        let mut all = descs.to_vec();
        all.push(wait_descriptor(status, seq));
        self.submit_raw(&all);
        let fsts = self.fsts();
        if fsts.iqe() {
            return Err(QueueStall::Error {
                iqei: Iqercd::from_bits(self.r64(reg::IQERCD)).iqei(),
                head: self.r64(reg::IQH),
            });
        }
        match self.mem.read_u64(status) {
            Ok(v) if v as u32 == seq => Ok(()),
            _ => Err(QueueStall::StatusNotWritten),
        }
    }

    /// [`Guest::try_submit`], asserting that the wait's status was written and no queue error
    /// happened.
    pub fn submit(&mut self, descs: &[InvDesc]) {
        let status = self.queue.as_ref().expect("QI enabled").status;
        let result = self.try_submit(descs);
        let seq = self.queue.as_ref().expect("QI enabled").seq;
        assert_eq!(
            self.mem.read_u64(status).expect("status in RAM") as u32,
            seq,
            "wait status written ({result:?})"
        );
        assert!(!self.fsts().iqe(), "no IQE ({result:?})");
    }

    /// Places descriptors at the tail and writes IQT, with no checks.
    pub fn submit_raw(&mut self, descs: &[InvDesc]) {
        for d in descs {
            self.place(d);
        }
        self.ring_doorbell();
    }

    /// Writes `desc` at the driver's tail and advances it, without telling the unit.
    pub fn place(&mut self, desc: &InvDesc) {
        let width = self.queue.as_ref().expect("QI enabled").width();
        let raw = desc
            .encode(width)
            .expect("descriptor encodes at the queue's width");
        self.place_words(raw.0);
    }

    /// Writes raw descriptor words at the driver's tail (the first two in a 128-bit queue) and
    /// advances it, without telling the unit: how tests put malformed descriptors in the queue.
    pub fn place_words(&mut self, words: [u64; 4]) {
        let q = self.queue.as_mut().expect("QI enabled");
        let size = q.descriptor_size();
        self.mem
            .write_words(q.base + q.tail as u64 * size, &words[..(size / 8) as usize])
            .expect("queue in RAM");
        q.tail = (q.tail + 1) % q.count;
    }

    /// Writes IQT with the driver's tail: the unit processes what was placed.
    pub fn ring_doorbell(&mut self) {
        let q = self.queue.as_ref().expect("QI enabled");
        self.w64(reg::IQT, q.tail as u64 * q.descriptor_size());
    }

    /// Scalable-mode bring-up as Linux 6.12 `init_dmars` does it on a unit with ECAP.SMTS:
    /// queued invalidation first (scalable mode has no register-based invalidation for PASID
    /// caches), then `iommu_set_root_entry` (RTADDR with TTM = 01, SRTP, and unless
    /// CAP.ESRTPS the global context-cache, PASID-cache and IOTLB flushes it issues), then
    /// the fault event unmasked (`dmar_set_interrupt`). Translation stays off: Linux enables it
    /// (`iommu_enable_translation`, at the end of `intel_iommu_init`) only after the devices
    /// found at boot got their default domains, so call [`Guest::enable_translation`] after
    /// attaching them. Returns the driver's scalable-mode bookkeeping the device functions
    /// below take.
    pub fn enable_scalable_mode(&mut self) -> Result<ScalableTables, BuildError> {
        if self.queue.is_none() {
            self.enable_qi(true);
        }
        let root = self.frames.alloc(&self.mem, 1)?;
        self.w64(reg::RTADDR, root | 1 << 10);
        self.command(Gcmd::new().with_srtp(true), true);
        if !self.unit.config().esrtps {
            self.submit(&[
                context_cache(ContextCacheGranularity::Global),
                pasid_cache(0, PasidCacheGranularity::Global),
                iotlb(IotlbGranularity::Global),
            ]);
        }
        self.enable_fault_msi();
        Ok(ScalableTables {
            root,
            pasid_dirs: BTreeMap::new(),
            retired_dirs: BTreeMap::new(),
        })
    }

    /// The scalable context-table slot of `sid`, creating its context table (Linux
    /// `iommu_context_addr` with `alloc = 1`): the root entry's lower half covers devfn
    /// 0..=127, the upper half 128..=255, 128 256-bit entries per table (spec 9.2, 9.4).
    fn scalable_context_slot(&mut self, sm: &ScalableTables, sid: u16) -> Result<u64, BuildError> {
        let root = sm.root;
        let devfn = sid as u8;
        let slot = root + u64::from(sid >> 8) * 16 + if devfn >= 0x80 { 8 } else { 0 };
        let raw = self.mem.read_u64(slot)?;
        let table = if raw & 1 != 0 {
            raw & !0xfff
        } else {
            let t = self.frames.alloc(&self.mem, 1)?;
            self.mem.write_u64(slot, t | 1)?;
            t
        };
        Ok(table + u64::from(devfn & 0x7f) * 32)
    }

    /// Gives `sid` its PASID directory and a present scalable context entry, once (Linux
    /// drivers/iommu/intel/pasid.c `device_pasid_table_setup`: RID_PASID 0, PASIDE when the
    /// device can use PASIDs, PRE when it can issue page requests). The entry goes from not
    /// present to present, so as Linux only a caching-mode unit gets flushes (device-selective
    /// context cache, global PASID cache, global IOTLB). Returns the directory.
    pub fn setup_device(
        &mut self,
        sm: &mut ScalableTables,
        sid: u16,
        paside: bool,
        pre: bool,
    ) -> Result<u64, BuildError> {
        if let Some(&dir) = sm.pasid_dirs.get(&sid) {
            return Ok(dir);
        }
        let slot = self.scalable_context_slot(sm, sid)?;
        // A directory left by a released device is reused: its PASID entries were torn
        // down before the release, and reuse keeps a plug/unplug loop's frames bounded.
        let pasids = match sm.retired_dirs.remove(&sid) {
            Some(dir) => PasidTablesBuilder::at(&self.mem, dir, DEVICE_PDTS),
            None => PasidTablesBuilder::new(&self.mem, &mut self.frames, DEVICE_PDTS)?,
        };
        let dir = pasids.dir();
        let entry = pasids
            .context_entry()
            .with_paside(paside)
            .with_pre(pre)
            .with_rid_pasid(0);
        self.mem.write_words(slot, &entry.0)?;
        sm.pasid_dirs.insert(sid, dir);
        if self.unit.config().caching_mode {
            self.submit(&[
                context_cache(ContextCacheGranularity::Device { did: 0, sid, fm: 0 }),
                pasid_cache(0, PasidCacheGranularity::Global),
                iotlb(IotlbGranularity::Global),
            ]);
        }
        Ok(dir)
    }

    /// A first-stage domain for (`sid`, `pasid`): a new 4-level first-stage table and the PASID
    /// entry Linux 6.12 writes for it (`intel_pasid_setup_first_level`: FSPTPTR, DID, AW,
    /// PGTT = 1), followed by `pasid_flush_caches` (PASID-selective PASID-cache and
    /// all-in-PASID PASID-IOTLB invalidation on a caching-mode unit; nothing else, since the
    /// entry was not present). The device must have been set up with [`Guest::setup_device`].
    pub fn attach_first_stage(
        &mut self,
        sm: &ScalableTables,
        sid: u16,
        pasid: u32,
        did: u16,
    ) -> Result<FirstStageDomain, BuildError> {
        let pt = PageTableBuilder::new(
            &self.mem,
            &mut self.frames,
            PageTableFormat::FirstStage { levels: 4 },
        )?;
        self.attach_first_stage_table(sm, sid, pasid, did, pt.root())
    }

    /// As [`Guest::attach_first_stage`], with an existing first-stage table: a domain that
    /// outlived a device (Linux keeps a domain while any device or the owner holds it) is
    /// attached again after the device comes back.
    pub fn attach_first_stage_table(
        &mut self,
        sm: &ScalableTables,
        sid: u16,
        pasid: u32,
        did: u16,
        root: u64,
    ) -> Result<FirstStageDomain, BuildError> {
        let dir = *sm
            .pasid_dirs
            .get(&sid)
            .expect("setup_device before attach_first_stage");
        let mut pasids = PasidTablesBuilder::at(&self.mem, dir, DEVICE_PDTS);
        // AW 2: Linux writes the unit's AGAW, 2 (48-bit) for the 4-level first-stage tables
        // it builds here.
        pasids.set_entry(
            &mut self.frames,
            pasid,
            PasidEntry::first_stage(root, false, did, 2),
        )?;
        if self.unit.config().caching_mode {
            self.submit(&[
                pasid_cache(did, PasidCacheGranularity::Pasid { pasid }),
                pasid_iotlb_all(did, pasid),
            ]);
        }
        Ok(FirstStageDomain {
            sid,
            pasid,
            did,
            root,
        })
    }

    /// Removes a PASID entry as Linux 6.12 `intel_pasid_tear_down_entry` does: clear it, then
    /// PASID-selective PASID-cache and all-in-PASID PASID-IOTLB invalidation (first-stage
    /// entry), with the wait of `qi_submit_sync`.
    pub fn detach_first_stage(
        &mut self,
        sm: &ScalableTables,
        domain: &FirstStageDomain,
    ) -> Result<(), BuildError> {
        let dir = *sm.pasid_dirs.get(&domain.sid).expect("device was set up");
        let mut pasids = PasidTablesBuilder::at(&self.mem, dir, DEVICE_PDTS);
        pasids.set_entry(&mut self.frames, domain.pasid, PasidEntry([0; 8]))?;
        self.submit(&[
            pasid_cache(
                domain.did,
                PasidCacheGranularity::Pasid {
                    pasid: domain.pasid,
                },
            ),
            pasid_iotlb_all(domain.did, domain.pasid),
        ]);
        Ok(())
    }

    /// Clears `sid`'s context entry (Linux `domain_context_clear_one` and
    /// `intel_context_flush_present`): device-selective context-cache invalidation, then for
    /// each domain the device used, domain-selective PASID-cache and IOTLB invalidation. The
    /// device's PASID directory is retired (Linux frees it in `intel_pasid_free_table`); a
    /// device set up again at the same requester ID gets it back, so the bump allocator's
    /// frames stay bounded over any number of unplugs and replugs. Its PASID entries must have
    /// been torn down ([`Guest::detach_first_stage`]) first.
    pub fn release_device(
        &mut self,
        sm: &mut ScalableTables,
        sid: u16,
        dids: &[u16],
    ) -> Result<(), BuildError> {
        let Some(dir) = sm.pasid_dirs.remove(&sid) else {
            return Ok(());
        };
        sm.retired_dirs.insert(sid, dir);
        let slot = self.scalable_context_slot(sm, sid)?;
        self.mem.write_words(slot, &[0; 4])?;
        let mut descs = vec![context_cache(ContextCacheGranularity::Device {
            did: dids.first().copied().unwrap_or(0),
            sid,
            fm: 0,
        })];
        for &did in dids {
            descs.push(pasid_cache(did, PasidCacheGranularity::Domain));
            descs.push(iotlb(IotlbGranularity::Domain { did }));
        }
        self.submit(&descs);
        Ok(())
    }

    /// Maps `iova` to `gpa` with a first-stage leaf of `size` (Linux `intel_iommu_map` through
    /// `__domain_mapping`). A not-present to present change needs no invalidation unless the
    /// unit is in caching mode (`intel_iommu_iotlb_sync_map`), which this driver then sends.
    pub fn fs_map(
        &mut self,
        domain: &FirstStageDomain,
        iova: u64,
        gpa: u64,
        size: PageSize,
        write: bool,
    ) -> Result<(), BuildError> {
        let mut pt = PageTableBuilder::at(
            &self.mem,
            domain.root,
            PageTableFormat::FirstStage { levels: 4 },
        );
        pt.map(&mut self.frames, iova, gpa, size, true, write)?;
        if self.unit.config().caching_mode {
            self.flush_range(domain, iova, size.bytes());
        }
        Ok(())
    }

    /// Clears the first-stage leaf of `iova` at `size` without any invalidation (the first half
    /// of an unmap; see [`Guest::fs_unmap_strict`] and [`Guest::fs_unmap_lazy`]). Returns
    /// whether a leaf was there.
    pub fn fs_clear(
        &mut self,
        domain: &FirstStageDomain,
        iova: u64,
        size: PageSize,
    ) -> Result<bool, BuildError> {
        let mut pt = PageTableBuilder::at(
            &self.mem,
            domain.root,
            PageTableFormat::FirstStage { levels: 4 },
        );
        pt.unmap(iova, size)
    }

    /// Clears the leaves of `size` covering `[iova, iova + len)` (`iova` aligned to `size`).
    fn fs_clear_range(
        &mut self,
        domain: &FirstStageDomain,
        iova: u64,
        len: u64,
        size: PageSize,
    ) -> Result<(), BuildError> {
        let mut at = iova;
        while at < iova.saturating_add(len) {
            self.fs_clear(domain, at, size)?;
            at += size.bytes();
        }
        Ok(())
    }

    /// Strict unmap (Linux's default `iommu.strict=1`: `iommu_unmap` then the IOTLB sync
    /// right away): the leaves of `size` covering `[iova, iova + len)` cleared, then one
    /// PASID-IOTLB invalidation of the range ([`Guest::flush_range`]) and a wait.
    pub fn fs_unmap_strict(
        &mut self,
        domain: &FirstStageDomain,
        iova: u64,
        len: u64,
        size: PageSize,
    ) -> Result<(), BuildError> {
        self.fs_clear_range(domain, iova, len, size)?;
        self.flush_range(domain, iova, len);
        Ok(())
    }

    /// Lazy unmap (Linux `iommu.strict=0`, the IOVA flush queue of drivers/iommu/dma-iommu.c):
    /// the leaves are cleared now and the range parked in `queue`; once the queue is full, one
    /// all-in-PASID PASID-IOTLB invalidation (`intel_flush_iotlb_all`) with a wait covers every
    /// parked range, and they are returned: only then may the caller reuse those IOVAs.
    pub fn fs_unmap_lazy(
        &mut self,
        domain: &FirstStageDomain,
        queue: &mut FlushQueue,
        iova: u64,
        len: u64,
        size: PageSize,
    ) -> Result<Vec<(u64, u64)>, BuildError> {
        self.fs_clear_range(domain, iova, len, size)?;
        queue.parked.push((iova, len));
        if queue.parked.len() >= queue.capacity {
            return Ok(self.flush_queue(domain, queue));
        }
        Ok(Vec::new())
    }

    /// Flushes a lazy-unmap queue now (Linux's flush-queue timer): one all-in-PASID
    /// PASID-IOTLB invalidation and a wait; returns the ranges that may be reused.
    pub fn flush_queue(
        &mut self,
        domain: &FirstStageDomain,
        queue: &mut FlushQueue,
    ) -> Vec<(u64, u64)> {
        if queue.parked.is_empty() {
            return Vec::new();
        }
        self.submit(&[pasid_iotlb_all(domain.did, domain.pasid)]);
        std::mem::take(&mut queue.parked)
    }

    /// PASID-IOTLB invalidation of `[iova, iova + len)` as Linux 6.12
    /// drivers/iommu/intel/cache.c `cache_tag_flush_range` computes it
    /// (`calculate_psi_aligned_address`: the smallest naturally aligned power-of-two block
    /// covering the range), then a wait.
    pub fn flush_range(&mut self, domain: &FirstStageDomain, iova: u64, len: u64) {
        let (addr, am) = psi_aligned(iova, len);
        let desc = if am >= 52 {
            pasid_iotlb_all(domain.did, domain.pasid)
        } else {
            pasid_iotlb_page(domain.did, domain.pasid, addr, am, false)
        };
        self.submit(&[desc]);
    }
}

/// The wait descriptor `qi_submit_sync` appends: status write of `data`, fence.
pub fn wait_descriptor(status: u64, data: u32) -> InvDesc {
    InvDesc::Wait(WaitInv {
        status_write: Some(StatusWrite { addr: status, data }),
        interrupt: false,
        fence: true,
        page_drain: false,
        ignored: Default::default(),
    })
}

/// The page group response Linux's `intel_iommu_page_response` builds for the group
/// `req` ends: requester, PASID (PP when the request had one), code, PRG index and LPIG.
pub fn page_group_response(req: &PageRequestDescriptor, code: ResponseCode) -> InvDesc {
    InvDesc::PageGroupResponse(PageGroupResponse {
        rid: req.rid,
        pasid: req.pasid,
        response_code: code.into_bits(),
        prg_index: req.prg_index,
        last_in_group: req.last_in_group,
        ignored: Default::default(),
    })
}

/// Page-selective-within-PASID PASID-IOTLB invalidation (Linux `qi_flush_piotlb`).
pub fn pasid_iotlb_page(did: u16, pasid: u32, addr: u64, am: u8, ih: bool) -> InvDesc {
    InvDesc::PasidIotlb(PasidIotlbInv {
        did,
        pasid,
        granularity: PasidIotlbGranularity::Page { addr, am, ih },
        ignored: Default::default(),
    })
}

/// All-in-PASID PASID-IOTLB invalidation.
pub fn pasid_iotlb_all(did: u16, pasid: u32) -> InvDesc {
    InvDesc::PasidIotlb(PasidIotlbInv {
        did,
        pasid,
        granularity: PasidIotlbGranularity::AllInPasid,
        ignored: Default::default(),
    })
}

/// PASID-cache invalidation (Linux `qi_flush_pasid_cache`).
pub fn pasid_cache(did: u16, granularity: PasidCacheGranularity) -> InvDesc {
    InvDesc::PasidCache(PasidCacheInv {
        did,
        granularity,
        ignored: Default::default(),
    })
}

/// Context-cache invalidation (Linux `qi_flush_context`).
pub fn context_cache(granularity: ContextCacheGranularity) -> InvDesc {
    InvDesc::ContextCache(ContextCacheInv {
        granularity,
        ignored: Default::default(),
    })
}

/// IOTLB invalidation without drains (Linux `qi_flush_iotlb` on a unit without DRD/DWD).
pub fn iotlb(granularity: IotlbGranularity) -> InvDesc {
    InvDesc::Iotlb(IotlbInv {
        granularity,
        drain_read: false,
        drain_write: false,
        ignored: Default::default(),
    })
}

/// PASID directory size the driver gives each device: PDTS 0, one 4 KiB directory of 128
/// entries, PASIDs 0..8191 (Linux sizes it from the device's PASID capability; no device this
/// driver serves uses more).
pub const DEVICE_PDTS: u8 = 0;

/// The driver's scalable-mode bookkeeping (Linux keeps it in `struct intel_iommu` and each
/// device's `device_domain_info`): the root table, each device's PASID directory, and the
/// directories of released devices kept for reuse. It lives beside [`Guest`] rather than in
/// it, so code that builds a `Guest` field by field (a migration test moving the driver's
/// state to a target) is not affected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalableTables {
    /// The scalable-mode root table.
    pub root: u64,
    /// Each device's PASID directory (Linux allocates one per device,
    /// drivers/iommu/intel/pasid.c `intel_pasid_alloc_table`).
    pub pasid_dirs: BTreeMap<u16, u64>,
    /// PASID directories of released devices, for reuse by the same requester ID.
    pub retired_dirs: BTreeMap<u16, u64>,
}

/// A first-stage domain attached to one requester and PASID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstStageDomain {
    /// Requester ID.
    pub sid: u16,
    /// PASID (0 = the RID_PASID requests without PASID use).
    pub pasid: u32,
    /// Domain ID.
    pub did: u16,
    /// First-stage table root (FSPTPTR).
    pub root: u64,
}

/// IOVAs unmapped lazily and not yet invalidated (Linux's per-domain IOVA flush queue).
#[derive(Clone, Debug)]
pub struct FlushQueue {
    parked: Vec<(u64, u64)>,
    capacity: usize,
}

impl FlushQueue {
    /// A queue flushed once it holds `capacity` ranges (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            parked: Vec::with_capacity(capacity),
            capacity,
        }
    }

    /// Ranges waiting for the invalidation.
    pub fn len(&self) -> usize {
        self.parked.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }
}

/// Linux 6.12 drivers/iommu/intel/cache.c `calculate_psi_aligned_address`: the address and
/// address mask (AM) of the smallest naturally aligned block of 4 KiB pages covering
/// `[start, start + len)`. An AM of 52 or more means "flush everything".
pub fn psi_aligned(start: u64, len: u64) -> (u64, u8) {
    let end = start.saturating_add(len.max(1) - 1);
    let pages = (end >> 12) - (start >> 12) + 1;
    let aligned = pages.next_power_of_two();
    let bitmask = aligned - 1;
    let mut mask = aligned.trailing_zeros();
    let pfn = start >> 12;
    if bitmask & pfn != 0 {
        let end_pfn = pfn + pages - 1;
        let shared = !(pfn ^ end_pfn) & !bitmask;
        mask = if shared != 0 {
            shared.trailing_zeros()
        } else {
            64
        };
    }
    if mask >= 52 {
        return (0, 64);
    }
    (start & !((4096u64 << mask) - 1), mask as u8)
}
