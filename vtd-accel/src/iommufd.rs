//! The real backend: `/dev/iommu` through `iommufd-ioctls` (GET_HW_INFO, HWPT_ALLOC parent and
//! nested with VTD_S1 data, HWPT_INVALIDATE with VTD_S1 entries, DESTROY, FAULT_QUEUE_ALLOC) and
//! the VFIO cdev through `vfio-ioctls` (`VFIO_DEVICE_ATTACH_IOMMUFD_PT` with replace semantics,
//! PASID attach, `VFIO_DEVICE_DETACH_IOMMUFD_PT`).
//!
//! uAPI facts: Linux `include/uapi/linux/iommufd.h` and `include/uapi/linux/vfio.h`; the structs
//! come from `iommufd-bindings`.
//!
//! This is the one place where "requests without PASID" is spelled the kernel's way: an
//! `Option<Pasid>` of `None` becomes a plain `VFIO_DEVICE_[AT|DE]TACH_IOMMUFD_PT` (no
//! `VFIO_DEVICE_ATTACH_PASID`), and a page-fault record without
//! `IOMMU_PGFAULT_FLAGS_PASID_VALID`, or with `IOMMU_NO_PASID`, becomes `None`.
//!
//! What user space sees of DMA faults on Intel hosts: page requests (PRI) of devices attached
//! to nested HWPTs allocated with a fault queue, nothing else ([`BackendCaps`]): they are read
//! whole groups at a time ([`HostIommuBackend::read_page_requests`]) and answered with the
//! group's cookie ([`HostIommuBackend::respond_page_request`]). Whether PASIDs can be attached
//! depends on the kernel (6.12 no, 6.18 yes): [`IommufdBackend::probe_pasid_attach`] asks it.
//!
//! A VMM builds it with [`IommufdBackend::open`] (or [`IommufdBackend::from_iommufd`] to share
//! the iommufd its VFIO layer uses), then adds each assigned device with
//! [`IommufdBackend::add_vfio_device`]. On a machine without `/dev/iommu`, `open` fails with an
//! error that says so.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::Arc;
use vtd_core::sync::{Mutex, RwLock};

use iommufd_bindings::{
    IOMMUFD_CMD_FAULT_QUEUE_ALLOC, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP,
    IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING, IOMMUFD_TYPE, iommu_fault_alloc, iommu_hw_info,
    iommu_hw_info_vtd, iommu_hwpt_alloc, iommu_hwpt_data_type_IOMMU_HWPT_DATA_NONE,
    iommu_hwpt_data_type_IOMMU_HWPT_DATA_VTD_S1, iommu_hwpt_get_dirty_bitmap,
    iommu_hwpt_invalidate, iommu_hwpt_invalidate_data_type_IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
    iommu_hwpt_pgfault, iommu_hwpt_set_dirty_tracking, iommu_hwpt_vtd_s1,
    iommu_hwpt_vtd_s1_invalidate, iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_PASID,
    iommufd_hwpt_alloc_flags_IOMMU_HWPT_FAULT_ID_VALID,
    iommufd_hwpt_set_dirty_tracking_flags_IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
};
use iommufd_ioctls::{IommuFd, IommufdError};
use vfio_ioctls::VfioDevice;
use vtd_regs::{Cap, Ecap};

use crate::backend::{
    BackendCaps, BackendError, BackendOp, DeviceId, HostFault, HostIommuBackend, HostPageRequest,
    HwptAlloc, HwptId, IoasId, PageResponseCode, Pasid, VtdS1Invalidation,
};
use crate::host::{HWPT_ALLOC_DIRTY_TRACKING, HWPT_ALLOC_NEST_PARENT, HostHwInfo, HostIommuType};

/// The iommufd character device.
pub const DEV_IOMMU: &str = "/dev/iommu";

/// `IOMMU_FAULT_QUEUE_ALLOC` and the dirty-tracking calls, which `iommufd-ioctls` does not
/// wrap.
mod ioctls {
    use super::{
        IOMMUFD_CMD_FAULT_QUEUE_ALLOC, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP,
        IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING, IOMMUFD_TYPE,
    };
    vmm_sys_util::ioctl_io_nr!(
        IOMMU_FAULT_QUEUE_ALLOC,
        IOMMUFD_TYPE as u32,
        IOMMUFD_CMD_FAULT_QUEUE_ALLOC
    );
    vmm_sys_util::ioctl_io_nr!(
        IOMMU_HWPT_SET_DIRTY_TRACKING,
        IOMMUFD_TYPE as u32,
        IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING
    );
    vmm_sys_util::ioctl_io_nr!(
        IOMMU_HWPT_GET_DIRTY_BITMAP,
        IOMMUFD_TYPE as u32,
        IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP
    );
}

/// `IOMMU_NO_PASID` (Linux `include/linux/iommu.h`): the PASID value of requests without one.
const IOMMU_NO_PASID: u32 = 0;
/// `IOMMU_PGFAULT_FLAGS_PASID_VALID`.
const PGFAULT_PASID_VALID: u32 = 1;
/// `IOMMU_PGFAULT_FLAGS_LAST_PAGE`.
const PGFAULT_LAST_PAGE: u32 = 2;
/// `IOMMU_PGFAULT_PERM_READ`.
const PGFAULT_PERM_READ: u32 = 1;
/// `IOMMU_PGFAULT_PERM_WRITE`.
const PGFAULT_PERM_WRITE: u32 = 2;
/// `IOMMU_PGFAULT_PERM_EXEC`.
const PGFAULT_PERM_EXEC: u32 = 4;
/// `IOMMU_PGFAULT_PERM_PRIV`.
const PGFAULT_PERM_PRIV: u32 = 8;
/// The most page-request records one read may ask for: a group is delivered whole or not at
/// all (Linux `drivers/iommu/iommufd/fault.c`, `iommufd_fault_fops_read()`: a group larger than
/// the buffer stops the read, which then returns 0 while the group stays queued), so the
/// buffer grows up to this for a large group instead of starving the queue.
const MAX_READ_RECORDS: usize = 4096;
/// `EOPNOTSUPP` (Linux `include/uapi/asm-generic/errno.h`).
const EOPNOTSUPP: i32 = 95;

