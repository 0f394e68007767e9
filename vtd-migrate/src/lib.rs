//! Versioned, checksummed save and restore of a VT-d unit, for snapshots and live migration.
//!
//! ```
//! use std::sync::Arc;
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vtd_core::{RecordingSink, VtdUnit};
//! use vtd_regs::VtdConfig;
//!
//! let cfg = VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap();
//! let mem = || -> GuestMemoryMmap<()> {
//!     GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 24)]).unwrap()
//! };
//! let source = VtdUnit::new(cfg.clone(), mem(), Arc::new(RecordingSink::default())).unwrap();
//! source.write(0x38, 4, 0); // FECTL: unmask the fault event
//! let bytes = vtd_migrate::save(&source);
//!
//! let target = VtdUnit::new(cfg, mem(), Arc::new(RecordingSink::default())).unwrap();
//! vtd_migrate::restore(&target, &bytes).unwrap();
//! assert_eq!(target.read(0x38, 4), 0);
//! ```
//!
//! # What a snapshot holds
//!
//! Everything of the unit that the guest can observe or that cannot be rebuilt (vtd-core's
//! [`UnitState`](vtd_core::UnitState)), and the passthrough devices bound through it
//! ([`PassthroughDevice`]). Caches are not saved: spec 6.1 lets hardware drop cached entries at
//! any time, so the restored unit starts with empty caches and refills them from the guest's
//! tables, which travel with guest memory.
//!
//! Compared with QEMU's `vmstate_vtd` (QEMU hw/i386/intel_iommu.c, VMState "iommu-intel"
//! version 1: `root`, `intr_root`, `iq`, `intr_size`, `iq_head`, `iq_tail`, `iq_size`,
//! `next_frcd_reg`, the 0x230-byte `csr` image, `iq_last_desc_type`, `dmar_enabled`,
//! `qi_enabled`, `intr_enabled`, `intr_eime`; its `post_load` recomputes derived state,
//! switches address spaces and replays PASID bindings), a snapshot here carries more:
//! - the whole 4 KiB register window, not the first 0x230 bytes: fault-recording registers
//!   placed by CAP.FRO beyond 0x230 and the IOTLB registers placed by ECAP.IRO are included
//!   whatever the configuration;
//! - the raw latched RTADDR and IRTA values, so the root-table mode (legacy, scalable,
//!   abort-DMA) and the interrupt table's size and EIME are exactly what SRTP/SIRTP latched,
//!   even if the guest rewrote RTADDR/IRTA since without latching;
//! - the queue's descriptor width (IQA.DW) and the pending-interrupt state (FSTS, FECTL.IP,
//!   ICS.IWC, IECTL.IP, GSTS.CFIS) as explicit fields, cross-checked with the registers on
//!   restore so a snapshot whose parts disagree is refused;
//! - the passthrough devices (requester ID, PASIDs bound, the host IOMMU capabilities they ran
//!   on), so the target can refuse to resume on a host that cannot run the guest's
//!   configuration, naming the device, instead of failing the first DMA;
//! - the page groups delivered to the guest and not yet answered (format version 2): QEMU's
//!   intel-iommu has no page request state to migrate;
//! - the type of the last descriptor the queue ran is carried as QEMU does, but restore checks
//!   it is a descriptor type;
//! - a header with magic, format version, payload length and a CRC-64 over header and payload:
//!   QEMU relies on its migration stream's section versioning and has no integrity check.
//!
//! Restoring is all-or-nothing: every check (header, checksum, payload, configuration
//! identity, every register bit against what a guest write or the unit could have produced,
//! indices, devices) runs before the target unit is touched.
//!
//! # Format
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `VTDSNAP\0` |
//! | 8 | 4 | format version, u32 LE (1 or 2) |
//! | 12 | 4 | flags, u32 LE, must be 0 |
//! | 16 | 8 | payload length, u64 LE (at most 16 MiB, exactly the bytes that follow) |
//! | 24 | 8 | CRC-64/XZ over bytes 0..24, eight zero bytes, then the payload |
//! | 32 | n | payload |
//!
//! The payload is the bincode 1.x encoding (fixed-width little-endian integers, `u64` lengths
//! before sequences and strings, a `u8` 0/1 tag before an `Option`'s value, `bool` as one
//! byte) of, in order:
//! - `registers`: `u64` length (4096) and the register image;
//! - `next_fault_record: u16`, `latched_root: Option<u64>`, `latched_irta: Option<u64>`;
//! - queue: `base: u64`, `descriptor_count: u32`, `wide: bool`, `head: u32`, `tail: u32`,
//!   `last_descriptor_type: Option<u8>`;
//! - pending: `fault_status: u32`, `fault_event: bool`, `wait_completion: bool`,
//!   `completion_event: bool`;
//! - enabled: `translation`, `queued_invalidation`, `interrupt_remapping`,
//!   `compatibility_format`, `extended_interrupt_mode`, each `bool`;
//! - devices: `u64` count, then per device `requester_id: u16`, `name` (`u64` length, UTF-8),
//!   `pasids` (`u64` count, `u32` each), host `iommu_type: u32`, `cap: u64`, `ecap: u64`,
//!   `vtd_flags: u32`, `max_pasid_log2: u8`, `capabilities: u64`;
//! - version 2 only: page groups awaiting a response, `u64` count, then per group
//!   `requester_id: u16`, `pasid: Option<u32>`, `prg_index: u16`, oldest first.
//!
//! Version 1 is everything above but the page groups; version 2 appends them. Page requests
//! (ECAP.PRS, spec 7.5) did not exist in vtd-core when version 1 was fixed, so version 1 was
//! designed to be extended this way: the page request queue's registers (PQH, PQT, PQA,
//! PRS_REG, PECTL, PEDATA, PEADDR, PEUADDR) were already inside its 4 KiB register image, and
//! only the groups the unit delivered and the guest has not answered needed a new field.
//! [`encode`] writes version 2; [`encode_as`] writes version 1 for an older target and
//! refuses a snapshot with outstanding page groups rather than drop them. [`decode`] reads
//! both (a version 1 snapshot has no outstanding group), and refuses any newer version with a
//! clear error: upgrade the target.
//!
//! The serialized types live in this crate (modules `v1`, `v2`), converted from and to
//! vtd-core's plain state structs, so an internal change in vtd-core is a compile error in a
//! conversion, never a silent change of the format. `tests/data/golden-v1.bin` and
//! `golden-v2.bin` pin both versions.
//!
//! # Codec
//!
//! bincode is no longer developed upstream. It is confined to this crate's private codec
//! module: no bincode type appears in the API, so the codec can be swapped (any serde codec
//! that reproduces the byte layout above, or a hand-written one) without touching callers.
//! Decoding is bounded by the input: bincode's byte limit is the payload length, every
//! sequence has a maximum length (4096 register bytes, 2^16 devices, 2^20 PASIDs) checked
//! before any element is read, and grows with the elements actually read rather than with its
//! length field, so a forged length allocates nothing and a decode never holds more than
//! about three times the input's size (tests/allocation.rs measures it).
//!
//! # Live migration and dirty pages
//!
//! Every byte the unit writes to guest memory (wait-descriptor status writes, A/D bits the
//! walks set in the guest's tables) goes through the VMM's `vm-memory` guest memory: with
//! `GuestMemoryMmap<AtomicBitmap>` vm-memory marks those pages dirty itself, and the VMM's
//! pre-copy rounds send them. [`PreCopy`] runs those rounds over any number of
//! [`DirtyTracker`]s ([`GuestMemoryDirtyLog`] for vm-memory's bitmap). The same holds for an emulated device whose DMA translates
//! through the unit ([`VtdUnit::translate`](vtd_core::VtdUnit::translate)) and writes the
//! guest-physical address through that memory. tests/dirty.rs runs such a pre-copy migration
//! and checks the target's memory byte for byte.
//!
//! Passthrough devices' DMA is done by the host IOMMU and never passes through vm-memory: the
//! nest parent's second stage records it. [`HwptDirtyLog`] turns on dirty tracking on each
//! nest parent (`IOMMU_HWPT_SET_DIRTY_TRACKING`; the parent is allocated with
//! `IOMMU_HWPT_ALLOC_DIRTY_TRACKING` where the host reports `IOMMU_HW_CAP_DIRTY_TRACKING`) and
//! reads and clears its bitmap each round (`IOMMU_HWPT_GET_DIRTY_BITMAP`), through vtd-accel's
//! backend trait (iommufd, or the simulator in tests). tests/live_migration.rs migrates a
//! guest whose passthrough and emulated devices keep writing through the rounds.
//!
//! # Passthrough devices
//!
//! [`save_with_binder`] records every device registered with vtd-accel's nested binder (BDF,
//! host name, PASIDs nested, host IOMMU capabilities); [`restore_with_binder`] checks, before
//! the target unit changes, that the target registered exactly those BDFs on host IOMMUs that
//! can run the guest's configuration and bound PASIDs ([`check_devices`]: a missing, extra or
//! incompatible device is an error naming it), imports the unit's state, and has the binder
//! replay every binding from the restored tables, checking each PASID is nested again.
//!
//! One exception a VMM must know: vm-memory's `IommuMemory` (what a device built on a
//! [`DeviceAddressSpace`](vtd_core::DeviceAddressSpace) uses) logs writes made with the IOMMU
//! on in its own IOVA-indexed bitmap, not in guest memory's (vm-memory iommu.rs, "two bitmap
//! levels"): a VMM migrating such devices reads that log per device. tests/dirty.rs pins this
//! behaviour so a change in vm-memory shows up.
#![forbid(unsafe_code)]
// Snapshots and dirty bitmaps come from outside must never panic this crate: no unwrap/expect and no unchecked indexing
// outside tests (tests may assert with them).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod codec;
mod passthrough;
mod precopy;
mod snapshot;
mod v1;
mod v2;

pub use codec::{FormatError, HEADER_SIZE, MAGIC, MAX_PAYLOAD};
pub use passthrough::{
    HwptDirtyLog, check_devices, restore_with_binder, save_with_binder, snapshot_with_binder,
};
pub use precopy::{
    DIRTY_PAGE_SIZE, DirtyError, DirtyPages, DirtyTracker, FinalRound, GuestMemoryDirtyLog, PreCopy,
};
pub use snapshot::{
    FORMAT_VERSION, HostCapabilities, OLDEST_FORMAT_VERSION, PassthroughDevice, Snapshot,
    SnapshotError, decode, encode, encode_as, restore, save,
};
