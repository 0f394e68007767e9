//! The guest is untrusted (a device model faces a possibly hostile guest): whatever it writes
//! to the registers or places in RAM, the unit must not panic, must answer every call in
//! bounded time, must not write guest memory except where the architecture says so
//! (wait-descriptor status dwords, A/D bits of paging entries), and must keep its
//! architectural invariants.
//!
//! The first tests pin individual guest-controlled values found in review. The property tests
//! then throw random register traffic (every register, misaligned and out-of-window offsets),
//! random RAM, random invalidation queues, random DMA requests and random MSIs at units of
//! several configurations over a 2 MiB RAM, so that random pointers often land in it.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use vm_memory::iommu::IommuMemory;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vtd_core::{InterruptSink, Msi, MsiSource, TranslateError, VtdEvent, VtdObserver, VtdUnit};
use vtd_regs::fault::FaultReason;
use vtd_regs::inv::*;
use vtd_regs::regs::{FRCD_HI_F, offset as reg, register_layout};
use vtd_regs::{Cap, Ecap, VtdConfig};
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_tables::walk::{AccessKind, DmaRequest};
use vtd_tables::{GuestRam, MemError};
use vtd_testkit::driver::Guest;

type Mem = GuestMemoryMmap<()>;

// ---------------------------------------------------------------------------------------------
// Single guest-controlled values found in review.
// ---------------------------------------------------------------------------------------------

/// A remappable-format MSI address for `handle` (spec 5.1.2.2), no SHV.
fn remappable(handle: u16) -> u64 {
    0xfee0_0000 | ((handle as u64 & 0x7fff) << 5) | 0x10 | ((handle as u64 >> 15) << 2)
}

/// `read`/`write` take any u64 offset; one whose end wraps past 2^64 is as malformed as any
/// other access outside the window (reads 0, writes ignored), not an arithmetic overflow.
#[test]
fn mmio_access_whose_end_wraps_is_malformed() {
    let g = Guest::new("", 16);
    for (off, size) in [(u64::MAX - 3, 4u8), (u64::MAX - 7, 8), (u64::MAX - 7, 4)] {
        assert_eq!(g.unit.read(off, size), 0, "read {off:#x}/{size}");
        g.unit.write(off, size, u64::MAX);
    }
    assert_eq!(g.r32(reg::GSTS), 0, "nothing reached GCMD");
}

/// IRTA's base is any 4 KiB-aligned 64-bit value and the handle comes from the device's MSI
/// address: `base + index * 16` must not overflow (an IRT access error, fault 0x23).
#[test]
fn interrupt_table_at_the_top_of_the_address_space_is_an_access_error() {
    let mut g = Guest::new("", 16);
    g.w64(reg::IRTA, 0xffff_ffff_ffff_f000 | 0xf); // 2^16 entries at 2^64 - 4 KiB
    g.latch_interrupt_table();
    g.set_interrupt_remapping(true);
    for handle in [0u16, 255, 256, 0x7fff, 0xffff] {
        let r = g
            .unit
            .remap_msi(MsiSource::Device(0x8), remappable(handle), 0);
        assert_eq!(
            r.map_err(|f| f.reason),
            Err(FaultReason::IrTableAccessError),
            "handle {handle:#x}"
        );
    }
}

/// The guest may rewrite IQA while the queue is enabled (the spec says it must not; hardware
/// must still not fall over): `base + head * size` with a base near 2^64 is a descriptor fetch
/// error (IQE), not an overflow.
#[test]
fn queue_base_moved_to_the_top_of_the_address_space_is_a_fetch_error() {
    let mut g = Guest::new("", 64);
    g.enable_qi(false); // 512 slots of 128 bits
    let wait = InvDesc::Wait(WaitInv {
        status_write: None,
        interrupt: false,
        fence: false,
        page_drain: false,
        ignored: Default::default(),
    });
    g.submit_raw(&vec![wait; 256]);
    assert_eq!(g.r64(reg::IQH), 256 << 4, "head advanced to slot 256");
    g.w64(reg::IQA, 0xffff_ffff_ffff_f000 | 1);
    g.w64(reg::IQT, 257 << 4);
    assert_ne!(g.r32(reg::FSTS) & 0x10, 0, "FSTS.IQE");
    assert_eq!(
        g.r64(reg::IQH),
        256 << 4,
        "IQH at the descriptor that failed"
    );
}

/// A page-selective IOTLB invalidation from the queue carries AM in 6 bits (0..=63). AM >= 52
/// selects more than the 64-bit space: the unit must either reject the descriptor (IQE, as
/// QEMU does for AM > MAMV) or invalidate everything it covers, never overflow or drop it.
#[test]
fn queued_page_invalidation_with_am_52_and_above_is_not_lost() {
    const SID: u16 = 0x8;
    const DID: u16 = 3;
    for am in [52u8, 57, 63] {
        let mut g = Guest::new("", 64);
        let mem = g.mem.clone();
        g.enable_qi(false);
        let root = g.legacy_one_page(SID, DID, 4, 0x5000, 0x300_0000);
        let mut pt = PageTableBuilder::at(&mem, root, PageTableFormat::SecondStage { levels: 4 });
        let req = DmaRequest::new(SID, 0x5000, AccessKind::Read);
        assert_eq!(g.unit.translate(&req).unwrap().output, 0x300_0000);
        // The guest remaps the page, then invalidates with the huge AM.
        pt.map(
            &mut g.frames,
            0x5000,
            0x300_1000,
            PageSize::Size4K,
            true,
            true,
        )
        .unwrap();
        g.submit_raw(&[InvDesc::Iotlb(IotlbInv {
            granularity: IotlbGranularity::Page {
                did: DID,
                addr: 0,
                am,
                ih: false,
            },
            drain_read: false,
            drain_write: false,
            ignored: Default::default(),
        })]);
        if g.r32(reg::FSTS) & 0x10 == 0 {
            assert_eq!(
                g.unit.translate(&req).unwrap().output,
                0x300_1000,
                "AM {am}: the descriptor was accepted but left a stale IOTLB entry"
            );
        }
    }
}

