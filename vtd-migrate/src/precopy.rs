//! The pre-copy loop of a live migration: start dirty tracking everywhere guest memory can be
//! written behind the VMM's back, collect and clear the dirty pages round by round while the
//! guest runs, then a final round with the guest paused, together with the unit's snapshot.
//!
//! Writers to guest memory come in two kinds, and each has its own log:
//! - the VMM's process (vCPUs through KVM's dirty log, emulated devices, and this unit's own
//!   writes: wait status, A/D bits), which vm-memory's `AtomicBitmap` records
//!   ([`GuestMemoryDirtyLog`]);
//! - passthrough devices, whose DMA the host IOMMU performs: only the host IOMMU's dirty bits
//!   in the nest parent's second stage see it (iommufd `IOMMU_HWPT_SET_DIRTY_TRACKING` /
//!   `IOMMU_HWPT_GET_DIRTY_BITMAP`).
//!
//! [`PreCopy`] drives any number of [`DirtyTracker`]s in lock step, so a round's page set is
//! the union of all writers. The guarantee the final round gives: every page written since
//! tracking started was reported in some round after its last write, provided the VMM
//! quiesced every writer (vCPUs paused, emulated devices stopped, passthrough devices stopped
//! through VFIO) before [`PreCopy::finish`].

use std::collections::BTreeSet;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vtd_core::VtdUnit;
use vtd_tables::GuestRam;

/// Pages are tracked at 4 KiB, the granularity of vm-memory's bitmap and of the IOMMU's
/// dirty bits for 4 KiB mappings.
pub const DIRTY_PAGE_SIZE: u64 = 4096;

/// Why dirty tracking failed. Names the tracker.
#[derive(Debug, thiserror::Error)]
#[error("dirty tracking of {tracker}: {reason}")]
pub struct DirtyError {
    /// The tracker's name.
    pub tracker: String,
    /// What failed.
    pub reason: String,
}

/// Guest-physical page addresses (4 KiB aligned) dirtied in a round, sorted and unique.
pub type DirtyPages = BTreeSet<u64>;

/// One dirty log.
pub trait DirtyTracker: Send {
    /// A name for errors ("guest memory", "passthrough 01:00.0 nest parent").
    fn name(&self) -> String;
    /// Starts tracking: what was written before no longer counts.
    fn start(&mut self) -> Result<(), DirtyError>;
    /// Adds the pages dirtied since the last collection (or `start`) to `pages` and clears
    /// them in the log.
    fn collect(&mut self, pages: &mut DirtyPages) -> Result<(), DirtyError>;
    /// Stops tracking.
    fn stop(&mut self) -> Result<(), DirtyError>;
}

/// vm-memory's dirty bitmap of `GuestMemoryMmap<AtomicBitmap>`: what the VMM's own threads
/// write, the unit's writes included.
#[derive(Debug, Clone)]
pub struct GuestMemoryDirtyLog {
    mem: GuestMemoryMmap<AtomicBitmap>,
}

impl GuestMemoryDirtyLog {
    /// The log of `mem` (a clone shares the regions and their bitmaps).
    pub fn new(mem: GuestMemoryMmap<AtomicBitmap>) -> Self {
        Self { mem }
    }

    fn drain(&self, mut page: impl FnMut(u64)) {
        for region in self.mem.iter() {
            let start = region.start_addr().0;
            let mapping = region.get_mmap();
            let bitmap = mapping.bitmap();
            // `AtomicBitmap::new` in `from_ranges` uses the host page size; report in its
            // units, split to 4 KiB pages.
            let unit = (bitmap.byte_size() as u64)
                .div_ceil(bitmap.len().max(1) as u64)
                .max(DIRTY_PAGE_SIZE);
            for (word_index, word) in bitmap.get_and_reset().into_iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let bit = bits.trailing_zeros() as u64;
                    bits &= bits - 1;
                    let base = start + (word_index as u64 * 64 + bit) * unit;
                    for sub in (0..unit).step_by(DIRTY_PAGE_SIZE as usize) {
                        page(base + sub);
                    }
                }
            }
        }
    }
}

impl DirtyTracker for GuestMemoryDirtyLog {
    fn name(&self) -> String {
        "guest memory".into()
    }

    fn start(&mut self) -> Result<(), DirtyError> {
        self.drain(|_| {});
        Ok(())
    }

    fn collect(&mut self, pages: &mut DirtyPages) -> Result<(), DirtyError> {
        self.drain(|p| {
            pages.insert(p);
        });
        Ok(())
    }

    fn stop(&mut self) -> Result<(), DirtyError> {
        Ok(())
    }
}

/// A pre-copy migration in progress.
pub struct PreCopy {
    trackers: Vec<Box<dyn DirtyTracker>>,
    rounds: u32,
}

