//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/`, from the
//! project's own inputs: the recorded Linux 6.12 trace (its register writes and queued
//! descriptors for `unit`, its descriptors for `inv_desc`), the testkit driver's
//! Linux-style programming sequences, tables built with vtd-tables' builders, the DMAR
//! tables the VMM and tests build, the inspector's recorded snapshot and events, the
//! conformance scenarios and their modules, and the conformance interpreter's ELF image.
//!
//! `cargo run --manifest-path fuzz/harness/Cargo.toml --example gen_seeds` (replaces the
//! generated files; the corpus is committed, so rerun it only when an input format changes).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fuzz_harness::unit::{self, Op};
use fuzz_harness::walk::{WalkInput, Walker};
use fuzz_harness::{dmar, inspect_protocol, inv_desc, scenario, snapshot};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vtd_core::{AccessKind, DmaRequest, VtdEvent};
use vtd_regs::inv::{
    ContextCacheGranularity, DescWidth, IotlbGranularity, PasidCacheGranularity, RawDesc,
};
use vtd_regs::regs::offset as reg;
use vtd_tables::GuestRam;
use vtd_tables::builder::{
    ContextTablesBuilder, FrameAllocator, PageSize, PageTableBuilder, PageTableFormat,
    PasidTablesBuilder,
};
use vtd_tables::dmar::{DeviceScope, Dmar, RemappingStructure, Rmrr, Satc, ScopeKind};
use vtd_tables::entries::{ContextEntry, PasidEntry};
use vtd_testkit::driver::{self, Guest};
use vtd_testkit::trace::{Event, Trace};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus")
}

struct Out {
    dir: PathBuf,
    count: usize,
    seen: BTreeSet<Vec<u8>>,
}

impl Out {
    fn new(target: &str) -> Self {
        let dir = corpus().join(target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        Self {
            dir,
            count: 0,
            seen: BTreeSet::new(),
        }
    }
    fn put(&mut self, name: &str, bytes: Vec<u8>) {
        if !self.seen.insert(bytes.clone()) {
            return;
        }
        std::fs::write(self.dir.join(format!("{:03}-{name}", self.count)), bytes)
            .expect("write seed");
        self.count += 1;
    }
}

/// Index of "x-scalable-mode=on,x-flts=on" in `unit::CONFIGS`, the trace's configuration.
const SM_FLTS: u8 = 1;

fn config_index(props: &str) -> u8 {
    unit::CONFIGS
        .iter()
        .position(|c| *c == props)
        .expect("a harness configuration") as u8
}

/// A register write (offset, size, value) and the descriptors (slot, low, high) it made
/// QEMU fetch.
type Block = ((u64, u8, u64), Vec<(u64, u64, u64)>);

/// The trace as register writes, each with the descriptors it made QEMU fetch.
fn trace_blocks(trace: &Trace) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    let mut head = None;
    for e in &trace.events {
        match e {
            Event::RegWrite { addr, size, value } => {
                blocks.push(((*addr, *size, *value), Vec::new()))
            }
            Event::QiHead { head: h } => head = Some(*h),
            Event::InvDesc { low, high, .. } => {
                if let (Some(b), Some(h)) = (blocks.last_mut(), head) {
                    b.1.push((h, *low, *high));
                }
            }
            _ => {}
        }
    }
    blocks
}

