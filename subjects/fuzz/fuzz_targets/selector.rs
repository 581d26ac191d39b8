//! Fuzz target `selector`: see [`steward_fuzz::selector`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| steward_fuzz::selector(data));
