//! `POST /ingest`: the audit webhook backend's push. Asks `authn::pusher` who is pushing,
//! bounds the body, decodes the `EventList` whole and only then publishes it, so a bad
//! batch leaves nothing half-published. Never waits on a watcher: `Bus::publish` does not.
//! Bounds the pushes in flight, in all and per pusher (`InFlight`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use prometheus::{Histogram, IntCounterVec, IntGaugeVec};

pub use crate::authn::pusher::Gate;
use crate::authn::pusher::Refusal;
use crate::bus::Bus;
use crate::event::{self, Event, Redaction, Rule};
use crate::metrics::{self, Metrics};
use crate::nats::{self, Nats};
use crate::response::{self, Body};
use crate::sources::{Push, Sources};
use crate::status::ApiError;
use crate::tls::Peer;

/// Bodies above this are decoded off the async workers, so that one big batch does not
/// stall other connections on the same thread.
const BLOCKING_DECODE_BYTES: usize = 256 * 1024;
/// How long a refused push's body is read before the answer goes out regardless.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// A source name is a node or host name: DNS subdomain length.
const MAX_SOURCE_LEN: usize = 253;
/// Source names kept as metric labels: a cluster has a handful of apiservers, so this
/// leaves room for replacements over a long run; later names are counted as `other`,
/// which bounds the series a pusher can create.
const MAX_SOURCE_LABELS: usize = 64;
/// The label of every source past `MAX_SOURCE_LABELS`.
const OTHER_SOURCE: &str = "other";
/// Our own time from a push's start to its events on the bus: milliseconds normally,
/// seconds for a 32 MiB batch on a busy node.
const BATCH_SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// stageTimestamp to the bus: kube-apiserver's webhook batches for up to 30 s by default
/// (--audit-webhook-batch-max-wait), and retries with backoff when a push fails.
const AUDIT_DELAY_SECONDS_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// Ingest's own metrics; the accepted events and bytes by source are `Metrics`'.
pub struct Meters {
    /// Events with something redacted, by rule (a closed set: three label values).
    redacted: IntCounterVec,
    batch_seconds: Histogram,
    audit_delay_seconds: Histogram,
    last_push: IntGaugeVec,
    sources: SourceLabels,
}

impl Meters {
    pub fn new(m: &Metrics) -> Self {
        let meters = Meters {
            redacted: m.register(IntCounterVec::new(
                metrics::opts(
                    "ingest",
                    "redacted_events_total",
                    "Events in which a redaction rule replaced a value before the bus, by rule (--redact).",
                ),
                &["rule"],
            )),
            batch_seconds: m.register(Histogram::with_opts(metrics::histogram_opts(
                "ingest",
                "batch_duration_seconds",
                "Time from the start of an accepted push to its events on the bus (reading, decoding, publishing).",
                BATCH_SECONDS_BUCKETS,
            ))),
            audit_delay_seconds: m.register(Histogram::with_opts(metrics::histogram_opts(
                "ingest",
                "audit_delay_seconds",
                "Time from an event's stageTimestamp to the moment it is on the bus (the webhook's batching and retries, the network, ingest).",
                AUDIT_DELAY_SECONDS_BUCKETS,
            ))),
            last_push: m.register(IntGaugeVec::new(
                metrics::opts(
                    "ingest",
                    "last_push_timestamp_seconds",
                    "When the source's last accepted push was, in seconds since the epoch.",
                ),
                &["source"],
            )),
            sources: SourceLabels::default(),
        };
        // Every rule's series from the start (a closed set of three): a rate over it
        // reads 0, not "no data", before the first redaction.
        for rule in Rule::ALL {
            meters.redacted.with_label_values(&[rule.as_str()]);
        }
        meters
    }

    /// Count the batch's redacted events by rule: a bit test per event, and nothing
    /// more when none was redacted.
    fn redacted(&self, events: &[Event]) {
        let mut by_rule = [0u64; Rule::ALL.len()];
        for rules in events.iter().map(Event::redacted).filter(|r| !r.is_empty()) {
            for (n, rule) in by_rule.iter_mut().zip(Rule::ALL) {
                *n += u64::from(rules.contains(rule));
            }
        }
        for (n, rule) in by_rule.into_iter().zip(Rule::ALL) {
            if n > 0 {
                self.redacted.with_label_values(&[rule.as_str()]).inc_by(n);
            }
        }
    }

