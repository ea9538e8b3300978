//! `WatchBody`: the streaming response of one watch. Hyper polls it only when the
//! connection can take more, so a peer that stops reading stops this body, its bus queue
//! fills, and the bus drops for it alone (and the registry's sweeper ends it if that
//! lasts). Each poll takes every event that is ready and writes as many as fit in one
//! frame (`FRAME_BYTES`), so HTTP/1.1 sends one chunk and HTTP/2 one run of DATA frames
//! for a whole batch, not three per event.
//!
//! Costs by class: per poll, one clock read, one atomic stamp for the sweeper, and the
//! counters flushed to the shared metrics; per event, the budget's arithmetic and its
//! line shared into the frame (`frame`: a truncated line or a Table row is copied);
//! deadline, re-authorization and bookmarks are compared with the poll's clock and need
//! a timer only when the queue runs dry. One frame in `stages::SAMPLE_EVERY_FRAMES` is
//! measured stage by stage (`stages`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body::Frame;
use tokio::time::{Instant, Sleep};

use super::access::{self, Access};
use super::frame::{self, Builder};
use super::registry::{Ended, Registration};
use super::stages::Sampler;
use super::{
    BOOKMARK_INTERVAL, INITIAL_EVENTS_END_ANNOTATION, Query, Recheck, WatchCtx, bookmark,
    bookmark_object, initial_events_end,
};
use crate::budget::{Budget, Verdict};
use crate::bus::{Published, Subscription};
use crate::event::DROPPED_ANNOTATION;
use crate::metrics::{WatchCounts, WatchGuard};
use crate::response::Chunk;
use crate::status::ApiError;
use crate::table;

/// The most one frame carries, unless one event alone is larger: large enough that a
/// batch costs a few frames, small enough to keep a slow HTTP/2 stream's buffer short.
const FRAME_BYTES: usize = 64 * 1024;
/// Segments reserved for a frame at most before it grows: ~64 Metadata lines (~1 KiB each).
const FRAME_SEGMENTS: usize = 64;
/// About the size of a dropped-count bookmark: what the budget must allow before one
/// is sent without an event to ride along with.
const BOOKMARK_BYTES: usize = 160;

/// Why a watch ended: the `reason` of the line its end leaves in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndReason {
    /// Its timeoutSeconds (or the default timeout) passed.
    Timeout,
    /// Its subscription ended with no reason given.
    Closed,
    /// The registry's sweeper ended it: its client took nothing for the stall limit.
    Stalled,
    /// The server is shutting down.
    ShutDown,
    /// Re-authorization refused it (403).
    Revoked,
    /// Re-authorization could not be confirmed (fail closed).
    AuthorizationError,
    /// The bus went down; the client re-watches elsewhere.
    BusDown,
    /// Dropped before it ended: its client went away.
    ClientClosed,
    /// Dropped in the middle of a poll: a panic left it (`reply::Guarded` caught it).
    Panic,
}

impl EndReason {
    /// The log's word for it.
    fn as_str(self) -> &'static str {
        match self {
            EndReason::Timeout => "timeout",
            EndReason::Closed => "closed",
            EndReason::Stalled => "stalled",
            EndReason::ShutDown => "shutdown",
            EndReason::Revoked => "revoked",
            EndReason::AuthorizationError => "authorization_error",
            EndReason::BusDown => "bus_down",
            EndReason::ClientClosed => "client_closed",
            EndReason::Panic => "panic",
        }
    }

    /// Ended from outside, or else closed.
    fn from_outside(ended: Option<Ended>) -> Self {
        match ended {
            Some(Ended::Stalled) => EndReason::Stalled,
            Some(Ended::ShutDown) => EndReason::ShutDown,
            None => EndReason::Closed,
        }
    }
}

