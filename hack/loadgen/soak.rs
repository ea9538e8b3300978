//! The soak run (`loadgen soak`): the real server in a child process on 127.0.0.1 under
//! steady ingest while watchers and hostile clients come and go (~10 a second) for a
//! bounded time; fails when the server's memory, file descriptors, threads or live tasks
//! trend upward after warm-up, when they do not come back down once everyone has left,
//! or when an event is lost without being reported.
//!
//! Uses the load generator's pieces (server child, client PKI and connections, pushers,
//! clock). Who comes and goes, each for a random short stay: fast HTTP/1.1 and HTTP/2
//! watchers, slow readers, watchers that never read, LISTs, wrong tokens, garbage after
//! the TLS handshake, garbage instead of TLS, a ClientHello cut off mid-way, and a request
//! head sent a few bytes at a time. Two auditors watch the whole stream throughout
//! (resuming from their last resourceVersion when the server ends a watch) and account
//! for every event pushed: received, or reported dropped in a BOOKMARK.
//!
//! The trend rule: samples taken before the warm-up ends are ignored; of the rest, the
//! median of the last third may exceed the median of the first third by at most a
//! tolerance (RSS: 10 % + 16 MiB; fds and connections: 25 % + 24; threads: 8; tasks:
//! 25 % + 48). Medians, because
//! connections come and go: a sample can land on a burst, a third of the run cannot.
//! After the run, with every client gone, fds and tasks must be back within a few of
//! where they were before the first client came.
//!
//! Loopback only, stops by itself. Run:
//! `cargo run --release --example loadgen -- soak --help`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client;
use crate::measure::Clock;

use crate::push::{self, Pusher, Rate, Templates};
use crate::server::{ServerProcess, Verdict, server_argv};

/// How long auditors may take, after the pushers stop, to receive what is still coming
/// (on loopback at this rate, well under a second).
const DRAIN: Duration = Duration::from_secs(5);
/// After the last client left: time for the server to close what it holds.
const SETTLE: Duration = Duration::from_secs(3);
/// Pushers (each a kube-apiserver replica with its own certificate) and their batches.
const PUSHERS: usize = 2;
const BATCH: usize = 20;
/// A Metadata event every few milliseconds: steady, far from any limit.
const EVENTS_PER_SECOND: f64 = 200.0;
/// Back-to-start allowance once every client has left: the sampler's own connection.
const QUIET_FDS: i64 = 4;
const QUIET_TASKS: i64 = 8;

// The soak run's flags (`loadgen soak --help`; its description is on `Mode::Soak`).
#[derive(Args, Debug)]
pub struct Opts {
    /// The short run for CI: 90 s, 30 s of it warm-up, a sample every 2 s (under 2
    /// minutes in all).
    #[arg(long)]
    short: bool,
    /// Seconds of load [default: 1800].
    #[arg(long)]
    duration: Option<u64>,
    /// Seconds at the start whose samples are not judged [default: a sixth of the run].
    #[arg(long)]
    warmup: Option<u64>,
    /// Seconds between samples [default: 5; 2 with --short].
    #[arg(long)]
    sample_every: Option<u64>,
    /// Clients arriving per second.
    #[arg(long, default_value_t = 10.0)]
    arrivals: f64,
}

/// How the soak run ends: a last line of its own, `soak: PASSED` included (its log is
/// read once the run is over), and logs (its own and its server child's) at `error`
/// unless `RUST_LOG` says otherwise: of a long run, only what went wrong is kept.
pub const VERDICT: Verdict = Verdict {
    name: "soak",
    log_level: "error",
    passed: Some("PASSED"),
    failed: "FAILED (see the checks above)",
};

/// One reading of the server process.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    rss_kib: i64,
    fds: i64,
    threads: i64,
    tasks: i64,
    connections: i64,
}

