//! The binder's bound on guest-controlled work that the README's "Bounds" table states: one
//! PASID scan of a device (`present_pasids`, run when a passthrough device is synced) reads at
//! most `MAX_SCAN_READS` words of the guest's PASID directory and tables, whatever the guest
//! put there, and says that it stopped; a device's PASIDs the binder follows are at most
//! `MAX_TRACKED_PASIDS` (1024, binder/registry.rs), however many the guest makes present; one
//! poll of the host's fault queue handles at most `MAX_FAULTS_PER_POLL` (256) faults and
//! `MAX_REQUESTS_PER_POLL` (256) page requests; a batch of invalidations forwarded to one
//! host HWPT holds at most `MAX_BATCH_ENTRIES` (64) ranges, beyond which it becomes one
//! invalidation of everything; the page request groups handed to the guest and not answered
//! are at most `MAX_PENDING_GROUPS` (8192), beyond which the host is answered at once.

mod common;

use vtd_accel::binder::desired::{MAX_SCAN_READS, present_pasids};
use vtd_accel::{Bdf, GuestRemapping};
use vtd_regs::VtdConfig;
use vtd_regs::regs::TranslationTableMode;
use vtd_tables::GuestRam;
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_tables::walk::RootTable;
use vtd_testkit::driver::CountingRam;

const BDF: Bdf = Bdf::new(1, 0, 0);

/// A guest whose PASID directory has all 2^14 entries present, each pointing to one PASID
/// table whose 64 entries are all present: 2^20 present PASIDs in a few pages, a scan of
/// 2^14 + 2^20 reads if nothing stopped it.
#[test]
fn a_pasid_scan_reads_at_most_max_scan_reads_words() {
    assert_eq!(
        MAX_SCAN_READS, 8192,
        "the README's Bounds table states 8192"
    );
    let mem = CountingRam::new(16 << 20);
    let config = VtdConfig {
        pasid_bits: 20,
        ..VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap()
    };
    let mut frames = FrameAllocator::new(0x10_0000, 0x80_0000);
    // PDTS 7: a directory of 2^14 entries (spec 9.4), the whole 20-bit PASID space.
    let pasids = PasidTablesBuilder::new(&mem, &mut frames, 7).unwrap();
    let table = frames.alloc(&mem, 1).unwrap();
    let entry = PasidEntry::first_stage(0x40_0000, false, 1, 2);
    for slot in 0..64 {
        mem.write_words(table + slot * 64, &entry.0).unwrap();
    }
    for d in 0..1u64 << 14 {
        mem.write_u64(pasids.dir() + d * 8, table | 1).unwrap();
    }
    let mut ctx = ContextTablesBuilder::new(&mem, &mut frames, true).unwrap();
    ctx.set_scalable_context(
        &mut frames,
        BDF.sid(),
        pasids.context_entry().with_paside(true),
    )
    .unwrap();
    let guest = GuestRemapping {
        config: &config,
        mem: &mem,
        translation_enabled: true,
        root: RootTable {
            addr: ctx.root(),
            mode: TranslationTableMode::Scalable,
        },
    };

    let before = mem.words_read();
    let scan = present_pasids(&guest, BDF, 20);
    let read = mem.words_read() - before;
    assert!(scan.truncated, "the scan says it stopped");
    // The context lookup (a root entry and a scalable context entry: 6 words), then the scan.
    assert!(
        read <= 6 + MAX_SCAN_READS as u64,
        "{read} words read for one scan"
    );
    assert!(!scan.found.is_empty() && scan.found.len() < MAX_SCAN_READS as usize);

    // A host with 10-bit PASIDs bounds the scan first: 16 directory entries, 1023 PASIDs
    // (RID_PASID 0 is not one the scan reports), nothing truncated.
    let scan = present_pasids(&guest, BDF, 10);
    assert!(!scan.truncated);
    assert_eq!(scan.found.len(), 1023);
}

