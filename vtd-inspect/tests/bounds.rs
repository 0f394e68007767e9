//! The inspection server's bounds as the README's "Bounds" table states them, checked with
//! the defaults a VMM gets:
//!
//! - clients: at most `ServerOptions::default().max_clients` (16) are served; the next is told
//!   why and a freed slot is reused;
//! - a client that stops reading holds no queue of its own: it is disconnected once a write
//!   has waited `write_timeout`;
//! - the event feed keeps at most `DEFAULT_CAPACITY` (4096) events, dropping the oldest and
//!   counting them, whatever the unit produces;
//! - a snapshot reads at most `Limits::read_budget` (2^19) words of guest memory, whatever the
//!   guest's tables hold, and its encoded line stays below `MAX_SERVER_LINE`;
//! - the binder view keeps the history of at most `MAX_DEVICE_HISTORY` (4096) devices, making
//!   room by dropping the unregistered device noted least recently, never a registered one.
//!
//! A request line's bound (`MAX_CLIENT_LINE`) is checked in tests/end_to_end.rs
//! (`the_server_refuses_bad_clients_with_a_reason`), a response line's (`MAX_SERVER_LINE`)
//! in tests/protocol.rs (`lines_are_bounded_and_a_cut_line_is_not_a_message`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::Guest;
use vtd_inspect::client::Client;
use vtd_inspect::feed::DEFAULT_CAPACITY;
use vtd_inspect::protocol::{ClientMessage, ServerMessage};
use vtd_inspect::server::{InspectServer, ServerOptions};

const HELLO: &[u8] =
    b"{\"msg\":\"hello\",\"magic\":\"vtd-inspect\",\"version\":1,\"software\":\"x\"}\n";

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn at_most_sixteen_clients_by_default_and_a_freed_slot_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vtd.sock");
    let guest = Guest::new();
    let options = ServerOptions::default();
    assert_eq!(
        options.max_clients, 16,
        "the README's Bounds table states 16"
    );
    let server = InspectServer::start(guest.unit.clone(), &path, options).unwrap();
    let mut clients: Vec<Client> = (0..16).map(|_| Client::connect(&path).unwrap()).collect();
    wait_for("16 clients", || server.clients() == 16);

    let s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s);
    let mut hello = String::new();
    r.read_line(&mut hello).unwrap();
    let mut refusal = String::new();
    r.read_line(&mut refusal).unwrap();
    assert!(refusal.contains("already has 16 clients"), "{refusal}");
    assert_eq!(server.clients(), 16);

    clients.pop();
    wait_for("a slot to free", || server.clients() == 15);
    let mut again = Client::connect(&path).unwrap();
    again.snapshot().unwrap();
    assert_eq!(server.clients(), 16);
}

#[test]
fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vtd.sock");
    let mut guest = Guest::new();
    let server = InspectServer::start(
        guest.unit.clone(),
        &path,
        ServerOptions {
            write_timeout: Duration::from_millis(200),
            ..ServerOptions::default()
        },
    )
    .unwrap();
    guest.program();
    // Subscribes, then never reads: its socket buffer fills, a write waits, the server gives
    // up on it after the write timeout rather than keeping anything for it.
    let mut stuck = UnixStream::connect(&path).unwrap();
    stuck.write_all(HELLO).unwrap();
    stuck.write_all(b"{\"msg\":\"subscribe\"}\n").unwrap();
    wait_for("the client", || server.clients() == 1);
    let start = Instant::now();
    let mut flushes = 0u64;
    while server.clients() != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "a stuck client still served after {flushes} flushes"
        );
        for i in 0..64 {
            guest.flush_page(1, 2, (i % 512) << 12);
        }
        flushes += 64;
    }
    eprintln!(
        "stuck client disconnected after {flushes} flushes, {:?}",
        start.elapsed()
    );
    // The server goes on serving others.
    let mut live = Client::connect(&path).unwrap();
    live.send(&ClientMessage::Subscribe).unwrap();
    let (snap, _) = live.snapshot().unwrap();
    assert!(snap.counters.events > 0);
    drop(stuck);
}