/// Seeds of the unit target from the trace: chunks of at most ~450 operations, each after a
/// preamble that recreates the state the chunk starts in (root, interrupt table, queue,
/// GCMD), with the queue slots relocated so the chunk's first descriptor is at slot 0.
fn unit_trace_seeds(out: &mut Out, trace: &Trace) {
    let blocks = trace_blocks(trace);
    // 256-bit descriptors in the trace's queue (IQA.DW).
    let (mut rtaddr, mut irta, mut iqa, mut gcmd) = (0u64, 0u64, 0u64, 0u32);
    let mut i = 0;
    let mut chunk = 0;
    while i < blocks.len() && chunk < 40 {
        let mut ops = Vec::new();
        let size = if iqa & (1 << 11) != 0 { 32 } else { 16 };
        let count: u64 = if size == 32 {
            1 << ((iqa & 7) + 7)
        } else {
            1 << ((iqa & 7) + 8)
        };
        // Where the queue's head is at this point: the slot of the next descriptor.
        let base_slot = blocks[i..]
            .iter()
            .find_map(|b| b.1.first().map(|d| d.0))
            .unwrap_or(0);
        if chunk > 0 {
            let w = |offset: u64, wide: bool, value: u64| Op::MmioWrite {
                offset: offset as u16,
                wide,
                value,
            };
            let persistent = gcmd as u64 & 0x8680_0000; // TE, QIE, IRE, CFI
            ops.extend([
                w(reg::RTADDR, true, rtaddr),
                w(reg::GCMD, false, persistent & !(1 << 31) | 1 << 30),
                w(reg::IRTA, true, irta),
                w(reg::GCMD, false, persistent & !(1 << 31) | 1 << 24),
                w(reg::IQT, true, 0),
                w(reg::IQA, true, iqa),
                w(reg::GCMD, false, persistent),
            ]);
        }
        let relocate = |slot: u64| (slot + count - base_slot % count) % count;
        while i < blocks.len() && ops.len() < 450 {
            let ((addr, size_bytes, value), descs) = &blocks[i];
            let base = iqa & !0xfff;
            for &(slot, low, high) in descs {
                let at = base + relocate(slot) * size;
                ops.push(Op::MemWrite {
                    gpa: at as u32,
                    value: low,
                });
                ops.push(Op::MemWrite {
                    gpa: (at + 8) as u32,
                    value: high,
                });
            }
            let mut value = *value;
            if *addr == reg::IQT && chunk > 0 {
                value = relocate(value / size) * size;
            }
            match *addr {
                reg::RTADDR => rtaddr = value,
                reg::IRTA => irta = value,
                reg::IQA => iqa = value,
                reg::GCMD => gcmd = value as u32,
                _ => {}
            }
            // Descriptors in the trace follow the doorbell that made QEMU fetch them; they
            // were in memory before it, so they go first.
            ops.push(Op::MmioWrite {
                offset: *addr as u16,
                wide: *size_bytes == 8,
                value,
            });
            i += 1;
        }
        // A few DMAs of the device Linux drove (00:03.0 in the trace) after each chunk.
        for iova in [0x1000u64, 0xfff0_0000, 0x7fff_f000] {
            ops.push(Op::Translate(DmaRequest::new(0x18, iova, AccessKind::Read)));
        }
        out.put(
            &format!("linux-trace-{chunk:02}"),
            unit::encode(SM_FLTS, &ops),
        );
        chunk += 1;
    }
}

/// Seeds of the unit target from the testkit driver: the final memory (tables, queue,
/// status words) as writes, the register writes in order, then DMAs.
fn unit_driver_seed(
    out: &mut Out,
    name: &str,
    props: &str,
    build: impl FnOnce(&mut Guest),
    dmas: &[DmaRequest],
) {
    let mut g = Guest::new(props, 64);
    build(&mut g);
    let mut ops = Vec::new();
    let mut word = [0u8; 8];
    for gpa in (0x100_0000u64..0x140_0000).step_by(8) {
        if g.mem.read_slice(&mut word, GuestAddress(gpa)).is_ok() {
            let v = u64::from_le_bytes(word);
            if v != 0 {
                ops.push(Op::MemWrite {
                    gpa: gpa as u32,
                    value: v,
                });
            }
        }
    }
    for e in g.log.take() {
        if let VtdEvent::RegisterWrite {
            offset,
            size,
            value,
        } = e
        {
            ops.push(Op::MmioWrite {
                offset: offset as u16,
                wide: size == 8,
                value,
            });
        }
    }
    for d in dmas {
        ops.push(Op::Translate(*d));
    }
    ops.push(Op::InvalidateAll);
    for d in dmas {
        ops.push(Op::Translate(*d));
    }
    ops.truncate(unit::MAX_OPS);
    out.put(name, unit::encode(config_index(props), &ops));
}

