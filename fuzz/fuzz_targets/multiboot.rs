//! libFuzzer entry point of the `multiboot` target; the checks live in `fuzz_harness::multiboot`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_harness::multiboot::run(data));