#[test]
fn the_feed_keeps_at_most_its_capacity_and_counts_what_it_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vtd.sock");
    let mut guest = Guest::new();
    let server = InspectServer::start(guest.unit.clone(), &path, ServerOptions::default()).unwrap();
    assert_eq!(
        DEFAULT_CAPACITY, 4096,
        "the README's Bounds table states 4096"
    );
    guest.program();
    // Three times what the feed keeps, with nobody reading.
    while server.feed().next_seq() < 3 * DEFAULT_CAPACITY as u64 {
        guest.flush_page(1, 2, 0);
    }
    let produced = server.feed().next_seq();
    let mut cursor = 0;
    let (events, lost) = server.feed().read_from(&mut cursor, usize::MAX);
    assert_eq!(events.len(), DEFAULT_CAPACITY);
    assert_eq!(lost, produced - DEFAULT_CAPACITY as u64);
    assert_eq!(cursor, produced);
    // The oldest went: what is kept is the newest, in order.
    assert_eq!(
        events.first().map(|e| e.seq),
        Some(produced - DEFAULT_CAPACITY as u64)
    );
    assert_eq!(
        server.feed().counters().events_overwritten,
        produced - DEFAULT_CAPACITY as u64
    );
    // A client subscribing now gets what is produced from now on, and its batches are
    // what the feed kept, never more.
    let mut client = Client::connect(&path).unwrap();
    client.send(&ClientMessage::Subscribe).unwrap();
    client.snapshot().unwrap();
    guest.flush_page(1, 2, 0);
    loop {
        if let ServerMessage::Events(batch) = client.recv().unwrap() {
            assert!(batch.events.len() <= DEFAULT_CAPACITY);
            assert!(batch.events.iter().all(|e| e.seq >= produced));
            break;
        }
    }
}

/// A guest whose tables alias everywhere: every bus's root entry names one context table,
/// every device in it is present with a full PASID directory, every directory entry names one
/// PASID table of 64 first-stage entries, and the first-stage table maps itself at every
/// index. Listing it all would be 2^16 devices x 2^20 PASIDs x an endless table; a snapshot
/// reads at most `Limits::read_budget` words (2^19 by default) and says it stopped, and its
/// encoded line stays far below `MAX_SERVER_LINE`.
#[test]
fn a_snapshot_of_aliasing_tables_reads_at_most_its_budget() {
    use vtd_inspect::collect::{Limits, snapshot};
    use vtd_inspect::protocol::MAX_SERVER_LINE;
    use vtd_tables::GuestRam;
    use vtd_tables::entries::{PasidEntry, ScalableContextEntry, ScalableRootEntry};

    let limits = Limits::default();
    assert_eq!(
        limits.read_budget,
        1 << 19,
        "the README's Bounds table states 2^19"
    );
    let ram = vtd_testkit::driver::CountingRam::new(64 << 20);
    let (root, ctx, dir, pasids, fs) = (0x10_0000u64, 0x11_0000, 0x20_0000, 0x12_0000, 0x13_0000);
    let root_entry = ScalableRootEntry::new(Some(ctx), Some(ctx));
    for bus in 0..256 {
        ram.write_words(root + bus * 16, &root_entry.0).unwrap();
    }
    // PDTS 7: 2^14 directory entries (spec 9.4).
    let context = ScalableContextEntry::new(dir, 7).with_paside(true);
    for devfn in 0..128 {
        ram.write_words(ctx + devfn * 32, &context.0).unwrap();
    }
    for d in 0..1u64 << 14 {
        ram.write_u64(dir + d * 8, pasids | 1).unwrap();
    }
    let entry = PasidEntry::first_stage(fs, false, 1, 2);
    for slot in 0..64 {
        ram.write_words(pasids + slot * 64, &entry.0).unwrap();
    }
    // Present, writable, user, accessed: every entry points back at the table.
    for i in 0..512 {
        ram.write_u64(fs + i * 8, fs | 0b10_0111).unwrap();
    }
    let cfg = vtd_core::VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap();
    let unit = vtd_core::VtdUnit::new(
        cfg,
        ram.clone(),
        std::sync::Arc::new(vtd_core::RecordingSink::default()),
    )
    .unwrap();
    unit.write(0x20, 8, root | 1 << 10); // RTADDR, TTM = scalable
    unit.write(0x18, 4, 1 << 30); // GCMD.SRTP
    assert!(unit.root_table().is_some());

    let before = ram.words_read();
    let start = Instant::now();
    let snap = snapshot(&unit, &limits);
    let took = start.elapsed();
    let read = ram.words_read() - before;
    let line = serde_json::to_vec(&snap).unwrap();
    eprintln!(
        "{read} words read, {} devices, {} bytes encoded, {took:?}",
        snap.devices.len(),
        line.len()
    );
    assert!(snap.enumeration.budget_exhausted);
    assert!(
        read <= u64::from(limits.read_budget),
        "{read} words read for one snapshot"
    );
    assert!(u64::from(snap.enumeration.entries_read) <= u64::from(limits.read_budget));
    assert!(line.len() < MAX_SERVER_LINE, "{} bytes", line.len());
}

