//! The in-memory bus: assigns resourceVersions, keeps the replay window, fans out to
//! subscribers. Never awaits, never blocks on a subscriber, knows nothing of HTTP or of
//! who is allowed to watch.
//!
//! Subscribers are indexed by scope (every event, every namespaced event, one namespace),
//! and each one's field selector runs before its queue, so publishing costs work only for
//! the subscribers that want the event. Each queue is bounded in events *and* bytes and
//! never waits: when it is full the event is dropped for that subscriber and counted, so
//! a slow watcher costs itself events and never costs ingest or anyone else time.
//! Subscribers are woken once per published batch, after the bus lock is released.
//!
//! Here: the bus, its lock and publishing. `rv`: resourceVersions. `scope`: who selects
//! what, and the index. `queue`: each subscriber's bounded queue and its ends. `window`:
//! LIST and GET reads of the replay window.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::event::Event;
use crate::status::ApiError;

mod queue;
mod rv;
mod scope;
#[cfg(test)]
mod tests;
mod window;

use queue::Queue;
pub use queue::{Closer, Subscription};
pub use rv::{EPOCH_MICROS, INDEX_BITS, Published, micros_since_epoch, time_base};
pub use scope::{Filter, Scope};
use scope::{Index, Subscriber};
pub use window::{At, ListError, ListRange, Page};

/// Sizes of the window and of each subscriber's queue.
#[derive(Debug, Clone)]
pub struct Config {
    pub window_events: usize,
    pub window_bytes: usize,
    pub subscriber_queue_events: usize,
    pub subscriber_queue_bytes: usize,
}

/// The bus is down (NATS unreachable): nothing can be published, watched or listed
/// here until it is up again. The one shape every refusal for that reason takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}; this replica cannot serve now, another one may")]
pub struct Down {
    reason: Arc<str>,
}

impl Down {
    pub fn new(reason: &str) -> Self {
        Down {
            reason: reason.into(),
        }
    }

