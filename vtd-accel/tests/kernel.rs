//! vtd-accel as the Linux kernel really behaves: one test per kernel rule the backend, the
//! simulator and the binder follow, each naming the kernel source it models; and page requests
//! end to end (a PRI-capable passthrough device, the guest's page request queue, the guest
//! driver's answer, the device's retry).

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use vm_memory::{Bytes, GuestAddress};
use vtd_accel::sim::*;
use vtd_accel::*;
use vtd_core::ResponseCode;
use vtd_regs::VtdConfig;
use vtd_tables::builder::*;
use vtd_tables::walk::AccessKind;

const FLTS: &str = "x-scalable-mode=on,x-flts=on";
fn nested_req(parent: HwptId, addr_width: u32, flags: u64, pasid: bool, fault: bool) -> HwptAlloc {
    HwptAlloc::Nested {
        parent,
        s1: VtdS1 {
            flags: VtdS1Flags(flags),
            pgtbl_addr: 0x10_0000,
            addr_width,
        },
        pasid,
        fault,
    }
}

/// A bare simulated host (no guest) with one IOAS mapped read-write.
fn bare_sim(info: HostHwInfo) -> (Arc<SimHostIommu<Mem>>, IoasId) {
    let sim = Arc::new(SimHostIommu::new(info, HostMemory::<Mem>::new()));
    let ioas = sim.alloc_ioas();
    sim.ioas_map(ioas, 0, 1 << 20, 1 << 32, true).unwrap();
    (sim, ioas)
}

/// The rig's device re-registered as having ATS and PRI, the guest's page request queue on
/// (one page: 128 descriptors, of which the unit fills at most 127).
fn pri_rig() -> Rig {
    let mut rig = pri_device_rig();
    rig.g.enable_prq(0);
    rig
}

/// The rig's device re-registered as having ATS and PRI; the guest's page request queue not
/// set up yet.
fn pri_device_rig() -> Rig {
    pri_device_rig_on(|sim, _| sim)
}

fn nested_of(sim: &SimHostIommu<Mem>, dev: DeviceId) -> SimHwpt {
    let h = sim.attachments(dev)[&None];
    sim.hwpts().into_iter().find(|x| x.id == h).unwrap()
}

/// Linux `drivers/iommu/intel/iommu.c`, `intel_iommu_enable_iopf()` (called through
/// `iopf_for_domain_set()` in `drivers/iommu/intel/iommu.h` when an HWPT with a fault queue is
/// attached): a device without ATS/PRI is `ENODEV`, and the driver has already blocked it.
/// So the fault queue is set per device: a non-PRI device keeps working next to a PRI device
/// whose HWPT has one.
#[test]
fn fault_queue_only_for_pri_devices_intel_iommu_enable_iopf() {
    // The rule itself, on the simulator.
    let (sim, ioas) = bare_sim(HostHwInfo::vtd_nesting_capable());
    let (dev, parent) = sim
        .vfio_bind_default(
            ioas,
            ViommuFlags {
                want_nesting_parent: true,
                want_pasid_parent: false,
            },
        )
        .unwrap();
    let with_queue = sim
        .alloc_hwpt(dev, &nested_req(parent, 48, 0, false, true))
        .unwrap();
    let e = sim.attach(dev, None, with_queue).unwrap_err();
    assert_eq!((e.op, e.errno), (BackendOp::Attach, Some(19)), "{e}");
    assert!(
        sim.attachments(dev).is_empty(),
        "blocked by the driver, not reverted"
    );
    sim.set_device_pri(dev, true);
    sim.attach(dev, None, with_queue).unwrap();

    // The binder: PRI device 01:00.0 gets a fault queue, non-PRI 02:00.0 does not, and both
    // translate.
    let mut rig = pri_rig();
    assert!(nested_of(&rig.sim, rig.dev).fault);
    let bdf_b = Bdf::new(2, 0, 0);
    let gpa_b = GPA + 0x4000;
    let root_b = rig.new_fs_table(IOVA, gpa_b, true);
    rig.program_device(
        bdf_b,
        &[(
            0,
            vtd_tables::entries::PasidEntry::first_stage(root_b, false, 9, 2),
        )],
    );
    let (dev_b, parent_b) = rig
        .sim
        .vfio_bind_default(rig.ioas, rig.binder.viommu_flags())
        .unwrap();
    let hd = HostIommuDevice::query(rig.sim.clone(), "0000:02:00.0", dev_b, parent_b).unwrap();
    rig.binder
        .register(bdf_b, hd, PciTopology::default())
        .unwrap();
    let b = nested_of(&rig.sim, dev_b);
    assert!(!b.fault, "no fault queue on a device without PRI");
    assert_eq!(
        rig.sim
            .dma_translate(dev_b, None, IOVA, AccessKind::Write)
            .unwrap()
            .hpa,
        HOST_BASE + gpa_b
    );
    assert_eq!(
        rig.dma(IOVA, AccessKind::Read).unwrap().hpa,
        HOST_BASE + GPA
    );
    assert_eq!(rig.binder.stats().host_errors, 0);
    check_host_matches_binder(
        &rig.sim,
        &rig.binder,
        &[(BDF, rig.dev, rig.parent), (bdf_b, dev_b, parent_b)],
    );
}

