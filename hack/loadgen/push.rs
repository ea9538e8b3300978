//! Pushers: each one kube-apiserver replica's audit webhook, over its own HTTP/1.1
//! connection with its own client certificate, POSTing `EventList`s of fixture events.
//!
//! Every pushed event gets a unique auditID that carries its send time,
//! `lg-{send_ns}-p{pusher}-{seq}`, so that a watcher can tell push→watcher latency.
//! With `--namespaces N`, every event's `objectRef.namespace` is `ns-{k}`, round-robin,
//! so that each namespace watcher sees 1/N of the stream and knows how many to expect.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::value::RawValue;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_rustls::TlsConnector;

use crate::client::{self, H1};
use crate::measure::Clock;

/// Prefix of the auditIDs the pushers write.
pub const ID_PREFIX: &[u8] = b"lg-";
/// Longest wait for one ingest answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How many bodies each pusher keeps for the one-core baseline.
const BASELINE_BODIES_PER_PUSHER: usize = 4;
const LIST_HEAD: &[u8] =
    br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#;

/// One fixture event, its members re-emitted with `auditID` first (a watcher finds it
/// early in the line) and, in namespace mode, `objectRef` second with a hole for the
/// namespace. An event is `{"auditID":"<id>"` + `mid` [+ namespace + `tail`].
struct Template {
    mid: Vec<u8>,
    tail: Option<Vec<u8>>,
}

pub struct Templates {
    items: Vec<Template>,
    /// `ns-0` … `ns-{N-1}`; empty: the fixture's own namespaces are kept.
    namespaces: Vec<String>,
}

impl Templates {
    /// The events of `path`, one JSON object a line.
    pub fn load(path: &Path, namespaces: usize) -> anyhow::Result<Templates> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let items = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                Template::new(line, namespaces > 0)
                    .with_context(|| format!("{}:{}", path.display(), i + 1))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        ensure!(!items.is_empty(), "{} has no events", path.display());
        Ok(Templates {
            items,
            namespaces: (0..namespaces).map(|k| format!("ns-{k}")).collect(),
        })
    }

    pub fn namespaces(&self) -> usize {
        self.namespaces.len()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }
}

/// Members as raw JSON text, keys sorted (the values keep their original text).
type Members = BTreeMap<String, Box<RawValue>>;