pub async fn run(opts: Opts) -> anyhow::Result<bool> {
    let duration = Duration::from_secs(opts.duration.unwrap_or(if opts.short { 90 } else { 1800 }));
    let warmup = opts.warmup.map_or_else(
        || {
            if opts.short {
                Duration::from_secs(30)
            } else {
                duration / 6
            }
        },
        Duration::from_secs,
    );
    let every = Duration::from_secs(opts.sample_every.unwrap_or(if opts.short { 2 } else { 5 }));
    if warmup >= duration {
        bail!("--warmup must be shorter than the run");
    }

    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let pki = client::Pki::generate(PUSHERS)?;
    let token = format!("{:032x}", fastrand::u128(..));
    let argv = server_argv(dir.path(), &pki, &token, "soak-watcher", &[])?;
    let server = ServerProcess::start(&argv).await?;
    let addr = server.addr;
    println!(
        "soak: {} s of load ({} s warm-up), {EVENTS_PER_SECOND} events/s from {PUSHERS} pushers, {} clients/s, a sample every {} s; server pid {}",
        duration.as_secs(),
        warmup.as_secs(),
        opts.arrivals,
        every.as_secs(),
        server.pid
    );

    let metrics_conn = client::connector(b"http/1.1", None)?;
    let baseline = sample(&server, &metrics_conn, &token, Duration::ZERO).await?;

    let start = Instant::now();
    let clock = Clock {
        start,
        push_end: start + duration,
        drain_end: start + duration + DRAIN,
    };

    // The auditors first, so that they see every pushed event.
    let auditors: Vec<_> = [false, true]
        .into_iter()
        .map(|h2| tokio::spawn(audit(addr, token.clone(), h2, clock)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let templates = Arc::new(Templates::load(
        &push::fixture_path("audit2rbac-demo.log"),
        0,
    )?);
    let pushers: Vec<_> = pki
        .pushers
        .iter()
        .enumerate()
        .map(|(index, cert)| {
            let p = Pusher {
                index,
                count: PUSHERS,
                addr,
                tls: client::connector(b"http/1.1", Some(cert))?,
                templates: templates.clone(),
                batch: BATCH,
                rate: Rate::PerSecond(EVENTS_PER_SECOND),
                clock,
            };
            anyhow::Ok(tokio::spawn(p.run()))
        })
        .collect::<anyhow::Result<_>>()?;

    let tally = Arc::new(Tally::default());
    let churn = tokio::spawn(churn(
        addr,
        token.clone(),
        opts.arrivals,
        clock.push_end,
        tally.clone(),
    ));

    let mut samples = vec![];
    let mut next = start + every;
    while next <= clock.push_end {
        tokio::time::sleep_until(next).await;
        match sample(&server, &metrics_conn, &token, start.elapsed()).await {
            Ok(s) => samples.push(s),
            Err(e) => println!("   sample at {:?} failed: {e:#}", start.elapsed()),
        }
        next += every;
    }

    churn.await.context("churn task")?;
    let mut pushed = push::PushStats::default();
    for p in pushers {
        pushed.merge(p.await.context("pusher task")?);
    }
    let mut audited = vec![];
    for a in auditors {
        audited.push(a.await.context("auditor task")?);
    }
    tokio::time::sleep(SETTLE).await;
    let quiet = sample(&server, &metrics_conn, &token, start.elapsed()).await?;
    let stopped = server.stop().await;

    // The report.
    let mut ok = true;
    println!("   clients by kind and outcome:");
    for ((kind, outcome), n) in tally
        .counts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        println!("     {kind:<22} {outcome:<34} {n}");
    }
    println!(
        "   pushed     {} events accepted in {} requests, {} failed pushes ({} events uncertain){}",
        pushed.events,
        pushed.requests,
        pushed.failed,
        pushed.uncertain_events,
        pushed
            .errors
            .first()
            .map(|e| format!("; first failure: {e}"))
            .unwrap_or_default()
    );
    if pushed.failed > 0 {
        ok = false;
    }
    for (i, a) in audited.iter().enumerate() {
        let accounted = a.events + a.dropped_reported;
        let lost = pushed.events.saturating_sub(accounted);
        println!(
            "   auditor {i}  received {}, reported dropped {}, lost unreported {lost}, rewatches {}, resourceVersion order errors {}{}",
            a.events,
            a.dropped_reported,
            a.rewatches,
            a.order_errors,
            a.error
                .as_ref()
                .map(|e| format!("; error: {e}"))
                .unwrap_or_default()
        );
        if lost > 0 || a.order_errors > 0 || a.error.is_some() {
            ok = false;
        }
    }

    println!(
        "   samples    {} (first at {:?}): start rss {} MiB, fds {}, threads {}, tasks {}",
        samples.len(),
        samples.first().map(|s| s.at).unwrap_or_default(),
        baseline.rss_kib / 1024,
        baseline.fds,
        baseline.threads,
        baseline.tasks
    );
    let judged: Vec<Sample> = samples.iter().copied().filter(|s| s.at >= warmup).collect();
    if judged.len() < 6 {
        println!("   check      too few samples after warm-up to judge a trend");
        ok = false;
    }
    for (name, get, rel, abs) in [
        (
            "rss KiB",
            (|s: &Sample| s.rss_kib) as fn(&Sample) -> i64,
            0.10,
            16 * 1024,
        ),
        ("open fds", |s| s.fds, 0.25, 24),
        ("threads", |s| s.threads, 0.0, 8),
        ("live tasks", |s| s.tasks, 0.25, 48),
        ("connections", |s| s.connections, 0.25, 24),
    ] {
        let values: Vec<i64> = judged.iter().map(get).collect();
        let third = values.len() / 3;
        if third == 0 {
            continue;
        }
        let first = median(&values[..third]);
        let last = median(&values[values.len() - third..]);
        let allowed = first + (first as f64 * rel) as i64 + abs;
        let (min, max) = (values.iter().min(), values.iter().max());
        let growing = last > allowed;
        println!(
            "   trend      {name:<11} first third median {first}, last third median {last} (allowed {allowed}), min {} max {} {}",
            min.copied().unwrap_or_default(),
            max.copied().unwrap_or_default(),
            if growing { "GROWING" } else { "ok" }
        );
        ok &= !growing;
    }
    println!(
        "   quiet      after everyone left: rss {} MiB, fds {} (start {}), threads {}, tasks {} (start {}), connections {}",
        quiet.rss_kib / 1024,
        quiet.fds,
        baseline.fds,
        quiet.threads,
        quiet.tasks,
        baseline.tasks,
        quiet.connections
    );
    if quiet.fds > baseline.fds + QUIET_FDS || quiet.tasks > baseline.tasks + QUIET_TASKS {
        println!("   check      fds or tasks did not come back down: something is held");
        ok = false;
    }
    if let Err(e) = stopped {
        println!("   check      the server did not stop cleanly: {e:#}");
        ok = false;
    }
    Ok(ok)
}

fn median(v: &[i64]) -> i64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

/// RSS and threads from /proc, fds by listing /proc/PID/fd, tasks and connections from
/// the server's own gauges on /metrics.
async fn sample(
    server: &ServerProcess,
    tls: &tokio_rustls::TlsConnector,
    token: &str,
    at: Duration,
) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid))
        .context("reading the server's /proc status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            .unwrap_or(-1)
    };
    let fds = std::fs::read_dir(format!("/proc/{}/fd", server.pid))
        .context("listing the server's fds")?
        .count() as i64;
    let mut conn = client::connect_h1(tls, server.addr, None).await?;
    let req = client::request(
        Method::GET,
        server.addr,
        "/metrics",
        Some(token),
        Bytes::new(),
    )?;
    conn.ready().await?;
    let resp = tokio::time::timeout(Duration::from_secs(10), conn.send_request(req))
        .await
        .context("/metrics did not answer in 10 s")??;
    let text = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&text);
    let gauge = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .map_or(-1, |v| v as i64)
    };
    // Taken after the /metrics request: its own connection is closed (dropped) by then
    // on our side, not necessarily on the server's, so each sample carries one extra.
    Ok(Sample {
        at,
        rss_kib: field("VmRSS:"),
        fds,
        threads: field("Threads:"),
        tasks: gauge("kube_audit_stream_runtime_alive_tasks "),
        connections: gauge("kube_audit_stream_server_connections "),
    })
}

