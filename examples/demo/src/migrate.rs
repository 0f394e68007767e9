//! Live migration of the whole machine into fresh guest RAM, a fresh unit and fresh host
//! IOMMUs, with vtd-migrate.
//!
//! Pre-copy as a VMM does it ([`vtd_migrate::PreCopy`]): two dirty logs run in lock step, guest
//! memory's (vm-memory's `AtomicBitmap`: the guest, the emulated devices, the unit's own status
//! and A/D writes) and each nest parent's on the host IOMMUs ([`vtd_migrate::HwptDirtyLog`]:
//! the passthrough devices' DMA, which never passes through vm-memory). All of RAM is copied
//! while the devices keep running, then a few rounds copy only the pages dirtied since the
//! previous round, and the final round, with the devices paused, takes the last dirty pages and
//! the unit's snapshot with its passthrough devices (`save_with_binder`). The target realizes
//! its devices on its own host IOMMUs, then `restore_with_binder` checks them against the
//! snapshot, imports the unit's state and replays every binding. After the final round the
//! target's RAM is compared with the source's byte for byte: a page a dirty log missed fails
//! the run.

use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vtd_migrate::{DirtyTracker, GuestMemoryDirtyLog, HwptDirtyLog};

use crate::machine::{DevRam, Machine, MachineError, Ram, new_ram};
use crate::stats::MigrationSummary;

/// Pre-copy rounds after the full copy, before the stop-and-copy.
pub const PRECOPY_ROUNDS: u32 = 3;
const PAGE: u64 = 4096;

/// A migration in progress: the dirty logs, the target's RAM, what was sent so far.
pub struct PreCopy {
    tracking: vtd_migrate::PreCopy,
    /// The target's RAM (the VMM's view).
    pub target: Ram,
    /// The target's RAM as its host IOMMUs reach it.
    pub target_dev: DevRam,
    pages: u64,
    buf: Vec<u8>,
}

impl std::fmt::Debug for PreCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreCopy")
            .field("tracking", &self.tracking)
            .field("pages", &self.pages)
            .finish_non_exhaustive()
    }
}

/// Why a migration step failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The target machine.
    #[error("migration target: {0}")]
    Target(#[from] MachineError),
    /// A dirty log.
    #[error("migration: {0}")]
    Dirty(#[from] vtd_migrate::DirtyError),
}

impl PreCopy {
    /// Starts a migration of `machine`: starts both dirty logs, then copies all of RAM.
    pub fn start(machine: &Machine) -> Result<Self, MigrationError> {
        let size = machine.ram.last_addr().0 + 1;
        let (target, target_dev) = new_ram(size)?;
        let mut trackers: Vec<Box<dyn DirtyTracker>> =
            vec![Box::new(GuestMemoryDirtyLog::new(machine.ram.clone()))];
        for log in HwptDirtyLog::for_binder(&machine.binder, &[(0, size)]) {
            trackers.push(Box::new(log));
        }
        let tracking = vtd_migrate::PreCopy::start(trackers)?;
        let mut p = Self {
            tracking,
            target,
            target_dev,
            pages: 0,
            buf: vec![0; PAGE as usize],
        };
        for page in 0..size / PAGE {
            p.copy(&machine.ram, page * PAGE);
        }
        Ok(p)
    }

    fn copy(&mut self, source: &Ram, gpa: u64) {
        copy_page(source, &self.target, &mut self.buf, gpa);
        self.pages += 1;
    }

    /// One round while the machine runs: the pages dirtied since the previous one.
    pub fn round(&mut self, source: &Ram) -> Result<(), MigrationError> {
        for gpa in self.tracking.round()? {
            self.copy(source, gpa);
        }
        Ok(())
    }

    /// Pre-copy rounds done.
    pub fn rounds(&self) -> u32 {
        self.tracking.rounds()
    }

    /// The final round, with every writer paused: the last dirty pages are copied and the
    /// unit's snapshot with its passthrough devices is returned.
    pub fn finish(self, machine: &Machine) -> Result<Finished, MigrationError> {
        let Self {
            tracking,
            target,
            target_dev,
            mut pages,
            mut buf,
        } = self;
        let rounds = tracking.rounds() + 1;
        let last = tracking.finish(machine.unit(), |u| {
            vtd_migrate::save_with_binder(u, &machine.binder)
        })?;
        for gpa in last.pages {
            copy_page(&machine.ram, &target, &mut buf, gpa);
            pages += 1;
        }
        Ok(Finished {
            rounds,
            pages,
            snapshot: last.snapshot,
            target,
            target_dev,
        })
    }
}

/// Copies one page of guest RAM from `source` to `target` (the migration stream, in process).
fn copy_page(source: &Ram, target: &Ram, buf: &mut [u8], gpa: u64) {
    let at = GuestAddress(gpa);
    if source.read_slice(buf, at).is_ok() {
        let _ = target.write_slice(buf, at);
    }
}

/// What the stop-and-copy hands to the target.
#[derive(Debug)]
pub struct Finished {
    /// Rounds, the final one included.
    pub rounds: u32,
    /// Pages sent, the full copy included.
    pub pages: u64,
    /// The unit's state and its passthrough devices (vtd-migrate's format).
    pub snapshot: Vec<u8>,
    /// The target's RAM.
    pub target: Ram,
    /// The same, as the target's host IOMMUs reach it.
    pub target_dev: DevRam,
}

impl Finished {
    /// The first page where the target's RAM differs from `source`, if any.
    pub fn first_difference(&self, source: &Ram) -> Option<u64> {
        let size = source.last_addr().0 + 1;
        let (mut ours, mut theirs) = (vec![0u8; PAGE as usize], vec![0u8; PAGE as usize]);
        (0..size / PAGE).map(|p| p * PAGE).find(|&gpa| {
            let at = GuestAddress(gpa);
            let ok = source.read_slice(&mut ours, at).is_ok()
                && self.target.read_slice(&mut theirs, at).is_ok();
            !ok || ours != theirs
        })
    }
}

/// Migration totals.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    summary: MigrationSummary,
}

impl Totals {
    /// Records one completed migration.
    pub fn add(&mut self, done: &Finished, downtime: Duration) {
        let s = &mut self.summary;
        s.migrations += 1;
        s.precopy_rounds += u64::from(done.rounds);
        s.dirty_pages += done.pages;
        s.snapshot_bytes = done.snapshot.len() as u64;
        s.max_downtime_us = s.max_downtime_us.max(downtime.as_micros() as u64);
    }

    /// The summary's figures.
    pub fn summary(&self) -> MigrationSummary {
        self.summary.clone()
    }
}
