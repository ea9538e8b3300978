//! Ingest's own metrics: batch latency, audit delay, last push and redactions, by
//! source names bounded as metric labels.

use super::*;

/// Source names kept as metric labels: a cluster has a handful of apiservers, so this
/// leaves room for replacements over a long run; later names are counted as `other`,
/// which bounds the series a pusher can create.
pub(super) const MAX_SOURCE_LABELS: usize = 64;
/// The label of every source past `MAX_SOURCE_LABELS`.
pub(super) const OTHER_SOURCE: &str = "other";
/// Our own time from a push's start to its events on the bus: milliseconds normally,
/// seconds for a 32 MiB batch on a busy node.
pub(super) const BATCH_SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// stageTimestamp to the bus: kube-apiserver's webhook batches for up to 30 s by default
/// (--audit-webhook-batch-max-wait), and retries with backoff when a push fails.
pub(super) const AUDIT_DELAY_SECONDS_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// Ingest's own metrics; the accepted events and bytes by source are `Metrics`'.
pub struct Meters {
    /// Events with something redacted, by rule (a closed set: three label values).
    pub(super) redacted: IntCounterVec,
    pub(super) batch_seconds: Histogram,
    pub(super) audit_delay_seconds: Histogram,
    pub(super) last_push: IntGaugeVec,
    pub(super) sources: SourceLabels,
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
    pub(super) fn redacted(&self, events: &[Event]) {
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
    pub(super) fn accepted(&self, source: &str, started: tokio::time::Instant, stages: &[i64]) {
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
    pub(super) fn pushed(&self, source: &str) {
        let now = k8s_openapi::jiff::Timestamp::now();
        self.last_push
            .with_label_values(&[source])
            .set(now.as_second());
    }
}

/// Source names as metric labels, bounded: the first `MAX_SOURCE_LABELS` names seen keep
/// their own label, any later one is `other`.
#[derive(Default)]
pub(super) struct SourceLabels {
    pub(super) known: Mutex<HashSet<Arc<str>>>,
}

impl SourceLabels {
    pub(super) fn label(&self, source: &str) -> Arc<str> {
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
