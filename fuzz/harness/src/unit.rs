//! The whole remapping unit: MMIO writes and reads, guest-memory writes, DMA translations,
//! MSIs, page requests, replay walks, snapshot/restore and reset, in any order.
//!
//! Invariants checked after every operation:
//! - no panic (the guest is untrusted: every register value and memory byte is input);
//! - bounded work: the unit's guest-memory accesses per operation stay under a bound
//!   derived from the architecture (queue size, replay budget, walk depth), never from
//!   guest values alone ([`crate::ram`] counts them), and each access is small and, when it
//!   succeeds, inside RAM;
//! - cache coherence after invalidation: every translation equals the one a fresh unit
//!   (same registers, empty caches) gives, unless the guest rewrote, since the last
//!   invalidation of every cache, a word the fresh walk reads. A cached result that a fresh
//!   walk would deny after a completed invalidation is exactly the bug this catches.
//!
//! Input: one byte choosing the configuration, then operations (a tag byte and its
//! fields, see [`Op`]); at most [`MAX_OPS`] are run.

use std::collections::BTreeSet;
use std::sync::Arc;

use vtd_core::{
    AccessKind, DmaRequest, EventLog, MsiSource, PageRequest, RecordingSink, TranslateError,
    Translation, VtdConfig, VtdEvent, VtdUnit,
};
use vtd_regs::Ecap;
use vtd_regs::inv::{
    ContextCacheGranularity, ContextCacheInv, DescWidth, InvDesc, IotlbGranularity, IotlbInv,
};
use vtd_regs::regs::{Fsts, Gsts, Iqa, offset as reg};
use vtd_tables::GuestRam;

use crate::input::{Reader, Writer};
use crate::ram::CountingRam;

/// Guest RAM of the unit target: 64 MiB at 0, which holds the Linux trace's root table
/// (27 MiB), queue (18 MiB) and interrupt table, and the testkit driver's frames (16-48 MiB).
pub const RAM_SIZE: u64 = 64 << 20;

/// Operations per input.
pub const MAX_OPS: usize = 512;

/// Configurations a run picks from (first input byte): QEMU `intel-iommu` property strings.
pub const CONFIGS: &[&str] = &[
    "",
    "x-scalable-mode=on,x-flts=on",
    "x-scalable-mode=on",
    "caching-mode=on",
    "x-scalable-mode=on,x-flts=on,x-pasid-mode=on,x-vtd-page-requests=on,device-iotlb=on",
    "intremap=on,eim=on",
    "aw-bits=39,pt=off",
    "x-scalable-mode=on,x-flts=on,caching-mode=on,snoop-control=on",
];

/// The replay walk's per-doorbell budget of entry reads (vtd-core `shadow::REPLAY_BUDGET`).
const REPLAY_BUDGET: u64 = 1 << 18;
/// The largest queue: 2^(QS+8) 128-bit descriptors with QS = 7 (spec 11.4.9.3).
const MAX_QUEUE_DESCRIPTORS: u64 = 1 << 15;
/// Accesses of one walk: root and context (6), PASID directory and entry (9), and a nested
/// walk of up to 5 first-stage levels, each table address and the output through up to 5
/// second-stage levels with A/D updates, retried once after a race: generously bounded.
const MAX_WALK_ACCESSES: u64 = 1024;

/// One operation of the input.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// MMIO write at `offset` (masked to the 4 KiB register page), 4 or 8 bytes.
    MmioWrite { offset: u16, wide: bool, value: u64 },
    /// MMIO read.
    MmioRead { offset: u16, wide: bool },
    /// The guest writes a u64 to RAM (address masked into RAM, 8-byte aligned).
    MemWrite { gpa: u32, value: u64 },
    /// A device DMA.
    Translate(DmaRequest),
    /// A device or IOAPIC interrupt message.
    RemapMsi {
        ioapic: bool,
        sid: u16,
        address: u64,
        data: u32,
    },
    /// Global context-cache and IOTLB invalidation, the way the guest would issue it now:
    /// through the queue when queued invalidation is on, through CCMD/IOTLB_REG otherwise.
    InvalidateAll,
    /// A device's page request.
    PageRequest(PageRequest),
    /// Report mapping changes of a device (caching mode).
    Watch { sid: u16, pasid: Option<u32> },
    /// Replay walk over a range.
    Replay {
        sid: u16,
        pasid: Option<u32>,
        start: u64,
        len: u64,
    },
    /// Snapshot and restore onto the same unit.
    SnapshotRestore,
    /// Platform reset.
    Reset,
}

