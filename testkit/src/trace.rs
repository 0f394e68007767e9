//! The real Linux 6.12 trace: every register write, invalidation descriptor and remapped
//! interrupt of a Linux guest driving QEMU 10.0.2's VT-d unit, as typed events.
//!
//! The trace (`testdata/traces/linux-6.12-sm-flts-strict.trace.xz` at the workspace root; its
//! README says how it was recorded and what it holds) is real-driver input: tests replay it
//! against the unit and the decoders instead of trusting hand-written expectations of what
//! Linux does. This module is its one loader, so the format (QEMU's `-trace 'vtd_*'` text
//! output, `name text...` per line) is parsed in one place.
//!
//! Every line becomes one [`Event`], including the ones no test interprets
//! ([`Event::Other`]): tests rely on QEMU's neighbouring lines (a descriptor's
//! `vtd_inv_desc_wait_sw` follows its `vtd_inv_desc`), so positions must match the file.
//! A missing trace is an error, never an empty trace: a test that passes without input would
//! hide that nothing was checked.

use std::io::BufReader;
use std::path::PathBuf;

/// The trace file shipped with the repository.
pub fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("testdata/traces/linux-6.12-sm-flts-strict.trace.xz")
}

/// One QEMU trace event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `vtd_reg_write addr A size S value V`: a guest register write.
    RegWrite {
        /// Offset from the unit's base.
        addr: u64,
        /// 4 or 8.
        size: u8,
        /// Value written.
        value: u64,
    },
    /// `vtd_reg_read addr A size S`: a guest register read (QEMU does not print the value).
    RegRead {
        /// Offset from the unit's base.
        addr: u64,
        /// 4 or 8.
        size: u8,
    },
    /// `vtd_inv_qi_head read head N`: QEMU is about to fetch the descriptor at slot N (or
    /// found the queue empty, when N equals the tail).
    QiHead {
        /// Slot index.
        head: u64,
    },
    /// `vtd_inv_desc invalidate desc type T high H low L`: a descriptor QEMU processed; the
    /// first 128 bits (QEMU checked that the rest of a 256-bit descriptor was zero).
    InvDesc {
        /// QEMU's type name (`iotlb`, `context-cache`, `iec`, `wait`, `p-iotlb`, ...).
        kind: String,
        /// Bits 63:0.
        low: u64,
        /// Bits 127:64.
        high: u64,
    },
    /// `vtd_inv_desc_wait_sw wait invalidate status write addr A data D`.
    WaitStatusWrite {
        /// Status address.
        addr: u64,
        /// Status data.
        data: u64,
    },
    /// `vtd_inv_desc_iec granularity G index I mask M`; G is the raw bit 4 (1 = index).
    IecInvalidation {
        /// Raw granularity bit.
        granularity: u64,
        /// Interrupt index.
        index: u64,
        /// Index mask.
        mask: u64,
    },
    /// `vtd_ir_remap_msi_req addr A data D`: an interrupt request to remap.
    RemapRequest {
        /// MSI address.
        addr: u64,
        /// MSI data.
        data: u32,
    },
    /// `vtd_ir_irte_get index I low L high H`: the IRTE QEMU read. QEMU prints the IRTE's
    /// qword 1 as "low" and qword 0 as "high"; the fields here are the qwords.
    IrteGet {
        /// Interrupt index.
        index: u64,
        /// IRTE bits 63:0 (printed as "high"; holds P, vector, destination).
        qword0: u64,
        /// IRTE bits 127:64 (printed as "low"; holds SID, SQ, SVT).
        qword1: u64,
    },
    /// `vtd_ir_remap_type T`: `IOAPIC` or `MSI`.
    RemapType {
        /// The requester type QEMU saw.
        kind: String,
    },
    /// `vtd_ir_remap index I trigger T vector V deliver D dest X mode M`: the decoded IRTE.
    Remap {
        /// Interrupt index.
        index: u64,
        /// Level-triggered.
        trigger: u64,
        /// Vector.
        vector: u64,
        /// Delivery mode.
        deliver: u64,
        /// Destination ID.
        dest: u64,
        /// Logical destination mode.
        mode: u64,
    },
    /// `vtd_ir_remap_msi (addr A, data D) -> (addr A2, data D2)`: the remapping result.
    RemapResult {
        /// Address before.
        in_addr: u64,
        /// Data before.
        in_data: u32,
        /// Address after.
        out_addr: u64,
        /// Data after.
        out_data: u32,
    },
    /// Any other event; only its name is kept.
    Other {
        /// The event name (e.g. `vtd_inv_desc_cc_global`).
        name: String,
    },
}

