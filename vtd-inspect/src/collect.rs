//! Building a [`Snapshot`] from a running unit: registers from the unit's register image,
//! devices from the tables the guest programmed.
//!
//! Everything read from guest memory is untrusted and bounded: the walk visits at most 256
//! buses x 256 devfns of present root entries, lists at most [`Limits::pasids_per_device`]
//! present PASID entries per device and a few mappings per table, and every 64-bit read is
//! taken from one [`Limits::read_budget`] per snapshot, so no table contents (loops, huge
//! PASID directories, addresses outside RAM) can make a snapshot slow or large. A table that
//! cannot be read is reported, not followed.
//!
//! Entries are decoded with vtd-tables' entry types, and whether the unit accepts an entry is
//! asked of vtd-tables' own lookups (`lookup_context`, `lookup_pasid_entry`), so the inspector
//! shows the fault the unit would report rather than a second opinion of its own.
//!
//! Only reads: the unit's register image is copied under its lock for a moment (as MMIO reads
//! do), guest memory is read without any lock, and nothing is written.

use vtd_core::{CacheStats, VtdUnit};
use vtd_regs::fault::FaultRecord;
use vtd_regs::regs::{Fsts, Gsts, Iqa, TranslationTableMode, offset as reg};
use vtd_tables::GuestRam;
use vtd_tables::entries::{
    ContextEntry, LegacyTranslationType, PasidDirEntry, PasidEntry, Pgtt, RootEntry,
    ScalableContextEntry, ScalableRootEntry,
};
use vtd_tables::enumerate::{TableFormat, for_each_leaf};
use vtd_tables::walk::{self, RootTable, WalkConfig};

use crate::protocol::{
    CacheView, CachesView, ContextView, DeviceView, EnumerationView, FaultRecordView, FaultsView,
    Field, MappingView, PasidView, QueueView, RootView, Snapshot, TableEntryView, UnitView, bdf,
};

/// Bounds on what one snapshot reads from guest memory and lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// 64-bit reads of guest memory per snapshot.
    pub read_budget: u32,
    /// Present PASID entries listed per device.
    pub pasids_per_device: usize,
    /// Present entries of a first-stage root table listed.
    pub root_entries: usize,
    /// Leaf mappings listed per table.
    pub mappings: usize,
    /// Reads spent looking for those mappings, per table.
    pub mapping_budget: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            read_budget: 1 << 19,
            pasids_per_device: 64,
            root_entries: 16,
            mappings: 16,
            mapping_budget: 2048,
        }
    }
}

/// Name of a translation-table mode.
pub fn mode_name(mode: TranslationTableMode) -> &'static str {
    match mode {
        TranslationTableMode::Legacy => "legacy",
        TranslationTableMode::Scalable => "scalable",
        TranslationTableMode::Reserved2 => "reserved",
        TranslationTableMode::AbortDma => "abort-dma",
    }
}

/// Name of a PGTT value.
pub fn pgtt_name(p: Pgtt) -> String {
    match p {
        Pgtt::FirstStage => "first-stage".into(),
        Pgtt::SecondStage => "second-stage".into(),
        Pgtt::Nested => "nested".into(),
        Pgtt::PassThrough => "pass-through".into(),
        Pgtt::Reserved(v) => format!("reserved({v})"),
    }
}

fn cache_view(s: CacheStats) -> CacheView {
    let lookups = s.hits + s.misses;
    CacheView {
        entries: s.entries,
        hits: s.hits,
        misses: s.misses,
        evictions: s.evictions,
        invalidated: s.invalidated,
        hit_rate: if lookups == 0 {
            0.0
        } else {
            s.hits as f64 / lookups as f64
        },
    }
}

/// The register image, read as the guest would (little-endian).
struct Image<'a>(&'a [u8]);

impl Image<'_> {
    fn r64(&self, off: u64) -> u64 {
        let off = off as usize;
        self.0
            .get(off..off + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    }
    fn r32(&self, off: u64) -> u32 {
        let off = off as usize;
        self.0
            .get(off..off + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    }
}

/// Reads guest memory within the snapshot's budget, noting what could not be read.
struct Reader<'m, M: GuestRam> {
    mem: &'m M,
    budget: u32,
    read: u32,
    exhausted: bool,
    unreadable: Vec<String>,
}

