#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wire::fuzzing::fb_client(data));
