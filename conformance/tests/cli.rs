//! vtd-conformance's command line as a user meets it: usage errors exit 2 with clap's message,
//! a scenario the checker refuses exits 1 with the reason, and hostile input (non-UTF-8
//! arguments, register offsets near u64::MAX) never panics.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use vtd_testkit::process::{Output, run_bounded};

fn conformance(args: &[&std::ffi::OsStr]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vtd-conformance"));
    cmd.args(args);
    run_bounded(cmd, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"))
}

fn scenario_file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("conformance-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn usage_errors_exit_2() {
    for (args, message) in [
        (&[][..], "Usage: vtd-conformance"),
        (&["frobnicate"][..], "unrecognized subcommand 'frobnicate'"),
        (&["run", "x.json"][..], "--target <TARGET>"),
        (
            &["run", "--target", "kvm", "x.json"][..],
            "invalid value 'kvm'",
        ),
        (
            &["diff", "--timeout", "0", "x.json"][..],
            "expected a positive number of seconds",
        ),
        (&["encode", "x.json"][..], "-o <OUT>"),
    ] {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        let r = conformance(&args);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(r.stderr.contains(message), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
    }
}

#[test]
fn help_and_version_exit_0() {
    let r = conformance(&["--help".as_ref()]);
    assert_eq!(r.code, Some(0), "{r:?}");
    for cmd in ["run", "diff", "check", "encode", "interpreter", "RUST_LOG"] {
        assert!(r.stdout.contains(cmd), "help lacks {cmd}: {}", r.stdout);
    }
    let r = conformance(&["--version".as_ref()]);
    assert_eq!(r.code, Some(0));
    assert!(r.stdout.starts_with("vtd-conformance "), "{}", r.stdout);
}

/// `std::env::args` panics on a non-UTF-8 argument; clap over `args_os` reports it.
#[test]
fn non_utf8_argument_is_a_usage_error() {
    let bad = std::ffi::OsStr::from_bytes(b"scen\xffario.json");
    let r = conformance(&["check".as_ref(), "--frobnicate".as_ref(), bad]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let r = conformance(&[std::ffi::OsStr::from_bytes(b"ch\xffeck")]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// An `mmio_read` offset near u64::MAX overflowed `off + size` in the checker (a panic in
/// debug builds, a pass in release builds); it is refused like any offset outside the window.
#[test]
fn check_refuses_an_overflowing_register_offset() {
    let f = scenario_file(
        "overflow.json",
        r#"{"name":"overflow","steps":[{"op":"mmio_read","off":"0xfffffffffffffffc","size":4}]}"#,
    );
    let r = conformance(&["check".as_ref(), f.as_os_str()]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.contains("register window"), "{}", r.stdout);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// The top 128 KiB of RAM belong to QEMU's firmware: `check` refuses a scenario touching
/// them (QEMU's interpreter would refuse the step, while vtd-vmm once ran it).
#[test]
fn check_refuses_the_firmware_reserved_top_of_ram() {
    let f = scenario_file(
        "top.json",
        r#"{"name":"top","memory_mb":256,"steps":[{"op":"dump","gpa":"0xfffffe0","len":16}]}"#,
    );
    let r = conformance(&["check".as_ref(), f.as_os_str()]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stdout.contains("128 KiB the firmware keeps"),
        "{}",
        r.stdout
    );
}
