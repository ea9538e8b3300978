//! Load generator: starts the real server in this process on 127.0.0.1 (self-signed
//! certificate, generated token files, `--authorization-mode AlwaysAllow`), pushes
//! `EventList`s built from tests/fixtures/audit/all-events.jsonl at a fixed rate from
//! several pushers, reads `/apis/audit.k8s.io/v1alpha1/events?watch=1` with fast and slow
//! watchers, and prints what it saw: events/s pushed and delivered, ingest→delivery
//! latency, events dropped for slow watchers, the process RSS, and a baseline measured in
//! the same run (the bare serde_json `RawValue` split of the same bodies on one core).
//!
//! Every loop is bounded by `--duration` (plus a bounded drain), it stops by itself, and
//! it only ever connects to the loopback address the server it started listens on.
//!
//! Run: `cargo run --release --example loadgen -- --help`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bytes::{Bytes, BytesMut};
use clap::Parser;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use kube_audit_stream::config::{Cli, Command};
use kube_audit_stream::event::{DROPPED_ANNOTATION, TRUNCATED_ANNOTATION};
use kube_audit_stream::server::{self, App};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpSocket;
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_rustls::TlsConnector;

/// What a slow watcher reads per second while the pushers run.
const SLOW_WATCHER_BYTES_PER_SECOND: f64 = 4.0 * 1024.0;
/// A slow watcher's socket receive buffer, so that the kernel does not hide its slowness
/// from the server behind megabytes of buffered stream.
const SLOW_WATCHER_RECV_BUFFER: u32 = 16 * 1024;
/// After the pushers stop, watchers read what is still coming (every watcher at full
/// speed, so that the slow ones get their drop reports) until nothing arrives for this
/// long, or `MAX_DRAIN` has passed.
const DRAIN_IDLE: Duration = Duration::from_secs(1);
const MAX_DRAIN: Duration = Duration::from_secs(10);
/// Longest wait for one ingest answer, or for the server to stop.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the one-core baseline measurement runs at most.
const BASELINE_TIME: Duration = Duration::from_secs(1);
/// How many bodies each pusher keeps for the baseline.
const BASELINE_BODIES_PER_PUSHER: usize = 4;
const WATCH_PATH: &str = "/apis/audit.k8s.io/v1alpha1/events?watch=1";
/// Prefix of the auditIDs the pushers write: `lg-{send_ns}-p{pusher}-{index}`.
const ID_PREFIX: &str = "lg-";
const LIST_HEAD: &[u8] =
    br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Load generator for kube-audit-stream: runs the server in-process on 127.0.0.1, pushes audit EventLists and watches them, then prints throughput, latency, drops and RSS"
)]
struct Opts {
    /// Concurrent pushers, each one kube-apiserver replica with its own ingest token.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pushers: u64,
    /// Events per second each pusher sends.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    rate: u64,
    /// Seconds of pushing (watchers then drain for at most 10 s more).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    duration: u64,
    /// Watchers that read as fast as they can (their latency is reported).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=1000))]
    watchers: u64,
    /// Watchers that read only 4 KiB/s while the pushers run (their drops are reported).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=1000))]
    slow_watchers: u64,
    /// Events per pushed EventList.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(1..=2000))]
    batch: u64,
    /// Extra flag for the server, repeatable, e.g. `--server-arg=--watcher-bytes-per-second=0`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    run(opts).await
}

