//! Builders that write remapping structures into guest memory: what tests, examples and
//! scenario generators use instead of hand-rolled bit twiddling.
//!
//! ```
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vtd_tables::builder::{FrameAllocator, PageTableBuilder, PageTableFormat, PageSize};
//! use vtd_tables::walk::{walk_second_stage, AccessKind, SecondStageMode, SecondStageTable, WalkConfig};
//! use vtd_regs::VtdConfig;
//!
//! let mem: GuestMemoryMmap<()> = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 24)]).unwrap();
//! let mut frames = FrameAllocator::new(0x10_0000, 0x20_0000);
//! let mut pt = PageTableBuilder::new(&mem, &mut frames, PageTableFormat::SecondStage { levels: 4 }).unwrap();
//! pt.map(&mut frames, 0x5000, 0x40_0000, PageSize::Size4K, true, false).unwrap();
//! let cfg = VtdConfig::default();
//! let wc = WalkConfig::new(cfg.cap(), cfg.ecap());
//! let table = SecondStageTable { root: pt.root(), levels: 4, mode: SecondStageMode::Legacy, set_ad: false };
//! let leaf = walk_second_stage(&mem, &wc, &table, 0x5123, AccessKind::Read).unwrap();
//! assert_eq!(leaf.page_base, 0x40_0000);
//! ```

use crate::entries::*;
use crate::mem::{GuestRam, MemError};

/// Why a builder could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The frame allocator's range is used up.
    #[error("out of table frames")]
    OutOfFrames,
    /// Guest memory refused an access.
    #[error(transparent)]
    Memory(#[from] MemError),
    /// The address or size is not aligned to the page size.
    #[error("{0:#x} is not aligned to the page size")]
    Unaligned(u64),
    /// A larger mapping already covers the address.
    #[error("a large page already maps {0:#x}")]
    LargePageInTheWay(u64),
    /// The page size is not possible at this depth.
    #[error("page size not supported by this table format")]
    BadPageSize,
}

/// Hands out zeroed 4 KiB frames from a guest-physical range, bump style.
#[derive(Debug, Clone)]
pub struct FrameAllocator {
    next: u64,
    end: u64,
}

impl FrameAllocator {
    /// Frames from `[start, end)`; `start` is rounded up to 4 KiB.
    pub fn new(start: u64, end: u64) -> Self {
        Self {
            next: start.saturating_add(0xfff) & !0xfff,
            end,
        }
    }
    /// Allocates and zeroes `count` contiguous frames.
    pub fn alloc(&mut self, mem: &impl GuestRam, count: u64) -> Result<u64, BuildError> {
        let size = count.checked_mul(4096).ok_or(BuildError::OutOfFrames)?;
        let at = self.next;
        let next = at.checked_add(size).ok_or(BuildError::OutOfFrames)?;
        if next > self.end {
            return Err(BuildError::OutOfFrames);
        }
        let zero = [0u8; 4096];
        for i in 0..count {
            mem.write(at + i * 4096, &zero)?;
        }
        self.next = next;
        Ok(at)
    }
    /// The next frame that would be handed out.
    pub fn next_free(&self) -> u64 {
        self.next
    }
}

/// Page sizes a leaf can map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageSize {
    /// 4 KiB (level 1).
    Size4K,
    /// 2 MiB (level 2).
    Size2M,
    /// 1 GiB (level 3).
    Size1G,
}

impl PageSize {
    /// Size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => 1 << 12,
            Self::Size2M => 1 << 21,
            Self::Size1G => 1 << 30,
        }
    }
    /// The level its leaf sits at.
    pub const fn level(self) -> u8 {
        match self {
            Self::Size4K => 1,
            Self::Size2M => 2,
            Self::Size1G => 3,
        }
    }
}

/// The format of a page table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageTableFormat {
    /// Second stage with 3, 4 or 5 levels (AW 1, 2, 3).
    SecondStage {
        /// Number of levels.
        levels: u8,
    },
    /// First stage with 4 or 5 levels.
    FirstStage {
        /// Number of levels.
        levels: u8,
    },
}

impl PageTableFormat {
    fn levels(self) -> u8 {
        match self {
            Self::SecondStage { levels } | Self::FirstStage { levels } => levels,
        }
    }
}

/// Builds one page table in guest memory.
#[derive(Debug)]
pub struct PageTableBuilder<'m, M: GuestRam> {
    mem: &'m M,
    root: u64,
    format: PageTableFormat,
}

