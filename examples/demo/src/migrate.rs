//! Live migration of the whole machine into fresh guest RAM and a fresh unit.
//!
//! Pre-copy as a VMM does it: guest RAM's dirty bitmap (vm-memory's `AtomicBitmap`) is cleared,
//! all of RAM is copied while the devices keep running, then a few rounds copy only the pages
//! dirtied since the previous round, and finally, with the devices paused, the last dirty pages
//! and the unit's state go across and the machine resumes on the target. The pages written by
//! the unit itself (wait-descriptor status, A/D bits), by the guest and by the passthrough
//! devices (the simulated host IOMMUs write guest RAM through vm-memory) are marked dirty by
//! vm-memory; the emulated devices mark theirs (see `emulated.rs`). After the final round the
//! target's RAM is compared with the source's byte for byte: a page the dirty tracking missed
//! fails the run.
//!
//! The unit's state crosses as `vtd_core::UnitSnapshot` (`VtdUnit::snapshot`/`restore`);
//! vtd-migrate's versioned byte format takes its place when that crate is available.

use std::time::Duration;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::machine::{MachineError, Ram, new_ram};
use crate::stats::MigrationSummary;

/// Pre-copy rounds after the full copy, before the stop-and-copy.
pub const PRECOPY_ROUNDS: u32 = 3;
const PAGE: u64 = 4096;

/// A migration in progress: the target's RAM and what was sent so far.
pub struct PreCopy {
    /// The target's RAM.
    pub target: Ram,
    rounds: u32,
    pages: u64,
    buf: Vec<u8>,
}

impl std::fmt::Debug for PreCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreCopy")
            .field("rounds", &self.rounds)
            .field("pages", &self.pages)
            .finish_non_exhaustive()
    }
}

fn bitmap(ram: &Ram) -> Option<&AtomicBitmap> {
    ram.iter().next().map(|r| {
        // The mmap region's own bitmap (the whole region), not a slice of it.
        let region: &vm_memory::MmapRegion<AtomicBitmap> = r;
        region.bitmap()
    })
}

impl PreCopy {
    /// Starts a migration of `source`: clears its dirty log, then copies all of it.
    pub fn start(source: &Ram) -> Result<Self, MachineError> {
        let size = source.last_addr().0 + 1;
        let target = new_ram(size)?;
        if let Some(b) = bitmap(source) {
            b.reset();
        }
        let mut p = Self {
            target,
            rounds: 0,
            pages: 0,
            buf: vec![0; PAGE as usize],
        };
        for page in 0..size / PAGE {
            p.copy(source, page);
        }
        Ok(p)
    }

    fn copy(&mut self, source: &Ram, page: u64) {
        let at = GuestAddress(page * PAGE);
        if source.read_slice(&mut self.buf, at).is_ok() {
            let _ = self.target.write_slice(&self.buf, at);
        }
        self.pages += 1;
    }

    /// One round: the pages dirtied since the previous one. Returns how many were sent.
    pub fn round(&mut self, source: &Ram) -> u64 {
        let Some(words) = bitmap(source).map(|b| b.get_and_reset()) else {
            return 0;
        };
        let mut sent = 0;
        for (w, word) in words.into_iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let bit = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                self.copy(source, w as u64 * 64 + bit);
                sent += 1;
            }
        }
        self.rounds += 1;
        sent
    }

    /// Pre-copy rounds done.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// Pages sent, the full copy included.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The first page where target and source differ, if any (after the final round, with the
    /// machine paused, there must be none).
    pub fn first_difference(&mut self, source: &Ram) -> Option<u64> {
        let size = source.last_addr().0 + 1;
        let mut theirs = vec![0u8; PAGE as usize];
        for page in 0..size / PAGE {
            let at = GuestAddress(page * PAGE);
            let ok = source.read_slice(&mut self.buf, at).is_ok()
                && self.target.read_slice(&mut theirs, at).is_ok();
            if !ok || self.buf != theirs {
                let i = self.buf.iter().zip(&theirs).position(|(a, b)| a != b);
                eprintln!(
                    "DEBUG diff at {:#x} + {i:?}: src {:x?} dst {:x?}",
                    page * PAGE,
                    i.map(|i| &self.buf[i.saturating_sub(4)..i + 8]),
                    i.map(|i| &theirs[i.saturating_sub(4)..i + 8])
                );
                return Some(page * PAGE);
            }
        }
        None
    }

    /// Resets the target's dirty log (the copies marked it) before it runs.
    pub fn target_clean(&self) {
        if let Some(b) = bitmap(&self.target) {
            b.reset();
        }
    }
}

/// Migration totals.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    summary: MigrationSummary,
}

impl Totals {
    /// Records one completed migration.
    pub fn add(&mut self, rounds: u32, pages: u64, downtime: Duration) {
        let s = &mut self.summary;
        s.migrations += 1;
        s.precopy_rounds += u64::from(rounds);
        s.dirty_pages += pages;
        s.max_downtime_us = s.max_downtime_us.max(downtime.as_micros() as u64);
    }

    /// The summary's figures.
    pub fn summary(&self) -> MigrationSummary {
        self.summary.clone()
    }
}
