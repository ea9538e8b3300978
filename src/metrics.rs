//! Prometheus metrics, in a registry of our own (never the process-wide default: many
//! servers run in one test process). Call sites use verbs (`ingest_accepted`, …) and never
//! touch labels; the bus's own atomics are copied in when `/metrics` is scraped. Newer
//! families are defined next to what they count (`ingest::Meters`,
//! `server::router::RequestMeters`, the TokenReview and SubjectAccessReview clients) and
//! registered here with `register`.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::bus::Stats;

const NS: &str = "kube_audit_stream";

/// The limits `Metrics::refused` counts, by label.
const LIMITS: [&str; 6] = [
    "tls_handshake_timeout",
    "request_header_timeout",
    "header_bytes",
    "url_bytes",
    "ingest_inflight",
    "ingest_body_timeout",
];

pub struct Metrics {
    registry: Registry,
    ingest_requests: IntCounterVec,
    ingest_events: IntCounterVec,
    ingest_bytes: IntCounterVec,
    ingest_oversized: IntCounterVec,
    watchers: IntGaugeVec,
    watch_events_sent: IntCounterVec,
    watch_bytes_sent: IntCounterVec,
    watch_truncated: IntCounterVec,
    watch_dropped: IntCounterVec,
    watch_withheld: IntCounterVec,
    watch_namespace_budget: IntCounterVec,
    watch_stalled: IntCounterVec,
    lists: IntGaugeVec,
    list_stalled: IntCounterVec,
    panics: IntCounterVec,
    bus_published: IntCounter,
    bus_dropped: IntCounter,
    bus_window_events: IntGauge,
    bus_window_bytes: IntGauge,
    bus_window_oldest: IntGauge,
    bus_window_newest: IntGauge,
    bus_up: IntGauge,
    published_messages: IntCounterVec,
    connections: IntGauge,
    refused: IntCounterVec,
    runtime_alive_tasks: IntGauge,
    /// Serialises scrapes so the copy of bus counters never adds the same delta twice.
    scrape: Mutex<()>,
}

/// A family's name and help: `kube_audit_stream_<subsystem>_<name>`.
pub fn opts(subsystem: &str, name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NS).subsystem(subsystem)
}

