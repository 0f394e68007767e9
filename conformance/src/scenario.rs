//! Scenario files: JSON parsing and validation (the format is documented in the crate's
//! README.md, "Scenario format").
//!
//! Every problem is reported as a [`ScenarioError`] that names the file and, where it
//! applies, the step index and op; nothing in here panics on bad input.

use serde_json::{Map, Value};
use std::fmt;
use std::path::Path;

/// First guest-physical address that scenario data may use (16 MiB).
pub const SCENARIO_RAM_START: u64 = 0x100_0000;
/// Size of the VT-d unit's register window at 0xfed90000.
pub const UNIT_WINDOW: u64 = 0x1000;
/// Size of the edu device's DMA buffer (device address 0x40000).
pub const EDU_BUFFER: u64 = 4096;
/// Largest `dump` and `dma` length.
pub const MAX_XFER: u64 = 4096;
/// The top of RAM that QEMU's firmware keeps (multiboot mem_upper is 128 KiB short of
/// `memory_mb` on QEMU 10.0.2, and vtd-vmm matches it): scenario data must end below it, or
/// the interpreter refuses the step on both machines.
pub const FIRMWARE_RESERVED_TOP: u64 = 0x2_0000;
/// Default `memory_mb`.
pub const DEFAULT_MEMORY_MB: u64 = 256;
/// Smallest and largest `memory_mb` accepted: RAM must stay below the PCI hole on both machines.
pub const MEMORY_MB_RANGE: (u64, u64) = (32, 2048);
/// Default `max` of a `poll` step.
pub const DEFAULT_POLL_MAX: u64 = 100_000;
/// Largest number of values of one `write64` step.
pub const MAX_WRITE64_VALUES: usize = 65_536;

/// Direction of an edu DMA transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaDir {
    /// RAM at `iova` -> device buffer (edu reads through the IOMMU).
    ToDevice,
    /// Device buffer -> RAM at `iova` (edu writes through the IOMMU).
    FromDevice,
}

/// One scenario step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write consecutive u64 values to guest RAM.
    Write64 {
        /// Guest-physical address of the first value.
        gpa: u64,
        /// The values.
        values: Vec<u64>,
    },
    /// Fill guest RAM with one byte.
    Fill {
        /// Guest-physical address.
        gpa: u64,
        /// Number of bytes.
        len: u64,
        /// The byte.
        byte: u8,
    },
    /// Write a unit register.
    MmioWrite {
        /// Offset from 0xfed90000.
        off: u64,
        /// Access size, 4 or 8.
        size: u8,
        /// Value written.
        value: u64,
    },
    /// Read a unit register and print it ANDed with `mask`.
    MmioRead {
        /// Offset from 0xfed90000.
        off: u64,
        /// Access size, 4 or 8.
        size: u8,
        /// Mask applied before printing.
        mask: u64,
    },
    /// Read a register until `(reg & mask) == value` or `max` reads; prints `ok` or `timeout`.
    Poll {
        /// Offset from 0xfed90000.
        off: u64,
        /// Access size, 4 or 8.
        size: u8,
        /// Mask.
        mask: u64,
        /// Expected value under the mask.
        value: u64,
        /// Maximum number of reads.
        max: u64,
    },
    /// An edu DMA transfer through the IOMMU.
    Dma {
        /// Direction.
        dir: DmaDir,
        /// Device (I/O virtual) address of the RAM side.
        iova: u64,
        /// Length in bytes, 1..=4096.
        len: u64,
        /// Offset into the device buffer.
        dev_off: u64,
    },
    /// Print guest RAM bytes in hex.
    Dump {
        /// Guest-physical address.
        gpa: u64,
        /// Length in bytes, 1..=4096.
        len: u64,
    },
}

impl Step {
    /// The op name as written in scenario files and transcripts.
    pub fn op(&self) -> &'static str {
        match self {
            Step::Write64 { .. } => "write64",
            Step::Fill { .. } => "fill",
            Step::MmioWrite { .. } => "mmio_write",
            Step::MmioRead { .. } => "mmio_read",
            Step::Poll { .. } => "poll",
            Step::Dma { .. } => "dma",
            Step::Dump { .. } => "dump",
        }
    }

    /// Whether the step prints a transcript line.
    pub fn observes(&self) -> bool {
        matches!(
            self,
            Step::MmioRead { .. } | Step::Poll { .. } | Step::Dump { .. }
        )
    }
}

