//! Watchers: full-stream (`events`) or one namespace (`namespacedevents`), over HTTP/1.1
//! (a connection each) or HTTP/2 (streams multiplexed over a few connections, as the
//! kube-apiserver aggregator does), fast or slow.
//!
//! Readers must cost the generator little, or a fan-out measurement ends up measuring
//! the generator: lines are found with memchr, and an `ADDED` line of the server's usual
//! shape is read with a few byte searches (resourceVersion, auditID, the truncated
//! annotation) instead of a JSON parse. Anything else (BOOKMARKs, errors, a shape the
//! server may take in the future) is parsed in full, and counted, so that a slow path
//! taken for every line shows in the report.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use kube_audit_stream::event::{DROPPED_ANNOTATION, TRUNCATED_ANNOTATION};
use memchr::memmem::Finder;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::client::{self, H1, H2, H2Settings};
use crate::measure::Clock;
use crate::measure::Histogram;
use crate::push::ID_PREFIX;

/// What a slow watcher reads per second while the pushers run.
pub const SLOW_WATCHER_BYTES_PER_SECOND: f64 = 4.0 * 1024.0;
/// A slow watcher's socket receive buffer, so that the kernel does not hide its slowness
/// from the server behind megabytes of buffered stream.
const SLOW_WATCHER_RECV_BUFFER: u32 = 16 * 1024;
/// After the pushers stop, watchers read what is still coming (all at full speed, so that
/// slow ones get their drop reports) until nothing arrives for this long.
const DRAIN_IDLE: Duration = Duration::from_secs(1);
/// Longest wait for a watch to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Which events a watcher gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    /// Namespace `ns-{k}`.
    Namespace(usize),
}

impl Scope {
    fn path(self) -> String {
        match self {
            Scope::All => "/apis/audit.k8s.io/v1alpha1/events?watch=1".to_owned(),
            Scope::Namespace(k) => {
                format!("/apis/audit.k8s.io/v1alpha1/namespaces/ns-{k}/namespacedevents?watch=1")
            }
        }
    }
}

/// A group of watchers opened alike.
#[derive(Clone, Debug)]
pub struct Group {
    pub label: String,
    /// Full-stream watchers, or one per namespace when `per_namespace`.
    pub count: usize,
    pub per_namespace: bool,
    /// `None`: HTTP/1.1, a connection each; `Some(c)`: HTTP/2 over `c` connections.
    pub h2_connections: Option<usize>,
    pub slow: bool,
}

/// An open watch, its response headers received.
pub struct OpenWatch {
    pub group: usize,
    pub scope: Scope,
    pub slow: bool,
    /// Keeps an HTTP/1.1 connection up while its body is read (HTTP/2 connections live as
    /// long as any of their streams).
    _h1: Option<H1>,
    body: Incoming,
}

/// Open every watcher of `groups` (all before the first push, so none misses one); the
/// HTTP/2 connections advertise `h2`.
pub async fn open(
    groups: &[Group],
    namespaces: usize,
    addr: SocketAddr,
    token: &str,
    h2: H2Settings,
) -> anyhow::Result<Vec<OpenWatch>> {
    let h1_tls = client::connector(b"http/1.1", None)?;
    let h2_tls = client::connector(b"h2", None)?;
    let mut out = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let count = if group.per_namespace {
            namespaces
        } else {
            group.count
        };
        let scopes: Vec<Scope> = (0..count)
            .map(|i| {
                if group.per_namespace {
                    Scope::Namespace(i)
                } else {
                    Scope::All
                }
            })
            .collect();
        let opened = match group.h2_connections {
            None => {
                let opening = scopes
                    .iter()
                    .map(|&scope| open_h1(&h1_tls, addr, token, scope, group.slow, g));
                tokio::time::timeout(OPEN_TIMEOUT, futures_util::future::try_join_all(opening))
                    .await
                    .context("opening the HTTP/1.1 watches timed out")??
            }
            Some(c) => {
                let conns = futures_util::future::try_join_all(
                    (0..c.max(1)).map(|_| client::connect_h2(&h2_tls, addr, h2)),
                )
                .await?;
                let opening = scopes.iter().enumerate().map(|(i, &scope)| {
                    let conn = conns[i % conns.len()].clone();
                    open_h2(conn, addr, token, scope, group.slow, g)
                });
                tokio::time::timeout(OPEN_TIMEOUT, futures_util::future::try_join_all(opening))
                    .await
                    .context("opening the HTTP/2 watches timed out")??
            }
        };
        out.extend(opened);
    }
    Ok(out)
}

async fn open_h1(
    tls: &TlsConnector,
    addr: SocketAddr,
    token: &str,
    scope: Scope,
    slow: bool,
    group: usize,
) -> anyhow::Result<OpenWatch> {
    let recv_buffer = slow.then_some(SLOW_WATCHER_RECV_BUFFER);
    let mut conn = client::connect_h1(tls, addr, recv_buffer).await?;
    let req = client::request(Method::GET, addr, &scope.path(), Some(token), Bytes::new())?;
    conn.ready().await?;
    let resp = conn.send_request(req).await?;
    let body = check(resp, scope).await?;
    Ok(OpenWatch {
        group,
        scope,
        slow,
        _h1: Some(conn),
        body,
    })
}