/// DmaRequest::pasid is a u32; PASIDs have 20 bits. A request carrying PASID 0xFFFF_FFFF must
/// be refused (the context entry has PASIDE = 0 here), not served from IOTLB entries that
/// requests without PASID filled.
#[test]
fn pasid_u32_max_does_not_alias_requests_without_pasid() {
    const SID: u16 = 0x10;
    let mut g = Guest::new("x-scalable-mode=on,x-flts=on", 64);
    let mem = g.mem.clone();
    let mut ctx = ContextTablesBuilder::new(&mem, &mut g.frames, true).unwrap();
    let mut pasids = PasidTablesBuilder::new(&mem, &mut g.frames, 0).unwrap();
    let mut fs = PageTableBuilder::new(
        &mem,
        &mut g.frames,
        PageTableFormat::FirstStage { levels: 4 },
    )
    .unwrap();
    fs.map(
        &mut g.frames,
        0x7000,
        0x300_0000,
        PageSize::Size4K,
        true,
        true,
    )
    .unwrap();
    pasids
        .set_entry(
            &mut g.frames,
            0,
            PasidEntry::first_stage(fs.root(), false, 4, 2),
        )
        .unwrap();
    ctx.set_scalable_context(&mut g.frames, SID, pasids.context_entry())
        .unwrap();
    g.set_root(ctx.rtaddr());
    g.enable_translation();
    let without = DmaRequest::new(SID, 0x7000, AccessKind::Read);
    assert!(g.unit.translate(&without).is_ok());
    let with = DmaRequest {
        pasid: Some(5),
        ..without
    };
    assert!(g.unit.translate(&with).is_err(), "PASIDE = 0");
    let with = DmaRequest {
        pasid: Some(u32::MAX),
        ..without
    };
    assert!(
        g.unit.translate(&with).is_err(),
        "a PASID beyond 20 bits hit the no-PASID IOTLB entry"
    );
}

/// Spec 3.15: a write without PASID to 0xFEEx_xxxx is an interrupt request, whether or not DMA
/// remapping is enabled; with TE = 0 the unit returns it as a plain DMA write to 0xFEE0_0000.
#[test]
fn interrupt_range_write_is_an_interrupt_request_with_translation_off() {
    let g = Guest::new("", 16);
    let r = g
        .unit
        .translate(&DmaRequest::new(0x8, 0xfee0_0000, AccessKind::Write));
    assert_eq!(r.err(), Some(TranslateError::InterruptRequest));
}

/// vtd-tables' walk API takes table pointers as plain u64s (`RootTable::addr`,
/// `SecondStageTable::root`, `for_each_leaf`'s root). vtd-core only passes page-aligned values,
/// but the API promises that "no table contents can make it loop ... no table pointer can reach
/// outside guest RAM": a pointer whose entry address wraps must be an access fault, not an
/// arithmetic overflow.
#[test]
fn walk_api_table_pointers_that_wrap_are_access_faults() {
    use vtd_regs::regs::TranslationTableMode;
    use vtd_tables::enumerate::{TableFormat, for_each_leaf};
    use vtd_tables::walk::{
        RootTable, SecondStageMode, SecondStageTable, WalkConfig, translate, walk_second_stage,
    };
    let mem: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let cfg = VtdConfig::default();
    let wc = WalkConfig::new(cfg.cap(), cfg.ecap());
    let root = RootTable {
        addr: u64::MAX - 0xf,
        mode: TranslationTableMode::Legacy,
    };
    let req = DmaRequest::new(0xff00, 0, AccessKind::Read);
    assert!(translate(&mem, &wc, root, &req).is_err());
    let ss = SecondStageTable {
        root: u64::MAX - 7,
        levels: 4,
        mode: SecondStageMode::Legacy,
        set_ad: false,
    };
    assert!(walk_second_stage(&mem, &wc, &ss, 0x7fff_ffff_f000, AccessKind::Read).is_err());
    let mut leaves = 0;
    let _ = for_each_leaf(
        &mem,
        &wc,
        u64::MAX - 7,
        TableFormat::SecondStage { levels: 4 },
        0x7f00_0000_0000..0x8000_0000_0000,
        &mut 100,
        |_| leaves += 1,
    );
    assert_eq!(leaves, 0);
}

// ---------------------------------------------------------------------------------------------
// Property tests.
// ---------------------------------------------------------------------------------------------

const RAM: u64 = 2 << 20;
/// Bits the unit may set in a paging entry: first-stage A (5), D (6), EA (10); second-stage A
/// (8), D (9).
const AD_BITS: u64 = 1 << 5 | 1 << 6 | 1 << 8 | 1 << 9 | 1 << 10;
/// No single call may take longer (generous: debug build, 2 cores, concurrent builds).
const CALL_LIMIT: Duration = Duration::from_secs(2);
const FRO: u64 = 0x220;
const IVA: u64 = 0xf0;

/// Guest RAM as the unit sees it, refusing nothing but recording every write that is neither a
/// dword status write nor a compare-exchange that only sets A/D bits.
#[derive(Clone, Debug)]
struct Ram {
    inner: Mem,
    violations: Arc<Mutex<Vec<String>>>,
}

impl Ram {
    fn new(seed: u64) -> Self {
        let inner: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let mut bytes = Vec::with_capacity(RAM as usize);
        let mut rng = Rng(seed | 1);
        for _ in 0..RAM / 8 {
            bytes.extend_from_slice(&rng.word().to_le_bytes());
        }
        GuestRam::write(&inner, 0, &bytes).unwrap();
        Self {
            inner,
            violations: Arc::default(),
        }
    }

    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }

    fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}

impl GuestRam for Ram {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        GuestRam::read(&self.inner, gpa, buf)
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        if buf.len() != 4 || gpa % 4 != 0 {
            self.violation(format!("write of {} bytes at {gpa:#x}", buf.len()));
        }
        GuestRam::write(&self.inner, gpa, buf)
    }

    fn compare_exchange_u64(
        &self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        let (set, cleared) = (new & !current, current & !new);
        if cleared != 0 || set & !AD_BITS != 0 {
            self.violation(format!(
                "cmpxchg at {gpa:#x}: {current:#x} -> {new:#x} changes more than A/D"
            ));
        }
        self.inner.compare_exchange_u64(gpa, current, new)
    }
}

