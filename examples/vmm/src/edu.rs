//! An edu-compatible DMA test device (QEMU hw/misc/edu.c and docs/specs/edu.rst semantics and
//! register map, with the configuration space QEMU's q35 gives it at 00:01.0)
//! whose every DMA access is translated by the vIOMMU with the device's requester ID.
//!
//! The device knows nothing of KVM: its interrupts leave through [`DeviceInterrupts`] (a
//! remapped MSI for the APICs, or the INTx level) and its DMA goes through a [`VtdUnit`], so the
//! VMM, the conformance runner and a no-KVM demo can all use it.
//!
//! Where QEMU's edu aborts the whole VM (`hw_error` on a DMA range outside the device buffer) or
//! spends unbounded time (a factorial of 4 billion iterations), this model stays bounded: an
//! out-of-range DMA command completes without moving data, and factorials of 34 and above are 0
//! (as u32 arithmetic makes them: 34! has 32 factors of two).

use std::sync::Arc;

use vtd_core::{MsiSource, TranslateError, VtdUnit};
use vtd_tables::GuestRam;
use vtd_tables::walk::{AccessKind, DmaRequest};

use crate::irq::DeviceInterrupts;
use crate::pci::{ConfigSpace, PciFunction, reg};

/// PCI vendor ID.
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device ID.
pub const DEVICE_ID: u16 = 0x11e8;
/// PCI revision.
pub const REVISION: u8 = 0x10;
/// PCI class code 00/ff/00 (unclassified, other).
pub const CLASS: u32 = 0x00_ff_00;
/// BAR0 size: 1 MiB of registers.
pub const BAR0_SIZE: u32 = 1 << 20;
/// Offset of the MSI capability.
pub const MSI_CAP_OFFSET: usize = 0x40;
/// The value of the identification register (0x00): version 1.0, "ed".
pub const ID: u32 = 0x0100_00ed;
/// Device address of the DMA buffer.
pub const DMA_BUFFER_ADDR: u64 = 0x40000;
/// Size of the DMA buffer.
pub const DMA_BUFFER_SIZE: usize = 4096;
/// Interrupt-status bit a finished factorial raises.
pub const FACT_IRQ: u32 = 0x1;
/// Interrupt-status bit a completed DMA raises.
pub const DMA_IRQ: u32 = 0x100;
/// The 4 KiB granule DMA is split into when a translation fails (the smallest VT-d page).
const PAGE: u64 = 4096;

/// Register offsets in BAR0.
pub mod regs {
    /// Identification (RO).
    pub const ID: u64 = 0x00;
    /// Liveness check: reads back the bitwise inverse of what was written.
    pub const LIVENESS: u64 = 0x04;
    /// Factorial: write n, read n! once status bit 0 clears.
    pub const FACTORIAL: u64 = 0x08;
    /// Status: bit 0 computing (RO), bit 7 raise an interrupt when the factorial is done.
    pub const STATUS: u64 = 0x20;
    /// Interrupt status (RO).
    pub const IRQ_STATUS: u64 = 0x24;
    /// Interrupt raise: ORs the written value into the interrupt status.
    pub const IRQ_RAISE: u64 = 0x60;
    /// Interrupt acknowledge: clears the written bits of the interrupt status.
    pub const IRQ_ACK: u64 = 0x64;
    /// DMA source address.
    pub const DMA_SRC: u64 = 0x80;
    /// DMA destination address.
    pub const DMA_DST: u64 = 0x88;
    /// DMA byte count.
    pub const DMA_COUNT: u64 = 0x90;
    /// DMA command: bit 0 start/busy, bit 1 direction (1 = device to RAM), bit 2 interrupt.
    pub const DMA_CMD: u64 = 0x98;
}

const STATUS_COMPUTING: u32 = 0x01;
const STATUS_IRQFACT: u32 = 0x80;
const DMA_RUN: u64 = 0x1;
const DMA_TO_RAM: u64 = 0x2;
const DMA_IRQ_WHEN_DONE: u64 = 0x4;

/// Counters for tests and the inspector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EduStats {
    /// DMA commands run.
    pub dma_commands: u64,
    /// DMA commands refused (range outside the buffer, no bus mastering).
    pub dma_refused: u64,
    /// Pages whose translation failed (the unit recorded the fault).
    pub dma_faulted_pages: u64,
    /// MSIs delivered to the APICs.
    pub msis_sent: u64,
    /// MSIs blocked by interrupt remapping or translation.
    pub msis_blocked: u64,
}