/// How a device's DMA is attached to iommufd page tables: the VFIO cdev's
/// `VFIO_DEVICE_[AT|DE]TACH_IOMMUFD_PT` (implemented for [`VfioDevice`]). Errors carry the
/// ioctl's errno (`io::Error::raw_os_error`): the binder and the VMM tell `ENODEV` (no PRI),
/// `EINVAL` (no PASID attach on this kernel) and `EBUSY` apart by it.
pub trait DeviceAttach: Send + Sync {
    /// Attaches (or replaces) the device's requests without PASID (`None`) or with `pasid` to
    /// `pt_id`.
    fn attach_pt(&self, pasid: Option<Pasid>, pt_id: HwptId) -> std::io::Result<()>;
    /// Detaches the device's `pasid`.
    fn detach_pt(&self, pasid: Option<Pasid>) -> std::io::Result<()>;
}

/// The errno inside a `vfio-ioctls` error, as an `io::Error` (other errors keep their words).
fn io_of_vfio(e: vfio_ioctls::VfioError) -> std::io::Error {
    use vfio_ioctls::VfioError as V;
    match e {
        V::VfioDeviceAttachIommufdPt(s) | V::VfioDeviceDetachIommufdPt(s) => {
            std::io::Error::from_raw_os_error(s.errno())
        }
        other => std::io::Error::other(other.to_string()),
    }
}

impl DeviceAttach for VfioDevice {
    fn attach_pt(&self, pasid: Option<Pasid>, pt_id: HwptId) -> std::io::Result<()> {
        let r = match pasid {
            None => self.attach_hwpt(pt_id.0),
            Some(p) => self.attach_iommufd_pt_pasid(pt_id.0, p.get()),
        };
        r.map_err(io_of_vfio)
    }

    fn detach_pt(&self, pasid: Option<Pasid>) -> std::io::Result<()> {
        let r = match pasid {
            None => self.detach_hwpt(),
            Some(p) => self.detach_iommufd_pt_pasid(p.get()),
        };
        r.map_err(io_of_vfio)
    }
}

/// The fault queue's file as the reading code needs it (a trait so the kernel's read rule can
/// be modelled in tests).
trait FaultFile {
    /// `read(2)`.
    fn read_records(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// `poll(2)` for `POLLIN` without waiting: a group is queued.
    fn readable(&self) -> bool;
    /// `write(2)`.
    fn write_response(&mut self, buf: &[u8]) -> std::io::Result<usize>;
}

impl FaultFile for File {
    fn read_records(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read(buf)
    }

    fn readable(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one live `pollfd` for a descriptor `self` owns; timeout 0 does not
        // block; the result is checked.
        let r = unsafe { libc::poll(&mut pfd, 1, 0) };
        r > 0 && pfd.revents & libc::POLLIN != 0
    }

    fn write_response(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write(buf)
    }
}

/// Reads whole page-request groups from `file`, at least `records` records' worth of buffer,
/// growing the buffer while the kernel returns nothing although a group is queued (it is
/// larger than the buffer). Returns the bytes read (a multiple of `rec`).
fn read_groups(
    file: &mut dyn FaultFile,
    rec: usize,
    records: usize,
) -> Result<Vec<u8>, BackendError> {
    let op = BackendOp::ReadFaults;
    let mut records = records.clamp(1, MAX_READ_RECORDS);
    loop {
        // The kernel refuses a count that is not a multiple of the record (ESPIPE).
        let mut buf = vec![0u8; rec * records];
        let got = match file.read_records(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(BackendError::os(op, &e, "reading the fault queue")),
        };
        if got > 0 || !file.readable() {
            buf.truncate(got - got % rec);
            return Ok(buf);
        }
        if records >= MAX_READ_RECORDS {
            return Err(BackendError::new(
                op,
                format!(
                    "a page request group larger than {MAX_READ_RECORDS} records is queued; \
                     it cannot be read"
                ),
            ));
        }
        records = (records * 2).min(MAX_READ_RECORDS);
    }
}

/// Whether a kernel release string (`uname -r`) is one that accepts PASID attach for nested
/// HWPTs (6.18 and later); the fallback when [`IommufdBackend::probe_pasid_attach`] was not
/// run.
pub fn kernel_release_has_pasid_attach(release: &str) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    match (major, minor) {
        (Some(ma), Some(mi)) => (ma, mi) >= (6, 18),
        _ => false,
    }
}

/// The running kernel's release (`uname(2)`).
fn kernel_release() -> Option<String> {
    // SAFETY: `utsname` is plain old data; all-zero is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a live, correctly sized `utsname` the call only writes; checked below.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(bytes).ok()
}

struct FaultQueue {
    id: u32,
    file: File,
}

/// The iommufd backend. See the module documentation.
pub struct IommufdBackend {
    iommufd: Arc<IommuFd>,
    devices: RwLock<BTreeMap<DeviceId, Arc<dyn DeviceAttach>>>,
    fault_queue: Mutex<Option<FaultQueue>>,
    /// PASID attach as probed (`None`: not probed; the kernel release decides).
    pasid_attach: Mutex<Option<bool>>,
}

impl std::fmt::Debug for IommufdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IommufdBackend")
            .field("fd", &self.iommufd.as_raw_fd())
            .finish_non_exhaustive()
    }
}

