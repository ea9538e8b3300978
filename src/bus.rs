//! The in-memory bus: assigns resourceVersions, keeps the replay window, fans out to
//! subscribers. Never awaits, never blocks on a subscriber, knows nothing of HTTP or of
//! who is allowed to watch.
//!
//! Each subscriber has a queue bounded in events *and* bytes, fed with `try_send`: when it
//! is full the event is dropped for that subscriber and counted, so a slow watcher costs
//! itself events and never costs ingest or anyone else time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::event::Event;

/// Sizes of the window and of each subscriber's queue.
#[derive(Debug, Clone)]
pub struct Config {
    pub window_events: usize,
    pub window_bytes: usize,
    pub subscriber_queue_events: usize,
    pub subscriber_queue_bytes: usize,
}

/// An event with the resourceVersion the bus gave it. Shared by the window and every queue.
#[derive(Debug)]
pub struct Published {
    pub resource_version: u64,
    digits: Bytes,
    pub event: Arc<Event>,
}

impl Published {
    /// The resourceVersion as the decimal text that fills the event's hole.
    pub fn digits(&self) -> &Bytes {
        &self.digits
    }

    /// Bytes this event puts on the wire in the given form.
    pub fn wire_len(&self, truncated: bool) -> usize {
        self.event.wire_len(truncated) + self.digits.len()
    }
}

/// Which events a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every event (`events`).
    All,
    /// Every event that has a namespace (`namespacedevents` across namespaces).
    AllNamespaces,
    /// The events of one namespace.
    Namespace(Box<str>),
}

impl Scope {
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            Scope::All => true,
            Scope::AllNamespaces => event.namespace.is_some(),
            Scope::Namespace(ns) => event.namespace.as_deref() == Some(&**ns),
        }
    }
}

/// A `resourceVersion` older than the window: the events after it are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too old resource version: {requested} ({oldest})")]
pub struct Expired {
    pub requested: u64,
    /// The oldest resourceVersion still in the window.
    pub oldest: u64,
}

/// Counters read by `metrics` when scraped.
#[derive(Debug, Default)]
pub struct Stats {
    pub published_events: AtomicU64,
    pub published_bytes: AtomicU64,
    /// Events a subscriber lost because its queue was full.
    pub dropped_queue_full: AtomicU64,
    pub window_events: AtomicUsize,
    pub window_bytes: AtomicUsize,
}

/// A cheap handle on the bus.
#[derive(Clone)]
pub struct Bus {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    state: Mutex<State>,
    stats: Stats,
}

#[derive(Default)]
struct State {
    last_rv: u64,
    window: VecDeque<Arc<Published>>,
    window_bytes: usize,
    subscribers: Vec<Subscriber>,
}

struct Subscriber {
    scope: Scope,
    tx: mpsc::Sender<Arc<Published>>,
    shared: Arc<SubscriberShared>,
}

#[derive(Default)]
struct SubscriberShared {
    pending_bytes: AtomicUsize,
    dropped: AtomicU64,
}

