//! Running a scenario on QEMU or on vtd-vmm, each run bounded by a timeout.

use crate::encode::encode;
use crate::scenario::Scenario;
use crate::transcript::{self, Transcript};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How to get QEMU 10.0.2 on this project's Debian machines.
pub const QEMU_INSTALL: &str = "echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/bookworm-backports.list && apt-get update && apt-get install -y -t bookworm-backports qemu-system-x86";

/// Default QEMU binary.
pub const QEMU_BIN: &str = "qemu-system-x86_64";

/// The QEMU binary to use: `VTD_QEMU` if set, else [`QEMU_BIN`] from PATH.
pub fn default_qemu() -> PathBuf {
    std::env::var_os("VTD_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(QEMU_BIN))
}

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

/// Checks that QEMU can be started; the error carries the install line.
pub fn check_qemu(qemu: &Path) -> Result<String, String> {
    match Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()),
        Ok(o) => Err(format!(
            "`{} --version` failed ({}): {}",
            qemu.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!(
            "cannot run {} ({e}). Install QEMU 10.0.2:\n  {QEMU_INSTALL}",
            qemu.display()
        )),
    }
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

/// The QEMU command line for a scenario (see SCENARIOS.md).
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

/// What one process run produced.
#[derive(Debug)]
pub struct ProcessOutput {
    /// Exit code (None when killed or ended by a signal).
    pub code: Option<i32>,
    /// Whether the timeout ended it.
    pub timed_out: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs a command with null stdin, collecting its output; kills it after `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<ProcessOutput, String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out_t = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err_t = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
        if start.elapsed() >= timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(ProcessOutput {
        code: status.and_then(|s| s.code()),
        timed_out,
        stdout,
        stderr,
    })
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
                "vtd-vmm not found: build it (cargo build -p vtd-examples --bin vtd-vmm), \
                 or point VTD_VMM / --vmm at it"
                    .to_string()
            })?;
            vmm_command(vmm, scenario, work.kernel(), &module)
        }
    };
    let out = run_bounded(cmd, machines.timeout);
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
    fn bounded_run_kills_on_timeout() {
        let mut c = Command::new("sleep");
        c.arg("30");
        let t = Instant::now();
        let out = run_bounded(c, Duration::from_millis(200)).unwrap();
        assert!(out.timed_out);
        assert!(t.elapsed() < Duration::from_secs(10));
        let out = run_bounded(Command::new("true"), Duration::from_secs(10)).unwrap();
        assert_eq!(out.code, Some(0));
        assert!(!out.timed_out);
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
