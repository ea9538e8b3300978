//! `sources.audit.k8s.io`: one read-only object per pusher identity (the name every event
//! it pushed carries in its `audit.k8s.io/source` annotation), so that an operator sees
//! each kube-apiserver accounted for: when it first and last pushed, what was accepted,
//! refused (by HTTP code) and recognised as a retry, its last error, and a `Ready`
//! condition that turns `False` (reason `Silent`) once it has not pushed for
//! `--source-silent-after`.
//!
//! Ingest counts each push here under one short lock (`record`); nothing is done per
//! event. A one-second tick (`tick`) turns the counts into objects: each source's rate
//! over the last minute, the merge of every replica's share, the `Ready` condition, and a
//! resourceVersion for each object whose content changed; the result is a `View` that
//! LIST, GET and every WATCH read, so a watcher's work is a comparison of at most
//! `MAX_SOURCES` pointers per tick, never anything per event.
//!
//! Bounded: a pusher may name its source (`?source=`), so at most `MAX_SOURCES` are kept
//! (as many as the metric labels); a new one past that evicts the one silent longest
//! (counted in `kube_audit_stream_source_evictions_total`).
//!
//! With `--bus=nats` every replica answers with the same figures: each replica's counts
//! are its share, written to a JetStream key-value bucket when they change (at most once
//! a tick), and every replica sums the shares it watches there (`share`). A refusal or a
//! recognised retry happens on one replica only; its share carries it to the others. The
//! `Ready` condition and its transition times are computed from the summed shares only
//! (never from when a replica happened to read them), so they agree too.
//!
//! Here: the counts, the tick and the view. `object`: a source as served (figures summed,
//! the object, its Table row). `share`: the replicas' shares in NATS.
//!
//! resourceVersions: an object's is the time, in microseconds since the Unix epoch, of
//! the tick that saw its content change (strictly increasing on a replica); the list's is
//! the newest. A watch from resourceVersion R sends the sources whose content changed
//! after R, so `kubectl get -w` after a LIST prints no row twice; there is no history, so
//! no resourceVersion is ever too old.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use k8s_openapi::jiff::Timestamp;
use prometheus::{IntCounter, IntGaugeVec};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod object;
mod share;
#[cfg(test)]
mod tests;

use object::Figures;
pub use object::{COLUMNS, now};
pub use share::bucket_name;
use share::replica_name;

use crate::event::GROUP_VERSION;
use crate::metrics::{self, Metrics};
use crate::table::{self, Column};

/// The kind of a `sources` object.
pub const KIND: &str = crate::discovery::SOURCE_KIND;
/// Sources kept at most, as many as `ingest` keeps as metric labels: a cluster has a
/// handful of apiservers, this leaves room for replacements over a long run.
pub const MAX_SOURCES: usize = 64;

/// A source name is a node or host name: DNS subdomain length.
pub const MAX_NAME_LEN: usize = 253;

/// Whether `name` may name a source (`?source=`; what ingest takes, and so what a
/// client may ask for): 1 to `MAX_NAME_LEN` letters, digits, '-', '.', '_' or ':'.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c))
}

/// `--source-silent-after`'s default: kube-apiserver's webhook pushes a batch at least
/// every few seconds even on an idle cluster (it audits its own leases and probes), and
/// at most every ~1 s under load; two minutes without one is not batching.
pub const DEFAULT_SILENT_AFTER: Duration = Duration::from_secs(120);
/// How often the objects are brought up to date, and at most how often a watcher hears
/// of one source's change.
pub const TICK: Duration = Duration::from_secs(1);
/// The rate is over the last minute.
const RATE_WINDOW_MICROS: i64 = 60_000_000;
/// The last error's message is cut here: it is shown in a table cell, and shared.
const MAX_ERROR_MESSAGE: usize = 256;
/// The shares' format. A replica ignores a share of another format.
const SHARE_VERSION: u32 = 1;
/// A replica rewrites its share at least this often, so that the bucket's age limit
/// only ever removes the shares of replicas that stopped.
const SHARE_REFRESH: Duration = Duration::from_secs(3600);
/// How long a stopped replica's share stays in the sums.
const SHARE_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// A share's size at most: `MAX_SOURCES` sources of a few hundred bytes.
const SHARE_MAX_BYTES: i32 = 1 << 20;
/// Between attempts to reach the bucket again.
const SHARE_RETRY: Duration = Duration::from_secs(1);

