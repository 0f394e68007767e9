//! The passthrough side of the inspector: what a vtd-accel [`NestedBinder`] did with the
//! guest's tables, shown beside what the emulated unit holds.
//!
//! [`BinderView`] is two things at once, so a VMM wires it with one call ([`attach_binder`]):
//!
//! - the server's [`BindingSource`]: every snapshot lists each registered device with its
//!   backend, parent HWPT, one nested HWPT per bound PASID with the guest table the host walks,
//!   its state, its last host error and its counters;
//! - an [`AccelObserver`]: each binder event becomes a `BindingChanged` event in the stream.
//!
//! Why the per-device last error and counters live here and not in the binder: the binder keeps
//! only what binding needs (the current state), and the history an operator wants ("this
//! device was fenced twice, the last attach failed with EBUSY") is the inspector's concern.
//! The history of a device that is unregistered is kept, so a device plugged back shows its
//! past, but only while there is room: it holds at most [`MAX_DEVICE_HISTORY`] devices, and a
//! device seen for the first time when it is full takes the place of the unregistered device
//! noted least recently. A registered device's history is never the one dropped (the operator
//! is looking at those devices); only when every kept device is still registered does the
//! newcomer go without history (its counters read zero), which takes more than 4,096 assigned
//! devices at once.
//!
//! Like the rest of the server, nothing here can change the binder: it reads
//! [`NestedBinder::bindings`] and listens.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use vtd_core::sync::Mutex;

use vtd_accel::{AccelEvent, AccelObserver, BindingInfo, BlockCause, HostAttachment, NestedBinder};
use vtd_regs::Bdf;
use vtd_tables::GuestRam;

use crate::feed::EventFeed;
use crate::protocol::{BindingView, Event, Field, NestedHwptView};
use crate::server::{BindingSource, InspectServer};

/// Devices whose history is kept (registered ones and recently unregistered ones).
pub const MAX_DEVICE_HISTORY: usize = 4096;

/// What the inspector remembers of a device beyond its current bindings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct History {
    bound: u64,
    blocked: u64,
    host_errors: u64,
    host_faults: u64,
    last_error: Option<String>,
    /// When it was last noted ([`Histories::clock`]): the unregistered device with the
    /// smallest value is the one dropped to make room.
    last_noted: u64,
}

/// The history of every device kept, at most [`MAX_DEVICE_HISTORY`].
#[derive(Default)]
struct Histories {
    devices: BTreeMap<Bdf, History>,
    /// Counts notes, to order devices by how recently they were noted.
    clock: u64,
}

/// A binder seen by the inspection server: its bindings for snapshots, its events for the
/// stream.
pub struct BinderView<M: GuestRam + Send + Sync + 'static> {
    /// Weak: the binder holds this view among its observers, so a strong reference would keep
    /// both (and the host IOMMUs behind the binder) alive after the VMM drops the binder.
    binder: Weak<NestedBinder<M>>,
    feed: Arc<EventFeed>,
    history: Mutex<Histories>,
}

impl<M: GuestRam + Send + Sync + 'static> BinderView<M> {
    /// A view of `binder` that reports its events into `feed`.
    pub fn new(binder: &Arc<NestedBinder<M>>, feed: Arc<EventFeed>) -> Self {
        Self {
            binder: Arc::downgrade(binder),
            feed,
            history: Mutex::new(Histories::default()),
        }
    }

    /// How many devices' history the view holds: at most [`MAX_DEVICE_HISTORY`].
    pub fn devices_with_history(&self) -> usize {
        self.history.lock().devices.len()
    }

    fn note(&self, bdf: Bdf, update: impl FnOnce(&mut History)) {
        let mut history = self.history.lock();
        if !history.devices.contains_key(&bdf)
            && history.devices.len() >= MAX_DEVICE_HISTORY
            && !self.forget_least_recent_unregistered(&mut history.devices)
        {
            return;
        }
        history.clock += 1;
        let now = history.clock;
        let entry = history.devices.entry(bdf).or_default();
        entry.last_noted = now;
        update(entry);
    }

    /// Drops the history of the unregistered device noted least recently; false if every
    /// device kept is registered. Runs only when a device new to a full history is noted (a
    /// hot-plug; with every device kept registered, each of the newcomer's notes), and costs
    /// one look-up in the binder per device kept: at most 4,096. The binder calls its
    /// observers with its lock released, so asking it here cannot deadlock.
    fn forget_least_recent_unregistered(&self, devices: &mut BTreeMap<Bdf, History>) -> bool {
        let binder = self.binder.upgrade();
        let victim = devices
            .iter()
            .filter(|(bdf, _)| !binder.as_ref().is_some_and(|b| b.is_registered(**bdf)))
            .min_by_key(|(_, h)| h.last_noted)
            .map(|(&bdf, _)| bdf);
        victim.is_some_and(|bdf| devices.remove(&bdf).is_some())
    }
}

/// Serves `binder`'s bindings in `server`'s snapshots and its events in the stream.
pub fn attach_binder<M: GuestRam + Send + Sync + 'static>(
    server: &InspectServer,
    binder: &Arc<NestedBinder<M>>,
) -> Arc<BinderView<M>> {
    let view = Arc::new(BinderView::new(binder, server.feed().clone()));
    server.set_binding_source(view.clone());
    binder.subscribe(view.clone());
    view
}