/// A parsed and validated scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Scenario name (the file stem when the file has none).
    pub name: String,
    /// Property string of QEMU's `-device intel-iommu,<props>` (may be empty).
    pub iommu: String,
    /// Guest RAM in MiB.
    pub memory_mb: u64,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// A problem with a scenario file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioError {
    /// The file (as given).
    pub file: String,
    /// Index of the offending step, if the problem is in a step.
    pub step: Option<usize>,
    /// Op of the offending step, when known.
    pub op: Option<String>,
    /// What is wrong.
    pub msg: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        match (&self.step, &self.op) {
            (Some(i), Some(op)) => write!(f, "step {i} ({op}): ")?,
            (Some(i), None) => write!(f, "step {i}: ")?,
            _ => {}
        }
        f.write_str(&self.msg)
    }
}

impl std::error::Error for ScenarioError {}

/// Keys a step may carry besides its fields (ignored).
const STEP_NOTE_KEYS: &[&str] = &["comment", "note", "description"];

/// Parses a number: a JSON unsigned integer or a string `"0x..."` (hex) or decimal digits.
pub fn parse_number(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{n} is not an unsigned 64-bit integer")),
        Value::String(s) => {
            let t = s.trim();
            let (digits, radix) = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                Some(h) => (h, 16),
                None => (t, 10),
            };
            let digits = digits.replace('_', "");
            if digits.is_empty() {
                return Err(format!("\"{s}\" is not a number"));
            }
            u64::from_str_radix(&digits, radix)
                .map_err(|_| format!("\"{s}\" is not a 64-bit number (hex needs 0x)"))
        }
        other => Err(format!(
            "expected a number (integer or \"0x...\" string), found {other}"
        )),
    }
}

struct StepCtx<'a> {
    obj: &'a Map<String, Value>,
}

impl StepCtx<'_> {
    fn num(&self, key: &str) -> Result<u64, String> {
        match self.obj.get(key) {
            Some(v) => parse_number(v).map_err(|e| format!("field `{key}`: {e}")),
            None => Err(format!("missing field `{key}`")),
        }
    }

    fn num_or(&self, key: &str, default: u64) -> Result<u64, String> {
        match self.obj.get(key) {
            Some(_) => self.num(key),
            None => Ok(default),
        }
    }

    fn check_keys(&self, allowed: &[&str]) -> Result<(), String> {
        for k in self.obj.keys() {
            if k == "op" || allowed.contains(&k.as_str()) || STEP_NOTE_KEYS.contains(&k.as_str()) {
                continue;
            }
            return Err(format!(
                "unknown field `{k}` (expected {})",
                allowed.join(", ")
            ));
        }
        Ok(())
    }
}

/// End (exclusive) of the RAM a scenario may touch: what the interpreter learns from
/// multiboot's mem_upper.
pub fn scenario_ram_end(memory_mb: u64) -> u64 {
    (memory_mb << 20) - FIRMWARE_RESERVED_TOP
}

fn ram_range(gpa: u64, len: u64, memory_mb: u64) -> Result<(), String> {
    let end = scenario_ram_end(memory_mb);
    if gpa < SCENARIO_RAM_START {
        return Err(format!(
            "gpa {gpa:#x} is below 16 MiB (0x1000000), which belongs to the interpreter"
        ));
    }
    if gpa.checked_add(len).is_none_or(|e| e > end) {
        return Err(format!(
            "range {gpa:#x}+{len:#x} goes past the end of RAM ({end:#x}: memory_mb {memory_mb} \
             less the 128 KiB the firmware keeps)"
        ));
    }
    Ok(())
}

fn reg_access(c: &StepCtx<'_>) -> Result<(u64, u8), String> {
    let off = c.num("off")?;
    let size = c.num("size")?;
    if size != 4 && size != 8 {
        return Err(format!("size must be 4 or 8, not {size}"));
    }
    if off % size != 0 {
        return Err(format!("off {off:#x} is not aligned to size {size}"));
    }
    if off.checked_add(size).is_none_or(|end| end > UNIT_WINDOW) {
        return Err(format!(
            "off {off:#x} is outside the unit's 4 KiB register window"
        ));
    }
    Ok((off, size as u8))
}