const OP_COUNT: u8 = 11;

fn pasid_of(flags: u8, pasid: u32) -> Option<u32> {
    (flags & 1 != 0).then_some(pasid & 0xf_ffff)
}

fn access_of(bits: u8) -> AccessKind {
    match bits & 3 {
        1 => AccessKind::Write,
        2 => AccessKind::Execute,
        _ => AccessKind::Read,
    }
}

impl Op {
    /// Reads the next operation.
    pub fn read(r: &mut Reader<'_>) -> Op {
        match r.u8() % OP_COUNT {
            0 => {
                let (offset, wide, value) = (r.u16(), r.u8() & 1 != 0, r.u64());
                Op::MmioWrite {
                    offset,
                    wide,
                    value,
                }
            }
            1 => Op::MmioRead {
                offset: r.u16(),
                wide: r.u8() & 1 != 0,
            },
            2 => Op::MemWrite {
                gpa: r.u32(),
                value: r.u64(),
            },
            3 => {
                let (sid, flags, pasid, iova) = (r.u16(), r.u8(), r.u32(), r.u64());
                Op::Translate(DmaRequest {
                    sid,
                    pasid: pasid_of(flags, pasid),
                    iova,
                    access: access_of(flags >> 1),
                    privileged: flags & 8 != 0,
                })
            }
            4 => Op::RemapMsi {
                ioapic: r.u8() & 1 != 0,
                sid: r.u16(),
                address: r.u64(),
                data: r.u32(),
            },
            5 => Op::InvalidateAll,
            6 => {
                let (sid, flags, pasid, address, prg) =
                    (r.u16(), r.u8(), r.u32(), r.u64(), r.u16());
                Op::PageRequest(PageRequest {
                    sid,
                    pasid: pasid_of(flags, pasid),
                    address,
                    read: flags & 2 != 0,
                    write: flags & 4 != 0,
                    execute: flags & 8 != 0,
                    privileged: flags & 16 != 0,
                    last_in_group: flags & 32 != 0,
                    prg_index: prg & 0x1ff,
                })
            }
            7 => {
                let (sid, flags, pasid) = (r.u16(), r.u8(), r.u32());
                Op::Watch {
                    sid,
                    pasid: pasid_of(flags, pasid),
                }
            }
            8 => {
                let (sid, flags, pasid, start, len) = (r.u16(), r.u8(), r.u32(), r.u64(), r.u64());
                Op::Replay {
                    sid,
                    pasid: pasid_of(flags, pasid),
                    start,
                    len,
                }
            }
            9 => Op::SnapshotRestore,
            _ => Op::Reset,
        }
    }

    /// Appends the operation in the format [`Op::read`] reads.
    pub fn write(&self, w: &mut Writer) {
        let flags = |pasid: Option<u32>| pasid.is_some() as u8;
        match *self {
            Op::MmioWrite {
                offset,
                wide,
                value,
            } => {
                w.u8(0).u16(offset).u8(wide as u8).u64(value);
            }
            Op::MmioRead { offset, wide } => {
                w.u8(1).u16(offset).u8(wide as u8);
            }
            Op::MemWrite { gpa, value } => {
                w.u8(2).u32(gpa).u64(value);
            }
            Op::Translate(req) => {
                let access = match req.access {
                    AccessKind::Read => 0,
                    AccessKind::Write => 1,
                    AccessKind::Execute => 2,
                };
                let f = flags(req.pasid) | access << 1 | (req.privileged as u8) << 3;
                w.u8(3)
                    .u16(req.sid)
                    .u8(f)
                    .u32(req.pasid.unwrap_or(0))
                    .u64(req.iova);
            }
            Op::RemapMsi {
                ioapic,
                sid,
                address,
                data,
            } => {
                w.u8(4).u8(ioapic as u8).u16(sid).u64(address).u32(data);
            }
            Op::InvalidateAll => {
                w.u8(5);
            }
            Op::PageRequest(p) => {
                let f = flags(p.pasid)
                    | (p.read as u8) << 1
                    | (p.write as u8) << 2
                    | (p.execute as u8) << 3
                    | (p.privileged as u8) << 4
                    | (p.last_in_group as u8) << 5;
                w.u8(6)
                    .u16(p.sid)
                    .u8(f)
                    .u32(p.pasid.unwrap_or(0))
                    .u64(p.address)
                    .u16(p.prg_index);
            }
            Op::Watch { sid, pasid } => {
                w.u8(7).u16(sid).u8(flags(pasid)).u32(pasid.unwrap_or(0));
            }
            Op::Replay {
                sid,
                pasid,
                start,
                len,
            } => {
                w.u8(8)
                    .u16(sid)
                    .u8(flags(pasid))
                    .u32(pasid.unwrap_or(0))
                    .u64(start)
                    .u64(len);
            }
            Op::SnapshotRestore => {
                w.u8(9);
            }
            Op::Reset => {
                w.u8(10);
            }
        }
    }
}

