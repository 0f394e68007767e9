//! What observers (nested binding in vtd-accel, caching-mode shadowing in the VMM) can rely
//! on:
//! - completion: a wait descriptor completes only after the invalidations before it (spec
//!   6.5.2.8). For a unit whose invalidations are forwarded to a host IOMMU or a shadow
//!   (vtd-accel forwards them to the host's nested page tables), the guest must not see the
//!   wait's status write before the observers saw those invalidations, or it reuses pages the passthrough
//!   device can still reach;
//! - bounded work: one doorbell write costs bounded work and memory, whatever the queue holds.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vtd_core::{ShadowEvent, VtdEvent, VtdObserver};
use vtd_regs::inv::*;
use vtd_tables::GuestRam;
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_testkit::driver::*;

const SID: u16 = 0x18;
const DID: u16 = 5;

/// Records, for each invalidation or shadow event, the wait-status dword as the guest would
/// read it at the moment the observer handles the event.
struct StatusProbe {
    mem: Mem,
    status: u64,
    seen: Mutex<Vec<(String, u32)>>,
}

impl VtdObserver for StatusProbe {
    fn on_event(&self, event: &VtdEvent) {
        let what = match event {
            VtdEvent::Invalidation { desc, .. } => desc.trace_name().to_string(),
            VtdEvent::Shadow(ShadowEvent::Map { .. }) => "shadow map".into(),
            VtdEvent::Shadow(ShadowEvent::Unmap { .. }) => "shadow unmap".into(),
            VtdEvent::QueuedInvalidationEnabled(true) => "queue enabled".into(),
            _ => return,
        };
        let mut b = [0u8; 4];
        GuestRam::read(&self.mem, self.status, &mut b).unwrap();
        self.seen
            .lock()
            .unwrap()
            .push((what, u32::from_le_bytes(b)));
    }
}

fn probe(g: &Guest) -> Arc<StatusProbe> {
    let p = Arc::new(StatusProbe {
        mem: g.mem.clone(),
        status: g.queue.as_ref().unwrap().status,
        seen: Mutex::default(),
    });
    g.unit.subscribe(p.clone());
    p
}

/// Legacy tables for `SID` with one mapped page.
fn legacy_tables(g: &mut Guest) {
    g.legacy_one_page(SID, DID, 4, 0x5000, 0x300_0000);
}

/// Linux's strict-mode unmap: page-selective PASID-IOTLB invalidation, then a wait with a
/// status write it spins on; once the status reads back, the page is freed. An observer that
/// forwards the invalidation to the host (nested HWPT_INVALIDATE) must have done so by then.
#[test]
fn forwarded_invalidations_are_seen_before_the_wait_completes() {
    let mut g = Guest::new("x-scalable-mode=on,x-flts=on", 64);
    g.enable_qi(true);
    let p = probe(&g);
    g.submit(&[InvDesc::PasidIotlb(PasidIotlbInv {
        did: DID,
        pasid: 0,
        granularity: PasidIotlbGranularity::Page {
            addr: 0xffff_f000,
            am: 0,
            ih: true,
        },
        ignored: Default::default(),
    })]);
    let seen = p.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].1, 0,
        "the guest could read the wait status (sequence {}) before the observer saw the \
         invalidation it orders",
        seen[0].1
    );
}

/// Caching mode (spec 6.1): the VMM mirrors mappings from the Unmap/Map events; the guest
/// frees an unmapped page as soon as its wait completes, so the mirror must be updated first.
#[test]
fn shadow_events_are_seen_before_the_wait_completes() {
    let mut g = Guest::new("caching-mode=on", 64);
    g.enable_qi(false);
    legacy_tables(&mut g);
    g.unit.watch_mappings(SID, None);
    let p = probe(&g);
    g.submit(&[InvDesc::Iotlb(IotlbInv {
        granularity: IotlbGranularity::Page {
            did: DID,
            addr: 0x5000,
            am: 0,
            ih: false,
        },
        drain_read: false,
        drain_write: false,
        ignored: Default::default(),
    })]);
    let seen = p.seen.lock().unwrap().clone();
    assert!(seen.iter().any(|(w, _)| w == "shadow map"), "{seen:?}");
    for (what, status) in &seen {
        assert_eq!(
            *status, 0,
            "{what}: the wait status was already visible to the guest"
        );
    }
}