fn fits(value: u64, size: u8, what: &str) -> Result<(), String> {
    if size == 4 && value > u64::from(u32::MAX) {
        return Err(format!("{what} {value:#x} does not fit a 4-byte access"));
    }
    Ok(())
}

fn parse_step(v: &Value, memory_mb: u64) -> Result<Step, (Option<String>, String)> {
    let obj = v
        .as_object()
        .ok_or((None, "a step must be a JSON object".to_string()))?;
    let op = match obj.get("op") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err((None, "field `op` must be a string".into())),
        None => return Err((None, "missing field `op`".into())),
    };
    let c = StepCtx { obj };
    let r = (|| -> Result<Step, String> {
        match op.as_str() {
            "write64" => {
                c.check_keys(&["gpa", "values"])?;
                let gpa = c.num("gpa")?;
                let arr = match obj.get("values") {
                    Some(Value::Array(a)) => a,
                    Some(_) => return Err("field `values` must be an array".into()),
                    None => return Err("missing field `values`".into()),
                };
                if arr.is_empty() {
                    return Err("field `values` is empty".into());
                }
                if arr.len() > MAX_WRITE64_VALUES {
                    return Err(format!(
                        "at most {MAX_WRITE64_VALUES} values per step, found {}",
                        arr.len()
                    ));
                }
                let values = arr
                    .iter()
                    .enumerate()
                    .map(|(i, x)| parse_number(x).map_err(|e| format!("values[{i}]: {e}")))
                    .collect::<Result<Vec<_>, _>>()?;
                ram_range(gpa, 8 * values.len() as u64, memory_mb)?;
                Ok(Step::Write64 { gpa, values })
            }
            "fill" => {
                c.check_keys(&["gpa", "len", "byte"])?;
                let gpa = c.num("gpa")?;
                let len = c.num("len")?;
                let byte = c.num("byte")?;
                let byte =
                    u8::try_from(byte).map_err(|_| format!("byte {byte:#x} is not a byte"))?;
                ram_range(gpa, len, memory_mb)?;
                Ok(Step::Fill { gpa, len, byte })
            }
            "mmio_write" => {
                c.check_keys(&["off", "size", "value"])?;
                let (off, size) = reg_access(&c)?;
                let value = c.num("value")?;
                fits(value, size, "value")?;
                Ok(Step::MmioWrite { off, size, value })
            }
            "mmio_read" => {
                c.check_keys(&["off", "size", "mask"])?;
                let (off, size) = reg_access(&c)?;
                let all = if size == 4 {
                    u64::from(u32::MAX)
                } else {
                    u64::MAX
                };
                let mask = c.num_or("mask", all)?;
                fits(mask, size, "mask")?;
                Ok(Step::MmioRead { off, size, mask })
            }
            "poll" => {
                c.check_keys(&["off", "size", "mask", "value", "max"])?;
                let (off, size) = reg_access(&c)?;
                let mask = c.num("mask")?;
                let value = c.num("value")?;
                fits(mask, size, "mask")?;
                if value & !mask != 0 {
                    return Err(format!(
                        "value {value:#x} has bits outside mask {mask:#x}: the poll could never succeed"
                    ));
                }
                let max = c.num_or("max", DEFAULT_POLL_MAX)?;
                if max == 0 {
                    return Err("max must be at least 1".into());
                }
                Ok(Step::Poll {
                    off,
                    size,
                    mask,
                    value,
                    max,
                })
            }
            "dma" => {
                c.check_keys(&["dir", "iova", "len", "dev_off"])?;
                let dir = match obj.get("dir") {
                    Some(Value::String(s)) if s == "to_device" => DmaDir::ToDevice,
                    Some(Value::String(s)) if s == "from_device" => DmaDir::FromDevice,
                    Some(other) => {
                        return Err(format!(
                            "field `dir` must be \"to_device\" or \"from_device\", not {other}"
                        ));
                    }
                    None => return Err("missing field `dir`".into()),
                };
                let iova = c.num("iova")?;
                let len = c.num("len")?;
                let dev_off = c.num_or("dev_off", 0)?;
                if len == 0 || len > MAX_XFER {
                    return Err(format!("len must be 1..=4096, not {len}"));
                }
                if dev_off.checked_add(len).is_none_or(|e| e > EDU_BUFFER) {
                    return Err(format!(
                        "dev_off {dev_off:#x} + len {len:#x} overruns the 4 KiB device buffer"
                    ));
                }
                if iova.checked_add(len - 1).is_none() {
                    return Err(format!("iova {iova:#x} + len wraps around"));
                }
                Ok(Step::Dma {
                    dir,
                    iova,
                    len,
                    dev_off,
                })
            }
            "dump" => {
                c.check_keys(&["gpa", "len"])?;
                let gpa = c.num("gpa")?;
                let len = c.num("len")?;
                if len == 0 || len > MAX_XFER {
                    return Err(format!("len must be 1..=4096, not {len}"));
                }
                ram_range(gpa, len, memory_mb)?;
                Ok(Step::Dump { gpa, len })
            }
            other => Err(format!(
                "unknown op `{other}` (expected write64, fill, mmio_write, mmio_read, poll, dma or dump)"
            )),
        }
    })();
    r.map_err(|e| (Some(op.clone()), e))
}

