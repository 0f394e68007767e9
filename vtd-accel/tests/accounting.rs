//! The binder's counters ([`AccelStats`]) are what a VMM monitors and exports: each one must
//! count what it says, which the simulated host can check, since it records every call it was
//! asked to make (successful or failed) and every invalidation entry it handled.

mod common;

use common::*;
use vtd_accel::sim::{SimOp, SimStats};
use vtd_accel::*;
use vtd_regs::VtdConfig;
use vtd_regs::fault::FaultReason;
use vtd_regs::inv::PasidCacheGranularity;
use vtd_tables::builder::{PageSize, PageTableBuilder, PageTableFormat};
use vtd_tables::entries::PasidEntry;
use vtd_tables::walk::AccessKind;

const FLTS: &str = "x-scalable-mode=on,x-flts=on";

/// The host calls of `op` that failed, as the binder reported them.
fn failed(events: &[AccelEvent], op: BackendOp) -> u64 {
    events
        .iter()
        .filter(|e| matches!(e, AccelEvent::HostError { error, .. } if error.op == op))
        .count() as u64
}

/// The binder's counters of host calls agree with what the host saw between `h0`/`s0` and
/// now: every successful allocation, attach, detach and destroy counted once, every
/// `IOMMU_HWPT_INVALIDATE` call counted (failed ones too) with the entries the host handled.
fn assert_counters_match_host(rig: &Rig, h0: &SimStats, s0: &AccelStats, events: &[AccelEvent]) {
    let (h, s) = (rig.sim.stats(), rig.binder.stats());
    let ok = |op: SimOp, bop: BackendOp| h.calls(op) - h0.calls(op) - failed(events, bop);
    assert_eq!(
        s.hwpts_allocated - s0.hwpts_allocated,
        ok(SimOp::AllocHwpt, BackendOp::AllocHwpt),
        "allocations"
    );
    assert_eq!(
        (s.nested_attaches + s.parent_attaches) - (s0.nested_attaches + s0.parent_attaches),
        ok(SimOp::Attach, BackendOp::Attach),
        "attaches"
    );
    assert_eq!(
        s.detaches - s0.detaches,
        ok(SimOp::Detach, BackendOp::Detach),
        "detaches"
    );
    assert_eq!(
        s.hwpts_destroyed - s0.hwpts_destroyed,
        ok(SimOp::Destroy, BackendOp::Destroy),
        "destroys"
    );
    assert_eq!(
        s.invalidate_calls - s0.invalidate_calls,
        h.calls(SimOp::Invalidate) - h0.calls(SimOp::Invalidate),
        "IOMMU_HWPT_INVALIDATE calls"
    );
    assert_eq!(
        s.invalidation_entries - s0.invalidation_entries,
        h.invalidation_entries - h0.invalidation_entries,
        "invalidation entries handled"
    );
    assert_eq!(
        s.host_errors - s0.host_errors,
        h.injected_failures - h0.injected_failures,
        "host errors"
    );
}

/// Points PASID entry 0 at `pe` and flushes the PASID cache for it (one re-evaluation).
fn set_pasid0(rig: &mut Rig, pe: PasidEntry) {
    rig.write_pasid_entry(0, pe);
    rig.g
        .submit(&[pasid_cache(DID, PasidCacheGranularity::Pasid { pasid: 0 })]);
}

