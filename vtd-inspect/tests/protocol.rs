//! Every message survives encoding and decoding as a JSON line; hellos of other versions and
//! other protocols are told apart.

use std::io::BufReader;

use vtd_inspect::protocol::*;

fn round_trip_server(msg: ServerMessage) {
    let mut wire = Vec::new();
    write_message(&mut wire, &msg).unwrap();
    assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
    let line = read_line(&mut BufReader::new(wire.as_slice()), MAX_SERVER_LINE).unwrap();
    let back: ServerMessage = serde_json::from_slice(&line).unwrap();
    assert_eq!(back, msg);
}

fn recorded_snapshot() -> Snapshot {
    serde_json::from_str(include_str!("data/snapshot.json")).unwrap()
}

fn every_event() -> Vec<Event> {
    let mut events: Vec<Event> = include_str!("data/events.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<EventRecord>(l).unwrap().event)
        .collect();
    events.extend([
        Event::InterruptFault {
            sid: 1,
            index: 2,
            reason_code: 0x22,
            reason: "r".into(),
            disposition: "d".into(),
        },
        Event::PageRequest {
            sid: 3,
            pasid: Some(4),
            address: 0x5000,
            prg_index: 6,
            last_in_group: true,
            access: "rw".into(),
            slot: 2,
        },
        Event::PageResponse {
            rid: 3,
            pasid: None,
            response_code: 0,
            prg_index: 6,
            matched: true,
            origin: "guest QI[4]".into(),
        },
        Event::BindingChanged {
            bdf: "00:04.0".into(),
            pasid: Some(0),
            change: "attached".into(),
        },
        Event::InterruptRemappingEnabled { on: true },
        Event::InterruptTableLatched {
            base: 0x1000,
            entries: 256,
            eime: false,
        },
        Event::QueueError { head: 3, iqei: 1 },
        Event::Shadow {
            op: "map".into(),
            sid: 1,
            pasid: None,
            iova: 0,
            size: 4096,
        },
        Event::Reset,
    ]);
    events
}

#[test]
fn every_server_message_round_trips() {
    round_trip_server(ServerMessage::Hello(Hello::ours("test")));
    round_trip_server(ServerMessage::Snapshot(Box::new(recorded_snapshot())));
    let events = every_event()
        .into_iter()
        .enumerate()
        .map(|(i, event)| EventRecord {
            seq: i as u64,
            time_us: i as u64 * 10,
            event,
        })
        .collect();
    round_trip_server(ServerMessage::Events(EventBatch { events, dropped: 5 }));
    round_trip_server(ServerMessage::Error(ProtocolError {
        kind: ErrorKind::TooManyClients,
        message: "m".into(),
    }));
}

#[test]
fn every_client_message_round_trips() {
    for msg in [
        ClientMessage::Hello(Hello::ours("c")),
        ClientMessage::GetSnapshot,
        ClientMessage::Subscribe,
        ClientMessage::Unsubscribe,
    ] {
        let mut wire = Vec::new();
        write_message(&mut wire, &msg).unwrap();
        let line = read_line(&mut BufReader::new(wire.as_slice()), MAX_CLIENT_LINE).unwrap();
        assert_eq!(serde_json::from_slice::<ClientMessage>(&line).unwrap(), msg);
    }
}

#[test]
fn the_recorded_snapshot_is_stable_json() {
    let snap = recorded_snapshot();
    let again: Snapshot = serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
    assert_eq!(again, snap);
    assert_eq!(snap.devices[0].pasids.len(), 3);
}

#[test]
fn hellos_are_checked_by_magic_and_version_only() {
    let ours = serde_json::to_vec(&ServerMessage::Hello(Hello::ours("x"))).unwrap();
    assert!(matches!(check_hello(&ours), HelloCheck::Compatible(h) if h.software == "x"));
    let future = br#"{"msg":"hello","magic":"vtd-inspect","version":2,"features":["x"]}"#;
    assert_eq!(
        check_hello(future),
        HelloCheck::VersionMismatch { theirs: 2 }
    );
    let huge = br#"{"msg":"hello","magic":"vtd-inspect","version":99999999999}"#;
    assert_eq!(
        check_hello(huge),
        HelloCheck::VersionMismatch { theirs: u32::MAX }
    );
    for other in [
        &br#"{"msg":"hello","magic":"other","version":1,"software":""}"#[..],
        br#"{"msg":"snapshot","magic":"vtd-inspect","version":1}"#,
        br#"{"msg":"hello","magic":"vtd-inspect"}"#,
        b"SSH-2.0-OpenSSH_9.2",
        b"",
        &[0xff, 0xfe, 0x00],
    ] {
        assert_eq!(
            check_hello(other),
            HelloCheck::NotOurs,
            "{:?}",
            String::from_utf8_lossy(other)
        );
    }
}

#[test]
fn lines_are_bounded_and_a_cut_line_is_not_a_message() {
    let long = vec![b'a'; 100];
    let e = read_line(&mut BufReader::new(long.as_slice()), 10).unwrap_err();
    assert!(matches!(e, LineError::TooLong(10)));
    let cut = b"{\"msg\":\"get_snap";
    assert!(matches!(
        read_line(&mut BufReader::new(&cut[..]), 100),
        Err(LineError::Closed)
    ));
    assert!(matches!(
        read_line(&mut BufReader::new(&b""[..]), 100),
        Err(LineError::Closed)
    ));
    let two = b"a\nb\n";
    let mut r = BufReader::new(&two[..]);
    assert_eq!(read_line(&mut r, 1).unwrap(), b"a");
    assert_eq!(read_line(&mut r, 1).unwrap(), b"b");
}
