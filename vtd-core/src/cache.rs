//! The unit's translation caches (VT-d spec 6.2): context cache, PASID cache and IOTLB.
//!
//! - The IOTLB is set-associative: 8-way sets chosen from (requester, PASID, page, page
//!   size), so consecutive pages of one device fill consecutive sets and one device can use
//!   the whole cache (16,384 entries by default, 48 bytes each, allocated once).
//! - A hit writes nothing shared. Each set is a sequence lock over atomic words: a reader
//!   loads the sequence, the ways and the sequence again and keeps what it read only if the
//!   sequence did not move; it never waits (a set kept busy by writers is a miss, and a miss
//!   walks the tables, which is always correct). Hit and miss counts are per-thread stripes
//!   summed when read. Chosen over a per-shard `RwLock` (whose read lock writes the lock
//!   word, the line every other hitting thread reads) and over arc-swap or RCU (which copy
//!   or defer-free on every fill and need a dependency or `unsafe`): this needs neither.
//! - Invalidations cost what they remove. A page-selective one names a domain and pages but
//!   not requesters, so the cache records which requesters filled entries of each domain and
//!   probes, for each of them, only the sets the pages can be in (at most one sweep of the
//!   cache, the bound for wide ranges); domain, PASID and global ones sweep the sets,
//!   locking only those holding a victim.
//! - Not-present entries are never cached (the unit is not in caching mode's "may cache
//!   not-present" business: spec 6.1 allows, never requires it).
//! - An invalidation epoch closes the race between a walk that read old tables and an
//!   invalidation that completed meanwhile: a fill is dropped if any invalidation started since
//!   its walk began. The epoch advances again when an invalidation is done, so anything tagged
//!   with an epoch read during it (the `Iommu` adapter's per-thread maps) is stale after it.
//!
//! The invariants are the tests' names: `hits_every_page_size_and_respects_scope`,
//! `a_fill_racing_an_invalidation_is_dropped`, `capacity_is_bounded`,
//! `one_device_fills_every_way_of_one_range`,
//! `a_fill_after_its_requester_was_forgotten_registers_it_again`,
//! `page_invalidation_finds_entries_of_every_requester_of_the_domain`,
//! `a_hit_returns_what_the_walk_produced`, `sweeps_lock_only_the_sets_holding_a_victim`,
//! `a_lookup_misses_while_a_writer_is_inside_the_set`, `a_full_set_replaces_its_ways_in_turn`,
//! `the_requester_registry_is_bounded`, and in tests/concurrency.rs
//! `lock_free_hits_never_outlive_a_completed_page_pasid_or_global_invalidation` and
//! `hit_counts_of_concurrent_device_threads_add_up`.

// Indices here are masked or reduced to the fixed sizes of the caches' own arrays (sets,
// ways, stripes, slots, page-size shifts) and never taken from guest data unchecked; the
// file belongs to the cache rework, which converts them to checked accesses.
#![allow(
    clippy::indexing_slicing,
    reason = "indices masked to fixed array sizes; converted by the cache rework"
)]

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

use rustc_hash::FxBuildHasher;

use crate::sync::{Mutex, RwLock};
use vtd_tables::entries::PasidEntry;
use vtd_tables::walk::{AccessKind, DeviceContext, Perms, Translation, TranslationKind};

/// Cache statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that hit.
    pub hits: u64,
    /// Lookups that missed.
    pub misses: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
    /// Entries removed by invalidations.
    pub invalidated: u64,
    /// Entries currently held.
    pub entries: u64,
}

/// Hit and miss counts striped by thread: each thread bumps the counters of its own stripe
/// (its own cache line), so lookups from different threads never write a shared line; a read
/// sums the stripes.
///
/// A stripe is bumped with a plain load and store, not a locked read-modify-write (which
/// would cost a hit a quarter of its time). Threads get stripes round-robin, so two threads
/// share one only beyond `STRIPES` threads; if those two then bump the same counter at the
/// same instant one count is lost. The counts are statistics, never used for a decision.
struct HitCounters {
    stripes: Box<[Stripe]>,
    invalidated: AtomicU64,
}

const STRIPES: usize = 64;

#[derive(Default)]
#[repr(align(128))]
struct Stripe {
    hits: AtomicU64,
    misses: AtomicU64,
    /// Evictions are counted where they happen, on the fill path of a miss: striped like
    /// the hits, so a full cache's every fill does not pay a locked add on a shared line.
    evictions: AtomicU64,
}

/// The stripe of the calling thread.
fn my_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let mut v = s.get();
        if v == usize::MAX {
            v = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(v);
        }
        v
    })
}

fn bump(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

impl HitCounters {
    fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            invalidated: AtomicU64::new(0),
        }
    }

    fn hit(&self) {
        bump(&self.stripes[my_stripe()].hits);
    }

    fn miss(&self) {
        bump(&self.stripes[my_stripe()].misses);
    }

    fn evicted(&self) {
        bump(&self.stripes[my_stripe()].evictions);
    }

    fn snapshot(&self, entries: u64) -> CacheStats {
        let sum = |f: fn(&Stripe) -> &AtomicU64| {
            self.stripes
                .iter()
                .map(|s| f(s).load(Ordering::Relaxed))
                .fold(0u64, u64::wrapping_add)
        };
        CacheStats {
            hits: sum(|s| &s.hits),
            misses: sum(|s| &s.misses),
            evictions: sum(|s| &s.evictions),
            invalidated: self.invalidated.load(Ordering::Relaxed),
            entries,
        }
    }
}

/// Page sizes an entry can have, as log2; an entry's tag stores the index into this.
const SHIFTS: [u8; 3] = [12, 21, 30];
/// Entries per set.
const WAYS: usize = 8;
/// Words per entry (see [`Entry`]).
const WORDS: usize = 5;
/// Optimistic reads of a set tried before a lookup gives up and misses (a miss walks the
/// tables, which is always correct): a reader never waits for a writer.
const READ_ATTEMPTS: usize = 4;

/// One IOTLB entry as five words, so that a set can be read with atomic loads only:
///
/// - 0, tag: IOVA page base | size index << 1 | 1 (0 = empty way);
/// - 1, requester: PASID << 32 | has-PASID << 16 | source ID (the request's tag);
/// - 2, output page base | perms (R, W, X in bits 0-2) | kind << 3 | has-PASID << 6;
/// - 3, the translation's PASID << 32 | DID (the domain tag invalidations select on);
/// - 4, the leaf entry as the walk left it.
type Entry = [u64; WORDS];

fn tag_word(base: u64, size_index: usize) -> u64 {
    base | (size_index as u64) << 1 | 1
}

fn requester_word(sid: u16, pasid: Option<u32>) -> u64 {
    match pasid {
        Some(p) => u64::from(p) << 32 | 1 << 16 | u64::from(sid),
        None => u64::from(sid),
    }
}

fn kind_code(kind: TranslationKind) -> u64 {
    match kind {
        TranslationKind::LegacySecondStage => 0,
        TranslationKind::LegacyPassThrough => 1,
        TranslationKind::FirstStage => 2,
        TranslationKind::SecondStage => 3,
        TranslationKind::Nested => 4,
        TranslationKind::PassThrough => 5,
        TranslationKind::Disabled => 6,
    }
}

fn kind_of(code: u64) -> TranslationKind {
    match code {
        0 => TranslationKind::LegacySecondStage,
        1 => TranslationKind::LegacyPassThrough,
        2 => TranslationKind::FirstStage,
        3 => TranslationKind::SecondStage,
        4 => TranslationKind::Nested,
        5 => TranslationKind::PassThrough,
        _ => TranslationKind::Disabled,
    }
}

fn domain_word(did: u16, pasid: Option<u32>) -> u64 {
    u64::from(pasid.unwrap_or(0)) << 32 | u64::from(did)
}