/// The errno inside an `iommufd-ioctls` error, when it carries one.
fn errno_of(e: &IommufdError) -> Option<i32> {
    match e {
        IommufdError::OpenIommufd(io) | IommufdError::AttachHwpt(io) => io.raw_os_error(),
        IommufdError::IommuDestroy(s)
        | IommufdError::IommuHwptAlloc(s)
        | IommufdError::IommuGetHwInfo(s)
        | IommufdError::IommuHwptInvalidate(s) => Some(s.errno()),
        _ => None,
    }
}

fn from_iommufd(op: BackendOp, e: &IommufdError, what: String) -> BackendError {
    BackendError {
        op,
        errno: errno_of(e),
        message: format!("{what}: {e}"),
        handled: None,
    }
}

impl IommufdBackend {
    /// Opens `/dev/iommu`.
    pub fn open() -> Result<Self, BackendError> {
        Self::open_path(Path::new(DEV_IOMMU))
    }

    /// Opens an iommufd character device at `path`.
    pub fn open_path(path: &Path) -> Result<Self, BackendError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| {
                BackendError::os(
                    BackendOp::Open,
                    &e,
                    &format!(
                        "cannot open {}: nested first-stage binding needs the host's iommufd \
                         (Linux CONFIG_IOMMUFD, intel_iommu=on,sm_on) and access to it",
                        path.display()
                    ),
                )
            })?;
        Ok(Self::from_file(file))
    }

    /// Uses an already open iommufd file.
    pub fn from_file(file: File) -> Self {
        Self::from_iommufd(Arc::new(IommuFd::new_from_fd(file)))
    }

    /// Shares the iommufd the VMM's VFIO layer uses (devices must be bound to the same one).
    pub fn from_iommufd(iommufd: Arc<IommuFd>) -> Self {
        Self {
            iommufd,
            devices: RwLock::new(BTreeMap::new()),
            fault_queue: Mutex::new(None),
            pasid_attach: Mutex::new(None),
        }
    }

    /// The iommufd.
    pub fn iommufd(&self) -> &Arc<IommuFd> {
        &self.iommufd
    }

    /// Adds a device bound to this iommufd as `dev_id`, attached through `attach`.
    pub fn add_device(&self, dev_id: DeviceId, attach: Arc<dyn DeviceAttach>) {
        self.devices.write().insert(dev_id, attach);
    }

    /// Adds a VFIO cdev device (opened with `vfio_ioctls::VfioDevice::new` over a
    /// `VfioIommufd`); returns its iommufd device ID.
    pub fn add_vfio_device(&self, dev: Arc<VfioDevice>) -> Result<DeviceId, BackendError> {
        let dev_id = dev.iommufd_dev_id().map(DeviceId).ok_or_else(|| {
            BackendError::new(
                BackendOp::Open,
                "the VFIO device is not bound to an iommufd (legacy container)",
            )
        })?;
        self.add_device(dev_id, dev);
        Ok(dev_id)
    }

    /// Forgets a device.
    pub fn remove_device(&self, dev_id: DeviceId) {
        self.devices.write().remove(&dev_id);
    }

    /// Allocates an iommufd fault queue (`IOMMU_FAULT_QUEUE_ALLOC`); nested HWPTs allocated
    /// afterwards report their faults into it (`IOMMU_HWPT_FAULT_ID_VALID`). The kernel
    /// delivers I/O page faults (PRI) there, so devices must support PRI. Returns its ID.
    pub fn alloc_fault_queue(&self) -> Result<u32, BackendError> {
        let op = BackendOp::FaultQueueAlloc;
        let mut alloc = iommu_fault_alloc {
            size: std::mem::size_of::<iommu_fault_alloc>() as u32,
            ..Default::default()
        };
        // SAFETY: the iommufd is an open file for the lifetime of `self`; `alloc` is a live,
        // correctly sized `iommu_fault_alloc` the kernel only writes within; the result is
        // checked below.
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(
                &*self.iommufd,
                ioctls::IOMMU_FAULT_QUEUE_ALLOC(),
                &mut alloc,
            )
        };
        if ret < 0 {
            let e = std::io::Error::last_os_error();
            return Err(BackendError::os(op, &e, "allocating the fault queue"));
        }
        // SAFETY: on success the kernel returned a new file descriptor that nothing else owns;
        // the `File` takes ownership and closes it.
        let file = unsafe { File::from_raw_fd(alloc.out_fault_fd as i32) };
        // SAFETY: fcntl on the descriptor `file` owns; the result is checked.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        let set = if flags < 0 {
            flags
        } else {
            // SAFETY: fcntl on the descriptor `file` owns; the result is checked.
            unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) }
        };
        if set < 0 {
            let e = std::io::Error::last_os_error();
            return Err(BackendError::os(
                op,
                &e,
                "making the fault queue non-blocking",
            ));
        }
        let id = alloc.out_fault_id;
        *self.fault_queue.lock() = Some(FaultQueue { id, file });
        Ok(id)
    }

    /// Asks the kernel whether PASIDs can be attached: allocates a throw-away HWPT over `ioas`
    /// for `dev` with `IOMMU_HWPT_ALLOC_PASID` and destroys it. `EOPNOTSUPP` (Linux 6.12,
    /// `drivers/iommu/iommufd/hw_pagetable.c` `iommufd_hwpt_alloc()`) means no; success means
    /// yes (6.18 also accepts `VFIO_DEVICE_ATTACH_PASID`). The answer is what
    /// [`HostIommuBackend::caps`] reports from then on.
    pub fn probe_pasid_attach(&self, dev: DeviceId, ioas: IoasId) -> Result<bool, BackendError> {
        let req = HwptAlloc::Parent {
            ioas,
            nest_parent: false,
            pasid: true,
            dirty_tracking: false,
        };
        let supported = match self.alloc_hwpt(dev, &req) {
            Ok(h) => {
                self.destroy(h)?;
                true
            }
            Err(e) if e.errno == Some(EOPNOTSUPP) => false,
            Err(e) => return Err(e),
        };
        self.set_pasid_attach(supported);
        Ok(supported)
    }

    /// Overrides what [`HostIommuBackend::caps`] says about PASID attach.
    pub fn set_pasid_attach(&self, supported: bool) {
        *self.pasid_attach.lock() = Some(supported);
    }

    fn device(&self, op: BackendOp, dev: DeviceId) -> Result<Arc<dyn DeviceAttach>, BackendError> {
        self.devices.read().get(&dev).cloned().ok_or_else(|| {
            BackendError::new(op, format!("iommufd {dev} was not added to the backend"))
        })
    }
}