/// What an auditor saw over the whole run.
#[derive(Default)]
struct Audit {
    events: u64,
    dropped_reported: u64,
    rewatches: u64,
    order_errors: u64,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    object: LineObject,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LineObject {
    #[serde(rename = "auditID")]
    audit_id: String,
    metadata: LineMeta,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct LineMeta {
    resource_version: String,
    annotations: BTreeMap<String, String>,
}

/// Watch the whole stream until the drain ends; when the server ends the watch (its
/// timeout), watch again from the last resourceVersion, as a client-go reflector does.
async fn audit(addr: SocketAddr, token: String, h2: bool, clock: Clock) -> Audit {
    let mut a = Audit::default();
    let mut last_rv: Option<u64> = None;
    let expected_prefix = std::str::from_utf8(push::ID_PREFIX).unwrap_or_default();
    'watch: while Instant::now() < clock.drain_end {
        let path = match last_rv {
            Some(rv) => format!(
                "/apis/audit.k8s.io/v1alpha1/events?watch=1&allowWatchBookmarks=true&resourceVersion={rv}"
            ),
            None => {
                "/apis/audit.k8s.io/v1alpha1/events?watch=1&allowWatchBookmarks=true".to_owned()
            }
        };
        let body = match open_watch(addr, &token, &path, h2, None).await {
            Ok(b) => b,
            Err(e) => {
                a.error = Some(format!("opening the watch: {e:#}"));
                return a;
            }
        };
        let mut body = body;
        let mut partial = Vec::new();
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = tokio::time::sleep_until(clock.drain_end) => break 'watch,
            };
            let data = match frame {
                None => {
                    a.rewatches += 1;
                    continue 'watch;
                }
                Some(Err(e)) => {
                    a.error = Some(format!("reading the watch: {e}"));
                    return a;
                }
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
            };
            partial.extend_from_slice(&data);
            while let Some(i) = memchr::memchr(b'\n', &partial) {
                let line: Vec<u8> = partial.drain(..=i).collect();
                let Ok(l) = serde_json::from_slice::<Line>(&line) else {
                    a.error = Some(format!(
                        "not a watch line: {}",
                        String::from_utf8_lossy(&line)
                    ));
                    return a;
                };
                let rv = l.object.metadata.resource_version.parse::<u64>().ok();
                match l.kind.as_str() {
                    "ADDED" => {
                        if let (Some(rv), Some(last)) = (rv, last_rv)
                            && rv <= last
                        {
                            a.order_errors += 1;
                        }
                        if l.object.audit_id.starts_with(expected_prefix) {
                            a.events += 1;
                        }
                    }
                    "BOOKMARK" => {
                        a.dropped_reported += l
                            .object
                            .metadata
                            .annotations
                            .get(kube_audit_stream::event::DROPPED_ANNOTATION)
                            .and_then(|n| n.parse::<u64>().ok())
                            .unwrap_or(0);
                    }
                    other => {
                        a.error = Some(format!("{other}: {}", String::from_utf8_lossy(&line)));
                        return a;
                    }
                }
                if rv.is_some() {
                    last_rv = last_rv.max(rv);
                }
            }
        }
    }
    a
}

