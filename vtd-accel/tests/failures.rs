//! Host failures: every failed host call is reported (event + counter), the device is never
//! left on a table the guest abandoned, nothing leaks, and a retry converges.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use vtd_accel::sim::SimOp;
use vtd_accel::*;
use vtd_regs::fault::FaultReason;
use vtd_regs::inv::PasidCacheGranularity;
use vtd_tables::entries::PasidEntry;
use vtd_tables::walk::AccessKind;

const FLTS: &str = "x-scalable-mode=on,x-flts=on";

fn host_errors(events: &[AccelEvent]) -> Vec<(BackendOp, Recovery)> {
    events
        .iter()
        .filter_map(|e| match e {
            AccelEvent::HostError {
                error, recovery, ..
            } => Some((error.op, *recovery)),
            _ => None,
        })
        .collect()
}

/// Points PASID entry 0 at a new table mapping IOVA -> `gpa` and flushes the PASID cache.
fn rebind(rig: &mut Rig, gpa: u64) -> u64 {
    let root = rig.new_fs_table(IOVA, gpa, true);
    rig.write_pasid_entry(0, PasidEntry::first_stage(root, false, DID, 2));
    rig.g
        .submit(&[pasid_cache(DID, PasidCacheGranularity::Pasid { pasid: 0 })]);
    root
}

fn assert_all_reported(rig: &Rig) {
    assert_eq!(
        rig.binder.stats().host_errors,
        rig.sim.stats().injected_failures,
        "every injected failure reported exactly once"
    );
}

#[test]
fn failed_allocation_fences_the_device_until_a_retry() {
    let mut rig = Rig::new(FLTS);
    // Non-recoverable faults reach user space only where the backend says so (never on
    // VT-d hosts): this test exercises their injection, so it asks the simulator for it.
    rig.sim.report_unrecoverable_faults(true);
    let old = rig.nested_hwpt().unwrap();
    rig.events.take();
    rig.sim.fail_next(SimOp::AllocHwpt, 1);
    let root = rebind(&mut rig, 0x90_0000);
    let ev = rig.events.take();
    assert_eq!(
        host_errors(&ev),
        vec![(BackendOp::AllocHwpt, Recovery::Blocked)]
    );
    let b = rig.binding(0).unwrap();
    assert_eq!(
        (b.host, b.blocked, b.dirty),
        (HostAttachment::Blocked, Some(BlockCause::HostFailure), true)
    );
    assert!(
        !rig.sim.hwpts().iter().any(|h| h.id == old),
        "the abandoned table's HWPT is gone"
    );
    // Its DMA is blocked, and that is not the guest's fault.
    rig.dma(IOVA, AccessKind::Read).unwrap_err();
    rig.binder.process_host_faults();
    assert!(rig.events.take().iter().any(|e| matches!(
        e,
        AccelEvent::HostFault {
            outcome: HostFaultOutcome::HostSide,
            ..
        }
    )));
    rig.check_host_matches_binder();
    rig.binder.retry_failed();
    let b = rig.binding(0).unwrap();
    assert!(matches!(b.host, HostAttachment::Nested(_)) && !b.dirty);
    assert_eq!(b.s1.unwrap().pgtbl_addr, root);
    assert_eq!(
        rig.dma(IOVA, AccessKind::Read).unwrap().hpa,
        HOST_BASE + 0x90_0000
    );
    rig.check_host_matches_binder();
    assert_all_reported(&rig);
}

#[test]
fn failed_attach_destroys_the_new_hwpt() {
    let mut rig = Rig::new(FLTS);
    rig.events.take();
    rig.sim.fail_next(SimOp::Attach, 1);
    rebind(&mut rig, 0x90_0000);
    assert_eq!(
        host_errors(&rig.events.take()),
        vec![(BackendOp::Attach, Recovery::Blocked)]
    );
    assert_eq!(rig.binding(0).unwrap().host, HostAttachment::Blocked);
    assert!(rig.sim.hwpts().iter().all(|h| h.id == rig.parent));
    rig.check_host_matches_binder();
    rig.binder.retry_failed();
    assert!(rig.nested_hwpt().is_some());
    assert_all_reported(&rig);
}