/// Linux 6.12 `drivers/iommu/iommufd/hw_pagetable.c`, `iommufd_hwpt_alloc()`: the unknown
/// `IOMMU_HWPT_ALLOC_PASID` flag is `EOPNOTSUPP`; `drivers/vfio/device_cdev.c`,
/// `vfio_df_ioctl_attach_pt()`: the unknown `VFIO_DEVICE_ATTACH_PASID` flag is `EINVAL`.
/// 6.18 accepts both. The backend reports it, registration refuses a PASID guest on 6.12 with
/// an error naming the kernel limit, and the guest-visible PASID width follows.
#[test]
fn pasid_attach_follows_the_host_kernel_6_12_and_6_18() {
    let info = HostHwInfo::vtd_nesting_capable();
    let pasid_cfg = VtdConfig {
        pasid_bits: 8,
        ..VtdConfig::from_qemu_props(FLTS).unwrap()
    };
    for kernel in [SimKernel::Linux6_12, SimKernel::Linux6_18] {
        let (sim, ioas) = bare_sim(info);
        sim.set_kernel(kernel);
        let new = kernel == SimKernel::Linux6_18;
        assert_eq!(sim.caps().pasid_attach, new);
        let dev = sim.add_device();
        let alloc = sim.alloc_hwpt(
            dev,
            &HwptAlloc::Parent {
                ioas,
                nest_parent: true,
                pasid: true,
                dirty_tracking: false,
            },
        );
        let parent = match alloc {
            Ok(p) => {
                assert!(new);
                p
            }
            Err(e) => {
                assert!(!new);
                assert_eq!(e.errno, Some(95), "{e}");
                // The VMM falls back to a parent without PASID.
                sim.alloc_hwpt(
                    dev,
                    &HwptAlloc::Parent {
                        ioas,
                        nest_parent: true,
                        pasid: false,
                        dirty_tracking: false,
                    },
                )
                .unwrap()
            }
        };
        sim.attach(dev, None, parent).unwrap();
        let pasid5 = Pasid::new(5);
        let e = sim.attach(dev, pasid5, parent);
        if new {
            e.unwrap();
        } else {
            assert_eq!(e.unwrap_err().errno, Some(22));
            assert_eq!(
                sim.attachments(dev).get(&None),
                Some(&parent),
                "refused before the driver"
            );
        }
        let hd = HostIommuDevice::query(sim.clone(), "0000:3b:00.0", dev, parent).unwrap();
        let got = check_compatibility(&pasid_cfg, &hd, &PciTopology::default());
        if new {
            got.unwrap();
            assert_eq!(guest_pasid_bits(8, &[&hd]), 8);
        } else {
            let e = got.unwrap_err();
            assert!(matches!(e, CompatError::NoPasidAttach { .. }));
            let msg = e.to_string();
            assert!(
                msg.contains("6.18") && msg.contains("x-pasid-mode=off"),
                "{msg}"
            );
            assert_eq!(
                guest_pasid_bits(8, &[&hd]),
                0,
                "the guest is not given PASIDs"
            );
            // Without PASIDs for the guest the same device registers and binds.
            let no_pasid = VtdConfig::from_qemu_props(FLTS).unwrap();
            check_compatibility(&no_pasid, &hd, &PciTopology::default()).unwrap();
        }
    }
    // A 6.12-like host under the full rig (guest without PASIDs): binding works as before.
    let cfg = VtdConfig::from_qemu_props(FLTS).unwrap();
    let info = host_info_for(&cfg);
    let mut rig = Rig::build(cfg, info, None, |sim, _| {
        sim.set_kernel(SimKernel::Linux6_12);
        sim
    });
    rig.g.set_translation(true);
    assert!(rig.nested_hwpt().is_some());
    assert_eq!(
        rig.dma(IOVA, AccessKind::Read).unwrap().hpa,
        HOST_BASE + GPA
    );
}

