//! The vCPU side: boots the guest's IOMMU driver, then runs rounds of work until told to
//! stop.
//!
//! A round is what a busy guest does between two looks at its interrupt handlers: for every
//! device it maps a buffer (4 KiB pages scattered over its pool, or one 2 MiB page), posts a
//! request, notifies the device; the devices run in parallel on their threads; on each
//! completion interrupt it checks the status and every byte the device moved (read back
//! through guest physical memory), and unmaps (strictly or lazily, by the seed). Every eighth
//! round one emulated device gets a deliberate fault (an unmapped IOVA, or a write to a
//! read-only page) and the fault handler must find exactly that record: requester, reason,
//! address and access; likewise a passthrough device is sent back to an IOVA just unmapped
//! strictly: its DMA must fail (no stale host translation survived the forwarded
//! invalidation) and the host must log exactly that fault (an Intel host keeps non-recoverable
//! faults in its kernel log; the PRI device's miss is a page request the guest refuses).
//! Every [`PAGE_REQUEST_EVERY`] rounds the PRI passthrough device gets a buffer the guest
//! has not mapped: its pages come in by page requests the guest serves while it waits for the
//! round's completions. Every [`REPLUG_EVERY`] rounds a passthrough device is hot-unplugged and
//! replugged. At round 200, and every [`MIGRATE_EVERY`] rounds after it, the machine is live
//! migrated (see `migrate.rs`): pre-copy rounds run alongside the next rounds' work, then the
//! stop-and-copy moves it to a fresh unit and RAM, and the work carries on there. The choice of
//! every operation comes from the seed and the round number, so the same seed gives the same
//! sequence of operations.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vtd_accel::{Bdf, HostAttachment, Pasid, PciTopology};
use vtd_core::{FaultDisposition, VtdEvent};
use vtd_regs::fault::FaultReason;
use vtd_regs::inv::InvDesc;
use vtd_regs::prq::{PageRequestDescriptor, ResponseCode};
use vtd_regs::regs::{FRCD_HI_F, Fsts, offset as reg};
use vtd_testkit::driver::{Guest, ScalableTables};

use crate::dma::{Buffer, DeviceDma, MAX_HUGE_LEN, MAX_SMALL_LEN};
use crate::emulated::{EmulatedDevice, EmulatedDriver, GUEST_SALT, Kick, POISON, Request};
use crate::inspect;
use crate::machine::{Machine, MachineError, PASSTHROUGH_DEVICES, PRI_DEVICE, Ram, Rng, region};
use crate::migrate::{PRECOPY_ROUNDS, PreCopy, Totals};
use crate::passthrough::{
    CMD_FROM_MEMORY, CMD_TO_MEMORY, PAGE_REQUEST_IRQ, PassthroughDevice, STATUS_DONE, STATUS_ERROR,
    post_command, read_status, status_word,
};
use crate::stats::{Progress, RunFacts, Stats, Summary};

/// Rounds between two hot-unplug/replug cycles.
pub const REPLUG_EVERY: u64 = 64;
/// Rounds between two live migrations, and the round of the first (early, so even a short run
/// migrates). Rare enough that an attached inspector, which reconnects to the target's server
/// within a second, spends little of a long run reconnecting.
pub const MIGRATE_EVERY: u64 = 32768;
const MIGRATE_AT: u64 = 200;
/// Rounds between two demand-paged buffers of the PRI device.
pub const PAGE_REQUEST_EVERY: u64 = 4;
/// MSI data of the page request event (what the testkit's `enable_prq` programs in PEDATA).
const PAGE_REQUEST_MSI_DATA: u32 = 0x4322;
/// Rounds between two deliberate faults.
const FAULT_EVERY: u64 = 8;
/// How long a device may take to answer a notify before the run is declared hung.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(20);
/// The PASID the second passthrough device uses (the first uses none: PASID 0, RID_PASID).
pub const PASSTHROUGH_PASID: u32 = 5;

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Run time; `None` until interrupted.
    pub duration: Option<Duration>,
    /// Round limit.
    pub rounds: Option<u64>,
    /// Emulated devices.
    pub devices: usize,
    /// Workload seed.
    pub seed: u64,
    /// Print the live progress line.
    pub progress: bool,
    /// The progress line is on a terminal.
    pub tty: bool,
    /// Serve the inspector on this socket.
    pub socket: Option<std::path::PathBuf>,
}

struct EmulatedSlot {
    driver: EmulatedDriver,
    kick: Sender<Kick>,
    thread: Option<JoinHandle<()>>,
}

struct PassthroughSlot {
    index: u64,
    host: usize,
    sid: u16,
    did: u16,
    pasid: u32,
    fs_root: u64,
    dma: DeviceDma,
    kick: Option<Sender<Kick>>,
    thread: Option<JoinHandle<()>>,
}

/// A fault the workload asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExpectedFault {
    sid: u16,
    reason: FaultReason,
    page: u64,
    write: bool,
    pasid: Option<u32>,
}