/// Replace is not atomic on Intel hosts: the driver blocks the device before it checks the new
/// table and does not revert a failure (Linux `drivers/iommu/intel/nested.c`,
/// `intel_nested_attach_dev()` -> `device_block_translation()` before
/// `drivers/iommu/intel/pasid.c` `intel_pasid_setup_nested()`). After a failed replace the
/// device is blocked, not on its previous HWPT, and the binder says so (even when its
/// bookkeeping detach fails too); the retry binds the guest's table.
#[test]
fn failed_replace_leaves_the_device_blocked_as_the_intel_driver_does() {
    let mut rig = Rig::new(FLTS);
    let old = rig.nested_hwpt().unwrap();
    rig.events.take();
    rig.sim.fail_next(SimOp::Attach, 1);
    rig.sim.fail_next(SimOp::Detach, 1);
    let root = rebind(&mut rig, 0x90_0000);
    assert_eq!(
        host_errors(&rig.events.take()),
        vec![
            (BackendOp::Attach, Recovery::Blocked),
            (BackendOp::Detach, Recovery::Blocked)
        ]
    );
    let b = rig.binding(0).unwrap();
    assert_eq!((b.host, b.dirty), (HostAttachment::Blocked, true));
    // The host agrees: nothing attached; the old HWPT is gone with the new one.
    assert!(rig.sim.attachments(rig.dev).is_empty());
    assert!(rig.sim.hwpts().iter().all(|h| h.id != old));
    rig.check_host_matches_binder();
    rig.binder.retry_failed();
    let b = rig.binding(0).unwrap();
    assert_eq!(b.s1.unwrap().pgtbl_addr, root);
    assert!(!b.dirty);
    rig.check_host_matches_binder();
    assert_all_reported(&rig);
}

#[test]
fn failed_destroy_leaves_a_known_orphan_that_is_retried() {
    let mut rig = Rig::new(FLTS);
    let old = rig.nested_hwpt().unwrap();
    rig.sim.fail_next(SimOp::Destroy, 1);
    rebind(&mut rig, 0x90_0000);
    assert_eq!(
        rig.binder.orphans(),
        vec![OrphanHwpt {
            bdf: BDF,
            hwpt: old
        }]
    );
    assert!(rig.sim.hwpts().iter().any(|h| h.id == old));
    rig.check_host_matches_binder();
    rig.events.take();
    rig.binder.retry_failed();
    assert!(rig.binder.orphans().is_empty());
    assert!(!rig.sim.hwpts().iter().any(|h| h.id == old));
    assert!(
        rig.events
            .take()
            .contains(&AccelEvent::OrphanDestroyed { hwpt: old })
    );
    rig.check_host_matches_binder();
    assert_all_reported(&rig);
}

#[test]
fn partial_invalidation_is_completed_by_a_full_flush() {
    let mut rig = Rig::new(FLTS);
    let hwpt = rig.nested_hwpt().unwrap();
    rig.dma(IOVA, AccessKind::Read).unwrap();
    rig.fs()
        .unmap(IOVA, vtd_tables::builder::PageSize::Size4K)
        .unwrap();
    rig.sim.take_invalidation_log();
    rig.events.take();
    rig.sim.fail_invalidate_partially(1);
    rig.g.submit(&[
        pasid_iotlb_page(DID, 0, IOVA + 0x8000, 0, true),
        pasid_iotlb_page(DID, 0, IOVA, 0, true),
    ]);
    let log = rig.sim.take_invalidation_log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].1.len(), 2);
    assert_eq!(log[1], (hwpt, vec![VtdS1Invalidation::ALL]));
    let ev = rig.events.take();
    assert_eq!(
        host_errors(&ev),
        vec![(BackendOp::Invalidate, Recovery::FullFlush)]
    );
    let handled = ev.iter().find_map(|e| match e {
        AccelEvent::HostError { error, .. } => error.handled,
        _ => None,
    });
    assert_eq!(handled, Some(1), "entry_num reported");
    // The unhandled entry's page is gone anyway, thanks to the full flush.
    assert_eq!(
        rig.dma(IOVA, AccessKind::Read).unwrap_err().reason,
        FaultReason::FirstStageNotPresent
    );
    assert_eq!(rig.nested_hwpt(), Some(hwpt));
    assert_all_reported(&rig);
}