impl Event {
    /// QEMU's name of the event.
    pub fn name(&self) -> &str {
        match self {
            Self::RegWrite { .. } => "vtd_reg_write",
            Self::RegRead { .. } => "vtd_reg_read",
            Self::QiHead { .. } => "vtd_inv_qi_head",
            Self::InvDesc { .. } => "vtd_inv_desc",
            Self::WaitStatusWrite { .. } => "vtd_inv_desc_wait_sw",
            Self::IecInvalidation { .. } => "vtd_inv_desc_iec",
            Self::RemapRequest { .. } => "vtd_ir_remap_msi_req",
            Self::IrteGet { .. } => "vtd_ir_irte_get",
            Self::RemapType { .. } => "vtd_ir_remap_type",
            Self::Remap { .. } => "vtd_ir_remap",
            Self::RemapResult { .. } => "vtd_ir_remap_msi",
            Self::Other { name } => name,
        }
    }
}

/// Why the trace could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file is missing or unreadable.
    #[error("cannot open the Linux trace {path}: {source} (it ships in testdata/traces)")]
    Open {
        /// The path tried.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid xz.
    #[error("cannot decompress the Linux trace: {0}")]
    Decompress(String),
    /// The text is not UTF-8.
    #[error("the Linux trace is not UTF-8 text")]
    NotText,
    /// A known event lacks a field or has a malformed number.
    #[error("trace line {line}: {text:?}: {why}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// What is wrong.
        why: String,
    },
}

/// The loaded trace.
#[derive(Clone, Debug)]
pub struct Trace {
    /// One event per trace line, in file order (`events[i]` is line `i + 1`).
    pub events: Vec<Event>,
}

impl Trace {
    /// Loads the trace shipped with the repository.
    pub fn load() -> Result<Self, TraceError> {
        let path = path();
        let file = std::fs::File::open(&path).map_err(|source| TraceError::Open {
            path: path.clone(),
            source,
        })?;
        let mut raw = Vec::new();
        lzma_rs::xz_decompress(&mut BufReader::new(file), &mut raw)
            .map_err(|e| TraceError::Decompress(format!("{e:?}")))?;
        let text = String::from_utf8(raw).map_err(|_| TraceError::NotText)?;
        Self::parse(&text)
    }