/// Decodes one `struct iommu_hwpt_pgfault` record (native endianness, as the kernel writes it).
fn decode_pgfault(b: &[u8]) -> Option<iommu_hwpt_pgfault> {
    let u32_at = |o: usize| Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?));
    Some(iommu_hwpt_pgfault {
        flags: u32_at(0)?,
        dev_id: u32_at(4)?,
        pasid: u32_at(8)?,
        grpid: u32_at(12)?,
        perm: u32_at(16)?,
        __reserved: u32_at(20)?,
        addr: u64_at(24)?,
        length: u32_at(32)?,
        cookie: u32_at(36)?,
    })
}

/// A page fault record as a [`HostPageRequest`]: exactly what the device asked, nothing
/// relabelled (it is a page request for the guest's page request queue, not a DMA fault).
fn page_request_of(pf: &iommu_hwpt_pgfault) -> HostPageRequest {
    let pasid = if pf.flags & PGFAULT_PASID_VALID != 0 && pf.pasid != IOMMU_NO_PASID {
        Pasid::new(pf.pasid)
    } else {
        None
    };
    HostPageRequest {
        dev_id: DeviceId(pf.dev_id),
        pasid,
        addr: pf.addr & !0xfff,
        // PCIe page request group indexes are 9 bits.
        prg_index: (pf.grpid & 0x1ff) as u16,
        last_in_group: pf.flags & PGFAULT_LAST_PAGE != 0,
        read: pf.perm & PGFAULT_PERM_READ != 0,
        write: pf.perm & PGFAULT_PERM_WRITE != 0,
        execute: pf.perm & PGFAULT_PERM_EXEC != 0,
        privileged: pf.perm & PGFAULT_PERM_PRIV != 0,
        cookie: pf.cookie,
    }
}

