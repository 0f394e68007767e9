//! The registration compatibility matrix, table-driven: guest configuration x host IOMMU x
//! topology -> accepted or the specific refusal (with a message naming what to change).

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd_accel::sim::{HostMemory, SimHostIommu};
use vtd_accel::*;
use vtd_core::{RecordingSink, VtdUnit};
use vtd_regs::VtdConfig;

type Mem = GuestMemoryMmap<()>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Ok,
    FirstStageOff,
    NotIommufd,
    NotVtd,
    NoNesting,
    AddressWidth,
    No1g,
    No5Level,
    NoSrs,
    NoPasidAttach,
    Aliased,
}

fn kind(e: &CompatError) -> Want {
    match e {
        CompatError::FirstStageOff => Want::FirstStageOff,
        CompatError::NotIommufd { .. } => Want::NotIommufd,
        CompatError::NotVtd { .. } => Want::NotVtd,
        CompatError::NoNesting { .. } => Want::NoNesting,
        CompatError::AddressWidth { .. } => Want::AddressWidth,
        CompatError::NoFirstStage1g { .. } => Want::No1g,
        CompatError::NoFirstStage5Level { .. } => Want::No5Level,
        CompatError::NoSupervisorRequests { .. } => Want::NoSrs,
        CompatError::NoPasidAttach { .. } => Want::NoPasidAttach,
        CompatError::AliasedRequesterId { .. } => Want::Aliased,
    }
}

fn flts() -> VtdConfig {
    VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap()
}

fn host() -> HostHwInfo {
    HostHwInfo::vtd_nesting_capable()
}

struct Row {
    name: &'static str,
    guest: VtdConfig,
    host: HostHwInfo,
    iommufd: bool,
    aliased: bool,
    want: Want,
    /// A word the message must contain (what to change).
    says: &'static str,
}

fn row(
    name: &'static str,
    guest: VtdConfig,
    host: HostHwInfo,
    want: Want,
    says: &'static str,
) -> Row {
    Row {
        name,
        guest,
        host,
        iommufd: true,
        aliased: false,
        want,
        says,
    }
}

fn matrix() -> Vec<Row> {
    let h = host();
    let with_cap = |f: fn(vtd_regs::Cap) -> vtd_regs::Cap| HostHwInfo { cap: f(h.cap), ..h };
    let with_ecap = |f: fn(vtd_regs::Ecap) -> vtd_regs::Ecap| HostHwInfo {
        ecap: f(h.ecap),
        ..h
    };
    let five_level = VtdConfig {
        aw_bits: 57,
        ..flts()
    };
    let mut rows = vec![
        row("x-flts, nesting-capable host", flts(), h, Want::Ok, ""),
        row(
            "scalable mode without x-flts",
            VtdConfig::from_qemu_props("x-scalable-mode=on").unwrap(),
            h,
            Want::FirstStageOff,
            "x-flts=on",
        ),
        row(
            "legacy mode",
            VtdConfig::default(),
            h,
            Want::FirstStageOff,
            "x-flts=on",
        ),
        row(
            "host is ARM SMMUv3",
            flts(),
            HostHwInfo {
                iommu_type: HostIommuType::ArmSmmuV3,
                ..h
            },
            Want::NotVtd,
            "VT-d",
        ),
        row(
            "host is AMD",
            flts(),
            HostHwInfo {
                iommu_type: HostIommuType::Amd,
                ..h
            },
            Want::NotVtd,
            "VT-d",
        ),
        row(
            "host reports no IOMMU info",
            flts(),
            HostHwInfo {
                iommu_type: HostIommuType::None,
                ..h
            },
            Want::NotVtd,
            "VT-d",
        ),
        row(
            "host without ECAP.NEST",
            flts(),
            with_ecap(|e| e.with_nest(false)),
            Want::NoNesting,
            "ECAP.NEST",
        ),
        row(
            "host without scalable mode",
            flts(),
            with_ecap(|e| e.with_smts(false)),
            Want::NoNesting,
            "ECAP.SMTS",
        ),
        row(
            "host AW 39 below aw-bits=48",
            flts(),
            with_cap(|c| c.with_mgaw(38)),
            Want::AddressWidth,
            "aw-bits=48",
        ),
        row(
            "host AW 39 with aw-bits=39",
            VtdConfig {
                aw_bits: 39,
                ..flts()
            },
            with_cap(|c| c.with_mgaw(38)),
            Want::Ok,
            "",
        ),
        row(
            "fs1gp=on, host without FL1GP",
            flts(),
            with_cap(|c| c.with_fl1gp(false)),
            Want::No1g,
            "fs1gp=off",
        ),
        row(
            "fs1gp=off, host without FL1GP",
            VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on,fs1gp=off").unwrap(),
            with_cap(|c| c.with_fl1gp(false)),
            Want::Ok,
            "",
        ),
        row(
            "5-level guest, host AW 48",
            five_level.clone(),
            h,
            Want::AddressWidth,
            "aw-bits=57",
        ),
        row(
            "5-level guest, host AW 57 without FL5LP",
            five_level.clone(),
            with_cap(|c| c.with_mgaw(56).with_fl5lp(false)),
            Want::No5Level,
            "FL5LP",
        ),
        row(
            "5-level guest, host with FL5LP",
            five_level,
            with_cap(|c| c.with_mgaw(56).with_fl5lp(true)),
            Want::Ok,
            "",
        ),
        row(
            "guest SRS, host without SRS",
            VtdConfig {
                supervisor_requests: true,
                ..flts()
            },
            with_ecap(|e| e.with_srs(false)),
            Want::NoSrs,
            "ECAP.SRS",
        ),
        row(
            "host with ERRATA_772415_SPR17 (a quirk, not a refusal)",
            flts(),
            HostHwInfo {
                vtd_flags: VTD_ERRATA_772415_SPR17,
                ..h
            },
            Want::Ok,
            "",
        ),
        row(
            "guest PASIDs, host without PASID",
            VtdConfig {
                pasid_bits: 8,
                ..flts()
            },
            HostHwInfo {
                max_pasid_log2: 0,
                ..h
            },
            Want::Ok,
            "",
        ),
    ];
    rows.push(Row {
        iommufd: false,
        ..row(
            "legacy VFIO container",
            flts(),
            h,
            Want::NotIommufd,
            "iommufd",
        )
    });
    rows.push(Row {
        aliased: true,
        ..row(
            "behind a conventional PCI bridge",
            flts(),
            h,
            Want::Aliased,
            "PCI bridge",
        )
    });
    rows.push(Row {
        iommufd: false,
        ..row(
            "legacy container on an SMMU host: iommufd is checked first",
            flts(),
            HostHwInfo {
                iommu_type: HostIommuType::ArmSmmuV3,
                ..h
            },
            Want::NotIommufd,
            "iommufd",
        )
    });
    rows
}