/// Where the watch is.
enum State {
    Streaming,
    /// Streaming while a re-authorization is under way.
    Rechecking(BoxFuture<'static, Result<(), ApiError>>),
    /// Nothing more will be sent.
    Done,
}

pub(super) struct WatchBody {
    state: State,
    sub: Subscription,
    /// Events taken from the queue and not yet written, and their full-form bytes.
    taken: VecDeque<Arc<Published>>,
    taken_bytes: usize,
    deadline: Instant,
    /// The one timer, armed only while idle, for whichever of the times below is next.
    timer: Pin<Box<Sleep>>,
    next_bookmark: Option<Instant>,
    recheck: Option<(Recheck, Duration)>,
    next_recheck: Instant,
    /// When a drop report can be afforded, if one waits for the budget.
    report_at: Option<Instant>,
    /// Events at or below this resourceVersion were asked to be skipped.
    skip_through: u64,
    last_rv: u64,
    budget: Budget,
    lag_bytes: usize,
    /// Events dropped by the budget and not yet reported.
    dropped_budget: u64,
    /// A Table watch: each event's object is a one-row Table.
    format: Option<table::Format>,
    /// Column definitions go with the first row of a Table watch only.
    headers_sent: bool,
    /// A WatchList's initial events end at this resourceVersion: the bookmark that says
    /// so is still to be sent.
    initial_end: Option<u64>,
    counts: WatchCounts,
    /// Everything counted since the watch started, for the line its end leaves.
    totals: WatchCounts,
    /// Why the watch ended, once it has (set by `finish` alone); dropped before that,
    /// its client went away.
    end: Option<EndReason>,
    started: Instant,
    user: Arc<str>,
    resource: &'static str,
    namespace: String,
    /// `--authorization-granularity=resource`: who may see which event.
    access: Option<Access>,
    /// Inside `poll_frame`; see there.
    in_poll: bool,
    /// Delivery-stage latencies, one frame in N.
    stages: Sampler,
    guard: WatchGuard,
    registration: Registration,
}

impl WatchBody {
    pub(super) fn new(
        sub: Subscription,
        registration: Registration,
        query: &Query,
        ctx: WatchCtx,
    ) -> Self {
        let now = Instant::now();
        let deadline = query.deadline(now);
        let next_recheck = ctx
            .recheck
            .as_ref()
            .map_or(deadline, |(_, every)| now + *every);
        let initial = query.sends_initial_events();
        let body = WatchBody {
            state: State::Streaming,
            last_rv: match query.resource_version {
                Some(rv) if !initial => rv,
                _ => sub.start_resource_version(),
            },
            initial_end: initial.then(|| sub.start_resource_version()),
            sub,
            taken: VecDeque::new(),
            taken_bytes: 0,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            next_bookmark: query.allow_watch_bookmarks.then(|| now + BOOKMARK_INTERVAL),
            recheck: ctx.recheck,
            next_recheck,
            report_at: None,
            // A WatchList's resourceVersion is a lower bound on the state, not a start.
            skip_through: if initial {
                0
            } else {
                query.resource_version.unwrap_or(0)
            },
            budget: ctx.budget,
            lag_bytes: ctx.lag_bytes,
            dropped_budget: 0,
            format: ctx.format,
            headers_sent: false,
            counts: WatchCounts::default(),
            totals: WatchCounts::default(),
            end: None,
            started: now,
            user: ctx.user,
            resource: ctx.resource,
            namespace: ctx.namespace,
            access: ctx.access,
            in_poll: false,
            stages: Sampler::new(ctx.stages),
            guard: ctx.guard,
            registration,
        };
        tracing::info!(
            user = %body.user,
            resource = %body.resource,
            namespace = %body.namespace,
            resource_version = body.last_rv,
            "watch started"
        );
        body
    }

    /// Nothing more will be sent, for this reason. Called once: a finished body is not
    /// polled further.
    fn finish(&mut self, why: EndReason) {
        self.end = Some(why);
        self.state = State::Done;
    }

