//! vtd-vmm: a small KVM VMM that runs multiboot test kernels on the platform QEMU's q35
//! presents to them, with this project's VT-d unit as the IOMMU.
//!
//! A kernel that passes on
//! `qemu-system-x86_64 -nodefaults -M q35,kernel-irqchip=split -device intel-iommu,<props>
//! -device edu -device isa-debug-exit,iobase=0xf4,iosize=0x4 -serial stdio -m 256 -smp 1
//! -kernel K` passes on `vtd-vmm --iommu <props> --memory 256 --kernel K` with the same serial
//! output and exit status.

mod vm;

use std::path::PathBuf;
use std::process::ExitCode;

use vtd_examples::multiboot::{KernelImage, Module};
use vtd_examples::platform::MIN_MEMORY;
use vtd_regs::VtdConfig;

/// Exit status for a command line, configuration, kernel or KVM error (debug-exit statuses
/// are always odd, so even statuses never collide with the guest's).
const EXIT_USAGE: u8 = 2;
/// Exit status when the guest crashed (triple fault, KVM internal error).
const EXIT_GUEST_CRASH: u8 = 4;
/// Exit status when `--timeout` expired (as timeout(1)).
const EXIT_TIMEOUT: u8 = 124;

const HELP: &str = "\
vtd-vmm: run a multiboot kernel in a KVM VM with this project's Intel VT-d vIOMMU

Usage: vtd-vmm --kernel FILE [OPTIONS]

The machine is what QEMU presents with
  qemu-system-x86_64 -nodefaults -M q35,kernel-irqchip=split -device intel-iommu,PROPS
    -device edu -device isa-debug-exit,iobase=0xf4,iosize=0x4 -serial stdio -smp 1
    -m MIB -kernel FILE [-initrd MODULE] [-append STRING]
one vCPU, the VT-d unit at 0xfed90000, edu at 00:01.0, an IOAPIC at 0xfec00000 whose
remappable entries go through interrupt remapping, COM1 on standard output.

Options:
  --kernel FILE         multiboot (v1) kernel: an ELF image, or one with address fields
                        (QEMU -kernel)
  --module \"FILE[ ARGS]\" load FILE as a multiboot module whose command line is the whole
                        string (QEMU -initrd); may be repeated
  --cmdline STRING      kernel command line after the kernel's path (QEMU -append)
  --iommu PROPS         intel-iommu properties as for QEMU's -device intel-iommu,PROPS,
                        e.g. x-scalable-mode=on,x-flts=on,intremap=on (default: none)
  --memory MIB          guest RAM in MiB (default 256)
  --timeout SECONDS     stop the guest after SECONDS (exit status 124)
  --socket PATH         inspector socket: not available yet (vtd-inspect has no server)
  -v, --verbose         print the machine's setup and exit statistics on standard error
  -h, --help            print this help
  -V, --version         print the version

Environment: VTD_KVM_DEVICE names the KVM device (default /dev/kvm).

Exit status: (CODE << 1) | 1 when the guest writes CODE to port 0xf4 (as QEMU's
isa-debug-exit); 0 when the guest resets the machine; 2 for a usage, configuration, kernel
or KVM error; 4 when the guest crashes (triple fault, KVM internal error); 124 on --timeout.
";

/// What the command line asked for.
#[derive(Debug)]
struct Options {
    kernel: PathBuf,
    modules: Vec<String>,
    cmdline: String,
    iommu: String,
    memory_mib: u64,
    timeout: Option<u64>,
    verbose: bool,
}