fn unit_seeds(trace: &Trace) {
    let mut out = Out::new("unit");
    unit_trace_seeds(&mut out, trace);
    let rd = |sid, iova| DmaRequest::new(sid, iova, AccessKind::Read);
    let wr = |sid, iova| DmaRequest::new(sid, iova, AccessKind::Write);
    for (props, levels) in [("", 4u8), ("aw-bits=39,pt=off", 3)] {
        unit_driver_seed(
            &mut out,
            &format!("driver-legacy-{levels}level"),
            props,
            |g| {
                g.legacy_one_page(0x18, 1, levels, 0x4000, 0x20_0000);
                g.enable_qi(false);
                g.enable_fault_msi();
            },
            &[
                rd(0x18, 0x4000),
                wr(0x18, 0x4008),
                rd(0x18, 0x5000),
                rd(0x20, 0x4000),
            ],
        );
    }
    for props in [
        "x-scalable-mode=on,x-flts=on",
        "x-scalable-mode=on",
        "x-scalable-mode=on,x-flts=on,caching-mode=on,snoop-control=on",
    ] {
        unit_driver_seed(
            &mut out,
            "driver-scalable-pt",
            props,
            |g| {
                g.enable_qi(true);
                g.scalable_device(0x18, 2, false);
                g.submit(&[
                    driver::pasid_cache(2, PasidCacheGranularity::Domain),
                    driver::pasid_iotlb_all(2, 0),
                    driver::iotlb(IotlbGranularity::Domain { did: 2 }),
                    driver::context_cache(ContextCacheGranularity::Global),
                ]);
            },
            &[rd(0x18, 0x4000), wr(0x18, 0x9000), rd(0x19, 0)],
        );
    }
    unit_driver_seed(
        &mut out,
        "driver-prq",
        "x-scalable-mode=on,x-flts=on,x-pasid-mode=on,x-vtd-page-requests=on,device-iotlb=on",
        |g| {
            g.enable_qi(true);
            g.enable_prq(0);
            g.scalable_device(0x18, 3, true);
        },
        &[rd(0x18, 0x1000)],
    );
    unit_driver_seed(
        &mut out,
        "driver-ir",
        "intremap=on,eim=on",
        |g| {
            g.enable_qi(false);
            g.set_interrupt_table(
                vtd_regs::regs::Irta::new()
                    .with_s(3)
                    .with_eime(true)
                    .with_irta(0x180_0000 >> 12),
            );
            g.set_interrupt_remapping(true);
        },
        &[],
    );
    println!("unit: {}", out.count);
}

fn inv_desc_seeds(trace: &Trace) {
    let mut out = Out::new("inv_desc");
    let mut types = std::collections::BTreeMap::<(String, u64), usize>::new();
    for e in &trace.events {
        if let Event::InvDesc { kind, low, high } = e {
            // Keep a handful of each type and granularity.
            let n = types.entry((kind.clone(), low & 0xff0)).or_default();
            *n += 1;
            if *n <= 4 {
                out.put(
                    &format!("linux-{kind}"),
                    inv_desc::encode(true, [*low, *high, 0, 0]),
                );
            }
        }
    }
    let descs = [
        driver::context_cache(ContextCacheGranularity::Device {
            did: 3,
            sid: 0x18,
            fm: 1,
        }),
        driver::iotlb(IotlbGranularity::Page {
            did: 1,
            addr: 0x20_0000,
            am: 9,
            ih: true,
        }),
        driver::pasid_iotlb_page(4, 7, 0x7000, 2, false),
        driver::pasid_cache(4, PasidCacheGranularity::Pasid { pasid: 7 }),
        Guest::wait_descriptor(0x100_0000, 1),
    ];
    for d in descs {
        for wide in [false, true] {
            let width = if wide {
                DescWidth::Bits256
            } else {
                DescWidth::Bits128
            };
            if let Ok(RawDesc(words)) = d.encode(width) {
                out.put(
                    &format!("driver-{}", d.trace_name()),
                    inv_desc::encode(wide, words),
                );
            }
        }
    }
    println!("inv_desc: {}", out.count);
}

fn memory_records(mem: &GuestMemoryMmap<()>) -> Vec<(u32, u64)> {
    let mut v = Vec::new();
    for gpa in (0..fuzz_harness::walk::RAM_SIZE).step_by(8) {
        if let Ok(w) = mem.read_u64(gpa)
            && w != 0
        {
            v.push((gpa as u32, w));
        }
    }
    v
}

