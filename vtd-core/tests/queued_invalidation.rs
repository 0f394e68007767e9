//! The invalidation queue as observers and guests see it: where a batch of queued
//! invalidations ends (what a forwarding observer flushes on), the queue head across a
//! disable/enable cycle, the queue's geometry and errors, descriptors for capabilities the
//! unit lacks, and the invalidation-completion and fault events a guest driver waits on.

use vtd_core::{InvalidationSource, Msi, VtdEvent};
use vtd_regs::inv::{
    ContextCacheGranularity, DescWidth, DeviceTlbInv, IecGranularity, IecInv, InvDesc,
    IotlbGranularity, PageGroupResponse, PasidDeviceTlbInv, WaitInv,
};
use vtd_regs::regs::{Ccmd, EventControl, Fsts, IotlbReg, Iqercd, offset as reg};
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

// --- Queue geometry and errors (spec 6.5.2; IQH, IQT, IQA, IQERCD) --------------------------

/// IQERCD.IQEI and IQH when FSTS.IQE is set.
fn queue_error(g: &Guest) -> Option<(u8, u64)> {
    g.fsts().iqe().then(|| {
        (
            Iqercd::from_bits(g.r64(reg::IQERCD)).iqei(),
            g.r64(reg::IQH),
        )
    })
}

/// A 128-bit queue of QS = 1 holds 512 descriptors and a 256-bit one 256 (IQA_REG.QS): the
/// guest's tail wraps to slot 0 after the last slot and the unit follows it around, more than
/// once.
#[test]
fn the_queue_wraps_around_at_its_size() {
    for wide in [false, true] {
        let mut g = Guest::new("x-scalable-mode=on", 64);
        g.enable_qi(wide);
        let count = g.queue.as_ref().unwrap().count;
        assert_eq!(count, if wide { 256 } else { 512 });
        let size = if wide { 32 } else { 16 };
        // Three descriptors a submission (two invalidations and the wait): the tail crosses
        // the end of the queue twice, at different slots each time.
        for i in 0..count {
            g.submit(&[global_iotlb(), global_iotlb()]);
            let tail = g.queue.as_ref().unwrap().tail;
            assert_eq!(g.r64(reg::IQH), u64::from(tail) * size, "submission {i}");
        }
        assert_eq!(g.unit.stats().descriptors, 3 * u64::from(count));
    }
}

/// A tail at or beyond the queue's end is an invalid tail (IQERCD_REG.IQEI 1); the head
/// stays where it was.
#[test]
fn a_tail_beyond_the_queue_is_iqei_1() {
    let mut g = Guest::new("", 64);
    g.enable_qi(false);
    g.submit(&[global_iotlb()]);
    let head = g.r64(reg::IQH);
    g.w64(reg::IQT, 512 * 16);
    assert_eq!(queue_error(&g), Some((1, head)));
}

/// In a 256-bit queue IQT bit 4 must be clear (IQT_REG; IQEI 6); in a 128-bit queue it
/// is just an odd slot.
#[test]
fn iqt_bit_4_is_an_error_only_in_a_256_bit_queue() {
    let mut g = Guest::new("x-scalable-mode=on", 64);
    g.enable_qi(false);
    g.log.take();
    g.submit_raw(&[global_iotlb()]);
    assert_eq!(g.r64(reg::IQT), 0x10);
    assert_eq!(queue_error(&g), None);
    assert_eq!(g.r64(reg::IQH), 0x10, "the odd slot was processed");
    assert_eq!(invalidations(&g), [queued(0, true)]);

    let mut g = Guest::new("x-scalable-mode=on", 64);
    g.enable_qi(true);
    g.place(&global_iotlb());
    g.w64(reg::IQT, 0x10);
    assert_eq!(queue_error(&g), Some((6, 0)));
}

/// IQA.DW is honoured only with ECAP.SMTS (spec, IQA_REG: DW is reserved without 256-bit
/// descriptor support; QEMU reads such a queue as 128-bit): a legacy unit reads 16-byte
/// descriptors whatever DW says.
#[test]
fn iqa_dw_without_scalable_mode_leaves_a_128_bit_queue() {
    let mut g = Guest::new("", 64);
    g.enable_qi(true);
    // The driver must lay the queue out as the unit reads it: 512 16-byte slots.
    let q = g.queue.as_mut().unwrap();
    q.wide = false;
    q.count = 512;
    g.log.take();
    g.submit(&[global_iotlb(), global_iotlb()]);
    assert_eq!(g.r64(reg::IQH), 3 * 16);
    assert_eq!(invalidations(&g), [queued(0, false), queued(1, true)]);
}

