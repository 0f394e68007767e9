//! The remapping unit: register semantics, GCMD state machine, translation through the caches.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};

use vtd_regs::fault::FaultReason;
use vtd_regs::regs::{
    Ccmd, Gcmd, Gsts, IotlbReg, Iva, Rtaddr, TranslationTableMode, offset as reg, register_layout,
};
use vtd_regs::{ConfigError, VtdConfig};
use vtd_tables::GuestRam;
use vtd_tables::entries::{PasidEntry, ScalableContextEntry};
use vtd_tables::reserved::ReservedRules;
use vtd_tables::walk::{
    self, DeviceContext, DmaRequest, Fault, Perms, RootTable, StepFault, Translation,
    TranslationKind, WalkConfig,
};

use crate::cache::{CacheStats, ContextCache, Epoch, Iotlb, IotlbScope, PasidCache};
use crate::delivery::{Batch, Delivery, Tickets};
use crate::events::{EventBus, FaultDisposition, VtdEvent, VtdObserver};
use crate::faults::FaultState;
use crate::ir::IrTable;
use crate::irq::{InterruptSink, Msi};
use crate::regfile::RegisterFile;
use crate::sync::{Mutex, RwLock};

/// How many entries each translation cache of a unit holds (see [`VtdUnit::with_cache_capacity`]).
///
/// The defaults are large enough for a guest's working set and small enough to bound memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheCapacity {
    /// IOTLB entries.
    pub iotlb: usize,
    /// Context-cache entries (one per requester).
    pub context: usize,
    /// PASID-cache entries (one per requester and PASID).
    pub pasid: usize,
}

impl Default for CacheCapacity {
    fn default() -> Self {
        Self {
            // One device can keep 64 MiB of 4 KiB pages (a busy virtio ring and its
            // buffers) at 48 bytes an entry: 768 KiB per unit.
            iotlb: 16_384,
            context: 256,
            pasid: 1024,
        }
    }
}

/// The interrupt address range (spec 3.15): requests without PASID here are interrupts.
pub(crate) const INTERRUPT_RANGE: std::ops::RangeInclusive<u64> = walk::INTERRUPT_RANGE;

/// What identifies a [`WalkMemo`]: the unit (its IOTLB's process-unique id), the invalidation
/// epoch read before the entries were looked up, and the request's requester and PASID.
#[derive(Clone, Copy, PartialEq, Eq)]
struct WalkMemoKey {
    unit: u64,
    epoch: u64,
    sid: u16,
    pasid: Option<u32>,
}

/// The context entry and (scalable mode) the PASID and PASID entry the last miss of this
/// thread walked with.
///
/// A device's misses come one after another from the thread that emulates it, each asking
/// the context and PASID caches for the same entries; their lock and hash are a tenth of a
/// miss. The memo answers instead while the invalidation epoch is the one read before the
/// entries were taken from the caches: every invalidation (and SRTP, TE, reset) advances the
/// epoch before it removes anything, so a memo cannot outlive an invalidation of what it
/// holds, exactly like the caches' own fill rule. It holds only entries that validated.
#[derive(Clone, Copy)]
struct WalkMemo {
    key: WalkMemoKey,
    ctx: DeviceContext,
    pasid_entry: Option<(u32, PasidEntry)>,
}

thread_local! {
    static WALK_MEMO: Cell<Option<WalkMemo>> = const { Cell::new(None) };
}

/// Why a DMA translation did not produce an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The walk faulted (recorded or suppressed as the spec says).
    #[error("DMA remapping fault: {0:?}")]
    Fault(Fault),
    /// A write without PASID to 0xFEEx_xxxx: an interrupt message, to be sent through
    /// [`VtdUnit::remap_msi`] rather than written to memory (spec 3.15).
    #[error("write to the interrupt address range is an interrupt request")]
    InterruptRequest,
}

/// Counters the inspector and benchmarks read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnitStats {
    /// IOTLB.
    pub iotlb: CacheStats,
    /// Context cache.
    pub context_cache: CacheStats,
    /// PASID cache.
    pub pasid_cache: CacheStats,
    /// Descriptors the queue processed.
    pub descriptors: u64,
    /// DMA faults seen (recorded or not).
    pub dma_faults: u64,
    /// Interrupts remapped.
    pub interrupts_remapped: u64,
}

