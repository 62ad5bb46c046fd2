#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::controller_manifest(data));
