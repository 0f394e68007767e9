//! Integration tests of the ACPI DMAR builder and parser (`vtd_tables::dmar`).

use proptest::prelude::*;
use vtd_tables::dmar::*;

/// Byte sum of a table; zero for a correctly checksummed one.
fn byte_sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// Rewrites the header length (to `b.len()`) and the checksum of a hand-modified table.
fn fix_header(b: &mut [u8]) {
    let len = u32::try_from(b.len()).unwrap();
    b[4..8].copy_from_slice(&len.to_le_bytes());
    b[9] = 0;
    b[9] = byte_sum(b).wrapping_neg();
}

/// Recomputes only the checksum.
fn fix_checksum(b: &mut [u8]) {
    b[9] = 0;
    b[9] = byte_sum(b).wrapping_neg();
}

/// The 36-byte ACPI header `acpi_tables` writes: signature, length, revision 1, checksum, OEM
/// fields, creator "RVAT" revision [0, 0, 0, 1].
fn header(len: u32, checksum: u8, oem_id: &[u8; 6], table_id: &[u8; 8], oem_rev: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"DMAR");
    h.extend_from_slice(&len.to_le_bytes());
    h.push(1);
    h.push(checksum);
    h.extend_from_slice(oem_id);
    h.extend_from_slice(table_id);
    h.extend_from_slice(&oem_rev.to_le_bytes());
    h.extend_from_slice(b"RVAT");
    h.extend_from_slice(&[0, 0, 0, 1]);
    h
}

fn q35_oem(mut d: Dmar) -> Dmar {
    d.oem_id = *b"BOCHS ";
    d.oem_table_id = *b"BXPC    ";
    d.oem_revision = 1;
    d
}

/// QEMU q35 with `-device intel-iommu,intremap=on` as QEMU 2.7..6.0 built it
/// (`build_dmar_q35`): aw-bits 39, INTR_REMAP, one DRHD with INCLUDE_PCI_ALL at 0xfed90000
/// whose only scope is the IOAPIC (id 0) at bus 0xff, devfn 0. Bytes from byte 36 on are
/// identical to QEMU's; the header differs from QEMU's only in the creator ID/revision
/// ("RVAT" 00 00 00 01 from acpi_tables vs. QEMU's "BXPC" 01 00 00 00) and hence checksum.
#[test]
fn qemu_q35_single_unit_matches_hand_computed_bytes() {
    let dmar = q35_oem(Dmar::for_single_unit(0xfed9_0000, 39, true, false, Some(0)));
    let mut expected = header(72, 0xf7, b"BOCHS ", b"BXPC    ", 1);
    expected.extend_from_slice(&[
        // Host address width - 1 = 38, flags INTR_REMAP, 10 reserved bytes.
        0x26, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
        // DRHD: type 0, length 24, flags INCLUDE_PCI_ALL, size 0, segment 0,
        0x00, 0x00, 0x18, 0x00, 0x01, 0x00, 0x00, 0x00, //
        // register base 0xfed90000,
        0x00, 0x00, 0xd9, 0xfe, 0x00, 0x00, 0x00, 0x00, //
        // IOAPIC scope: type 3, length 8, reserved, id 0, bus 0xff, path (0, 0).
        0x03, 0x08, 0x00, 0x00, 0x00, 0xff, 0x00, 0x00,
    ]);
    let bytes = dmar.to_bytes();
    assert_eq!(bytes, expected);
    assert_eq!(byte_sum(&bytes), 0);
    assert_eq!(dmar.to_sdt().as_slice(), expected.as_slice());
    assert_eq!(Dmar::parse(&expected), Ok(dmar));
}

