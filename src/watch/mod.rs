//! The WATCH endpoints: the query (`watch`, `resourceVersion`, `timeoutSeconds`,
//! `allowWatchBookmarks`, `fieldSelector`), and `WatchBody`, the streaming response that
//! reads one bus subscription and writes the shared event bytes as they are, charging
//! each event to the watcher's budget, and its watchdog, which ends a watch whose client
//! stopped reading. Never publishes and never decides who may see what: the router
//! authorized the watch, and hands it a `Recheck` to ask again.

pub mod selector;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, TryLockError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Interval, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::budget::{Budget, Verdict};
use crate::bus::{Bus, Published, Scope, Subscription};
use crate::event::{DROPPED_ANNOTATION, GROUP_VERSION, KIND};
use crate::metrics::WatchGuard;
use crate::reply::Body;
use crate::status::ApiError;
pub use selector::FieldSelector;

/// kube-apiserver's `--min-request-timeout` default: a watch without `timeoutSeconds`
/// lasts about this long (jittered so that reconnects do not come in waves).
pub const DEFAULT_WATCH_TIMEOUT_SECONDS: u64 = 1800;
/// How often a watcher that asked for bookmarks gets one; kube-apiserver sends them
/// about once a minute.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

/// The query parameters of a LIST/WATCH request that we act on.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub watch: bool,
    pub resource_version: Option<u64>,
    pub timeout_seconds: Option<u64>,
    pub allow_watch_bookmarks: bool,
    pub field_selector: FieldSelector,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Result<Query, ApiError> {
        let mut q = Query::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*key {
                "watch" => q.watch = query_bool(&value),
                "allowWatchBookmarks" => q.allow_watch_bookmarks = query_bool(&value),
                "resourceVersion" if value.is_empty() => {}
                "resourceVersion" => {
                    q.resource_version = Some(value.parse().map_err(|_| {
                        ApiError::BadRequest(format!(
                            "resourceVersion: Invalid value: {value:?}: must be a decimal number"
                        ))
                    })?)
                }
                "timeoutSeconds" if value.is_empty() => {}
                "timeoutSeconds" => q.timeout_seconds = Some(value.parse().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "timeoutSeconds: Invalid value: {value:?}: must be a non-negative integer"
                    ))
                })?),
                "fieldSelector" => {
                    q.field_selector = FieldSelector::parse(&value)
                        .map_err(|e| ApiError::BadRequest(e.to_string()))?
                }
                "labelSelector" if !value.trim().is_empty() => {
                    return Err(ApiError::BadRequest(
                        "labelSelector: audit events have no labels; use fieldSelector".into(),
                    ));
                }
                // Other list options (limit, continue, resourceVersionMatch, …) do not
                // change a watch; kube-apiserver ignores unknown parameters too.
                _ => {}
            }
        }
        Ok(q)
    }

    fn timeout(&self) -> Duration {
        match self.timeout_seconds {
            Some(s) => Duration::from_secs(s),
            // 1800 s ± 10 %.
            None => Duration::from_secs(DEFAULT_WATCH_TIMEOUT_SECONDS)
                .mul_f64(0.9 + fastrand::f64() * 0.2),
        }
    }
}

/// Whether the query asks for a watch, read on its own as kube-apiserver's RequestInfo
/// does (the verb is decided before the other parameters are checked).
pub fn is_watch(query: Option<&str>) -> bool {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "watch")
        .is_some_and(|(_, v)| query_bool(&v))
}

/// kube-apiserver's bool query conversion: "", "0" and "false" are false, anything else true.
fn query_bool(v: &str) -> bool {
    !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false"))
}

/// Authorize the watch again; an error ends it with that error as an `ERROR` event.
pub type Recheck =
    std::sync::Arc<dyn Fn() -> BoxFuture<'static, Result<(), ApiError>> + Send + Sync>;

