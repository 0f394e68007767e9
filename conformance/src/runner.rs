//! Running a scenario on QEMU or on vtd-vmm, each run bounded by a timeout.

use crate::encode::encode;
use crate::scenario::Scenario;
use crate::transcript::{self, Transcript};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use vtd_testkit::process::run_bounded;

pub use vtd_testkit::discovery::{QEMU_BIN, QEMU_INSTALL, qemu_binary as default_qemu};

/// Default per-run timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Status a machine exits with when the interpreter wrote 0 to port 0xf4: (0 << 1) | 1.
pub const EXIT_OK: i32 = 1;

/// The interpreter image (elf32-i386 multiboot kernel) built by build.rs.
pub static INTERPRETER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/interp.elf"));

/// Which machine runs a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// qemu-system-x86_64 (TCG) with its intel-iommu and edu.
    Qemu,
    /// This project's vtd-vmm.
    Vmm,
}

impl Target {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Qemu => "qemu",
            Target::Vmm => "vmm",
        }
    }
}

/// Where the machines are and how long a run may take.
#[derive(Clone, Debug)]
pub struct Machines {
    /// QEMU binary (a name looked up in PATH, or a path).
    pub qemu: PathBuf,
    /// vtd-vmm binary, when found.
    pub vmm: Option<PathBuf>,
    /// Per-run timeout.
    pub timeout: Duration,
}

/// Scratch directory holding the interpreter image and encoded modules; removed on drop.
#[derive(Debug)]
pub struct WorkDir {
    dir: PathBuf,
    kernel: PathBuf,
}

static WORKDIR_SEQ: AtomicU64 = AtomicU64::new(0);
static MODULE_SEQ: AtomicU64 = AtomicU64::new(0);

impl WorkDir {
    /// Creates the directory under the system temp dir and writes the interpreter into it.
    pub fn new() -> Result<WorkDir, String> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "vtd-conformance-{}-{stamp}-{}",
            std::process::id(),
            WORKDIR_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let kernel = dir.join("interp.elf");
        std::fs::write(&kernel, INTERPRETER).map_err(|e| format!("{}: {e}", kernel.display()))?;
        Ok(WorkDir { dir, kernel })
    }

    /// Path of the interpreter image.
    pub fn kernel(&self) -> &Path {
        &self.kernel
    }

    /// Encodes a scenario into a fresh module file.
    pub fn module(&self, scenario: &Scenario) -> Result<PathBuf, String> {
        let bytes = encode(scenario)?;
        let path = self.dir.join(format!(
            "scenario-{}.bin",
            MODULE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Checks that QEMU can be started and returns its `--version` line; the error carries the
/// install line.
pub fn check_qemu(qemu: &Path) -> Result<String, String> {
    vtd_testkit::discovery::probe_qemu(qemu)
        .map(|q| q.version_line)
        .map_err(|e| e.to_string())
}

/// Looks for vtd-vmm: `VTD_VMM`, then next to this executable (and its parent, for test
/// binaries in target/*/deps), then PATH.
pub fn find_vmm() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VTD_VMM") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        if let Some(d) = dir {
            let cand = d.join("vtd-vmm");
            if cand.is_file() {
                return Some(cand);
            }
            dir = d.parent();
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("vtd-vmm"))
            .find(|p| p.is_file())
    })
}

/// The QEMU command line for a scenario (see README.md, "Machines").
pub fn qemu_command(qemu: &Path, scenario: &Scenario, kernel: &Path, module: &Path) -> Command {
    let mut c = Command::new(qemu);
    let iommu = if scenario.iommu.is_empty() {
        "intel-iommu".to_string()
    } else {
        format!("intel-iommu,{}", scenario.iommu)
    };
    c.args([
        "-nodefaults",
        "-M",
        "q35,kernel-irqchip=split",
        "-accel",
        "tcg",
    ])
    .args(["-device", &iommu])
    .args(["-device", "edu,addr=01.0,dma_mask=0xffffffffffffffff"])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x4"])
    .args(["-serial", "stdio", "-display", "none", "-no-reboot"])
    .args(["-m", &scenario.memory_mb.to_string(), "-smp", "1"])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(module);
    c
}