/// Each counter counts its own kind of work, once per event: a rebind is one allocation, one
/// nested attach and one destroy; pass-through is one parent attach; a guest block is one
/// detach; re-evaluating an unchanged binding costs no host call; a PASID-selective
/// PASID-cache invalidation re-evaluates the one binding it names; an invalidation descriptor
/// counts as forwarded when it reached a nested HWPT, not otherwise.
#[test]
fn counters_count_each_host_call_and_each_re_evaluation() {
    let mut rig = Rig::new(FLTS);
    rig.events.take();
    let (h0, s0) = (rig.sim.stats(), rig.binder.stats());
    let step = |rig: &Rig, before: &AccelStats| {
        let s = rig.binder.stats();
        [
            s.hwpts_allocated - before.hwpts_allocated,
            s.nested_attaches - before.nested_attaches,
            s.parent_attaches - before.parent_attaches,
            s.detaches - before.detaches,
            s.hwpts_destroyed - before.hwpts_destroyed,
            s.syncs - before.syncs,
        ]
    };
    let mut before = rig.binder.stats();
    let mut expect = |rig: &Rig, want: [u64; 6], what: &str| {
        assert_eq!(
            step(rig, &before),
            want,
            "{what}: [allocated, nested, parent, detaches, destroyed, syncs]"
        );
        before = rig.binder.stats();
    };
    let root = rig.new_fs_table(IOVA, 0x90_0000, true);
    set_pasid0(&mut rig, PasidEntry::first_stage(root, false, DID, 2));
    expect(&rig, [1, 1, 0, 0, 1, 1], "rebind to a new table");
    set_pasid0(&mut rig, PasidEntry::pass_through(DID, 2));
    expect(&rig, [0, 0, 1, 0, 1, 1], "pass-through");
    let attaches = rig.sim.stats().calls(SimOp::Attach);
    set_pasid0(&mut rig, PasidEntry::pass_through(DID, 2));
    expect(&rig, [0, 0, 0, 0, 0, 1], "pass-through again");
    assert_eq!(
        rig.sim.stats().calls(SimOp::Attach),
        attaches,
        "a binding already on its parent is not attached again"
    );
    set_pasid0(&mut rig, PasidEntry::default());
    expect(&rig, [0, 0, 0, 1, 0, 1], "not present");
    set_pasid0(&mut rig, PasidEntry::first_stage(root, false, DID, 2));
    expect(&rig, [1, 1, 0, 0, 0, 1], "first stage again");

    let forwarded = rig.binder.stats().invalidations_forwarded;
    rig.g.submit(&[
        pasid_iotlb_page(DID, 0, IOVA, 0, true),
        pasid_iotlb_page(DID, 0, IOVA + 0x1000, 0, true),
        pasid_iotlb_page(DID + 1, 0, IOVA, 0, true),
    ]);
    assert_eq!(
        rig.binder.stats().invalidations_forwarded,
        forwarded + 2,
        "two of the three descriptors name the device's domain"
    );
    rig.g.submit(&[pasid_iotlb_page(DID + 1, 0, IOVA, 0, true)]);
    assert_eq!(
        rig.binder.stats().invalidations_forwarded,
        forwarded + 2,
        "another domain's invalidation reached no HWPT"
    );
    let events = rig.events.take();
    assert_counters_match_host(&rig, &h0, &s0, &events);
    assert_eq!(rig.binder.stats().invalidation_entries, 2);
}

/// Under host failures the counters still agree with the host: a partial invalidation counts
/// the entries the host handled plus the full flush; a failed invalidation and flush fence the
/// binding (a detach and a destroy); a failed attach detaches; an orphan counts as destroyed
/// once its retry succeeds.
#[test]
fn counters_match_the_host_under_failures() {
    let mut rig = Rig::new(FLTS);
    rig.events.take();
    let (h0, s0) = (rig.sim.stats(), rig.binder.stats());
    // 2 entries, the host handles 1, then the full flush.
    rig.sim.fail_invalidate_partially(1);
    rig.g.submit(&[
        pasid_iotlb_page(DID, 0, IOVA + 0x8000, 0, true),
        pasid_iotlb_page(DID, 0, IOVA, 0, true),
    ]);
    let s = rig.binder.stats();
    assert_eq!(
        (
            s.invalidate_calls - s0.invalidate_calls,
            s.invalidation_entries - s0.invalidation_entries
        ),
        (2, 2)
    );
    // Invalidation and flush fail: the binding is fenced.
    let detaches = s.detaches;
    rig.sim.fail_next(SimOp::Invalidate, 2);
    rig.g.submit(&[pasid_iotlb_page(DID, 0, IOVA, 0, true)]);
    assert_eq!(rig.binder.stats().detaches, detaches + 1, "fence");
    rig.binder.retry_failed();
    assert!(rig.nested_hwpt().is_some());
    // A failed attach: the binder detaches so iommufd agrees.
    let detaches = rig.binder.stats().detaches;
    rig.sim.fail_next(SimOp::Attach, 1);
    let root = rig.new_fs_table(IOVA, 0x90_0000, true);
    set_pasid0(&mut rig, PasidEntry::first_stage(root, false, DID, 2));
    assert_eq!(
        rig.binder.stats().detaches,
        detaches + 1,
        "detach after attach"
    );
    rig.binder.retry_failed();
    // A failed destroy, then the orphan's retry.
    rig.sim.fail_next(SimOp::Destroy, 1);
    let root = rig.new_fs_table(IOVA, 0xa0_0000, true);
    set_pasid0(&mut rig, PasidEntry::first_stage(root, false, DID, 2));
    assert_eq!(rig.binder.orphans().len(), 1);
    let destroyed = rig.binder.stats().hwpts_destroyed;
    rig.binder.retry_failed();
    assert!(rig.binder.orphans().is_empty());
    assert_eq!(rig.binder.stats().hwpts_destroyed, destroyed + 1);
    let events = rig.events.take();
    assert_counters_match_host(&rig, &h0, &s0, &events);
    rig.check_host_matches_binder();
}