fn encode(tag: u64, requester: u64, t: &Translation) -> Entry {
    let p = t.perms;
    let info = t.output_base()
        | u64::from(p.read)
        | u64::from(p.write) << 1
        | u64::from(p.execute) << 2
        | kind_code(t.kind) << 3
        | u64::from(t.pasid.is_some()) << 6;
    [tag, requester, info, domain_word(t.did, t.pasid), t.leaf]
}

fn decode(e: &Entry, iova: u64) -> Translation {
    let page_size = 1u64 << SHIFTS[((e[0] >> 1) & 3) as usize];
    Translation {
        output: (e[2] & !0xfff) | (iova & (page_size - 1)),
        page_size,
        perms: Perms {
            read: e[2] & 1 != 0,
            write: e[2] & 2 != 0,
            execute: e[2] & 4 != 0,
        },
        did: e[3] as u16,
        pasid: (e[2] & 1 << 6 != 0).then_some((e[3] >> 32) as u32),
        kind: kind_of((e[2] >> 3) & 7),
        leaf: e[4],
    }
}

fn entry_did(e: &Entry) -> u16 {
    e[3] as u16
}

fn entry_pasid(e: &Entry) -> Option<u32> {
    (e[2] & 1 << 6 != 0).then_some((e[3] >> 32) as u32)
}

/// The IOVA range `[start, end)` an entry covers.
fn entry_range(e: &Entry) -> (u64, u64) {
    let base = e[0] & !0xfff;
    let size = 1u64 << SHIFTS[((e[0] >> 1) & 3) as usize];
    (base, base.saturating_add(size))
}

/// A set of [`WAYS`] entries behind a sequence lock.
///
/// `seq` is even while the set is stable and odd while a writer is inside; it is also the
/// writers' lock (a writer makes it odd with a compare-exchange). Readers never write: they
/// read `seq`, the ways, `seq` again, and keep what they read only if `seq` did not move
/// (Boehm, "Can seqlocks get along with programming language memory models?", 2012: the
/// acquire fence between the data loads and the second `seq` load).
#[derive(Default)]
#[repr(align(64))]
struct Set {
    seq: AtomicU64,
    ways: [[AtomicU64; WORDS]; WAYS],
}

/// A writer inside a set; unlocks on drop.
struct SetWriter<'a> {
    set: &'a Set,
    seq: u64,
}

impl Drop for SetWriter<'_> {
    fn drop(&mut self) {
        self.set
            .seq
            .store(self.seq.wrapping_add(2), Ordering::Release);
    }
}

impl SetWriter<'_> {
    fn read(&self, way: usize) -> Entry {
        let w = &self.set.ways[way];
        std::array::from_fn(|i| w[i].load(Ordering::Relaxed))
    }

    /// Words 0 and 1 of a way: what a fill looks for.
    fn tag_and_requester(&self, way: usize) -> (u64, u64) {
        let w = &self.set.ways[way];
        (w[0].load(Ordering::Relaxed), w[1].load(Ordering::Relaxed))
    }

    fn write(&self, way: usize, e: &Entry) {
        for (slot, v) in self.set.ways[way].iter().zip(e) {
            slot.store(*v, Ordering::Relaxed);
        }
    }

    fn clear(&self, way: usize) {
        self.set.ways[way][0].store(0, Ordering::Relaxed);
    }

    /// Removes the valid entries `remove` selects; returns how many.
    fn remove_where(&self, mut remove: impl FnMut(&Entry) -> bool) -> u64 {
        let mut n = 0;
        for way in 0..WAYS {
            let e = self.read(way);
            if e[0] != 0 && remove(&e) {
                self.clear(way);
                n += 1;
            }
        }
        n
    }
}

impl Set {
    /// Takes the writers' lock. Writers hold it for a few stores, so spinning is short; a
    /// writer preempted inside only delays other writers (readers give up and walk).
    fn lock(&self) -> SetWriter<'_> {
        let mut spins = 0u32;
        loop {
            let seq = self.seq.load(Ordering::Relaxed);
            if seq & 1 == 0
                && self
                    .seq
                    .compare_exchange_weak(seq, seq | 1, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                // Orders the odd `seq` before the entry stores for readers (see `Set`).
                fence(Ordering::Release);
                return SetWriter { set: self, seq };
            }
            spins += 1;
            if spins % 64 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// A consistent read of the set: `visit` sees each valid entry and may stop the scan by
    /// returning `Some`. `None` when writers kept the set busy for every attempt.
    fn read<R>(&self, mut visit: impl FnMut(&Entry) -> Option<R>) -> Option<Option<R>> {
        for _ in 0..READ_ATTEMPTS {
            let seq = self.seq.load(Ordering::SeqCst);
            if seq & 1 == 0 {
                let mut found = None;
                for w in &self.ways {
                    let tag = w[0].load(Ordering::Relaxed);
                    if tag == 0 {
                        continue;
                    }
                    let e: Entry = std::array::from_fn(|i| {
                        if i == 0 {
                            tag
                        } else {
                            w[i].load(Ordering::Relaxed)
                        }
                    });
                    if let Some(r) = visit(&e) {
                        found = Some(r);
                        break;
                    }
                }
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::SeqCst) == seq {
                    return Some(found);
                }
            }
            std::hint::spin_loop();
        }
        None
    }

    /// The entry tagged (`tag`, `requester`), read optimistically: `Err(())` when writers
    /// kept the set busy.
    fn find(&self, tag: u64, requester: u64) -> Result<Option<Entry>, ()> {
        for _ in 0..READ_ATTEMPTS {
            let seq = self.seq.load(Ordering::Acquire);
            if seq & 1 == 0 {
                let mut found = None;
                for w in &self.ways {
                    if w[0].load(Ordering::Relaxed) == tag
                        && w[1].load(Ordering::Relaxed) == requester
                    {
                        found = Some([
                            tag,
                            requester,
                            w[2].load(Ordering::Relaxed),
                            w[3].load(Ordering::Relaxed),
                            w[4].load(Ordering::Relaxed),
                        ]);
                        break;
                    }
                }
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == seq {
                    return Ok(found);
                }
            }
            std::hint::spin_loop();
        }
        Err(())
    }

    /// Removes the entries `remove` selects, taking the lock only if a consistent read found
    /// one. Skipping a set on an unlocked read is safe against a fill racing this removal:
    /// the seq loads and the writers' compare-exchange are SeqCst, so a fill that locks the
    /// set after this read also reads the epoch after the invalidation advanced it, and drops
    /// itself.
    fn remove_where(&self, remove: impl Fn(&Entry) -> bool) -> u64 {
        if let Some(None) = self.read(|e| remove(e).then_some(())) {
            return 0;
        }
        self.lock().remove_where(remove)
    }
}

/// Which requesters have filled entries of a domain: the index that lets a page-selective
/// invalidation, which names a domain and pages but not requesters, probe only the sets those
/// pages can be in.
///
/// Fills register (domain, requester) before they lock their set and check the epoch, and
/// invalidations read it after advancing the epoch, so a fill the invalidation's read misses
/// sees the advanced epoch and drops itself. Removing pairs (domain and global invalidations)
/// bumps `generation` before the sets are swept; a fill rechecks the generation under its
/// set lock, so it never leaves an entry whose pair was removed. Bounded: past
/// `MAX_REGISTERED` pairs it stops recording and page invalidations sweep the whole cache
/// (bounded by its size) until a global invalidation empties it.
struct Registry {
    by_domain: HashMap<u16, Vec<u64>, FxBuildHasher>,
    pairs: usize,
    overflowed: bool,
}

const MAX_REGISTERED: usize = 4096;