/// xorshift64*: RAM contents that look like tables (pointers into RAM with P/R/W bits) as
/// often as like noise.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn word(&mut self) -> u64 {
        let r = self.next();
        let ptr = (r % RAM) & !0xfff;
        match r >> 61 {
            0 | 1 => ptr | [0x1, 0x3, 0x7, 0x27, 0x67, 0xe7, 0x83, 0x63][(r & 7) as usize],
            2 => 0,
            3 => ptr | 1,
            4 => r,
            5 => r & 0xffff,
            6 => ptr | (r & 0xfff),
            _ => r & 0x000f_ffff_ffff_ffff,
        }
    }
}

type TestUnit = VtdUnit<Ram>;

/// An observer and interrupt sink that call back into the unit from every event and MSI, as a
/// VMM's nested-binding observer or fault handler would: any lock held across the callback
/// would deadlock here.
#[derive(Default)]
struct Reentrant {
    unit: std::sync::OnceLock<std::sync::Weak<TestUnit>>,
    depth: std::sync::atomic::AtomicU32,
    /// Callbacks left for the current operation: an observer that answers every fault with a
    /// DMA that faults again would otherwise feed itself forever (the unit delivers what a
    /// callback causes after the event being handled, in the same call).
    budget: std::sync::atomic::AtomicU32,
}

impl Reentrant {
    fn poke(&self, sid: u16) {
        use std::sync::atomic::Ordering::SeqCst;
        let Some(unit) = self.unit.get().and_then(|w| w.upgrade()) else {
            return;
        };
        let budget = self.budget.load(SeqCst);
        if budget == 0 {
            return;
        }
        self.budget.store(budget - 1, SeqCst);
        // Bounded recursion: a translate below may fault and publish again.
        if self.depth.fetch_add(1, SeqCst) < 2 {
            let _ = unit.read(reg::FSTS, 4);
            let _ = unit.stats();
            let _ = unit.read_context(sid);
            let _ = unit.read_pasid_entry(sid, 0);
            let _ = unit.translate(&DmaRequest::new(sid, 0x1000, AccessKind::Read));
        }
        self.depth.fetch_sub(1, SeqCst);
    }
}

impl VtdObserver for Reentrant {
    fn on_event(&self, event: &VtdEvent) {
        let sid = match event {
            VtdEvent::DmaFault { fault, .. } => fault.sid,
            _ => 0x08,
        };
        self.poke(sid);
    }
}

impl InterruptSink for Reentrant {
    fn send_msi(&self, _msi: Msi) {
        self.poke(0x10);
    }
}

fn configs() -> Vec<VtdConfig> {
    let mut wide = VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap();
    // Everything at once: nesting, 5-level, 20-bit PASIDs, device TLB, snoop, x2APIC, 4 FRCDs.
    wide.second_stage = true;
    wide.nesting = true;
    wide.aw_bits = 57;
    wide.pasid_bits = 20;
    wide.device_iotlb = true;
    wide.snoop_control = true;
    wide.eim = true;
    wide.fault_records = 4;
    wide.supervisor_requests = true;
    vec![
        VtdConfig::from_qemu_props("").unwrap(),
        VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap(),
        VtdConfig::from_qemu_props("x-scalable-mode=on,x-pasid-mode=on,eim=on").unwrap(),
        VtdConfig::from_qemu_props("caching-mode=on,aw-bits=39,device-iotlb=on").unwrap(),
        wide,
    ]
}

/// What GSTS must show, from the commands the guest wrote.
#[derive(Clone, Copy, Debug, Default)]
struct Model {
    tes: bool,
    rtps: bool,
    qies: bool,
    ires: bool,
    irtps: bool,
    cfis: bool,
    /// IQA was written while the queue was enabled (the spec forbids it; IQH may then be
    /// anything the old geometry allowed until the next enable).
    iqa_dirty: bool,
}

impl Model {
    fn gsts(&self) -> u32 {
        (self.tes as u32) << 31
            | (self.rtps as u32) << 30
            | (self.qies as u32) << 26
            | (self.ires as u32) << 25
            | (self.irtps as u32) << 24
            | (self.cfis as u32) << 23
    }
}

fn valid_access(off: u64, size: u8) -> bool {
    matches!(size, 4 | 8) && off % size as u64 == 0 && off < 0x1000 && off + size as u64 <= 0x1000
}

struct Harness {
    ram: Ram,
    unit: Arc<TestUnit>,
    hook: Arc<Reentrant>,
    cap: Cap,
    ecap: Ecap,
    /// Bytes of the window no register covers.
    reserved: Vec<bool>,
    model: Model,
}

#[derive(Clone, Debug)]
enum Op {
    Read {
        off: u64,
        size: u8,
    },
    Write {
        off: u64,
        size: u8,
        val: u64,
    },
    Translate {
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        access: u8,
        privileged: bool,
    },
    Msi {
        source: Option<u16>,
        addr: u64,
        data: u32,
    },
    Dma {
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        len: usize,
        write: bool,
    },
    /// The guest CPU writes RAM (tables change under the unit's feet).
    Poke {
        gpa: u64,
        val: u64,
    },
    Reset,
}

fn timed<T>(what: &dyn Debug, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let start = Instant::now();
    let v = f();
    let took = start.elapsed();
    prop_assert!(took < CALL_LIMIT, "{what:?} took {took:?}");
    Ok(v)
}

impl Harness {
    fn new(cfg: VtdConfig, seed: u64) -> Self {
        let ram = Ram::new(seed);
        let (cap, ecap) = (cfg.cap(), cfg.ecap());
        let mut reserved = vec![true; 0x1000];
        for d in register_layout(cap, ecap) {
            for b in d.offset..d.offset + d.size as u64 {
                reserved[b as usize] = false;
            }
        }
        let hook = Arc::new(Reentrant::default());
        let unit = Arc::new(VtdUnit::new(cfg, ram.clone(), hook.clone()).unwrap());
        let _ = hook.unit.set(Arc::downgrade(&unit));
        unit.subscribe(hook.clone());
        Self {
            ram,
            unit,
            hook,
            cap,
            ecap,
            reserved,
            model: Model::default(),
        }
    }

    fn r(&self, off: u64, size: u8) -> u64 {
        self.unit.read(off, size)
    }

