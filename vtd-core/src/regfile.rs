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
            let off = d.offset as usize;
            let n = d.size as usize;
            if off + n > SIZE {
                continue;
            }
            rf.reset[off..off + n].copy_from_slice(&d.reset.to_le_bytes()[..n]);
            rf.rw[off..off + n].copy_from_slice(&d.rw_mask.to_le_bytes()[..n]);
            rf.w1c[off..off + n].copy_from_slice(&d.w1c_mask.to_le_bytes()[..n]);
            rf.wo[off..off + n].copy_from_slice(&d.wo_mask.to_le_bytes()[..n]);
        }
        rf.value.copy_from_slice(&rf.reset[..]);
        rf
    }

    /// Back to reset values.
    pub(crate) fn reset(&mut self) {
        self.value.copy_from_slice(&self.reset[..]);
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
        let mut v = 0u64;
        for i in (0..size as usize).rev() {
            let o = offset as usize + i;
            v = v << 8 | (self.value[o] & !self.wo[o]) as u64;
        }
        v
    }

    /// Applies a guest write.
    pub(crate) fn guest_write(&mut self, offset: u64, size: u8, value: u64) {
        for i in 0..size as usize {
            let o = offset as usize + i;
            let b = (value >> (8 * i)) as u8;
            // RO bits keep their value, RW and WO bits take the write (a WO register holds
            // exactly the last value written, for the unit to act on), RW1C bits clear on 1.
            let kept = self.value[o] & !self.rw[o] & !self.wo[o] & !(self.w1c[o] & b);
            self.value[o] = kept | (b & (self.rw[o] | self.wo[o]));
        }
    }

    /// Raw stored value (no masks), for the unit's own use.
    pub(crate) fn get(&self, offset: u64, size: u8) -> u64 {
        let mut v = 0u64;
        for i in (0..size as usize).rev() {
            v = v << 8 | self.value[offset as usize + i] as u64;
        }
        v
    }

    pub(crate) fn get32(&self, offset: u64) -> u32 {
        self.get(offset, 4) as u32
    }

    pub(crate) fn get64(&self, offset: u64) -> u64 {
        self.get(offset, 8)
    }

    /// Hardware update of a register, bypassing guest masks.
    pub(crate) fn set(&mut self, offset: u64, size: u8, value: u64) {
        for i in 0..size as usize {
            self.value[offset as usize + i] = (value >> (8 * i)) as u8;
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
        let n = image.len().min(SIZE);
        self.value[..n].copy_from_slice(&image[..n]);
    }
}