impl HostIommuBackend for IommufdBackend {
    fn name(&self) -> &'static str {
        "iommufd"
    }

    fn get_hw_info(&self, dev: DeviceId) -> Result<HostHwInfo, BackendError> {
        let mut vtd = iommu_hw_info_vtd::default();
        let mut info = iommu_hw_info {
            size: std::mem::size_of::<iommu_hw_info>() as u32,
            dev_id: dev.0,
            data_len: std::mem::size_of::<iommu_hw_info_vtd>() as u32,
            data_uptr: &mut vtd as *mut iommu_hw_info_vtd as u64,
            ..Default::default()
        };
        self.iommufd
            .get_hw_info(&mut info)
            .map_err(|e| from_iommufd(BackendOp::GetHwInfo, &e, format!("{dev}")))?;
        // SAFETY: both members of the union are `u32`; every bit pattern is valid for either.
        let out_type = unsafe { info.__bindgen_anon_1.out_data_type };
        let iommu_type = HostIommuType::from_uapi(out_type);
        let vtd_ok = iommu_type == HostIommuType::IntelVtd;
        Ok(HostHwInfo {
            iommu_type,
            cap: Cap::from_bits(if vtd_ok { vtd.cap_reg } else { 0 }),
            ecap: Ecap::from_bits(if vtd_ok { vtd.ecap_reg } else { 0 }),
            vtd_flags: if vtd_ok { vtd.flags } else { 0 },
            max_pasid_log2: info.out_max_pasid_log2,
            capabilities: info.out_capabilities,
        })
    }

    fn alloc_hwpt(&self, dev: DeviceId, req: &HwptAlloc) -> Result<HwptId, BackendError> {
        let op = BackendOp::AllocHwpt;
        let pasid_flag = iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_PASID;
        let mut s1_data;
        let mut alloc = iommu_hwpt_alloc {
            size: std::mem::size_of::<iommu_hwpt_alloc>() as u32,
            dev_id: dev.0,
            ..Default::default()
        };
        match *req {
            HwptAlloc::Parent {
                ioas,
                nest_parent,
                pasid,
                dirty_tracking,
            } => {
                alloc.pt_id = ioas.0;
                alloc.flags = if nest_parent {
                    HWPT_ALLOC_NEST_PARENT
                } else {
                    0
                } | if pasid { pasid_flag } else { 0 }
                    | if dirty_tracking {
                        HWPT_ALLOC_DIRTY_TRACKING
                    } else {
                        0
                    };
                alloc.data_type = iommu_hwpt_data_type_IOMMU_HWPT_DATA_NONE;
            }
            HwptAlloc::Nested {
                parent,
                s1,
                pasid,
                fault,
            } => {
                s1_data = iommu_hwpt_vtd_s1 {
                    flags: s1.flags.0,
                    pgtbl_addr: s1.pgtbl_addr,
                    addr_width: s1.addr_width,
                    __reserved: 0,
                };
                alloc.pt_id = parent.0;
                alloc.flags = if pasid { pasid_flag } else { 0 };
                alloc.data_type = iommu_hwpt_data_type_IOMMU_HWPT_DATA_VTD_S1;
                alloc.data_len = std::mem::size_of::<iommu_hwpt_vtd_s1>() as u32;
                alloc.data_uptr = &mut s1_data as *mut iommu_hwpt_vtd_s1 as u64;
                // Only on request: an HWPT with a fault queue cannot be attached to a device
                // without ATS/PRI (ENODEV; Linux `drivers/iommu/intel/iommu.c`,
                // `intel_iommu_enable_iopf()`).
                if fault {
                    let queue = self.fault_queue.lock();
                    let q = queue.as_ref().ok_or_else(|| {
                        BackendError::new(
                            op,
                            "IOMMU_HWPT_FAULT_ID_VALID asked for but no fault queue was allocated",
                        )
                    })?;
                    alloc.flags |= iommufd_hwpt_alloc_flags_IOMMU_HWPT_FAULT_ID_VALID;
                    alloc.fault_id = q.id;
                }
            }
        }
        self.iommufd
            .alloc_iommu_hwpt(&mut alloc)
            .map_err(|e| from_iommufd(op, &e, format!("{dev}, {req:?}")))?;
        Ok(HwptId(alloc.out_hwpt_id))
    }

    fn attach(
        &self,
        dev: DeviceId,
        pasid: Option<Pasid>,
        hwpt: HwptId,
    ) -> Result<(), BackendError> {
        let op = BackendOp::Attach;
        self.device(op, dev)?
            .attach_pt(pasid, hwpt)
            .map_err(|e| BackendError::os(op, &e, &format!("{dev} {pasid:?} to {hwpt}")))
    }

    fn detach(&self, dev: DeviceId, pasid: Option<Pasid>) -> Result<(), BackendError> {
        let op = BackendOp::Detach;
        self.device(op, dev)?
            .detach_pt(pasid)
            .map_err(|e| BackendError::os(op, &e, &format!("{dev} {pasid:?}")))
    }

    fn invalidate(&self, hwpt: HwptId, entries: &[VtdS1Invalidation]) -> Result<u32, BackendError> {
        let op = BackendOp::Invalidate;
        let mut data: Vec<iommu_hwpt_vtd_s1_invalidate> = entries
            .iter()
            .map(|e| iommu_hwpt_vtd_s1_invalidate {
                addr: e.addr,
                npages: e.npages,
                flags: u32::from(e.leaf),
                __reserved: 0,
            })
            .collect();
        let n = u32::try_from(data.len())
            .map_err(|_| BackendError::new(op, "too many entries").with_handled(0))?;
        let mut inv = iommu_hwpt_invalidate {
            size: std::mem::size_of::<iommu_hwpt_invalidate>() as u32,
            hwpt_id: hwpt.0,
            data_uptr: data.as_mut_ptr() as u64,
            data_type: iommu_hwpt_invalidate_data_type_IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
            entry_len: std::mem::size_of::<iommu_hwpt_vtd_s1_invalidate>() as u32,
            entry_num: n,
            __reserved: 0,
        };
        match self.iommufd.invalidate_hwpt(&mut inv) {
            Ok(()) if inv.entry_num == n => Ok(n),
            Ok(()) => Err(BackendError::new(
                op,
                format!("{hwpt}: host handled {} of {n} entries", inv.entry_num),
            )
            .with_handled(inv.entry_num)),
            // The kernel writes back how many entries it handled (Linux
            // `drivers/iommu/iommufd/hw_pagetable.c`, `iommufd_hwpt_invalidate()`, `done_num`)
            // only once the handler ran; an ioctl refused before that leaves `entry_num` as
            // given: then nothing was handled, not everything.
            Err(e) => {
                let handled = if inv.entry_num < n { inv.entry_num } else { 0 };
                Err(from_iommufd(op, &e, format!("{hwpt}")).with_handled(handled))
            }
        }
    }

    fn destroy(&self, hwpt: HwptId) -> Result<(), BackendError> {
        self.iommufd
            .destroy_iommu_object(hwpt.0)
            .map_err(|e| from_iommufd(BackendOp::Destroy, &e, format!("{hwpt}")))
    }

    /// Intel hosts never report non-recoverable faults of nested HWPTs to user space (they go
    /// to the host kernel log: Linux `drivers/iommu/intel/dmar.c`, `dmar_fault()`), so there
    /// is nothing to read here ([`BackendCaps::unrecoverable_faults`] is false).
    fn read_faults(&self, _max: usize) -> Result<Vec<HostFault>, BackendError> {
        Ok(Vec::new())
    }

    fn caps(&self) -> BackendCaps {
        let probed = *self.pasid_attach.lock();
        BackendCaps {
            pasid_attach: probed.unwrap_or_else(|| {
                kernel_release().is_some_and(|r| kernel_release_has_pasid_attach(&r))
            }),
            page_requests: self.fault_queue.lock().is_some(),
            unrecoverable_faults: false,
        }
    }

    fn read_page_requests(&self, max: usize) -> Result<Vec<HostPageRequest>, BackendError> {
        let mut queue = self.fault_queue.lock();
        let Some(q) = queue.as_mut() else {
            return Ok(Vec::new());
        };
        let rec = std::mem::size_of::<iommu_hwpt_pgfault>();
        let buf = read_groups(&mut q.file, rec, max)?;
        Ok(buf
            .chunks_exact(rec)
            .filter_map(decode_pgfault)
            .map(|pf| page_request_of(&pf))
            .collect())
    }

    fn set_dirty_tracking(&self, hwpt: HwptId, enable: bool) -> Result<(), BackendError> {
        let op = BackendOp::SetDirtyTracking;
        let mut req = iommu_hwpt_set_dirty_tracking {
            size: std::mem::size_of::<iommu_hwpt_set_dirty_tracking>() as u32,
            flags: if enable {
                iommufd_hwpt_set_dirty_tracking_flags_IOMMU_HWPT_DIRTY_TRACKING_ENABLE
            } else {
                0
            },
            hwpt_id: hwpt.0,
            __reserved: 0,
        };
        // SAFETY: the iommufd is an open file for the lifetime of `self`; `req` is a live,
        // correctly sized `iommu_hwpt_set_dirty_tracking` the kernel only reads; the result
        // is checked below.
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(
                &*self.iommufd,
                ioctls::IOMMU_HWPT_SET_DIRTY_TRACKING(),
                &mut req,
            )
        };
        if ret < 0 {
            let e = std::io::Error::last_os_error();
            let what = format!("{hwpt}, {}", if enable { "enable" } else { "disable" });
            return Err(BackendError::os(op, &e, &what));
        }
        Ok(())
    }

    fn read_and_clear_dirty(
        &self,
        hwpt: HwptId,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u64],
    ) -> Result<(), BackendError> {
        let op = BackendOp::GetDirtyBitmap;
        // The kernel writes length / page_size bits at `data`: make sure they fit before
        // handing it the buffer.
        let pages = length.checked_div(page_size).unwrap_or(u64::MAX);
        if page_size == 0 || (bitmap.len() as u64).saturating_mul(64) < pages {
            return Err(BackendError::with_errno(
                op,
                libc::EINVAL,
                format!(
                    "{hwpt}: a {}-word bitmap cannot hold {pages} pages",
                    bitmap.len()
                ),
            ));
        }
        let mut req = iommu_hwpt_get_dirty_bitmap {
            size: std::mem::size_of::<iommu_hwpt_get_dirty_bitmap>() as u32,
            hwpt_id: hwpt.0,
            flags: 0,
            __reserved: 0,
            iova,
            length,
            page_size,
            data: bitmap.as_mut_ptr() as u64,
        };
        // SAFETY: the iommufd is an open file for the lifetime of `self`; `req` is a live,
        // correctly sized `iommu_hwpt_get_dirty_bitmap`; `data` points at `bitmap`, which
        // holds at least `length / page_size` bits (checked above) and outlives the call, and
        // the kernel writes only those; the result is checked below.
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(
                &*self.iommufd,
                ioctls::IOMMU_HWPT_GET_DIRTY_BITMAP(),
                &mut req,
            )
        };
        if ret < 0 {
            let e = std::io::Error::last_os_error();
            let what = format!("{hwpt}, {iova:#x}+{length:#x} by {page_size:#x}");
            return Err(BackendError::os(op, &e, &what));
        }
        Ok(())
    }

    fn respond_page_request(
        &self,
        cookie: u32,
        code: PageResponseCode,
    ) -> Result<(), BackendError> {
        let op = BackendOp::PageResponse;
        let mut queue = self.fault_queue.lock();
        let Some(q) = queue.as_mut() else {
            return Err(BackendError::new(op, "no fault queue"));
        };
        write_response(&mut q.file, cookie, code)
    }
}

