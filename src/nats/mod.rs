//! `--bus=nats`: several replicas act as one stream through a NATS JetStream stream.
//!
//! The replica that takes a push publishes its events to the stream, already decoded
//! and serialised (`event::wire`), and answers the webhook only once JetStream has
//! stored them. Every replica (that one included) reads the stream in order with an
//! ordered consumer and feeds its local `bus`, which does the fan-out, the replay window
//! and LIST exactly as in memory mode. So every replica holds the same events in the
//! same order, and gives each the same resourceVersion:
//!
//! ```text
//! resourceVersion = (created + sequence) << 12 | index
//! ```
//!
//! `sequence` is the JetStream sequence of the message that carried the event, `index`
//! its place in that message (a message carries at most 4096 events: one publish per
//! batch, not per event), and `created` the stream's creation time in microseconds since
//! 2025 (so that the number fits an `i64`, as Prometheus gauges and JSON readers want it,
//! until 2096). The
//! last term is what keeps resourceVersions from going backwards when the stream is lost
//! (NATS restarted with its memory store) and made again: sequences start over at 1, but
//! `created` has grown by more than the old stream's sequences could (that would take
//! a million messages a second since it was made). Every replica reads `created` from
//! the stream's own info, so none has to agree with another on anything else.
//!
//! A webhook retry of a batch is published with the same message ids and stored once:
//! each message's id is a hash of its bytes (the events as serialised, source annotation
//! included) and the source, never an `auditID`, which a client can choose.
//!
//! While NATS cannot be reached, or the stream not read, the bus is down: watches end
//! with an `ERROR`, ingest, WATCH and LIST answer 503, `/readyz` fails its `bus` check.
//! When it returns, the replica reads on from where it was and is ready again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use prometheus::{IntCounter, IntCounterVec};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bus::{self, Bus, INDEX_BITS};
use crate::event::{Event, Limited};
use crate::metrics::Metrics;
use crate::status::ApiError;

/// `--bus=nats` settings, validated by `config`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub urls: Vec<String>,
    pub stream: String,
    pub ca_file: Option<PathBuf>,
    pub creds_file: Option<PathBuf>,
}

/// Events per message at most, so that `index` fits its bits.
const MAX_EVENTS_PER_MESSAGE: usize = 1 << INDEX_BITS;
/// The first byte of every message: the record format (`event::wire`). 2 leaves each
/// line's head out (1 carried it). A replica skips, and counts as malformed, a message of
/// a format it does not read: replicas of two formats must not share a stream.
const WIRE_VERSION: u8 = 2;
/// A message's size at most, below the server's `max_payload`: large enough that a
/// webhook batch (400 events of a few KiB) is a handful of messages. Measured: 60 KiB
/// messages cost NATS and the replica 16 % more CPU per event than 1 MiB ones.
const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Room for the headers (the message id) beside the payload.
const HEADERS_ROOM: usize = 1024;
/// How long a webhook retry is recognised as one (JetStream's duplicate window). The
/// webhook backend retries within seconds.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a publish waits for JetStream to confirm it before the push gets a 503.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Between attempts to reach the stream again.
const RETRY: Duration = Duration::from_millis(500);

/// The resourceVersion of the `index`-th event of message `sequence` of the stream made
/// at `created` (microseconds since 2025).
pub fn resource_version(created: u64, sequence: u64, index: u64) -> u64 {
    created
        .saturating_add(sequence)
        .saturating_mul(1 << INDEX_BITS)
        | index
}

/// The shared stream: publish (ingest) and follow (into the local bus).
#[derive(Clone)]
pub struct Nats {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    subject: String,
    /// For messages: where NATS is.
    url: String,
    bus: Bus,
    window: (usize, usize),
    metrics: NatsMetrics,
}

