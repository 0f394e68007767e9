//! libFuzzer entry point of the `unit` target; the checks live in `fuzz_harness::unit`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_harness::unit::run(data));
