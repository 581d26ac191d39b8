//! Fuzz target `requests`: see [`steward_fuzz::requests`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| steward_fuzz::requests(data));
