//! One subscriber's bounded queue (events and bytes), shared by the bus, which offers
//! and never waits, and by its watch, which takes everything ready at once; a full queue
//! drops and counts. `Subscription` is the watch's end, `Closer` ends it from anywhere.

use super::*;

/// One subscriber's bounded queue, shared by the bus (producer) and its watch.
pub(super) struct Queue {
    pub(super) state: Mutex<QueueState>,
    pub(super) waker: AtomicWaker,
    pub(super) closed: AtomicBool,
    /// Why the bus ended this subscription, when it did (its watch ends with an error).
    pub(super) failure: OnceLock<Down>,
    pub(super) scope: Scope,
}

#[derive(Default)]
pub(super) struct QueueState {
    pub(super) events: VecDeque<Arc<Published>>,
    pub(super) bytes: usize,
    /// Events lost because the queue was full, not yet taken by the watch.
    pub(super) dropped: u64,
}

impl Queue {
    pub(super) fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue an event or count it lost; `true` if it was lost.
    pub(super) fn offer(&self, p: &Arc<Published>, size: usize, cfg: &Config) -> bool {
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

/// Ends a subscription from anywhere (its watch, or the sweeper that ends stalled
/// watches): frees its queued events and takes it off the bus. Idempotent.
#[derive(Clone)]
pub struct Closer {
    pub(super) bus: Weak<Shared>,
    pub(super) queue: Arc<Queue>,
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
    pub(super) replay: VecDeque<Arc<Published>>,
    pub(super) closer: Closer,
    /// Lost events taken from the queue and not yet reported.
    pub(super) dropped: u64,
    pub(super) start_rv: u64,
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