async fn run(opts: Opts) -> anyhow::Result<()> {
    let templates = Arc::new(load_templates()?);
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let tokens = Tokens::generate(opts.pushers);
    let server = Server::start(dir.path(), &tokens, &opts.server_args).await?;
    let tls = client_tls()?;

    println!(
        "loadgen: {} pushers x {} events/s in batches of {} for {} s; {} watchers, {} slow watchers ({} KiB/s); server on {}",
        opts.pushers,
        opts.rate,
        opts.batch,
        opts.duration,
        opts.watchers,
        opts.slow_watchers,
        SLOW_WATCHER_BYTES_PER_SECOND / 1024.0,
        server.addr
    );

    // Every watch is open (subscribed) before the first push.
    let total_watchers = opts.watchers + opts.slow_watchers;
    let opened = futures_util::future::try_join_all((0..total_watchers).map(|i| {
        let slow = i >= opts.watchers;
        open_watch(&tls, server.addr, &tokens.watcher, slow)
    }))
    .await?;

    let start = Instant::now();
    let push_end = start + Duration::from_secs(opts.duration);
    let clock = Clock {
        start,
        push_end,
        drain_end: push_end + MAX_DRAIN,
    };
    let readers: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(i, watch)| {
            let slow = i as u64 >= opts.watchers;
            tokio::spawn(read_watch(watch, clock, slow))
        })
        .collect();
    let pushers: Vec<_> = tokens
        .pushers
        .iter()
        .enumerate()
        .map(|(i, token)| {
            let pusher = Pusher {
                index: i,
                count: opts.pushers as usize,
                token: token.clone(),
                addr: server.addr,
                tls: tls.clone(),
                templates: templates.clone(),
                batch: opts.batch as usize,
                period: Duration::from_secs_f64(opts.batch as f64 / opts.rate as f64),
                clock,
            };
            tokio::spawn(pusher.run())
        })
        .collect();

    let mut pushed = PushStats::default();
    for p in pushers {
        pushed.merge(p.await.context("pusher task")?);
    }
    let push_elapsed = pushed
        .last_answer
        .map_or(Duration::ZERO, |t| t.duration_since(start))
        .max(Duration::from_millis(1));
    let mut fast = Vec::new();
    let mut slow = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        let stats = r.await.context("watcher task")?;
        if (i as u64) < opts.watchers {
            fast.push(stats);
        } else {
            slow.push(stats);
        }
    }
    let (rss, peak_rss) = rss_kib();
    let published = server.app.bus().resource_version();
    let metrics = server.scrape_metrics(&tls, &tokens.watcher).await;
    server.stop().await?;
    let baseline = raw_split_baseline(&pushed.sample_bodies);

    report(&Report {
        pushed: &pushed,
        push_elapsed,
        published,
        fast: &fast,
        slow: &slow,
        rss,
        peak_rss,
        metrics: &metrics,
        baseline,
        start,
    });
    Ok(())
}

/// The run's time points. `start` is also the epoch of the send times in the auditIDs.
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    push_end: Instant,
    drain_end: Instant,
}