/// Why `--bus=nats` could not start. NATS out of reach is not one of them: the replica
/// starts not ready and keeps trying.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The credentials file could not be read.
    #[error("--nats-creds-file: {0}")]
    Creds(#[source] std::io::Error),
    /// The client could not be made: an address it cannot read.
    #[error("--nats-url: {0}")]
    Connect(#[source] async_nats::ConnectError),
}

/// Why following the stream stopped. The bus is down for this reason (the log's and the
/// 503s' words) until the stream is read again.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("the JetStream stream {stream:?} on {url}: {source}")]
    Find {
        stream: String,
        url: String,
        #[source]
        source: FindError,
    },
    #[error("the JetStream stream {stream:?}: {source}")]
    Info {
        stream: String,
        #[source]
        source: stream::InfoError,
    },
    #[error("reading the stream {stream:?}: {source}")]
    Consumer {
        stream: String,
        #[source]
        source: stream::ConsumerError,
    },
    #[error("reading the stream {stream:?}: {source}")]
    Messages {
        stream: String,
        #[source]
        source: consumer::StreamError,
    },
    #[error("reading the stream {stream:?}: {source}")]
    Read {
        stream: String,
        #[source]
        source: consumer::pull::OrderedError,
    },
    #[error("the stream {stream:?} ended")]
    Ended { stream: String },
    #[error("a message without its stream sequence: {0}")]
    NoSequence(#[source] async_nats::Error),
    #[error("lost the connection to NATS at {url}")]
    Disconnected { url: String },
}

/// Why the stream could not be found or made.
#[derive(Debug, thiserror::Error)]
enum FindError {
    #[error(transparent)]
    Get(jetstream::context::GetStreamError),
    #[error(transparent)]
    Create(jetstream::context::CreateStreamError),
}

impl Nats {
    /// Connect and follow the stream into `bus`, in the background: NATS out of reach is
    /// not a start-up failure, the replica runs not ready until it is reached.
    pub async fn start(
        settings: &Settings,
        bus: Bus,
        window: (usize, usize),
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> Result<Nats, Error> {
        let url = settings.urls.join(",");
        let (connected_tx, connected) = watch::channel(false);
        let mut options = async_nats::ConnectOptions::new()
            .name("kube-audit-stream")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            // Come back quickly: every second down is a second of refused pushes.
            .reconnect_delay_callback(|attempt| Duration::from_millis(100 * attempt.min(20) as u64))
            .event_callback(move |event| {
                let connected_tx = connected_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            connected_tx.send_replace(true);
                        }
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            connected_tx.send_replace(false);
                        }
                        other => tracing::info!(event = %other, "NATS"),
                    }
                }
            });
        if let Some(ca) = &settings.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some(creds) = &settings.creds_file {
            options = options
                .credentials_file(creds)
                .await
                .map_err(Error::Creds)?;
        }
        // With retry_on_initial_connect, connecting happens in the background: this
        // returns at once, whatever the state of NATS.
        let client = options
            .connect(url.as_str())
            .await
            .map_err(Error::Connect)?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(ACK_TIMEOUT);
        let metrics_ = NatsMetrics::new(metrics);
        let inner = Arc::new(Inner {
            client,
            js,
            subject: format!("{}.events", settings.stream),
            stream: settings.stream.clone(),
            url,
            bus,
            window,
            metrics: metrics_,
        });
        // Not ready until the stream is read up to date; not an outage.
        inner
            .bus
            .set_down(&format!("connecting to NATS at {}", inner.url));
        tracing::info!(url = %inner.url, stream = %inner.stream, "bus: following the NATS stream once reached");
        tokio::spawn(inner.clone().follow(connected, shutdown));
        Ok(Nats { inner })
    }

    /// Publish a decoded batch and wait until JetStream has stored all of it. The events
    /// reach the local bus, as every other replica's, by the stream. Says how many events
    /// were new and how many JetStream recognised as a retry (their message was stored
    /// already).
    pub async fn publish(&self, source: &str, events: Vec<Event>) -> Result<Published, ApiError> {
        let inner = &*self.inner;
        if let Some(down) = inner.bus.down() {
            return Err(down.into());
        }
        let limit = match inner.client.server_info().max_payload {
            0 => MAX_MESSAGE_BYTES,
            n => n.min(MAX_MESSAGE_BYTES),
        }
        .saturating_sub(HEADERS_ROOM);
        let mut acks = Vec::new();
        let mut payload = Vec::new();
        let mut count = 0;
        // Each message's buffer is sized once: grown by doubling, it was copied as often
        // as it was written (profiled). What the events hold is more than their records
        // (the heads are left out), and cheaper to add up.
        let mut left: usize = events.iter().map(Event::memory_len).sum();
        for event in events {
            let Some((event, len)) = inner.fit(event, limit) else {
                continue;
            };
            if count == MAX_EVENTS_PER_MESSAGE || (count > 0 && payload.len() + len > limit) {
                acks.push((
                    inner.send(source, std::mem::take(&mut payload)).await?,
                    count,
                ));
                count = 0;
            }
            if payload.is_empty() {
                payload.reserve_exact(1 + left.min(limit).max(len));
                payload.push(WIRE_VERSION);
            }
            event.encode_wire(&mut payload);
            left = left.saturating_sub(len);
            count += 1;
        }
        if count > 0 {
            acks.push((inner.send(source, payload).await?, count));
        }
        let mut published = Published::default();
        for (ack, count) in acks {
            match ack.await {
                Ok(ack) => {
                    inner.metrics.published.count(ack.duplicate);
                    match ack.duplicate {
                        true => published.duplicate_events += count as u64,
                        false => published.events += count as u64,
                    }
                }
                Err(e) => {
                    inner.metrics.publish_errors.inc();
                    return Err(unavailable(&format!(
                        "NATS did not confirm the events: {e}"
                    )));
                }
            }
        }
        Ok(published)
    }

    /// The JetStream context, for the bucket where replicas share their per-source
    /// figures (`sources`).
    pub fn jetstream(&self) -> jetstream::Context {
        self.inner.js.clone()
    }
}

