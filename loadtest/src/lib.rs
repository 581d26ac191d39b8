//! The Steward load-test harness (being built).
