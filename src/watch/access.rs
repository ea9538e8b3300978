//! `--authorization-granularity=resource`: a watcher of a namespace receives an event only
//! if it may also `get` the resource the event is about (`objectRef`'s group and
//! resource, in the event's namespace, cluster-wide for cluster-scoped objects). The
//! router hands each read a `ResourceCheck` (a closure over its user and authorizer), so
//! this module never learns which authorizer answers.
//!
//! A watch keeps its answers in a small map (one hash lookup per event once warm) and
//! forgets them at each re-authorization, so a revoked permission stops its events within
//! that period. An event whose answer is not known yet waits, and every event after it
//! waits behind it: never reordered, never sent before the answer. A check that fails
//! withholds the event (fail closed) and is counted.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::event::{Event, Field};
use crate::status::ApiError;

/// What is asked: may the watcher `get` `resource` of `api_group` in `namespace` ("":
/// cluster-wide)?
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceKey {
    pub api_group: Box<str>,
    pub resource: Box<str>,
    pub namespace: Box<str>,
}

impl ResourceKey {
    pub fn of(event: &Event) -> ResourceKey {
        ResourceKey {
            api_group: event.get(Field::ApiGroup).into(),
            resource: event.get(Field::Resource).into(),
            namespace: event.get(Field::Namespace).into(),
        }
    }

    fn matches(&self, event: &Event) -> bool {
        *self.api_group == *event.get(Field::ApiGroup)
            && *self.resource == *event.get(Field::Resource)
            && *self.namespace == *event.get(Field::Namespace)
    }
}

/// The router's question for one key: `Ok(true)` allowed, `Ok(false)` denied, `Err` the
/// authorizer could not answer.
pub type ResourceCheck =
    Arc<dyn Fn(ResourceKey) -> BoxFuture<'static, Result<bool, ApiError>> + Send + Sync>;

/// Whether an event may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Not allowed to see it.
    Denied,
    /// The check failed: withheld, fail closed.
    Failed,
    /// Asked, not answered yet: hold it and everything after it.
    Pending,
}

/// Events with no resource (non-resource requests) reach only cluster-wide `events`
/// watches, whose watch permission is already the cluster's: they need no other answer.
fn needs_check(event: &Event) -> bool {
    !event.get(Field::Resource).is_empty()
}

/// One watch's answers, by a hash of the key; the key is kept to rule out a collision.
pub struct Access {
    check: ResourceCheck,
    decided: HashMap<u64, (ResourceKey, bool)>,
    pending: Option<(ResourceKey, BoxFuture<'static, Result<bool, ApiError>>)>,
    forget_every: Duration,
    forget_at: Instant,
}

impl Access {
    /// Answers are forgotten every `forget_every` (the watch's re-authorization period).
    pub fn new(check: ResourceCheck, forget_every: Duration) -> Access {
        Access {
            check,
            decided: HashMap::new(),
            pending: None,
            forget_every,
            forget_at: Instant::now() + forget_every,
        }
    }

