//! The conformance scenario format (vtd-conformance `scenario`) and the binary module the
//! interpreter guest reads (`encode`).
//!
//! Invariants: no panic on any text; a scenario that parses encodes (or is refused as too
//! large) and its module decodes to the same steps; the module decoder never panics on any
//! bytes.
//!
//! Input: one byte (bit 0: the rest is a module for the decoder, otherwise scenario JSON).

use vtd_conformance::encode::{decode, encode};
use vtd_conformance::scenario::parse_scenario;

/// Encodes a seed.
pub fn seed(module: bool, body: &[u8]) -> Vec<u8> {
    let mut v = vec![module as u8];
    v.extend_from_slice(body);
    v
}

/// The target.
pub fn run(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    if mode & 1 != 0 {
        let _ = decode(body);
        return;
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let Ok(scenario) = parse_scenario("fuzz.json", text) else {
        return;
    };
    let Ok(module) = encode(&scenario) else {
        return; // too large for the interpreter: refused with a message
    };
    match decode(&module) {
        Ok(steps) => assert_eq!(steps, scenario.steps, "module decodes to other steps"),
        Err(e) => panic!("own module does not decode: {e}"),
    }
}
