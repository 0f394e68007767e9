//! Real-driver input: every invalidation descriptor and interrupt-remapping lookup a Linux 6.12
//! guest made on QEMU 10.0.2 (`testdata/traces/linux-6.12-sm-flts-strict.trace.xz`, see
//! `testdata/traces/README.md`; loaded by `vtd_testkit::trace`) must decode to what QEMU saw.

use std::collections::BTreeMap;

use vtd_regs::inv::{
    ContextCacheGranularity, DescWidth, IecGranularity, InvDesc, IotlbGranularity,
    PasidIotlbGranularity, RawDesc, StatusWrite, page_range,
};
use vtd_regs::irte::{InterruptRequest, Irte, RemappableMsi, SourceValidation};
use vtd_testkit::trace::{Event, Trace};

/// The trace; a missing trace fails the test: passing without input would hide that nothing
/// was checked.
fn trace() -> Trace {
    Trace::load().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_invalidation_descriptor_decodes_to_what_qemu_saw() {
    let trace = trace();
    let events = &trace.events;
    let mut per_type: BTreeMap<&str, usize> = BTreeMap::new();
    let mut p_iotlb_am: BTreeMap<u8, usize> = BTreeMap::new();
    let mut iec_index = 0;
    let mut iec_global = 0;

    for (at, line) in events.iter().enumerate() {
        // `vtd_inv_desc invalidate desc type <name> high 0x.. low 0x..`
        let Event::InvDesc {
            kind: name,
            low,
            high,
        } = line
        else {
            continue;
        };
        let (name, low, high) = (name.as_str(), *low, *high);
        let next = trace.next(at);
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
                assert_eq!(
                    next,
                    Some(&Event::WaitStatusWrite {
                        addr,
                        data: u64::from(data)
                    }),
                    "line {}",
                    at + 2
                );
            }
            InvDesc::Iec(iec) => {
                // QEMU's next event: `vtd_inv_desc_iec granularity G index I mask M`, where
                // G is the raw bit 4 (1 = index-selective).
                let Some(&Event::IecInvalidation {
                    granularity,
                    index,
                    mask,
                }) = next
                else {
                    panic!("line {}: {next:?} is not vtd_inv_desc_iec", at + 2);
                };
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
                assert_eq!(next.map(Event::name), Some("vtd_inv_desc_cc_global"));
            }
            InvDesc::Iotlb(iotlb) => {
                assert_eq!(iotlb.granularity, IotlbGranularity::Global);
                assert!(
                    iotlb.drain_read && iotlb.drain_write,
                    "Linux drains when CAP.DRD/DWD"
                );
                assert_eq!(next.map(Event::name), Some("vtd_inv_desc_iotlb_global"));
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
    // Mostly single pages (AM = 0 for 3,251 of the 3,772); multi-page unmaps up to 1 MiB
    // (AM 8).
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
    let trace = trace();
    let events = &trace.events;
    let mut remapped = 0;
    let mut compatibility = 0;
    let mut per_index: BTreeMap<u32, usize> = BTreeMap::new();

    for (at, line) in events.iter().enumerate() {
        let &Event::RemapRequest { addr, data } = line else {
            continue;
        };
        let request = RemappableMsi::decode(addr, data)
            .unwrap_or_else(|err| panic!("line {}: {err}", at + 1));
        let msi = match request {
            InterruptRequest::Compatibility { .. } => {
                // Only the one before IR was enabled; QEMU passed it through.
                assert!(
                    matches!(trace.next(at), Some(Event::RemapResult { .. })),
                    "line {}",
                    at + 2
                );
                compatibility += 1;
                continue;
            }
            InterruptRequest::Remappable(msi) => msi,
        };
        // `vtd_ir_irte_get index I low L high H`: QEMU passes the IRTE's qword 1 as "low" and
        // qword 0 as "high" (the P bit is in the value printed as "high"); the typed event
        // names the qwords.
        let Some(&Event::IrteGet {
            index,
            qword0,
            qword1,
        }) = trace.next(at)
        else {
            panic!("line {}: not vtd_ir_irte_get", at + 2);
        };
        assert_eq!(u64::from(msi.interrupt_index()), index, "line {}", at + 1);
        let irte = Irte::decode(qword0, qword1);
        // The unit has no ECAP.EIM here, so the guest runs IR in xAPIC mode.
        assert_eq!(irte.validate(false), Ok(()), "line {}: {irte:?}", at + 2);

        // `vtd_ir_remap index I trigger T vector V deliver D dest X mode M`
        let Some(&Event::Remap {
            index: remap_index,
            trigger,
            vector,
            deliver,
            dest,
            mode,
        }) = events.get(at + 2)
        else {
            panic!("line {}: not vtd_ir_remap", at + 3);
        };
        assert_eq!(remap_index, index);
        assert_eq!(trigger, u64::from(irte.low.level_triggered()));
        assert_eq!(vector, u64::from(irte.vector()));
        assert_eq!(deliver, u64::from(irte.low.delivery_mode()));
        assert_eq!(dest, u64::from(irte.destination(false)));
        assert_eq!(mode, u64::from(irte.low.logical_destination()));

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