/// The TUI keeps what it lists bounded whatever the server streams: 5,000 log lines (and
/// 5,000 held while paused), 500 fault events, the newest kept.
#[test]
fn the_tui_keeps_at_most_5000_log_lines_and_500_fault_events() {
    use vtd_inspect::protocol::{Event, EventBatch, EventRecord};
    use vtd_inspect::tui::app::{App, Tab};
    const LOG: usize = 5000;
    const FAULTS: usize = 500;
    let request = |seq: u64| EventRecord {
        seq,
        time_us: seq,
        event: Event::PageRequest {
            sid: 3,
            pasid: Some(4),
            address: 0x5000,
            prg_index: 6,
            last_in_group: true,
            access: "rw".into(),
            slot: 2,
        },
    };
    let fault = |seq: u64| EventRecord {
        seq,
        time_us: seq,
        event: Event::InterruptFault {
            sid: 1,
            index: 2,
            reason_code: 0x22,
            reason: "r".into(),
            disposition: "d".into(),
        },
    };
    let mut app = App::new("/tmp/vtd.sock");
    let events: Vec<EventRecord> = (0..3 * LOG as u64)
        .map(|s| if s % 10 == 0 { fault(s) } else { request(s) })
        .collect();
    app.on_events(EventBatch { events, dropped: 0 });
    assert_eq!(app.log.len(), LOG);
    assert_eq!(app.fault_events.len(), FAULTS);
    assert_eq!(app.log.back().map(|r| r.seq), Some(3 * LOG as u64 - 1));

    // Paused: new lines are held, as many as the log keeps; resuming keeps the newest.
    app.tab = Tab::Invalidations;
    app.on_key(ratatui::crossterm::event::KeyEvent::from(
        ratatui::crossterm::event::KeyCode::Char('p'),
    ));
    assert!(app.paused);
    let events: Vec<EventRecord> = (3 * LOG as u64..6 * LOG as u64).map(request).collect();
    app.on_events(EventBatch { events, dropped: 0 });
    assert_eq!(app.held.len(), LOG);
    app.on_key(ratatui::crossterm::event::KeyEvent::from(
        ratatui::crossterm::event::KeyCode::Char('p'),
    ));
    assert!(!app.paused);
    assert!(app.held.is_empty());
    assert_eq!(app.log.len(), LOG);
    assert_eq!(app.log.back().map(|r| r.seq), Some(6 * LOG as u64 - 1));
}