/// The shape of QEMU >= 6.1's q35 DMAR (`build_dmar_q35` walking the PCI buses): aw-bits 48,
/// INTR_REMAP, a DRHD without INCLUDE_PCI_ALL whose scopes are the IOAPIC followed by one
/// endpoint (type 1) or bridge (type 2) scope per device on bus 0, and, with
/// `device-iotlb=on`, an ATSR with ALL_PORTS on segment 0.
#[test]
fn qemu_q35_enumerated_scopes_match_hand_computed_bytes() {
    let scope = |kind, start_bus, dev, func| DeviceScope {
        kind,
        enumeration_id: 0,
        start_bus,
        path: vec![(dev, func)],
    };
    let dmar = q35_oem(Dmar {
        oem_id: [0; 6],
        oem_table_id: [0; 8],
        oem_revision: 0,
        host_address_width: 48,
        flags: DmarFlags::INTR_REMAP,
        structures: vec![
            RemappingStructure::Drhd(Drhd {
                include_pci_all: false,
                size: 0,
                segment: 0,
                register_base: 0xfed9_0000,
                scopes: vec![
                    scope(ScopeKind::IoApic, 0xff, 0, 0),
                    scope(ScopeKind::Endpoint, 0, 0, 0),
                    scope(ScopeKind::Endpoint, 0, 1, 0),
                    scope(ScopeKind::Bridge, 0, 2, 0),
                    scope(ScopeKind::Endpoint, 0, 0x1f, 0),
                    scope(ScopeKind::Endpoint, 0, 0x1f, 2),
                    scope(ScopeKind::Endpoint, 0, 0x1f, 3),
                ],
            }),
            RemappingStructure::Atsr(Atsr {
                all_ports: true,
                segment: 0,
                scopes: vec![],
            }),
        ],
    });
    let mut expected = header(128, 0xe0, b"BOCHS ", b"BXPC    ", 1);
    expected.extend_from_slice(&[
        0x2f, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
        // DRHD: type 0, length 16 + 7 * 8 = 72, flags 0, size 0, segment 0, base.
        0x00, 0x00, 0x48, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0xd9, 0xfe, 0x00, 0x00, 0x00, 0x00, //
        0x03, 0x08, 0x00, 0x00, 0x00, 0xff, 0x00, 0x00, // IOAPIC 0 at ff:00.0
        0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // endpoint 00:00.0
        0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, // endpoint 00:01.0
        0x02, 0x08, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, // bridge 00:02.0
        0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x1f, 0x00, // endpoint 00:1f.0
        0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x1f, 0x02, // endpoint 00:1f.2
        0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x1f, 0x03, // endpoint 00:1f.3
        // ATSR: type 2, length 8, flags ALL_PORTS, reserved, segment 0.
        0x02, 0x00, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00,
    ]);
    assert_eq!(dmar.to_bytes(), expected);
    assert_eq!(Dmar::parse(&expected), Ok(dmar));
}

