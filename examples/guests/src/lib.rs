//! Builds the project's bare-metal guests from source, for the build scripts of vtd-vmm (the
//! self-test kernel vtd-guest its tests boot) and vtd-conformance (the scenario interpreter it
//! embeds).
//!
//! Both guests share one multiboot entry (`boot/boot.S`: 32-bit entry, identity paging, long
//! mode, 256 interrupt stubs), one IDT setup (`boot/idt.c`) and one link script, and differ
//! only in their C program (`selftest/guest.c`, `interp/interp.c`), which defines
//! `guest_main` and `isr_dispatch`. This crate is the one place that knows how to turn them
//! into an image, so the two build scripts cannot drift apart; it is a separate crate (not a
//! module of vtd-vmm) because a build script must not build the KVM crates it would pull in.
//!
//! GNU as assembles the entry (`--64`, with a `.code32` part), gcc the 64-bit C (freestanding,
//! no SSE, no red zone, general registers only, so no VEX instructions), ld links the image at
//! 1 MiB, and objcopy turns the ELF64 into the elf32-i386 image multiboot loaders (QEMU's
//! included) require. No multilib is needed.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// One of the project's bare-metal guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guest {
    /// vtd-guest, the VT-d self-test kernel: takes `mode=legacy` or `mode=sm` on its command
    /// line (default: scalable first-stage when ECAP offers it) and exits through
    /// isa-debug-exit with code 0 when every check passed (process status 1 on QEMU and
    /// vtd-vmm).
    SelfTest,
    /// The vtd-conformance scenario interpreter: runs the encoded scenario in its first
    /// multiboot module and prints the transcript on COM1.
    Interpreter,
}

impl Guest {
    /// The image's file name stem (`<name>.elf`).
    pub fn name(self) -> &'static str {
        match self {
            Guest::SelfTest => "vtd-guest",
            Guest::Interpreter => "interp",
        }
    }

    /// The guest's own C program, relative to [`source_root`].
    fn program(self) -> &'static str {
        match self {
            Guest::SelfTest => "selftest/guest.c",
            Guest::Interpreter => "interp/interp.c",
        }
    }

    /// Every source file the image is built from (for `cargo:rerun-if-changed`).
    pub fn sources(self) -> Vec<PathBuf> {
        let root = source_root();
        [ENTRY, IDT, IDT_HEADER, LINK_SCRIPT, self.program()]
            .iter()
            .map(|f| root.join(f))
            .collect()
    }
}

/// The shared entry, IDT setup and link script, relative to [`source_root`].
const ENTRY: &str = "boot/boot.S";
const IDT: &str = "boot/idt.c";
const IDT_HEADER: &str = "boot/idt.h";
const LINK_SCRIPT: &str = "boot/link.ld";

/// The directory holding the guests' sources (this package's directory).
pub fn source_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The C compiler: `VTD_GUEST_CC`, else `CC`, else gcc.
pub fn compiler() -> String {
    std::env::var("VTD_GUEST_CC")
        .or_else(|_| std::env::var("CC"))
        .unwrap_or_else(|_| "gcc".to_string())
}

/// Prints the `cargo:rerun-if-*` lines a build script that builds `guest` needs.
pub fn rerun_if_changed(guest: Guest) {
    for f in guest.sources() {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-env-changed=VTD_GUEST_CC");
    println!("cargo:rerun-if-env-changed=CC");
}

/// gcc flags of the guests' C code.
const GUEST_CFLAGS: &[&str] = &[
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
    "-fno-unwind-tables",
    "-fno-builtin",
    "-fno-tree-loop-distribute-patterns",
    "-Wall",
    "-Wextra",
    "-Werror",
];

fn run_tool(tool: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| {
            format!("cannot run `{tool}` ({e}); building a bare-metal guest needs gcc and binutils")
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

fn path_str(p: &std::path::Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("path {} is not UTF-8", p.display()))
}

/// Builds `guest` with [`compiler`] into `out/<name>.elf` (an elf32-i386 multiboot image;
/// `out` is created if needed) and returns its path; checks that the multiboot header lies in
/// the first 8 KiB, where loaders look for it.
pub fn build(guest: Guest, out: &Path) -> Result<PathBuf, String> {
    let root = source_root();
    let name = guest.name();
    let cc = compiler();
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let boot_o = out.join(format!("{name}-boot.o"));
    let idt_o = out.join(format!("{name}-idt.o"));
    let c_o = out.join(format!("{name}.o"));
    let elf64 = out.join(format!("{name}64.elf"));
    let elf32 = out.join(format!("{name}.elf"));
    run_tool(
        "as",
        &[
            "--64",
            "-o",
            path_str(&boot_o)?,
            path_str(&root.join(ENTRY))?,
        ],
    )?;
    let include = root.join("boot");
    for (src, obj) in [(IDT, &idt_o), (guest.program(), &c_o)] {
        let src = root.join(src);
        let mut cargs: Vec<&str> = GUEST_CFLAGS.to_vec();
        cargs.extend([
            "-I",
            path_str(&include)?,
            "-o",
            path_str(obj)?,
            path_str(&src)?,
        ]);
        run_tool(&cc, &cargs)?;
    }
    let link_ld = root.join(LINK_SCRIPT);
    run_tool(
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
            path_str(&idt_o)?,
            path_str(&c_o)?,
        ],
    )?;
    run_tool(
        "objcopy",
        &["-O", "elf32-i386", path_str(&elf64)?, path_str(&elf32)?],
    )?;
    let image = std::fs::read(&elf32).map_err(|e| format!("{}: {e}", elf32.display()))?;
    let magic = 0x1bad_b002u32.to_le_bytes();
    let found = image
        .windows(4)
        .take(8192 - 12)
        .enumerate()
        .any(|(i, w)| i % 4 == 0 && w == magic);
    if !found {
        return Err(format!(
            "multiboot header is not within the first 8 KiB of {}",
            elf32.display()
        ));
    }
    Ok(elf32)
}

/// The whole of a build script that builds `guest` into `$OUT_DIR/<name>.elf`: prints the
/// `cargo:rerun-if-*` lines, builds, and on failure prints why (naming `package`) and exits
/// with status 1, which fails the build.
pub fn build_script(guest: Guest, package: &str) {
    rerun_if_changed(guest);
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    if let Err(e) = build(guest, &out) {
        eprintln!("{package}: building {} failed: {e}", guest.name());
        std::process::exit(1);
    }
}
