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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::event::Event;
use crate::selector::FieldSelector;
use crate::status::ApiError;

/// The epoch of time-derived resourceVersions: 2025-01-01T00:00:00Z, in microseconds
/// since 1970.
pub const EPOCH_MICROS: i128 = 1_735_689_600_000_000;
/// Bits of a time-derived resourceVersion below the time: 4096 numbers a microsecond.
pub const INDEX_BITS: u32 = 12;

/// Microseconds since `EPOCH_MICROS` at `unix_nanos` (0 before it).
pub fn micros_since_epoch(unix_nanos: i128) -> u64 {
    u64::try_from(unix_nanos / 1000 - EPOCH_MICROS).unwrap_or(0)
}

/// Where the memory bus of a server started now numbers from: above every
/// resourceVersion an earlier run of it gave out (unless that run gave out more than
/// 4096 a microsecond), so that after a restart an old resourceVersion is "too old" (410,
/// the client lists again) and never names another event. It fits an `i64` until 2096.
pub fn time_base() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    micros_since_epoch(nanos) << INDEX_BITS
}

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
    digits: [u8; 20],
    digits_len: u8,
    pub event: Event,
}

impl Published {
    fn new(resource_version: u64, event: Event) -> Self {
        let mut digits = [0; 20];
        let mut buf = itoa::Buffer::new();
        let text = buf.format(resource_version).as_bytes();
        digits[..text.len()].copy_from_slice(text);
        Published {
            resource_version,
            digits,
            digits_len: text.len() as u8,
            event,
        }
    }

    /// The resourceVersion as the decimal text that fills the event's hole.
    pub fn digits(&self) -> &[u8] {
        &self.digits[..usize::from(self.digits_len)]
    }

    /// Bytes this event puts on the wire in the given form.
    pub fn wire_len(&self, truncated: bool) -> usize {
        self.event.wire_len(truncated) + usize::from(self.digits_len)
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
            Scope::AllNamespaces => event.namespace().is_some(),
            Scope::Namespace(ns) => event.namespace() == Some(&**ns),
        }
    }
}

/// What a subscriber wants: a scope, narrowed by a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub scope: Scope,
    pub selector: FieldSelector,
}

impl Filter {
    pub fn scope(scope: Scope) -> Self {
        Filter {
            scope,
            selector: FieldSelector::default(),
        }
    }

    pub fn matches(&self, event: &Event) -> bool {
        self.scope.matches(event) && self.selector.matches(event)
    }
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

/// Which part of the window a LIST reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListRange {
    /// Only events after this resourceVersion (where the previous page ended; 0: all).
    pub after: u64,
    /// Whether `after` must still be followed by everything that came after it: a
    /// consistent continuation, which fails with `Expired` once the window moved on.
    pub after_must_be_kept: bool,
    /// Which state of the window.
    pub at: At,
    /// At most this many events (0: no limit).
    pub limit: usize,
}

/// The state of the window a LIST reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum At {
    /// As it is now.
    #[default]
    Now,
    /// As it was when this resourceVersion was the newest: the events up to it.
    Exact(u64),
    /// As it is now, which must be at least this resourceVersion, and the window must
    /// still hold what followed it.
    NotOlderThan(u64),
}

/// A LIST that cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Expired(#[from] Expired),
    /// `at` is newer than the newest event.
    #[error("too large resource version: {requested}, current: {current}")]
    TooLarge { requested: u64, current: u64 },
    #[error(transparent)]
    Unavailable(#[from] Down),
}

/// One page of the window, taken under the bus lock.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Arc<Published>>,
    /// The resourceVersion the page is consistent with.
    pub resource_version: u64,
    /// More matching events follow the last item (up to `resource_version`).
    pub more: bool,
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

/// Subscribers by scope: an event visits `all`, then (if it has a namespace)
/// `all_namespaces` and its namespace's list, and nobody else.
#[derive(Default)]
struct Index {
    all: Vec<Subscriber>,
    all_namespaces: Vec<Subscriber>,
    namespaces: HashMap<Box<str>, Vec<Subscriber>>,
}

impl Index {
    fn list_mut(&mut self, scope: &Scope) -> &mut Vec<Subscriber> {
        match scope {
            Scope::All => &mut self.all,
            Scope::AllNamespaces => &mut self.all_namespaces,
            Scope::Namespace(ns) => self.namespaces.entry(ns.clone()).or_default(),
        }
    }

