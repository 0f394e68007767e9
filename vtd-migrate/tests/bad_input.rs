//! Every form of bad input is a clear error, never a panic, and a refused restore leaves the
//! target unit exactly as it was.

mod common;

use common::*;
use proptest::prelude::*;
use vtd_core::{StateError, UnitState};
use vtd_migrate::{FormatError, Snapshot, SnapshotError};
use vtd_regs::regs::offset as reg;

fn golden() -> Vec<u8> {
    let s = golden_scenario();
    vtd_migrate::save(&s.g.unit)
}

/// A target unit in some state of its own (not reset), and its observable state.
struct Target {
    s: Scenario,
    before: (UnitState, Vec<(u64, u8, u64)>),
}

impl Target {
    fn new() -> Self {
        let mut s = Scenario::new(true);
        s.apply(&Op::Dma {
            dev: 3,
            page: 7,
            write: false,
        });
        s.apply(&Op::MaskCompletionEvent(true));
        let before = (s.g.unit.export_state(), mmio_reads(&s.g.unit));
        Self { s, before }
    }

    /// Restores `bytes`, expects an error, checks the unit is unchanged.
    fn refuse(&self, bytes: &[u8]) -> SnapshotError {
        let err = vtd_migrate::restore(&self.s.g.unit, bytes).expect_err("must be refused");
        assert!(!err.to_string().is_empty());
        assert_eq!(
            self.s.g.unit.export_state(),
            self.before.0,
            "state changed by {err}"
        );
        assert_eq!(
            mmio_reads(&self.s.g.unit),
            self.before.1,
            "registers changed by {err}"
        );
        err
    }
}

/// The golden snapshot with its unit state changed by `f`, correctly sealed.
fn forged(f: impl FnOnce(&mut UnitState)) -> Vec<u8> {
    let mut snap = vtd_migrate::decode(&golden()).unwrap();
    f(&mut snap.unit);
    vtd_migrate::encode(&snap)
}

fn set(regs: &mut [u8], offset: u64, size: usize, value: u64) {
    regs[offset as usize..offset as usize + size].copy_from_slice(&value.to_le_bytes()[..size]);
}

fn get(regs: &[u8], offset: u64) -> u64 {
    u64::from_le_bytes(
        regs[offset as usize..offset as usize + 8]
            .try_into()
            .unwrap(),
    )
}

#[test]
fn truncation_at_every_length_is_refused() {
    let bytes = golden();
    let t = Target::new();
    for len in 0..bytes.len() {
        let err = t.refuse(&bytes[..len]);
        assert!(
            matches!(
                err,
                SnapshotError::Format(
                    FormatError::Truncated(_) | FormatError::PayloadLength { .. }
                )
            ),
            "{len}: {err}"
        );
    }
    // Trailing garbage is refused too.
    let mut long = bytes.clone();
    long.push(0);
    t.refuse(&long);
}

#[test]
fn every_single_bit_flip_is_refused() {
    let bytes = golden();
    for bit in 0..bytes.len() * 8 {
        let mut bad = bytes.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(
            vtd_migrate::decode(&bad).is_err(),
            "flip of bit {bit} accepted"
        );
    }
    // And through restore, for a sample (the unit-unchanged check is the expensive part).
    let t = Target::new();
    for bit in (0..bytes.len() * 8).step_by(997) {
        let mut bad = bytes.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        t.refuse(&bad);
    }
}

#[test]
fn header_errors_name_what_is_wrong() {
    let bytes = golden();
    let t = Target::new();
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert!(matches!(
        t.refuse(&magic),
        SnapshotError::Format(FormatError::Magic(_))
    ));

    let payload = &bytes[32..];
    match t.refuse(&seal(3, 0, payload)) {
        SnapshotError::Format(FormatError::UnsupportedVersion {
            found: 3,
            oldest: 1,
            newest: 2,
        }) => {}
        e => panic!("{e}"),
    }
    assert!(matches!(
        t.refuse(&seal(0, 0, payload)),
        SnapshotError::Format(FormatError::UnsupportedVersion { found: 0, .. })
    ));
    assert!(matches!(
        t.refuse(&seal(2, 4, payload)),
        SnapshotError::Format(FormatError::Flags(4))
    ));
    // The genuine payload behind a valid hand-made header is accepted (the helper is right).
    assert_eq!(seal(2, 0, payload), bytes);
    // A version 2 payload is not a version 1 one (trailing page groups count).
    assert!(matches!(
        t.refuse(&seal(1, 0, payload)),
        SnapshotError::Format(FormatError::Payload(_))
    ));

    for announced in [u64::MAX, (16 << 20) + 1, 1 << 40] {
        let mut big = bytes.clone();
        big[16..24].copy_from_slice(&announced.to_le_bytes());
        assert!(matches!(
            t.refuse(&big),
            SnapshotError::Format(FormatError::Oversized(_))
        ));
    }
    let mut short = bytes.clone();
    short[16..24].copy_from_slice(&(payload.len() as u64 - 1).to_le_bytes());
    assert!(matches!(
        t.refuse(&short),
        SnapshotError::Format(FormatError::PayloadLength { .. })
    ));
}