/// The edu device.
pub struct Edu<M: GuestRam + Send + Sync> {
    config: ConfigSpace,
    unit: Arc<VtdUnit<M>>,
    irq: Arc<dyn DeviceInterrupts>,
    requester_id: u16,
    dma_mask: u64,
    liveness: u32,
    factorial: u32,
    status: u32,
    irq_status: u32,
    dma_src: u64,
    dma_dst: u64,
    dma_count: u64,
    dma_cmd: u64,
    /// The level the device drives on INTA# (QEMU's pci_set_irq state).
    intx_level: bool,
    /// The level last reported to [`DeviceInterrupts::set_intx`] (after INTx disable).
    intx_out: bool,
    buffer: Box<[u8; DMA_BUFFER_SIZE]>,
    stats: EduStats,
}

impl<M: GuestRam + Send + Sync> std::fmt::Debug for Edu<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edu")
            .field("requester_id", &format_args!("{:#06x}", self.requester_id))
            .field("status", &self.status)
            .field("irq_status", &self.irq_status)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<M: GuestRam + Send + Sync> Edu<M> {
    /// An edu device in its reset state with requester ID `requester_id` (bus << 8 | devfn),
    /// translating through `unit`, interrupting through `irq`. BAR0 is unassigned: see
    /// [`Edu::assign_like_firmware`].
    pub fn new(unit: Arc<VtdUnit<M>>, irq: Arc<dyn DeviceInterrupts>, requester_id: u16) -> Self {
        let mut config = ConfigSpace::new(VENDOR_ID, DEVICE_ID, REVISION, CLASS);
        config.add_mem32_bar(0, BAR0_SIZE);
        config.add_msi_capability(MSI_CAP_OFFSET);
        config.set_u8(reg::INTERRUPT_PIN, 1);
        Self {
            config,
            unit,
            irq,
            requester_id,
            // QEMU's edu defaults to a 28-bit mask; the platform runs it (as conformance/README.md says)
            // with dma_mask=0xffffffffffffffff, i.e. no clamping.
            dma_mask: u64::MAX,
            liveness: 0,
            factorial: 0,
            status: 0,
            irq_status: 0,
            dma_src: 0,
            dma_dst: 0,
            dma_count: 0,
            dma_cmd: 0,
            intx_level: false,
            intx_out: false,
            buffer: Box::new([0; DMA_BUFFER_SIZE]),
            stats: EduStats::default(),
        }
    }

    /// Pre-assigns resources as SeaBIOS leaves them on QEMU's q35: BAR0 at
    /// `bar0`, COMMAND = 0x103 (I/O and memory decode, SERR; no bus mastering), interrupt line
    /// `irq_line`.
    pub fn assign_like_firmware(&mut self, bar0: u32, irq_line: u8) {
        self.config.set_u32(reg::BAR0, bar0 & !(BAR0_SIZE - 1));
        self.config.set_u16(reg::COMMAND, 0x0103);
        self.config.set_u8(reg::INTERRUPT_LINE, irq_line);
    }

    /// QEMU's `dma_mask` property: DMA addresses are ANDed with it.
    pub fn set_dma_mask(&mut self, mask: u64) {
        self.dma_mask = mask;
    }

    /// The requester ID its DMA and MSIs carry.
    pub fn requester_id(&self) -> u16 {
        self.requester_id
    }

    /// The device's 4 KiB DMA buffer.
    pub fn buffer(&self) -> &[u8; DMA_BUFFER_SIZE] {
        &self.buffer
    }

    /// The device's DMA buffer, writable (tests and demos preload it).
    pub fn buffer_mut(&mut self) -> &mut [u8; DMA_BUFFER_SIZE] {
        &mut self.buffer
    }

    /// Counters.
    pub fn stats(&self) -> EduStats {
        self.stats
    }

    /// The configuration space.
    pub fn config_space(&self) -> &ConfigSpace {
        &self.config
    }

    /// A guest configuration write.
    pub fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        // INTx disable may have changed what the pin shows (QEMU pci_update_irq_disabled).
        self.update_intx_output();
    }

    /// MMIO read of `size` bytes at `offset` in BAR0 (edu_mmio_read). Accesses other than 4 or
    /// 8 bytes, naturally aligned, are invalid for the region and read 0; registers below 0x80
    /// take only 4-byte reads; anything else reads all ones.
    pub fn mmio_read(&mut self, offset: u64, size: usize) -> u64 {
        if !matches!(size, 4 | 8) || offset % size as u64 != 0 {
            return 0;
        }
        let ones = if size == 4 { 0xffff_ffff } else { u64::MAX };
        if offset < 0x80 && size != 4 {
            return ones;
        }
        let value = match offset {
            regs::ID => ID as u64,
            regs::LIVENESS => self.liveness as u64,
            regs::FACTORIAL => self.factorial as u64,
            regs::STATUS => self.status as u64,
            regs::IRQ_STATUS => self.irq_status as u64,
            regs::DMA_SRC => self.dma_src,
            regs::DMA_DST => self.dma_dst,
            regs::DMA_COUNT => self.dma_count,
            regs::DMA_CMD => self.dma_cmd,
            _ => u64::MAX,
        };
        value & ones
    }

    /// MMIO write of `size` bytes at `offset` in BAR0 (edu_mmio_write). A DMA command runs to
    /// completion before this returns; its interrupt, if asked for, is raised here too.
    pub fn mmio_write(&mut self, offset: u64, size: usize, value: u64) {
        if !matches!(size, 4 | 8) || offset % size as u64 != 0 || (offset < 0x80 && size != 4) {
            return;
        }
        let value = if size == 4 {
            value & 0xffff_ffff
        } else {
            value
        };
        // The DMA registers do not change while a transfer runs (edu dma_rw); here a transfer
        // never outlives the write that started it, so RUN is never seen set.
        let dma_idle = self.dma_cmd & DMA_RUN == 0;
        match offset {
            regs::LIVENESS => self.liveness = !(value as u32),
            // A write while computing is ignored; here the result is ready at once.
            regs::FACTORIAL if self.status & STATUS_COMPUTING == 0 => {
                self.factorial = factorial(value as u32);
                if self.status & STATUS_IRQFACT != 0 {
                    self.raise_irq(FACT_IRQ);
                }
            }
            regs::STATUS => {
                if value as u32 & STATUS_IRQFACT != 0 {
                    self.status |= STATUS_IRQFACT;
                } else {
                    self.status &= !STATUS_IRQFACT;
                }
            }
            regs::IRQ_RAISE => self.raise_irq(value as u32),
            regs::IRQ_ACK => self.lower_irq(value as u32),
            regs::DMA_SRC if dma_idle => self.dma_src = value,
            regs::DMA_DST if dma_idle => self.dma_dst = value,
            regs::DMA_COUNT if dma_idle => self.dma_count = value,
            regs::DMA_CMD if dma_idle && value & DMA_RUN != 0 => {
                self.dma_cmd = value;
                self.run_dma();
            }
            _ => {}
        }
    }

    /// Runs the programmed transfer (edu_dma_timer) page by page through the vIOMMU.
    fn run_dma(&mut self) {
        self.stats.dma_commands += 1;
        let cmd = self.dma_cmd;
        let to_ram = cmd & DMA_TO_RAM != 0;
        let (dev_addr, ram_addr) = if to_ram {
            (self.dma_src, self.dma_dst)
        } else {
            (self.dma_dst, self.dma_src)
        };
        let count = self.dma_count;
        let in_buffer = dev_addr >= DMA_BUFFER_ADDR
            && count > 0
            && dev_addr
                .checked_add(count)
                .is_some_and(|end| end <= DMA_BUFFER_ADDR + DMA_BUFFER_SIZE as u64);
        if in_buffer && self.config.bus_master() {
            let start = (dev_addr - DMA_BUFFER_ADDR) as usize;
            // count <= 4096 here, so the loop below runs at most a few times.
            self.transfer(ram_addr & self.dma_mask, start, count as usize, to_ram);
        } else {
            self.stats.dma_refused += 1;
        }
        self.dma_cmd &= !DMA_RUN;
        if cmd & DMA_IRQ_WHEN_DONE != 0 {
            self.raise_irq(DMA_IRQ);
        }
    }

    /// Moves `len` bytes between guest IOVA `iova` and the buffer at `start`, one translated
    /// page at a time. A page that fails to translate is skipped: the unit has recorded the
    /// fault, guest RAM is untouched, and the buffer keeps what it had (QEMU likewise goes on
    /// with the next page after an IOMMU miss).
    fn transfer(&mut self, iova: u64, start: usize, len: usize, to_ram: bool) {
        let access = if to_ram {
            AccessKind::Write
        } else {
            AccessKind::Read
        };
        let mut done = 0usize;
        while done < len {
            let Some(at) = iova.checked_add(done as u64) else {
                break;
            };
            let req = DmaRequest::new(self.requester_id, at, access);
            let (chunk, output) = match self.unit.translate(&req) {
                Ok(t) => {
                    let page = t.page_size.max(PAGE);
                    let room = page - (at & (page - 1));
                    ((len - done).min(room as usize), Some(t.output))
                }
                Err(e) => {
                    if matches!(e, TranslateError::Fault(_)) {
                        self.stats.dma_faulted_pages += 1;
                    }
                    // A write into the interrupt window is an interrupt request, not memory:
                    // nothing reaches RAM. Either way, go on at the next 4 KiB page.
                    let room = PAGE - (at & (PAGE - 1));
                    ((len - done).min(room as usize), None)
                }
            };
            if let Some(gpa) = output {
                let buf = &mut self.buffer[start + done..start + done + chunk];
                let mem = self.unit.memory();
                // An output address outside RAM (e.g. an MMIO hole) transfers nothing.
                let _ = if to_ram {
                    mem.write(gpa, buf)
                } else {
                    mem.read(gpa, buf)
                };
            }
            done += chunk;
        }
    }

    fn raise_irq(&mut self, bits: u32) {
        self.irq_status |= bits;
        if self.irq_status != 0 {
            if self.config.msi_enabled() {
                self.send_msi();
            } else {
                self.intx_level = true;
                self.update_intx_output();
            }
        }
    }

    fn lower_irq(&mut self, bits: u32) {
        self.irq_status &= !bits;
        if self.irq_status == 0 && !self.config.msi_enabled() {
            self.intx_level = false;
            self.update_intx_output();
        }
    }

    fn update_intx_output(&mut self) {
        self.config.set_interrupt_status(self.intx_level);
        let out = self.intx_level && !self.config.intx_disabled();
        if out != self.intx_out {
            self.intx_out = out;
            self.irq.set_intx(out);
        }
    }

    /// An MSI is a DMA write of the data to the address (PCI spec 6.8), so it needs bus
    /// mastering and goes through the unit: a write to 0xFEEx_xxxx is an interrupt request
    /// that interrupt remapping handles; any other address is ordinary DMA.
    fn send_msi(&mut self) {
        let Some((address, data)) = self.config.msi_message() else {
            return;
        };
        if !self.config.bus_master() {
            self.stats.msis_blocked += 1;
            return;
        }
        match deliver_msi(&self.unit, &*self.irq, self.requester_id, address, data) {
            MsiOutcome::Sent => self.stats.msis_sent += 1,
            MsiOutcome::Blocked | MsiOutcome::WrittenToMemory => self.stats.msis_blocked += 1,
        }
    }
}

