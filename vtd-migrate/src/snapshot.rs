//! The decoded snapshot, its encoding, and save/restore of a unit.
//!
//! [`Snapshot`] is what a snapshot says, independent of the format version that carried it:
//! decoding any supported version yields it, and encoding always writes the newest version.
//! Structural checks that need no unit (sizes, device list shape) happen at decode time; the
//! checks against a unit's configuration happen at restore, before the unit is touched.

use vtd_core::{StateError, UnitState, VtdUnit};
use vtd_regs::Bdf;
use vtd_tables::GuestRam;

use crate::codec::{self, FormatError};
use crate::{v1, v2};

/// Format version [`encode`] writes.
pub const FORMAT_VERSION: u32 = v2::VERSION;
/// Oldest format version [`decode`] reads.
pub const OLDEST_FORMAT_VERSION: u32 = v1::VERSION;

/// PASIDs are 20 bits wide (spec 3.4.3).
const PASID_LIMIT: u32 = 1 << 20;
/// Longest device name kept (a sysfs path or cdev name is far shorter).
const NAME_LIMIT: usize = 256;

/// A unit's saved state plus the passthrough devices bound through it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The unit's guest-observable state.
    pub unit: UnitState,
    /// Passthrough devices registered for nested binding on the source, sorted by BDF.
    pub devices: Vec<PassthroughDevice>,
}

/// A passthrough device as the source saw it: the target must have it registered, on a host
/// that can run the guest's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassthroughDevice {
    /// Guest requester ID.
    pub bdf: Bdf,
    /// Host device name (for messages).
    pub name: String,
    /// PASIDs bound on the source (for a device without PASID use, `[0]` when bound through
    /// RID_PASID), sorted, unique.
    pub pasids: Vec<u32>,
    /// What the source host's IOMMU reported (`IOMMU_GET_HW_INFO`).
    pub host: HostCapabilities,
}

/// Host IOMMU capabilities saved with a device (the fields of vtd-accel's `HostHwInfo`, as
/// plain numbers so that this format does not follow that type's changes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCapabilities {
    /// `iommu_hw_info.out_data_type`.
    pub iommu_type: u32,
    /// Host CAP_REG.
    pub cap: u64,
    /// Host ECAP_REG.
    pub ecap: u64,
    /// `iommu_hw_info_vtd.flags`.
    pub vtd_flags: u32,
    /// `out_max_pasid_log2`.
    pub max_pasid_log2: u8,
    /// `out_capabilities`.
    pub capabilities: u64,
}

/// Why a snapshot could not be read or restored. Restoring leaves the target unchanged on
/// every one of these.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not a readable snapshot: header, checksum, version or payload.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The device list is malformed.
    #[error("passthrough device {bdf} in the snapshot: {reason}")]
    Device {
        /// The device.
        bdf: Bdf,
        /// What is wrong.
        reason: String,
    },
    /// The unit state does not fit the target unit (configuration) or is not a state a unit
    /// can be in.
    #[error("unit state refused: {0}")]
    State(#[from] StateError),
    /// The snapshot cannot be written in the format version asked for.
    #[error("format version {version} cannot carry this snapshot: {reason}")]
    NotRepresentable {
        /// The version asked for.
        version: u32,
        /// What it cannot carry.
        reason: &'static str,
    },
    /// A passthrough device of the snapshot is not registered on the target.
    #[error(
        "passthrough device {bdf} ({name} on the source) is not registered on the target: \
         assign it to the target VM before restoring"
    )]
    MissingDevice {
        /// The device.
        bdf: Bdf,
        /// Its host name on the source.
        name: String,
    },
    /// A device is registered on the target but was not on the source.
    #[error(
        "passthrough device {bdf} ({name}) is registered on the target but the snapshot has \
         no such device"
    )]
    UnexpectedDevice {
        /// The device.
        bdf: Bdf,
        /// Its host name on the target.
        name: String,
    },
    /// The target host IOMMU cannot run what the guest set up for the device.
    #[error("passthrough device {bdf} ({name} on the target): {reason}")]
    IncompatibleDevice {
        /// The device.
        bdf: Bdf,
        /// Its host name on the target.
        name: String,
        /// Why.
        reason: String,
    },
    /// After the import, a binding the source had nested was not nested again (a host call
    /// failed; the binder retries it).
    #[error(
        "passthrough device {bdf} PASID {pasid} is not bound again on the target after \
         restore (the unit state is restored; see the binder's host errors)"
    )]
    ReplayIncomplete {
        /// The device.
        bdf: Bdf,
        /// The PASID-table index (0: requests without PASID).
        pasid: u32,
    },
    /// The snapshot has passthrough devices, which this restore path cannot bind again.
    #[error(
        "snapshot has {count} passthrough device(s) (first: {first} {name}): restore through \
         the nested binder so they are bound again"
    )]
    PassthroughNotRestored {
        /// Number of devices.
        count: usize,
        /// The first one.
        first: Bdf,
        /// Its host name.
        name: String,
    },
}

