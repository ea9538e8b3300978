//! The server's open watches: their slots, in all and per user (one more than either
//! limit gets 429), the one sweeper that ends watches whose client stopped reading, and
//! shutdown. LISTs in flight are held the same way in a registry of their own
//! (`Watches::lists`), as kube-apiserver's `--max-requests-inflight` holds its reads
//! apart from its watches: a LIST streams the window as its client reads, so one whose
//! client stopped reading is ended by the same sweeper and gives back its slot.
//!
//! Hyper polls a response body only when the connection can take more, and an HTTP/2
//! stream whose client stopped reading (its flow-control window shut) is never polled
//! again while the connection stays open, as the aggregator's shared connection does.
//! Such a watch would never see its deadline or shutdown, and would keep its bus queue
//! and slot as long as the client lives. So each watch stamps the time of every poll
//! here, and one server-wide sweeper ends a watch that has had something to send and
//! gone unpolled for the stall limit, as kube-apiserver closes watchers that stop
//! reading: its queue is freed, its slot released, and the stream ends at its next poll
//! (the client then re-watches from its last resourceVersion).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::Closer;
use crate::status::ApiError;

/// How the registry ends a watch from outside, and asks whether it has something to send
/// (one not polled for the stall limit while it has is stalled).
pub trait Stop: Send + Sync {
    fn close(&self);
    fn has_pending(&self) -> bool;
}

/// An events watch: its bus subscription.
impl Stop for Closer {
    fn close(&self) {
        Closer::close(self);
    }

    fn has_pending(&self) -> bool {
        Closer::has_pending(self)
    }
}

/// What a registry holds: open watches, or LISTs in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Watch,
    List,
}

impl Kind {
    /// Its slots, as a refusal names them.
    fn slots(self) -> &'static str {
        match self {
            Kind::Watch => "open watches",
            Kind::List => "LISTs in flight",
        }
    }

    /// One of them, as the sweeper's log line names it.
    fn one(self) -> &'static str {
        match self {
            Kind::Watch => "watch",
            Kind::List => "LIST",
        }
    }
}

/// No slot for another watch or LIST.
#[derive(Debug, thiserror::Error)]
pub enum Full {
    #[error("too many {} (limit {limit}), please try again later", kind.slots())]
    Server { kind: Kind, limit: usize },
    #[error(
        "too many {} for user {user:?} (limit {limit}), please try again later",
        kind.slots()
    )]
    User {
        kind: Kind,
        user: String,
        limit: usize,
    },
}

impl Full {
    /// The refusal, logged as the router logs one (who was turned away, at which limit:
    /// the flag that sets it, which LISTs share with watches), as its 429.
    pub fn refuse(self, user: &str, resource: &str, namespace: &str) -> ApiError {
        let (flag, limit) = match &self {
            Full::Server { limit, .. } => ("--max-watchers", *limit),
            Full::User { limit, .. } => ("--max-watchers-per-user", *limit),
        };
        tracing::info!(
            user = %user,
            resource = %resource,
            namespace = %namespace,
            code = 429,
            flag,
            limit,
            reason = %self,
            "request refused"
        );
        self.into()
    }
}

/// Over a watch limit: 429, as kube-apiserver's max-in-flight filter answers.
impl From<Full> for ApiError {
    fn from(e: Full) -> Self {
        ApiError::TooManyRequests(e.to_string())
    }
}

/// The open watches. Cheap to clone.
#[derive(Clone)]
pub struct Watches {
    inner: Arc<Inner>,
}

struct Inner {
    kind: Kind,
    max: usize,
    max_per_user: usize,
    stall_limit: Duration,
    /// Poll stamps are milliseconds since this.
    epoch: Instant,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    entries: HashMap<u64, Arc<Entry>>,
    /// Open watches by user.
    per_user: HashMap<Arc<str>, usize>,
    shut_down: bool,
}