    fn w(&mut self, off: u64, size: u8, val: u64) -> Result<(), TestCaseError> {
        self.apply(&Op::Write { off, size, val })
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        self.hook
            .budget
            .store(8, std::sync::atomic::Ordering::SeqCst);
        match *op {
            Op::Read { off, size } => {
                let v = timed(op, || self.unit.read(off, size))?;
                if !valid_access(off, size) {
                    prop_assert_eq!(v, 0, "malformed read {:#x}/{}", off, size);
                } else if (off..off + size as u64).all(|b| self.reserved[b as usize]) {
                    prop_assert_eq!(v, 0, "reserved offset {:#x}/{}", off, size);
                }
            }
            Op::Write { off, size, val } => {
                let iqh = self.r(reg::IQH, 8);
                let iqt = self.r(reg::IQT, 8);
                timed(op, || self.unit.write(off, size, val))?;
                self.after_write(off, size, val, iqh, iqt);
            }
            Op::Translate {
                sid,
                pasid,
                iova,
                access,
                privileged,
            } => {
                let access =
                    [AccessKind::Read, AccessKind::Write, AccessKind::Execute][access as usize % 3];
                let req = DmaRequest {
                    sid,
                    pasid,
                    iova,
                    access,
                    privileged,
                };
                let _ = timed(op, || self.unit.translate(&req))?;
            }
            Op::Msi { source, addr, data } => {
                let source = source.map_or(MsiSource::IoApic, MsiSource::Device);
                let _ = timed(op, || self.unit.remap_msi(source, addr, data))?;
            }
            Op::Dma {
                sid,
                pasid,
                iova,
                len,
                write,
            } => {
                let mem = IommuMemory::new(
                    self.ram.inner.clone(),
                    self.unit.address_space(sid, pasid),
                    true,
                    (),
                );
                let mut buf = vec![0x5au8; len];
                let _ = timed(op, || {
                    if write {
                        mem.write_slice(&buf, GuestAddress(iova))
                    } else {
                        mem.read_slice(&mut buf, GuestAddress(iova))
                    }
                })?;
            }
            Op::Poke { gpa, val } => {
                let _ = self.ram.inner.write_u64((gpa % RAM) & !7, val);
            }
            Op::Reset => {
                timed(op, || self.unit.reset())?;
                self.model = Model::default();
            }
        }
        self.check(op)
    }

    fn after_write(&mut self, off: u64, size: u8, val: u64, iqh: u64, iqt: u64) {
        if !valid_access(off, size) {
            return;
        }
        let end = off + size as u64;
        let touches = |r: u64, n: u64| off < r + n && end > r;
        if touches(reg::IQA, 8) && self.model.qies {
            self.model.iqa_dirty = true;
        }
        if off == reg::GCMD {
            let cmd = val as u32;
            let m = &mut self.model;
            m.tes = cmd & 1 << 31 != 0;
            m.rtps |= cmd & 1 << 30 != 0;
            let qie = cmd & 1 << 26 != 0;
            if qie && !m.qies {
                m.qies = true;
                m.iqa_dirty = false;
            } else if !qie && m.qies && iqh == iqt & 0x7fff0 {
                m.qies = false;
            }
            m.irtps |= cmd & 1 << 24 != 0;
            if self.ecap.ir() {
                m.ires = cmd & 1 << 25 != 0;
                m.cfis = cmd & 1 << 23 != 0;
            }
        }
    }

    fn check(&self, after: &Op) -> Result<(), TestCaseError> {
        let v = self.ram.violations();
        prop_assert!(
            v.is_empty(),
            "after {:?}: guest memory written: {:?}",
            after,
            v
        );
        // Identity never changes.
        prop_assert_eq!(self.r(reg::CAP, 8), self.cap.into_bits());
        prop_assert_eq!(self.r(reg::ECAP, 8), self.ecap.into_bits());
        prop_assert_eq!(self.r(reg::VER, 4), 0x10);
        // Write-only registers read 0.
        prop_assert_eq!(self.r(reg::GCMD, 4), 0);
        prop_assert_eq!(self.r(IVA, 8), 0);
        // GSTS reflects the commands.
        let gsts = self.r(reg::GSTS, 4) as u32;
        prop_assert_eq!(
            gsts,
            self.model.gsts(),
            "after {:?}: GSTS {:#x}, model {:?}",
            after,
            gsts,
            self.model
        );
        // FSTS.PPF is exactly "some FRCD has F set".
        let fsts = self.r(reg::FSTS, 4);
        let n = self.cap.fault_record_count() as u64;
        let any_f = (0..n).any(|i| self.r(FRO + 16 * i + 8, 8) & FRCD_HI_F != 0);
        prop_assert_eq!(
            fsts & 2 != 0,
            any_f,
            "after {:?}: FSTS {:#x} vs F bits",
            after,
            fsts
        );
        prop_assert!(
            fsts & 0x2 == 0 || (fsts >> 8 & 0xff) < n,
            "FRI {} out of range",
            fsts >> 8 & 0xff
        );
        // Event controls hold only IM and IP.
        prop_assert_eq!(self.r(reg::FECTL, 4) & 0x3fff_ffff, 0);
        prop_assert_eq!(self.r(reg::IECTL, 4) & 0x3fff_ffff, 0);
        // The invalidation queue.
        let iqh = self.r(reg::IQH, 8);
        let iqt = self.r(reg::IQT, 8);
        let iqa = self.r(reg::IQA, 8);
        prop_assert_eq!(iqh & !0x7fff0, 0, "IQH {:#x}", iqh);
        prop_assert_eq!(iqt & !0x7fff0, 0, "IQT {:#x}", iqt);
        if fsts & 0x10 != 0 {
            let iqei = self.r(reg::IQERCD, 8) & 0xf;
            prop_assert!((1..=6).contains(&iqei), "IQE with IQEI {}", iqei);
        }
        if self.model.qies && !self.model.iqa_dirty {
            let wide = iqa & 1 << 11 != 0 && self.ecap.smts();
            let count = (1u64 << ((iqa & 7) + 8)) >> wide as u64;
            let shift = if wide { 5 } else { 4 };
            prop_assert!(
                iqh >> shift < count,
                "IQH {:#x} beyond a queue of {}",
                iqh,
                count
            );
            let tail_valid = (iqt >> shift) < count && !(wide && iqt & 0x10 != 0);
            if fsts & 0x10 == 0 && tail_valid {
                prop_assert_eq!(
                    iqh,
                    iqt & 0x7fff0,
                    "after {:?}: queue enabled, no error, not drained",
                    after
                );
            }
        }
        Ok(())
    }
}