/// What `publish` stored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Events in messages JetStream stored.
    pub events: u64,
    /// Events in messages JetStream recognised as already stored: a retried batch.
    pub duplicate_events: u64,
}

fn unavailable(reason: &str) -> ApiError {
    bus::Down::new(reason).into()
}

impl Inner {
    /// An event whose record would not fit in one message: truncated, or dropped (and
    /// counted) if even that is too large, as `--max-event-bytes` does.
    /// The event that goes in a message, and its record's length.
    fn fit(&self, event: Event, limit: usize) -> Option<(Event, usize)> {
        let len = event.record_len();
        if len <= limit {
            return Some((event, len));
        }
        match fit_record(event, len, limit) {
            Limited::Fits(e) => Some((e, len)),
            Limited::Truncated(e) => {
                self.metrics
                    .oversized
                    .with_label_values(&["truncated"])
                    .inc();
                let len = e.record_len();
                Some((e, len))
            }
            Limited::TooLarge { audit_id } => {
                tracing::warn!(%audit_id, limit, "event too large for a NATS message even truncated; dropped");
                self.metrics.oversized.with_label_values(&["dropped"]).inc();
                None
            }
        }
    }

    async fn send(
        &self,
        source: &str,
        payload: Vec<u8>,
    ) -> Result<jetstream::context::PublishAckFuture, ApiError> {
        let id = message_id(source, &payload);
        let publish = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(payload))
            .message_id(id);
        self.js
            .send_publish(self.subject.clone(), publish)
            .await
            .map_err(|e| {
                self.metrics.publish_errors.inc();
                unavailable(&format!("publishing to NATS: {e}"))
            })
    }

    /// The bus down for `reason`: logged and counted when it was up.
    fn set_down(&self, reason: String) {
        if self.bus.set_down(&reason) {
            tracing::warn!(%reason, "bus down: not ready; open watches ended, pushes refused");
            self.metrics.outages.inc();
        }
    }

    fn set_up(&self) {
        if self.bus.set_up() {
            tracing::info!(stream = %self.stream, "bus up: following the NATS stream; ready");
        }
    }

    /// Follow the stream into the bus until shutdown, through every outage.
    async fn follow(
        self: Arc<Self>,
        mut connected: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        let mut position = None;
        loop {
            if !*connected.borrow_and_update() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = connected.changed() => if changed.is_err() { return },
                }
                continue;
            }
            match self
                .follow_once(&mut position, &mut connected, &shutdown)
                .await
            {
                Ok(()) => return,
                Err(lost) => self.set_down(lost.to_string()),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// Find (or make) the stream, and read it from `position` on until the connection
    /// is lost (`Err`, why) or the server shuts down (`Ok`).
    async fn follow_once(
        &self,
        position: &mut Option<Position>,
        connected: &mut watch::Receiver<bool>,
        shutdown: &CancellationToken,
    ) -> Result<(), Lost> {
        let mut stream = self.stream().await.map_err(|source| Lost::Find {
            stream: self.stream.clone(),
            url: self.url.clone(),
            source,
        })?;
        let info = stream.info().await.map_err(|source| Lost::Info {
            stream: self.stream.clone(),
            source,
        })?;
        let created = bus::micros_since_epoch(info.created.unix_timestamp_nanos());
        let (first, last) = (info.state.first_sequence.max(1), info.state.last_sequence);
        let pos = match position {
            Some(p) if p.created == created && p.next >= first => p,
            _ => {
                // A new stream (first start, or NATS lost the old one), or one that moved
                // past what this replica read: what came before is gone here too.
                if position.is_some() {
                    tracing::warn!(
                        stream = %self.stream,
                        "the stream was made anew or moved on while away; the window starts over"
                    );
                }
                self.bus.reset(resource_version(created, first, 0) - 1);
                position.insert(Position {
                    created,
                    next: first,
                })
            }
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: pos.next,
                },
                ..Default::default()
            })
            .await
            .map_err(|source| Lost::Consumer {
                stream: self.stream.clone(),
                source,
            })?;
        let mut messages = consumer.messages().await.map_err(|source| Lost::Messages {
            stream: self.stream.clone(),
            source,
        })?;
        if pos.next > last {
            self.set_up();
        }
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = connected.changed() => {
                    if changed.is_err() || !*connected.borrow_and_update() {
                        return Err(Lost::Disconnected {
                            url: self.url.clone(),
                        });
                    }
                    continue;
                }
                message = messages.next() => message,
            };
            let message = match message {
                Some(Ok(m)) => m,
                Some(Err(source)) => {
                    return Err(Lost::Read {
                        stream: self.stream.clone(),
                        source,
                    });
                }
                None => {
                    return Err(Lost::Ended {
                        stream: self.stream.clone(),
                    });
                }
            };
            let seq = message.info().map_err(Lost::NoSequence)?.stream_sequence;
            if seq > pos.next {
                // Messages left the stream before this replica read them: a watch from
                // before them must be told it lost events, so the window starts over.
                tracing::warn!(
                    missed = seq - pos.next,
                    "this replica fell behind the whole stream; the window starts over"
                );
                self.metrics.gaps.inc();
                self.bus.reset(resource_version(created, seq, 0) - 1);
            }
            pos.next = pos.next.max(seq + 1);
            self.apply(created, seq, &message.payload);
            if seq >= last && self.bus.down().is_some() {
                self.set_up();
            }
        }
    }

    /// The stream, made if missing: in memory, sized like the window, with the retry
    /// window for duplicates.
    async fn stream(&self) -> Result<stream::Stream, FindError> {
        match self.js.get_stream(&self.stream).await {
            Ok(s) => {
                if s.cached_info().config.storage != stream::StorageType::Memory {
                    tracing::warn!(stream = %self.stream, "the stream is not in memory storage: events reach NATS's disk");
                }
                return Ok(s);
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {}
            Err(e) => return Err(FindError::Get(e)),
        }
        let (events, bytes) = self.window;
        let config = |replicas| stream::Config {
            name: self.stream.clone(),
            subjects: vec![self.subject.clone()],
            storage: stream::StorageType::Memory,
            max_messages: i64::try_from(events).unwrap_or(i64::MAX),
            max_bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::Old,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        };
        // Replicas follow the NATS deployment: three on a cluster (one if it has fewer
        // JetStream servers), one on a single server.
        let clustered = self.client.server_info().cluster.is_some();
        let made = match clustered {
            true => match self.js.create_stream(config(3)).await {
                Ok(s) => Ok(s),
                Err(e) => {
                    tracing::info!(stream = %self.stream, error = %e, "could not make the JetStream stream with 3 replicas; trying 1");
                    self.js.create_stream(config(1)).await
                }
            },
            false => self.js.create_stream(config(1)).await,
        };
        match made {
            Ok(s) => {
                tracing::info!(stream = %self.stream, "made the JetStream stream");
                Ok(s)
            }
            Err(created) => match self.js.get_stream(&self.stream).await {
                // Another replica made it first.
                Ok(s) => Ok(s),
                // Made by no one: why making it failed is the reason.
                Err(e) => {
                    tracing::debug!(stream = %self.stream, error = %e, "the JetStream stream is still missing after making it failed");
                    Err(FindError::Create(created))
                }
            },
        }
    }

    /// Put one message's events on the local bus at their resourceVersions.
    fn apply(&self, created: u64, seq: u64, payload: &Bytes) {
        match decode_message(payload) {
            Ok(events) => {
                self.bus
                    .publish_at(resource_version(created, seq, 0), events);
            }
            Err(e) => {
                tracing::error!(seq, error = %e, "a message of the stream is not a batch of events; skipped");
                self.metrics.malformed.inc();
            }
        }
    }
}

