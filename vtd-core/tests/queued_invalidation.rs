//! The invalidation queue as observers and guests see it: where a batch of queued
//! invalidations ends (what a forwarding observer flushes on), and the queue head across a
//! disable/enable cycle.

use vtd_core::{InvalidationSource, VtdEvent};
use vtd_regs::inv::{ContextCacheGranularity, IotlbGranularity};
use vtd_regs::regs::{Ccmd, IotlbReg, offset as reg};
use vtd_tables::GuestRam;
use vtd_testkit::driver::*;

/// The invalidation events since the last call, as (source, descriptor name).
fn invalidations(g: &Guest) -> Vec<InvalidationSource> {
    g.log
        .take()
        .into_iter()
        .filter_map(|e| match e {
            VtdEvent::Invalidation { source, .. } => Some(source),
            _ => None,
        })
        .collect()
}

fn queued(index: u32, ends_batch: bool) -> InvalidationSource {
    InvalidationSource::Queue { index, ends_batch }
}

fn global_iotlb() -> vtd_regs::inv::InvDesc {
    iotlb(IotlbGranularity::Global)
}

/// qi_submit_sync's shape: invalidations, then a wait. The wait is where software orders
/// completion (spec 6.5.2.8), so only the invalidation right before it ends the batch.
#[test]
fn the_invalidation_before_a_wait_ends_the_batch() {
    let mut g = Guest::new("", 64);
    g.enable_qi(false);
    g.log.take();
    g.submit(&[global_iotlb(), global_iotlb(), global_iotlb()]);
    assert_eq!(
        invalidations(&g),
        [queued(0, false), queued(1, false), queued(2, true)]
    );

    // Two batches in one doorbell: each wait closes the one before it.
    let status = g.queue.as_ref().unwrap().status;
    g.submit_raw(&[
        global_iotlb(),
        Guest::wait_descriptor(status, 0x77),
        global_iotlb(),
        global_iotlb(),
        Guest::wait_descriptor(status, 0x78),
    ]);
    assert_eq!(
        invalidations(&g),
        [queued(4, true), queued(6, false), queued(7, true)]
    );
    assert_eq!(g.mem.read_u64(status).unwrap() as u32, 0x78);
}

/// Without a wait, the tail ends the batch: nothing more is processed until the next doorbell.
#[test]
fn the_invalidation_at_the_tail_ends_the_batch() {
    let mut g = Guest::new("x-scalable-mode=on,x-flts=on", 64);
    g.enable_qi(true);
    g.log.take();
    g.submit_raw(&[
        pasid_iotlb_all(5, 0),
        pasid_iotlb_page(5, 0, 0x1000, 0, false),
    ]);
    assert_eq!(invalidations(&g), [queued(0, false), queued(1, true)]);
    assert_eq!(g.r64(reg::IQH), 2 * 32, "both processed");
}

/// A queue error stops processing, so the invalidation before the bad descriptor is the last
/// one of the batch.
#[test]
fn a_queue_error_mid_batch_closes_the_batch() {
    let mut g = Guest::new("", 64);
    g.enable_qi(false);
    g.log.take();
    g.place(&global_iotlb());
    g.place(&context_cache(ContextCacheGranularity::Global));
    g.place_words([0xf, 0, 0, 0]); // type 0xf: no such descriptor (spec 6.5.2)
    g.place(&global_iotlb());
    g.ring_doorbell();
    let events = g.log.take();
    let sources: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            VtdEvent::Invalidation { source, .. } => Some(*source),
            _ => None,
        })
        .collect();
    assert_eq!(sources, [queued(0, false), queued(1, true)]);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, VtdEvent::QueueError { head: 2, .. })),
        "{events:?}"
    );
    assert!(g.fsts().iqe());
}

/// CCMD and IOTLB_REG invalidations (spec 6.5.1) complete one at a time: each is a batch.
#[test]
fn register_based_invalidations_always_end_a_batch() {
    let g = Guest::new("", 64);
    g.log.take();
    g.w64(
        reg::CCMD,
        Ccmd::new().with_icc(true).with_cirg(1).into_bits(),
    );
    let iotlb_reg = g.unit.config().ecap().iotlb_register_offset() + 8;
    g.w64(
        iotlb_reg,
        IotlbReg::new().with_ivt(true).with_iirg(1).into_bits(),
    );
    let sources = invalidations(&g);
    assert_eq!(
        sources,
        [InvalidationSource::Register, InvalidationSource::Register]
    );
    assert!(sources.iter().all(InvalidationSource::ends_batch));
}

/// Disabling queued invalidation resets IQH to 0 (spec 11.4.9.1; QEMU 10.0.2
/// hw/i386/intel_iommu.c vtd_handle_gcmd_qie), and a queue enabled again at a new base starts
/// with its first descriptor.
#[test]
fn disabling_the_queue_resets_its_head() {
    let mut g = Guest::new("", 64);
    g.enable_qi(false);
    g.submit(&[global_iotlb()]);
    assert_eq!(g.r64(reg::IQH), 2 * 16, "invalidation and wait processed");

    // Linux dmar_disable_qi: the queue is idle (IQH == IQT), then QIE is cleared.
    g.set_queued_invalidation(false);
    assert_eq!(g.r64(reg::IQH), 0, "IQH after QIE 1 -> 0");

    // Linux dmar_enable_qi at a new base: IQT = 0, IQA, QIE.
    let old_base = g.queue.as_ref().unwrap().base;
    g.enable_qi(false);
    assert_ne!(g.queue.as_ref().unwrap().base, old_base);
    assert_eq!(g.r64(reg::IQH), 0);
    g.log.take();
    g.submit(&[global_iotlb()]);
    assert_eq!(invalidations(&g), [queued(0, true)]);
    assert_eq!(g.r64(reg::IQH), 2 * 16);
}