impl<M: GuestRam> Reader<'_, M> {
    fn take(&mut self, words: u32) -> bool {
        if self.budget < words {
            self.exhausted = true;
            return false;
        }
        self.budget -= words;
        self.read += words;
        true
    }

    fn words<const N: usize>(&mut self, gpa: u64, what: &str) -> Option<[u64; N]> {
        if !self.take(N as u32) {
            return None;
        }
        match self.mem.read_words::<N>(gpa) {
            Ok(w) => Some(w),
            Err(_) => {
                if self.unreadable.len() < 16 {
                    self.unreadable.push(format!("{what} at {gpa:#x}"));
                }
                None
            }
        }
    }
}

/// Takes a snapshot of `unit`. `software` names the VMM; `uptime_ms`, `counters` and
/// `bindings` come from the server.
pub fn snapshot<M: GuestRam + Send + Sync>(unit: &VtdUnit<M>, limits: &Limits) -> Snapshot {
    let image_owned = unit.snapshot().registers;
    let image = Image(&image_owned);
    let stats = unit.stats();
    let cap = vtd_regs::cap::Cap::from_bits(image.r64(reg::CAP));
    let ecap = vtd_regs::cap::Ecap::from_bits(image.r64(reg::ECAP));
    let root = unit.root_table();
    let gsts = image.r32(reg::GSTS);

    let mut reader = Reader {
        mem: unit.memory(),
        budget: limits.read_budget,
        read: 0,
        exhausted: false,
        unreadable: Vec::new(),
    };
    let walk_cfg = WalkConfig::new(cap, ecap);
    let devices = match root {
        Some(root) => devices(&mut reader, &walk_cfg, root, limits),
        None => Vec::new(),
    };

    Snapshot {
        software: String::new(),
        uptime_ms: 0,
        unit: UnitView {
            config: format!("{:?}", unit.config()),
            version: image.r32(reg::VER),
            cap: cap.into_bits(),
            cap_fields: cap_fields(cap),
            ecap: ecap.into_bits(),
            ecap_fields: ecap_fields(ecap),
            gsts,
            gsts_flags: gsts_flags(Gsts::from_bits(gsts)),
            rtaddr: image.r64(reg::RTADDR),
            root: root.map(|r| RootView {
                addr: r.addr,
                mode: mode_name(r.mode).to_string(),
            }),
            irta: image.r64(reg::IRTA),
        },
        queue: queue_view(&image, gsts, stats.descriptors),
        faults: faults_view(&image, cap, stats.dma_faults),
        caches: CachesView {
            iotlb: cache_view(stats.iotlb),
            context: cache_view(stats.context_cache),
            pasid: cache_view(stats.pasid_cache),
        },
        devices,
        enumeration: EnumerationView {
            entries_read: reader.read,
            budget_exhausted: reader.exhausted,
            unreadable: reader.unreadable,
        },
        bindings: Vec::new(),
        counters: Default::default(),
    }
}

fn cap_fields(cap: vtd_regs::cap::Cap) -> Vec<Field> {
    vec![
        Field::new("ND", cap.nd()),
        Field::new("CM", cap.cm()),
        Field::new("SAGAW", cap.sagaw()),
        Field::new("MGAW", cap.mgaw()),
        Field::new("FRO", cap.fro()),
        Field::new("SLLPS", cap.sllps()),
        Field::new("PSI", cap.psi()),
        Field::new("NFR", cap.nfr()),
        Field::new("MAMV", cap.mamv()),
        Field::new("DWD", cap.dwd()),
        Field::new("DRD", cap.drd()),
        Field::new("FL1GP", cap.fl1gp()),
        Field::new("PI", cap.pi()),
        Field::new("FL5LP", cap.fl5lp()),
        Field::new("ESRTPS", cap.esrtps()),
        Field::new("ESIRTPS", cap.esirtps()),
    ]
}

fn ecap_fields(e: vtd_regs::cap::Ecap) -> Vec<Field> {
    vec![
        Field::new("C", e.c()),
        Field::new("QI", e.qi()),
        Field::new("DT", e.dt()),
        Field::new("IR", e.ir()),
        Field::new("EIM", e.eim()),
        Field::new("PT", e.pt()),
        Field::new("SC", e.sc()),
        Field::new("IRO", e.iro()),
        Field::new("MHMV", e.mhmv()),
        Field::new("NEST", e.nest()),
        Field::new("PRS", e.prs()),
        Field::new("ERS", e.ers()),
        Field::new("SRS", e.srs()),
        Field::new("NWFS", e.nwfs()),
        Field::new("EAFS", e.eafs()),
        Field::new("PSS", e.pss()),
        Field::new("PASID", e.pasid()),
        Field::new("DIT", e.dit()),
        Field::new("PDS", e.pds()),
        Field::new("SMTS", e.smts()),
        Field::new("SLADS", e.slads()),
        Field::new("SLTS", e.slts()),
        Field::new("FLTS", e.flts()),
        Field::new("SMPWC", e.smpwc()),
        Field::new("RPS", e.rps()),
    ]
}