/// A watch's body once the server answered 200; `recv_buffer` sets SO_RCVBUF (HTTP/1.1).
async fn open_watch(
    addr: SocketAddr,
    token: &str,
    path: &str,
    h2: bool,
    recv_buffer: Option<u32>,
) -> anyhow::Result<hyper::body::Incoming> {
    let req = client::request(Method::GET, addr, path, Some(token), Bytes::new())?;
    let resp = if h2 {
        // As the aggregator connects (the soak is not about the client's frame size).
        let tls = client::connector(b"h2", None)?;
        let mut c = client::connect_h2(&tls, addr, client::H2Settings::GO_1_24).await?;
        c.ready().await?;
        c.send_request(req).await?
    } else {
        let mut c =
            client::connect_h1(&client::connector(b"http/1.1", None)?, addr, recv_buffer).await?;
        c.ready().await?;
        c.send_request(req).await?
    };
    if resp.status() != StatusCode::OK {
        bail!("GET {path}: {}", resp.status());
    }
    Ok(resp.into_body())
}

/// Clients by kind and outcome.
#[derive(Default)]
struct Tally {
    counts: Mutex<BTreeMap<(&'static str, String), u64>>,
}

impl Tally {
    fn add(&self, kind: &'static str, outcome: impl Into<String>) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((kind, outcome.into()))
            .or_default() += 1;
    }
}

const KINDS: [&str; 10] = [
    "fast-h1",
    "fast-h2",
    "slow-reader",
    "never-reads",
    "list",
    "wrong-token",
    "garbage-after-tls",
    "garbage-not-tls",
    "half-handshake",
    "slow-request-head",
];

/// Clients arriving at `arrivals` a second (Poisson), each of a random kind, until `end`;
/// then wait for every one of them to leave.
async fn churn(addr: SocketAddr, token: String, arrivals: f64, end: Instant, tally: Arc<Tally>) {
    let mut visitors = JoinSet::new();
    while Instant::now() < end {
        let gap = -(1.0 - fastrand::f64()).ln() / arrivals;
        tokio::time::sleep(Duration::from_secs_f64(gap)).await;
        let kind = KINDS[fastrand::usize(..KINDS.len())];
        let (token, tally) = (token.clone(), tally.clone());
        visitors.spawn(async move {
            let stay = Duration::from_millis(fastrand::u64(300..5_000));
            // No visitor outlives its stay by much: a server that hangs one is a finding.
            let outcome = tokio::time::timeout(
                stay + Duration::from_secs(20),
                visit(kind, addr, &token, stay),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("client hung past its stay")));
            match outcome {
                Ok(o) => tally.add(kind, o),
                Err(e) => tally.add(kind, format!("error: {}", first_words(&format!("{e:#}")))),
            }
        });
        // Reap the finished ones as we go.
        while visitors.try_join_next().is_some() {}
    }
    while visitors.join_next().await.is_some() {}
}

