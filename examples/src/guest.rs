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

/// The guest's sources.
pub const SOURCES: [&str; 3] = ["boot.S", "guest.c", "link.ld"];

/// The directory holding the sources (examples/guest in this package).
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guest")
}

include!("guest_build.rs");

/// Builds the kernel from `src` into `out` (created if needed) and returns the path of the
/// elf32-i386 multiboot image. `CC` in the environment overrides gcc.
pub fn build(src: &Path, out: &Path) -> Result<PathBuf, String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".to_string());
    build_multiboot_image(src, "guest.c", out, "vtd-guest", &cc)
}