/// One table with every structure type, checked against hand-laid-out bytes (Linux
/// `include/acpi/actbl1.h` layouts).
fn every_structure() -> (Dmar, Vec<u8>) {
    let dmar = Dmar {
        oem_id: *b"OEMID ",
        oem_table_id: *b"TABLEID ",
        oem_revision: 0x1234_5678,
        host_address_width: 48,
        flags: DmarFlags::INTR_REMAP | DmarFlags::DMA_CTRL_PLATFORM_OPT_IN,
        structures: vec![
            RemappingStructure::Rmrr(Rmrr {
                segment: 1,
                base: 0xe0000,
                limit: 0xfffff,
                scopes: vec![DeviceScope {
                    kind: ScopeKind::Endpoint,
                    enumeration_id: 0,
                    start_bus: 0,
                    path: vec![(0x1c, 0), (0, 0)],
                }],
            }),
            RemappingStructure::Atsr(Atsr {
                all_ports: false,
                segment: 1,
                scopes: vec![DeviceScope {
                    kind: ScopeKind::Bridge,
                    enumeration_id: 0,
                    start_bus: 0,
                    path: vec![(3, 0)],
                }],
            }),
            RemappingStructure::Rhsa(Rhsa {
                register_base: 0xfed9_1000,
                proximity_domain: 2,
            }),
            RemappingStructure::Andd(Andd {
                acpi_device_number: 7,
                object_name: "\\_SB.PCI0.I2C0".into(),
            }),
            RemappingStructure::Satc(Satc {
                atc_required: true,
                segment: 0,
                scopes: vec![DeviceScope {
                    kind: ScopeKind::AcpiNamespace,
                    enumeration_id: 7,
                    start_bus: 0,
                    path: vec![(0x15, 0)],
                }],
            }),
            RemappingStructure::Unknown {
                kind: 0x1234,
                bytes: vec![0xaa, 0xbb, 0xcc],
            },
        ],
    };
    let mut bytes = header(164, 0x03, b"OEMID ", b"TABLEID ", 0x1234_5678);
    bytes.extend_from_slice(&[
        0x2f, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
        // RMRR: type 1, length 34, reserved, segment 1, base, limit.
        0x01, 0x00, 0x22, 0x00, 0x00, 0x00, 0x01, 0x00, //
        0x00, 0x00, 0x0e, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0xff, 0xff, 0x0f, 0x00, 0x00, 0x00, 0x00, 0x00, //
        // endpoint scope, length 10, bus 0, path 1c.0 / 00.0
        0x01, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, //
        // ATSR: type 2, length 16, flags 0, reserved, segment 1, bridge scope 00:03.0.
        0x02, 0x00, 0x10, 0x00, 0x00, 0x00, 0x01, 0x00, //
        0x02, 0x08, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, //
        // RHSA: type 3, length 20, reserved u32, base, proximity 2.
        0x03, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x10, 0xd9, 0xfe, 0x00, 0x00, 0x00, 0x00, //
        0x02, 0x00, 0x00, 0x00, //
        // ANDD: type 4, length 23, 3 reserved, device number 7, "\_SB.PCI0.I2C0\0".
        0x04, 0x00, 0x17, 0x00, 0x00, 0x00, 0x00, 0x07, //
        b'\\', b'_', b'S', b'B', b'.', b'P', b'C', b'I', b'0', b'.', b'I', b'2', b'C', b'0',
        0, //
        // SATC: type 5, length 16, ATC_REQUIRED, reserved, segment 0, ACPI scope 7 at 00:15.0.
        0x05, 0x00, 0x10, 0x00, 0x01, 0x00, 0x00, 0x00, //
        0x05, 0x08, 0x00, 0x00, 0x07, 0x00, 0x15, 0x00, //
        // Unknown type 0x1234, length 7.
        0x34, 0x12, 0x07, 0x00, 0xaa, 0xbb, 0xcc,
    ]);
    (dmar, bytes)
}

#[test]
fn every_structure_type_matches_hand_computed_bytes() {
    let (dmar, bytes) = every_structure();
    assert_eq!(dmar.to_bytes(), bytes);
    assert_eq!(Dmar::parse(&bytes), Ok(dmar));
}

#[test]
fn single_unit_without_ioapic_or_intr_remap() {
    let d = Dmar::for_single_unit(0xfed9_0000, 48, false, true, None);
    assert_eq!(d.flags, DmarFlags::X2APIC_OPT_OUT);
    let b = d.to_bytes();
    assert_eq!(b.len(), 64);
    assert_eq!(&b[36..38], &[47, 0x02]);
    assert_eq!(&b[48..52], &[0, 0, 16, 0]);
    assert_eq!(b[52], 1); // INCLUDE_PCI_ALL
    assert_eq!(Dmar::parse(&b), Ok(d));
}

#[test]
fn bytes_past_the_declared_length_are_ignored() {
    let (dmar, mut bytes) = every_structure();
    bytes.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(Dmar::parse(&bytes), Ok(dmar));
}

#[test]
fn reserved_bits_are_ignored() {
    let (dmar, mut bytes) = every_structure();
    // DMAR reserved bytes, RMRR reserved u16, ATSR flags bit 1, RMRR scope reserved bytes.
    bytes[40] = 0x55;
    bytes[52] = 0xff;
    bytes[86] |= 0x02;
    bytes[72 + 2] = 0x77;
    bytes[72 + 3] = 0x88;
    fix_checksum(&mut bytes);
    assert_eq!(Dmar::parse(&bytes), Ok(dmar));
}

#[test]
fn every_truncation_is_reported() {
    let (_, bytes) = every_structure();
    for cut in 0..bytes.len() {
        let needed = if cut < 36 { 36 } else { bytes.len() };
        assert_eq!(
            Dmar::parse(&bytes[..cut]),
            Err(DmarError::Truncated {
                needed,
                available: cut
            }),
            "cut at {cut}"
        );
    }
}

