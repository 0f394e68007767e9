//! Passthrough devices across save/restore: on the simulated host IOMMU (vtd-accel's sim) a
//! device bound through the nested binder with requests without PASID and several PASIDs
//! translates exactly as before on the target; a device missing on the target, one whose host
//! cannot run what the guest set up, and an extra one are clear errors that change nothing.

mod common;

use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use vtd_accel::compat::PciTopology;
use vtd_accel::sim::{HostMemory, SimHostIommu};
use vtd_accel::{
    Bdf, DeviceId, HW_CAP_DIRTY_TRACKING, HostAttachment, HostHwInfo, HostIommuBackend,
    HostIommuDevice, NestedBinder, Pasid,
};
use vtd_migrate::SnapshotError;
use vtd_tables::walk::AccessKind;
use vtd_testkit::driver::{Mem, Unit};

const HOST_BASE: u64 = 0x40_0000_0000;
const PT_BDF: Bdf = Bdf::from_sid(PASSTHROUGH_SID);

/// One side's host: the simulated IOMMU with guest RAM at HOST_BASE, the binder, the device.
struct Host {
    sim: Arc<SimHostIommu<Mem>>,
    binder: Arc<NestedBinder<Mem>>,
    dev: DeviceId,
}

fn nesting_host() -> HostHwInfo {
    let mut info = HostHwInfo::vtd_nesting_capable();
    info.capabilities |= HW_CAP_DIRTY_TRACKING;
    info
}

/// Builds the host for `unit` over `mem` and registers the passthrough device (and, with
/// `extra`, another one at 02:00.0).
fn host(unit: &Arc<Unit>, mem: &Mem, info: HostHwInfo, register: bool, extra: bool) -> Host {
    let ram = RAM_MB << 20;
    let sim = Arc::new(SimHostIommu::new(
        info,
        HostMemory::new().with_region(HOST_BASE, ram, mem.clone(), 0),
    ));
    let ioas = sim.alloc_ioas();
    sim.ioas_map(ioas, 0, ram, HOST_BASE, true).unwrap();
    let binder = NestedBinder::with_unit_faults(unit);
    let backend: Arc<dyn HostIommuBackend> = sim.clone();
    let (dev, parent) = sim.vfio_bind_default(ioas, binder.viommu_flags()).unwrap();
    if register {
        let hd = HostIommuDevice::query(backend.clone(), "0000:3b:00.0", dev, parent).unwrap();
        binder
            .register(PT_BDF, hd, PciTopology::default())
            .expect("registered");
    }
    if extra {
        let (dev2, parent2) = sim.vfio_bind_default(ioas, binder.viommu_flags()).unwrap();
        let hd = HostIommuDevice::query(backend, "0000:5e:00.0", dev2, parent2).unwrap();
        binder
            .register(Bdf::new(2, 0, 0), hd, PciTopology::default())
            .unwrap();
    }
    Host { sim, binder, dev }
}

/// What the host IOMMU does with a DMA of the passthrough device: (HPA, writable) or the
/// fault reason.
fn host_dma(h: &Host, pasid: Option<u32>, page: u64, write: bool) -> Result<(u64, bool), u8> {
    let access = if write {
        AccessKind::Write
    } else {
        AccessKind::Read
    };
    h.sim
        .dma_translate(h.dev, pasid.and_then(Pasid::new), iova(page) + 0x10, access)
        .map(|t| (t.hpa, t.writable))
        .map_err(|f| f.reason.code())
}

/// The migration: snapshot with the source's binder, memory copied, a fresh unit and host on
/// the target with the device registered, restore through the target's binder.
fn migrate(s: &Scenario, src: &Host, target_info: HostHwInfo) -> (Arc<Unit>, Mem, Host) {
    let bytes = vtd_migrate::save_with_binder(&s.g.unit, &src.binder);
    let mem = copy_memory(&s.g.mem);
    let (unit, _) = fresh_unit(s.g.unit.config().clone(), mem.clone());
    let h = host(&unit, &mem, target_info, true, false);
    vtd_migrate::restore_with_binder(&unit, &h.binder, &bytes).expect("restore");
    (unit, mem, h)
}

/// The scenario with its passthrough device registered on a source host.
fn source() -> (Scenario, Host) {
    let s = Scenario::with_passthrough();
    let h = host(&s.g.unit, &s.g.mem, nesting_host(), true, false);
    (s, h)
}

