//! Passthrough devices: assigned through vtd-accel's nested binding to a simulated host IOMMU.
//! Their DMA never walks in vtd-core: the host IOMMU translates it through the guest's
//! first-stage table nested over the host's second stage (GPA -> HPA), with its own IOTLB that
//! only the binder's forwarded invalidations keep in step with the guest.
//!
//! The device is a simple DMA engine: the guest writes a 32-byte command block in its control
//! page (kind, length, data IOVA, tag, status), the device reads it by DMA, moves the data in
//! page-sized DMA transactions (what a PCIe device does: no transaction crosses a 4 KiB
//! boundary), and writes the status by DMA.
//!
//! A device with PRI (see [`PassthroughDevice::with_pri`]) does what a PCIe PRI device does
//! when a transaction misses (PCIe base spec 10.4): the host IOMMU turns the miss into a page
//! request on its fault queue, the device stops and waits for the page group response, and on
//! Success retries the transaction. The wait ends when the host has no page group of it
//! outstanding; the device then reads the code it was answered. Raising the request also
//! "interrupts" the VMM ([`PAGE_REQUEST_IRQ`] on the device's interrupt channel): the
//! eventfd of the host's fault queue, on which a VMM reads the host's page requests.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use vtd_accel::sim::SimHostIommu;
use vtd_accel::{DeviceId, PageResponseCode, Pasid};
use vtd_tables::GuestRam;

use crate::dma::CONTROL_IOVA;
use crate::emulated::{GUEST_SALT, Kick};
use crate::machine::{DevRam, Ram, check_pattern, fill_pattern};
use crate::stats::Stats;

/// Command kinds.
pub const CMD_TO_MEMORY: u32 = 1;
/// The device reads guest memory.
pub const CMD_FROM_MEMORY: u32 = 2;
/// Status code of a command done.
pub const STATUS_DONE: u64 = 0x600d;
/// Status code of a command whose DMA failed or whose data did not match.
pub const STATUS_ERROR: u64 = 0xbad;
/// Where the device writes the status: the second control page, which the guest only reads.
/// A status carries its command's tag, so a stale one cannot pass; and since the guest never
/// writes this page, only the host IOMMU's dirty log sees it change (live migration must read
/// that log, or the target would resume with an old status).
const STATUS_OFFSET: u64 = 4096;
/// What a device sends on the interrupt channel when it raised a page request (the host fault
/// queue's eventfd); any other value is a device index (a completion).
pub const PAGE_REQUEST_IRQ: u64 = u64::MAX;
/// How long a device waits for a page group response before it gives the transaction up.
const PAGE_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The status word of command `tag` with `code`.
pub fn status_word(tag: u64, code: u64) -> u64 {
    tag << 16 | code
}

/// The device model.
pub struct PassthroughDevice {
    /// Pattern key.
    pub index: u64,
    seed: u64,
    sim: Arc<SimHostIommu<DevRam>>,
    dev: DeviceId,
    pasid: Option<Pasid>,
    stats: Arc<Stats>,
    buf: Vec<u8>,
    pri: bool,
    irq: Option<Sender<u64>>,
}