impl Open {
    /// Forget a watch; `true` if it was still here.
    fn remove(&mut self, id: u64) -> bool {
        let Some(entry) = self.entries.remove(&id) else {
            return false;
        };
        self.release(&entry.user);
        true
    }

    fn release(&mut self, user: &Arc<str>) {
        if let Some(n) = self.per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(user);
            }
        }
    }
}

/// Why a watch was ended from outside, for the line its end leaves in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Ended {
    /// Its client took nothing for the stall limit.
    Stalled = 1,
    /// The server is shutting down.
    ShutDown = 2,
}

impl Ended {
    /// Back from its value in `Entry::ended`.
    fn from_u8(v: u8) -> Option<Ended> {
        [Ended::Stalled, Ended::ShutDown]
            .into_iter()
            .find(|e| *e as u8 == v)
    }
}

/// `Entry::ended` of a watch still open.
const NOT_ENDED: u8 = 0;

/// What the sweeper knows of one watch, shared with its body.
struct Entry {
    /// When the body was last polled (ms since `epoch`).
    last_poll: AtomicU64,
    /// The body holds events it could not hand over yet.
    backlog: AtomicBool,
    /// Why it was ended from outside (one of `Ended`'s values), or `NOT_ENDED`: the body
    /// ends at its next poll once it is set.
    ended: AtomicU8,
    /// The `last_poll` at which the sweeper first found it stalled; it is ended only if
    /// still unpolled at the next sweep, so a watch woken just before a sweep is spared.
    suspect: AtomicU64,
    closer: Box<dyn Stop>,
    stalled: IntCounter,
    user: Arc<str>,
}

impl Watches {
    /// The registry of open watches.
    pub fn new(max: usize, max_per_user: usize, stall_limit: Duration) -> Self {
        Self::of(Kind::Watch, max, max_per_user, stall_limit)
    }

    /// The registry of LISTs in flight.
    pub fn lists(max: usize, max_per_user: usize, stall_limit: Duration) -> Self {
        Self::of(Kind::List, max, max_per_user, stall_limit)
    }

    fn of(kind: Kind, max: usize, max_per_user: usize, stall_limit: Duration) -> Self {
        Watches {
            inner: Arc::new(Inner {
                kind,
                max,
                max_per_user,
                stall_limit,
                epoch: Instant::now(),
                open: Mutex::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Take a slot for `user`'s watch; `closer` ends its subscription, `stalled` counts
    /// it if the sweeper ends it.
    pub fn register(
        &self,
        user: &str,
        closer: impl Stop + 'static,
        stalled: IntCounter,
    ) -> Result<Registration, Full> {
        let mut open = self.lock();
        if open.entries.len() >= self.inner.max {
            return Err(Full::Server {
                kind: self.inner.kind,
                limit: self.inner.max,
            });
        }
        let limit = self.inner.max_per_user;
        let user: Arc<str> = match open.per_user.get_key_value(user) {
            Some((_, n)) if *n >= limit => {
                return Err(Full::User {
                    kind: self.inner.kind,
                    user: user.to_owned(),
                    limit,
                });
            }
            Some((key, _)) => key.clone(),
            None => user.into(),
        };
        *open.per_user.entry(user.clone()).or_default() += 1;
        let entry = Arc::new(Entry {
            last_poll: AtomicU64::new(self.millis(Instant::now())),
            backlog: AtomicBool::new(false),
            ended: AtomicU8::new(if open.shut_down {
                Ended::ShutDown as u8
            } else {
                NOT_ENDED
            }),
            suspect: AtomicU64::new(u64::MAX),
            closer: Box::new(closer),
            stalled,
            user,
        });
        open.next_id += 1;
        let id = open.next_id;
        open.entries.insert(id, entry.clone());
        Ok(Registration {
            watches: self.clone(),
            id,
            entry,
        })
    }

    /// Open watches now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// End every watch (their streams end at their next poll) and refuse none later but
    /// end them at once.
    pub fn shut_down(&self) {
        let entries: Vec<Arc<Entry>> = {
            let mut open = self.lock();
            open.shut_down = true;
            open.entries.values().cloned().collect()
        };
        for entry in entries {
            entry.ended.store(Ended::ShutDown as u8, Ordering::Relaxed);
            entry.closer.close();
        }
    }

    /// Sweep for stalled watches every quarter of the stall limit until `shutdown`.
    pub fn spawn_sweeper(&self, shutdown: CancellationToken) {
        let watches = self.clone();
        let every = (self.inner.stall_limit / 4).max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => watches.sweep(Instant::now()),
                }
            }
        });
    }