fn first_words(s: &str) -> String {
    s.chars().take(60).collect()
}

/// One visit; the outcome is what the server did, in a few words.
async fn visit(
    kind: &str,
    addr: SocketAddr,
    token: &str,
    stay: Duration,
) -> anyhow::Result<String> {
    let ns = format!("team-{}", fastrand::u8(..4));
    let watch_ns = format!("/apis/audit.k8s.io/v1alpha1/namespaces/{ns}/namespacedevents?watch=1");
    let watch_all = "/apis/audit.k8s.io/v1alpha1/events?watch=1";
    match kind {
        "fast-h1" | "fast-h2" => {
            let path = if fastrand::bool() {
                watch_all
            } else {
                &watch_ns
            };
            let mut body = open_watch(addr, token, path, kind == "fast-h2", None).await?;
            let until = Instant::now() + stay;
            let mut bytes = 0usize;
            while let Ok(Some(f)) = tokio::time::timeout_at(until, body.frame()).await {
                bytes += f?.data_ref().map_or(0, |d| d.len());
            }
            Ok(if bytes > 0 {
                "watched, read events"
            } else {
                "watched"
            }
            .into())
        }
        "slow-reader" => {
            let mut body = open_watch(addr, token, watch_all, false, Some(16 * 1024)).await?;
            let until = Instant::now() + stay;
            while Instant::now() < until {
                match tokio::time::timeout_at(until, body.frame()).await {
                    Ok(Some(f)) => {
                        f?;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Ok(None) => return Ok("watch ended by the server".into()),
                    Err(_) => break,
                }
            }
            Ok("watched slowly".into())
        }
        "never-reads" => {
            let body =
                open_watch(addr, token, watch_all, fastrand::bool(), Some(16 * 1024)).await?;
            tokio::time::sleep(stay).await;
            drop(body);
            Ok("watched, never read".into())
        }
        "list" => {
            let mut c =
                client::connect_h1(&client::connector(b"http/1.1", None)?, addr, None).await?;
            let req = client::request(
                Method::GET,
                addr,
                "/apis/audit.k8s.io/v1alpha1/events?limit=50",
                Some(token),
                Bytes::new(),
            )?;
            c.ready().await?;
            let resp = c.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok(format!("LIST {}", status.as_u16()))
        }
        "wrong-token" => {
            let mut c =
                client::connect_h1(&client::connector(b"http/1.1", None)?, addr, None).await?;
            let req = client::request(
                Method::GET,
                addr,
                watch_all,
                Some("not-a-token"),
                Bytes::new(),
            )?;
            c.ready().await?;
            let resp = c.send_request(req).await?;
            Ok(format!("answered {}", resp.status().as_u16()))
        }
        "garbage-after-tls" => {
            let mut s = tls_stream(addr).await?;
            let garbage: Vec<u8> = (0..fastrand::usize(1..2048))
                .map(|_| fastrand::u8(..))
                .collect();
            s.write_all(&garbage).await?;
            s.write_all(b"\r\n\r\n").await?;
            Ok(read_answer(&mut s, stay).await)
        }
        "garbage-not-tls" => {
            let mut s = tcp(addr).await?;
            let garbage: Vec<u8> = (0..fastrand::usize(1..2048))
                .map(|_| fastrand::u8(..))
                .collect();
            s.write_all(&garbage).await?;
            Ok(read_answer(&mut s, stay).await)
        }
        "half-handshake" => {
            let mut s = tcp(addr).await?;
            // A TLS record header announcing a 512-byte ClientHello, and only its start.
            s.write_all(&[
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ])
            .await?;
            if fastrand::bool() {
                tokio::time::sleep(stay).await;
            }
            Ok("left mid-handshake".into())
        }
        "slow-request-head" => {
            let mut s = tls_stream(addr).await?;
            let head = format!(
                "GET {watch_all} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n"
            );
            let until = Instant::now() + stay;
            for chunk in head.as_bytes().chunks(4) {
                if Instant::now() >= until {
                    break;
                }
                if s.write_all(chunk).await.is_err() {
                    return Ok("closed by the server while trickling".into());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok("trickled, left".into())
        }
        other => bail!("unknown kind {other}"),
    }
}

async fn tcp(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    anyhow::ensure!(addr.ip().is_loopback(), "loopback only, not {addr}");
    Ok(TcpStream::connect(addr).await?)
}

async fn tls_stream(
    addr: SocketAddr,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tcp(addr).await?;
    let tls = client::connector(b"http/1.1", None)?;
    tls.connect(rustls::pki_types::ServerName::from(addr.ip()), tcp)
        .await
        .context("TLS handshake")
}

/// The status line the server answered with, or how the connection ended.
async fn read_answer<S: tokio::io::AsyncRead + Unpin>(s: &mut S, wait: Duration) -> String {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(wait, s.read(&mut buf)).await {
        Ok(Ok(0)) => "closed".into(),
        Ok(Ok(n)) => {
            let text = String::from_utf8_lossy(&buf[..n]);
            match text.split_whitespace().nth(1) {
                Some(code) if text.starts_with("HTTP/") => format!("answered {code}"),
                _ => "answered (not HTTP)".into(),
            }
        }
        Ok(Err(_)) => "reset".into(),
        Err(_) => "no answer, left".into(),
    }
}
