//! Per-watcher bandwidth budget: a byte token bucket, charged with the bytes actually
//! sent, that decides for each event whether it goes out whole, truncated, or not at all.
//! Optionally capped by a server-wide egress rate shared by the watches that have
//! something to send: every watcher has the same own rate, so an equal split among the
//! active ones, each capped by its own rate, is the max-min fair share; idle watches
//! take nothing from it. Pure arithmetic on `tokio::time::Instant`: no I/O, no HTTP, no bus.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The budget flags. A rate of 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub bytes_per_second: u64,
    pub burst_bytes: u64,
}

/// What to do with the next event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Full,
    Truncated,
    Drop,
}

/// A server-wide egress rate, split equally among the watches that have something to
/// send.
#[derive(Debug)]
pub struct EgressShare {
    bytes_per_second: u64,
    active: AtomicUsize,
}

impl EgressShare {
    pub fn new(bytes_per_second: u64) -> Arc<Self> {
        Arc::new(EgressShare {
            bytes_per_second,
            active: AtomicUsize::new(0),
        })
    }

    /// An active watch's fair share right now, in bytes per second.
    fn share(&self) -> f64 {
        self.bytes_per_second as f64 / self.active.load(Ordering::Relaxed).max(1) as f64
    }
}

/// Smallest burst a shared budget allows, so that one ordinary event always fits.
const MIN_SHARED_BURST_BYTES: f64 = 64.0 * 1024.0;

/// One watcher's bucket.
#[derive(Debug)]
pub struct Budget {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    share: Option<Arc<EgressShare>>,
    /// Counted among the share's active watches.
    active: bool,
}

impl Budget {
    pub fn new(config: Config, share: Option<Arc<EgressShare>>, now: Instant) -> Self {
        let rate = match config.bytes_per_second {
            0 => f64::INFINITY,
            r => r as f64,
        };
        let burst = match config.burst_bytes {
            0 => f64::INFINITY,
            b => b as f64,
        };
        let mut b = Budget {
            rate,
            burst,
            tokens: 0.0,
            last: now,
            share: share.filter(|s| s.bytes_per_second > 0),
            active: false,
        };
        b.tokens = b.limits().1;
        b
    }

