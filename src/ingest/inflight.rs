//! Pushes in flight, in all and per pusher: one more is answered 429, as
//! kube-apiserver's max-in-flight filter answers.

use super::*;

/// kube-apiserver's max-in-flight answer.
pub(super) const TOO_MANY: &str = "Too many requests, please try again later.";

/// Ingest requests in flight, in all and per pusher: kube-apiserver's max-in-flight
/// filter for mutating requests, with a per-pusher share so that one apiserver retrying
/// in a loop cannot lock the others out.
pub struct InFlight {
    pub(super) max: usize,
    pub(super) per_pusher: usize,
    pub(super) state: Arc<Mutex<Counts>>,
}

#[derive(Default)]
pub(super) struct Counts {
    pub(super) total: usize,
    pub(super) by_pusher: HashMap<String, usize>,
}

/// A push's place in flight, given back when dropped.
pub struct Slot {
    pub(super) state: Arc<Mutex<Counts>>,
    pub(super) pusher: String,
}

impl InFlight {
    pub fn new(max: usize, per_pusher: usize) -> Self {
        InFlight {
            max,
            per_pusher,
            state: Arc::default(),
        }
    }

    /// A slot for `pusher`, or `None` when all slots, or this pusher's share, are taken.
    pub fn enter(&self, pusher: &str) -> Option<Slot> {
        let mut c = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mine = c.by_pusher.get(pusher).copied().unwrap_or(0);
        if c.total >= self.max || mine >= self.per_pusher {
            return None;
        }
        c.total += 1;
        *c.by_pusher.entry(pusher.to_owned()).or_default() += 1;
        Some(Slot {
            state: self.state.clone(),
            pusher: pusher.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.state.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_pusher.get_mut(&self.pusher) {
            *n -= 1;
            if *n == 0 {
                c.by_pusher.remove(&self.pusher);
            }
        }
    }
}