    /// A batch from `source` is on the bus: its time since `started`, and each event's
    /// delay since its stageTimestamp (observed locally, added to the shared histogram
    /// once per batch).
    fn accepted(&self, source: &str, started: tokio::time::Instant, stages: &[i64]) {
        let now = k8s_openapi::jiff::Timestamp::now();
        self.batch_seconds.observe(started.elapsed().as_secs_f64());
        let now_micros = now.as_microsecond();
        let local = self.audit_delay_seconds.local();
        for stage in stages {
            // A clock ahead of ours is no delay, not a negative one.
            local.observe(now_micros.saturating_sub(*stage).max(0) as f64 / 1e6);
        }
        local.flush();
        self.last_push
            .with_label_values(&[source])
            .set(now.as_second());
    }

    /// A push from `source` was answered as accepted without reaching the bus (a retry
    /// of a batch already there): the source is alive.
    fn pushed(&self, source: &str) {
        let now = k8s_openapi::jiff::Timestamp::now();
        self.last_push
            .with_label_values(&[source])
            .set(now.as_second());
    }
}

/// Source names as metric labels, bounded: the first `MAX_SOURCE_LABELS` names seen keep
/// their own label, any later one is `other`.
#[derive(Default)]
struct SourceLabels {
    known: Mutex<HashSet<Arc<str>>>,
}

impl SourceLabels {
    fn label(&self, source: &str) -> Arc<str> {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(name) = known.get(source) {
            return name.clone();
        }
        if known.len() >= MAX_SOURCE_LABELS {
            return OTHER_SOURCE.into();
        }
        let name: Arc<str> = source.into();
        known.insert(name.clone());
        name
    }
}

/// How long the memory bus recognises a webhook retry. kube-apiserver's webhook backend
/// retries a batch it got no answer for (`webhook.DefaultRetryBackoffWithInitialDelay`:
/// 5 attempts, waits of 10 s, 15 s, 22.5 s and 33.75 s with `--audit-webhook-initial-
/// backoff`'s default, each up to 20 % longer, every attempt up to its 30 s timeout):
/// the last attempt starts at most 4 × 30 s + 97.5 s ≈ 3.6 min after the first, so 5 min
/// covers the whole default schedule. Longer than JetStream's window (`nats`, 2 min,
/// which covers the first retries); no batch is sent again on purpose, so a longer
/// window recognises nothing that is not a retry.
const RETRY_WINDOW: Duration = Duration::from_secs(300);
/// How many batches the memory bus remembers at most within `RETRY_WINDOW`: at the
/// webhook's default `--audit-webhook-batch-throttle-qps` (10 batches a second), 5
/// minutes of 5 apiservers pushing flat out; about 1.5 MiB. Past it the oldest are
/// forgotten first (a retry of one of those is published again).
const RETRY_BATCHES: usize = 16 * 1024;

/// The batches the memory bus took recently, by `nats::content_key` (source and body),
/// so that a webhook retry is answered as accepted and published once, as JetStream's
/// duplicate window does for `--bus=nats`. Two different batches that share an
/// `auditID` (a client can set its own) have different bodies: both are published.
pub struct RecentBatches {
    window: Duration,
    max: usize,
    state: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    keys: HashSet<[u8; 32]>,
    /// Oldest first.
    order: VecDeque<([u8; 32], tokio::time::Instant)>,
}

impl Default for RecentBatches {
    fn default() -> Self {
        RecentBatches::new(RETRY_WINDOW, RETRY_BATCHES)
    }
}

impl RecentBatches {
    fn new(window: Duration, max: usize) -> Self {
        RecentBatches {
            window,
            max,
            state: Mutex::default(),
        }
    }

