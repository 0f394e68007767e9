//! PCI configuration mechanism #1 on bus 0, a configuration-space model with BARs and an MSI
//! capability, and the q35 host bridge.
//!
//! Mechanism #1 (PCI Local Bus spec 3.0, 3.2.2.3.2): a 32-bit write to 0xcf8 latches
//! `enable << 31 | bus << 16 | device << 11 | function << 8 | register`; 1-, 2- or 4-byte
//! accesses at 0xcfc..=0xcff then reach the latched function's configuration space at
//! `register | (port - 0xcfc)`. The spec reserves the register's low two bits, but QEMU
//! (hw/pci/pci_host.c, `pci_host_data_read`: `config_reg | (addr & 3)`) latches all eight bits
//! and ORs them with the port's, so `0xcf8 = ...|2; inw(0xcfc)` reads offset 2 there; vtd-vmm
//! does the same (the self-test guest compares both machines). Absent functions, other buses and
//! accesses with the enable bit clear read all ones and ignore writes, as on QEMU.
//!
//! Test kernels do not assign resources: they rely on firmware (SeaBIOS) having done it, so a
//! function is pre-assigned ([`ConfigSpace::set_u32`] and friends bypass the write masks).

/// The configuration address port.
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// The first configuration data port (0xcfc..=0xcff).
pub const CONFIG_DATA_PORT: u16 = 0xcfc;

/// COMMAND register bits (PCI spec 6.2.2).
pub mod command {
    /// I/O space decode.
    pub const IO: u16 = 1 << 0;
    /// Memory space decode.
    pub const MEMORY: u16 = 1 << 1;
    /// Bus master: the function may issue DMA (and MSIs, which are DMA writes).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// Parity error response.
    pub const PARITY: u16 = 1 << 6;
    /// SERR# enable.
    pub const SERR: u16 = 1 << 8;
    /// INTx emulation disable.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Register offsets of a type-0 header.
pub mod reg {
    /// Vendor ID (16).
    pub const VENDOR_ID: usize = 0x00;
    /// Device ID (16).
    pub const DEVICE_ID: usize = 0x02;
    /// Command (16).
    pub const COMMAND: usize = 0x04;
    /// Status (16).
    pub const STATUS: usize = 0x06;
    /// Revision ID (8).
    pub const REVISION: usize = 0x08;
    /// Class code (24, from prog-if at 0x09).
    pub const CLASS_PROG: usize = 0x09;
    /// Cache line size (8).
    pub const CACHE_LINE_SIZE: usize = 0x0c;
    /// Header type (8).
    pub const HEADER_TYPE: usize = 0x0e;
    /// BAR0 (32); BARn at BAR0 + 4n.
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor ID (16).
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem ID (16).
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Capabilities pointer (8).
    pub const CAPABILITIES: usize = 0x34;
    /// Interrupt line (8).
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin (8).
    pub const INTERRUPT_PIN: usize = 0x3d;
}

const STATUS_INTERRUPT: u16 = 1 << 3;
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Error bits of STATUS are write-1-to-clear (PCI spec 6.2.3).
const STATUS_W1C: u16 = 0xf900;
/// The command bits QEMU lets software change (`pci_init_wmask`).
const COMMAND_WRITABLE: u16 = command::IO
    | command::MEMORY
    | command::BUS_MASTER
    | command::PARITY
    | command::SERR
    | command::INTX_DISABLE;

/// QEMU gives every PCI function subsystem 1af4:1100 (Red Hat, QEMU).
pub const QEMU_SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
/// See [`QEMU_SUBSYSTEM_VENDOR_ID`].
pub const QEMU_SUBSYSTEM_ID: u16 = 0x1100;

const MSI_CONTROL_ENABLE: u16 = 1 << 0;
const MSI_CONTROL_MME: u16 = 7 << 4;
const MSI_CONTROL_64BIT: u16 = 1 << 7;

/// A 256-byte configuration space with per-byte write and write-1-to-clear masks, 32-bit
/// memory BARs and an optional 64-bit single-vector MSI capability.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; 256],
    wmask: [u8; 256],
    w1c: [u8; 256],
    /// Size of each 32-bit memory BAR (0 = not implemented).
    bars: [u32; 6],
    msi: Option<usize>,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field(
                "vendor",
                &format_args!("{:#06x}", self.u16_at(reg::VENDOR_ID)),
            )
            .field(
                "device",
                &format_args!("{:#06x}", self.u16_at(reg::DEVICE_ID)),
            )
            .field("command", &format_args!("{:#06x}", self.command()))
            .finish_non_exhaustive()
    }
}