/// What the guest's page request handler may be asked for in a round.
#[derive(Debug, Default)]
struct PageRequestPlan {
    /// The PRI device's demand-paged buffer: its slot, the buffer, whether the device writes
    /// it, and which of its pages were paged in.
    demand: Option<(usize, Buffer, bool, Vec<bool>)>,
    /// A page the PRI device is sent to after the guest unmapped it (the stale-IOVA probe):
    /// its page request is answered Invalid Request, as Linux's IOPF handler answers a request
    /// for an address with no mapping (drivers/iommu/io-pgfault.c `iopf_handler`).
    refuse: Option<(u16, u64)>,
    /// Page requests read in this round.
    read: u64,
    /// Page requests answered Invalid Request as the probe asked.
    refused: u64,
}

/// One pending request of a round.
enum Pending {
    Emulated {
        slot: usize,
        request: Request,
        tag: u64,
        buffer: Option<Buffer>,
        lazy: bool,
    },
    Passthrough {
        slot: usize,
        to_memory: bool,
        tag: u64,
        buffer: Buffer,
        lazy: bool,
    },
}

/// The running machine and its workload.
pub struct Workload {
    machine: Machine,
    stats: Arc<Stats>,
    opts: Options,
    emulated: Vec<EmulatedSlot>,
    passthrough: Vec<PassthroughSlot>,
    irq_tx: Sender<u64>,
    irq_rx: Receiver<u64>,
    round: u64,
    not_run: Vec<String>,
    inspector: Option<vtd_inspect::server::InspectServer>,
    precopy: Option<PreCopy>,
    migrations: Totals,
    /// The guest driver's scalable-mode bookkeeping (guest state: it moves with the guest).
    tables: ScalableTables,
    /// Cache figures of the units and host IOMMUs left behind by migrations.
    retired_figures: [u64; 5],
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("round", &self.round)
            .finish_non_exhaustive()
    }
}

fn emulated_sid(i: usize) -> u16 {
    Bdf::new(0, 4 + i as u8, 0).sid()
}

impl Workload {
    /// Builds the machine and boots the guest's IOMMU driver: scalable mode, every device's
    /// context and PASID entries, translation on; then starts the device threads.
    pub fn boot(opts: Options) -> Result<Self, String> {
        let stats = Arc::new(Stats::default());
        let mut machine = Machine::new(opts.devices).map_err(|e: MachineError| e.to_string())?;
        // The inspector attaches before the guest programs the unit, so a client sees it all.
        let inspector = match &opts.socket {
            Some(path) => Some(inspect::serve(machine.unit(), &machine.binder, path)?),
            None => None,
        };
        stats
            .bindings
            .fetch_add(machine.hosts.len() as u64, Ordering::Relaxed);
        let (irq_tx, irq_rx) = mpsc::channel();
        let guest = &mut machine.guest;
        let mut tables = guest
            .enable_scalable_mode()
            .map_err(|e| format!("scalable-mode bring-up: {e}"))?;
        // Linux enables the page request queue at boot when ECAP.PRS is set
        // (drivers/iommu/intel/prq.c `intel_iommu_enable_prq`).
        guest.enable_prq(0);
        let mut emulated = Vec::new();
        for i in 0..opts.devices {
            let sid = emulated_sid(i);
            guest
                .setup_device(&mut tables, sid, false, false)
                .map_err(|e| format!("device {sid:#x}: {e}"))?;
            let domain = guest
                .attach_first_stage(&tables, sid, 0, 10 + i as u16)
                .map_err(|e| format!("device {sid:#x}: {e}"))?;
            let dma = DeviceDma::new(guest, domain, region(i), &stats)?;
            let driver = EmulatedDriver::new(i as u64, sid, dma, &machine.ram);
            emulated.push(EmulatedSlot {
                driver,
                kick: mpsc::channel().0,
                thread: None,
            });
        }
        let mut passthrough = Vec::new();
        for (j, host) in machine.hosts.iter().enumerate() {
            let sid = host.bdf.sid();
            let pasid = if j == 1 { PASSTHROUGH_PASID } else { 0 };
            let did = 100 + j as u16;
            guest
                .setup_device(&mut tables, sid, pasid != 0, j == PRI_DEVICE)
                .map_err(|e| format!("device {sid:#x}: {e}"))?;
            let domain = guest
                .attach_first_stage(&tables, sid, pasid, did)
                .map_err(|e| format!("device {sid:#x}: {e}"))?;
            let index = (opts.devices + j) as u64;
            let dma = DeviceDma::new(guest, domain, region(opts.devices + j), &stats)?;
            passthrough.push(PassthroughSlot {
                index,
                host: j,
                sid,
                did,
                pasid,
                fs_root: domain.root,
                dma,
                kick: None,
                thread: None,
            });
        }
        // Linux turns translation on last; the binder binds on that (TE replay).
        guest.enable_translation();
        let mut w = Self {
            machine,
            stats,
            opts,
            emulated,
            passthrough,
            irq_tx,
            irq_rx,
            round: 0,
            inspector,
            precopy: None,
            migrations: Totals::default(),
            tables,
            retired_figures: [0; 5],
            not_run: Vec::new(),
        };
        for i in 0..w.emulated.len() {
            w.start_emulated(i);
        }
        for j in 0..w.passthrough.len() {
            w.check_bound(j, "boot");
            w.start_passthrough(j);
        }
        w.account_events(&[], 0);
        Ok(w)
    }