/// Linux `drivers/iommu/intel/nested.c`, `intel_nested_domain_alloc()` checks only the parent;
/// `drivers/iommu/intel/pasid.c`, `intel_pasid_setup_nested()` checks the VTD_S1 contents
/// (5-level width needs FL5LP, SRE needs SRS, EAFE needs EAFS) at attach, after
/// `intel_nested_attach_dev()` blocked the device: the failed attach leaves it blocked.
#[test]
fn vtd_s1_is_checked_at_attach_intel_pasid_setup_nested() {
    let mut info = HostHwInfo::vtd_nesting_capable();
    info.ecap = info.ecap.with_srs(false).with_eafs(false);
    assert!(!info.cap.fl5lp());
    let (sim, ioas) = bare_sim(info);
    let (dev, parent) = sim
        .vfio_bind_default(
            ioas,
            ViommuFlags {
                want_nesting_parent: true,
                want_pasid_parent: false,
            },
        )
        .unwrap();
    for (aw, flags, why) in [
        (57, 0, "addr_width 57"),
        (48, VtdS1Flags::SRE, "SRS"),
        (48, VtdS1Flags::EAFE, "EAFS"),
    ] {
        sim.attach(dev, None, parent).unwrap();
        let h = sim
            .alloc_hwpt(dev, &nested_req(parent, aw, flags, false, false))
            .unwrap();
        let e = sim.attach(dev, None, h).unwrap_err();
        assert_eq!((e.op, e.errno), (BackendOp::Attach, Some(22)), "{why}: {e}");
        assert!(e.message.contains(why), "{e}");
        assert!(
            sim.attachments(dev).is_empty(),
            "{why}: the device is blocked, not on its parent"
        );
        sim.destroy(h).unwrap();
    }
    // A nested HWPT must still have a nest parent at allocation.
    let plain = sim
        .alloc_hwpt(
            dev,
            &HwptAlloc::Parent {
                ioas,
                nest_parent: false,
                pasid: false,
                dirty_tracking: false,
            },
        )
        .unwrap();
    assert_eq!(
        sim.alloc_hwpt(dev, &nested_req(plain, 48, 0, false, false))
            .unwrap_err()
            .errno,
        Some(22)
    );
}

/// ERRATA_772415_SPR17 (Linux `drivers/iommu/intel/iommu.c`, `intel_iommu_hw_info()` reports
/// it; the driver refuses read-only mappings in a nest parent): the default Sapphire-Rapids host
/// has it; a read-only mapping fails at `IOMMU_IOAS_MAP` into a nest parent's IOAS and a nest
/// parent cannot be allocated over an IOAS that holds one. Guest RAM is mapped read-write.
#[test]
fn errata_772415_spr17_refuses_read_only_mappings_in_a_nest_parent() {
    let info = HostHwInfo::vtd_nesting_capable();
    assert!(info.quirks().nest_parent_no_readonly);
    let sim = SimHostIommu::new(info, HostMemory::<Mem>::new());
    let ro_ioas = sim.alloc_ioas();
    sim.ioas_map(ro_ioas, 0, 0x1000, 1 << 32, false).unwrap();
    let dev = sim.add_device();
    let e = sim
        .alloc_hwpt(
            dev,
            &HwptAlloc::Parent {
                ioas: ro_ioas,
                nest_parent: true,
                pasid: false,
                dirty_tracking: false,
            },
        )
        .unwrap_err();
    assert!(e.message.contains("ERRATA_772415_SPR17"), "{e}");
    let ioas = sim.alloc_ioas();
    sim.alloc_hwpt(
        dev,
        &HwptAlloc::Parent {
            ioas,
            nest_parent: true,
            pasid: false,
            dirty_tracking: false,
        },
    )
    .unwrap();
    let e = sim.ioas_map(ioas, 0, 0x1000, 1 << 32, false).unwrap_err();
    assert_eq!((e.op, e.errno), (BackendOp::IoasMap, Some(22)));
    assert!(info.quirks().parent_map_writable(false));
    sim.ioas_map(
        ioas,
        0,
        0x1000,
        1 << 32,
        info.quirks().parent_map_writable(false),
    )
    .unwrap();
}

/// Linux `drivers/iommu/iommufd/device.c`, `iommufd_hwpt_pasid_compat()`: a PASID can be
/// attached only while the HWPT of the requests without PASID is PASID-capable, and that HWPT
/// cannot be replaced by one that is not while PASIDs are attached.
#[test]
fn pasid_attach_needs_a_pasid_capable_rid_hwpt_iommufd_hwpt_pasid_compat() {
    let (sim, ioas) = bare_sim(HostHwInfo::vtd_nesting_capable());
    let dev = sim.add_device();
    let plain = sim
        .alloc_hwpt(
            dev,
            &HwptAlloc::Parent {
                ioas,
                nest_parent: true,
                pasid: false,
                dirty_tracking: false,
            },
        )
        .unwrap();
    let capable = sim
        .alloc_hwpt(
            dev,
            &HwptAlloc::Parent {
                ioas,
                nest_parent: true,
                pasid: true,
                dirty_tracking: false,
            },
        )
        .unwrap();
    let nested = sim
        .alloc_hwpt(dev, &nested_req(capable, 48, 0, true, false))
        .unwrap();
    sim.attach(dev, None, plain).unwrap();
    let e = sim.attach(dev, Pasid::new(5), nested).unwrap_err();
    assert_eq!(e.errno, Some(22));
    assert!(e.message.contains("without PASID"), "{e}");
    sim.attach(dev, None, capable).unwrap();
    sim.attach(dev, Pasid::new(5), nested).unwrap();
    let e = sim.attach(dev, None, plain).unwrap_err();
    assert_eq!(e.errno, Some(22));
    assert_eq!(
        sim.attachments(dev).get(&None),
        Some(&capable),
        "refused by the core: unchanged"
    );
}