impl std::fmt::Debug for PreCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreCopy")
            .field(
                "trackers",
                &self.trackers.iter().map(|t| t.name()).collect::<Vec<_>>(),
            )
            .field("rounds", &self.rounds)
            .finish()
    }
}

/// What the final round hands over.
#[derive(Debug)]
pub struct FinalRound {
    /// Pages dirtied since the previous round: copy them before the target resumes.
    pub pages: DirtyPages,
    /// The unit's snapshot.
    pub snapshot: Vec<u8>,
}

impl PreCopy {
    /// Starts every tracker. If one fails, those already started are stopped again.
    pub fn start(mut trackers: Vec<Box<dyn DirtyTracker>>) -> Result<Self, DirtyError> {
        for i in 0..trackers.len() {
            let Some(tracker) = trackers.get_mut(i) else {
                break;
            };
            if let Err(e) = tracker.start() {
                for t in trackers.iter_mut().take(i) {
                    let _ = t.stop();
                }
                return Err(e);
            }
        }
        Ok(Self {
            trackers,
            rounds: 0,
        })
    }

    /// One round while the guest runs: the pages dirtied since the last round (or the start),
    /// from every tracker, cleared in each.
    pub fn round(&mut self) -> Result<DirtyPages, DirtyError> {
        let mut pages = DirtyPages::new();
        for t in &mut self.trackers {
            t.collect(&mut pages)?;
        }
        self.rounds += 1;
        Ok(pages)
    }

    /// Rounds collected so far (the final one excluded).
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// The final round, with every writer quiesced: the last dirty pages and the unit's
    /// snapshot (`save` produces it, e.g. [`crate::save`]); tracking stops.
    pub fn finish<M: GuestRam + Send + Sync>(
        mut self,
        unit: &VtdUnit<M>,
        save: impl FnOnce(&VtdUnit<M>) -> Vec<u8>,
    ) -> Result<FinalRound, DirtyError> {
        // The snapshot first: saving writes no guest memory, and the pages collected after it
        // cover everything written up to the pause.
        let snapshot = save(unit);
        let pages = self.round()?;
        for t in &mut self.trackers {
            t.stop()?;
        }
        self.trackers.clear();
        Ok(FinalRound { pages, snapshot })
    }
}

impl Drop for PreCopy {
    /// An abandoned migration stops tracking (the source keeps running).
    fn drop(&mut self) {
        for t in &mut self.trackers {
            let _ = t.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A tracker that records calls, reports `pages` each round, and fails `start` if asked.
    struct Fake {
        name: &'static str,
        calls: Arc<Mutex<Vec<String>>>,
        pages: Vec<u64>,
        fail_start: bool,
    }

    impl DirtyTracker for Fake {
        fn name(&self) -> String {
            self.name.into()
        }
        fn start(&mut self) -> Result<(), DirtyError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("start {}", self.name));
            if self.fail_start {
                return Err(DirtyError {
                    tracker: self.name(),
                    reason: "no dirty tracking on this host".into(),
                });
            }
            Ok(())
        }
        fn collect(&mut self, pages: &mut DirtyPages) -> Result<(), DirtyError> {
            pages.extend(self.pages.drain(..));
            Ok(())
        }
        fn stop(&mut self) -> Result<(), DirtyError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("stop {}", self.name));
            Ok(())
        }
    }

    fn fake(name: &'static str, calls: &Arc<Mutex<Vec<String>>>, pages: &[u64]) -> Box<Fake> {
        Box::new(Fake {
            name,
            calls: calls.clone(),
            pages: pages.to_vec(),
            fail_start: false,
        })
    }

    #[test]
    fn a_failed_start_stops_the_trackers_already_started() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut b = fake("b", &calls, &[]);
        b.fail_start = true;
        let err =
            PreCopy::start(vec![fake("a", &calls, &[]), b, fake("c", &calls, &[])]).unwrap_err();
        assert_eq!(err.tracker, "b");
        assert_eq!(*calls.lock().unwrap(), ["start a", "start b", "stop a"]);
    }

    #[test]
    fn rounds_union_the_trackers_and_dropping_stops_them() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut p = PreCopy::start(vec![
            fake("a", &calls, &[0x1000, 0x3000]),
            fake("b", &calls, &[0x3000, 0x2000]),
        ])
        .unwrap();
        assert_eq!(
            p.round().unwrap().into_iter().collect::<Vec<_>>(),
            [0x1000, 0x2000, 0x3000]
        );
        assert!(p.round().unwrap().is_empty(), "collected pages are cleared");
        assert_eq!(p.rounds(), 2);
        drop(p);
        assert_eq!(
            *calls.lock().unwrap(),
            ["start a", "start b", "stop a", "stop b"]
        );
    }
}