/// Entry reads one replay may do (vtd-core's REPLAY_BUDGET).
const REPLAY_BUDGET: usize = 1 << 18;

/// A second-stage table whose every entry at every level points to the same next-level table:
/// four pages, 2^36 present leaves. Each replay walks until its budget is spent.
fn aliasing_tables(g: &mut Guest) {
    let mem = g.mem.clone();
    let t: Vec<u64> = (0..4).map(|_| g.frames.alloc(&mem, 1).unwrap()).collect();
    let data = g.frames.alloc(&mem, 1).unwrap();
    for i in 0..512 {
        mem.write_u64(t[0] + i * 8, t[1] | 3).unwrap();
        mem.write_u64(t[1] + i * 8, t[2] | 3).unwrap();
        mem.write_u64(t[2] + i * 8, t[3] | 3).unwrap();
        mem.write_u64(t[3] + i * 8, data | 3).unwrap();
    }
    let mut ctx = ContextTablesBuilder::new(&mem, &mut g.frames, false).unwrap();
    ctx.set_legacy_context(&mut g.frames, SID, ContextEntry::new(t[0], 2, DID))
        .unwrap();
    g.set_root(ctx.rtaddr());
    g.enable_translation();
}

/// Work and memory per doorbell: a guest that queues N global invalidations in one tail write
/// makes the unit replay N times and hold N x 2^18 Map events under its lock (a full queue of
/// 2^15 descriptors: ~8.6e9 events). Replays in one batch supersede each other; one budget
/// per batch bounds the work.
#[test]
fn one_doorbell_bounds_shadow_replay_work() {
    let mut g = Guest::new("caching-mode=on", 64);
    g.enable_qi(false);
    aliasing_tables(&mut g);
    g.unit.watch_mappings(SID, None);
    g.log.take();
    let global = InvDesc::Iotlb(IotlbInv {
        granularity: IotlbGranularity::Global,
        drain_read: false,
        drain_write: false,
        ignored: Default::default(),
    });
    let start = Instant::now();
    g.submit(&[global; 4]);
    let took = start.elapsed();
    let events = g.log.take();
    let maps = events
        .iter()
        .filter(|e| matches!(e, VtdEvent::Shadow(ShadowEvent::Map { .. })))
        .count();
    eprintln!("4 global invalidations: {maps} Map events in {took:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, VtdEvent::Shadow(ShadowEvent::Incomplete { .. }))),
        "a replay cut short by the budget is reported as Incomplete"
    );
    assert!(
        maps <= REPLAY_BUDGET,
        "{maps} Map events for one tail write ({took:?}); the work grows with the queue"
    );
}

/// A caching-mode mirror (what a VMM keeps in VFIO type1 or a vhost IOTLB), updated from the
/// Shadow events in the order it receives them. The first event delivered on the thread named
/// "vcpu-a" stalls (as an ioctl may) until "vcpu-b" is done or a second has passed.
struct Mirror {
    pages: Mutex<BTreeMap<u64, u64>>,
    stalled: Mutex<bool>,
    a_stalls: Mutex<Option<mpsc::Sender<()>>>,
    b_done: Mutex<Option<mpsc::Receiver<()>>>,
}

impl VtdObserver for Mirror {
    fn on_event(&self, event: &VtdEvent) {
        let VtdEvent::Shadow(shadow) = event else {
            return;
        };
        if std::thread::current().name() == Some("vcpu-a") && !*self.stalled.lock().unwrap() {
            *self.stalled.lock().unwrap() = true;
            if let Some(tx) = self.a_stalls.lock().unwrap().take() {
                tx.send(()).unwrap();
            }
            if let Some(rx) = self.b_done.lock().unwrap().take() {
                let _ = rx.recv_timeout(Duration::from_secs(1));
            }
        }
        let mut pages = self.pages.lock().unwrap();
        match *shadow {
            ShadowEvent::Unmap { iova, size, .. } => {
                let end = iova.saturating_add(size);
                pages.retain(|p, _| !(iova..end).contains(p));
            }
            ShadowEvent::Map { iova, output, .. } => {
                pages.insert(iova, output);
            }
            ShadowEvent::Incomplete { .. } => panic!("replay budget exhausted in a 1-page table"),
        }
    }
}