/// Offsets: every register (and the upper halves of 64-bit ones), anything in the window,
/// misaligned, beyond the window, near 2^64.
fn offset() -> impl Strategy<Value = u64> {
    const HOT: [u64; 40] = [
        0x00, 0x08, 0x0c, 0x10, 0x14, 0x18, 0x1c, 0x20, 0x24, 0x28, 0x2c, 0x34, 0x38, 0x3c, 0x40,
        0x44, 0x58, 0x64, 0x80, 0x88, 0x8c, 0x90, 0x94, 0x9c, 0xa0, 0xa4, 0xa8, 0xac, 0xb0, 0xb8,
        0xbc, 0xf0, 0xf8, 0xfc, 0x220, 0x228, 0x22c, 0x238, 0x248, 0x258,
    ];
    prop_oneof![
        8 => prop::sample::select(HOT.to_vec()),
        2 => (0u64..0x300).prop_map(|o| o & !3),
        1 => 0u64..0x1000,
        1 => 0x0ff0u64..0x1010,
        1 => 0x1000u64..0x10_0000,
        1 => prop_oneof![Just(u64::MAX - 3), Just(u64::MAX - 7), Just(u64::MAX), any::<u64>()],
    ]
}

fn size() -> impl Strategy<Value = u8> {
    prop_oneof![6 => Just(4u8), 6 => Just(8u8), 1 => 0u8..=16]
}

/// Pointers into RAM with random low bits (TTM, DW, QS, S, EIME ...).
fn ram_pointer() -> impl Strategy<Value = u64> {
    (0..RAM, 0u64..0x1000).prop_map(|(p, low)| (p & !0xfff) | low)
}

fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => any::<u64>(),
        3 => ram_pointer(),
        3 => (0u64..512).prop_map(|b| b << 23), // GCMD command bits
        1 => (0u64..0x8000).prop_map(|t| t << 4), // IQT
        1 => (0u64..0x1000).prop_map(|t| 0xffff_ffff_ffff_f000 | t),
        1 => Just(0u64),
        1 => Just(u64::MAX),
        1 => (0u64..4).prop_map(|b| 1 << (60 + b)), // ICC / IVT / F bits
    ]
}

/// GCMD values: mostly a driver keeping TE, QIE and IRE on and adding one-shot commands;
/// sometimes a bit turned off; sometimes noise.
fn gcmd() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (
            prop::bool::weighted(0.95),
            prop::bool::weighted(0.95),
            prop::bool::weighted(0.95),
            0u64..16,
        )
            .prop_map(|(te, qie, ire, oneshot)| {
                (te as u64) << 31
                    | (qie as u64) << 26
                    | (ire as u64) << 25
                    | (oneshot & 1) << 30
                    | (oneshot >> 1 & 1) << 24
                    | (oneshot >> 2 & 1) << 23
                    | (oneshot >> 3 & 1) << 29
            }),
        1 => value(),
    ]
}

fn iova() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..0x20_0000,
        1 => 0x40_0000u64..0x60_0000,
        2 => 0u64..RAM * 2,
        2 => any::<u64>(),
        1 => 0xfee0_0000u64..0xfef0_0000,
        1 => (0u64..1 << 20).prop_map(|x| 0xffff_8000_0000_0000 | x << 12),
        1 => (0u64..1 << 20).prop_map(|x| x << 30),
    ]
}

fn pasid() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        4 => Just(None),
        2 => prop::sample::select(vec![0u32, 1, 64, 100]).prop_map(Some),
        1 => (0u32..130).prop_map(Some),
        1 => any::<u32>().prop_map(Some),
    ]
}

fn sid() -> impl Strategy<Value = u16> {
    prop_oneof![4 => prop::sample::select(SIDS.to_vec()), 2 => 0u16..0x40, 1 => any::<u16>()]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (offset(), size()).prop_map(|(off, size)| Op::Read { off, size }),
        10 => (offset(), size(), value()).prop_map(|(off, size, val)| Op::Write { off, size, val }),
        3 => gcmd().prop_map(|val| Op::Write { off: reg::GCMD, size: 4, val }),
        3 => tail().prop_map(|val| Op::Write { off: reg::IQT, size: 8, val }),
        1 => prop_oneof![Just(0x71u64), any::<u64>()].prop_map(|val| Op::Write { off: reg::FSTS, size: 4, val }),
        1 => (0u64..4).prop_map(|i| Op::Write { off: FRO + 16 * i + 8, size: 8, val: FRCD_HI_F }),
        5 => (sid(), pasid(), iova(), 0u8..3, any::<bool>()).prop_map(
            |(sid, pasid, iova, access, privileged)| Op::Translate { sid, pasid, iova, access, privileged }
        ),
        3 => (
            proptest::option::of(sid()),
            prop_oneof![
                3 => (0u16..300, any::<bool>()).prop_map(|(h, shv)| remappable(h) | (shv as u64) << 3),
                2 => (0u64..0x10_0000).prop_map(|x| 0xfee0_0000 | x),
                1 => any::<u64>()
            ],
            prop_oneof![3 => 0u32..0x1_0000, 1 => any::<u32>()],
        ).prop_map(|(source, addr, data)| Op::Msi { source, addr, data }),
        2 => (sid(), pasid(), iova(), 0usize..10_000, any::<bool>()).prop_map(
            |(sid, pasid, iova, len, write)| Op::Dma { sid, pasid, iova, len, write }
        ),
        2 => (0..RAM, prop_oneof![ram_pointer(), any::<u64>()]).prop_map(|(gpa, val)| Op::Poke { gpa, val }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random register traffic, RAM, requests and MSIs: no panic, bounded calls, invariants.
    #[test]
    fn random_guest_cannot_break_the_unit(
        cfg in 0usize..5,
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..150),
        reset_at in proptest::option::of(0usize..150),
    ) {
        let mut h = Harness::new(configs()[cfg].clone(), seed);
        for (i, op) in ops.iter().enumerate() {
            h.apply(op)?;
            if reset_at == Some(i) {
                h.apply(&Op::Reset)?;
            }
        }
    }

    /// The same, starting from a unit a driver brought up over well-formed structures (root,
    /// context, PASID tables, page tables of every kind the unit offers, an interrupt table, a
    /// queue of valid descriptors) that the random operations then use and corrupt.
    #[test]
    fn random_guest_over_well_formed_tables(
        cfg in 0usize..5,
        seed in any::<u64>(),
        scalable in any::<bool>(),
        slots in prop::collection::vec(slot(), 1..48),
        ops in prop::collection::vec(op(), 1..150),
    ) {
        let mut h = Harness::new(configs()[cfg].clone(), seed);
        bring_up(&mut h, scalable, seed, &slots)?;
        for op in &ops {
            h.apply(op)?;
        }
    }
}

