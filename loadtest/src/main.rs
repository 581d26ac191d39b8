//! steward-loadtest (being built)
fn main() {}