/// Writes one `struct iommu_hwpt_page_response` {cookie, code}.
fn write_response(
    file: &mut dyn FaultFile,
    cookie: u32,
    code: PageResponseCode,
) -> Result<(), BackendError> {
    let op = BackendOp::PageResponse;
    let mut resp = [0u8; 8];
    resp[..4].copy_from_slice(&cookie.to_ne_bytes());
    resp[4..].copy_from_slice(&code.uapi().to_ne_bytes());
    match file.write_response(&resp) {
        Ok(8) => Ok(()),
        Ok(n) => Err(BackendError::new(
            op,
            format!("cookie {cookie}: short write of {n} bytes"),
        )),
        Err(e) => Err(BackendError::os(op, &e, &format!("cookie {cookie}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{VtdS1, VtdS1Flags};

    /// There is no `/dev/iommu` on this machine (nor on CI): opening it fails with an error
    /// that names the device and what is needed.
    #[test]
    fn open_without_dev_iommu_fails_clearly() {
        if Path::new(DEV_IOMMU).exists() {
            eprintln!("{DEV_IOMMU} exists here; skipping the absent-device check");
            return;
        }
        let err = IommufdBackend::open().unwrap_err();
        assert_eq!(err.op, BackendOp::Open);
        assert_eq!(err.errno, Some(libc::ENOENT));
        let msg = err.to_string();
        assert!(msg.contains("/dev/iommu"), "{msg}");
        assert!(msg.contains("CONFIG_IOMMUFD"), "{msg}");
    }

    /// Every ioctl of the backend, issued for real against a file that is not an iommufd
    /// (/dev/null): each fails with ENOTTY and an error naming the call and the object.
    #[test]
    fn ioctls_on_a_non_iommufd_file_fail_with_named_errors() {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        let b = IommufdBackend::from_file(file);
        let e = b.get_hw_info(DeviceId(7)).unwrap_err();
        assert_eq!((e.op, e.errno), (BackendOp::GetHwInfo, Some(libc::ENOTTY)));
        assert!(e.to_string().contains("device 7"), "{e}");
        let nested = HwptAlloc::Nested {
            parent: HwptId(3),
            s1: VtdS1 {
                flags: VtdS1Flags(VtdS1Flags::WPE),
                pgtbl_addr: 0x10_0000,
                addr_width: 48,
            },
            pasid: false,
            fault: false,
        };
        let e = b.alloc_hwpt(DeviceId(7), &nested).unwrap_err();
        assert_eq!((e.op, e.errno), (BackendOp::AllocHwpt, Some(libc::ENOTTY)));
        let parent = HwptAlloc::Parent {
            ioas: crate::backend::IoasId(2),
            nest_parent: true,
            pasid: true,
            dirty_tracking: true,
        };
        assert_eq!(
            b.alloc_hwpt(DeviceId(7), &parent).unwrap_err().errno,
            Some(libc::ENOTTY)
        );
        let e = b
            .invalidate(
                HwptId(9),
                &[
                    VtdS1Invalidation::ALL,
                    VtdS1Invalidation::for_range(0, 0xfff, true),
                ],
            )
            .unwrap_err();
        // Refused before the kernel looked at any entry (entry_num came back as given): none
        // handled, not all.
        assert_eq!(
            (e.op, e.errno, e.handled),
            (BackendOp::Invalidate, Some(libc::ENOTTY), Some(0))
        );
        let e = b.destroy(HwptId(9)).unwrap_err();
        assert_eq!((e.op, e.errno), (BackendOp::Destroy, Some(libc::ENOTTY)));
        let e = b.set_dirty_tracking(HwptId(9), true).unwrap_err();
        assert_eq!(
            (e.op, e.errno),
            (BackendOp::SetDirtyTracking, Some(libc::ENOTTY))
        );
        let mut bitmap = [0u64; 1];
        let e = b
            .read_and_clear_dirty(HwptId(9), 0, 64 << 12, 4096, &mut bitmap)
            .unwrap_err();
        assert_eq!(
            (e.op, e.errno),
            (BackendOp::GetDirtyBitmap, Some(libc::ENOTTY))
        );
        let e = b
            .read_and_clear_dirty(HwptId(9), 0, 65 << 12, 4096, &mut bitmap)
            .unwrap_err();
        assert_eq!(
            e.errno,
            Some(libc::EINVAL),
            "bitmap too small, refused before the call"
        );
        let e = b.alloc_fault_queue().unwrap_err();
        assert_eq!(
            (e.op, e.errno),
            (BackendOp::FaultQueueAlloc, Some(libc::ENOTTY))
        );
        // No fault queue: nothing to read, nothing to answer, no page requests.
        assert_eq!(b.read_faults(8), Ok(Vec::new()));
        assert_eq!(b.read_page_requests(8), Ok(Vec::new()));
        assert!(!b.caps().page_requests && !b.caps().unrecoverable_faults);
        assert!(
            b.respond_page_request(1, PageResponseCode::Success)
                .is_err()
        );
        // A fault queue is only used when asked for; asking without one is refused.
        let with_fault = HwptAlloc::Nested {
            parent: HwptId(3),
            s1: VtdS1 {
                flags: VtdS1Flags(0),
                pgtbl_addr: 0x10_0000,
                addr_width: 48,
            },
            pasid: false,
            fault: true,
        };
        let e = b.alloc_hwpt(DeviceId(7), &with_fault).unwrap_err();
        assert!(e.to_string().contains("no fault queue"), "{e}");
        // Devices not added: attach/detach say so.
        let e = b.attach(DeviceId(7), None, HwptId(9)).unwrap_err();
        assert!(e.to_string().contains("not added"), "{e}");
        assert!(b.detach(DeviceId(7), None).is_err());
    }

    type CdevCall = (Option<Pasid>, Option<HwptId>);
    struct FakeCdev(Mutex<Vec<CdevCall>>);

    impl DeviceAttach for FakeCdev {
        fn attach_pt(&self, pasid: Option<Pasid>, pt_id: HwptId) -> std::io::Result<()> {
            self.0.lock().push((pasid, Some(pt_id)));
            match pt_id {
                HwptId(666) => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
                HwptId(667) => Err(std::io::Error::from_raw_os_error(libc::ENODEV)),
                _ => Ok(()),
            }
        }
        fn detach_pt(&self, pasid: Option<Pasid>) -> std::io::Result<()> {
            self.0.lock().push((pasid, None));
            if pasid == Pasid::new(99) {
                return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
            }
            Ok(())
        }
    }

    #[test]
    fn attach_goes_through_the_device_cdev() {
        let b = IommufdBackend::from_file(File::open("/dev/null").unwrap());
        let cdev = Arc::new(FakeCdev(Mutex::new(Vec::new())));
        let (dev, p5) = (DeviceId(4), Pasid::new(5));
        b.add_device(dev, cdev.clone());
        b.attach(dev, None, HwptId(10)).unwrap();
        b.attach(dev, p5, HwptId(11)).unwrap();
        b.detach(dev, p5).unwrap();
        // The errno survives (the binder and the VMM tell ENODEV from EINVAL by it).
        let e = b.attach(dev, None, HwptId(666)).unwrap_err();
        assert_eq!((e.op, e.errno), (BackendOp::Attach, Some(libc::EINVAL)));
        let e = b.attach(dev, None, HwptId(667)).unwrap_err();
        assert_eq!(e.errno, Some(libc::ENODEV));
        let e = b.detach(dev, Pasid::new(99)).unwrap_err();
        assert_eq!((e.op, e.errno), (BackendOp::Detach, Some(libc::ENOENT)));
        assert_eq!(
            *cdev.0.lock(),
            vec![
                (None, Some(HwptId(10))),
                (p5, Some(HwptId(11))),
                (p5, None),
                (None, Some(HwptId(666))),
                (None, Some(HwptId(667))),
                (Pasid::new(99), None),
            ]
        );
        b.remove_device(dev);
        assert!(b.attach(dev, None, HwptId(10)).is_err());
    }

    #[test]
    fn page_fault_records_decode() {
        let mut raw = Vec::new();
        for v in [
            PGFAULT_PASID_VALID | PGFAULT_LAST_PAGE,
            4,
            9,
            1,
            PGFAULT_PERM_WRITE,
            0,
        ] {
            raw.extend_from_slice(&u32::to_ne_bytes(v));
        }
        raw.extend_from_slice(&0x1234_5678u64.to_ne_bytes());
        raw.extend_from_slice(&0u32.to_ne_bytes());
        raw.extend_from_slice(&77u32.to_ne_bytes());
        assert_eq!(raw.len(), std::mem::size_of::<iommu_hwpt_pgfault>());
        let pf = decode_pgfault(&raw).unwrap();
        assert_eq!((pf.dev_id, pf.cookie), (4, 77));
        let r = page_request_of(&pf);
        assert_eq!(r.dev_id, DeviceId(4));
        assert_eq!(r.pasid, Pasid::new(9));
        // PASID_VALID with IOMMU_NO_PASID, or without the flag: a request without PASID.
        let mut no_pasid = pf;
        no_pasid.pasid = IOMMU_NO_PASID;
        assert_eq!(page_request_of(&no_pasid).pasid, None);
        no_pasid.pasid = 9;
        no_pasid.flags = 0;
        assert_eq!(page_request_of(&no_pasid).pasid, None);
        assert!(!page_request_of(&no_pasid).last_in_group);
        // Passed on as the page request it is (group, last flag, cookie), not relabelled as a
        // DMA fault.
        assert_eq!(r.addr, 0x1234_5000);
        assert_eq!((r.prg_index, r.last_in_group, r.cookie), (1, true, 77));
        assert!(r.write && !r.read && !r.execute && !r.privileged);
        assert!(decode_pgfault(&raw[..20]).is_none());
    }

    /// A fault file with the kernel's read rule (Linux `drivers/iommu/iommufd/fault.c`,
    /// `iommufd_fault_fops_read()`): a count that is not a multiple of the record is ESPIPE;
    /// only whole groups are copied; a group larger than what is left stops the read (0 if
    /// nothing was copied, the group staying queued). Writes are recorded.
    struct KernelFaultFile {
        groups: std::collections::VecDeque<Vec<iommu_hwpt_pgfault>>,
        reads: Vec<usize>,
        written: Vec<u8>,
    }

    fn record(grpid: u32, last: bool, cookie: u32) -> Vec<u8> {
        let mut raw = Vec::new();
        let flags = if last { PGFAULT_LAST_PAGE } else { 0 };
        for v in [flags, 4, 0, grpid, PGFAULT_PERM_READ, 0] {
            raw.extend_from_slice(&v.to_ne_bytes());
        }
        raw.extend_from_slice(&(0x1000u64 * u64::from(grpid)).to_ne_bytes());
        raw.extend_from_slice(&0u32.to_ne_bytes());
        raw.extend_from_slice(&cookie.to_ne_bytes());
        raw
    }

    impl FaultFile for KernelFaultFile {
        fn read_records(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let rec = std::mem::size_of::<iommu_hwpt_pgfault>();
            self.reads.push(buf.len());
            if buf.len() % rec != 0 {
                return Err(std::io::Error::from_raw_os_error(libc::ESPIPE));
            }
            let mut done = 0;
            while let Some(g) = self.groups.front() {
                if g.len() * rec > buf.len() - done {
                    break;
                }
                let g = self.groups.pop_front().unwrap();
                for (i, pf) in g.iter().enumerate() {
                    let raw = record(pf.grpid, i + 1 == g.len(), pf.cookie);
                    buf[done..done + rec].copy_from_slice(&raw);
                    done += rec;
                }
            }
            Ok(done)
        }
        fn readable(&self) -> bool {
            !self.groups.is_empty()
        }
        fn write_response(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
    }

    fn group(grpid: u32, n: usize, cookie: u32) -> Vec<iommu_hwpt_pgfault> {
        (0..n)
            .map(|_| iommu_hwpt_pgfault {
                grpid,
                cookie,
                ..Default::default()
            })
            .collect()
    }

    /// A group larger than the read buffer: the kernel returns 0 and keeps it queued, so a
    /// fixed-size reader would never see it (nor anything behind it). The backend grows its
    /// buffer until the group fits, and keeps whole groups.
    #[test]
    fn a_group_larger_than_the_buffer_is_still_read_whole() {
        let rec = std::mem::size_of::<iommu_hwpt_pgfault>();
        let mut f = KernelFaultFile {
            groups: [group(1, 40, 7), group(2, 1, 8)].into_iter().collect(),
            reads: Vec::new(),
            written: Vec::new(),
        };
        let buf = read_groups(&mut f, rec, 8).unwrap();
        assert_eq!(buf.len(), 41 * rec, "both groups, whole");
        let reqs: Vec<HostPageRequest> = buf
            .chunks_exact(rec)
            .filter_map(decode_pgfault)
            .map(|pf| page_request_of(&pf))
            .collect();
        assert_eq!(reqs.iter().filter(|r| r.last_in_group).count(), 2);
        assert!(reqs[39].last_in_group && reqs[39].cookie == 7 && reqs[40].cookie == 8);
        // Every read asked for a whole number of records, the buffer doubling: 8, 16, 32, 64.
        assert_eq!(f.reads, vec![8 * rec, 16 * rec, 32 * rec, 64 * rec]);
        // An empty queue: one read, nothing.
        assert!(read_groups(&mut f, rec, 8).unwrap().is_empty());
        // A group no buffer can hold is an error that says so, not an endless loop.
        f.groups.push_back(group(3, MAX_READ_RECORDS + 1, 9));
        let e = read_groups(&mut f, rec, 8).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        // The response: cookie and code, 8 bytes.
        write_response(&mut f, 7, PageResponseCode::Invalid).unwrap();
        assert_eq!(f.written, [7u32.to_ne_bytes(), 1u32.to_ne_bytes()].concat());
    }

    #[test]
    fn pasid_attach_follows_the_kernel_release() {
        assert!(!kernel_release_has_pasid_attach("6.12.0-55.el10.x86_64"));
        assert!(!kernel_release_has_pasid_attach("5.15.0"));
        assert!(kernel_release_has_pasid_attach("6.18.0"));
        assert!(kernel_release_has_pasid_attach("7.0.1-rc2"));
        assert!(!kernel_release_has_pasid_attach("garbage"));
        let b = IommufdBackend::from_file(File::open("/dev/null").unwrap());
        b.set_pasid_attach(false);
        assert!(!b.caps().pasid_attach);
        b.set_pasid_attach(true);
        assert!(b.caps().pasid_attach);
        // Probing on a file that is not an iommufd is an error, not a guess.
        let e = b.probe_pasid_attach(DeviceId(1), IoasId(2)).unwrap_err();
        assert_eq!(e.errno, Some(libc::ENOTTY));
    }
}