impl ConfigSpace {
    /// A type-0 header with the given identity (`class` is base << 16 | sub << 8 | prog-if),
    /// QEMU's subsystem IDs, and the registers software may write (command, cache line size,
    /// interrupt line) writable.
    pub fn new(vendor: u16, device: u16, revision: u8, class: u32) -> Self {
        let mut c = Self {
            bytes: [0; 256],
            wmask: [0; 256],
            w1c: [0; 256],
            bars: [0; 6],
            msi: None,
        };
        c.set_u16(reg::VENDOR_ID, vendor);
        c.set_u16(reg::DEVICE_ID, device);
        c.set_u8(reg::REVISION, revision);
        c.set_u8(reg::CLASS_PROG, class as u8);
        c.set_u16(reg::CLASS_PROG + 1, (class >> 8) as u16);
        c.set_u16(reg::SUBSYSTEM_VENDOR_ID, QEMU_SUBSYSTEM_VENDOR_ID);
        c.set_u16(reg::SUBSYSTEM_ID, QEMU_SUBSYSTEM_ID);
        c.wmask_u16(reg::COMMAND, COMMAND_WRITABLE);
        c.w1c[reg::STATUS..reg::STATUS + 2].copy_from_slice(&STATUS_W1C.to_le_bytes());
        c.wmask[reg::CACHE_LINE_SIZE] = 0xff;
        c.wmask[reg::INTERRUPT_LINE] = 0xff;
        c
    }

    fn wmask_u16(&mut self, offset: usize, mask: u16) {
        self.wmask[offset..offset + 2].copy_from_slice(&mask.to_le_bytes());
    }

    fn wmask_u32(&mut self, offset: usize, mask: u32) {
        self.wmask[offset..offset + 4].copy_from_slice(&mask.to_le_bytes());
    }

    /// Declares BAR `index` (0..6) as a 32-bit non-prefetchable memory BAR of `size` bytes (a
    /// power of two, at least 16): sizing (writing all ones) reads back `!(size - 1)`.
    ///
    /// # Panics
    /// If `index` or `size` is invalid (a programming error of the device model).
    pub fn add_mem32_bar(&mut self, index: usize, size: u32) {
        assert!(index < 6 && size.is_power_of_two() && size >= 16, "bad BAR");
        self.bars[index] = size;
        self.wmask_u32(reg::BAR0 + 4 * index, !(size - 1));
    }

    /// Adds a 64-bit, single-vector MSI capability without per-vector masking at `offset`
    /// (control 0x0080, as QEMU's `msi_init(dev, 0, 1, true, false)`), first in the list.
    ///
    /// # Panics
    /// If `offset` is not dword-aligned in 0x40..=0xf0.
    pub fn add_msi_capability(&mut self, offset: usize) {
        assert!(
            (0x40..=0xf0).contains(&offset) && offset % 4 == 0,
            "bad cap"
        );
        let next = self.u8_at(reg::CAPABILITIES);
        self.set_u8(offset, 0x05);
        self.set_u8(offset + 1, next);
        self.set_u16(offset + 2, MSI_CONTROL_64BIT);
        self.set_u8(reg::CAPABILITIES, offset as u8);
        let status = self.u16_at(reg::STATUS) | STATUS_CAP_LIST;
        self.set_u16(reg::STATUS, status);
        // QEMU msi_init: enable and the multiple-message-enable field, address bits 31:2,
        // the upper address and the 16-bit data are writable.
        self.wmask_u16(offset + 2, MSI_CONTROL_ENABLE | MSI_CONTROL_MME);
        self.wmask_u32(offset + 4, 0xffff_fffc);
        self.wmask_u32(offset + 8, 0xffff_ffff);
        self.wmask_u16(offset + 12, 0xffff);
        self.msi = Some(offset);
    }

    /// Sets a byte, bypassing the write masks (device models and firmware pre-assignment).
    pub fn set_u8(&mut self, offset: usize, value: u8) {
        if let Some(b) = self.bytes.get_mut(offset) {
            *b = value;
        }
    }