/// The vtd-vmm command line for a scenario.
pub fn vmm_command(vmm: &Path, scenario: &Scenario, kernel: &Path, module: &Path) -> Command {
    let mut c = Command::new(vmm);
    c.arg("--iommu")
        .arg(&scenario.iommu)
        .arg("--memory")
        .arg(scenario.memory_mb.to_string())
        .arg("--kernel")
        .arg(kernel)
        .arg("--module")
        .arg(module);
    c
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Runs one scenario on one machine and returns its transcript.
pub fn run_scenario(
    machines: &Machines,
    work: &WorkDir,
    target: Target,
    scenario: &Scenario,
) -> Result<Transcript, String> {
    let module = work.module(scenario)?;
    let cmd = match target {
        Target::Qemu => qemu_command(&machines.qemu, scenario, work.kernel(), &module),
        Target::Vmm => {
            let vmm = machines.vmm.as_ref().ok_or_else(|| {
                "vtd-vmm not found: build it (cargo build -p vtd-vmm), \
                 or point VTD_VMM / --vmm at it"
                    .to_string()
            })?;
            vmm_command(vmm, scenario, work.kernel(), &module)
        }
    };
    let out = run_bounded(cmd, machines.timeout).map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&module);
    let out = out?;
    let transcript = transcript::extract(&out.stdout);
    let why = if out.timed_out {
        Some(format!("timed out after {:?}", machines.timeout))
    } else if out.code != Some(EXIT_OK) {
        Some(match out.code {
            Some(c) if c & 1 == 1 => format!("exit status {c} (interpreter exit code {})", c >> 1),
            Some(c) => format!("exit status {c}"),
            None => "ended by a signal".to_string(),
        })
    } else {
        None
    };
    match (transcript, why) {
        (Ok(t), None) => Ok(t),
        (Ok(_), Some(w)) => Err(format!("{} {w}", target.name())),
        (Err(e), w) => {
            let mut msg = format!("{}: {e}", target.name());
            if let Some(w) = w {
                msg.push_str(&format!(" ({w})"));
            }
            let err_tail = tail(&out.stderr, 8);
            if !err_tail.trim().is_empty() {
                msg.push_str(&format!(
                    "\n  stderr: {}",
                    err_tail.replace('\n', "\n          ")
                ));
            }
            Err(msg)
        }
    }
}

/// Runs `jobs` in parallel on at most `threads` threads; results come back in input order.
pub fn parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<R>>> =
        std::sync::Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1).min(items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    if let Ok(mut v) = results.lock() {
                        v[i] = Some(r);
                    }
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_is_a_multiboot_elf32() {
        assert_eq!(&INTERPRETER[0..4], b"\x7fELF");
        assert_eq!(INTERPRETER[4], 1, "ELFCLASS32");
        assert_eq!(u16::from_le_bytes([INTERPRETER[18], INTERPRETER[19]]), 3); // EM_386
        let magic = 0x1bad_b002u32.to_le_bytes();
        let at = INTERPRETER
            .windows(4)
            .position(|w| w == magic)
            .expect("multiboot header");
        assert!(at < 8192 && at % 4 == 0);
    }

    #[test]
    fn qemu_command_line() {
        let s = crate::scenario::parse_scenario(
            "q.json",
            r#"{"iommu":"x-scalable-mode=on","memory_mb":128,"steps":[]}"#,
        )
        .unwrap();
        let c = qemu_command(Path::new("qemu"), &s, Path::new("k"), Path::new("m"));
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-device intel-iommu,x-scalable-mode=on "));
        assert!(joined.contains("-M q35,kernel-irqchip=split -accel tcg"));
        assert!(joined.contains("-m 128 -smp 1"));
        assert!(joined.ends_with("-kernel k -initrd m"));
        let mut d = s.clone();
        d.iommu.clear();
        let c = qemu_command(Path::new("qemu"), &d, Path::new("k"), Path::new("m"));
        assert!(c.get_args().any(|a| a == "intel-iommu"));
        let v = vmm_command(Path::new("vmm"), &s, Path::new("k"), Path::new("m"));
        let args: Vec<String> = v
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--iommu",
                "x-scalable-mode=on",
                "--memory",
                "128",
                "--kernel",
                "k",
                "--module",
                "m"
            ]
        );
    }

    #[test]
    fn missing_qemu_names_the_install_line() {
        let e = check_qemu(Path::new("/nonexistent/qemu-system-x86_64")).unwrap_err();
        assert!(e.contains("bookworm-backports"), "{e}");
    }

    #[test]
    fn parallel_keeps_order() {
        let v: Vec<u32> = (0..20).collect();
        assert_eq!(
            parallel(&v, 3, |x| x * 2),
            (0..20).map(|x| x * 2).collect::<Vec<_>>()
        );
    }
}
