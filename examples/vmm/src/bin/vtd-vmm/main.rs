//! vtd-vmm: a small KVM VMM that runs multiboot test kernels on the platform QEMU's q35
//! presents to them, with this project's VT-d unit as the IOMMU.
//!
//! A kernel that passes on
//! `qemu-system-x86_64 -nodefaults -M q35,kernel-irqchip=split -device intel-iommu,<props>
//! -device edu -device isa-debug-exit,iobase=0xf4,iosize=0x4 -serial stdio -m 256 -smp 1
//! -kernel K` passes on `vtd-vmm --iommu <props> --memory 256 --kernel K` with the same serial
//! output and exit status.

mod vm;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use vtd_regs::VtdConfig;
use vtd_vmm::multiboot::{KernelImage, Module};
use vtd_vmm::platform::MIN_MEMORY;

/// Exit status for a command line, configuration, kernel or KVM error (debug-exit statuses
/// are always odd, so even statuses never collide with the guest's; clap's usage errors use
/// the same status).
const EXIT_USAGE: u8 = 2;
/// Exit status when the guest crashed (triple fault, KVM internal error).
const EXIT_GUEST_CRASH: u8 = 4;
/// Exit status when `--timeout` expired (as timeout(1)).
const EXIT_TIMEOUT: u8 = 124;

/// The largest guest RAM, in MiB (1 TiB).
const MAX_MEMORY_MIB: u64 = (1u64 << 40) >> 20;

const AFTER_HELP: &str = "\
The machine is what QEMU presents with
  qemu-system-x86_64 -nodefaults -M q35,kernel-irqchip=split -device intel-iommu,PROPS
    -device edu -device isa-debug-exit,iobase=0xf4,iosize=0x4 -serial stdio -smp 1
    -m MIB -kernel FILE [-initrd MODULE] [-append STRING]
one vCPU, the VT-d unit at 0xfed90000, edu at 00:01.0, an IOAPIC at 0xfec00000 whose
remappable entries go through interrupt remapping, COM1 on standard output.

Environment: VTD_KVM_DEVICE names the KVM device (default /dev/kvm); RUST_LOG filters the
vtd crates' tracing events on standard error (e.g. RUST_LOG=vtd_core=debug).

Exit status: (CODE << 1) | 1 when the guest writes CODE to port 0xf4 (as QEMU's
isa-debug-exit); 0 when the guest resets the machine; 2 for a usage, configuration, kernel
or KVM error; 4 when the guest crashes (triple fault, KVM internal error); 124 on --timeout.";

/// vtd-vmm: run a multiboot kernel in a KVM VM with this project's Intel VT-d vIOMMU
#[derive(Debug, Parser)]
#[command(
    name = "vtd-vmm",
    version,
    override_usage = "vtd-vmm --kernel FILE [OPTIONS]\n       vtd-vmm --self-test [OPTIONS]",
    after_help = AFTER_HELP
)]
struct Options {
    /// Multiboot (v1) kernel: an ELF image, or one with address fields (QEMU -kernel)
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Run the built-in VT-d self-test guest (examples/guests/selftest) instead of --kernel:
    /// it programs the unit the Linux way, DMAs through it with the edu device and reports
    /// on the serial port
    #[arg(long, conflicts_with = "kernel")]
    self_test: bool,
    /// Load FILE as a multiboot module whose command line is the whole string (QEMU -initrd);
    /// may be repeated
    #[arg(long = "module", value_name = "\"FILE[ ARGS]\"")]
    modules: Vec<String>,
    /// Kernel command line after the kernel's path (QEMU -append)
    #[arg(long, value_name = "STRING", default_value = "")]
    cmdline: String,
    /// intel-iommu properties as for QEMU's -device intel-iommu,PROPS, e.g.
    /// x-scalable-mode=on,x-flts=on,intremap=on (default: none)
    #[arg(long, value_name = "PROPS", default_value = "")]
    iommu: String,
    /// Guest RAM in MiB
    #[arg(long = "memory", value_name = "MIB", default_value = "256", value_parser = parse_memory)]
    memory_mib: u64,
    /// Stop the guest after SECONDS (exit status 124)
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Serve the vIOMMU's state and events to `vtd-inspect --socket PATH` on this Unix
    /// socket (mode 0600, same user only, read-only)
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// With --socket: keep serving for SECONDS after the guest ended, to inspect its final state
    #[arg(long, value_name = "SECONDS", requires = "socket", default_value = "0")]
    socket_linger: u64,
    /// Print the machine's setup and exit statistics on standard error
    #[arg(short, long)]
    verbose: bool,
}

