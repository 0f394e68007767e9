//! The unit's translation caches (VT-d spec 6.2): context cache, PASID cache and IOTLB.
//!
//! - The IOTLB is split into shards chosen by (requester, PASID, 1 GiB region), each behind its
//!   own `RwLock`: a hit takes one shard's read lock, probes at most three keys (4 KiB, 2 MiB,
//!   1 GiB) and allocates nothing.
//! - Each shard indexes its entries by domain and, inside a domain, by IOVA, so a domain or
//!   page-range invalidation visits the entries it removes (plus a logarithmic search), not the
//!   whole cache.
//! - Not-present entries are never cached (the unit is not in caching mode's "may cache
//!   not-present" business: spec 6.1 allows, never requires it).
//! - An invalidation epoch closes the race between a walk that read old tables and an
//!   invalidation that completed meanwhile: a fill is dropped if any invalidation started since
//!   its walk began.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

use rustc_hash::FxBuildHasher;

use crate::sync::RwLock;
use vtd_tables::entries::PasidEntry;
use vtd_tables::walk::{AccessKind, DeviceContext, Translation};

const SHARDS: usize = 16;

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

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    invalidated: AtomicU64,
}

impl Counters {
    fn snapshot(&self, entries: u64) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            invalidated: self.invalidated.load(Ordering::Relaxed),
            entries,
        }
    }
}

/// The IOTLB tag: who asked (requester, PASID the request carried) and which page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct IotlbKey {
    sid: u16,
    /// The request's PASID, or `NO_PASID` (PASIDs are at most 20 bits, so no PASID a request
    /// carries aliases it even when a caller passes a wider value).
    pasid: u64,
    /// IOVA page base, aligned to the entry's page size.
    base: u64,
    /// log2 of the page size: 12, 21 or 30.
    shift: u8,
}

const NO_PASID: u64 = u64::MAX;
const SHIFTS: [u8; 3] = [12, 21, 30];

/// Domain tag of an entry: DID and the PASID it was translated with (`NO_PASID` in legacy).
type DomainTag = (u16, u64);

#[derive(Default)]
struct IotlbShard {
    map: HashMap<IotlbKey, Translation, FxBuildHasher>,
    /// Per domain tag, the keys ordered by IOVA.
    by_domain: HashMap<DomainTag, BTreeSet<(u64, IotlbKey)>, FxBuildHasher>,
}

impl IotlbShard {
    fn remove(&mut self, key: &IotlbKey) -> bool {
        let Some(t) = self.map.remove(key) else {
            return false;
        };
        let tag = domain_tag(&t);
        if let Some(set) = self.by_domain.get_mut(&tag) {
            set.remove(&(key.base, *key));
            if set.is_empty() {
                self.by_domain.remove(&tag);
            }
        }
        true
    }
}

fn domain_tag(t: &Translation) -> DomainTag {
    (t.did, t.pasid.map_or(NO_PASID, u64::from))
}

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

/// The IOTLB.
pub(crate) struct Iotlb {
    shards: Box<[RwLock<IotlbShard>]>,
    per_shard: usize,
    hasher: FxBuildHasher,
    counters: Counters,
}