/// Which IOTLB entries an invalidation removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IotlbScope {
    /// Everything.
    Global,
    /// Every entry of a domain (any PASID).
    Domain {
        /// DID.
        did: u16,
    },
    /// Entries of a domain (any PASID) overlapping `[addr, addr + size)`.
    DomainPages {
        /// DID.
        did: u16,
        /// Start.
        addr: u64,
        /// Length in bytes.
        size: u64,
    },
    /// Every entry of (domain, PASID).
    Pasid {
        /// DID.
        did: u16,
        /// PASID.
        pasid: u32,
    },
    /// Entries of (domain, PASID) overlapping `[addr, addr + size)`.
    PasidPages {
        /// DID.
        did: u16,
        /// PASID.
        pasid: u32,
        /// Start.
        addr: u64,
        /// Length in bytes.
        size: u64,
    },
}

impl IotlbScope {
    fn did(&self) -> Option<u16> {
        match *self {
            Self::Global => None,
            Self::Domain { did }
            | Self::DomainPages { did, .. }
            | Self::Pasid { did, .. }
            | Self::PasidPages { did, .. } => Some(did),
        }
    }

    /// Whether the scope removes `e`.
    fn covers(&self, e: &Entry) -> bool {
        let overlaps = |addr: u64, size: u64| {
            let (start, end) = entry_range(e);
            start < addr.saturating_add(size) && end > addr
        };
        match *self {
            Self::Global => true,
            Self::Domain { did } => entry_did(e) == did,
            Self::DomainPages { did, addr, size } => entry_did(e) == did && overlaps(addr, size),
            Self::Pasid { did, pasid } => entry_did(e) == did && entry_pasid(e) == Some(pasid),
            Self::PasidPages {
                did,
                pasid,
                addr,
                size,
            } => entry_did(e) == did && entry_pasid(e) == Some(pasid) && overlaps(addr, size),
        }
    }
}

/// Identifies an IOTLB in the per-thread registration memo.
static NEXT_IOTLB_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The last (IOTLB, generation, domain, requester) this thread registered: a device
    /// thread fills for the same requester and domain over and over, and this spares each of
    /// those fills the registry lock.
    static REGISTERED: Cell<[u64; 4]> = const { Cell::new([0; 4]) };
}

/// The IOTLB.
pub(crate) struct Iotlb {
    sets: Box<[Set]>,
    set_mask: u64,
    counters: HitCounters,
    registry: Mutex<Registry>,
    generation: AtomicU64,
    id: u64,
    /// Bit `i` set once an entry of page size `SHIFTS[i]` was filled (never cleared): a lookup
    /// probes only the sizes that may be cached, so a unit whose tables use 4 KiB pages only
    /// misses after one set instead of three. Only a hint: a lookup that reads it before a
    /// concurrent fill sets it misses and walks, which is always correct.
    sizes_filled: AtomicU64,
}

impl Iotlb {
    /// An IOTLB of at least `capacity` entries (rounded up to a power of two of sets).
    pub(crate) fn new(capacity: usize) -> Self {
        let sets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        Self {
            sets: (0..sets).map(|_| Set::default()).collect(),
            set_mask: sets as u64 - 1,
            counters: HitCounters::new(),
            registry: Mutex::new(Registry {
                by_domain: HashMap::default(),
                pairs: 0,
                overflowed: false,
            }),
            generation: AtomicU64::new(0),
            id: NEXT_IOTLB_ID.fetch_add(1, Ordering::Relaxed),
            sizes_filled: AtomicU64::new(0),
        }
    }

    /// An identifier no other IOTLB of this process has.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Entries it can hold.
    pub(crate) fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// The set of (`requester`, page `base` of size index `size_index`): consecutive pages of
    /// one requester fall in consecutive sets, so one device can fill the whole cache with one
    /// range; the requester and size are mixed in so other devices' same pages spread.
    fn set_of(&self, requester: u64, base: u64, size_index: usize) -> &Set {
        let mix = (requester ^ (size_index as u64) << 62)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
        let page = base >> SHIFTS[size_index];
        // Pages that differ only above the index bits (the same offset in other 1 GiB
        // ranges) are spread by a hash of those bits; inside an aligned block of as many
        // pages as there are sets, the index stays a bijection.
        let high = (page >> self.set_mask.count_ones()).wrapping_mul(0xff51_afd7_ed55_8ccd);
        &self.sets[((page ^ mix ^ high >> 32) & self.set_mask) as usize]
    }

    /// Looks `iova` up for `access`; an entry that does not grant the access is a miss (the
    /// walk that follows sets D or reports the fault). Writes nothing shared: the sets are
    /// read optimistically and the counters are the calling thread's.
    pub(crate) fn lookup(
        &self,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        access: AccessKind,
    ) -> Option<Translation> {
        let requester = requester_word(sid, pasid);
        let sizes_filled = self.sizes_filled.load(Ordering::Relaxed);
        for (size_index, shift) in SHIFTS.iter().enumerate() {
            if sizes_filled & 1 << size_index == 0 {
                continue;
            }
            let base = iova & !((1u64 << shift) - 1);
            let tag = tag_word(base, size_index);
            match self
                .set_of(requester, base, size_index)
                .find(tag, requester)
            {
                Ok(Some(e)) => {
                    let t = decode(&e, iova);
                    if t.perms.allows(access) {
                        self.counters.hit();
                        return Some(t);
                    }
                    break;
                }
                Ok(None) => {}
                Err(()) => break,
            }
        }
        self.counters.miss();
        None
    }

    /// Records that `requester` fills entries of `did`; returns the registry generation the
    /// record belongs to.
    fn register(&self, did: u16, requester: u64) -> u64 {
        let memo = [
            self.id,
            self.generation.load(Ordering::SeqCst),
            u64::from(did),
            requester,
        ];
        if REGISTERED.with(Cell::get) == memo {
            return memo[1];
        }
        let mut reg = self.registry.lock();
        let generation = self.generation.load(Ordering::SeqCst);
        if !reg.overflowed {
            let Registry {
                by_domain, pairs, ..
            } = &mut *reg;
            let list = by_domain.entry(did).or_default();
            if !list.contains(&requester) {
                if *pairs >= MAX_REGISTERED {
                    reg.overflowed = true;
                } else {
                    list.push(requester);
                    *pairs += 1;
                }
            }
        }
        drop(reg);
        REGISTERED.with(|r| r.set([self.id, generation, u64::from(did), requester]));
        generation
    }

    /// Caches `t` for the request's tag, unless an invalidation started after `epoch`.
    pub(crate) fn insert(
        &self,
        epochs: &Epoch,
        epoch: u64,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        t: Translation,
    ) {
        let shift = t.page_size.trailing_zeros() as u8;
        let Some(size_index) = SHIFTS.iter().position(|s| *s == shift) else {
            return;
        };
        let size_bit = 1 << size_index;
        if self.sizes_filled.load(Ordering::Relaxed) & size_bit == 0 {
            self.sizes_filled.fetch_or(size_bit, Ordering::Relaxed);
        }
        let requester = requester_word(sid, pasid);
        let base = iova & !(t.page_size - 1);
        let tag = tag_word(base, size_index);
        let entry = encode(tag, requester, &t);
        let generation = self.register(t.did, requester);
        let set = self.set_of(requester, base, size_index).lock();
        if !epochs.unchanged_since(epoch) || self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        let mut target = None;
        let mut free = None;
        for way in 0..WAYS {
            let (way_tag, way_requester) = set.tag_and_requester(way);
            if way_tag == tag && way_requester == requester {
                target = Some(way);
                break;
            }
            if way_tag == 0 && free.is_none() {
                free = Some(way);
            }
        }
        let way = target.or(free).unwrap_or_else(|| {
            // Every way holds another page: replace one in turn (the set's write count
            // rotates through the ways), no per-entry age to maintain.
            self.counters.evicted();
            (set.seq / 2) as usize % WAYS
        });
        set.write(way, &entry);
    }