/// Every host fault read is counted once, and once more as injected, suppressed or not meant
/// for the guest; `process_host_faults` returns how many it read.
#[test]
fn host_fault_counters() {
    let mut rig = Rig::new(FLTS);
    // Non-recoverable faults reach user space only where the backend says so (never on
    // VT-d hosts): this test exercises their routing, so it asks the simulator for it.
    rig.sim.report_unrecoverable_faults(true);
    let outside = IOVA + 0x20_0000;
    let mem = rig.g.mem.clone();
    let mut fs = PageTableBuilder::at(&mem, rig.fs_root, PageTableFormat::FirstStage { levels: 4 });
    for page in [outside, outside + 0x1000] {
        fs.map(
            &mut rig.g.frames,
            page,
            0x1_0000_0000,
            PageSize::Size4K,
            true,
            true,
        )
        .unwrap();
    }
    // Unmapped IOVA: the guest's first-stage fault. A GPA outside guest RAM: second stage.
    assert_eq!(
        rig.dma(IOVA + 0x5000, AccessKind::Read).unwrap_err().reason,
        FaultReason::FirstStageNotPresent
    );
    assert_eq!(
        rig.dma(outside, AccessKind::Read).unwrap_err().reason,
        FaultReason::SecondStagePermissionDenied
    );
    rig.dma(outside + 0x1000, AccessKind::Read).unwrap_err();
    let s0 = rig.binder.stats();
    assert_eq!(rig.binder.process_host_faults(), 3);
    let s = rig.binder.stats();
    assert_eq!(
        (
            s.host_faults - s0.host_faults,
            s.faults_injected - s0.faults_injected,
            s.faults_suppressed - s0.faults_suppressed,
            s.faults_not_injected - s0.faults_not_injected
        ),
        (3, 1, 0, 2)
    );
    assert_eq!(rig.binder.process_host_faults(), 0, "the queue is drained");
}

/// PASID-cache invalidations re-evaluate bindings; PASID-IOTLB invalidations only forward,
/// except for a PASID the binder does not follow yet, whose entry the guest may have written
/// without a PASID-cache invalidation (CM = 0): it is bound first. `syncs` counts each
/// re-evaluation.
#[test]
fn pasid_iotlb_invalidations_bind_unseen_pasids_and_re_evaluate_nothing_else() {
    let cfg = VtdConfig {
        pasid_bits: 8,
        ..VtdConfig::from_qemu_props(FLTS).unwrap()
    };
    let mut rig = Rig::with_config(cfg);
    let syncs = |rig: &Rig| rig.binder.stats().syncs;
    let root5 = rig.new_fs_table(IOVA, 0xb0_0000, true);
    rig.write_pasid_entry(5, PasidEntry::first_stage(root5, false, 7, 2));
    let before = syncs(&rig);
    rig.g.submit(&[pasid_iotlb_all(7, 5)]);
    let b5 = rig
        .binding(5)
        .expect("PASID 5 bound by its first invalidation");
    assert_eq!(b5.s1.unwrap().pgtbl_addr, root5);
    assert_eq!(syncs(&rig), before + 1);
    // Followed now: forwarded only.
    rig.g
        .submit(&[pasid_iotlb_all(7, 5), pasid_iotlb_all(DID, 0)]);
    assert_eq!(syncs(&rig), before + 1, "nothing re-evaluated");
}

/// On a unit without PASIDs the binder follows requests without PASID only: invalidations
/// naming another PASID re-evaluate nothing and leave no binding.
#[test]
fn a_unit_without_pasids_follows_no_pasid() {
    let mut rig = Rig::new(FLTS);
    assert_eq!(rig.g.unit.config().pasid_bits, 0);
    let before = rig.binder.stats().syncs;
    rig.g.submit(&[
        pasid_cache(DID, PasidCacheGranularity::Pasid { pasid: 5 }),
        pasid_iotlb_all(DID, 5),
    ]);
    assert_eq!(rig.binder.stats().syncs, before);
    assert!(rig.binding(5).is_none());
    assert_eq!(rig.binder.bindings().len(), 1);
}
