//! Waiting for asynchronous effects with a deadline, never a bare sleep.

use std::future::Future;
use std::time::{Duration, Instant};

/// Poll `check` every 10 ms until it returns `Some`, or panic after `within`
/// naming `what` was awaited.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
