//! Fuzz target `events`: see [`steward_fuzz::events`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| steward_fuzz::events(data));