/// Two vCPUs invalidate one after the other (register-based global IOTLB invalidations here;
/// two queue batches behave alike): the unit processes A's, then the guest changes the
/// mapping, then B's. Events are published after the state lock is released, so a stalled
/// publisher on A lets B's newer Map overtake A's older one, and the mirror ends up with the
/// stale translation.
#[test]
fn shadow_events_reach_observers_in_unit_order() {
    let mut g = Guest::new("caching-mode=on", 64);
    let mem = g.mem.clone();
    let root = g.legacy_one_page(SID, DID, 4, 0x5000, 0x300_0000);
    let mut pt = PageTableBuilder::at(&mem, root, PageTableFormat::SecondStage { levels: 4 });
    g.unit.watch_mappings(SID, None);
    let (a_tx, a_rx) = mpsc::channel();
    let (b_tx, b_rx) = mpsc::channel();
    let mirror = Arc::new(Mirror {
        pages: Mutex::default(),
        stalled: Mutex::new(false),
        a_stalls: Mutex::new(Some(a_tx)),
        b_done: Mutex::new(Some(b_rx)),
    });
    g.unit.subscribe(mirror.clone());
    const IOTLB_REG: u64 = 0xf8;
    let global = 1u64 << 63 | 1 << 60;
    let unit = g.unit.clone();
    let a = std::thread::Builder::new()
        .name("vcpu-a".into())
        .spawn(move || unit.write(IOTLB_REG, 8, global))
        .unwrap();
    a_rx.recv_timeout(Duration::from_secs(5))
        .expect("vcpu-a publishes");
    // The guest moves the page, and vCPU B invalidates.
    pt.map(
        &mut g.frames,
        0x5000,
        0x300_1000,
        PageSize::Size4K,
        true,
        true,
    )
    .unwrap();
    g.unit.write(IOTLB_REG, 8, global);
    let _ = b_tx.send(());
    a.join().unwrap();
    assert_eq!(
        mirror.pages.lock().unwrap().get(&0x5000).copied(),
        Some(0x300_1000),
        "the mirror applied A's older Map after B's newer one"
    );
}

/// Panics on the first register write it sees with `value`.
struct PanicsOnWrite {
    value: u64,
    armed: std::sync::atomic::AtomicBool,
}

impl VtdObserver for PanicsOnWrite {
    fn on_event(&self, event: &VtdEvent) {
        if let VtdEvent::RegisterWrite { value, .. } = event {
            if *value == self.value && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                panic!("observer bug on purpose");
            }
        }
    }
}

/// One observer's panic must not stop the unit: the delivery ticket taken for the batch it
/// panicked in is still served (otherwise every later register write waits for it forever),
/// and observers subscribed after it still get that event and every later one.
#[test]
fn a_panicking_observer_does_not_stop_the_unit() {
    let g = Guest::new("", 64);
    g.unit.subscribe(Arc::new(PanicsOnWrite {
        value: 0x1234,
        armed: true.into(),
    }));
    let after = Arc::new(vtd_core::EventLog::default());
    g.unit.subscribe(after.clone());

    // The write whose delivery panics, from a vCPU thread of its own.
    let unit = g.unit.clone();
    std::thread::spawn(move || unit.write(0x3c, 4, 0x1234))
        .join()
        .expect("the observer's panic is contained, not propagated to the writer");

    // Another thread's writes still complete.
    let (tx, rx) = mpsc::channel();
    let unit = g.unit.clone();
    std::thread::spawn(move || {
        for v in 0..100u64 {
            unit.write(0x3c, 4, v);
        }
        tx.send(unit.read(0x3c, 4)).unwrap();
    });
    let last = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("register writes after an observer panic must complete");
    assert_eq!(last, 99);

    let writes: Vec<u64> = after
        .take()
        .into_iter()
        .filter_map(|e| match e {
            VtdEvent::RegisterWrite { value, .. } => Some(value),
            _ => None,
        })
        .collect();
    let mut want = vec![0x1234];
    want.extend(0..100);
    assert_eq!(writes, want, "the later observer saw every write, in order");
}

