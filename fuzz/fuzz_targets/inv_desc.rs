//! libFuzzer entry point of the `inv_desc` target; the checks live in `fuzz_harness::inv_desc`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_harness::inv_desc::run(data));