    /// May `event` be sent? `Pending` registers `cx` to be woken with the answer.
    pub fn verdict(&mut self, event: &Event, cx: &mut Context<'_>, now: Instant) -> Verdict {
        if !needs_check(event) {
            return Verdict::Send;
        }
        if now >= self.forget_at {
            self.decided.clear();
            self.forget_at = now + self.forget_every;
        }
        let hash = hash_of(event);
        if let Some((key, allowed)) = self.decided.get(&hash)
            && key.matches(event)
        {
            return if *allowed {
                Verdict::Send
            } else {
                Verdict::Denied
            };
        }
        // Ask (or keep waiting for) the answer about this event's key.
        let (key, fut) = match &mut self.pending {
            Some((key, fut)) if key.matches(event) => (key, fut),
            _ => {
                let key = ResourceKey::of(event);
                let fut = (self.check)(key.clone());
                let (key, fut) = self.pending.insert((key, fut));
                (key, fut)
            }
        };
        let answer = match fut.as_mut().poll(cx) {
            Poll::Pending => return Verdict::Pending,
            Poll::Ready(answer) => answer,
        };
        let key = key.clone();
        self.pending = None;
        match answer {
            Ok(allowed) => {
                self.decided.insert(hash, (key, allowed));
                if allowed {
                    Verdict::Send
                } else {
                    Verdict::Denied
                }
            }
            // Not remembered: the next event of this key asks again.
            Err(e) => {
                tracing::debug!(error = %e, "resource authorization failed; event withheld");
                Verdict::Failed
            }
        }
    }
}

fn hash_of(event: &Event) -> u64 {
    let mut h = DefaultHasher::new();
    event.get(Field::ApiGroup).hash(&mut h);
    event.get(Field::Resource).hash(&mut h);
    event.get(Field::Namespace).hash(&mut h);
    h.finish()
}

/// For LIST and GET: the answers for every key among `events`, asked once each (through
/// the authorizer's cache), and the predicate that keeps what may be seen. A key not
/// asked (an event that arrived after the keys were read) is withheld, as is one whose
/// check failed: fail closed.
pub async fn visible(
    check: &ResourceCheck,
    events: impl Iterator<Item = ResourceKey>,
) -> impl Fn(&Event) -> bool + Send + Sync + 'static {
    let mut keys: Vec<ResourceKey> = events.collect();
    keys.sort_by(|a, b| {
        (&a.api_group, &a.resource, &a.namespace).cmp(&(&b.api_group, &b.resource, &b.namespace))
    });
    keys.dedup();
    let mut allowed = HashMap::new();
    for key in keys {
        let ok = matches!(check(key.clone()).await, Ok(true));
        allowed.insert(key, ok);
    }
    move |event: &Event| {
        !needs_check(event)
            || allowed
                .get(&ResourceKey::of(event))
                .copied()
                .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::task::noop_waker_ref;

    use super::*;
    use crate::event::decode_event_list;

    fn events() -> Vec<Event> {
        let item = |id: &str, resource: &str| {
            format!(
                r#"{{"level":"Metadata","auditID":"{id}","stage":"ResponseComplete","verb":"get","objectRef":{{"resource":"{resource}","namespace":"team-a"}}}}"#
            )
        };
        let items = [
            item("1", "pods"),
            item("2", "secrets"),
            item("3", "pods"),
            r#"{"level":"Metadata","auditID":"4","stage":"ResponseComplete","verb":"get","requestURI":"/healthz"}"#.into(),
        ];
        let body = format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}}"#,
            items.join(",")
        );
        decode_event_list(body.as_bytes(), "", "2026-01-01T00:00:00Z").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_warm_watch_asks_once_per_key_and_forgets_on_schedule() {
        let asked = Arc::new(AtomicUsize::new(0));
        let check: ResourceCheck = {
            let asked = asked.clone();
            Arc::new(move |key: ResourceKey| {
                asked.fetch_add(1, Ordering::Relaxed);
                Box::pin(async move { Ok(&*key.resource != "secrets") })
            })
        };
        let mut access = Access::new(check, Duration::from_secs(10));
        let mut cx = Context::from_waker(noop_waker_ref());
        let evs = events();
        let now = Instant::now();
        let verdicts: Vec<Verdict> = evs
            .iter()
            .map(|e| access.verdict(e, &mut cx, now))
            .collect();
        assert_eq!(
            verdicts,
            [Verdict::Send, Verdict::Denied, Verdict::Send, Verdict::Send]
        );
        assert_eq!(asked.load(Ordering::Relaxed), 2, "pods once, secrets once");
        access.verdict(&evs[0], &mut cx, now);
        assert_eq!(asked.load(Ordering::Relaxed), 2, "warm");
        access.verdict(&evs[0], &mut cx, now + Duration::from_secs(10));
        assert_eq!(asked.load(Ordering::Relaxed), 3, "forgotten at the period");
    }

    #[tokio::test]
    async fn pending_holds_and_a_failure_withholds_without_remembering() {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<bool, ApiError>>();
        let rx = std::sync::Mutex::new(Some(rx));
        let check: ResourceCheck = Arc::new(move |_| {
            let rx = rx.lock().unwrap().take();
            Box::pin(async move {
                match rx {
                    Some(rx) => rx.await.unwrap_or(Ok(false)),
                    None => Err(ApiError::Internal("no answer".into())),
                }
            })
        });
        let mut access = Access::new(check, Duration::from_secs(10));
        let mut cx = Context::from_waker(noop_waker_ref());
        let evs = events();
        let now = Instant::now();
        assert_eq!(access.verdict(&evs[0], &mut cx, now), Verdict::Pending);
        assert_eq!(access.verdict(&evs[0], &mut cx, now), Verdict::Pending);
        tx.send(Ok(true)).unwrap();
        assert_eq!(access.verdict(&evs[0], &mut cx, now), Verdict::Send);
        assert_eq!(access.verdict(&evs[1], &mut cx, now), Verdict::Failed);
        assert_eq!(
            access.verdict(&evs[1], &mut cx, now),
            Verdict::Failed,
            "asked again"
        );
    }

    #[tokio::test]
    async fn lists_keep_what_may_be_seen() {
        let check: ResourceCheck =
            Arc::new(|key: ResourceKey| Box::pin(async move { Ok(&*key.resource == "pods") }));
        let evs = events();
        let keep = visible(&check, evs.iter().map(ResourceKey::of)).await;
        let kept: Vec<&str> = evs
            .iter()
            .filter(|e| keep(e))
            .map(|e| e.audit_id())
            .collect();
        assert_eq!(kept, ["1", "3", "4"]);
    }
}
