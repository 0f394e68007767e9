//! Page requests end to end (ECAP.PRS, VT-d spec 7.5): a device's requests land in the guest's
//! queue as Linux drivers/iommu/intel/prq.c reads them, the page request event follows PECTL
//! like the fault event follows FECTL, overflow sets PRO and answers dropped group ends, and the
//! guest's page group responses reach observers as events.

use vtd_core::{
    MAX_OUTSTANDING_GROUPS, Msi, OutstandingGroup, PageGroupResponseEvent, PageRequest,
    PageRequestOutcome, PrqState, PrqStateError, ResponseCode, ResponseOrigin, VtdEvent,
};
use vtd_regs::fault::{FaultReason, FaultRecord};
use vtd_regs::inv::{InvDesc, PageGroupResponse};
use vtd_regs::prq::{PageRequestDescriptor, Prs};
use vtd_regs::regs::{EventControl, offset as reg};
use vtd_tables::GuestRam;
use vtd_testkit::driver::{Guest, QueueStall};

const PROPS: &str = "x-scalable-mode=on,device-iotlb=on,x-vtd-page-requests=on";
const SID: u16 = 0x0118;
const PRQ_MSI: Msi = Msi {
    address: 0xfee0_0000,
    data: 0x4322,
};

/// A guest with QI on, `SID` set up with PRE = `pre`, and a page request queue of 2^`order`
/// pages enabled the Linux way.
fn guest(pre: bool, order: u8) -> Guest {
    let mut g = Guest::new(PROPS, 64);
    g.enable_qi(true);
    g.scalable_device(SID, 1, pre);
    g.enable_prq(order);
    g.log.take();
    g.sink.take();
    g
}

fn request(prg_index: u16, last: bool, address: u64) -> PageRequest {
    PageRequest {
        sid: SID,
        pasid: Some(7),
        address,
        read: true,
        write: true,
        execute: false,
        privileged: false,
        last_in_group: last,
        prg_index,
    }
}