    fn start_emulated(&mut self, i: usize) {
        let slot = &mut self.emulated[i];
        let dev = EmulatedDevice::new(
            self.machine.unit(),
            &self.machine.ram,
            slot.driver.sid,
            slot.driver.index,
            self.opts.seed,
            self.stats.clone(),
        )
        .resume_at(slot.driver.ring_index());
        let (tx, rx) = mpsc::channel();
        let irq = self.irq_tx.clone();
        slot.kick = tx;
        slot.thread = Some(
            std::thread::Builder::new()
                .name(format!("emulated-{i}"))
                .spawn(move || dev.run(rx, irq))
                .expect("spawn a device thread"),
        );
    }

    fn start_passthrough(&mut self, j: usize) {
        let slot = &mut self.passthrough[j];
        let host = &self.machine.hosts[slot.host];
        let (dev_id, _) = host
            .device
            .iommufd_ids()
            .expect("sim devices are iommufd devices");
        let pasid = Pasid::from_table_index(slot.pasid);
        let dev = PassthroughDevice::new(
            slot.index,
            self.opts.seed,
            host.sim.clone(),
            dev_id,
            pasid,
            self.stats.clone(),
        )
        .with_pri(slot.host == PRI_DEVICE);
        let (tx, rx) = mpsc::channel();
        let irq = self.irq_tx.clone();
        slot.kick = Some(tx);
        slot.thread = Some(
            std::thread::Builder::new()
                .name(format!("passthrough-{j}"))
                .spawn(move || dev.run(rx, irq))
                .expect("spawn a device thread"),
        );
    }

    /// Checks that passthrough device `j`'s PASID is bound to a nested HWPT on its host.
    fn check_bound(&self, j: usize, when: &str) {
        let slot = &self.passthrough[j];
        let host = &self.machine.hosts[slot.host];
        let pasid = Pasid::from_table_index(slot.pasid);
        let bound = self.machine.binder.bindings().iter().any(|b| {
            b.bdf == host.bdf && b.pasid == pasid && matches!(b.host, HostAttachment::Nested(_))
        });
        self.stats.check(bound, || {
            format!(
                "{when}: passthrough device {} PASID {} is not bound to a nested HWPT: {:?}",
                slot.index,
                slot.pasid,
                self.machine.binder.bindings()
            )
        });
    }

    /// Runs rounds until the time is up or `stop` is set; returns the summary.
    pub fn run(mut self, stop: &AtomicBool) -> Summary {
        let started = Instant::now();
        let mut progress = Progress::new(self.opts.tty);
        loop {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if self.opts.duration.is_some_and(|d| started.elapsed() >= d)
                || self.opts.rounds.is_some_and(|n| self.round >= n)
            {
                break;
            }
            if !self.round() {
                break;
            }
            if self.opts.progress {
                progress.tick(&self.stats, started);
            }
        }
        let elapsed = started.elapsed();
        if self.opts.progress {
            progress.finish();
        }
        self.shutdown();
        let [hits, misses, host_hits, host_misses, host_inv] = self.cache_figures();
        self.stats.summary(RunFacts {
            seed: self.opts.seed,
            elapsed,
            emulated_devices: self.emulated.len(),
            passthrough_devices: PASSTHROUGH_DEVICES,
            iotlb: (hits, misses),
            host_iotlb: (host_hits, host_misses),
            host_invalidations: host_inv,
            migration: self.migrations.summary(),
            not_run: std::mem::take(&mut self.not_run),
        })
    }

    fn shutdown(&mut self) {
        self.stop_devices();
    }

