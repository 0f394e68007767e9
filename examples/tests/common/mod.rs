//! Shared by the integration tests: building vtd-guest once per test binary, running
//! programs with a time limit, and finding KVM and QEMU.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The vtd-vmm binary cargo built for these tests.
pub fn vmm() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vtd-vmm"))
}

/// vtd-guest, built from examples/guest with the host's gcc and binutils (once per test
/// binary, in a directory of its own so concurrent test binaries do not race).
pub fn guest_kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("vtd-guest-{}", std::process::id()));
        let started = Instant::now();
        let kernel = vtd_examples::guest::build(&vtd_examples::guest::source_dir(), &out)
            .unwrap_or_else(|e| panic!("building vtd-guest failed: {e}"));
        eprintln!(
            "built {} in {:.1} s",
            kernel.display(),
            started.elapsed().as_secs_f64()
        );
        kernel
    })
}

/// What a bounded run produced.
#[derive(Debug)]
pub struct Run {
    /// Exit status (None: killed at the time limit or by a signal).
    pub status: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

/// Runs `cmd` with no standard input, killing it after `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Run {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    Run {
        status,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}

/// Whether KVM can be used here (vtd-vmm needs /dev/kvm read-write).
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// qemu-system-x86_64, if it is on PATH.
pub fn qemu() -> Option<PathBuf> {
    let out = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from("qemu-system-x86_64"))
}