fn responses(g: &Guest) -> Vec<PageGroupResponseEvent> {
    g.log
        .take()
        .into_iter()
        .filter_map(|e| match e {
            VtdEvent::PageGroupResponse(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn prs(g: &Guest) -> Prs {
    Prs::from_bits(g.r32(reg::PRS))
}

#[test]
fn linux_flow_requests_read_handled_and_answered() {
    let mut g = guest(true, 4);
    // A two-page group 5 and a one-page group 6.
    let outcomes = [
        g.unit.page_request(&request(5, false, 0x7000_1234)),
        g.unit.page_request(&request(5, true, 0x7000_2000)),
        g.unit.page_request(&request(6, true, 0x9000_0000)),
    ];
    let slots: Vec<_> = outcomes
        .iter()
        .map(|o| match o {
            Ok(PageRequestOutcome::Queued { slot }) => *slot,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(slots, [0, 1, 2]);
    assert_eq!(g.r64(reg::PQT), 3 * 32);
    // One event: the first group end set PPR; the second found it set.
    assert_eq!(g.sink.take(), [PRQ_MSI]);
    assert!(prs(&g).ppr());

    let batch = g.read_page_requests();
    assert!(!batch.overflow_cleared);
    let reqs: Vec<PageRequestDescriptor> = batch.requests.into_iter().map(Result::unwrap).collect();
    assert_eq!(reqs.len(), 3);
    assert_eq!(
        reqs[0],
        PageRequestDescriptor {
            rid: SID,
            pasid: Some(7),
            execute: false,
            privileged: false,
            read: true,
            write: true,
            last_in_group: false,
            prg_index: 5,
            address: 0x7000_1000,
        }
    );
    assert!(reqs[1].last_in_group && reqs[2].last_in_group);
    assert_eq!(g.r64(reg::PQH), g.r64(reg::PQT));
    assert!(!prs(&g).ppr(), "the handler cleared PPR");

    g.log.take();
    g.respond(&reqs[1], ResponseCode::Success);
    g.respond(&reqs[2], ResponseCode::InvalidRequest);
    let got = responses(&g);
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].sid, got[0].pasid, got[0].prg_index, got[0].code),
        (SID, Some(7), 5, ResponseCode::Success)
    );
    assert!(got[0].matched && got[1].matched);
    assert!(matches!(got[0].origin, ResponseOrigin::Guest { .. }));
    assert_eq!(got[1].code, ResponseCode::InvalidRequest);
    assert!(g.unit.prq_state().outstanding.is_empty());
    // A second response to an answered group still goes to the device (VT-d does not track
    // groups), but is not matched.
    g.respond(&reqs[1], ResponseCode::Success);
    let again = responses(&g);
    assert_eq!(again.len(), 1);
    assert!(!again[0].matched);
}

#[test]
fn event_is_held_while_masked_and_cleared_by_servicing_ppr() {
    let mut g = guest(true, 0);
    g.w32(reg::PECTL, EventControl::new().with_im(true).into_bits());
    // A request that does not end its group raises nothing.
    g.unit.page_request(&request(1, false, 0x1000)).unwrap();
    assert!(!prs(&g).ppr());
    assert_eq!(g.r32(reg::PECTL), 0x8000_0000);
    g.unit.page_request(&request(1, true, 0x2000)).unwrap();
    assert!(prs(&g).ppr());
    assert_eq!(g.r32(reg::PECTL), 0xc000_0000, "IM and IP");
    assert!(g.sink.take().is_empty());
    // IP is read-only: writing it as 0 with IM kept changes nothing.
    g.w32(reg::PECTL, 0x8000_0000);
    assert_eq!(g.r32(reg::PECTL), 0xc000_0000);
    // Unmasking delivers the held event and clears IP.
    g.w32(reg::PECTL, 0);
    assert_eq!(g.sink.take(), [PRQ_MSI]);
    assert_eq!(g.r32(reg::PECTL), 0);
    // Masked again, a new condition after PPR was serviced sets IP; servicing PPR (RW1C)
    // clears IP, so unmasking later sends nothing.
    g.read_page_requests();
    g.w32(reg::PECTL, 0x8000_0000);
    g.unit.page_request(&request(2, true, 0x3000)).unwrap();
    assert_eq!(g.r32(reg::PECTL), 0xc000_0000);
    g.w32(reg::PRS, 1);
    assert_eq!(g.r32(reg::PRS), 0);
    assert_eq!(g.r32(reg::PECTL), 0x8000_0000);
    g.w32(reg::PECTL, 0);
    assert!(g.sink.take().is_empty());
}

#[test]
fn overflow_sets_pro_answers_group_ends_and_the_queue_wraps() {
    // PQS = 0: one page, 128 descriptors; 127 fit (PQT + 1 == PQH means full).
    let mut g = guest(true, 0);
    for i in 0..127u16 {
        let out = g.unit.page_request(&request(i, true, 0x1000)).unwrap();
        assert_eq!(out, PageRequestOutcome::Queued { slot: i as u32 });
    }
    assert_eq!(
        g.sink.take().len(),
        1,
        "only the first group end raised the event"
    );
    g.log.take();
    let out = g.unit.page_request(&request(200, true, 0x5000)).unwrap();
    let PageRequestOutcome::Overflow {
        auto_response: Some(auto),
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        (auto.prg_index, auto.code, auto.origin, auto.matched),
        (200, ResponseCode::Success, ResponseOrigin::Overflow, false)
    );
    assert_eq!(responses(&g), [auto]);
    assert!(prs(&g).pro() && prs(&g).ppr());
    assert_eq!(g.r64(reg::PQT), 127 * 32, "nothing written");
    // While PRO is set every request is dropped, with or without room; a request that does
    // not end its group gets no response.
    assert_eq!(
        g.unit.page_request(&request(201, false, 0x6000)).unwrap(),
        PageRequestOutcome::Overflow {
            auto_response: None
        }
    );
    // The Linux handler drains the queue and clears PRO once it is empty.
    let batch = g.read_page_requests();
    assert_eq!(batch.requests.len(), 127);
    assert!(batch.overflow_cleared);
    assert_eq!(g.r32(reg::PRS), 0);
    // The queue wraps: slot 127, then slot 0.
    assert_eq!(
        g.unit.page_request(&request(300, true, 0x7000)).unwrap(),
        PageRequestOutcome::Queued { slot: 127 }
    );
    assert_eq!(
        g.unit.page_request(&request(301, true, 0x8000)).unwrap(),
        PageRequestOutcome::Queued { slot: 0 }
    );
    assert_eq!(g.r64(reg::PQT), 32);
    let batch = g.read_page_requests();
    let indices: Vec<u16> = batch
        .requests
        .iter()
        .map(|r| r.as_ref().unwrap().prg_index)
        .collect();
    assert_eq!(indices, [300, 301]);
}

#[test]
fn overflow_raises_the_event_when_prs_was_clear() {
    let mut g = guest(true, 0);
    // Fill with requests that do not end a group: no PPR, no event.
    for i in 0..127u16 {
        g.unit.page_request(&request(i, false, 0x1000)).unwrap();
    }
    assert!(g.sink.take().is_empty());
    g.unit.page_request(&request(0, false, 0x1000)).unwrap();
    assert_eq!(prs(&g), Prs::new().with_pro(true));
    assert_eq!(g.sink.take(), [PRQ_MSI]);
    // Linux's handler: PQH = PQT, then PRO cleared.
    assert!(g.read_page_requests().overflow_cleared);
}

#[test]
fn requests_the_guest_did_not_enable_are_blocked() {
    let mut g = guest(false, 0);
    g.enable_fault_msi();
    g.sink.take();
    let out = g.unit.page_request(&request(9, true, 0x4000)).unwrap();
    let PageRequestOutcome::Blocked {
        fault: Some(fault),
        auto_response: Some(auto),
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(fault.reason, FaultReason::SmContextPageRequestDisabled);
    assert_eq!(
        (auto.code, auto.origin),
        (ResponseCode::InvalidRequest, ResponseOrigin::Blocked)
    );
    let (lo, hi) = g.frcd(0);
    let record = FaultRecord::decode(lo, hi).expect("fault recorded");
    assert_eq!(record.reason, FaultReason::SmContextPageRequestDisabled);
    assert_eq!(
        (record.sid, record.pasid, record.address),
        (SID, Some(7), 0x4000)
    );
    // The fault event went out, no page request event, nothing queued.
    assert_eq!(g.sink.take().len(), 1);
    assert_eq!((g.r64(reg::PQT), g.r32(reg::PRS)), (0, 0));

    // With translation off there is no context to consult: blocked without a fault.
    g.set_translation(false);
    let out = g.unit.page_request(&request(9, false, 0x4000)).unwrap();
    assert_eq!(
        out,
        PageRequestOutcome::Blocked {
            fault: None,
            auto_response: None
        }
    );
}

#[test]
fn a_unit_without_prs_has_no_page_request_queue() {
    let mut g = Guest::new("x-scalable-mode=on,device-iotlb=on", 64);
    g.enable_qi(true);
    for off in [reg::PQH, reg::PQT, reg::PQA] {
        g.w64(off, 0x1000);
        assert_eq!(g.r64(off), 0, "{off:#x} reserved");
    }
    g.w32(reg::PECTL, 0);
    assert_eq!(g.r32(reg::PECTL), 0);
    assert_eq!(
        g.unit.page_request(&request(1, true, 0)).unwrap(),
        PageRequestOutcome::Disabled
    );
    // A page group response is a descriptor for a capability the unit lacks.
    let desc = PageRequestDescriptor::decode([1 | (SID as u64) << 16, 4, 0, 0]).unwrap();
    let err = g.try_submit(&[Guest::page_group_response(&desc, ResponseCode::Success)]);
    assert!(
        matches!(err, Err(QueueStall::Error { iqei: 3, .. })),
        "{err:?}"
    );
}

#[test]
fn malformed_responses_stop_the_queue() {
    let mut g = guest(true, 0);
    let ok = InvDesc::PageGroupResponse(PageGroupResponse {
        rid: SID,
        pasid: Some(7),
        response_code: 0,
        prg_index: 1,
        last_in_group: true,
        ignored: Default::default(),
    })
    .encode(vtd_regs::inv::DescWidth::Bits256)
    .unwrap()
    .0;
    // PDP (bit 5, removed in VT-d 4.0), a reserved response code, private data in qword 2.
    for (words, why) in [
        ([ok[0] | 1 << 5, ok[1], 0, 0], "PDP"),
        ([ok[0] | 2 << 12, ok[1], 0, 0], "response code 2"),
        ([ok[0] | 0xe << 12, ok[1], 0, 0], "response code 0xE"),
        ([ok[0], ok[1] | 1, 0, 0], "qword 1 bit 0"),
        ([ok[0], ok[1], 0x55, 0], "private data"),
    ] {
        g.log.take();
        g.place_words(words);
        g.ring_doorbell();
        assert!(g.fsts().iqe(), "{why}: IQE");
        assert_eq!(g.r64(reg::IQERCD) & 0xf, 4, "{why}: reserved field");
        assert!(responses(&g).is_empty(), "{why}: nothing forwarded");
        // Linux's recovery: replace the bad descriptor with a wait and clear IQE.
        let q = g.queue.clone().unwrap();
        let head = g.r64(reg::IQH) / 32;
        let wait = Guest::wait_descriptor(q.status, 0)
            .encode(vtd_regs::inv::DescWidth::Bits256)
            .unwrap();
        g.mem
            .write_words(q.base + head * 32, &wait.0)
            .expect("queue in RAM");
        g.w32(reg::FSTS, 0x10);
        assert!(!g.fsts().iqe());
        assert_eq!(g.r64(reg::IQH), g.r64(reg::IQT));
    }
    // A response without PASID (PP = 0) is valid and forwarded without one.
    let desc = PageRequestDescriptor::decode([1 | (SID as u64) << 16, 4 | 3 << 3, 0, 0]).unwrap();
    g.respond(&desc, ResponseCode::Failure);
    let got = responses(&g);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].pasid, got[0].prg_index, got[0].code),
        (None, 3, ResponseCode::Failure)
    );
}

/// Everything the guest writes is bounded: queue offsets beyond the queue wrap into it, a
/// queue outside RAM or at the top of the address space drops the request without a panic.
#[test]
fn guest_controlled_queue_registers_are_bounded() {
    use vtd_regs::prq::Pqa;
    let g = guest(true, 0);
    let base = g.prq.unwrap().base;
    // PQT far beyond a one-page queue (offset 0x7ffe0 = slot 16383): it wraps to slot 127
    // (PQH at slot 2 leaves room).
    g.w64(reg::PQT, 0x7ffe0);
    g.w64(reg::PQH, 0x40);
    assert_eq!(
        g.unit.page_request(&request(1, true, 0x1000)).unwrap(),
        PageRequestOutcome::Queued { slot: 127 }
    );
    let words = g.mem.read_words::<4>(base + 127 * 32).unwrap();
    assert_eq!(PageRequestDescriptor::decode(words).unwrap().prg_index, 1);
    assert_eq!(g.r64(reg::PQT), 0);
    // A queue outside RAM: nothing written, PQT unchanged, no PRO.
    g.w64(reg::PQA, Pqa::new().with_pqa(0x4000_0000 >> 12).into_bits());
    g.w32(reg::PRS, 3);
    assert_eq!(
        g.unit.page_request(&request(2, true, 0x1000)).unwrap(),
        PageRequestOutcome::QueueUnreachable
    );
    assert_eq!((g.r64(reg::PQT), g.r32(reg::PRS)), (0, 0));
    // A queue at the very top of the address space (base + offset would wrap).
    g.w64(reg::PQA, 0xffff_ffff_ffff_f007);
    g.w64(reg::PQT, 0x7ffe0);
    assert_eq!(
        g.unit.page_request(&request(3, true, 0x1000)).unwrap(),
        PageRequestOutcome::QueueUnreachable
    );
    // A request whose fields do not fit is the caller's error, not the guest's problem.
    let mut bad = request(0x200, true, 0);
    assert!(g.unit.page_request(&bad).is_err());
    bad.prg_index = 0;
    bad.pasid = Some(1 << 20);
    assert!(g.unit.page_request(&bad).is_err());
}

#[test]
fn outstanding_groups_are_bounded_and_migrate_as_plain_data() {
    let g = guest(true, 7);
    // Groups of distinct (sid, pasid, prgi): more than the tracker keeps.
    let mut queued = 0u32;
    'outer: for pasid in 0..32u32 {
        for prg in 0..512u16 {
            let req = PageRequest {
                pasid: Some(pasid),
                ..request(prg, false, 0x1000)
            };
            assert!(matches!(
                g.unit.page_request(&req).unwrap(),
                PageRequestOutcome::Queued { .. }
            ));
            queued += 1;
            if queued as usize == MAX_OUTSTANDING_GROUPS + 10 {
                break 'outer;
            }
        }
    }
    let state = g.unit.prq_state();
    assert_eq!(state.outstanding.len(), MAX_OUTSTANDING_GROUPS);
    // The oldest were evicted: the first kept is the 11th queued.
    assert_eq!(
        state.outstanding[0],
        OutstandingGroup {
            sid: SID,
            pasid: Some(0),
            prg_index: 10
        }
    );
    // Restore into a fresh unit of the same configuration.
    let g2 = guest(true, 7);
    g2.unit.restore_prq_state(&state).unwrap();
    assert_eq!(g2.unit.prq_state(), state);
    let too_many = PrqState {
        outstanding: vec![state.outstanding[0]; MAX_OUTSTANDING_GROUPS + 1],
    };
    assert_eq!(
        g2.unit.restore_prq_state(&too_many),
        Err(PrqStateError::TooManyGroups(MAX_OUTSTANDING_GROUPS + 1))
    );
    let bad = OutstandingGroup {
        sid: 1,
        pasid: None,
        prg_index: 512,
    };
    assert_eq!(
        g2.unit.restore_prq_state(&PrqState {
            outstanding: vec![bad]
        }),
        Err(PrqStateError::GroupOutOfRange(bad))
    );
    assert_eq!(g2.unit.prq_state(), state, "unchanged after a refusal");
    let plain = Guest::new("x-scalable-mode=on", 64);
    assert_eq!(
        plain.unit.restore_prq_state(&state),
        Err(PrqStateError::NotSupported)
    );
    // A reset forgets them.
    g.unit.reset();
    assert!(g.unit.prq_state().outstanding.is_empty());
    assert_eq!(g.r32(reg::PECTL), 0x8000_0000);
    assert_eq!(g.r64(reg::PQA), 0);
}