    /// Parses trace text (one event per line).
    pub fn parse(text: &str) -> Result<Self, TraceError> {
        let events = text
            .lines()
            .enumerate()
            .map(|(i, line)| {
                parse_line(line).map_err(|why| TraceError::Malformed {
                    line: i + 1,
                    text: line.to_owned(),
                    why,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { events })
    }

    /// The event after index `i`, if any (QEMU prints details of an event on the next line).
    pub fn next(&self, i: usize) -> Option<&Event> {
        self.events.get(i + 1)
    }
}

/// A number as QEMU prints it: `0x`-prefixed hex, or decimal (indices, vectors), possibly
/// followed by `,` or `)`.
fn number(token: &str) -> Result<u64, String> {
    let token = token.trim_start_matches('(').trim_end_matches([',', ')']);
    match token.strip_prefix("0x") {
        Some(digits) => u64::from_str_radix(digits, 16),
        None => token.parse(),
    }
    .map_err(|e| format!("{token:?} is not a number: {e}"))
}

/// The number after the word `key`, searching from word `from`.
fn after(words: &[&str], from: usize, key: &str) -> Result<u64, String> {
    let at = words[from.min(words.len())..]
        .iter()
        .position(|w| *w == key)
        .ok_or_else(|| format!("no {key:?}"))?;
    let value = words
        .get(from + at + 1)
        .ok_or_else(|| format!("no value after {key:?}"))?;
    number(value)
}

fn narrow<T: TryFrom<u64>>(v: u64) -> Result<T, String> {
    T::try_from(v).map_err(|_| format!("{v:#x} out of range"))
}

fn parse_line(line: &str) -> Result<Event, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let name = words.first().copied().unwrap_or("");
    let get = |key| after(&words, 1, key);
    Ok(match name {
        "vtd_reg_write" => Event::RegWrite {
            addr: get("addr")?,
            size: narrow(get("size")?)?,
            value: get("value")?,
        },
        "vtd_reg_read" => Event::RegRead {
            addr: get("addr")?,
            size: narrow(get("size")?)?,
        },
        "vtd_inv_qi_head" => Event::QiHead { head: get("head")? },
        "vtd_inv_desc" => Event::InvDesc {
            kind: words
                .iter()
                .position(|w| *w == "type")
                .and_then(|i| words.get(i + 1))
                .ok_or("no type")?
                .to_string(),
            low: get("low")?,
            high: get("high")?,
        },
        "vtd_inv_desc_wait_sw" => Event::WaitStatusWrite {
            addr: get("addr")?,
            data: get("data")?,
        },
        "vtd_inv_desc_iec" => Event::IecInvalidation {
            granularity: get("granularity")?,
            index: get("index")?,
            mask: get("mask")?,
        },
        "vtd_ir_remap_msi_req" => Event::RemapRequest {
            addr: get("addr")?,
            data: narrow(get("data")?)?,
        },
        "vtd_ir_irte_get" => Event::IrteGet {
            index: get("index")?,
            qword0: get("high")?,
            qword1: get("low")?,
        },
        "vtd_ir_remap_type" => Event::RemapType {
            kind: words.get(1).ok_or("no type")?.to_string(),
        },
        "vtd_ir_remap" => Event::Remap {
            index: get("index")?,
            trigger: get("trigger")?,
            vector: get("vector")?,
            deliver: get("deliver")?,
            dest: get("dest")?,
            mode: get("mode")?,
        },
        "vtd_ir_remap_msi" => {
            // `(addr A, data D) -> (addr A2, data D2)`: the second pair starts after "->".
            let arrow = words.iter().position(|w| *w == "->").ok_or("no \"->\"")?;
            Event::RemapResult {
                in_addr: get("(addr").or_else(|_| get("addr"))?,
                in_data: narrow(get("data")?)?,
                out_addr: after(&words, arrow, "(addr")?,
                out_data: narrow(after(&words, arrow, "data")?)?,
            }
        }
        _ => Event::Other {
            name: name.to_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_to_typed_events() {
        let t = Trace::parse(
            "vtd_reg_write addr 0x88 size 0x4 value 0x0\n\
             vtd_inv_desc invalidate desc type iec high 0x0 low 0x4\n\
             vtd_ir_irte_get index 1 low 0x4ff00 high 0x300009\n\
             vtd_ir_remap index 1 trigger 0 vector 48 deliver 0 dest 0x0 mode 0\n\
             vtd_ir_remap_msi (addr 0xfee00000, data 0x0) -> (addr 0xfee01000, data 0x30)\n\
             vtd_inv_desc_cc_global context invalidate globally",
        )
        .unwrap();
        assert_eq!(
            t.events,
            [
                Event::RegWrite {
                    addr: 0x88,
                    size: 4,
                    value: 0
                },
                Event::InvDesc {
                    kind: "iec".into(),
                    low: 4,
                    high: 0
                },
                Event::IrteGet {
                    index: 1,
                    qword0: 0x300009,
                    qword1: 0x4ff00
                },
                Event::Remap {
                    index: 1,
                    trigger: 0,
                    vector: 48,
                    deliver: 0,
                    dest: 0,
                    mode: 0
                },
                Event::RemapResult {
                    in_addr: 0xfee0_0000,
                    in_data: 0,
                    out_addr: 0xfee0_1000,
                    out_data: 0x30
                },
                Event::Other {
                    name: "vtd_inv_desc_cc_global".into()
                },
            ]
        );
    }

    #[test]
    fn a_known_event_with_a_bad_field_is_an_error_with_its_line() {
        let e = Trace::parse("vtd_reg_read addr 0x8 size 0x8\nvtd_reg_write addr zz size 0x4")
            .unwrap_err();
        assert!(matches!(e, TraceError::Malformed { line: 2, .. }), "{e}");
    }
}
