//! Save -> restore into a fresh unit gives a unit the guest cannot tell apart: every register
//! reads the same, every device translates the same IOVAs to the same addresses (or faults
//! the same way), MSIs remap the same, and further activity keeps both in step.

mod common;

use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use vtd_core::{EventLog, MsiSource};
use vtd_testkit::driver::Guest;

/// Runs `before` on a fresh scenario, migrates it (snapshot bytes, a byte-for-byte copy of
/// memory, a fresh unit), checks both units read, translate and remap the same, then runs
/// `after` on both and checks again, memory included.
fn check_scenario(mut s: Scenario, before: &[Op], after: &[Op]) {
    for op in before {
        s.apply(op);
    }
    let bytes = vtd_migrate::save(&s.g.unit);
    let target_mem = copy_memory(&s.g.mem);
    let (target, target_sink) = fresh_unit(s.g.unit.config().clone(), target_mem.clone());
    // A device model set up on the target before the state arrives (its address space made
    // while the unit was still in reset) translates with the restored tables afterwards.
    let (sid0, pasid0) = s.devices[0];
    let early_space = target.address_space(sid0, pasid0);
    let restored = vtd_migrate::restore(&target, &bytes).expect("restore");
    assert!(target.stats().iotlb.entries == 0, "caches start empty");
    assert_eq!(restored.unit, s.g.unit.export_state());
    assert_eq!(target.export_state(), s.g.unit.export_state());
    assert_same_registers(&s.g.unit, &target);
    {
        use vm_memory::iommu::Iommu;
        let mapped = early_space
            .translate(
                vm_memory::GuestAddress(iova(0)),
                16,
                vm_memory::Permissions::Read,
            )
            .map(|mut it| it.next().map(|r| r.base.0));
        let expected =
            s.g.unit
                .translate(&request(sid0, pasid0, 0, false))
                .map(|t| t.output);
        assert_eq!(
            mapped.ok().flatten(),
            expected.ok(),
            "address space switched"
        );
    }

    // The same activity on both: translations, faults and MSIs stay identical.
    s.g.sink.take();
    for (dev, &(sid, pasid)) in s.devices.clone().iter().enumerate() {
        let mut translated = 0;
        for page in 0..PAGES {
            for write in [false, true] {
                let req = request(sid, pasid, page, write);
                let a = s.g.unit.translate(&req);
                let b = target.translate(&req);
                assert_eq!(
                    a, b,
                    "device {dev} ({sid:#x}, {pasid:?}) page {page} write {write}"
                );
                translated += a.is_ok() as u32;
            }
        }
        // Mapped pages: reads of 0..MAPPED, writes of all but the read-only page.
        assert_eq!(
            translated,
            2 * MAPPED as u32 - 1,
            "device {dev} translates its pages"
        );
    }
    for sid in [0x08u16, 0x10] {
        for index in 0..(IR_ENTRIES as u16 + 1) {
            let a =
                s.g.unit
                    .remap_msi(MsiSource::Device(sid), remappable(index), 0);
            let b = target.remap_msi(MsiSource::Device(sid), remappable(index), 0);
            assert_eq!(a, b, "MSI from {sid:#x} index {index}");
        }
    }

    // The guest goes on on both sides: the driver's own state moves with the guest.
    let mut t = Scenario {
        g: Guest {
            mem: target_mem.clone(),
            unit: target.clone(),
            sink: target_sink.clone(),
            log: Arc::new(EventLog::default()),
            frames: s.g.frames.clone(),
            gcmd: s.g.gcmd,
            queue: s.g.queue.clone(),
            prq: s.g.prq,
        },
        devices: s.devices.clone(),
        ir_table: s.ir_table,
        page_requests: s.page_requests,
        passthrough: s.passthrough.clone(),
    };
    // It clears the queue error (if any) first, so the queue runs again.
    s.g.w32(vtd_regs::regs::offset::FSTS, 0x71);
    t.g.w32(vtd_regs::regs::offset::FSTS, 0x71);
    for op in after {
        s.apply(op);
        t.apply(op);
    }
    assert_eq!(target.export_state(), s.g.unit.export_state());
    assert_same_registers(&s.g.unit, &target);
    assert_eq!(
        s.g.sink.take(),
        target_sink.take(),
        "interrupts the unit raised"
    );
    assert_eq!(
        memory_difference(&s.g.mem, &target_mem),
        None,
        "guest memory"
    );
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn legacy_unit_round_trips(before in ops(), after in ops()) {
        check_scenario(Scenario::new(false), &before, &after);
    }

    #[test]
    fn scalable_unit_with_pasids_round_trips(before in ops(), after in ops()) {
        check_scenario(Scenario::new(true), &before, &after);
    }

    #[test]
    fn unit_with_page_requests_round_trips(before in ops(), after in ops()) {
        check_scenario(Scenario::with_page_requests(), &before, &after);
    }
}

#[test]
fn a_unit_stopped_mid_queue_with_pending_faults_and_events_round_trips() {
    use Op::*;
    let ops = [
        MaskFaultEvent(true),
        MaskCompletionEvent(true),
        Dma {
            dev: 0,
            page: 6,
            write: true,
        },
        Dma {
            dev: 1,
            page: 7,
            write: false,
        },
        Msi {
            sid: 0x77,
            index: 1,
        },
        FlushWithInterrupt,
        BadDescriptor,
        Dma {
            dev: 2,
            page: 1,
            write: true,
        },
    ];
    let mut s = Scenario::new(true);
    for op in &ops {
        s.apply(op);
    }
    let state = s.g.unit.export_state();
    assert!(
        state.pending.fault_event && state.pending.completion_event,
        "{state:?}"
    );
    assert!(
        state.pending.fault_status & 0x10 != 0,
        "IQE: the queue stopped"
    );
    assert_ne!(
        state.queue.head, state.queue.tail,
        "descriptors left in the queue"
    );
    assert_eq!(
        state.queue.last_descriptor_type,
        Some(5),
        "the wait ran last"
    );
    assert!(state.enabled.interrupt_remapping && state.enabled.translation);
    check_scenario(Scenario::new(true), &ops, &[Op::FlushWithInterrupt]);
}

#[test]
fn outstanding_page_groups_round_trip() {
    let s = golden_v2_scenario();
    let state = s.g.unit.export_state();
    assert_eq!(state.page_requests.outstanding.len(), 3, "{state:?}");
    check_scenario(
        Scenario::with_page_requests(),
        &[
            Op::PageRequest {
                dev: 0,
                prg: 1,
                last: true,
            },
            Op::PageRequest {
                dev: 3,
                prg: 2,
                last: true,
            },
        ],
        &[Op::RespondOldest, Op::ReadPageRequests, Op::RespondOldest],
    );
}