fn gsts_flags(g: Gsts) -> Vec<String> {
    [
        ("TES", g.tes()),
        ("RTPS", g.rtps()),
        ("FLS", g.fls()),
        ("AFLS", g.afls()),
        ("WBFS", g.wbfs()),
        ("QIES", g.qies()),
        ("IRES", g.ires()),
        ("IRTPS", g.irtps()),
        ("CFIS", g.cfis()),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(n, _)| n.to_string())
    .collect()
}

fn queue_view(image: &Image<'_>, gsts: u32, processed: u64) -> QueueView {
    let iqa = Iqa::from_bits(image.r64(reg::IQA));
    let size = iqa.descriptor_size();
    // IQH/IQT hold byte offsets in bits 18:4 (spec 11.4.9.1-2).
    let slot = |v: u64| ((v & 0x7_fff0) / size as u64) as u32;
    QueueView {
        enabled: Gsts::from_bits(gsts).qies(),
        iqa: iqa.into_bits(),
        base: iqa.base(),
        slots: iqa.descriptor_count(),
        descriptor_bytes: size,
        head: slot(image.r64(reg::IQH)),
        tail: slot(image.r64(reg::IQT)),
        wait_completed: image.r32(reg::ICS) & 1 != 0,
        iqercd: image.r64(reg::IQERCD),
        descriptors_processed: processed,
    }
}

fn faults_view(image: &Image<'_>, cap: vtd_regs::cap::Cap, total: u64) -> FaultsView {
    let fsts = image.r32(reg::FSTS);
    let f = Fsts::from_bits(fsts);
    let fsts_flags = [
        ("PFO", f.pfo()),
        ("PPF", f.ppf()),
        ("AFO", f.afo()),
        ("APF", f.apf()),
        ("IQE", f.iqe()),
        ("ICE", f.ice()),
        ("ITE", f.ite()),
        ("PRO", f.pro()),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(n, _)| n.to_string())
    .collect();
    let base = cap.fault_recording_offset();
    let slots = cap.fault_record_count();
    let mut records = Vec::new();
    for index in 0..slots {
        let off = base + 16 * index as u64;
        let (lo, hi) = (image.r64(off), image.r64(off + 8));
        if hi & FaultRecord::FAULT_BIT == 0 {
            continue;
        }
        let decoded = FaultRecord::decode(lo, hi & !FaultRecord::FAULT_BIT);
        records.push(match decoded {
            Some(r) => FaultRecordView {
                index,
                raw: [lo, hi],
                sid: r.sid,
                pasid: r.pasid,
                address: r.address,
                reason_code: r.reason.code(),
                reason: r.reason.description().to_string(),
                request: format!("{:?}", r.request).to_lowercase(),
            },
            None => FaultRecordView {
                index,
                raw: [lo, hi],
                sid: hi as u16,
                pasid: None,
                address: lo,
                reason_code: (hi >> 32) as u8,
                reason: "undecodable record".into(),
                request: String::new(),
            },
        });
    }
    FaultsView {
        fsts,
        fsts_flags,
        fri: f.fri(),
        fectl: image.r32(reg::FECTL),
        records,
        record_slots: slots,
        dma_faults_total: total,
    }
}

