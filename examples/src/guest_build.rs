// The build steps of the project's bare-metal guests, shared by `vtd_examples::guest`
// (vtd-guest) and vtd-conformance's build script (the scenario interpreter, which includes
// this file: a build script cannot depend on this crate without building KVM crates for the
// build). Kept free of crate paths so it compiles in both places.
//
// GNU as assembles the 32-bit multiboot entry and long-mode switch (`--64`, with a `.code32`
// part), gcc the 64-bit C program (freestanding, no SSE, no red zone, general registers only,
// so no VEX instructions), ld links the image at 1 MiB, and objcopy turns the ELF64 into the
// elf32-i386 image multiboot loaders (QEMU's included) require. No multilib is needed.

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

/// Builds `boot.S`, `c_file` and `link.ld` from `src` with the C compiler `cc` into
/// `out/<name>.elf` (an elf32-i386 multiboot image) and returns its path; checks that the
/// multiboot header lies in the first 8 KiB, where loaders look for it.
pub fn build_multiboot_image(
    src: &std::path::Path,
    c_file: &str,
    out: &std::path::Path,
    name: &str,
    cc: &str,
) -> Result<std::path::PathBuf, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let boot_o = out.join("boot.o");
    let c_o = out.join(format!("{name}.o"));
    let elf64 = out.join(format!("{name}64.elf"));
    let elf32 = out.join(format!("{name}.elf"));
    run_tool(
        "as",
        &[
            "--64",
            "-o",
            path_str(&boot_o)?,
            path_str(&src.join("boot.S"))?,
        ],
    )?;
    let c_src = src.join(c_file);
    let mut cargs: Vec<&str> = GUEST_CFLAGS.to_vec();
    cargs.extend(["-o", path_str(&c_o)?, path_str(&c_src)?]);
    run_tool(cc, &cargs)?;
    let link_ld = src.join("link.ld");
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
