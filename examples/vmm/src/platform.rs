//! The q35-like machine bare-metal test kernels expect (QEMU's q35 with `-nodefaults`), without
//! the CPU: guest RAM layout and memory map, the port-I/O devices (16550 serial at 0x3f8,
//! isa-debug-exit at 0xf4, fw_cfg at 0x510, PIC and reset ports), PCI mechanism #1 with the
//! edu device at 00:01.0, the IOAPIC, and the VT-d unit's registers at 0xfed90000.
//!
//! [`Platform`] dispatches port and MMIO accesses; the VMM feeds it its vCPU exits, and a test
//! or demo can drive it directly. Every value an access carries is guest input: unknown ports
//! read all ones, unknown MMIO reads 0, writes to either are ignored, as on QEMU.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vm_superio::{Serial, Trigger, serial::NoEvents};
use vtd_core::{InterruptSink, VtdUnit};
use vtd_regs::{ConfigError, VtdConfig};
use vtd_tables::GuestRam;

use crate::edu::Edu;
use crate::ioapic::{IOAPIC_BASE, IOAPIC_SIZE};
use crate::irq::{ApicBus, IntxPin, IrqRouter};
use crate::multiboot::MemoryMapEntry;
use crate::pci::PciBus;

/// Guest-physical base of the VT-d unit's registers (q35, Q35_HOST_BRIDGE_IOMMU_ADDR).
pub const VTD_BASE: u64 = 0xfed9_0000;
/// Size of the unit's register window.
pub const VTD_SIZE: u64 = 0x1000;
/// Where firmware leaves edu's BAR0.
pub const EDU_BAR0: u32 = 0xfea0_0000;
/// edu's device/function number: 00:01.0, requester ID 0x0008.
pub const EDU_DEVFN: u8 = 0x08;
/// edu's INTx input on the IOAPIC and its INTERRUPT_LINE (SeaBIOS routes PIRQ to 10).
pub const EDU_IRQ: u8 = 10;
/// COM1.
pub const SERIAL_BASE: u16 = 0x3f8;
/// COM1's IOAPIC pin (ISA IRQ 4).
pub const SERIAL_IRQ: usize = 4;
/// isa-debug-exit, 4 ports.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// fw_cfg selector (16-bit writes).
pub const FW_CFG_SELECTOR_PORT: u16 = 0x510;
/// fw_cfg data (byte reads).
pub const FW_CFG_DATA_PORT: u16 = 0x511;
/// The reset control register (ICH9 RST_CNT).
pub const RESET_CONTROL_PORT: u16 = 0xcf9;
/// Where the VMM puts its boot GDT (in the reserved BIOS area, above the ACPI tables).
pub const BOOT_GDT_ADDR: u64 = 0xf_0000;
/// q35 keeps RAM below 4 GiB under this address when the guest has less than it...
pub const LOWMEM_LIMIT: u64 = 0xb000_0000;
/// ...and splits at 2 GiB otherwise (pc_q35.c), the rest going above 4 GiB.
pub const LOWMEM_SPLIT: u64 = 0x8000_0000;
/// Smallest guest this platform builds: the kernel loads at 1 MiB, tables live below it.
pub const MIN_MEMORY: u64 = 4 << 20;

/// The guest's RAM: (guest-physical start, length) of each range.
pub fn ram_ranges(memory: u64) -> Vec<(u64, u64)> {
    if memory < LOWMEM_LIMIT {
        vec![(0, memory)]
    } else {
        vec![(0, LOWMEM_SPLIT), (1 << 32, memory - LOWMEM_SPLIT)]
    }
}

/// RAM below 4 GiB.
pub fn ram_below_4g(memory: u64) -> u64 {
    ram_ranges(memory)[0].1
}

/// The top of RAM below 4 GiB that QEMU's firmware keeps for itself: on QEMU 10.0.2 a multiboot
/// kernel sees mem_upper 0x3fb80 KiB at 256 MiB (not 0x3fc00), and the scenario interpreter
/// finds the last 128 KiB outside RAM at 64, 256 and 1024 MiB, with and without scalable mode
/// (measured with `vtd-conformance run --target qemu`). vtd-vmm reports the same, so a kernel
/// that fits on one machine fits on the other.
pub const FIRMWARE_RESERVED_TOP: u64 = 0x2_0000;

/// RAM below 4 GiB a kernel may use: [`ram_below_4g`] less [`FIRMWARE_RESERVED_TOP`]. This is
/// what multiboot's mem_upper describes (plus the first MiB).
pub fn usable_ram_below_4g(memory: u64) -> u64 {
    ram_below_4g(memory).saturating_sub(FIRMWARE_RESERVED_TOP)
}