    /// Removes what `scope` covers; returns how many entries went. The caller advanced the
    /// epoch first. Page-selective scopes probe only the sets their pages can be in, for each
    /// requester registered in the domain: the work follows what the range covers, not how
    /// much is cached, and is at most one sweep of the cache.
    pub(crate) fn invalidate(&self, scope: IotlbScope) -> u64 {
        let removed = match scope {
            IotlbScope::Global | IotlbScope::Domain { .. } | IotlbScope::Pasid { .. } => {
                if !matches!(scope, IotlbScope::Pasid { .. }) {
                    self.forget(scope.did());
                }
                self.sweep(&scope)
            }
            IotlbScope::DomainPages { did, addr, size }
            | IotlbScope::PasidPages {
                did, addr, size, ..
            } => self.invalidate_pages(&scope, did, addr, size),
        };
        self.counters
            .invalidated
            .fetch_add(removed, Ordering::Relaxed);
        removed
    }

    /// Drops the registry's pairs of `did` (all with `None`) before a sweep removes their
    /// entries (see [`Registry`]).
    fn forget(&self, did: Option<u16>) {
        let mut reg = self.registry.lock();
        match did {
            None => {
                reg.by_domain.clear();
                reg.pairs = 0;
                reg.overflowed = false;
            }
            Some(did) => {
                if let Some(list) = reg.by_domain.remove(&did) {
                    reg.pairs -= list.len();
                }
            }
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn sweep(&self, scope: &IotlbScope) -> u64 {
        self.sets
            .iter()
            .map(|s| s.remove_where(|e| scope.covers(e)))
            .sum()
    }

    fn invalidate_pages(&self, scope: &IotlbScope, did: u16, addr: u64, size: u64) -> u64 {
        if size == 0 {
            return 0;
        }
        let requesters = {
            let reg = self.registry.lock();
            if reg.overflowed {
                None
            } else {
                Some(reg.by_domain.get(&did).cloned().unwrap_or_default())
            }
        };
        let Some(requesters) = requesters else {
            return self.sweep(scope);
        };
        let last = addr.saturating_add(size - 1);
        let probes_per_requester: u64 = SHIFTS
            .iter()
            .map(|s| ((last >> s) - (addr >> s)).saturating_add(1))
            .fold(0, u64::saturating_add);
        if probes_per_requester.saturating_mul(requesters.len() as u64) > self.sets.len() as u64 {
            return self.sweep(scope);
        }
        let mut removed = 0;
        for requester in requesters {
            for (size_index, shift) in SHIFTS.iter().enumerate() {
                let mut base = addr & !((1u64 << shift) - 1);
                loop {
                    let tag = tag_word(base, size_index);
                    removed += self
                        .set_of(requester, base, size_index)
                        .remove_where(|e| e[0] == tag && e[1] == requester && scope.covers(e));
                    match base.checked_add(1 << shift) {
                        Some(next) if next <= last => base = next,
                        _ => break,
                    }
                }
            }
        }
        removed
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let entries = self
            .sets
            .iter()
            .map(|s| {
                s.ways
                    .iter()
                    .filter(|w| w[0].load(Ordering::Relaxed) != 0)
                    .count() as u64
            })
            .sum();
        self.counters.snapshot(entries)
    }
}

/// The invalidation epoch shared by the caches.
#[derive(Default)]
pub(crate) struct Epoch(AtomicU64);

impl Epoch {
    /// Read before a walk.
    pub(crate) fn current(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    /// Bumped before an invalidation removes anything, and again after it removed
    /// everything: a fill (or a derived cache's tag) taken at any point of the invalidation
    /// then differs from the epoch after its completion.
    pub(crate) fn advance(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn unchanged_since(&self, epoch: u64) -> bool {
        self.current() == epoch
    }
}

/// A bounded map cache with the same fill rule, for context and PASID entries.
pub(crate) struct EntryCache<K, V> {
    map: RwLock<HashMap<K, V, FxBuildHasher>>,
    capacity: usize,
    counters: HitCounters,
}

impl<K: Copy + Eq + Hash, V: Copy> EntryCache<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: RwLock::new(HashMap::default()),
            capacity: capacity.max(1),
            counters: HitCounters::new(),
        }
    }

    /// Counts a hit served for this cache by a per-thread memo in front of it (the unit's
    /// last-walk memo), so the statistics count every lookup the cache answered.
    pub(crate) fn count_hit(&self) {
        self.counters.hit();
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let v = self.map.read().get(key).copied();
        if v.is_some() {
            self.counters.hit();
        } else {
            self.counters.miss();
        }
        v
    }

    pub(crate) fn insert(&self, epochs: &Epoch, epoch: u64, key: K, value: V) {
        let mut map = self.map.write();
        if !epochs.unchanged_since(epoch) {
            return;
        }
        if !map.contains_key(&key) && map.len() >= self.capacity {
            if let Some(victim) = map.keys().next().copied() {
                map.remove(&victim);
                self.counters.evicted();
            }
        }
        map.insert(key, value);
    }

    pub(crate) fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) -> u64 {
        let mut map = self.map.write();
        let before = map.len();
        map.retain(|k, v| keep(k, v));
        let removed = (before - map.len()) as u64;
        self.counters
            .invalidated
            .fetch_add(removed, Ordering::Relaxed);
        removed
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let n = self.map.read().len() as u64;
        self.counters.snapshot(n)
    }
}

