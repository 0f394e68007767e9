//! A real unit served on a socket in a temporary directory; clients attach through it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use common::{GPA, Guest, IOVA, PASIDS, SID};
use vtd_inspect::client::{Client, ClientError};
use vtd_inspect::protocol::{
    ClientMessage, ContextView, Event, EventRecord, MAX_CLIENT_LINE, ServerMessage, Snapshot,
};
use vtd_inspect::server::{InspectServer, ServerOptions};

fn options() -> ServerOptions {
    ServerOptions {
        software: "e2e-test".into(),
        ..ServerOptions::default()
    }
}

/// Reads events until `done` says enough, or fails after a few seconds.
fn collect_events(client: &mut Client, done: impl Fn(&[EventRecord]) -> bool) -> Vec<EventRecord> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut all = Vec::new();
    while !done(&all) {
        assert!(Instant::now() < deadline, "events seen: {all:#?}");
        if let ServerMessage::Events(b) = client.recv().unwrap() {
            all.extend(b.events);
        }
    }
    all
}

#[test]
fn a_client_sees_the_pasid_entries_and_invalidations_the_guest_programmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vtd.sock");
    let mut guest = Guest::new();
    let server = InspectServer::start(guest.unit.clone(), &path, options()).unwrap();

    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let mut client = Client::connect(&path).unwrap();
    assert_eq!(client.server().software, "e2e-test");
    client.send(&ClientMessage::Subscribe).unwrap();
    // The subscription is in place once a request sent after it is answered.
    client.snapshot().unwrap();

    guest.program();
    guest.flush_page(1, 2, IOVA);
    assert_eq!(guest.dma(1, IOVA + 0x10).unwrap(), GPA + 0x10);
    assert!(guest.dma(7, IOVA).is_err(), "PASID 7 has no entry");

    let is_inv =
        |e: &EventRecord, t: &str| matches!(&e.event, Event::Invalidation(i) if i.desc_type == t);
    let events = collect_events(&mut client, |ev| {
        ev.iter().filter(|e| is_inv(e, "p-iotlb")).count() == 4
            && ev.iter().any(|e| matches!(e.event, Event::DmaFault { .. }))
    });
    let pasid_cache: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Invalidation(i) if i.desc_type == "pasid-cache" => {
                Some((i.did, i.pasid, i.granularity.as_str()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        pasid_cache,
        PASIDS
            .iter()
            .map(|&(p, d)| (Some(d), Some(p), "pasid"))
            .collect::<Vec<_>>()
    );
    let page = events
        .iter()
        .find_map(|e| match &e.event {
            Event::Invalidation(i) if i.granularity == "page" => Some(i.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (page.did, page.pasid, page.addr, page.am, page.ih),
        (Some(2), Some(1), Some(IOVA), Some(0), Some(true))
    );
    let fault = events
        .iter()
        .find(|e| matches!(e.event, Event::DmaFault { .. }))
        .unwrap();
    let Event::DmaFault { sid, pasid, .. } = &fault.event else {
        unreachable!()
    };
    assert_eq!((*sid, *pasid), (SID, Some(7)));
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");

    let (snap, _) = client.snapshot().unwrap();
    assert_eq!(snap.unit.root.as_ref().unwrap().mode, "scalable");
    assert!(snap.unit.gsts_flags.contains(&"TES".to_string()));
    assert!(snap.queue.enabled);
    assert_eq!(snap.queue.descriptor_bytes, 32);
    assert_eq!(snap.queue.head, snap.queue.tail);
    assert_eq!(snap.devices.len(), 1);
    let dev = &snap.devices[0];
    assert_eq!((dev.sid, dev.bdf.as_str()), (SID, "00:03.0"));
    assert!(matches!(
        dev.context,
        ContextView::Scalable {
            paside: true,
            accepted: true,
            ..
        }
    ));
    let listed: Vec<(u32, u16)> = dev.pasids.iter().map(|p| (p.pasid, p.did)).collect();
    assert_eq!(listed, PASIDS.to_vec());
    for (p, root) in dev.pasids.iter().zip(&guest.fs_roots) {
        assert_eq!(p.pgtt, "first-stage");
        assert_eq!(p.fs_table, Some(*root));
        assert!(p.accepted && !p.sre && !p.fpd);
        assert_eq!(
            p.fs_root_entries.len(),
            1,
            "one PML4 entry maps IOVA 0x1000"
        );
        assert_eq!(p.mappings.len(), 1);
        assert_eq!((p.mappings[0].iova, p.mappings[0].output), (IOVA, GPA));
    }
    let c = &snap.counters;
    assert_eq!(c.invalidations.get("pasid-cache"), Some(&3));
    assert_eq!(c.invalidations.get("p-iotlb"), Some(&4));
    // Waits complete (WaitCompleted events) rather than invalidate anything.
    assert_eq!(c.invalidations.get("wait"), None);
    assert_eq!(c.queued_invalidations, 7);
    assert_eq!(c.register_invalidations, 0);
    assert_eq!(c.dma_faults, 1);
    assert_eq!(snap.faults.records.len(), 1);
    assert_eq!(snap.faults.records[0].pasid, Some(7));
    assert!(snap.caches.iotlb.misses >= 1);
    assert!(snap.caches.pasid.entries >= 1);

    if std::env::var_os("VTD_INSPECT_RECORD").is_some() {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(
            data.join("snapshot.json"),
            serde_json::to_string_pretty(&snap).unwrap(),
        )
        .unwrap();
        let mut lines = String::new();
        for e in &events {
            lines.push_str(&serde_json::to_string(e).unwrap());
            lines.push('\n');
        }
        std::fs::write(data.join("events.jsonl"), lines).unwrap();
    }
    drop(client);
    drop(server);
    assert!(
        !path.exists(),
        "the socket is removed when the server stops"
    );
}

#[test]
fn clear_errors_for_missing_foreign_and_mismatched_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let e = Client::connect(&missing).unwrap_err();
    assert!(matches!(e, ClientError::NoSuchSocket(_)), "{e}");
    assert!(e.to_string().contains("no such socket"));

    // A socket that speaks something else.
    let foreign = dir.path().join("foreign.sock");
    let listener = UnixListener::bind(&foreign).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"220 smtp.example ESMTP\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(200));
    });
    let e = Client::connect(&foreign).unwrap_err();
    assert!(matches!(e, ClientError::NotVtdSocket(_)), "{e}");
    assert!(e.to_string().contains("not a vtd-inspect socket"));
    t.join().unwrap();

    // A server of a future protocol version.
    let future = dir.path().join("future.sock");
    let listener = UnixListener::bind(&future).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(
            b"{\"msg\":\"hello\",\"magic\":\"vtd-inspect\",\"version\":99,\"new_field\":[]}\n",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    });
    let e = Client::connect(&future).unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::VersionMismatch {
                ours: 1,
                theirs: 99
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("version mismatch"));
    t.join().unwrap();

    // A regular file is not a socket, and the server will not remove it.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = Client::connect(&file).unwrap_err();
    assert!(matches!(e, ClientError::NotASocket(_)), "{e}");
    let guest = Guest::new();
    let e = InspectServer::start(guest.unit.clone(), &file, options()).unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert!(file.exists());

    // A stale socket (its VMM died) is refused clearly and replaced by a new server.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let e = Client::connect(&stale).unwrap_err();
    assert!(matches!(e, ClientError::Refused(_)), "{e}");
    let server = InspectServer::start(guest.unit.clone(), &stale, options()).unwrap();
    Client::connect(&stale).unwrap();
    // ... while a live one is not taken over.
    let e = InspectServer::start(guest.unit.clone(), &stale, options()).unwrap_err();
    assert!(e.to_string().contains("another process"), "{e}");
    drop(server);
}