/// Holds the deliveries of one wait's writer ("vcpu-a") and of another vCPU ("vcpu-b") at
/// points the test chooses, and records the wait-status dword as the guest would read it
/// when vcpu-a's invalidation reaches the observer.
struct DeliveryGates {
    mem: Mem,
    status: u64,
    status_at_invalidation: Mutex<Option<u32>>,
    /// Told when vcpu-a's invalidation is being delivered; vcpu-a then waits on `a_release`.
    a_delivering: Mutex<Option<mpsc::Sender<()>>>,
    a_release: Mutex<Option<mpsc::Receiver<()>>>,
    /// Told when vcpu-b's FEDATA write is being delivered; vcpu-b then waits on `b_release`.
    b_delivering: Mutex<Option<mpsc::Sender<()>>>,
    b_release: Mutex<Option<mpsc::Receiver<()>>>,
}

/// How long a gate or a test step waits at most: the test fails rather than hangs.
const STEP: Duration = Duration::from_secs(10);

impl VtdObserver for DeliveryGates {
    fn on_event(&self, event: &VtdEvent) {
        let gate = match (std::thread::current().name(), event) {
            (Some("vcpu-a"), VtdEvent::Invalidation { .. }) => {
                let mut b = [0u8; 4];
                GuestRam::read(&self.mem, self.status, &mut b).unwrap();
                *self.status_at_invalidation.lock().unwrap() = Some(u32::from_le_bytes(b));
                (&self.a_delivering, &self.a_release)
            }
            (Some("vcpu-b"), VtdEvent::RegisterWrite { offset, .. })
                if *offset == vtd_regs::regs::offset::FEDATA =>
            {
                (&self.b_delivering, &self.b_release)
            }
            _ => return,
        };
        if let Some(tx) = gate.0.lock().unwrap().take() {
            tx.send(()).unwrap();
        }
        if let Some(rx) = gate.1.lock().unwrap().take() {
            let _ = rx.recv_timeout(STEP);
        }
    }
}

/// Polls `done` until it holds or `limit` passed.
fn eventually(limit: Duration, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    done()
}

/// A guest whose queue holds a global IOTLB invalidation and a wait (as Linux's
/// `qi_submit_sync` queues them), the doorbell not rung yet, with [`DeliveryGates`] subscribed.
struct GatedQueue {
    g: Guest,
    gates: Arc<DeliveryGates>,
    /// The wait's status dword; the wait writes 1.
    status: u64,
    /// The IQT value that rings the doorbell for both descriptors.
    tail: u64,
    a_delivering: mpsc::Receiver<()>,
    a_release: mpsc::Sender<()>,
    b_delivering: mpsc::Receiver<()>,
    b_release: mpsc::Sender<()>,
}

impl GatedQueue {
    fn new() -> Self {
        let mut g = Guest::new("", 64);
        g.enable_qi(false);
        let status = g.queue.as_ref().unwrap().status;
        let (a_delivering_tx, a_delivering) = mpsc::channel();
        let (a_release, a_release_rx) = mpsc::channel();
        let (b_delivering_tx, b_delivering) = mpsc::channel();
        let (b_release, b_release_rx) = mpsc::channel();
        let gates = Arc::new(DeliveryGates {
            mem: g.mem.clone(),
            status,
            status_at_invalidation: Mutex::default(),
            a_delivering: Mutex::new(Some(a_delivering_tx)),
            a_release: Mutex::new(Some(a_release_rx)),
            b_delivering: Mutex::new(Some(b_delivering_tx)),
            b_release: Mutex::new(Some(b_release_rx)),
        });
        g.unit.subscribe(gates.clone());
        g.place(&global_iotlb());
        g.place(&Guest::wait_descriptor(status, 1));
        let tail = g.queue.as_ref().unwrap().tail as u64 * 16;
        Self {
            g,
            gates,
            status,
            tail,
            a_delivering,
            a_release,
            b_delivering,
            b_release,
        }
    }

    /// The wait's status dword as the guest reads it now.
    fn status_now(&self) -> u32 {
        self.g.mem.read_u64(self.status).unwrap() as u32
    }

    /// `write(offset, size, value)` on a thread named `vcpu` (the gates tell vCPUs apart by
    /// thread name); the receiver hears when the write returned.
    fn vcpu_write(
        &self,
        vcpu: &str,
        offset: u64,
        size: u8,
        value: u64,
    ) -> (std::thread::JoinHandle<()>, mpsc::Receiver<()>) {
        let (done_tx, done) = mpsc::channel();
        let unit = self.g.unit.clone();
        let thread = std::thread::Builder::new()
            .name(vcpu.into())
            .spawn(move || {
                unit.write(offset, size, value);
                let _ = done_tx.send(());
            })
            .unwrap();
        (thread, done)
    }
}