/// On Intel hosts a non-recoverable DMA fault of a nested HWPT goes to the host kernel log
/// (Linux `drivers/iommu/intel/dmar.c`, `dmar_fault()`), never to user space: the guest sees
/// nothing when a non-PRI passthrough device faults. Injection into the guest happens only for
/// a backend that declares `BackendCaps::unrecoverable_faults`.
#[test]
fn non_recoverable_faults_stay_in_the_host_log_dmar_fault() {
    let rig = Rig::new(FLTS);
    assert!(!rig.sim.caps().unrecoverable_faults);
    rig.dma(0xdead_0000, AccessKind::Read).unwrap_err();
    assert_eq!(rig.sim.stats().host_log_faults, 1);
    assert_eq!(rig.binder.process_host_faults(), 0);
    assert_eq!(rig.binder.stats().host_faults, 0);
    assert!(!rig.g.fsts().ppf(), "no fault recorded in the guest");
    // A PRI device on an HWPT with a fault queue: the same miss is a page request instead.
    let mut rig = pri_rig();
    rig.dma(0xdead_0000, AccessKind::Read).unwrap_err();
    assert_eq!(rig.sim.stats().host_log_faults, 0);
    assert_eq!(rig.sim.stats().page_requests, 1);
    // A second-stage miss (the guest maps a GPA beyond its RAM) is never a page request.
    let mem = rig.g.mem.clone();
    let mut fs = PageTableBuilder::at(&mem, rig.fs_root, PageTableFormat::FirstStage { levels: 4 });
    fs.map(
        &mut rig.g.frames,
        IOVA + 0x1000,
        1 << 32,
        PageSize::Size4K,
        true,
        true,
    )
    .unwrap();
    rig.dma(IOVA + 0x1000, AccessKind::Read).unwrap_err();
    assert_eq!(rig.sim.stats().host_log_faults, 1);
    // With the capability declared (tests only), the fault reaches the binder.
    let rig = Rig::new(FLTS);
    rig.sim.report_unrecoverable_faults(true);
    rig.dma(0xdead_0000, AccessKind::Read).unwrap_err();
    assert_eq!(rig.binder.process_host_faults(), 1);
}

/// Page requests end to end: the PRI device touches a page the guest has not mapped; the
/// request is read from the host's fault queue (Linux `drivers/iommu/iommufd/fault.c`,
/// `iommufd_fault_fops_read()`) into the guest's page request queue (VT-d spec 7.5.1) with the
/// device's requester, PASID, address, group index and last-in-group flag; the guest driver
/// (Linux `drivers/iommu/intel/prq.c` as vtd-testkit models it) maps the page and answers
/// Success (spec 7.5.2); the answer reaches the host with the group's cookie
/// (`iommufd_fault_fops_write()`), and the device's retried DMA completes with the data.
#[test]
fn page_request_reaches_the_guest_and_the_answer_completes_the_dma() {
    let mut rig = pri_rig();
    let iova = IOVA + 0x7000;
    let gpa = GPA + 0x3000;
    rig.g
        .mem
        .write_slice(b"paged in", GuestAddress(gpa + 0x10))
        .unwrap();
    let mut buf = [0u8; 8];
    let prg = match rig.sim.pri_dma_read(rig.dev, None, iova + 0x10, &mut buf) {
        PriDma::Waiting { prg_index } => prg_index,
        other => panic!("{other:?}"),
    };
    assert_eq!(rig.binder.process_host_faults(), 1);
    let batch = rig.g.read_page_requests();
    let reqs: Vec<_> = batch.requests.into_iter().map(Result::unwrap).collect();
    assert_eq!(reqs.len(), 1);
    let r = reqs[0];
    assert_eq!(
        (
            r.rid,
            r.pasid,
            r.address,
            r.prg_index,
            r.last_in_group,
            r.read,
            r.write
        ),
        (SID, None, iova, prg, true, true, false)
    );
    // Still waiting: the guest has not answered.
    assert!(matches!(
        rig.sim.pri_dma_read(rig.dev, None, iova + 0x10, &mut buf),
        PriDma::Waiting { .. }
    ));
    // The guest's fault handler maps the page, then answers.
    let mem = rig.g.mem.clone();
    let mut fs = PageTableBuilder::at(&mem, rig.fs_root, PageTableFormat::FirstStage { levels: 4 });
    fs.map(&mut rig.g.frames, iova, gpa, PageSize::Size4K, true, true)
        .unwrap();
    rig.g.respond(&r, ResponseCode::Success);
    let resp = rig.sim.page_responses();
    assert_eq!(
        resp,
        vec![SimPageResponse {
            dev: rig.dev,
            pasid: None,
            prg_index: prg,
            code: PageResponseCode::Success,
            auto: false
        }]
    );
    match rig.sim.pri_dma_read(rig.dev, None, iova + 0x10, &mut buf) {
        PriDma::Done(t) => assert_eq!(t.hpa, HOST_BASE + gpa + 0x10),
        other => panic!("{other:?}"),
    }
    assert_eq!(&buf, b"paged in");
    let s = rig.binder.stats();
    assert_eq!(
        (
            s.page_requests,
            s.page_responses,
            s.page_requests_refused,
            s.host_errors
        ),
        (1, 1, 0, 0)
    );
    assert_eq!(rig.sim.pending_page_groups(), (0, 0));
}

