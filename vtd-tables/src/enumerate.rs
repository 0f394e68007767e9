//! Enumerating the present leaves of a page table over a range: the "replay walk" a shadowing
//! VMM needs in caching mode (VT-d spec 6.1: with CAP.CM, software invalidates after making
//! entries present, and the VMM mirrors the table from the invalidated range).
//!
//! The walk visits only present entries inside the range and stops after a budget of entry
//! reads, so no table contents can make it unbounded.

use crate::entries::{ADDR_MASK, FirstStagePte, SecondStagePte, bits_above};
use crate::mem::GuestRam;
use crate::walk::{Perms, WalkConfig};

/// The format of the table to enumerate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFormat {
    /// Second-stage entries (legacy context or PGTT = 2); `levels` 3-5.
    SecondStage {
        /// Number of levels.
        levels: u8,
    },
    /// First-stage entries (PGTT = 1); `levels` 4 or 5.
    FirstStage {
        /// Number of levels.
        levels: u8,
    },
}

/// One present leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafMapping {
    /// IOVA of the page.
    pub iova: u64,
    /// Page size.
    pub size: u64,
    /// Output address of the page.
    pub output: u64,
    /// Rights accumulated over the levels.
    pub perms: Perms,
}

/// Why an enumeration stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnumerateError {
    /// The budget of entry reads ran out; the leaves reported so far are valid.
    #[error("enumeration budget exhausted")]
    BudgetExhausted,
}

/// Calls `f` for every present, well-formed leaf of the table at `root` overlapping
/// `range`, in IOVA order. Entries that cannot be read or have reserved bits set are
/// skipped (a DMA through them faults). At most `budget` entries are read; the reads done are
/// taken from it, so one budget can bound several enumerations.
pub fn for_each_leaf(
    mem: &impl GuestRam,
    cfg: &WalkConfig,
    root: u64,
    format: TableFormat,
    range: std::ops::Range<u64>,
    budget: &mut u32,
    mut f: impl FnMut(LeafMapping),
) -> Result<(), EnumerateError> {
    let (start, end) = (range.start, range.end);
    // An empty range covers no page (found by fuzzing: `0..0` listed the leaf at 0, since
    // the inclusive end below saturates to 0). The replay walk mirrors exactly the
    // invalidated range (spec 6.1), so nothing outside it may be reported.
    if start >= end {
        return Ok(());
    }
    let levels = match format {
        TableFormat::SecondStage { levels } | TableFormat::FirstStage { levels } => {
            levels.clamp(1, 5)
        }
    };
    let span_end = if levels >= 5 {
        u64::MAX
    } else {
        (1u64 << (12 + 9 * levels as u32)) - 1
    };
    let end_incl = end.saturating_sub(1).min(span_end);
    if start > end_incl {
        return Ok(());
    }
    visit(
        mem,
        cfg,
        root & !0xfff,
        format,
        levels,
        0,
        start,
        end_incl,
        Perms::ALL,
        budget,
        &mut f,
    )
}