/// A wait descriptor is held back only until the batches produced *before* it reached the
/// observers, not until every batch taken since: on a busy VM other vCPUs' register writes
/// and devices' faults each produce a batch, and a slow observer (a nested binder forwarding
/// to the host IOMMU, the inspector) keeps some of them in flight, so a wait that waited for
/// "everything delivered" could be put off round after round and the writer's IQT exit with
/// it. Here vCPU B writes a register after vCPU A's wait was held back, and B's delivery is
/// held: A's wait must still complete (its status written) once A's own invalidation was
/// delivered, and not before.
#[test]
fn a_held_back_wait_does_not_wait_for_batches_produced_after_it() {
    let q = GatedQueue::new();

    // vCPU A rings the doorbell: the wait is held back behind A's own batch, whose delivery
    // the gate stops at the invalidation.
    let (a, a_done) = q.vcpu_write("vcpu-a", vtd_regs::regs::offset::IQT, 8, q.tail);
    q.a_delivering
        .recv_timeout(STEP)
        .expect("vcpu-a delivers its invalidation");
    assert_eq!(
        q.status_now(),
        0,
        "the wait completed before its batch was delivered"
    );

    // vCPU B writes FEDATA: its batch is ticketed after A's (the write is visible once B's
    // lock hold, which takes the ticket, is over) and waits for A's turn to end.
    let (b, _) = q.vcpu_write("vcpu-b", vtd_regs::regs::offset::FEDATA, 4, 0xb0b);
    assert!(
        eventually(STEP, || q.g.unit.read(vtd_regs::regs::offset::FEDATA, 4)
            == 0xb0b),
        "vcpu-b's write reaches the unit"
    );

    // A's batch is delivered; B's is now the one in flight, and stays so.
    q.a_release.send(()).unwrap();
    q.b_delivering
        .recv_timeout(STEP)
        .expect("vcpu-b delivers once vcpu-a's batch was served");
    let completed_while_b_in_flight = eventually(Duration::from_secs(3), || q.status_now() == 1);

    // Let everything finish before asserting, so a failure does not leave threads blocked.
    q.b_release.send(()).unwrap();
    a_done
        .recv_timeout(STEP)
        .expect("vcpu-a's IQT write returns once the deliveries are done");
    a.join().unwrap();
    b.join().unwrap();
    assert_eq!(
        *q.gates.status_at_invalidation.lock().unwrap(),
        Some(0),
        "the observer saw the invalidation only after the guest could see the wait complete"
    );
    assert!(
        completed_while_b_in_flight,
        "vcpu-a's wait was held back by vcpu-b's batch, which was produced after the wait"
    );
    assert_eq!(q.status_now(), 1);
}

/// The other side of the mark: another vCPU's doorbell that reaches the held-back wait while
/// the batch produced before it is still in flight must hold it too (the wait's mark is not
/// served yet), however many of its own events that vCPU has published.
#[test]
fn a_held_back_wait_stays_held_when_another_doorbell_reaches_it() {
    let q = GatedQueue::new();

    // vCPU A rings the doorbell; its delivery stops at the invalidation, the wait is held.
    let (a, _) = q.vcpu_write("vcpu-a", vtd_regs::regs::offset::IQT, 8, q.tail);
    q.a_delivering
        .recv_timeout(STEP)
        .expect("vcpu-a delivers its invalidation");

    // vCPU B rings the same doorbell again (IQT rewritten with its value): the queue resumes
    // at the held wait, under B's lock hold, while A's batch is still in flight. (B's gate
    // is for FEDATA writes; this one passes.)
    let (b, _) = q.vcpu_write("vcpu-b", vtd_regs::regs::offset::IQT, 8, q.tail);
    // B's write does not return before A's delivery ends (its own batch is ticketed after
    // A's), so nothing tells when B passed the wait: give it time to, then look.
    let completed_early = eventually(Duration::from_millis(500), || q.status_now() == 1);
    let iqh_early = q.g.unit.read(vtd_regs::regs::offset::IQH, 8);

    q.a_release.send(()).unwrap();
    a.join().unwrap();
    b.join().unwrap();
    assert!(
        !completed_early,
        "vcpu-b's doorbell completed the wait while the invalidation before it was in flight"
    );
    assert_eq!(iqh_early, q.tail - 16, "the head stayed at the held wait");
    assert_eq!(*q.gates.status_at_invalidation.lock().unwrap(), Some(0));
    assert_eq!(
        q.status_now(),
        1,
        "the wait completes once the batch was delivered"
    );
    assert_eq!(q.g.unit.read(vtd_regs::regs::offset::IQH, 8), q.tail);
}

