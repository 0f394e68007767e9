//! Building blocks of the programs that compose the vtd crates into a machine: the platform
//! QEMU's q35 presents to bare-metal test kernels (QEMU hw/i386/pc_q35.c with `-nodefaults`), with the
//! vIOMMU (`vtd_core::VtdUnit`) in the middle of every DMA and interrupt.
//!
//! - [`edu`]: the edu-compatible DMA test device whose every DMA access translates through the
//!   vIOMMU (KVM-independent: used by vtd-vmm, and reusable by the conformance runner and a
//!   no-KVM demo);
//! - [`pci`]: PCI configuration mechanism #1, configuration spaces with BARs and MSI;
//! - [`ioapic`]: a userspace IOAPIC whose messages go through interrupt remapping;
//! - [`irq`]: the wiring from device lines through the IOAPIC and the unit to the APICs;
//! - [`multiboot`]: the multiboot v1 loader and information block, as QEMU's `-kernel`;
//! - [`acpi`]: RSDP, XSDT, MADT and the DMAR so guests find the unit the Linux way;
//! - [`platform`]: the machine minus the CPU (serial, fw_cfg, debug-exit, bus dispatch).
//!
//! The `vtd-vmm` binary puts these in a KVM virtual machine.

/// The bare-metal VT-d self-test guest (examples/guests/selftest), built by this package's build
/// script, so `vtd-vmm --self-test` runs without a kernel of the user's own.
pub const SELF_TEST_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vtd-guest.elf"));

pub mod acpi;
pub mod edu;
pub mod ioapic;
pub mod irq;
pub mod multiboot;
pub mod pci;
pub mod platform;