/// The memory map multiboot reports, shaped like SeaBIOS's E820 map: conventional memory up
/// to the EBDA, the BIOS area (where the ACPI tables and boot GDT are) reserved, then RAM, with
/// the firmware's top of low RAM ([`FIRMWARE_RESERVED_TOP`]) reserved.
pub fn memory_map(memory: u64) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            len: 0x9_fc00,
            kind: 1,
        },
        MemoryMapEntry {
            addr: 0x9_fc00,
            len: 0x400,
            kind: 2,
        },
        MemoryMapEntry {
            addr: 0xe_0000,
            len: 0x2_0000,
            kind: 2,
        },
    ];
    for (start, len) in ram_ranges(memory) {
        if start == 0 {
            let usable = usable_ram_below_4g(memory);
            map.push(MemoryMapEntry {
                addr: 0x10_0000,
                len: usable.saturating_sub(0x10_0000),
                kind: 1,
            });
            map.push(MemoryMapEntry {
                addr: usable,
                len: len - usable,
                kind: 2,
            });
        } else {
            map.push(MemoryMapEntry {
                addr: start,
                len,
                kind: 1,
            });
        }
    }
    map
}

/// QEMU's fw_cfg I/O interface (docs/specs/fw_cfg.rst), with the items test kernels read.
#[derive(Clone, Debug)]
pub struct FwCfg {
    selector: u16,
    offset: usize,
    cpus: u16,
}

impl FwCfg {
    /// fw_cfg for a VM with `cpus` vCPUs.
    pub fn new(cpus: u16) -> Self {
        Self {
            selector: 0,
            offset: 0,
            cpus,
        }
    }

    fn item(&self) -> Vec<u8> {
        match self.selector {
            0x0000 => b"QEMU".to_vec(),                 // FW_CFG_SIGNATURE
            0x0001 => 1u32.to_le_bytes().to_vec(),      // FW_CFG_ID: traditional interface only
            0x0005 => self.cpus.to_le_bytes().to_vec(), // FW_CFG_NB_CPUS
            0x000f => self.cpus.to_le_bytes().to_vec(), // FW_CFG_MAX_CPUS
            _ => Vec::new(),
        }
    }

    /// A write of the selector register.
    pub fn select(&mut self, key: u16) {
        self.selector = key;
        self.offset = 0;
    }

    /// A byte read of the data register: the item's next byte, 0 past its end.
    pub fn read_byte(&mut self) -> u8 {
        let b = self.item().get(self.offset).copied().unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        b
    }
}

/// The 8259A pair: test kernels only mask it (writes of 0xff to 0x21/0xa1). Mask registers
/// read back; everything else reads 0. Nothing is ever delivered through it (split irqchip:
/// the IOAPIC is the interrupt controller).
#[derive(Clone, Copy, Debug, Default)]
pub struct Pic {
    imr: [u8; 2],
}

impl Pic {
    /// Port read.
    pub fn read(&self, port: u16) -> u8 {
        match port {
            0x21 => self.imr[0],
            0xa1 => self.imr[1],
            _ => 0,
        }
    }

    /// Port write (initialisation command words are accepted and ignored).
    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            0x21 => self.imr[0] = value,
            0xa1 => self.imr[1] = value,
            _ => {}
        }
    }
}

/// The serial port's interrupt request: set by the 16550 model, turned into an IOAPIC edge by
/// the platform after the access.
#[derive(Clone, Debug, Default)]
pub struct SerialIrq(Arc<AtomicBool>);

impl Trigger for SerialIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::Release);
        Ok(())
    }
}

/// What a port write asks of the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitRequest {
    /// isa-debug-exit: end with this process status, `(code << 1) | 1`.
    DebugExit(i32),
    /// A reset through 0xcf9 or the keyboard controller (QEMU would reboot).
    Reset,
}

/// The machine minus the CPU.
pub struct Platform<M: GuestRam + Send + Sync + 'static, W: Write> {
    unit: Arc<VtdUnit<M>>,
    irq: Arc<IrqRouter<M>>,
    pci: PciBus,
    serial: Serial<SerialIrq, NoEvents, W>,
    serial_irq: SerialIrq,
    fw_cfg: FwCfg,
    pic: Pic,
}

impl<M: GuestRam + Send + Sync + 'static, W: Write> std::fmt::Debug for Platform<M, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("unit", &self.unit)
            .field("pci", &self.pci)
            .finish_non_exhaustive()
    }
}