async fn open_h2(
    mut conn: H2,
    addr: SocketAddr,
    token: &str,
    scope: Scope,
    slow: bool,
    group: usize,
) -> anyhow::Result<OpenWatch> {
    let req = client::request(Method::GET, addr, &scope.path(), Some(token), Bytes::new())?;
    conn.ready().await?;
    let resp = conn.send_request(req).await?;
    let body = check(resp, scope).await?;
    Ok(OpenWatch {
        group,
        scope,
        slow,
        _h1: None,
        body,
    })
}

async fn check(resp: http::Response<Incoming>, scope: Scope) -> anyhow::Result<Incoming> {
    let status = resp.status();
    if status != StatusCode::OK {
        let answer = resp.into_body().collect().await?.to_bytes();
        bail!(
            "GET {}: {status}: {}",
            scope.path(),
            String::from_utf8_lossy(&answer[..answer.len().min(300)])
        );
    }
    Ok(resp.into_body())
}

#[derive(Default)]
pub struct WatchStats {
    pub events: u64,
    pub truncated: u64,
    /// Sum of the `audit.k8s.io/dropped` counts of the BOOKMARKs received.
    pub dropped_reported: u64,
    pub bytes: u64,
    /// Body frames (HTTP/2 DATA frames, HTTP/1.1 reads): what each costs the reader.
    pub frames: u64,
    /// Lines read with a full JSON parse (BOOKMARKs, or an unexpected shape).
    pub parsed_lines: u64,
    /// Lines that were not a watch event or bookmark of this run.
    pub bad_lines: u64,
    /// resourceVersions that did not increase.
    pub order_errors: u64,
    last_rv: u64,
    /// Push→watcher latency, nanoseconds.
    pub latency: Histogram,
    pub last_event: Option<Instant>,
    /// The drain ended while data was still arriving: what is missing was not lost (yet).
    pub unfinished: bool,
    pub error: Option<String>,
}

/// Read one watch until the drain ends: fast watchers at full speed, slow ones at
/// `SLOW_WATCHER_BYTES_PER_SECOND` while the pushers run, then at full speed.
pub async fn read(watch: OpenWatch, clock: Clock) -> WatchStats {
    let OpenWatch {
        _h1,
        mut body,
        slow,
        ..
    } = watch;
    let mut stats = WatchStats::default();
    // The start of a line that the last frame did not finish.
    let mut partial: Vec<u8> = Vec::new();
    let mut last_data = clock.start;
    let mut slow_bytes = 0u64;
    // Stop once nothing came for DRAIN_IDLE after the pushers stopped, or at the drain's
    // end. One timer, moved only when it fires early: a timer per frame would cost the
    // reader more than the line scanning.
    let deadline =
        |last_data: Instant| (last_data.max(clock.push_end) + DRAIN_IDLE).min(clock.drain_end);
    let timer = tokio::time::sleep_until(deadline(last_data));
    tokio::pin!(timer);
    loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            _ = &mut timer => {
                let until = deadline(last_data);
                if Instant::now() < until {
                    timer.as_mut().reset(until);
                    continue;
                }
                // Cut off by the drain's end while events were still coming?
                stats.unfinished = last_data.max(clock.push_end) + DRAIN_IDLE > clock.drain_end;
                break;
            }
        };
        let frame = match frame {
            None => {
                stats.error = Some("the server ended the watch".into());
                break;
            }
            Some(Err(e)) => {
                stats.error = Some(format!("reading the watch: {e}"));
                break;
            }
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        // One clock reading per frame, not per line.
        let now = Instant::now();
        let now_ns = clock.nanos_at(now);
        last_data = now;
        stats.bytes += data.len() as u64;
        stats.frames += 1;
        let events_before = stats.events;
        let mut rest: &[u8] = &data;
        if !partial.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    partial.extend_from_slice(&rest[..i]);
                    take_line(&partial, now_ns, slow, &mut stats);
                    partial.clear();
                    rest = &rest[i + 1..];
                }
                None => {
                    partial.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        let mut start = 0;
        for i in memchr::memchr_iter(b'\n', rest) {
            take_line(&rest[start..i], now_ns, slow, &mut stats);
            start = i + 1;
        }
        partial.extend_from_slice(&rest[start..]);
        if stats.events > events_before {
            stats.last_event = Some(now);
        }
        if slow && now < clock.push_end {
            slow_bytes += data.len() as u64;
            let due = clock.start
                + Duration::from_secs_f64(slow_bytes as f64 / SLOW_WATCHER_BYTES_PER_SECOND);
            tokio::time::sleep_until(due.min(clock.push_end)).await;
        }
    }
    stats
}

