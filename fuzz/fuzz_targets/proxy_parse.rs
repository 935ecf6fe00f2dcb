#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringterm::fuzzing::proxy_parse(data));
