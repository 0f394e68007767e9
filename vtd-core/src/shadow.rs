//! Caching-mode shadowing (VT-d spec 6.1): with CAP.CM a guest invalidates after making
//! entries present, so a VMM that mirrors a device's mappings elsewhere (VFIO type1 maps,
//! vhost IOTLBs) can follow them. For devices it watches, the unit turns each covering
//! invalidation into `Unmap` of the invalidated range followed by `Map` of every present leaf
//! found by a bounded replay walk.

use vtd_regs::inv::{
    ContextCacheGranularity, InvDesc, IotlbGranularity, PasidIotlbGranularity, page_range,
};
use vtd_tables::GuestRam;
use vtd_tables::entries::LegacyTranslationType;
use vtd_tables::entries::Pgtt;
use vtd_tables::enumerate::{EnumerateError, LeafMapping, TableFormat, for_each_leaf};
use vtd_tables::walk::{self, DeviceContext, RootTable};

use crate::events::{ShadowEvent, VtdEvent};
use crate::unit::{State, VtdUnit};

/// Entry reads the replays of one doorbell (one register write) may do together: bounds the
/// work and the events a guest can cause per MMIO write.
pub(crate) const REPLAY_BUDGET: u32 = 1 << 18;

/// The table that maps a watched device right now.
struct DeviceTable {
    did: u16,
    pasid: Option<u32>,
    root: u64,
    format: TableFormat,
    limit: u64,
}

impl<M: GuestRam + Send + Sync> VtdUnit<M> {
    /// Reports mapping changes of requester `sid` (with `pasid`) as [`ShadowEvent`]s on the
    /// event bus after each covering invalidation. Only meaningful in caching mode.
    pub fn watch_mappings(&self, sid: u16, pasid: Option<u32>) {
        let mut w = self.watched.write();
        if !w.contains(&(sid, pasid)) {
            w.push((sid, pasid));
        }
    }

    /// Stops reporting mapping changes of (`sid`, `pasid`).
    pub fn unwatch_mappings(&self, sid: u16, pasid: Option<u32>) {
        self.watched.write().retain(|w| *w != (sid, pasid));
    }

    /// The replay walk: calls `f` for every present leaf of (`sid`, `pasid`) overlapping
    /// `[start, end)`, reading the guest's current tables (no caches). Pass-through and nested
    /// translations have no table to mirror and report nothing.
    pub fn replay(
        &self,
        sid: u16,
        pasid: Option<u32>,
        start: u64,
        end: u64,
        f: impl FnMut(LeafMapping),
    ) -> Result<(), EnumerateError> {
        match self.device_table(self.latched_root(), sid, pasid) {
            Some(t) => for_each_leaf(
                &self.mem,
                &self.walk,
                t.root,
                t.format,
                start..end,
                &mut REPLAY_BUDGET.clone(),
                f,
            ),
            None => Ok(()),
        }
    }

    fn device_table(&self, root: RootTable, sid: u16, pasid: Option<u32>) -> Option<DeviceTable> {
        match walk::lookup_context(&self.mem, &self.walk, root, sid).ok()? {
            DeviceContext::Legacy(ce) => {
                if ce.translation_type() == LegacyTranslationType::PassThrough {
                    return None;
                }
                let levels = ce.aw() + 2;
                Some(DeviceTable {
                    did: ce.did(),
                    pasid: None,
                    root: ce.sl_table(),
                    format: TableFormat::SecondStage { levels },
                    limit: 1u64 << (12 + 9 * levels as u32).min(63),
                })
            }
            DeviceContext::Scalable(sc) => {
                let p = walk::effective_pasid(&self.walk, &sc, pasid);
                let pe = walk::lookup_pasid_entry(&self.mem, &self.walk, &sc, p, pasid.is_some())
                    .ok()?;
                let (root, format, limit) = match pe.pgtt() {
                    Pgtt::FirstStage => {
                        let levels = if pe.fspm() == 1 { 5 } else { 4 };
                        // The lower canonical half: DMA addresses are small positive IOVAs.
                        (
                            pe.fs_table(),
                            TableFormat::FirstStage { levels },
                            1u64 << (11 + 9 * levels as u32),
                        )
                    }
                    Pgtt::SecondStage => {
                        let levels = pe.aw() + 2;
                        (
                            pe.ss_table(),
                            TableFormat::SecondStage { levels },
                            1u64 << (12 + 9 * levels as u32).min(63),
                        )
                    }
                    _ => return None,
                };
                Some(DeviceTable {
                    did: pe.did(),
                    pasid: Some(p),
                    root,
                    format,
                    limit,
                })
            }
        }
    }

    /// After an invalidation: for each watched device it covers, `Unmap` the range and `Map`
    /// what the tables now hold there.
    pub(crate) fn shadow_after_invalidation(&self, st: &mut State, desc: &InvDesc) {
        if !self.config.caching_mode {
            return;
        }
        let watched = self.watched.read().clone();
        for (sid, pasid) in watched {
            let table = st
                .root
                .and_then(|(root, _)| self.device_table(root, sid, pasid));
            let limit = table.as_ref().map_or(u64::MAX, |t| t.limit);
            let covered = match (desc, &table) {
                (InvDesc::ContextCache(cc), _) => match cc.granularity {
                    ContextCacheGranularity::Device { sid: s, .. } => {
                        (s == sid).then_some((0, limit))
                    }
                    _ => Some((0, limit)),
                },
                (InvDesc::PasidCache(_), Some(_)) => Some((0, limit)),
                (InvDesc::Iotlb(i), Some(t)) => match i.granularity {
                    IotlbGranularity::Global => Some((0, limit)),
                    IotlbGranularity::Domain { did } => (did == t.did).then_some((0, limit)),
                    IotlbGranularity::Page { did, addr, am, .. } => {
                        let r = page_range(addr, am);
                        (did == t.did).then_some((*r.start(), r.end().saturating_add(1)))
                    }
                },
                (InvDesc::PasidIotlb(p), Some(t)) if p.did == t.did && Some(p.pasid) == t.pasid => {
                    match p.granularity {
                        PasidIotlbGranularity::AllInPasid => Some((0, limit)),
                        PasidIotlbGranularity::Page { addr, am, .. } => {
                            let r = page_range(addr, am);
                            Some((*r.start(), r.end().saturating_add(1)))
                        }
                    }
                }
                _ => None,
            };
            let Some((start, end)) = covered else {
                continue;
            };
            st.events.push(VtdEvent::Shadow(ShadowEvent::Unmap {
                sid,
                pasid,
                iova: start,
                size: end - start,
            }));
            if let Some(t) = table {
                let mut maps = Vec::new();
                let result = for_each_leaf(
                    &self.mem,
                    &self.walk,
                    t.root,
                    t.format,
                    start..end,
                    &mut st.replay_budget,
                    |m| maps.push(m),
                );
                let incomplete = result.is_err();
                let incomplete_event =
                    incomplete.then_some(VtdEvent::Shadow(ShadowEvent::Incomplete { sid, pasid }));
                if incomplete {
                    tracing::warn!(target: "vtd::shadow", sid, "replay budget exhausted: Incomplete reported");
                }
                st.events.extend(maps.into_iter().map(|m| {
                    VtdEvent::Shadow(ShadowEvent::Map {
                        sid,
                        pasid,
                        iova: m.iova,
                        size: m.size,
                        output: m.output,
                        perms: m.perms,
                    })
                }));
                st.events.extend(incomplete_event);
            }
        }
    }
}
