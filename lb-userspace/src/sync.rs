//! When to sync (SEMANTICS K2): kube-proxy's BoundedFrequencyRunner semantics — at most one
//! sync per `min_interval` on average with a burst of 2, a retry `retry_after` a failed sync,
//! and a full resync every `full_resync`. Pure (time is passed in), so it is table-tested.
//! (A token bucket like this is what the `governor` crate offers; 30 lines with an explicit
//! clock are simpler to test than its clock abstraction.)

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct SyncScheduler {
    min_interval: Duration,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    /// An update is waiting to be applied.
    pending: bool,
    /// When a failed sync is retried.
    retry_at: Option<Instant>,
    full_resync: Duration,
    last_full: Instant,
    retry_after: Duration,
}

/// What to do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Sync now; `full` asks for a full resync (every entry rewritten).
    Sync { full: bool },
    /// Nothing to do before this instant (None: until something happens).
    WaitUntil(Option<Instant>),
}

impl SyncScheduler {
    pub fn new(now: Instant, min_interval: Duration, retry_after: Duration, full_resync: Duration) -> SyncScheduler {
        SyncScheduler {
            min_interval,
            burst: 2.0,
            tokens: 2.0,
            refilled: now,
            pending: false,
            retry_at: None,
            full_resync,
            last_full: now,
            retry_after,
        }
    }

    /// An update arrived.
    pub fn queue(&mut self) {
        self.pending = true;
    }

    fn refill(&mut self, now: Instant) {
        if self.min_interval.is_zero() {
            self.tokens = self.burst;
        } else {
            let gained = now.saturating_duration_since(self.refilled).as_secs_f64() / self.min_interval.as_secs_f64();
            self.tokens = (self.tokens + gained).min(self.burst);
        }
        self.refilled = now;
    }

    pub fn decide(&mut self, now: Instant) -> Decision {
        self.refill(now);
        let full = now.saturating_duration_since(self.last_full) >= self.full_resync;
        let retry = self.retry_at.is_some_and(|t| now >= t);
        if !(self.pending || full || retry) {
            let next = [self.retry_at, Some(self.last_full + self.full_resync)].into_iter().flatten().min();
            return Decision::WaitUntil(next);
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.pending = false;
            self.retry_at = None;
            if full || retry {
                self.last_full = now;
            }
            return Decision::Sync { full: full || retry };
        }
        let wait = self.min_interval.mul_f64(1.0 - self.tokens);
        Decision::WaitUntil(Some(now + wait))
    }

    /// The sync that `decide` asked for finished.
    pub fn done(&mut self, now: Instant, ok: bool) {
        if !ok {
            self.retry_at = Some(now + self.retry_after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn bursts_of_two_then_one_per_interval() {
        let t0 = Instant::now();
        let mut s = SyncScheduler::new(t0, S, 30 * S, 3600 * S);
        assert_eq!(s.decide(t0), Decision::WaitUntil(Some(t0 + 3600 * S)), "idle");
        s.queue();
        assert_eq!(s.decide(t0), Decision::Sync { full: false });
        s.queue();
        assert_eq!(s.decide(t0), Decision::Sync { full: false }, "burst of 2");
        s.queue();
        assert_eq!(s.decide(t0), Decision::WaitUntil(Some(t0 + S)), "rate limited");
        assert_eq!(s.decide(t0 + S / 2), Decision::WaitUntil(Some(t0 + S)));
        assert_eq!(s.decide(t0 + S), Decision::Sync { full: false });
    }

    #[test]
    fn failed_sync_is_retried_as_a_full_sync() {
        let t0 = Instant::now();
        let mut s = SyncScheduler::new(t0, S, 30 * S, 3600 * S);
        s.queue();
        assert_eq!(s.decide(t0), Decision::Sync { full: false });
        s.done(t0, false);
        assert_eq!(s.decide(t0 + S), Decision::WaitUntil(Some(t0 + 30 * S)));
        assert_eq!(s.decide(t0 + 30 * S), Decision::Sync { full: true });
        s.done(t0 + 30 * S, true);
        assert_eq!(s.decide(t0 + 31 * S), Decision::WaitUntil(Some(t0 + 3630 * S)));
    }

    #[test]
    fn periodic_full_resync() {
        let t0 = Instant::now();
        let mut s = SyncScheduler::new(t0, S, 30 * S, 60 * S);
        assert_eq!(s.decide(t0 + 60 * S), Decision::Sync { full: true });
        assert_eq!(s.decide(t0 + 61 * S), Decision::WaitUntil(Some(t0 + 120 * S)));
    }
}
