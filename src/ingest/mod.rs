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
                Some(slot) => Ok((a.source, a.declared, slot)),
                None => {
                    self.metrics.refused("ingest_inflight");
                    Err(ApiError::TooManyRequests(TOO_MANY.into()).into())
                }
            },
        );
        let (source, declared, _slot) = match admitted {
            Ok(a) => a,
            Err(e) => {
                drain(body, max_request_bytes).await;
                return Err(e);
            }
        };
        let limit = usize::try_from(max_request_bytes).unwrap_or(usize::MAX);
        let collected = tokio::time::timeout(self.body_timeout, gather(body, limit, declared))
            .await
            .map_err(|_| {
                self.metrics.refused("ingest_body_timeout");
                ApiError::Timeout("request did not complete within the allotted timeout".into())
            })?;
        let body = match collected {
            Ok(body) => body,
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

/// What `gather` reserves at most before the bytes come: above kube-apiserver's largest
/// batches (400 events of RequestResponse bodies make a few MB).
const GATHER_RESERVE_MAX: usize = 8 << 20;

/// The whole body in one buffer, for the decoder (which reads all of it as one text).
/// With a declared length, each chunk is copied into a buffer of that size as it arrives,
/// while it is still in cache from its decryption: gathering the chunks after the last
/// one came was 4 % of ingest for 2 MB bodies (profiled). A body that comes in one chunk
/// is not copied at all; one of no declared length is gathered at its end, as before.
async fn gather<B>(
    body: B,
    limit: usize,
    declared: Option<usize>,
) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut body = Limited::new(body, limit);
    let Some(declared) = declared else {
        return Ok(body.collect().await?.to_bytes());
    };
    let mut first: Option<Bytes> = None;
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        // Trailers carry nothing the decoder reads.
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if first.is_none() && buf.is_empty() {
            first = Some(data);
            continue;
        }
        if let Some(first) = first.take() {
            // Bounded: `Limited` ends the body past `limit`, and `admit` refused a
            // declared length over it. A pusher that declares much and sends little holds
            // no more than `GATHER_RESERVE_MAX` up front; past it the buffer grows as
            // bytes come.
            let want = declared.min(GATHER_RESERVE_MAX);
            buf.reserve_exact(want.max(first.len() + data.len()));
            buf.extend_from_slice(&first);
        }
        buf.extend_from_slice(&data);
    }
    Ok(first.unwrap_or_else(|| buf.into()))
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
    /// The body's declared length, already held to the limit.
    declared: Option<usize>,
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
    // At most `max_request_bytes`, so that `gather` may reserve it.
    let declared = declared.and_then(|n| usize::try_from(n).ok());
    Ok(Admitted {
        pusher,
        source,
        declared,
    })
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
    // Most batches have no event over the limit: they are kept as decoded. Moving each
    // event through `limit_size` into a second list was 1.7 % of ingest (profiled).
    if events
        .iter()
        .all(|ev| ev.wire_len(false) <= max_event_bytes)
    {
        return Ok(Decoded {
            events,
            truncated: 0,
            dropped: 0,
        });
    }
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
    if !crate::sources::is_name(&value) {
        return Err(ApiError::BadRequest(format!(
            "source: must be 1 to {} characters of letters, digits, '-', '.', '_' or ':'",
            crate::sources::MAX_NAME_LEN
        )));
    }
    Ok(Some(value.into_owned()))
}

mod inflight;
mod meters;
mod recent;
#[cfg(test)]
mod tests;

use inflight::TOO_MANY;
pub use inflight::{InFlight, Slot};
pub use meters::Meters;
pub use recent::RecentBatches;