/// Parses and validates scenario JSON. `file` names the source in errors; its stem is
/// the default name.
pub fn parse_scenario(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
    let err = |step: Option<usize>, op: Option<String>, msg: String| ScenarioError {
        file: file.to_string(),
        step,
        op,
        msg,
    };
    let root: Value =
        serde_json::from_str(text).map_err(|e| err(None, None, format!("invalid JSON: {e}")))?;
    let obj = root
        .as_object()
        .ok_or_else(|| err(None, None, "the scenario must be a JSON object".into()))?;
    let name = match obj.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(err(None, None, "`name` is empty".into())),
        Some(_) => return Err(err(None, None, "`name` must be a string".into())),
        None => Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.to_string()),
    };
    let iommu = match obj.get("iommu") {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(_) => return Err(err(None, None, "`iommu` must be a string".into())),
        None => String::new(),
    };
    if iommu.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(
            None,
            None,
            format!("`iommu` \"{iommu}\" must not contain whitespace"),
        ));
    }
    let memory_mb = match obj.get("memory_mb") {
        Some(v) => parse_number(v).map_err(|e| err(None, None, format!("`memory_mb`: {e}")))?,
        None => DEFAULT_MEMORY_MB,
    };
    if memory_mb < MEMORY_MB_RANGE.0 || memory_mb > MEMORY_MB_RANGE.1 {
        return Err(err(
            None,
            None,
            format!(
                "`memory_mb` must be {}..={}, not {memory_mb}",
                MEMORY_MB_RANGE.0, MEMORY_MB_RANGE.1
            ),
        ));
    }
    let steps_v = match obj.get("steps") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(err(None, None, "`steps` must be an array".into())),
        None => return Err(err(None, None, "missing `steps`".into())),
    };
    let mut steps = Vec::with_capacity(steps_v.len());
    for (i, s) in steps_v.iter().enumerate() {
        let st = parse_step(s, memory_mb).map_err(|(op, msg)| err(Some(i), op, msg))?;
        steps.push(st);
    }
    Ok(Scenario {
        name,
        iommu,
        memory_mb,
        steps,
    })
}