/// A guest that makes 2047 PASIDs of its passthrough device present: the binder follows (and
/// binds on the host) at most 1024 of them besides requests without PASID.
#[test]
fn the_binder_follows_at_most_1024_pasids_of_a_device() {
    const MAX_TRACKED_PASIDS: usize = 1024;
    let cfg = VtdConfig {
        pasid_bits: 20,
        ..VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap()
    };
    let mut rig = common::Rig::with_config(cfg);
    let entry = PasidEntry::first_stage(rig.fs_root, false, common::DID, 2);
    for pasid in 1..2048 {
        rig.write_pasid_entry(pasid, entry);
    }
    rig.binder.resync_all();
    let bindings = rig.binder.bindings();
    let with_pasid = bindings
        .iter()
        .filter(|b| b.bdf == common::BDF && b.pasid.is_some())
        .count();
    assert_eq!(
        with_pasid, MAX_TRACKED_PASIDS,
        "PASIDs followed of 2047 present"
    );
}

/// A host that queued 400 faults: one `process_host_faults` call handles 256 of them
/// (`MAX_FAULTS_PER_POLL`, binder/host_faults.rs), the next the rest.
#[test]
fn one_poll_handles_at_most_256_host_faults() {
    use vtd_accel::HostFault;
    use vtd_regs::fault::FaultReason;
    use vtd_tables::walk::AccessKind;
    const MAX_FAULTS_PER_POLL: usize = 256;
    let rig = common::Rig::new("x-scalable-mode=on,x-flts=on");
    rig.sim.report_unrecoverable_faults(true);
    for page in 0..400u64 {
        rig.sim.raise_fault(HostFault {
            dev_id: rig.dev,
            pasid: None,
            addr: common::IOVA + (page << 12),
            reason: FaultReason::FirstStageNotPresent,
            access: AccessKind::Read,
            privileged: false,
            hwpt: None,
        });
    }
    assert_eq!(rig.binder.process_host_faults(), MAX_FAULTS_PER_POLL);
    assert_eq!(rig.binder.process_host_faults(), 400 - MAX_FAULTS_PER_POLL);
    assert_eq!(rig.binder.process_host_faults(), 0);
}

/// A PRI device that raised 300 page request groups: one poll delivers 256 requests
/// (`MAX_REQUESTS_PER_POLL`, binder/page_requests.rs), the next the rest.
#[test]
fn one_poll_delivers_at_most_256_page_requests() {
    const MAX_REQUESTS_PER_POLL: usize = 256;
    let mut rig = common::pri_device_rig_on(|sim, _| sim);
    rig.g.enable_prq(3);
    for i in 0..300u64 {
        rig.sim
            .raise_page_group(rig.dev, None, &[0x4000_0000 + i * 0x1000], false)
            .unwrap();
    }
    assert_eq!(rig.binder.process_host_faults(), MAX_REQUESTS_PER_POLL);
    assert_eq!(
        rig.binder.process_host_faults(),
        300 - MAX_REQUESTS_PER_POLL
    );
    assert_eq!(rig.binder.process_host_faults(), 0);
}

/// 64 page invalidations in one batch reach the host as 64 ranges; 65 as one invalidation of
/// everything (`MAX_BATCH_ENTRIES`, binder/forward.rs): what the binder holds per HWPT
/// between two waits stays bounded whatever the guest queues.
#[test]
fn a_forwarded_batch_holds_at_most_64_ranges() {
    use vtd_accel::VtdS1Invalidation;
    const MAX_BATCH_ENTRIES: usize = 64;
    let mut rig = common::Rig::new("x-scalable-mode=on,x-flts=on");
    rig.sim.take_invalidation_log();
    let pages = |n: u64| -> Vec<_> {
        (0..n)
            .map(|i| common::pasid_iotlb_page(common::DID, 0, common::IOVA + (i << 12), 0, true))
            .collect()
    };
    rig.g.submit(&pages(MAX_BATCH_ENTRIES as u64));
    let log = rig.sim.take_invalidation_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].1.len(), MAX_BATCH_ENTRIES);
    assert!(!log[0].1.contains(&VtdS1Invalidation::ALL));

    rig.g.submit(&pages(MAX_BATCH_ENTRIES as u64 + 1));
    let log = rig.sim.take_invalidation_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].1, vec![VtdS1Invalidation::ALL]);
}