/// What a watch needs besides its query: re-authorization, its budget, how much backlog
/// counts as lagging, how long its client may stop reading, its metrics, its place among
/// the server's open watches, and the server's shutdown signal.
pub struct WatchCtx {
    /// Re-authorization and how often to do it.
    pub recheck: Option<(Recheck, Duration)>,
    pub budget: Budget,
    /// Queued bytes above which the watcher is lagging and gets truncated events.
    pub lag_bytes: usize,
    /// How long the client may take nothing before the watch ends.
    pub stall_limit: Duration,
    pub guard: WatchGuard,
    /// Released when the watch ends, even if its response lingers (see `watchdog`).
    pub slot: OwnedSemaphorePermit,
    pub shutdown: CancellationToken,
}

/// Start a watch of `scope`. Errors found before the stream starts are plain `Status`
/// responses, except an expired resourceVersion, which kube-apiserver sends as a 200
/// with one `ERROR` event.
pub fn serve(
    bus: &Bus,
    scope: Scope,
    query: &Query,
    ctx: WatchCtx,
) -> Result<Response<Body>, ApiError> {
    let sub = match bus.subscribe(scope, query.resource_version) {
        Ok(sub) => sub,
        Err(expired) => {
            let e = ApiError::Expired {
                requested: expired.requested,
                oldest: expired.oldest,
            };
            return Ok(stream_response(crate::reply::full(e.to_watch_event())));
        }
    };
    let last_rv = query
        .resource_version
        .unwrap_or_else(|| sub.start_resource_version());
    let body = WatchBody {
        sub,
        pending: VecDeque::new(),
        deadline: Box::pin(tokio::time::sleep(query.timeout())),
        shutdown: Box::pin(ctx.shutdown.cancelled_owned()),
        bookmarks: query
            .allow_watch_bookmarks
            .then(|| ticker(BOOKMARK_INTERVAL)),
        skip_through: query.resource_version.unwrap_or(0),
        last_rv,
        selector: query.field_selector.clone(),
        recheck: ctx.recheck.map(|(recheck, every)| (recheck, ticker(every))),
        rechecking: None,
        budget: ctx.budget,
        lag_bytes: ctx.lag_bytes,
        dropped_budget: 0,
        report: None,
        done: false,
        guard: ctx.guard,
        slot: Some(ctx.slot),
        last_poll: Instant::now(),
    };
    let body = Arc::new(Mutex::new(body));
    tokio::spawn(watchdog(Arc::downgrade(&body), ctx.stall_limit));
    Ok(stream_response(SharedBody(body).boxed_unsync()))
}

/// Ends a watch whose client stopped taking what it has to send. Hyper polls a response
/// body only when the connection can take more, and an HTTP/2 stream whose client
/// stopped reading (its flow-control window shut) is never polled again while the
/// connection stays open, as the aggregator's shared connection does. Such a body would
/// never see its deadline or shutdown, and would keep its bus queue and slot as long as
/// the client lives. Checked from outside, it is ended once it has had something to send
/// and gone unpolled for `stall_limit`, as kube-apiserver closes watchers that stop
/// reading: its queue is emptied and its slot released, and the stream ends after the
/// line it was writing, should the client read again (it then re-watches from its last
/// resourceVersion).
async fn watchdog(body: Weak<Mutex<WatchBody>>, stall_limit: Duration) {
    let mut tick = ticker((stall_limit / 4).max(Duration::from_millis(10)));
    loop {
        tick.tick().await;
        let Some(body) = body.upgrade() else {
            return;
        };
        let mut body = match body.try_lock() {
            Ok(body) => body,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            // Being polled right now: not stalled.
            Err(TryLockError::WouldBlock) => continue,
        };
        // A watch that ended on its own and is not polled to its end holds its slot
        // as much as a live one: the same rule applies.
        if body.stalled_for(stall_limit) {
            tracing::info!(
                ?stall_limit,
                "watch ended: its client took nothing for too long"
            );
            body.end_stalled();
            return;
        }
    }
}

/// The response body: the watch, shared with its watchdog.
struct SharedBody(Arc<Mutex<WatchBody>>);

impl http_body::Body for SharedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let mut body = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        body.last_poll = Instant::now();
        Pin::new(&mut *body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_end_stream()
    }
}