/// SIDs the bring-up gives a context entry (the `sid()` strategy covers the first four).
const SIDS: [u16; 6] = [0x08, 0x10, 0x18, 0x20, 0x108, 0xff80];

/// A page table of `format` mapping random pages of the first 2 MiB of IOVA space (and one
/// 2 MiB page at 4 MiB) to random guest pages, with A/D sometimes clear.
fn random_table(
    mem: &Mem,
    frames: &mut FrameAllocator,
    rng: &mut Rng,
    format: PageTableFormat,
) -> u64 {
    let mut pt = PageTableBuilder::new(mem, frames, format).unwrap();
    let first = matches!(format, PageTableFormat::FirstStage { .. });
    for _ in 0..160 {
        let iova = (rng.next() % 512) << 12;
        let gpa = (rng.next() % (RAM >> 12)) << 12;
        let (read, write) = (rng.next() % 4 != 0, rng.next() % 2 == 0);
        let mut leaf = if first {
            FirstStagePte::leaf(gpa, write, false).into_bits()
        } else {
            SecondStagePte::leaf(gpa, read, write, false).into_bits()
        };
        if rng.next() % 2 == 0 {
            leaf &= !(1 << 5 | 1 << 6); // first stage: A and D clear
        }
        let _ = pt.set_leaf(frames, iova, PageSize::Size4K, leaf);
    }
    let _ = pt.map(frames, 0x40_0000, 0, PageSize::Size2M, true, true);
    pt.root()
}

/// Brings the unit up the way a driver would, over structures built with vtd-tables'
/// builders in the upper half of RAM (the lower half stays random).
fn bring_up(
    h: &mut Harness,
    scalable: bool,
    seed: u64,
    slots: &[Slot],
) -> Result<(), TestCaseError> {
    let mem = h.ram.inner.clone();
    let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1);
    let mut frames = FrameAllocator::new(0x10_0000, 0x1f_0000);
    let (cap, ecap) = (h.cap, h.ecap);
    let scalable = scalable && ecap.smts();
    let ss_levels: u8 = if cap.supports_second_stage_levels(4) {
        4
    } else {
        3
    };
    let aw = ss_levels - 2;
    let five = cap.fl5lp();
    let ss_tables: Vec<u64> = (0..3)
        .map(|_| {
            random_table(
                &mem,
                &mut frames,
                &mut rng,
                PageTableFormat::SecondStage { levels: ss_levels },
            )
        })
        .collect();
    let fs_tables: Vec<u64> = (0..3)
        .map(|i| {
            let levels = if five && i == 2 { 5 } else { 4 };
            random_table(
                &mem,
                &mut frames,
                &mut rng,
                PageTableFormat::FirstStage { levels },
            )
        })
        .collect();
    // For nesting: a second stage that maps guest RAM 1:1 with one 2 MiB page.
    let mut identity = PageTableBuilder::new(
        &mem,
        &mut frames,
        PageTableFormat::SecondStage { levels: ss_levels },
    )
    .unwrap();
    identity
        .map(&mut frames, 0, 0, PageSize::Size2M, true, true)
        .unwrap();
    let mut ctx = ContextTablesBuilder::new(&mem, &mut frames, scalable).unwrap();
    for sid in SIDS {
        let did = (rng.next() % 6) as u16 + 1;
        let pick = |rng: &mut Rng, v: &[u64]| v[(rng.next() % v.len() as u64) as usize];
        if !scalable {
            let entry = if rng.next() % 4 == 0 && ecap.pt() {
                ContextEntry::pass_through(aw, did)
            } else {
                ContextEntry::new(pick(&mut rng, &ss_tables), aw, did)
            };
            let entry = entry.with_fpd(rng.next() % 8 == 0);
            ctx.set_legacy_context(&mut frames, sid, entry).unwrap();
            continue;
        }
        let mut pasids = PasidTablesBuilder::new(&mem, &mut frames, 0).unwrap();
        for pasid in [0u32, 1, 64, 100] {
            let fs = pick(&mut rng, &fs_tables);
            let fs_five = five && fs == fs_tables[2];
            let mut pe = match rng.next() % 4 {
                0 if ecap.pt() => PasidEntry::pass_through(did, aw),
                1 if ecap.slts() => PasidEntry::second_stage(pick(&mut rng, &ss_tables), aw, did),
                2 if ecap.nest() => PasidEntry::nested(fs, fs_five, identity.root(), aw, did),
                _ if ecap.flts() => PasidEntry::first_stage(fs, fs_five, did, aw),
                _ => PasidEntry::second_stage(pick(&mut rng, &ss_tables), aw, did),
            };
            if rng.next() % 2 == 0 {
                pe.0[0] |= 1 << 9; // SSADE
            }
            let pe = pe
                .with_fpd(rng.next() % 8 == 0)
                .with_sre(ecap.srs() && rng.next() % 2 == 0)
                .with_ere(ecap.ers() && rng.next() % 2 == 0);
            pasids.set_entry(&mut frames, pasid, pe).unwrap();
        }
        let ce = pasids
            .context_entry()
            .with_paside(rng.next() % 2 == 0)
            .with_fpd(rng.next() % 8 == 0);
        ctx.set_scalable_context(&mut frames, sid, ce).unwrap();
    }
    // Interrupt-remapping table: 256 entries, most of them valid.
    let irt = frames.alloc(&mem, 1).unwrap();
    let eime = ecap.eim() && rng.next() % 2 == 0;
    for index in 0..256u64 {
        let words = if rng.next() % 4 == 0 {
            [rng.word(), rng.word()]
        } else {
            let mut irte =
                vtd_regs::irte::Irte::remapped(rng.next() as u8, rng.next() as u32, eime);
            if rng.next() % 2 == 0 {
                let sid = SIDS[(rng.next() % 4) as usize];
                irte = irte.with_source_validation(vtd_regs::irte::SourceValidation::RequesterId {
                    sid,
                    sq: (rng.next() % 4) as u8,
                });
            }
            let (lo, hi) = irte
                .with_fault_processing_disable(rng.next() % 8 == 0)
                .to_words();
            [lo, hi]
        };
        mem.write_words(irt + index * 16, &words).unwrap();
    }
    // The queue: 512 slots of 128 bits or 256 of 256 bits, the slots repeated.
    let queue = frames.alloc(&mem, 2).unwrap();
    let wide = ecap.smts() && rng.next() % 4 != 0;
    h.w(reg::IQT, 8, 0)?;
    h.w(reg::IQA, 8, queue | (wide as u64) << 11 | 1)?;
    for (i, s) in slots.iter().cycle().take(512).enumerate() {
        h.put(i as u32, s);
    }
    h.w(reg::RTADDR, 8, ctx.rtaddr())?;
    h.w(reg::GCMD, 4, 1 << 30)?;
    h.w(reg::IRTA, 8, irt | (eime as u64) << 11 | 7)?;
    h.w(reg::GCMD, 4, 1 << 30 | 1 << 24)?;
    h.w(reg::GCMD, 4, 1 << 31 | 1 << 26 | 1 << 25)?;
    h.w(reg::FECTL, 4, 0)?;
    h.w(reg::IECTL, 4, 0)?;
    if cap.cm() {
        // Caching mode: shadow the devices' mappings (replay walks on every invalidation).
        for sid in SIDS {
            h.unit.watch_mappings(sid, None);
            h.unit.watch_mappings(sid, Some(1));
        }
    }
    Ok(())
}