/// What became of a device's MSI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsiOutcome {
    /// Remapped (or passed through) and delivered to the APICs.
    Sent,
    /// Blocked by interrupt remapping or by a translation fault (recorded by the unit).
    Blocked,
    /// The address is not in the interrupt window: the data went to memory as a DMA write.
    WrittenToMemory,
}

/// Sends a device's MSI write (`address`, `data`) from requester `sid` through `unit` to
/// `irq` (spec 3.15 and 5.1: a write without PASID to 0xFEEx_xxxx is an interrupt request).
pub fn deliver_msi<M: GuestRam + Send + Sync>(
    unit: &VtdUnit<M>,
    irq: &dyn DeviceInterrupts,
    sid: u16,
    address: u64,
    data: u32,
) -> MsiOutcome {
    match unit.translate(&DmaRequest::new(sid, address, AccessKind::Write)) {
        Err(TranslateError::InterruptRequest) => {
            match unit.remap_msi(MsiSource::Device(sid), address, data) {
                Ok(msi) => {
                    irq.send_msi(msi);
                    MsiOutcome::Sent
                }
                Err(_) => MsiOutcome::Blocked,
            }
        }
        Ok(t) => {
            let _ = unit.memory().write(t.output, &data.to_le_bytes());
            MsiOutcome::WrittenToMemory
        }
        Err(TranslateError::Fault(_)) => MsiOutcome::Blocked,
    }
}