/// The binder view remembers counters and the last error of at most `MAX_DEVICE_HISTORY`
/// devices however many come and go (hot-plug churn): a device new to a full history takes
/// the place of the unregistered device noted least recently; registered devices keep theirs,
/// and when every device kept is registered the newcomer goes without.
#[test]
fn the_binder_view_keeps_at_most_4096_device_histories_and_never_drops_a_registered_one() {
    use std::sync::Arc;
    use vtd_accel::sim::{HostMemory, SimHostIommu};
    use vtd_accel::{
        AccelEvent, AccelObserver, Bdf, BindingKey, BlockCause, HostHwInfo, HostIommuDevice,
        NestedBinder, PciTopology,
    };
    use vtd_inspect::accel::{BinderView, MAX_DEVICE_HISTORY};
    use vtd_inspect::feed::EventFeed;
    use vtd_inspect::server::BindingSource;

    let guest = Guest::new();
    let sim = Arc::new(SimHostIommu::new(
        HostHwInfo::vtd_nesting_capable(),
        HostMemory::new().with_region(1 << 32, 64 << 20, guest.mem.clone(), 0),
    ));
    let ioas = sim.alloc_ioas();
    sim.ioas_map(ioas, 0, 64 << 20, 1 << 32, true).unwrap();
    let binder = NestedBinder::with_unit_faults(&guest.unit);
    let register = |sid: u16| {
        let (dev, parent) = sim.vfio_bind_default(ioas, binder.viommu_flags()).unwrap();
        let host = HostIommuDevice::query(sim.clone(), format!("dev{sid}"), dev, parent).unwrap();
        binder
            .register(Bdf::from(sid), host, PciTopology::default())
            .unwrap();
    };
    // The view is not subscribed: the test alone decides what it notes, one host failure per
    // call (the binder's event for a fenced device), which counts as "blocked".
    let view = BinderView::new(&binder, Arc::new(EventFeed::new(16)));
    let fence = |sid: u16| {
        view.on_accel_event(&AccelEvent::Blocked {
            binding: BindingKey::new(Bdf::from(sid), None),
            cause: BlockCause::HostFailure,
        });
        assert!(view.devices_with_history() <= MAX_DEVICE_HISTORY);
    };
    // The "blocked" counter of each registered device, as a snapshot lists it.
    let blocked = || -> std::collections::BTreeMap<String, u64> {
        view.bindings()
            .into_iter()
            .map(|b| {
                let n = b.counters.iter().find(|f| f.name == "blocked").unwrap();
                (b.bdf, n.value)
            })
            .collect()
    };
    let blocked_of = |sid: u16| blocked()[&Bdf::from(sid).to_string()];

    // Registered devices, noted first (the least recent of all), then more unregistered
    // devices than the history holds.
    const REGISTERED: u16 = 8;
    const BEYOND: u16 = 100;
    let unregistered = |i: u16| 0x100 + i;
    for sid in 0..REGISTERED {
        register(sid);
        fence(sid);
    }
    for i in 0..MAX_DEVICE_HISTORY as u16 + BEYOND {
        fence(unregistered(i));
    }
    assert_eq!(view.devices_with_history(), MAX_DEVICE_HISTORY);
    // Registered devices kept theirs, though noted before everyone else.
    for sid in 0..REGISTERED {
        assert_eq!(blocked_of(sid), 1, "registered {sid} lost its history");
    }
    // The REGISTERED + BEYOND devices dropped are the least recently noted unregistered ones:
    // plugged back, the last of them starts afresh, the next one finds its history.
    let last_dropped = unregistered(REGISTERED + BEYOND - 1);
    let first_kept = unregistered(REGISTERED + BEYOND);
    register(last_dropped);
    register(first_kept);
    assert_eq!(
        blocked_of(last_dropped),
        0,
        "history of {last_dropped:#x} kept"
    );
    assert_eq!(
        blocked_of(first_kept),
        1,
        "history of {first_kept:#x} dropped"
    );
    // Noting a device already kept makes no room and costs nothing.
    fence(first_kept);
    assert_eq!(blocked_of(first_kept), 2);
    assert_eq!(view.devices_with_history(), MAX_DEVICE_HISTORY);

    // Every device kept registered: a newcomer goes without history rather than take a
    // registered device's.
    for i in REGISTERED + BEYOND + 1..MAX_DEVICE_HISTORY as u16 + BEYOND {
        register(unregistered(i));
    }
    let newcomer = 0xf000;
    register(newcomer);
    fence(newcomer);
    assert_eq!(view.devices_with_history(), MAX_DEVICE_HISTORY);
    assert_eq!(blocked_of(newcomer), 0);
    let listed = blocked();
    assert_eq!(listed.len(), MAX_DEVICE_HISTORY + 2);
    assert_eq!(
        listed.values().filter(|&&n| n > 0).count(),
        MAX_DEVICE_HISTORY,
        "a registered device lost its history to the newcomer"
    );
    // One of them unplugged: its place is the newcomer's.
    let unplugged = unregistered(2000);
    binder.unregister(Bdf::from(unplugged)).unwrap();
    fence(newcomer);
    assert_eq!(view.devices_with_history(), MAX_DEVICE_HISTORY);
    assert_eq!(blocked_of(newcomer), 1);
    register(unplugged);
    assert_eq!(
        blocked_of(unplugged),
        0,
        "the unplugged device's history was kept"
    );
}