// --- The invalidation queue -------------------------------------------------------------------

fn status_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (0..RAM / 4).prop_map(|a| a * 4),
        1 => any::<u64>().prop_map(|a| a & !3),
        1 => Just(0xffff_ffff_ffff_fffc),
        1 => (0..16u64).prop_map(|a| RAM - 8 + a * 4),
    ]
}

fn inv_desc() -> impl Strategy<Value = InvDesc> {
    let g = || 0u8..3;
    prop_oneof![
        1 => (g(), any::<u16>(), any::<u16>(), 0u8..4).prop_map(|(g, did, sid, fm)| {
            InvDesc::ContextCache(ContextCacheInv {
                granularity: match g {
                    0 => ContextCacheGranularity::Global,
                    1 => ContextCacheGranularity::Domain { did },
                    _ => ContextCacheGranularity::Device { did, sid, fm },
                },
                ignored: Default::default(),
            })
        }),
        1 => (g(), any::<u16>(), any::<u64>(), 0u8..64, any::<bool>(), any::<bool>()).prop_map(
            |(g, did, addr, am, ih, drain)| {
                InvDesc::Iotlb(IotlbInv {
                    granularity: match g {
                        0 => IotlbGranularity::Global,
                        1 => IotlbGranularity::Domain { did },
                        _ => IotlbGranularity::Page {
                            did,
                            addr: addr & !0xfff,
                            am,
                            ih,
                        },
                    },
                    drain_read: drain,
                    drain_write: !drain,
                    ignored: Default::default(),
                })
            }
        ),
        1 => (any::<u16>(), any::<u16>(), 0u8..32, any::<u64>(), any::<bool>()).prop_map(
            |(sid, pfsid, qdep, addr, size)| {
                InvDesc::DeviceTlb(DeviceTlbInv {
                    sid,
                    pfsid,
                    qdep,
                    addr: addr & !0xfff,
                    size,
                })
            }
        ),
        1 => (any::<bool>(), any::<u16>(), 0u8..32).prop_map(|(g, index, im)| {
            InvDesc::Iec(IecInv {
                granularity: if g {
                    IecGranularity::Index { index, im }
                } else {
                    IecGranularity::Global
                },
                ignored: Default::default(),
            })
        }),
        3 => (
            proptest::option::of((status_addr(), any::<u32>())),
            any::<bool>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(sw, interrupt, fence, page_drain)| {
                InvDesc::Wait(WaitInv {
                    status_write: sw.map(|(addr, data)| StatusWrite { addr, data }),
                    interrupt,
                    fence,
                    page_drain,
                    ignored: Default::default(),
                })
            }),
        1 => (any::<u16>(), 0u32..1 << 20, any::<bool>(), any::<u64>(), 0u8..64, any::<bool>())
            .prop_map(|(did, pasid, page, addr, am, ih)| {
                InvDesc::PasidIotlb(PasidIotlbInv {
                    did,
                    pasid,
                    granularity: if page {
                        PasidIotlbGranularity::Page {
                            addr: addr & !0xfff,
                            am,
                            ih,
                        }
                    } else {
                        PasidIotlbGranularity::AllInPasid
                    },
                    ignored: Default::default(),
                })
            }),
        1 => (any::<u16>(), g(), 0u32..1 << 20).prop_map(|(did, g, pasid)| {
            InvDesc::PasidCache(PasidCacheInv {
                did,
                granularity: match g {
                    0 => PasidCacheGranularity::Domain,
                    1 => PasidCacheGranularity::Pasid { pasid },
                    _ => PasidCacheGranularity::Global,
                },
                ignored: Default::default(),
            })
        }),
        1 => (any::<u16>(), any::<u16>(), 0u32..1 << 20, 0u8..32, any::<u64>(), any::<bool>(), any::<bool>())
            .prop_map(|(sid, pfsid, pasid, qdep, addr, size, global)| {
                InvDesc::PasidDeviceTlb(PasidDeviceTlbInv {
                    sid,
                    pfsid,
                    pasid,
                    qdep,
                    addr: addr & !0xfff,
                    size,
                    global,
                })
            }),
    ]
}

/// One queue slot: a well-formed descriptor (possibly of a type this unit lacks) or noise.
#[derive(Clone, Debug)]
enum Slot {
    Desc(InvDesc),
    Raw([u64; 4]),
}