    /// One round; false when the run cannot go on (a device hung).
    fn round(&mut self) -> bool {
        let round = self.round;
        self.round += 1;
        let seed = self.opts.seed;
        let mut rng = Rng::new(seed, round);
        let mut expected = Vec::new();
        let mut pending = Vec::new();
        let fault_device = (round % FAULT_EVERY == FAULT_EVERY - 1 && !self.emulated.is_empty())
            .then(|| rng.below(self.emulated.len() as u64) as usize);
        let fault_kind = if (round / FAULT_EVERY) % 2 == 0 {
            Request::BadIova
        } else {
            Request::ReadOnly
        };
        // Every eighth round (offset from the emulated faults), a passthrough device is sent back
        // to the IOVA the guest just unmapped strictly: the host IOMMU must fault (the binder
        // forwarded the invalidation, so no stale translation survives) and the binder must
        // inject the fault into the guest's fault-recording registers.
        let stale_probe = (round % FAULT_EVERY == 3 && !self.passthrough.is_empty())
            .then(|| ((round / FAULT_EVERY) % self.passthrough.len() as u64) as usize)
            .filter(|&j| self.passthrough[j].kick.is_some());
        let mut probe = None;
        let mut plan = PageRequestPlan::default();
        let mem = self.machine.ram.clone();
        // Post.
        for i in 0..self.emulated.len() {
            let tag = round << 8 | i as u64;
            let request = match fault_device {
                Some(d) if d == i => fault_kind,
                _ if rng.below(2) == 0 => Request::Read,
                _ => Request::Write,
            };
            let huge = rng.below(4) == 0;
            let len = if huge {
                4096 + rng.below(MAX_HUGE_LEN - 4096)
            } else {
                1 + rng.below(MAX_SMALL_LEN)
            };
            let lazy = rng.below(2) == 0;
            let guest = &mut self.machine.guest;
            let slot = &mut self.emulated[i];
            let sid = slot.driver.sid;
            let (buffer, data) = match request {
                Request::BadIova => {
                    let iova = EmulatedDriver::hole(tag);
                    expected.push(ExpectedFault {
                        sid,
                        reason: FaultReason::FirstStageNotPresent,
                        page: iova & !0xfff,
                        write: false,
                        pasid: None,
                    });
                    (None, (iova, len.min(4096 - (iova & 0xfff))))
                }
                _ => {
                    let device_writes = request == Request::Read;
                    let buf = match slot.driver.dma.map(
                        guest,
                        &mut rng,
                        len,
                        huge,
                        device_writes,
                        &self.stats,
                    ) {
                        Ok(b) => b,
                        Err(e) => {
                            self.stats.fail(format!("emulated device {i}: {e}"));
                            return false;
                        }
                    };
                    match request {
                        Request::Write => slot.driver.dma.write_pattern(
                            &mem,
                            &buf,
                            seed ^ GUEST_SALT,
                            slot.driver.index,
                            tag,
                        ),
                        Request::ReadOnly => {
                            expected.push(ExpectedFault {
                                sid,
                                reason: FaultReason::SmWriteNotPermitted,
                                page: buf.iova & !0xfff,
                                write: true,
                                pasid: None,
                            });
                            slot.driver.dma.fill(&mem, &buf, POISON)
                        }
                        _ => slot.driver.dma.fill(&mem, &buf, POISON),
                    }
                    let data = (buf.iova, buf.len);
                    (Some(buf), data)
                }
            };
            slot.driver.post(&mem, request, tag, data);
            pending.push(Pending::Emulated {
                slot: i,
                request,
                tag,
                buffer,
                lazy,
            });
        }
        for j in 0..self.passthrough.len() {
            if self.passthrough[j].kick.is_none() {
                continue;
            }
            let slot = &mut self.passthrough[j];
            let tag = round << 8 | slot.index;
            let to_memory = rng.below(2) == 0;
            let huge = rng.below(4) == 0;
            let len = if huge {
                4096 + rng.below(MAX_HUGE_LEN - 4096)
            } else {
                1 + rng.below(MAX_SMALL_LEN)
            };
            let lazy = rng.below(2) == 0 && stale_probe != Some(j);
            let guest = &mut self.machine.guest;
            // Every few rounds the PRI device gets a buffer the guest has not mapped: each of
            // its pages reaches the guest as a page request first.
            let demand = slot.host == PRI_DEVICE && round % PAGE_REQUEST_EVERY == 1;
            let mapped = if demand {
                slot.dma.reserve(guest, &mut rng, len.min(MAX_SMALL_LEN))
            } else {
                slot.dma
                    .map(guest, &mut rng, len, huge, to_memory, &self.stats)
            };
            let buf = match mapped {
                Ok(b) => b,
                Err(e) => {
                    self.stats
                        .fail(format!("passthrough device {}: {e}", slot.index));
                    return false;
                }
            };
            if to_memory {
                slot.dma.fill(&mem, &buf, POISON);
            } else {
                slot.dma
                    .write_pattern(&mem, &buf, seed ^ GUEST_SALT, slot.index, tag);
            }
            let kind = if to_memory {
                CMD_TO_MEMORY
            } else {
                CMD_FROM_MEMORY
            };
            post_command(&mem, slot.dma.control_gpa(0), kind, buf.iova, buf.len, tag);
            if demand {
                let pages = (buf.map_len / 4096) as usize;
                plan.demand = Some((j, buf.clone(), to_memory, vec![false; pages]));
            }
            pending.push(Pending::Passthrough {
                slot: j,
                to_memory,
                tag,
                buffer: buf,
                lazy,
            });
        }
        // Notify every device, then take the interrupts.
        let mut waiting = 0;
        for s in &self.emulated {
            if s.kick.send(Kick::Notify).is_ok() {
                waiting += 1;
            }
        }
        for s in &self.passthrough {
            if let Some(k) = &s.kick {
                if k.send(Kick::Notify).is_ok() {
                    waiting += 1;
                }
            }
        }
        while waiting > 0 {
            match self.irq_rx.recv_timeout(DEVICE_TIMEOUT) {
                Ok(PAGE_REQUEST_IRQ) => {
                    if let Err(e) = self.serve_page_requests(&mut plan) {
                        self.stats.fail(format!("round {round}: {e}"));
                        return false;
                    }
                }
                Ok(_) => waiting -= 1,
                Err(_) => {
                    self.stats.fail(format!(
                        "round {round}: a device did not complete within {DEVICE_TIMEOUT:?}"
                    ));
                    return false;
                }
            }
        }
        if let Some((j, _, _, served)) = &plan.demand {
            let index = self.passthrough[*j].index;
            self.stats.check(served.iter().all(|&s| s), || {
                format!("round {round}: passthrough device {index}: pages of its demand-paged buffer never requested: {served:?}")
            });
        }
        // Check, then unmap.
        for p in pending {
            match p {
                Pending::Emulated {
                    slot,
                    request,
                    tag,
                    buffer,
                    lazy,
                } => {
                    let s = &mut self.emulated[slot];
                    let index = s.driver.index;
                    match s.driver.complete(&mem) {
                        Ok(status) => {
                            let want = match request {
                                Request::Read | Request::Write => 0,
                                Request::BadIova | Request::ReadOnly => 1,
                            };
                            self.stats.check(status == want, || {
                                format!("emulated device {index} request {tag} ({request:?}): status {status}, expected {want}")
                            });
                        }
                        Err(e) => self
                            .stats
                            .fail(format!("emulated device {index} request {tag}: {e}")),
                    }
                    if let Some(buf) = buffer {
                        match request {
                            Request::Read => {
                                let bad = s.driver.dma.check_pattern(&mem, &buf, seed, index, tag);
                                self.stats.check(bad.is_none(), || {
                                    format!("emulated device {index} request {tag}: guest read back wrong data at offset {bad:?}")
                                });
                            }
                            Request::ReadOnly => {
                                let intact = s.driver.dma.check_fill(&mem, &buf, POISON);
                                self.stats.check(intact, || {
                                    format!("emulated device {index} request {tag}: read-only buffer was written")
                                });
                            }
                            _ => {}
                        }
                        if let Err(e) =
                            s.driver
                                .dma
                                .unmap(&mut self.machine.guest, &buf, lazy, &self.stats)
                        {
                            self.stats.fail(e);
                            return false;
                        }
                    }
                }
                Pending::Passthrough {
                    slot,
                    to_memory,
                    tag,
                    buffer,
                    lazy,
                } => {
                    let s = &mut self.passthrough[slot];
                    let status = read_status(&mem, s.dma.control_gpa(0));
                    self.stats
                        .check(status == status_word(tag, STATUS_DONE), || {
                            format!(
                                "passthrough device {} request {tag}: status {status:#x}",
                                s.index
                            )
                        });
                    if to_memory {
                        let bad = s.dma.check_pattern(&mem, &buffer, seed, s.index, tag);
                        self.stats.check(bad.is_none(), || {
                            format!("passthrough device {} request {tag}: guest read back wrong data at offset {bad:?}", s.index)
                        });
                    }
                    if let Err(e) = s
                        .dma
                        .unmap(&mut self.machine.guest, &buffer, lazy, &self.stats)
                    {
                        self.stats.fail(e);
                        return false;
                    }
                    if stale_probe == Some(slot) {
                        probe = Some((slot, buffer.iova, to_memory, tag));
                    }
                }
            }
        }
        if let Some((j, iova, to_memory, tag)) = probe {
            let s = &self.passthrough[j];
            let len = 64.min(4096 - (iova & 0xfff));
            let kind = if to_memory {
                CMD_TO_MEMORY
            } else {
                CMD_FROM_MEMORY
            };
            post_command(&mem, s.dma.control_gpa(0), kind, iova, len, tag | 0x80);
            let pri = s.host == PRI_DEVICE;
            if pri {
                plan.refuse = Some((s.sid, iova & !0xfff));
            }
            let sim = self.machine.hosts[s.host].sim.clone();
            let logged_before = sim.stats().host_log_faults;
            let sent = s
                .kick
                .as_ref()
                .is_some_and(|k| k.send(Kick::Notify).is_ok());
            let mut answered = sent;
            while answered {
                match self.irq_rx.recv_timeout(DEVICE_TIMEOUT) {
                    Ok(PAGE_REQUEST_IRQ) => {
                        if let Err(e) = self.serve_page_requests(&mut plan) {
                            self.stats.fail(format!("round {round}: {e}"));
                            return false;
                        }
                    }
                    Ok(_) => break,
                    Err(_) => answered = false,
                }
            }
            let s = &self.passthrough[j];
            if !answered {
                self.stats.fail(format!(
                    "round {round}: passthrough device {} did not answer the stale-IOVA command",
                    s.index
                ));
                return false;
            }
            let status = read_status(&mem, s.dma.control_gpa(0));
            self.stats.check(status == status_word(tag | 0x80, STATUS_ERROR), || {
                format!("passthrough device {}: DMA to an unmapped IOVA {iova:#x} gave status {status:#x}", s.index)
            });
            // An Intel host reports a non-recoverable DMA fault of a device without PRI to its
            // kernel log only (user space never sees it; drivers/iommu/intel/dmar.c
            // `dmar_fault_do_one`), so the guest gets no fault record: exactly one entry in the
            // host's log is the fault asked for.
            // A PRI device's miss is a page request instead (recoverable, PCIe base spec
            // 10.4): the guest must see exactly that one and refuse it, and the host log
            // nothing.
            let logged = sim.stats().host_log_faults - logged_before;
            if pri {
                let key = "passthrough page request refused (unmapped IOVA)";
                self.stats.fault_expected(key);
                for _ in 0..plan.refused {
                    self.stats.fault_seen(key);
                }
                self.stats.check(logged == 0, || {
                    format!("round {round}: a PRI device's miss went to the host log ({logged})")
                });
            } else {
                let key = "passthrough FirstStageNotPresent (host log)";
                self.stats.fault_expected(key);
                for _ in 0..logged {
                    self.stats.fault_seen(key);
                }
            }
        }
        // No host fault reaches user space here (see the probe above).
        let n = self.machine.binder.process_host_faults();
        self.stats
            .check(n == 0, || format!("round {round}: {n} host faults read"));
        self.handle_faults(&expected, round);
        self.account_events(&expected, plan.read);
        if round % REPLUG_EVERY == REPLUG_EVERY - 1 && !self.passthrough.is_empty() {
            let j = ((round / REPLUG_EVERY) % self.passthrough.len() as u64) as usize;
            if let Err(e) = self.replug(j) {
                self.stats.fail(e);
                return false;
            }
        }
        if let Err(e) = self.migration_step(round) {
            self.stats.fail(e);
            return false;
        }
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Starts a migration, runs a pre-copy round, or finishes one, as the round number says.
    fn migration_step(&mut self, round: u64) -> Result<(), String> {
        match &mut self.precopy {
            Some(p) if p.rounds() < PRECOPY_ROUNDS => {
                p.round(&self.machine.ram).map_err(|e| e.to_string())
            }
            Some(_) => self.finish_migration(),
            None if round % MIGRATE_EVERY == MIGRATE_AT => {
                self.precopy = Some(PreCopy::start(&self.machine).map_err(|e| e.to_string())?);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// IOTLB hits and misses of the unit, of the host IOMMUs, and the host invalidation
    /// entries, including those of the machines migrated away from.
    fn cache_figures(&self) -> [u64; 5] {
        let iotlb = self.machine.unit().stats().iotlb;
        let mut f = [iotlb.hits, iotlb.misses, 0, 0, 0];
        for h in &self.machine.hosts {
            let st = h.sim.stats();
            f[2] += st.iotlb_hits;
            f[3] += st.iotlb_misses;
            f[4] += st.invalidation_entries;
        }
        for (total, before) in f.iter_mut().zip(self.retired_figures) {
            *total += before;
        }
        f
    }

    fn stop_devices(&mut self) {
        for s in &mut self.emulated {
            let _ = s.kick.send(Kick::Stop);
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
        for s in &mut self.passthrough {
            if let Some(k) = s.kick.take() {
                let _ = k.send(Kick::Stop);
            }
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Stop-and-copy: the devices pause, the last dirty pages and the unit's state go to the
    /// target, the target's host side is realized (its own simulated host IOMMUs, binders and
    /// device registrations), the unit's state is restored (its binders bind from the restored
    /// tables), and the machine resumes there. Downtime runs from the pause to the resume,
    /// less the byte-for-byte comparison of the two RAMs that checks the dirty tracking.
    fn finish_migration(&mut self) -> Result<(), String> {
        let Some(pre) = self.precopy.take() else {
            return Ok(());
        };
        let paused = Instant::now();
        // Pause: the emulated and passthrough devices stop (the vCPU, this thread, is between
        // rounds), then the final round and the snapshot.
        self.stop_devices();
        let done = pre.finish(&self.machine).map_err(|e| e.to_string())?;
        // The target: its unit, its own host IOMMUs with the devices realized and registered,
        // then the incoming state (checked against those devices, imported, bindings replayed).
        let config = self.machine.unit().config().clone();
        let target = done.target.clone();
        let sink = Arc::new(vtd_core::RecordingSink::default());
        let unit = Arc::new(
            vtd_core::VtdUnit::new(config, target.clone(), sink.clone())
                .map_err(|e| format!("migration target: {e}"))?,
        );
        let log = Arc::new(vtd_core::EventLog::default());
        unit.subscribe(log.clone());
        let (binder, hosts) = crate::machine::build_hosts(&unit, &done.target_dev)
            .map_err(|e| format!("migration target: {e}"))?;
        self.stats
            .bindings
            .fetch_add(hosts.len() as u64, Ordering::Relaxed);
        vtd_migrate::restore_with_binder(&unit, &binder, &done.snapshot)
            .map_err(|e| format!("migration: restoring the unit: {e}"))?;
        let compare = Instant::now();
        let difference = done.first_difference(&self.machine.ram);
        let compared = compare.elapsed();
        self.stats.check(difference.is_none(), || {
            format!("migration: target RAM differs from the source at {difference:x?} (a dirty page was missed)")
        });
        self.retired_figures = self.cache_figures();
        let source = std::mem::replace(&mut self.machine.ram, target.clone());
        self.machine.dev_ram = done.target_dev.clone();
        let guest = &mut self.machine.guest;
        guest.mem = target;
        guest.unit = unit;
        guest.sink = sink;
        guest.log = log;
        self.machine.hosts = hosts;
        self.machine.binder = binder;
        if let Some(server) = self.inspector.take() {
            // The inspector follows the machine: a client reconnects to the same socket.
            let path = server.path().to_path_buf();
            drop(server);
            self.inspector = Some(inspect::serve(
                self.machine.unit(),
                &self.machine.binder,
                &path,
            )?);
        }
        for j in 0..self.passthrough.len() {
            self.check_bound(j, "after migration");
        }
        for i in 0..self.emulated.len() {
            self.start_emulated(i);
        }
        for j in 0..self.passthrough.len() {
            self.start_passthrough(j);
        }
        drop(source);
        let downtime = paused.elapsed().saturating_sub(compared);
        self.migrations.add(&done, downtime);
        self.stats.migrations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The guest's fault handler (Linux drivers/iommu/intel/dmar.c `dmar_fault`): from
    /// FSTS.FRI, read each record with F set, clear F, then clear FSTS's PFO/PPF/PRO; each
    /// record must be one the round asked for, and each asked-for fault must be found.
    fn handle_faults(&mut self, expected: &[ExpectedFault], round: u64) {
        let guest: &Guest<Ram> = &self.machine.guest;
        let cap = guest.unit.config().cap();
        let records = u64::from(cap.nfr()) + 1;
        let fro = cap.fault_recording_offset();
        let fsts = guest.fsts();
        let mut seen = Vec::new();
        if fsts.ppf() {
            let mut index = u64::from(fsts.fri()) % records;
            for _ in 0..records {
                let (lo, hi) = guest.frcd(index);
                if hi & FRCD_HI_F == 0 {
                    break;
                }
                seen.push(ExpectedFault {
                    sid: hi as u16,
                    reason: FaultReason::from_code((hi >> 32) as u8)
                        .unwrap_or(FaultReason::ReadNotPermitted),
                    page: lo & !0xfff,
                    // FRCD T1 (bit 126): 1 = read request, 0 = write request.
                    write: hi & (1 << 62) == 0,
                    // PP (bit 95) and PV (bits 123:104).
                    pasid: (hi & (1 << 31) != 0).then_some((hi >> 40) as u32 & 0xf_ffff),
                });
                guest.w32(fro + 16 * index + 12, 1 << 31);
                index = (index + 1) % records;
            }
        }
        self.stats.check(!fsts.pfo(), || {
            format!("round {round}: primary fault overflow")
        });
        guest.w32(
            reg::FSTS,
            Fsts::new()
                .with_pfo(true)
                .with_ppf(true)
                .with_pro(true)
                .into_bits(),
        );
        // Keyed by path and reason: passthrough faults come from the host IOMMU through the
        // binder, emulated ones from the unit's own walks.
        let passthrough: Vec<u16> = self.passthrough.iter().map(|p| p.sid).collect();
        let key = |f: &ExpectedFault| {
            let path = if passthrough.contains(&f.sid) {
                "passthrough"
            } else {
                "emulated"
            };
            format!("{path} {:?}", f.reason)
        };
        for f in &seen {
            self.stats.fault_seen(&key(f));
        }
        for f in expected {
            self.stats.fault_expected(&key(f));
        }
        self.stats.check(seen == expected, || {
            format!("round {round}: fault records {seen:x?}, expected {expected:x?}")
        });
    }

    /// Counts what the unit published since the last round: invalidations by descriptor type,
    /// and DMA faults (each must have been recorded, and only the asked-for ones may occur).
    fn account_events(&mut self, expected: &[ExpectedFault], page_requests: u64) {
        let mut faults = 0;
        let mut queued = 0;
        for e in self.machine.guest.log.take() {
            match e {
                VtdEvent::Invalidation { desc, .. } => self.stats.invalidation(match desc {
                    InvDesc::ContextCache(_) => "context-cache",
                    InvDesc::Iotlb(_) => "iotlb",
                    InvDesc::DeviceTlb(_) => "device-tlb",
                    InvDesc::Iec(_) => "interrupt-entry-cache",
                    InvDesc::Wait(_) => "wait",
                    InvDesc::PageGroupResponse(_) => "page-group-response",
                    InvDesc::PasidIotlb(_) => "pasid-iotlb",
                    InvDesc::PasidCache(_) => "pasid-cache",
                    InvDesc::PasidDeviceTlb(_) => "pasid-device-tlb",
                }),
                VtdEvent::WaitCompleted { .. } => self.stats.invalidation("wait"),
                VtdEvent::PageRequestQueued { .. } => queued += 1,
                VtdEvent::DmaFault { fault, disposition } => {
                    faults += 1;
                    self.stats.check(
                        matches!(disposition, FaultDisposition::Recorded { .. }),
                        || format!("fault {fault:?} was not recorded: {disposition:?}"),
                    );
                }
                _ => {}
            }
        }
        self.stats.check(faults == expected.len(), || {
            format!("{faults} DMA fault events, {} asked for", expected.len())
        });
        // Every page request the unit queued was one the guest's handler read (none left in
        // the queue, none lost).
        self.stats.check(queued == page_requests, || {
            format!("{queued} page requests queued, {page_requests} read by the guest")
        });
        // Page request events (spec 7.5.1.1): at most one per request, at least one when
        // there were any (the handler clears PRS.PPR before it reads the queue).
        let (prq_msis, msis): (Vec<_>, Vec<_>) = self
            .machine
            .guest
            .sink
            .take()
            .into_iter()
            .partition(|m| m.data == PAGE_REQUEST_MSI_DATA);
        let prq_msis = prq_msis.len() as u64;
        self.stats.check(
            prq_msis <= page_requests && (page_requests == 0 || prq_msis > 0),
            || format!("{prq_msis} page request interrupts for {page_requests} page requests"),
        );
        // Each recorded fault found PPF clear (the handler cleared the last one), so each raised
        // one fault event interrupt (spec 7.3.1); nothing else interrupts in this workload.
        self.stats.check(msis.len() == expected.len(), || {
            format!(
                "{} interrupts for {} faults: {msis:x?}",
                msis.len(),
                expected.len()
            )
        });
    }

    /// The guest's page request handler (Linux drivers/iommu/intel/prq.c
    /// `prq_event_thread`, then the IOPF handler): the VMM first moves the host's page
    /// requests into the unit's queue (it was woken by the host fault queue's eventfd), then
    /// the guest reads its queue and answers each request that ends a group. A request for a
    /// page of the round's demand-paged buffer maps that page (with the buffer's access) and is
    /// answered Success; the probe's page is answered Invalid Request; anything else fails
    /// the run (and is refused, so the device does not wait forever).
    fn serve_page_requests(&mut self, plan: &mut PageRequestPlan) -> Result<(), String> {
        self.machine.binder.process_host_faults();
        let batch = self.machine.guest.read_page_requests();
        self.stats.check(!batch.overflow_cleared, || {
            "page request queue overflow".to_owned()
        });
        for req in batch.requests {
            let req = req.map_err(|e| format!("undecodable page request: {e:?}"))?;
            plan.read += 1;
            let code = self.page_in(plan, &req)?;
            if req.last_in_group {
                self.machine.guest.respond(&req, code);
            }
        }
        Ok(())
    }

    /// Pages in what `req` asks for if the plan allows it; the answer.
    fn page_in(
        &mut self,
        plan: &mut PageRequestPlan,
        req: &PageRequestDescriptor,
    ) -> Result<ResponseCode, String> {
        if plan.refuse == Some((req.rid, req.address)) {
            plan.refuse = None;
            plan.refused += 1;
            return Ok(ResponseCode::InvalidRequest);
        }
        if let Some((j, buf, device_writes, served)) = &mut plan.demand {
            let slot = &mut self.passthrough[*j];
            let page = req
                .address
                .checked_sub(buf.map_iova)
                .filter(|&off| off < buf.map_len)
                .map(|off| (off / 4096) as usize);
            let ours = req.rid == slot.sid
                && req.pasid == (slot.pasid != 0).then_some(slot.pasid)
                && req.write == *device_writes
                && !req.execute
                && !req.privileged;
            if let Some(p) = page.filter(|&p| ours && !served[p]) {
                slot.dma.map_page(
                    &mut self.machine.guest,
                    buf,
                    req.address,
                    *device_writes,
                    &self.stats,
                )?;
                served[p] = true;
                self.stats.page_requests.fetch_add(1, Ordering::Relaxed);
                return Ok(ResponseCode::Success);
            }
        }
        self.stats.fail(format!("unexpected page request {req:x?}"));
        Ok(ResponseCode::InvalidRequest)
    }

    /// Hot-unplugs passthrough device `j` and plugs it back: the guest releases it as Linux's
    /// `intel_iommu_release_device` does (tables unmapped, PASID entry torn down, context
    /// entry cleared, each with its invalidations), the VMM unregisters it from its binder
    /// (the host puts it back on its default HWPT) and stops its thread; then the VMM
    /// registers it again and restarts the thread, and the guest probes it again.
    fn replug(&mut self, j: usize) -> Result<(), String> {
        let slot = &mut self.passthrough[j];
        let guest = &mut self.machine.guest;
        let host = &self.machine.hosts[slot.host];
        // Guest: remove.
        slot.dma.flush(guest);
        slot.dma.unmap_control(guest)?;
        guest
            .detach_first_stage(&self.tables, &slot.dma.domain)
            .map_err(|e| format!("unplug: PASID teardown: {e}"))?;
        guest
            .release_device(&mut self.tables, slot.sid, &[slot.did])
            .map_err(|e| format!("unplug: context teardown: {e}"))?;
        // VMM: stop the device, unregister it.
        if let Some(k) = slot.kick.take() {
            let _ = k.send(Kick::Stop);
        }
        if let Some(t) = slot.thread.take() {
            let _ = t.join();
        }
        let binder = &self.machine.binder;
        let device = binder
            .unregister(host.bdf)
            .map_err(|e| format!("unplug: {e}"))?;
        // The host put the device back on its default HWPT, with nothing else attached.
        let attached = device
            .iommufd_ids()
            .map(|(dev_id, parent)| (host.sim.attachments(dev_id), parent));
        self.stats.check(
            attached
                .as_ref()
                .is_some_and(|(a, parent)| a.len() == 1 && a.get(&None) == Some(parent)),
            || format!("unplug: host attachments {attached:?}, expected only the default HWPT"),
        );
        self.stats.unplugs.fetch_add(1, Ordering::Relaxed);
        // VMM: plug it back (VFIO realize), then the guest probes it.
        binder
            .register(host.bdf, device, PciTopology::default())
            .map_err(|e| format!("replug: {e}"))?;
        self.stats.bindings.fetch_add(1, Ordering::Relaxed);
        guest
            .setup_device(
                &mut self.tables,
                slot.sid,
                slot.pasid != 0,
                slot.host == PRI_DEVICE,
            )
            .map_err(|e| format!("replug: {e}"))?;
        slot.dma.domain = guest
            .attach_first_stage_table(&self.tables, slot.sid, slot.pasid, slot.did, slot.fs_root)
            .map_err(|e| format!("replug: {e}"))?;
        slot.dma.map_control(guest, &self.stats)?;
        // With caching mode off the guest announces new context and PASID entries with no
        // invalidation (Linux `device_pasid_table_setup`, `pasid_flush_caches`), so nothing
        // tells the binder about them. The VMM sees the driver enable bus mastering in the
        // device's PCI command register (a config write it traps) before any DMA, and
        // re-evaluates the bindings there.
        binder.resync_all();
        self.check_bound(j, "replug");
        self.start_passthrough(j);
        self.stats.replugs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
