//! Fuzz target `work_orders`: see [`steward_fuzz::work_orders`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| steward_fuzz::work_orders(data));
