//! Real-driver input: every invalidation descriptor and interrupt-remapping lookup a Linux 6.12
//! guest made on QEMU 10.0.2 (`shared/traces/linux-6.12-sm-flts-strict.trace.xz`, see
//! `shared/traces/README.md`) must decode to what QEMU saw.

use std::collections::BTreeMap;
use std::io::BufReader;

use vtd_regs::inv::{
    ContextCacheGranularity, DescWidth, IecGranularity, InvDesc, IotlbGranularity,
    PasidIotlbGranularity, RawDesc, StatusWrite, page_range,
};
use vtd_regs::irte::{InterruptRequest, Irte, RemappableMsi, SourceValidation};

/// CI clones the repository with `shared/` beside `main/`.
const TRACE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/traces/linux-6.12-sm-flts-strict.trace.xz"
);

/// The decompressed trace. A missing trace fails the test: passing without input would hide
/// that nothing was checked.
fn trace_text() -> String {
    let file = std::fs::File::open(TRACE).unwrap_or_else(|err| {
        panic!("cannot open the QEMU trace {TRACE}: {err}; it ships in shared/traces beside the main checkout")
    });
    let mut text = Vec::new();
    lzma_rs::xz_decompress(&mut BufReader::new(file), &mut text)
        .unwrap_or_else(|err| panic!("cannot decompress {TRACE}: {err:?}"));
    String::from_utf8(text).expect("the trace is UTF-8 text")
}

/// A number as QEMU prints it: `0x`-prefixed hex, or decimal (indices, vectors).
fn number(token: &str) -> u64 {
    let token = token.trim_end_matches([',', ')']);
    let parsed = match token.strip_prefix("0x") {
        Some(digits) => u64::from_str_radix(digits, 16),
        None => token.parse(),
    };
    parsed.unwrap_or_else(|err| panic!("{token:?} is not a number: {err}"))
}

/// The value after `key` on a trace line such as `... high 0x0 low 0x11`.
fn value_after(line: &str, key: &str) -> u64 {
    let mut words = line.split_whitespace();
    while let Some(word) = words.next() {
        if word == key {
            return number(
                words
                    .next()
                    .unwrap_or_else(|| panic!("no value after {key:?} in {line:?}")),
            );
        }
    }
    panic!("no {key:?} in {line:?}")
}

fn event(line: &str) -> &str {
    line.split_whitespace().next().unwrap_or("")
}