fn devices<M: GuestRam>(
    r: &mut Reader<'_, M>,
    cfg: &WalkConfig,
    root: RootTable,
    limits: &Limits,
) -> Vec<DeviceView> {
    let mut out = Vec::new();
    for bus in 0u64..256 {
        let Some(re_addr) = root.addr.checked_add(bus * 16) else {
            break;
        };
        match root.mode {
            TranslationTableMode::Legacy => {
                let Some(words) = r.words::<2>(re_addr, "root entry") else {
                    continue;
                };
                let re = RootEntry(words);
                if !re.present() {
                    continue;
                }
                for devfn in 0u64..256 {
                    let addr = re.context_table() + devfn * 16;
                    let Some(words) = r.words::<2>(addr, "context entry") else {
                        continue;
                    };
                    let ce = ContextEntry(words);
                    if !ce.present() {
                        continue;
                    }
                    let sid = (bus << 8 | devfn) as u16;
                    out.push(legacy_device(r, cfg, root, sid, addr, ce, limits));
                }
            }
            TranslationTableMode::Scalable => {
                let Some(words) = r.words::<2>(re_addr, "root entry") else {
                    continue;
                };
                let re = ScalableRootEntry(words);
                for devfn in 0u16..256 {
                    let Some(table) = re.context_table_for(devfn as u8) else {
                        continue;
                    };
                    let addr = table + (devfn & 0x7f) as u64 * 32;
                    let Some(words) = r.words::<4>(addr, "context entry") else {
                        continue;
                    };
                    let ce = ScalableContextEntry(words);
                    if !ce.present() {
                        continue;
                    }
                    let sid = (bus as u16) << 8 | devfn;
                    out.push(scalable_device(r, cfg, root, sid, addr, ce, limits));
                }
            }
            TranslationTableMode::Reserved2 | TranslationTableMode::AbortDma => break,
        }
        if r.exhausted {
            break;
        }
    }
    out
}

/// Whether the unit accepts the context entry of `sid` (its own lookup; reads 2-6 words).
fn context_accepted<M: GuestRam>(
    r: &mut Reader<'_, M>,
    cfg: &WalkConfig,
    root: RootTable,
    sid: u16,
) -> bool {
    r.take(6) && walk::lookup_context(r.mem, cfg, root, sid).is_ok()
}

fn mappings<M: GuestRam>(
    r: &mut Reader<'_, M>,
    cfg: &WalkConfig,
    table: u64,
    format: TableFormat,
    limits: &Limits,
) -> Vec<MappingView> {
    let mut budget = limits.mapping_budget.min(r.budget);
    let before = budget;
    let mut out = Vec::new();
    // The budget bounds the walk; the listing stops growing at the limit.
    let _ = for_each_leaf(r.mem, cfg, table, format, 0..u64::MAX, &mut budget, |m| {
        if out.len() < limits.mappings {
            out.push(MappingView {
                iova: m.iova,
                size: m.size,
                output: m.output,
                read: m.perms.read,
                write: m.perms.write,
                execute: m.perms.execute,
            });
        }
    });
    r.take(before - budget);
    out
}

fn legacy_device<M: GuestRam>(
    r: &mut Reader<'_, M>,
    cfg: &WalkConfig,
    root: RootTable,
    sid: u16,
    entry_addr: u64,
    ce: ContextEntry,
    limits: &Limits,
) -> DeviceView {
    let accepted = context_accepted(r, cfg, root, sid);
    let tt = ce.translation_type();
    let maps = match tt {
        LegacyTranslationType::MultiLevel | LegacyTranslationType::MultiLevelWithDeviceTlb
            if accepted =>
        {
            let levels = ce.aw() + 2;
            mappings(
                r,
                cfg,
                ce.sl_table(),
                TableFormat::SecondStage { levels },
                limits,
            )
        }
        _ => Vec::new(),
    };
    DeviceView {
        sid,
        bdf: bdf(sid),
        entry_addr,
        context: ContextView::Legacy {
            raw: ce.0,
            translation_type: match tt {
                LegacyTranslationType::MultiLevel => "multi-level",
                LegacyTranslationType::MultiLevelWithDeviceTlb => "multi-level+dev-tlb",
                LegacyTranslationType::PassThrough => "pass-through",
                LegacyTranslationType::Reserved => "reserved",
            }
            .into(),
            aw: ce.aw(),
            did: ce.did(),
            ss_table: ce.sl_table(),
            fpd: ce.fpd(),
            accepted,
        },
        pasids: Vec::new(),
        pasids_truncated: false,
        mappings: maps,
    }
}

