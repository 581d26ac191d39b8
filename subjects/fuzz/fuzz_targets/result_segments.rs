//! Fuzz target `result_segments`: see [`steward_fuzz::result_segments`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| steward_fuzz::result_segments(data));