/// Encodes a whole input: the configuration index and the operations.
pub fn encode(config: u8, ops: &[Op]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(config);
    for op in ops {
        op.write(&mut w);
    }
    w.0
}

type Unit = VtdUnit<CountingRam>;

struct Harness {
    ram: CountingRam,
    unit: Unit,
    /// Same configuration and registers, caches emptied before each comparison.
    fresh: Unit,
    log: Arc<EventLog>,
    sink: Arc<RecordingSink>,
    fresh_sink: Arc<RecordingSink>,
    /// Words written (by the guest or the unit) since the last invalidation of every cache.
    dirty: BTreeSet<u64>,
    /// Words changed by A/D updates since then.
    cas_dirty: BTreeSet<u64>,
}

/// Whether `events` invalidated every cache the translate path uses: the latch of a root
/// table, a change of TE, a reset or a restore flush them all (vtd-core `flush_all_caches`),
/// and so do a global context-cache invalidation (which the unit extends to the PASID cache)
/// with a global IOTLB invalidation (every IOTLB entry, PASID-tagged ones included, as QEMU
/// hw/i386/intel_iommu.c `vtd_iotlb_global_invalidate` does).
fn flushes_everything(events: &[VtdEvent]) -> bool {
    let mut context = false;
    let mut iotlb = false;
    for e in events {
        match e {
            VtdEvent::RootTableLatched { .. }
            | VtdEvent::TranslationEnabled(_)
            | VtdEvent::Reset => {
                return true;
            }
            VtdEvent::Invalidation { desc, .. } => match desc {
                InvDesc::ContextCache(c) if c.granularity == ContextCacheGranularity::Global => {
                    context = true
                }
                InvDesc::Iotlb(i) if i.granularity == IotlbGranularity::Global => iotlb = true,
                _ => {}
            },
            _ => {}
        }
    }
    context && iotlb
}

/// A/D bits of first-stage (5, 6) and second-stage (8, 9) entries: a cached leaf may predate
/// the hardware setting them.
const AD_BITS: u64 = 1 << 5 | 1 << 6 | 1 << 8 | 1 << 9;

fn same_translation(
    a: &Result<Translation, TranslateError>,
    b: &Result<Translation, TranslateError>,
) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => {
            Translation {
                leaf: x.leaf & !AD_BITS,
                ..*x
            } == Translation {
                leaf: y.leaf & !AD_BITS,
                ..*y
            }
        }
        (Err(x), Err(y)) => x == y,
        _ => false,
    }
}

impl Harness {
    fn new(config: VtdConfig) -> Option<Self> {
        let ram = CountingRam::new(RAM_SIZE);
        let sink = Arc::new(RecordingSink::default());
        let fresh_sink = Arc::new(RecordingSink::default());
        let unit = VtdUnit::new(config.clone(), ram.view(0), sink.clone()).ok()?;
        let fresh = VtdUnit::new(config, ram.view(1), fresh_sink.clone()).ok()?;
        let log = Arc::new(EventLog::default());
        unit.subscribe(log.clone());
        Some(Self {
            ram,
            unit,
            fresh,
            log,
            sink,
            fresh_sink,
            dirty: BTreeSet::new(),
            cas_dirty: BTreeSet::new(),
        })
    }

