//! Devices on several host IOMMUs (iommufds), and hotplug / unplug / replug while the guest
//! runs: each device's calls, invalidation batches and faults go to its own backend, a device
//! plugged in after the guest enabled translation binds at once, and an unplugged device leaves
//! nothing behind on its host.

mod common;

use std::collections::BTreeMap;

use common::*;
use vtd_accel::sim::SimOp;
use vtd_accel::*;
use vtd_regs::VtdConfig;
use vtd_regs::fault::FaultReason;
use vtd_regs::inv::*;
use vtd_tables::builder::PageSize;
use vtd_tables::entries::PasidEntry;
use vtd_tables::walk::AccessKind;

const FLTS: &str = "x-scalable-mode=on,x-flts=on";
/// The second host places guest RAM elsewhere, so translations tell the hosts apart.
const HOST_B_BASE: u64 = 0x80_0000_0000;
const BDF_B: Bdf = Bdf::new(2, 0, 0);
const DID_B: u16 = 9;
const GPA_B: u64 = 0xc0_0000;

fn host_fault_bdfs(events: &[AccelEvent]) -> Vec<(Option<Bdf>, HostFaultOutcome)> {
    events
        .iter()
        .filter_map(|e| match e {
            AccelEvent::HostFault { bdf, outcome, .. } => Some((*bdf, *outcome)),
            _ => None,
        })
        .collect()
}

#[test]
fn devices_on_two_iommufds_each_get_their_own_calls_batches_and_faults() {
    let mut rig = Rig::new(FLTS);
    // Non-recoverable faults reach user space only where the backend says so (never on
    // VT-d hosts): this test exercises their injection, so it asks the simulator for it.
    rig.sim.report_unrecoverable_faults(true);
    let info = *rig.sim.info();
    let (sim_b, ioas_b) = second_host(&rig.g, info, HOST_B_BASE);
    sim_b.report_unrecoverable_faults(true);
    let (dev_b, parent_b) = sim_b
        .vfio_bind_default(ioas_b, rig.binder.viommu_flags())
        .unwrap();
    // The two iommufds number their objects alike: only the backend tells them apart.
    assert_eq!((dev_b, parent_b), (rig.dev, rig.parent));

    // The guest's driver probes 02:00.0 with its own domain, then the VMM plugs it in.
    let root_b = rig.new_fs_table(IOVA, GPA_B, true);
    rig.program_device(
        BDF_B,
        &[(0, PasidEntry::first_stage(root_b, false, DID_B, 2))],
    );
    let hd = HostIommuDevice::query(sim_b.clone(), "0000:02:00.0", dev_b, parent_b).unwrap();
    rig.binder
        .register(BDF_B, hd, PciTopology::default())
        .unwrap();
    let check = |rig: &Rig| {
        check_host_matches_binder(&rig.sim, &rig.binder, &[(BDF, rig.dev, rig.parent)]);
        check_host_matches_binder(&sim_b, &rig.binder, &[(BDF_B, dev_b, parent_b)]);
    };
    check(&rig);
    let b = rig
        .binder
        .bindings()
        .into_iter()
        .find(|b| b.bdf == BDF_B)
        .unwrap();
    let HostAttachment::Nested(hwpt_b) = b.host else {
        panic!("{b:?}")
    };
    assert_eq!(sim_b.attachments(dev_b).get(&None), Some(&hwpt_b));
    let hwpt_a = rig.nested_hwpt().unwrap();
    // Each device's DMA runs on its own host through its own guest table.
    assert_eq!(
        sim_b
            .dma_translate(dev_b, None, IOVA, AccessKind::Read)
            .unwrap()
            .hpa,
        HOST_B_BASE + GPA_B
    );
    assert_eq!(
        rig.dma(IOVA, AccessKind::Read).unwrap().hpa,
        HOST_BASE + GPA
    );

    // Forwarding: a domain's invalidation reaches only the backend of the device in it...
    rig.sim.take_invalidation_log();
    sim_b.take_invalidation_log();
    rig.g.submit(&[pasid_iotlb_page(DID_B, 0, IOVA, 0, true)]);
    assert!(rig.sim.take_invalidation_log().is_empty());
    assert_eq!(
        sim_b.take_invalidation_log(),
        vec![(
            hwpt_b,
            vec![VtdS1Invalidation::for_range(IOVA, IOVA + 0xfff, true)]
        )]
    );
    rig.g.submit(&[pasid_iotlb_page(DID, 0, IOVA, 0, true)]);
    assert!(sim_b.take_invalidation_log().is_empty());
    assert_eq!(rig.sim.take_invalidation_log().len(), 1);
    // ... and a global one reaches both, one call per HWPT in each batch.
    let calls = rig.binder.stats().invalidate_calls;
    rig.g.submit(&[
        iotlb(IotlbGranularity::Global),
        pasid_iotlb_all(DID, 0),
        pasid_iotlb_all(DID_B, 0),
    ]);
    assert_eq!(
        rig.sim.take_invalidation_log(),
        vec![(hwpt_a, vec![VtdS1Invalidation::ALL])]
    );
    assert_eq!(
        sim_b.take_invalidation_log(),
        vec![(hwpt_b, vec![VtdS1Invalidation::ALL])]
    );
    assert_eq!(rig.binder.stats().invalidate_calls, calls + 2);

    // Faults: each backend's queue is read, and a fault goes to the device of *that* backend
    // even though both devices have the same iommufd ID.
    rig.fs().unmap(IOVA, PageSize::Size4K).unwrap();
    rig.g.submit(&[pasid_iotlb_all(DID, 0)]);
    rig.dma(IOVA, AccessKind::Read).unwrap_err();
    sim_b
        .dma_translate(dev_b, None, IOVA + 0x5000, AccessKind::Write)
        .unwrap_err();
    rig.events.take();
    assert_eq!(rig.binder.process_host_faults(), 2);
    let events = rig.events.take();
    let faults = host_fault_bdfs(&events);
    assert_eq!(
        faults.iter().map(|(b, _)| *b).collect::<Vec<_>>(),
        vec![Some(BDF), Some(BDF_B)]
    );
    assert!(
        faults
            .iter()
            .all(|(_, o)| matches!(o, HostFaultOutcome::Injected(_))),
        "{faults:?}"
    );
    // What the guest was told: each requester's own SID and address.
    let guest: Vec<(u16, u64)> = events
        .iter()
        .filter_map(|e| match e {
            AccelEvent::HostFault { guest: Some(f), .. } => Some((f.sid, f.address)),
            _ => None,
        })
        .collect();
    assert_eq!(guest, vec![(SID, IOVA), (BDF_B.sid(), IOVA + 0x5000)]);
    assert_eq!(rig.binder.stats().faults_injected, 2);

    // A host failure on one backend fences only the device there.
    sim_b.fail_next(SimOp::Invalidate, 2);
    rig.g.submit(&[iotlb(IotlbGranularity::Global)]);
    let b = rig
        .binder
        .bindings()
        .into_iter()
        .find(|b| b.bdf == BDF_B)
        .unwrap();
    assert_eq!(
        (b.host, b.blocked),
        (HostAttachment::Blocked, Some(BlockCause::HostFailure))
    );
    assert_eq!(
        rig.nested_hwpt(),
        Some(hwpt_a),
        "the other host is unaffected"
    );
    assert_eq!(
        rig.binder.stats().host_errors,
        rig.sim.stats().injected_failures + sim_b.stats().injected_failures
    );
    check(&rig);
    rig.binder.retry_failed();
    check(&rig);

    // Unplugging B releases it on its own host; A keeps its binding.
    rig.binder.unregister(BDF_B).unwrap();
    assert_eq!(sim_b.attachments(dev_b), BTreeMap::from([(None, parent_b)]));
    assert!(sim_b.device_objects(dev_b).nested_hwpts.is_empty());
    assert_eq!(rig.nested_hwpt(), Some(hwpt_a));
    check(&rig);
}