impl<M: GuestRam + Send + Sync + 'static, W: Write> Platform<M, W> {
    /// Builds the machine: a unit with `iommu`'s identity over `mem` whose own interrupts go to
    /// `unit_irq`, the IOAPIC delivering to `apic`, edu at 00:01.0 pre-assigned as firmware
    /// leaves it, and COM1 writing to `serial_out`.
    pub fn new(
        iommu: VtdConfig,
        mem: M,
        unit_irq: Arc<dyn InterruptSink>,
        apic: Arc<dyn ApicBus>,
        serial_out: W,
    ) -> Result<Self, ConfigError> {
        let unit = Arc::new(VtdUnit::new(iommu, mem, unit_irq)?);
        let irq = Arc::new(IrqRouter::new(unit.clone(), apic));
        let mut edu = Edu::new(
            unit.clone(),
            Arc::new(IntxPin::new(irq.clone(), EDU_IRQ as usize)),
            EDU_DEVFN as u16,
        );
        edu.assign_like_firmware(EDU_BAR0, EDU_IRQ);
        let mut pci = PciBus::new();
        pci.add(EDU_DEVFN, Box::new(edu))
            .map_err(|_| ConfigError::Contradiction("PCI slot of edu taken"))?;
        let serial_irq = SerialIrq::default();
        Ok(Self {
            unit,
            irq,
            pci,
            serial: Serial::new(serial_irq.clone(), serial_out),
            serial_irq,
            fw_cfg: FwCfg::new(1),
            pic: Pic::default(),
        })
    }

    /// The remapping unit.
    pub fn unit(&self) -> &Arc<VtdUnit<M>> {
        &self.unit
    }

    /// The interrupt router (IOAPIC).
    pub fn irq(&self) -> &Arc<IrqRouter<M>> {
        &self.irq
    }

    /// The PCI bus.
    pub fn pci(&mut self) -> &mut PciBus {
        &mut self.pci
    }

    /// The serial port's output.
    pub fn serial_output(&self) -> &W {
        self.serial.writer()
    }

    fn serial_interrupt(&self) {
        if self.serial_irq.0.swap(false, Ordering::AcqRel) {
            self.irq.set_irq(SERIAL_IRQ, true);
            self.irq.set_irq(SERIAL_IRQ, false);
        }
    }

    /// Port read (`data.len()` is 1, 2 or 4).
    pub fn io_read(&mut self, port: u16, data: &mut [u8]) {
        if self.pci.io_read(port, data) {
            return;
        }
        data.fill(0xff);
        match port {
            SERIAL_BASE..=0x3ff if data.len() == 1 => {
                data[0] = self.serial.read((port - SERIAL_BASE) as u8);
                self.serial_interrupt();
            }
            FW_CFG_DATA_PORT if data.len() == 1 => data[0] = self.fw_cfg.read_byte(),
            0x20 | 0x21 | 0xa0 | 0xa1 => {
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    *b = self.pic.read(port);
                }
            }
            // System control port A: fast A20 on, as firmware leaves it.
            0x92 => {
                if let Some(b) = data.first_mut() {
                    *b = 0x02;
                }
            }
            _ => {}
        }
    }

    /// Port write; returns what the VMM must do if the guest asked to stop.
    pub fn io_write(&mut self, port: u16, data: &[u8]) -> Option<ExitRequest> {
        if self.pci.io_write(port, data) {
            return None;
        }
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        let value = u32::from_le_bytes(bytes);
        match port {
            DEBUG_EXIT_PORT..=0xf7 => {
                // hw/misc/debugexit.c: exit((val << 1) | 1), whatever the access size.
                return Some(ExitRequest::DebugExit(((value << 1) | 1) as i32));
            }
            SERIAL_BASE..=0x3ff if data.len() == 1 => {
                // An output error (closed stdout) must not stop the guest.
                let _ = self.serial.write((port - SERIAL_BASE) as u8, data[0]);
                self.serial_interrupt();
            }
            FW_CFG_SELECTOR_PORT => self.fw_cfg.select(value as u16),
            0x20 | 0x21 | 0xa0 | 0xa1 => self.pic.write(port, value as u8),
            // RST_CNT: SYS_RST (bit 1) with RST_CPU (bit 2) resets the machine.
            RESET_CONTROL_PORT if data.len() == 1 && value & 0x06 == 0x06 => {
                return Some(ExitRequest::Reset);
            }
            // The 8042's "pulse reset line" command.
            0x64 if value & 0xff == 0xfe => return Some(ExitRequest::Reset),
            _ => {}
        }
        None
    }

    /// MMIO read (`data.len()` is 1, 2, 4 or 8).
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len();
        if let Some(off) = window(addr, len, VTD_BASE, VTD_SIZE) {
            let v = self.unit.read(off, len as u8);
            data.copy_from_slice(&v.to_le_bytes()[..len]);
        } else if let Some(off) = window(addr, len, IOAPIC_BASE, IOAPIC_SIZE) {
            // The IOAPIC's registers are 32 bits wide: narrower reads take bytes of the dword,
            // wider ones read two.
            for (i, b) in data.iter_mut().enumerate() {
                let at = off + i as u64;
                let dword = self.irq.ioapic_read(at & !3);
                *b = (dword >> (8 * (at & 3))) as u8;
            }
        } else {
            self.pci.mmio_read(addr, data);
        }
    }

    /// MMIO write.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        let len = data.len();
        let mut bytes = [0u8; 8];
        bytes[..len.min(8)].copy_from_slice(&data[..len.min(8)]);
        let value = u64::from_le_bytes(bytes);
        if let Some(off) = window(addr, len, VTD_BASE, VTD_SIZE) {
            self.unit.write(off, len as u8, value);
        } else if let Some(off) = window(addr, len, IOAPIC_BASE, IOAPIC_SIZE) {
            if len == 8 {
                self.irq.ioapic_write(off, value as u32);
                self.irq.ioapic_write(off + 4, (value >> 32) as u32);
            } else {
                self.irq.ioapic_write(off & !3, value as u32);
            }
        } else {
            self.pci.mmio_write(addr, data);
        }
    }

    /// A LAPIC EOI of `vector` that the IOAPIC must see (KVM's IOAPIC-EOI exit).
    pub fn eoi(&self, vector: u8) {
        self.irq.eoi(vector);
    }
}

