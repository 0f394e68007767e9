//! The KVM side of vtd-vmm: VM and vCPU setup for a multiboot entry, and the run loop.
//!
//! Ideas from rust-vmm's kvm-ioctls examples and Firecracker's x86_64 vCPU setup (segment
//! and LAPIC LINT programming), adapted to the multiboot entry state (Multiboot 0.6.96 specification, section 3.2,
//! and QEMU pc-bios/optionrom/multiboot.S).

use std::io::Write;
use std::sync::Arc;
use vtd_core::sync::Mutex;

use kvm_bindings::{
    KVM_CAP_SPLIT_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_MAX_CPUID_ENTRIES, KvmIrqRouting,
    kvm_enable_cap, kvm_fpu, kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1,
    kvm_irq_routing_msi, kvm_msi, kvm_segment, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vtd_core::{InterruptSink, Msi};
use vtd_regs::VtdConfig;
use vtd_vmm::acpi;
use vtd_vmm::ioapic::PINS;
use vtd_vmm::irq::ApicBus;
use vtd_vmm::multiboot::{self, KernelImage, Module};
use vtd_vmm::platform::{self, BOOT_GDT_ADDR, ExitRequest, Platform, VTD_BASE};

/// What to run.
pub struct Setup<'a> {
    /// The unit's identity.
    pub config: VtdConfig,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// The kernel file's bytes.
    pub image: &'a [u8],
    /// The parsed kernel.
    pub kernel: &'a KernelImage,
    /// The multiboot command line.
    pub cmdline: &'a str,
    /// Multiboot modules.
    pub modules: &'a [Module],
    /// Print setup and statistics on stderr.
    pub verbose: bool,
    /// Serve the unit to vtd-inspect on this Unix socket.
    pub socket: Option<&'a std::path::Path>,
    /// Keep serving this long after the guest ended, so its final state can be inspected.
    pub socket_linger: std::time::Duration,
}

/// How the guest ended.
pub enum Outcome {
    /// isa-debug-exit with this process status.
    DebugExit(i32),
    /// The guest reset the machine.
    Reset,
}

/// Why the VM did not run to an outcome.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Before the guest ran (KVM missing or refusing something, memory).
    #[error("{0}")]
    Setup(String),
    /// The guest crashed.
    #[error("{0}")]
    Guest(String),
}

fn setup_err<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> VmError {
    move |e| VmError::Setup(format!("{what}: {e}"))
}

/// Code and data selectors of the boot GDT (the layout QEMU's multiboot option ROM uses:
/// null, unused, 32-bit code at 0x10, 32-bit data at 0x18).
const BOOT_CS: u16 = 0x10;
const BOOT_DS: u16 = 0x18;
const BOOT_GDT: [u64; 4] = [0, 0, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff];

/// The local APICs through KVM: MSIs with KVM_SIGNAL_MSI. Also the unit's own interrupt sink
/// (fault event, invalidation completion), which the spec sends without remapping (5.1.6).
struct KvmApic {
    vm: Arc<VmFd>,
    /// Level-triggered IOAPIC routes installed as GSI routes (see `level_triggered`).
    routes: Mutex<[Option<Msi>; PINS]>,
    verbose: bool,
}

impl KvmApic {
    fn signal(&self, msi: Msi) {
        let m = kvm_msi {
            address_lo: msi.address as u32,
            address_hi: (msi.address >> 32) as u32,
            data: msi.data,
            ..Default::default()
        };
        match self.vm.signal_msi(m) {
            Ok(_) => {}
            Err(e) if self.verbose => eprintln!("vtd-vmm: KVM_SIGNAL_MSI {msi:x?}: {e}"),
            Err(_) => {}
        }
    }
}

impl InterruptSink for KvmApic {
    fn send_msi(&self, msi: Msi) {
        self.signal(msi);
    }
}

impl ApicBus for KvmApic {
    fn send_msi(&self, msi: Msi) {
        self.signal(msi);
    }

    /// With a split irqchip the in-kernel LAPIC exits to userspace on EOI (KVM_EXIT_IOAPIC_EOI)
    /// only for vectors that a level-triggered MSI route of GSIs 0..24 names (KVM's
    /// kvm_scan_ioapic_routes). QEMU keeps such routes in step with its RTEs; here the route of
    /// a pin is (re)installed when the message it delivers changes.
    fn level_triggered(&self, pin: u8, msi: Msi) {
        let mut routes = self.routes.lock();
        let Some(slot) = routes.get_mut(pin as usize) else {
            return;
        };
        if *slot == Some(msi) {
            return;
        }
        *slot = Some(msi);
        let entries: Vec<kvm_irq_routing_entry> = routes
            .iter()
            .enumerate()
            .filter_map(|(gsi, m)| {
                m.map(|m| kvm_irq_routing_entry {
                    gsi: gsi as u32,
                    type_: KVM_IRQ_ROUTING_MSI,
                    u: kvm_irq_routing_entry__bindgen_ty_1 {
                        msi: kvm_irq_routing_msi {
                            address_lo: m.address as u32,
                            address_hi: (m.address >> 32) as u32,
                            data: m.data,
                            ..Default::default()
                        },
                    },
                    ..Default::default()
                })
            })
            .collect();
        let Ok(mut table) = KvmIrqRouting::new(entries.len()) else {
            return;
        };
        table.as_mut_slice().copy_from_slice(&entries);
        if let Err(e) = self.vm.set_gsi_routing(&table) {
            if self.verbose {
                eprintln!("vtd-vmm: KVM_SET_GSI_ROUTING: {e}");
            }
        }
    }
}