impl Clock {
    fn nanos_since_start(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

// ---------------------------------------------------------------------------------------
// The server, in this process.

/// Random bearer tokens: one per pusher (its user names the event source) and one for
/// every watcher.
struct Tokens {
    pushers: Vec<String>,
    watcher: String,
}

impl Tokens {
    fn generate(pushers: u64) -> Tokens {
        let token = || format!("{:032x}", fastrand::u128(..));
        Tokens {
            pushers: (0..pushers).map(|_| token()).collect(),
            watcher: token(),
        }
    }
}

struct Server {
    addr: SocketAddr,
    app: App,
    shutdown: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// `--dev`-like (loopback, self-signed certificate) but with generated token files and
    /// `--authorization-mode AlwaysAllow`, built the way tests/support/server.rs does.
    async fn start(dir: &Path, tokens: &Tokens, extra: &[String]) -> anyhow::Result<Server> {
        let write = |name: &str, text: &str| -> anyhow::Result<String> {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            Ok(p.display().to_string())
        };
        let token_file = write(
            "tokens.csv",
            &format!("{},loadgen-watcher,uid-loadgen-watcher\n", tokens.watcher),
        )?;
        let ingest_lines: String = tokens
            .pushers
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{t},loadgen-apiserver-{i},uid-loadgen-apiserver-{i}\n"))
            .collect();
        let ingest_token_file = write("ingest-tokens.csv", &ingest_lines)?;
        let mut argv: Vec<String> = [
            "kube-audit-stream",
            "serve",
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            "0",
            "--token-auth-file",
            &token_file,
            "--authorization-mode",
            "AlwaysAllow",
            "--ingest-token-file",
            &ingest_token_file,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(extra.iter().cloned());
        let Command::Serve(args) = Cli::try_parse_from(argv)?.command;
        let settings = args.validate()?;
        ensure!(
            settings.listen.ip().is_loopback(),
            "the load generator only runs the server on loopback, not {}",
            settings.listen
        );
        let app = App::new(&settings).await?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let addr = listener.local_addr()?;
        let (shutdown, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server::run(app.clone(), listener, async {
            let _ = rx.await;
        }));
        Ok(Server {
            addr,
            app,
            shutdown,
            handle,
        })
    }

    /// The server's own drop and truncation counters, from `/metrics`.
    async fn scrape_metrics(&self, tls: &TlsConnector, token: &str) -> Vec<String> {
        let fetch = async {
            let mut conn = connect(tls, self.addr, None).await?;
            let resp = send(
                &mut conn,
                self.addr,
                Method::GET,
                "/metrics",
                token,
                Bytes::new(),
            )
            .await?;
            ensure!(
                resp.status() == StatusCode::OK,
                "GET /metrics: {}",
                resp.status()
            );
            let body = resp.into_body().collect().await?.to_bytes();
            Ok(String::from_utf8_lossy(&body).into_owned())
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, fetch).await {
            Ok(Ok(text)) => text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| {
                    l.contains("dropped_events_total") || l.contains("truncated_events_total")
                })
                .map(str::to_owned)
                .collect(),
            Ok(Err(e)) => vec![format!("(GET /metrics failed: {e:#})")],
            Err(_) => vec!["(GET /metrics timed out)".to_owned()],
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        tokio::time::timeout(REQUEST_TIMEOUT, self.handle)
            .await
            .context("the server did not stop")?
            .context("server task")?
            .context("server")
    }
}

// ---------------------------------------------------------------------------------------
// HTTPS client: HTTP/1.1 over tokio-rustls, one connection per pusher or watcher.

/// Accepts any server certificate. The load generator talks only to the server it started
/// itself, on a loopback address, whose freshly generated self-signed certificate it has
/// no other way to trust; `connect` refuses any other address. Handshake signatures are
/// still checked, so the peer must hold the certificate's key. Never use this elsewhere.
#[derive(Debug)]
struct AcceptAnyCertOnLoopback(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertOnLoopback {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_tls() -> anyhow::Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertOnLoopback(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

type Conn = SendRequest<Full<Bytes>>;

/// One HTTP/1.1 connection to the server; `recv_buffer` sets SO_RCVBUF.
async fn connect(
    tls: &TlsConnector,
    addr: SocketAddr,
    recv_buffer: Option<u32>,
) -> anyhow::Result<Conn> {
    ensure!(
        addr.ip().is_loopback(),
        "refusing to connect to {addr}: the load generator only talks to loopback"
    );
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let tcp = socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let stream = tls
        .connect(ServerName::from(addr.ip()), tcp)
        .await
        .context("TLS handshake")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the request side and the last body are dropped, or on an I/O error,
        // which the request or body reading reports.
        let _ = conn.await;
    });
    Ok(sender)
}

async fn send(
    conn: &mut Conn,
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: &str,
    body: Bytes,
) -> anyhow::Result<http::Response<Incoming>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    if !body.is_empty() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(Full::new(body))?;
    conn.ready().await?;
    Ok(conn.send_request(req).await?)
}

// ---------------------------------------------------------------------------------------
// Pushers.

/// One fixture event with its `auditID` taken out: `head` is the object up to and
/// including `"auditID":`, to be followed by a fresh ID and `}`.
struct Template {
    head: Vec<u8>,
}

fn load_templates() -> anyhow::Result<Vec<Template>> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit/all-events.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let templates = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let at = || format!("{}:{}", path.display(), i + 1);
            // Values stay as their original text; only the key order changes.
            let mut members: BTreeMap<String, Box<RawValue>> =
                serde_json::from_str(line).with_context(at)?;
            members
                .remove("auditID")
                .with_context(|| format!("{}: no auditID", at()))?;
            let mut head = b"{".to_vec();
            for (key, value) in &members {
                serde_json::to_writer(&mut head, key)?;
                head.push(b':');
                head.extend_from_slice(value.get().as_bytes());
                head.push(b',');
            }
            head.extend_from_slice(br#""auditID":"#);
            Ok(Template { head })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(!templates.is_empty(), "{} has no events", path.display());
    Ok(templates)
}

struct Pusher {
    index: usize,
    count: usize,
    token: String,
    addr: SocketAddr,
    tls: TlsConnector,
    templates: Arc<Vec<Template>>,
    batch: usize,
    period: Duration,
    clock: Clock,
}

#[derive(Default)]
struct PushStats {
    requests: u64,
    failed: u64,
    events: u64,
    bytes: u64,
    /// The first few failures, for the report.
    errors: Vec<String>,
    /// When the last answer came back, across pushers.
    last_answer: Option<Instant>,
    /// A few of the bodies sent, for the baseline.
    sample_bodies: Vec<Bytes>,
}

impl PushStats {
    fn merge(&mut self, o: PushStats) {
        self.requests += o.requests;
        self.failed += o.failed;
        self.events += o.events;
        self.bytes += o.bytes;
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

impl Pusher {
    /// Push one batch per period until the end of the push phase.
    async fn run(self) -> PushStats {
        let mut stats = PushStats::default();
        // Each pusher starts at its own place in the fixture and its own phase.
        let mut next_line = self.index * self.templates.len() / self.count;
        let first = self.clock.start + self.period.mul_f64(self.index as f64 / self.count as f64);
        let mut ticker = tokio::time::interval_at(first, self.period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut conn: Option<Conn> = None;
        loop {
            ticker.tick().await;
            if Instant::now() >= self.clock.push_end {
                break;
            }
            let c = match conn.take() {
                Some(c) => c,
                None => match connect(&self.tls, self.addr, None).await {
                    Ok(c) => c,
                    Err(e) => {
                        stats.fail(format!("connect: {e:#}"));
                        continue;
                    }
                },
            };
            let send_ns = self.clock.nanos_since_start();
            let body = Bytes::from(self.body(&mut next_line, send_ns));
            if stats.sample_bodies.len() < BASELINE_BODIES_PER_PUSHER {
                stats.sample_bodies.push(body.clone());
            }
            let len = body.len() as u64;
            match tokio::time::timeout(REQUEST_TIMEOUT, self.push(c, body)).await {
                Ok(Ok(c)) => {
                    conn = Some(c);
                    stats.requests += 1;
                    stats.events += self.batch as u64;
                    stats.bytes += len;
                }
                Ok(Err(e)) => stats.fail(format!("{e:#}")),
                Err(_) => stats.fail("no answer within 30 s"),
            }
            stats.last_answer = Some(Instant::now());
        }
        stats
    }

    /// POST one body; the connection back if the server accepted it.
    async fn push(&self, mut conn: Conn, body: Bytes) -> anyhow::Result<Conn> {
        let resp = send(
            &mut conn,
            self.addr,
            Method::POST,
            "/ingest",
            &self.token,
            body,
        )
        .await?;
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

    /// An EventList of the next `batch` fixture events, each with a unique auditID that
    /// carries the send time.
    fn body(&self, next_line: &mut usize, send_ns: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.batch * 6 * 1024);
        out.extend_from_slice(LIST_HEAD);
        for i in 0..self.batch {
            if i > 0 {
                out.push(b',');
            }
            let t = &self.templates[*next_line % self.templates.len()];
            *next_line += 1;
            out.extend_from_slice(&t.head);
            // Writing into a Vec cannot fail.
            let _ = write!(out, "\"{ID_PREFIX}{send_ns}-p{}-{i}\"}}", self.index);
        }
        out.extend_from_slice(b"]}");
        out
    }
}

// ---------------------------------------------------------------------------------------
// Watchers.

struct OpenWatch {
    /// Kept so the connection stays up for the body.
    _conn: Conn,
    body: Incoming,
}

async fn open_watch(
    tls: &TlsConnector,
    addr: SocketAddr,
    token: &str,
    slow: bool,
) -> anyhow::Result<OpenWatch> {
    let recv_buffer = slow.then_some(SLOW_WATCHER_RECV_BUFFER);
    let mut conn = connect(tls, addr, recv_buffer).await?;
    let resp = send(
        &mut conn,
        addr,
        Method::GET,
        WATCH_PATH,
        token,
        Bytes::new(),
    )
    .await?;
    let status = resp.status();
    if status != StatusCode::OK {
        let answer = resp.into_body().collect().await?.to_bytes();
        bail!(
            "GET {WATCH_PATH}: {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(OpenWatch {
        _conn: conn,
        body: resp.into_body(),
    })
}

#[derive(Default)]
struct WatchStats {
    events: u64,
    truncated: u64,
    /// Sum of the `audit.k8s.io/dropped` counts of the BOOKMARKs received.
    dropped_reported: u64,
    bytes: u64,
    /// Lines that were not a watch event we understand.
    bad_lines: u64,
    /// Ingest→delivery latency of the events, in nanoseconds.
    latency: Histogram,
    last_event: Option<Instant>,
    error: Option<String>,
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
}

#[derive(Deserialize)]
struct WatchMetadata<'a> {
    #[serde(borrow, default)]
    annotations: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
}

/// Read one watch until the drain ends: fast watchers at full speed, slow ones at
/// `SLOW_WATCHER_BYTES_PER_SECOND` while the pushers run, then at full speed.
async fn read_watch(watch: OpenWatch, clock: Clock, slow: bool) -> WatchStats {
    let OpenWatch { _conn, mut body } = watch;
    let mut stats = WatchStats::default();
    let mut buf = BytesMut::new();
    let mut scanned = 0;
    let mut last_data = clock.start;
    let mut slow_bytes = 0u64;
    loop {
        // Stop once nothing came for DRAIN_IDLE after the pushers stopped.
        let until = (last_data.max(clock.push_end) + DRAIN_IDLE).min(clock.drain_end);
        let frame = match tokio::time::timeout_at(until, body.frame()).await {
            Err(_) => break,
            Ok(None) => {
                stats.error = Some("the server ended the watch".into());
                break;
            }
            Ok(Some(Err(e))) => {
                stats.error = Some(format!("reading the watch: {e}"));
                break;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let now = Instant::now();
        last_data = now;
        stats.bytes += data.len() as u64;
        buf.extend_from_slice(&data);
        while let Some(i) = buf[scanned..].iter().position(|b| *b == b'\n') {
            let line = buf.split_to(scanned + i + 1);
            scanned = 0;
            take_line(&line, &clock, slow, &mut stats);
        }
        scanned = buf.len();
        if slow && now < clock.push_end {
            slow_bytes += data.len() as u64;
            let due = clock.start
                + Duration::from_secs_f64(slow_bytes as f64 / SLOW_WATCHER_BYTES_PER_SECOND);
            tokio::time::sleep_until(due.min(clock.push_end)).await;
        }
    }
    stats
}

fn take_line(line: &[u8], clock: &Clock, slow: bool, stats: &mut WatchStats) {
    let Ok(ev) = serde_json::from_slice::<WatchLine<'_>>(line) else {
        stats.bad_lines += 1;
        return;
    };
    match &*ev.kind {
        "ADDED" => {
            stats.events += 1;
            stats.last_event = Some(Instant::now());
            let annotations = ev.object.annotations.unwrap_or_default();
            if annotations
                .get(TRUNCATED_ANNOTATION)
                .is_some_and(|v| v == "true")
            {
                stats.truncated += 1;
            }
            let sent = ev
                .object
                .audit_id
                .as_deref()
                .and_then(|id| id.strip_prefix(ID_PREFIX))
                .and_then(|rest| rest.split('-').next())
                .and_then(|ns| ns.parse::<u64>().ok());
            match sent {
                Some(sent) if !slow => stats
                    .latency
                    .record(clock.nanos_since_start().saturating_sub(sent)),
                Some(_) => {}
                None => stats.bad_lines += 1,
            }
        }
        "BOOKMARK" => {
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
        _ => stats.bad_lines += 1,
    }
}

// ---------------------------------------------------------------------------------------
// Measurements and the report.

/// A log-linear histogram (32 buckets per power of two, so within about 3 %): fixed
/// memory however long the run, so it does not inflate the RSS it reports.
struct Histogram {
    counts: Vec<u64>,
    count: u64,
    max: u64,
}

const SUB_BUCKET_BITS: u32 = 5;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; Self::index(u64::MAX) + 1],
            count: 0,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < SUB_BUCKETS {
            return v as usize;
        }
        let shift = 63 - v.leading_zeros() - SUB_BUCKET_BITS;
        (u64::from(shift) * SUB_BUCKETS + (v >> shift)) as usize
    }

    /// The middle of bucket `i`'s range.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * SUB_BUCKETS {
            return i;
        }
        let shift = i / SUB_BUCKETS - 1;
        let mantissa = i % SUB_BUCKETS + SUB_BUCKETS;
        (mantissa << shift) + (1 << shift) / 2
    }

    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.count += 1;
        self.max = self.max.max(v);
    }

    fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.count += o.count;
        self.max = self.max.max(o.max);
    }