    /// Whether `key` was taken within the window; if not, it is remembered from `now`.
    fn seen(&self, key: [u8; 32], now: tokio::time::Instant) -> bool {
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

/// How long a push's body may take to arrive: kube-apiserver's default request timeout.
/// A pusher trickling its body holds an in-flight slot no longer than this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// What `config` makes of the ingest flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Who may push.
    pub gate: crate::authn::pusher::Settings,
    pub max_request_bytes: u64,
    /// Ingest requests in flight at most, in all and per pusher.
    pub max_inflight: usize,
    pub max_inflight_per_pusher: usize,
    /// How long a push's body may take to arrive (no flag: `BODY_TIMEOUT`; tests shorten it).
    pub body_timeout: Duration,
    /// `--redact`: which rules apply.
    pub redact: event::Rules,
    /// `--redaction-key-file`: values become HMACs under the key it holds.
    pub redaction_key_file: Option<std::path::PathBuf>,
}
/// kube-apiserver's max-in-flight answer.
const TOO_MANY: &str = "Too many requests, please try again later.";

/// Ingest requests in flight, in all and per pusher: kube-apiserver's max-in-flight
/// filter for mutating requests, with a per-pusher share so that one apiserver retrying
/// in a loop cannot lock the others out.
pub struct InFlight {
    max: usize,
    per_pusher: usize,
    state: Arc<Mutex<Counts>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_pusher: HashMap<String, usize>,
}

/// A push's place in flight, given back when dropped.
pub struct Slot {
    state: Arc<Mutex<Counts>>,
    pusher: String,
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

/// The ingest endpoint: who may push, where events go, the size limits. Built once at
/// start.
pub struct Ingest {
    pub gate: Gate,
    pub bus: Bus,
    /// `--bus=nats`: events go to the shared stream, and reach `bus` from there.
    pub nats: Option<Nats>,
    pub metrics: Arc<Metrics>,
    pub meters: Meters,
    pub max_request_bytes: u64,
    pub max_event_bytes: usize,
    pub inflight: InFlight,
    /// `BODY_TIMEOUT`, unless a test shortens it.
    pub body_timeout: Duration,
    /// What is taken out of each event before it reaches the bus.
    pub redaction: Arc<Redaction>,
    /// `--bus=memory`: the batches taken recently, so that a retry is published once.
    pub recent: RecentBatches,
    /// Stored or duplicate, counted for the memory bus as NATS counts its messages.
    pub published: metrics::Published,
    /// Each source's pushes, accepted and refused (`sources.audit.k8s.io`).
    pub sources: Sources,
}

impl Ingest {
    /// Handle one push; counted by its answer's code.
    pub async fn handle<B>(&self, req: Request<B>, peer: &Peer) -> Result<Response<Body>, ApiError>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let credential = crate::authn::presented(req.headers(), peer);
        // The source, once the pusher is admitted: a push refused before that (no
        // credentials it believes) is nobody's, and is counted in the metrics only.
        let mut source = None;
        let (result, refusal) = match self.push(req, peer, &mut source).await {
            Ok(resp) => (Ok(resp), None),
            Err(Failed::Refused(refusal)) => (Err(refusal.answer()), Some(refusal)),
            Err(Failed::Error(e)) => (Err(e), None),
        };
        let code = result
            .as_ref()
            .map_or_else(|e| e.code_reason().0, |r| r.status());
        self.metrics.ingest_request(code.as_u16());
        if let (Err(e), Some(source)) = (&result, &source) {
            let message = e.to_string();
            self.sources.record(
                source,
                Push::Refused {
                    code: code.as_u16(),
                    message: &message,
                },
            );
        }
        if let Err(e) = &result {
            let reason = match refusal {
                // Answered with a bare 401, as kube-apiserver does: the log says which
                // credential the gate could not believe.
                Some(
                    r @ (Refusal::NoCredentials | Refusal::CertNotVerified | Refusal::UnknownToken),
                ) => r.to_string(),
                // Answered with its reason.
                Some(Refusal::CertNotAllowed { .. }) | None => e.to_string(),
            };
            // Who was turned away and why; never the credential nor the body.
            tracing::info!(
                peer = %peer.remote_addr,
                credential,
                code = code.as_u16(),
                reason,
                "push refused"
            );
        }
        result
    }

    /// `known_source`: set as soon as the push's source is known, so that a refusal after
    /// that point is counted for it.
    async fn push<B>(
        &self,
        req: Request<B>,
        peer: &Peer,
        known_source: &mut Option<String>,
    ) -> Result<Response<Body>, Failed>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = tokio::time::Instant::now();
        let max_request_bytes = self.max_request_bytes;
        let (parts, body) = req.into_parts();
        let admitted = admit(&parts, peer, &self.gate, max_request_bytes, known_source).and_then(
            |a| match self.inflight.enter(&a.pusher) {
                Some(slot) => Ok((a.source, slot)),
                None => {
                    self.metrics.refused("ingest_inflight");
                    Err(ApiError::TooManyRequests(TOO_MANY.into()).into())
                }
            },
        );
        let (source, _slot) = match admitted {
            Ok(a) => a,
            Err(e) => {
                drain(body, max_request_bytes).await;
                return Err(e);
            }
        };
        let limit = usize::try_from(max_request_bytes).unwrap_or(usize::MAX);
        let collected =
            tokio::time::timeout(self.body_timeout, Limited::new(body, limit).collect())
                .await
                .map_err(|_| {
                    self.metrics.refused("ingest_body_timeout");
                    ApiError::Timeout("request did not complete within the allotted timeout".into())
                })?;
        let body = match collected {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(ApiError::RequestEntityTooLarge {
                    limit: max_request_bytes,
                }
                .into());
            }
            Err(e) => {
                return Err(ApiError::BadRequest(format!("reading the request body: {e}")).into());
            }
        };