fn scalable_device<M: GuestRam>(
    r: &mut Reader<'_, M>,
    cfg: &WalkConfig,
    root: RootTable,
    sid: u16,
    entry_addr: u64,
    ce: ScalableContextEntry,
    limits: &Limits,
) -> DeviceView {
    let accepted = context_accepted(r, cfg, root, sid);
    let mut pasids = Vec::new();
    let mut truncated = false;
    let limit = ce.pasid_limit();
    let dir_entries = limit.div_ceil(64);
    'dir: for di in 0..dir_entries {
        let Some(de_addr) = ce.pasid_dir().checked_add(di as u64 * 8) else {
            break;
        };
        let Some([raw]) = r.words::<1>(de_addr, "PASID directory entry") else {
            if r.exhausted {
                truncated = true;
                break;
            }
            continue;
        };
        let de = PasidDirEntry::from_bits(raw);
        if !de.present() {
            continue;
        }
        for slot in 0..64u32 {
            let pasid = di * 64 + slot;
            if pasid >= limit {
                break 'dir;
            }
            let pe_addr = de.table() + slot as u64 * 64;
            let Some(words) = r.words::<8>(pe_addr, "PASID table") else {
                if r.exhausted {
                    truncated = true;
                    break 'dir;
                }
                // The whole table is unreadable: one note is enough.
                continue 'dir;
            };
            let pe = PasidEntry(words);
            if !pe.present() {
                continue;
            }
            if pasids.len() == limits.pasids_per_device {
                truncated = true;
                break 'dir;
            }
            pasids.push(pasid_view(r, cfg, &ce, pasid, pe_addr, pe, limits));
        }
    }
    DeviceView {
        sid,
        bdf: bdf(sid),
        entry_addr,
        context: ContextView::Scalable {
            raw: ce.0,
            pasid_dir: ce.pasid_dir(),
            pdts: ce.pdts(),
            pasid_limit: limit,
            paside: ce.paside(),
            pre: ce.pre(),
            dte: ce.dte(),
            rid_pasid: ce.rid_pasid(),
            fpd: ce.fpd(),
            accepted,
        },
        pasids,
        pasids_truncated: truncated,
        mappings: Vec::new(),
    }
}

fn pasid_view<M: GuestRam>(
    r: &mut Reader<'_, M>,
    cfg: &WalkConfig,
    ce: &ScalableContextEntry,
    pasid: u32,
    entry_addr: u64,
    pe: PasidEntry,
    limits: &Limits,
) -> PasidView {
    let accepted = r.take(9) && walk::lookup_pasid_entry(r.mem, cfg, ce, pasid, false).is_ok();
    let pgtt = pe.pgtt();
    let fs = matches!(pgtt, Pgtt::FirstStage | Pgtt::Nested);
    let ss = matches!(pgtt, Pgtt::SecondStage | Pgtt::Nested);
    let mut fs_root_entries = Vec::new();
    let mut maps = Vec::new();
    if accepted {
        match pgtt {
            // The first-stage root is a guest-physical address only without nesting; under
            // nesting it is itself translated by the second stage (spec 3.8), which the
            // inspector does not do.
            Pgtt::FirstStage => {
                for index in 0..512u64 {
                    if fs_root_entries.len() == limits.root_entries {
                        break;
                    }
                    let Some([raw]) = r.words::<1>(pe.fs_table() + index * 8, "first-stage root")
                    else {
                        break;
                    };
                    if raw & 1 != 0 {
                        fs_root_entries.push(TableEntryView {
                            index: index as u16,
                            raw,
                        });
                    }
                }
                let levels = if pe.fspm() == 1 { 5 } else { 4 };
                maps = mappings(
                    r,
                    cfg,
                    pe.fs_table(),
                    TableFormat::FirstStage { levels },
                    limits,
                );
            }
            Pgtt::SecondStage | Pgtt::Nested => {
                let levels = pe.aw() + 2;
                maps = mappings(
                    r,
                    cfg,
                    pe.ss_table(),
                    TableFormat::SecondStage { levels },
                    limits,
                );
            }
            _ => {}
        }
    }
    PasidView {
        pasid,
        entry_addr,
        raw: pe.0,
        pgtt: pgtt_name(pgtt),
        did: pe.did(),
        aw: pe.aw(),
        fs_table: fs.then(|| pe.fs_table()),
        ss_table: ss.then(|| pe.ss_table()),
        fspm: pe.fspm(),
        sre: pe.sre(),
        wpe: pe.wpe(),
        eafe: pe.eafe(),
        ere: pe.ere(),
        fpd: pe.fpd(),
        pwsnp: pe.pwsnp(),
        pgsnp: pe.pgsnp(),
        accepted,
        fs_root_entries,
        mappings: maps,
    }
}