#[test]
fn truncation_with_consistent_header_is_reported() {
    // Cut inside the RMRR's scope (table offset 48 + 24 + 6) and fix up the header: the
    // RMRR's own length now runs past the table.
    let (_, bytes) = every_structure();
    let mut b = bytes[..78].to_vec();
    fix_header(&mut b);
    assert_eq!(
        Dmar::parse(&b),
        Err(DmarError::StructureOverrun {
            offset: 48,
            length: 34,
            remaining: 30
        })
    );
    // Two stray bytes after the last structure.
    let mut b = bytes.clone();
    b.extend_from_slice(&[0, 0]);
    fix_header(&mut b);
    assert_eq!(
        Dmar::parse(&b),
        Err(DmarError::StructureHeaderTruncated {
            offset: 164,
            remaining: 2
        })
    );
}

#[test]
fn bad_signature() {
    let (_, mut b) = every_structure();
    b[0..4].copy_from_slice(b"APIC");
    fix_checksum(&mut b);
    assert_eq!(
        Dmar::parse(&b),
        Err(DmarError::BadSignature { found: *b"APIC" })
    );
}

#[test]
fn bad_checksum() {
    let (_, mut b) = every_structure();
    b[100] = b[100].wrapping_add(0x10);
    assert_eq!(Dmar::parse(&b), Err(DmarError::BadChecksum { sum: 0x10 }));
}

#[test]
fn length_below_fixed_part() {
    let (_, mut b) = every_structure();
    b[4..8].copy_from_slice(&40u32.to_le_bytes());
    fix_checksum(&mut b);
    assert_eq!(
        Dmar::parse(&b),
        Err(DmarError::LengthTooSmall { length: 40 })
    );
}

/// A table whose structures are `body` (after the 48-byte fixed part), with a valid header.
fn table_with(body: &[u8]) -> Vec<u8> {
    let mut d = Dmar::for_single_unit(0xfed9_0000, 48, true, false, None);
    d.structures.clear();
    let mut b = d.to_bytes();
    b.extend_from_slice(body);
    fix_header(&mut b);
    b
}

#[test]
fn structures_shorter_than_their_minimum() {
    for (kind, min) in [
        (0u16, 16usize),
        (1, 24),
        (2, 8),
        (3, 20),
        (4, 8),
        (5, 8),
        (6, 4),
    ] {
        let length = u16::try_from(min - 1).unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&kind.to_le_bytes());
        body.extend_from_slice(&length.to_le_bytes());
        body.resize(min + 8, 0);
        assert_eq!(
            Dmar::parse(&table_with(&body)),
            Err(DmarError::StructureTooShort {
                offset: 48,
                kind,
                length,
                min
            }),
            "type {kind}"
        );
    }
}

#[test]
fn zero_length_structure_is_an_error() {
    for kind in [0u16, 4, 0xffff] {
        let body = [kind.to_le_bytes(), [0, 0]].concat();
        assert!(matches!(
            Dmar::parse(&table_with(&body)),
            Err(DmarError::StructureTooShort { length: 0, .. })
        ));
    }
}

fn drhd_with_scopes(scopes: &[u8]) -> Vec<u8> {
    let len = u16::try_from(16 + scopes.len()).unwrap();
    let mut body = vec![0, 0];
    body.extend_from_slice(&len.to_le_bytes());
    body.extend_from_slice(&[1, 0, 0, 0]);
    body.extend_from_slice(&0xfed9_0000u64.to_le_bytes());
    body.extend_from_slice(scopes);
    table_with(&body)
}