    /// End every watch that has had something to send and not been polled for the stall
    /// limit (two sweeps in a row).
    fn sweep(&self, now: Instant) {
        let limit = u64::try_from(self.inner.stall_limit.as_millis()).unwrap_or(u64::MAX);
        let now = self.millis(now);
        let mut stalled = Vec::new();
        {
            let mut open = self.lock();
            let open = &mut *open;
            open.entries.retain(|_, e| {
                let last = e.last_poll.load(Ordering::Relaxed);
                let waiting = e.backlog.load(Ordering::Relaxed) || e.closer.has_pending();
                let ended = e.ended.load(Ordering::Relaxed) != NOT_ENDED;
                if ended || now.saturating_sub(last) < limit || !waiting {
                    return true;
                }
                if e.suspect.swap(last, Ordering::Relaxed) != last {
                    return true;
                }
                stalled.push(e.clone());
                false
            });
            for e in &stalled {
                open.release(&e.user);
            }
        }
        for e in stalled {
            // The watch's own end line follows when its stream is next polled or dropped.
            tracing::info!(
                user = %e.user,
                stall_limit = ?self.inner.stall_limit,
                "{} stalled: its client took nothing for too long; ending it",
                self.inner.kind.one()
            );
            e.ended.store(Ended::Stalled as u8, Ordering::Relaxed);
            e.stalled.inc();
            e.closer.close();
        }
    }

    fn millis(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.inner.epoch).as_millis()).unwrap_or(u64::MAX)
    }
}

/// A watch's slot, held by its body; released when dropped or when the sweeper ends it.
pub struct Registration {
    watches: Watches,
    id: u64,
    entry: Arc<Entry>,
}

impl Registration {
    /// Stamp a poll; `false` once the watch was ended from outside.
    pub fn polled(&self, now: Instant) -> bool {
        self.entry
            .last_poll
            .store(self.watches.millis(now), Ordering::Relaxed);
        self.entry.ended.load(Ordering::Relaxed) == NOT_ENDED
    }

    /// Why the watch was ended from outside, if it was.
    pub fn ended(&self) -> Option<Ended> {
        Ended::from_u8(self.entry.ended.load(Ordering::Relaxed))
    }

    /// Whether the body still holds events it has not handed over; set as each poll
    /// returns.
    pub fn set_backlog(&self, backlog: bool) {
        self.entry.backlog.store(backlog, Ordering::Relaxed);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.watches.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, Config, Filter, Scope};

    fn bus() -> Bus {
        Bus::new(Config {
            window_events: 10,
            window_bytes: 1 << 20,
            subscriber_queue_events: 10,
            subscriber_queue_bytes: 1 << 20,
        })
    }

