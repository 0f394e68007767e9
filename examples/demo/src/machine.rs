//! The in-process machine: guest RAM with a dirty bitmap, the VT-d unit in scalable
//! first-stage mode, the Linux-style guest driver, and two simulated host IOMMUs (two
//! iommufds, one per passthrough device) under the unit's nested binder.
//!
//! The guest-physical layout is fixed so every figure is reproducible from the seed:
//!
//! | GPA | use |
//! |---|---|
//! | 0 .. 16 MiB | unused (firmware's place on a real machine) |
//! | 16 .. 48 MiB | the driver's table frames (root, context, PASID, first-stage tables, queue) |
//! | 64 MiB + 4 MiB * n | device n's region: 2 MiB of 4 KiB pages, then one 2 MiB page |
//!
//! Each device gets a region of its own, so concurrent devices never share a buffer and a
//! stray write would show up in another device's content check.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vtd_accel::sim::{HostMemory, SimHostIommu};
use vtd_accel::{
    Bdf, HW_CAP_DIRTY_TRACKING, HostHwInfo, HostIommuDevice, NestedBinder, PciTopology,
};
use vtd_core::{VtdConfig, VtdUnit};
use vtd_testkit::driver::Guest;

/// Guest RAM as the VMM's threads (vCPUs, emulated devices, the unit) see it: with a dirty
/// bitmap, what live migration reads.
pub type Ram = GuestMemoryMmap<AtomicBitmap>;
/// The same RAM as the host IOMMU's DMA reaches it: a second mapping of the same memory with
/// no bitmap, so passthrough DMA is invisible to vm-memory's dirty log, as on a real host
/// (only the IOMMU's own dirty bits see it).
pub type DevRam = GuestMemoryMmap<()>;
/// The unit over that RAM.
pub type Unit = VtdUnit<Ram>;

/// The unit's properties: QEMU's syntax, scalable mode with first-stage translation, PASID
/// support (the demo sets the width to 8 bits below: QEMU's `x-pasid-mode` gives one bit),
/// device IOTLBs and the page request queue (a PRI device's page requests need both: PRI
/// sits on ATS, PCIe base spec 10.4, and the queue is where the unit reports them, VT-d spec
/// 7.5).
pub const UNIT_PROPS: &str =
    "x-scalable-mode=on,x-flts=on,x-pasid-mode=on,device-iotlb=on,x-vtd-page-requests=on";
/// PASID width the unit advertises (ECAP.PSS + 1).
const PASID_BITS: u8 = 8;

/// Where device regions start.
const REGIONS_BASE: u64 = 64 << 20;
/// One device's region.
pub const REGION_SIZE: u64 = 4 << 20;
/// The 4 KiB-page part of a region.
pub const SMALL_POOL: u64 = 2 << 20;

/// The most devices of each kind (bounds RAM).
pub const MAX_DEVICES: usize = 32;
/// Passthrough devices: one per simulated host IOMMU.
pub const PASSTHROUGH_DEVICES: usize = 2;
/// The passthrough device with ATS and PRI: its DMA to a page the guest has not mapped yet is
/// a page request (delivered to the guest through its host's fault queue), not a fault.
pub const PRI_DEVICE: usize = 0;

/// Host-physical base of guest RAM on host IOMMU `i` (each host maps it elsewhere, as two
/// separate machines would).
fn host_base(i: usize) -> u64 {
    (4 + 4 * i as u64) << 30
}

/// A deterministic generator (splitmix64): the same seed gives the same workload.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` and a stream `stream` (device, round, ...).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut r = Self(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        r.next();
        r
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The byte pattern a transfer carries: a function of the seed, the device, the request and
/// the offset, so a misplaced, stale or torn transfer cannot match.
pub fn pattern_byte(seed: u64, device: u64, tag: u64, offset: u64) -> u8 {
    let x = seed
        .wrapping_mul(0x2545_f491_4f6c_dd1d)
        .wrapping_add(device << 48)
        .wrapping_add(tag.wrapping_mul(0x1000_0000_01b3))
        .wrapping_add(offset >> 3);
    let x = (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (x >> ((offset & 7) * 8)) as u8
}

/// Fills `buf` with the pattern of (`seed`, `device`, `tag`) starting at `offset`.
pub fn fill_pattern(buf: &mut [u8], seed: u64, device: u64, tag: u64, offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(seed, device, tag, offset + i as u64);
    }
}

/// The first offset where `buf` differs from the pattern, if any.
pub fn check_pattern(buf: &[u8], seed: u64, device: u64, tag: u64, offset: u64) -> Option<usize> {
    buf.iter()
        .enumerate()
        .position(|(i, &b)| b != pattern_byte(seed, device, tag, offset + i as u64))
}

/// Guest-physical base of device region `n` (emulated devices first, then passthrough).
pub fn region(n: usize) -> u64 {
    REGIONS_BASE + n as u64 * REGION_SIZE
}

/// One simulated host IOMMU (an iommufd) and the device assigned through it.
pub struct HostSide {
    /// The host IOMMU.
    pub sim: Arc<SimHostIommu<DevRam>>,
    /// The device assigned through it: its iommufd view, kept across unplug and replug.
    pub device: HostIommuDevice,
    /// Its guest BDF.
    pub bdf: Bdf,
}

impl std::fmt::Debug for HostSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSide")
            .field("bdf", &self.bdf)
            .finish_non_exhaustive()
    }
}