fn walk_seeds() {
    let mut out = Out::new("walk");
    let new_mem = || {
        GuestMemoryMmap::<()>::from_ranges(&[(
            GuestAddress(0),
            fuzz_harness::walk::RAM_SIZE as usize,
        )])
        .expect("RAM")
    };
    let base = |walker, config: &str, root, mode, req, records| WalkInput {
        walker,
        config: config_index(config),
        root,
        mode,
        req,
        pasid_entry: [0; 8],
        range_len: 0,
        budget: 0,
        memory: records,
    };
    // Legacy second stage, 3-5 levels, 4K/2M/1G leaves; and pass-through.
    for (config, levels, size) in [
        ("", 4u8, PageSize::Size4K),
        ("", 4, PageSize::Size2M),
        ("", 4, PageSize::Size1G),
        ("aw-bits=39,pt=off", 3, PageSize::Size4K),
        ("aw-bits=39,pt=off", 3, PageSize::Size2M),
    ] {
        let mem = new_mem();
        let mut frames = FrameAllocator::new(0x1_0000, 0x10_0000);
        let mut ctx = ContextTablesBuilder::new(&mem, &mut frames, false).expect("frames");
        let mut pt =
            PageTableBuilder::new(&mem, &mut frames, PageTableFormat::SecondStage { levels })
                .expect("frames");
        let iova = 0x4000_0000u64;
        pt.map(&mut frames, iova, 0x8000_0000, size, true, true)
            .expect("map");
        ctx.set_legacy_context(
            &mut frames,
            0x18,
            ContextEntry::new(pt.root(), levels - 2, 1),
        )
        .expect("ctx");
        ctx.set_legacy_context(&mut frames, 0x20, ContextEntry::pass_through(levels - 2, 2))
            .expect("ctx");
        let records = memory_records(&mem);
        for (sid, access) in [
            (0x18, AccessKind::Write),
            (0x18, AccessKind::Read),
            (0x20, AccessKind::Read),
        ] {
            let req = DmaRequest::new(sid, iova + 0x123, access);
            out.put(
                &format!("legacy-{levels}level-{}", size.bytes()),
                base(
                    Walker::Translate,
                    config,
                    ctx.root(),
                    0,
                    req,
                    records.clone(),
                )
                .encode(),
            );
        }
        let req = DmaRequest::new(0x18, iova + 0x10, AccessKind::Write);
        out.put(
            "second-stage",
            base(
                Walker::SecondStage,
                config,
                pt.root(),
                levels,
                req,
                records.clone(),
            )
            .encode(),
        );
        let mut e = base(
            Walker::Enumerate,
            config,
            pt.root(),
            levels,
            DmaRequest::new(0, 0, AccessKind::Read),
            records.clone(),
        );
        e.range_len = u64::MAX;
        e.budget = 4096;
        out.put("enumerate-second-stage", e.encode());
    }
    // Scalable: first stage (4/5 levels), second stage, nested, pass-through, with and
    // without PASID.
    for (config, kind) in [
        ("x-scalable-mode=on,x-flts=on", "fs4"),
        (
            "x-scalable-mode=on,x-flts=on,x-pasid-mode=on,x-vtd-page-requests=on,device-iotlb=on",
            "fs5",
        ),
        ("x-scalable-mode=on", "ss"),
        ("x-scalable-mode=on,x-flts=on", "pt"),
        ("x-scalable-mode=on,x-flts=on", "nested"),
    ] {
        let mem = new_mem();
        let mut frames = FrameAllocator::new(0x1_0000, 0x10_0000);
        let mut ctx = ContextTablesBuilder::new(&mem, &mut frames, true).expect("frames");
        let mut pasids = PasidTablesBuilder::new(&mem, &mut frames, 0).expect("frames");
        let iova = 0x7f00_0000_1000u64;
        let fs_levels = if kind == "fs5" { 5 } else { 4 };
        let mut fs = PageTableBuilder::new(
            &mem,
            &mut frames,
            PageTableFormat::FirstStage { levels: fs_levels },
        )
        .expect("frames");
        fs.map(
            &mut frames,
            iova & 0xffff_ffff_ffff,
            0x9000,
            PageSize::Size4K,
            true,
            true,
        )
        .expect("map");
        let mut ss = PageTableBuilder::new(
            &mem,
            &mut frames,
            PageTableFormat::SecondStage { levels: 4 },
        )
        .expect("frames");
        // Identity-map the frames area for the nested walk's table addresses, and the output.
        for page in (0..0x10_0000u64).step_by(0x20_0000) {
            ss.map(&mut frames, page, page, PageSize::Size2M, true, true)
                .expect("map");
        }
        ss.map(
            &mut frames,
            iova & 0xffff_ffff_ffff,
            0x9000,
            PageSize::Size4K,
            true,
            true,
        )
        .expect("map");
        let pe = match kind {
            "ss" => PasidEntry::second_stage(ss.root(), 2, 5),
            "pt" => PasidEntry::pass_through(5, 2),
            "nested" => PasidEntry::nested(fs.root(), false, ss.root(), 2, 5),
            _ => PasidEntry::first_stage(fs.root(), fs_levels == 5, 5, 2),
        };
        pasids.set_entry(&mut frames, 0, pe).expect("pasid");
        pasids.set_entry(&mut frames, 9, pe).expect("pasid");
        ctx.set_scalable_context(&mut frames, 0x18, pasids.context_entry().with_paside(true))
            .expect("ctx");
        let records = memory_records(&mem);
        let iova = if kind == "ss" || kind == "pt" {
            iova & 0xffff_ffff_ffff
        } else {
            iova
        };
        for pasid in [None, Some(9)] {
            let req = DmaRequest {
                pasid,
                ..DmaRequest::new(0x18, iova + 0x40, AccessKind::Write)
            };
            out.put(
                &format!("scalable-{kind}"),
                base(
                    Walker::Translate,
                    config,
                    ctx.root(),
                    1,
                    req,
                    records.clone(),
                )
                .encode(),
            );
        }
        if kind.starts_with("fs") || kind == "nested" {
            let mut f = base(
                Walker::FirstStage,
                config,
                0,
                0,
                DmaRequest::new(0x18, iova, AccessKind::Read),
                records.clone(),
            );
            f.pasid_entry = pe.0;
            out.put(&format!("first-stage-{kind}"), f.encode());
            let mut e = base(
                Walker::Enumerate,
                config,
                fs.root(),
                0x8 | fs_levels,
                DmaRequest::new(0, 0, AccessKind::Read),
                records.clone(),
            );
            e.range_len = u64::MAX;
            e.budget = 4096;
            out.put("enumerate-first-stage", e.encode());
        }
    }
    println!("walk: {}", out.count);
}