    /// Drive re-authorization; when access was revoked, or could not be confirmed (fail
    /// closed), why the watch ends and the `ERROR` line that ends it.
    fn poll_recheck(&mut self, cx: &mut Context<'_>, now: Instant) -> Option<(EndReason, Bytes)> {
        if let (State::Streaming, Some((recheck, _))) = (&self.state, &self.recheck)
            && now >= self.next_recheck
        {
            self.state = State::Rechecking(recheck());
        }
        let State::Rechecking(fut) = &mut self.state else {
            return None;
        };
        match fut.as_mut().poll(cx) {
            Poll::Pending => None,
            Poll::Ready(Ok(())) => {
                self.state = State::Streaming;
                let every = self.recheck.as_ref().map_or(Duration::MAX, |(_, e)| *e);
                self.next_recheck = now + every;
                None
            }
            Poll::Ready(Err(e)) => {
                tracing::info!(user = %self.user, error = %e, "watch no longer authorized; ending it");
                let why = if e.code_reason().0 == http::StatusCode::FORBIDDEN {
                    EndReason::Revoked
                } else {
                    EndReason::AuthorizationError
                };
                Some((why, e.to_watch_event()))
            }
        }
    }

    /// Write a bookmark counting every drop since the last one, if there were any.
    fn report_drops(&mut self, frame: &mut Builder, now: Instant) {
        let queue_full = self.sub.take_dropped();
        self.counts.dropped_queue_full += queue_full;
        let total = queue_full + std::mem::take(&mut self.dropped_budget);
        if total > 0 {
            let line = self.bookmark(Some(total));
            self.budget.charge(line.len(), now);
            frame.extend_from_slice(&line);
        }
        self.report_at = None;
    }

    /// A bookmark at the last resourceVersion sent; with `dropped`, the count of events
    /// lost since the last one. A Table watch's is a one-row Table whose row keeps the
    /// bookmark's metadata (the count's annotation) and whose first cell says what was
    /// lost, which is the line `kubectl get -w` prints for it.
    fn bookmark(&mut self, dropped: Option<u64>) -> Bytes {
        let Some(f) = self.format else {
            return bookmark(self.last_rv, dropped);
        };
        let count = dropped.map(|n| n.to_string());
        let (annotations, note) = match &count {
            Some(n) => (
                vec![(DROPPED_ANNOTATION, n.as_str())],
                format!(
                    "Warning: {n} audit {} dropped here (over this watch's bandwidth budget, or read too slowly)",
                    if n == "1" { "event" } else { "events" }
                ),
            ),
            None => (vec![], String::new()),
        };
        let object = bookmark_object(self.last_rv, &annotations);
        let line = f.bookmark(&object, &note, !self.headers_sent);
        self.headers_sent = true;
        Bytes::from(line)
    }

    /// The bytes `p`'s line takes in this watch's format.
    fn line_len(&self, p: &Published, truncated: bool) -> usize {
        match &self.format {
            None => p.wire_len(truncated),
            Some(f) => f.watch_line_len(p, truncated, !self.headers_sent),
        }
    }

    /// After a WatchList's initial events: the bookmark that says they are all out.
    fn end_initial_events(&mut self, frame: &mut Builder, now: Instant) {
        if let Some(end) = self.initial_end.take() {
            self.last_rv = self.last_rv.max(end);
            let line = match self.format {
                None => initial_events_end(end),
                Some(f) => {
                    let object = bookmark_object(end, &[(INITIAL_EVENTS_END_ANNOTATION, "true")]);
                    let line = f.bookmark(&object, "", !self.headers_sent);
                    self.headers_sent = true;
                    Bytes::from(line)
                }
            };
            self.budget.charge(line.len(), now);
            frame.extend_from_slice(&line);
        }
    }

