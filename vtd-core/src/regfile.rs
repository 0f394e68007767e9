//! The register image with per-byte access masks, built from vtd-regs' layout.
//!
//! Keeping masks per byte makes every access size and alignment the guest may use follow the
//! same rules: a 4-byte write to half of a 64-bit register, or an 8-byte write covering two
//! 32-bit registers, applies each byte's RW / RW1C / WO semantics (spec 11.2).

use vtd_regs::regs::{MMIO_SIZE, RegisterDef};

const SIZE: usize = MMIO_SIZE as usize;

/// The register image.
pub(crate) struct RegisterFile {
    value: Box<[u8; SIZE]>,
    rw: Box<[u8; SIZE]>,
    w1c: Box<[u8; SIZE]>,
    wo: Box<[u8; SIZE]>,
    reset: Box<[u8; SIZE]>,
}

impl RegisterFile {
    pub(crate) fn new(defs: &[RegisterDef]) -> Self {
        let mut rf = Self {
            value: Box::new([0; SIZE]),
            rw: Box::new([0; SIZE]),
            w1c: Box::new([0; SIZE]),
            wo: Box::new([0; SIZE]),
            reset: Box::new([0; SIZE]),
        };
        for d in defs {
            let Some(bytes) = byte_range(d.offset, d.size) else {
                continue;
            };
            store(&mut rf.reset, bytes.clone(), d.reset);
            store(&mut rf.rw, bytes.clone(), d.rw_mask);
            store(&mut rf.w1c, bytes.clone(), d.w1c_mask);
            store(&mut rf.wo, bytes, d.wo_mask);
        }
        rf.value = rf.reset.clone();
        rf
    }

    /// Back to reset values.
    pub(crate) fn reset(&mut self) {
        self.value = self.reset.clone();
    }

    /// Whether a guest access of `size` at `offset` is one the unit serves: 4 bytes 4-aligned
    /// or 8 bytes 8-aligned inside the window (spec 10.2: registers are accessed with aligned
    /// 32- or 64-bit accesses; anything else reads 0 and is ignored).
    pub(crate) fn valid_access(offset: u64, size: u8) -> bool {
        matches!(size, 4 | 8)
            && offset % size as u64 == 0
            && offset
                .checked_add(size as u64)
                .is_some_and(|end| end <= MMIO_SIZE)
    }

    /// The guest's view (WO bits read 0).
    pub(crate) fn guest_read(&self, offset: u64, size: u8) -> u64 {
        let Some(bytes) = byte_range(offset, size) else {
            return 0;
        };
        let (Some(value), Some(wo)) = (self.value.get(bytes.clone()), self.wo.get(bytes)) else {
            return 0;
        };
        value
            .iter()
            .zip(wo)
            .rev()
            .fold(0, |v, (b, wo)| v << 8 | (b & !wo) as u64)
    }

    /// Applies a guest write.
    pub(crate) fn guest_write(&mut self, offset: u64, size: u8, value: u64) {
        let Some(bytes) = byte_range(offset, size) else {
            return;
        };
        let (Some(stored), Some(rw), Some(w1c), Some(wo)) = (
            self.value.get_mut(bytes.clone()),
            self.rw.get(bytes.clone()),
            self.w1c.get(bytes.clone()),
            self.wo.get(bytes),
        ) else {
            return;
        };
        let masks = rw.iter().zip(w1c).zip(wo);
        for (i, (v, ((rw, w1c), wo))) in stored.iter_mut().zip(masks).enumerate() {
            let b = (value >> (8 * i)) as u8;
            // RO bits keep their value, RW and WO bits take the write (a WO register holds
            // exactly the last value written, for the unit to act on), RW1C bits clear on 1.
            let kept = *v & !rw & !wo & !(w1c & b);
            *v = kept | (b & (rw | wo));
        }
    }

    /// Raw stored value (no masks), for the unit's own use.
    pub(crate) fn get(&self, offset: u64, size: u8) -> u64 {
        byte_range(offset, size)
            .and_then(|bytes| self.value.get(bytes))
            .map_or(0, |b| b.iter().rev().fold(0, |v, b| v << 8 | *b as u64))
    }

    pub(crate) fn get32(&self, offset: u64) -> u32 {
        self.get(offset, 4) as u32
    }

    pub(crate) fn get64(&self, offset: u64) -> u64 {
        self.get(offset, 8)
    }

    /// Hardware update of a register, bypassing guest masks.
    pub(crate) fn set(&mut self, offset: u64, size: u8, value: u64) {
        if let Some(bytes) = byte_range(offset, size) {
            store(&mut self.value, bytes, value);
        }
    }

    pub(crate) fn set32(&mut self, offset: u64, value: u32) {
        self.set(offset, 4, value as u64);
    }

    pub(crate) fn set64(&mut self, offset: u64, value: u64) {
        self.set(offset, 8, value);
    }

    pub(crate) fn update32(&mut self, offset: u64, clear: u32, set: u32) {
        let v = (self.get32(offset) & !clear) | set;
        self.set32(offset, v);
    }

    /// The whole image (migration, inspection).
    pub(crate) fn image(&self) -> &[u8; SIZE] {
        &self.value
    }

    /// Restores a saved image.
    pub(crate) fn load_image(&mut self, image: &[u8]) {
        for (v, b) in self.value.iter_mut().zip(image) {
            *v = *b;
        }
    }
}

/// The bytes of the image a `size`-byte register at `offset` occupies, if it lies inside the
/// image and is at most 8 bytes. Offsets come from the guest's MMIO accesses (checked by
/// [`RegisterFile::valid_access`]) and from CAP/ECAP-derived layouts; any other value names no
/// register rather than indexing out of the image.
fn byte_range(offset: u64, size: u8) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(size as usize)?;
    (size <= 8 && end <= SIZE).then_some(start..end)
}

/// Stores the low bytes of `value`, little-endian, into `image[bytes]` (at most 8).
fn store(image: &mut [u8; SIZE], bytes: std::ops::Range<usize>, value: u64) {
    if let Some(dst) = image.get_mut(bytes) {
        for (d, s) in dst.iter_mut().zip(value.to_le_bytes()) {
            *d = s;
        }
    }
}
