//! The inspector's wire protocol decoder (vtd-inspect `protocol`): bounded line reading and
//! JSON decoding of every message, as the server (client lines, untrusted input to the VMM)
//! and the client (server lines) do it.
//!
//! Invariants: no panic; a line is never longer than the limit it was read with; a message
//! that decodes encodes back and decodes to the same message; the hello check accepts only
//! our magic and version and never refuses a hello the typed decoder reads as ours.
//!
//! Input: one byte choosing the line limit (mode % 3: the server's [`MAX_CLIENT_LINE`], a
//! small one so long lines are reached, the client's [`MAX_SERVER_LINE`]) and the reader's
//! buffer size (mode / 3), then the byte stream.

use std::io::BufReader;

use vtd_inspect::protocol::{
    ClientMessage, HelloCheck, LineError, MAGIC, MAX_CLIENT_LINE, MAX_SERVER_LINE,
    PROTOCOL_VERSION, ServerMessage, check_hello, read_line, write_message,
};

/// Lines read per input.
const MAX_LINES: usize = 64;

/// Encodes a seed: `stream` read with the server's limit on client lines (`server_side`)
/// or the client's limit on server lines.
pub fn encode(server_side: bool, stream: &[u8]) -> Vec<u8> {
    let mut v = vec![if server_side { 0 } else { 2 }];
    v.extend_from_slice(stream);
    v
}

fn round_trip<T>(msg: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut line = Vec::new();
    if let Err(e) = write_message(&mut line, msg) {
        panic!("{msg:?} does not encode: {e}");
    }
    let mut reader = &line[..];
    let back = match read_line(&mut reader, line.len()) {
        Ok(l) => l,
        Err(e) => panic!("own line of {msg:?} unreadable: {e}"),
    };
    match serde_json::from_slice::<T>(&back) {
        Ok(again) => assert_eq!(&again, msg, "message changed through encode/decode"),
        Err(e) => panic!("own encoding of {msg:?} does not decode: {e}"),
    }
}

/// The target.
pub fn run(data: &[u8]) {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let max = match mode % 3 {
        0 => MAX_CLIENT_LINE,
        1 => 64,
        _ => MAX_SERVER_LINE,
    };
    let capacity = 1 + (mode as usize / 3) * 4;
    let mut reader = BufReader::with_capacity(capacity, stream);
    for _ in 0..MAX_LINES {
        let line = match read_line(&mut reader, max) {
            Ok(l) => l,
            Err(LineError::TooLong(_)) => return, // the peer is dropped
            Err(_) => return,
        };
        assert!(
            line.len() <= max,
            "line of {} bytes past the limit {max}",
            line.len()
        );
        // check_hello reads the line as a JSON value first (so a future version's hello still
        // gives a clear mismatch), which tolerates what the typed decoder refuses (duplicate
        // keys: the last wins). What must hold: it accepts only our magic and version, and it
        // never refuses a hello the typed decoder reads as ours.
        let check = check_hello(&line);
        if let HelloCheck::Compatible(h) = &check {
            assert!(
                h.magic == MAGIC && h.version == PROTOCOL_VERSION,
                "check_hello accepted {h:?}"
            );
        }
        if let Ok(ServerMessage::Hello(g)) = serde_json::from_slice::<ServerMessage>(&line)
            && g.magic == MAGIC
            && g.version == PROTOCOL_VERSION
        {
            assert_eq!(
                check,
                HelloCheck::Compatible(g),
                "check_hello refused our hello"
            );
        }
        if let Ok(m) = serde_json::from_slice::<ClientMessage>(&line) {
            round_trip(&m);
        }
        if let Ok(m) = serde_json::from_slice::<ServerMessage>(&line) {
            round_trip(&m);
        }
    }
}