impl<'m, M: GuestRam> PageTableBuilder<'m, M> {
    /// Allocates an empty root table.
    pub fn new(
        mem: &'m M,
        frames: &mut FrameAllocator,
        format: PageTableFormat,
    ) -> Result<Self, BuildError> {
        let root = frames.alloc(mem, 1)?;
        Ok(Self { mem, root, format })
    }

    /// Continues an existing table at `root`.
    pub fn at(mem: &'m M, root: u64, format: PageTableFormat) -> Self {
        Self { mem, root, format }
    }

    /// The root table address (SSPTPTR / FSPTPTR).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Maps `iova` to `addr` with a leaf of `size`. Second stage: `read`/`write` are R/W.
    /// First stage: `read` is implied by P, `write` is R/W; U/S is set (Linux maps DMA as user).
    pub fn map(
        &mut self,
        frames: &mut FrameAllocator,
        iova: u64,
        addr: u64,
        size: PageSize,
        read: bool,
        write: bool,
    ) -> Result<(), BuildError> {
        let bytes = size.bytes();
        if iova % bytes != 0 {
            return Err(BuildError::Unaligned(iova));
        }
        if addr % bytes != 0 {
            return Err(BuildError::Unaligned(addr));
        }
        let leaf = match self.format {
            PageTableFormat::SecondStage { .. } => {
                SecondStagePte::leaf(addr, read, write, size != PageSize::Size4K).into_bits()
            }
            PageTableFormat::FirstStage { .. } => {
                FirstStagePte::leaf(addr, write, size != PageSize::Size4K).into_bits()
            }
        };
        self.set_leaf(frames, iova, size, leaf)
    }

    /// Writes `value` as the leaf entry for `iova` at `size`'s level, creating missing tables.
    /// Any bit pattern may be written (tests of reserved bits and faults).
    pub fn set_leaf(
        &mut self,
        frames: &mut FrameAllocator,
        iova: u64,
        size: PageSize,
        value: u64,
    ) -> Result<(), BuildError> {
        let levels = self.format.levels();
        let target = size.level();
        if target > levels {
            return Err(BuildError::BadPageSize);
        }
        let mut table = self.root;
        for level in (target + 1..=levels).rev() {
            let slot = table + index(iova, level) * 8;
            let raw = self.mem.read_u64(slot)?;
            let present = match self.format {
                PageTableFormat::SecondStage { .. } => SecondStagePte::from_bits(raw).present(),
                PageTableFormat::FirstStage { .. } => FirstStagePte::from_bits(raw).present(),
            };
            if present {
                if raw & (1 << 7) != 0 && level <= 3 {
                    return Err(BuildError::LargePageInTheWay(iova));
                }
                table = raw & ADDR_MASK;
                continue;
            }
            let next = frames.alloc(self.mem, 1)?;
            let entry = match self.format {
                PageTableFormat::SecondStage { .. } => SecondStagePte::table(next).into_bits(),
                PageTableFormat::FirstStage { .. } => FirstStagePte::table(next).into_bits(),
            };
            self.mem.write_u64(slot, entry)?;
            table = next;
        }
        self.mem.write_u64(table + index(iova, target) * 8, value)?;
        Ok(())
    }