#[test]
fn every_invalidation_descriptor_decodes_to_what_qemu_saw() {
    let text = trace_text();
    let lines: Vec<&str> = text.lines().collect();
    let mut per_type: BTreeMap<&str, usize> = BTreeMap::new();
    let mut p_iotlb_am: BTreeMap<u8, usize> = BTreeMap::new();
    let mut iec_index = 0;
    let mut iec_global = 0;

    for (at, line) in lines.iter().enumerate() {
        if event(line) != "vtd_inv_desc" {
            continue;
        }
        // `vtd_inv_desc invalidate desc type <name> high 0x.. low 0x..`
        let name = line.split_whitespace().nth(4).expect("type name");
        let (low, high) = (value_after(line, "low"), value_after(line, "high"));
        let next = lines.get(at + 1).copied().unwrap_or("");
        // The unit ran with IQA.DW = 1; QEMU prints the first 128 bits and checked the rest
        // were zero.
        let desc = InvDesc::decode(&RawDesc([low, high, 0, 0]), DescWidth::Bits256)
            .unwrap_or_else(|err| panic!("line {}: {line:?}: {err}", at + 1));
        assert_eq!(desc.trace_name(), name, "line {}: {desc}", at + 1);
        assert_eq!(
            desc.encode(DescWidth::Bits256),
            Ok(RawDesc([low, high, 0, 0])),
            "line {}: re-encoding {desc}",
            at + 1
        );
        *per_type.entry(name).or_default() += 1;

        match desc {
            InvDesc::PasidIotlb(inv) => {
                // Linux 6.12 strict mode, first-stage domain 5 on PASID 0 (RID_PASID):
                // page-selective, leaf-only (IH) invalidations after each unmap.
                assert_eq!((inv.did, inv.pasid), (5, 0), "line {}", at + 1);
                let PasidIotlbGranularity::Page { addr, am, ih } = inv.granularity else {
                    panic!("line {}: {desc} is not page-selective", at + 1);
                };
                assert!(ih, "line {}: {desc}", at + 1);
                assert_eq!(
                    *page_range(addr, am).start(),
                    addr,
                    "line {}: {desc} is not size-aligned",
                    at + 1
                );
                assert_eq!(
                    desc.to_string(),
                    format!("p-iotlb page did 5 pasid 0 addr {addr:#x} am {am} ih 1")
                );
                *p_iotlb_am.entry(am).or_default() += 1;
            }
            InvDesc::Wait(wait) => {
                // Linux: status write of 2, no interrupt, no fence; QEMU's next event reports
                // the same write.
                let Some(StatusWrite { addr, data }) = wait.status_write else {
                    panic!("line {}: {desc} has no status write", at + 1);
                };
                assert_eq!(data, 2);
                assert_eq!(addr % 4, 0);
                assert!(
                    !wait.interrupt && !wait.fence && !wait.page_drain,
                    "line {}: {desc}",
                    at + 1
                );
                assert_eq!(event(next), "vtd_inv_desc_wait_sw", "line {}", at + 2);
                assert_eq!(
                    (value_after(next, "addr"), value_after(next, "data")),
                    (addr, u64::from(data))
                );
            }
            InvDesc::Iec(iec) => {
                // QEMU's next event: `vtd_inv_desc_iec granularity G index I mask M`, where
                // G is the raw bit 4 (1 = index-selective).
                assert_eq!(event(next), "vtd_inv_desc_iec", "line {}", at + 2);
                let (granularity, index, mask) = (
                    value_after(next, "granularity"),
                    value_after(next, "index"),
                    value_after(next, "mask"),
                );
                match iec.granularity {
                    IecGranularity::Global => {
                        assert_eq!(granularity, 0);
                        iec_global += 1;
                    }
                    IecGranularity::Index { index: i, im } => {
                        assert_eq!((granularity, index, mask), (1, u64::from(i), u64::from(im)));
                        iec_index += 1;
                    }
                }
            }
            InvDesc::ContextCache(cc) => {
                assert_eq!(cc.granularity, ContextCacheGranularity::Global);
                assert_eq!(event(next), "vtd_inv_desc_cc_global");
            }
            InvDesc::Iotlb(iotlb) => {
                assert_eq!(iotlb.granularity, IotlbGranularity::Global);
                assert!(
                    iotlb.drain_read && iotlb.drain_write,
                    "Linux drains when CAP.DRD/DWD"
                );
                assert_eq!(event(next), "vtd_inv_desc_iotlb_global");
            }
            other => panic!("line {}: Linux issued no {other} in this run", at + 1),
        }
    }

    let expected: BTreeMap<&str, usize> = [
        ("p-iotlb", 3772),
        ("wait", 3797),
        ("iec", 22),
        ("context-cache", 1),
        ("iotlb", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(per_type, expected);
    assert_eq!(per_type.values().sum::<usize>(), 7593);
    assert_eq!((iec_global, iec_index), (1, 21));
    // Mostly single pages; multi-page unmaps up to 1 MiB (AM 8). The facts page's "AM = 0"
    // holds for 3,251 of the 3,772.
    let expected_am: BTreeMap<u8, usize> = [
        (0, 3251),
        (1, 35),
        (2, 28),
        (3, 23),
        (4, 34),
        (5, 25),
        (6, 27),
        (7, 49),
        (8, 300),
    ]
    .into_iter()
    .collect();
    assert_eq!(p_iotlb_am, expected_am);
}

#[test]
fn every_interrupt_lookup_decodes_to_what_qemu_remapped() {
    let text = trace_text();
    let lines: Vec<&str> = text.lines().collect();
    let mut remapped = 0;
    let mut compatibility = 0;
    let mut per_index: BTreeMap<u32, usize> = BTreeMap::new();

    for (at, line) in lines.iter().enumerate() {
        if event(line) != "vtd_ir_remap_msi_req" {
            continue;
        }
        let (addr, data) = (value_after(line, "addr"), value_after(line, "data"));
        let request = RemappableMsi::decode(addr, data as u32)
            .unwrap_or_else(|err| panic!("line {}: {err}", at + 1));
        let msi = match request {
            InterruptRequest::Compatibility { .. } => {
                // Only the one before IR was enabled; QEMU passed it through.
                assert!(
                    event(lines[at + 1]) == "vtd_ir_remap_msi",
                    "line {}",
                    at + 2
                );
                compatibility += 1;
                continue;
            }
            InterruptRequest::Remappable(msi) => msi,
        };
        // `vtd_ir_irte_get index I low L high H`: QEMU passes the IRTE's qword 1 as "low" and
        // qword 0 as "high" (the P bit is in the value printed as "high").
        let get = lines[at + 1];
        assert_eq!(event(get), "vtd_ir_irte_get", "line {}", at + 2);
        let index = value_after(get, "index");
        assert_eq!(u64::from(msi.interrupt_index()), index, "line {}", at + 1);
        let irte = Irte::decode(value_after(get, "high"), value_after(get, "low"));
        // The unit has no ECAP.EIM here, so the guest runs IR in xAPIC mode.
        assert_eq!(irte.validate(false), Ok(()), "line {}: {irte:?}", at + 2);

        // `vtd_ir_remap index I trigger T vector V deliver D dest X mode M`
        let remap = lines[at + 2];
        assert_eq!(event(remap), "vtd_ir_remap", "line {}", at + 3);
        assert_eq!(value_after(remap, "index"), index);
        assert_eq!(
            value_after(remap, "trigger"),
            u64::from(irte.low.level_triggered())
        );
        assert_eq!(value_after(remap, "vector"), u64::from(irte.vector()));
        assert_eq!(
            value_after(remap, "deliver"),
            u64::from(irte.low.delivery_mode())
        );
        assert_eq!(
            value_after(remap, "dest"),
            u64::from(irte.destination(false))
        );
        assert_eq!(
            value_after(remap, "mode"),
            u64::from(irte.low.logical_destination())
        );

        // Linux programs IOAPIC pins for the IOAPIC's SID (q35: ff:00.0) and the virtio-blk
        // MSI-X vector for 00:03.0. (QEMU's split-irqchip IOAPIC requests carry SID 0xffff,
        // for which QEMU skips the check, so the trace cannot show the check itself.)
        let requester = if index == 17 { 0x0018 } else { 0xff00 };
        assert!(matches!(
            irte.source_validation(),
            SourceValidation::RequesterId { sq: 0, .. }
        ));
        assert!(
            irte.source_id_matches(requester),
            "line {}: {irte:?}",
            at + 2
        );
        assert!(!irte.source_id_matches(requester ^ 0x0100));
        remapped += 1;
        *per_index.entry(msi.interrupt_index()).or_default() += 1;
    }

    assert_eq!((remapped, compatibility), (2843, 1));
    let expected: BTreeMap<u32, usize> = [(0, 10), (1, 217), (3, 2287), (7, 1), (11, 3), (17, 325)]
        .into_iter()
        .collect();
    assert_eq!(per_index, expected);
}