/// Architectural state saved for migration (QEMU's VMState carries the same: the register
/// image, queue head, next fault record; caches are not saved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitSnapshot {
    /// The 4 KiB register image.
    pub registers: Vec<u8>,
    /// Next fault-recording register to use.
    pub next_fault_record: u16,
    /// Latched root table (SRTP), as the raw RTADDR value, if latched.
    pub latched_rtaddr: Option<u64>,
    /// Latched interrupt-remapping table (SIRTP), as the raw IRTA value, if latched.
    pub latched_irta: Option<u64>,
}

/// State changed only under the unit's lock (the vCPU side).
pub(crate) struct State {
    pub(crate) regs: RegisterFile,
    pub(crate) faults: FaultState,
    pub(crate) root: Option<(RootTable, u64)>,
    pub(crate) ir: Option<(IrTable, u64)>,
    /// Events and MSIs produced under the lock, delivered after it is released.
    pub(crate) events: Vec<VtdEvent>,
    pub(crate) msis: Vec<Msi>,
    pub(crate) descriptors: u64,
    /// Places in the delivery order, taken under this lock (see [`crate::delivery`]).
    pub(crate) tickets: Tickets,
    /// A wait descriptor is at the head, held back until what precedes it was published; the
    /// thread releasing the lock re-runs the queue once it has published
    /// ([`VtdUnit::finish_write`]).
    pub(crate) wait_deferred: bool,
    /// For the wait held back at the queue head: the tickets that must be served before it may
    /// complete ([`crate::delivery::Delivery::served_up_to`]). Fixed when the batch carrying
    /// what preceded the wait is ticketed ([`VtdUnit::finish`]); `None` while no wait is held
    /// or that batch is not ticketed yet (the wait then waits for every ticket and every
    /// pending event, the strictest test). Cleared whenever the head moves or the queue is
    /// reset, so it never applies to another wait; not migrated (tickets are per process).
    pub(crate) wait_mark: Option<u64>,
    /// Replay-walk entry reads left for the current doorbell (caching-mode shadowing).
    pub(crate) replay_budget: u32,
    /// Type code of the last descriptor the queue executed (QEMU's `iq_last_desc_type`),
    /// carried in the migration state.
    pub(crate) last_descriptor_type: Option<u8>,
    /// Page groups with queued requests and no response yet (ECAP.PRS).
    pub(crate) prq: crate::prq::GroupTracker,
}

/// The emulated remapping unit.
pub struct VtdUnit<M: GuestRam> {
    pub(crate) config: VtdConfig,
    pub(crate) walk: WalkConfig,
    pub(crate) mem: M,
    irq: Arc<dyn InterruptSink>,
    pub(crate) state: Mutex<State>,
    /// GSTS.TES, read lock-free by the translate path.
    pub(crate) te: AtomicBool,
    /// The latched root: address | mode << 1 | valid.
    pub(crate) root: AtomicU64,
    pub(crate) iotlb: Iotlb,
    pub(crate) context_cache: ContextCache,
    pub(crate) pasid_cache: PasidCache,
    pub(crate) epoch: Epoch,
    bus: EventBus,
    dma_faults: AtomicU64,
    pub(crate) interrupts_remapped: AtomicU64,
    delivery: Delivery,
    /// Devices whose mapping changes are reported as shadow events (caching mode).
    pub(crate) watched: RwLock<Vec<(u16, Option<u32>)>>,
}