/// `limit_size` for an event whose record of `len` bytes must be at most `limit`. A
/// record is its line less the head, plus the routing strings and numbers: either side
/// may be the larger.
fn fit_record(event: Event, len: usize, limit: usize) -> Limited {
    let line_limit = (limit + event.wire_len(false)).saturating_sub(len);
    event.limit_size(line_limit)
}

/// Where a replica is in the stream.
#[derive(Debug, Clone, Copy)]
struct Position {
    created: u64,
    next: u64,
}

/// A message's events, checked.
fn decode_message(payload: &Bytes) -> Result<Vec<Event>, crate::event::WireError> {
    if payload.first() != Some(&WIRE_VERSION) {
        return Err(crate::event::WireError::new("unknown message format"));
    }
    if payload.len() == 1 {
        return Err(crate::event::WireError::new("a message without events"));
    }
    Event::decode_records(payload, 1, MAX_EVENTS_PER_MESSAGE)
}

/// What a webhook retry is recognised by, on either bus: the bytes it carries and the
/// source that sent them, never an `auditID` (a client can choose its own). A
/// cryptographic hash, so that no one who can shape an audited request can make it
/// collide with another's and hide it; BLAKE3 rather than SHA-256 because it is the
/// largest per-byte cost of a publish (profiled: SHA-256 took 0.5 us of a 0.6 KB event).
/// NATS hashes each message's payload (`message_id`), the memory bus a push's body.
pub fn content_key(source: &str, bytes: &[u8]) -> [u8; 32] {
    *blake3::Hasher::new()
        .update(source.as_bytes())
        .update(&[0])
        .update(bytes)
        .finalize()
        .as_bytes()
}