#[test]
fn forged_payload_lengths_and_malformed_payloads_are_refused() {
    let bytes = golden();
    let t = Target::new();
    let payload = bytes[32..].to_vec();
    // The register image's length field (first 8 payload bytes), forged.
    for len in [0u64, 4095, 4097, 1 << 20, u64::MAX] {
        let mut p = payload.clone();
        p[..8].copy_from_slice(&len.to_le_bytes());
        let err = t.refuse(&seal(2, 0, &p));
        assert!(
            matches!(
                err,
                SnapshotError::Format(FormatError::Payload(_))
                    | SnapshotError::State(StateError::RegisterImageSize(_))
            ),
            "{len}: {err}"
        );
    }
    // An Option tag that is neither 0 nor 1 (latched_root follows registers and the u16).
    let mut p = payload.clone();
    p[8 + 4096 + 2] = 7;
    assert!(matches!(
        t.refuse(&seal(2, 0, &p)),
        SnapshotError::Format(FormatError::Payload(_))
    ));
    // A bool that is 2 (queue.wide). Layout (crate docs): register length and image, next
    // fault record, latched root and IRTA (both Some: tag and value), queue base and count.
    let wide_at = 8 + 4096 + 2 + 9 + 9 + 8 + 4;
    assert_eq!(
        payload[wide_at], 1,
        "the golden scenario's queue is 256-bit"
    );
    let mut p2 = payload.clone();
    p2[wide_at] = 2;
    assert!(matches!(
        t.refuse(&seal(2, 0, &p2)),
        SnapshotError::Format(FormatError::Payload(_))
    ));
    // Payload cut short or extended behind a valid header.
    t.refuse(&seal(2, 0, &payload[..payload.len() - 1]));
    let mut longer = payload.clone();
    longer.push(0);
    t.refuse(&seal(2, 0, &longer));
}

#[test]
fn a_different_unit_configuration_is_refused() {
    let bytes = golden();
    let (legacy, _) = fresh_unit(config(false), copy_memory(&golden_scenario().g.mem));
    let before = mmio_reads(&legacy);
    match vtd_migrate::restore(&legacy, &bytes) {
        Err(SnapshotError::State(StateError::ConfigMismatch { .. })) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(mmio_reads(&legacy), before);
}

#[test]
fn valid_headers_over_invalid_register_values_are_refused() {
    let t = Target::new();
    let fro = t.s.g.unit.config().cap().fault_recording_offset();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("CAP", forged(|u| set(&mut u.registers, reg::CAP, 8, 0))),
        ("VER", forged(|u| set(&mut u.registers, reg::VER, 4, 0x20))),
        ("reserved offset", forged(|u| u.registers[0x300] = 1)),
        (
            "GSTS reserved bit",
            forged(|u| set(&mut u.registers, reg::GSTS, 4, 0xc700_0001)),
        ),
        (
            "PMEN",
            forged(|u| set(&mut u.registers, reg::PMEN, 4, 1 << 31)),
        ),
        (
            "IQT bits 3:0",
            forged(|u| set(&mut u.registers, reg::IQT, 8, 0x81)),
        ),
        (
            "RTPS without latched root",
            forged(|u| u.latched_root = None),
        ),
        (
            "IRTPS without latched table",
            forged(|u| u.latched_irta = None),
        ),
        (
            "latched root reserved bits",
            forged(|u| u.latched_root = Some(0x1000 | 0x3)),
        ),
        ("next fault record", forged(|u| u.next_fault_record = 4)),
        (
            "FRI out of range",
            forged(|u| {
                let fsts = get(&u.registers, reg::FSTS) as u32;
                set(&mut u.registers, reg::FSTS, 4, (fsts | 9 << 8) as u64);
                u.pending.fault_status = fsts | 9 << 8;
            }),
        ),
        (
            "PPF without a pending record",
            forged(|u| {
                for i in 0..4 {
                    set(&mut u.registers, fro + 16 * i + 8, 8, 0);
                }
            }),
        ),
        (
            "IQH outside the queue",
            forged(|u| set(&mut u.registers, reg::IQH, 8, 0x10)),
        ),
        (
            "summary disagrees",
            forged(|u| u.queue.tail = u.queue.tail.wrapping_add(1)),
        ),
        (
            "pending summary disagrees",
            forged(|u| u.pending.completion_event = !u.pending.completion_event),
        ),
        (
            "last descriptor type",
            forged(|u| u.queue.last_descriptor_type = Some(0x0f)),
        ),
        (
            "page groups on a unit without page requests",
            forged(|u| {
                u.page_requests
                    .outstanding
                    .push(vtd_core::OutstandingGroup {
                        sid: 8,
                        pasid: None,
                        prg_index: 1,
                    })
            }),
        ),
    ];
    for (what, bytes) in cases {
        let err = t.refuse(&bytes);
        assert!(matches!(err, SnapshotError::State(_)), "{what}: {err}");
        eprintln!("{what}: {err}");
    }
    // The untouched golden restores (the cases above fail for their change alone).
    let (fresh, _) = fresh_unit(config(true), copy_memory(&golden_scenario().g.mem));
    vtd_migrate::restore(&fresh, &forged(|_| {})).unwrap();
}