/// COM1's output: standard output, unbuffered so a crash loses nothing.
struct SerialOut;

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().lock().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush()
    }
}

/// Registers guest RAM with KVM.
fn map_memory(vm: &VmFd, mem: &GuestMemoryMmap<()>) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(setup_err("guest memory"))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: `host` is the start of a live anonymous mapping of `region.len()` bytes owned
        // by `mem`, which outlives the VM (it is dropped only after the run loop returns and the
        // process exits); KVM accesses it only as guest memory.
        unsafe { vm.set_user_memory_region(r) }.map_err(setup_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// vCPU state at a multiboot entry (Multiboot 0.6.96 specification, 3.2): 32-bit protected mode with flat
/// segments, paging off, CR0 = PE | ET, EFLAGS = 2, EAX = 0x2BADB002, EBX = the information
/// block. CPUID is what KVM supports (so long mode is reported) with APIC ID 0 and the
/// hypervisor bit; MSR 0x10a is never set.
fn setup_vcpu(kvm: &Kvm, vcpu: &VcpuFd, entry: u64, info: u64) -> Result<(), VmError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(setup_err("KVM_GET_SUPPORTED_CPUID"))?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // Initial APIC ID 0, one logical processor; running under a hypervisor.
                e.ebx = (e.ebx & 0xffff) | 1 << 16;
                e.ecx |= 1 << 31;
            }
            0xb | 0x1f => e.edx = 0, // x2APIC ID
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid)
        .map_err(setup_err("KVM_SET_CPUID2"))?;

    let mut sregs = vcpu.get_sregs().map_err(setup_err("KVM_GET_SREGS"))?;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: BOOT_CS,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data = kvm_segment {
        selector: BOOT_DS,
        type_: 0x3,
        ..code
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = BOOT_GDT_ADDR;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = 0x11;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(setup_err("KVM_SET_SREGS"))?;

    let mut regs = vcpu.get_regs().map_err(setup_err("KVM_GET_REGS"))?;
    regs.rax = multiboot::BOOTLOADER_MAGIC as u64;
    regs.rbx = info;
    regs.rip = entry;
    regs.rflags = 0x2;
    vcpu.set_regs(&regs).map_err(setup_err("KVM_SET_REGS"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(setup_err("KVM_SET_FPU"))?;

    // LINT0 as ExtINT and LINT1 as NMI, as firmware programs them (Firecracker does the same).
    let mut lapic = vcpu.get_lapic().map_err(setup_err("KVM_GET_LAPIC"))?;
    for (offset, mode) in [(0x350usize, 0x700u32), (0x360, 0x400)] {
        for (i, b) in mode.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(setup_err("KVM_SET_LAPIC"))?;
    Ok(())
}

/// Builds the VM and runs it until the guest exits.
pub fn run(setup: Setup<'_>) -> Result<Outcome, VmError> {
    // VTD_KVM_DEVICE names another KVM device node (tests use it to check the error path).
    let device = std::env::var("VTD_KVM_DEVICE").unwrap_or_else(|_| "/dev/kvm".to_string());
    let path = std::ffi::CString::new(device.clone())
        .map_err(|_| VmError::Setup(format!("VTD_KVM_DEVICE `{device}` contains NUL")))?;
    let kvm = Kvm::new_with_path(path.as_c_str()).map_err(|e| {
        VmError::Setup(format!(
            "cannot open {device}: {e} (vtd-vmm runs guests with KVM; is the kvm module \
             loaded and {device} accessible?)"
        ))
    })?;
    for (cap, name) in [
        (Cap::SplitIrqchip, "KVM_CAP_SPLIT_IRQCHIP"),
        (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
        (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::Setup(format!("this KVM lacks {name}")));
        }
    }
    let vm = Arc::new(kvm.create_vm().map_err(setup_err("KVM_CREATE_VM"))?);
    // Intel VMX needs a TSS area for real mode; put it where QEMU puts it.
    vm.set_tss_address(0xfffb_d000)
        .map_err(setup_err("KVM_SET_TSS_ADDR"))?;
    // The LAPIC in the kernel, the IOAPIC (24 pins) in userspace; before any vCPU exists.
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    cap.args[0] = PINS as u64;
    vm.enable_cap(&cap)
        .map_err(setup_err("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)"))?;

    let ranges: Vec<(GuestAddress, usize)> = platform::ram_ranges(setup.memory)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&ranges).map_err(setup_err("allocating guest memory"))?;
    map_memory(&vm, &mem)?;

    let apic = Arc::new(KvmApic {
        vm: vm.clone(),
        routes: Mutex::new([None; PINS]),
        verbose: setup.verbose,
    });
    let mut machine = Platform::new(
        setup.config.clone(),
        mem.clone(),
        apic.clone(),
        apic,
        SerialOut,
    )
    .map_err(setup_err("VT-d configuration"))?;
    // The inspector attaches before the guest runs, so it sees every event (read-only: the
    // server only reads the unit and guest memory).
    let inspector = match setup.socket {
        Some(path) => Some(
            vtd_inspect::server::InspectServer::start(
                machine.unit().clone(),
                path,
                vtd_inspect::server::ServerOptions {
                    software: format!("vtd-vmm {}", env!("CARGO_PKG_VERSION")),
                    ..Default::default()
                },
            )
            .map_err(|e| VmError::Setup(format!("--socket: {e}")))?,
        ),
        None => None,
    };

    let boot = multiboot::load(
        &mem,
        setup.image,
        setup.kernel,
        setup.cmdline,
        setup.modules,
        &platform::memory_map(setup.memory),
        platform::usable_ram_below_4g(setup.memory),
    )
    .map_err(setup_err("loading the kernel"))?;
    let tables = acpi::build(&setup.config, VTD_BASE).map_err(setup_err("ACPI tables"))?;
    acpi::write(&mem, &tables).map_err(setup_err("ACPI tables"))?;
    let gdt: Vec<u8> = BOOT_GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write_slice(&gdt, GuestAddress(BOOT_GDT_ADDR))
        .map_err(setup_err("boot GDT"))?;

    let mut vcpu = vm.create_vcpu(0).map_err(setup_err("KVM_CREATE_VCPU"))?;
    setup_vcpu(&kvm, &vcpu, boot.entry, boot.info_addr)?;

    if setup.verbose {
        let unit = machine.unit();
        eprintln!(
            "vtd-vmm: {} MiB, entry {:#x}, info {:#x}, modules {:x?}",
            setup.memory >> 20,
            boot.entry,
            boot.info_addr,
            boot.modules
        );
        eprintln!(
            "vtd-vmm: VT-d at {VTD_BASE:#x}: CAP {:#018x} ECAP {:#018x}; RSDP at {:#x}",
            unit.read(0x08, 8),
            unit.read(0x10, 8),
            tables.rsdp_addr()
        );
    }

    let mut exits = 0u64;
    let outcome = loop {
        exits += 1;
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => machine.io_read(port, data),
            Ok(VcpuExit::IoOut(port, data)) => match machine.io_write(port, data) {
                Some(ExitRequest::DebugExit(status)) => break Ok(Outcome::DebugExit(status)),
                Some(ExitRequest::Reset) => break Ok(Outcome::Reset),
                None => {}
            },
            Ok(VcpuExit::MmioRead(addr, data)) => machine.mmio_read(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => machine.mmio_write(addr, data),
            Ok(VcpuExit::IoapicEoi(vector)) => machine.eoi(vector),
            Ok(VcpuExit::Intr) => {}
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => break Ok(Outcome::Reset),
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => break Ok(Outcome::Reset),
                other => break Err(guest_error(&vcpu, &format!("system event {other}"))),
            },
            Ok(VcpuExit::Shutdown) => {
                break Err(guest_error(
                    &vcpu,
                    "the guest triple-faulted (KVM_EXIT_SHUTDOWN)",
                ));
            }
            Ok(VcpuExit::Hlt) => {
                break Err(guest_error(
                    &vcpu,
                    "the guest halted with nothing to wake it",
                ));
            }
            Ok(VcpuExit::InternalError) => {
                break Err(guest_error(
                    &vcpu,
                    "KVM internal error (e.g. emulation failure)",
                ));
            }
            Ok(VcpuExit::FailEntry(reason, _)) => {
                break Err(guest_error(
                    &vcpu,
                    &format!("KVM could not enter the guest (reason {reason:#x})"),
                ));
            }
            Ok(other) => {
                let what = format!("unexpected exit {other:?}");
                break Err(guest_error(&vcpu, &what));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => break Err(VmError::Guest(format!("KVM_RUN: {e}"))),
        }
    };
    if setup.verbose {
        let unit = machine.unit();
        eprintln!(
            "vtd-vmm: {exits} exits; unit {:?}; IOAPIC {:?}",
            unit.stats(),
            machine.irq().stats()
        );
    }
    if let Some(server) = inspector {
        if !setup.socket_linger.is_zero() {
            eprintln!(
                "vtd-vmm: the guest ended; serving {} for {} s more",
                server.path().display(),
                setup.socket_linger.as_secs()
            );
            std::thread::sleep(setup.socket_linger);
        }
    }
    outcome
}

fn guest_error(vcpu: &VcpuFd, what: &str) -> VmError {
    let regs = vcpu
        .get_regs()
        .map(|r| format!(" at rip {:#x}", r.rip))
        .unwrap_or_default();
    VmError::Guest(format!("{what}{regs}"))
}
