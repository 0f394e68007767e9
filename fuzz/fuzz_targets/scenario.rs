//! libFuzzer entry point of the `scenario` target; the checks live in `fuzz_harness::scenario`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_harness::scenario::run(data));