#[test]
fn passthrough_devices_are_not_silently_dropped() {
    let t = Target::new();
    let mut snap: Snapshot = vtd_migrate::decode(&golden()).unwrap();
    snap.devices.push(vtd_migrate::PassthroughDevice {
        bdf: vtd_regs::Bdf::new(1, 0, 0),
        name: "0000:01:00.0".into(),
        pasids: vec![0, 3],
        host: Default::default(),
    });
    let err = t.refuse(&vtd_migrate::encode(&snap));
    assert!(err.to_string().contains("01:00.0"), "{err}");
    // Malformed device lists.
    let mut dup = snap.clone();
    dup.devices.push(dup.devices[0].clone());
    assert!(matches!(
        t.refuse(&vtd_migrate::encode(&dup)),
        SnapshotError::Device { .. }
    ));
    let mut wide = snap.clone();
    wide.devices[0].pasids = vec![1 << 20];
    assert!(matches!(
        t.refuse(&vtd_migrate::encode(&wide)),
        SnapshotError::Device { .. }
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..6000)) {
        prop_assert!(vtd_migrate::decode(&bytes).is_err());
    }

    #[test]
    fn random_payloads_behind_a_valid_header_never_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..6000),
    ) {
        let _ = vtd_migrate::decode(&seal(1, 0, &payload));
        let _ = vtd_migrate::decode(&seal(2, 0, &payload));
    }

    #[test]
    fn random_edits_of_a_valid_payload_never_panic(
        edits in proptest::collection::vec((0usize..4300, any::<u8>()), 1..8),
    ) {
        let bytes = golden();
        let mut payload = bytes[32..].to_vec();
        for (at, v) in edits {
            let at = at % payload.len();
            payload[at] = v;
        }
        if let Ok(snap) = vtd_migrate::decode(&seal(2, 0, &payload)) {
            let (unit, _) = fresh_unit(config(true), copy_memory(&golden_scenario().g.mem));
            let before = mmio_reads(&unit);
            if unit.import_state(&snap.unit).is_err() {
                prop_assert_eq!(mmio_reads(&unit), before);
            }
        }
    }
}

#[test]
fn forged_page_groups_are_refused() {
    let s = golden_v2_scenario();
    let bytes = vtd_migrate::save(&s.g.unit);
    let (target, _) = fresh_unit(config_with_page_requests(), copy_memory(&s.g.mem));
    let before = target.export_state();
    for group in [
        vtd_core::OutstandingGroup {
            sid: 8,
            pasid: None,
            prg_index: 0x200,
        },
        vtd_core::OutstandingGroup {
            sid: 8,
            pasid: Some(1 << 20),
            prg_index: 1,
        },
    ] {
        let mut snap = vtd_migrate::decode(&bytes).unwrap();
        snap.unit.page_requests.outstanding.push(group);
        match vtd_migrate::restore(&target, &vtd_migrate::encode(&snap)) {
            Err(SnapshotError::State(StateError::PageRequests(_))) => {}
            other => panic!("{group:?}: {other:?}"),
        }
        assert_eq!(target.export_state(), before);
    }
    vtd_migrate::restore(&target, &bytes).unwrap();
}
