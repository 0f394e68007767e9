//! Guest RAM that counts and checks every access the code under test makes.
//!
//! The unit and the walkers reach guest memory only through [`vtd_tables::GuestRam`], so a
//! wrapper sees everything they do: it counts accesses per view (a target asserts a bound
//! per operation: no guest value may make the work unbounded), checks that each access is
//! small and that every access that succeeded lies inside RAM, and tracks which 8-byte
//! words were written (for the unit target's cache-coherence oracle: a cached translation
//! may only differ from a fresh walk if the guest rewrote a word that walk reads).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd_tables::{GuestRam, MemError};

/// The largest single access the unit makes: a 256-bit descriptor or a page request
/// descriptor (32 bytes); table entries are read a u64 at a time.
pub const MAX_ACCESS_LEN: usize = 64;

/// What the wrapper recorded about writes and reads.
#[derive(Debug, Default)]
pub struct Tracking {
    /// Words written with plain writes since the harness last took them.
    pub writes: BTreeSet<u64>,
    /// Words changed by compare-exchange (A/D updates) since the harness last took them.
    pub cas_writes: BTreeSet<u64>,
    /// Words read by view 1 while recording.
    pub reads: Option<BTreeSet<u64>>,
}

/// The memory and counters shared by the views.
#[derive(Debug)]
pub struct Shared {
    mem: GuestMemoryMmap<()>,
    size: u64,
    accesses: [AtomicU64; 2],
    tracking: Mutex<Tracking>,
}

/// One view of the shared RAM (the unit under test is view 0, a fresh comparison unit view 1).
#[derive(Debug, Clone)]
pub struct CountingRam {
    shared: Arc<Shared>,
    view: usize,
}

fn words(gpa: u64, len: usize) -> impl Iterator<Item = u64> {
    let first = gpa & !7;
    let last = gpa.saturating_add(len.max(1) as u64 - 1) & !7;
    (first..=last).step_by(8)
}

impl CountingRam {
    /// `size` bytes of zeroed RAM at guest-physical 0 (mapped lazily: untouched pages cost
    /// nothing).
    pub fn new(size: u64) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])
            .expect("the harness's RAM size is a valid mapping");
        Self {
            shared: Arc::new(Shared {
                mem,
                size,
                accesses: [AtomicU64::new(0), AtomicU64::new(0)],
                tracking: Mutex::new(Tracking::default()),
            }),
            view: 0,
        }
    }

    /// Another view of the same RAM with its own access counter (0 or 1).
    pub fn view(&self, view: usize) -> Self {
        Self {
            shared: self.shared.clone(),
            view: view.min(1),
        }
    }

    /// RAM size.
    pub fn size(&self) -> u64 {
        self.shared.size
    }

    /// Accesses of this view so far.
    pub fn accesses(&self) -> u64 {
        self.shared.accesses[self.view].load(Ordering::Relaxed)
    }

    /// The write/read tracking.
    pub fn tracking(&self) -> MutexGuard<'_, Tracking> {
        self.shared
            .tracking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Direct access to the memory, for the harness's own writes (not counted).
    pub fn mem(&self) -> &GuestMemoryMmap<()> {
        &self.shared.mem
    }

    fn account(&self, gpa: u64, len: usize, ok: bool) {
        self.shared.accesses[self.view].fetch_add(1, Ordering::Relaxed);
        assert!(
            len <= MAX_ACCESS_LEN,
            "access of {len} bytes at {gpa:#x}: larger than any structure the unit reads"
        );
        if ok {
            assert!(
                gpa.checked_add(len as u64)
                    .is_some_and(|end| end <= self.shared.size),
                "access of {len} bytes at {gpa:#x} succeeded outside RAM"
            );
        }
    }
}

impl GuestRam for CountingRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let r = GuestRam::read(&self.shared.mem, gpa, buf);
        self.account(gpa, buf.len(), r.is_ok());
        if self.view == 1
            && let Some(reads) = self.tracking().reads.as_mut()
        {
            reads.extend(words(gpa, buf.len()));
        }
        r
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        let r = GuestRam::write(&self.shared.mem, gpa, buf);
        self.account(gpa, buf.len(), r.is_ok());
        if r.is_ok() {
            self.tracking().writes.extend(words(gpa, buf.len()));
        }
        r
    }

    fn compare_exchange_u64(
        &self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        let r = GuestRam::compare_exchange_u64(&self.shared.mem, gpa, current, new);
        self.account(gpa, 8, r.is_ok());
        if matches!(r, Ok(Ok(_))) && current != new {
            self.tracking().cas_writes.insert(gpa & !7);
        }
        r
    }
}
