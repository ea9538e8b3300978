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
//!
//! Here: the settings, start-up and the shared state. `publish`: batches into messages.
//! `follow`: the stream into the local bus.

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

    /// The JetStream context, for the bucket where replicas share their per-source
    /// figures (`sources`).
    pub fn jetstream(&self) -> jetstream::Context {
        self.inner.js.clone()
    }
}

impl Inner {
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

mod follow;
mod publish;
#[cfg(test)]
mod tests;

pub use publish::{Published, content_key};
