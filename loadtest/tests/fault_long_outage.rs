//! The `long_outage` fault scenario, short: real `steward server` and `steward runtime`
//! processes whose replies are lost for longer than the (shortened) dedupe window while their
//! re-sends reach the hub; every result must be stored exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use steward_loadtest::faults::{long_outage, FaultCtx};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_resent_after_the_dedupe_window_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = FaultCtx { quick: true, dir: dir.path().to_owned(), auth: false, overrides: Default::default() };
    let r = (long_outage::DEF.run)(&ctx).await.unwrap();
    assert!(r.is_clean(), "{r:#?}");
    // The fault really happened: re-sends reached the hub and were answered from the watermark,
    // results were stored while replies were lost, and everything expected was stored.
    assert!(r.extra["answered_duplicate_during_fault"].as_u64().unwrap() > 0, "{r:#?}");
    assert!(r.extra["stored_during_fault"].as_u64().unwrap() > 0, "{r:#?}");
    assert!(r.acked > 0 && r.stored >= r.acked, "{r:#?}");
    assert_eq!(r.extra["sequence_gaps"], 0, "{r:#?}");
    assert!(r.recovery_ms.is_some(), "{r:#?}");
}