    fn remove(&mut self, scope: &Scope, queue: &Arc<Queue>) {
        let list = self.list_mut(scope);
        list.retain(|s| !Arc::ptr_eq(&s.queue, queue));
        if list.is_empty()
            && let Scope::Namespace(ns) = scope
        {
            self.namespaces.remove(ns);
        }
    }
}

struct Subscriber {
    queue: Arc<Queue>,
    selector: FieldSelector,
    /// The last batch that queued something here, so it is woken once per batch.
    woken_in: u64,
}

/// One subscriber's bounded queue, shared by the bus (producer) and its watch.
struct Queue {
    state: Mutex<QueueState>,
    waker: AtomicWaker,
    closed: AtomicBool,
    /// Why the bus ended this subscription, when it did (its watch ends with an error).
    failure: OnceLock<Down>,
    scope: Scope,
}

#[derive(Default)]
struct QueueState {
    events: VecDeque<Arc<Published>>,
    bytes: usize,
    /// Events lost because the queue was full, not yet taken by the watch.
    dropped: u64,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue an event or count it lost; `true` if it was lost.
    fn offer(&self, p: &Arc<Published>, size: usize, cfg: &Config) -> bool {
        let mut q = self.lock();
        // A queue always takes one event, however large, so that an event bigger than
        // the byte cap can still reach an idle watcher.
        let full = !q.events.is_empty()
            && (q.events.len() >= cfg.subscriber_queue_events
                || q.bytes + size > cfg.subscriber_queue_bytes);
        if full {
            q.dropped += 1;
        } else {
            q.events.push_back(p.clone());
            q.bytes += size;
        }
        full
    }
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

    /// The resourceVersion of the newest event published (before the first: where
    /// numbering starts, 0 unless `reset` moved it).
    pub fn resource_version(&self) -> u64 {
        self.lock().last_rv
    }

    /// Wait until the bus has reached `rv`, for at most `timeout`. Polls: only a watch
    /// from a resourceVersion ahead of this replica waits, and only briefly.
    pub async fn wait_for(&self, rv: u64, timeout: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.resource_version() < rv && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
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
                let published = Arc::new(Published::new(rv, event));
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
        drop(st);
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

    /// The events of the window that `filter` selects, within `range`. The lock is held
    /// for a scan of the window from `range.after` on (a search finds where to start),
    /// comparing routing fields only; nothing is copied but `Arc`s.
    pub fn list(&self, filter: &Filter, range: ListRange) -> Result<Page, ListError> {
        let st = self.lock();
        if let Some(down) = &st.down {
            return Err(down.clone().into());
        }
        let lost = |n: u64| n < st.evicted_through;
        let at = match range.at {
            At::Now => st.last_rv,
            At::Exact(n) | At::NotOlderThan(n) if n > st.last_rv => {
                return Err(ListError::TooLarge {
                    requested: n,
                    current: st.last_rv,
                });
            }
            At::Exact(n) | At::NotOlderThan(n) if lost(n) => {
                return Err(Expired {
                    requested: n,
                    oldest: st.oldest(),
                }
                .into());
            }
            At::Exact(n) => n,
            At::NotOlderThan(_) => st.last_rv,
        };
        if range.after_must_be_kept && lost(range.after) {
            return Err(Expired {
                requested: range.after,
                oldest: st.oldest(),
            }
            .into());
        }
        let start = st
            .window
            .partition_point(|p| p.resource_version <= range.after);
        let mut page = Page {
            items: Vec::new(),
            resource_version: at,
            more: false,
        };
        for p in st.window.range(start..) {
            if p.resource_version > at {
                break;
            }
            if !filter.matches(&p.event) {
                continue;
            }
            if range.limit > 0 && page.items.len() == range.limit {
                page.more = true;
                break;
            }
            page.items.push(p.clone());
        }
        Ok(page)
    }

    /// The newest event of the window that `pred` accepts; while the bus is down, why
    /// it is (what this replica holds may be behind the stream).
    pub fn find(&self, pred: impl Fn(&Event) -> bool) -> Result<Option<Arc<Published>>, Down> {
        let st = self.lock();
        if let Some(down) = &st.down {
            return Err(down.clone());
        }
        Ok(st.window.iter().rev().find(|p| pred(&p.event)).cloned())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }
}

impl State {
    /// Copy the window's size and ends to `stats`, for the next scrape.
    fn report_window(&self, stats: &Stats) {
        stats
            .window_events
            .store(self.window.len(), Ordering::Relaxed);
        stats
            .window_bytes
            .store(self.window_bytes, Ordering::Relaxed);
        let oldest = self.window.front().map_or(0, |p| p.resource_version);
        stats
            .window_oldest_resource_version
            .store(oldest, Ordering::Relaxed);
        stats
            .window_newest_resource_version
            .store(self.last_rv, Ordering::Relaxed);
    }

