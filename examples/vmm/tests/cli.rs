//! vtd-vmm's command line: help, and a clear message with exit status 2 for each way a run
//! cannot start (no kernel, unreadable kernel, not a multiboot image, bad `--iommu`, no KVM,
//! `--socket`). Plus a hand-assembled kernel that checks serial output and the isa-debug-exit
//! status mapping without needing gcc.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Run, kvm_available, run_bounded, vmm};

fn vtd_vmm(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(vmm());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_bounded(cmd, Duration::from_secs(60))
}

fn tmp(name: &str, bytes: &[u8]) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn multiboot_header(flags: u32) -> Vec<u8> {
    let magic = 0x1bad_b002u32;
    [magic, flags, 0u32.wrapping_sub(magic.wrapping_add(flags))]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// An ELF32 multiboot kernel at 1 MiB whose code prints "ok\n" on COM1 and writes 0x2a to
/// port 0xf4 (32-bit protected mode, as the multiboot entry state gives it).
fn tiny_kernel() -> Vec<u8> {
    let mut code = multiboot_header(0x3);
    code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov $0x3f8, %dx
    for b in b"ok\n" {
        code.extend_from_slice(&[0xb0, *b, 0xee]); // mov $b, %al; out %al, %dx
    }
    code.extend_from_slice(&[0xb8, 0x2a, 0, 0, 0, 0xe7, 0xf4]); // mov $0x2a, %eax; out %eax, $0xf4
    code.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp .-1
    let mut f = vec![0u8; 0x54];
    f[0..7].copy_from_slice(b"\x7fELF\x01\x01\x01");
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..28].copy_from_slice(&0x10_000cu32.to_le_bytes()); // entry after the header
    f[28..32].copy_from_slice(&0x34u32.to_le_bytes()); // phoff
    f[40..42].copy_from_slice(&0x34u16.to_le_bytes()); // ehsize
    f[42..44].copy_from_slice(&32u16.to_le_bytes()); // phentsize
    f[44..46].copy_from_slice(&1u16.to_le_bytes()); // phnum
    for (i, v) in [
        1u32,
        0x54,
        0x10_0000,
        0x10_0000,
        code.len() as u32,
        code.len() as u32,
        5,
        0x1000,
    ]
    .iter()
    .enumerate()
    {
        f[0x34 + 4 * i..0x38 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&code);
    f
}

#[test]
fn help_and_version() {
    let r = vtd_vmm(&["--help"], &[]);
    assert_eq!(r.code, Some(0));
    assert!(
        r.stdout.contains("Usage: vtd-vmm --kernel FILE"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("--iommu <PROPS>"));
    assert!(r.stdout.contains("RUST_LOG"));
    let r = vtd_vmm(&["--version"], &[]);
    assert_eq!(r.code, Some(0));
    assert!(r.stdout.starts_with("vtd-vmm "));
}

#[test]
fn usage_errors() {
    for (args, message) in [
        (&[][..], "no kernel given"),
        (
            &["--kernel"][..],
            "a value is required for '--kernel <FILE>'",
        ),
        (&["--frobnicate"][..], "unexpected argument '--frobnicate'"),
        (
            &["--kernel", "k", "--memory", "lots"][..],
            "invalid value 'lots' for '--memory <MIB>': expected a size in MiB",
        ),
        (
            &["--kernel", "k", "--memory", "2"][..],
            "invalid value '2' for '--memory <MIB>': expected 4 to",
        ),
        (
            &["--kernel", "k", "--socket-linger", "5"][..],
            "the following required arguments were not provided:\n  --socket <PATH>",
        ),
    ] {
        let r = vtd_vmm(args, &[]);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(
            r.stderr.contains(message),
            "{args:?}: stderr `{}`",
            r.stderr
        );
        assert!(r.stdout.is_empty());
    }
}

/// A non-UTF-8 argument is a usage error, not a panic (`std::env::args` would panic).
#[test]
fn non_utf8_argument_is_a_usage_error() {
    use std::os::unix::ffi::OsStrExt;
    let mut cmd = Command::new(vmm());
    cmd.arg("--iommu")
        .arg(std::ffi::OsStr::from_bytes(b"x-flts=\xff"));
    let r = run_bounded(cmd, Duration::from_secs(60));
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("invalid UTF-8"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// A kernel file that never ends is refused once it exceeds guest RAM, instead of being read
/// until the host runs out of memory.
#[test]
fn endless_kernel_is_refused() {
    let r = vtd_vmm(&["--kernel", "/dev/zero", "--memory", "16"], &[]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr
            .contains("kernel `/dev/zero` is larger than the guest's 16 MiB of RAM"),
        "{}",
        r.stderr
    );
}

#[test]
fn kernel_errors() {
    let r = vtd_vmm(&["--kernel", "/nonexistent/kernel.elf"], &[]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr
            .contains("cannot read kernel `/nonexistent/kernel.elf`: No such file"),
        "{}",
        r.stderr
    );
    let junk = tmp("junk.bin", &[0x55; 10000]);
    let r = vtd_vmm(&["--kernel", junk.to_str().unwrap()], &[]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr
            .contains("is not a multiboot kernel: no multiboot header"),
        "{}",
        r.stderr
    );
    let mut not_elf = multiboot_header(0x3);
    not_elf.extend_from_slice(&[0; 64]);
    let not_elf = tmp("not-elf.bin", &not_elf);
    let r = vtd_vmm(&["--kernel", not_elf.to_str().unwrap()], &[]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("not an ELF file"), "{}", r.stderr);
    let mut arm = tiny_kernel();
    arm[18] = 40; // EM_ARM
    let arm = tmp("arm.elf", &arm);
    let r = vtd_vmm(&["--kernel", arm.to_str().unwrap()], &[]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains("unsupported ELF: not an x86"),
        "{}",
        r.stderr
    );
    // More program headers than MAX_PHDRS (1024) claimed: refused on the count.
    for phnum in [1025u16, u16::MAX] {
        let mut many = tiny_kernel();
        many[44..46].copy_from_slice(&phnum.to_le_bytes());
        let many = tmp(&format!("phnum-{phnum}.elf"), &many);
        let r = vtd_vmm(&["--kernel", many.to_str().unwrap()], &[]);
        assert_eq!(r.code, Some(2), "{}", r.stderr);
        assert!(
            r.stderr
                .contains("malformed image: no or too many program headers"),
            "{}",
            r.stderr
        );
    }
    let kernel = tmp("tiny-module.elf", &tiny_kernel());
    let r = vtd_vmm(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--module",
            "/nonexistent/module arg",
        ],
        &[],
    );
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr
            .contains("cannot read module `/nonexistent/module`"),
        "{}",
        r.stderr
    );
}

#[test]
fn iommu_property_errors() {
    let kernel = tmp("tiny-iommu.elf", &tiny_kernel());
    let k = kernel.to_str().unwrap();
    for (props, message) in [
        ("x-flts=on", "x-flts is only available in scalable mode"),
        ("frobnicate=on", "unknown intel-iommu property `frobnicate`"),
        ("aw-bits=52", "aw-bits"),
        ("caching-mode=maybe", "caching-mode"),
    ] {
        let r = vtd_vmm(&["--kernel", k, "--iommu", props], &[]);
        assert_eq!(r.code, Some(2), "{props}: {r:?}");
        assert!(
            r.stderr.contains(&format!("invalid --iommu `{props}`")) && r.stderr.contains(message),
            "{props}: stderr `{}`",
            r.stderr
        );
    }
}

#[test]
fn no_kvm() {
    let kernel = tmp("tiny-no-kvm.elf", &tiny_kernel());
    let r = vtd_vmm(
        &["--kernel", kernel.to_str().unwrap()],
        &[("VTD_KVM_DEVICE", "/nonexistent/kvm")],
    );
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains("cannot open /nonexistent/kvm") && r.stderr.contains("KVM"),
        "{}",
        r.stderr
    );
}

#[test]
fn tiny_kernel_serial_and_exit_status() {
    if !kvm_available() {
        eprintln!("NOTICE: /dev/kvm cannot be opened: skipping");
        return;
    }
    let kernel = tmp("tiny.elf", &tiny_kernel());
    let r = vtd_vmm(
        &["--kernel", kernel.to_str().unwrap(), "--timeout", "50"],
        &[],
    );
    assert_eq!(r.stdout, "ok\n", "{r:?}");
    assert_eq!(r.code, Some((0x2a << 1) | 1), "{r:?}");
}

/// `--self-test` runs the built-in guest: no kernel of the user's own is needed.
#[test]
fn self_test_runs_the_built_in_guest() {
    if !kvm_available() {
        eprintln!("NOTICE: /dev/kvm cannot be opened: skipping");
        return;
    }
    let r = vtd_vmm(
        &[
            "--self-test",
            "--iommu",
            "x-scalable-mode=on,x-flts=on,intremap=on",
            "--timeout",
            "50",
        ],
        &[],
    );
    assert!(
        r.stdout.ends_with("vtd-guest: passed (0 failed)\n"),
        "{r:?}"
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    let both = vtd_vmm(&["--self-test", "--kernel", "k.elf"], &[]);
    assert_eq!(both.code, Some(2), "{both:?}");
    assert!(both.stderr.contains("cannot be used with"), "{both:?}");
}