/// Each malformed descriptor stops the queue at itself with its own IQEI (IQERCD_REG):
/// an unknown type is 3, a PASID-granular type in a 128-bit queue is 5 (it needs 256-bit
/// descriptors, spec 6.5.2), a reserved bit is 4.
#[test]
fn each_malformed_descriptor_reports_its_iqei() {
    let cases: [([u64; 4], u8, &str); 3] = [
        ([0xf, 0, 0, 0], 3, "type 0xf"),
        // A PASID-based IOTLB invalidation (type 6, G = 2) in a 128-bit queue.
        ([0x26 | 5 << 16, 0, 0, 0], 5, "type 6 in a 128-bit queue"),
        // A global IOTLB invalidation with bit 40 (reserved, spec 6.5.2.3) set.
        ([0x12 | 1 << 40, 0, 0, 0], 4, "reserved bit"),
    ];
    for (words, iqei, why) in cases {
        let mut g = Guest::new("x-scalable-mode=on", 64);
        g.enable_qi(false);
        g.submit(&[global_iotlb()]);
        let head = g.r64(reg::IQH);
        g.place_words(words);
        g.ring_doorbell();
        assert_eq!(queue_error(&g), Some((iqei, head)), "{why}");
    }
}

/// While FSTS.IQE is set the queue is stopped (spec 6.5.2.10; QEMU ignores tail writes then):
/// descriptors added behind the bad one wait until software clears IQE.
#[test]
fn the_queue_stays_stopped_while_iqe_is_set() {
    let mut g = Guest::new("", 64);
    g.enable_qi(false);
    g.place_words([0xf, 0, 0, 0]);
    g.ring_doorbell();
    assert_eq!(queue_error(&g), Some((3, 0)));
    g.log.take();
    g.place(&global_iotlb());
    g.ring_doorbell();
    assert_eq!(g.r64(reg::IQH), 0, "nothing fetched while IQE is set");
    assert!(invalidations(&g).is_empty());

    // Linux qi_check_fault: the bad descriptor is overwritten (here with an invalidation) and
    // IQE cleared; the queue resumes at IQH.
    let base = g.queue.as_ref().unwrap().base;
    let raw = global_iotlb().encode(DescWidth::Bits128).unwrap();
    g.mem.write_words(base, &raw.0[..2]).unwrap();
    g.w32(reg::FSTS, Fsts::new().with_iqe(true).into_bits());
    assert_eq!(queue_error(&g), None);
    assert_eq!(g.r64(reg::IQH), 2 * 16);
    assert_eq!(invalidations(&g), [queued(0, false), queued(1, true)]);
}

/// Descriptors written while QIE is clear are not fetched (spec 10.4.4: the queue is only
/// processed while GSTS.QIES is set); enabling the queue processes them from IQH = 0.
#[test]
fn the_queue_is_only_processed_while_enabled() {
    let mut g = Guest::new("", 64);
    g.enable_qi(false);
    g.set_queued_invalidation(false);
    g.log.take();
    g.submit_raw(&[global_iotlb()]);
    assert_eq!(g.r64(reg::IQH), 0);
    assert!(invalidations(&g).is_empty());
    g.set_queued_invalidation(true);
    assert_eq!(invalidations(&g), [queued(0, true)]);
    assert_eq!(g.r64(reg::IQH), 16);
}

/// Clearing QIE while the queue holds unprocessed descriptors (IQH != IQT) is refused (spec
/// 10.4.4 requires software to quiesce the queue first; QEMU refuses it too): the queue stays
/// enabled and its head is kept.
#[test]
fn disabling_a_non_empty_queue_is_refused() {
    let mut g = Guest::new("", 64);
    g.enable_qi(false);
    g.submit(&[global_iotlb()]);
    g.place_words([0xf, 0, 0, 0]);
    g.ring_doorbell();
    assert_eq!(queue_error(&g), Some((3, 2 * 16)));
    g.w32(reg::GCMD, 0);
    assert!(g.gsts().qies(), "QIE stays set");
    assert_eq!(g.r64(reg::IQH), 2 * 16);
}

// --- Capabilities (spec 6.5.2: a descriptor for a capability the unit lacks is invalid) -----