    fn percentile(&self, p: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((p / 100.0 * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::value(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// VmRSS and VmHWM of this process (server and load generator together), in KiB.
fn rss_kib() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Bytes and events per second of splitting the bodies into `RawValue` items with bare
/// serde_json, on this thread: the least work any ingest decoder must do.
struct Baseline {
    bytes_per_second: f64,
    events_per_second: f64,
}

fn raw_split_baseline(bodies: &[Bytes]) -> Option<Baseline> {
    #[derive(Deserialize)]
    struct RawList<'a> {
        #[serde(borrow)]
        items: Vec<&'a RawValue>,
    }
    if bodies.is_empty() {
        return None;
    }
    let started = std::time::Instant::now();
    let (mut bytes, mut events) = (0u64, 0u64);
    // Bounded by time, and by a round count in case the clock misbehaves.
    for _ in 0..100_000 {
        for body in bodies {
            let list: RawList<'_> = serde_json::from_slice(std::hint::black_box(body)).ok()?;
            bytes += body.len() as u64;
            events += list.items.len() as u64;
        }
        if started.elapsed() >= BASELINE_TIME {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    Some(Baseline {
        bytes_per_second: bytes as f64 / secs,
        events_per_second: events as f64 / secs,
    })
}

struct Report<'a> {
    pushed: &'a PushStats,
    push_elapsed: Duration,
    published: u64,
    fast: &'a [WatchStats],
    slow: &'a [WatchStats],
    rss: Option<u64>,
    peak_rss: Option<u64>,
    metrics: &'a [String],
    baseline: Option<Baseline>,
    start: Instant,
}

fn ms(ns: u64) -> String {
    format!("{:.1} ms", ns as f64 / 1e6)
}

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

fn report(r: &Report<'_>) {
    let secs = r.push_elapsed.as_secs_f64();
    let p = r.pushed;
    println!(
        "pushed:    {} events in {:.1} s = {:.0} events/s, {}/s ({} requests, {} failed; the bus published {})",
        p.events,
        secs,
        p.events as f64 / secs,
        mb(p.bytes as f64 / secs),
        p.requests,
        p.failed,
        r.published
    );
    for e in &p.errors {
        println!("           push error: {e}");
    }

    let sum = |w: &[WatchStats], f: fn(&WatchStats) -> u64| w.iter().map(f).sum::<u64>();
    if !r.fast.is_empty() {
        // Each watcher's rate over the time until its last event, added up.
        let rate: f64 = r
            .fast
            .iter()
            .map(|w| {
                let t = w
                    .last_event
                    .map_or(r.push_elapsed, |t| t.duration_since(r.start))
                    .max(r.push_elapsed);
                w.events as f64 / t.as_secs_f64()
            })
            .sum();
        let events = sum(r.fast, |w| w.events);
        let n = r.fast.len() as f64;
        println!(
            "delivered: {} fast watchers: {:.0} events/s each, {:.0} events/s together, {}/s together; {:.1}% of pushed events arrived ({} of them truncated, at ingest for being over --max-event-bytes or by the budget; {} dropped, as reported by audit.k8s.io/dropped bookmarks)",
            r.fast.len(),
            rate / n,
            rate,
            mb(sum(r.fast, |w| w.bytes) as f64 / secs),
            100.0 * events as f64 / (p.events as f64 * n).max(1.0),
            sum(r.fast, |w| w.truncated),
            sum(r.fast, |w| w.dropped_reported),
        );
        let mut lat = Histogram::default();
        r.fast.iter().for_each(|w| lat.merge(&w.latency));
        match (lat.percentile(50.0), lat.percentile(99.0)) {
            (Some(p50), Some(p99)) => println!(
                "latency:   ingest→delivery, fast watchers ({} events): p50 {}, p99 {}, max {}",
                lat.count,
                ms(p50),
                ms(p99),
                ms(lat.max)
            ),
            _ => println!("latency:   no event reached a fast watcher"),
        }
    }
    if !r.slow.is_empty() {
        let events = sum(r.slow, |w| w.events);
        let dropped = sum(r.slow, |w| w.dropped_reported);
        println!(
            "slow:      {} slow watchers: {} events delivered ({} truncated), {} dropped as reported by audit.k8s.io/dropped bookmarks; delivered + dropped = {:.1}% of pushed",
            r.slow.len(),
            events,
            sum(r.slow, |w| w.truncated),
            dropped,
            100.0 * (events + dropped) as f64 / (p.events as f64 * r.slow.len() as f64).max(1.0),
        );
    }
    let bad = sum(r.fast, |w| w.bad_lines) + sum(r.slow, |w| w.bad_lines);
    if bad > 0 {
        println!("           {bad} watch lines were not events or bookmarks of this run");
    }
    for (i, w) in r.fast.iter().chain(r.slow).enumerate() {
        if let Some(e) = &w.error {
            println!("           watcher {i}: {e}");
        }
    }
    for m in r.metrics {
        println!("server:    {m}");
    }
    let kib =
        |v: Option<u64>| v.map_or("?".to_owned(), |k| format!("{:.0} MiB", k as f64 / 1024.0));
    println!(
        "memory:    RSS {} (peak {}), server and load generator in one process",
        kib(r.rss),
        kib(r.peak_rss)
    );
    match &r.baseline {
        Some(b) => println!(
            "baseline:  bare serde_json RawValue split of the same bodies, one core, this run: {}/s, {:.0} events/s (pushed was {:.1}% of that)",
            mb(b.bytes_per_second),
            b.events_per_second,
            100.0 * (p.bytes as f64 / secs) / b.bytes_per_second.max(1.0)
        ),
        None => println!("baseline:  no body was pushed"),
    }
}