/// An Invalid Request answer fails the device's DMA (PCIe PRI: no retry); an answer for a
/// group the host never sent goes nowhere (no host call, no error); Response Failure is passed
/// on as iommufd's only other code, INVALID.
#[test]
fn invalid_and_unmatched_responses() {
    let mut rig = pri_rig();
    let iova = IOVA + 0x9000;
    let mut buf = [0u8; 4];
    assert!(matches!(
        rig.sim.pri_dma_read(rig.dev, None, iova, &mut buf),
        PriDma::Waiting { .. }
    ));
    rig.binder.process_host_faults();
    let r = rig.g.read_page_requests().requests[0].unwrap();
    rig.g.respond(&r, ResponseCode::InvalidRequest);
    assert_eq!(
        rig.sim.page_responses().last().unwrap().code,
        PageResponseCode::Invalid
    );
    assert_eq!(
        rig.sim.pri_dma_read(rig.dev, None, iova, &mut buf),
        PriDma::Failed
    );
    // The guest answers a group nobody asked about: nothing reaches the host.
    let before = rig.sim.page_responses().len();
    let bogus = vtd_regs::prq::PageRequestDescriptor {
        prg_index: 0x1aa,
        ..r
    };
    rig.g.respond(&bogus, ResponseCode::Success);
    assert_eq!(rig.sim.page_responses().len(), before);
    assert_eq!(rig.binder.stats().host_errors, 0);
    // Response Failure -> INVALID.
    let iova2 = IOVA + 0xa000;
    assert!(matches!(
        rig.sim.pri_dma_read(rig.dev, None, iova2, &mut buf),
        PriDma::Waiting { .. }
    ));
    rig.binder.process_host_faults();
    let r = rig.g.read_page_requests().requests[0].unwrap();
    rig.g.respond(&r, ResponseCode::Failure);
    assert_eq!(
        rig.sim.page_responses().last().unwrap().code,
        PageResponseCode::Invalid
    );
}

/// Overflow (VT-d spec 7.5.1): when the guest's queue is full the unit drops the request, sets
/// PRS.PRO and, for a request that ends its group, answers Success itself; that answer goes to
/// the host like a guest's, so the device retries instead of waiting forever.
#[test]
fn overflowing_the_guest_queue_answers_the_host() {
    let rig = pri_rig();
    // 127 fit (the unit never fills the last slot of the 128); 3 more overflow.
    let groups: Vec<u16> = (0..130u64)
        .map(|i| {
            rig.sim
                .raise_page_group(rig.dev, None, &[0x4000_0000 + i * 0x1000], false)
                .unwrap()
        })
        .collect();
    assert_eq!(rig.binder.process_host_faults(), 130);
    let prs = vtd_regs::prq::Prs::from_bits(rig.g.r32(vtd_regs::regs::offset::PRS));
    assert!(prs.pro(), "PRS.PRO set");
    let resp = rig.sim.page_responses();
    assert_eq!(resp.len(), 3);
    assert!(
        resp.iter()
            .all(|r| r.code == PageResponseCode::Success && !r.auto)
    );
    assert_eq!(
        resp.iter().map(|r| r.prg_index).collect::<Vec<_>>(),
        groups[127..].to_vec()
    );
    // The 127 queued ones still wait for the guest.
    assert_eq!(rig.sim.pending_page_groups(), (0, 127));
    assert_eq!(rig.binder.stats().page_responses, 3);
}

