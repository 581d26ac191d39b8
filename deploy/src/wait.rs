//! Polling instead of sleeping.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use crate::DeployError;

/// Calls `f` every `interval` until it returns `Ok`, or fails with
/// [`DeployError::Timeout`] carrying the last error once `timeout` has passed.
///
/// `f` is always called at least once.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), steward_deploy::DeployError> {
/// use std::time::Duration;
/// let mut calls = 0;
/// let n = steward_deploy::eventually(Duration::from_secs(1), Duration::from_millis(1), || {
///     calls += 1;
///     let seen = calls;
///     async move { if seen >= 3 { Ok(seen) } else { Err("not yet") } }
/// })
/// .await?;
/// assert_eq!(n, 3);
/// # Ok(())
/// # }
/// ```
pub async fn eventually<F, Fut, T, E>(timeout: Duration, interval: Duration, mut f: F) -> Result<T, DeployError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match f().await {
            Ok(value) => return Ok(value),
            Err(err) => {
                if tokio::time::Instant::now() + interval > deadline {
                    return Err(DeployError::Timeout { timeout, last_error: err.to_string() });
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}