    fn events(n: usize) -> Vec<crate::event::Event> {
        let items = vec![r#"{"level":"Metadata","auditID":"a","stage":"ResponseComplete"}"#; n];
        let body = format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}}"#,
            items.join(",")
        );
        crate::event::decode_event_list(body.as_bytes(), "", "2026-01-01T00:00:00Z").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_limited_and_released() {
        let (bus, watches) = (bus(), Watches::new(2, 10, Duration::from_secs(60)));
        let sub = || bus.subscribe(Filter::scope(Scope::All), None).unwrap();
        let (s1, s2, s3) = (sub(), sub(), sub());
        let a = watches.register("u", s1.closer(), IntCounter::new("a", "a").unwrap());
        let b = watches.register("u", s2.closer(), IntCounter::new("b", "b").unwrap());
        assert!(a.is_ok() && b.is_ok());
        assert!(
            watches
                .register("u", s3.closer(), IntCounter::new("c", "c").unwrap())
                .is_err()
        );
        drop(a);
        assert_eq!(watches.len(), 1);
        assert!(
            watches
                .register("u", s3.closer(), IntCounter::new("c", "c").unwrap())
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_user_cannot_take_every_slot() {
        let (bus, watches) = (bus(), Watches::new(10, 2, Duration::from_secs(60)));
        let stalled = IntCounter::new("s", "s").unwrap();
        let sub = || bus.subscribe(Filter::scope(Scope::All), None).unwrap();
        let subs: Vec<_> = (0..4).map(|_| sub()).collect();
        let a1 = watches
            .register("alice", subs[0].closer(), stalled.clone())
            .unwrap();
        let _a2 = watches
            .register("alice", subs[1].closer(), stalled.clone())
            .unwrap();
        let refused = watches.register("alice", subs[2].closer(), stalled.clone());
        assert!(matches!(refused, Err(Full::User { limit: 2, .. })));
        assert!(
            watches
                .register("bob", subs[2].closer(), stalled.clone())
                .is_ok()
        );
        drop(a1);
        assert!(watches.register("alice", subs[3].closer(), stalled).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_watch_with_something_to_send_and_unpolled_is_ended() {
        let limit = Duration::from_secs(60);
        let (bus, watches) = (bus(), Watches::new(10, 10, limit));
        let stalled = IntCounter::new("s", "s").unwrap();
        let mut idle = bus
            .subscribe(Filter::scope(Scope::Namespace("x".into())), None)
            .unwrap();
        let stuck = bus.subscribe(Filter::scope(Scope::All), None).unwrap();
        let busy = bus.subscribe(Filter::scope(Scope::All), None).unwrap();
        let r_idle = watches
            .register("u", idle.closer(), stalled.clone())
            .unwrap();
        let r_stuck = watches
            .register("u", stuck.closer(), stalled.clone())
            .unwrap();
        let r_busy = watches
            .register("u", busy.closer(), stalled.clone())
            .unwrap();
        bus.publish(events(2));
        for _ in 0..3 {
            tokio::time::advance(limit).await;
            r_busy.set_backlog(true);
            assert!(r_busy.polled(Instant::now()));
            watches.sweep(Instant::now());
        }
        assert_eq!(stalled.get(), 1);
        assert!(!r_stuck.polled(Instant::now()), "ended");
        assert_eq!(r_stuck.ended(), Some(Ended::Stalled));
        assert_eq!(r_busy.ended(), None);
        assert!(
            r_idle.polled(Instant::now()),
            "nothing to send: not stalled"
        );
        assert!(!stuck.closer().has_pending(), "its queue was freed");
        assert_eq!(watches.len(), 2, "its slot was released");
        assert_eq!(watches.lock().per_user["u"], 2, "and its user's");
        assert!(idle.take(&mut Default::default()) == 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_every_watch_and_later_ones() {
        let (bus, watches) = (bus(), Watches::new(10, 10, Duration::from_secs(60)));
        let sub = bus.subscribe(Filter::scope(Scope::All), None).unwrap();
        let r = watches
            .register("u", sub.closer(), IntCounter::new("s", "s").unwrap())
            .unwrap();
        watches.shut_down();
        assert!(!r.polled(Instant::now()));
        assert_eq!(r.ended(), Some(Ended::ShutDown));
        let late = bus.subscribe(Filter::scope(Scope::All), None).unwrap();
        let r = watches
            .register("u", late.closer(), IntCounter::new("s", "s").unwrap())
            .unwrap();
        assert!(!r.polled(Instant::now()));
        assert_eq!(r.ended(), Some(Ended::ShutDown));
    }
}