/// What `config` makes of `--source-silent-after`.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub silent_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            silent_after: DEFAULT_SILENT_AFTER,
        }
    }
}

/// How one push ended, as ingest tells it.
#[derive(Debug, Clone, Copy)]
pub enum Push<'a> {
    /// Answered 200. `events` new events (of a body of `bytes`), `duplicate_events` that
    /// were recognised as a retry of a batch already taken (JetStream's duplicate
    /// detection with `--bus=nats`).
    Accepted {
        events: u64,
        duplicate_events: u64,
        bytes: u64,
    },
    /// Answered with an error: its HTTP code and message.
    Refused { code: u16, message: &'a str },
}

/// What one replica counted of one source: its share of the figures. Times are
/// microseconds since the Unix epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Tally {
    /// When it was first counted, whatever the outcome.
    pub first_seen: i64,
    /// The first and the last push answered 200.
    pub first_push: Option<i64>,
    pub last_push: Option<i64>,
    /// The first push after a silence of `--source-silent-after` or more (else the first
    /// push): when it last became ready, as far as this replica saw.
    pub run_start: Option<i64>,
    pub events: u64,
    pub batches: u64,
    pub bytes: u64,
    /// Pushes recognised as a retry of a batch already taken.
    pub retried: u64,
    /// Refused pushes by HTTP code.
    pub refused: BTreeMap<u16, u64>,
    pub last_error: Option<LastError>,
    /// Accepted events a second over the last minute, in thousandths (set each tick).
    pub rate_milli: u64,
}

/// A source's last refused push.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LastError {
    pub code: u16,
    pub message: String,
    pub time: i64,
}

impl Tally {
    fn new(now: i64) -> Tally {
        Tally {
            first_seen: now,
            ..Tally::default()
        }
    }

    /// The last time anything was heard from it: what eviction goes by.
    fn last_heard(&self) -> i64 {
        let error = self.last_error.as_ref().map(|e| e.time);
        [Some(self.first_seen), self.last_push, error]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or_default()
    }

