//! Real-driver input: the register writes and descriptors of a Linux 6.12 boot (QEMU event
//! trace in shared/traces) drive a unit into the state the guest expected, and every
//! interrupt QEMU remapped is remapped the same way here.

mod common;

use std::io::Read;

use common::*;
use vtd_core::{FaultDisposition, MsiSource, VtdEvent};
use vtd_regs::inv::{DescWidth, InvDesc, RawDesc};
use vtd_regs::regs::offset as reg;
use vtd_tables::GuestRam;

const TRACE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/traces/linux-6.12-sm-flts-strict.trace.xz"
);

fn trace_lines() -> Vec<String> {
    let file = std::fs::File::open(TRACE).unwrap_or_else(|e| {
        panic!("{TRACE}: {e}: CI clones main with shared/ beside it; the trace is required")
    });
    let mut raw = Vec::new();
    lzma_rs::xz_decompress(&mut std::io::BufReader::new(file), &mut raw).expect("valid xz");
    let mut text = String::new();
    raw.as_slice()
        .read_to_string(&mut text)
        .expect("utf-8 trace");
    text.lines().map(str::to_owned).collect()
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x").trim_end_matches([',', ')']), 16).unwrap()
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == name {
            return it.next().unwrap();
        }
    }
    panic!("no {name} in {line}")
}

#[test]
fn register_writes_and_queue_reach_the_expected_state() {
    let lines = trace_lines();
    // 1 GiB guest, as traced; memory is allocated lazily.
    let g = Guest::new("intremap=on,x-scalable-mode=on,x-flts=on", 1024);
    let mut untraced = 0usize;
    let mut writes = 0usize;
    let mut saw_full_state = false;
    // Descriptors appear in the trace after the IQT write that made QEMU process them, so
    // collect each IQT write's descriptors first, then place them and replay the write.
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        if line.starts_with("vtd_reg_write ") {
            let addr = hex(field(line, "addr"));
            let size = hex(field(line, "size")) as u8;
            let value = hex(field(line, "value"));
            if addr == reg::IQT {
                // Each `vtd_inv_qi_head read head N` is one descriptor QEMU processed at slot
                // N, followed by its `vtd_inv_desc` line, except for the PASID-cache type,
                // which QEMU 10.0.2 does not trace: Linux 6.12's set_root_table sends
                // qi_flush_pasid_cache(iommu, 0, QI_PC_GLOBAL, 0) there (qw0 = 0x37).
                let base = g.r64(reg::IQA) & !0xfff;
                let mut j = i + 1;
                let mut slot: Option<u64> = None;
                let mut printed = false;
                let place = |slot: Option<u64>,
                             printed: bool,
                             desc: Option<[u64; 2]>,
                             untraced: &mut usize| {
                    if let Some(n) = slot {
                        let d = match (printed, desc) {
                            (_, Some(d)) => d,
                            (false, None) => {
                                *untraced += 1;
                                [0x37, 0]
                            }
                            (true, None) => return,
                        };
                        g.mem
                            .write_words(base + n * 32, &[d[0], d[1], 0, 0])
                            .unwrap();
                    }
                };
                while j < lines.len() && !lines[j].starts_with("vtd_reg_write ") {
                    let l = &lines[j];
                    if l.starts_with("vtd_inv_qi_head read head") {
                        place(slot, printed, None, &mut untraced);
                        slot = Some(l.rsplit(' ').next().unwrap().parse().unwrap());
                        printed = false;
                    } else if l.starts_with("vtd_inv_desc invalidate desc type") {
                        place(
                            slot,
                            false,
                            Some([hex(field(l, "low")), hex(field(l, "high"))]),
                            &mut untraced,
                        );
                        printed = true;
                    }
                    j += 1;
                }
                // A head read after the last descriptor (head == tail) is not a descriptor.
                let tail = (value >> 5) & 0xff;
                if slot.is_some_and(|n| n != tail) {
                    place(slot, printed, None, &mut untraced);
                }
            }
            g.unit.write(addr, size, value);
            writes += 1;
            let gsts = g.r32(reg::GSTS);
            if gsts & 0x8700_0000 == 0x8700_0000 {
                saw_full_state = true;
                assert_eq!(
                    g.r64(reg::RTADDR) & (3 << 10),
                    1 << 10,
                    "scalable-mode root"
                );
            }
            assert_eq!(
                g.r32(reg::FSTS) & 0x71,
                0,
                "no fault or queue error after write {writes}: {line}"
            );
        }
        i += 1;
    }
    assert_eq!(writes, 3814);
    assert!(
        saw_full_state,
        "TE, QIE, IRE and IRTPS were all on at some point"
    );
    let stats = g.unit.stats();
    assert_eq!(untraced, 1, "exactly one untraced (PASID-cache) descriptor");
    assert_eq!(stats.descriptors, 7594, "every descriptor processed");
    assert_eq!(stats.dma_faults, 0);
    let events = g.log.take();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, VtdEvent::QueueError { .. }))
    );
    let root = g.unit.root_table().expect("root latched");
    assert_eq!(root.mode, vtd_regs::regs::TranslationTableMode::Scalable);
    // The guest powered off with TE cleared last; QI and IR stay on.
    let gsts = g.r32(reg::GSTS);
    assert_eq!(gsts & 0x0600_0000, 0x0600_0000, "QIES and IRES at the end");
    assert_eq!(
        gsts & 0x8000_0000,
        0,
        "TES cleared: the guest turned translation off last"
    );
    let _ = FaultDisposition::Suppressed;
}

