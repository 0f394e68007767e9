//! The event feed: the unit's observer, a bounded queue, and the counters.
//!
//! The observer runs on the vCPU or device thread that made the unit act, so it does the
//! least it can: bump a few relaxed counters, take one uncontended mutex, push a copy of the
//! event (every `VtdEvent` is a few words, no allocation beyond the queue's own, which is
//! reserved up front) and drop the oldest when full. Nothing in it waits for a client: clients
//! are threads of the server that copy from the queue behind a per-client cursor, so a slow or
//! stuck client loses the events that rolled off (and is told how many), and the VMM never
//! notices. Decoding into the wire form happens on the client's thread.
//!
//! One queue serves every client (each event is stored once whatever the number of clients),
//! with sequence numbers: a client's cursor older than the oldest stored event measures
//! exactly how many it missed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use vtd_core::sync::Mutex;

use vtd_core::{
    FaultDisposition, InvalidationSource, ResponseOrigin, ShadowEvent, VtdEvent, VtdObserver,
};
use vtd_regs::inv::{
    ContextCacheGranularity, IecGranularity, InvDesc, IotlbGranularity, PasidCacheGranularity,
    PasidIotlbGranularity,
};

use crate::protocol::{CountersView, Event, EventRecord, InvalidationSourceView, InvalidationView};

/// Events kept for clients to catch up with.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Something queued: the unit's own event, or one the embedding VMM reports (binding changes,
/// page requests).
#[derive(Clone, Debug)]
enum Item {
    Unit(VtdEvent),
    External(Event),
}

struct Queue {
    items: VecDeque<(u64, u64, Item)>,
    next_seq: u64,
    overwritten: u64,
}

/// Counters by invalidation descriptor type code (1..=9), and the others.
#[derive(Default)]
struct Counters {
    by_type: [AtomicU64; 10],
    queued: AtomicU64,
    register: AtomicU64,
    dma_faults: AtomicU64,
    interrupt_faults: AtomicU64,
    page_requests: AtomicU64,
    page_responses: AtomicU64,
    binding_changes: AtomicU64,
    events: AtomicU64,
}

/// The bounded event queue the server's clients read, subscribed to the unit as an observer.
pub struct EventFeed {
    queue: Mutex<Queue>,
    capacity: usize,
    start: Instant,
    counters: Counters,
}

