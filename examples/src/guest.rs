//! Builds vtd-guest, the project's bare-metal VT-d test kernel (examples/guest/), from source
//! with the host's plain gcc and binutils: GNU as for the 32-bit multiboot entry and the
//! long-mode switch (`--64`, with a `.code32` part), gcc for the 64-bit C program
//! (freestanding, no SSE, no red zone, general registers only, so no VEX instructions), ld for
//! the image at 1 MiB, and objcopy to turn the ELF64 into the elf32-i386 image multiboot
//! loaders (QEMU's included) require. No multilib is needed.
//!
//! The kernel takes `mode=legacy` or `mode=sm` on its command line (default: scalable
//! first-stage when ECAP offers it) and exits through isa-debug-exit with code 0 when every
//! check passed (process status 1 on QEMU and vtd-vmm).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest's sources.
pub const SOURCES: [&str; 3] = ["boot.S", "guest.c", "link.ld"];

/// The directory holding the sources (examples/guest in this package).
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guest")
}

const CFLAGS: &[&str] = &[
    "-c",
    "-O2",
    "-std=gnu11",
    "-m64",
    "-ffreestanding",
    "-nostdlib",
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
    "-fno-builtin",
    "-fno-tree-loop-distribute-patterns",
    "-Wall",
    "-Wextra",
    "-Werror",
];

fn run(tool: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(tool).args(args).output().map_err(|e| {
        format!("cannot run `{tool}` ({e}); building vtd-guest needs gcc and binutils")
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

/// Builds the kernel from `src` into `out` (created if needed) and returns the path of the
/// elf32-i386 multiboot image. `CC` in the environment overrides gcc.
pub fn build(src: &Path, out: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".to_string());
    let boot_o = out.join("boot.o");
    let guest_o = out.join("guest.o");
    let elf64 = out.join("vtd-guest64.elf");
    let elf32 = out.join("vtd-guest.elf");
    run(
        "as",
        &[
            "--64",
            "-o",
            path_str(&boot_o)?,
            path_str(&src.join("boot.S"))?,
        ],
    )?;
    let mut cargs: Vec<&str> = CFLAGS.to_vec();
    let guest_c = src.join("guest.c");
    cargs.extend(["-o", path_str(&guest_o)?, path_str(&guest_c)?]);
    run(&cc, &cargs)?;
    let link_ld = src.join("link.ld");
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
            path_str(&guest_o)?,
        ],
    )?;
    run(
        "objcopy",
        &["-O", "elf32-i386", path_str(&elf64)?, path_str(&elf32)?],
    )?;
    Ok(elf32)
}