/// A multi-request group is delivered whole and answered once, at its last request; the
/// kernel answers groups still pending when the HWPT is replaced (Linux
/// `drivers/iommu/iommufd/fault.c`, `iommufd_auto_response_faults()`).
#[test]
fn groups_are_answered_once_and_pending_ones_die_with_their_hwpt() {
    let mut rig = pri_rig();
    let prg = rig
        .sim
        .raise_page_group(
            rig.dev,
            None,
            &[0x5000_0000, 0x5000_1000, 0x5000_2000],
            true,
        )
        .unwrap();
    assert_eq!(rig.binder.process_host_faults(), 3);
    let reqs: Vec<_> = rig
        .g
        .read_page_requests()
        .requests
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(reqs.len(), 3);
    assert!(reqs.iter().all(|r| r.prg_index == prg && r.write));
    assert_eq!(reqs.iter().filter(|r| r.last_in_group).count(), 1);
    rig.g.respond(&reqs[2], ResponseCode::Success);
    assert_eq!(rig.sim.page_responses().len(), 1);
    // A pending group when the guest moves to a new table: the kernel answers it.
    rig.sim
        .raise_page_group(rig.dev, None, &[0x6000_0000], false)
        .unwrap();
    rig.binder.process_host_faults();
    let new_root = rig.new_fs_table(IOVA, GPA, true);
    let pe = vtd_tables::entries::PasidEntry::first_stage(new_root, false, DID, 2);
    rig.write_pasid_entry(0, pe);
    rig.g.submit(&[pasid_cache(
        DID,
        vtd_regs::inv::PasidCacheGranularity::Pasid { pasid: 0 },
    )]);
    let last = *rig.sim.page_responses().last().unwrap();
    assert!(
        last.auto && last.code == PageResponseCode::Invalid,
        "{last:?}"
    );
    assert_eq!(rig.sim.pending_page_groups(), (0, 0));
    // The guest's late answer to that group: its cookie died with the HWPT, nothing is
    // written to the host (no EINVAL from a dead cookie).
    let pending: Vec<_> = rig
        .g
        .read_page_requests()
        .requests
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(pending.len(), 1);
    let responses = rig.sim.page_responses().len();
    rig.g.respond(&pending[0], ResponseCode::Success);
    assert_eq!(rig.sim.page_responses().len(), responses);
    assert_eq!(rig.binder.stats().host_errors, 0);
}

/// The binder's map from the guest's names of page groups (requester, PASID, group index) to
/// the host's cookies is emptied by the answers: a device cycling through its 512 group
/// indices many times over (PCIe PRI reuses an index once its group was answered) gets every
/// group answered with its own cookie, the first one a group of two requests that must be
/// remembered once, not once per request.
#[test]
fn answered_groups_free_their_names_for_reuse() {
    let mut rig = pri_rig();
    let groups = 8200u64;
    for i in 0..groups {
        let pages: &[u64] = if i == 0 {
            &[0x5000_0000, 0x5000_1000]
        } else {
            &[0x5000_0000 + (i % 64) * 0x1000]
        };
        let prg = rig
            .sim
            .raise_page_group(rig.dev, None, pages, false)
            .unwrap();
        assert_eq!(prg, (i % 512) as u16);
        rig.binder.process_host_faults();
        let reqs: Vec<_> = rig
            .g
            .read_page_requests()
            .requests
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(reqs.len(), pages.len(), "group {i}");
        rig.g.respond(reqs.last().unwrap(), ResponseCode::Success);
        assert_eq!(rig.sim.pending_page_groups(), (0, 0), "group {i} answered");
    }
    // The simulator keeps the latest responses only; each group was answered (above).
    assert!(
        rig.sim
            .page_responses()
            .iter()
            .all(|r| r.code == PageResponseCode::Success && !r.auto)
    );
    let s = rig.binder.stats();
    assert_eq!(
        (s.page_responses, s.page_requests_refused, s.host_errors),
        (groups, 0, 0)
    );
    assert_eq!(s.page_requests, groups + 1, "every request read counted");
}