#[test]
fn failed_invalidation_and_flush_fence_the_device() {
    let mut rig = Rig::new(FLTS);
    rig.dma(IOVA, AccessKind::Read).unwrap();
    rig.fs()
        .unmap(IOVA, vtd_tables::builder::PageSize::Size4K)
        .unwrap();
    rig.events.take();
    rig.sim.fail_next(SimOp::Invalidate, 2);
    rig.g.submit(&[pasid_iotlb_page(DID, 0, IOVA, 0, true)]);
    assert_eq!(
        host_errors(&rig.events.take()),
        vec![
            (BackendOp::Invalidate, Recovery::FullFlush),
            (BackendOp::Invalidate, Recovery::Blocked)
        ]
    );
    // The stale page is unreachable: the device is blocked.
    let b = rig.binding(0).unwrap();
    assert_eq!(
        (b.host, b.blocked, b.dirty),
        (HostAttachment::Blocked, Some(BlockCause::HostFailure), true)
    );
    assert!(rig.dma(IOVA, AccessKind::Read).is_err());
    rig.check_host_matches_binder();
    // A retry binds a fresh HWPT (fresh host caches).
    rig.binder.retry_failed();
    assert!(rig.nested_hwpt().is_some());
    assert_eq!(
        rig.dma(IOVA, AccessKind::Read).unwrap_err().reason,
        FaultReason::FirstStageNotPresent
    );
    assert_all_reported(&rig);
}

#[test]
fn failed_fault_queue_read_is_reported() {
    let rig = Rig::new(FLTS);
    // Non-recoverable faults reach user space only where the backend says so (never on
    // VT-d hosts): this test exercises their injection, so it asks the simulator for it.
    rig.sim.report_unrecoverable_faults(true);
    rig.dma(0xdead_0000, AccessKind::Read).unwrap_err();
    rig.sim.fail_next(SimOp::ReadFaults, 1);
    assert_eq!(rig.binder.process_host_faults(), 0);
    assert_eq!(
        host_errors(&rig.events.take()),
        vec![(BackendOp::ReadFaults, Recovery::None)]
    );
    assert_eq!(
        rig.binder.process_host_faults(),
        1,
        "the fault is still queued"
    );
    assert_all_reported(&rig);
}

#[test]
fn unregister_with_a_failing_host_keeps_the_device_registered() {
    let rig = Rig::new(FLTS);
    rig.sim.fail_next(SimOp::Attach, 1);
    rig.sim.fail_next(SimOp::Detach, 1);
    let e = rig.binder.unregister(BDF).unwrap_err();
    assert!(
        matches!(&e, UnregisterError::Host { error, .. } if error.op == BackendOp::Detach),
        "{e}"
    );
    assert!(rig.binder.is_registered(BDF));
    rig.check_host_matches_binder();
    rig.binder.unregister(BDF).unwrap();
    assert_eq!(
        rig.sim.attachments(rig.dev),
        [(None, rig.parent)].into_iter().collect()
    );
    assert!(rig.sim.hwpts().iter().all(|h| h.id == rig.parent));
    assert_all_reported(&rig);
}

/// A binding the host already blocked (fenced after a failed allocation) whose retry fails at
/// attach stays blocked: the one failure is reported, and neither a detach (nothing is
/// attached) nor a second "blocked" event follows.
#[test]
fn failed_attach_of_a_fenced_binding_reports_only_the_failure() {
    let mut rig = Rig::new(FLTS);
    rig.sim.fail_next(SimOp::AllocHwpt, 1);
    rebind(&mut rig, 0x90_0000);
    assert_eq!(rig.binding(0).unwrap().host, HostAttachment::Blocked);
    rig.events.take();
    let detaches = rig.sim.stats().calls(SimOp::Detach);
    rig.sim.fail_next(SimOp::Attach, 1);
    rig.binder.retry_failed();
    let ev = rig.events.take();
    assert_eq!(
        host_errors(&ev),
        vec![(BackendOp::Attach, Recovery::Blocked)]
    );
    assert!(
        !ev.iter().any(|e| matches!(e, AccelEvent::Blocked { .. })),
        "{ev:?}"
    );
    assert_eq!(rig.sim.stats().calls(SimOp::Detach), detaches);
    let b = rig.binding(0).unwrap();
    assert_eq!((b.host, b.dirty), (HostAttachment::Blocked, true));
    rig.check_host_matches_binder();
    rig.binder.retry_failed();
    assert!(rig.nested_hwpt().is_some());
    assert_all_reported(&rig);
}