#[test]
fn bad_device_scopes() {
    // Scope starts at table offset 48 + 16 = 64.
    let cases: &[(&[u8], DmarError)] = &[
        (
            &[3, 8, 0, 0, 0, 0xff],
            DmarError::ScopeOverrun {
                offset: 64,
                length: 8,
                remaining: 6,
            },
        ),
        (
            &[3, 8, 0],
            DmarError::ScopeTruncated {
                offset: 64,
                remaining: 3,
            },
        ),
        (
            &[3, 0, 0, 0, 0, 0xff, 0, 0],
            DmarError::ScopeBadLength {
                offset: 64,
                length: 0,
            },
        ),
        (
            &[3, 5, 0, 0, 0, 0xff, 0, 0],
            DmarError::ScopeBadLength {
                offset: 64,
                length: 5,
            },
        ),
        (
            &[3, 7, 0, 0, 0, 0xff, 0, 0],
            DmarError::ScopeBadLength {
                offset: 64,
                length: 7,
            },
        ),
        (
            &[0, 8, 0, 0, 0, 0xff, 0, 0],
            DmarError::UnknownScopeKind {
                offset: 64,
                kind: 0,
            },
        ),
        (
            &[3, 8, 0, 0, 0, 0xff, 0, 0, 6, 6, 0, 0, 0, 0],
            DmarError::UnknownScopeKind {
                offset: 72,
                kind: 6,
            },
        ),
    ];
    for (scopes, err) in cases {
        assert_eq!(
            Dmar::parse(&drhd_with_scopes(scopes)).as_ref(),
            Err(err),
            "{scopes:?}"
        );
    }
    // A path-less scope (length 6) is well-formed.
    let d = Dmar::parse(&drhd_with_scopes(&[4, 6, 0, 0, 2, 0])).unwrap();
    let RemappingStructure::Drhd(drhd) = &d.structures[0] else {
        panic!("not a DRHD: {d:?}")
    };
    assert_eq!(
        drhd.scopes,
        vec![DeviceScope {
            kind: ScopeKind::Hpet,
            enumeration_id: 2,
            start_bus: 0,
            path: vec![]
        }]
    );
}

#[test]
fn bad_andd_names() {
    let andd = |name: &[u8]| {
        let len = u16::try_from(8 + name.len()).unwrap();
        let mut body = vec![4, 0];
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(&[0, 0, 0, 1]);
        body.extend_from_slice(name);
        table_with(&body)
    };
    assert_eq!(
        Dmar::parse(&andd(b"")),
        Err(DmarError::AnddNameUnterminated { offset: 48 })
    );
    assert_eq!(
        Dmar::parse(&andd(b"\\_SB")),
        Err(DmarError::AnddNameUnterminated { offset: 48 })
    );
    assert_eq!(
        Dmar::parse(&andd(b"\\_SB\xff\0")),
        Err(DmarError::AnddNameInvalid { offset: 48 })
    );
    // Padding after the NUL is accepted and dropped.
    let d = Dmar::parse(&andd(b"\\_SB.DEV\0\0\0\0")).unwrap();
    assert_eq!(
        d.structures,
        vec![RemappingStructure::Andd(Andd {
            acpi_device_number: 1,
            object_name: "\\_SB.DEV".into()
        })]
    );
}

#[test]
fn errors_display() {
    let e = DmarError::BadChecksum { sum: 0x10 };
    assert_eq!(
        e.to_string(),
        "DMAR checksum mismatch: bytes sum to 0x10 instead of 0"
    );
    let e = DmarError::BadSignature { found: *b"APIC" };
    assert!(e.to_string().contains("DMAR"));
}

fn arb_scope() -> impl Strategy<Value = DeviceScope> {
    (
        prop_oneof![
            Just(ScopeKind::Endpoint),
            Just(ScopeKind::Bridge),
            Just(ScopeKind::IoApic),
            Just(ScopeKind::Hpet),
            Just(ScopeKind::AcpiNamespace),
        ],
        any::<u8>(),
        any::<u8>(),
        prop::collection::vec(any::<(u8, u8)>(), 0..5),
    )
        .prop_map(|(kind, enumeration_id, start_bus, path)| DeviceScope {
            kind,
            enumeration_id,
            start_bus,
            path,
        })
}

fn arb_scopes() -> impl Strategy<Value = Vec<DeviceScope>> {
    prop::collection::vec(arb_scope(), 0..4)
}