/// A histogram's name, help and buckets (in the unit its name ends with).
pub fn histogram_opts(subsystem: &str, name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace(NS)
        .subsystem(subsystem)
        .buckets(buckets.to_vec())
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // Metric names and label sets are constants: construction and registration can
        // only fail on a programming error, which the unit test below would catch.
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("valid metric definition");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric registered once");
                m
            }};
        }
        let m = Metrics {
            ingest_requests: reg!(IntCounterVec::new(
                opts("ingest", "requests_total", "Ingest requests by HTTP code."),
                &["code"]
            )),
            ingest_events: reg!(IntCounterVec::new(
                opts(
                    "ingest",
                    "events_total",
                    "Audit events accepted onto the bus, by source (the pushing apiserver; names past the first 64 are counted as \"other\")."
                ),
                &["source"]
            )),
            ingest_bytes: reg!(IntCounterVec::new(
                opts(
                    "ingest",
                    "request_bytes_total",
                    "Bytes of accepted ingest bodies, by source."
                ),
                &["source"]
            )),
            ingest_oversized: reg!(IntCounterVec::new(
                opts(
                    "ingest",
                    "oversized_events_total",
                    "Events above --max-event-bytes, truncated for everyone or dropped."
                ),
                &["action"]
            )),
            watchers: reg!(IntGaugeVec::new(
                opts("watch", "watchers", "Open watches."),
                &["resource"]
            )),
            watch_events_sent: reg!(IntCounterVec::new(
                opts("watch", "events_sent_total", "Events written to watchers."),
                &["resource"]
            )),
            watch_bytes_sent: reg!(IntCounterVec::new(
                opts("watch", "sent_bytes_total", "Bytes written to watchers."),
                &["resource"]
            )),
            watch_truncated: reg!(IntCounterVec::new(
                opts(
                    "watch",
                    "truncated_events_total",
                    "Events sent truncated because the watcher was over its budget or lagging."
                ),
                &["resource"]
            )),
            watch_dropped: reg!(IntCounterVec::new(
                opts(
                    "watch",
                    "dropped_events_total",
                    "Events watchers lost, by resource and reason (budget: over the byte budget; queue_full: not reading fast enough)."
                ),
                &["resource", "reason"]
            )),
            watch_withheld: reg!(IntCounterVec::new(
                opts(
                    "watch",
                    "withheld_events_total",
                    "Events a watch or LIST did not send under --authorization-granularity=resource, by resource and reason (denied: no get on the event's resource; failed: the check could not be answered, so the event was withheld)."
                ),
                &["resource", "reason"]
            )),
            // One label, not the namespace: thousands of namespaces would be thousands of
            // series. Which namespace was over its share, the "watch ended" lines say.
            watch_namespace_budget: reg!(IntCounterVec::new(
                opts(
                    "watch",
                    "namespace_budget_events_total",
                    "Events of namespace watches sent truncated or dropped because their namespace was over its share (--namespace-bytes-per-second), where the watcher's own budget would have sent more, by verdict: truncated, dropped. Also counted in truncated_events_total and dropped_events_total{reason=\"budget\"}."
                ),
                &["verdict"]
            )),
            watch_stalled: reg!(IntCounterVec::new(
                opts(
                    "watch",
                    "stalled_total",
                    "Watches ended because their client took nothing for the stall limit."
                ),
                &["resource"]
            )),
            lists: reg!(IntGaugeVec::new(
                opts(
                    "list",
                    "in_flight",
                    "LISTs being written, by resource (capped by --max-watchers and --max-watchers-per-user, apart from watches)."
                ),
                &["resource"]
            )),
            list_stalled: reg!(IntCounterVec::new(
                opts(
                    "list",
                    "stalled_total",
                    "LISTs ended because their client took nothing for the stall limit."
                ),
                &["resource"]
            )),
            panics: reg!(IntCounterVec::new(
                opts(
                    "server",
                    "panics_total",
                    "Panics caught, by where: handler (the request answered 500), watch (the stream ended)."
                ),
                &["where"]
            )),
            bus_published: reg!(IntCounter::with_opts(opts(
                "bus",
                "published_events_total",
                "Events given a resourceVersion."
            ))),
            bus_dropped: reg!(IntCounter::with_opts(opts(
                "bus",
                "dropped_events_total",
                "Events not queued for a subscriber whose queue was full."
            ))),
            bus_window_events: reg!(IntGauge::with_opts(opts(
                "bus",
                "window_events",
                "Events in the replay window."
            ))),
            bus_window_bytes: reg!(IntGauge::with_opts(opts(
                "bus",
                "window_bytes",
                "Bytes in the replay window."
            ))),
            bus_window_oldest: reg!(IntGauge::with_opts(opts(
                "bus",
                "window_oldest_resource_version",
                "resourceVersion of the oldest event in the replay window (0: empty): a watch resumed from before it gets 410 Expired."
            ))),
            bus_window_newest: reg!(IntGauge::with_opts(opts(
                "bus",
                "window_newest_resource_version",
                "resourceVersion of the newest event published (0: none yet)."
            ))),
            bus_up: reg!(IntGauge::with_opts(opts(
                "bus",
                "up",
                "1 while the bus takes and serves events, else 0: always 1 with --bus=memory; with --bus=nats, while the stream is reached and read up to date."
            ))),
            // Its name is NATS's, where it was counted first: dashboards and alerts keep
            // one series for webhook retries whichever bus recognised them.
            published_messages: reg!(IntCounterVec::new(
                opts(
                    "",
                    "nats_published_messages_total",
                    "Messages published to the bus, by whether they were stored or recognised as a duplicate (a webhook retry). With --bus=nats a batch is one or more messages of the stream; with --bus=memory a batch is one message."
                ),
                &["result"]
            )),
            connections: reg!(IntGauge::with_opts(opts(
                "server",
                "connections",
                "Open client connections (TCP accepted, TLS handshake included)."
            ))),
            refused: reg!(IntCounterVec::new(
                opts(
                    "server",
                    "refused_total",
                    "Connections closed or requests refused by a limit, by which one."
                ),
                &["limit"]
            )),
            runtime_alive_tasks: reg!(IntGauge::with_opts(opts(
                "runtime",
                "alive_tasks",
                "Tasks alive in the server's async runtime, read at scrape time."
            ))),
            registry,
            scrape: Mutex::new(()),
        };
        // Every limit's series exists from the start, at 0: a rate or an alert over an
        // absent series says nothing.
        for limit in LIMITS {
            m.refused.with_label_values(&[limit]);
        }
        for verdict in ["truncated", "dropped"] {
            m.watch_namespace_budget.with_label_values(&[verdict]);
        }
        m
    }

    /// Register a family defined next to what it counts (authn, authz, ingest, router)
    /// in this app's registry. Names and labels are constants, so a failure is a
    /// programming error that the tests that build an `App` catch.
    pub fn register<C: Collector + Clone + 'static>(&self, family: prometheus::Result<C>) -> C {
        let family = family.expect("valid metric definition");
        self.registry
            .register(Box::new(family.clone()))
            .expect("metric registered once");
        family
    }

    /// The published-messages counter, for whichever bus publishes.
    pub fn published(&self) -> Published {
        Published(self.published_messages.clone())
    }

    /// Count an open connection until the guard is dropped.
    pub fn connection_opened(&self) -> ConnectionGuard {
        self.connections.inc();
        ConnectionGuard(self.connections.clone())
    }

    /// Count a connection closed or a request refused by `limit` (one of `LIMITS`).
    pub fn refused(&self, limit: &'static str) {
        debug_assert!(LIMITS.contains(&limit), "{limit} is not in LIMITS");
        self.refused.with_label_values(&[limit]).inc();
    }

    /// Counts the panics caught at `place` (`handler` or `watch`).
    pub fn panic_counter(&self, place: &'static str) -> IntCounter {
        self.panics.with_label_values(&[place])
    }

    pub fn ingest_request(&self, code: u16) {
        self.ingest_requests
            .with_label_values(&[itoa::Buffer::new().format(code)])
            .inc();
    }

    /// A batch accepted from `source` (a label value from a bounded set).
    pub fn ingest_accepted(&self, source: &str, events: usize, bytes: usize) {
        self.ingest_events
            .with_label_values(&[source])
            .inc_by(events as u64);
        self.ingest_bytes
            .with_label_values(&[source])
            .inc_by(bytes as u64);
    }

    pub fn ingest_oversized(&self, truncated: usize, dropped: usize) {
        self.ingest_oversized
            .with_label_values(&["truncated"])
            .inc_by(truncated as u64);
        self.ingest_oversized
            .with_label_values(&["dropped"])
            .inc_by(dropped as u64);
    }

    /// Count an open watch until the guard is dropped.
    pub fn watch_started(&self, resource: &'static str) -> WatchGuard {
        let gauge = self.watchers.with_label_values(&[resource]);
        gauge.inc();
        WatchGuard {
            panics: self.panic_counter("watch"),
            gauge,
            sent: self.watch_events_sent.with_label_values(&[resource]),
            sent_bytes: self.watch_bytes_sent.with_label_values(&[resource]),
            truncated: self.watch_truncated.with_label_values(&[resource]),
            dropped_budget: self.watch_dropped.with_label_values(&[resource, "budget"]),
            dropped_queue_full: self
                .watch_dropped
                .with_label_values(&[resource, "queue_full"]),
            withheld_denied: self.watch_withheld.with_label_values(&[resource, "denied"]),
            withheld_failed: self.watch_withheld.with_label_values(&[resource, "failed"]),
            namespace_truncated: self
                .watch_namespace_budget
                .with_label_values(&["truncated"]),
            namespace_dropped: self.watch_namespace_budget.with_label_values(&["dropped"]),
            stalled: self.watch_stalled.with_label_values(&[resource]),
        }
    }

    /// Count a LIST in flight until the guard is dropped.
    pub fn list_started(&self, resource: &'static str) -> ListGuard {
        let gauge = self.lists.with_label_values(&[resource]);
        gauge.inc();
        ListGuard {
            gauge,
            stalled: self.list_stalled.with_label_values(&[resource]),
        }
    }

    /// The text of a scrape: the bus's counters (`bus_up`: whether it is up now) caught
    /// up, then every family.
    pub fn render(&self, bus: &Stats, bus_up: bool) -> String {
        let _serial = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let catch_up = |c: &IntCounter, now: u64| c.inc_by(now.saturating_sub(c.get()));
        catch_up(
            &self.bus_published,
            bus.published_events.load(Ordering::Relaxed),
        );
        catch_up(
            &self.bus_dropped,
            bus.dropped_queue_full.load(Ordering::Relaxed),
        );
        self.bus_window_events
            .set(bus.window_events.load(Ordering::Relaxed) as i64);
        self.bus_window_bytes
            .set(bus.window_bytes.load(Ordering::Relaxed) as i64);
        let rv = |a: &std::sync::atomic::AtomicU64| i64::try_from(a.load(Ordering::Relaxed));
        self.bus_window_oldest
            .set(rv(&bus.window_oldest_resource_version).unwrap_or(i64::MAX));
        self.bus_window_newest
            .set(rv(&bus.window_newest_resource_version).unwrap_or(i64::MAX));
        self.bus_up.set(i64::from(bus_up));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.runtime_alive_tasks
                .set(i64::try_from(rt.metrics().num_alive_tasks()).unwrap_or(i64::MAX));
        }
        let mut out = vec![];
        // Encoding into a Vec only fails on invalid metric families, which we never build.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Held by a connection for its lifetime.
