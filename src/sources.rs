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

use crate::event::GROUP_VERSION;
use crate::metrics::{self, Metrics};
use crate::table::{self, Column};

/// The kind of a `sources` object.
pub const KIND: &str = crate::discovery::SOURCE_KIND;
/// Sources kept at most, as many as `ingest` keeps as metric labels: a cluster has a
/// handful of apiservers, this leaves room for replacements over a long run.
pub const MAX_SOURCES: usize = 64;
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

    /// The object of `name` without its resourceVersion, and its row's figures.
    fn content(&self, name: &str, f: &Figures, now: i64) -> (Value, Row) {
        let silent_after = self.inner.silent_after;
        let since = |t: i64| time(t, 0);
        let (ready, reason, message, transition) = match f.last_push {
            Some(last) if now - last <= silent_after => (
                true,
                "Pushing",
                format!(
                    "pushed within the last {} (--source-silent-after)",
                    self.inner.silent_after_text
                ),
                f.run_start.unwrap_or(last),
            ),
            Some(last) => (
                false,
                "Silent",
                format!(
                    "no push since {} (--source-silent-after={})",
                    since(last),
                    self.inner.silent_after_text
                ),
                last.saturating_add(silent_after),
            ),
            None => (
                false,
                "Silent",
                "no push accepted yet".to_owned(),
                f.first_seen,
            ),
        };
        let refused_total: u64 = f.refused.values().sum();
        let rate = rate_text(f.rate_milli);
        let mut status = json!({
            "acceptedEvents": f.events,
            "acceptedBatches": f.batches,
            "acceptedBytes": f.bytes,
            "retriedBatches": f.retried,
            "refusedBatches": refused_total,
            "eventsPerSecond": rate,
            "replicas": f.replicas,
            "conditions": [{
                "type": "Ready",
                "status": if ready { "True" } else { "False" },
                "reason": reason,
                "message": message,
                "lastTransitionTime": since(transition),
            }],
        });
        if let Some(t) = f.first_push {
            status["firstPushTime"] = Value::String(time(t, 6));
        }
        if let Some(t) = f.last_push {
            status["lastPushTime"] = Value::String(time(t, 6));
        }
        if !f.refused.is_empty() {
            status["refusedByCode"] = f
                .refused
                .iter()
                .map(|(code, n)| json!({"code": code, "batches": n}))
                .collect();
        }
        if let Some(e) = &f.last_error {
            status["lastError"] = json!({
                "code": e.code,
                "message": e.message,
                "time": time(e.time, 6),
            });
        }
        let object = json!({
            "kind": KIND,
            "apiVersion": GROUP_VERSION,
            "metadata": {
                "name": name,
                "creationTimestamp": since(f.first_seen),
            },
            "status": status,
        });
        let row = Row {
            ready,
            last_push: f.last_push,
            rate,
            retried: f.retried,
            events: f.events,
            batches: f.batches,
            refused: refused_total,
            last_error: f
                .last_error
                .as_ref()
                .map(|e| format!("{} {}", e.code, e.message))
                .unwrap_or_default(),
        };
        (object, row)
    }

    /// This replica's share, as written to the bucket.
    fn share_bytes(&self) -> Vec<u8> {
        let share = Share {
            v: SHARE_VERSION,
            sources: self.own(now_micros(), false),
        };
        serde_json::to_vec(&share).unwrap_or_default()
    }

    /// Another replica's share, read from the bucket (`None`: it was removed).
    fn remote_share(&self, replica: &str, value: Option<&[u8]>) {
        if replica == self.inner.replica {
            return;
        }
        let mut remote = lock(&self.inner.remote);
        let Some(value) = value else {
            remote.remove(replica);
            return;
        };
        match serde_json::from_slice::<Share>(value) {
            Ok(share) if share.v == SHARE_VERSION => {
                let mut sources = share.sources;
                // Another replica keeps its own cap; a share that does not is cut to it
                // (the most recently heard kept), in one sort whatever its size.
                if sources.len() > MAX_SOURCES {
                    let mut by_recency: Vec<(String, Tally)> = sources.into_iter().collect();
                    by_recency.sort_by(|a, b| {
                        b.1.last_heard().cmp(&a.1.last_heard()).then(a.0.cmp(&b.0))
                    });
                    by_recency.truncate(MAX_SOURCES);
                    sources = by_recency.into_iter().collect();
                }
                remote.insert(replica.to_owned(), sources);
            }
            Ok(share) => {
                tracing::warn!(
                    replica,
                    version = share.v,
                    "a replica's source figures are of another format; left out"
                );
            }
            Err(e) => {
                tracing::warn!(replica, error = %e, "a replica's source figures do not parse; left out");
            }
        }
    }

    /// `--bus=nats`: write this replica's share to the bucket `bucket` whenever it
    /// changes (at most once a `TICK`, and at least every `SHARE_REFRESH`), and read
    /// every other replica's, until shutdown; through NATS outages (the figures then are
    /// those last read).
    pub fn share(&self, js: jetstream::Context, bucket: String, shutdown: CancellationToken) {
        let sources = self.clone();
        tokio::spawn(async move {
            tracing::info!(%bucket, replica = %sources.inner.replica, "sources: sharing this replica's figures through the NATS key-value bucket");
            loop {
                match sources.share_once(&js, &bucket, &shutdown).await {
                    Ok(()) => return,
                    Err(e) => {
                        sources.inner.meters.share_errors.inc();
                        tracing::warn!(%bucket, error = %e, "sources: the replicas' figures cannot be shared for now; retrying");
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(SHARE_RETRY) => {}
                }
            }
        });
    }

    async fn share_once(
        &self,
        js: &jetstream::Context,
        bucket: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), ShareError> {
        let (store, made) = open_bucket(js, bucket).await?;
        if made {
            // A new bucket (NATS lost the old one): the shares read from it are gone.
            lock(&self.inner.remote).clear();
        }
        let mut entries = store
            .watch_with_history(">")
            .await
            .map_err(|e| ShareError::Watch(e.to_string()))?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<(Vec<u8>, tokio::time::Instant)> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                entry = entries.next() => match entry {
                    Some(Ok(entry)) => {
                        let value = (entry.operation == kv::Operation::Put).then_some(&entry.value[..]);
                        self.remote_share(&entry.key, value);
                    }
                    Some(Err(e)) => return Err(ShareError::Watch(e.to_string())),
                    None => return Err(ShareError::Watch("the watch ended".into())),
                },
                _ = tick.tick() => {
                    let share = self.share_bytes();
                    let due = last.as_ref().is_none_or(|(bytes, at)| *bytes != share || at.elapsed() >= SHARE_REFRESH);
                    if due {
                        store
                            .put(&self.inner.replica, share.clone().into())
                            .await
                            .map_err(|e| ShareError::Put(e.to_string()))?;
                        last = Some((share, tokio::time::Instant::now()));
                    }
                }
            }
        }
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

