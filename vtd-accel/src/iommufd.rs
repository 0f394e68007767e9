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
//! A VMM builds it with [`IommufdBackend::open`] (or [`IommufdBackend::from_iommufd`] to share
//! the iommufd its VFIO layer uses), then adds each assigned device with
//! [`IommufdBackend::add_vfio_device`]. On a machine without `/dev/iommu`, `open` fails with an
//! error that says so.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

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
use vtd_regs::fault::FaultReason;
use vtd_regs::{Cap, Ecap};
use vtd_tables::walk::AccessKind;

use crate::backend::{
    BackendError, BackendOp, DeviceId, HostFault, HostIommuBackend, HwptAlloc, HwptId, Pasid,
    VtdS1Invalidation,
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
/// `IOMMU_PGFAULT_PERM_WRITE`.
const PGFAULT_PERM_WRITE: u32 = 2;
/// `IOMMU_PGFAULT_PERM_EXEC`.
const PGFAULT_PERM_EXEC: u32 = 4;
/// `IOMMU_PGFAULT_PERM_PRIV`.
const PGFAULT_PERM_PRIV: u32 = 8;
/// `IOMMUFD_PAGE_RESP_INVALID`: the guest has no page-request queue here, so every request
/// is answered "invalid" after its fault is recorded.
const PAGE_RESP_INVALID: u32 = 1;

/// How a device's DMA is attached to iommufd page tables: the VFIO cdev's
/// `VFIO_DEVICE_[AT|DE]TACH_IOMMUFD_PT` (implemented for [`VfioDevice`]).
pub trait DeviceAttach: Send + Sync {
    /// Attaches (or replaces) the device's requests without PASID (`None`) or with `pasid` to
    /// `pt_id`.
    fn attach_pt(&self, pasid: Option<Pasid>, pt_id: HwptId) -> Result<(), String>;
    /// Detaches the device's `pasid`.
    fn detach_pt(&self, pasid: Option<Pasid>) -> Result<(), String>;
}

impl DeviceAttach for VfioDevice {
    fn attach_pt(&self, pasid: Option<Pasid>, pt_id: HwptId) -> Result<(), String> {
        let r = match pasid {
            None => self.attach_hwpt(pt_id.0),
            Some(p) => self.attach_iommufd_pt_pasid(pt_id.0, p.get()),
        };
        r.map_err(|e| e.to_string())
    }

    fn detach_pt(&self, pasid: Option<Pasid>) -> Result<(), String> {
        let r = match pasid {
            None => self.detach_hwpt(),
            Some(p) => self.detach_iommufd_pt_pasid(p.get()),
        };
        r.map_err(|e| e.to_string())
    }
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
        }
    }

    /// The iommufd.
    pub fn iommufd(&self) -> &Arc<IommuFd> {
        &self.iommufd
    }

    /// Adds a device bound to this iommufd as `dev_id`, attached through `attach`.
    pub fn add_device(&self, dev_id: DeviceId, attach: Arc<dyn DeviceAttach>) {
        self.devices
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dev_id, attach);
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
        self.devices
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&dev_id);
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
        *self.fault_queue.lock().unwrap_or_else(|e| e.into_inner()) = Some(FaultQueue { id, file });
        Ok(id)
    }

    fn device(&self, op: BackendOp, dev: DeviceId) -> Result<Arc<dyn DeviceAttach>, BackendError> {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&dev)
            .cloned()
            .ok_or_else(|| {
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

/// A page fault record as a [`HostFault`]: a request the guest's first-stage table did not
/// satisfy (reason 0x71, first-stage entry not present).
fn host_fault_of(pf: &iommu_hwpt_pgfault) -> HostFault {
    let access = if pf.perm & PGFAULT_PERM_WRITE != 0 {
        AccessKind::Write
    } else if pf.perm & PGFAULT_PERM_EXEC != 0 {
        AccessKind::Execute
    } else {
        AccessKind::Read
    };
    let pasid = if pf.flags & PGFAULT_PASID_VALID != 0 && pf.pasid != IOMMU_NO_PASID {
        Pasid::new(pf.pasid)
    } else {
        None
    };
    HostFault {
        dev_id: DeviceId(pf.dev_id),
        pasid,
        addr: pf.addr & !0xfff,
        reason: FaultReason::FirstStageNotPresent,
        access,
        privileged: pf.perm & PGFAULT_PERM_PRIV != 0,
        hwpt: None,
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
            HwptAlloc::Nested { parent, s1, pasid } => {
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
                if let Some(q) = self
                    .fault_queue
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                {
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
            .map_err(|m| BackendError::new(op, format!("{dev} {pasid:?} to {hwpt}: {m}")))
    }

    fn detach(&self, dev: DeviceId, pasid: Option<Pasid>) -> Result<(), BackendError> {
        let op = BackendOp::Detach;
        self.device(op, dev)?
            .detach_pt(pasid)
            .map_err(|m| BackendError::new(op, format!("{dev} {pasid:?}: {m}")))
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
            Err(e) => {
                Err(from_iommufd(op, &e, format!("{hwpt}")).with_handled(inv.entry_num.min(n)))
            }
        }
    }

    fn destroy(&self, hwpt: HwptId) -> Result<(), BackendError> {
        self.iommufd
            .destroy_iommu_object(hwpt.0)
            .map_err(|e| from_iommufd(BackendOp::Destroy, &e, format!("{hwpt}")))
    }

    fn read_faults(&self, max: usize) -> Result<Vec<HostFault>, BackendError> {
        let op = BackendOp::ReadFaults;
        let mut queue = self.fault_queue.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = queue.as_mut() else {
            return Ok(Vec::new());
        };
        let rec = std::mem::size_of::<iommu_hwpt_pgfault>();
        let mut buf = vec![0u8; rec * max.clamp(1, 256)];
        let got = match q.file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(BackendError::os(op, &e, "reading the fault queue")),
        };
        let mut out = Vec::new();
        for chunk in buf[..got].chunks_exact(rec) {
            let Some(pf) = decode_pgfault(chunk) else {
                continue;
            };
            out.push(host_fault_of(&pf));
            if pf.flags & PGFAULT_LAST_PAGE != 0 {
                // Answer the group so the device does not wait forever.
                let mut resp = [0u8; 8];
                resp[..4].copy_from_slice(&pf.cookie.to_ne_bytes());
                resp[4..].copy_from_slice(&PAGE_RESP_INVALID.to_ne_bytes());
                if let Err(e) = q.file.write_all(&resp) {
                    return Err(BackendError::os(op, &e, "answering a page request group"));
                }
            }
        }
        Ok(out)
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
        assert_eq!(
            (e.op, e.errno, e.handled),
            (BackendOp::Invalidate, Some(libc::ENOTTY), Some(2))
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
        // No fault queue: nothing to read.
        assert_eq!(b.read_faults(8), Ok(Vec::new()));
        // Devices not added: attach/detach say so.
        let e = b.attach(DeviceId(7), None, HwptId(9)).unwrap_err();
        assert!(e.to_string().contains("not added"), "{e}");
        assert!(b.detach(DeviceId(7), None).is_err());
    }

    type CdevCall = (Option<Pasid>, Option<HwptId>);
    struct FakeCdev(Mutex<Vec<CdevCall>>);

    impl DeviceAttach for FakeCdev {
        fn attach_pt(&self, pasid: Option<Pasid>, pt_id: HwptId) -> Result<(), String> {
            self.0.lock().unwrap().push((pasid, Some(pt_id)));
            if pt_id == HwptId(666) {
                return Err("EINVAL".into());
            }
            Ok(())
        }
        fn detach_pt(&self, pasid: Option<Pasid>) -> Result<(), String> {
            self.0.lock().unwrap().push((pasid, None));
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
        let e = b.attach(dev, None, HwptId(666)).unwrap_err();
        assert!(e.to_string().contains("EINVAL"), "{e}");
        assert_eq!(
            *cdev.0.lock().unwrap(),
            vec![
                (None, Some(HwptId(10))),
                (p5, Some(HwptId(11))),
                (p5, None),
                (None, Some(HwptId(666)))
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
        let f = host_fault_of(&pf);
        assert_eq!(f.dev_id, DeviceId(4));
        assert_eq!(f.pasid, Pasid::new(9));
        // PASID_VALID with IOMMU_NO_PASID, or without the flag: a request without PASID.
        let mut no_pasid = pf;
        no_pasid.pasid = IOMMU_NO_PASID;
        assert_eq!(host_fault_of(&no_pasid).pasid, None);
        no_pasid.pasid = 9;
        no_pasid.flags = 0;
        assert_eq!(host_fault_of(&no_pasid).pasid, None);
        assert_eq!(f.addr, 0x1234_5000);
        assert_eq!(f.access, AccessKind::Write);
        assert_eq!(f.reason, FaultReason::FirstStageNotPresent);
        assert!(decode_pgfault(&raw[..20]).is_none());
    }
}