impl<M: GuestRam> std::fmt::Debug for VtdUnit<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VtdUnit")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<M: GuestRam + Send + Sync> VtdUnit<M> {
    /// A unit in its reset state, with the default cache sizes.
    pub fn new(
        config: VtdConfig,
        mem: M,
        irq: Arc<dyn InterruptSink>,
    ) -> Result<Self, ConfigError> {
        Self::with_cache_capacity(config, mem, irq, CacheCapacity::default())
    }

    /// A unit in its reset state whose caches hold `capacity` entries (each at least 1).
    pub fn with_cache_capacity(
        config: VtdConfig,
        mem: M,
        irq: Arc<dyn InterruptSink>,
        capacity: CacheCapacity,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let (cap, ecap) = (config.cap(), config.ecap());
        let regs = RegisterFile::new(&register_layout(cap, ecap));
        Ok(Self {
            walk: WalkConfig::new(cap, ecap),
            state: Mutex::new(State {
                regs,
                faults: FaultState::new(cap),
                root: None,
                ir: None,
                events: Vec::new(),
                msis: Vec::new(),
                descriptors: 0,
                tickets: Tickets::default(),
                wait_deferred: false,
                wait_mark: None,
                replay_budget: crate::shadow::REPLAY_BUDGET,
                last_descriptor_type: None,
                prq: Default::default(),
            }),
            delivery: Delivery::default(),
            config,
            mem,
            irq,
            te: AtomicBool::new(false),
            root: AtomicU64::new(0),
            iotlb: Iotlb::new(capacity.iotlb),
            context_cache: ContextCache::new(capacity.context),
            pasid_cache: PasidCache::new(capacity.pasid),
            epoch: Epoch::default(),
            bus: EventBus::default(),
            dma_faults: AtomicU64::new(0),
            interrupts_remapped: AtomicU64::new(0),
            watched: RwLock::new(Vec::new()),
        })
    }

    /// The configuration the unit was built with.
    pub fn config(&self) -> &VtdConfig {
        &self.config
    }

    /// Guest memory as the unit sees it.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The event bus.
    pub fn events(&self) -> &EventBus {
        &self.bus
    }

    /// Subscribes an observer to the event bus.
    pub fn subscribe(&self, observer: Arc<dyn VtdObserver>) {
        self.bus.subscribe(observer);
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Whether this thread is delivering events of this unit right now.
    pub(crate) fn publishing_here(&self) -> bool {
        self.delivery.delivering_here()
    }

    /// Whether events produced before the wait at the queue head have not all reached the
    /// observers yet.
    ///
    /// Once the wait was held back and the batch carrying what preceded it was ticketed, that
    /// is exactly "the tickets below `wait_mark` are not all served": every event produced
    /// before the wait was reached is either in that batch or in an earlier ticket (tickets
    /// are taken in production order, under this lock). Batches ticketed later (another vCPU's
    /// register write, a device's fault, the re-running thread's own pending events) were
    /// produced after the wait was reached and the guest's wait does not order them; waiting
    /// for them too (every ticket ever taken) would let a busy VM with a slow observer put the
    /// wait off without bound.
    pub(crate) fn unpublished(&self, st: &State) -> bool {
        match st.wait_mark {
            Some(mark) => !self.delivery.served_up_to(mark),
            None => {
                !st.events.is_empty()
                    || !st.msis.is_empty()
                    || !self.delivery.all_served(&st.tickets)
            }
        }
    }

    /// Releases the lock, then delivers what was produced under it, in unit order
    /// ([`crate::delivery`]).
    pub(crate) fn finish(&self, mut st: MutexGuard<'_, State>) {
        let batch = Batch {
            events: std::mem::take(&mut st.events),
            msis: std::mem::take(&mut st.msis),
        };
        if self.delivery.delivering_here() {
            // An observer called back into the unit: its work follows the event it handles.
            drop(st);
            self.delivery.defer_nested(batch);
            return;
        }
        if batch.events.is_empty() && batch.msis.is_empty() && !st.wait_deferred {
            return;
        }
        let ticket = st.tickets.take();
        if st.wait_deferred && st.wait_mark.is_none() {
            // This batch holds what was produced before the held-back wait (the hold-back and
            // this ticket happen under one lock hold): the wait needs it and the earlier
            // tickets served, no more (see `unpublished`).
            st.wait_mark = Some(st.tickets.taken());
        }
        drop(st);
        self.delivery.deliver(
            ticket,
            batch,
            |msi| self.irq.send_msi(msi),
            |events| self.bus.publish(events),
        );
    }

    /// Releases the lock after a register write: publishes, and while a wait descriptor was
    /// held back for that, completes it and the queue behind it.
    ///
    /// Rounds are bounded: the held wait's `wait_mark` was fixed no later than this thread's
    /// ticket of the round (the mark is set when the hold-back's batch is ticketed, in the
    /// same lock hold as the hold-back), and `deliver` returns only once that ticket and every
    /// earlier one were served, so the re-run finds the mark reached and executes the wait:
    /// one re-run per hold-back, whatever other threads produce meanwhile. A further round
    /// happens only for a wait held back anew (a later wait in the queue, which is bounded by
    /// the queue size, or one another thread held back after this round's ticket).
    pub(crate) fn finish_write<'a>(&'a self, mut st: MutexGuard<'a, State>) {
        loop {
            let deferred = st.wait_deferred;
            self.finish(st);
            if !deferred {
                return;
            }
            st = self.lock();
            st.wait_deferred = false;
            self.process_queue(&mut st, false);
        }
    }

    /// Resets the unit (platform reset): registers to reset values, caches empty.
    pub fn reset(&self) {
        let mut st = self.lock();
        st.regs.reset();
        st.faults = FaultState::new(self.walk.cap);
        st.root = None;
        st.ir = None;
        st.wait_mark = None;
        st.last_descriptor_type = None;
        st.prq.clear();
        self.te.store(false, Ordering::Release);
        self.root.store(0, Ordering::Release);
        self.flush_all_caches();
        st.events.push(VtdEvent::Reset);
        self.finish(st);
    }

    /// MMIO read of `size` (4 or 8) bytes at `offset` from the unit's base. Reserved offsets
    /// and malformed accesses read 0.
    pub fn read(&self, offset: u64, size: u8) -> u64 {
        if !RegisterFile::valid_access(offset, size) {
            return 0;
        }
        self.lock().regs.guest_read(offset, size)
    }

    /// MMIO write. Malformed accesses are ignored.
    pub fn write(&self, offset: u64, size: u8, value: u64) {
        if !RegisterFile::valid_access(offset, size) {
            return;
        }
        let value = if size == 4 {
            value & 0xffff_ffff
        } else {
            value
        };
        let mut st = self.lock();
        st.replay_budget = crate::shadow::REPLAY_BUDGET;
        st.events.push(VtdEvent::RegisterWrite {
            offset,
            size,
            value,
        });
        st.regs.guest_write(offset, size, value);
        let end = offset + size as u64;
        let touches = |reg_off: u64, reg_size: u64| offset < reg_off + reg_size && end > reg_off;
        if touches(reg::GCMD, 4) {
            let gcmd = st.regs.get32(reg::GCMD);
            self.handle_gcmd(&mut st, gcmd);
        }
        if touches(reg::CCMD + 4, 4) {
            self.handle_ccmd(&mut st);
        }
        if touches(reg::FSTS, 4) {
            self.after_fsts_write(&mut st);
        }
        if touches(reg::FECTL, 4) {
            self.after_fectl_write(&mut st);
        }
        if touches(reg::IQT, 8) {
            self.process_queue(&mut st, true);
        }
        if touches(reg::ICS, 4) || touches(reg::IECTL, 4) {
            self.after_ics_iectl_write(&mut st);
        }
        if self.walk.ecap.prs() {
            if touches(reg::PRS, 4) {
                self.after_prs_write(&mut st);
            }
            if touches(reg::PECTL, 4) {
                self.after_pectl_write(&mut st);
            }
        }
        let iva = self.walk.ecap.iotlb_register_offset();
        if touches(iva + 12, 4) {
            self.handle_iotlb_reg(&mut st, iva);
        }
        let fro = self.walk.cap.fault_recording_offset();
        let frcd_end = fro + 16 * self.walk.cap.fault_record_count() as u64;
        if offset < frcd_end && end > fro {
            let State { regs, faults, .. } = &mut *st;
            faults.update_ppf(regs);
            self.after_fsts_write(&mut st);
        }
        self.finish_write(st);
    }

    /// GCMD (spec 10.4.4): act on each command bit against the current status. One-shot
    /// commands (SRTP, SIRTP) act whenever written as 1, so a guest writing GCMD = GSTS | bit
    /// re-latches them, as on hardware.
    fn handle_gcmd(&self, st: &mut State, value: u32) {
        let cmd = Gcmd::from_bits(value);
        let status = Gsts::from_bits(st.regs.get32(reg::GSTS));
        if cmd.srtp() {
            let rtaddr = Rtaddr::from_bits(st.regs.get64(reg::RTADDR));
            let mut mode = rtaddr.ttm();
            if mode == TranslationTableMode::Scalable && !self.walk.ecap.smts() {
                // TTM = 01 without ECAP.SMTS is a reserved encoding (spec 10.4.6).
                mode = TranslationTableMode::Reserved2;
            }
            let root = RootTable {
                addr: rtaddr.root_table_address(),
                mode,
            };
            let changed = st.root.map(|(r, _)| r) != Some(root);
            st.root = Some((root, rtaddr.into_bits()));
            self.root.store(encode_root(root), Ordering::Release);
            // Hardware without ESRTPS may keep cached entries across SRTP and relies on the
            // guest's global invalidations; flushing is always allowed and never stale.
            self.flush_all_caches();
            st.regs
                .update32(reg::GSTS, 0, Gsts::new().with_rtps(true).into_bits());
            st.events.push(VtdEvent::RootTableLatched { root, changed });
        }
        if cmd.te() != status.tes() {
            self.flush_all_caches();
            self.te.store(cmd.te(), Ordering::Release);
            let bit = Gsts::new().with_tes(true).into_bits();
            st.regs
                .update32(reg::GSTS, bit, if cmd.te() { bit } else { 0 });
            st.events.push(VtdEvent::TranslationEnabled(cmd.te()));
        }
        if cmd.qie() != status.qies() {
            self.set_queue_enabled(st, cmd.qie());
        }
        if cmd.sirtp() {
            self.latch_interrupt_table(st);
        }
        if cmd.ire() != status.ires() && self.walk.ecap.ir() {
            let bit = Gsts::new().with_ires(true).into_bits();
            st.regs
                .update32(reg::GSTS, bit, if cmd.ire() { bit } else { 0 });
            st.events
                .push(VtdEvent::InterruptRemappingEnabled(cmd.ire()));
        }
        if cmd.cfi() != status.cfis() && self.walk.ecap.ir() {
            let bit = Gsts::new().with_cfis(true).into_bits();
            st.regs
                .update32(reg::GSTS, bit, if cmd.cfi() { bit } else { 0 });
        }
        // SFL/EAFL need CAP.AFL and WBF needs CAP.RWBF; neither is advertised, so they are
        // ignored (spec 10.4.4: commands for unsupported capabilities have no effect).
    }

    /// CCMD (spec 10.4.7): register-based context-cache invalidation when ICC is written as 1.
    fn handle_ccmd(&self, st: &mut State) {
        let ccmd = Ccmd::from_bits(st.regs.get64(reg::CCMD));
        if !ccmd.icc() {
            return;
        }
        use vtd_regs::inv::{ContextCacheGranularity as G, ContextCacheInv, InvDesc};
        let granularity = match ccmd.cirg() {
            1 => Some(G::Global),
            2 => Some(G::Domain { did: ccmd.did() }),
            3 => Some(G::Device {
                did: ccmd.did(),
                sid: ccmd.sid(),
                fm: ccmd.fm(),
            }),
            _ => None,
        };
        // CAIG reports what was done; 0 for an invalid request (spec 10.4.7).
        let caig = match granularity {
            Some(g) => {
                let desc = InvDesc::ContextCache(ContextCacheInv {
                    granularity: g,
                    ignored: Default::default(),
                });
                self.execute_invalidation(st, &desc, crate::events::InvalidationSource::Register);
                ccmd.cirg()
            }
            None => 0,
        };
        let done = ccmd.with_icc(false).with_caig(caig);
        st.regs.set64(reg::CCMD, done.into_bits());
    }

    /// IOTLB_REG (spec 10.4.8.1): register-based IOTLB invalidation when IVT is written as 1.
    fn handle_iotlb_reg(&self, st: &mut State, iva_off: u64) {
        let reg_val = IotlbReg::from_bits(st.regs.get64(iva_off + 8));
        if !reg_val.ivt() {
            return;
        }
        use vtd_regs::inv::{InvDesc, IotlbGranularity as G, IotlbInv};
        let iva = Iva::from_bits(st.regs.get64(iva_off));
        let (granularity, iaig) = match reg_val.iirg() {
            1 => (Some(G::Global), 1),
            2 => (Some(G::Domain { did: reg_val.did() }), 2),
            3 if iva.am() <= self.walk.cap.mamv() => (
                Some(G::Page {
                    did: reg_val.did(),
                    addr: iva.addr() << 12,
                    am: iva.am(),
                    ih: iva.ih(),
                }),
                3,
            ),
            // AM beyond MAMV: the hardware may widen to a domain-selective flush and report it.
            3 => (Some(G::Domain { did: reg_val.did() }), 2),
            _ => (None, 0),
        };
        if let Some(g) = granularity {
            let desc = InvDesc::Iotlb(IotlbInv {
                granularity: g,
                drain_read: reg_val.dr(),
                drain_write: reg_val.dw(),
                ignored: Default::default(),
            });
            self.execute_invalidation(st, &desc, crate::events::InvalidationSource::Register);
        }
        let done = reg_val.with_ivt(false).with_iaig(iaig);
        st.regs.set64(iva_off + 8, done.into_bits());
    }

    pub(crate) fn flush_all_caches(&self) {
        self.epoch.advance();
        self.context_cache.retain(|_, _| false);
        self.pasid_cache.retain(|_, _| false);
        self.iotlb.invalidate(IotlbScope::Global);
        // Once more when clean (see `execute_invalidation`).
        self.epoch.advance();
    }

    pub(crate) fn latched_root(&self) -> RootTable {
        decode_root(self.root.load(Ordering::Acquire))
    }

    /// Translates one DMA request (spec 3): pass-through while translation is off, the IOTLB,
    /// then the caches and a walk. A fault is recorded (or suppressed) before this returns.
    ///
    /// Besides the walk, the request itself is checked: a request with PASID while the root
    /// table is in legacy mode faults 0x31, and an output in the interrupt address range
    /// faults 0x0E/0x87 (spec 3.15), both through [`walk::check_request`] and
    /// [`walk::check_output`] so the reference walk and the unit agree. Without ECAP.ERS the
    /// ER field of a request is ignored (it is translated and recorded as a read).
    pub fn translate(&self, req: &DmaRequest) -> Result<Translation, TranslateError> {
        let req = &DmaRequest {
            access: self.walk.effective_access(req.access),
            ..*req
        };
        // A write without PASID to the interrupt range is an interrupt message whether or not
        // DMA remapping is on (spec 3.15, 5.1).
        let interrupt_range = req.pasid.is_none() && INTERRUPT_RANGE.contains(&req.iova);
        if interrupt_range && req.access.is_write() {
            return Err(TranslateError::InterruptRequest);
        }
        if !self.te.load(Ordering::Acquire) {
            return Ok(Translation {
                output: req.iova,
                page_size: 4096,
                perms: Perms::ALL,
                did: 0,
                pasid: req.pasid,
                kind: TranslationKind::Disabled,
                leaf: 0,
            });
        }
        if interrupt_range {
            // A read of the interrupt range is not translated: it faults (spec 3.15).
            let reason = if self.is_scalable() {
                FaultReason::SmInterruptAddressRange
            } else {
                FaultReason::InterruptAddressRange
            };
            return Err(TranslateError::Fault(
                self.report_dma_fault(StepFault::new(reason).into_fault(req)),
            ));
        }
        if let Err(f) = walk::check_request(self.latched_root(), req) {
            return Err(TranslateError::Fault(
                self.report_dma_fault(f.into_fault(req)),
            ));
        }
        // The IOTLB never holds a page overlapping the interrupt range (see translate_miss),
        // so a hit needs no output check.
        if let Some(t) = self.iotlb.lookup(req.sid, req.pasid, req.iova, req.access) {
            return Ok(t);
        }
        self.translate_miss(req)
    }

    fn is_scalable(&self) -> bool {
        self.latched_root().mode == TranslationTableMode::Scalable
    }

    fn translate_miss(&self, req: &DmaRequest) -> Result<Translation, TranslateError> {
        let epoch = self.epoch.current();
        let result = self.walk_with_caches(req, epoch);
        match result {
            Ok(t) => {
                // The walk checked this request's output; a page overlapping the interrupt
                // range is not cached, so other addresses of it are checked by their walk.
                if !walk::overlaps_interrupt_range(&t) {
                    self.iotlb
                        .insert(&self.epoch, epoch, req.sid, req.pasid, req.iova, t);
                }
                Ok(t)
            }
            Err(f) => Err(TranslateError::Fault(
                self.report_dma_fault(f.into_fault(req)),
            )),
        }
    }

    /// The context entry for `sid`, from the cache or the tables.
    pub(crate) fn context_for(&self, sid: u16, epoch: u64) -> Result<DeviceContext, StepFault> {
        if let Some(c) = self.context_cache.get(&sid) {
            return Ok(c);
        }
        let ctx = walk::lookup_context(&self.mem, &self.walk, self.latched_root(), sid)?;
        self.context_cache.insert(&self.epoch, epoch, sid, ctx);
        Ok(ctx)
    }

    /// The PASID and PASID entry `req` is translated with under `sc`, from the cache or the
    /// tables.
    fn pasid_entry_for(
        &self,
        sc: &ScalableContextEntry,
        req: &DmaRequest,
        epoch: u64,
    ) -> Result<(u32, PasidEntry), StepFault> {
        let pasid = walk::effective_pasid(&self.walk, sc, req.pasid);
        // The PASID cache is keyed by (requester, PASID): an entry cached for a request
        // without PASID (RID_PASID) must not let a request with that PASID skip the context
        // entry's PASIDE check (spec 9.4; found by fuzzing).
        walk::check_pasid_request(sc, pasid, req.pasid.is_some())?;
        if let Some(pe) = self.pasid_cache.get(&(req.sid, pasid)) {
            return Ok((pasid, pe));
        }
        let pe = walk::lookup_pasid_entry(&self.mem, &self.walk, sc, pasid, req.pasid.is_some())?;
        self.pasid_cache
            .insert(&self.epoch, epoch, (req.sid, pasid), pe);
        Ok((pasid, pe))
    }

    fn walk_with_caches(&self, req: &DmaRequest, epoch: u64) -> Result<Translation, StepFault> {
        let key = WalkMemoKey {
            unit: self.iotlb.id(),
            epoch,
            sid: req.sid,
            pasid: req.pasid,
        };
        let (ctx, pasid_entry) = match WALK_MEMO.with(Cell::get).filter(|m| m.key == key) {
            Some(memo) => {
                self.context_cache.count_hit();
                if memo.pasid_entry.is_some() {
                    self.pasid_cache.count_hit();
                }
                (memo.ctx, memo.pasid_entry)
            }
            None => {
                let ctx = self.context_for(req.sid, epoch)?;
                let pasid_entry = match &ctx {
                    DeviceContext::Legacy(_) => None,
                    DeviceContext::Scalable(sc) => Some(self.pasid_entry_for(sc, req, epoch)?),
                };
                WALK_MEMO.with(|m| {
                    m.set(Some(WalkMemo {
                        key,
                        ctx,
                        pasid_entry,
                    }))
                });
                (ctx, pasid_entry)
            }
        };
        match (ctx, pasid_entry) {
            (DeviceContext::Scalable(sc), Some((pasid, pe))) => {
                walk::translate_with_pasid_entry(&self.mem, &self.walk, &pe, pasid, req)
                    .map_err(|f| f.with_fpd(sc.fpd() || pe.fpd()))
            }
            // Legacy mode (a scalable context always comes with its PASID entry).
            _ => walk::translate_with_context(&self.mem, &self.walk, &ctx, req),
        }
    }

    /// Reports a DMA fault: records it unless FPD suppresses it, raises the fault event.
    pub(crate) fn report_dma_fault(&self, fault: Fault) -> Fault {
        self.inject_fault(fault);
        fault
    }

    /// Records a DMA fault found elsewhere (a host IOMMU walking the guest's first-stage table
    /// for a passthrough device, spec 7.1): into the fault-recording registers with the fault
    /// event, unless `fault.suppressed` (FPD) says otherwise, with the same coalescing and
    /// overflow rules as the unit's own faults.
    pub fn inject_fault(&self, fault: Fault) -> FaultDisposition {
        self.dma_faults.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "vtd::fault", ?fault);
        let mut st = self.lock();
        let disposition = if fault.suppressed {
            FaultDisposition::Suppressed
        } else {
            let (lo, hi) = crate::faults::dma_record(&fault);
            let State {
                regs, faults, msis, ..
            } = &mut *st;
            faults.record(regs, msis, fault.sid, lo, hi)
        };
        st.events.push(VtdEvent::DmaFault { fault, disposition });
        self.finish(st);
        disposition
    }

    /// The current context entry of `sid` read from guest memory (no cache), for observers
    /// that bind passthrough devices and for the inspector.
    pub fn read_context(&self, sid: u16) -> Result<DeviceContext, Fault> {
        let req = DmaRequest::new(sid, 0, walk::AccessKind::Read);
        walk::lookup_context(&self.mem, &self.walk, self.latched_root(), sid)
            .map_err(|f| f.into_fault(&req))
    }

    /// The current PASID entry of (`sid`, `pasid`) read from guest memory (no cache).
    pub fn read_pasid_entry(&self, sid: u16, pasid: u32) -> Result<PasidEntry, Fault> {
        let req = DmaRequest {
            pasid: Some(pasid),
            ..DmaRequest::new(sid, 0, walk::AccessKind::Read)
        };
        match walk::lookup_context(&self.mem, &self.walk, self.latched_root(), sid) {
            Ok(DeviceContext::Scalable(sc)) => {
                walk::lookup_pasid_entry(&self.mem, &self.walk, &sc, pasid, false)
                    .map_err(|f| f.into_fault(&req))
            }
            Ok(DeviceContext::Legacy(_)) => {
                Err(StepFault::new(FaultReason::PasidEntryNotPresent).into_fault(&req))
            }
            Err(f) => Err(f.into_fault(&req)),
        }
    }

    /// The reserved-field rules of this unit's CAP/ECAP: what [`Self::read_context`],
    /// [`Self::read_pasid_entry`] and every walk apply. Code that interprets a guest PASID
    /// entry for the unit (vtd-accel's binder) checks it with
    /// [`ReservedRules::check_pasid_entry`] so it accepts exactly the entries the unit does.
    pub fn reserved_rules(&self) -> ReservedRules {
        self.walk.rules()
    }

    /// Whether DMA translation is enabled (GSTS.TES).
    pub fn translation_enabled(&self) -> bool {
        self.te.load(Ordering::Acquire)
    }

    /// The latched root table, if SRTP was done.
    pub fn root_table(&self) -> Option<RootTable> {
        self.lock().root.map(|(r, _)| r)
    }

    /// How many entries each cache holds (the IOTLB's size is rounded up to whole sets).
    pub fn cache_capacity(&self) -> CacheCapacity {
        CacheCapacity {
            iotlb: self.iotlb.capacity(),
            context: self.context_cache.capacity(),
            pasid: self.pasid_cache.capacity(),
        }
    }

    /// Counters. Cheap enough to poll: hit and miss counts are summed from per-thread stripes
    /// and the entry count is one pass over the IOTLB's tags; nothing here slows translation.
    pub fn stats(&self) -> UnitStats {
        let descriptors = self.lock().descriptors;
        UnitStats {
            iotlb: self.iotlb.stats(),
            context_cache: self.context_cache.stats(),
            pasid_cache: self.pasid_cache.stats(),
            descriptors,
            dma_faults: self.dma_faults.load(Ordering::Relaxed),
            interrupts_remapped: self.interrupts_remapped.load(Ordering::Relaxed),
        }
    }

    /// Saves the architectural state (caches are not state: they are rebuilt on demand).
    pub fn snapshot(&self) -> UnitSnapshot {
        let st = self.lock();
        UnitSnapshot {
            registers: st.regs.image().to_vec(),
            next_fault_record: st.faults.next(),
            latched_rtaddr: st.root.map(|(_, raw)| raw),
            latched_irta: st.ir.map(|(_, raw)| raw),
        }
    }

    /// Restores a snapshot taken from a unit with the same configuration; derived state (TE,
    /// root, interrupt table) is recomputed from it and caches start empty.
    pub fn restore(&self, snap: &UnitSnapshot) -> Result<(), RestoreError> {
        if snap.registers.len() != vtd_regs::regs::MMIO_SIZE as usize {
            return Err(RestoreError::RegisterImageSize(snap.registers.len()));
        }
        let mut st = self.lock();
        // The length was checked above; a short image would read as zero (an identity no unit has).
        let qword = |at: usize| {
            snap.registers
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        let saved_cap = qword(reg::CAP as usize);
        let saved_ecap = qword(reg::ECAP as usize);
        if saved_cap != self.walk.cap.into_bits() || saved_ecap != self.walk.ecap.into_bits() {
            return Err(RestoreError::IdentityMismatch {
                cap: saved_cap,
                ecap: saved_ecap,
            });
        }
        if snap.next_fault_record >= self.walk.cap.fault_record_count() {
            return Err(RestoreError::FaultRecordIndex(snap.next_fault_record));
        }
        st.regs.load_image(&snap.registers);
        st.faults.set_next(snap.next_fault_record);
        let gsts = Gsts::from_bits(st.regs.get32(reg::GSTS));
        st.root = snap.latched_rtaddr.map(|raw| {
            let rt = Rtaddr::from_bits(raw);
            let mut mode = rt.ttm();
            if mode == TranslationTableMode::Scalable && !self.walk.ecap.smts() {
                mode = TranslationTableMode::Reserved2;
            }
            (
                RootTable {
                    addr: rt.root_table_address(),
                    mode,
                },
                raw,
            )
        });
        self.root.store(
            st.root.map(|(r, _)| encode_root(r)).unwrap_or(0),
            Ordering::Release,
        );
        st.ir = snap.latched_irta.map(|raw| (IrTable::from_irta(raw), raw));
        self.te.store(gsts.tes(), Ordering::Release);
        self.flush_all_caches();
        if let Some((root, _)) = st.root {
            st.events.push(VtdEvent::RootTableLatched {
                root,
                changed: true,
            });
        }
        st.events.push(VtdEvent::TranslationEnabled(gsts.tes()));
        self.finish(st);
        Ok(())
    }
}

/// Why a snapshot was refused; the unit is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The register image is not 4 KiB.
    #[error("register image has {0} bytes, expected 4096")]
    RegisterImageSize(usize),
    /// The snapshot comes from a unit with another CAP/ECAP.
    #[error("snapshot is of a unit with CAP {cap:#x} ECAP {ecap:#x}, not this one")]
    IdentityMismatch {
        /// Saved CAP.
        cap: u64,
        /// Saved ECAP.
        ecap: u64,
    },
    /// The next fault-record index is out of range.
    #[error("next fault record {0} out of range")]
    FaultRecordIndex(u16),
}

pub(crate) fn encode_root(root: RootTable) -> u64 {
    root.addr | (root.mode.into_bits() as u64) << 1 | 1
}

fn decode_root(v: u64) -> RootTable {
    RootTable {
        addr: v & !0xfff,
        mode: TranslationTableMode::from_bits(((v >> 1) & 3) as u8),
    }
}