impl Snapshot {
    /// The unit's state with no passthrough device.
    pub fn of_unit<M: GuestRam + Send + Sync>(unit: &VtdUnit<M>) -> Self {
        Self {
            unit: unit.export_state(),
            devices: Vec::new(),
        }
    }

    fn check_devices(&self) -> Result<(), SnapshotError> {
        let bad = |bdf, reason: &str| {
            Err(SnapshotError::Device {
                bdf,
                reason: reason.into(),
            })
        };
        for (i, d) in self.devices.iter().enumerate() {
            let previous = i.checked_sub(1).and_then(|p| self.devices.get(p));
            if previous.is_some_and(|p| p.bdf.sid() >= d.bdf.sid()) {
                return bad(d.bdf, "devices are not sorted by BDF or a BDF repeats");
            }
            if d.name.len() > NAME_LIMIT {
                return bad(d.bdf, "host device name is longer than 256 bytes");
            }
            if d.pasids
                .iter()
                .zip(d.pasids.iter().skip(1))
                .any(|(a, b)| a >= b)
            {
                return bad(d.bdf, "PASIDs are not sorted or repeat");
            }
            if d.pasids.iter().any(|&p| p >= PASID_LIMIT) {
                return bad(d.bdf, "a PASID is wider than 20 bits");
            }
        }
        Ok(())
    }
}

/// Encodes a snapshot in the newest format version.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let payload = codec::encode_payload(&v2::SnapshotV2::from(snapshot));
    codec::seal(v2::VERSION, &payload)
}

/// Encodes a snapshot in an older format version, for a target that reads only that one:
/// refused if the snapshot holds what that version cannot carry (version 1: outstanding page
/// groups), so nothing is dropped silently.
pub fn encode_as(snapshot: &Snapshot, version: u32) -> Result<Vec<u8>, SnapshotError> {
    match version {
        v2::VERSION => Ok(encode(snapshot)),
        v1::VERSION => {
            let v1 =
                v1::SnapshotV1::from_snapshot(snapshot).ok_or(SnapshotError::NotRepresentable {
                    version,
                    reason: "page groups await a response (page requests need version 2)",
                })?;
            Ok(codec::seal(v1::VERSION, &codec::encode_payload(&v1)))
        }
        _ => Err(FormatError::UnsupportedVersion {
            found: version,
            oldest: OLDEST_FORMAT_VERSION,
            newest: FORMAT_VERSION,
        }
        .into()),
    }
}

/// Decodes a snapshot of any supported format version and checks its structure (not yet
/// against a unit: see [`restore`]).
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let (header, payload) = codec::open(bytes, OLDEST_FORMAT_VERSION..=FORMAT_VERSION)?;
    let snapshot: Snapshot = match header.version {
        v1::VERSION => codec::decode_payload::<v1::SnapshotV1>(payload)?.into(),
        v2::VERSION => codec::decode_payload::<v2::SnapshotV2>(payload)?.into(),
        // `open` admits only the versions above.
        other => {
            return Err(FormatError::UnsupportedVersion {
                found: other,
                oldest: OLDEST_FORMAT_VERSION,
                newest: FORMAT_VERSION,
            }
            .into());
        }
    };
    if snapshot.unit.registers.len() != vtd_core::REGISTER_IMAGE_SIZE {
        return Err(StateError::RegisterImageSize(snapshot.unit.registers.len()).into());
    }
    snapshot.check_devices()?;
    Ok(snapshot)
}

/// Saves a unit that has no passthrough device bound through it.
pub fn save<M: GuestRam + Send + Sync>(unit: &VtdUnit<M>) -> Vec<u8> {
    encode(&Snapshot::of_unit(unit))
}

/// Restores a snapshot into `unit` (all or nothing): decodes, checks it against the unit's
/// configuration and every register value, then imports it. After it, translations use the
/// restored tables with empty caches. A snapshot with passthrough devices is refused here.
pub fn restore<M: GuestRam + Send + Sync>(
    unit: &VtdUnit<M>,
    bytes: &[u8],
) -> Result<Snapshot, SnapshotError> {
    let snapshot = decode(bytes)?;
    if let Some(first) = snapshot.devices.first() {
        return Err(SnapshotError::PassthroughNotRestored {
            count: snapshot.devices.len(),
            first: first.bdf,
            name: first.name.clone(),
        });
    }
    unit.import_state(&snapshot.unit)?;
    Ok(snapshot)
}
