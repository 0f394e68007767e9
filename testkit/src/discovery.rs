//! Finding the machines the tests compare: KVM (for vtd-vmm) and QEMU 10.x (the reference
//! peer).
//!
//! Tests that need a machine the host lacks skip with a notice instead of failing, except in
//! CI, which installs both; the reasons here say what is missing and how to get it, so the
//! notice is actionable. QEMU is checked by version, not just presence: the corpus and the
//! self-test transcripts were validated against QEMU 10.0.2 (`x-flts`, the scalable-mode
//! properties and the edu DMA mask do not exist in Debian bookworm's 7.2), so an older QEMU
//! would produce differences that are not vtd's.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The KVM device vtd-vmm opens by default.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// Why KVM cannot be used here.
#[derive(Debug, thiserror::Error)]
#[error("cannot open {device} read-write ({source}): vtd-vmm needs KVM")]
pub struct KvmUnavailable {
    /// The device tried.
    pub device: PathBuf,
    /// What the OS said.
    pub source: std::io::Error,
}

/// Checks that `device` (normally [`KVM_DEVICE`]) can be opened read-write, as vtd-vmm does.
pub fn kvm_at(device: &Path) -> Result<(), KvmUnavailable> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map(drop)
        .map_err(|source| KvmUnavailable {
            device: device.to_path_buf(),
            source,
        })
}

/// Checks that [`KVM_DEVICE`] is usable.
pub fn kvm() -> Result<(), KvmUnavailable> {
    kvm_at(Path::new(KVM_DEVICE))
}

/// The QEMU binary's name on PATH.
pub const QEMU_BIN: &str = "qemu-system-x86_64";

/// The QEMU major version the project validates against (10.0.2).
pub const QEMU_MAJOR: u32 = 10;

/// How to get QEMU 10.0.2 on this project's Debian machines: the script adds Debian's
/// bookworm-backports suite from the mirror the machine's apt sources already name.
pub const QEMU_INSTALL: &str = "bash .ci/install-qemu (as root, in the repository: adds Debian's bookworm-backports suite from the mirror apt already uses, then installs qemu-system-x86)";

/// The QEMU binary to use: `VTD_QEMU` if set, else [`QEMU_BIN`] from PATH.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("VTD_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(QEMU_BIN))
}

/// A QEMU version, as `--version` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
}

impl QemuVersion {
    /// Parses the first line of `qemu-system-x86_64 --version`, e.g.
    /// `QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)`.
    pub fn parse(line: &str) -> Option<QemuVersion> {
        let rest = line.split("version ").nth(1)?;
        let number = rest.split_whitespace().next()?;
        let mut parts = number.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next().flatten().unwrap_or(0);
        let micro = parts.next().flatten().unwrap_or(0);
        Some(QemuVersion {
            major,
            minor,
            micro,
        })
    }
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// A QEMU binary that runs.
#[derive(Clone, Debug)]
pub struct Qemu {
    /// The binary (a name looked up in PATH, or a path).
    pub binary: PathBuf,
    /// The first line of its `--version`.
    pub version_line: String,
    /// Its version, when the line could be parsed.
    pub version: Option<QemuVersion>,
}

/// Why QEMU cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum QemuUnavailable {
    /// The binary could not be started.
    #[error("cannot run {} ({source}). Install QEMU 10.0.2:\n  {QEMU_INSTALL}", binary.display())]
    NotFound {
        /// The binary tried.
        binary: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `--version` failed.
    #[error("`{} --version` failed ({status}): {stderr}", binary.display())]
    VersionFailed {
        /// The binary tried.
        binary: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its standard error.
        stderr: String,
    },
    /// It runs, but is not QEMU 10.x.
    #[error("{} is `{version_line}`, not QEMU {QEMU_MAJOR}.x. Install QEMU 10.0.2:\n  {QEMU_INSTALL}", binary.display())]
    WrongVersion {
        /// The binary tried.
        binary: PathBuf,
        /// The first line of its `--version`.
        version_line: String,
    },
}

/// Runs `binary --version` and reports what it is.
pub fn probe_qemu(binary: &Path) -> Result<Qemu, QemuUnavailable> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| QemuUnavailable::NotFound {
            binary: binary.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(QemuUnavailable::VersionFailed {
            binary: binary.to_path_buf(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let version_line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    Ok(Qemu {
        binary: binary.to_path_buf(),
        version: QemuVersion::parse(&version_line),
        version_line,
    })
}

/// `binary`, if it is QEMU [`QEMU_MAJOR`].x.
pub fn qemu10_at(binary: &Path) -> Result<Qemu, QemuUnavailable> {
    let qemu = probe_qemu(binary)?;
    match qemu.version {
        Some(v) if v.major == QEMU_MAJOR => Ok(qemu),
        _ => Err(QemuUnavailable::WrongVersion {
            binary: qemu.binary,
            version_line: qemu.version_line,
        }),
    }
}

/// The QEMU of [`qemu_binary`], if it is QEMU [`QEMU_MAJOR`].x.
pub fn qemu10() -> Result<Qemu, QemuUnavailable> {
    qemu10_at(&qemu_binary())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_version_lines() {
        assert_eq!(
            QemuVersion::parse("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)"),
            Some(QemuVersion {
                major: 10,
                minor: 0,
                micro: 2
            })
        );
        assert_eq!(
            QemuVersion::parse("QEMU emulator version 7.2.15").map(|v| v.to_string()),
            Some("7.2.15".to_string())
        );
        assert_eq!(QemuVersion::parse("something else"), None);
        assert_eq!(QemuVersion::parse("QEMU emulator version x.y"), None);
    }

    #[test]
    fn missing_qemu_names_the_install_line() {
        let e = qemu10_at(Path::new("/nonexistent/qemu-system-x86_64")).unwrap_err();
        assert!(matches!(e, QemuUnavailable::NotFound { .. }));
        assert!(e.to_string().contains("bookworm-backports"), "{e}");
    }

    #[test]
    fn a_program_that_is_not_qemu_is_refused() {
        // `true --version` succeeds with no version line.
        let e = qemu10_at(Path::new("true")).unwrap_err();
        assert!(matches!(e, QemuUnavailable::WrongVersion { .. }), "{e}");
        let e = qemu10_at(Path::new("false")).unwrap_err();
        assert!(matches!(e, QemuUnavailable::VersionFailed { .. }), "{e}");
    }

    #[test]
    fn missing_kvm_device_is_reported() {
        let e = kvm_at(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/kvm"), "{e}");
    }
}