    /// Runs `f` as one operation: checks its access bound, then folds what it wrote into the
    /// dirty sets (cleared when the operation invalidated every cache).
    fn op<T>(&mut self, what: &str, bound: u64, f: impl FnOnce(&Unit) -> T) -> T {
        let before = self.ram.accesses();
        let out = f(&self.unit);
        let used = self.ram.accesses() - before;
        assert!(
            used <= bound,
            "{what}: {used} guest-memory accesses, more than the bound {bound}"
        );
        let events = self.log.take();
        let (writes, cas) = {
            let mut t = self.ram.tracking();
            (
                std::mem::take(&mut t.writes),
                std::mem::take(&mut t.cas_writes),
            )
        };
        if flushes_everything(&events) {
            // Writes of this operation may have come after the flush: they stay dirty.
            self.dirty = writes;
            self.cas_dirty = cas;
        } else {
            self.dirty.extend(writes);
            self.cas_dirty.extend(cas);
        }
        self.sink.take();
        out
    }

    fn mmio_bound(&self) -> u64 {
        // Every descriptor of the largest queue (up to 4 reads and a status write each),
        // the replay walks of one doorbell, page-request and fault bookkeeping.
        8 * MAX_QUEUE_DESCRIPTORS + 2 * REPLAY_BUDGET + 4096
    }

    fn mem_write(&mut self, gpa: u64, value: u64) {
        // The guest's own store: not the unit's access, so not counted against it.
        if self.ram.mem().write_u64(gpa, value).is_ok() {
            self.ram.tracking().writes.insert(gpa & !7);
        }
    }

    fn translate(&mut self, req: &DmaRequest) {
        let got = self.op("translate", MAX_WALK_ACCESSES, |u| u.translate(req));
        // The oracle: a unit with the same registers and empty caches.
        if self.fresh.restore(&self.unit.snapshot()).is_err() {
            panic!("a unit's own snapshot does not restore onto a unit of the same configuration");
        }
        self.ram.tracking().reads = Some(BTreeSet::new());
        let want = self.fresh.translate(req);
        let reads = self.ram.tracking().reads.take().unwrap_or_default();
        {
            // The fresh walk's A/D updates are the hardware's, like the unit's own.
            let mut t = self.ram.tracking();
            let cas = std::mem::take(&mut t.cas_writes);
            self.cas_dirty.extend(cas);
        }
        self.fresh_sink.take();
        if reads.iter().any(|w| self.dirty.contains(w)) {
            return; // the guest changed what the walk reads without invalidating since
        }
        if same_translation(&got, &want) {
            return;
        }
        if reads.iter().any(|w| self.cas_dirty.contains(w)) {
            // An A/D update of one walk changed a word another walk reads in another role
            // (aliased tables): hardware's own write, not a stale cache.
            return;
        }
        panic!(
            "translation of {req:?} after every cache was invalidated: unit {got:?}, fresh walk {want:?}"
        );
    }

    /// Global context-cache and IOTLB invalidation through the interface the guest has now.
    fn invalidate_all(&mut self) {
        let gsts = Gsts::from_bits(self.unit.read(reg::GSTS, 4) as u32);
        let bound = self.mmio_bound();
        if !gsts.qies() {
            // CCMD: ICC | CIRG = global (spec 11.4.4.4); IOTLB_REG: IVT | IIRG = global.
            self.op("CCMD global", bound, |u| {
                u.write(reg::CCMD, 8, 1 << 63 | 1 << 61)
            });
            let iva = Ecap::from_bits(self.unit.read(reg::ECAP, 8)).iotlb_register_offset();
            self.op("IOTLB_REG global", bound, |u| {
                u.write(iva + 8, 8, 1 << 63 | 1 << 60)
            });
            return;
        }
        if Fsts::from_bits(self.unit.read(reg::FSTS, 4) as u32).iqe() {
            return; // the queue is stopped: the guest would clear IQE first
        }
        let iqa = Iqa::from_bits(self.unit.read(reg::IQA, 8));
        let ecap = Ecap::from_bits(self.unit.read(reg::ECAP, 8));
        let wide = iqa.dw() && ecap.smts();
        let (width, size, count) = if wide {
            (DescWidth::Bits256, 32u64, iqa.descriptor_count() as u64)
        } else {
            (DescWidth::Bits128, 16, 1u64 << (iqa.qs() as u32 + 8))
        };
        let tail = (self.unit.read(reg::IQT, 8) & 0x7fff0) / size;
        let descs = [
            InvDesc::ContextCache(ContextCacheInv {
                granularity: ContextCacheGranularity::Global,
                ignored: Default::default(),
            }),
            InvDesc::Iotlb(IotlbInv {
                granularity: IotlbGranularity::Global,
                drain_read: false,
                drain_write: false,
                ignored: Default::default(),
            }),
        ];
        let mut slot = tail;
        for d in descs {
            let Ok(raw) = d.encode(width) else { return };
            let Some(at) = iqa.base().checked_add((slot % count.max(1)) * size) else {
                return;
            };
            for (i, word) in raw.0.iter().take((size / 8) as usize).enumerate() {
                self.mem_write(at + 8 * i as u64, *word);
            }
            slot = (slot + 1) % count.max(1);
        }
        self.op("IQT doorbell", bound, |u| u.write(reg::IQT, 8, slot * size));
    }