/// Pending page groups die with their binding's HWPT and with nothing else: when one device
/// moves to a new table (the kernel answers its pending group itself, Linux
/// `drivers/iommu/iommufd/fault.c`, `iommufd_auto_response_faults()`) or is unplugged, another
/// device's pending group still gets the guest's answer, and the late answer to a dead group
/// writes nothing to the host.
#[test]
fn pending_groups_of_other_devices_survive_a_rebind_and_an_unplug() {
    let mut rig = pri_rig();
    // A second PRI device, 03:00.0, probed by the guest with its own first-stage domain.
    let bdf_c = Bdf::new(3, 0, 0);
    let dev_c = rig.plug_pri_device(bdf_c, IOVA, GPA, 11);
    // One group pending on each device (at `offset` into its range): the guest's requests
    // for the first device and for 03:00.0.
    let one_group_each = |rig: &mut Rig, offset: u64| {
        rig.sim
            .raise_page_group(rig.dev, None, &[0x5000_0000 + offset], false)
            .unwrap();
        rig.sim
            .raise_page_group(dev_c, None, &[0x6000_0000 + offset], false)
            .unwrap();
        rig.binder.process_host_faults();
        let reqs: Vec<vtd_regs::prq::PageRequestDescriptor> = rig
            .g
            .read_page_requests()
            .requests
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(reqs.len(), 2);
        let of = |sid: u16| *reqs.iter().find(|r| r.rid == sid).unwrap();
        (of(SID), of(bdf_c.sid()))
    };
    let answers = |rig: &Rig, dev: DeviceId| {
        rig.sim
            .page_responses()
            .iter()
            .filter(|r| r.dev == dev && !r.auto)
            .count()
    };

    // One group pending on each device; the first device moves to a new table.
    let (req_a, req_c) = one_group_each(&mut rig, 0);
    let new_root = rig.new_fs_table(IOVA, GPA, true);
    rig.write_pasid_entry(
        0,
        vtd_tables::entries::PasidEntry::first_stage(new_root, false, DID, 2),
    );
    rig.g.submit(&[pasid_cache(
        DID,
        vtd_regs::inv::PasidCacheGranularity::Pasid { pasid: 0 },
    )]);
    assert!(
        rig.sim
            .page_responses()
            .iter()
            .any(|r| r.dev == rig.dev && r.auto),
        "the kernel answered the replaced HWPT's group"
    );
    // The other device's group still reaches its device; the dead group's answer does not.
    rig.g.respond(&req_c, ResponseCode::Success);
    assert_eq!(answers(&rig, dev_c), 1, "the other device's answer");
    rig.g.respond(&req_a, ResponseCode::Success);
    assert_eq!(answers(&rig, rig.dev), 0, "the dead group's answer");

    // One group pending on each device again; the second device is unplugged.
    let (req_a, req_c) = one_group_each(&mut rig, 0x1000);
    rig.binder.unregister(bdf_c).unwrap();
    rig.g.respond(&req_a, ResponseCode::Success);
    assert_eq!(answers(&rig, rig.dev), 1, "the remaining device's answer");
    rig.g.respond(&req_c, ResponseCode::Success);
    assert_eq!(answers(&rig, dev_c), 1, "nothing for the unplugged device");
    assert_eq!(rig.binder.stats().host_errors, 0);
    assert_eq!(rig.sim.pending_page_groups(), (0, 0));
}

/// Devices sharing one iommufd share its fault queue: every fault and page request is matched
/// to its device by the iommufd device ID, whichever device registered first, and the queue
/// is read for page requests as soon as any of its devices has PRI (here the second one only).
#[test]
fn one_iommufd_two_devices_faults_and_page_requests_reach_their_own_device() {
    let mut rig = Rig::new(FLTS_PRQ);
    rig.g.enable_prq(0);
    rig.sim.report_unrecoverable_faults(true);
    // 01:00.0 (the rig's, no PRI) and 03:00.0 with PRI, on the same host IOMMU.
    let bdf_c = Bdf::new(3, 0, 0);
    let dev_c = rig.plug_pri_device(bdf_c, IOVA, GPA, 11);
    rig.events.take();
    // A page request of the second device reaches the guest under its requester ID.
    rig.sim
        .raise_page_group(dev_c, None, &[0x6000_0000], false)
        .unwrap();
    assert_eq!(rig.binder.process_host_faults(), 1);
    let reqs: Vec<_> = rig
        .g
        .read_page_requests()
        .requests
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        reqs.iter().map(|r| r.rid).collect::<Vec<_>>(),
        vec![bdf_c.sid()]
    );
    // A first-stage fault of each device is reported at its own BDF.
    for dev in [dev_c, rig.dev] {
        rig.sim.raise_fault(HostFault {
            dev_id: dev,
            pasid: None,
            addr: IOVA,
            reason: vtd_regs::fault::FaultReason::FirstStageNotPresent,
            access: AccessKind::Read,
            privileged: false,
            hwpt: None,
        });
    }
    assert_eq!(rig.binder.process_host_faults(), 2);
    let bdfs: Vec<Option<Bdf>> = rig
        .events
        .take()
        .iter()
        .filter_map(|e| match e {
            AccelEvent::HostFault { bdf, .. } => Some(*bdf),
            _ => None,
        })
        .collect();
    assert_eq!(bdfs, vec![Some(bdf_c), Some(BDF)]);
}