/// The usual start of an event line, up to the members of its metadata.
const ADDED_HEAD: &[u8] =
    br#"{"type":"ADDED","object":{"kind":"Event","apiVersion":"audit.k8s.io/v1alpha1","metadata":{"#;
static RV_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""resourceVersion":""#));
static ID_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""auditID":""#));
static TRUNCATED: LazyLock<Finder<'static>> = LazyLock::new(|| {
    Finder::new(format!(r#""{TRUNCATED_ANNOTATION}":"true""#).as_bytes()).into_owned()
});

fn take_line(line: &[u8], now_ns: u64, slow: bool, stats: &mut WatchStats) {
    if line.is_empty() {
        return;
    }
    match quick_added(line) {
        Some((rv, id, truncated)) => added(rv, id, truncated, now_ns, slow, stats),
        None => parsed_line(line, now_ns, slow, stats),
    }
}

/// resourceVersion, auditID and whether it is truncated, of an `ADDED` line of the
/// server's usual shape: a flat `metadata` (no nested object before its resourceVersion)
/// followed by the event's fields. `None` for anything else.
fn quick_added(line: &[u8]) -> Option<(u64, &[u8], bool)> {
    let meta = line.strip_prefix(ADDED_HEAD)?;
    let meta_end = memchr::memchr2(b'{', b'}', meta)?;
    let rv_at = RV_KEY.find(&meta[..meta_end])? + RV_KEY.needle().len();
    let rv_len = memchr::memchr(b'"', &meta[rv_at..])?;
    let rv = digits(&meta[rv_at..rv_at + rv_len])?;
    let rest = &meta[meta_end..];
    let id_at = ID_KEY.find(rest)? + ID_KEY.needle().len();
    let id_len = memchr::memchr(b'"', &rest[id_at..])?;
    let id = &rest[id_at..id_at + id_len];
    Some((rv, id, TRUNCATED.find(rest).is_some()))
}

fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

fn added(rv: u64, id: &[u8], truncated: bool, now_ns: u64, slow: bool, stats: &mut WatchStats) {
    stats.events += 1;
    if rv <= stats.last_rv {
        stats.order_errors += 1;
    }
    stats.last_rv = stats.last_rv.max(rv);
    stats.truncated += u64::from(truncated);
    // `lg-{send_ns}-p…`: the send time, on the clock of this process.
    let sent = id
        .strip_prefix(ID_PREFIX)
        .and_then(|r| digits(&r[..memchr::memchr(b'-', r)?]));
    match sent {
        Some(sent) if !slow => stats.latency.record(now_ns.saturating_sub(sent)),
        Some(_) => {}
        None => stats.bad_lines += 1,
    }
}

#[derive(Deserialize)]
struct WatchLine<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    object: WatchObject<'a>,
}

#[derive(Deserialize)]
struct WatchObject<'a> {
    #[serde(rename = "auditID", borrow, default)]
    audit_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    annotations: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
    #[serde(borrow, default)]
    metadata: Option<WatchMetadata<'a>>,
    /// An ERROR line's Status message.
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WatchMetadata<'a> {
    #[serde(rename = "resourceVersion", borrow, default)]
    resource_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    annotations: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
}

/// The slow path: a full (borrowed) parse.
fn parsed_line(line: &[u8], now_ns: u64, slow: bool, stats: &mut WatchStats) {
    stats.parsed_lines += 1;
    let Ok(ev) = serde_json::from_slice::<WatchLine<'_>>(line) else {
        stats.bad_lines += 1;
        return;
    };
    let rv = ev
        .object
        .metadata
        .as_ref()
        .and_then(|m| m.resource_version.as_deref())
        .and_then(|v| digits(v.as_bytes()));
    match (&*ev.kind, rv) {
        ("ADDED", Some(rv)) => {
            let truncated = ev
                .object
                .annotations
                .as_ref()
                .and_then(|a| a.get(TRUNCATED_ANNOTATION))
                .is_some_and(|v| v == "true");
            let id = ev.object.audit_id.as_deref().unwrap_or_default();
            added(rv, id.as_bytes(), truncated, now_ns, slow, stats);
        }
        ("BOOKMARK", Some(rv)) => {
            // A bookmark carries the last resourceVersion sent: never behind it.
            if rv < stats.last_rv {
                stats.order_errors += 1;
            }
            stats.last_rv = stats.last_rv.max(rv);
            let dropped = ev
                .object
                .metadata
                .and_then(|m| m.annotations)
                .and_then(|a| {
                    a.get(DROPPED_ANNOTATION)
                        .and_then(|n| n.parse::<u64>().ok())
                });
            stats.dropped_reported += dropped.unwrap_or(0);
        }
        ("ERROR", _) => {
            stats.error = Some(format!(
                "the server sent an ERROR: {}",
                ev.object.message.as_deref().unwrap_or("(no message)")
            ))
        }
        _ => stats.bad_lines += 1,
    }
}
