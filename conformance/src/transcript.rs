//! Transcripts: the interpreter's serial output, one line per observing step.
//!
//! Line formats (step indices are 0-based positions in the scenario's `steps`):
//! `<i> mmio_read 0x<hex>`, `<i> poll ok|timeout`, `<i> dump <hex bytes>`, and a final `end`.
//! Hex is lower case without leading zeros for registers, two digits per byte for dumps.
//! The interpreter prints [`BEGIN_MARKER`] first, so anything a machine prints before it
//! (firmware, loader) is not part of the transcript.

use crate::scenario::{Scenario, Step};
use std::fmt::Write as _;

/// Line the interpreter prints before the transcript.
pub const BEGIN_MARKER: &str = "vtdc-begin";
/// Last line of every complete transcript.
pub const END: &str = "end";

/// The line of an `mmio_read` step.
pub fn mmio_read_line(index: usize, value: u64) -> String {
    format!("{index} mmio_read {value:#x}")
}

/// The line of a `poll` step.
pub fn poll_line(index: usize, ok: bool) -> String {
    format!("{index} poll {}", if ok { "ok" } else { "timeout" })
}

/// The line of a `dump` step.
pub fn dump_line(index: usize, bytes: &[u8]) -> String {
    let mut s = format!("{index} dump ");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A complete transcript (its last line is [`END`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transcript {
    /// The lines, without line terminators.
    pub lines: Vec<String>,
}

impl Transcript {
    /// The transcript as text, one `\n`-terminated line each.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for l in &self.lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// Cuts the transcript out of a machine's serial output.
///
/// Fails with the interpreter's own `error: ...` line when it reported one, or says
/// what is missing.
pub fn extract(serial: &str) -> Result<Transcript, String> {
    let mut lines = serial.lines().map(|l| l.trim_end_matches('\r'));
    let mut seen_begin = false;
    for l in lines.by_ref() {
        if l.trim() == BEGIN_MARKER {
            seen_begin = true;
            break;
        }
        if let Some(e) = l.trim().strip_prefix("error: ") {
            return Err(format!("interpreter: {e}"));
        }
    }
    if !seen_begin {
        return Err("the interpreter printed nothing (no transcript start)".into());
    }
    let mut out = Vec::new();
    for l in lines {
        if let Some(e) = l.strip_prefix("error: ") {
            return Err(format!("interpreter: {e}"));
        }
        out.push(l.to_string());
        if l == END {
            return Ok(Transcript { lines: out });
        }
    }
    Err(format!(
        "transcript ends without `end` after {} line(s)",
        out.len()
    ))
}

fn is_reg_hex(v: &str) -> bool {
    match v.strip_prefix("0x") {
        Some(h) if !h.is_empty() && h.len() <= 16 => {
            h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && (h == "0" || !h.starts_with('0'))
        }
        _ => false,
    }
}

/// Checks that a transcript is well-formed for its scenario: one line per observing
/// step in order, each in its op's format, then `end`.
pub fn check(scenario: &Scenario, t: &Transcript) -> Result<(), String> {
    let mut lines = t.lines.iter();
    for (i, step) in scenario.steps.iter().enumerate() {
        if !step.observes() {
            continue;
        }
        let line = lines
            .next()
            .ok_or_else(|| format!("no line for step {i}"))?;
        let mut parts = line.splitn(3, ' ');
        let (idx, op, val) = (parts.next(), parts.next(), parts.next());
        if idx != Some(i.to_string().as_str()) || op != Some(step.op()) {
            return Err(format!(
                "line `{line}` where step {i} ({}) was expected",
                step.op()
            ));
        }
        let val = val.unwrap_or("");
        let ok = match step {
            Step::MmioRead { .. } => is_reg_hex(val),
            Step::Poll { .. } => val == "ok" || val == "timeout",
            Step::Dump { len, .. } => {
                val.len() as u64 == 2 * len
                    && val
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            }
            _ => false,
        };
        if !ok {
            return Err(format!("malformed line `{line}`"));
        }
    }
    match (lines.next(), lines.next()) {
        (Some(e), None) if e == END => Ok(()),
        (Some(l), _) => Err(format!("unexpected line `{l}`")),
        (None, _) => Err("missing `end`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse_scenario;

    #[test]
    fn line_formats() {
        assert_eq!(
            mmio_read_line(3, 0x00d2_008c_222f_0606),
            "3 mmio_read 0xd2008c222f0606"
        );
        assert_eq!(mmio_read_line(0, 0), "0 mmio_read 0x0");
        assert_eq!(poll_line(9, true), "9 poll ok");
        assert_eq!(poll_line(10, false), "10 poll timeout");
        assert_eq!(dump_line(14, &[0x08, 0x09, 0x0a, 0xff]), "14 dump 08090aff");
    }

    #[test]
    fn extract_skips_noise_and_stops_at_end() {
        let serial =
            "SeaBIOS noise\r\n\nvtdc-begin\r\n0 mmio_read 0x10\r\n1 poll ok\r\nend\r\ntrailing\n";
        let t = extract(serial).unwrap();
        assert_eq!(t.lines, vec!["0 mmio_read 0x10", "1 poll ok", "end"]);
        assert_eq!(t.text(), "0 mmio_read 0x10\n1 poll ok\nend\n");
    }

    #[test]
    fn extract_errors() {
        assert!(extract("").unwrap_err().contains("printed nothing"));
        assert!(
            extract("vtdc-begin\n0 poll ok\n")
                .unwrap_err()
                .contains("without `end`")
        );
        let e = extract("\nerror: exception 14 err 0x2 rip 0x100123 cr2 0x0\n").unwrap_err();
        assert!(e.contains("exception 14"), "{e}");
        let e = extract("vtdc-begin\n0 poll ok\nerror: step 3: bad dma parameters\n").unwrap_err();
        assert!(e.contains("step 3"), "{e}");
    }

    #[test]
    fn check_against_scenario() {
        let s = parse_scenario(
            "c.json",
            r#"{"steps":[
                {"op":"mmio_write","off":"0x18","size":4,"value":0},
                {"op":"mmio_read","off":"0x0","size":4},
                {"op":"poll","off":"0x1c","size":4,"mask":1,"value":0},
                {"op":"dump","gpa":"0x1000000","len":2}]}"#,
        )
        .unwrap();
        let good = Transcript {
            lines: ["1 mmio_read 0x10", "2 poll ok", "3 dump 00ff", "end"]
                .map(String::from)
                .to_vec(),
        };
        assert_eq!(check(&s, &good), Ok(()));
        for bad in [
            vec!["1 mmio_read 0x010", "2 poll ok", "3 dump 00ff", "end"],
            vec!["1 mmio_read 0x10", "2 poll maybe", "3 dump 00ff", "end"],
            vec!["1 mmio_read 0x10", "2 poll ok", "3 dump 00f", "end"],
            vec!["1 mmio_read 0x10", "2 poll ok", "3 dump 00FF", "end"],
            vec!["0 mmio_read 0x10", "2 poll ok", "3 dump 00ff", "end"],
            vec!["1 mmio_read 0x10", "2 poll ok", "3 dump 00ff"],
            vec!["1 mmio_read 0x10", "2 poll ok", "3 dump 00ff", "end", "x"],
        ] {
            let t = Transcript {
                lines: bad.into_iter().map(String::from).collect(),
            };
            assert!(check(&s, &t).is_err(), "{:?}", t.lines);
        }
    }
}