/// A rig whose device's backend breaks [`HostIommuBackend::invalidate`]'s contract (`Ok(n)`
/// only when all `n` entries were handled) on demand: once the returned count is set, calls
/// with at least that many entries are handled by the host and reported one entry short
/// (`usize::MAX`: never).
fn short_count_rig() -> (Rig, Arc<AtomicUsize>) {
    let short_from = Arc::new(AtomicUsize::new(usize::MAX));
    let cfg = vtd_regs::VtdConfig::from_qemu_props(FLTS).unwrap();
    let info = host_info_for(&cfg);
    let threshold = short_from.clone();
    let mut rig = Rig::build(cfg, info, None, move |sim, _| {
        Arc::new(InvalidateHook {
            sim,
            invalidate: Box::new(move |sim, hwpt, entries| {
                let done = sim.invalidate(hwpt, entries)?;
                let short = entries.len() >= threshold.load(Ordering::Relaxed);
                Ok(if short { done - 1 } else { done })
            }),
        })
    });
    rig.g.set_translation(true);
    (rig, short_from)
}

/// A backend that reports `Ok` for fewer entries than it was given has not handled the rest,
/// whatever it says: the binder reports it as the partial failure it is (`handled` set to the
/// count, as a kernel `entry_num` would be) and recovers as from one, with a full flush; if
/// the full flush comes back short too, the host may still cache what the guest invalidated
/// and the binding is fenced. The accounting counts what the host said it handled.
#[test]
fn an_ok_for_fewer_entries_than_given_is_a_partial_invalidation() {
    let (mut rig, short_from) = short_count_rig();
    let hwpt = rig.nested_hwpt().unwrap();
    rig.dma(IOVA, AccessKind::Read).unwrap();
    rig.fs()
        .unmap(IOVA, vtd_tables::builder::PageSize::Size4K)
        .unwrap();
    let pages = [
        pasid_iotlb_page(DID, 0, IOVA + 0x8000, 0, true),
        pasid_iotlb_page(DID, 0, IOVA, 0, true),
    ];

    // Two entries in one call, `Ok(1)`: a full flush follows, and succeeds.
    rig.sim.take_invalidation_log();
    rig.events.take();
    let before = rig.binder.stats();
    short_from.store(2, Ordering::Relaxed);
    rig.g.submit(&pages);
    let log = rig.sim.take_invalidation_log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].1.len(), 2);
    assert_eq!(log[1], (hwpt, vec![VtdS1Invalidation::ALL]));
    let ev = rig.events.take();
    assert_eq!(
        host_errors(&ev),
        vec![(BackendOp::Invalidate, Recovery::FullFlush)]
    );
    let error = ev.iter().find_map(|e| match e {
        AccelEvent::HostError { error, hwpt, .. } => Some((error.clone(), *hwpt)),
        _ => None,
    });
    let (error, at) = error.unwrap();
    assert_eq!(
        (error.handled, error.errno, error.message.as_str(), at),
        (Some(1), None, "host handled 1 of 2 entries", Some(hwpt))
    );
    let after = rig.binder.stats();
    assert_eq!(
        (
            after.host_errors - before.host_errors,
            after.invalidate_calls - before.invalidate_calls,
            after.invalidation_entries - before.invalidation_entries,
        ),
        (1, 2, 1 + 1),
        "one error, the call and its full flush, the entry it admits to and the flush"
    );
    assert_eq!(rig.nested_hwpt(), Some(hwpt), "the binding keeps its HWPT");
    assert_eq!(
        rig.dma(IOVA, AccessKind::Read).unwrap_err().reason,
        FaultReason::FirstStageNotPresent
    );

    // Every call short, the full flush's `Ok(0)` included: the binding is fenced.
    short_from.store(1, Ordering::Relaxed);
    rig.g.submit(&pages);
    assert_eq!(
        host_errors(&rig.events.take()),
        vec![
            (BackendOp::Invalidate, Recovery::FullFlush),
            (BackendOp::Invalidate, Recovery::Blocked)
        ]
    );
    let b = rig.binding(0).unwrap();
    assert_eq!(
        (b.host, b.blocked),
        (HostAttachment::Blocked, Some(BlockCause::HostFailure))
    );
    rig.check_host_matches_binder();
}
