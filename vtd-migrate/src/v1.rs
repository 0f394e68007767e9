//! Format version 1: the serialized types, frozen.
//!
//! These structs are the wire format: their field order and types are the byte layout (see
//! the crate docs), so they never change once released. A new field means a new module
//! (`v2`) with its own types and a conversion from v1; the conversions here to and from the
//! plain state types of vtd-core and this crate are where an internal change in vtd-core
//! breaks the build instead of the format.

use serde::{Deserialize, Serialize};
use vtd_core::{EnabledFlags, PendingInterrupts, PrqState, QueueState, UnitState};
use vtd_regs::Bdf;

use crate::codec::bounded_vec;
use crate::snapshot::{HostCapabilities, PassthroughDevice, Snapshot};

/// Format version number of this module.
pub(crate) const VERSION: u32 = 1;
/// One unit serves at most one device per requester ID.
pub(crate) const MAX_DEVICES: usize = 1 << 16;
/// PASIDs are 20 bits wide (spec 3.4.3).
const MAX_PASIDS: usize = 1 << 20;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotV1 {
    unit: UnitV1,
    #[serde(deserialize_with = "bounded_vec::<_, _, { MAX_DEVICES }>")]
    devices: Vec<DeviceV1>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnitV1 {
    #[serde(deserialize_with = "bounded_vec::<_, _, { vtd_core::REGISTER_IMAGE_SIZE }>")]
    registers: Vec<u8>,
    next_fault_record: u16,
    latched_root: Option<u64>,
    latched_irta: Option<u64>,
    queue: QueueV1,
    pending: PendingV1,
    enabled: EnabledV1,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
struct QueueV1 {
    base: u64,
    descriptor_count: u32,
    wide: bool,
    head: u32,
    tail: u32,
    last_descriptor_type: Option<u8>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
struct PendingV1 {
    fault_status: u32,
    fault_event: bool,
    wait_completion: bool,
    completion_event: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
struct EnabledV1 {
    translation: bool,
    queued_invalidation: bool,
    interrupt_remapping: bool,
    compatibility_format: bool,
    extended_interrupt_mode: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceV1 {
    /// Requester ID (bus << 8 | devfn) in the guest.
    requester_id: u16,
    /// The host device's name (sysfs BDF or cdev), for messages.
    name: String,
    #[serde(deserialize_with = "bounded_vec::<_, _, { MAX_PASIDS }>")]
    pasids: Vec<u32>,
    host: HostV1,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
struct HostV1 {
    iommu_type: u32,
    cap: u64,
    ecap: u64,
    vtd_flags: u32,
    max_pasid_log2: u8,
    capabilities: u64,
}

impl UnitV1 {
    pub(crate) fn from_state(u: &UnitState) -> Self {
        Self {
            registers: u.registers.clone(),
            next_fault_record: u.next_fault_record,
            latched_root: u.latched_root,
            latched_irta: u.latched_irta,
            queue: QueueV1 {
                base: u.queue.base,
                descriptor_count: u.queue.descriptor_count,
                wide: u.queue.wide,
                head: u.queue.head,
                tail: u.queue.tail,
                last_descriptor_type: u.queue.last_descriptor_type,
            },
            pending: PendingV1 {
                fault_status: u.pending.fault_status,
                fault_event: u.pending.fault_event,
                wait_completion: u.pending.wait_completion,
                completion_event: u.pending.completion_event,
            },
            enabled: EnabledV1 {
                translation: u.enabled.translation,
                queued_invalidation: u.enabled.queued_invalidation,
                interrupt_remapping: u.enabled.interrupt_remapping,
                compatibility_format: u.enabled.compatibility_format,
                extended_interrupt_mode: u.enabled.extended_interrupt_mode,
            },
        }
    }

    /// The state, with the page request state later versions carry.
    pub(crate) fn into_state(self, page_requests: PrqState) -> UnitState {
        let u = self;
        UnitState {
            registers: u.registers,
            next_fault_record: u.next_fault_record,
            latched_root: u.latched_root,
            latched_irta: u.latched_irta,
            queue: QueueState {
                base: u.queue.base,
                descriptor_count: u.queue.descriptor_count,
                wide: u.queue.wide,
                head: u.queue.head,
                tail: u.queue.tail,
                last_descriptor_type: u.queue.last_descriptor_type,
            },
            pending: PendingInterrupts {
                fault_status: u.pending.fault_status,
                fault_event: u.pending.fault_event,
                wait_completion: u.pending.wait_completion,
                completion_event: u.pending.completion_event,
            },
            enabled: EnabledFlags {
                translation: u.enabled.translation,
                queued_invalidation: u.enabled.queued_invalidation,
                interrupt_remapping: u.enabled.interrupt_remapping,
                compatibility_format: u.enabled.compatibility_format,
                extended_interrupt_mode: u.enabled.extended_interrupt_mode,
            },
            page_requests,
        }
    }
}

impl DeviceV1 {
    pub(crate) fn from_device(d: &PassthroughDevice) -> Self {
        Self {
            requester_id: d.bdf.sid(),
            name: d.name.clone(),
            pasids: d.pasids.clone(),
            host: HostV1 {
                iommu_type: d.host.iommu_type,
                cap: d.host.cap,
                ecap: d.host.ecap,
                vtd_flags: d.host.vtd_flags,
                max_pasid_log2: d.host.max_pasid_log2,
                capabilities: d.host.capabilities,
            },
        }
    }

    pub(crate) fn into_device(self) -> PassthroughDevice {
        let d = self;
        PassthroughDevice {
            bdf: Bdf::from_sid(d.requester_id),
            name: d.name,
            pasids: d.pasids,
            host: HostCapabilities {
                iommu_type: d.host.iommu_type,
                cap: d.host.cap,
                ecap: d.host.ecap,
                vtd_flags: d.host.vtd_flags,
                max_pasid_log2: d.host.max_pasid_log2,
                capabilities: d.host.capabilities,
            },
        }
    }
}

impl SnapshotV1 {
    /// Version 1 cannot carry outstanding page groups: `None` if `s` has some.
    pub(crate) fn from_snapshot(s: &Snapshot) -> Option<Self> {
        if !s.unit.page_requests.outstanding.is_empty() {
            return None;
        }
        Some(Self {
            unit: UnitV1::from_state(&s.unit),
            devices: s.devices.iter().map(DeviceV1::from_device).collect(),
        })
    }
}

impl From<SnapshotV1> for Snapshot {
    fn from(s: SnapshotV1) -> Self {
        Self {
            // Version 1 predates page requests: none was outstanding.
            unit: s.unit.into_state(PrqState::default()),
            devices: s.devices.into_iter().map(DeviceV1::into_device).collect(),
        }
    }
}