/// A descriptor type the unit does not implement is an invalid type (IQEI 3); the same
/// descriptor on a unit with the capability is accepted.
#[test]
fn descriptors_for_missing_capabilities_are_invalid_types() {
    let device_tlb = InvDesc::DeviceTlb(DeviceTlbInv {
        sid: 0x10,
        pfsid: 0,
        qdep: 0,
        addr: 0x1000,
        size: false,
    });
    let pasid_device_tlb = InvDesc::PasidDeviceTlb(PasidDeviceTlbInv {
        sid: 0x10,
        pfsid: 0,
        pasid: 3,
        qdep: 0,
        addr: 0x1000,
        size: false,
        global: false,
    });
    let iec = InvDesc::Iec(IecInv {
        granularity: IecGranularity::Global,
        ignored: Default::default(),
    });
    let response = InvDesc::PageGroupResponse(PageGroupResponse {
        rid: 0x10,
        pasid: Some(3),
        response_code: 0,
        prg_index: 1,
        last_in_group: true,
        ignored: Default::default(),
    });
    // (descriptor, unit without the capability, unit with it, what it needs)
    let cases = [
        (device_tlb, "", "device-iotlb=on", "ECAP.DT"),
        (
            pasid_device_tlb,
            "x-scalable-mode=on",
            "x-scalable-mode=on,device-iotlb=on",
            "ECAP.DT",
        ),
        (iec, "intremap=off", "intremap=on", "ECAP.IR"),
        (
            response,
            "x-scalable-mode=on,device-iotlb=on",
            "x-scalable-mode=on,device-iotlb=on,x-vtd-page-requests=on",
            "ECAP.PRS",
        ),
    ];
    for (desc, without, with, needs) in cases {
        let wide = matches!(
            desc,
            InvDesc::PasidDeviceTlb(_) | InvDesc::PageGroupResponse(_)
        );
        let mut g = Guest::new(without, 64);
        g.enable_qi(wide);
        assert_eq!(
            g.try_submit(&[desc]),
            Err(QueueStall::Error { iqei: 3, head: 0 }),
            "{desc:?} without {needs}"
        );
        let mut g = Guest::new(with, 64);
        g.enable_qi(wide);
        assert_eq!(g.try_submit(&[desc]), Ok(()), "{desc:?} with {needs}");
    }
}

// --- Invalidation completion event (spec 6.5.2.9; ICS, IECTL, IEDATA, IEADDR, IEUADDR) -----

/// A wait descriptor with IF and no status write.
fn interrupt_wait() -> InvDesc {
    InvDesc::Wait(WaitInv {
        status_write: None,
        interrupt: true,
        fence: true,
        page_drain: false,
        ignored: Default::default(),
    })
}

/// The completion event's message, with an upper address half (IEUADDR, writable with
/// ECAP.EIM: the units of these tests have `eim=on`) so both halves count.
const COMPLETION_MSI: Msi = Msi {
    address: 0x1_fee0_1000,
    data: 0x4324,
};

/// Programs the completion event's message; IECTL is left as it is (IM set after reset).
fn program_completion_msi(g: &Guest) {
    g.w32(reg::IEDATA, COMPLETION_MSI.data);
    g.w32(reg::IEADDR, COMPLETION_MSI.address as u32);
    g.w32(reg::IEUADDR, (COMPLETION_MSI.address >> 32) as u32);
}

fn iectl(g: &Guest) -> EventControl {
    EventControl::from_bits(g.r32(reg::IECTL))
}

/// IF sets ICS.IWC and, unmasked, sends the IEDATA/IEADDR/IEUADDR message once; further IF
/// waits send nothing until software clears IWC (spec 6.5.2.9: the event is raised when IWC
/// goes from 0 to 1).
#[test]
fn a_wait_with_if_sets_iwc_and_sends_the_completion_event_once() {
    let mut g = Guest::new("eim=on", 64);
    g.enable_qi(false);
    program_completion_msi(&g);
    g.w32(reg::IECTL, 0);
    g.sink.take();
    g.submit_raw(&[global_iotlb(), interrupt_wait()]);
    assert_eq!(g.r32(reg::ICS), 1, "IWC");
    assert_eq!(g.sink.take(), [COMPLETION_MSI]);
    assert!(!iectl(&g).ip());

    g.submit_raw(&[interrupt_wait()]);
    assert_eq!(g.r32(reg::ICS), 1);
    assert_eq!(g.sink.take(), [], "IWC still set: no new event");

    g.w32(reg::ICS, 1); // RW1C
    assert_eq!(g.r32(reg::ICS), 0);
    assert_eq!(g.sink.take(), [], "clearing IWC sends nothing");
    g.submit_raw(&[interrupt_wait()]);
    assert_eq!(g.sink.take(), [COMPLETION_MSI]);

    // A wait without IF neither sets IWC nor interrupts.
    g.w32(reg::ICS, 1);
    g.submit(&[]);
    assert_eq!(g.r32(reg::ICS), 0);
    assert_eq!(g.sink.take(), []);
}

