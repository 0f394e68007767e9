//! `vfio-passthrough`: wires one real VFIO device to the vIOMMU's nested first-stage binding on
//! real hardware, prints the binding, and exits.
//!
//! ```text
//! vfio-passthrough --device /dev/vfio/devices/vfioN --bdf BB:DD.F [--iommu PROPS] [--memory MIB]
//! ```
//!
//! This is the sequence a VMM runs for each assigned device when its guest has a VT-d vIOMMU
//! with first-stage translation (QEMU `-device intel-iommu,x-scalable-mode=on,x-flts=on` plus
//! `-device vfio-pci,...` over iommufd; the "intel_iommu: Enable first stage translation for
//! passthrough device" series). Each step is one call into the vtd crates, `vfio-ioctls` or the
//! kernel's iommufd uAPI (Linux `include/uapi/linux/iommufd.h`, `include/uapi/linux/vfio.h`,
//! Documentation/userspace-api/iommufd.rst):
//!
//! 1. Guest RAM: a `vm_memory::GuestMemoryMmap` of `--memory` MiB at GPA 0.
//! 2. The vIOMMU: a [`vtd_core::VtdUnit`] with the configuration of
//!    [`vtd_regs::VtdConfig::from_qemu_props`] (`--iommu`, default
//!    `x-scalable-mode=on,x-flts=on`: scalable mode with first-stage translation, VT-d spec
//!    3.6 and 9.6 "PASID-table entry", PGTT = first stage).
//! 3. The host iommufd: [`vtd_accel::IommufdBackend::open`] (`/dev/iommu`; Linux
//!    `CONFIG_IOMMUFD`, `intel_iommu=on,sm_on`).
//! 4. The binder: [`vtd_accel::NestedBinder::with_unit_faults`] subscribes itself to the unit's
//!    event bus (`VtdUnit::subscribe`), so every guest programming step (SRTP, TE, context and
//!    PASID-cache invalidations, IOTLB invalidations) reaches it. (On Intel hosts a
//!    non-recoverable DMA fault stays in the host kernel log; only page requests of a device
//!    with PRI, through an iommufd fault queue, reach the guest.)
//! 5. The VFIO cdev (`/dev/vfio/devices/vfioN`) is bound to the same iommufd
//!    (`VFIO_DEVICE_BIND_IOMMUFD`) through `vfio_ioctls::VfioDevice::new_from_fd` over a
//!    `vfio_ioctls::VfioIommufd`, which allocates the IOAS (`IOMMU_IOAS_ALLOC`); the device is
//!    added to the backend ([`vtd_accel::IommufdBackend::add_vfio_device`]).
//! 6. Guest RAM is mapped GPA -> HVA into the IOAS (`IOMMU_IOAS_MAP`) **read-write**: with the
//!    Sapphire Rapids erratum 772415 (`IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17`) a nest parent must
//!    hold no read-only mappings ([`vtd_accel::HostQuirks`]), and read-write is always allowed.
//! 7. The device's default HWPT is allocated over the IOAS with the flags the vIOMMU asks for
//!    ([`vtd_accel::NestedBinder::viommu_flags`]: `IOMMU_HWPT_ALLOC_NEST_PARENT`, plus
//!    `IOMMU_HWPT_ALLOC_PASID` when the guest has PASIDs; QEMU's `get_viommu_flags`), and the
//!    device is attached to it (`VFIO_DEVICE_ATTACH_IOMMUFD_PT`). Until the guest enables
//!    translation its DMA goes GPA -> HPA through this parent (spec 3.1).
//! 8. The host view of the device: [`vtd_accel::HostIommuDevice::query`] (`IOMMU_GET_HW_INFO`:
//!    the host unit's CAP/ECAP, address width, errata). The view carries the backend: every
//!    later host call for the device goes to the iommufd it is bound to (a VMM with several
//!    iommufds registers each device with its own).
//! 9. Registration at the guest BDF ([`vtd_accel::NestedBinder::register`], QEMU's
//!    `set_iommu_device`): the compatibility checks, then the first binding. From then on, when
//!    the guest points a PASID entry at a first-stage table, the binder allocates a nested HWPT
//!    (`IOMMU_HWPT_DATA_VTD_S1`: FSPTPTR, address width, SRE/WPE/EAFE) over the parent, attaches
//!    it with replace semantics, and forwards the guest's invalidations
//!    (`IOMMU_HWPT_INVALIDATE`).
//!
//! The program then prints the binding and exits. A full VMM would keep everything alive and
//! run the guest: expose the unit's registers (MMIO) and DMAR table, route its interrupts to
//! the vCPUs instead of the recording sink used here, give the device's BARs and interrupts to
//! the guest, follow memory hotplug with IOAS map/unmap, and call
//! [`vtd_accel::NestedBinder::process_host_faults`] when the fault queue is readable.
//!
//! Every failure prints the step that failed and exits with status 2. On a machine without
//! `/dev/iommu` the program stops at step 3.