impl std::fmt::Debug for EventFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFeed")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl EventFeed {
    /// A feed keeping at most `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            queue: Mutex::new(Queue {
                items: VecDeque::with_capacity(capacity),
                next_seq: 0,
                overwritten: 0,
            }),
            capacity,
            start: Instant::now(),
            counters: Counters::default(),
        }
    }

    /// When the feed started.
    pub fn start(&self) -> Instant {
        self.start
    }

    fn push(&self, item: Item) {
        let time_us = self.start.elapsed().as_micros() as u64;
        let mut q = self.queue.lock();
        if q.items.len() == self.capacity {
            q.items.pop_front();
            q.overwritten += 1;
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        q.items.push_back((seq, time_us, item));
    }

    /// Reports an event that does not come from the unit (a binding change from the
    /// passthrough binder, a page request), with the same non-blocking guarantee.
    pub fn report(&self, event: Event) {
        let c = &self.counters;
        c.events.fetch_add(1, Ordering::Relaxed);
        match &event {
            Event::BindingChanged { .. } => c.binding_changes.fetch_add(1, Ordering::Relaxed),
            Event::PageRequest { .. } => c.page_requests.fetch_add(1, Ordering::Relaxed),
            Event::PageResponse { .. } => c.page_responses.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        self.push(Item::External(event));
    }

    /// The sequence number the next event will get (a new client's cursor: it starts with
    /// what happens after it attached, plus what is still queued if it asks from 0).
    pub fn next_seq(&self) -> u64 {
        self.queue.lock().next_seq
    }

    /// Up to `max` events from `*cursor` on, decoded, advancing the cursor; returns the
    /// events and how many were lost because they rolled off before this read.
    pub fn read_from(&self, cursor: &mut u64, max: usize) -> (Vec<EventRecord>, u64) {
        let taken: Vec<(u64, u64, Item)>;
        let lost;
        {
            let q = self.queue.lock();
            let oldest = q.items.front().map_or(q.next_seq, |(s, _, _)| *s);
            lost = oldest.saturating_sub(*cursor);
            let from = (*cursor).max(oldest);
            let skip = (from - oldest) as usize;
            taken = q.items.iter().skip(skip).take(max).cloned().collect();
            *cursor = taken.last().map_or(from, |(s, _, _)| s + 1);
        }
        let events = taken
            .into_iter()
            .map(|(seq, time_us, item)| EventRecord {
                seq,
                time_us,
                event: match item {
                    Item::Unit(e) => decode_event(&e),
                    Item::External(e) => e,
                },
            })
            .collect();
        (events, lost)
    }

    /// The counters.
    pub fn counters(&self) -> CountersView {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut invalidations = std::collections::BTreeMap::new();
        for (code, n) in c.by_type.iter().enumerate() {
            let n = load(n);
            if n != 0 {
                invalidations.insert(type_name_of_code(code as u8).to_string(), n);
            }
        }
        CountersView {
            invalidations,
            queued_invalidations: load(&c.queued),
            register_invalidations: load(&c.register),
            dma_faults: load(&c.dma_faults),
            interrupt_faults: load(&c.interrupt_faults),
            page_requests: load(&c.page_requests),
            page_responses: load(&c.page_responses),
            binding_changes: load(&c.binding_changes),
            events: load(&c.events),
            events_overwritten: self.queue.lock().overwritten,
        }
    }
}

impl VtdObserver for EventFeed {
    fn on_event(&self, event: &VtdEvent) {
        let c = &self.counters;
        c.events.fetch_add(1, Ordering::Relaxed);
        match event {
            VtdEvent::Invalidation { source, desc } => {
                let code = desc.type_code() as usize;
                if let Some(n) = c.by_type.get(code) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                match source {
                    InvalidationSource::Queue { .. } => c.queued.fetch_add(1, Ordering::Relaxed),
                    InvalidationSource::Register => c.register.fetch_add(1, Ordering::Relaxed),
                };
            }
            VtdEvent::PageRequestQueued { .. } => {
                c.page_requests.fetch_add(1, Ordering::Relaxed);
            }
            VtdEvent::PageGroupResponse(_) => {
                c.page_responses.fetch_add(1, Ordering::Relaxed);
            }
            VtdEvent::DmaFault { .. } => {
                c.dma_faults.fetch_add(1, Ordering::Relaxed);
            }
            VtdEvent::InterruptFault { .. } => {
                c.interrupt_faults.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.push(Item::Unit(event.clone()));
    }
}

/// The trace name of a descriptor type code (QEMU's names, see `InvDesc::trace_name`).
fn type_name_of_code(code: u8) -> &'static str {
    use vtd_regs::inv::desc_type as t;
    match code {
        t::CONTEXT_CACHE => "context-cache",
        t::IOTLB => "iotlb",
        t::DEVICE_TLB => "device",
        t::IEC => "iec",
        t::WAIT => "wait",
        t::PASID_IOTLB => "p-iotlb",
        t::PASID_CACHE => "pasid-cache",
        t::PASID_DEVICE_TLB => "device-piotlb",
        t::PAGE_GROUP_RESPONSE => "page group response",
        _ => "unknown",
    }
}

fn disposition(d: FaultDisposition) -> String {
    match d {
        FaultDisposition::Recorded { index } => format!("recorded in FRCD {index}"),
        FaultDisposition::Suppressed => "suppressed (FPD)".into(),
        FaultDisposition::Overflow => "overflow (PFO)".into(),
        FaultDisposition::Coalesced => "coalesced".into(),
    }
}

/// The wire form of an invalidation descriptor: type, granularity and the fields that
/// select what is invalidated (spec 6.5.2.1-6.5.2.7).
pub fn decode_invalidation(source: InvalidationSource, desc: &InvDesc) -> InvalidationView {
    let mut v = InvalidationView {
        source: match source {
            InvalidationSource::Queue { index, ends_batch } => {
                InvalidationSourceView::Queue { index, ends_batch }
            }
            InvalidationSource::Register => InvalidationSourceView::Register,
        },
        desc_type: desc.trace_name().to_string(),
        granularity: String::new(),
        did: None,
        pasid: None,
        sid: None,
        addr: None,
        am: None,
        ih: None,
        text: desc.to_string(),
    };
    let g: &str = match desc {
        InvDesc::ContextCache(c) => match c.granularity {
            ContextCacheGranularity::Global => "global",
            ContextCacheGranularity::Domain { did } => {
                v.did = Some(did);
                "domain"
            }
            ContextCacheGranularity::Device { did, sid, .. } => {
                v.did = Some(did);
                v.sid = Some(sid);
                "device"
            }
        },
        InvDesc::Iotlb(i) => match i.granularity {
            IotlbGranularity::Global => "global",
            IotlbGranularity::Domain { did } => {
                v.did = Some(did);
                "domain"
            }
            IotlbGranularity::Page { did, addr, am, ih } => {
                v.did = Some(did);
                (v.addr, v.am, v.ih) = (Some(addr), Some(am), Some(ih));
                "page"
            }
        },
        InvDesc::DeviceTlb(d) => {
            v.sid = Some(d.sid);
            v.addr = Some(d.addr);
            if d.size { "range" } else { "page" }
        }
        InvDesc::Iec(i) => match i.granularity {
            IecGranularity::Global => "global",
            IecGranularity::Index { .. } => "index",
        },
        InvDesc::Wait(_) => "-",
        InvDesc::PasidIotlb(p) => {
            v.did = Some(p.did);
            v.pasid = Some(p.pasid);
            match p.granularity {
                PasidIotlbGranularity::AllInPasid => "pasid",
                PasidIotlbGranularity::Page { addr, am, ih } => {
                    (v.addr, v.am, v.ih) = (Some(addr), Some(am), Some(ih));
                    "page"
                }
            }
        }
        InvDesc::PasidCache(p) => match p.granularity {
            PasidCacheGranularity::Domain => {
                v.did = Some(p.did);
                "domain"
            }
            PasidCacheGranularity::Pasid { pasid } => {
                v.did = Some(p.did);
                v.pasid = Some(pasid);
                "pasid"
            }
            PasidCacheGranularity::Global => "global",
        },
        InvDesc::PasidDeviceTlb(p) => {
            v.sid = Some(p.sid);
            v.pasid = Some(p.pasid);
            v.addr = Some(p.addr);
            if p.global { "global-pasid" } else { "pasid" }
        }
        InvDesc::PageGroupResponse(r) => {
            v.sid = Some(r.rid);
            v.pasid = r.pasid;
            "-"
        }
    };
    v.granularity = g.to_string();
    v
}

/// The wire form of a unit event.
pub fn decode_event(e: &VtdEvent) -> Event {
    match e {
        VtdEvent::RegisterWrite {
            offset,
            size,
            value,
        } => Event::RegisterWrite {
            offset: *offset,
            size: *size,
            value: *value,
        },
        VtdEvent::RootTableLatched { root, changed } => Event::RootTableLatched {
            addr: root.addr,
            mode: crate::collect::mode_name(root.mode).to_string(),
            changed: *changed,
        },
        VtdEvent::TranslationEnabled(on) => Event::TranslationEnabled { on: *on },
        VtdEvent::QueuedInvalidationEnabled(on) => Event::QueuedInvalidationEnabled { on: *on },
        VtdEvent::InterruptRemappingEnabled(on) => Event::InterruptRemappingEnabled { on: *on },
        VtdEvent::InterruptTableLatched {
            base,
            entries,
            eime,
        } => Event::InterruptTableLatched {
            base: *base,
            entries: *entries,
            eime: *eime,
        },
        VtdEvent::Invalidation { source, desc } => {
            Event::Invalidation(decode_invalidation(*source, desc))
        }
        VtdEvent::QueueError { head, iqei } => Event::QueueError {
            head: *head,
            iqei: *iqei,
        },
        VtdEvent::WaitCompleted {
            status_addr,
            interrupt,
        } => Event::WaitCompleted {
            status_addr: *status_addr,
            interrupt: *interrupt,
        },
        VtdEvent::DmaFault {
            fault,
            disposition: d,
        } => Event::DmaFault {
            sid: fault.sid,
            pasid: fault.pasid,
            address: fault.address,
            reason_code: fault.reason.code(),
            reason: fault.reason.description().to_string(),
            disposition: disposition(*d),
        },
        VtdEvent::InterruptFault {
            fault,
            disposition: d,
        } => Event::InterruptFault {
            sid: fault.sid,
            index: fault.index,
            reason_code: fault.reason.code(),
            reason: fault.reason.description().to_string(),
            disposition: disposition(*d),
        },
        VtdEvent::Shadow(s) => match *s {
            ShadowEvent::Map {
                sid,
                pasid,
                iova,
                size,
                ..
            } => Event::Shadow {
                op: "map".into(),
                sid,
                pasid,
                iova,
                size,
            },
            ShadowEvent::Unmap {
                sid,
                pasid,
                iova,
                size,
            } => Event::Shadow {
                op: "unmap".into(),
                sid,
                pasid,
                iova,
                size,
            },
            ShadowEvent::Incomplete { sid, pasid } => Event::Shadow {
                op: "incomplete".into(),
                sid,
                pasid,
                iova: 0,
                size: 0,
            },
        },
        VtdEvent::PageRequestQueued { request: r, slot } => Event::PageRequest {
            sid: r.sid,
            pasid: r.pasid,
            address: r.address & !0xfff,
            prg_index: r.prg_index,
            last_in_group: r.last_in_group,
            access: [
                (r.read, 'r'),
                (r.write, 'w'),
                (r.execute, 'x'),
                (r.privileged, 'p'),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, c)| *c)
            .collect(),
            slot: *slot,
        },
        VtdEvent::PageGroupResponse(r) => Event::PageResponse {
            rid: r.sid,
            pasid: r.pasid,
            response_code: r.code.into_bits(),
            prg_index: r.prg_index,
            matched: r.matched,
            origin: match r.origin {
                ResponseOrigin::Guest { index } => format!("guest QI[{index}]"),
                ResponseOrigin::Overflow => "overflow".into(),
                ResponseOrigin::Blocked => "blocked".into(),
            },
        },
        VtdEvent::Reset => Event::Reset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_oldest_and_readers_learn_how_many_they_lost() {
        let feed = EventFeed::new(4);
        let mut cursor = feed.next_seq();
        for on in 0..10 {
            feed.on_event(&VtdEvent::TranslationEnabled(on % 2 == 0));
        }
        let (events, lost) = feed.read_from(&mut cursor, 100);
        assert_eq!(lost, 6);
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![6, 7, 8, 9]
        );
        assert_eq!(cursor, 10);
        let (events, lost) = feed.read_from(&mut cursor, 100);
        assert!(events.is_empty());
        assert_eq!(lost, 0);
        let c = feed.counters();
        assert_eq!(c.events, 10);
        assert_eq!(c.events_overwritten, 6);
    }

    #[test]
    fn reads_are_bounded_by_max_and_resume_where_they_stopped() {
        let feed = EventFeed::new(100);
        let mut cursor = 0;
        for _ in 0..5 {
            feed.on_event(&VtdEvent::Reset);
        }
        let (a, _) = feed.read_from(&mut cursor, 3);
        let (b, _) = feed.read_from(&mut cursor, 3);
        assert_eq!(a.len(), 3);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].seq, 3);
    }
}