/// Masked (IECTL.IM, the reset state), the event is held as IECTL.IP; writes that keep it
/// masked send nothing, and unmasking sends it once and clears IP (spec, IECTL_REG).
#[test]
fn a_masked_completion_event_is_held_until_unmasked() {
    let mut g = Guest::new("eim=on", 64);
    g.enable_qi(false);
    program_completion_msi(&g);
    assert!(iectl(&g).im(), "masked after reset");
    g.sink.take();
    g.submit_raw(&[interrupt_wait()]);
    assert_eq!(g.r32(reg::ICS), 1);
    assert!(iectl(&g).ip(), "pending");
    assert_eq!(g.sink.take(), []);

    g.w32(reg::IECTL, EventControl::new().with_im(true).into_bits());
    assert!(iectl(&g).ip(), "still pending while masked");
    assert_eq!(g.sink.take(), []);

    g.w32(reg::IECTL, 0);
    assert_eq!(g.sink.take(), [COMPLETION_MSI]);
    assert!(!iectl(&g).ip());
    g.w32(reg::IECTL, 0);
    assert_eq!(g.sink.take(), [], "sent once");
}

/// Clearing ICS.IWC while the event is pending clears IECTL.IP: unmasking later sends
/// nothing (spec, IECTL_REG: IP clears when software services IWC).
#[test]
fn clearing_iwc_drops_a_pending_completion_event() {
    let mut g = Guest::new("eim=on", 64);
    g.enable_qi(false);
    program_completion_msi(&g);
    g.sink.take();
    g.submit_raw(&[interrupt_wait()]);
    assert!(iectl(&g).ip());
    g.w32(reg::ICS, 1);
    assert!(!iectl(&g).ip());
    g.w32(reg::IECTL, 0);
    assert_eq!(g.sink.take(), []);
    // Unmasked with nothing pending: no message either.
    g.w32(reg::IECTL, 0);
    assert_eq!(g.sink.take(), []);
}

// --- Fault event around queue errors (spec 7.3.1; FSTS, FECTL) -------------------------------

/// A queue error while the fault event is masked sets FECTL.IP; clearing IQE (the last
/// interrupt condition in FSTS) clears IP, so unmasking afterwards sends nothing. Left set,
/// unmasking sends the fault event once.
#[test]
fn a_pending_fault_event_follows_the_interrupt_conditions_in_fsts() {
    const FAULT_MSI: Msi = Msi {
        address: 0xfee0_0000,
        data: 0x4321,
    };
    for clear_iqe in [false, true] {
        let mut g = Guest::new("", 64);
        g.enable_qi(false);
        g.w32(reg::FEDATA, FAULT_MSI.data);
        g.w32(reg::FEADDR, FAULT_MSI.address as u32);
        g.place_words([0xf, 0, 0, 0]);
        g.ring_doorbell();
        let fectl = || EventControl::from_bits(g.r32(reg::FECTL));
        assert!(fectl().im() && fectl().ip());
        assert_eq!(g.sink.take(), []);
        if clear_iqe {
            // Linux qi_check_fault: the bad descriptor replaced, then IQE cleared.
            let base = g.queue.as_ref().unwrap().base;
            let raw = global_iotlb().encode(DescWidth::Bits128).unwrap();
            g.mem.write_words(base, &raw.0[..2]).unwrap();
            g.w32(reg::FSTS, Fsts::new().with_iqe(true).into_bits());
            assert!(!g.fsts().iqe());
            assert!(!fectl().ip(), "no condition left");
        } else {
            // Clearing a condition that is not set leaves IQE, so IP stays.
            g.w32(reg::FSTS, Fsts::new().with_pfo(true).into_bits());
            assert!(fectl().ip(), "IQE still set");
        }
        g.w32(reg::FECTL, EventControl::new().with_im(true).into_bits());
        assert_eq!(g.sink.take(), [], "still masked");
        g.w32(reg::FECTL, 0);
        let expect: &[Msi] = if clear_iqe { &[] } else { &[FAULT_MSI] };
        assert_eq!(g.sink.take(), expect, "clear_iqe = {clear_iqe}");
        g.w32(reg::FECTL, 0);
        assert_eq!(g.sink.take(), [], "sent at most once");
    }
}