    /// Write the events that are ready, as many as fit in one frame, each charged to the
    /// budget: whole, truncated, or dropped and reported before the next one sent.
    fn fill(&mut self, frame: &mut Builder, cx: &mut Context<'_>, now: Instant) {
        loop {
            if self.taken.is_empty() {
                self.taken_bytes = self.sub.take(&mut self.taken);
                if self.taken.is_empty() {
                    // The replay is taken whole by the first take: nothing left of it.
                    self.end_initial_events(frame, now);
                    return;
                }
                self.budget.set_active(true);
            }
            let Some(rv) = self.taken.front().map(|p| p.resource_version) else {
                return;
            };
            if self.initial_end.is_some_and(|end| rv > end) {
                self.end_initial_events(frame, now);
            }
            let Some(p) = self.taken.front() else {
                return;
            };
            let full = self.line_len(p, false);
            if !frame.is_empty() && frame.len() + full > FRAME_BYTES {
                return;
            }
            // Asked about first, in order: an event whose answer is pending holds the
            // ones behind it (the answer wakes this body).
            let verdict = match &mut self.access {
                Some(access) if p.resource_version > self.skip_through => {
                    access.verdict(&p.event, cx, now)
                }
                _ => access::Verdict::Send,
            };
            if verdict == access::Verdict::Pending {
                return;
            }
            let Some(p) = self.taken.pop_front() else {
                return;
            };
            self.taken_bytes = self.taken_bytes.saturating_sub(p.wire_len(false));
            if p.resource_version <= self.skip_through {
                continue;
            }
            match verdict {
                access::Verdict::Denied => {
                    self.counts.withheld_denied += 1;
                    continue;
                }
                access::Verdict::Failed => {
                    self.counts.withheld_failed += 1;
                    continue;
                }
                access::Verdict::Send | access::Verdict::Pending => {}
            }
            // A Table row without the object is as long either way: nothing to truncate.
            let shrinks = self
                .format
                .is_none_or(|f| f.include == table::IncludeObject::Object);
            let truncated_len =
                (shrinks && p.event.can_truncate()).then(|| self.line_len(&p, true));
            let lagging = self.taken_bytes > self.lag_bytes;
            let verdict = self.budget.admit(full, truncated_len, lagging, now);
            // Dropped or truncated alike, the client is told the same way; the namespace's
            // share is counted apart so that an operator can tell it from the watcher's own.
            let by_namespace = u64::from(self.budget.limited_by_namespace());
            let truncated = match verdict {
                Verdict::Drop => {
                    self.dropped_budget += 1;
                    self.counts.dropped_budget += 1;
                    self.counts.namespace_dropped += by_namespace;
                    continue;
                }
                Verdict::Full => false,
                Verdict::Truncated => {
                    self.counts.namespace_truncated += by_namespace;
                    true
                }
            };
            if self.dropped_budget > 0 || self.sub.has_taken_drops() {
                self.report_drops(frame, now);
            }
            if frame.is_empty() {
                // This event and the ones taken behind it, a segment each, up to about a
                // frame's worth of Metadata events (a replay takes thousands at once).
                frame.reserve((1 + self.taken.len()).min(FRAME_SEGMENTS));
            }
            self.stages.event(p.published_at);
            self.last_rv = p.resource_version;
            let sent = match &self.format {
                None if !truncated => frame.line(p),
                // Copied: shared, the short line would hold the whole event, its request
                // and response objects too, for as long as the frame waits to be sent.
                None => frame.copy_line(&p, true),
                Some(f) => {
                    let len = f.watch_line_len(&p, truncated, !self.headers_sent);
                    // This row and the ones taken behind it: without, the frame grew by
                    // doubling, copied each time.
                    let room = len.max((len + self.taken_bytes).min(FRAME_BYTES));
                    f.write_watch_line(frame.own(room), &p, truncated, !self.headers_sent);
                    frame.wrote(len);
                    self.headers_sent = true;
                    len
                }
            };
            self.counts.sent(sent, truncated);
        }
    }

