//! libFuzzer entry point of the `dmar` target; the checks live in `fuzz_harness::dmar`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_harness::dmar::run(data));
