//! Fuzz target `heartbeats`: see [`steward_fuzz::heartbeats`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| steward_fuzz::heartbeats(data));
