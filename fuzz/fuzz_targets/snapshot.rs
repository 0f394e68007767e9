//! libFuzzer entry point of the `snapshot` target; the checks live in `fuzz_harness::snapshot`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_harness::snapshot::run(data));