/// The machine.
pub struct Machine {
    /// Guest RAM.
    pub ram: Ram,
    /// The same RAM as the host IOMMUs reach it.
    pub dev_ram: DevRam,
    /// The guest's driver model (the vCPU side; it owns the unit's MMIO).
    pub guest: Guest<Ram>,
    /// The unit's nested binder: one for all passthrough devices, whatever iommufd each is on.
    pub binder: Arc<NestedBinder<Ram>>,
    /// The host IOMMUs.
    pub hosts: Vec<HostSide>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// Why the machine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// Guest RAM could not be mapped.
    #[error("guest RAM of {mib} MiB: {source}")]
    Ram {
        /// Size asked for.
        mib: u64,
        /// Why.
        source: vm_memory::mmap::FromRangesError,
    },
    /// The file behind guest RAM.
    #[error("guest RAM file {path}: {source}")]
    RamFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The unit's configuration.
    #[error("unit configuration: {0}")]
    Config(#[from] vtd_core::ConfigError),
    /// The host side.
    #[error("host IOMMU: {0}")]
    Backend(#[from] vtd_accel::BackendError),
    /// Registering a passthrough device.
    #[error("binding passthrough device: {0}")]
    Register(#[from] vtd_accel::RegisterError),
}

/// Guest RAM of `size` bytes, mapped twice (the VMM's view with a dirty bitmap, the device
/// view without): a shared memory file, unlinked at once (the mappings keep it), in /dev/shm
/// where there is one so it never reaches a disk.
pub fn new_ram(size: u64) -> Result<(Ram, DevRam), MachineError> {
    static FILES: AtomicU32 = AtomicU32::new(0);
    let dir = Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!(
        "vtd-demo-ram-{}-{}",
        std::process::id(),
        FILES.fetch_add(1, Ordering::Relaxed)
    ));
    let io = |source| MachineError::RamFile {
        path: path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io)?;
    std::fs::remove_file(&path).map_err(io)?;
    file.set_len(size).map_err(io)?;
    let ranges = |f: &std::fs::File| -> Result<_, MachineError> {
        Ok([(
            GuestAddress(0),
            size as usize,
            Some(FileOffset::new(f.try_clone().map_err(io)?, 0)),
        )])
    };
    let ram_err = |source| MachineError::Ram {
        mib: size >> 20,
        source,
    };
    let ram = Ram::from_ranges_with_files(ranges(&file)?).map_err(ram_err)?;
    let dev = DevRam::from_ranges_with_files(ranges(&file)?).map_err(ram_err)?;
    Ok((ram, dev))
}

/// The unit's configuration.
pub fn unit_config() -> Result<VtdConfig, MachineError> {
    let mut cfg = VtdConfig::from_qemu_props(UNIT_PROPS)?;
    cfg.pasid_bits = PASID_BITS;
    cfg.validate()?;
    Ok(cfg)
}

/// The host side of a machine whose unit is `unit` over `ram`: the unit's nested binder, and
/// per passthrough device a simulated host IOMMU of its own (its own iommufd), guest RAM mapped
/// in its IOAS (the VMM's VFIO memory listener), the device bound to it and registered with the
/// binder (VFIO realize). On a migration target this runs before the unit's state is restored,
/// as a destination VMM realizes its devices before it loads the incoming state.
pub fn build_hosts(
    unit: &Arc<Unit>,
    dev_ram: &DevRam,
) -> Result<(Arc<NestedBinder<Ram>>, Vec<HostSide>), MachineError> {
    let size = dev_ram.last_addr().0 + 1;
    let binder = NestedBinder::with_unit_faults(unit);
    let mut hosts = Vec::new();
    for i in 0..PASSTHROUGH_DEVICES {
        let host = HostMemory::new().with_region(host_base(i), size, dev_ram.clone(), 0);
        // A host that tracks DMA writes in its second stage (IOMMU_HW_CAP_DIRTY_TRACKING), so
        // live migration can read what the passthrough devices wrote.
        let mut info = HostHwInfo::vtd_nesting_capable();
        info.capabilities |= HW_CAP_DIRTY_TRACKING;
        let sim = Arc::new(SimHostIommu::new(info, host));
        let ioas = sim.alloc_ioas();
        sim.ioas_map(ioas, 0, size, host_base(i), true)?;
        let (dev, parent) = sim.vfio_bind_default(ioas, binder.viommu_flags())?;
        let name = format!("0000:{:02x}:00.0", i + 1);
        let mut device = HostIommuDevice::query(sim.clone(), name, dev, parent)?;
        if i == PRI_DEVICE {
            // The device has ATS and PRI (the host enables IOPF for it when a nested HWPT
            // with a fault queue is attached), and the VMM says so (VFIO reports the PRI
            // capability), so the binder gives its nested HWPT a fault queue.
            sim.set_device_pri(dev, true);
            device = device.with_pri(true);
        }
        let bdf = Bdf::new(i as u8 + 1, 0, 0);
        binder.register(bdf, device.clone(), PciTopology::default())?;
        hosts.push(HostSide { sim, device, bdf });
    }
    Ok((binder, hosts))
}

impl Machine {
    /// Builds the machine for `emulated` emulated devices and the passthrough devices; the
    /// passthrough devices are registered with the binder (the VMM's VFIO realize step),
    /// before the guest programs anything.
    pub fn new(emulated: usize) -> Result<Self, MachineError> {
        let (ram, dev_ram) = new_ram(region(emulated + PASSTHROUGH_DEVICES))?;
        let guest = Guest::over_memory(unit_config()?, ram.clone());
        let (binder, hosts) = build_hosts(&guest.unit, &dev_ram)?;
        Ok(Self {
            ram,
            dev_ram,
            guest,
            binder,
            hosts,
        })
    }

    /// The unit.
    pub fn unit(&self) -> &Arc<Unit> {
        &self.guest.unit
    }
}