/// A guest whose page request queue lies outside its RAM cannot be given the request (the
/// unit drops it): the host group is answered "invalid" at once, at its last request (PCIe
/// PRI: a device waits for the response of every group it sent), and counted as refused.
#[test]
fn page_requests_the_guest_cannot_receive_are_answered_invalid_at_once() {
    let rig = pri_device_rig();
    // PQA at 1 TiB, far outside the guest's 64 MiB.
    let pqa = vtd_regs::prq::Pqa::new().with_pqa(0x100_0000_0000 >> 12);
    rig.g.w64(vtd_regs::regs::offset::PQA, pqa.into_bits());
    let prg = rig
        .sim
        .raise_page_group(rig.dev, None, &[0x5000_0000, 0x5000_1000], false)
        .unwrap();
    assert_eq!(rig.binder.process_host_faults(), 2);
    assert_eq!(
        rig.sim.page_responses(),
        vec![SimPageResponse {
            dev: rig.dev,
            pasid: None,
            prg_index: prg,
            code: PageResponseCode::Invalid,
            auto: false
        }]
    );
    assert_eq!(rig.sim.pending_page_groups(), (0, 0));
    let s = rig.binder.stats();
    assert_eq!(
        (s.page_requests, s.page_requests_refused, s.host_errors),
        (2, 1, 0)
    );
}

/// A PRI rig (guest page request queue on) whose device's backend is a [`Flood`].
fn flood_rig() -> (Rig, Arc<Flood>) {
    let flood = Mutex::new(None);
    let mut rig = pri_device_rig_on(|sim, _| {
        let f = Arc::new(Flood::new(sim));
        *flood.lock().unwrap() = Some(f.clone());
        f
    });
    rig.g.enable_prq(0);
    let flood = flood.into_inner().unwrap().unwrap();
    (rig, flood)
}

/// A device may flood page requests and the guest may never answer (both are untrusted): the
/// binder remembers at most `vtd_core::MAX_OUTSTANDING_GROUPS` unanswered host groups, and
/// answers the next group "invalid" at once instead of handing it to the guest. The flood
/// comes from a backend wrapping the simulator: 8192 groups whose last request never comes
/// (distinct names: 16 PASIDs, 512 group indices each), then one whole group. Unplugging the
/// device forgets its groups (the kernel answers them itself).
#[test]
fn unanswered_page_groups_are_bounded() {
    let (rig, flood) = flood_rig();
    let request =
        |pasid, prg_index, last, cookie| page_request(rig.dev, pasid, prg_index, last, cookie);
    let limit = vtd_core::MAX_OUTSTANDING_GROUPS;
    let names = (1..=16)
        .map(Pasid::new)
        .flat_map(|p| (0..512u16).map(move |prg| (p, prg)));
    let mut flooded: Vec<HostPageRequest> = names
        .take(limit)
        .zip(1u32..)
        .map(|((p, prg), cookie)| request(p, prg, false, cookie))
        .collect();
    // One more group, whole, under a name not used yet.
    let last = request(Pasid::new(17), 0, true, 99_999);
    flooded.push(last);
    *flood.queue.lock().unwrap() = flooded;
    // 256 requests per poll: the polls needed, a bounded loop.
    let read: usize = (0..(limit + 1).div_ceil(256))
        .map(|_| rig.binder.process_host_faults())
        .sum();
    assert!(flood.queue.lock().unwrap().is_empty(), "every request read");
    assert_eq!(read, limit + 1);
    assert_eq!(
        *flood.answers.lock().unwrap(),
        vec![(99_999, PageResponseCode::Invalid)],
        "the group beyond the bound is refused, the others still wait for the guest"
    );
    assert_eq!(rig.binder.stats().page_requests_refused, 1);
    // Unplugged and plugged again, the device's next group is handed to the guest, whose full
    // queue makes the unit answer Success (VT-d spec 7.5.1), instead of being refused.
    let host = rig.binder.unregister(BDF).unwrap();
    rig.binder
        .register(BDF, host, PciTopology::default())
        .unwrap();
    *flood.queue.lock().unwrap() = vec![request(Pasid::new(17), 1, true, 100_000)];
    assert_eq!(rig.binder.process_host_faults(), 1);
    assert_eq!(
        flood.answers.lock().unwrap().last(),
        Some(&(100_000, PageResponseCode::Success))
    );
    assert_eq!(rig.binder.stats().page_requests_refused, 1);
}

/// The binder keeps every host group waiting under one guest name (requester, PASID, group
/// index), oldest first: a device that sends a second group under the index of one not yet
/// answered gets both answered, in order, one per guest answer.
#[test]
fn two_groups_under_one_name_are_answered_in_turn() {
    let (mut rig, flood) = flood_rig();
    *flood.queue.lock().unwrap() = vec![
        page_request(rig.dev, None, 5, true, 1),
        page_request(rig.dev, None, 5, true, 2),
    ];
    assert_eq!(rig.binder.process_host_faults(), 2);
    let reqs: Vec<_> = rig
        .g
        .read_page_requests()
        .requests
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        rig.g.respond(r, ResponseCode::Success);
    }
    assert_eq!(
        *flood.answers.lock().unwrap(),
        vec![
            (1, PageResponseCode::Success),
            (2, PageResponseCode::Success)
        ]
    );
}