fn dmar_seeds() {
    let mut out = Out::new("dmar");
    for (aw, ir, x2apic_opt_out, ioapic) in [
        (48, true, false, Some(0)),
        (39, false, false, None),
        (48, true, true, Some(2)),
    ] {
        let d = Dmar::for_single_unit(0xfed9_0000, aw, ir, x2apic_opt_out, ioapic);
        out.put(
            &format!("single-unit-aw{aw}"),
            dmar::encode(false, &d.to_bytes()),
        );
    }
    let mut d = Dmar::for_single_unit(0xfed9_0000, 48, true, false, Some(0));
    let scope = DeviceScope {
        kind: ScopeKind::Endpoint,
        enumeration_id: 0,
        start_bus: 0,
        path: vec![(3, 0), (0, 1)],
    };
    d.structures.push(RemappingStructure::Rmrr(Rmrr {
        segment: 0,
        base: 0xe000_0000,
        limit: 0xe00f_ffff,
        scopes: vec![scope.clone()],
    }));
    d.structures.push(RemappingStructure::Satc(Satc {
        atc_required: true,
        segment: 0,
        scopes: vec![scope],
    }));
    d.structures.push(RemappingStructure::Unknown {
        kind: 0x77,
        bytes: vec![1, 2, 3, 4],
    });
    if let Ok(bytes) = d.try_to_bytes() {
        out.put("rmrr-satc-unknown", dmar::encode(false, &bytes));
        out.put("rmrr-satc-unknown-fixsum", dmar::encode(true, &bytes));
    }
    println!("dmar: {}", out.count);
}