/// `--memory`: MiB within what vtd-vmm can give a guest.
fn parse_memory(v: &str) -> Result<u64, String> {
    let mib: u64 = v
        .parse()
        .map_err(|_| "expected a size in MiB".to_string())?;
    if mib.checked_shl(20).is_none_or(|b| b < MIN_MEMORY) || mib > MAX_MEMORY_MIB {
        return Err(format!(
            "expected {} to {MAX_MEMORY_MIB} MiB",
            MIN_MEMORY >> 20
        ));
    }
    Ok(mib)
}

/// Why a run cannot start (reported with exit status 2).
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(
        "no kernel given: use --kernel FILE, or --self-test for the built-in guest (see --help)"
    )]
    NoKernel,
    #[error("invalid --iommu `{props}`: {reason}")]
    InvalidIommu { props: String, reason: String },
    #[error("cannot read {what} `{}`: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} `{}` is larger than the guest's {memory_mib} MiB of RAM", path.display())]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        memory_mib: u64,
    },
    #[error("`{}` is not a multiboot kernel: {reason}", path.display())]
    NotMultiboot { path: PathBuf, reason: String },
}

/// Reads `path` whole, refusing files larger than guest RAM: nothing larger can be loaded,
/// and reading on (from /dev/zero, say) would exhaust the host's memory first.
fn read_bounded(what: &'static str, path: &Path, memory_mib: u64) -> Result<Vec<u8>, StartError> {
    let read_err = |source| StartError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let limit = memory_mib << 20;
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut data = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(read_err)?;
    if data.len() as u64 > limit {
        return Err(StartError::TooLarge {
            what,
            path: path.to_path_buf(),
            memory_mib,
        });
    }
    Ok(data)
}

/// Everything checked before KVM is touched.
struct Prepared {
    config: VtdConfig,
    image: Vec<u8>,
    kernel: KernelImage,
    cmdline: String,
    modules: Vec<Module>,
}

fn prepare(opts: &Options) -> Result<Prepared, StartError> {
    let (kernel_path, image) = match (&opts.kernel, opts.self_test) {
        (Some(path), _) => (path.clone(), None),
        (None, true) => (
            PathBuf::from("vtd-guest.elf"),
            Some(vtd_vmm::SELF_TEST_GUEST.to_vec()),
        ),
        (None, false) => return Err(StartError::NoKernel),
    };
    let kernel_path = &kernel_path;
    let config = VtdConfig::from_qemu_props(&opts.iommu).map_err(|e| StartError::InvalidIommu {
        props: opts.iommu.clone(),
        reason: e.to_string(),
    })?;
    let image = match image {
        Some(image) => image,
        None => read_bounded("kernel", kernel_path, opts.memory_mib)?,
    };
    let kernel = KernelImage::parse(&image).map_err(|e| StartError::NotMultiboot {
        path: kernel_path.clone(),
        reason: e.to_string(),
    })?;
    let mut modules = Vec::new();
    for m in &opts.modules {
        // QEMU -initrd "FILE ARGS": the file is the first word, the command line the whole.
        let path = Path::new(m.split(' ').next().unwrap_or_default());
        let data = read_bounded("module", path, opts.memory_mib)?;
        modules.push(Module {
            data,
            cmdline: m.clone(),
        });
    }
    // QEMU's multiboot loader passes "<kernel path> <-append string>".
    let cmdline = format!("{} {}", kernel_path.display(), opts.cmdline);
    Ok(Prepared {
        config,
        image,
        kernel,
        cmdline,
        modules,
    })
}