impl Iotlb {
    pub(crate) fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(IotlbShard::default()))
                .collect(),
            per_shard,
            hasher: FxBuildHasher,
            counters: Counters::default(),
        }
    }

    fn shard_of(&self, sid: u16, pasid: u64, iova: u64) -> usize {
        (self.hasher.hash_one((sid, pasid, iova >> 30)) as usize) % SHARDS
    }

    /// Looks `iova` up for `access`; an entry that does not grant the access is a miss (the
    /// walk that follows sets D or reports the fault).
    pub(crate) fn lookup(
        &self,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        access: AccessKind,
    ) -> Option<Translation> {
        let pasid = pasid.map_or(NO_PASID, u64::from);
        let shard = self.shards[self.shard_of(sid, pasid, iova)].read();
        for shift in SHIFTS {
            let key = IotlbKey {
                sid,
                pasid,
                base: iova & !((1u64 << shift) - 1),
                shift,
            };
            if let Some(t) = shard.map.get(&key) {
                if t.perms.allows(access) {
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                    let mut hit = *t;
                    hit.output = t.output_base() | (iova & (t.page_size - 1));
                    return Some(hit);
                }
                break;
            }
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        None
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
        if !SHIFTS.contains(&shift) {
            return;
        }
        let pasid = pasid.map_or(NO_PASID, u64::from);
        let key = IotlbKey {
            sid,
            pasid,
            base: iova & !(t.page_size - 1),
            shift,
        };
        let mut shard = self.shards[self.shard_of(sid, pasid, iova)].write();
        if !epochs.unchanged_since(epoch) {
            return;
        }
        if !shard.map.contains_key(&key) && shard.map.len() >= self.per_shard {
            // Evict an arbitrary entry: hash order is as good as random here.
            if let Some(victim) = shard.map.keys().next().copied() {
                shard.remove(&victim);
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        shard.remove(&key);
        shard
            .by_domain
            .entry(domain_tag(&t))
            .or_default()
            .insert((key.base, key));
        shard.map.insert(key, t);
    }

    /// Removes what `scope` covers; returns how many entries went.
    pub(crate) fn invalidate(&self, scope: IotlbScope) -> u64 {
        let mut removed = 0u64;
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            let victims: Vec<IotlbKey> = match scope {
                IotlbScope::Global => {
                    removed += shard.map.len() as u64;
                    shard.map.clear();
                    shard.by_domain.clear();
                    continue;
                }
                IotlbScope::Domain { did } => shard
                    .by_domain
                    .iter()
                    .filter(|(tag, _)| tag.0 == did)
                    .flat_map(|(_, set)| set.iter().map(|(_, k)| *k))
                    .collect(),
                IotlbScope::Pasid { did, pasid } => shard
                    .by_domain
                    .get(&(did, u64::from(pasid)))
                    .map(|set| set.iter().map(|(_, k)| *k).collect())
                    .unwrap_or_default(),
                IotlbScope::DomainPages { did, addr, size } => shard
                    .by_domain
                    .iter()
                    .filter(|(tag, _)| tag.0 == did)
                    .flat_map(|(_, set)| overlapping(set, addr, size))
                    .collect(),
                IotlbScope::PasidPages {
                    did,
                    pasid,
                    addr,
                    size,
                } => shard
                    .by_domain
                    .get(&(did, u64::from(pasid)))
                    .map(|set| overlapping(set, addr, size).collect())
                    .unwrap_or_default(),
            };
            for k in victims {
                if shard.remove(&k) {
                    removed += 1;
                }
            }
        }
        self.counters
            .invalidated
            .fetch_add(removed, Ordering::Relaxed);
        removed
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let entries = self.shards.iter().map(|s| s.read().map.len() as u64).sum();
        self.counters.snapshot(entries)
    }
}

/// Keys of `set` whose page overlaps `[addr, addr + size)`: entries start at most 1 GiB
/// before `addr`, so the range search starts there.
fn overlapping(
    set: &BTreeSet<(u64, IotlbKey)>,
    addr: u64,
    size: u64,
) -> impl Iterator<Item = IotlbKey> + '_ {
    let end = addr.saturating_add(size);
    let from = addr.saturating_sub((1 << 30) - 1);
    let lo = IotlbKey {
        sid: 0,
        pasid: 0,
        base: 0,
        shift: 0,
    };
    set.range((from, lo)..)
        .take_while(move |(base, _)| *base < end)
        .filter(move |(base, k)| base.saturating_add(1u64 << k.shift) > addr)
        .map(|(_, k)| *k)
}

/// The invalidation epoch shared by the caches.
#[derive(Default)]
pub(crate) struct Epoch(AtomicU64);

impl Epoch {
    /// Read before a walk.
    pub(crate) fn current(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    /// Bumped before an invalidation removes anything.
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
    counters: Counters,
}

impl<K: Copy + Eq + Hash, V: Copy> EntryCache<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: RwLock::new(HashMap::default()),
            capacity: capacity.max(1),
            counters: Counters::default(),
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let v = self.map.read().get(key).copied();
        let c = if v.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        c.fetch_add(1, Ordering::Relaxed);
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
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
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
mod tests {
    use super::*;
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

    #[test]
    fn hits_every_page_size_and_respects_scope() {
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
    }

    #[test]
    fn a_fill_racing_an_invalidation_is_dropped() {
        let e = Epoch::default();
        let tlb = Iotlb::new(64);
        let start = e.current();
        e.advance(); // an invalidation began after the walk
        tlb.insert(&e, start, 8, None, 0x1000, t(1, None, 0x2000, 4096));
        assert!(tlb.lookup(8, None, 0x1000, AccessKind::Read).is_none());
    }

    #[test]
    fn capacity_is_bounded() {
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
    }
}