/// A raw connection speaking the protocol by hand.
fn raw(path: &std::path::Path) -> (BufReader<UnixStream>, UnixStream) {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut hello = String::new();
    r.read_line(&mut hello).unwrap();
    assert!(hello.contains("\"magic\":\"vtd-inspect\""), "{hello}");
    (r, w)
}

fn next_error(r: &mut BufReader<UnixStream>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let msg: ServerMessage = serde_json::from_str(&line).unwrap();
    match msg {
        ServerMessage::Error(e) => e.message,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn the_server_refuses_bad_clients_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vtd.sock");
    let guest = Guest::new();
    let server = InspectServer::start(
        guest.unit.clone(),
        &path,
        ServerOptions {
            max_clients: 2,
            ..options()
        },
    )
    .unwrap();

    let (mut r, mut w) = raw(&path);
    w.write_all(
        b"{\"msg\":\"hello\",\"magic\":\"vtd-inspect\",\"version\":2,\"software\":\"x\"}\n",
    )
    .unwrap();
    let msg = next_error(&mut r);
    assert!(
        msg.contains("version mismatch") && msg.contains("client 2"),
        "{msg}"
    );

    let (mut r, mut w) = raw(&path);
    w.write_all(b"GET / HTTP/1.0\n").unwrap();
    assert!(next_error(&mut r).contains("hello"));

    // A request that never ends is cut off at the limit.
    let (mut r, mut w) = raw(&path);
    w.write_all(
        b"{\"msg\":\"hello\",\"magic\":\"vtd-inspect\",\"version\":1,\"software\":\"x\"}\n",
    )
    .unwrap();
    let _ = w.write_all(&vec![b'x'; MAX_CLIENT_LINE + 2048]);
    assert!(next_error(&mut r).contains("longer than"));

    // A request that is not one: there is no message that writes anything.
    let (mut r, mut w) = raw(&path);
    w.write_all(
        b"{\"msg\":\"hello\",\"magic\":\"vtd-inspect\",\"version\":1,\"software\":\"x\"}\n",
    )
    .unwrap();
    w.write_all(b"{\"msg\":\"write_register\",\"offset\":24,\"value\":2147483648}\n")
        .unwrap();
    assert!(next_error(&mut r).contains("bad request"));
    assert_eq!(guest.unit.read(0x1c, 4) & (1 << 31), 0, "TE still off");

    // Two clients are served; the third is told why not.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.clients() != 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let _a = Client::connect(&path).unwrap();
    let _b = Client::connect(&path).unwrap();
    let (mut r, _w) = raw(&path);
    assert!(next_error(&mut r).contains("already has 2 clients"));
}

#[test]
fn a_stuck_client_loses_events_and_never_slows_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vtd.sock");
    let mut guest = Guest::new();
    let server = InspectServer::start(
        guest.unit.clone(),
        &path,
        ServerOptions {
            feed_capacity: 64,
            write_timeout: Duration::from_secs(30),
            ..options()
        },
    )
    .unwrap();
    guest.program();
    // A client that subscribes and then never reads: its socket buffer fills, its server
    // thread blocks in write, and the unit must not notice.
    let (_r, mut w) = raw(&path);
    w.write_all(b"{\"msg\":\"hello\",\"magic\":\"vtd-inspect\",\"version\":1,\"software\":\"x\"}\n{\"msg\":\"subscribe\"}\n").unwrap();
    // A live client, subscribed too, that reads only after the burst.
    let mut live = Client::connect(&path).unwrap();
    live.send(&ClientMessage::Subscribe).unwrap();
    live.snapshot().unwrap();

    let start = Instant::now();
    for i in 0..20_000u64 {
        guest.flush_page(1, 2, (i % 512) << 12);
    }
    let elapsed = start.elapsed();
    // 20 000 batches of 2 descriptors each: far more than the queue (64) keeps.
    assert!(
        elapsed < Duration::from_secs(60),
        "the unit was held up: {elapsed:?}"
    );

    let mut dropped = 0;
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while got + dropped < 40_000 {
        assert!(Instant::now() < deadline, "got {got} dropped {dropped}");
        if let ServerMessage::Events(b) = live.recv().unwrap() {
            got += b
                .events
                .iter()
                .filter(|e| matches!(e.event, Event::Invalidation(_)))
                .count() as u64
                + b.events
                    .iter()
                    .filter(|e| !matches!(e.event, Event::Invalidation(_)))
                    .count() as u64;
            dropped = b.dropped;
        }
    }
    assert!(dropped > 0, "the bounded queue dropped the oldest");
    let (snap, _): (Snapshot, _) = live.snapshot().unwrap();
    assert_eq!(
        snap.counters.invalidations.get("p-iotlb"),
        Some(&(3 + 20_000))
    );
    assert!(snap.counters.events_overwritten > 0);
    drop(server);
}