    /// With nothing to send: a drop report or a bookmark that is due, or else the time
    /// the timer must wake the watch at.
    fn idle(&mut self, frame: &mut Builder, now: Instant) -> Instant {
        let mut wake = self.deadline;
        if self.dropped_budget > 0 || self.sub.has_dropped() {
            let wait = self.budget.wait_for(BOOKMARK_BYTES, now);
            if wait.is_zero() || self.report_at.is_some_and(|at| now >= at) {
                self.report_drops(frame, now);
                return wake;
            }
            let at = *self.report_at.get_or_insert(now + wait);
            wake = wake.min(at);
        }
        if let Some(at) = self.next_bookmark {
            if now >= at {
                self.report_drops(frame, now);
                if frame.is_empty() {
                    let line = self.bookmark(None);
                    self.budget.charge(line.len(), now);
                    frame.extend_from_slice(&line);
                }
                self.next_bookmark = Some(now + BOOKMARK_INTERVAL);
                return wake;
            }
            wake = wake.min(at);
        }
        if matches!(self.state, State::Streaming) && self.recheck.is_some() {
            wake = wake.min(self.next_recheck);
        }
        wake
    }

    fn flush_counts(&mut self) {
        if !self.counts.is_empty() {
            self.totals += &self.counts;
            self.guard.flush(&mut self.counts);
        }
    }

