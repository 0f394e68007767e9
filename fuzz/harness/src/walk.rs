//! The table walkers of vtd-tables over guest memory the input fills: the reference walk
//! from a root table (legacy second stage and pass-through, scalable first stage, second
//! stage, nested and pass-through, chosen by the entries), each stage walker on its own,
//! and the leaf enumerator (replay walk).
//!
//! Invariants: no panic; a bounded number of guest-memory accesses per walk, each inside RAM
//! ([`crate::ram`]); a successful translation is self-consistent (power-of-two page size of
//! at least 4 KiB, the request's page offset kept, rights that allow the access) and the
//! same when walked again; enumerated leaves come in IOVA order, aligned, inside the range,
//! within the read budget.
//!
//! Input: a fixed header (see [`WalkInput`]), then (u32 address, u64 value) records that
//! fill the 1 MiB of RAM (addresses masked into it, 8-byte aligned).

use vtd_core::VtdConfig;
use vtd_regs::regs::TranslationTableMode;
use vtd_tables::GuestRam;
use vtd_tables::entries::PasidEntry;
use vtd_tables::enumerate::{TableFormat, for_each_leaf};
use vtd_tables::walk::{
    self, AccessKind, DmaRequest, Leaf, RootTable, SecondStageMode, SecondStageTable, Translation,
    WalkConfig,
};

use crate::input::{Reader, Writer};
use crate::ram::CountingRam;
use crate::unit::CONFIGS;

/// RAM of the walk target.
pub const RAM_SIZE: u64 = 1 << 20;
/// Accesses one walk may make (see `unit::MAX_WALK_ACCESSES`).
const MAX_WALK_ACCESSES: u64 = 1024;
/// Largest enumeration budget the input may ask for.
const MAX_BUDGET: u32 = 1 << 16;

/// Which walker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walker {
    /// `walk::translate` from a root table.
    Translate,
    /// `walk::walk_second_stage` from a table root.
    SecondStage,
    /// `walk::walk_first_stage` with a PASID entry from the input.
    FirstStage,
    /// `enumerate::for_each_leaf`.
    Enumerate,
}

/// The decoded input.
#[derive(Debug, Clone)]
pub struct WalkInput {
    /// Walker.
    pub walker: Walker,
    /// Index into [`CONFIGS`].
    pub config: u8,
    /// Root table / table root address.
    pub root: u64,
    /// Translate: root mode (TTM); second stage: levels and mode; enumerate: format, levels.
    pub mode: u8,
    /// The request.
    pub req: DmaRequest,
    /// PASID entry for the first-stage walker.
    pub pasid_entry: [u64; 8],
    /// Enumeration range length from `req.iova`, and budget.
    pub range_len: u64,
    /// Enumeration budget.
    pub budget: u32,
    /// Memory contents.
    pub memory: Vec<(u32, u64)>,
}

impl WalkInput {
    /// Reads an input.
    pub fn read(data: &[u8]) -> Self {
        let mut r = Reader::new(data);
        let walker = match r.u8() % 4 {
            0 => Walker::Translate,
            1 => Walker::SecondStage,
            2 => Walker::FirstStage,
            _ => Walker::Enumerate,
        };
        let (config, root, mode) = (r.u8(), r.u64(), r.u8());
        let (sid, flags, pasid, iova) = (r.u16(), r.u8(), r.u32(), r.u64());
        let req = DmaRequest {
            sid,
            pasid: (flags & 1 != 0).then_some(pasid & 0xf_ffff),
            iova,
            access: match (flags >> 1) & 3 {
                1 => AccessKind::Write,
                2 => AccessKind::Execute,
                _ => AccessKind::Read,
            },
            privileged: flags & 8 != 0,
        };
        let mut pasid_entry = [0u64; 8];
        for w in &mut pasid_entry {
            *w = r.u64();
        }
        let (range_len, budget) = (r.u64(), r.u32());
        let mut memory = Vec::new();
        while !r.is_empty() {
            memory.push((r.u32(), r.u64()));
        }
        Self {
            walker,
            config,
            root,
            mode,
            req,
            pasid_entry,
            range_len,
            budget,
            memory,
        }
    }

    /// Encodes the input (for seeds).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let walker = match self.walker {
            Walker::Translate => 0,
            Walker::SecondStage => 1,
            Walker::FirstStage => 2,
            Walker::Enumerate => 3,
        };
        let access = match self.req.access {
            AccessKind::Read => 0,
            AccessKind::Write => 1,
            AccessKind::Execute => 2,
        };
        let flags = self.req.pasid.is_some() as u8 | access << 1 | (self.req.privileged as u8) << 3;
        w.u8(walker).u8(self.config).u64(self.root).u8(self.mode);
        w.u16(self.req.sid)
            .u8(flags)
            .u32(self.req.pasid.unwrap_or(0))
            .u64(self.req.iova);
        for word in self.pasid_entry {
            w.u64(word);
        }
        w.u64(self.range_len).u32(self.budget);
        for (gpa, value) in &self.memory {
            w.u32(*gpa).u64(*value);
        }
        w.0
    }
}

fn check_translation(cfg: &WalkConfig, req: &DmaRequest, t: &Translation) {
    assert!(
        t.page_size.is_power_of_two() && t.page_size >= 4096,
        "page size {:#x}",
        t.page_size
    );
    assert_eq!(
        t.output & 0xfff,
        req.iova & 0xfff,
        "translation {t:?} of {req:?} lost the page offset"
    );
    assert!(
        t.perms.allows(cfg.effective_access(req.access)),
        "translation {t:?} does not allow {req:?}"
    );
}