/// Ticks every `every`, the first one `every` from now; late ticks are not made up.
fn ticker(every: Duration) -> Interval {
    let mut i = tokio::time::interval_at(Instant::now() + every, every);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

fn stream_response(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A `BOOKMARK` line; with `dropped`, the count of events lost since the last one.
pub fn bookmark(resource_version: u64, dropped: Option<u64>) -> Bytes {
    let mut metadata = serde_json::json!({ "resourceVersion": resource_version.to_string() });
    if let Some(n) = dropped {
        metadata["annotations"] = serde_json::json!({ DROPPED_ANNOTATION: n.to_string() });
    }
    let line = serde_json::json!({
        "type": "BOOKMARK",
        "object": { "kind": KIND, "apiVersion": GROUP_VERSION, "metadata": metadata },
    });
    let mut out = serde_json::to_vec(&line).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// About the size of a dropped-count bookmark: what the budget must allow before one
/// is sent without an event to ride along with.
const BOOKMARK_BYTES: usize = 160;

/// The streaming body of one watch. Hyper polls it only when the connection can take
/// more, so a peer that stops reading stops this body, its bus queue fills, and the bus
/// drops for it alone (and `watchdog` ends it if that lasts). Each event is charged
/// to the watcher's budget as it is taken off the queue: sent whole, sent truncated, or
/// dropped and reported.
struct WatchBody {
    sub: Subscription,
    /// Frames of the event being written (at most one event's worth, and a bookmark).
    pending: VecDeque<Bytes>,
    deadline: Pin<Box<Sleep>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    bookmarks: Option<Interval>,
    /// Events at or below this resourceVersion were asked to be skipped.
    skip_through: u64,
    last_rv: u64,
    selector: FieldSelector,
    recheck: Option<(Recheck, Interval)>,
    /// A re-authorization under way.
    rechecking: Option<BoxFuture<'static, Result<(), ApiError>>>,
    budget: Budget,
    lag_bytes: usize,
    /// Events dropped by the budget and not yet reported.
    dropped_budget: u64,
    /// When to report drops if no event comes to carry the report.
    report: Option<Pin<Box<Sleep>>>,
    done: bool,
    guard: WatchGuard,
    /// Its place among the server's open watches, until it ends.
    slot: Option<OwnedSemaphorePermit>,
    /// When hyper last asked for more.
    last_poll: Instant,
}

impl WatchBody {
    /// Whether it has had something to send and not been asked for it for `limit`.
    fn stalled_for(&self, limit: Duration) -> bool {
        let waiting = !self.pending.is_empty() || self.sub.backlog_bytes() > 0;
        waiting && self.last_poll.elapsed() >= limit
    }

    /// End it for a client that stopped reading: free its queue and its slot now; the
    /// stream ends after the line under way, if it is ever polled again.
    fn end_stalled(&mut self) {
        self.sub.close();
        self.slot = None;
        self.guard.stalled();
        self.done = true;
    }

    /// Queue a bookmark counting every drop since the last one, if there were any.
    fn report_drops(&mut self, now: Instant) {
        let queue_full = self.sub.take_dropped();
        self.guard.dropped_queue_full(queue_full);
        let total = queue_full + std::mem::take(&mut self.dropped_budget);
        if total > 0 {
            let line = bookmark(self.last_rv, Some(total));
            self.budget.charge(line.len(), now);
            self.pending.push_back(line);
        }
        self.report = None;
    }

    /// Charge an event to the budget and queue its frames, or drop it.
    fn deliver(&mut self, p: &Published) {
        let now = Instant::now();
        let full = p.wire_len(false);
        let truncated_len = p.event.can_truncate().then(|| p.wire_len(true));
        let lagging = self.sub.backlog_bytes() > self.lag_bytes;
        let truncated = match self.budget.admit(full, truncated_len, lagging, now) {
            Verdict::Drop => {
                self.dropped_budget += 1;
                self.guard.dropped_budget(1);
                return;
            }
            Verdict::Full => false,
            Verdict::Truncated => true,
        };
        self.report_drops(now);
        self.pending.push_back(p.event.head().clone());
        self.pending.push_back(p.digits().clone());
        self.pending.push_back(p.event.tail(truncated).clone());
        self.last_rv = p.resource_version;
        self.guard.sent(p.wire_len(truncated), truncated);
    }

    /// Drive re-authorization; `true` when it ended the watch (access was revoked, or
    /// could not be confirmed: fail closed).
    fn poll_recheck(&mut self, cx: &mut Context<'_>) -> bool {
        if self.rechecking.is_none() {
            let Some((recheck, tick)) = self.recheck.as_mut() else {
                return false;
            };
            if tick.poll_tick(cx).is_pending() {
                return false;
            }
            self.rechecking = Some(recheck());
        }
        let Some(Poll::Ready(result)) = self.rechecking.as_mut().map(|f| f.as_mut().poll(cx))
        else {
            return false;
        };
        self.rechecking = None;
        match result {
            Ok(()) => false,
            Err(e) => {
                tracing::info!(error = %e, "watch no longer authorized; ending it");
                self.pending.push_back(e.to_watch_event());
                self.done = true;
                true
            }
        }
    }

    /// With nothing to send: is a drop report or a periodic bookmark due?
    fn idle(&mut self, cx: &mut Context<'_>) -> bool {
        if self.dropped_budget > 0 || self.sub.has_dropped() {
            let now = Instant::now();
            let wait = self.budget.wait_for(BOOKMARK_BYTES, now);
            if wait.is_zero() {
                self.report_drops(now);
                return true;
            }
            let timer = self
                .report
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
            if timer.as_mut().poll(cx).is_ready() {
                self.report = None;
                return true;
            }
        }
        let tick = self
            .bookmarks
            .as_mut()
            .is_some_and(|i| i.poll_tick(cx).is_ready());
        if tick {
            let now = Instant::now();
            self.report_drops(now);
            if self.pending.is_empty() {
                let line = bookmark(self.last_rv, None);
                self.budget.charge(line.len(), now);
                self.pending.push_back(line);
            }
        }
        tick
    }
}

impl http_body::Body for WatchBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        loop {
            if let Some(b) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if this.shutdown.as_mut().poll(cx).is_ready()
                || this.deadline.as_mut().poll(cx).is_ready()
            {
                this.done = true;
                continue;
            }
            if this.poll_recheck(cx) {
                continue;
            }
            match this.sub.poll_next(cx) {
                Poll::Ready(Some(p)) => {
                    if p.resource_version > this.skip_through && this.selector.matches(&p.event) {
                        this.deliver(&p);
                    }
                }
                Poll::Ready(None) => this.done = true,
                Poll::Pending => {
                    if !this.idle(cx) {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = Query::parse(Some(
            "watch=1&resourceVersion=42&timeoutSeconds=5&allowWatchBookmarks=true",
        ))
        .unwrap();
        assert!(q.watch && q.allow_watch_bookmarks);
        assert_eq!(q.resource_version, Some(42));
        assert_eq!(q.timeout(), Duration::from_secs(5));
        assert!(Query::parse(Some("watch=true")).unwrap().watch);
        assert!(!Query::parse(Some("watch=false")).unwrap().watch);
        assert!(!Query::parse(Some("watch=0")).unwrap().watch);
        assert!(!Query::parse(None).unwrap().watch);
        assert!(Query::parse(Some("resourceVersion=abc")).is_err());
        assert!(Query::parse(Some("timeoutSeconds=-1")).is_err());
        assert!(Query::parse(Some("fieldSelector=nope%3Dx")).is_err());
        assert!(Query::parse(Some("labelSelector=a%3Db")).is_err());
        assert!(Query::parse(Some("labelSelector=&limit=500")).is_ok());
        let t = Query::parse(None).unwrap().timeout();
        assert!(
            t >= Duration::from_secs(1620) && t <= Duration::from_secs(1980),
            "{t:?}"
        );
    }

    #[test]
    fn bookmark_shapes() {
        let v: serde_json::Value = serde_json::from_slice(&bookmark(7, Some(3))).unwrap();
        assert_eq!(v["type"], "BOOKMARK");
        assert_eq!(v["object"]["apiVersion"], "audit.k8s.io/v1alpha1");
        assert_eq!(v["object"]["kind"], "Event");
        assert_eq!(v["object"]["metadata"]["resourceVersion"], "7");
        assert_eq!(
            v["object"]["metadata"]["annotations"]["audit.k8s.io/dropped"],
            "3"
        );
        let v: serde_json::Value = serde_json::from_slice(&bookmark(7, None)).unwrap();
        assert!(v["object"]["metadata"].get("annotations").is_none());
    }
}