/// The state an operator reads at a glance.
fn state_of(info: &BindingInfo) -> String {
    let base = match (&info.host, &info.blocked) {
        (HostAttachment::Nested(_), _) => "nested".to_string(),
        (HostAttachment::Parent, _) => "pass-through".to_string(),
        (HostAttachment::Blocked, Some(cause)) => format!("blocked ({})", cause_text(cause)),
        (HostAttachment::Blocked, None) => "blocked".to_string(),
    };
    if info.dirty {
        format!("{base}, retry pending")
    } else {
        base
    }
}

fn cause_text(cause: &BlockCause) -> String {
    match cause {
        BlockCause::Guest { reason } => format!("guest fault 0x{:02x}", reason.code()),
        BlockCause::TranslationOff => "translation off".into(),
        BlockCause::Unsupported => "unsupported by the host".into(),
        BlockCause::HostFailure => "host failure".into(),
        BlockCause::Unregistered => "unregistered".into(),
    }
}

impl<M: GuestRam + Send + Sync + 'static> BindingSource for BinderView<M> {
    fn bindings(&self) -> Vec<BindingView> {
        let history = self.history.lock().devices.clone();
        let mut per_device: BTreeMap<Bdf, Vec<BindingInfo>> = BTreeMap::new();
        let Some(binder) = self.binder.upgrade() else {
            return Vec::new();
        };
        for info in binder.bindings() {
            per_device.entry(info.bdf).or_default().push(info);
        }
        per_device
            .into_iter()
            .map(|(bdf, infos)| {
                let h = history.get(&bdf).cloned().unwrap_or_default();
                let nested = infos
                    .iter()
                    .filter_map(|i| match (i.host, &i.s1) {
                        (HostAttachment::Nested(hwpt), Some(s1)) => Some(NestedHwptView {
                            pasid: i.pasid.map_or(0, |p| p.get()),
                            hwpt: hwpt.0,
                            fs_table: s1.pgtbl_addr,
                        }),
                        _ => None,
                    })
                    .collect();
                let states: Vec<String> = infos
                    .iter()
                    .map(|i| match i.pasid {
                        Some(p) => format!("PASID {}: {}", p.get(), state_of(i)),
                        None => state_of(i),
                    })
                    .collect();
                let first = infos.first();
                BindingView {
                    bdf: bdf.to_string(),
                    backend: first.map_or("?", |i| i.backend).to_string(),
                    parent_hwpt: first.map(|i| i.parent.0),
                    nested,
                    state: states.join("; "),
                    last_error: h.last_error.clone(),
                    counters: vec![
                        Field::new("bound", h.bound),
                        Field::new("blocked", h.blocked),
                        Field::new("host errors", h.host_errors),
                        Field::new("host faults", h.host_faults),
                    ],
                }
            })
            .collect()
    }
}

impl<M: GuestRam + Send + Sync + 'static> AccelObserver for BinderView<M> {
    fn on_accel_event(&self, event: &AccelEvent) {
        let (bdf, pasid, change) = match event {
            AccelEvent::Bound {
                binding,
                hwpt,
                s1,
                did,
            } => {
                self.note(binding.bdf, |h| h.bound += 1);
                (
                    Some(binding.bdf),
                    binding.pasid,
                    format!("nested {hwpt} (table 0x{:x}, DID {did})", s1.pgtbl_addr),
                )
            }
            AccelEvent::AttachedParent { binding } => (
                Some(binding.bdf),
                binding.pasid,
                "parent (GPA pass-through)".into(),
            ),
            AccelEvent::Blocked { binding, cause } => {
                self.note(binding.bdf, |h| h.blocked += 1);
                (
                    Some(binding.bdf),
                    binding.pasid,
                    format!("blocked: {}", cause_text(cause)),
                )
            }
            AccelEvent::GuestConfigUnsupported { binding, what } => {
                let text = format!("guest configuration unsupported: {what}");
                self.note(binding.bdf, |h| h.last_error = Some(text.clone()));
                (Some(binding.bdf), binding.pasid, text)
            }
            AccelEvent::HostError {
                binding,
                error,
                recovery,
                ..
            } => {
                let text = format!("host error: {error} ({recovery:?})");
                if let Some(b) = binding {
                    self.note(b.bdf, |h| {
                        h.host_errors += 1;
                        h.last_error = Some(text.clone());
                    });
                }
                (binding.map(|b| b.bdf), binding.and_then(|b| b.pasid), text)
            }
            AccelEvent::OrphanDestroyed { hwpt } => {
                (None, None, format!("orphan {hwpt} destroyed"))
            }
            AccelEvent::HostFault { bdf, outcome, .. } => {
                if let Some(bdf) = bdf {
                    self.note(*bdf, |h| h.host_faults += 1);
                }
                (*bdf, None, format!("host fault: {outcome:?}"))
            }
            AccelEvent::PasidScanTruncated { bdf, scanned } => (
                Some(*bdf),
                None,
                format!("PASID scan stopped after {scanned} entries"),
            ),
        };
        self.feed.report(Event::BindingChanged {
            bdf: bdf.map_or_else(|| "-".to_string(), |b| b.to_string()),
            pasid: pasid.map(|p| p.get()),
            change,
        });
    }
}
