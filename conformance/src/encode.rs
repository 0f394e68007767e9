//! The compact binary module the interpreter reads (kept in sync with `guest/interp.c`).
//!
//! Little endian. Header: u32 magic `VTDC` (0x43445456), u32 version (1), u32 step count,
//! u32 total length in bytes. Each step: u32 op code, u32 step index, then u64 fields:
//!
//! | code | op | fields |
//! |---|---|---|
//! | 1 | write64 | gpa, count, count x value |
//! | 2 | fill | gpa, len, byte |
//! | 3 | mmio_write | off, size, value |
//! | 4 | mmio_read | off, size, mask |
//! | 5 | poll | off, size, mask, value, max |
//! | 6 | dma | dir (0 to_device, 1 from_device), iova, len, dev_off |
//! | 7 | dump | gpa, len |

use crate::scenario::{DmaDir, Scenario, Step};

/// Module magic, "VTDC" read as a little-endian u32.
pub const MAGIC: u32 = 0x4344_5456;
/// Module format version.
pub const VERSION: u32 = 1;
/// The module must end below 16 MiB; multiboot loaders put it right after the
/// interpreter at 1 MiB, so keep it well under that.
pub const MAX_MODULE_BYTES: usize = 8 << 20;

fn op_code(step: &Step) -> u32 {
    match step {
        Step::Write64 { .. } => 1,
        Step::Fill { .. } => 2,
        Step::MmioWrite { .. } => 3,
        Step::MmioRead { .. } => 4,
        Step::Poll { .. } => 5,
        Step::Dma { .. } => 6,
        Step::Dump { .. } => 7,
    }
}

/// Encodes a validated scenario. Fails only when the module would be too large.
pub fn encode(scenario: &Scenario) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64 + 40 * scenario.steps.len());
    let count = u32::try_from(scenario.steps.len()).map_err(|_| "too many steps".to_string())?;
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // total length, patched below
    for (i, step) in scenario.steps.iter().enumerate() {
        out.extend_from_slice(&op_code(step).to_le_bytes());
        out.extend_from_slice(&(i as u32).to_le_bytes());
        let mut put = |v: u64| out.extend_from_slice(&v.to_le_bytes());
        match step {
            Step::Write64 { gpa, values } => {
                put(*gpa);
                put(values.len() as u64);
                values.iter().for_each(|v| put(*v));
            }
            Step::Fill { gpa, len, byte } => {
                put(*gpa);
                put(*len);
                put(u64::from(*byte));
            }
            Step::MmioWrite { off, size, value } => {
                put(*off);
                put(u64::from(*size));
                put(*value);
            }
            Step::MmioRead { off, size, mask } => {
                put(*off);
                put(u64::from(*size));
                put(*mask);
            }
            Step::Poll {
                off,
                size,
                mask,
                value,
                max,
            } => {
                put(*off);
                put(u64::from(*size));
                put(*mask);
                put(*value);
                put(*max);
            }
            Step::Dma {
                dir,
                iova,
                len,
                dev_off,
            } => {
                put(match dir {
                    DmaDir::ToDevice => 0,
                    DmaDir::FromDevice => 1,
                });
                put(*iova);
                put(*len);
                put(*dev_off);
            }
            Step::Dump { gpa, len } => {
                put(*gpa);
                put(*len);
            }
        }
    }
    if out.len() > MAX_MODULE_BYTES {
        return Err(format!(
            "encoded scenario is {} bytes, more than the {MAX_MODULE_BYTES} the interpreter accepts",
            out.len()
        ));
    }
    let total = out.len() as u32;
    out[12..16].copy_from_slice(&total.to_le_bytes());
    Ok(out)
}

