//! vtd-guest, the project's bare-metal VT-d test kernel, on vtd-vmm and (when installed) on
//! QEMU 10.0.2 with the command line vtd-vmm's --help documents: legacy and scalable
//! first-stage translation, DMA through edu, faults, interrupt remapping. On both machines the
//! kernel must pass (isa-debug-exit code 0, status 1), and the two serial transcripts must be
//! identical.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Run, guest_kernel, kvm_available, qemu, run_bounded, vmm};

const LIMIT: Duration = Duration::from_secs(120);
/// isa-debug-exit with code 0: (0 << 1) | 1.
const PASSED: Option<i32> = Some(1);

fn run_vmm(props: &str, cmdline: &str) -> Run {
    let mut cmd = Command::new(vmm());
    cmd.args([
        "--iommu",
        props,
        "--memory",
        "256",
        "--timeout",
        "100",
        "--kernel",
    ])
    .arg(guest_kernel());
    if !cmdline.is_empty() {
        cmd.args(["--cmdline", cmdline]);
    }
    let run = run_bounded(cmd, LIMIT);
    eprintln!(
        "vtd-vmm --iommu {props} --cmdline '{cmdline}': status {:?} in {:.2} s",
        run.code,
        run.elapsed.as_secs_f64()
    );
    run
}

fn run_qemu(props: &str, cmdline: &str) -> Option<Run> {
    let Some(qemu) = qemu() else {
        eprintln!(
            "NOTICE: no QEMU 10.x: skipping the comparison with QEMU \
             (CI installs qemu-system-x86 from bookworm-backports)"
        );
        return None;
    };
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-nodefaults",
        "-M",
        "q35,kernel-irqchip=split",
        "-accel",
        "tcg",
        "-device",
        &format!("intel-iommu,{props}"),
        "-device",
        "edu,addr=01.0,dma_mask=0xffffffffffffffff",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x4",
        "-serial",
        "stdio",
        "-display",
        "none",
        "-no-reboot",
        "-m",
        "256",
        "-smp",
        "1",
        "-kernel",
    ])
    .arg(guest_kernel());
    if !cmdline.is_empty() {
        cmd.args(["-append", cmdline]);
    }
    let run = run_bounded(cmd, LIMIT);
    eprintln!(
        "qemu intel-iommu,{props} -append '{cmdline}': status {:?} in {:.2} s",
        run.code,
        run.elapsed.as_secs_f64()
    );
    Some(run)
}

/// Runs the guest on vtd-vmm (and QEMU), checks it passed with `expected` lines in its
/// transcript, and that QEMU printed the same transcript with the same status.
fn check(props: &str, cmdline: &str, expected: &[&str]) {
    if !kvm_available() {
        eprintln!("NOTICE: /dev/kvm cannot be opened: skipping the vtd-vmm run");
        return;
    }
    let vmm = run_vmm(props, cmdline);
    assert_eq!(
        vmm.code, PASSED,
        "vtd-guest did not pass on vtd-vmm\nstdout:\n{}\nstderr:\n{}",
        vmm.stdout, vmm.stderr
    );
    assert!(
        vmm.stdout.ends_with("vtd-guest: passed (0 failed)\n"),
        "transcript:\n{}",
        vmm.stdout
    );
    assert!(
        !vmm.stdout.contains("FAILED"),
        "transcript:\n{}",
        vmm.stdout
    );
    for line in expected {
        assert!(
            vmm.stdout.lines().any(|l| l == *line),
            "missing `{line}` in the transcript:\n{}",
            vmm.stdout
        );
    }
    if let Some(qemu) = run_qemu(props, cmdline) {
        assert_eq!(
            qemu.code, vmm.code,
            "exit status differs from QEMU's\nQEMU stdout:\n{}\nQEMU stderr:\n{}",
            qemu.stdout, qemu.stderr
        );
        if qemu.stdout != vmm.stdout {
            let diff: Vec<String> = qemu
                .stdout
                .lines()
                .zip(vmm.stdout.lines())
                .enumerate()
                .filter(|(_, (q, v))| q != v)
                .map(|(i, (q, v))| format!("line {}: qemu `{q}` vs vtd-vmm `{v}`", i + 1))
                .collect();
            panic!(
                "transcripts differ ({} vs {} lines):\n{}\nQEMU:\n{}",
                qemu.stdout.lines().count(),
                vmm.stdout.lines().count(),
                diff.join("\n"),
                qemu.stdout
            );
        }
    }
}

const PLATFORM: &[&str] = &[
    "multiboot flags 0x24f",
    "fw_cfg cpus 1",
    "dmar drhd base 0xfed90000 segment 0",
    "check dmar covers 00:01.0: ok",
    "pci 00:01.0 id 0x11e81234 class-rev 0xff0010",
    "pci cf8 low bits: word 0x11e8 byte 0x11",
    "edu bar0 0xfea00000 sizing 0xfff00000 bar1 0x0",
    "edu command 0x103 line 10 pin 1",
    "edu cap 0x40: 0x800005",
    "edu liveness 0xedcba987",
    "edu factorial(10) 3628800",
    "check dma copy A -> C: ok",
    "check dma copy A|B -> C: ok",
    "check read-only page untouched: ok",
];

const INTERRUPT_REMAPPING: &[&str] = &[
    "msi remapped: vector 0x40 count 1",
    "dma completion interrupt: count 2",
    "blocked msi: frcd f 1 fr 0x22 sid 0x8 index 5",
    "intx remapped: vector 0x41 count 2",
    "ioapic rte10 0x8041",
];

#[test]
fn legacy_mode_with_interrupt_remapping() {
    let mut expected = vec![
        "vtd ver 0x10 cap 0xd2008c222f0606 ecap 0xf00f4a",
        "mode legacy",
        "tables legacy second-stage levels 4",
        "write fault: frcd f 1 t 0 fr 0x5 sid 0x8 addr 0x10003000",
        "read fault: frcd f 1 t 1 fr 0x6 sid 0x8 addr 0x10008000",
    ];
    expected.extend_from_slice(PLATFORM);
    expected.extend_from_slice(INTERRUPT_REMAPPING);
    check("intremap=on", "", &expected);
}

#[test]
fn scalable_first_stage_with_interrupt_remapping() {
    let mut expected = vec![
        "vtd ver 0x10 cap 0x1d2008c222f0606 ecap 0x880000f00f4a",
        "mode scalable",
        "tables scalable first-stage levels 4",
        "write fault: frcd f 1 t 0 fr 0x85 sid 0x8 addr 0x10003000",
        "read fault: frcd f 1 t 1 fr 0x71 sid 0x8 addr 0x10008000",
    ];
    expected.extend_from_slice(PLATFORM);
    expected.extend_from_slice(INTERRUPT_REMAPPING);
    check("x-scalable-mode=on,x-flts=on,intremap=on", "", &expected);
}

#[test]
fn legacy_tables_on_a_scalable_capable_unit() {
    let mut expected = vec!["mode legacy", "tables legacy second-stage levels 4"];
    expected.extend_from_slice(PLATFORM);
    check(
        "x-scalable-mode=on,x-flts=on,intremap=on",
        "mode=legacy",
        &expected,
    );
}

#[test]
fn without_interrupt_remapping_and_39_bit() {
    let mut expected = vec![
        "dmar haw 39 flags 0x0",
        "tables legacy second-stage levels 3",
        "interrupt remapping not offered",
    ];
    expected.extend_from_slice(PLATFORM);
    check("intremap=off,aw-bits=39", "", &expected);
}