/// Why sharing stopped for now.
#[derive(Debug, thiserror::Error)]
enum ShareError {
    #[error("the key-value bucket: {0}")]
    Bucket(String),
    #[error("watching the key-value bucket: {0}")]
    Watch(String),
    #[error("writing this replica's figures: {0}")]
    Put(String),
}

/// The bucket, made if missing (in memory, like the stream, and with as many copies:
/// three on a NATS cluster that has them); `true`: made now.
///
/// Made as the stream a key-value bucket is (`KV_<bucket>` on `$KV.<bucket>.>`, one value
/// a key), not with `create_key_value`: that first reads the account's JetStream info,
/// whose NATS 2.9 form the client cannot parse.
async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<(kv::Store, bool), ShareError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok((store, false));
    }
    let config = |replicas| jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(
            "kube-audit-stream: each replica's per-source figures (sources.audit.k8s.io)"
                .to_owned(),
        ),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: SHARE_MAX_AGE,
        max_message_size: SHARE_MAX_BYTES,
        storage: jetstream::stream::StorageType::Memory,
        num_replicas: replicas,
        discard: jetstream::stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    };
    let clustered = js.client().server_info().cluster.is_some();
    let made = match clustered {
        true => match js.create_stream(config(3)).await {
            Ok(s) => Ok(s),
            Err(_) => js.create_stream(config(1)).await,
        },
        false => js.create_stream(config(1)).await,
    };
    let made = made.map_err(|e| e.to_string());
    // Made now, or by another replica first.
    match js.get_key_value(bucket).await {
        Ok(store) => Ok((store, made.is_ok())),
        Err(e) => Err(ShareError::Bucket(
            made.err().unwrap_or_else(|| e.to_string()),
        )),
    }
}

