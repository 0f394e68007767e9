//! Builds the bare-metal scenario interpreter (guest/) with the host toolchain:
//! GNU as for the 32-bit multiboot entry and the long-mode switch, gcc for the
//! 64-bit interpreter (freestanding, no SSE), ld for the image at 1 MiB and
//! objcopy to turn the ELF64 into the elf32-i386 image a multiboot loader takes.
//! The result is `$OUT_DIR/interp.elf`, embedded into the runner.

use std::path::{Path, PathBuf};
use std::process::Command;

const CFLAGS: &[&str] = &[
    "-c",
    "-O2",
    "-std=gnu11",
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-mno-red-zone",
    "-mno-mmx",
    "-mno-sse",
    "-mno-sse2",
    "-mno-avx",
    "-mgeneral-regs-only",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fno-builtin",
    "-fno-tree-loop-distribute-patterns",
    "-Wall",
    "-Wextra",
    "-Werror",
];

fn run(tool: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(tool).args(args).output().map_err(|e| {
        format!("cannot run `{tool}` ({e}); the interpreter needs gcc and binutils")
    })?;
    if !out.status.success() {
        return Err(format!(
            "`{tool} {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn path_str(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("path {} is not UTF-8", p.display()))
}

fn build(guest: &Path, out: &Path) -> Result<(), String> {
    let cc = std::env::var("VTD_GUEST_CC").unwrap_or_else(|_| "gcc".to_string());
    let boot_s = guest.join("boot.S");
    let interp_c = guest.join("interp.c");
    let link_ld = guest.join("link.ld");
    let boot_o = out.join("boot.o");
    let interp_o = out.join("interp.o");
    let elf64 = out.join("interp64.elf");
    let elf32 = out.join("interp.elf");

    run(
        "as",
        &["--64", "-o", path_str(&boot_o)?, path_str(&boot_s)?],
    )?;
    let mut cargs: Vec<&str> = CFLAGS.to_vec();
    cargs.extend(["-o", path_str(&interp_o)?, path_str(&interp_c)?]);
    run(&cc, &cargs)?;
    run(
        "ld",
        &[
            "-m",
            "elf_x86_64",
            "-nostdlib",
            "-static",
            "-z",
            "max-page-size=0x1000",
            "-z",
            "noexecstack",
            "--no-warn-rwx-segments",
            "-T",
            path_str(&link_ld)?,
            "-o",
            path_str(&elf64)?,
            path_str(&boot_o)?,
            path_str(&interp_o)?,
        ],
    )?;
    run(
        "objcopy",
        &["-O", "elf32-i386", path_str(&elf64)?, path_str(&elf32)?],
    )?;

    // A multiboot loader looks for the header in the first 8 KiB.
    let image = std::fs::read(&elf32).map_err(|e| format!("{}: {e}", elf32.display()))?;
    let magic = 0x1bad_b002u32.to_le_bytes();
    let found = image
        .windows(4)
        .take(8192 - 12)
        .enumerate()
        .any(|(i, w)| i % 4 == 0 && w == magic);
    if !found {
        return Err("multiboot header is not within the first 8 KiB of interp.elf".into());
    }
    Ok(())
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    let guest = manifest.join("guest");
    for f in ["boot.S", "interp.c", "link.ld"] {
        println!("cargo:rerun-if-changed=guest/{f}");
    }
    println!("cargo:rerun-if-env-changed=VTD_GUEST_CC");
    if let Err(e) = build(&guest, &out) {
        eprintln!("vtd-conformance: building the scenario interpreter failed: {e}");
        std::process::exit(1);
    }
}
