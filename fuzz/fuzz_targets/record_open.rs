#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringterm::record::fuzz::record_open(data));
