//! Per-watcher bandwidth budget: a byte token bucket, charged with the bytes actually
//! sent, that decides for each event whether it goes out whole, truncated, or not at all.
//! Optionally capped by a server-wide egress rate shared by the watches that have
//! something to send: every watcher has the same own rate, so an equal split among the
//! active ones, each capped by its own rate, is the max-min fair share; idle watches
//! take nothing from it. A watch of one namespace may also hold a slice of that
//! namespace's share (`NamespaceShare`), a second bucket every event must fit as well.
//! Pure arithmetic on `tokio::time::Instant`: no I/O, no HTTP, no bus.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// The budget flags. A rate of 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub bytes_per_second: u64,
    pub burst_bytes: u64,
}

/// What to do with the next event, from best to worst (the order two buckets' verdicts
/// are combined by: the worse wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

/// One namespace's bandwidth (`--namespace-bytes-per-second`, `--namespace-burst-bytes`),
/// for all the watches of `namespaces/{ns}/namespacedevents` together; cluster-wide
/// watches have none. Each such watch holds a slice of it, a bucket of its own beside its
/// own budget, so that an event needs room in both and the namespace's watchers never
/// wait on one another's locks:
///
/// - the rate is split equally among the namespace's watches that have something to
///   send, like `EgressShare` (every watcher's own limits are the same, so that is the
///   max-min fair split; idle watches take none of it);
/// - the burst is split among all its open watches, so that what they may be sent at once
///   adds up to the namespace's burst. Split among the active ones instead, the first to
///   wake would find the whole burst, the second half of it, and so on. A slice is never
///   below one ordinary event (`MIN_SHARED_BURST_BYTES`), nor above the namespace's
///   burst: past burst / 64 KiB watches of one namespace, together they may get 64 KiB
///   each at once.
///
/// The watcher's own bucket (its own burst and rate, lowered to its server-wide share)
/// still applies: it gets whichever of the two allows less.
#[derive(Debug)]
pub struct NamespaceShare {
    name: Box<str>,
    bytes_per_second: u64,
    burst_bytes: u64,
    /// Open watches of the namespace: its burst is split among them.
    open: AtomicUsize,
    /// Those that have something to send: its rate is split among them.
    active: AtomicUsize,
    /// Where it is listed, to be taken off when its last watch ends.
    shares: Arc<NamespaceShares>,
}

impl NamespaceShare {
    /// One watch's slice right now: (rate, burst) in bytes per second and bytes.
    fn slice(&self) -> (f64, f64) {
        let split = |n: &AtomicUsize| n.load(Ordering::Relaxed).max(1) as f64;
        let burst = self.burst_bytes as f64;
        (
            self.bytes_per_second as f64 / split(&self.active),
            (burst / split(&self.open))
                .max(MIN_SHARED_BURST_BYTES)
                .min(burst),
        )
    }
}

impl Drop for NamespaceShare {
    /// Off the list with its last watch, so that the list holds only the namespaces
    /// watched now, however many have been. A watch of the namespace that came after
    /// the last one ended (and found this one dead) has put a new share in its place:
    /// that one stays.
    fn drop(&mut self) {
        let mut by_name = self.shares.lock();
        if by_name
            .get(&self.name)
            .is_some_and(|s| s.strong_count() == 0)
        {
            by_name.remove(&self.name);
        }
    }
}

/// The namespaces watched now, each with its share, made on a namespace's first watch
/// and gone with its last. A lock taken only when a watch starts or ends.
#[derive(Debug)]
pub struct NamespaceShares {
    config: Config,
    by_name: Mutex<HashMap<Box<str>, Weak<NamespaceShare>>>,
}

impl NamespaceShares {
    /// `None` when `config`'s rate is 0: no namespace cap.
    pub fn new(config: Config) -> Option<Arc<Self>> {
        (config.bytes_per_second > 0).then(|| {
            Arc::new(NamespaceShares {
                config,
                by_name: Mutex::new(HashMap::new()),
            })
        })
    }

