//! Format version 2: version 1 followed by the page groups awaiting a response.
//!
//! Page requests (ECAP.PRS, spec 7.5) arrived in vtd-core after version 1 was fixed. Their
//! queue's registers (PQH, PQT, PQA, PRS_REG, PECTL and the event message registers) were
//! already inside version 1's 4 KiB register image; what the image cannot hold is which page
//! groups the unit delivered and the guest has not answered, so version 2 appends them. The
//! version 1 types are reused unchanged, so the two layouts share their prefix.

use serde::{Deserialize, Serialize};
use vtd_core::{OutstandingGroup, PrqState};

use crate::codec::bounded_vec;
use crate::snapshot::Snapshot;
use crate::v1::{DeviceV1, MAX_DEVICES, UnitV1};

/// Format version number of this module.
pub(crate) const VERSION: u32 = 2;
/// vtd-core tracks at most this many outstanding groups.
const MAX_GROUPS: usize = vtd_core::MAX_OUTSTANDING_GROUPS;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotV2 {
    unit: UnitV1,
    #[serde(deserialize_with = "bounded_vec::<_, _, { MAX_DEVICES }>")]
    devices: Vec<DeviceV1>,
    /// Outstanding page groups, oldest first.
    #[serde(deserialize_with = "bounded_vec::<_, _, { MAX_GROUPS }>")]
    page_groups: Vec<PageGroupV2>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
struct PageGroupV2 {
    requester_id: u16,
    pasid: Option<u32>,
    prg_index: u16,
}

impl From<&Snapshot> for SnapshotV2 {
    fn from(s: &Snapshot) -> Self {
        Self {
            unit: UnitV1::from_state(&s.unit),
            devices: s.devices.iter().map(DeviceV1::from_device).collect(),
            page_groups: s
                .unit
                .page_requests
                .outstanding
                .iter()
                .map(|g| PageGroupV2 {
                    requester_id: g.sid,
                    pasid: g.pasid,
                    prg_index: g.prg_index,
                })
                .collect(),
        }
    }
}

impl From<SnapshotV2> for Snapshot {
    fn from(s: SnapshotV2) -> Self {
        let page_requests = PrqState {
            outstanding: s
                .page_groups
                .into_iter()
                .map(|g| OutstandingGroup {
                    sid: g.requester_id,
                    pasid: g.pasid,
                    prg_index: g.prg_index,
                })
                .collect(),
        };
        Self {
            unit: s.unit.into_state(page_requests),
            devices: s.devices.into_iter().map(DeviceV1::into_device).collect(),
        }
    }
}