use std::fmt;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use vfio_ioctls::{VfioDevice, VfioIommufd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vtd_accel::{
    AccelEventLog, BackendOp, Bdf, BindingKey, HostIommuBackend, HostIommuDevice, HwptAlloc,
    IoasId, IommufdBackend, NestedBinder, PciTopology,
};
use vtd_core::{RecordingSink, VtdUnit};
use vtd_regs::VtdConfig;

type Mem = GuestMemoryMmap<()>;

const ABOUT: &str = "\
Binds one VFIO device (cdev, bound to a vfio-pci driver) to a VT-d vIOMMU's nested
first-stage translation on the host IOMMU (iommufd), prints the binding and exits.";

const AFTER_HELP: &str = "\
Needs a host with an IOMMU and iommufd (/dev/iommu, Linux CONFIG_IOMMUFD, intel_iommu=on,sm_on).
RUST_LOG filters the vtd crates' tracing events on standard error (e.g. RUST_LOG=vtd_accel=debug).
Exits 0 after printing the binding, 2 on any error.";

const DEFAULT_IOMMU: &str = "x-scalable-mode=on,x-flts=on";
const DEFAULT_MEMORY_MIB: u64 = 256;
/// Upper bound for `--memory` (1 TiB): keeps the size arithmetic far from overflow.
const MAX_MEMORY_MIB: u64 = 1 << 20;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "vfio-passthrough",
    version,
    about = ABOUT,
    override_usage = "vfio-passthrough --device /dev/vfio/devices/vfioN --bdf BB:DD.F [--iommu PROPS] [--memory MIB]",
    after_help = AFTER_HELP
)]
struct Args {
    /// The device's VFIO cdev, e.g. /dev/vfio/devices/vfio0
    #[arg(long, value_name = "PATH")]
    device: PathBuf,
    /// The device's bus:device.function in the guest (hex; a 0000: prefix is allowed)
    #[arg(long, value_name = "BB:DD.F", value_parser = parse_bdf)]
    bdf: Bdf,
    /// intel-iommu properties, QEMU syntax
    #[arg(long, value_name = "PROPS", default_value = DEFAULT_IOMMU)]
    iommu: String,
    /// Guest RAM in MiB, mapped at GPA 0
    #[arg(long = "memory", value_name = "MIB", default_value_t = DEFAULT_MEMORY_MIB, value_parser = parse_memory)]
    memory_mib: u64,
}

/// `--memory`: 1 MiB to [`MAX_MEMORY_MIB`].
fn parse_memory(v: &str) -> Result<u64, String> {
    let mib: u64 = v
        .parse()
        .map_err(|_| "expected a size in MiB".to_string())?;
    if mib == 0 || mib > MAX_MEMORY_MIB {
        return Err(format!("expected 1..={MAX_MEMORY_MIB} MiB"));
    }
    Ok(mib)
}

/// A failed step: what was being done and why it failed.
struct Failure {
    step: &'static str,
    message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.step, self.message)
    }
}