        let size = body.len();
        let max_event_bytes = self.max_event_bytes;
        let label = self.meters.sources.label(&source);
        // The memory bus's retry key, hashed with the decode (off the async workers for
        // a large body); NATS keys each message instead.
        let memory_bus = self.nats.is_none();
        let decode = {
            let (source, redaction) = (source.clone(), self.redaction.clone());
            move || {
                let key = memory_bus.then(|| nats::content_key(&source, &body));
                decode(&body, &source, max_event_bytes, &redaction).map(|d| (d, key))
            }
        };
        let (decoded, key) = if size > BLOCKING_DECODE_BYTES {
            tokio::task::spawn_blocking(decode)
                .await
                .map_err(|e| ApiError::Internal(format!("decoding task failed: {e}")))?
        } else {
            decode()
        }?;
        let count = decoded.events.len();
        // A retry of a batch already taken: answered as its first push was, published
        // once. Checked and remembered with no await before the publish, so that two
        // copies in flight at once are published once too.
        if let Some(key) = key
            && self.recent.seen(key, started)
        {
            self.published.count(true);
            self.sources.record(
                &source,
                Push::Accepted {
                    events: 0,
                    duplicate_events: count as u64,
                    bytes: size as u64,
                },
            );
            self.meters.pushed(&label);
            tracing::debug!(%source, events = count, "a webhook retry of a batch already published; not published again");
            return Ok(accepted(count));
        }
        self.metrics
            .ingest_oversized(decoded.truncated, decoded.dropped);
        self.meters.redacted(&decoded.events);
        let stages: Vec<i64> = decoded
            .events
            .iter()
            .filter_map(Event::stage_timestamp_micros)
            .collect();
        let published = match &self.nats {
            None => {
                self.bus.publish(decoded.events);
                self.published.count(false);
                crate::nats::Published {
                    events: count as u64,
                    duplicate_events: 0,
                }
            }
            Some(nats) => nats.publish(&source, decoded.events).await?,
        };
        self.sources.record(
            &source,
            Push::Accepted {
                events: published.events,
                duplicate_events: published.duplicate_events,
                bytes: size as u64,
            },
        );
        self.meters.accepted(&label, started, &stages);
        self.metrics.ingest_accepted(&label, count, size);
        Ok(accepted(count))
    }
}

/// The answer to a push whose `count` events are on the bus.
fn accepted(count: usize) -> Response<Body> {
    let status = Status {
        status: Some("Success".into()),
        code: Some(200),
        message: Some(format!("{count} events accepted")),
        ..Default::default()
    };
    response::json(
        StatusCode::OK,
        serde_json::to_vec(&status).unwrap_or_default(),
    )
}

/// Read and discard a refused push's body (bounded in bytes and time) before answering:
/// an HTTP/2 stream whose request body is dropped unread is reset, and the pusher (the
/// apiserver's webhook client, curl) loses the Status that says why it was refused.
async fn drain<B>(mut body: B, max_bytes: u64)
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    let read = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > max_bytes {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, read).await;
}

/// Why a push was not taken: the gate refused its credentials (the log says which), or
/// anything else.
enum Failed {
    Refused(Refusal),
    Error(ApiError),
}

impl From<Refusal> for Failed {
    fn from(r: Refusal) -> Self {
        Failed::Refused(r)
    }
}

impl From<ApiError> for Failed {
    fn from(e: ApiError) -> Self {
        Failed::Error(e)
    }
}

/// Who is pushing (their in-flight share is counted by this name) and the source their
/// events are annotated with.
struct Admitted {
    pusher: String,
    source: String,
}

/// Everything decided before the body is read: method, pusher, source, declared size.
fn admit(
    parts: &http::request::Parts,
    peer: &Peer,
    gate: &Gate,
    max_request_bytes: u64,
    known_source: &mut Option<String>,
) -> Result<Admitted, Failed> {
    if parts.method != Method::POST {
        return Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource: {} /ingest (use POST)",
            parts.method
        ))
        .into());
    }
    let mut pusher = gate.admit(&parts.headers, peer)?;
    if pusher.is_empty() {
        pusher = peer.remote_addr.ip().to_string();
    }
    // A `?source=` that is refused is counted for the pusher's own name.
    *known_source = Some(pusher.clone());
    let source = match query_source(parts.uri.query())? {
        Some(s) => s,
        None => pusher.clone(),
    };
    *known_source = Some(source.clone());
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_request_bytes) {
        return Err(ApiError::RequestEntityTooLarge {
            limit: max_request_bytes,
        }
        .into());
    }
    Ok(Admitted { pusher, source })
}

