//! The inspection server's bounds as the README's "Bounds" table states them, checked with
//! the defaults a VMM gets:
//!
//! - clients: at most `ServerOptions::default().max_clients` (16) are served; the next is told
//!   why and a freed slot is reused;
//! - a client that stops reading holds no queue of its own: it is disconnected once a write
//!   has waited `write_timeout`;
//! - the event feed keeps at most `DEFAULT_CAPACITY` (4096) events, dropping the oldest and
//!   counting them, whatever the unit produces.
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

const HELLO: &[u8] = b"{\"msg\":\"hello\",\"magic\":\"vtd-inspect\",\"version\":1,\"software\":\"x\"}\n";

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
    assert_eq!(options.max_clients, 16, "the README's Bounds table states 16");
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
    assert_eq!(DEFAULT_CAPACITY, 4096, "the README's Bounds table states 4096");
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