#[test]
fn every_descriptor_decodes_as_qemu_printed() {
    let lines = trace_lines();
    let mut n = 0;
    for l in lines
        .iter()
        .filter(|l| l.starts_with("vtd_inv_desc invalidate desc type"))
    {
        let kind = field(l, "type");
        let raw = RawDesc([hex(field(l, "low")), hex(field(l, "high")), 0, 0]);
        let d = InvDesc::decode(&raw, DescWidth::Bits256).unwrap_or_else(|e| panic!("{l}: {e}"));
        let ok = matches!(
            (kind, &d),
            ("iotlb", InvDesc::Iotlb(_))
                | ("context-cache", InvDesc::ContextCache(_))
                | ("iec", InvDesc::Iec(_))
                | ("wait", InvDesc::Wait(_))
                | ("p-iotlb", InvDesc::PasidIotlb(_))
        );
        assert!(ok, "{l} decoded as {d:?}");
        n += 1;
    }
    assert_eq!(n, 7593);
}

#[test]
fn interrupts_remap_as_qemu_remapped_them() {
    let lines = trace_lines();
    let mut g = Guest::new("intremap=on,x-scalable-mode=on,x-flts=on", 64);
    let table = g.frames.alloc(&g.mem, 16).unwrap();
    g.w64(reg::IRTA, table | 11); // S = 11: 4096 entries in the 16 pages
    g.command(GCMD_SIRTP, false, true);
    g.command(GCMD_IRE, true, true);
    let mut checked = 0;
    let mut i = 0;
    while i < lines.len() {
        if lines[i].starts_with("vtd_ir_remap_msi_req") {
            let addr = hex(field(&lines[i], "addr"));
            let data = hex(field(&lines[i], "data")) as u32;
            let mut irte = None;
            let mut kind = None;
            let mut result = None;
            for l in &lines[i + 1..(i + 8).min(lines.len())] {
                if l.starts_with("vtd_ir_irte_get") {
                    // QEMU prints data[1] as "low" and data[0] as "high".
                    let index = field(l, "index").parse::<u64>().unwrap();
                    irte = Some((index, hex(field(l, "high")), hex(field(l, "low"))));
                } else if l.starts_with("vtd_ir_remap_type") {
                    kind = Some(l.split_whitespace().nth(1).unwrap().to_owned());
                } else if l.starts_with("vtd_ir_remap_msi ") {
                    let parts: Vec<&str> = l.split_whitespace().collect();
                    // vtd_ir_remap_msi (addr A, data D) -> (addr A2, data D2)
                    result = Some((hex(parts[7]), hex(parts[9]) as u32));
                    break;
                } else if l.starts_with("vtd_ir_remap_msi_req") {
                    break;
                }
            }
            if let (Some((index, lo, hi)), Some((out_addr, out_data))) = (irte, result) {
                g.mem.write_words(table + index * 16, &[lo, hi]).unwrap();
                let sid = (hi & 0xffff) as u16;
                let source = if kind.as_deref() == Some("IOAPIC") {
                    MsiSource::IoApic
                } else {
                    MsiSource::Device(sid)
                };
                let msi = g
                    .unit
                    .remap_msi(source, addr, data)
                    .unwrap_or_else(|f| panic!("{}: {f:?}", lines[i]));
                assert_eq!(
                    (msi.address, msi.data),
                    (out_addr, out_data),
                    "{}",
                    lines[i]
                );
                checked += 1;
            }
        }
        i += 1;
    }
    assert!(checked > 2000, "only {checked} remapped interrupts found");
}
