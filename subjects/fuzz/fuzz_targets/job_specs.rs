//! Fuzz target `job_specs`: see [`steward_fuzz::job_specs`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| steward_fuzz::job_specs(data));