    /// Whether this watch has something to send; only such watches split the server's
    /// egress rate. Called on changes only: a shared atomic, not a per-event cost.
    pub fn set_active(&mut self, active: bool) {
        if active == self.active {
            return;
        }
        self.active = active;
        if let Some(s) = &self.share {
            if active {
                s.active.fetch_add(1, Ordering::Relaxed);
            } else {
                s.active.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// (rate, burst) in force now: our own, lowered to our share of the server's.
    fn limits(&self) -> (f64, f64) {
        match &self.share {
            Some(s) => {
                let share = s.share();
                (
                    self.rate.min(share),
                    self.burst.min(share.max(MIN_SHARED_BURST_BYTES)),
                )
            }
            _ => (self.rate, self.burst),
        }
    }

    #[cfg(test)]
    fn is_unlimited(&self) -> bool {
        self.limits().0.is_infinite()
    }

    fn refill(&mut self, now: Instant) {
        let (rate, burst) = self.limits();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        if rate.is_infinite() {
            self.tokens = f64::INFINITY;
        } else {
            let tokens = if self.tokens.is_infinite() {
                burst
            } else {
                self.tokens
            };
            self.tokens = (tokens + rate * elapsed).min(burst);
        }
    }

    /// Decide for an event of `full` bytes whose truncated form (if it has one) is
    /// `truncated` bytes, and charge what will be sent. A `lagging` watcher (one whose
    /// queue is backing up) gets the truncated form even with budget left, to catch up.
    pub fn admit(
        &mut self,
        full: usize,
        truncated: Option<usize>,
        lagging: bool,
        now: Instant,
    ) -> Verdict {
        self.refill(now);
        let prefer_truncated = lagging && truncated.is_some();
        if !prefer_truncated && self.tokens >= full as f64 {
            self.tokens -= full as f64;
            return Verdict::Full;
        }
        match truncated {
            Some(t) if self.tokens >= t as f64 => {
                self.tokens -= t as f64;
                Verdict::Truncated
            }
            _ => Verdict::Drop,
        }
    }

    /// Charge bytes that go out whatever the budget says (a dropped-count bookmark); the
    /// bucket may go below zero and pays it back before the next event.
    pub fn charge(&mut self, bytes: usize, now: Instant) {
        self.refill(now);
        self.tokens -= bytes as f64;
    }

    /// How long until `bytes` fit.
    pub fn wait_for(&mut self, bytes: usize, now: Instant) -> Duration {
        self.refill(now);
        let missing = bytes as f64 - self.tokens;
        let (rate, _) = self.limits();
        if missing <= 0.0 || rate.is_infinite() {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / rate)
        }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.set_active(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate: u64, burst: u64) -> Config {
        Config {
            bytes_per_second: rate,
            burst_bytes: burst,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_then_truncated_then_dropped_then_refilled() {
        let now = Instant::now();
        let mut b = Budget::new(cfg(1000, 3000), None, now);
        assert_eq!(b.admit(2000, Some(500), false, now), Verdict::Full); // 1000 left
        assert_eq!(b.admit(2000, Some(500), false, now), Verdict::Truncated); // 500 left
        assert_eq!(b.admit(2000, Some(600), false, now), Verdict::Drop);
        assert_eq!(b.admit(400, None, false, now), Verdict::Full); // 100 left
        assert_eq!(b.wait_for(2000, now), Duration::from_millis(1900));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            b.admit(2000, Some(500), false, Instant::now()),
            Verdict::Full
        );
        // Refill never exceeds the burst.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(b.admit(3000, None, false, Instant::now()), Verdict::Full);
        assert_eq!(b.admit(1, None, false, Instant::now()), Verdict::Drop);
    }

    #[tokio::test(start_paused = true)]
    async fn lagging_prefers_truncated_and_charges_forced_bytes() {
        let now = Instant::now();
        let mut b = Budget::new(cfg(1000, 3000), None, now);
        assert_eq!(b.admit(2000, Some(500), true, now), Verdict::Truncated);
        assert_eq!(
            b.admit(200, None, true, now),
            Verdict::Full,
            "nothing to truncate"
        );
        b.charge(2500, now); // 2300 - 2500 = -200
        assert_eq!(b.admit(1, Some(1), false, now), Verdict::Drop);
        assert_eq!(b.wait_for(100, now), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_rate_is_unlimited() {
        let now = Instant::now();
        let mut b = Budget::new(cfg(0, 0), None, now);
        assert!(b.is_unlimited());
        for _ in 0..1000 {
            assert_eq!(b.admit(1 << 30, Some(1), false, now), Verdict::Full);
        }
        assert_eq!(b.wait_for(1 << 40, now), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn server_share_goes_to_the_active_watches() {
        let now = Instant::now();
        let share = EgressShare::new(200_000);
        let mut a = Budget::new(cfg(0, 0), Some(share.clone()), now);
        assert!(!a.is_unlimited());
        a.set_active(true);
        assert_eq!(a.limits(), (200_000.0, 200_000.0));
        let mut b = Budget::new(cfg(50_000, 1_000_000), Some(share.clone()), now);
        let mut idle = Budget::new(cfg(0, 0), Some(share.clone()), now);
        assert_eq!(a.limits().0, 200_000.0, "idle watches take no share");
        b.set_active(true);
        b.set_active(true);
        assert_eq!(a.limits(), (100_000.0, 100_000.0));
        assert_eq!(
            b.limits(),
            (50_000.0, 100_000.0),
            "its own rate is lower than the share"
        );
        idle.set_active(true);
        idle.set_active(false);
        assert_eq!(a.limits().0, 100_000.0);
        drop(b);
        assert_eq!(
            a.limits().0,
            200_000.0,
            "an ended watch gives its share back"
        );
        // The tokens it started with are its own to spend.
        assert_eq!(a.admit(150_000, None, false, now), Verdict::Full);
    }
}