pub struct ConnectionGuard(IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Messages published to the bus: `stored`, or a `duplicate` (a webhook retry) that was
/// not stored again.
#[derive(Clone)]
pub struct Published(IntCounterVec);

impl Published {
    pub fn count(&self, duplicate: bool) {
        let result = if duplicate { "duplicate" } else { "stored" };
        self.0.with_label_values(&[result]).inc();
    }
}

/// Held by a watch for its lifetime.
pub struct WatchGuard {
    panics: IntCounter,
    gauge: IntGauge,
    sent: IntCounter,
    sent_bytes: IntCounter,
    truncated: IntCounter,
    dropped_budget: IntCounter,
    dropped_queue_full: IntCounter,
    withheld_denied: IntCounter,
    withheld_failed: IntCounter,
    namespace_truncated: IntCounter,
    namespace_dropped: IntCounter,
    stalled: IntCounter,
}

/// What one watch did since its counts were last flushed: kept in the watch, added to
/// the shared counters once per frame, not once per event.
#[derive(Debug, Default)]
pub struct WatchCounts {
    pub sent: u64,
    pub sent_bytes: u64,
    pub truncated: u64,
    pub dropped_budget: u64,
    pub dropped_queue_full: u64,
    pub withheld_denied: u64,
    pub withheld_failed: u64,
    /// Of `truncated` and `dropped_budget`, those the namespace's share made.
    pub namespace_truncated: u64,
    pub namespace_dropped: u64,
}

impl WatchCounts {
    /// One event written, `bytes` long, whole or truncated.
    pub fn sent(&mut self, bytes: usize, truncated: bool) {
        self.sent += 1;
        self.sent_bytes += bytes as u64;
        self.truncated += u64::from(truncated);
    }

    pub fn is_empty(&self) -> bool {
        self.sent == 0
            && self.dropped_budget == 0
            && self.dropped_queue_full == 0
            && self.withheld_denied == 0
            && self.withheld_failed == 0
    }
}

impl std::ops::AddAssign<&WatchCounts> for WatchCounts {
    fn add_assign(&mut self, c: &WatchCounts) {
        self.sent += c.sent;
        self.sent_bytes += c.sent_bytes;
        self.truncated += c.truncated;
        self.dropped_budget += c.dropped_budget;
        self.dropped_queue_full += c.dropped_queue_full;
        self.withheld_denied += c.withheld_denied;
        self.withheld_failed += c.withheld_failed;
        self.namespace_truncated += c.namespace_truncated;
        self.namespace_dropped += c.namespace_dropped;
    }
}

impl WatchGuard {
    /// Add a watch's counts to the shared counters and zero them.
    pub fn flush(&self, counts: &mut WatchCounts) {
        let c = std::mem::take(counts);
        for (counter, n) in [
            (&self.sent, c.sent),
            (&self.sent_bytes, c.sent_bytes),
            (&self.truncated, c.truncated),
            (&self.dropped_budget, c.dropped_budget),
            (&self.dropped_queue_full, c.dropped_queue_full),
            (&self.withheld_denied, c.withheld_denied),
            (&self.withheld_failed, c.withheld_failed),
            (&self.namespace_truncated, c.namespace_truncated),
            (&self.namespace_dropped, c.namespace_dropped),
        ] {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }

    /// Counts the watch if it is ended because its client stopped reading.
    pub fn stalled_counter(&self) -> IntCounter {
        self.stalled.clone()
    }

    /// Counts a panic of the watch's stream.
    pub fn panic_counter(&self) -> IntCounter {
        self.panics.clone()
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Held by a LIST while it is written.
pub struct ListGuard {
    gauge: IntGauge,
    stalled: IntCounter,
}

impl ListGuard {
    /// Counts the LIST if the sweeper ends it.
    pub fn stalled_counter(&self) -> IntCounter {
        self.stalled.clone()
    }
}

impl Drop for ListGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// `cache.try_get_with(key, fetch)` (one fetch for concurrent misses of a key), counting
/// the lookup in `lookups` as a `hit`, or a `miss` when `fetch` ran.
pub async fn cached<K, V, E, F>(
    cache: &moka::future::Cache<K, V>,
    key: K,
    fetch: F,
    lookups: &IntCounterVec,
) -> Result<V, std::sync::Arc<E>>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    F: std::future::Future<Output = Result<V, E>>,
{
    let missed = std::sync::atomic::AtomicBool::new(false);
    let fetch = async {
        missed.store(true, Ordering::Relaxed);
        fetch.await
    };
    let answer = cache.try_get_with(key, fetch).await;
    let lookup = if missed.load(Ordering::Relaxed) {
        "miss"
    } else {
        "hit"
    };
    lookups.with_label_values(&[lookup]).inc();
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_our_prefix() {
        let m = Metrics::new();
        m.ingest_request(200);
        m.ingest_accepted("apiserver-1", 3, 100);
        let guard = m.watch_started("events");
        let mut counts = WatchCounts::default();
        counts.sent(100, false);
        counts.sent(10, true);
        guard.flush(&mut counts);
        assert!(counts.is_empty());
        guard.stalled_counter().inc();
        // Every verdict's series is there from the start.
        let ns = "kube_audit_stream_watch_namespace_budget_events_total";
        let text = m.render(&Stats::default(), true);
        assert!(
            text.contains(&format!("{ns}{{verdict=\"truncated\"}} 0")),
            "{text}"
        );
        assert!(text.contains(&format!("{ns}{{verdict=\"dropped\"}} 0")));
        counts.dropped_budget = 2;
        counts.namespace_dropped = 1;
        guard.flush(&mut counts);
        let stats = Stats::default();
        stats.published_events.store(3, Ordering::Relaxed);
        let text = m.render(&stats, true);
        assert!(
            text.contains("kube_audit_stream_ingest_requests_total{code=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("kube_audit_stream_ingest_events_total{source=\"apiserver-1\"} 3"));
        assert!(text.contains("kube_audit_stream_watch_watchers{resource=\"events\"} 1"));
        assert!(text.contains("kube_audit_stream_bus_published_events_total 3"));
        assert!(text.contains("kube_audit_stream_watch_sent_bytes_total{resource=\"events\"} 110"));
        assert!(
            text.contains("kube_audit_stream_watch_truncated_events_total{resource=\"events\"} 1")
        );
        assert!(text.contains("kube_audit_stream_watch_stalled_total{resource=\"events\"} 1"));
        assert!(text.contains(&format!("{ns}{{verdict=\"dropped\"}} 1")));
        // A second scrape adds nothing new.
        assert!(
            m.render(&stats, true)
                .contains("kube_audit_stream_bus_published_events_total 3")
        );
        drop(guard);
        assert!(
            m.render(&stats, true)
                .contains("kube_audit_stream_watch_watchers{resource=\"events\"} 0")
        );
    }
}