/// The offset of an access of `len` bytes at `addr` inside [base, base + size).
fn window(addr: u64, len: usize, base: u64, size: u64) -> Option<u64> {
    let off = addr.checked_sub(base)?;
    (off.checked_add(len as u64)? <= size).then_some(off)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vtd_core::{Msi, RecordingSink};

    #[derive(Default)]
    struct Apics(Mutex<Vec<Msi>>);
    impl ApicBus for Apics {
        fn send_msi(&self, msi: Msi) {
            self.0.lock().unwrap().push(msi);
        }
    }

    fn platform() -> Platform<GuestMemoryMmap<()>, Vec<u8>> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let cfg = VtdConfig::from_qemu_props("intremap=on").unwrap();
        Platform::new(
            cfg,
            mem,
            Arc::new(RecordingSink::default()),
            Arc::new(Apics::default()),
            Vec::new(),
        )
        .unwrap()
    }

    #[test]
    fn ports() {
        let mut p = platform();
        for b in b"hi\n" {
            assert_eq!(p.io_write(0x3f8, &[*b]), None);
        }
        // Divisor latch access must not print.
        p.io_write(0x3fb, &[0x80]);
        p.io_write(0x3f8, &[0x01]);
        p.io_write(0x3fb, &[0x03]);
        assert_eq!(p.serial_output().as_slice(), b"hi\n");
        let mut b = [0u8; 1];
        p.io_read(0x3fd, &mut b);
        assert_eq!(b[0] & 0x60, 0x60, "THR empty");
        // fw_cfg: one CPU.
        p.io_write(0x510, &5u16.to_le_bytes());
        let mut n = [0u8; 2];
        for x in &mut n {
            let mut b = [0u8; 1];
            p.io_read(0x511, &mut b);
            *x = b[0];
        }
        assert_eq!(u16::from_le_bytes(n), 1);
        p.io_write(0x510, &0u16.to_le_bytes());
        let mut sig = Vec::new();
        for _ in 0..6 {
            let mut b = [0u8; 1];
            p.io_read(0x511, &mut b);
            sig.push(b[0]);
        }
        assert_eq!(sig, b"QEMU\0\0");
        // PIC masks; unknown ports read all ones.
        p.io_write(0x21, &[0xff]);
        p.io_read(0x21, &mut b);
        assert_eq!(b[0], 0xff);
        let mut w = [0u8; 4];
        p.io_read(0x1234, &mut w);
        assert_eq!(w, [0xff; 4]);
        assert_eq!(p.io_write(0x1234, &[1, 2]), None);
        // Debug exit.
        assert_eq!(
            p.io_write(0xf4, &0x10u32.to_le_bytes()),
            Some(ExitRequest::DebugExit(0x21))
        );
        assert_eq!(p.io_write(0xf4, &[0]), Some(ExitRequest::DebugExit(1)));
        assert_eq!(p.io_write(0xcf9, &[0x06]), Some(ExitRequest::Reset));
        assert_eq!(p.io_write(0xcf9, &[0x02]), None);
    }

    #[test]
    fn mmio_windows() {
        let mut p = platform();
        let mut d = [0u8; 8];
        p.mmio_read(VTD_BASE + 8, &mut d);
        assert_eq!(u64::from_le_bytes(d), 0x00d2_008c_222f_0606, "CAP");
        let mut d4 = [0u8; 4];
        p.mmio_read(VTD_BASE, &mut d4);
        assert_eq!(u32::from_le_bytes(d4), 0x10, "VER");
        p.mmio_read(VTD_BASE + VTD_SIZE - 2, &mut d4);
        p.mmio_read(u64::MAX - 2, &mut d4);
        assert_eq!(d4, [0; 4], "unassigned");
        // IOAPIC version through IOREGSEL/IOWIN.
        p.mmio_write(IOAPIC_BASE, &1u32.to_le_bytes());
        p.mmio_read(IOAPIC_BASE + 0x10, &mut d4);
        assert_eq!(u32::from_le_bytes(d4), 0x0017_0020);
        let mut b = [0u8; 1];
        p.mmio_read(IOAPIC_BASE + 0x12, &mut b);
        assert_eq!(b[0], 0x17);
        // edu at its firmware BAR.
        p.mmio_read(EDU_BAR0 as u64, &mut d4);
        assert_eq!(u32::from_le_bytes(d4), 0x0100_00ed);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Guest traffic is untrusted: any sequence of port and MMIO accesses of any size to
        /// the platform's devices (including DMA commands and VT-d register writes) returns.
        #[test]
        fn arbitrary_guest_accesses_never_panic(
            ops in proptest::collection::vec(
                (0u8..4, 0usize..12, 0u64..0x2000, 0usize..4, proptest::num::u64::ANY),
                1..200,
            )
        ) {
            let mut p = platform();
            let ports = [0x20u16, 0x21, 0x92, 0xf4, 0x3f8, 0x3fd, 0x510, 0x511, 0xcf8, 0xcf9, 0xcfc, 0xcfe];
            let bases = [
                VTD_BASE, IOAPIC_BASE, EDU_BAR0 as u64, EDU_BAR0 as u64 + 0x80, 0, 0xfee0_0000,
                u64::MAX - 0x1000, 0x1000, VTD_BASE + 0x200, IOAPIC_BASE + 0x10, 0xcf8, 0xfff0_0000,
            ];
            for (kind, which, off, size, value) in ops {
                let len = [1usize, 2, 4, 8][size];
                let bytes = value.to_le_bytes();
                match kind {
                    0 => {
                        let mut d = vec![0u8; len.min(4)];
                        p.io_read(ports[which].wrapping_add(off as u16 & 3), &mut d);
                    }
                    1 => {
                        let port = ports[which].wrapping_add(off as u16 & 3);
                        // Stay clear of the exit port: it only reports the request.
                        let _ = p.io_write(port, &bytes[..len.min(4)]);
                    }
                    2 => {
                        let mut d = vec![0u8; len];
                        p.mmio_read(bases[which].wrapping_add(off), &mut d);
                    }
                    _ => p.mmio_write(bases[which].wrapping_add(off), &bytes[..len]),
                }
            }
        }
    }

    #[test]
    fn layout() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, 0x8000_0000), (1 << 32, (4 << 30) - 0x8000_0000)]
        );
        let map = memory_map(256 << 20);
        let ram = &map[map.len() - 2];
        assert_eq!((ram.addr, ram.kind), (0x10_0000, 1));
        // QEMU 10.0.2: the firmware keeps the top 128 KiB (mem_upper 0x3fb80 at 256 MiB).
        assert_eq!(ram.len, (256 << 20) - 0x10_0000 - 0x2_0000);
        let top = map.last().unwrap();
        assert_eq!(
            (top.addr, top.len, top.kind),
            ((256 << 20) - 0x2_0000, 0x2_0000, 2)
        );
        assert_eq!((usable_ram_below_4g(256 << 20) >> 10) - 1024, 0x3fb80);
        let split = memory_map(4 << 30);
        assert_eq!(split.last().unwrap().addr, 1 << 32);
        assert_eq!(split[split.len() - 2].addr, 0x8000_0000 - 0x2_0000);
    }
}
