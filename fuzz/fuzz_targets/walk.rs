//! libFuzzer entry point of the `walk` target; the checks live in `fuzz_harness::walk`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_harness::walk::run(data));
