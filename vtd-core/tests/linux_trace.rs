//! Real-driver input: the register writes and descriptors of a Linux 6.12 boot (the QEMU
//! event trace in testdata/traces, loaded by `vtd_testkit::trace`) drive a unit into the state
//! the guest expected, and every interrupt QEMU remapped is remapped the same way here.

use vtd_core::{FaultDisposition, MsiSource, VtdEvent};
use vtd_regs::inv::{DescWidth, InvDesc, RawDesc};
use vtd_regs::regs::{Irta, offset as reg};
use vtd_tables::GuestRam;
use vtd_testkit::driver::*;
use vtd_testkit::trace::{Event, Trace};

fn trace() -> Trace {
    Trace::load().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn register_writes_and_queue_reach_the_expected_state() {
    let trace = trace();
    let events = &trace.events;
    // 1 GiB guest, as traced; memory is allocated lazily.
    let g = Guest::new("intremap=on,x-scalable-mode=on,x-flts=on", 1024);
    let mut untraced = 0usize;
    let mut writes = 0usize;
    let mut saw_full_state = false;
    // Descriptors appear in the trace after the IQT write that made QEMU process them, so
    // collect each IQT write's descriptors first, then place them and replay the write.
    for (i, event) in events.iter().enumerate() {
        let &Event::RegWrite { addr, size, value } = event else {
            continue;
        };
        if addr == reg::IQT {
            // Each `vtd_inv_qi_head read head N` is one descriptor QEMU processed at slot
            // N, followed by its `vtd_inv_desc` line, except for the PASID-cache type,
            // which QEMU 10.0.2 does not trace: Linux 6.12's set_root_table sends
            // qi_flush_pasid_cache(iommu, 0, QI_PC_GLOBAL, 0) there (qw0 = 0x37).
            let base = g.r64(reg::IQA) & !0xfff;
            let mut slot: Option<u64> = None;
            let mut printed = false;
            let place =
                |slot: Option<u64>, printed: bool, desc: Option<[u64; 2]>, untraced: &mut usize| {
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
            for e in events[i + 1..]
                .iter()
                .take_while(|e| !matches!(e, Event::RegWrite { .. }))
            {
                match e {
                    Event::QiHead { head } => {
                        place(slot, printed, None, &mut untraced);
                        slot = Some(*head);
                        printed = false;
                    }
                    Event::InvDesc { low, high, .. } => {
                        place(slot, false, Some([*low, *high]), &mut untraced);
                        printed = true;
                    }
                    _ => {}
                }
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
            "no fault or queue error after write {writes}: {event:?}"
        );
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
    let trace = trace();
    let mut n = 0;
    for e in &trace.events {
        let Event::InvDesc { kind, low, high } = e else {
            continue;
        };
        let raw = RawDesc([*low, *high, 0, 0]);
        let d =
            InvDesc::decode(&raw, DescWidth::Bits256).unwrap_or_else(|err| panic!("{e:?}: {err}"));
        let ok = matches!(
            (kind.as_str(), &d),
            ("iotlb", InvDesc::Iotlb(_))
                | ("context-cache", InvDesc::ContextCache(_))
                | ("iec", InvDesc::Iec(_))
                | ("wait", InvDesc::Wait(_))
                | ("p-iotlb", InvDesc::PasidIotlb(_))
        );
        assert!(ok, "{e:?} decoded as {d:?}");
        n += 1;
    }
    assert_eq!(n, 7593);
}

#[test]
fn interrupts_remap_as_qemu_remapped_them() {
    let trace = trace();
    let events = &trace.events;
    let mut g = Guest::new("intremap=on,x-scalable-mode=on,x-flts=on", 64);
    let table = g.frames.alloc(&g.mem, 16).unwrap();
    // S = 11: 4096 entries in the 16 pages.
    g.set_interrupt_table(Irta::new().with_s(11).with_irta(table >> 12));
    g.set_interrupt_remapping(true);
    let mut checked = 0;
    for (i, request) in events.iter().enumerate() {
        let &Event::RemapRequest { addr, data } = request else {
            continue;
        };
        let mut irte = None;
        let mut kind = None;
        let mut result = None;
        for e in &events[i + 1..(i + 8).min(events.len())] {
            match e {
                Event::IrteGet {
                    index,
                    qword0,
                    qword1,
                } => irte = Some((*index, *qword0, *qword1)),
                Event::RemapType { kind: k } => kind = Some(k.clone()),
                Event::RemapResult {
                    out_addr, out_data, ..
                } => {
                    result = Some((*out_addr, *out_data));
                    break;
                }
                Event::RemapRequest { .. } => break,
                _ => {}
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
                .unwrap_or_else(|f| panic!("{request:?}: {f:?}"));
            assert_eq!((msi.address, msi.data), (out_addr, out_data), "{request:?}");
            checked += 1;
        }
    }
    assert!(checked > 2000, "only {checked} remapped interrupts found");
}