    /// The oldest resourceVersion still held (one past the newest, when none is).
    fn oldest(&self) -> u64 {
        self.window
            .front()
            .map_or(self.last_rv + 1, |p| p.resource_version)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock can leave the state half-updated on a panic: take it back.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Ends a subscription from anywhere (its watch, or the sweeper that ends stalled
/// watches): frees its queued events and takes it off the bus. Idempotent.
#[derive(Clone)]
pub struct Closer {
    bus: Weak<Shared>,
    queue: Arc<Queue>,
}

impl Closer {
    pub fn close(&self) {
        if self.queue.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        let freed = std::mem::take(&mut *self.queue.lock());
        if let Some(bus) = self.bus.upgrade() {
            bus.lock().index.remove(&self.queue.scope, &self.queue);
        }
        self.queue.waker.wake();
        drop(freed);
    }

    /// Whether events are waiting, or were lost for lack of room, since the watch last
    /// took from the queue: a watch that is not polled while this holds is stalled.
    pub fn has_pending(&self) -> bool {
        let q = self.queue.lock();
        !q.events.is_empty() || q.dropped > 0
    }
}

/// One subscriber's end: the replayed events, then the live queue.
pub struct Subscription {
    replay: VecDeque<Arc<Published>>,
    closer: Closer,
    /// Lost events taken from the queue and not yet reported.
    dropped: u64,
    start_rv: u64,
}

impl Subscription {
    /// Move every waiting event (replay first) to the back of `into` and say how many
    /// bytes (full form) that was; `Ready(None)` once the subscription is closed and
    /// empty, `Pending` (the waker registered) when there is nothing yet.
    pub fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<Arc<Published>>,
    ) -> Poll<Option<usize>> {
        match self.take(into) {
            0 => {}
            bytes => return Poll::Ready(Some(bytes)),
        }
        self.closer.queue.waker.register(cx.waker());
        match self.take(into) {
            0 if self.closer.queue.closed.load(Ordering::Relaxed) => Poll::Ready(None),
            0 => Poll::Pending,
            bytes => Poll::Ready(Some(bytes)),
        }
    }

    /// Take without waiting; the bytes taken (0: nothing).
    pub fn take(&mut self, into: &mut VecDeque<Arc<Published>>) -> usize {
        if !self.replay.is_empty() {
            let bytes = self.replay.iter().map(|p| p.wire_len(false)).sum();
            into.append(&mut self.replay);
            return bytes;
        }
        let mut q = self.closer.queue.lock();
        self.dropped += std::mem::take(&mut q.dropped);
        if q.events.is_empty() {
            return 0;
        }
        if into.is_empty() {
            // Swap rather than copy: the queue keeps the emptied buffer's allocation.
            std::mem::swap(into, &mut q.events);
        } else {
            into.append(&mut q.events);
        }
        std::mem::take(&mut q.bytes)
    }

    /// Events lost since the last call, because the queue was full.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Whether lost events were taken with the queue and not yet reported (no lock).
    pub fn has_taken_drops(&self) -> bool {
        self.dropped > 0
    }

    /// Whether events were lost since the last `take_dropped`.
    pub fn has_dropped(&self) -> bool {
        self.dropped > 0 || self.closer.queue.lock().dropped > 0
    }

    /// Why the bus ended this subscription, if it did (rather than its watch or the
    /// sweeper).
    pub fn failure(&self) -> Option<&Down> {
        self.closer.queue.failure.get()
    }

    /// A handle that ends this subscription from elsewhere.
    pub fn closer(&self) -> Closer {
        self.closer.clone()
    }

    /// The bus's resourceVersion when this subscription started.
    pub fn start_resource_version(&self) -> u64 {
        self.start_rv
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.closer.close();
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
                let verb = if i % 2 == 0 { "get" } else { "put" };
                format!(
                    r#"{{"level":"Metadata","auditID":"id-{i}","stage":"ResponseComplete","verb":"{verb}","objectRef":{{"resource":"pods"{ns}}}}}"#
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

    fn scope(scope: Scope) -> Filter {
        Filter::scope(scope)
    }

    fn drain(sub: &mut Subscription) -> Vec<u64> {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = VecDeque::new();
        while let Poll::Ready(Some(_)) = sub.poll_take(&mut cx, &mut out) {}
        out.iter().map(|p| p.resource_version).collect()
    }

    #[test]
    fn resource_versions_increase_and_scope_filters() {
        let bus = Bus::new(config());
        let mut all = bus.subscribe(scope(Scope::All), None).unwrap();
        let mut ns_a = bus
            .subscribe(scope(Scope::Namespace("a".into())), None)
            .unwrap();
        let mut any_ns = bus.subscribe(scope(Scope::AllNamespaces), None).unwrap();
        assert_eq!(bus.publish(events(&[Some("a"), None, Some("b")])), 3);
        assert_eq!(drain(&mut all), vec![1, 2, 3]);
        assert_eq!(drain(&mut ns_a), vec![1]);
        assert_eq!(drain(&mut any_ns), vec![1, 3]);
    }

    #[test]
    fn the_selector_runs_before_the_queue() {
        let bus = Bus::new(config());
        let filter = Filter {
            scope: Scope::All,
            selector: FieldSelector::parse("verb=put").unwrap(),
        };
        let mut deletes = bus.subscribe(filter, None).unwrap();
        // Eight events, four puts: the queue of three loses one, not five.
        bus.publish(events(&[None; 8]));
        assert_eq!(drain(&mut deletes), vec![2, 4, 6]);
        assert_eq!(deletes.take_dropped(), 1);
    }

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        let bus = Bus::new(config());
        let mut slow = bus.subscribe(scope(Scope::All), None).unwrap();
        let mut fast = bus.subscribe(scope(Scope::All), None).unwrap();
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
        let mut sub = bus
            .subscribe(scope(Scope::Namespace("a".into())), Some(0))
            .unwrap();
        bus.publish(events(&[Some("a"), Some("a")]));
        let published = bus.lock().window[0].clone();
        assert_eq!(Arc::strong_count(&published), 3, "window, queue, here");
        let closer = sub.closer();
        assert!(closer.has_pending());
        closer.close();
        assert_eq!(Arc::strong_count(&published), 2, "the queue let go");
        assert!(!closer.has_pending());
        assert_eq!(drain(&mut sub), Vec::<u64>::new());
        assert!(
            bus.lock().index.namespaces.is_empty(),
            "taken off the index"
        );
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(
            sub.poll_take(&mut cx, &mut VecDeque::new()),
            Poll::Ready(None)
        );
    }

    #[test]
    fn byte_cap_bounds_a_queue() {
        let mut cfg = config();
        cfg.subscriber_queue_events = 100;
        let one = events(&[None]).pop().unwrap().wire_len(false) + 1;
        cfg.subscriber_queue_bytes = one * 2;
        let bus = Bus::new(cfg);
        let mut sub = bus.subscribe(scope(Scope::All), None).unwrap();
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
        let mut a = bus.subscribe(scope(Scope::All), None).unwrap();
        let mut b = bus.subscribe(scope(Scope::All), None).unwrap();
        bus.publish(events(&[Some("x")]));
        let (mut qa, mut qb) = (VecDeque::new(), VecDeque::new());
        assert!(a.take(&mut qa) > 0 && b.take(&mut qb) > 0);
        assert!(Arc::ptr_eq(&qa[0], &qb[0]));
    }

    /// A subscriber is woken once per batch, however many of its events the batch holds.
    #[test]
    fn one_wake_per_batch() {
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let bus = Bus::new(config());
        let mut sub = bus.subscribe(scope(Scope::All), None).unwrap();
        let mut into = VecDeque::new();
        assert!(sub.poll_take(&mut cx, &mut into).is_pending());
        bus.publish(events(&[None, None, None]));
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(sub.poll_take(&mut cx, &mut into).is_ready());
        assert_eq!(into.len(), 3);
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
            .subscribe(scope(Scope::Namespace("a".into())), Some(4))
            .unwrap();
        assert_eq!(drain(&mut from4), vec![5, 7]);
        let mut from2 = bus.subscribe(scope(Scope::All), Some(2)).unwrap();
        assert_eq!(drain(&mut from2), vec![3, 4, 5, 6, 7]);
        assert_eq!(
            bus.subscribe(scope(Scope::All), Some(1)).err(),
            Some(Refused::Expired(Expired {
                requested: 1,
                oldest: 3
            }))
        );
        let mut from0 = bus.subscribe(scope(Scope::All), Some(0)).unwrap();
        assert_eq!(drain(&mut from0), vec![3, 4, 5, 6, 7]);
        let mut live = bus.subscribe(scope(Scope::All), Some(7)).unwrap();
        bus.publish(events(&[None]));
        assert_eq!(drain(&mut live), vec![8]);
    }

    #[test]
    fn list_pages_and_expires() {
        let bus = Bus::new(config());
        bus.publish(events(&[
            Some("a"),
            None,
            Some("a"),
            None,
            Some("a"),
            None,
            Some("a"),
        ]));
        // window_events = 5: rv 3..=7 kept.
        let all = Filter::scope(Scope::All);
        let rvs = |p: &Page| {
            p.items
                .iter()
                .map(|p| p.resource_version)
                .collect::<Vec<_>>()
        };
        let page = bus.list(&all, ListRange::default()).unwrap();
        assert_eq!(
            (rvs(&page), page.resource_version, page.more),
            (vec![3, 4, 5, 6, 7], 7, false)
        );
        let first = ListRange {
            limit: 2,
            ..Default::default()
        };
        let page = bus.list(&all, first).unwrap();
        assert_eq!((rvs(&page), page.more), (vec![3, 4], true));
        let next = ListRange {
            after: 4,
            after_must_be_kept: true,
            at: At::Exact(7),
            limit: 2,
        };
        assert_eq!(rvs(&bus.list(&all, next).unwrap()), vec![5, 6]);
        // A snapshot: what came later is left out, however much is asked for.
        bus.publish(events(&[None]));
        let at7 = ListRange {
            after: 6,
            after_must_be_kept: true,
            at: At::Exact(7),
            limit: 0,
        };
        let page = bus.list(&all, at7).unwrap();
        assert_eq!(
            (rvs(&page), page.resource_version, page.more),
            (vec![7], 7, false)
        );
        // Exactly full: no further page is promised.
        let ns_a = Filter::scope(Scope::Namespace("a".into()));
        let page = bus
            .list(
                &ns_a,
                ListRange {
                    limit: 2,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!((rvs(&page), page.more), (vec![5, 7], false));
        // rv 4..=8 kept now: a continuation after 2 lost rv 3.
        let lost = ListRange {
            after: 2,
            after_must_be_kept: true,
            at: At::Now,
            limit: 2,
        };
        assert_eq!(
            bus.list(&all, lost).err(),
            Some(ListError::Expired(Expired {
                requested: 2,
                oldest: 4
            }))
        );
        let inconsistent = ListRange {
            after_must_be_kept: false,
            ..lost
        };
        assert_eq!(rvs(&bus.list(&all, inconsistent).unwrap()), vec![4, 5]);
        let old = ListRange {
            at: At::NotOlderThan(1),
            ..Default::default()
        };
        assert!(matches!(bus.list(&all, old), Err(ListError::Expired(_))));
        let new = ListRange {
            at: At::Exact(9),
            ..Default::default()
        };
        assert_eq!(
            bus.list(&all, new).err(),
            Some(ListError::TooLarge {
                requested: 9,
                current: 8
            })
        );
        let newer = ListRange {
            at: At::NotOlderThan(5),
            ..Default::default()
        };
        assert_eq!(bus.list(&all, newer).unwrap().resource_version, 8);
        let found = bus
            .find(|e| e.audit_id() == "id-4")
            .unwrap()
            .map(|p| p.resource_version);
        assert_eq!(found, Some(5));
        assert!(
            bus.find(|e| e.audit_id() == "id-1").unwrap().is_none(),
            "evicted"
        );
        assert!(bus.set_down("NATS lost"), "it was up");
        assert!(!bus.set_down("NATS still lost"), "already down");
        assert_eq!(
            bus.find(|_| true).err().as_ref().map(Down::reason),
            Some("NATS still lost")
        );
        assert!(bus.set_up(), "it was down");
        assert!(!bus.set_up(), "already up");
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
        assert!(bus.subscribe(scope(Scope::All), Some(1)).is_ok());
        assert!(bus.subscribe(scope(Scope::All), Some(0)).is_ok());
    }

    #[test]
    fn dropped_subscribers_are_removed() {
        let bus = Bus::new(config());
        let a = bus.subscribe(scope(Scope::All), None).unwrap();
        let b = bus
            .subscribe(scope(Scope::Namespace("x".into())), None)
            .unwrap();
        drop((a, b));
        let st = bus.lock();
        assert!(st.index.all.is_empty() && st.index.namespaces.is_empty());
    }
}