    fn run(&mut self, op: Op) {
        let bound = self.mmio_bound();
        match op {
            Op::MmioWrite {
                offset,
                wide,
                value,
            } => {
                let size = if wide { 8 } else { 4 };
                self.op("MMIO write", bound, |u| {
                    u.write(offset as u64 & 0xfff, size, value)
                });
            }
            Op::MmioRead { offset, wide } => {
                let size = if wide { 8 } else { 4 };
                self.op("MMIO read", 0, |u| u.read(offset as u64 & 0xfff, size));
            }
            Op::MemWrite { gpa, value } => {
                let gpa = (gpa as u64 % RAM_SIZE) & !7;
                self.mem_write(gpa, value);
            }
            Op::Translate(req) => self.translate(&req),
            Op::RemapMsi {
                ioapic,
                sid,
                address,
                data,
            } => {
                let source = if ioapic {
                    MsiSource::IoApic
                } else {
                    MsiSource::Device(sid)
                };
                self.op("remap MSI", 16, |u| {
                    let _ = u.remap_msi(source, address, data);
                });
            }
            Op::InvalidateAll => self.invalidate_all(),
            Op::PageRequest(p) => {
                self.op("page request", 64, |u| {
                    let _ = u.page_request(&p);
                });
            }
            Op::Watch { sid, pasid } => self.unit.watch_mappings(sid, pasid),
            Op::Replay {
                sid,
                pasid,
                start,
                len,
            } => {
                let mut last = None;
                self.op("replay", REPLAY_BUDGET + 64, |u| {
                    let _ = u.replay(sid, pasid, start, start.saturating_add(len), |leaf| {
                        assert!(
                            last.is_none_or(|l| leaf.iova > l),
                            "replay leaves out of IOVA order"
                        );
                        last = Some(leaf.iova);
                    });
                });
            }
            Op::SnapshotRestore => {
                let snap = self.unit.snapshot();
                self.op("restore", 0, |u| {
                    assert_eq!(u.restore(&snap), Ok(()), "own snapshot refused");
                });
                assert_eq!(self.unit.snapshot(), snap, "restore changed the state");
            }
            Op::Reset => self.op("reset", 0, |u| u.reset()),
        }
    }
}

/// The target.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let props = CONFIGS[r.u8() as usize % CONFIGS.len()];
    let Ok(config) = VtdConfig::from_qemu_props(props) else {
        panic!("configuration {props:?} of the harness is refused");
    };
    let Some(mut h) = Harness::new(config) else {
        panic!("a valid configuration's unit could not be built");
    };
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = Op::read(&mut r);
        h.run(op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configuration_is_valid() {
        for props in CONFIGS {
            VtdConfig::from_qemu_props(props).unwrap();
        }
    }

    #[test]
    fn ops_round_trip_through_the_encoding() {
        let ops = [
            Op::MmioWrite {
                offset: 0x18,
                wide: false,
                value: 1 << 31,
            },
            Op::Translate(DmaRequest {
                pasid: Some(5),
                privileged: true,
                ..DmaRequest::new(0x10, 0x2000, AccessKind::Write)
            }),
            Op::InvalidateAll,
            Op::Reset,
        ];
        let bytes = encode(1, &ops);
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), 1);
        for op in ops {
            assert_eq!(format!("{:?}", Op::read(&mut r)), format!("{op:?}"));
        }
        assert!(r.is_empty());
    }
}