fn inspect_seeds() {
    use vtd_inspect::protocol::{
        ClientMessage, EventBatch, EventRecord, Hello, ServerMessage, Snapshot, write_message,
    };
    let mut out = Out::new("inspect_protocol");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../vtd-inspect/tests/data");
    let mut client = Vec::new();
    for m in [
        ClientMessage::Hello(Hello::ours("vtd-inspect 0.1.0")),
        ClientMessage::GetSnapshot,
        ClientMessage::Subscribe,
        ClientMessage::Unsubscribe,
    ] {
        write_message(&mut client, &m).expect("encode");
    }
    out.put("client-session", inspect_protocol::encode(true, &client));
    let mut server = Vec::new();
    write_message(
        &mut server,
        &ServerMessage::Hello(Hello::ours("vtd-vmm 0.1.0")),
    )
    .expect("encode");
    let snapshot: Snapshot = serde_json::from_slice(
        &std::fs::read(data.join("snapshot.json")).expect("recorded snapshot"),
    )
    .expect("snapshot decodes");
    write_message(&mut server, &ServerMessage::Snapshot(Box::new(snapshot))).expect("encode");
    let events: Vec<EventRecord> = std::fs::read_to_string(data.join("events.jsonl"))
        .expect("recorded events")
        .lines()
        .map(|l| serde_json::from_str(l).expect("event decodes"))
        .collect();
    write_message(
        &mut server,
        &ServerMessage::Events(EventBatch { events, dropped: 3 }),
    )
    .expect("encode");
    out.put("server-session", inspect_protocol::encode(false, &server));
    let mut hello_only = Vec::new();
    write_message(&mut hello_only, &ServerMessage::Hello(Hello::ours("x"))).expect("encode");
    out.put("server-hello", inspect_protocol::encode(false, &hello_only));
    out.put("long-line", vec![1u8; 200]);
    println!("inspect_protocol: {}", out.count);
}

fn scenario_seeds() {
    let mut out = Out::new("scenario");
    let dir = vtd_conformance::corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("scenario corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for (i, f) in files.iter().enumerate() {
        let text = std::fs::read(f).expect("scenario");
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or("scenario");
        out.put(stem, scenario::seed(false, &text));
        // Every eighth scenario's module seeds the module decoder.
        if i % 8 == 0
            && let Ok(s) = vtd_conformance::scenario::load_scenario(f)
            && let Ok(m) = vtd_conformance::encode::encode(&s)
        {
            out.put(&format!("{stem}-module"), scenario::seed(true, &m));
        }
    }
    println!("scenario: {}", out.count);
}

fn multiboot_seeds() {
    let mut out = Out::new("multiboot");
    out.put(
        "conformance-interpreter.elf",
        vtd_conformance::runner::INTERPRETER.to_vec(),
    );
    // An a.out-kludge image: header with address fields at offset 0, loaded at 1 MiB.
    let flags: u32 = 1 << 16 | 1 << 1 | 1;
    let magic: u32 = 0x1bad_b002;
    let mut img = Vec::new();
    for v in [
        magic,
        flags,
        0u32.wrapping_sub(magic).wrapping_sub(flags),
        0x10_0000,
        0x10_0000,
        0,
        0x10_2000,
        0x10_0020,
    ] {
        img.extend_from_slice(&v.to_le_bytes());
    }
    img.resize(0x800, 0x90);
    out.put("aout-kludge", img);
    println!("multiboot: {}", out.count);
}

/// Seeds for `snapshot`: vtd-migrate's golden files of every format version, each offered to
/// every target configuration (the matching one restores, the others are refused).
fn snapshot_seeds() {
    let mut out = Out::new("snapshot");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../vtd-migrate/tests/data");
    for version in [1, 2] {
        let bytes = std::fs::read(data.join(format!("golden-v{version}.bin")))
            .expect("vtd-migrate's golden snapshot");
        for config in 0..4 {
            out.put(
                &format!("golden-v{version}-config{config}"),
                snapshot::encode(config, &bytes),
            );
        }
    }
}

/// `gen_seeds [TARGET...]`: regenerates the seed corpus of the targets named (all by default).
fn main() {
    let only: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |t: &str| only.is_empty() || only.iter().any(|o| o == t);
    if wanted("unit") || wanted("inv_desc") {
        let trace = Trace::load().expect("the recorded Linux trace");
        if wanted("unit") {
            unit_seeds(&trace);
        }
        if wanted("inv_desc") {
            inv_desc_seeds(&trace);
        }
    }
    let rest: [(&str, fn()); 6] = [
        ("walk", walk_seeds),
        ("dmar", dmar_seeds),
        ("inspect_protocol", inspect_seeds),
        ("scenario", scenario_seeds),
        ("multiboot", multiboot_seeds),
        ("snapshot", snapshot_seeds),
    ];
    for (target, seeds) in rest {
        if wanted(target) {
            seeds();
        }
    }
}
