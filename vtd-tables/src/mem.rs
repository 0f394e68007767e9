//! The narrow view of guest physical memory that table walks need.
//!
//! Walkers read 64-bit entries, and set accessed/dirty bits with atomic compare-exchange (VT-d
//! spec 3.6.2: "the remapping hardware sets A/D with locked operations"). Every access names a
//! guest physical address the guest chose: an address outside RAM is an error value, never a
//! panic and never an access anywhere else.

use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, VolatileMemory};

/// A guest physical access that could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest physical access of {len} bytes at {gpa:#x} is outside guest RAM or misaligned")]
pub struct MemError {
    /// The address that was asked for.
    pub gpa: u64,
    /// Its length.
    pub len: usize,
}

/// Guest physical memory as the remapping hardware sees it.
pub trait GuestRam {
    /// Reads `buf.len()` bytes at `gpa`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Writes `buf` at `gpa`.
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError>;
    /// Atomically replaces the 8-byte-aligned little-endian u64 at `gpa` with `new` if it still
    /// holds `current`. `Ok(Ok(current))` on success, `Ok(Err(actual))` if it changed.
    fn compare_exchange_u64(
        &self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError>;

    /// Reads a little-endian u64 (table entries are little-endian, spec 9).
    fn read_u64(&self, gpa: u64) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// Writes a little-endian u64.
    fn write_u64(&self, gpa: u64, value: u64) -> Result<(), MemError> {
        self.write(gpa, &value.to_le_bytes())
    }
    /// Reads `N` consecutive u64s (multi-word entries).
    fn read_words<const N: usize>(&self, gpa: u64) -> Result<[u64; N], MemError> {
        let mut words = [0u64; N];
        for (i, w) in words.iter_mut().enumerate() {
            *w = self.read_u64(
                gpa.checked_add(i as u64 * 8)
                    .ok_or(MemError { gpa, len: N * 8 })?,
            )?;
        }
        Ok(words)
    }
    /// Writes consecutive u64s.
    fn write_words(&self, gpa: u64, words: &[u64]) -> Result<(), MemError> {
        for (i, w) in words.iter().enumerate() {
            let at = gpa.checked_add(i as u64 * 8).ok_or(MemError {
                gpa,
                len: words.len() * 8,
            })?;
            self.write_u64(at, *w)?;
        }
        Ok(())
    }
}

impl<M: GuestMemoryBackend> GuestRam for M {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.read_slice(buf, GuestAddress(gpa))
            .map_err(|_| MemError {
                gpa,
                len: buf.len(),
            })
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        self.write_slice(buf, GuestAddress(gpa))
            .map_err(|_| MemError {
                gpa,
                len: buf.len(),
            })
    }

    /// One aligned 8-byte atomic load from the region's mapping: a table entry is read whole
    /// (spec 3.6.2 and 3.7.2 describe the hardware reading a paging entry in one access, so a
    /// guest rewriting it concurrently is seen before or after, never torn), and this skips
    /// `read_slice`'s generic copy loop, the cost of a table walk's reads. Unaligned addresses
    /// (no walker produces one) take the byte-copy path.
    fn read_u64(&self, gpa: u64) -> Result<u64, MemError> {
        let err = MemError { gpa, len: 8 };
        if gpa % 8 != 0 {
            let mut b = [0u8; 8];
            GuestRam::read(self, gpa, &mut b)?;
            return Ok(u64::from_le_bytes(b));
        }
        let (region, offset) = self.to_region_addr(GuestAddress(gpa)).ok_or(err)?;
        let slice = region.get_slice(offset, 8).map_err(|_| err)?;
        let atomic: &AtomicU64 = slice.get_atomic_ref(0).map_err(|_| err)?;
        Ok(u64::from_le(atomic.load(Ordering::Relaxed)))
    }

    fn compare_exchange_u64(
        &self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        let err = MemError { gpa, len: 8 };
        if gpa % 8 != 0 {
            return Err(err);
        }
        let slice = self.get_slice(GuestAddress(gpa), 8).map_err(|_| err)?;
        // get_atomic_ref checks bounds and alignment and ties the reference to the mapping.
        let atomic: &AtomicU64 = slice.get_atomic_ref(0).map_err(|_| err)?;
        // Table entries are little-endian; on a big-endian host the atomic sees swapped bytes.
        let result = atomic
            .compare_exchange(
                current.to_le(),
                new.to_le(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .map(u64::from_le)
            .map_err(u64::from_le);
        // An atomic reference bypasses vm-memory's dirty logging (only its read/write paths
        // mark the bitmap): mark the entry's page, so a VMM migrating the guest with a dirty
        // bitmap (GuestMemoryMmap<AtomicBitmap>) sends the A/D bits the walk set.
        if result.is_ok() && current != new {
            vm_memory::bitmap::Bitmap::mark_dirty(slice.bitmap(), 0, 8);
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn accesses_outside_ram_are_errors() {
        let mem: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000), 0x2000)]).unwrap();
        assert!(mem.read_u64(0x0).is_err());
        assert!(mem.read_u64(0x2ffc).is_err(), "straddles the end of RAM");
        assert!(mem.read_u64(u64::MAX - 3).is_err());
        assert!(mem.read_words::<4>(u64::MAX - 8).is_err());
        mem.write_u64(0x1008, 0x1234).unwrap();
        assert_eq!(mem.read_u64(0x1008), Ok(0x1234));
        assert_eq!(
            mem.compare_exchange_u64(0x1008, 0x1234, 0x99),
            Ok(Ok(0x1234))
        );
        assert_eq!(
            mem.compare_exchange_u64(0x1008, 0x1234, 0x77),
            Ok(Err(0x99))
        );
        assert!(
            mem.compare_exchange_u64(0x1004, 0, 1).is_err(),
            "misaligned"
        );
        assert!(mem.compare_exchange_u64(0x3000, 0, 1).is_err(), "outside");
    }
}