/// `map_err` helper: tags an error with its step.
fn at<E: fmt::Display>(step: &'static str) -> impl FnOnce(E) -> Failure {
    move |e| Failure {
        step,
        message: e.to_string(),
    }
}

/// Parses `BB:DD.F` (hex), optionally prefixed by segment `0000:`.
fn parse_bdf(s: &str) -> Result<Bdf, String> {
    let bad = || "expected BB:DD.F in hex, e.g. 00:02.0".to_string();
    let (bus, devfn) = match s.split(':').collect::<Vec<_>>()[..] {
        [bus, devfn] => (bus, devfn),
        [seg, bus, devfn] => {
            if seg.len() > 4 || u16::from_str_radix(seg, 16) != Ok(0) {
                return Err("only PCI segment 0000 is behind this vIOMMU".to_string());
            }
            (bus, devfn)
        }
        _ => return Err(bad()),
    };
    let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
    let hex = |v: &str, max: u8| -> Result<u8, String> {
        if v.is_empty() || v.len() > 2 {
            return Err(bad());
        }
        let n = u8::from_str_radix(v, 16).map_err(|_| bad())?;
        if n > max {
            return Err(bad());
        }
        Ok(n)
    };
    Ok(Bdf::new(hex(bus, 0xff)?, hex(dev, 0x1f)?, hex(func, 7)?))
}