#[test]
fn compatibility_matrix() {
    for r in matrix() {
        let sim = Arc::new(SimHostIommu::new(r.host, HostMemory::<Mem>::new()));
        let dev = if r.iommufd {
            HostIommuDevice::iommufd("0000:3b:00.0", sim.clone(), DeviceId(1), HwptId(2), r.host)
        } else {
            HostIommuDevice::legacy_container("0000:3b:00.0", r.host)
        };
        let topo = PciTopology {
            aliased_requester_id: r.aliased,
        };
        let got = check_compatibility(&r.guest, &dev, &topo);
        match (&got, r.want) {
            (Ok(()), Want::Ok) => {}
            (Err(e), want) if kind(e) == want => {
                let msg = e.to_string();
                assert!(
                    msg.contains(r.says),
                    "{}: message `{msg}` lacks `{}`",
                    r.name,
                    r.says
                );
                if r.iommufd || want != Want::FirstStageOff {
                    assert!(
                        want == Want::FirstStageOff || msg.contains("0000:3b:00.0"),
                        "{}: message names the device: {msg}",
                        r.name
                    );
                }
            }
            _ => panic!("{}: got {got:?}, want {:?}", r.name, r.want),
        }

        // Registration refuses with the same error, before touching the host.
        if r.want != Want::Ok {
            let mem: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
            let unit = Arc::new(
                VtdUnit::new(
                    r.guest.clone(),
                    mem.clone(),
                    Arc::new(RecordingSink::default()),
                )
                .unwrap(),
            );
            let binder = NestedBinder::with_unit_faults(&unit);
            let e = binder
                .register(Bdf::new(0x3b, 0, 0), dev, topo)
                .unwrap_err();
            assert_eq!(e, RegisterError::Compat(got.unwrap_err()), "{}", r.name);
            assert!(sim.stats().calls.is_empty(), "{}: no host call", r.name);
            assert!(!binder.is_registered(Bdf::new(0x3b, 0, 0)));
        }
    }
}

#[test]
fn viommu_flags_ask_for_a_nesting_parent_only_with_first_stage() {
    let cases = [
        ("x-scalable-mode=on,x-flts=on", true, false),
        ("x-scalable-mode=on,x-flts=on,x-pasid-mode=on", true, true),
        ("x-scalable-mode=on", false, false),
        ("x-scalable-mode=on,x-pasid-mode=on", false, false),
        ("", false, false),
        ("caching-mode=on", false, false),
    ];
    for (props, nest, pasid) in cases {
        let f = ViommuFlags::for_config(&VtdConfig::from_qemu_props(props).unwrap());
        assert_eq!(
            (f.want_nesting_parent, f.want_pasid_parent),
            (nest, pasid),
            "{props}"
        );
    }
}