    /// Sets a 16-bit register, bypassing the write masks.
    pub fn set_u16(&mut self, offset: usize, value: u16) {
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            self.set_u8(offset + i, b);
        }
    }

    /// Sets a 32-bit register, bypassing the write masks.
    pub fn set_u32(&mut self, offset: usize, value: u32) {
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            self.set_u8(offset + i, b);
        }
    }

    /// The byte at `offset` (0 past the end).
    pub fn u8_at(&self, offset: usize) -> u8 {
        self.bytes.get(offset).copied().unwrap_or(0)
    }

    /// The 16-bit register at `offset`.
    pub fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.u8_at(offset), self.u8_at(offset + 1)])
    }

    /// The 32-bit register at `offset`.
    pub fn u32_at(&self, offset: usize) -> u32 {
        u32::from_le_bytes([
            self.u8_at(offset),
            self.u8_at(offset + 1),
            self.u8_at(offset + 2),
            self.u8_at(offset + 3),
        ])
    }

    /// Guest read of `data.len()` bytes at `offset`; bytes past 0xff read as 0xff.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = self.bytes.get(offset + i).copied().unwrap_or(0xff);
        }
    }

    /// Guest write: each byte changes only where its write mask allows; write-1-to-clear bits
    /// are cleared where 1 is written. Multiple-message-enable of MSI is clamped to what the
    /// capability offers (one vector), as QEMU's `msi_write_config` does.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let at = offset + i;
            let (Some(old), Some(&wm), Some(&w1c)) = (
                self.bytes.get(at).copied(),
                self.wmask.get(at),
                self.w1c.get(at),
            ) else {
                break;
            };
            self.bytes[at] = ((old & !wm) | (v & wm)) & !(v & w1c);
        }
        if let Some(cap) = self.msi {
            let control = self.u16_at(cap + 2) & !MSI_CONTROL_MME;
            self.set_u16(cap + 2, control);
        }
    }

    /// The COMMAND register.
    pub fn command(&self) -> u16 {
        self.u16_at(reg::COMMAND)
    }

    /// Whether the function may master the bus (COMMAND.BME): without it QEMU drops the
    /// function's DMA and MSIs (its bus-master address space is disabled).
    pub fn bus_master(&self) -> bool {
        self.command() & command::BUS_MASTER != 0
    }

    /// Whether INTx is disabled (COMMAND bit 10).
    pub fn intx_disabled(&self) -> bool {
        self.command() & command::INTX_DISABLE != 0
    }

    /// Reflects the function's INTx state in STATUS.INTERRUPT (read-only to software).
    pub fn set_interrupt_status(&mut self, asserted: bool) {
        let s = self.u16_at(reg::STATUS) & !STATUS_INTERRUPT;
        self.set_u16(reg::STATUS, s | if asserted { STATUS_INTERRUPT } else { 0 });
    }

    /// The guest-physical range of memory BAR `index` while memory decode is on.
    pub fn bar_range(&self, index: usize) -> Option<std::ops::Range<u64>> {
        let size = *self.bars.get(index)?;
        if size == 0 || self.command() & command::MEMORY == 0 {
            return None;
        }
        let base = (self.u32_at(reg::BAR0 + 4 * index) & !(size - 1)) as u64;
        // A BAR at 0 is unassigned; a sizing pattern left in place decodes nowhere useful.
        (base != 0).then(|| base..base + size as u64)
    }

    /// The MSI message (address, data) while MSI is enabled.
    pub fn msi_message(&self) -> Option<(u64, u32)> {
        let cap = self.msi?;
        if self.u16_at(cap + 2) & MSI_CONTROL_ENABLE == 0 {
            return None;
        }
        let address = self.u32_at(cap + 4) as u64 | (self.u32_at(cap + 8) as u64) << 32;
        Some((address, self.u16_at(cap + 12) as u32))
    }

    /// Whether MSI is enabled.
    pub fn msi_enabled(&self) -> bool {
        self.msi_message().is_some()
    }
}

/// A PCI function on the bus: its configuration space and its memory BARs.
pub trait PciFunction: Send {
    /// The configuration space.
    fn config(&self) -> &ConfigSpace;
    /// A guest configuration write (the function may react, e.g. to INTx disable).
    fn config_write(&mut self, offset: usize, data: &[u8]);
    /// A guest read of `data.len()` bytes at `offset` into memory BAR `bar`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// A guest write into memory BAR `bar`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
}

/// The q35 host bridge (MCH) at 00:00.0: Intel 8086:29c0, class 06/00/00. Only its identity is
/// modelled; its chipset registers (PAM, SMRAM, PCIEXBAR) read 0 and ignore writes.
#[derive(Clone, Debug)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self {
            config: ConfigSpace::new(0x8086, 0x29c0, 0, 0x06_00_00),
        }
    }
}

