//! Forwarding and batching: what a guest invalidation means for the host.
//!
//! Context-cache and PASID-cache invalidations re-evaluate bindings (the guest may have
//! rewritten an entry). IOTLB-kind invalidations — PASID-IOTLB (page: `AM` -> `npages = 2^AM`,
//! `IH` -> LEAF; whole PASID), IOTLB (global, domain, page), device-TLB and PASID device-TLB —
//! go to every nested HWPT whose binding matches (DID and PASID; SID for device-TLB), and only
//! to the backends of the devices affected.
//!
//! They are collected per (backend, HWPT) and sent as one `IOMMU_HWPT_INVALIDATE` per HWPT per
//! batch. A batch ends where vtd-core says (`InvalidationSource::ends_batch`: the last
//! invalidation before a wait descriptor or the queue tail; Linux ends every batch with a wait,
//! and vtd-core completes a wait only after the events before it were delivered, so the host is
//! invalidated before the guest sees completion), and also at a queue error, a register-based
//! invalidation, `WaitCompleted`, and the next MMIO write. A failed or partial invalidation is
//! retried as one full flush; if that fails too the binding is fenced.

use vtd_regs::inv::{
    ContextCacheGranularity, InvDesc, IotlbGranularity, PasidCacheGranularity,
    PasidIotlbGranularity, device_tlb_range, page_range,
};
use vtd_tables::GuestRam;

use super::NestedBinder;
use super::registry::{HostAttachment, Inner, Pending, backend_key};
use crate::backend::{BackendError, BackendOp, Pasid, VtdS1Invalidation};
use crate::events::Recovery;
use crate::ids::BindingKey;

/// Entries per HWPT and batch before the batch collapses into one full flush.
pub(super) const MAX_BATCH_ENTRIES: usize = 64;

