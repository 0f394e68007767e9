//! Builds the bare-metal scenario interpreter (guest/) with the host toolchain:
//! GNU as for the 32-bit multiboot entry and the long-mode switch, gcc for the
//! 64-bit interpreter (freestanding, no SSE), ld for the image at 1 MiB and
//! objcopy to turn the ELF64 into the elf32-i386 image a multiboot loader takes.
//! The result is `$OUT_DIR/interp.elf`, embedded into the runner.

use std::path::PathBuf;

// The same build steps as vtd-guest (one builder for both bare-metal guests).
include!("../examples/src/guest_build.rs");

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    let guest = manifest.join("guest");
    for f in ["boot.S", "interp.c", "link.ld"] {
        println!("cargo:rerun-if-changed=guest/{f}");
    }
    println!("cargo:rerun-if-changed=../examples/src/guest_build.rs");
    println!("cargo:rerun-if-env-changed=VTD_GUEST_CC");
    let cc = std::env::var("VTD_GUEST_CC").unwrap_or_else(|_| "gcc".to_string());
    if let Err(e) = build_multiboot_image(&guest, "interp.c", &out, "interp", &cc) {
        eprintln!("vtd-conformance: building the scenario interpreter failed: {e}");
        std::process::exit(1);
    }
}