fn slot() -> impl Strategy<Value = Slot> {
    prop_oneof![
        6 => inv_desc().prop_map(Slot::Desc),
        1 => (0u64..16, any::<[u64; 4]>()).prop_map(|(t, mut w)| {
            w[0] = (w[0] & !0xf) | t;
            Slot::Raw(w)
        }),
        1 => (0u64..16).prop_map(|t| Slot::Raw([t | 0x10, 0, 0, 0])),
    ]
}

#[derive(Clone, Debug)]
enum QOp {
    /// Write IQT (any value: in range, beyond the queue, bit 4 set, noise).
    Tail(u64),
    /// Clear FSTS.IQE (and whatever else the value has).
    Fsts(u32),
    /// Rewrite IQA while the queue may be enabled.
    Iqa(u64),
    /// GCMD with only QIE (and TE) as given.
    Gcmd(u32),
    /// Put a slot's descriptor at `index` of the current queue.
    Put(u32, Slot),
    /// A 4-byte write of IQT's low half.
    TailLow(u32),
}

fn tail() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0u64..300).prop_map(|s| s << 5),
        4 => (0u64..300).prop_map(|s| s << 4),
        2 => (0u64..0x8000).prop_map(|s| s << 4),
        1 => (0u64..0x4000).prop_map(|s| s << 5 | 0x10),
        1 => any::<u64>(),
    ]
}

fn qop() -> impl Strategy<Value = QOp> {
    prop_oneof![
        8 => tail().prop_map(QOp::Tail),
        1 => tail().prop_map(|t| QOp::TailLow(t as u32)),
        3 => prop_oneof![Just(0x10u32), Just(0x71), any::<u32>()].prop_map(QOp::Fsts),
        1 => prop_oneof![ram_pointer(), any::<u64>()].prop_map(QOp::Iqa),
        1 => prop_oneof![Just(1u32 << 26), Just(0), Just(1 << 31 | 1 << 26)].prop_map(QOp::Gcmd),
        4 => (0u32..300, slot()).prop_map(|(i, s)| QOp::Put(i, s)),
    ]
}

fn queue_base() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0..RAM / 4096).prop_map(|p| p << 12),
        1 => Just(RAM - 4096),
        1 => Just(RAM),
        1 => Just(0x1_0000_0000u64),
        1 => Just(0xffff_ffff_ffff_f000u64),
        1 => any::<u64>().prop_map(|a| a & !0xfff),
    ]
}

impl Harness {
    /// Writes `slot` at queue index `index` (wherever the current IQA says; outside RAM is
    /// silently not written).
    fn put(&self, index: u32, slot: &Slot) {
        let iqa = self.r(reg::IQA, 8);
        let wide = iqa & 1 << 11 != 0 && self.ecap.smts();
        let width = if wide {
            DescWidth::Bits256
        } else {
            DescWidth::Bits128
        };
        let words = match slot {
            Slot::Desc(d) => {
                d.encode(width)
                    .map(|r| r.0)
                    .unwrap_or([d.type_code() as u64, 0, 0, 0])
            }
            Slot::Raw(w) => *w,
        };
        let n = if wide { 4 } else { 2 };
        let at = (iqa & !0xfff).wrapping_add(index as u64 * 8 * n as u64);
        let _ = self.ram.inner.write_words(at, &words[..n]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random IQA (base, DW, QS), random queue contents, random tails and error clears.
    #[test]
    fn random_invalidation_queues(
        cfg in 0usize..5,
        seed in any::<u64>(),
        base in queue_base(),
        dw in any::<bool>(),
        qs in 0u64..8,
        slots in prop::collection::vec(slot(), 0..64),
        repeat in 1usize..8,
        ops in prop::collection::vec(qop(), 1..60),
    ) {
        let mut h = Harness::new(configs()[cfg].clone(), seed);
        h.w(reg::FECTL, 4, 0)?;
        h.w(reg::IECTL, 4, 0)?;
        h.w(reg::IQT, 8, 0)?;
        h.w(reg::IQA, 8, base | (dw as u64) << 11 | qs)?;
        for (i, s) in slots.iter().cycle().take(slots.len() * repeat).enumerate() {
            h.put(i as u32, s);
        }
        h.w(reg::GCMD, 4, 1 << 26)?;
        for op in &ops {
            match op {
                QOp::Tail(t) => h.w(reg::IQT, 8, *t)?,
                QOp::TailLow(t) => h.w(reg::IQT, 4, *t as u64)?,
                QOp::Fsts(v) => h.w(reg::FSTS, 4, *v as u64)?,
                QOp::Iqa(v) => h.w(reg::IQA, 8, *v)?,
                QOp::Gcmd(v) => h.w(reg::GCMD, 4, *v as u64)?,
                QOp::Put(i, s) => h.put(*i, s),
            }
            let iqh = h.r(reg::IQH, 8);
            h.apply(&Op::Read { off: reg::IQH, size: 8 })?;
            prop_assert_eq!(h.r(reg::IQH, 8), iqh, "reading IQH changed it");
        }
    }
}

/// Fuzz regression (fuzz target `unit`, cache-coherence oracle): a PASID entry cached for a
/// request without PASID (RID_PASID, PASID 0) let a request *with* PASID 0 skip the context
/// entry's PASIDE check; it must fault 0x45 as the uncached walk does (spec 9.4).
#[test]
fn a_cached_pasid_entry_does_not_bypass_paside() {
    use vtd_core::{AccessKind, DmaRequest, TranslateError};
    use vtd_regs::fault::FaultReason;
    let mut g = vtd_testkit::driver::Guest::new("x-scalable-mode=on,x-flts=on", 64);
    g.enable_qi(true);
    // PASID 0 pass-through, context entry with PASIDE clear.
    g.scalable_device(0x18, 2, false);
    let without = DmaRequest::new(0x18, 0x4000, AccessKind::Read);
    assert!(
        g.unit.translate(&without).is_ok(),
        "RID_PASID request translates"
    );
    let with = DmaRequest {
        pasid: Some(0),
        ..without
    };
    for _ in 0..2 {
        match g.unit.translate(&with) {
            Err(TranslateError::Fault(f)) => {
                assert_eq!(f.reason, FaultReason::SmContextPasidDisabled)
            }
            other => panic!("request with PASID under PASIDE = 0: {other:?}"),
        }
    }
}