    fn record(&mut self, push: Push<'_>, now: i64, silent_after: i64) {
        match push {
            Push::Accepted {
                events,
                duplicate_events,
                bytes,
            } => {
                if self.last_push.is_none_or(|last| now - last > silent_after) {
                    self.run_start = Some(now);
                }
                self.first_push.get_or_insert(now);
                self.last_push = Some(now);
                if duplicate_events > 0 {
                    self.retried += 1;
                }
                // A retry taken whole added nothing: it is counted as a retry only.
                if duplicate_events == 0 || events > 0 {
                    self.batches += 1;
                    self.events += events;
                    self.bytes += bytes;
                }
            }
            Push::Refused { code, message } => {
                *self.refused.entry(code).or_default() += 1;
                self.last_error = Some(LastError {
                    code,
                    message: cut(message, MAX_ERROR_MESSAGE).to_owned(),
                    time: now,
                });
            }
        }
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// This replica's counts of one source, and the samples its rate is computed from.
struct Own {
    tally: Tally,
    /// (time, events) at each tick of the last minute, and one before it.
    samples: VecDeque<(i64, u64)>,
}

/// One replica's counts of every source, as written to the bucket.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Share {
    v: u32,
    sources: BTreeMap<String, Tally>,
}

/// A source as every reader sees it: its object, and what its table row needs.
#[derive(Debug)]
pub struct Item {
    pub name: String,
    pub resource_version: u64,
    /// The whole object, its resourceVersion included.
    pub object: Value,
    /// When it was first seen: its `creationTimestamp`, in microseconds.
    pub created: i64,
    row: Row,
}

/// The figures a table row shows; the times are shown relative to the request's time.
#[derive(Debug, Clone)]
struct Row {
    ready: bool,
    last_push: Option<i64>,
    rate: String,
    retried: u64,
    events: u64,
    batches: u64,
    refused: u64,
    last_error: String,
}

/// Every source at one moment.
#[derive(Debug, Default)]
pub struct View {
    /// The newest object's resourceVersion, or the moment a source left.
    pub resource_version: u64,
    pub items: BTreeMap<String, Arc<Item>>,
}

/// The sources. Cheap to clone.
#[derive(Clone)]
pub struct Sources {
    inner: Arc<Inner>,
}

struct Inner {
    /// In microseconds.
    silent_after: i64,
    silent_after_text: String,
    /// This replica's name in the bucket (`--bus=nats`).
    replica: String,
    own: Mutex<HashMap<Arc<str>, Own>>,
    /// The other replicas' shares, by replica (`--bus=nats`).
    remote: Mutex<HashMap<String, BTreeMap<String, Tally>>>,
    /// The objects as last built, and the gauges set: one builder at a time.
    built: Mutex<Built>,
    view: watch::Sender<Arc<View>>,
    meters: Meters,
}

#[derive(Default)]
struct Built {
    /// Each object as last built, without its resourceVersion: what a change is judged by.
    content: HashMap<String, Value>,
    last_rv: u64,
}

struct Meters {
    ready: IntGaugeVec,
    evictions: IntCounter,
    share_errors: IntCounter,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_micros() -> i64 {
    Timestamp::now().as_microsecond()
}

impl Sources {
    pub fn new(settings: Settings, m: &Metrics) -> Sources {
        let silent_after = i64::try_from(settings.silent_after.as_micros()).unwrap_or(i64::MAX);
        let (view, _) = watch::channel(Arc::new(View::default()));
        Sources {
            inner: Arc::new(Inner {
                silent_after,
                silent_after_text: humantime::format_duration(settings.silent_after).to_string(),
                replica: replica_name(),
                own: Mutex::default(),
                remote: Mutex::default(),
                built: Mutex::default(),
                view,
                meters: Meters {
                    ready: m.register(IntGaugeVec::new(
                        metrics::opts(
                            "source",
                            "ready",
                            "1 while the source has pushed within --source-silent-after, else 0 (its sources.audit.k8s.io Ready condition); at most 64 sources, the longest silent evicted first. With --bus=nats every replica reports every source.",
                        ),
                        &["source"],
                    )),
                    evictions: m.register(IntCounter::with_opts(metrics::opts(
                        "source",
                        "evictions_total",
                        "Sources forgotten to make room for a new one past 64 (the one silent longest goes).",
                    ))),
                    share_errors: m.register(IntCounter::with_opts(metrics::opts(
                        "source",
                        "share_errors_total",
                        "Failures to write or read the replicas' per-source figures in the NATS key-value bucket (--bus=nats); retried every second.",
                    ))),
                },
            }),
        }
    }

    /// Count one push from `source`: a short lock, a hash lookup, a few additions.
    pub fn record(&self, source: &str, push: Push<'_>) {
        let now = now_micros();
        let silent_after = self.inner.silent_after;
        let mut own = lock(&self.inner.own);
        if let Some(entry) = own.get_mut(source) {
            entry.tally.record(push, now, silent_after);
            return;
        }
        if own.len() >= MAX_SOURCES {
            let oldest = own
                .iter()
                .min_by_key(|(name, e)| (e.tally.last_heard(), name.to_string()))
                .map(|(name, _)| name.clone());
            if let Some(name) = oldest {
                own.remove(&name);
                self.inner.meters.evictions.inc();
                tracing::info!(source = %name, new = source, "source forgotten: more than {MAX_SOURCES} sources, this one silent longest");
            }
        }
        let mut tally = Tally::new(now);
        tally.record(push, now, silent_after);
        own.insert(
            source.into(),
            Own {
                tally,
                // The rate of a new source counts from its first push.
                samples: VecDeque::from([(now, 0)]),
            },
        );
    }

    /// The objects as of the last tick (or request): what a watch follows.
    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.inner.view.subscribe()
    }

    /// The objects up to date now: for LIST, GET and a scrape.
    pub fn view(&self) -> Arc<View> {
        self.build(false)
    }

    /// `Ready` of each source as `kube_audit_stream_source_ready`, up to date.
    pub fn refresh_metrics(&self) {
        self.build(false);
    }

