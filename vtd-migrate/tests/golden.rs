//! Format version 1 stays readable: `tests/data/golden-v1.bin` was produced by this crate's
//! first format version and must keep loading, restoring and reading back the same registers.
//!
//! Regenerate (only when deliberately starting a new golden file, never to make a failing test
//! pass): `VTD_BLESS=1 cargo test -p vtd-migrate --test golden`. It writes the snapshot of
//! [`common::golden_scenario`] and the unit's non-zero MMIO reads after restore
//! (`golden-v1.reads`, one `offset size value` line each, hex).

mod common;

use std::path::PathBuf;

use common::*;
use vtd_regs::regs::{Fsts, Gsts, offset as reg};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn reads_text<M: vtd_core::GuestRam + Send + Sync>(unit: &vtd_core::VtdUnit<M>) -> String {
    mmio_reads(unit)
        .into_iter()
        .filter(|&(_, _, v)| v != 0)
        .map(|(off, size, v)| format!("{off:03x} {size} {v:016x}\n"))
        .collect()
}

#[test]
fn golden_v1_loads_and_reads_back_the_same_registers() {
    if std::env::var_os("VTD_BLESS").is_some() {
        let s = golden_scenario();
        std::fs::write(data("golden-v1.bin"), vtd_migrate::save(&s.g.unit)).unwrap();
        std::fs::write(data("golden-v1.reads"), reads_text(&s.g.unit)).unwrap();
    }
    let bytes = std::fs::read(data("golden-v1.bin")).expect("golden-v1.bin");
    assert_eq!(&bytes[..8], b"VTDSNAP\0");
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);

    // Decoding and encoding again gives the same bytes: the format did not drift.
    let snapshot = vtd_migrate::decode(&bytes).expect("golden decodes");
    assert_eq!(
        vtd_migrate::encode(&snapshot),
        bytes,
        "re-encoding changed the bytes"
    );

    let (target, _) = fresh_unit(config(true), copy_memory(&golden_scenario().g.mem));
    vtd_migrate::restore(&target, &bytes).expect("golden restores");
    let expected = std::fs::read_to_string(data("golden-v1.reads")).expect("golden-v1.reads");
    assert_eq!(reads_text(&target), expected);

    // What the golden state is, independently of the recorded reads.
    let gsts = Gsts::from_bits(target.read(reg::GSTS, 4) as u32);
    assert!(gsts.tes() && gsts.rtps() && gsts.qies() && gsts.ires() && gsts.irtps());
    let fsts = Fsts::from_bits(target.read(reg::FSTS, 4) as u32);
    assert!(
        fsts.ppf() && fsts.iqe(),
        "pending fault and queue error: {fsts:?}"
    );
    assert_eq!(
        target.read(reg::FECTL, 4),
        0xc000_0000,
        "fault event masked and pending"
    );
    assert_eq!(
        target.read(reg::IECTL, 4),
        0xc000_0000,
        "completion masked and pending"
    );
    assert_eq!(target.read(reg::ICS, 4), 1);
    assert_eq!(
        target.read(reg::RTADDR, 8),
        0x1f0_0000,
        "rewritten without SRTP"
    );
    assert_eq!(snapshot.unit.queue.last_descriptor_type, Some(5));
    assert_ne!(snapshot.unit.latched_root, Some(0x1f0_0000));
    // Translation runs on the latched root, not the rewritten register.
    let t = target
        .translate(&request(0x08, Some(5), 0, false))
        .expect("mapped page");
    assert_eq!(t.output, 0x80_0000 + 2 * 16 * 4096);
}