impl Bus {
    pub fn new(config: Config) -> Self {
        Bus {
            shared: Arc::new(Shared {
                config,
                state: Mutex::default(),
                stats: Stats::default(),
            }),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The resourceVersion of the newest event published (0 before the first).
    pub fn resource_version(&self) -> u64 {
        self.lock().last_rv
    }

    /// Publish a batch, in order, as one step: a watcher sees all of it or (if it
    /// subscribes later) none of it. Returns the resourceVersion of the last event.
    pub fn publish(&self, events: Vec<Event>) -> u64 {
        let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
        let cfg = &self.shared.config;
        let stats = &self.shared.stats;
        let mut st = self.lock();
        for event in events {
            st.last_rv += 1;
            let rv = st.last_rv;
            let published = Arc::new(Published {
                resource_version: rv,
                digits: Bytes::copy_from_slice(itoa::Buffer::new().format(rv).as_bytes()),
                event,
            });
            let size = published.wire_len(false);
            stats.published_events.fetch_add(1, Ordering::Relaxed);
            stats
                .published_bytes
                .fetch_add(size as u64, Ordering::Relaxed);
            st.subscribers
                .retain(|s| s.offer(&published, size, cfg.subscriber_queue_bytes, stats));

            st.window_bytes += published.event.memory_len();
            st.window.push_back(published);
            while st.window.len() > cfg.window_events || st.window_bytes > cfg.window_bytes {
                let Some(old) = st.window.pop_front() else {
                    break;
                };
                st.window_bytes -= old.event.memory_len();
            }
        }
        stats
            .window_events
            .store(st.window.len(), Ordering::Relaxed);
        stats.window_bytes.store(st.window_bytes, Ordering::Relaxed);
        st.last_rv
    }

    /// Subscribe to `scope`. With `since = Some(n)`, the events after `n` still in the
    /// window come first (`n = 0`: the whole window), then the live ones, with no gap
    /// between them because both are taken under the same lock.
    pub fn subscribe(&self, scope: Scope, since: Option<u64>) -> Result<Subscription, Expired> {
        let cfg = &self.shared.config;
        let (tx, rx) = mpsc::channel(cfg.subscriber_queue_events.max(1));
        let shared = Arc::new(SubscriberShared::default());
        let mut st = self.lock();
        let replay = match since {
            None => VecDeque::new(),
            Some(n) => {
                let first_kept = st
                    .window
                    .front()
                    .map_or(st.last_rv + 1, |p| p.resource_version);
                if n != 0 && n + 1 < first_kept {
                    return Err(Expired {
                        requested: n,
                        oldest: first_kept,
                    });
                }
                st.window
                    .iter()
                    .filter(|p| p.resource_version > n && scope.matches(&p.event))
                    .cloned()
                    .collect()
            }
        };
        st.subscribers.push(Subscriber {
            scope,
            tx,
            shared: shared.clone(),
        });
        Ok(Subscription {
            replay,
            rx,
            shared,
            start_rv: st.last_rv,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock can leave the state half-updated on a panic: take it back.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Subscriber {
    /// Offer an event; `false` when the subscriber is gone and should be removed.
    fn offer(&self, p: &Arc<Published>, size: usize, max_bytes: usize, stats: &Stats) -> bool {
        if !self.scope.matches(&p.event) {
            return !self.tx.is_closed();
        }
        let pending = self.shared.pending_bytes.load(Ordering::Relaxed);
        // A queue always takes one event, however large, so that an event bigger than the
        // byte cap can still reach an idle watcher.
        if pending > 0 && pending + size > max_bytes {
            self.drop_one(stats);
            return true;
        }
        match self.tx.try_send(p.clone()) {
            Ok(()) => {
                self.shared.pending_bytes.fetch_add(size, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.drop_one(stats);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn drop_one(&self, stats: &Stats) {
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
    }
}

/// One subscriber's end: the replayed events, then the live queue.
pub struct Subscription {
    replay: VecDeque<Arc<Published>>,
    rx: mpsc::Receiver<Arc<Published>>,
    shared: Arc<SubscriberShared>,
    start_rv: u64,
}

impl Subscription {
    /// The next event, replay first.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<Published>>> {
        if let Some(p) = self.replay.pop_front() {
            return Poll::Ready(Some(p));
        }
        let next = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(p)) = &next {
            self.shared
                .pending_bytes
                .fetch_sub(p.wire_len(false), Ordering::Relaxed);
        }
        next
    }

    /// Events lost since the last call, because the queue was full.
    pub fn take_dropped(&self) -> u64 {
        self.shared.dropped.swap(0, Ordering::Relaxed)
    }

    /// Whether events were lost since the last `take_dropped`.
    pub fn has_dropped(&self) -> bool {
        self.shared.dropped.load(Ordering::Relaxed) > 0
    }

    /// Bytes queued for this subscriber and not yet taken: how far it lags.
    pub fn backlog_bytes(&self) -> usize {
        self.shared.pending_bytes.load(Ordering::Relaxed)
    }

    /// Take no more events and free the queued ones now; the bus forgets this
    /// subscriber at its next event.
    pub fn close(&mut self) {
        self.replay.clear();
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        self.shared.pending_bytes.store(0, Ordering::Relaxed);
    }

    /// The bus's resourceVersion when this subscription started.
    pub fn start_resource_version(&self) -> u64 {
        self.start_rv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_event_list;

    fn events(namespaces: &[Option<&str>]) -> Vec<Event> {
        let items: Vec<String> = namespaces
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let ns = ns.map_or(String::new(), |n| format!(r#","namespace":"{n}""#));
                format!(
                    r#"{{"level":"Metadata","auditID":"id-{i}","stage":"ResponseComplete","objectRef":{{"resource":"pods"{ns}}}}}"#
                )
            })
            .collect();
        let body = format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}}"#,
            items.join(",")
        );
        decode_event_list(body.as_bytes(), "test", "2026-01-01T00:00:00Z").unwrap()
    }

    fn config() -> Config {
        Config {
            window_events: 5,
            window_bytes: 1 << 20,
            subscriber_queue_events: 3,
            subscriber_queue_bytes: 1 << 20,
        }
    }

    fn drain(sub: &mut Subscription) -> Vec<u64> {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = vec![];
        while let Poll::Ready(Some(p)) = sub.poll_next(&mut cx) {
            out.push(p.resource_version);
        }
        out
    }

    #[test]
    fn resource_versions_increase_and_scope_filters() {
        let bus = Bus::new(config());
        let mut all = bus.subscribe(Scope::All, None).unwrap();
        let mut ns_a = bus.subscribe(Scope::Namespace("a".into()), None).unwrap();
        let mut any_ns = bus.subscribe(Scope::AllNamespaces, None).unwrap();
        assert_eq!(bus.publish(events(&[Some("a"), None, Some("b")])), 3);
        assert_eq!(drain(&mut all), vec![1, 2, 3]);
        assert_eq!(drain(&mut ns_a), vec![1]);
        assert_eq!(drain(&mut any_ns), vec![1, 3]);
    }

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        let bus = Bus::new(config());
        let mut slow = bus.subscribe(Scope::All, None).unwrap();
        let mut fast = bus.subscribe(Scope::All, None).unwrap();
        bus.publish(events(&[None, None]));
        assert_eq!(drain(&mut fast), vec![1, 2]);
        bus.publish(events(&[None, None, None]));
        assert_eq!(drain(&mut fast), vec![3, 4, 5]);
        assert_eq!(drain(&mut slow), vec![1, 2, 3]);
        assert_eq!(slow.take_dropped(), 2);
        assert_eq!(slow.take_dropped(), 0);
        assert_eq!(fast.take_dropped(), 0);
        assert_eq!(bus.stats().dropped_queue_full.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_closed_subscription_frees_its_queue_and_is_forgotten() {
        let bus = Bus::new(config());
        let mut sub = bus.subscribe(Scope::All, Some(0)).unwrap();
        bus.publish(events(&[None, None]));
        let published = bus.lock().window[0].clone();
        assert_eq!(Arc::strong_count(&published), 3, "window, queue, here");
        sub.close();
        assert_eq!(Arc::strong_count(&published), 2, "the queue let go");
        assert_eq!(sub.backlog_bytes(), 0);
        assert_eq!(drain(&mut sub), Vec::<u64>::new());
        bus.publish(events(&[None]));
        assert!(bus.lock().subscribers.is_empty());
    }

    #[test]
    fn byte_cap_bounds_a_queue() {
        let mut cfg = config();
        cfg.subscriber_queue_events = 100;
        let one = events(&[None]).pop().unwrap().wire_len(false) + 1;
        cfg.subscriber_queue_bytes = one * 2;
        let bus = Bus::new(cfg);
        let mut sub = bus.subscribe(Scope::All, None).unwrap();
        bus.publish(events(&[None, None, None, None]));
        assert_eq!(drain(&mut sub), vec![1, 2]);
        assert_eq!(sub.take_dropped(), 2);
        // Once read, the queue takes events again.
        bus.publish(events(&[None]));
        assert_eq!(drain(&mut sub), vec![5]);
    }

    #[test]
    fn every_subscriber_shares_the_same_bytes() {
        let bus = Bus::new(config());
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut a = bus.subscribe(Scope::All, None).unwrap();
        let mut b = bus.subscribe(Scope::All, None).unwrap();
        bus.publish(events(&[Some("x")]));
        let (Poll::Ready(Some(pa)), Poll::Ready(Some(pb))) =
            (a.poll_next(&mut cx), b.poll_next(&mut cx))
        else {
            panic!("both subscribers get the event");
        };
        assert!(Arc::ptr_eq(&pa, &pb));
        assert_eq!(pa.event.head().as_ptr(), pb.event.head().as_ptr());
        assert_eq!(pa.event.tail(false).as_ptr(), pb.event.tail(false).as_ptr());
    }

    #[test]
    fn window_replays_and_expires() {
        let bus = Bus::new(config());
        bus.publish(events(&[
            Some("a"),
            Some("b"),
            Some("a"),
            Some("b"),
            Some("a"),
            Some("b"),
            Some("a"),
        ]));
        // window_events = 5: rv 3..=7 kept.
        let mut from4 = bus
            .subscribe(Scope::Namespace("a".into()), Some(4))
            .unwrap();
        assert_eq!(drain(&mut from4), vec![5, 7]);
        let mut from2 = bus.subscribe(Scope::All, Some(2)).unwrap();
        assert_eq!(drain(&mut from2), vec![3, 4, 5, 6, 7]);
        assert_eq!(
            bus.subscribe(Scope::All, Some(1)).err(),
            Some(Expired {
                requested: 1,
                oldest: 3
            })
        );
        let mut from0 = bus.subscribe(Scope::All, Some(0)).unwrap();
        assert_eq!(drain(&mut from0), vec![3, 4, 5, 6, 7]);
        let mut live = bus.subscribe(Scope::All, Some(7)).unwrap();
        bus.publish(events(&[None]));
        assert_eq!(drain(&mut live), vec![8]);
    }

    #[test]
    fn window_byte_cap_evicts() {
        let mut cfg = config();
        cfg.window_events = 100;
        let one = events(&[None]).pop().unwrap().memory_len();
        cfg.window_bytes = one * 2;
        let bus = Bus::new(cfg);
        bus.publish(events(&[None, None, None]));
        assert_eq!(bus.stats().window_events.load(Ordering::Relaxed), 2);
        assert!(bus.subscribe(Scope::All, Some(1)).is_ok());
        assert!(bus.subscribe(Scope::All, Some(0)).is_ok());
    }

    #[test]
    fn dropped_subscribers_are_removed() {
        let bus = Bus::new(config());
        let sub = bus.subscribe(Scope::All, None).unwrap();
        drop(sub);
        bus.publish(events(&[None]));
        assert!(bus.lock().subscribers.is_empty());
    }
}
