//! The memory bus's recognition of webhook retries: the batches taken recently, by
//! content key, bounded in count and time.

use super::*;

/// How long the memory bus recognises a webhook retry. kube-apiserver's webhook backend
/// retries a batch it got no answer for (`webhook.DefaultRetryBackoffWithInitialDelay`:
/// 5 attempts, waits of 10 s, 15 s, 22.5 s and 33.75 s with `--audit-webhook-initial-
/// backoff`'s default, each up to 20 % longer, every attempt up to its 30 s timeout):
/// the last attempt starts at most 4 × 30 s + 97.5 s ≈ 3.6 min after the first, so 5 min
/// covers the whole default schedule. Longer than JetStream's window (`nats`, 2 min,
/// which covers the first retries); no batch is sent again on purpose, so a longer
/// window recognises nothing that is not a retry.
pub(super) const RETRY_WINDOW: Duration = Duration::from_secs(300);
/// How many batches the memory bus remembers at most within `RETRY_WINDOW`: at the
/// webhook's default `--audit-webhook-batch-throttle-qps` (10 batches a second), 5
/// minutes of 5 apiservers pushing flat out; about 1.5 MiB. Past it the oldest are
/// forgotten first (a retry of one of those is published again).
pub(super) const RETRY_BATCHES: usize = 16 * 1024;

/// The batches the memory bus took recently, by `nats::content_key` (source and body),
/// so that a webhook retry is answered as accepted and published once, as JetStream's
/// duplicate window does for `--bus=nats`. Two different batches that share an
/// `auditID` (a client can set its own) have different bodies: both are published.
pub struct RecentBatches {
    pub(super) window: Duration,
    pub(super) max: usize,
    pub(super) state: Mutex<Recent>,
}

#[derive(Default)]
pub(super) struct Recent {
    pub(super) keys: HashSet<[u8; 32]>,
    /// Oldest first.
    pub(super) order: VecDeque<([u8; 32], tokio::time::Instant)>,
}

impl Default for RecentBatches {
    fn default() -> Self {
        RecentBatches::new(RETRY_WINDOW, RETRY_BATCHES)
    }
}

impl RecentBatches {
    pub(super) fn new(window: Duration, max: usize) -> Self {
        RecentBatches {
            window,
            max,
            state: Mutex::default(),
        }
    }

    /// Whether `key` was taken within the window; if not, it is remembered from `now`.
    pub(super) fn seen(&self, key: [u8; 32], now: tokio::time::Instant) -> bool {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Recent { keys, order } = &mut *st;
        while let Some((old, at)) = order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            keys.remove(old);
            order.pop_front();
        }
        if keys.contains(&key) {
            return true;
        }
        if order.len() >= self.max
            && let Some((old, _)) = order.pop_front()
        {
            keys.remove(&old);
        }
        keys.insert(key);
        order.push_back((key, now));
        false
    }
}