    /// The frame of the poll that began at `polled`, handed to hyper.
    fn ready(
        &mut self,
        frame: Builder,
        polled: Instant,
    ) -> Poll<Option<Result<Frame<Chunk>, Infallible>>> {
        self.flush_counts();
        self.registration.set_backlog(!self.taken.is_empty());
        let frame: frame::Frame = frame.finish(self.stages.frame(polled));
        Poll::Ready(Some(Ok(Frame::data(Chunk::Shared(Box::new(frame))))))
    }
}

impl http_body::Body for WatchBody {
    type Data = Chunk;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Chunk>, Infallible>>> {
        // Still set when the body is dropped: a panic left the poll (`response::Guarded`
        // caught it), which the end line says.
        self.in_poll = true;
        let poll = self.poll_next(cx);
        self.in_poll = false;
        poll
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

impl WatchBody {
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Chunk>, Infallible>>> {
        let this = self;
        loop {
            if matches!(this.state, State::Done) {
                return Poll::Ready(None);
            }
            let now = Instant::now();
            // Ended from outside (stalled, shutdown) or by its deadline: no more lines.
            if !this.registration.polled(now) {
                this.flush_counts();
                let why = EndReason::from_outside(this.registration.ended());
                this.finish(why);
                continue;
            }
            if now >= this.deadline {
                this.flush_counts();
                this.finish(EndReason::Timeout);
                continue;
            }
            let mut frame = Builder::default();
            if let Some((why, error)) = this.poll_recheck(cx, now) {
                this.finish(why);
                frame.extend_from_slice(&error);
                return this.ready(frame, now);
            }
            this.fill(&mut frame, cx, now);
            if !frame.is_empty() {
                return this.ready(frame, now);
            }
            this.budget.set_active(false);
            match this.sub.poll_take(cx, &mut this.taken) {
                Poll::Ready(Some(bytes)) => {
                    this.taken_bytes = bytes;
                    continue;
                }
                Poll::Ready(None) => {
                    // Ended by the bus going down: say so, so the client re-watches
                    // elsewhere from its last resourceVersion.
                    if let Some(down) = this.sub.failure() {
                        let e = ApiError::from(down.clone());
                        this.finish(EndReason::BusDown);
                        frame.extend_from_slice(&e.to_watch_event());
                        return this.ready(frame, now);
                    }
                    let why = EndReason::from_outside(this.registration.ended());
                    this.finish(why);
                    continue;
                }
                Poll::Pending => {}
            }
            let wake = this.idle(&mut frame, now);
            if !frame.is_empty() {
                return this.ready(frame, now);
            }
            if this.timer.deadline() != wake {
                this.timer.as_mut().reset(wake);
            }
            if this.timer.as_mut().poll(cx).is_ready() {
                continue;
            }
            this.flush_counts();
            // Nothing held: an idle watch is never taken for a stalled one (the flag was
            // left set if the last events taken were all dropped or skipped).
            this.registration.set_backlog(!this.taken.is_empty());
            return Poll::Pending;
        }
    }
}

impl Drop for WatchBody {
    /// The watch's end in the log, with everything it sent and lost. Drops its client
    /// was never told of (the queue was full after the last report) are counted here.
    fn drop(&mut self) {
        self.counts.dropped_queue_full += self.sub.take_dropped();
        self.flush_counts();
        let t = &self.totals;
        let elapsed = self.started.elapsed();
        tracing::info!(
            user = %self.user,
            resource = %self.resource,
            namespace = %self.namespace,
            duration_seconds = elapsed.as_millis() as f64 / 1000.0,
            sent = t.sent,
            sent_bytes = t.sent_bytes,
            truncated = t.truncated,
            dropped = t.dropped_budget + t.dropped_queue_full,
            dropped_budget = t.dropped_budget,
            dropped_queue_full = t.dropped_queue_full,
            namespace_truncated = t.namespace_truncated,
            namespace_dropped = t.namespace_dropped,
            reason = %self
                .end
                .unwrap_or(if self.in_poll {
                    EndReason::Panic
                } else {
                    EndReason::ClientClosed
                })
                .as_str(),
            "watch ended"
        );
    }
}

#[cfg(test)]
mod tests {
    use bytes::Buf;
    use http_body_util::BodyExt;
    use prometheus::IntCounter;

    use super::*;
    use crate::bus::{Filter, Scope};
    use crate::watch::Watches;
    use crate::watch::tests::{Log, alice, bus};

    /// A watch whose re-authorization answers `answer`, run to its end: its last line and
    /// the line its end leaves in the log.
    async fn rechecked(answer: fn() -> ApiError) -> (serde_json::Value, String) {
        let log = Log::capture();
        let bus = bus();
        let watches = Watches::new(10, 10, Duration::from_secs(60));
        let sub = bus.subscribe(Filter::scope(Scope::All), None).unwrap();
        let registration = watches
            .register("alice", sub.closer(), IntCounter::new("s", "s").unwrap())
            .unwrap();
        let recheck: super::super::Recheck =
            Arc::new(move || Box::pin(async move { Err(answer()) }));
        let every = Duration::from_secs(10);
        let ctx = WatchCtx {
            recheck: Some((recheck, every)),
            ..alice()
        };
        let query = Query::parse(Some("watch=1&timeoutSeconds=60")).unwrap();
        let mut body = WatchBody::new(sub, registration, &query, ctx);
        tokio::time::advance(every).await;
        let frame = body.frame().await.expect("the ERROR line").unwrap();
        let mut data = frame.into_data().unwrap();
        let line = serde_json::from_slice(&data.copy_to_bytes(data.remaining())).unwrap();
        assert!(body.frame().await.is_none(), "then the stream ends");
        drop(body);
        (line, log.line("watch ended"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_watch_ends_with_403_and_says_revoked() {
        let (line, ended) = rechecked(|| ApiError::ForbiddenPlain("no longer".into())).await;
        assert_eq!(
            (line["type"].as_str(), line["object"]["code"].as_u64()),
            (Some("ERROR"), Some(403))
        );
        assert!(ended.contains("reason=revoked"), "{ended}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_recheck_that_fails_ends_the_watch_as_an_authorization_error() {
        let (line, ended) = rechecked(|| ApiError::Internal("no answer".into())).await;
        assert_eq!(line["object"]["code"], 500);
        assert!(ended.contains("reason=authorization_error"), "{ended}");
    }
}
