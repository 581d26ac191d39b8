//! Fuzz target `config`: see [`steward_fuzz::config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| steward_fuzz::config(data));
