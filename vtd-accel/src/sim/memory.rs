//! Host physical memory ([`HostMemory`]) and the stage-2 view the simulated host's nested walk
//! reads the guest's tables through (GPA -> IOAS mapping -> host memory), as real nesting
//! does: a guest table outside the parent's mappings is unreachable for the host too.

use std::collections::BTreeMap;

use vtd_tables::GuestRam;
use vtd_tables::MemError;

use super::PAGE;

/// One range of host physical memory, backed by a `GuestRam` (e.g. the very mapping that is
/// the guest's RAM, placed at another address, as on a real host).
#[derive(Clone, Debug)]
pub struct HostRegion<M> {
    /// Host-physical base.
    pub hpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// The memory that holds the bytes.
    pub backing: M,
    /// Address of `hpa` inside `backing`.
    pub backing_base: u64,
}

/// Host physical memory: non-overlapping [`HostRegion`]s. Accesses must fall inside one
/// region; anything else is a [`MemError`].
#[derive(Clone, Debug)]
pub struct HostMemory<M> {
    regions: Vec<HostRegion<M>>,
}

impl<M> Default for HostMemory<M> {
    fn default() -> Self {
        Self {
            regions: Vec::new(),
        }
    }
}

impl<M: GuestRam> HostMemory<M> {
    /// No memory at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `[hpa, hpa + len)` backed by `backing` at `backing_base`.
    pub fn with_region(mut self, hpa: u64, len: u64, backing: M, backing_base: u64) -> Self {
        self.regions.push(HostRegion {
            hpa,
            len,
            backing,
            backing_base,
        });
        self
    }

    fn locate(&self, hpa: u64, len: usize) -> Result<(&M, u64), MemError> {
        let err = MemError { gpa: hpa, len };
        for r in &self.regions {
            if hpa >= r.hpa && hpa - r.hpa < r.len {
                let off = hpa - r.hpa;
                if (len as u64) > r.len - off {
                    return Err(err);
                }
                return Ok((&r.backing, r.backing_base + off));
            }
        }
        Err(err)
    }
}

impl<M: GuestRam> GuestRam for HostMemory<M> {
    fn read(&self, hpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let (m, at) = self.locate(hpa, buf.len())?;
        m.read(at, buf).map_err(|_| MemError {
            gpa: hpa,
            len: buf.len(),
        })
    }

    fn write(&self, hpa: u64, buf: &[u8]) -> Result<(), MemError> {
        let (m, at) = self.locate(hpa, buf.len())?;
        m.write(at, buf).map_err(|_| MemError {
            gpa: hpa,
            len: buf.len(),
        })
    }

    fn compare_exchange_u64(
        &self,
        hpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        let (m, at) = self.locate(hpa, 8)?;
        m.compare_exchange_u64(at, current, new)
            .map_err(|_| MemError { gpa: hpa, len: 8 })
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct S2Map {
    pub(super) len: u64,
    pub(super) hpa: u64,
    pub(super) writable: bool,
}

/// Stage-2 view of guest physical memory: the guest's tables as the host's nested walker
/// reads them (GPA -> IOAS -> host memory).
pub(super) struct Stage2View<'a, M> {
    pub(super) maps: &'a BTreeMap<u64, S2Map>,
    pub(super) mem: &'a HostMemory<M>,
    /// Guest-physical addresses the walker wrote (A/D in the guest's tables): writes through
    /// stage 2 like any DMA, which its dirty tracking records.
    pub(super) written: std::cell::RefCell<Vec<u64>>,
}

impl<M: GuestRam> Stage2View<'_, M> {
    pub(super) fn lookup(&self, gpa: u64) -> Option<(u64, S2Map, u64)> {
        let (&start, m) = self.maps.range(..=gpa).next_back()?;
        (gpa - start < m.len).then_some((start, *m, m.hpa + (gpa - start)))
    }

    fn hpa(&self, gpa: u64, write: bool, len: usize) -> Result<u64, MemError> {
        let err = MemError { gpa, len };
        let (_, m, hpa) = self.lookup(gpa).ok_or(err)?;
        if write && !m.writable {
            return Err(err);
        }
        Ok(hpa)
    }

    /// Splits `[gpa, gpa + len)` at 4 KiB boundaries.
    fn chunks(gpa: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
        let mut done = 0usize;
        std::iter::from_fn(move || {
            if done >= len {
                return None;
            }
            let at = gpa.checked_add(done as u64)?;
            let room = (PAGE - (at & (PAGE - 1))) as usize;
            let n = room.min(len - done);
            let item = (at, done, n);
            done += n;
            Some(item)
        })
    }
}

impl<M: GuestRam> GuestRam for Stage2View<'_, M> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let len = buf.len();
        for (at, off, n) in Self::chunks(gpa, len) {
            let hpa = self.hpa(at, false, len)?;
            if let Some(part) = buf.get_mut(off..off + n) {
                self.mem.read(hpa, part)?;
            }
        }
        Ok(())
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        for (at, off, n) in Self::chunks(gpa, buf.len()) {
            let hpa = self.hpa(at, true, buf.len())?;
            if let Some(part) = buf.get(off..off + n) {
                self.mem.write(hpa, part)?;
            }
            self.written.borrow_mut().push(at);
        }
        Ok(())
    }

    fn compare_exchange_u64(
        &self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        if gpa % 8 != 0 {
            return Err(MemError { gpa, len: 8 });
        }
        let hpa = self.hpa(gpa, true, 8)?;
        let result = self.mem.compare_exchange_u64(hpa, current, new)?;
        if result.is_ok() && current != new {
            self.written.borrow_mut().push(gpa);
        }
        Ok(result)
    }
}