/// A message's id for JetStream's duplicate detection: its `content_key`.
fn message_id(source: &str, payload: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(content_key(source, payload))
}

/// The shared stream's metrics, registered in the app's registry.
struct NatsMetrics {
    outages: IntCounter,
    /// The published-messages family, shared with the memory bus (`Metrics`).
    published: crate::metrics::Published,
    publish_errors: IntCounter,
    oversized: IntCounterVec,
    malformed: IntCounter,
    gaps: IntCounter,
}

impl NatsMetrics {
    fn new(metrics: &Metrics) -> Self {
        let opts = |name: &str, help: &str| crate::metrics::opts("", name, help);
        NatsMetrics {
            outages: metrics.register(IntCounter::with_opts(opts(
                "bus_outages_total",
                "Times the bus went down (NATS lost or the stream unreadable).",
            ))),
            published: metrics.published(),
            publish_errors: metrics.register(IntCounter::with_opts(opts(
                "nats_publish_errors_total",
                "Publishes NATS did not confirm (the push was answered 503).",
            ))),
            oversized: metrics.register(IntCounterVec::new(
                opts(
                    "nats_oversized_events_total",
                    "Events too large for one NATS message, truncated or dropped.",
                ),
                &["action"],
            )),
            malformed: metrics.register(IntCounter::with_opts(opts(
                "nats_malformed_messages_total",
                "Messages of the stream that were not a batch of events (skipped).",
            ))),
            gaps: metrics.register(IntCounter::with_opts(opts(
                "nats_gaps_total",
                "Times this replica fell behind the whole stream and started its window over.",
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