/// Decodes a module back into steps (for tests and `vtd-conformance decode`).
pub fn decode(module: &[u8]) -> Result<Vec<Step>, String> {
    struct Rd<'a> {
        b: &'a [u8],
        at: usize,
    }
    impl Rd<'_> {
        fn u32(&mut self) -> Result<u32, String> {
            let s = self
                .b
                .get(self.at..self.at + 4)
                .ok_or_else(|| format!("truncated at byte {}", self.at))?;
            self.at += 4;
            Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        }
        fn u64(&mut self) -> Result<u64, String> {
            let lo = u64::from(self.u32()?);
            let hi = u64::from(self.u32()?);
            Ok(lo | hi << 32)
        }
    }
    let mut r = Rd { b: module, at: 0 };
    if r.u32()? != MAGIC || r.u32()? != VERSION {
        return Err("not a version-1 vtd-conformance module".into());
    }
    let n = r.u32()?;
    let total = r.u32()? as usize;
    if total != module.len() {
        return Err(format!(
            "header says {total} bytes, module has {}",
            module.len()
        ));
    }
    let mut steps = Vec::new();
    for want in 0..n {
        let op = r.u32()?;
        let idx = r.u32()?;
        if idx != want {
            return Err(format!("step {want} carries index {idx}"));
        }
        let size8 = |v: u64| u8::try_from(v).map_err(|_| format!("bad size {v}"));
        let step = match op {
            1 => {
                let gpa = r.u64()?;
                let count = r.u64()?;
                if count > (module.len() / 8) as u64 {
                    return Err("bad write64 count".into());
                }
                let values = (0..count).map(|_| r.u64()).collect::<Result<_, _>>()?;
                Step::Write64 { gpa, values }
            }
            2 => Step::Fill {
                gpa: r.u64()?,
                len: r.u64()?,
                byte: r.u64()? as u8,
            },
            3 => Step::MmioWrite {
                off: r.u64()?,
                size: size8(r.u64()?)?,
                value: r.u64()?,
            },
            4 => Step::MmioRead {
                off: r.u64()?,
                size: size8(r.u64()?)?,
                mask: r.u64()?,
            },
            5 => Step::Poll {
                off: r.u64()?,
                size: size8(r.u64()?)?,
                mask: r.u64()?,
                value: r.u64()?,
                max: r.u64()?,
            },
            6 => Step::Dma {
                dir: if r.u64()? == 0 {
                    DmaDir::ToDevice
                } else {
                    DmaDir::FromDevice
                },
                iova: r.u64()?,
                len: r.u64()?,
                dev_off: r.u64()?,
            },
            7 => Step::Dump {
                gpa: r.u64()?,
                len: r.u64()?,
            },
            other => return Err(format!("unknown op code {other}")),
        };
        steps.push(step);
    }
    if r.at != module.len() {
        return Err("trailing bytes".into());
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse_scenario;

    const EXAMPLE: &str = r#"{
      "name": "x", "iommu": "x-scalable-mode=on",
      "steps": [
        {"op":"write64","gpa":"0x1000000","values":["0x1001001","0x0"]},
        {"op":"fill","gpa":"0x1400000","len":64,"byte":"0xa5"},
        {"op":"mmio_write","off":"0x20","size":8,"value":"0x1000000"},
        {"op":"mmio_read","off":"0x1c","size":4},
        {"op":"poll","off":"0x1c","size":4,"mask":"0x80000000","value":"0x80000000","max":10},
        {"op":"dma","dir":"from_device","iova":"0x5100","len":8,"dev_off":16},
        {"op":"dump","gpa":"0x1400100","len":8}
      ]}"#;

    #[test]
    fn layout_is_stable() {
        let s = parse_scenario("x.json", EXAMPLE).unwrap();
        let m = encode(&s).unwrap();
        // header
        assert_eq!(&m[0..4], b"VTDC");
        assert_eq!(u32::from_le_bytes(m[4..8].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(
            u32::from_le_bytes(m[12..16].try_into().unwrap()) as usize,
            m.len()
        );
        // first step: write64, index 0, gpa, count 2, values
        assert_eq!(u32::from_le_bytes(m[16..20].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(m[20..24].try_into().unwrap()), 0);
        assert_eq!(
            u64::from_le_bytes(m[24..32].try_into().unwrap()),
            0x100_0000
        );
        assert_eq!(u64::from_le_bytes(m[32..40].try_into().unwrap()), 2);
        assert_eq!(
            u64::from_le_bytes(m[40..48].try_into().unwrap()),
            0x100_1001
        );
        // sizes: header 16, write64 8+16+16, fill 8+24, mmio_write 8+24, mmio_read 8+24,
        // poll 8+40, dma 8+32, dump 8+16
        assert_eq!(m.len(), 16 + 40 + 32 + 32 + 32 + 48 + 40 + 24);
    }

    #[test]
    fn round_trip() {
        let s = parse_scenario("x.json", EXAMPLE).unwrap();
        let m = encode(&s).unwrap();
        assert_eq!(decode(&m).unwrap(), s.steps);
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(decode(b"").is_err());
        assert!(decode(b"VTDC\x02\0\0\0\0\0\0\0\x10\0\0\0").is_err());
        let s = parse_scenario("x.json", EXAMPLE).unwrap();
        let mut m = encode(&s).unwrap();
        m.pop();
        assert!(decode(&m).is_err());
        let full = encode(&s).unwrap();
        for cut in 0..full.len() {
            assert!(decode(&full[..cut]).is_err());
        }
    }
}