/// The context cache: requester ID -> context entry.
pub(crate) type ContextCache = EntryCache<u16, DeviceContext>;
/// The PASID cache: (requester ID, PASID) -> PASID table entry.
pub(crate) type PasidCache = EntryCache<(u16, u32), PasidEntry>;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;
    use vtd_tables::walk::{Perms, TranslationKind};

    fn t(did: u16, pasid: Option<u32>, output: u64, page_size: u64) -> Translation {
        Translation {
            output,
            page_size,
            perms: Perms::ALL,
            did,
            pasid,
            kind: TranslationKind::FirstStage,
            leaf: 0,
        }
    }

    /// Runs a test's body on a thread of its own and aborts the test binary if it has not
    /// finished within 10 s (these tests take milliseconds; 10 s leaves room for a loaded CI
    /// machine and stays under cargo-mutants' 20 s test timeout): a set lock never
    /// released, a probe loop or a queue doorbell that never ends would otherwise spin
    /// forever, and a hung binary says nothing about which invariant broke. The spinning
    /// thread cannot be stopped, hence the abort.
    pub(crate) fn bounded(body: impl FnOnce() + Send + 'static) {
        use std::sync::mpsc::{RecvTimeoutError, channel};
        let (done, finished) = channel();
        let worker = std::thread::spawn(move || {
            body();
            let _ = done.send(());
        });
        match finished.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(()) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if let Err(panic) = worker.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                eprintln!("test still running after 10 s: a loop that should be bounded is not");
                std::process::abort();
            }
        }
    }

    #[test]
    fn hits_every_page_size_and_respects_scope() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(1024);
            tlb.insert(&e, 0, 8, None, 0x1234_5000, t(5, Some(0), 0x9000, 4096));
            tlb.insert(
                &e,
                0,
                8,
                None,
                0x4020_0000,
                t(5, Some(0), 0x20_0000, 2 << 20),
            );
            tlb.insert(
                &e,
                0,
                8,
                None,
                0x8000_0000,
                t(6, Some(0), 0x4000_0000, 1 << 30),
            );
            let hit = tlb.lookup(8, None, 0x1234_5abc, AccessKind::Write).unwrap();
            assert_eq!(hit.output, 0x9abc);
            assert_eq!(
                tlb.lookup(8, None, 0x403f_ffff, AccessKind::Read)
                    .unwrap()
                    .output,
                0x3f_ffff
            );
            assert_eq!(
                tlb.lookup(8, None, 0xbfff_ffff, AccessKind::Read)
                    .unwrap()
                    .output,
                0x7fff_ffff
            );
            assert!(
                tlb.lookup(9, None, 0x1234_5000, AccessKind::Read).is_none(),
                "other requester"
            );
            assert!(
                tlb.lookup(8, Some(1), 0x1234_5000, AccessKind::Read)
                    .is_none(),
                "other PASID tag"
            );
            // A 4 KiB range inside the 2 MiB page removes the 2 MiB entry.
            assert_eq!(
                tlb.invalidate(IotlbScope::PasidPages {
                    did: 5,
                    pasid: 0,
                    addr: 0x4030_0000,
                    size: 4096
                }),
                1
            );
            assert!(tlb.lookup(8, None, 0x4020_0000, AccessKind::Read).is_none());
            assert_eq!(
                tlb.invalidate(IotlbScope::DomainPages {
                    did: 5,
                    addr: 0x1234_6000,
                    size: 4096
                }),
                0
            );
            assert_eq!(tlb.invalidate(IotlbScope::Domain { did: 5 }), 1);
            assert_eq!(tlb.invalidate(IotlbScope::Global), 1);
            assert_eq!(tlb.stats().entries, 0);
        });
    }

    #[test]
    fn a_fill_racing_an_invalidation_is_dropped() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(64);
            let start = e.current();
            e.advance(); // an invalidation began after the walk
            tlb.insert(&e, start, 8, None, 0x1000, t(1, None, 0x2000, 4096));
            assert!(tlb.lookup(8, None, 0x1000, AccessKind::Read).is_none());
        });
    }

    #[test]
    fn one_device_fills_every_way_of_one_range() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(1024);
            for i in 0..1024u64 {
                tlb.insert(&e, 0, 8, None, i << 12, t(1, None, i << 12, 4096));
            }
            let s = tlb.stats();
            assert_eq!((s.entries, s.evictions), (1024, 0), "{s:?}");
            for i in 0..1024u64 {
                assert!(tlb.lookup(8, None, i << 12, AccessKind::Read).is_some());
            }
            // With every way of every set taken, invalidations still find exactly their
            // entries.
            let one_page = IotlbScope::DomainPages {
                did: 1,
                addr: 5 << 12,
                size: 4096,
            };
            assert_eq!(tlb.invalidate(one_page), 1);
            assert!(tlb.lookup(8, None, 5 << 12, AccessKind::Read).is_none());
            assert!(tlb.lookup(8, None, 6 << 12, AccessKind::Read).is_some());
            assert_eq!(tlb.invalidate(IotlbScope::Domain { did: 1 }), 1023);
        });
    }

    #[test]
    fn a_fill_after_its_requester_was_forgotten_registers_it_again() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(64);
            // The fill registered its requester, then a domain invalidation forgot it before
            // the fill locked its set (the epoch alone cannot tell: the walk began after it).
            let generation = tlb.register(1, requester_word(8, None));
            tlb.forget(Some(1));
            assert_ne!(tlb.generation.load(Ordering::SeqCst), generation);
            tlb.insert(&e, 0, 8, None, 0x1000, t(1, None, 0x2000, 4096));
            // insert re-registered under the new generation, so this one is kept and findable.
            assert!(tlb.lookup(8, None, 0x1000, AccessKind::Read).is_some());
            assert_eq!(
                tlb.invalidate(IotlbScope::DomainPages {
                    did: 1,
                    addr: 0x1000,
                    size: 4096
                }),
                1
            );
        });
    }

    #[test]
    fn page_invalidation_finds_entries_of_every_requester_of_the_domain() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(4096);
            for sid in [1u16, 2, 3] {
                tlb.insert(&e, 0, sid, None, 0x7000, t(9, Some(0), 0x1000, 4096));
                tlb.insert(
                    &e,
                    0,
                    sid,
                    None,
                    0x20_0000,
                    t(9, Some(0), 0x20_0000, 2 << 20),
                );
            }
            tlb.insert(&e, 0, 4, None, 0x7000, t(10, Some(0), 0x1000, 4096));
            // 4 KiB at 0x20_7000 is inside every 2 MiB entry; 0x7000 is every 4 KiB one.
            assert_eq!(
                tlb.invalidate(IotlbScope::PasidPages {
                    did: 9,
                    pasid: 0,
                    addr: 0x7000,
                    size: 0x20_1000
                }),
                6
            );
            assert!(
                tlb.lookup(4, None, 0x7000, AccessKind::Read).is_some(),
                "other domain"
            );
            // A range wider than the cache's sets falls back to one sweep, same result.
            tlb.insert(&e, 0, 1, None, 0x7000, t(9, Some(0), 0x1000, 4096));
            assert_eq!(
                tlb.invalidate(IotlbScope::DomainPages {
                    did: 9,
                    addr: 0,
                    size: 1 << 40
                }),
                1
            );
        });
    }

    #[test]
    fn capacity_is_bounded() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(32);
            for i in 0..1000u64 {
                tlb.insert(&e, 0, 8, None, i << 12, t(1, None, i << 12, 4096));
            }
            let s = tlb.stats();
            assert!(s.entries <= 32, "{s:?}");
            assert!(s.evictions >= 1000 - 32);
            // Indices stay consistent with the map after evictions.
            assert_eq!(tlb.invalidate(IotlbScope::Domain { did: 1 }), s.entries);
        });
    }

    const KINDS: [TranslationKind; 7] = [
        TranslationKind::LegacySecondStage,
        TranslationKind::LegacyPassThrough,
        TranslationKind::FirstStage,
        TranslationKind::SecondStage,
        TranslationKind::Nested,
        TranslationKind::PassThrough,
        TranslationKind::Disabled,
    ];

    /// The cache is invisible to the device: a hit anywhere in the page returns the translation
    /// the walk produced (output at the hit's offset), field for field, for every kind,
    /// permission set, PASID and page size.
    #[test]
    fn a_hit_returns_what_the_walk_produced() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(1024);
            let mut n = 0u64;
            for kind in KINDS {
                for rights in 1..8u8 {
                    let perms = Perms {
                        read: rights & 1 != 0,
                        write: rights & 2 != 0,
                        execute: rights & 4 != 0,
                    };
                    let access = if perms.read {
                        AccessKind::Read
                    } else {
                        AccessKind::Write
                    };
                    for (pasid, tag_pasid) in [(None, None), (Some(0xf_ffff), Some(0xa_bcde))] {
                        for page_size in [4096, 2 << 20, 1 << 30] {
                            n += 1;
                            let base = (n + 1) << 30;
                            let out = (0x100 + n) << 30;
                            let walked = Translation {
                                output: out + 0x123,
                                page_size,
                                perms,
                                did: 0xa000 | n as u16,
                                pasid,
                                kind,
                                leaf: 0x8000_0000_0000_0000 | n << 12 | 0x67,
                            };
                            tlb.insert(&e, 0, 0x1234, tag_pasid, base + 0x123, walked);
                            let last = base + page_size - 1;
                            let hit = tlb.lookup(0x1234, tag_pasid, last, access);
                            let expect = Translation {
                                output: out + page_size - 1,
                                ..walked
                            };
                            assert_eq!(hit, (rights != 4).then_some(expect), "{walked:?}");
                        }
                    }
                }
            }
        });
    }

    /// Entries are tagged by requester ID and PASID (spec 6.2.1: the IOTLB is tagged with the
    /// request's source and PASID): no other requester, no request with another PASID and no
    /// request without PASID finds an entry filled for a request with PASID 0, and the other
    /// way round.
    #[test]
    fn entries_are_tagged_by_requester_and_pasid() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(1024);
            let out = |sid, pasid| {
                tlb.lookup(sid, pasid, 0x5000, AccessKind::Read)
                    .map(|t| t.output)
            };
            tlb.insert(&e, 0, 0x0100, None, 0x5000, t(1, None, 0x1_0000, 4096));
            tlb.insert(
                &e,
                0,
                0x0100,
                Some(0),
                0x5000,
                t(1, Some(0), 0x2_0000, 4096),
            );
            tlb.insert(
                &e,
                0,
                0x0100,
                Some(1 << 16),
                0x5000,
                t(1, None, 0x3_0000, 4096),
            );
            assert_eq!(out(0x0100, None), Some(0x1_0000));
            assert_eq!(out(0x0100, Some(0)), Some(0x2_0000));
            assert_eq!(out(0x0100, Some(1 << 16)), Some(0x3_0000));
            assert_eq!(out(0x0100, Some(1)), None);
            assert_eq!(out(0x0101, None), None);
            assert_eq!(out(0x0000, None), None);
            let s = tlb.stats();
            assert_eq!((s.entries, s.hits, s.misses), (3, 3, 3), "{s:?}");
        });
    }

    /// An entry that does not grant the access is a miss (the walk that follows sets D or
    /// reports the fault), and the walk's fill replaces it rather than adding a second entry
    /// for the page.
    #[test]
    fn a_refill_of_a_cached_page_replaces_its_entry() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(64);
            let read_only = Translation {
                perms: Perms {
                    read: true,
                    write: false,
                    execute: false,
                },
                ..t(1, None, 0x9000, 4096)
            };
            tlb.insert(&e, 0, 8, None, 0x1000, read_only);
            assert!(tlb.lookup(8, None, 0x1000, AccessKind::Read).is_some());
            assert!(tlb.lookup(8, None, 0x1000, AccessKind::Write).is_none());
            tlb.insert(&e, 0, 8, None, 0x1000, t(1, None, 0x9000, 4096));
            assert!(tlb.lookup(8, None, 0x1000, AccessKind::Write).is_some());
            let s = tlb.stats();
            assert_eq!((s.entries, s.evictions), (1, 0), "{s:?}");
        });
    }

    /// The IOTLB holds at least what it was asked for, in whole sets of `WAYS` entries.
    #[test]
    fn capacity_is_rounded_up_to_whole_sets() {
        bounded(|| {
            assert_eq!(Iotlb::new(1000).capacity(), 1024);
            assert_eq!(Iotlb::new(1).capacity(), WAYS);
            assert_eq!(Iotlb::new(16 * WAYS).capacity(), 16 * WAYS);
            assert_ne!(Iotlb::new(8).id(), Iotlb::new(8).id());
        });
    }

    /// Every scope removes what it covers and reports how many entries went, and the
    /// statistics count them: the PASID scopes select on the translation's PASID, the domain
    /// scopes on its DID, the page scopes on overlap with the range.
    #[test]
    fn each_scope_removes_what_it_covers_and_counts_it() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(1024);
            let fill = || {
                // (requester, PASID of the translation, DID, IOVA)
                for (sid, pasid, did, iova) in [
                    (1, Some(3), 7, 0x1000),
                    (1, Some(3), 7, 0x2000),
                    (1, Some(4), 7, 0x1000),
                    (2, None, 7, 0x1000),
                    (2, None, 8, 0x3000),
                ] {
                    tlb.insert(
                        &e,
                        0,
                        sid,
                        pasid,
                        iova,
                        t(did, pasid, 0x10_0000 + iova, 4096),
                    );
                }
                assert_eq!(tlb.stats().entries, 5);
            };
            let cases = [
                (IotlbScope::Global, 5),
                (IotlbScope::Domain { did: 7 }, 4),
                (IotlbScope::Domain { did: 8 }, 1),
                (IotlbScope::Pasid { did: 7, pasid: 3 }, 2),
                (IotlbScope::Pasid { did: 8, pasid: 3 }, 0),
                // A translation without PASID (legacy mode) belongs to no PASID, not to
                // PASID 0: a PASID-selective flush of PASID 0 leaves it (spec 6.5.2.4).
                (IotlbScope::Pasid { did: 7, pasid: 0 }, 0),
                (
                    IotlbScope::PasidPages {
                        did: 8,
                        pasid: 0,
                        addr: 0x3000,
                        size: 0x1000,
                    },
                    0,
                ),
                (
                    IotlbScope::PasidPages {
                        did: 7,
                        pasid: 3,
                        addr: 0x2000,
                        size: 0x1000,
                    },
                    1,
                ),
                (
                    IotlbScope::DomainPages {
                        did: 7,
                        addr: 0x1000,
                        size: 0x1000,
                    },
                    3,
                ),
                (
                    IotlbScope::DomainPages {
                        did: 7,
                        addr: 0x1fff,
                        size: 1,
                    },
                    3,
                ),
                (
                    IotlbScope::DomainPages {
                        did: 7,
                        addr: 0x2000,
                        size: 0,
                    },
                    0,
                ),
            ];
            let mut total = 0;
            for (scope, removed) in cases {
                fill();
                let before = tlb.stats().entries;
                assert_eq!(tlb.invalidate(scope), removed, "{scope:?}");
                total += removed;
                let s = tlb.stats();
                assert_eq!(s.entries, before - removed, "{scope:?}");
                assert_eq!(s.invalidated, total, "{scope:?}");
                tlb.invalidate(IotlbScope::Global);
                total = tlb.stats().invalidated;
            }
        });
    }

    /// A page range covers an entry exactly when they overlap: the byte before the entry and
    /// the byte after it do not, the first and the last byte of it do (for each page size).
    #[test]
    fn a_page_range_covers_an_entry_exactly_when_they_overlap() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(1024);
            for size in [4096u64, 2 << 20, 1 << 30] {
                let base = 4 << 30;
                for (addr, len, covers) in [
                    (base - 1, 1, false),
                    (base + size, 1, false),
                    (base - 0x1000, 0x1000, false),
                    (base, 1, true),
                    (base + size - 1, 1, true),
                    (base - 1, 2, true),
                    (base - 0x1000, size + 0x2000, true),
                ] {
                    tlb.insert(&e, 0, 8, Some(2), base, t(4, Some(2), 0, size));
                    let scope = IotlbScope::PasidPages {
                        did: 4,
                        pasid: 2,
                        addr,
                        size: len,
                    };
                    let removed = tlb.invalidate(scope);
                    assert_eq!(removed, u64::from(covers), "{size:#x}: {addr:#x}+{len:#x}");
                    tlb.invalidate(IotlbScope::Global);
                }
            }
        });
    }

    /// The registry of (domain, requester) pairs is bounded whatever requesters the guest
    /// makes up (`MAX_REGISTERED`), page invalidations stay exact once it overflowed (they
    /// sweep), and a global invalidation empties it; a domain invalidation forgets that
    /// domain's pairs only.
    #[test]
    fn the_requester_registry_is_bounded() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(64);
            let pairs = |tlb: &Iotlb| {
                let reg = tlb.registry.lock();
                (reg.pairs, reg.overflowed)
            };
            for sid in 0..3u16 {
                tlb.insert(&e, 0, sid, None, 0x1000, t(1, None, 0x2000, 4096));
                tlb.insert(&e, 0, sid, None, 0x1000, t(2, None, 0x2000, 4096));
            }
            assert_eq!(pairs(&tlb), (6, false));
            tlb.invalidate(IotlbScope::Domain { did: 1 });
            assert_eq!(pairs(&tlb), (3, false));
            for sid in 0..=MAX_REGISTERED as u16 {
                tlb.insert(&e, 0, sid, Some(1), 0x1000, t(3, Some(1), 0x2000, 4096));
            }
            assert_eq!(pairs(&tlb), (MAX_REGISTERED, true));
            // Overflowed: a page invalidation sweeps and still finds the entry.
            tlb.insert(&e, 0, 0xffff, Some(1), 0x7000, t(3, Some(1), 0x2000, 4096));
            let scope = IotlbScope::PasidPages {
                did: 3,
                pasid: 1,
                addr: 0x7000,
                size: 4096,
            };
            assert_eq!(tlb.invalidate(scope), 1);
            tlb.invalidate(IotlbScope::Global);
            assert_eq!(pairs(&tlb), (0, false));
        });
    }

    /// Past `MAX_REGISTERED` (domain, requester) pairs the registry stops recording, and the
    /// bound costs work, never correctness: a page-selective invalidation then sweeps the
    /// whole cache, so it removes the page for every requester of the domain, the ones never
    /// recorded included, and nothing else; a global invalidation ends the overflow, after
    /// which pairs are recorded (and page invalidations probe by them) again. The cache is
    /// large enough (3 probes x 4,096 requesters fit in its 16,384 sets) that page
    /// invalidations would probe by the registry if overflow did not force the sweep.
    #[test]
    fn past_the_registry_bound_page_invalidations_sweep_every_requester() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(WAYS * 16384);
            assert!(SHIFTS.len() * MAX_REGISTERED <= tlb.sets.len());
            let registry = |tlb: &Iotlb| {
                let reg = tlb.registry.lock();
                (reg.pairs, reg.overflowed)
            };
            let requesters = MAX_REGISTERED as u16 + 64;
            let (did, page, kept_page, other_did) = (7, 0x1000, 0x5000, 8);
            for sid in 0..requesters {
                tlb.insert(&e, 0, sid, None, page, t(did, None, 0x9000, 4096));
                tlb.insert(&e, 0, sid, None, kept_page, t(did, None, 0xa000, 4096));
            }
            // A requester of another domain: the same page, not covered.
            tlb.insert(
                &e,
                0,
                requesters,
                None,
                page,
                t(other_did, None, 0xb000, 4096),
            );
            assert_eq!(registry(&tlb), (MAX_REGISTERED, true));
            let cached = |sid: u16, iova: u64| tlb.lookup(sid, None, iova, AccessKind::Read);
            for sid in 0..requesters {
                assert!(cached(sid, page).is_some() && cached(sid, kept_page).is_some());
            }

            let removed = tlb.invalidate(IotlbScope::DomainPages {
                did,
                addr: page,
                size: 4096,
            });
            assert_eq!(removed, u64::from(requesters), "one entry per requester");
            for sid in 0..requesters {
                assert!(
                    cached(sid, page).is_none(),
                    "requester {sid:#x} kept the page"
                );
                assert!(
                    cached(sid, kept_page).is_some(),
                    "requester {sid:#x} lost another page"
                );
            }
            assert!(
                cached(requesters, page).is_some(),
                "another domain's entry went"
            );
            assert_eq!(
                registry(&tlb),
                (MAX_REGISTERED, true),
                "a page flush forgets nothing"
            );

            tlb.invalidate(IotlbScope::Global);
            assert_eq!(
                registry(&tlb),
                (0, false),
                "a global invalidation ends the overflow"
            );
            for sid in 0..3 {
                tlb.insert(&e, 0, sid, None, page, t(did, None, 0x9000, 4096));
            }
            assert_eq!(registry(&tlb), (3, false), "pairs are recorded again");
            let removed = tlb.invalidate(IotlbScope::DomainPages {
                did,
                addr: page,
                size: 4096,
            });
            assert_eq!(removed, 3);
        });
    }

    /// The context and PASID caches: a fill is kept unless an invalidation started since its
    /// walk, a refill of a cached key replaces it in place, the size stays within capacity
    /// (a fill into a full cache evicts one entry and counts it), and `retain` reports and
    /// counts what it removed.
    #[test]
    fn entry_cache_fills_evictions_and_invalidations() {
        bounded(|| {
            let e = Epoch::default();
            let cache: EntryCache<u16, u64> = EntryCache::new(2);
            assert_eq!(cache.capacity(), 2);
            assert_eq!(EntryCache::<u16, u64>::new(0).capacity(), 1);
            let start = e.current();
            e.advance();
            cache.insert(&e, start, 1, 10);
            assert_eq!(
                cache.get(&1),
                None,
                "a fill racing an invalidation is dropped"
            );
            let now = e.current();
            cache.insert(&e, now, 1, 10);
            cache.insert(&e, now, 2, 20);
            cache.insert(&e, now, 1, 11);
            assert_eq!((cache.get(&1), cache.get(&2)), (Some(11), Some(20)));
            assert_eq!(cache.stats().evictions, 0, "a refill evicts nothing");
            cache.insert(&e, now, 3, 30);
            let s = cache.stats();
            assert_eq!((s.entries, s.evictions), (2, 1), "{s:?}");
            assert_eq!(cache.get(&3), Some(30));
            cache.count_hit();
            let s = cache.stats();
            assert_eq!((s.hits, s.misses), (4, 1), "{s:?}");
            assert_eq!(cache.retain(|k, _| *k != 3), 1);
            assert_eq!(cache.retain(|_, _| false), 1);
            let s = cache.stats();
            assert_eq!((s.entries, s.invalidated), (0, 2), "{s:?}");
        });
    }

    /// The epoch moves on every advance, and only a fill whose walk began at the current
    /// epoch is kept.
    #[test]
    fn the_epoch_tells_whether_an_invalidation_started() {
        bounded(|| {
            let e = Epoch::default();
            let a = e.current();
            assert!(e.unchanged_since(a));
            e.advance();
            let b = e.current();
            assert_ne!(a, b);
            assert!(!e.unchanged_since(a));
            assert!(e.unchanged_since(b));
            e.advance();
            assert_ne!(e.current(), b);
        });
    }

    /// The sets' write counters, one per set.
    fn set_sequences(tlb: &Iotlb) -> Vec<u64> {
        tlb.sets
            .iter()
            .map(|s| s.seq.load(Ordering::SeqCst))
            .collect()
    }

    /// Sweeping invalidations lock only the sets holding a victim (module doc): a set that is
    /// locked makes every lookup in it miss meanwhile, so a sweep must not disturb the sets
    /// it leaves alone.
    #[test]
    fn sweeps_lock_only_the_sets_holding_a_victim() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(256);
            for i in 0..4u64 {
                tlb.insert(&e, 0, 8, Some(1), i << 12, t(1, Some(1), 0, 4096));
                tlb.insert(&e, 0, 9, Some(2), i << 21, t(2, Some(2), 0, 2 << 20));
            }
            let before = set_sequences(&tlb);
            for scope in [
                IotlbScope::Domain { did: 3 },
                IotlbScope::Pasid { did: 1, pasid: 2 },
            ] {
                assert_eq!(tlb.invalidate(scope), 0);
                assert_eq!(set_sequences(&tlb), before, "{scope:?} locked a set");
            }
            assert_eq!(tlb.invalidate(IotlbScope::Domain { did: 1 }), 4);
            let after = set_sequences(&tlb);
            let locked = before.iter().zip(&after).filter(|(b, a)| b != a).count();
            assert!(
                (1..=4).contains(&locked),
                "{locked} sets locked for 4 victims"
            );
            for i in 0..4u64 {
                assert!(tlb.lookup(9, Some(2), i << 21, AccessKind::Read).is_some());
            }
        });
    }

    /// A lookup returns only the entry of its own page and requester, also from a set that
    /// holds other pages of the same requester or the same page of other requesters; and a
    /// page invalidation removes only entries it covers from the sets it probes.
    #[test]
    fn entries_sharing_a_set_stay_apart() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(64);
            let r1 = requester_word(1, None);
            let base = 0x10_0000u64;
            let set = |r, page: u64| tlb.set_of(r, page, 0) as *const Set;
            // Another page of requester 1 in the same set, and a requester whose entry for
            // the same page shares it too (8 sets: both exist among few candidates).
            let other_page = (1..4096u64)
                .map(|i| base + (i << 12))
                .find(|p| set(r1, *p) == set(r1, base))
                .unwrap();
            let other_sid = (3..4096u16)
                .find(|sid| set(requester_word(*sid, None), base) == set(r1, base))
                .unwrap();
            tlb.insert(&e, 0, 1, None, base, t(1, None, 0xa000, 4096));
            assert_eq!(tlb.lookup(1, None, other_page, AccessKind::Read), None);
            assert_eq!(tlb.lookup(other_sid, None, base, AccessKind::Read), None);
            tlb.insert(&e, 0, other_sid, None, base, t(2, None, 0xb000, 4096));
            tlb.insert(&e, 0, 1, None, other_page, t(1, None, 0xc000, 4096));
            tlb.insert(&e, 0, 2, None, base, t(1, None, 0xd000, 4096));
            let out = |sid, iova| {
                tlb.lookup(sid, None, iova, AccessKind::Read)
                    .map(|t| t.output)
            };
            assert_eq!(out(1, base), Some(0xa000));
            assert_eq!(out(other_sid, base), Some(0xb000));
            assert_eq!(out(1, other_page), Some(0xc000));
            assert_eq!(out(2, base), Some(0xd000));
            // Domain 1's page at `base`: requesters 1 and 2, not `other_sid` (domain 2), not
            // the other page.
            let scope = IotlbScope::DomainPages {
                did: 1,
                addr: base,
                size: 4096,
            };
            assert_eq!(tlb.invalidate(scope), 2);
            assert_eq!(out(other_sid, base), Some(0xb000));
            assert_eq!(out(1, other_page), Some(0xc000));
        });
    }

    /// The sequence lock (see `Set`): while a writer is inside a set, a lookup in it misses
    /// rather than read a half-written entry (and never waits); once the writer is out, the
    /// lookup hits again.
    #[test]
    fn a_lookup_misses_while_a_writer_is_inside_the_set() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(64);
            tlb.insert(&e, 0, 8, None, 0x1000, t(1, None, 0x2000, 4096));
            let set = tlb.set_of(requester_word(8, None), 0x1000, 0);
            let writer = set.lock();
            assert!(tlb.lookup(8, None, 0x1000, AccessKind::Read).is_none());
            drop(writer);
            assert!(tlb.lookup(8, None, 0x1000, AccessKind::Read).is_some());
            let s = tlb.stats();
            assert_eq!((s.hits, s.misses), (1, 1), "{s:?}");
        });
    }

    /// A writer waits for the writer inside its set (the lock spins, yielding now and then)
    /// and then does its work: the fill lands once the first writer is out.
    #[test]
    fn a_writer_waits_for_the_writer_inside_its_set() {
        bounded(|| {
            let e = Arc::new(Epoch::default());
            let tlb = Arc::new(Iotlb::new(64));
            let set = tlb.set_of(requester_word(8, None), 0x1000, 0);
            let writer = set.lock();
            let filler = {
                let (e, tlb) = (e.clone(), tlb.clone());
                std::thread::spawn(move || {
                    tlb.insert(&e, 0, 8, None, 0x1000, t(1, None, 0x2000, 4096));
                })
            };
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(
                !filler.is_finished(),
                "the fill got in while the set was locked"
            );
            assert!(tlb.lookup(8, None, 0x1000, AccessKind::Read).is_none());
            drop(writer);
            filler.join().unwrap();
            assert!(tlb.lookup(8, None, 0x1000, AccessKind::Read).is_some());
        });
    }

    /// A full set replaces its ways in turn (module doc: the set's write count rotates through
    /// the ways): after any run of fills into it, the last `WAYS` pages filled are all cached.
    #[test]
    fn a_full_set_replaces_its_ways_in_turn() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(64);
            let r = requester_word(8, None);
            let first = tlb.set_of(r, 0, 0) as *const Set;
            let pages: Vec<u64> = (0..1u64 << 20)
                .map(|p| p << 12)
                .filter(|&base| std::ptr::eq(tlb.set_of(r, base, 0), first))
                .take(3 * WAYS)
                .collect();
            assert_eq!(pages.len(), 3 * WAYS);
            for (n, &page) in pages.iter().enumerate() {
                tlb.insert(&e, 0, 8, None, page, t(1, None, page, 4096));
                let cached: Vec<bool> = pages[..=n]
                    .iter()
                    .map(|&p| tlb.lookup(8, None, p, AccessKind::Read).is_some())
                    .collect();
                let recent = n.saturating_sub(WAYS - 1);
                assert!(cached[recent..].iter().all(|c| *c), "fill {n}: {cached:?}");
                assert!(!cached[..recent].iter().any(|c| *c), "fill {n}: {cached:?}");
            }
            assert_eq!(tlb.stats().evictions, 2 * WAYS as u64);
        });
    }

    /// Requesters and page sizes are mixed into the set choice, and so are the page bits
    /// above the set index (module doc): the same page of many devices, the same page base
    /// at every page size, and the same offset in many 1 GiB ranges spread over the sets
    /// rather than evicting each other from one.
    #[test]
    fn same_pages_of_other_requesters_sizes_and_ranges_spread() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(1024);
            for sid in 0..32u16 {
                tlb.insert(&e, 0, sid, None, 0x4000_0000, t(1, None, 0, 4096));
            }
            for sid in 0..8u16 {
                for size in [4096, 2 << 20, 1 << 30] {
                    tlb.insert(&e, 0, 0x100 + sid, None, 0, t(1, None, 0, size));
                }
            }
            for range in 0..32u64 {
                tlb.insert(
                    &e,
                    0,
                    0x200,
                    None,
                    range << 30 | 0x5000,
                    t(1, None, 0, 4096),
                );
            }
            let s = tlb.stats();
            assert_eq!((s.entries, s.evictions), (88, 0), "{s:?}");
        });
    }

    /// Each thread counts on a stripe of its own (`HitCounters`): threads started together
    /// get different stripes, so their plain load-and-store bumps never race on one counter.
    #[test]
    fn concurrent_threads_count_on_stripes_of_their_own() {
        let stripes: Vec<usize> = (0..4)
            .map(|_| std::thread::spawn(my_stripe))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for (i, a) in stripes.iter().enumerate() {
            assert!(*a < STRIPES);
            assert!(!stripes[i + 1..].contains(a), "{stripes:?}");
        }
        assert_eq!(my_stripe(), my_stripe(), "a thread keeps its stripe");
    }

    /// Page invalidations find their entries anywhere in the 64-bit IOVA space (the guest
    /// chooses the address), including where shifting the range's end would wrap.
    #[test]
    fn page_invalidations_find_entries_anywhere_in_the_address_space() {
        bounded(|| {
            let e = Epoch::default();
            let tlb = Iotlb::new(64);
            for size in [4096u64, 2 << 20, 1 << 30] {
                for base in [0, 1 << 52, 1 << 63, !(size - 1)] {
                    tlb.insert(&e, 0, 8, None, base, t(1, None, 0, size));
                    let scope = IotlbScope::DomainPages {
                        did: 1,
                        addr: base,
                        size: 4096,
                    };
                    assert_eq!(tlb.invalidate(scope), 1, "{size:#x} at {base:#x}");
                }
            }
        });
    }
}