/// The bucket's name for the stream `stream`: what a bucket name may hold of it.
pub fn bucket_name(stream: &str) -> String {
    let clean: String = stream
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}_sources")
}

/// This process's key in the bucket: its host name (the pod's) and a random part, so
/// that a restarted replica's share is a new one and the old one's counts still count.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_".contains(*c))
        .take(200)
        .collect();
    let host = if host.is_empty() { "replica" } else { &host };
    format!("{host}-{:08x}", fastrand::u32(..))
}

/// The figures of one source, summed over the replicas' shares.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Figures {
    first_seen: i64,
    last_heard: i64,
    first_push: Option<i64>,
    last_push: Option<i64>,
    run_start: Option<i64>,
    events: u64,
    batches: u64,
    bytes: u64,
    retried: u64,
    refused: BTreeMap<u16, u64>,
    last_error: Option<LastError>,
    rate_milli: u64,
    /// How many replicas' shares count it.
    replicas: usize,
}

impl Figures {
    fn merge(parts: &[&Tally], silent_after: i64) -> Figures {
        let mut f = Figures {
            first_seen: parts.iter().map(|t| t.first_seen).min().unwrap_or_default(),
            last_heard: parts
                .iter()
                .map(|t| t.last_heard())
                .max()
                .unwrap_or_default(),
            first_push: parts.iter().filter_map(|t| t.first_push).min(),
            last_push: parts.iter().filter_map(|t| t.last_push).max(),
            run_start: run_start(parts, silent_after),
            replicas: parts.len(),
            ..Figures::default()
        };
        for t in parts {
            f.events += t.events;
            f.batches += t.batches;
            f.bytes += t.bytes;
            f.retried += t.retried;
            f.rate_milli += t.rate_milli;
            for (code, n) in &t.refused {
                *f.refused.entry(*code).or_default() += n;
            }
        }
        // The newest error; of two at one time, the same one on every replica.
        f.last_error = parts
            .iter()
            .filter_map(|t| t.last_error.as_ref())
            .max_by(|a, b| (a.time, a.code, &a.message).cmp(&(b.time, b.code, &b.message)))
            .cloned();
        f
    }
}

/// When the source last became ready, from the replicas' runs of pushes (each a stretch
/// without a gap of `silent_after`): the start of the run that holds the last push,
/// joined with every run that overlaps it or ends less than `silent_after` before it.
fn run_start(parts: &[&Tally], silent_after: i64) -> Option<i64> {
    let runs: Vec<(i64, i64)> = parts
        .iter()
        .filter_map(|t| Some((t.run_start?, t.last_push?)))
        .collect();
    let (mut start, _) = runs.iter().copied().max_by_key(|(s, l)| (*l, *s))?;
    loop {
        let before = start;
        for (s, l) in &runs {
            if *s < start && l.saturating_add(silent_after) >= start {
                start = *s;
            }
        }
        if start == before {
            return Some(start);
        }
    }
}

/// RFC 3339 in UTC with `digits` of the second (0: kube's `Time`, 6: `MicroTime`).
fn time(micros: i64, digits: usize) -> String {
    match Timestamp::from_microsecond(micros) {
        Ok(t) if digits == 0 => format!("{t:.0}"),
        Ok(t) => format!("{t:.6}"),
        Err(_) => String::new(),
    }
}