/// A device may send page request groups faster than the guest answers them, and the guest
/// may never answer (both are untrusted): the binder hands the guest at most
/// `MAX_PENDING_GROUPS` (= `vtd_core::MAX_OUTSTANDING_GROUPS`, 8192, binder/page_requests.rs)
/// groups it has not answered. A group beyond that is not queued for the guest, and not left
/// waiting either (PCIe PRI: a device waits for the response of every group it sent; iommufd
/// keeps it until answered, Linux `drivers/iommu/iommufd/fault.c`): the host gets
/// `IOMMUFD_PAGE_RESP_INVALID` for it at once, as Linux answers a group it cannot take
/// (`drivers/iommu/io-pgfault.c`, `iommu_report_device_fault()`, `err_abort`: Response Failure,
/// which iommufd does not let user space send, hence its one failure code). The oldest groups are
/// kept, not evicted: they are in the guest's queue and it may still answer them, and an
/// answer frees room for the next group.
///
/// The flood: 8292 whole one-page groups under distinct names (17 PASIDs, 512 group indices
/// each), from a backend wrapping the simulator (whose own fault queue is smaller). The guest
/// reads its page request queue after every poll, as Linux's `prq_event_thread` does, so its
/// 16,384-descriptor queue never fills: only the binder's bound stops the groups.
#[test]
fn the_binder_hands_the_guest_at_most_8192_unanswered_page_groups() {
    use std::sync::{Arc, Mutex};
    use vtd_accel::{PageResponseCode, Pasid};
    const MAX_PENDING_GROUPS: usize = 8192;
    assert_eq!(vtd_core::MAX_OUTSTANDING_GROUPS, MAX_PENDING_GROUPS);
    let beyond = 100;

    let flood = Mutex::new(None);
    let mut rig = common::pri_device_rig_on(|sim, _| {
        let f = Arc::new(common::Flood::new(sim));
        *flood.lock().unwrap() = Some(f.clone());
        f
    });
    let flood = flood.into_inner().unwrap().unwrap();
    // PQS 7: 2^7 pages, 16,384 descriptors (the most the queue registers allow).
    rig.g.enable_prq(7);

    let names = (1..=17)
        .map(Pasid::new)
        .flat_map(|p| (0..512u16).map(move |prg| (p, prg)));
    let groups = MAX_PENDING_GROUPS + beyond;
    *flood.queue.lock().unwrap() = names
        .take(groups)
        .zip(1u32..)
        .map(|((pasid, prg), cookie)| common::page_request(rig.dev, pasid, prg, true, cookie))
        .collect();
    let (mut read, mut in_guest) = (0, Vec::new());
    // 256 requests per poll: the polls needed, a bounded loop.
    for _ in 0..groups.div_ceil(256) {
        read += rig.binder.process_host_faults();
        in_guest.extend(rig.g.read_page_requests().requests);
        let refused = flood.answers.lock().unwrap().len();
        assert!(
            in_guest.len() <= MAX_PENDING_GROUPS,
            "{} handed to the guest",
            in_guest.len()
        );
        assert_eq!(
            in_guest.len() + refused,
            read,
            "every group queued or answered"
        );
    }
    assert!(flood.queue.lock().unwrap().is_empty(), "every request read");
    assert_eq!(in_guest.len(), MAX_PENDING_GROUPS);
    let refused: Vec<_> = (MAX_PENDING_GROUPS as u32 + 1..=groups as u32)
        .map(|cookie| (cookie, PageResponseCode::Invalid))
        .collect();
    assert_eq!(
        *flood.answers.lock().unwrap(),
        refused,
        "the groups beyond the bound are answered invalid, in order; the first 8192 wait"
    );
    let s = rig.binder.stats();
    assert_eq!(
        (s.page_requests, s.page_requests_refused, s.page_responses),
        (groups as u64, beyond as u64, 0)
    );
    // The unit tracks the same groups: none of them evicted.
    assert_eq!(rig.g.unit.prq_state().outstanding.len(), MAX_PENDING_GROUPS);

    // The guest answers its oldest group: the host gets that answer, and the next group
    // finds room and goes to the guest instead of being refused.
    let oldest = in_guest[0].unwrap();
    rig.g.respond(&oldest, vtd_core::ResponseCode::Success);
    assert_eq!(
        flood.answers.lock().unwrap().last(),
        Some(&(1, PageResponseCode::Success))
    );
    let next = common::page_request(rig.dev, Pasid::new(1), 0, true, 1_000_000);
    *flood.queue.lock().unwrap() = vec![next];
    assert_eq!(rig.binder.process_host_faults(), 1);
    assert_eq!(rig.g.read_page_requests().requests.len(), 1);
    assert_eq!(flood.answers.lock().unwrap().len(), beyond + 1);
    assert_eq!(rig.binder.stats().page_requests_refused, beyond as u64);
}