struct Decoded {
    events: Vec<Event>,
    truncated: usize,
    dropped: usize,
}

fn decode(
    body: &[u8],
    source: &str,
    max_event_bytes: usize,
    redaction: &Redaction,
) -> Result<Decoded, ApiError> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let events = event::decode_event_list_with(body, source, &now, redaction)
        .map_err(|e| ApiError::BadRequest(format!("the body is not an audit EventList: {e}")))?;
    let mut out = Decoded {
        events: Vec::with_capacity(events.len()),
        truncated: 0,
        dropped: 0,
    };
    for ev in events {
        match ev.limit_size(max_event_bytes) {
            event::Limited::Fits(ev) => out.events.push(ev),
            event::Limited::Truncated(ev) => {
                out.truncated += 1;
                out.events.push(ev);
            }
            event::Limited::TooLarge { audit_id } => {
                tracing::warn!(%audit_id, max_event_bytes, "event too large even truncated; dropped");
                out.dropped += 1;
            }
        }
    }
    Ok(out)
}

/// `?source=NAME`, checked to be a plausible host name.
fn query_source(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(q) = query else { return Ok(None) };
    let Some((_, value)) = form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "source") else {
        return Ok(None);
    };
    let ok = !value.is_empty()
        && value.len() <= MAX_SOURCE_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c));
    if !ok {
        return Err(ApiError::BadRequest(format!(
            "source: must be 1 to {MAX_SOURCE_LEN} characters of letters, digits, '-', '.', '_' or ':'"
        )));
    }
    Ok(Some(value.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_labels_are_bounded() {
        let labels = SourceLabels::default();
        for i in 0..MAX_SOURCE_LABELS {
            assert_eq!(
                &*labels.label(&format!("apiserver-{i}")),
                format!("apiserver-{i}")
            );
        }
        assert_eq!(&*labels.label("one-too-many"), OTHER_SOURCE);
        // Names already known keep their label.
        assert_eq!(&*labels.label("apiserver-0"), "apiserver-0");
    }

    #[test]
    fn in_flight_slots_in_all_and_per_pusher() {
        let f = InFlight::new(3, 2);
        let a1 = f.enter("a").expect("a's first");
        let _a2 = f.enter("a").expect("a's second");
        assert!(f.enter("a").is_none(), "a's share is 2");
        let b1 = f.enter("b").expect("b is not held up by a");
        assert!(f.enter("c").is_none(), "3 in all");
        drop(a1);
        let _a3 = f.enter("a").expect("a's slot came back");
        drop(b1);
        assert!(!f.state.lock().unwrap().by_pusher.contains_key("b"));
        let _c = f.enter("c").expect("b's slot came back");
    }

    #[test]
    fn recent_batches_are_bounded_in_time_and_count() {
        let start = tokio::time::Instant::now();
        let recent = RecentBatches::new(Duration::from_secs(10), 2);
        let key = |n: u8| nats::content_key("api-1", &[n]);
        assert!(!recent.seen(key(1), start), "first push");
        assert!(
            recent.seen(key(1), start + Duration::from_secs(9)),
            "a retry"
        );
        assert!(
            !recent.seen(key(1), start + Duration::from_secs(10)),
            "forgotten after the window"
        );
        assert!(!recent.seen(key(2), start + Duration::from_secs(10)));
        assert!(!recent.seen(key(3), start + Duration::from_secs(10)));
        assert_eq!(
            recent.state.lock().unwrap().order.len(),
            2,
            "at most 2 kept"
        );
        assert!(
            !recent.seen(key(1), start + Duration::from_secs(11)),
            "the oldest went first"
        );
        assert!(recent.seen(key(3), start + Duration::from_secs(11)));
        assert_ne!(
            nats::content_key("api-1", b"x"),
            nats::content_key("api-2", b"x"),
            "the same body from another source is another batch"
        );
    }

    #[test]
    fn source_from_query() {
        assert_eq!(query_source(None).unwrap(), None);
        assert_eq!(query_source(Some("a=b")).unwrap(), None);
        assert_eq!(
            query_source(Some("source=node-1.example"))
                .unwrap()
                .as_deref(),
            Some("node-1.example")
        );
        assert!(query_source(Some("source=")).is_err());
        assert!(query_source(Some("source=a%22b")).is_err());
    }
}
