//! Waiting on a condition with a bound, instead of sleeping.

use std::time::{Duration, Instant};

/// Polls `f` every 50 ms until it returns `Some`, or fails naming `what` after `timeout`.
pub fn until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
