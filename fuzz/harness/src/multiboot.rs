//! The VMM's multiboot (v1) loader: header search, ELF32/ELF64 and a.out-kludge images
//! (vtd-vmm `multiboot`).
//!
//! Invariants: no panic and no work beyond the file's size on any image; what parses names
//! file bytes inside the image; loading into a small RAM either places everything inside
//! RAM or refuses with an error.
//!
//! Input: the image.

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd_vmm::multiboot::{KernelImage, MemoryMapEntry, Module, load};

/// RAM the image is loaded into: small, so most segments must be refused cleanly.
const RAM_SIZE: u64 = 4 << 20;

/// The target.
pub fn run(data: &[u8]) {
    let Ok(kernel) = KernelImage::parse(data) else {
        return;
    };
    for s in &kernel.segments {
        let end = s.file_offset.checked_add(s.file_size);
        assert!(
            end.is_some_and(|e| e <= data.len()),
            "segment {s:?} outside the {}-byte image",
            data.len()
        );
    }
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)])
    else {
        panic!("the harness's RAM cannot be mapped");
    };
    let modules = [Module {
        data: b"module".to_vec(),
        cmdline: "module arg".to_string(),
    }];
    let mmap = [MemoryMapEntry {
        addr: 0,
        len: RAM_SIZE,
        kind: 1,
    }];
    if let Ok(info) = load(&mem, data, &kernel, "kernel", &modules, &mmap, RAM_SIZE) {
        for &(start, end) in &info.modules {
            assert!(
                start <= end && end <= RAM_SIZE,
                "module placed at {start:#x}..{end:#x}"
            );
        }
    }
}