/// How the command line ended.
#[derive(Debug)]
enum Parsed {
    Run(Box<Options>),
    Help,
    Version,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut kernel = None;
    let mut modules = Vec::new();
    let mut cmdline = String::new();
    let mut iommu = String::new();
    let mut memory_mib = 256u64;
    let mut timeout = None;
    let mut verbose = false;
    let mut socket = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Accept both `--opt value` and `--opt=value`.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs {what}"))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "-v" | "--verbose" => verbose = true,
            "--kernel" => kernel = Some(PathBuf::from(value("a file")?)),
            "--module" => modules.push(value("a file")?),
            "--cmdline" => cmdline = value("a string")?,
            "--iommu" => iommu = value("a property list")?,
            "--memory" => {
                let v = value("a size in MiB")?;
                memory_mib = v
                    .parse()
                    .map_err(|_| format!("--memory {v}: expected a size in MiB"))?;
            }
            "--timeout" => {
                let v = value("a number of seconds")?;
                timeout = Some(
                    v.parse()
                        .map_err(|_| format!("--timeout {v}: expected seconds"))?,
                );
            }
            "--socket" => socket = Some(value("a path")?),
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    if let Some(path) = socket {
        // Say so rather than pretend: there is no inspection server to listen on yet.
        return Err(format!(
            "--socket {path}: the inspector is not built yet (vtd-inspect has no server); \
             run without --socket"
        ));
    }
    let kernel = kernel.ok_or("no kernel given: use --kernel FILE (see --help)")?;
    let max_mib = (1u64 << 40) >> 20;
    if memory_mib << 20 < MIN_MEMORY || memory_mib > max_mib {
        return Err(format!(
            "--memory {memory_mib}: expected {} to {max_mib} MiB",
            MIN_MEMORY >> 20
        ));
    }
    Ok(Parsed::Run(Box::new(Options {
        kernel,
        modules,
        cmdline,
        iommu,
        memory_mib,
        timeout,
        verbose,
    })))
}

/// Everything checked before KVM is touched.
struct Prepared {
    config: VtdConfig,
    image: Vec<u8>,
    kernel: KernelImage,
    cmdline: String,
    modules: Vec<Module>,
}

fn prepare(opts: &Options) -> Result<Prepared, String> {
    let config = VtdConfig::from_qemu_props(&opts.iommu)
        .map_err(|e| format!("invalid --iommu `{}`: {e}", opts.iommu))?;
    let image = std::fs::read(&opts.kernel)
        .map_err(|e| format!("cannot read kernel `{}`: {e}", opts.kernel.display()))?;
    let kernel = KernelImage::parse(&image)
        .map_err(|e| format!("`{}` is not a multiboot kernel: {e}", opts.kernel.display()))?;
    let mut modules = Vec::new();
    for m in &opts.modules {
        // QEMU -initrd "FILE ARGS": the file is the first word, the command line the whole.
        let path = m.split(' ').next().unwrap_or_default();
        let data = std::fs::read(path).map_err(|e| format!("cannot read module `{path}`: {e}"))?;
        modules.push(Module {
            data,
            cmdline: m.clone(),
        });
    }
    // QEMU's multiboot loader passes "<kernel path> <-append string>".
    let cmdline = format!("{} {}", opts.kernel.display(), opts.cmdline);
    Ok(Prepared {
        config,
        image,
        kernel,
        cmdline,
        modules,
    })
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("vtd-vmm {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vtd-vmm: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
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
        Err(vm::VmError::Setup(e)) => {
            eprintln!("vtd-vmm: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(vm::VmError::Guest(e)) => {
            eprintln!("vtd-vmm: {e}");
            ExitCode::from(EXIT_GUEST_CRASH)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments() {
        let Ok(Parsed::Run(o)) = parse(&[
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
        ]) else {
            panic!("parse failed");
        };
        assert_eq!(o.kernel, PathBuf::from("k.elf"));
        assert_eq!(o.iommu, "intremap=on");
        assert_eq!(o.memory_mib, 128);
        assert_eq!(o.modules, vec!["m a b".to_string(), "n".into()]);
        assert_eq!(o.cmdline, "mode=legacy");
        assert_eq!(o.timeout, Some(30));
        assert!(o.verbose);
        assert!(matches!(parse(&["--help"]), Ok(Parsed::Help)));
        assert!(matches!(parse(&["-V"]), Ok(Parsed::Version)));
    }

    #[test]
    fn argument_errors() {
        assert!(parse(&[]).unwrap_err().contains("no kernel"));
        assert!(parse(&["--kernel"]).unwrap_err().contains("needs"));
        assert!(
            parse(&["--bogus"])
                .unwrap_err()
                .contains("unknown argument")
        );
        assert!(
            parse(&["--kernel", "k", "--memory", "x"])
                .unwrap_err()
                .contains("MiB")
        );
        assert!(
            parse(&["--kernel", "k", "--memory", "1"])
                .unwrap_err()
                .contains("4 to")
        );
        assert!(
            parse(&["--kernel", "k", "--socket", "/tmp/s"])
                .unwrap_err()
                .contains("not built yet")
        );
    }
}