fn arb_structure() -> impl Strategy<Value = RemappingStructure> {
    prop_oneof![
        (
            any::<bool>(),
            any::<u8>(),
            any::<u16>(),
            any::<u64>(),
            arb_scopes()
        )
            .prop_map(|(include_pci_all, size, segment, register_base, scopes)| {
                RemappingStructure::Drhd(Drhd {
                    include_pci_all,
                    size,
                    segment,
                    register_base,
                    scopes,
                })
            }),
        (any::<u16>(), any::<u64>(), any::<u64>(), arb_scopes()).prop_map(
            |(segment, base, limit, scopes)| RemappingStructure::Rmrr(Rmrr {
                segment,
                base,
                limit,
                scopes
            })
        ),
        (any::<bool>(), any::<u16>(), arb_scopes()).prop_map(|(all_ports, segment, scopes)| {
            RemappingStructure::Atsr(Atsr {
                all_ports,
                segment,
                scopes,
            })
        }),
        (any::<u64>(), any::<u32>()).prop_map(|(register_base, proximity_domain)| {
            RemappingStructure::Rhsa(Rhsa {
                register_base,
                proximity_domain,
            })
        }),
        (any::<u8>(), "[^\\x00]{0,12}").prop_map(|(acpi_device_number, object_name)| {
            RemappingStructure::Andd(Andd {
                acpi_device_number,
                object_name,
            })
        }),
        (any::<bool>(), any::<u16>(), arb_scopes()).prop_map(|(atc_required, segment, scopes)| {
            RemappingStructure::Satc(Satc {
                atc_required,
                segment,
                scopes,
            })
        }),
        (6u16.., prop::collection::vec(any::<u8>(), 0..24))
            .prop_map(|(kind, bytes)| RemappingStructure::Unknown { kind, bytes }),
    ]
}

fn arb_dmar() -> impl Strategy<Value = Dmar> {
    arb_dmar_with(0..8)
}

fn arb_dmar_with(structures: core::ops::Range<usize>) -> impl Strategy<Value = Dmar> {
    (
        any::<[u8; 6]>(),
        any::<[u8; 8]>(),
        any::<u32>(),
        any::<u8>(),
        any::<u8>(),
        prop::collection::vec(arb_structure(), structures),
    )
        .prop_map(
            |(oem_id, oem_table_id, oem_revision, host_address_width, flags, structures)| Dmar {
                oem_id,
                oem_table_id,
                oem_revision,
                host_address_width,
                flags: DmarFlags(flags),
                structures,
            },
        )
}

proptest! {
    #[test]
    fn parse_inverts_to_bytes(dmar in arb_dmar()) {
        let bytes = dmar.to_bytes();
        prop_assert_eq!(byte_sum(&bytes), 0);
        prop_assert_eq!(
            u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize,
            bytes.len()
        );
        let sdt = dmar.to_sdt();
        prop_assert_eq!(sdt.as_slice(), bytes.as_slice());
        prop_assert_eq!(Dmar::parse(&bytes), Ok(dmar));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Dmar::parse(&bytes);
    }

    #[test]
    fn random_structures_with_valid_header_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..256)
    ) {
        let _ = Dmar::parse(&table_with(&body));
    }

    #[test]
    fn corrupted_tables_never_panic(
        dmar in arb_dmar(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        fix in any::<bool>(),
    ) {
        let mut bytes = dmar.to_bytes();
        for (i, x) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        if fix {
            fix_checksum(&mut bytes);
        }
        if let Ok(parsed) = Dmar::parse(&bytes) {
            // Whatever parses must serialise again (reserved bits aside, to a parseable table).
            if let Ok(again) = parsed.try_to_bytes() {
                prop_assert_eq!(Dmar::parse(&again), Ok(parsed));
            }
        }
    }

    #[test]
    fn truncated_structures_are_errors(
        dmar in arb_dmar_with(1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = dmar.to_bytes();
        // Drop at least one byte of the structures and make the header consistent again.
        let end = 48 + cut.index(bytes.len() - 48);
        let mut b = bytes[..end].to_vec();
        fix_header(&mut b);
        if let Ok(parsed) = Dmar::parse(&b) {
            // Only possible when the cut fell exactly between two structures.
            prop_assert!(parsed.structures.len() < dmar.structures.len());
            prop_assert_eq!(&parsed.structures[..], &dmar.structures[..parsed.structures.len()]);
        }
    }
}