#[test]
fn hotplug_unplug_and_replug_under_a_running_guest() {
    let cfg = VtdConfig {
        pasid_bits: 8,
        ..VtdConfig::from_qemu_props(FLTS).unwrap()
    };
    let mut rig = Rig::with_config(cfg);
    // Non-recoverable faults reach user space only where the backend says so (never on
    // VT-d hosts): this test exercises their injection, so it asks the simulator for it.
    rig.sim.report_unrecoverable_faults(true);
    assert!(rig.g.unit.translation_enabled());
    let bdf_c = Bdf::new(3, 0, 0);
    let (dev_c, parent_c) = rig
        .sim
        .vfio_bind_default(rig.ioas, rig.binder.viommu_flags())
        .unwrap();
    let devices = [(BDF, rig.dev, rig.parent), (bdf_c, dev_c, parent_c)];
    let sim = rig.sim.clone();
    let hd = move || HostIommuDevice::query(sim.clone(), "0000:03:00.0", dev_c, parent_c).unwrap();

    // Plugged before the guest's driver has seen it: blocked with the guest's own fault (no
    // context entry), not left on its GPA parent.
    rig.binder
        .register(bdf_c, hd(), PciTopology::default())
        .unwrap();
    let binding_c = |rig: &Rig, pasid: u32| {
        rig.binder
            .bindings()
            .into_iter()
            .find(|b| b.bdf == bdf_c && b.pasid == Pasid::from_table_index(pasid))
    };
    let b = binding_c(&rig, 0).unwrap();
    assert_eq!(b.host, HostAttachment::Blocked);
    assert!(matches!(b.blocked, Some(BlockCause::Guest { .. })), "{b:?}");
    check_host_matches_binder(&rig.sim, &rig.binder, &devices);

    // The driver probes it (context entry, PASID 0 and PASID 5) and flushes the context cache.
    let gpa_c = 0xd0_0000;
    let root_c = rig.new_fs_table(IOVA, gpa_c, true);
    let root_c5 = rig.new_fs_table(IOVA, gpa_c + 0x1000, true);
    rig.program_device(
        bdf_c,
        &[
            (0, PasidEntry::first_stage(root_c, false, 11, 2)),
            (5, PasidEntry::first_stage(root_c5, false, 11, 2)),
        ],
    );
    rig.g
        .submit(&[context_cache(ContextCacheGranularity::Device {
            did: 0,
            sid: bdf_c.sid(),
            fm: 0,
        })]);
    let p5 = Pasid::new(5);
    for (pasid, gpa) in [(None, gpa_c), (p5, gpa_c + 0x1000)] {
        let t = rig
            .sim
            .dma_translate(dev_c, pasid, IOVA, AccessKind::Read)
            .unwrap();
        assert_eq!(t.hpa, HOST_BASE + gpa, "{pasid:?}");
    }
    check_host_matches_binder(&rig.sim, &rig.binder, &devices);

    // A fault is still queued on its nested HWPT when it is unplugged.
    PageTableBuilderExt::unmap(&rig, root_c, IOVA);
    rig.g.submit(&[pasid_iotlb_all(11, 0)]);
    let f = rig
        .sim
        .dma_translate(dev_c, None, IOVA, AccessKind::Read)
        .unwrap_err();
    assert_eq!(f.reason, FaultReason::FirstStageNotPresent);
    assert_eq!(rig.sim.device_objects(dev_c).queued_faults, 1);
    assert_eq!(rig.sim.device_objects(dev_c).nested_hwpts.len(), 2);

    // Unplug: everything the binder made for it is gone from the host, the queued fault was
    // answered, nothing is orphaned, and the other device is untouched.
    let hwpt_a = rig.nested_hwpt().unwrap();
    let returned = rig.binder.unregister(bdf_c).unwrap();
    assert_eq!(returned.iommufd_ids(), Some((dev_c, parent_c)));
    let left = rig.sim.device_objects(dev_c);
    assert_eq!(
        left,
        sim::SimDeviceObjects {
            nested_hwpts: vec![],
            attachments: BTreeMap::from([(None, parent_c)]),
            queued_faults: 0,
        }
    );
    assert_eq!(rig.sim.stats().faults_auto_responded, 1);
    assert!(rig.binder.orphans().is_empty());
    assert_eq!(rig.binder.stats().devices, 1);
    assert_eq!(rig.nested_hwpt(), Some(hwpt_a));
    rig.events.take();
    assert_eq!(rig.binder.process_host_faults(), 0, "nothing left to read");
    check_host_matches_binder(&rig.sim, &rig.binder, &devices);
    // Guest activity for it no longer reaches the host.
    rig.sim.take_invalidation_log();
    rig.g.submit(&[pasid_iotlb_all(11, 5)]);
    assert!(rig.sim.take_invalidation_log().is_empty());

    // Replug: it binds at once to what the guest still has programmed, PASID 5 included
    // (found by the scan: no invalidation names it).
    rig.binder
        .register(bdf_c, hd(), PciTopology::default())
        .unwrap();
    let b0 = binding_c(&rig, 0).unwrap();
    let b5 = binding_c(&rig, 5).unwrap();
    assert_eq!(b0.s1.unwrap().pgtbl_addr, root_c);
    assert_eq!(b5.s1.unwrap().pgtbl_addr, root_c5);
    assert!(matches!(b0.host, HostAttachment::Nested(_)));
    assert_eq!(
        rig.sim
            .dma_translate(dev_c, p5, IOVA, AccessKind::Read)
            .unwrap()
            .hpa,
        HOST_BASE + gpa_c + 0x1000
    );
    check_host_matches_binder(&rig.sim, &rig.binder, &devices);

    // The guest's driver releases it (context cleared and flushed) before the unplug: blocked,
    // then unregistering still leaves nothing behind.
    rig.clear_context(bdf_c);
    rig.g
        .submit(&[context_cache(ContextCacheGranularity::Global)]);
    assert_eq!(binding_c(&rig, 0).unwrap().host, HostAttachment::Blocked);
    assert!(binding_c(&rig, 5).is_none());
    rig.binder.unregister(bdf_c).unwrap();
    assert!(rig.sim.device_objects(dev_c).nested_hwpts.is_empty());
    check_host_matches_binder(&rig.sim, &rig.binder, &devices);
    assert_eq!(
        rig.binder.stats().host_errors,
        0,
        "no host call failed along the way"
    );
}

/// Unmapping through a table the rig did not build itself.
trait PageTableBuilderExt {
    fn unmap(&self, root: u64, iova: u64);
}

impl PageTableBuilderExt for Rig {
    fn unmap(&self, root: u64, iova: u64) {
        let mut pt = vtd_tables::builder::PageTableBuilder::at(
            &self.g.mem,
            root,
            vtd_tables::builder::PageTableFormat::FirstStage { levels: 4 },
        );
        assert!(pt.unmap(iova, PageSize::Size4K).unwrap());
    }
}
