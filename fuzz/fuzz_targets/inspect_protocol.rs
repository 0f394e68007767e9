//! libFuzzer entry point of the `inspect_protocol` target; the checks live in `fuzz_harness::inspect_protocol`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_harness::inspect_protocol::run(data));