fn global_iotlb() -> InvDesc {
    InvDesc::Iotlb(IotlbInv {
        granularity: IotlbGranularity::Global,
        drain_read: false,
        drain_write: false,
        ignored: Default::default(),
    })
}

/// Two waits in one doorbell: once the first was held back and completed, the second is held
/// back for the invalidation between them in its own right (what let the first complete says
/// nothing about the second).
#[test]
fn each_wait_of_a_doorbell_waits_for_its_own_invalidations() {
    let mut g = Guest::new("", 64);
    g.enable_qi(false);
    let p = probe(&g);
    let status = g.queue.as_ref().unwrap().status;
    g.submit_raw(&[
        global_iotlb(),
        Guest::wait_descriptor(status, 1),
        global_iotlb(),
        Guest::wait_descriptor(status, 2),
    ]);
    assert_eq!(g.mem.read_u64(status).unwrap() as u32, 2);
    let seen = p.seen.lock().unwrap().clone();
    let statuses: Vec<u32> = seen.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        statuses,
        [0, 1],
        "each invalidation is seen before the wait after it completes: {seen:?}"
    );
}

/// A wait stopped by a queue error (its status write outside RAM) after it was held back
/// keeps its hold-back mark while the queue is stopped. After a unit reset, a queue enabled
/// with a wait already at its head (IQT written before QIE) must hold that wait for the
/// events of the enabling write like any other: the old mark is for a wait that is gone.
#[test]
fn a_stopped_waits_mark_does_not_outlive_a_reset() {
    let mut g = Guest::new("", 64);
    g.enable_qi(false);
    let outside_ram = 1u64 << 40;
    g.submit_raw(&[global_iotlb(), Guest::wait_descriptor(outside_ram, 1)]);
    assert!(
        g.fsts().iqe(),
        "the status write outside RAM stops the queue"
    );

    g.unit.reset();
    g.gcmd = Default::default();
    let queue = g.queue.clone().unwrap();
    g.queue.as_mut().unwrap().tail = 0;
    g.place(&Guest::wait_descriptor(queue.status, 7));
    g.w64(
        vtd_regs::regs::offset::IQA,
        vtd_regs::regs::Iqa::new()
            .with_qs(1)
            .with_iqa(queue.base >> 12)
            .into_bits(),
    );
    g.w64(vtd_regs::regs::offset::IQT, 16);
    let p = probe(&g);
    g.set_queued_invalidation(true);
    assert_eq!(
        g.mem.read_u64(queue.status).unwrap() as u32,
        7,
        "the wait completed"
    );
    let seen = p.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [("queue enabled".to_string(), 0)],
        "the wait completed before the observer saw the queue enabled"
    );
}

/// Observers read entries through the unit (`read_context`, `read_pasid_entry`) and report
/// what went wrong with the request's identity: a PASID entry that cannot be read faults for
/// that requester and that PASID, as a request carrying the PASID would (the fault record's
/// PV field holds the request's PASID).
#[test]
fn a_pasid_entry_read_faults_for_the_pasid_it_asked_for() {
    let mut g = Guest::new("x-scalable-mode=on", 64);
    g.enable_qi(false);
    g.scalable_device(0x10, 3, false);
    assert!(g.unit.read_pasid_entry(0x10, 0).unwrap().present());
    for pasid in [1, 0x1234] {
        let fault = g.unit.read_pasid_entry(0x10, pasid).unwrap_err();
        assert_eq!((fault.sid, fault.pasid), (0x10, Some(pasid)), "{fault:?}");
    }
    // A requester without a context entry faults at the context, still with its PASID.
    let fault = g.unit.read_pasid_entry(0x20, 7).unwrap_err();
    assert_eq!((fault.sid, fault.pasid), (0x20, Some(7)), "{fault:?}");
}