/// n! in u32 arithmetic, as QEMU's edu computes it; 0 from 34 on (34! has 32 factors of two).
pub fn factorial(n: u32) -> u32 {
    if n >= 34 {
        return 0;
    }
    (1..=n).fold(1u32, |acc, k| acc.wrapping_mul(k))
}

impl<M: GuestRam + Send + Sync + 'static> PciFunction for Edu<M> {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.write_config(offset, data);
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        let value = if bar == 0 {
            self.mmio_read(offset, data.len())
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 || data.len() > 8 {
            return;
        }
        let mut bytes = [0u8; 8];
        bytes[..data.len()].copy_from_slice(data);
        self.mmio_write(offset, data.len(), u64::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vtd_core::{Msi, RecordingSink};
    use vtd_regs::VtdConfig;
    use vtd_tables::builder::{
        ContextTablesBuilder, FrameAllocator, PageSize, PageTableBuilder, PageTableFormat,
        PasidTablesBuilder,
    };
    use vtd_tables::entries::{ContextEntry, PasidEntry};

    type Mem = GuestMemoryMmap<()>;

    #[derive(Default)]
    struct Lines {
        msis: Mutex<Vec<Msi>>,
        intx: Mutex<Vec<bool>>,
    }
    impl DeviceInterrupts for Lines {
        fn send_msi(&self, msi: Msi) {
            self.msis.lock().unwrap().push(msi);
        }
        fn set_intx(&self, asserted: bool) {
            self.intx.lock().unwrap().push(asserted);
        }
    }

    fn setup(props: &str) -> (Arc<VtdUnit<Mem>>, Arc<Lines>, Edu<Mem>, Arc<RecordingSink>) {
        let mem: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let sink = Arc::new(RecordingSink::default());
        let cfg = VtdConfig::from_qemu_props(props).unwrap();
        let unit = Arc::new(VtdUnit::new(cfg, mem, sink.clone()).unwrap());
        let lines = Arc::new(Lines::default());
        let mut edu = Edu::new(unit.clone(), lines.clone(), 0x0008);
        edu.assign_like_firmware(0xfea0_0000, 10);
        // Bus mastering on, as the test kernels do.
        edu.write_config(reg::COMMAND, &0x0107u16.to_le_bytes());
        (unit, lines, edu, sink)
    }

    fn dma(edu: &mut Edu<Mem>, to_ram: bool, iova: u64, dev: u64, len: u64) {
        if to_ram {
            edu.mmio_write(regs::DMA_SRC, 8, DMA_BUFFER_ADDR + dev);
            edu.mmio_write(regs::DMA_DST, 8, iova);
        } else {
            edu.mmio_write(regs::DMA_SRC, 8, iova);
            edu.mmio_write(regs::DMA_DST, 8, DMA_BUFFER_ADDR + dev);
        }
        edu.mmio_write(regs::DMA_COUNT, 8, len);
        edu.mmio_write(regs::DMA_CMD, 8, 1 | if to_ram { 2 } else { 0 });
        assert_eq!(edu.mmio_read(regs::DMA_CMD, 8) & 1, 0, "done synchronously");
    }

    #[test]
    fn config_space_identity() {
        let (_, _, edu, _) = setup("");
        let c = edu.config_space();
        assert_eq!(c.u32_at(0), 0x11e8_1234);
        assert_eq!(c.u32_at(8), 0x00ff_0010);
        assert_eq!(c.u32_at(0x10), 0xfea0_0000);
        assert_eq!(c.u8_at(0x34), 0x40);
        assert_eq!(c.u32_at(0x40), 0x0080_0005);
        assert_eq!(c.u8_at(0x3c), 10);
        assert_eq!(c.u8_at(0x3d), 1);
        let mut fresh = setup("").2;
        fresh.assign_like_firmware(0xfea0_0000, 10);
        assert_eq!(fresh.config_space().command(), 0x103);
    }

    #[test]
    fn registers() {
        let (_, _, mut edu, _) = setup("");
        assert_eq!(edu.mmio_read(regs::ID, 4), 0x0100_00ed);
        assert_eq!(
            edu.mmio_read(regs::ID, 8),
            u64::MAX,
            "8-byte read below 0x80"
        );
        assert_eq!(edu.mmio_read(regs::ID, 2), 0, "invalid size");
        assert_eq!(edu.mmio_read(0x06, 4), 0, "misaligned");
        edu.mmio_write(regs::LIVENESS, 4, 0x1234_5678);
        assert_eq!(edu.mmio_read(regs::LIVENESS, 4), 0xedcb_a987);
        edu.mmio_write(regs::FACTORIAL, 4, 5);
        assert_eq!(edu.mmio_read(regs::STATUS, 4) & 1, 0);
        assert_eq!(edu.mmio_read(regs::FACTORIAL, 4), 120);
        edu.mmio_write(regs::FACTORIAL, 4, 12);
        assert_eq!(edu.mmio_read(regs::FACTORIAL, 4), 479_001_600);
        edu.mmio_write(regs::FACTORIAL, 4, u32::MAX as u64);
        assert_eq!(edu.mmio_read(regs::FACTORIAL, 4), 0);
        assert_eq!(factorial(0), 1);
        assert_eq!(factorial(13), 1_932_053_504, "wraps like u32");
        assert_eq!(
            factorial(33),
            (1..=33u32).fold(1u32, |a, k| a.wrapping_mul(k))
        );
        assert_eq!(edu.mmio_read(0x100, 4), 0xffff_ffff, "unknown register");
        assert_eq!(edu.mmio_read(0xf_fff8, 8), u64::MAX);
        edu.mmio_write(regs::DMA_SRC, 4, 0xabcd_0000_1234);
        assert_eq!(
            edu.mmio_read(regs::DMA_SRC, 8),
            0x1234,
            "4-byte write zero-extends"
        );
        edu.mmio_write(regs::DMA_SRC, 8, 0x1_2345_6789);
        assert_eq!(edu.mmio_read(regs::DMA_SRC, 4), 0x2345_6789);
    }

    #[test]
    fn intx_and_msi() {
        let (unit, lines, mut edu, _) = setup("");
        edu.mmio_write(regs::IRQ_RAISE, 4, 0x10);
        assert_eq!(edu.mmio_read(regs::IRQ_STATUS, 4), 0x10);
        assert_eq!(*lines.intx.lock().unwrap(), vec![true]);
        assert_eq!(
            edu.config_space().u16_at(reg::STATUS) & 8,
            8,
            "interrupt status"
        );
        edu.mmio_write(regs::IRQ_ACK, 4, 0x10);
        assert_eq!(*lines.intx.lock().unwrap(), vec![true, false]);
        // INTx disable masks the output.
        edu.write_config(reg::COMMAND, &0x0507u16.to_le_bytes());
        edu.mmio_write(regs::IRQ_RAISE, 4, 1);
        assert_eq!(lines.intx.lock().unwrap().len(), 2);
        edu.write_config(reg::COMMAND, &0x0107u16.to_le_bytes());
        assert_eq!(*lines.intx.lock().unwrap(), vec![true, false, true]);
        edu.mmio_write(regs::IRQ_ACK, 4, 1);
        // MSI (interrupt remapping not enabled: passes unchanged).
        edu.write_config(0x44, &0xfee0_1000u32.to_le_bytes());
        edu.write_config(0x4c, &0x0045u16.to_le_bytes());
        edu.write_config(0x42, &1u16.to_le_bytes());
        edu.mmio_write(regs::IRQ_RAISE, 4, 1);
        assert_eq!(
            *lines.msis.lock().unwrap(),
            vec![Msi {
                address: 0xfee0_1000,
                data: 0x45
            }]
        );
        // MSI without bus mastering is dropped.
        edu.write_config(reg::COMMAND, &0x0103u16.to_le_bytes());
        edu.mmio_write(regs::IRQ_RAISE, 4, 1);
        assert_eq!(lines.msis.lock().unwrap().len(), 1);
        assert_eq!(edu.stats().msis_blocked, 1);
        assert_eq!(unit.stats().interrupts_remapped, 0);
    }

    #[test]
    fn dma_through_legacy_second_stage_tables() {
        let (unit, _, mut edu, sink) = setup("intremap=on");
        let mem = unit.memory();
        let mut frames = FrameAllocator::new(0x10_0000, 0x20_0000);
        let mut pt =
            PageTableBuilder::new(mem, &mut frames, PageTableFormat::SecondStage { levels: 4 })
                .unwrap();
        // IOVA 0x1000_0000 -> 0x40_0000 read/write; 0x1000_1000 -> 0x40_1000 read-only.
        pt.map(
            &mut frames,
            0x1000_0000,
            0x40_0000,
            PageSize::Size4K,
            true,
            true,
        )
        .unwrap();
        pt.map(
            &mut frames,
            0x1000_1000,
            0x40_1000,
            PageSize::Size4K,
            true,
            false,
        )
        .unwrap();
        let root = pt.root();
        let mut ctx = ContextTablesBuilder::new(mem, &mut frames, false).unwrap();
        ctx.set_legacy_context(&mut frames, 0x0008, ContextEntry::new(root, 2, 1))
            .unwrap();
        let rtaddr = ctx.rtaddr();
        unit.write(0x20, 8, rtaddr);
        unit.write(0x18, 4, 1 << 30); // SRTP
        unit.write(0x18, 4, 1 << 31); // TE
        assert_eq!(unit.read(0x1c, 4) >> 31, 1);
        mem.write(0x40_0fe0, &[0x5a; 32]).unwrap();
        mem.write(0x40_1000, &[0xa5; 64]).unwrap();
        // RAM -> device across the page boundary: both pages are readable.
        dma(&mut edu, false, 0x1000_0fe0, 0, 64);
        assert_eq!(&edu.buffer()[..32], &[0x5a; 32]);
        assert_eq!(&edu.buffer()[32..64], &[0xa5; 32]);
        // Device -> RAM into the read-only page: the first page is written, the second
        // faults and RAM there stays untouched.
        edu.buffer_mut()[..64].fill(0x11);
        dma(&mut edu, true, 0x1000_0fe0, 0, 64);
        let mut back = [0u8; 64];
        mem.read(0x40_0fe0, &mut back).unwrap();
        assert_eq!(&back[..32], &[0x11; 32]);
        assert_eq!(&back[32..], &[0xa5; 32], "read-only page untouched");
        assert_eq!(edu.stats().dma_faulted_pages, 1);
        // The unit recorded it: FSTS.PPF, FRCD with FR 5 (write), SID 0x0008.
        assert_eq!(unit.read(0x34, 4) & 2, 2);
        let fro = ((unit.read(0x08, 8) >> 24) & 0x3ff) * 16;
        let hi = unit.read(fro + 8, 8);
        assert_eq!(hi >> 63, 1, "F");
        assert_eq!((hi >> 32) & 0xff, 5, "FR: write to a read-only page");
        assert_eq!(hi & 0xffff, 0x0008, "SID");
        assert_eq!(unit.read(fro, 8) & !0xfff, 0x1000_1000);
        // Fault events are masked at reset: no MSI from the unit.
        assert!(sink.take().is_empty());
        // Unmapped IOVA: nothing moves.
        dma(&mut edu, true, 0x2000_0000, 0, 16);
        assert_eq!(edu.stats().dma_faulted_pages, 2);
        // Out-of-range device address: refused, RUN still clears, interrupt still raised.
        edu.mmio_write(regs::DMA_SRC, 8, DMA_BUFFER_ADDR + 4095);
        edu.mmio_write(regs::DMA_DST, 8, 0x1000_0000);
        edu.mmio_write(regs::DMA_COUNT, 8, 2);
        edu.mmio_write(regs::DMA_CMD, 8, 1 | 2 | 4);
        assert_eq!(edu.stats().dma_refused, 1);
        assert_eq!(edu.mmio_read(regs::IRQ_STATUS, 4), DMA_IRQ as u64);
        edu.mmio_write(regs::DMA_COUNT, 8, u64::MAX);
        edu.mmio_write(regs::DMA_CMD, 8, 1);
        assert_eq!(
            edu.stats().dma_refused,
            2,
            "huge count refused, no overflow"
        );
    }

    #[test]
    fn dma_through_scalable_first_stage_tables_and_remapped_msi() {
        let (unit, lines, mut edu, _) = setup("x-scalable-mode=on,x-flts=on,intremap=on");
        let mem = unit.memory();
        let mut frames = FrameAllocator::new(0x10_0000, 0x20_0000);
        let mut pt =
            PageTableBuilder::new(mem, &mut frames, PageTableFormat::FirstStage { levels: 4 })
                .unwrap();
        pt.map(
            &mut frames,
            0x7000_0000,
            0x50_0000,
            PageSize::Size4K,
            true,
            true,
        )
        .unwrap();
        let fs_root = pt.root();
        let mut pasids = PasidTablesBuilder::new(mem, &mut frames, 0).unwrap();
        pasids
            .set_entry(
                &mut frames,
                0,
                PasidEntry::first_stage(fs_root, false, 2, 2),
            )
            .unwrap();
        let mut ctx = ContextTablesBuilder::new(mem, &mut frames, true).unwrap();
        ctx.set_scalable_context(&mut frames, 0x0008, pasids.context_entry())
            .unwrap();
        unit.write(0x20, 8, ctx.rtaddr());
        unit.write(0x18, 4, 1 << 30);
        unit.write(0x18, 4, 1 << 31);
        edu.buffer_mut()[..4].copy_from_slice(b"vtd!");
        dma(&mut edu, true, 0x7000_0010, 0, 4);
        let mut b = [0u8; 4];
        mem.read(0x50_0010, &mut b).unwrap();
        assert_eq!(&b, b"vtd!");
        // First stage sets A and D on the leaf (facts: A at every level, D on a written leaf).
        let leaf = pt
            .leaf_slot(0x7000_0000, PageSize::Size4K)
            .unwrap()
            .unwrap();
        assert_eq!(mem.read_u64(leaf).unwrap() & 0x60, 0x60);
        // Interrupt remapping: IRTE 3 = vector 0x40 to APIC 0, SID verified (SVT 1, 0x0008).
        let irt = frames.alloc(mem, 1).unwrap();
        mem.write_words(irt + 3 * 16, &[1 | 0x40 << 16, 0x0008 | 1 << 18])
            .unwrap();
        unit.write(0xb8, 8, irt | 7);
        unit.write(0x18, 4, (1 << 31) | (1 << 24)); // SIRTP
        unit.write(0x18, 4, (1 << 31) | (1 << 25)); // IRE
        // Remappable MSI: handle 3, format bit 4.
        edu.write_config(0x44, &(0xfee0_0000u32 | 3 << 5 | 1 << 4).to_le_bytes());
        edu.write_config(0x42, &1u16.to_le_bytes());
        edu.mmio_write(regs::IRQ_RAISE, 4, 1);
        let msis = lines.msis.lock().unwrap().clone();
        assert_eq!(msis.len(), 1);
        assert_eq!(msis[0].data & 0xff, 0x40);
        assert_eq!(msis[0].address & 0xfff0_0000, 0xfee0_0000);
        // A handle whose IRTE is not present: blocked, fault recorded.
        edu.write_config(0x44, &(0xfee0_0000u32 | 9 << 5 | 1 << 4).to_le_bytes());
        edu.mmio_write(regs::IRQ_RAISE, 4, 1);
        assert_eq!(lines.msis.lock().unwrap().len(), 1);
        assert_eq!(edu.stats().msis_blocked, 1);
    }

    #[test]
    fn dma_with_translation_off_and_without_bus_master() {
        let (unit, _, mut edu, _) = setup("");
        unit.memory().write(0x30_0000, b"hello edu").unwrap();
        dma(&mut edu, false, 0x30_0000, 0x10, 9);
        assert_eq!(&edu.buffer()[0x10..0x19], b"hello edu");
        dma(&mut edu, true, 0x30_1000, 0x10, 9);
        let mut b = [0u8; 9];
        unit.memory().read(0x30_1000, &mut b).unwrap();
        assert_eq!(&b, b"hello edu");
        // Beyond RAM: nothing happens, no panic.
        dma(&mut edu, true, u64::MAX - 4, 0, 16);
        edu.write_config(reg::COMMAND, &0x0103u16.to_le_bytes());
        dma(&mut edu, true, 0x30_2000, 0x10, 9);
        unit.memory().read(0x30_2000, &mut b).unwrap();
        assert_eq!(b, [0; 9], "no bus master, no DMA");
    }
}