fn check(ops: &[Op], dmas: &[(usize, u64, bool)]) {
    let (mut s, src) = source();
    let pasids = s.passthrough.clone();
    for (i, op) in ops.iter().enumerate() {
        s.apply(op);
        if let Some(&(p, page, write)) = dmas.get(i) {
            let _ = host_dma(&src, pasids[p % pasids.len()], page, write);
        }
    }
    let snapshot = vtd_migrate::snapshot_with_binder(&s.g.unit, &src.binder);
    assert_eq!(snapshot.devices.len(), 1);
    assert_eq!(snapshot.devices[0].bdf, PT_BDF);
    assert_eq!(snapshot.devices[0].pasids, [0, 1, 7], "every PASID nested");

    let (target, _, dst) = migrate(&s, &src, nesting_host());
    assert_same_registers(&s.g.unit, &target);
    assert_eq!(target.export_state(), s.g.unit.export_state());
    for b in dst.binder.bindings() {
        assert!(matches!(b.host, HostAttachment::Nested(_)), "{b:?}");
    }
    // The emulated devices translate the same through the units.
    for &(sid, pasid) in &s.devices {
        for page in 0..PAGES {
            let req = request(sid, pasid, page, page % 2 == 0);
            assert_eq!(
                s.g.unit.translate(&req),
                target.translate(&req),
                "{sid:#x} {pasid:?}"
            );
        }
    }
    // The passthrough device translates the same through the host IOMMUs.
    for &pasid in &pasids {
        for page in 0..PAGES {
            for write in [false, true] {
                let a = host_dma(&src, pasid, page, write);
                let b = host_dma(&dst, pasid, page, write);
                assert_eq!(a, b, "PASID {pasid:?} page {page} write {write}");
                if page < MAPPED && !(write && page == 3) {
                    assert_eq!(
                        a.map(|(hpa, _)| hpa),
                        Ok(HOST_BASE + passthrough_gpa(pasid, page) + 0x10)
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn passthrough_bindings_translate_the_same_after_restore(
        ops in proptest::collection::vec(op(), 0..30),
        dmas in proptest::collection::vec((0..3usize, 0..PAGES, any::<bool>()), 0..30),
    ) {
        check(&ops, &dmas);
    }
}

#[test]
fn a_device_missing_on_the_target_is_named_and_nothing_changes() {
    let (s, src) = source();
    let bytes = vtd_migrate::save_with_binder(&s.g.unit, &src.binder);
    let mem = copy_memory(&s.g.mem);
    let (unit, _) = fresh_unit(s.g.unit.config().clone(), mem.clone());
    let h = host(&unit, &mem, nesting_host(), false, false);
    let before = (unit.export_state(), mmio_reads(&unit));
    match vtd_migrate::restore_with_binder(&unit, &h.binder, &bytes) {
        Err(e @ SnapshotError::MissingDevice { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("01:00.0") && text.contains("0000:3b:00.0"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((unit.export_state(), mmio_reads(&unit)), before);
    // And the plain restore refuses a snapshot with devices too.
    assert!(matches!(
        vtd_migrate::restore(&unit, &bytes),
        Err(SnapshotError::PassthroughNotRestored { count: 1, .. })
    ));
}

#[test]
fn a_target_host_without_the_guests_pasid_width_is_refused() {
    let (s, src) = source();
    let bytes = vtd_migrate::save_with_binder(&s.g.unit, &src.binder);
    let mem = copy_memory(&s.g.mem);
    let (unit, _) = fresh_unit(s.g.unit.config().clone(), mem.clone());
    // 2-bit PASIDs: PASID 7 (bound on the source) does not fit.
    let mut narrow = nesting_host();
    narrow.max_pasid_log2 = 2;
    let h = host(&unit, &mem, narrow, true, false);
    let before = (unit.export_state(), mmio_reads(&unit));
    match vtd_migrate::restore_with_binder(&unit, &h.binder, &bytes) {
        Err(e @ SnapshotError::IncompatibleDevice { .. }) => {
            assert!(e.to_string().contains("PASID 7"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((unit.export_state(), mmio_reads(&unit)), before);
}

#[test]
fn a_device_only_on_the_target_is_refused() {
    let (s, src) = source();
    let bytes = vtd_migrate::save_with_binder(&s.g.unit, &src.binder);
    let mem = copy_memory(&s.g.mem);
    let (unit, _) = fresh_unit(s.g.unit.config().clone(), mem.clone());
    let h = host(&unit, &mem, nesting_host(), true, true);
    let before = unit.export_state();
    match vtd_migrate::restore_with_binder(&unit, &h.binder, &bytes) {
        Err(e @ SnapshotError::UnexpectedDevice { .. }) => {
            assert!(e.to_string().contains("02:00.0"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(unit.export_state(), before);
}