/// Thousandths as a decimal, without trailing zeros: "12.5", "0.016", "3".
fn rate_text(milli: u64) -> String {
    let (whole, frac) = (milli / 1000, milli % 1000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// The columns of a sources Table, in the order of each row's cells.
pub const COLUMNS: [Column; 10] = [
    table::name_column("Name", "The source: the pusher's name, or its ?source=."),
    table::column(
        "Ready",
        "Whether it pushed within --source-silent-after (its Ready condition).",
        0,
    ),
    table::column("Last Push", "Time since its last accepted push.", 0),
    table::column(
        "Events/s",
        "Accepted events a second over the last minute.",
        0,
    ),
    table::integer_column(
        "Retries",
        "Pushes recognised as a retry of a batch already taken.",
        0,
    ),
    table::column("Age", "Time since it was first seen.", 0),
    table::integer_column("Events", "Events accepted.", 1),
    table::integer_column("Batches", "Pushes accepted.", 1),
    table::integer_column("Refused", "Pushes refused, any code.", 1),
    table::column("Last Error", "Its last refused push: code and message.", 1),
];

impl Item {
    /// The cells of its table row at `now` (microseconds).
    pub fn cells(&self, now: i64) -> Value {
        let ago = |t: i64| {
            table::human_duration(Duration::from_micros(u64::try_from(now - t).unwrap_or(0)))
        };
        let r = &self.row;
        json!([
            self.name,
            if r.ready { "True" } else { "False" },
            r.last_push.map_or("<none>".to_owned(), ago),
            r.rate,
            r.retried,
            ago(self.created),
            r.events,
            r.batches,
            r.refused,
            r.last_error,
        ])
    }

    /// Whether its Ready condition is True.
    pub fn ready(&self) -> bool {
        self.row.ready
    }
}

/// Now, in microseconds, for cells.
pub fn now() -> i64 {
    now_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(silent_after: Duration) -> Sources {
        Sources::new(Settings { silent_after }, &Metrics::new())
    }

    fn accepted(events: u64) -> Push<'static> {
        Push::Accepted {
            events,
            duplicate_events: 0,
            bytes: events * 100,
        }
    }

    #[test]
    fn pushes_are_counted_by_outcome() {
        let s = sources(DEFAULT_SILENT_AFTER);
        s.record("api-1", accepted(3));
        s.record("api-1", accepted(2));
        s.record(
            "api-1",
            Push::Refused {
                code: 400,
                message: "the body is not an audit EventList",
            },
        );
        s.record(
            "api-1",
            Push::Accepted {
                events: 0,
                duplicate_events: 2,
                bytes: 200,
            },
        );
        s.record(
            "api-2",
            Push::Refused {
                code: 413,
                message: "too large",
            },
        );
        let view = s.view();
        let one = &view.items["api-1"].object["status"];
        assert_eq!(one["acceptedEvents"], 5);
        assert_eq!(one["acceptedBatches"], 2);
        assert_eq!(one["acceptedBytes"], 500);
        assert_eq!(one["retriedBatches"], 1);
        assert_eq!(one["refusedBatches"], 1);
        assert_eq!(one["refusedByCode"], json!([{"code": 400, "batches": 1}]));
        assert_eq!(one["lastError"]["code"], 400);
        assert_eq!(one["conditions"][0]["status"], "True");
        assert_eq!(one["conditions"][0]["reason"], "Pushing");
        let two = &view.items["api-2"].object["status"];
        assert_eq!(two["conditions"][0]["status"], "False");
        assert_eq!(two["conditions"][0]["message"], "no push accepted yet");
        assert!(two.get("lastPushTime").is_none());
        assert_eq!(view.items["api-2"].object["kind"], "Source");
    }

    #[test]
    fn a_view_changes_only_with_its_content() {
        let s = sources(DEFAULT_SILENT_AFTER);
        s.record("api-1", accepted(1));
        let first = s.view();
        let again = s.view();
        assert!(
            Arc::ptr_eq(&first, &again),
            "nothing changed: the same view"
        );
        s.record("api-1", accepted(1));
        let next = s.view();
        let (a, b) = (&first.items["api-1"], &next.items["api-1"]);
        assert!(b.resource_version > a.resource_version);
        assert_eq!(next.resource_version, b.resource_version);
        assert_eq!(
            b.object["metadata"]["resourceVersion"],
            b.resource_version.to_string()
        );
    }

    #[test]
    fn a_silent_source_is_not_ready() {
        let s = sources(Duration::from_millis(1));
        s.record("api-1", accepted(1));
        std::thread::sleep(Duration::from_millis(5));
        let view = s.view();
        let c = &view.items["api-1"].object["status"]["conditions"][0];
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("False"), Some("Silent"))
        );
        assert!(!view.items["api-1"].ready());
    }

    #[test]
    fn sources_are_bounded_and_the_longest_silent_goes() {
        let s = sources(DEFAULT_SILENT_AFTER);
        for i in 0..MAX_SOURCES {
            s.record(&format!("api-{i}"), accepted(1));
            std::thread::sleep(Duration::from_micros(2));
        }
        s.record("api-0", accepted(1));
        s.record("one-more", accepted(1));
        let view = s.view();
        assert_eq!(view.items.len(), MAX_SOURCES);
        assert!(view.items.contains_key("api-0"), "pushed again: kept");
        assert!(!view.items.contains_key("api-1"), "silent longest: gone");
        assert!(view.items.contains_key("one-more"));
        assert_eq!(s.inner.meters.evictions.get(), 1);
    }

    #[test]
    fn shares_sum_and_the_condition_comes_from_them() {
        let s = sources(Duration::from_secs(60));
        s.record("api-1", accepted(2));
        let now = now_micros();
        let other = Share {
            v: SHARE_VERSION,
            sources: BTreeMap::from([(
                "api-1".to_owned(),
                Tally {
                    first_seen: now - 10_000_000,
                    first_push: Some(now - 10_000_000),
                    last_push: Some(now - 1_000_000),
                    run_start: Some(now - 10_000_000),
                    events: 5,
                    batches: 1,
                    retried: 1,
                    refused: BTreeMap::from([(429, 2)]),
                    ..Tally::default()
                },
            )]),
        };
        s.remote_share("other-replica", Some(&serde_json::to_vec(&other).unwrap()));
        // Its own share read back is left out: it is counted from memory.
        s.remote_share(&s.inner.replica.clone(), Some(&s.share_bytes()));
        let view = s.view();
        let st = &view.items["api-1"].object["status"];
        assert_eq!(st["acceptedEvents"], 7);
        assert_eq!(st["retriedBatches"], 1);
        assert_eq!(st["refusedByCode"], json!([{"code": 429, "batches": 2}]));
        assert_eq!(st["replicas"], 2);
        assert_eq!(
            st["conditions"][0]["lastTransitionTime"],
            time(now - 10_000_000, 0),
            "ready since the other replica's run began"
        );
        s.remote_share("other-replica", None);
        assert_eq!(
            s.view().items["api-1"].object["status"]["acceptedEvents"],
            2
        );
        // A share past the cap is cut to the most recently heard.
        let many = Share {
            v: SHARE_VERSION,
            sources: (0..MAX_SOURCES as i64 + 10)
                .map(|i| (format!("many-{i:03}"), Tally::new(now + i)))
                .collect(),
        };
        s.remote_share("many", Some(&serde_json::to_vec(&many).unwrap()));
        {
            let remote = lock(&s.inner.remote);
            let kept = &remote["many"];
            assert_eq!(kept.len(), MAX_SOURCES);
            assert!(kept.contains_key("many-073") && !kept.contains_key("many-009"));
        }
        s.remote_share("many", None);
        // A share of another format is left out.
        s.remote_share("odd", Some(br#"{"v":9,"sources":{"x":{}}}"#));
        s.remote_share("bad", Some(b"nope"));
        assert!(!s.view().items.contains_key("x"));
    }

    #[test]
    fn runs_join_across_replicas() {
        let t = |run: i64, last: i64| Tally {
            run_start: Some(run),
            last_push: Some(last),
            ..Tally::default()
        };
        let (a, b, c) = (t(200, 300), t(100, 150), t(5, 110));
        assert_eq!(run_start(&[&a, &b, &c], 60), Some(5));
        // A gap of more than 60 between b and a: a's run stands alone.
        assert_eq!(run_start(&[&a, &t(100, 130)], 60), Some(200));
        assert_eq!(run_start(&[], 60), None);
    }

    #[test]
    fn rates_over_the_last_minute() {
        let mut own = Own {
            tally: Tally::default(),
            samples: VecDeque::from([(0, 0)]),
        };
        own.tally.events = 120;
        own.sample(60_000_000);
        assert_eq!(own.tally.rate_milli, 2_000);
        own.sample(120_000_000);
        assert_eq!(own.tally.rate_milli, 0, "nothing in the last minute");
        assert!(own.samples.len() <= 62);
        assert_eq!(rate_text(2_000), "2");
        assert_eq!(rate_text(12_500), "12.5");
        assert_eq!(rate_text(16), "0.016");
    }

    #[test]
    fn names_for_the_bucket() {
        assert_eq!(bucket_name("KUBE_AUDIT"), "KUBE_AUDIT_sources");
        assert_eq!(bucket_name("a:b"), "a_b_sources");
        assert_eq!(cut("ééé", 3), "é");
    }
}