/// Shows the vtd crates' tracing events on standard error, filtered by RUST_LOG (errors only
/// when it is unset or invalid), so they never mix with the guest's serial output on stdout.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    // args_os: a non-UTF-8 argument is clap's usage error (status 2), not a panic.
    let opts = match Options::try_parse_from(std::env::args_os()) {
        Ok(o) => o,
        // --help and --version (status 0) or a usage error (status 2), as clap prints them.
        Err(e) => e.exit(),
    };
    init_tracing();
    let prepared = match prepare(&opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vtd-vmm: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(secs) = opts.timeout {
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(secs));
            eprintln!("vtd-vmm: timeout: the guest did not exit within {secs} s");
            // Flushes standard output (std's exit runs the runtime's cleanup).
            std::process::exit(EXIT_TIMEOUT as i32);
        });
    }
    let setup = vm::Setup {
        config: prepared.config,
        memory: opts.memory_mib << 20,
        image: &prepared.image,
        kernel: &prepared.kernel,
        cmdline: &prepared.cmdline,
        modules: &prepared.modules,
        verbose: opts.verbose,
        socket: opts.socket.as_deref(),
        socket_linger: std::time::Duration::from_secs(opts.socket_linger),
    };
    match vm::run(setup) {
        Ok(vm::Outcome::DebugExit(status)) => {
            // The OS keeps the low 8 bits of the status, as with QEMU's exit().
            ExitCode::from(status as u8)
        }
        Ok(vm::Outcome::Reset) => {
            eprintln!("vtd-vmm: the guest reset or shut down the machine; vtd-vmm does not reboot");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vtd-vmm: {e}");
            ExitCode::from(match e {
                vm::VmError::Setup(_) => EXIT_USAGE,
                vm::VmError::Guest(_) => EXIT_GUEST_CRASH,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("vtd-vmm").chain(args.iter().copied()))
    }

    #[test]
    fn arguments() {
        let o = parse(&[
            "--kernel",
            "k.elf",
            "--iommu=intremap=on",
            "--memory",
            "128",
            "--module",
            "m a b",
            "--module",
            "n",
            "--cmdline",
            "mode=legacy",
            "-v",
            "--timeout",
            "30",
        ])
        .expect("parses");
        assert_eq!(o.kernel, Some(PathBuf::from("k.elf")));
        assert_eq!(o.iommu, "intremap=on");
        assert_eq!(o.memory_mib, 128);
        assert_eq!(o.modules, vec!["m a b".to_string(), "n".into()]);
        assert_eq!(o.cmdline, "mode=legacy");
        assert_eq!(o.timeout, Some(30));
        assert!(o.verbose);
        let d = parse(&["--kernel", "k"]).expect("parses");
        assert_eq!((d.memory_mib, d.iommu.as_str(), d.timeout), (256, "", None));
        use clap::error::ErrorKind;
        assert_eq!(
            parse(&["--help"]).unwrap_err().kind(),
            ErrorKind::DisplayHelp
        );
        assert_eq!(
            parse(&["-V"]).unwrap_err().kind(),
            ErrorKind::DisplayVersion
        );
    }

    #[test]
    fn argument_errors() {
        let no_kernel = parse(&[]).expect("parses");
        assert!(
            prepare(&no_kernel)
                .err()
                .expect("refused")
                .to_string()
                .contains("no kernel")
        );
        assert!(
            parse(&["--kernel"])
                .unwrap_err()
                .to_string()
                .contains("a value is required")
        );
        assert!(
            parse(&["--bogus"])
                .unwrap_err()
                .to_string()
                .contains("unexpected argument '--bogus'")
        );
        assert!(
            parse(&["--kernel", "k", "--memory", "x"])
                .unwrap_err()
                .to_string()
                .contains("MiB")
        );
        assert!(
            parse(&["--kernel", "k", "--memory", "1"])
                .unwrap_err()
                .to_string()
                .contains("4 to")
        );
        // 2^44 MiB would overflow a shift to bytes.
        assert!(
            parse(&["--kernel", "k", "--memory", "17592186044416"])
                .unwrap_err()
                .to_string()
                .contains("4 to")
        );
        let socket = parse(&[
            "--kernel",
            "k",
            "--socket",
            "/tmp/s",
            "--socket-linger",
            "3",
        ])
        .expect("parses");
        assert_eq!(socket.socket, Some(PathBuf::from("/tmp/s")));
        assert_eq!(socket.socket_linger, 3);
        assert!(
            parse(&["--kernel", "k", "--socket-linger", "3"])
                .unwrap_err()
                .to_string()
                .contains("--socket")
        );
    }

    #[test]
    fn reads_are_bounded_by_guest_ram() {
        // /dev/zero never ends: the read must stop just past guest RAM and be refused.
        let e = read_bounded("kernel", Path::new("/dev/zero"), 4).unwrap_err();
        assert!(
            e.to_string()
                .contains("kernel `/dev/zero` is larger than the guest's 4 MiB of RAM"),
            "{e}"
        );
    }
}