/// Reads and parses a scenario file.
pub fn load_scenario(path: &Path) -> Result<Scenario, ScenarioError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: file.clone(),
        step: None,
        op: None,
        msg: format!("cannot read: {e}"),
    })?;
    parse_scenario(&file, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(steps: &str) -> Result<Scenario, ScenarioError> {
        parse_scenario(
            "t.json",
            &format!(r#"{{"name":"t","iommu":"","steps":[{steps}]}}"#),
        )
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(&Value::from(17u64)), Ok(17));
        assert_eq!(parse_number(&Value::from("0x1f")), Ok(0x1f));
        assert_eq!(parse_number(&Value::from("0XFF")), Ok(0xff));
        assert_eq!(parse_number(&Value::from("42")), Ok(42));
        assert_eq!(
            parse_number(&Value::from("0xffffffffffffffff")),
            Ok(u64::MAX)
        );
        assert!(parse_number(&Value::from("0x1_0000_0000_0000_0000")).is_err());
        assert!(parse_number(&Value::from("1f")).is_err());
        assert!(parse_number(&Value::from(-1i64)).is_err());
        assert!(parse_number(&Value::from(1.5)).is_err());
        assert!(parse_number(&Value::Bool(true)).is_err());
        assert!(parse_number(&Value::from("0x")).is_err());
    }

    #[test]
    fn defaults() {
        let s = parse_scenario(
            "dir/some-file.json",
            r#"{"steps":[{"op":"mmio_read","off":"0x34","size":4},
                         {"op":"poll","off":"0x1c","size":4,"mask":"0x80000000","value":"0x80000000"},
                         {"op":"dma","dir":"to_device","iova":"0x5000","len":8}]}"#,
        )
        .unwrap();
        assert_eq!(s.name, "some-file");
        assert_eq!(s.iommu, "");
        assert_eq!(s.memory_mb, 256);
        assert_eq!(
            s.steps[0],
            Step::MmioRead {
                off: 0x34,
                size: 4,
                mask: 0xffff_ffff
            }
        );
        assert!(matches!(s.steps[1], Step::Poll { max: 100_000, .. }));
        assert!(matches!(s.steps[2], Step::Dma { dev_off: 0, .. }));
    }

    #[test]
    fn errors_name_file_and_step() {
        let e = parse(
            r#"{"op":"mmio_read","off":"0x34","size":4},{"op":"mmio_read","off":"0x35","size":4}"#,
        )
        .unwrap_err();
        assert_eq!(e.step, Some(1));
        let text = e.to_string();
        assert!(text.starts_with("t.json: step 1 (mmio_read): "), "{text}");
        assert!(text.contains("aligned"), "{text}");

        let e = parse(r#"{"op":"frobnicate"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown op `frobnicate`"));
        let e = parse(r#"{"off":1}"#).unwrap_err();
        assert!(e.to_string().contains("step 0: missing field `op`"));
        let e = parse(r#"{"op":"dump","gpa":"0x1000","len":8}"#).unwrap_err();
        assert!(e.to_string().contains("below 16 MiB"));
        let e = parse(r#"{"op":"dump","gpa":"0xfffff00","len":"0x200"}"#).unwrap_err();
        assert!(e.to_string().contains("past the end of RAM"));
        let e = parse(r#"{"op":"dma","dir":"up","iova":0,"len":8}"#).unwrap_err();
        assert!(e.to_string().contains("`dir`"));
        let e =
            parse(r#"{"op":"dma","dir":"to_device","iova":0,"len":8,"dev_off":4092}"#).unwrap_err();
        assert!(e.to_string().contains("overruns"));
        let e = parse(r#"{"op":"mmio_write","off":"0x18","size":4,"value":"0x100000000"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("does not fit"));
        let e = parse(r#"{"op":"poll","off":"0x1c","size":4,"mask":1,"value":2}"#).unwrap_err();
        assert!(e.to_string().contains("never succeed"));
        let e = parse(r#"{"op":"mmio_read","off":"0x34","size":4,"maks":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `maks`"));
        let e = parse(r#"{"op":"write64","gpa":"0x1000000","values":[1,"x"]}"#).unwrap_err();
        assert!(e.to_string().contains("values[1]"));
        let e = parse(r#"{"op":"mmio_read","off":"0xffc","size":8}"#).unwrap_err();
        assert!(e.to_string().contains("aligned"));
        let e = parse(r#"{"op":"mmio_read","off":"0x1000","size":4}"#).unwrap_err();
        assert!(e.to_string().contains("window"));
    }

    /// An offset near u64::MAX must not overflow `off + size` (a panic in debug builds, a
    /// wrapped sum that passed the window check in release builds).
    #[test]
    fn register_offsets_near_u64_max_are_refused() {
        for off in ["0xfffffffffffffff8", "0xfffffffffffffffc"] {
            for op in ["mmio_read", "mmio_write", "poll"] {
                let step = format!(r#"{{"op":"{op}","off":"{off}","size":4,"value":0,"mask":1}}"#);
                let step = if op == "mmio_read" {
                    format!(r#"{{"op":"{op}","off":"{off}","size":4}}"#)
                } else if op == "mmio_write" {
                    format!(r#"{{"op":"{op}","off":"{off}","size":4,"value":0}}"#)
                } else {
                    step
                };
                let e = parse(&step).unwrap_err();
                assert!(e.to_string().contains("window"), "{op} {off}: {e}");
            }
        }
        let e = parse(r#"{"op":"mmio_read","off":"0xfffffffffffffff8","size":8}"#).unwrap_err();
        assert!(e.to_string().contains("window"), "{e}");
    }

    /// QEMU's firmware keeps the top 128 KiB of RAM (mem_upper 0x3fb80 at 256 MiB): a range
    /// touching it is refused, the bytes just below are accepted.
    #[test]
    fn the_firmware_reserved_top_of_ram_is_refused() {
        assert_eq!(scenario_ram_end(256), 0x0ffe_0000);
        for (gpa, len) in [("0xffe0000", 16), ("0xfffff00", 16), ("0xffdfff8", 16)] {
            let e = parse(&format!(r#"{{"op":"dump","gpa":"{gpa}","len":{len}}}"#)).unwrap_err();
            assert!(
                e.to_string().contains("128 KiB the firmware keeps"),
                "{gpa}: {e}"
            );
            let e = parse(&format!(
                r#"{{"op":"fill","gpa":"{gpa}","len":{len},"byte":1}}"#
            ))
            .unwrap_err();
            assert!(e.to_string().contains("past the end of RAM"), "{gpa}: {e}");
        }
        parse(r#"{"op":"dump","gpa":"0xffdfff0","len":16}"#).expect("last usable 16 bytes");
        parse(r#"{"op":"write64","gpa":"0xffdfff8","values":[1]}"#).expect("last usable u64");
    }

    #[test]
    fn top_level_errors() {
        for (text, want) in [
            ("[]", "JSON object"),
            ("{", "invalid JSON"),
            (r#"{"steps":{}}"#, "`steps` must be an array"),
            (r#"{"name":1,"steps":[]}"#, "`name` must be a string"),
            (r#"{"memory_mb":8,"steps":[]}"#, "memory_mb"),
            (r#"{"iommu":"a b","steps":[]}"#, "whitespace"),
            (r#"{"name":"x"}"#, "missing `steps`"),
        ] {
            let e = parse_scenario("f.json", text).unwrap_err();
            assert!(e.to_string().contains(want), "{text}: {e}");
            assert!(e.to_string().starts_with("f.json: "));
        }
    }

    #[test]
    fn truncated_and_mangled_files_do_not_panic() {
        let good = r#"{"name":"t","iommu":"x-scalable-mode=on","memory_mb":"0x100","steps":[
            {"op":"write64","gpa":"0x1000000","values":["0x1",2]},
            {"op":"poll","off":"0x1c","size":4,"mask":"0x80000000","value":"0x80000000","max":5},
            {"op":"dma","dir":"from_device","iova":"0xffffffffffffe000","len":4096}]}"#;
        assert!(parse_scenario("g.json", good).is_ok());
        for cut in 0..good.len() {
            if good.is_char_boundary(cut) {
                let _ = parse_scenario("g.json", &good[..cut]);
            }
        }
        for (from, to) in [
            ("\"0x1\"", "null"),
            ("4096", "4097"),
            ("\"0x80000000\",\"max\"", "\"0x80000000\",\"max\":0,\"x\""),
            ("0xffffffffffffe000", "0xfffffffffffffff0"),
            ("\"size\":4", "\"size\":\"8\""),
            ("[", "{"),
        ] {
            let _ = parse_scenario("g.json", &good.replacen(from, to, 1));
        }
        let e = parse_scenario("g.json", &good.replace("4096", "4097")).unwrap_err();
        assert_eq!(e.step, Some(2));
        let e = parse_scenario(
            "g.json",
            &good.replace("0xffffffffffffe000", "0xfffffffffffffff0"),
        )
        .unwrap_err();
        assert!(e.msg.contains("wraps"), "{e}");
    }

    #[test]
    fn note_keys_are_ignored() {
        let s = parse(r#"{"op":"mmio_read","off":0,"size":4,"comment":"VER"}"#).unwrap();
        assert_eq!(s.steps.len(), 1);
    }
}