impl PassthroughDevice {
    /// Device `index` behind host device `dev`, issuing requests with `pasid`.
    pub fn new(
        index: u64,
        seed: u64,
        sim: Arc<SimHostIommu<DevRam>>,
        dev: DeviceId,
        pasid: Option<Pasid>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            index,
            seed,
            sim,
            dev,
            pasid,
            stats,
            buf: vec![0; 4096],
            pri: false,
            irq: None,
        }
    }

    /// The same device with ATS and PRI (its host device must have them too).
    #[must_use]
    pub fn with_pri(mut self, pri: bool) -> Self {
        self.pri = pri;
        self
    }

    /// The device thread's loop.
    pub fn run(mut self, kicks: Receiver<Kick>, irq: Sender<u64>) {
        self.irq = Some(irq.clone());
        while let Ok(Kick::Notify) = kicks.recv() {
            self.command();
            if irq.send(self.index).is_err() {
                break;
            }
        }
    }

    fn command(&mut self) {
        let mut cmd = [0u8; 24];
        if self
            .sim
            .dma_read(self.dev, self.pasid, CONTROL_IOVA, &mut cmd)
            .is_err()
        {
            self.stats.fail(format!(
                "passthrough device {}: command block not readable",
                self.index
            ));
            return;
        }
        let word = |i: usize| u64::from_le_bytes(cmd[i..i + 8].try_into().unwrap_or_default());
        let kind = word(0) as u32;
        let len = word(0) >> 32;
        let (iova, tag) = (word(8), word(16));
        let ok = self.transfer(kind, iova, len, tag);
        let status = status_word(tag, if ok { STATUS_DONE } else { STATUS_ERROR });
        if self
            .sim
            .dma_write(
                self.dev,
                self.pasid,
                CONTROL_IOVA + STATUS_OFFSET,
                &status.to_le_bytes(),
            )
            .is_err()
        {
            self.stats.fail(format!(
                "passthrough device {}: status not writable",
                self.index
            ));
        }
    }

    fn transfer(&mut self, kind: u32, iova: u64, len: u64, tag: u64) -> bool {
        let mut off = 0;
        while off < len {
            let at = iova + off;
            let n = (4096 - at % 4096).min(len - off) as usize;
            let chunk = &mut self.buf[..n];
            match kind {
                CMD_TO_MEMORY => {
                    fill_pattern(chunk, self.seed, self.index, tag, off);
                    let (sim, dev, pasid) = (&self.sim, self.dev, self.pasid);
                    let ok = Self::with_page_requests(self.pri, sim, &self.irq, || {
                        sim.dma_write(dev, pasid, at, chunk).is_ok()
                    });
                    if !ok {
                        return false;
                    }
                }
                CMD_FROM_MEMORY => {
                    let (sim, dev, pasid) = (&self.sim, self.dev, self.pasid);
                    let ok = Self::with_page_requests(self.pri, sim, &self.irq, || {
                        sim.dma_read(dev, pasid, at, chunk).is_ok()
                    });
                    if !ok {
                        return false;
                    }
                    let bad = check_pattern(chunk, self.seed ^ GUEST_SALT, self.index, tag, off);
                    if !self.stats.check(bad.is_none(), || {
                        format!(
                            "passthrough device {}: request {tag} read wrong data at offset {}",
                            self.index,
                            off + bad.unwrap_or(0) as u64
                        )
                    }) {
                        return false;
                    }
                }
                _ => return false,
            }
            off += n as u64;
        }
        self.stats.passthrough.add(len);
        true
    }
}

impl PassthroughDevice {
    /// Runs one DMA transaction `dma`; for a PRI device whose transaction raised a page
    /// request, waits for the answer and retries after a Success (at most a few times: a guest
    /// that answers Success without mapping the page would otherwise keep it asking). False
    /// when the transaction failed.
    fn with_page_requests(
        pri: bool,
        sim: &SimHostIommu<DevRam>,
        irq: &Option<Sender<u64>>,
        mut dma: impl FnMut() -> bool,
    ) -> bool {
        const ATTEMPTS: usize = 4;
        for _ in 0..ATTEMPTS {
            if dma() {
                return true;
            }
            // The host is this device's alone, so any outstanding group is this device's.
            if !pri || sim.pending_page_groups() == (0, 0) {
                return false;
            }
            if irq
                .as_ref()
                .is_none_or(|i| i.send(PAGE_REQUEST_IRQ).is_err())
            {
                return false;
            }
            let since = Instant::now();
            while sim.pending_page_groups() != (0, 0) {
                if since.elapsed() > PAGE_RESPONSE_TIMEOUT {
                    return false;
                }
                std::thread::sleep(Duration::from_micros(20));
            }
            let answer = sim.page_responses().last().map(|r| r.code);
            if answer != Some(PageResponseCode::Success) {
                return false;
            }
        }
        false
    }
}

/// Writes a command block at `gpa` (the control page's guest-physical address).
pub fn post_command(mem: &Ram, gpa: u64, kind: u32, iova: u64, len: u64, tag: u64) {
    let mut cmd = [0u8; 32];
    cmd[0..8].copy_from_slice(&(u64::from(kind) | len << 32).to_le_bytes());
    cmd[8..16].copy_from_slice(&iova.to_le_bytes());
    cmd[16..24].copy_from_slice(&tag.to_le_bytes());
    // The layout keeps control pages inside RAM.
    let _ = GuestRam::write(mem, gpa, &cmd);
}

/// Reads the status the device wrote; `gpa` is the first control page's address.
pub fn read_status(mem: &Ram, gpa: u64) -> u64 {
    GuestRam::read_u64(mem, gpa + STATUS_OFFSET).unwrap_or(0)
}