    /// Clears the leaf for `iova` at `size`'s level, if the tables down to it exist.
    pub fn unmap(&mut self, iova: u64, size: PageSize) -> Result<bool, BuildError> {
        match self.leaf_slot(iova, size)? {
            Some(slot) => {
                self.mem.write_u64(slot, 0)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The guest-physical address of the leaf slot for `iova` at `size`'s level.
    pub fn leaf_slot(&self, iova: u64, size: PageSize) -> Result<Option<u64>, BuildError> {
        let levels = self.format.levels();
        let mut table = self.root;
        for level in (size.level() + 1..=levels).rev() {
            let raw = self.mem.read_u64(table + index(iova, level) * 8)?;
            if raw & 0b11 == 0 || raw & (1 << 7) != 0 {
                return Ok(None);
            }
            table = raw & ADDR_MASK;
        }
        Ok(Some(table + index(iova, size.level()) * 8))
    }
}

fn index(iova: u64, level: u8) -> u64 {
    (iova >> (12 + 9 * (level as u32 - 1))) & 0x1ff
}

/// Builds a root table and the context tables under it, legacy or scalable.
#[derive(Debug)]
pub struct ContextTablesBuilder<'m, M: GuestRam> {
    mem: &'m M,
    root: u64,
    scalable: bool,
}

impl<'m, M: GuestRam> ContextTablesBuilder<'m, M> {
    /// Allocates an empty root table (the RTADDR value's address part).
    pub fn new(
        mem: &'m M,
        frames: &mut FrameAllocator,
        scalable: bool,
    ) -> Result<Self, BuildError> {
        let root = frames.alloc(mem, 1)?;
        Ok(Self {
            mem,
            root,
            scalable,
        })
    }

    /// The root-table address.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The RTADDR_REG value: root address plus TTM (01 for scalable mode).
    pub fn rtaddr(&self) -> u64 {
        self.root | if self.scalable { 1 << 10 } else { 0 }
    }

    fn context_table(&mut self, frames: &mut FrameAllocator, sid: u16) -> Result<u64, BuildError> {
        let bus = (sid >> 8) as u64;
        let devfn = sid as u8;
        let slot = self.root + bus * 16 + if self.scalable && devfn >= 0x80 { 8 } else { 0 };
        let raw = self.mem.read_u64(slot)?;
        if raw & 1 != 0 {
            return Ok(raw & ADDR_MASK);
        }
        let table = frames.alloc(self.mem, 1)?;
        self.mem.write_u64(slot, table | 1)?;
        Ok(table)
    }

    /// Writes the legacy context entry of `sid`.
    pub fn set_legacy_context(
        &mut self,
        frames: &mut FrameAllocator,
        sid: u16,
        entry: ContextEntry,
    ) -> Result<(), BuildError> {
        let table = self.context_table(frames, sid)?;
        self.mem
            .write_words(table + (sid & 0xff) as u64 * 16, &entry.0)?;
        Ok(())
    }

    /// Writes the scalable context entry of `sid`.
    pub fn set_scalable_context(
        &mut self,
        frames: &mut FrameAllocator,
        sid: u16,
        entry: ScalableContextEntry,
    ) -> Result<(), BuildError> {
        let table = self.context_table(frames, sid)?;
        self.mem
            .write_words(table + (sid & 0x7f) as u64 * 32, &entry.0)?;
        Ok(())
    }
}

/// Builds a PASID directory and the PASID tables under it.
#[derive(Debug)]
pub struct PasidTablesBuilder<'m, M: GuestRam> {
    mem: &'m M,
    dir: u64,
    pdts: u8,
}

impl<'m, M: GuestRam> PasidTablesBuilder<'m, M> {
    /// Allocates a directory of 2^(`pdts` + 7) entries (`pdts` 0 = one 4 KiB page).
    pub fn new(mem: &'m M, frames: &mut FrameAllocator, pdts: u8) -> Result<Self, BuildError> {
        let pdts = pdts.min(7);
        let pages = ((1u64 << (pdts + 7)) * 8).div_ceil(4096);
        let dir = frames.alloc(mem, pages)?;
        Ok(Self { mem, dir, pdts })
    }

    /// Continues an existing directory at `dir` of 2^(`pdts` + 7) entries.
    pub fn at(mem: &'m M, dir: u64, pdts: u8) -> Self {
        Self {
            mem,
            dir,
            pdts: pdts.min(7),
        }
    }

    /// The scalable context entry that points at this directory.
    pub fn context_entry(&self) -> ScalableContextEntry {
        ScalableContextEntry::new(self.dir, self.pdts)
    }

    /// The directory address.
    pub fn dir(&self) -> u64 {
        self.dir
    }

    /// Writes the PASID table entry of `pasid`, creating its PASID table.
    pub fn set_entry(
        &mut self,
        frames: &mut FrameAllocator,
        pasid: u32,
        entry: PasidEntry,
    ) -> Result<u64, BuildError> {
        let slot = self.dir + (pasid >> 6) as u64 * 8;
        let raw = self.mem.read_u64(slot)?;
        let table = if raw & 1 != 0 {
            raw & ADDR_MASK
        } else {
            let t = frames.alloc(self.mem, 1)?;
            self.mem.write_u64(slot, t | 1)?;
            t
        };
        let at = table + (pasid & 0x3f) as u64 * 64;
        self.mem.write_words(at, &entry.0)?;
        Ok(at)
    }
}
