//! The corpus under `conformance/scenarios`: every file parses, and `vtd-conformance diff`
//! over all of them passes (QEMU 10.0.2 is the oracle, vtd-vmm the machine under test).
//!
//! Without qemu-system-x86_64 (or `VTD_QEMU`) the diff test prints a skip notice, or fails when `CI` is set.
//! vtd-vmm comes from `VTD_VMM`, else it is built here (`cargo build --profile test -p
//! vtd-vmm --bin vtd-vmm`, sharing this build's target directory).
//! `VTD_CONFORMANCE_QEMU_ONLY=1` runs the corpus on QEMU alone (transcripts checked for
//! form, not compared) for use while vtd-vmm is not available.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use vtd_conformance::scenario::load_scenario;
use vtd_conformance::{corpus_dir, expand_operands};

#[test]
fn corpus_parses() {
    let files = expand_operands(&[corpus_dir().to_path_buf()]).expect("corpus directory");
    assert!(
        files.len() >= 40,
        "the corpus has {} scenarios, fewer than 40",
        files.len()
    );
    let mut names = std::collections::BTreeSet::new();
    for f in &files {
        let s = load_scenario(f).unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.steps.is_empty(), "{}: no steps", f.display());
        assert!(
            s.steps.iter().any(|st| st.observes()),
            "{}: observes nothing",
            f.display()
        );
        assert!(names.insert(s.name.clone()), "duplicate name {}", s.name);
        let stem = f.file_stem().map(|s| s.to_string_lossy().into_owned());
        assert_eq!(
            stem.as_deref(),
            Some(s.name.as_str()),
            "file name and scenario name differ"
        );
    }
}

/// The hand-written examples of README.md's "Scenario format" section are part of the corpus
/// (so they also run in the QEMU diff) and parse.
#[test]
fn format_examples_are_in_the_corpus() {
    for name in ["example-identity-x-flts", "example-legacy-ss-4level-4k"] {
        let f = corpus_dir().join(format!("{name}.json"));
        let s = load_scenario(&f).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.name, name);
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// vtd-vmm: `VTD_VMM`, or built with this build's profile and target directory.
fn vmm_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("VTD_VMM") {
        return Ok(PathBuf::from(p));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args([
            "build",
            "--profile",
            "test",
            "-p",
            "vtd-vmm",
            "--bin",
            "vtd-vmm",
        ])
        .current_dir(workspace_root())
        .output()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building vtd-vmm failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // This test runs from <target>/<profile>/deps; the binary lands in <target>/<profile>.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the target directory")?;
    let vmm = dir.join("vtd-vmm");
    if vmm.is_file() {
        Ok(vmm)
    } else {
        Err(format!("{} was not produced by the build", vmm.display()))
    }
}

#[test]
fn corpus_matches_qemu() {
    let qemu = match vtd_testkit::discovery::qemu10() {
        Ok(q) => q,
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("QEMU 10.x is required in CI: {e}");
            }
            // Straight to the stderr handle: libtest would swallow eprintln! of a passing test.
            let _ = writeln!(std::io::stderr(), "SKIPPED corpus_matches_qemu: {e}");
            return;
        }
    };
    let runner = env!("CARGO_BIN_EXE_vtd-conformance");
    let mut cmd = Command::new(runner);
    let qemu_only = std::env::var_os("VTD_CONFORMANCE_QEMU_ONLY").is_some();
    if qemu_only {
        cmd.args(["run", "--target", "qemu"]);
    } else {
        let vmm = vmm_binary()
            .unwrap_or_else(|e| panic!("vtd-vmm is needed to compare against QEMU: {e}"));
        cmd.arg("diff").arg("--vmm").arg(vmm);
    }
    cmd.arg("--qemu").arg(&qemu.binary);
    let out = cmd.arg(corpus_dir()).output().expect("run vtd-conformance");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Show only what failed (and the summary) to keep the test log readable.
    let mut header = "";
    for line in stdout.lines() {
        if qemu_only {
            if line.starts_with("# ") {
                header = line;
            } else if line.starts_with("error") {
                println!("{header}\n{line}");
            }
        } else if !line.starts_with("ok ") {
            println!("{line}");
        }
    }
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "vtd-conformance over the corpus failed ({})",
        out.status
    );
}
