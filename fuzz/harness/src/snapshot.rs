//! Snapshot decode and restore (vtd-migrate), the bytes a migration stream hands a target VMM.
//!
//! Invariants: no panic and no allocation beyond the input's size on any bytes; a restore that
//! fails leaves the target unit exactly as it was (every register reads the same); a restore
//! that succeeds gives a unit whose own snapshot decodes, and a decoded snapshot re-encodes
//! to bytes that decode to the same snapshot.
//!
//! Input: one mode byte, then the snapshot. Bit 0 of the mode rewrites the header's payload
//! length and CRC-64 to fit the bytes that follow, so mutations of the payload are not all
//! stopped at the checksum; bits 2:1 pick the target unit's configuration.

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd_core::{RecordingSink, VtdConfig, VtdUnit};
use vtd_migrate::HEADER_SIZE;

/// The target configurations, chosen by bits 2:1 of the mode byte.
const CONFIGS: [&str; 4] = [
    "",
    "x-scalable-mode=on,x-flts=on",
    "x-scalable-mode=on,intremap=on,caching-mode=on",
    "x-scalable-mode=on,x-flts=on,device-iotlb=on,x-vtd-page-requests=on",
];

/// CRC-64/XZ over the header with its checksum field zero, then the payload (vtd-migrate's
/// format, written again here so the harness can repair what it mutated).
fn checksum(bytes: &[u8]) -> u64 {
    const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);
    let mut digest = CRC.digest();
    digest.update(&bytes[..24]);
    digest.update(&[0; 8]);
    digest.update(&bytes[HEADER_SIZE..]);
    digest.finalize()
}

/// Encodes a seed: `snapshot` restored into configuration `config` (0-3), header repaired.
pub fn encode(config: u8, snapshot: &[u8]) -> Vec<u8> {
    let mut v = vec![1 | (config & 3) << 1];
    v.extend_from_slice(snapshot);
    v
}

fn registers(unit: &VtdUnit<GuestMemoryMmap<()>>) -> Vec<u64> {
    (0..0x1000u64).step_by(4).map(|off| unit.read(off, 4)).collect()
}

/// The target.
pub fn run(data: &[u8]) {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let mut bytes = bytes.to_vec();
    if mode & 1 != 0 && bytes.len() >= HEADER_SIZE {
        let len = (bytes.len() - HEADER_SIZE) as u64;
        bytes[16..24].copy_from_slice(&len.to_le_bytes());
        let crc = checksum(&bytes);
        bytes[24..32].copy_from_slice(&crc.to_le_bytes());
    }
    let props = CONFIGS[usize::from(mode >> 1 & 3)];
    let Ok(cfg) = VtdConfig::from_qemu_props(props) else {
        panic!("harness configuration `{props}` is refused");
    };
    let mem: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("guest RAM");
    let unit = VtdUnit::new(cfg, mem, Arc::new(RecordingSink::default())).expect("unit");
    let before = registers(&unit);

    if let Ok(snapshot) = vtd_migrate::decode(&bytes) {
        let again = vtd_migrate::decode(&vtd_migrate::encode(&snapshot))
            .expect("a decoded snapshot re-encodes to a decodable one");
        assert_eq!(again, snapshot, "encode(decode(x)) decodes to the same snapshot");
    }
    match vtd_migrate::restore(&unit, &bytes) {
        Ok(_) => {
            let saved = vtd_migrate::save(&unit);
            vtd_migrate::decode(&saved).expect("a restored unit's own snapshot decodes");
        }
        Err(e) => assert_eq!(
            registers(&unit),
            before,
            "a refused restore ({e}) changed the target"
        ),
    }
}