fn check_leaf(cfg: &WalkConfig, access: AccessKind, leaf: &Leaf) {
    assert!(
        leaf.page_size.is_power_of_two() && leaf.page_size >= 4096,
        "leaf {leaf:?}"
    );
    assert_eq!(
        leaf.page_base & (leaf.page_size - 1),
        0,
        "unaligned leaf {leaf:?}"
    );
    assert!(
        leaf.perms.allows(cfg.effective_access(access)),
        "leaf {leaf:?} does not allow {access:?}"
    );
}

/// A/D bits a second walk may find set by the first.
const AD_BITS: u64 = 1 << 5 | 1 << 6 | 1 << 8 | 1 << 9;

fn bounded<T>(ram: &CountingRam, what: &str, f: impl FnOnce() -> T) -> T {
    let before = ram.accesses();
    let out = f();
    let used = ram.accesses() - before;
    assert!(
        used <= MAX_WALK_ACCESSES,
        "{what}: {used} accesses for one walk"
    );
    out
}

/// The target.
pub fn run(data: &[u8]) {
    let input = WalkInput::read(data);
    let props = CONFIGS[input.config as usize % CONFIGS.len()];
    let Ok(vtd) = VtdConfig::from_qemu_props(props) else {
        panic!("configuration {props:?} refused");
    };
    let cfg = WalkConfig::new(vtd.cap(), vtd.ecap());
    let ram = CountingRam::new(RAM_SIZE);
    for &(gpa, value) in &input.memory {
        let gpa = (gpa as u64 % RAM_SIZE) & !7;
        let _ = ram.mem().write_u64(gpa, value);
    }
    let req = input.req;
    match input.walker {
        Walker::Translate => {
            let root = RootTable {
                addr: input.root & !0xfff,
                mode: TranslationTableMode::from_bits(input.mode & 3),
            };
            let walk_once = || {
                bounded(&ram, "translate", || {
                    walk::translate(&ram, &cfg, root, &req)
                })
            };
            let first = walk_once();
            if let Ok(t) = &first {
                check_translation(&cfg, &req, t);
            }
            let mask = |r: Result<Translation, _>| {
                r.map(|t| Translation {
                    leaf: t.leaf & !AD_BITS,
                    ..t
                })
            };
            // Determinism: a walk is a function of guest memory. Its own A/D updates change
            // that memory, and when the guest's tables overlap (an upper-level entry aliasing
            // the PASID entry, say) the next walk may legitimately read something else. A/D
            // bits are only ever set, so repeated walks settle: walk until one changes nothing,
            // then the next must give the same result.
            let changed = |ram: &CountingRam| {
                let mut t = ram.tracking();
                let any = !t.cas_writes.is_empty() || !t.writes.is_empty();
                t.cas_writes.clear();
                t.writes.clear();
                any
            };
            let mut settled = mask(first);
            let mut quiet = !changed(&ram);
            for _ in 0..8 {
                if quiet {
                    break;
                }
                settled = mask(walk_once());
                quiet = !changed(&ram);
            }
            if quiet {
                let again = mask(walk_once());
                assert_eq!(settled, again, "walking twice differs");
            }
        }
        Walker::SecondStage => {
            let mode = match (input.mode >> 4) % 5 {
                0 => SecondStageMode::Legacy,
                1 => SecondStageMode::Scalable,
                2 => SecondStageMode::NestedTable {
                    top: input.mode & 0x80 != 0,
                },
                3 => SecondStageMode::NestedTableWrite,
                _ => SecondStageMode::NestedOutput,
            };
            let ss = SecondStageTable {
                root: input.root,
                levels: input.mode & 0x7,
                mode,
                set_ad: input.mode & 0x8 != 0,
            };
            let got = bounded(&ram, "second stage", || {
                walk::walk_second_stage(&ram, &cfg, &ss, req.iova, req.access)
            });
            if let Ok(leaf) = got {
                check_leaf(&cfg, req.access, &leaf);
            }
        }
        Walker::FirstStage => {
            let pe = PasidEntry(input.pasid_entry);
            let got = bounded(&ram, "first stage", || {
                walk::walk_first_stage(&ram, &cfg, &pe, req.iova, req.access, req.privileged)
            });
            if let Ok(leaf) = got {
                check_leaf(&cfg, req.access, &leaf);
            }
        }
        Walker::Enumerate => {
            let levels = input.mode & 0x7;
            let format = if input.mode & 0x8 != 0 {
                TableFormat::FirstStage { levels }
            } else {
                TableFormat::SecondStage { levels }
            };
            let start = req.iova;
            let end = start.saturating_add(input.range_len);
            let initial = input.budget % (MAX_BUDGET + 1);
            let mut budget = initial;
            let mut last: Option<u64> = None;
            let before = ram.accesses();
            let _ = for_each_leaf(
                &ram,
                &cfg,
                input.root,
                format,
                start..end,
                &mut budget,
                |m| {
                    assert!(m.size.is_power_of_two() && m.size >= 4096, "leaf {m:?}");
                    assert_eq!(m.iova & (m.size - 1), 0, "unaligned leaf {m:?}");
                    assert!(
                        m.iova < end && m.iova.saturating_add(m.size) > start,
                        "leaf {m:?} outside {start:#x}..{end:#x}"
                    );
                    assert!(last.is_none_or(|l| m.iova > l), "leaves out of order");
                    last = Some(m.iova);
                },
            );
            let used = ram.accesses() - before;
            assert!(budget <= initial, "budget grew");
            assert!(
                used <= u64::from(initial - budget),
                "{used} reads, {} taken from the budget",
                initial - budget
            );
        }
    }
}