    /// Every `TICK` until shutdown: rates sampled, objects rebuilt.
    pub fn spawn_ticker(&self, shutdown: CancellationToken) {
        let sources = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => { sources.build(true); }
                }
            }
        });
    }

    /// This replica's counts; with `sample`, each source's rate brought up to date first.
    fn own(&self, now: i64, sample: bool) -> BTreeMap<String, Tally> {
        let mut own = lock(&self.inner.own);
        own.iter_mut()
            .map(|(name, e)| {
                if sample {
                    e.sample(now);
                }
                (name.to_string(), e.tally.clone())
            })
            .collect()
    }

    /// Merge the shares, build each object, give a resourceVersion to those that changed,
    /// publish the view if anything did, and set the gauges.
    fn build(&self, sample: bool) -> Arc<View> {
        let inner = &*self.inner;
        let mut built = lock(&inner.built);
        let now = now_micros();
        let own = self.own(now, sample);
        let merged = {
            let remote = lock(&inner.remote);
            let mut parts: BTreeMap<&str, Vec<&Tally>> = BTreeMap::new();
            for share in std::iter::once(&own).chain(remote.values()) {
                for (name, tally) in share {
                    parts.entry(name).or_default().push(tally);
                }
            }
            let mut merged: Vec<(String, Figures)> = parts
                .into_iter()
                .map(|(name, parts)| (name.to_owned(), Figures::merge(&parts, inner.silent_after)))
                .collect();
            // The replicas together may know more than the cap: the most recently heard
            // are kept, the same ones on every replica.
            if merged.len() > MAX_SOURCES {
                merged.sort_by(|a, b| b.1.last_heard.cmp(&a.1.last_heard).then(a.0.cmp(&b.0)));
                merged.truncate(MAX_SOURCES);
            }
            merged
        };

        let previous = inner.view.borrow().clone();
        let mut items = BTreeMap::new();
        let mut changed = merged.len() != previous.items.len();
        let next_rv = |last: &mut u64| {
            *last = (*last + 1).max(u64::try_from(now).unwrap_or_default());
            *last
        };
        let mut content_now = HashMap::with_capacity(merged.len());
        for (name, figures) in merged {
            let (content, row) = self.content(&name, &figures, now);
            let same = built.content.get(&name) == Some(&content);
            let item = match previous.items.get(&name) {
                Some(item) if same => item.clone(),
                _ => {
                    changed = true;
                    let rv = next_rv(&mut built.last_rv);
                    let mut object = content.clone();
                    object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
                    Arc::new(Item {
                        name: name.clone(),
                        resource_version: rv,
                        object,
                        created: figures.first_seen,
                        row,
                    })
                }
            };
            content_now.insert(name.clone(), content);
            items.insert(name, item);
        }
        if !changed {
            return previous;
        }
        let left = previous.items.keys().any(|k| !items.contains_key(k));
        let resource_version = if left {
            next_rv(&mut built.last_rv)
        } else {
            items
                .values()
                .map(|i| i.resource_version)
                .max()
                .unwrap_or(previous.resource_version)
                .max(previous.resource_version)
        };
        for name in previous.items.keys().filter(|k| !items.contains_key(*k)) {
            let _ = inner.meters.ready.remove_label_values(&[name]);
        }
        for item in items.values() {
            inner
                .meters
                .ready
                .with_label_values(&[&item.name])
                .set(i64::from(item.row.ready));
        }
        built.content = content_now;
        let view = Arc::new(View {
            resource_version,
            items,
        });
        inner.view.send_replace(view.clone());
        view
    }
}

impl Own {
    /// A sample of the events counted now, and the rate over the last minute.
    fn sample(&mut self, now: i64) {
        let events = self.tally.events;
        self.samples.push_back((now, events));
        // Keep one sample at or before the minute's start.
        while self
            .samples
            .get(1)
            .is_some_and(|(t, _)| now - t >= RATE_WINDOW_MICROS)
        {
            self.samples.pop_front();
        }
        let (t0, e0) = self.samples.front().copied().unwrap_or((now, events));
        // At least a tick, so that a first batch is not a spike.
        let span = u128::try_from((now - t0).max(TICK.as_micros() as i64)).unwrap_or(1);
        let milli = u128::from(events.saturating_sub(e0)) * 1_000_000_000 / span;
        self.tally.rate_milli = u64::try_from(milli).unwrap_or(u64::MAX);
    }
}
