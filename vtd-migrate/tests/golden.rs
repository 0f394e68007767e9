//! Every format version stays readable: `tests/data/golden-v1.bin` and `golden-v2.bin` were
//! produced by this crate when it wrote those versions, and must keep decoding, restoring and
//! reading back the same registers (`golden-vN.reads`: the unit's non-zero MMIO reads after
//! restore, one `offset size value` line each, hex).
//!
//! Regenerate the newest version's file (only when deliberately starting a new golden file,
//! never to make a failing test pass): `VTD_BLESS=2 cargo test -p vtd-migrate --test golden`.
//! Version 1's file is frozen: this build cannot write it from a unit any more than the
//! version-1 encoder (`encode_as(.., 1)`) can, and the test checks that encoder gives back
//! its exact bytes.

mod common;

use std::path::PathBuf;

use common::*;
use vtd_core::{GuestRam, VtdUnit};
use vtd_regs::regs::{Fsts, Gsts, offset as reg};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn reads_text<M: GuestRam + Send + Sync>(unit: &VtdUnit<M>) -> String {
    mmio_reads(unit)
        .into_iter()
        .filter(|&(_, _, v)| v != 0)
        .map(|(off, size, v)| format!("{off:03x} {size} {v:016x}\n"))
        .collect()
}

fn bless(version: &str, s: &Scenario) {
    if std::env::var("VTD_BLESS").as_deref() == Ok(version) {
        let bytes = vtd_migrate::save(&s.g.unit);
        std::fs::write(data(&format!("golden-v{version}.bin")), bytes).unwrap();
        std::fs::write(
            data(&format!("golden-v{version}.reads")),
            reads_text(&s.g.unit),
        )
        .unwrap();
    }
}

/// Decodes and restores `golden-v{version}.bin` into a fresh unit over `scenario`'s memory;
/// checks the reads; returns the snapshot and the unit.
fn load(
    version: u32,
    scenario: &Scenario,
) -> (
    vtd_migrate::Snapshot,
    std::sync::Arc<vtd_testkit::driver::Unit>,
) {
    let bytes = std::fs::read(data(&format!("golden-v{version}.bin"))).expect("golden file");
    assert_eq!(&bytes[..8], b"VTDSNAP\0");
    assert_eq!(
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
        version
    );
    let snapshot = vtd_migrate::decode(&bytes).expect("golden decodes");
    // Encoding in the same version gives the same bytes: the format did not drift.
    assert_eq!(
        vtd_migrate::encode_as(&snapshot, version).unwrap(),
        bytes,
        "re-encoding changed the bytes"
    );
    // And the newest version carries it all.
    assert_eq!(
        vtd_migrate::decode(&vtd_migrate::encode(&snapshot)).unwrap(),
        snapshot
    );
    let (target, _) = fresh_unit(
        scenario.g.unit.config().clone(),
        copy_memory(&scenario.g.mem),
    );
    vtd_migrate::restore(&target, &bytes).expect("golden restores");
    let expected =
        std::fs::read_to_string(data(&format!("golden-v{version}.reads"))).expect("golden reads");
    assert_eq!(reads_text(&target), expected);
    (snapshot, target)
}

#[test]
fn golden_v1_loads_and_reads_back_the_same_registers() {
    let scenario = golden_scenario();
    let (snapshot, target) = load(1, &scenario);

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
    assert!(snapshot.unit.page_requests.outstanding.is_empty());
    assert_ne!(snapshot.unit.latched_root, Some(0x1f0_0000));
    // Translation runs on the latched root, not the rewritten register.
    let t = target
        .translate(&request(0x08, Some(5), 0, false))
        .expect("mapped page");
    assert_eq!(t.output, 0x80_0000 + 2 * 16 * 4096);
}

#[test]
fn golden_v2_loads_with_its_outstanding_page_groups() {
    let scenario = golden_v2_scenario();
    bless("2", &scenario);
    let (snapshot, target) = load(2, &scenario);
    let groups: Vec<_> = snapshot
        .unit
        .page_requests
        .outstanding
        .iter()
        .map(|g| (g.sid, g.pasid, g.prg_index))
        .collect();
    assert_eq!(
        groups,
        [(0x08, Some(1), 2), (0x10, None, 3), (0x08, Some(5), 4)]
    );
    assert_eq!(target.prq_state(), snapshot.unit.page_requests);
    assert_eq!(target.export_state(), snapshot.unit);
    // Version 1 cannot carry them: refused, not dropped.
    assert!(matches!(
        vtd_migrate::encode_as(&snapshot, 1),
        Err(vtd_migrate::SnapshotError::NotRepresentable { version: 1, .. })
    ));
}