impl PciFunction for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// Why a function could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PciError {
    /// The device/function number is taken.
    #[error("PCI slot 00:{:02x}.{} is already occupied", .0 >> 3, .0 & 7)]
    SlotOccupied(u8),
}

/// Bus 0 behind configuration mechanism #1.
pub struct PciBus {
    address: u32,
    functions: Vec<(u8, Box<dyn PciFunction>)>,
}

impl std::fmt::Debug for PciBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let devfns: Vec<u8> = self.functions.iter().map(|(d, _)| *d).collect();
        f.debug_struct("PciBus")
            .field("address", &format_args!("{:#x}", self.address))
            .field("devfns", &devfns)
            .finish()
    }
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// A bus with the q35 host bridge at 00:00.0.
    pub fn new() -> Self {
        Self {
            address: 0,
            functions: vec![(0, Box::new(HostBridge::default()))],
        }
    }

    /// Plugs `function` in at `devfn` (device << 3 | function).
    pub fn add(&mut self, devfn: u8, function: Box<dyn PciFunction>) -> Result<(), PciError> {
        if self.functions.iter().any(|(d, _)| *d == devfn) {
            return Err(PciError::SlotOccupied(devfn));
        }
        self.functions.push((devfn, function));
        Ok(())
    }

    fn function_mut(&mut self, devfn: u8) -> Option<&mut Box<dyn PciFunction>> {
        self.functions
            .iter_mut()
            .find(|(d, _)| *d == devfn)
            .map(|(_, f)| f)
    }

    /// The function and register a data-port access reaches, if the latched address is
    /// enabled and names bus 0.
    fn target(&self, port: u16) -> Option<(u8, usize)> {
        if self.address & 0x8000_0000 == 0 || (self.address >> 16) & 0xff != 0 {
            return None;
        }
        let devfn = (self.address >> 8) as u8;
        let offset = (self.address & 0xff) as usize | (port - CONFIG_DATA_PORT) as usize;
        Some((devfn, offset))
    }

    /// Port read; returns false if the port is not the bus's.
    pub fn io_read(&mut self, port: u16, data: &mut [u8]) -> bool {
        match port {
            CONFIG_ADDRESS_PORT if data.len() == 4 => {
                data.copy_from_slice(&self.address.to_le_bytes());
                true
            }
            CONFIG_DATA_PORT..=0xcff => {
                data.fill(0xff);
                if let Some((devfn, offset)) = self.target(port) {
                    if let Some(f) = self.function_mut(devfn) {
                        f.config().read(offset, data);
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// Port write; returns false if the port is not the bus's. Only 32-bit writes to 0xcf8
    /// latch an address (byte accesses to 0xcf9 are the reset control register).
    pub fn io_write(&mut self, port: u16, data: &[u8]) -> bool {
        match port {
            CONFIG_ADDRESS_PORT if data.len() == 4 => {
                self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                true
            }
            CONFIG_DATA_PORT..=0xcff => {
                if let Some((devfn, offset)) = self.target(port) {
                    if let Some(f) = self.function_mut(devfn) {
                        f.config_write(offset, data);
                    }
                }
                true
            }
            _ => false,
        }
    }

    fn bar_at(&mut self, addr: u64, len: usize) -> Option<(&mut Box<dyn PciFunction>, usize, u64)> {
        let end = addr.checked_add(len as u64)?;
        self.functions.iter_mut().find_map(|(_, f)| {
            (0..6)
                .find_map(|bar| {
                    let r = f.config().bar_range(bar)?;
                    // Lazily: `addr - r.start` underflows when the access is below the BAR.
                    (r.start <= addr && end <= r.end).then(|| (bar, addr - r.start))
                })
                .map(|(bar, off)| (f, bar, off))
        })
    }

    /// MMIO read; returns false if no enabled BAR covers the access.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match self.bar_at(addr, data.len()) {
            Some((f, bar, off)) => {
                f.bar_read(bar, off, data);
                true
            }
            None => false,
        }
    }

    /// MMIO write; returns false if no enabled BAR covers the access.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.bar_at(addr, data.len()) {
            Some((f, bar, off)) => {
                f.bar_write(bar, off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_read(bus: &mut PciBus, devfn: u8, offset: u8, size: usize) -> u32 {
        bus.io_write(
            0xcf8,
            &(0x8000_0000u32 | (devfn as u32) << 8 | (offset & 0xfc) as u32).to_le_bytes(),
        );
        let mut b = [0u8; 4];
        assert!(bus.io_read(0xcfc + (offset & 3) as u16, &mut b[..size]));
        u32::from_le_bytes(b)
    }

    fn cfg_write(bus: &mut PciBus, devfn: u8, offset: u8, size: usize, value: u32) {
        bus.io_write(
            0xcf8,
            &(0x8000_0000u32 | (devfn as u32) << 8 | (offset & 0xfc) as u32).to_le_bytes(),
        );
        assert!(bus.io_write(0xcfc + (offset & 3) as u16, &value.to_le_bytes()[..size]));
    }

    /// The register number's low bits latched in 0xcf8 select bytes as the data port's do
    /// (QEMU hw/pci/pci_host.c ORs them): offset 2 is the device ID, not the vendor ID.
    #[test]
    fn config_address_low_bits_select_the_register_byte() {
        let mut bus = PciBus::new();
        let mut space = ConfigSpace::new(0x1234, 0x11e8, 0x10, 0x00ff00);
        space.set_u8(0x3c, 0x0a);
        bus.add(0x08, Box::new(Dev(space, Vec::new()))).unwrap();
        let addr = 0x8000_0800u32;
        let mut word = [0u8; 2];
        bus.io_write(0xcf8, &(addr | 2).to_le_bytes());
        assert!(bus.io_read(0xcfc, &mut word));
        assert_eq!(
            u16::from_le_bytes(word),
            0x11e8,
            "device ID at 0xcf8|2, port 0xcfc"
        );
        let mut byte = [0u8; 1];
        bus.io_write(0xcf8, &(addr | 1).to_le_bytes());
        assert!(bus.io_read(0xcfe, &mut byte));
        assert_eq!(byte[0], 0x11, "offset 1|2 = 3");
        // The latched value reads back unchanged, low bits included (QEMU config_reg).
        let mut latched = [0u8; 4];
        assert!(bus.io_read(0xcf8, &mut latched));
        assert_eq!(u32::from_le_bytes(latched), addr | 1);
        // Writes reach the ORed offset too: 0xcf8 = 0x3d|0 and port 0xcfe writes 0x3f, the
        // last byte of the dword holding the interrupt line (0x3c).
        bus.io_write(0xcf8, &(addr | 0x3c).to_le_bytes());
        assert!(bus.io_write(0xcfc, &[0x0b]));
        assert_eq!(cfg_read(&mut bus, 0x08, 0x3c, 1), 0x0b);
        bus.io_write(0xcf8, &(addr | 0x3d).to_le_bytes());
        assert!(bus.io_write(0xcfe, &[0x0c]));
        assert_eq!(
            cfg_read(&mut bus, 0x08, 0x3c, 1),
            0x0b,
            "0x3d|2 = 0x3f, not the line"
        );
    }

    struct Dev(ConfigSpace, Vec<(usize, u64, Vec<u8>)>);
    impl PciFunction for Dev {
        fn config(&self) -> &ConfigSpace {
            &self.0
        }
        fn config_write(&mut self, offset: usize, data: &[u8]) {
            self.0.write(offset, data);
        }
        fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.1.push((bar, offset, data.to_vec()));
        }
    }

    fn dev() -> Dev {
        let mut c = ConfigSpace::new(0x1234, 0x11e8, 0x10, 0x00ff00);
        c.add_mem32_bar(0, 1 << 20);
        c.add_msi_capability(0x40);
        c.set_u32(reg::BAR0, 0xfea0_0000);
        c.set_u16(reg::COMMAND, 0x103);
        Dev(c, Vec::new())
    }

    #[test]
    fn host_bridge_and_absent_functions() {
        let mut bus = PciBus::new();
        assert_eq!(cfg_read(&mut bus, 0, 0, 4), 0x29c0_8086);
        assert_eq!(cfg_read(&mut bus, 0, 0x0a, 2), 0x0600);
        assert_eq!(cfg_read(&mut bus, 0, 0x2c, 4), 0x1100_1af4);
        assert_eq!(cfg_read(&mut bus, 8, 0, 4), 0xffff_ffff, "absent function");
        assert_eq!(cfg_read(&mut bus, 8, 2, 2), 0xffff);
        // Enable bit clear: all ones.
        bus.io_write(0xcf8, &0u32.to_le_bytes());
        let mut b = [0u8; 4];
        bus.io_read(0xcfc, &mut b);
        assert_eq!(b, [0xff; 4]);
        // Bus 1 does not exist.
        bus.io_write(0xcf8, &0x8001_0000u32.to_le_bytes());
        bus.io_read(0xcfc, &mut b);
        assert_eq!(b, [0xff; 4]);
        // 0xcf8 reads back; byte accesses to 0xcf8 are not the latch.
        bus.io_write(0xcf8, &0x8000_0810u32.to_le_bytes());
        bus.io_read(0xcf8, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8000_0810);
        assert!(!bus.io_write(0xcf8, &[1]));
        assert!(!bus.io_read(0xcf9, &mut b[..1]));
        assert_eq!(
            bus.add(0, Box::new(HostBridge::default())),
            Err(PciError::SlotOccupied(0))
        );
    }

    #[test]
    fn bar_sizing_and_decode() {
        let mut bus = PciBus::new();
        bus.add(8, Box::new(dev())).unwrap();
        assert_eq!(cfg_read(&mut bus, 8, 0, 4), 0x11e8_1234);
        assert_eq!(cfg_read(&mut bus, 8, 0x08, 4), 0x00ff_0010);
        assert_eq!(cfg_read(&mut bus, 8, 0x10, 4), 0xfea0_0000);
        let mut b = [0u8; 4];
        assert!(bus.mmio_read(0xfea0_0004, &mut b));
        assert_eq!(b, [4; 4]);
        assert!(!bus.mmio_read(0xfeb0_0000, &mut b), "past the BAR");
        assert!(!bus.mmio_read(0xfeaf_fffe, &mut b), "straddles the end");
        cfg_write(&mut bus, 8, 0x10, 4, 0xffff_ffff);
        assert_eq!(cfg_read(&mut bus, 8, 0x10, 4), 0xfff0_0000, "sizing");
        for bar in 1..6 {
            cfg_write(&mut bus, 8, 0x10 + 4 * bar, 4, 0xffff_ffff);
            assert_eq!(
                cfg_read(&mut bus, 8, 0x10 + 4 * bar, 4),
                0,
                "BAR{bar} absent"
            );
        }
        cfg_write(&mut bus, 8, 0x10, 4, 0xfeb0_0000);
        assert!(bus.mmio_write(0xfeb0_0010, &[1, 2, 3, 4]));
        // Memory decode off: the BAR decodes nothing.
        cfg_write(&mut bus, 8, 0x04, 2, 0);
        assert!(!bus.mmio_read(0xfeb0_0010, &mut b));
        // Read-only identity, writable interrupt line, RO pin.
        cfg_write(&mut bus, 8, 0x00, 4, 0);
        assert_eq!(cfg_read(&mut bus, 8, 0, 4), 0x11e8_1234);
        cfg_write(&mut bus, 8, 0x3c, 2, 0x0505);
        assert_eq!(cfg_read(&mut bus, 8, 0x3c, 2), 0x0005);
        // Command keeps only the writable bits.
        cfg_write(&mut bus, 8, 0x04, 2, 0xffff);
        assert_eq!(cfg_read(&mut bus, 8, 0x04, 2), COMMAND_WRITABLE as u32);
    }

    #[test]
    fn msi_capability() {
        let mut d = dev();
        assert_eq!(d.0.u8_at(reg::CAPABILITIES), 0x40);
        assert_eq!(d.0.u16_at(reg::STATUS) & STATUS_CAP_LIST, STATUS_CAP_LIST);
        assert_eq!(d.0.u32_at(0x40), 0x0080_0005);
        assert_eq!(d.0.msi_message(), None);
        d.config_write(0x44, &0xfee0_0013u32.to_le_bytes());
        d.config_write(0x48, &1u32.to_le_bytes());
        d.config_write(0x4c, &0xdead_4041u32.to_le_bytes());
        // Enable with MME = 7: clamped to one vector.
        d.config_write(0x42, &0x0071u16.to_le_bytes());
        assert_eq!(d.0.u16_at(0x42), 0x0081);
        assert_eq!(d.0.msi_message(), Some((0x1_fee0_0010, 0x4041)));
        // Writes past the end are dropped; reads past the end read all ones.
        d.config_write(0xfe, &[1, 2, 3, 4]);
        let mut b = [0u8; 4];
        d.0.read(0xfe, &mut b);
        assert_eq!(b, [0, 0, 0xff, 0xff]);
        // Status error bits are write-1-to-clear.
        d.0.set_u16(reg::STATUS, 0x8010);
        d.config_write(reg::STATUS, &0x8000u16.to_le_bytes());
        assert_eq!(d.0.u16_at(reg::STATUS), 0x0010);
    }
}