    /// Why, as `set_down` was told (for `/readyz?verbose`).
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Down: a 503, so that the client (or the aggregator) tries another replica.
impl From<Down> for ApiError {
    fn from(e: Down) -> Self {
        ApiError::ServiceUnavailable(e.to_string())
    }
}

/// Why a watch cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Expired(#[from] Expired),
    #[error(transparent)]
    Unavailable(#[from] Down),
}

/// A `resourceVersion` older than the window: the events after it are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too old resource version: {requested} ({oldest})")]
pub struct Expired {
    pub requested: u64,
    /// The oldest resourceVersion still in the window.
    pub oldest: u64,
}

impl From<Expired> for ApiError {
    fn from(e: Expired) -> Self {
        ApiError::Expired {
            requested: e.requested,
            oldest: e.oldest,
        }
    }
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
    /// The window's ends (0 while it is empty), as of the last publish.
    pub window_oldest_resource_version: AtomicU64,
    pub window_newest_resource_version: AtomicU64,
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
    /// The newest resourceVersion, for `wait_for`: sent after the lock is released, once
    /// per publish (never per event or per subscriber).
    newest: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    last_rv: u64,
    /// The newest resourceVersion no longer held: a watch or LIST from before it has
    /// lost events. resourceVersions need not be consecutive (see `nats`), so this is
    /// kept rather than inferred from the oldest event held.
    evicted_through: u64,
    /// Why the bus is down, while it is (set by the NATS follower; never in memory mode).
    down: Option<Down>,
    window: VecDeque<Arc<Published>>,
    window_bytes: usize,
    index: Index,
    /// Counts publishes, so that a subscriber is woken once per batch.
    batch: u64,
}

impl Bus {
    pub fn new(config: Config) -> Self {
        Bus {
            shared: Arc::new(Shared {
                config,
                state: Mutex::default(),
                stats: Stats::default(),
                newest: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The resourceVersion of the newest event published (before the first: where
    /// numbering starts, 0 unless `reset` moved it).
    pub fn resource_version(&self) -> u64 {
        self.lock().last_rv
    }

    /// Wait until the bus has reached `rv`, for at most `timeout`: woken by the publish
    /// that reaches it. Only a watch from a resourceVersion ahead of this replica (a few
    /// events behind another, with `--bus=nats`) waits; the bus itself never does.
    pub async fn wait_for(&self, rv: u64, timeout: std::time::Duration) {
        let mut newest = self.shared.newest.subscribe();
        // Not reached in time: the caller answers "too large" and the client lists again.
        let _ = tokio::time::timeout(timeout, newest.wait_for(|n| *n >= rv)).await;
    }

    /// Tell `wait_for` the newest resourceVersion (after the lock is released).
    fn announce(&self, last_rv: u64) {
        self.shared.newest.send_if_modified(|n| {
            let newer = last_rv > *n;
            *n = (*n).max(last_rv);
            newer
        });
    }

    /// Publish a batch, in order, as one step: a watcher sees all of it or (if it
    /// subscribes later) none of it. Returns the resourceVersion of the last event.
    pub fn publish(&self, events: Vec<Event>) -> u64 {
        self.publish_with(events, |last_rv, _| Some(last_rv + 1))
    }

    /// Publish a batch whose resourceVersions were given elsewhere (the shared stream):
    /// `first_rv + i` for the i-th event. An event at or below the newest already
    /// published was seen before (a re-read after a reconnect) and is skipped.
    pub fn publish_at(&self, first_rv: u64, events: Vec<Event>) -> u64 {
        self.publish_with(events, |last_rv, i| {
            let rv = first_rv + i;
            (rv > last_rv).then_some(rv)
        })
    }

    /// `next(last_rv, i)`: the i-th event's resourceVersion, or `None` to skip it.
    fn publish_with(
        &self,
        events: Vec<Event>,
        mut next: impl FnMut(u64, u64) -> Option<u64>,
    ) -> u64 {
        let cfg = &self.shared.config;
        let stats = &self.shared.stats;
        let (mut bytes, mut count, mut dropped) = (0u64, 0u64, 0u64);
        let mut wake: Vec<Arc<Queue>> = Vec::new();
        // Once per batch, outside the lock: the watch's stage latencies start here.
        let published_at = tokio::time::Instant::now();
        let last_rv = {
            let mut guard = self.lock();
            let st = &mut *guard;
            st.batch += 1;
            let batch = st.batch;
            for (i, event) in events.into_iter().enumerate() {
                let Some(rv) = next(st.last_rv, i as u64) else {
                    continue;
                };
                st.last_rv = rv;
                count += 1;
                let published = Arc::new(Published::new(rv, event, published_at));
                let size = published.wire_len(false);
                bytes += size as u64;
                let ev = &published.event;
                let namespaced = ev
                    .namespace()
                    .and_then(|ns| st.index.namespaces.get_mut(ns));
                let lists = [
                    Some(&mut st.index.all),
                    ev.namespace().map(|_| &mut st.index.all_namespaces),
                    namespaced,
                ];
                for sub in lists.into_iter().flatten().flat_map(|l| l.iter_mut()) {
                    if !sub.selector.matches(ev) || sub.queue.closed.load(Ordering::Relaxed) {
                        continue;
                    }
                    dropped += u64::from(sub.queue.offer(&published, size, cfg));
                    if sub.woken_in != batch {
                        sub.woken_in = batch;
                        wake.push(sub.queue.clone());
                    }
                }

                st.window_bytes += published.event.memory_len();
                st.window.push_back(published);
                while st.window.len() > cfg.window_events || st.window_bytes > cfg.window_bytes {
                    let Some(old) = st.window.pop_front() else {
                        break;
                    };
                    st.window_bytes -= old.event.memory_len();
                    st.evicted_through = old.resource_version;
                }
            }
            st.report_window(stats);
            st.last_rv
        };
        self.announce(last_rv);
        for queue in wake {
            queue.waker.wake();
        }
        stats.published_events.fetch_add(count, Ordering::Relaxed);
        stats.published_bytes.fetch_add(bytes, Ordering::Relaxed);
        stats
            .dropped_queue_full
            .fetch_add(dropped, Ordering::Relaxed);
        last_rv
    }

    /// Mark the bus down: every subscription ends with `reason` (its watch sends it as
    /// an `ERROR`), and new watches and LISTs are refused with it until `set_up`. Whether
    /// it was up until now.
    pub fn set_down(&self, reason: &str) -> bool {
        let reason = Down::new(reason);
        let (was_up, closers): (bool, Vec<Arc<Queue>>) = {
            let mut st = self.lock();
            let was_up = st.down.replace(reason.clone()).is_none();
            let index = std::mem::take(&mut st.index);
            let closers = index
                .all
                .into_iter()
                .chain(index.all_namespaces)
                .chain(index.namespaces.into_values().flatten())
                .map(|s| s.queue)
                .collect();
            (was_up, closers)
        };
        for queue in closers {
            let _ = queue.failure.set(reason.clone());
            // Off the index already: close without taking the bus lock again.
            Closer {
                bus: Weak::new(),
                queue,
            }
            .close();
        }
        was_up
    }

    /// Mark the bus up again. Whether it was down until now.
    pub fn set_up(&self) -> bool {
        self.lock().down.take().is_some()
    }

    /// Why the bus is down, if it is.
    pub fn down(&self) -> Option<Down> {
        self.lock().down.clone()
    }

    /// Forget the window: what the stream held is gone (a new stream), and everything up
    /// to `through` is reported lost to a watch or LIST that asks for it.
    pub fn reset(&self, through: u64) {
        let mut st = self.lock();
        let freed = std::mem::take(&mut st.window);
        st.window_bytes = 0;
        st.evicted_through = st.evicted_through.max(through);
        st.last_rv = st.last_rv.max(through);
        st.report_window(&self.shared.stats);
        let last_rv = st.last_rv;
        drop(st);
        self.announce(last_rv);
        drop(freed);
    }

    /// Subscribe to what `filter` selects. With `since = Some(n)`, the events after `n`
    /// still in the window come first (`n = 0`: the whole window), then the live ones,
    /// with no gap between them because both are taken under the same lock.
    pub fn subscribe(&self, filter: Filter, since: Option<u64>) -> Result<Subscription, Refused> {
        let queue = Arc::new(Queue {
            state: Mutex::default(),
            waker: AtomicWaker::new(),
            closed: AtomicBool::new(false),
            failure: OnceLock::new(),
            scope: filter.scope.clone(),
        });
        let mut st = self.lock();
        if let Some(down) = &st.down {
            return Err(down.clone().into());
        }
        let replay = match since {
            None => VecDeque::new(),
            Some(n) => {
                if n != 0 && n < st.evicted_through {
                    return Err(Expired {
                        requested: n,
                        oldest: st.oldest(),
                    }
                    .into());
                }
                st.window
                    .iter()
                    .filter(|p| p.resource_version > n && filter.matches(&p.event))
                    .cloned()
                    .collect()
            }
        };
        st.index.list_mut(&filter.scope).push(Subscriber {
            queue: queue.clone(),
            selector: filter.selector,
            woken_in: 0,
        });
        Ok(Subscription {
            replay,
            closer: Closer {
                bus: Arc::downgrade(&self.shared),
                queue,
            },
            dropped: 0,
            start_rv: st.last_rv,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock can leave the state half-updated on a panic: take it back.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