fn write_members(out: &mut Vec<u8>, members: &Members) -> anyhow::Result<()> {
    for (key, value) in members {
        out.push(b',');
        serde_json::to_writer(&mut *out, key)?;
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    Ok(())
}

impl Template {
    fn new(line: &str, namespaced: bool) -> anyhow::Result<Template> {
        let mut members: Members = serde_json::from_str(line)?;
        members.remove("auditID").context("no auditID")?;
        if !namespaced {
            let mut mid = Vec::new();
            write_members(&mut mid, &members)?;
            mid.push(b'}');
            return Ok(Template { mid, tail: None });
        }
        // Every event gets an objectRef with our namespace, also those that had none.
        let mut object_ref: Members = match members.remove("objectRef") {
            Some(raw) if raw.get() != "null" => serde_json::from_str(raw.get())?,
            _ => Members::new(),
        };
        object_ref.remove("namespace");
        let mid = br#","objectRef":{"namespace":""#.to_vec();
        let mut tail = b"\"".to_vec();
        write_members(&mut tail, &object_ref)?;
        tail.push(b'}');
        write_members(&mut tail, &members)?;
        tail.push(b'}');
        Ok(Template {
            mid,
            tail: Some(tail),
        })
    }
}

/// How fast the pushers go.
#[derive(Clone, Copy, Debug)]
pub enum Rate {
    /// Events per second, all pushers together.
    PerSecond(f64),
    /// Back-to-back: each pusher sends its next batch as soon as the last is answered.
    Max,
}

pub struct Pusher {
    pub index: usize,
    pub count: usize,
    pub addr: SocketAddr,
    pub tls: TlsConnector,
    pub templates: Arc<Templates>,
    pub batch: usize,
    pub rate: Rate,
    pub clock: Clock,
}

#[derive(Default)]
pub struct PushStats {
    pub requests: u64,
    pub failed: u64,
    /// Events the server accepted (200).
    pub events: u64,
    /// Events of failed pushes: the server may or may not have published them.
    pub uncertain_events: u64,
    pub bytes: u64,
    /// Accepted and uncertain events per namespace (namespace mode).
    pub ns_events: Vec<u64>,
    pub ns_uncertain: Vec<u64>,
    /// The first few failures, for the report.
    pub errors: Vec<String>,
    /// When the last answer came back, across pushers.
    pub last_answer: Option<Instant>,
    /// A few of the bodies sent, for the baseline.
    pub sample_bodies: Vec<Bytes>,
}

impl PushStats {
    pub fn merge(&mut self, o: PushStats) {
        self.requests += o.requests;
        self.failed += o.failed;
        self.events += o.events;
        self.uncertain_events += o.uncertain_events;
        self.bytes += o.bytes;
        add(&mut self.ns_events, &o.ns_events);
        add(&mut self.ns_uncertain, &o.ns_uncertain);
        self.errors.extend(o.errors);
        self.errors.truncate(5);
        self.last_answer = self.last_answer.max(o.last_answer);
        self.sample_bodies.extend(o.sample_bodies);
    }

    fn fail(&mut self, e: impl std::fmt::Display) {
        self.failed += 1;
        if self.errors.len() < 5 {
            self.errors.push(e.to_string());
        }
    }
}

fn add(a: &mut Vec<u64>, b: &[u64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

impl Pusher {
    /// Push until the end of the push phase: one batch per period, or back-to-back.
    pub async fn run(self) -> PushStats {
        let n = self.templates.namespaces();
        let mut stats = PushStats {
            ns_events: vec![0; n],
            ns_uncertain: vec![0; n],
            ..PushStats::default()
        };
        // Each pusher starts at its own place in the fixture, the namespaces and the period.
        let mut seq = (self.index * self.templates.len() / self.count) as u64;
        let mut ticker = match self.rate {
            Rate::PerSecond(r) => {
                let period = Duration::from_secs_f64(self.batch as f64 / (r / self.count as f64));
                let first =
                    self.clock.start + period.mul_f64(self.index as f64 / self.count as f64);
                let mut t = tokio::time::interval_at(first, period);
                // Behind schedule, go on from now rather than bursting to catch up: the
                // report compares the rate reached with the one asked for.
                t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                Some(t)
            }
            Rate::Max => None,
        };
        let mut conn: Option<H1> = None;
        let mut body_ns = vec![0u64; n];
        loop {
            if let Some(t) = ticker.as_mut() {
                t.tick().await;
            }
            if Instant::now() >= self.clock.push_end {
                break;
            }
            let c = match conn.take() {
                Some(c) => c,
                None => match client::connect_h1(&self.tls, self.addr, None).await {
                    Ok(c) => c,
                    Err(e) => {
                        stats.fail(format!("connect: {e:#}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            body_ns.fill(0);
            let body = Bytes::from(self.body(&mut seq, &mut body_ns));
            if stats.sample_bodies.len() < BASELINE_BODIES_PER_PUSHER {
                stats.sample_bodies.push(body.clone());
            }
            let len = body.len() as u64;
            let outcome = tokio::time::timeout(REQUEST_TIMEOUT, self.push(c, body)).await;
            stats.last_answer = Some(Instant::now());
            let (events, per_ns) = match outcome {
                Ok(Ok(c)) => {
                    conn = Some(c);
                    stats.requests += 1;
                    stats.bytes += len;
                    (&mut stats.events, &mut stats.ns_events)
                }
                Ok(Err(e)) => {
                    stats.fail(format!("{e:#}"));
                    (&mut stats.uncertain_events, &mut stats.ns_uncertain)
                }
                Err(_) => {
                    stats.fail(format!("no answer within {REQUEST_TIMEOUT:?}"));
                    (&mut stats.uncertain_events, &mut stats.ns_uncertain)
                }
            };
            *events += self.batch as u64;
            add(per_ns, &body_ns);
        }
        stats
    }

    /// POST one body; the connection back if the server accepted it.
    async fn push(&self, mut conn: H1, body: Bytes) -> anyhow::Result<H1> {
        let req = client::request(Method::POST, self.addr, "/ingest", None, body)?;
        conn.ready().await?;
        let resp = conn.send_request(req).await?;
        let status = resp.status();
        let answer = resp.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            bail!(
                "POST /ingest: {status}: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(300)])
            );
        }
        Ok(conn)
    }

    /// An EventList of the next `batch` fixture events, stamped with the send time;
    /// `per_ns` counts the events of each namespace.
    fn body(&self, seq: &mut u64, per_ns: &mut [u64]) -> Vec<u8> {
        let t = &self.templates;
        let send_ns = itoa::Buffer::new()
            .format(self.clock.nanos_since_start())
            .to_owned();
        let pusher = itoa::Buffer::new().format(self.index).to_owned();
        let mut out = Vec::with_capacity(self.batch * 6 * 1024);
        out.extend_from_slice(LIST_HEAD);
        let mut n = itoa::Buffer::new();
        for i in 0..self.batch {
            if i > 0 {
                out.push(b',');
            }
            let s = *seq;
            *seq += 1;
            let template = &t.items[(s % t.items.len() as u64) as usize];
            out.extend_from_slice(br#"{"auditID":""#);
            out.extend_from_slice(ID_PREFIX);
            out.extend_from_slice(send_ns.as_bytes());
            out.extend_from_slice(b"-p");
            out.extend_from_slice(pusher.as_bytes());
            out.push(b'-');
            out.extend_from_slice(n.format(s).as_bytes());
            out.push(b'"');
            out.extend_from_slice(&template.mid);
            if let Some(tail) = &template.tail {
                let k = (s % t.namespaces.len() as u64) as usize;
                per_ns[k] += 1;
                out.extend_from_slice(t.namespaces[k].as_bytes());
                out.extend_from_slice(tail);
            }
        }
        out.extend_from_slice(b"]}");
        out
    }
}

/// The fixture file of `tests/fixtures/audit`.
pub fn fixture_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/audit")
        .join(file)
}
