//! Decoding allocates in proportion to the input, never to a length field: a snapshot that
//! claims a 2^40-byte register image or 2^60 PASIDs costs no more memory than its own bytes.
//! A counting global allocator measures the peak of live heap bytes during each decode.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::seal;

struct Counting;

// Counted per thread: the test harness runs this binary's other tests on other threads at the
// same time, and their allocations must not count against the decode being measured (a shared
// counter once saw the other test's 4 KiB register image and failed CI). Const-initialised
// `Cell`s need no allocation and no destructor, so the allocator may touch them.
thread_local! {
    /// Bytes this thread allocated minus bytes it freed since the measurement began
    /// (negative when it frees blocks allocated before, or on another thread).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// The highest `LIVE` since the measurement began.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: during thread teardown the counters may be gone; then nothing is counted.
        let _ = LIVE.try_with(|live| {
            live.set(live.get().saturating_add_unsigned(layout.size()));
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
        });
        // SAFETY: the caller's layout contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub_unsigned(layout.size())));
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak heap bytes this thread allocated while `f` runs, above what it had live before.
fn peak_during<T>(f: impl FnOnce() -> T) -> usize {
    LIVE.with(|live| live.set(0));
    PEAK.with(|peak| peak.set(0));
    let out = f();
    let peak = PEAK.with(Cell::get);
    drop(out);
    usize::try_from(peak).unwrap_or(0)
}

/// A version 2 payload of a unit with an image of `regs` bytes, nothing latched, and one
/// device whose PASID count field says `pasid_count` but holds `pasids_present` PASIDs.
fn payload(regs_len_field: u64, regs: usize, pasid_count: u64, pasids_present: usize) -> Vec<u8> {
    let mut p = regs_len_field.to_le_bytes().to_vec();
    p.extend(std::iter::repeat_n(0u8, regs));
    p.extend_from_slice(&0u16.to_le_bytes()); // next fault record
    p.extend_from_slice(&[0, 0]); // latched root, irta: None
    p.extend_from_slice(&[0; 8 + 4 + 1 + 4 + 4 + 1]); // queue
    p.extend_from_slice(&[0; 4 + 3]); // pending
    p.extend_from_slice(&[0; 5]); // enabled
    p.extend_from_slice(&1u64.to_le_bytes()); // one device
    p.extend_from_slice(&8u16.to_le_bytes());
    p.extend_from_slice(&0u64.to_le_bytes()); // empty name
    p.extend_from_slice(&pasid_count.to_le_bytes());
    for i in 0..pasids_present {
        p.extend_from_slice(&(i as u32).to_le_bytes());
    }
    p.extend_from_slice(&[0; 4 + 8 + 8 + 4 + 1 + 8]); // host capabilities
    p.extend_from_slice(&0u64.to_le_bytes()); // no outstanding page group (version 2)
    p
}

#[test]
fn the_payload_builder_matches_the_format() {
    // An honest payload decodes (so the forged ones below fail only for their forgery).
    let bytes = seal(2, 0, &payload(4096, 4096, 3, 3));
    let snap = vtd_migrate::decode(&bytes).unwrap();
    assert_eq!(snap.devices[0].pasids, [0, 1, 2]);
    // And the counter sees this thread's allocations: the decoded 4 KiB register image.
    let peak = peak_during(|| vtd_migrate::decode(&bytes));
    assert!(peak >= 4096, "only {peak} bytes counted for a 4 KiB image");
}

#[test]
fn forged_lengths_allocate_in_proportion_to_the_input() {
    let cases = [
        (
            "2^40-byte register image in 100 bytes",
            payload(1 << 40, 40, 0, 0),
        ),
        ("u64::MAX register image", payload(u64::MAX, 4096, 0, 0)),
        ("2^60 PASIDs", payload(4096, 4096, 1 << 60, 16)),
        ("2^32 PASIDs", payload(4096, 4096, 1 << 32, 0)),
        ("2^20 PASIDs in 64", payload(4096, 4096, 1 << 20, 64)),
        ("4097-byte register image", payload(4097, 4097, 0, 0)),
    ];
    for (what, p) in cases {
        let bytes = seal(2, 0, &p);
        let peak = peak_during(|| vtd_migrate::decode(&bytes));
        assert!(vtd_migrate::decode(&bytes).is_err(), "{what} accepted");
        // Vectors grow by doubling (old and new buffer live while growing): at most three
        // times what was read, plus the error message.
        assert!(
            peak <= 3 * bytes.len() + 1024,
            "{what}: {peak} bytes allocated for a {}-byte input",
            bytes.len()
        );
    }
}