#[allow(clippy::too_many_arguments)]
fn visit(
    mem: &impl GuestRam,
    cfg: &WalkConfig,
    table: u64,
    format: TableFormat,
    level: u8,
    base: u64,
    start: u64,
    end_incl: u64,
    perms: Perms,
    budget: &mut u32,
    f: &mut impl FnMut(LeafMapping),
) -> Result<(), EnumerateError> {
    let shift = 12 + 9 * (level as u32 - 1);
    let size = 1u64 << shift;
    let first = if start > base {
        (start - base) >> shift
    } else {
        0
    };
    let last = ((end_incl - base) >> shift).min(511);
    let reserved = bits_above(cfg.haw()) & ADDR_MASK;
    for index in first..=last {
        if *budget == 0 {
            return Err(EnumerateError::BudgetExhausted);
        }
        *budget -= 1;
        let Ok(raw) = mem.read_u64(table + index * 8) else {
            continue;
        };
        if raw & reserved != 0 {
            continue;
        }
        let iova = base + index * size;
        let (present, large, entry_perms, next) = match format {
            TableFormat::SecondStage { .. } => {
                let e = SecondStagePte::from_bits(raw);
                let p = Perms {
                    read: e.read(),
                    write: e.write(),
                    execute: e.execute() || !cfg.ecap.ers(),
                };
                (e.present(), e.ps(), p, e.addr())
            }
            TableFormat::FirstStage { .. } => {
                let e = FirstStagePte::from_bits(raw);
                let p = Perms {
                    read: true,
                    write: e.writable(),
                    execute: !e.xd(),
                };
                (e.present(), e.ps(), p, e.addr())
            }
        };
        if !present {
            continue;
        }
        let perms = Perms {
            read: perms.read && entry_perms.read,
            write: perms.write && entry_perms.write,
            execute: perms.execute && entry_perms.execute,
        };
        let leaf = level == 1 || (large && level <= 3);
        if leaf {
            if level > 1
                && raw & ((size - 1) & ADDR_MASK) != 0
                && matches!(format, TableFormat::SecondStage { .. })
            {
                continue; // address bits below a large page are reserved
            }
            f(LeafMapping {
                iova,
                size,
                output: next & !(size - 1),
                perms,
            });
        } else if level > 1 {
            visit(
                mem,
                cfg,
                next,
                format,
                level - 1,
                iova,
                start.max(iova),
                end_incl.min(iova + (size - 1)),
                perms,
                budget,
                f,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vtd_regs::VtdConfig;

    /// Fuzz regression (fuzz target `walk`): an empty range listed the leaf at IOVA 0.
    #[test]
    fn an_empty_range_lists_nothing() {
        let mem: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let cfg = VtdConfig::default();
        let wc = WalkConfig::new(cfg.cap(), cfg.ecap());
        let mut frames = FrameAllocator::new(0x10_0000, 0x40_0000);
        let fmt = PageTableFormat::SecondStage { levels: 4 };
        let mut pt = PageTableBuilder::new(&mem, &mut frames, fmt).unwrap();
        pt.map(&mut frames, 0, 0x50_0000, PageSize::Size4K, true, true)
            .unwrap();
        pt.map(&mut frames, 0x3000, 0x60_0000, PageSize::Size4K, true, true)
            .unwrap();
        let fmt = TableFormat::SecondStage { levels: 4 };
        // Empty (start == end) and inverted (start > end) ranges.
        let (lo, hi) = (0x1000, 0x4000);
        #[allow(
            clippy::reversed_empty_ranges,
            reason = "an inverted range is the input"
        )]
        let inverted = hi..lo;
        for range in [0..0, 0x3000..0x3000, inverted] {
            let mut seen = Vec::new();
            let mut budget = 1000;
            for_each_leaf(&mem, &wc, pt.root(), fmt, range.clone(), &mut budget, |m| {
                seen.push(m)
            })
            .unwrap();
            assert!(seen.is_empty(), "{range:?} listed {seen:?}");
            assert_eq!(budget, 1000, "{range:?} read entries");
        }
        // The same table lists both leaves over a range that holds them.
        let mut seen = Vec::new();
        for_each_leaf(&mem, &wc, pt.root(), fmt, 0..0x4000, &mut 1000, |m| {
            seen.push(m.iova)
        })
        .unwrap();
        assert_eq!(seen, [0, 0x3000]);
    }

    #[test]
    fn lists_present_leaves_in_range_and_stops_at_the_budget() {
        let mem: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let cfg = VtdConfig::default();
        let wc = WalkConfig::new(cfg.cap(), cfg.ecap());
        let mut frames = FrameAllocator::new(0x10_0000, 0x40_0000);
        let mut pt = PageTableBuilder::new(
            &mem,
            &mut frames,
            PageTableFormat::SecondStage { levels: 4 },
        )
        .unwrap();
        pt.map(
            &mut frames,
            0x1000,
            0x50_0000,
            PageSize::Size4K,
            true,
            false,
        )
        .unwrap();
        pt.map(
            &mut frames,
            0x20_0000,
            0x60_0000,
            PageSize::Size2M,
            true,
            true,
        )
        .unwrap();
        pt.map(
            &mut frames,
            0x80_0000_0000,
            0x70_0000,
            PageSize::Size4K,
            true,
            true,
        )
        .unwrap();
        let mut seen = Vec::new();
        let fmt = TableFormat::SecondStage { levels: 4 };
        for_each_leaf(
            &mem,
            &wc,
            pt.root(),
            fmt,
            0..u64::MAX,
            &mut (1 << 16),
            |m| seen.push(m),
        )
        .unwrap();
        let iovas: Vec<_> = seen
            .iter()
            .map(|m| (m.iova, m.size, m.output, m.perms.write))
            .collect();
        assert_eq!(
            iovas,
            vec![
                (0x1000, 4096, 0x50_0000, false),
                (0x20_0000, 2 << 20, 0x60_0000, true),
                (0x80_0000_0000, 4096, 0x70_0000, true)
            ]
        );
        seen.clear();
        for_each_leaf(
            &mem,
            &wc,
            pt.root(),
            fmt,
            0x1000..0x2000,
            &mut (1 << 16),
            |m| seen.push(m),
        )
        .unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            for_each_leaf(&mem, &wc, pt.root(), fmt, 0..u64::MAX, &mut 3, |_| {}),
            Err(EnumerateError::BudgetExhausted)
        );
    }
}