impl<M: GuestRam + Send + Sync + 'static> NestedBinder<M> {
    /// Handles one guest invalidation: re-evaluation and forwarding.
    pub(super) fn on_invalidation(&self, inner: &mut Inner, desc: &InvDesc) {
        match desc {
            InvDesc::ContextCache(cc) => match cc.granularity {
                ContextCacheGranularity::Global | ContextCacheGranularity::Domain { .. } => {
                    // Scalable context entries carry no DID: a domain flush covers them all.
                    self.resync_all_locked(inner);
                }
                ContextCacheGranularity::Device { sid, fm, .. } => {
                    // The function mask ignores function bits (spec 6.5.2.1).
                    let mask: u16 = match fm & 3 {
                        0 => 0,
                        1 => 0b100,
                        2 => 0b110,
                        _ => 0b111,
                    };
                    let bdfs: Vec<_> = inner
                        .devices
                        .keys()
                        .copied()
                        .filter(|b| b.sid() & !mask == sid & !mask)
                        .collect();
                    for bdf in bdfs {
                        self.sync_device(inner, bdf);
                    }
                }
            },
            InvDesc::PasidCache(pc) => match pc.granularity {
                PasidCacheGranularity::Pasid { pasid } => {
                    let pasid = Pasid::from_table_index(pasid);
                    let bdfs: Vec<_> = inner.devices.keys().copied().collect();
                    for bdf in bdfs {
                        let key = BindingKey::new(bdf, pasid);
                        let ok = inner
                            .devices
                            .get(&bdf)
                            .is_some_and(|d| pasid.is_none() || self.pasids_enabled(d));
                        if ok && self.track(inner, key) {
                            self.sync_one(inner, key);
                        }
                    }
                }
                PasidCacheGranularity::Domain | PasidCacheGranularity::Global => {
                    self.resync_all_locked(inner);
                }
            },
            InvDesc::PasidIotlb(p) if Pasid::from_table_index(p.pasid).is_some() => {
                // A PASID the binder has not seen: its entry may have been created without a
                // PASID-cache invalidation (CM = 0). Bind it before forwarding.
                let pasid = Pasid::from_table_index(p.pasid);
                let keys: Vec<BindingKey> = inner
                    .devices
                    .iter()
                    .filter(|(_, d)| {
                        !pasid.is_some_and(|p| d.tracked.contains(&p)) && self.pasids_enabled(d)
                    })
                    .map(|(&bdf, _)| BindingKey::new(bdf, pasid))
                    .collect();
                for key in keys {
                    if self.track(inner, key) {
                        self.sync_one(inner, key);
                    }
                }
                self.forward(inner, desc);
            }
            _ => self.forward(inner, desc),
        }
    }

    /// Queues the host invalidations `desc` implies for every matching nested HWPT.
    fn forward(&self, inner: &mut Inner, desc: &InvDesc) {
        let mut targets = Vec::new();
        for (&bdf, dev) in &inner.devices {
            for (&pasid, b) in &dev.bindings {
                let (HostAttachment::Nested(hwpt), Some(n)) = (b.host, b.nested) else {
                    continue;
                };
                let names_this_pasid = |p: u32| Pasid::from_table_index(p) == pasid;
                let entry = match desc {
                    InvDesc::PasidIotlb(p) if p.did == n.did && names_this_pasid(p.pasid) => {
                        match p.granularity {
                            PasidIotlbGranularity::AllInPasid => Some(VtdS1Invalidation::ALL),
                            PasidIotlbGranularity::Page { addr, am, ih } => {
                                let r = page_range(addr, am);
                                Some(VtdS1Invalidation::for_range(*r.start(), *r.end(), ih))
                            }
                        }
                    }
                    InvDesc::Iotlb(i) => match i.granularity {
                        IotlbGranularity::Global => Some(VtdS1Invalidation::ALL),
                        IotlbGranularity::Domain { did } if did == n.did => {
                            Some(VtdS1Invalidation::ALL)
                        }
                        // Conservative, like QEMU: a page-selective IOTLB invalidation also
                        // drops first-stage entries of the domain's pages.
                        IotlbGranularity::Page { did, addr, am, ih } if did == n.did => {
                            let r = page_range(addr, am);
                            Some(VtdS1Invalidation::for_range(*r.start(), *r.end(), ih))
                        }
                        _ => None,
                    },
                    InvDesc::DeviceTlb(d) if d.sid == bdf.sid() && pasid.is_none() => {
                        let r = device_tlb_range(d.addr, d.size);
                        Some(VtdS1Invalidation::for_range(*r.start(), *r.end(), false))
                    }
                    InvDesc::PasidDeviceTlb(d)
                        if d.sid == bdf.sid() && (d.global || names_this_pasid(d.pasid)) =>
                    {
                        let r = device_tlb_range(d.addr, d.size);
                        Some(VtdS1Invalidation::for_range(*r.start(), *r.end(), false))
                    }
                    _ => None,
                };
                if let Some(e) = entry {
                    targets.push((dev.backend.clone(), hwpt, BindingKey::new(bdf, pasid), e));
                }
            }
        }
        if !targets.is_empty() {
            inner.stats.invalidations_forwarded += 1;
        }
        for (backend, hwpt, binding, entry) in targets {
            let p = inner
                .pending
                .entry((backend_key(&backend), hwpt))
                .or_insert(Pending {
                    backend,
                    binding,
                    entries: Vec::new(),
                });
            if p.entries.first().is_some_and(VtdS1Invalidation::is_all)
                || p.entries.contains(&entry)
            {
                continue;
            }
            if entry.is_all() || p.entries.len() >= MAX_BATCH_ENTRIES {
                p.entries = vec![VtdS1Invalidation::ALL];
            } else {
                p.entries.push(entry);
            }
        }
    }

    /// Sends one `IOMMU_HWPT_INVALIDATE` per HWPT with everything collected, each to its
    /// backend.
    pub(super) fn flush(&self, inner: &mut Inner) {
        let pending = std::mem::take(&mut inner.pending);
        for ((backend, hwpt), p) in pending {
            let n = p.entries.len();
            inner.stats.invalidate_calls += 1;
            let failure = match p.backend.invalidate(hwpt, &p.entries) {
                Ok(done) if done as usize == n => {
                    inner.stats.invalidation_entries += u64::from(done);
                    continue;
                }
                Ok(done) => BackendError::new(
                    BackendOp::Invalidate,
                    format!("host handled {done} of {n} entries"),
                )
                .with_handled(done),
                Err(e) => e,
            };
            inner.stats.invalidation_entries += u64::from(failure.handled.unwrap_or(0));
            inner.report(failure, Some(p.binding), Some(hwpt), Recovery::FullFlush);
            inner.stats.invalidate_calls += 1;
            let retry = match p.backend.invalidate(hwpt, &[VtdS1Invalidation::ALL]) {
                Ok(1) => {
                    inner.stats.invalidation_entries += 1;
                    continue;
                }
                Ok(done) => BackendError::new(
                    BackendOp::Invalidate,
                    format!("host handled {done} of 1 entries"),
                )
                .with_handled(done),
                Err(e) => e,
            };
            // The host may still cache what the guest invalidated: fence the binding.
            let at = inner.report(retry, Some(p.binding), Some(hwpt), Recovery::KeptPrevious);
            let recovery = self.fence_hwpt(inner, backend, p.binding, hwpt);
            inner.set_recovery(at, recovery);
        }
    }
}