fn run(args: &Args) -> Result<(), Failure> {
    // 1. Guest RAM.
    let step = "building guest RAM (--memory)";
    let ram: Mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (args.memory_mib << 20) as usize)])
            .map_err(at(step))?;

    // 2. The vIOMMU.
    let step = "configuring the vIOMMU (--iommu)";
    let cfg = VtdConfig::from_qemu_props(&args.iommu).map_err(at(step))?;
    // A real VMM routes the unit's interrupts (fault events, invalidation completion) to its
    // interrupt controller; nothing runs here, so they are only recorded.
    let unit =
        VtdUnit::new(cfg, ram.clone(), Arc::new(RecordingSink::default())).map_err(at(step))?;
    let unit = Arc::new(unit);

    // 3. The host iommufd.
    let backend = IommufdBackend::open().map_err(|e| Failure {
        step: "opening the host iommufd",
        message: if e.op == BackendOp::Open {
            let why = e.errno.map_or_else(
                || e.message.clone(),
                |n| std::io::Error::from_raw_os_error(n).to_string(),
            );
            format!(
                "cannot open {}: {why} (needs CONFIG_IOMMUFD and an IOMMU)",
                vtd_accel::iommufd::DEV_IOMMU
            )
        } else {
            e.to_string()
        },
    })?;
    let backend = Arc::new(backend);

    // 4. The binder; `with_unit_faults` subscribes it to the unit's event bus. A VMM would
    // also watch its events (blocked devices, host errors); here they are logged and printed.
    let binder = NestedBinder::with_unit_faults(&unit);
    let events = Arc::new(AccelEventLog::default());
    binder.subscribe(events.clone());
    let flags = binder.viommu_flags();

    // 5. The VFIO cdev, bound to the same iommufd; VfioIommufd allocates the IOAS.
    let step = "opening the VFIO cdev (--device)";
    let cdev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&args.device)
        .map_err(|e| Failure {
            step,
            message: format!("cannot open {}: {e}", args.device.display()),
        })?;
    let step = "allocating an IOAS (IOMMU_IOAS_ALLOC)";
    let vfio = VfioIommufd::new(backend.iommufd().clone(), None, None).map_err(at(step))?;
    let vfio = Arc::new(vfio);
    let ioas = IoasId(vfio.ioas().id());
    let step = "binding the VFIO cdev to the iommufd (VFIO_DEVICE_BIND_IOMMUFD)";
    // Not attached to the IOAS: the default HWPT is allocated below with the vIOMMU's flags.
    let device = VfioDevice::new_from_fd(cdev, vfio.clone(), false).map_err(|e| Failure {
        step,
        message: format!("{}: {e}", args.device.display()),
    })?;
    let dev_id = backend
        .add_vfio_device(Arc::new(device))
        .map_err(at(step))?;

    // 6. Guest RAM into the IOAS, read-write (the only form a nest parent accepts under
    // ERRATA_772415_SPR17, and what DMA to RAM needs anyway).
    let step = "mapping guest RAM into the IOAS (IOMMU_IOAS_MAP)";
    for region in ram.iter() {
        let gpa = region.start_addr();
        let hva = ram.get_host_address(gpa).map_err(at(step))?;
        let len = usize::try_from(region.len()).map_err(at(step))?;
        // SAFETY: `hva` is the start of a live anonymous mapping of `len` bytes owned by `ram`,
        // which is neither unmapped nor remapped while this process runs (the mapping is torn
        // down by the kernel at exit, with the iommufd). No Rust reference to guest RAM is ever
        // created: vtd-core and vm-memory access it through volatile copies, and the device
        // accesses it only by DMA.
        unsafe { vfio.vfio_dma_map(gpa.0, len, hva) }.map_err(|e| Failure {
            step,
            message: format!("GPA {:#x}+{len:#x}: {e}", gpa.0),
        })?;
    }

    // 7. The default HWPT, with the flags the vIOMMU asked for, and the attach.
    let req = HwptAlloc::Parent {
        ioas,
        nest_parent: flags.want_nesting_parent,
        pasid: flags.want_pasid_parent,
        // Dirty tracking wherever the host offers it, so the guest can be live-migrated.
        dirty_tracking: backend
            .get_hw_info(dev_id)
            .is_ok_and(|info| info.supports_dirty_tracking()),
    };
    let parent = backend
        .alloc_hwpt(dev_id, &req)
        .map_err(at("allocating the default HWPT (IOMMU_HWPT_ALLOC)"))?;
    backend
        // Requests without PASID (`None`): the device's requester ID.
        .attach(dev_id, None, parent)
        .map_err(at("attaching the device to its default HWPT"))?;

    // 8. The host view.
    let name = args.device.display().to_string();
    let host = HostIommuDevice::query(backend.clone(), name, dev_id, parent)
        .map_err(at("querying the host IOMMU (IOMMU_GET_HW_INFO)"))?;
    let info = host.info;

    // 9. Registration at the guest BDF.
    binder
        .register(args.bdf, host, PciTopology::default())
        .map_err(|e| Failure {
            step: "registering the device with the vIOMMU",
            message: format!("{}: {e}", args.bdf),
        })?;

    println!(
        "{} (iommufd {dev_id}) registered at guest {}",
        args.device.display(),
        args.bdf
    );
    println!(
        "  host IOMMU: {:?}, {}-bit, PASID width {}, quirks {:?}",
        info.iommu_type,
        info.address_width(),
        info.max_pasid_log2,
        info.quirks()
    );
    println!(
        "  {ioas}: {} MiB of guest RAM at GPA 0, read-write",
        args.memory_mib
    );
    println!(
        "  default {parent} ({}), viommu flags {flags:?}",
        if flags.want_nesting_parent {
            "nest parent"
        } else {
            "plain"
        }
    );
    for b in binder.bindings() {
        println!(
            "  binding: {} -> {:?}{}",
            BindingKey::new(b.bdf, b.pasid),
            b.host,
            b.blocked
                .map(|c| format!(" (blocked: {c:?})"))
                .unwrap_or_default()
        );
    }
    for e in events.take() {
        println!("  event: {e:?}");
    }
    println!("done; a VMM would now run the guest with this binding in place");
    Ok(())
}

fn main() -> ExitCode {
    // args_os: a non-UTF-8 argument is clap's usage error (status 2), not a panic; --help
    // and --version exit 0.
    let args = match Args::try_parse_from(std::env::args_os()) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    // The vtd crates' tracing events on standard error, filtered by RUST_LOG (errors only when
    // it is unset or invalid).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("vfio-passthrough: {f}");
            ExitCode::from(2)
        }
    }
}