    /// `namespace`'s share, made if none of its watches is open.
    pub fn get(self: &Arc<Self>, namespace: &str) -> Arc<NamespaceShare> {
        let mut by_name = self.lock();
        if let Some(share) = by_name.get(namespace).and_then(Weak::upgrade) {
            return share;
        }
        let share = Arc::new(NamespaceShare {
            name: namespace.into(),
            bytes_per_second: self.config.bytes_per_second,
            burst_bytes: self.config.burst_bytes,
            open: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            shares: self.clone(),
        });
        by_name.insert(namespace.into(), Arc::downgrade(&share));
        share
    }

    /// How many namespaces have a share now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The list, even if a panic left its lock poisoned: every change to it is one
    /// insert or remove, never half done.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Weak<NamespaceShare>>> {
        self.by_name.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// This watch's slice of its namespace's share.
#[derive(Debug)]
struct Slice {
    share: Arc<NamespaceShare>,
    tokens: f64,
}

/// One watcher's bucket.
#[derive(Debug)]
pub struct Budget {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    share: Option<Arc<EgressShare>>,
    /// Counted among the share's active watches (and the namespace's).
    active: bool,
    /// A watch of one namespace under `--namespace-bytes-per-second`.
    namespace: Option<Slice>,
    /// The last `admit` sent less than the whole event because of the namespace's share:
    /// the watcher's own budget alone would have allowed more.
    by_namespace: bool,
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
            namespace: None,
            by_namespace: false,
        };
        b.tokens = b.limits().1;
        b
    }

    /// A watch of one namespace: every event must fit its slice of `share` too. Counted
    /// among the namespace's open watches from now until it is dropped; it starts with
    /// a full slice, like a new watcher's own bucket.
    pub fn in_namespace(mut self, share: Option<Arc<NamespaceShare>>) -> Self {
        if let Some(share) = share {
            share.open.fetch_add(1, Ordering::Relaxed);
            if self.active {
                share.active.fetch_add(1, Ordering::Relaxed);
            }
            let tokens = share.slice().1;
            self.namespace = Some(Slice { share, tokens });
        }
        self
    }

    /// Whether this watch has something to send; only such watches split the server's
    /// egress rate and their namespace's. Called on changes only: shared atomics, not a
    /// per-event cost.
    pub fn set_active(&mut self, active: bool) {
        if active == self.active {
            return;
        }
        self.active = active;
        let counts = [
            self.share.as_ref().map(|s| &s.active),
            self.namespace.as_ref().map(|n| &n.share.active),
        ];
        for count in counts.into_iter().flatten() {
            if active {
                count.fetch_add(1, Ordering::Relaxed);
            } else {
                count.fetch_sub(1, Ordering::Relaxed);
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
        // A watch reads the clock once per poll and decides every event of the poll
        // against it: refilled for the first, nothing has changed for the others, unless
        // a share (the server's, the namespace's) has shrunk since and clamps what is
        // left at once. Per event × watcher: one comparison for most watches.
        if now == self.last && self.namespace.is_none() && self.share.is_none() {
            return;
        }
        let (rate, burst) = self.limits();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        if let Some(ns) = &mut self.namespace {
            // Clamped to the slice in force now: what a watch saved while the namespace
            // had fewer watches is not spent once it has more.
            let (rate, burst) = ns.share.slice();
            ns.tokens = (ns.tokens + rate * elapsed).min(burst);
        }
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
        let fits = |tokens: f64| match truncated {
            _ if !prefer_truncated && tokens >= full as f64 => Verdict::Full,
            Some(t) if tokens >= t as f64 => Verdict::Truncated,
            _ => Verdict::Drop,
        };
        let own = fits(self.tokens);
        let verdict = match &self.namespace {
            Some(ns) => own.max(fits(ns.tokens)),
            None => own,
        };
        self.by_namespace = verdict > own;
        let sent = match verdict {
            Verdict::Full => full,
            Verdict::Truncated => truncated.unwrap_or(full),
            Verdict::Drop => return verdict,
        };
        self.take(sent);
        verdict
    }

    /// Whether the last `admit`'s Truncated or Drop was the namespace share's doing: the
    /// watcher's own budget would have sent more of the event.
    pub fn limited_by_namespace(&self) -> bool {
        self.by_namespace
    }

    fn take(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
        if let Some(ns) = &mut self.namespace {
            ns.tokens -= bytes as f64;
        }
    }

    /// Charge bytes that go out whatever the budget says (a dropped-count bookmark); the
    /// buckets may go below zero and pay it back before the next event.
    pub fn charge(&mut self, bytes: usize, now: Instant) {
        self.refill(now);
        self.take(bytes);
    }

    /// How long until `bytes` fit, in the watcher's own bucket and its namespace slice.
    pub fn wait_for(&mut self, bytes: usize, now: Instant) -> Duration {
        self.refill(now);
        let wait = |tokens: f64, rate: f64| {
            let missing = bytes as f64 - tokens;
            if missing <= 0.0 || rate.is_infinite() {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(missing / rate)
            }
        };
        let own = wait(self.tokens, self.limits().0);
        match &self.namespace {
            Some(ns) => own.max(wait(ns.tokens, ns.share.slice().0)),
            None => own,
        }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.set_active(false);
        if let Some(ns) = &self.namespace {
            ns.share.open.fetch_sub(1, Ordering::Relaxed);
        }
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

    fn watch_of(shares: &Arc<NamespaceShares>, ns: &str, own: Config) -> Budget {
        Budget::new(own, None, Instant::now()).in_namespace(Some(shares.get(ns)))
    }

    /// Events of `bytes` (nothing to truncate) admitted until one is not: how many went.
    fn drain(b: &mut Budget, bytes: usize) -> usize {
        let now = Instant::now();
        (0..)
            .take_while(|_| b.admit(bytes, None, false, now) == Verdict::Full)
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn a_namespace_burst_bounds_all_its_watchers_together() {
        let shares = NamespaceShares::new(cfg(100_000, 400_000)).unwrap();
        // The first watch alone is given the whole burst; once three more have come, it
        // may spend only its quarter of it, like each of them.
        let mut first = watch_of(&shares, "team-a", cfg(0, 0));
        let mut others: Vec<Budget> = (0..3)
            .map(|_| watch_of(&shares, "team-a", cfg(0, 0)))
            .collect();
        let mut sent = drain(&mut first, 50_000);
        assert!(first.limited_by_namespace(), "its own budget is unlimited");
        for b in &mut others {
            sent += drain(b, 50_000);
        }
        assert_eq!(sent * 50_000, 400_000);
        // Another namespace has a share of its own, whole.
        let mut other_ns = watch_of(&shares, "team-b", cfg(0, 0));
        assert_eq!(drain(&mut other_ns, 50_000), 8);
        assert_eq!(shares.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_namespace_rate_is_split_among_its_active_watchers() {
        let shares = NamespaceShares::new(cfg(100_000, 300_000)).unwrap();
        let mut a = watch_of(&shares, "team-a", cfg(0, 0));
        let mut b = watch_of(&shares, "team-a", cfg(0, 0));
        let mut idle = watch_of(&shares, "team-a", cfg(0, 0));
        a.set_active(true);
        b.set_active(true);
        idle.set_active(true);
        idle.set_active(false);
        let now = Instant::now();
        // 300 kB among three open watches: 100 kB each.
        assert_eq!(a.admit(100_000, None, false, now), Verdict::Full);
        assert_eq!(a.wait_for(50_000, now), Duration::from_secs(1), "50 kB/s");
        b.set_active(false);
        assert_eq!(
            a.wait_for(50_000, now),
            Duration::from_millis(500),
            "alone, it has the namespace's whole rate"
        );
        // Refilled at the rate, never above its slice of the burst.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(drain(&mut a, 25_000), 4);
        // A dropped-count bookmark is charged to the slice as well.
        tokio::time::advance(Duration::from_secs(10)).await;
        a.charge(99_200, Instant::now());
        assert_eq!(
            a.admit(1000, Some(600), false, Instant::now()),
            Verdict::Truncated
        );
        assert!(a.limited_by_namespace());
        assert_eq!(
            a.admit(1000, Some(600), false, Instant::now()),
            Verdict::Drop
        );
        assert!(a.limited_by_namespace());
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchers_own_budget_is_not_the_namespaces_doing() {
        let shares = NamespaceShares::new(cfg(1_000_000, 1_000_000)).unwrap();
        let mut b = watch_of(&shares, "team-a", cfg(1000, 3000));
        let now = Instant::now();
        assert_eq!(b.admit(5000, Some(500), false, now), Verdict::Truncated);
        assert!(!b.limited_by_namespace(), "its own 3000 bytes did it");
        assert_eq!(b.admit(5000, Some(5000), false, now), Verdict::Drop);
        assert!(!b.limited_by_namespace());
        assert_eq!(b.admit(2000, None, false, now), Verdict::Full);
        assert!(!b.limited_by_namespace());
        // Both would drop: its own budget is what the watcher is over first.
        b.charge(1_000_000, now);
        assert_eq!(b.admit(10_000, Some(10_000), false, now), Verdict::Drop);
        assert!(!b.limited_by_namespace());
        // A lagging watcher gets the truncated form from either bucket.
        let mut lagging = watch_of(&shares, "team-c", cfg(0, 0));
        assert_eq!(
            lagging.admit(5000, Some(500), true, now),
            Verdict::Truncated
        );
        assert!(!lagging.limited_by_namespace());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slice_holds_one_event_however_many_watch() {
        let shares = NamespaceShares::new(cfg(1_000_000, 1_000_000)).unwrap();
        let many: Vec<Budget> = (0..100)
            .map(|_| watch_of(&shares, "busy", cfg(0, 0)))
            .collect();
        let slice = shares.get("busy").slice();
        assert_eq!(slice, (1_000_000.0, MIN_SHARED_BURST_BYTES));
        drop(many);
        // Never more than the namespace's own burst.
        let small = NamespaceShares::new(cfg(1_000, 10_000)).unwrap();
        let _w = watch_of(&small, "quiet", cfg(0, 0));
        assert_eq!(small.get("quiet").slice(), (1_000.0, 10_000.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_namespace_share_goes_with_its_last_watch() {
        assert!(NamespaceShares::new(cfg(0, 0)).is_none(), "0: no cap");
        let shares = NamespaceShares::new(cfg(1000, 100_000)).unwrap();
        let a = watch_of(&shares, "team-a", cfg(0, 0));
        let mut b = watch_of(&shares, "team-a", cfg(0, 0));
        b.set_active(true);
        let c = watch_of(&shares, "team-b", cfg(0, 0));
        assert_eq!(shares.len(), 2);
        let share = shares.get("team-a");
        assert_eq!(
            (
                share.open.load(Ordering::Relaxed),
                share.active.load(Ordering::Relaxed)
            ),
            (2, 1)
        );
        drop(b);
        assert_eq!(
            (
                share.open.load(Ordering::Relaxed),
                share.active.load(Ordering::Relaxed)
            ),
            (1, 0),
            "an ended watch is no longer counted"
        );
        drop((a, share, c));
        assert!(shares.is_empty(), "no namespace is watched");
        // Watched again, it starts over.
        let again = watch_of(&shares, "team-a", cfg(0, 0));
        assert_eq!(shares.len(), 1);
        drop(again);
        assert!(shares.is_empty());
    }
}
