//! Load generator for kube-audit-stream, with one scenario per row of the performance
//! table (`--scenario`), or a run shaped by flags.
//!
//! It starts the real server in a child process on 127.0.0.1 (self-signed serving
//! certificate, a generated CA whose client certificates the pushers present, a bearer
//! token for the watchers, `--authorization-mode AlwaysAllow`), pushes `EventList`s built
//! from a fixture (each event with a unique auditID carrying its send time, optionally
//! spread over N namespaces), watches them over HTTP/1.1 or HTTP/2 (streams multiplexed
//! over a few connections, as the kube-apiserver aggregator does), and prints what it saw:
//! events/s pushed and delivered, push→watcher latency, events lost without being
//! reported, the server's CPU (in cores and per event or byte) and RSS, the generator's
//! own CPU (so that a result limited by the generator says so), the server's own
//! delivery-stage histograms (scraped from /metrics after each phase), and the baselines
//! measured in the same run: serde_json split + routing read of the same bodies on one
//! core, and `openssl speed` AES-128-GCM. The HTTP/2 watchers advertise the settings of
//! `--h2-preset` (16 KiB or 1 MiB frames, as the two kinds of aggregator do).
//!
//! `--scenario all` ends with the performance table (issue 24's rows, each figure the
//! ratio the table states beside its same-run baseline) as markdown for BENCHMARKS.md.
//!
//! `loadgen soak` is the soak run instead (soak.rs, docs/security.md "Soak"): the same
//! server child, clients and pushers, steady ingest while watchers and hostile clients
//! come and go, for half an hour (90 s with `--short`).
//!
//! Every loop is bounded in time, it stops by itself, and it only ever connects to the
//! loopback address of the server it started. It exits non-zero when an event was lost
//! without being reported (or a push failed, or resourceVersions went backwards).
//!
//! Run: `cargo run --release --example loadgen -- --help`.

mod client;
mod measure;
mod push;
mod server;
mod soak;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use tokio::time::Instant;

use crate::client::H2Settings;
use crate::measure::{CpuSampler, CpuUse, Histogram, PromHistogram, SplitRoute};
use crate::push::{PushStats, Pusher, Rate, Templates};
use crate::server::{ServerProcess, Verdict};
use crate::watch::{Group, Scope, WatchStats};

/// After the pushers stop, watchers drain for at most this long.
const MAX_DRAIN: Duration = Duration::from_secs(10);
/// How long idle watchers sit before the server's RSS is read.
const IDLE_SETTLE: Duration = Duration::from_secs(3);
/// The server flags of the performance table: no per-watcher budget, and events up to
/// 4 MiB whole, so that what is measured is delivery, not the budget.
const TABLE_SERVER_FLAGS: [&str; 2] = ["--watcher-bytes-per-second=0", "--max-event-bytes=4194304"];
/// `--server-arg` flags for every scenario's server (set once, by `run`).
static SCENARIO_SERVER_ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
/// The table's events per second for the watcher rows.
const TABLE_RATE: f64 = 10_000.0;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Load generator for kube-audit-stream: runs the server in a child process on 127.0.0.1, pushes audit EventLists over mTLS, watches them over HTTP/1.1 or HTTP/2, and prints throughput, latency, losses, server and generator CPU, RSS and same-run baselines",
    // The flags below are the load generator's; `soak` has its own.
    args_conflicts_with_subcommands = true
)]
struct Opts {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Run the preset for one row of the performance table (or `all`); other flags are
    /// then ignored except --duration, --fixture and the --h2-* flags.
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// A short run of every kind of watcher (for CI): a few seconds, exit code only.
    #[arg(long, conflicts_with = "scenario")]
    smoke: bool,
    /// Seconds of pushing per phase [default: 10].
    #[arg(long)]
    duration: Option<f64>,
    /// Concurrent pushers, each a kube-apiserver replica with its own client certificate.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    pushers: u64,
    /// Events per pushed EventList.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(1..=5000))]
    batch: u64,
    /// Events per second, all pushers together, or `max`: back-to-back, as fast as the
    /// server answers.
    #[arg(long, default_value = "4000", value_parser = parse_rate)]
    rate: Rate,
    /// Which fixture the events come from [default: mixed; metadata for the watcher scenarios].
    #[arg(long, value_enum)]
    fixture: Option<Fixture>,
    /// Spread events over this many namespaces `ns-{k}` (0: keep the fixture's).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=5000))]
    namespaces: u64,
    /// Full-stream watchers that read as fast as they can.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=4000))]
    watchers: u64,
    /// Also one namespace watcher per namespace (needs --namespaces).
    #[arg(long, requires = "namespaces")]
    namespace_watchers: bool,
    /// HTTP/1.1 full-stream watchers that read 4 KiB/s while the pushers run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=1000))]
    slow_watchers: u64,
    /// Fast watchers use HTTP/2, multiplexed over --connections connections.
    #[arg(long)]
    http2: bool,
    /// HTTP/2 connections the watchers share.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    connections: u64,
    /// Run this many replicas on one NATS JetStream stream (`--bus=nats`; needs
    /// `nats-server` on the PATH), pushers and watchers spread over them.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10))]
    nats_replicas: Option<u64>,
    /// The HTTP/2 settings the watchers advertise: `16KiB` (Go before 1.24 and most
    /// clients: 16 KiB frames, a 4 MiB stream window, a 1 GiB connection window), `1MiB`
    /// (Go 1.24 and later, as kube-aggregator: 1 MiB frames, the same windows) or
    /// `defaults` (HTTP/2's own: 16 KiB frames, 65,535-byte windows). `--scenario all`
    /// runs the fan-out row with the first two [default: 1MiB; defaults for --smoke,
    /// the most flow control].
    #[arg(long, value_enum, ignore_case = true)]
    h2_preset: Option<H2Preset>,
    /// Overrides the preset's largest frame the watchers take, in bytes (or with a KiB
    /// or MiB suffix), 16KiB to 16MiB - 1.
    #[arg(long, value_parser = parse_h2_frame)]
    h2_max_frame: Option<u32>,
    /// Overrides the preset's receive window per stream, in bytes (or KiB, MiB, GiB).
    #[arg(long, value_parser = parse_h2_window)]
    h2_stream_window: Option<u32>,
    /// Overrides the preset's receive window per connection, in bytes (or KiB, MiB, GiB).
    #[arg(long, value_parser = parse_h2_window)]
    h2_connection_window: Option<u32>,
    /// Extra flag for the server, repeatable, e.g. `--server-arg=--watcher-bytes-per-second=0`
    /// (the scenarios pass the table's `--watcher-bytes-per-second=0 --max-event-bytes=4194304`,
    /// then these: `--scenario namespaces --server-arg=--authorization-granularity=resource`
    /// measures per-resource authorization, `--server-arg=--redact=` ingest without
    /// redaction, which is on by default).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Soak run: steady ingest with watchers and hostile clients coming and going; fails
    /// on an upward trend of the server's RSS, fds, threads or tasks, or on an unreported
    /// loss (docs/security.md "Soak").
    Soak(soak::Opts),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Ingest of Metadata events, no watcher: events per server CPU-second vs split+route.
    IngestMetadata,
    /// Ingest of the mixed fixture, no watcher.
    IngestMixed,
    /// 1,000 namespace watchers over 10 HTTP/2 connections: latency, and max ingest with
    /// them vs without.
    Namespaces,
    /// 100 full-stream HTTP/2 watchers at 10 k Metadata events/s, advertising
    /// --h2-preset: delivery, latency, delivered bytes per server CPU-second vs
    /// AES-128-GCM.
    Fanout,
    /// 10 full-stream watchers: server CPU per delivered byte, HTTP/2 on one connection
    /// vs HTTP/1.1.
    #[value(name = "h1-vs-h2")]
    H1VsH2,
    /// 1,000 idle HTTP/2 watchers: server RSS per watcher.
    Idle,
    /// Three replicas on one NATS JetStream stream (`--bus=nats`, needs `nats-server`)
    /// beside one replica with the memory bus: max ingest and server CPU per event, and
    /// push->watcher latency with 30 HTTP/2 watchers spread over the replicas. Not in `all`.
    ScaleOut,
    /// The performance table's rows (ingest-metadata, ingest-mixed, namespaces, fanout
    /// with 16 KiB frames, fanout with 1 MiB frames), then h1-vs-h2 and idle; ends with
    /// the table as markdown.
    All,
}

/// The two kinds of HTTP/2 client the server must serve well.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum H2Preset {
    /// Go before 1.24: 16 KiB frames, 4 MiB stream window.
    #[value(name = "16KiB")]
    Frames16K,
    /// Go 1.24 and later (kube-aggregator): 1 MiB frames, 4 MiB stream window.
    #[value(name = "1MiB")]
    Frames1M,
    /// HTTP/2's own defaults: 16 KiB frames, 65,535-byte windows.
    #[value(name = "defaults")]
    Defaults,
}

impl H2Preset {
    fn settings(self) -> H2Settings {
        match self {
            H2Preset::Frames16K => H2Settings::GO_BEFORE_1_24,
            H2Preset::Frames1M => H2Settings::GO_1_24,
            H2Preset::Defaults => H2Settings::PROTOCOL_DEFAULTS,
        }
    }
}

impl Opts {
    /// `preset`'s settings with the --h2-* overrides.
    fn h2(&self, preset: H2Preset) -> H2Settings {
        let p = preset.settings();
        H2Settings {
            max_frame: self.h2_max_frame.unwrap_or(p.max_frame),
            stream_window: self.h2_stream_window.unwrap_or(p.stream_window),
            connection_window: self.h2_connection_window.unwrap_or(p.connection_window),
        }
    }
}

/// "16384", "16KiB", "4MiB", "1GiB" → bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let (num, unit) = [("gib", 1u64 << 30), ("mib", 1 << 20), ("kib", 1 << 10)]
        .iter()
        .find_map(|(suffix, unit)| lower.strip_suffix(suffix).map(|n| (n.trim(), *unit)))
        .unwrap_or((lower.as_str(), 1));
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{s:?}: a size in bytes, or with a KiB, MiB or GiB suffix"))
}

/// HTTP/2's bounds on SETTINGS_MAX_FRAME_SIZE (RFC 9113 §6.5.2).
fn parse_h2_frame(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    u32::try_from(n)
        .ok()
        .filter(|n| (16_384..=16_777_215).contains(n))
        .ok_or_else(|| format!("{s:?}: HTTP/2 frames are 16384 to 16777215 bytes"))
}

/// HTTP/2's bounds on a flow-control window: 65,535 (the default) to 2^31 - 1.
fn parse_h2_window(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    u32::try_from(n)
        .ok()
        .filter(|n| (65_535..=(1 << 31) - 1).contains(n))
        .ok_or_else(|| format!("{s:?}: HTTP/2 windows are 65535 to 2147483647 bytes"))
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Fixture {
    /// tests/fixtures/audit/audit2rbac-demo.log: Metadata-level events, ~0.7 KB.
    Metadata,
    /// tests/fixtures/audit/all-events.jsonl: every level, ~5 KB on average.
    Mixed,
}

impl Fixture {
    fn file(self) -> &'static str {
        match self {
            Fixture::Metadata => "audit2rbac-demo.log",
            Fixture::Mixed => "all-events.jsonl",
        }
    }
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    match s.parse::<f64>() {
        Ok(r) if (1.0..=10_000_000.0).contains(&r) => Ok(Rate::PerSecond(r)),
        _ => Err(format!("{s:?}: events per second (1 to 10000000) or `max`")),
    }
}

/// How a load generator run ends: its last line only when a check failed.
const VERDICT: Verdict = Verdict {
    name: "loadgen",
    log_level: "warn",
    passed: None,
    failed: "FAILED (see `check` above)",
};

fn main() -> ExitCode {
    server::generator_main(|| {
        let mut opts = Opts::parse();
        let verdict = match opts.mode {
            Some(Mode::Soak(_)) => soak::VERDICT,
            None => VERDICT,
        };
        (verdict, async move {
            match opts.mode.take() {
                Some(Mode::Soak(soak)) => soak::run(soak).await,
                None => run(opts).await,
            }
        })
    })
}

/// `Ok(false)`: it ran, but a check failed.
async fn run(opts: Opts) -> anyhow::Result<bool> {
    let duration = Duration::from_secs_f64(opts.duration.unwrap_or(10.0).clamp(0.5, 600.0));
    let mut ok = true;
    let mut results = Vec::new();
    if opts.smoke {
        let o = run_phase(smoke_phase(&opts)).await?;
        ok &= o.passed();
        return Ok(ok);
    }
    let Some(scenario) = opts.scenario else {
        let o = run_phase(custom_phase(&opts, duration)).await?;
        return Ok(o.passed());
    };
    // The scenarios' servers take the --server-arg flags after the table's own, so that
    // a row can be rerun with, say, `--authorization-granularity=resource` or `--redact=`.
    let _ = SCENARIO_SERVER_ARGS.set(opts.server_args.clone());
    let chosen = opts.h2_preset.unwrap_or(H2Preset::Frames1M);
    // The table's rows first (the fan-out row once per kind of client), then the checks
    // of earlier issues.
    let all = [
        (Scenario::IngestMetadata, chosen),
        (Scenario::IngestMixed, chosen),
        (Scenario::Namespaces, chosen),
        (Scenario::Fanout, H2Preset::Frames16K),
        (Scenario::Fanout, H2Preset::Frames1M),
        (Scenario::H1VsH2, chosen),
        (Scenario::Idle, chosen),
    ];
    let list: &[(Scenario, H2Preset)] = if scenario == Scenario::All {
        &all
    } else {
        &[(scenario, chosen)]
    };
    for &(s, preset) in list {
        let (result, passed) = run_scenario(s, &opts, opts.h2(preset), duration).await?;
        println!("{}", result.line());
        println!();
        ok &= passed;
        results.push(result);
    }
    print_summary(&results);
    print_table(&results);
    Ok(ok)
}

// ---------------------------------------------------------------------------------------
// Phases: one server process, watchers opened, pushers for a duration, a bounded drain.

/// The run's time points. `start` is also the epoch of the send times in the auditIDs.
#[derive(Clone, Copy)]
pub struct Clock {
    pub start: Instant,
    pub push_end: Instant,
    pub drain_end: Instant,
}

impl Clock {
    pub fn nanos_since_start(&self) -> u64 {
        self.nanos_at(Instant::now())
    }

    pub fn nanos_at(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }
}

struct Phase {
    title: String,
    fixture: Fixture,
    namespaces: usize,
    pushers: usize,
    batch: usize,
    rate: Rate,
    duration: Duration,
    groups: Vec<Group>,
    /// Watchers sit this long before the push, and the server's RSS is read then.
    idle: Option<Duration>,
    /// Flags for the server after the generated ones.
    server_args: Vec<String>,
    /// `Some(n)`: n replicas sharing one NATS JetStream stream (`--bus=nats`), pushers
    /// and watchers spread over them; `None`: one replica, memory bus.
    nats_replicas: Option<usize>,
    /// What the HTTP/2 watchers' connections advertise.
    h2: H2Settings,
}

impl Phase {
    fn new(title: impl Into<String>, fixture: Fixture, rate: Rate, duration: Duration) -> Phase {
        Phase {
            title: title.into(),
            fixture,
            namespaces: 0,
            pushers: 3,
            batch: 400,
            rate,
            duration,
            groups: Vec::new(),
            idle: None,
            server_args: TABLE_SERVER_FLAGS.iter().map(|s| s.to_string()).collect(),
            nats_replicas: None,
            h2: H2Settings::GO_1_24,
        }
    }

    fn describe(&self) -> String {
        let rate = match self.rate {
            Rate::PerSecond(r) => format!("{} events/s", int(r)),
            Rate::Max => "max rate".to_owned(),
        };
        let mut watchers: Vec<String> = self
            .groups
            .iter()
            .map(|g| {
                let n = if g.per_namespace {
                    self.namespaces
                } else {
                    g.count
                };
                format!("{n} {}", g.label)
            })
            .collect();
        if watchers.is_empty() {
            watchers.push("no watcher".into());
        }
        if self.groups.iter().any(|g| g.h2_connections.is_some()) {
            watchers.push(format!("HTTP/2 clients advertise {}", self.h2.describe()));
        }
        format!(
            "{} pushers x batches of {} at {rate}, {:?} fixture{}, {:.0} s; {}",
            self.pushers,
            self.batch,
            self.fixture,
            if self.namespaces > 0 {
                format!(" over {} namespaces", self.namespaces)
            } else {
                String::new()
            },
            self.duration.as_secs_f64(),
            watchers.join(", ")
        )
    }
}

/// One watcher's result and what it should have seen.
struct Watched {
    group: usize,
    slow: bool,
    stats: WatchStats,
    expected_min: u64,
    expected_max: u64,
}

impl Watched {
    fn received(&self) -> u64 {
        self.stats.events + self.stats.dropped_reported
    }

    /// Events neither delivered nor reported dropped, once the watch had gone quiet.
    fn lost(&self) -> u64 {
        if self.stats.unfinished {
            0
        } else {
            self.expected_min.saturating_sub(self.received())
        }
    }

    /// Events not delivered yet when the drain ended with the watch still busy.
    fn in_flight(&self) -> u64 {
        if self.stats.unfinished {
            self.expected_min.saturating_sub(self.received())
        } else {
            0
        }
    }
}

struct Outcome {
    requested_rate: Option<f64>,
    pushed: PushStats,
    push_secs: f64,
    watchers: Vec<Watched>,
    /// CPU over the push, and from the first push to the last delivery.
    cpu_push: CpuUse,
    cpu_delivery: CpuUse,
    /// Server RSS (KiB): at start, after the idle wait, at the end; and its peak.
    rss_start: Option<u64>,
    rss_idle: Option<u64>,
    rss_end: Option<u64>,
    rss_peak: Option<u64>,
    generator_rss_peak: Option<u64>,
    /// CPU-seconds of each server-side process over the whole run, when there are several.
    cpu_by_process: Vec<(String, f64)>,
    metrics: Vec<String>,
    /// The server's latency histograms, scraped at the end of the phase.
    server: ServerLatency,
    baseline: Option<SplitRoute>,
}

/// The server's own latency histograms (its /metrics): each watch's delivery stages
/// (sampled), and ingest's time from a push's start to its events on the bus.
#[derive(Default)]
struct ServerLatency {
    /// queue, frame, socket: see the server's `watch::stages`.
    stages: Vec<(&'static str, PromHistogram)>,
    ingest_batch: Option<PromHistogram>,
}

/// The stages the server records, in the order an event goes through them.
const STAGES: [&str; 3] = ["queue", "frame", "socket"];
const STAGE_FAMILY: &str = "kube_audit_stream_watch_delivery_stage_seconds";
const INGEST_BATCH_FAMILY: &str = "kube_audit_stream_ingest_batch_duration_seconds";

impl ServerLatency {
    fn parse(text: &str) -> ServerLatency {
        ServerLatency {
            stages: STAGES
                .iter()
                .filter_map(|&s| {
                    PromHistogram::parse(text, STAGE_FAMILY, &format!("stage=\"{s}\""))
                        .map(|h| (s, h))
                })
                .collect(),
            ingest_batch: PromHistogram::parse(text, INGEST_BATCH_FAMILY, ""),
        }
    }

    /// "p50 0.12 ms, p99 3.4 ms" of a histogram in seconds.
    fn quantiles(h: &PromHistogram) -> String {
        let q = |p: f64| {
            h.quantile(p)
                .map_or("?".to_owned(), |v| format!("{:.2} ms", v * 1e3))
        };
        format!("p50 {}, p99 {}", q(0.5), q(0.99))
    }

    /// One line: push→bus, then each delivery stage, with what each was measured on.
    fn line(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(h) = self.ingest_batch.as_ref().filter(|h| h.count > 0.0) {
            parts.push(format!(
                "ingest push->bus {} ({} batches)",
                Self::quantiles(h),
                h.count
            ));
        }
        let sampled = self.stages.first().map_or(0.0, |(_, h)| h.count);
        if sampled > 0.0 {
            let stages: Vec<String> = self
                .stages
                .iter()
                .map(|(s, h)| format!("{s} {}", Self::quantiles(h)))
                .collect();
            parts.push(format!(
                "watch stages ({sampled} sampled frames): {}",
                stages.join("; ")
            ));
        }
        (!parts.is_empty()).then(|| parts.join(" | "))
    }

    /// "0.1 / 2.3 ms" (p50 / p99) of one delivery stage.
    fn stage_cell(&self, stage: &str) -> String {
        self.stages
            .iter()
            .find(|(s, _)| *s == stage)
            .and_then(|(_, h)| Some((h.quantile(0.5)?, h.quantile(0.99)?)))
            .map_or("?".to_owned(), |(a, b)| {
                format!("{:.2} / {:.2} ms", a * 1e3, b * 1e3)
            })
    }
}

impl Outcome {
    fn fast(&self) -> impl Iterator<Item = &Watched> {
        self.watchers.iter().filter(|w| !w.slow)
    }

    fn latency(&self) -> Histogram {
        let mut h = Histogram::default();
        self.fast().for_each(|w| h.merge(&w.stats.latency));
        h
    }

    fn p99_ms(&self) -> Option<f64> {
        self.latency().percentile(99.0).map(|v| v as f64 / 1e6)
    }

    fn lost(&self) -> u64 {
        self.watchers.iter().map(Watched::lost).sum()
    }

    fn order_errors(&self) -> u64 {
        self.watchers.iter().map(|w| w.stats.order_errors).sum()
    }

    fn delivered_events(&self) -> u64 {
        self.watchers.iter().map(|w| w.stats.events).sum()
    }

    fn expected_events(&self) -> u64 {
        self.watchers.iter().map(|w| w.expected_min).sum()
    }

    fn delivered_bytes(&self) -> u64 {
        self.watchers.iter().map(|w| w.stats.bytes).sum()
    }

    fn ingest_rate(&self) -> f64 {
        self.pushed.events as f64 / self.push_secs
    }

    /// Pushers reached less than 95 % of the rate asked for.
    fn rate_shortfall(&self) -> Option<String> {
        let want = self.requested_rate?;
        let got = self.ingest_rate();
        (got < 0.95 * want).then(|| {
            format!(
                "rate not kept: the pushers reached {} of the {} events/s asked for (server answers slow, or the generator busy)",
                int(got),
                int(want)
            )
        })
    }

    /// Why a figure of this phase may be the generator's (or the machine's) limit.
    fn limits(&self) -> Vec<String> {
        let cpu = if self.watchers.is_empty() {
            &self.cpu_push
        } else {
            &self.cpu_delivery
        };
        self.rate_shortfall()
            .into_iter()
            .chain(cpu.limits())
            .collect()
    }

    fn passed(&self) -> bool {
        self.lost() == 0
            && self.order_errors() == 0
            && self.pushed.failed == 0
            && self.pushed.events > 0
    }
}

/// The server's own argv: loopback, a free port, the watchers' token, mTLS ingest.
/// The server's flags for a run: loopback, `token` for the watchers (user `watcher`),
/// every pusher of `pki` allowed, AlwaysAllow; then `extra`.
pub(crate) fn server_argv(
    dir: &Path,
    pki: &client::Pki,
    token: &str,
    watcher: &str,
    extra: &[String],
) -> anyhow::Result<Vec<String>> {
    let write = |name: &str, text: &str| -> anyhow::Result<String> {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p.display().to_string())
    };
    let token_file = write("tokens.csv", &format!("{token},{watcher},uid-{watcher}\n"))?;
    let ca_file = write("ingest-ca.crt", &pki.ca_pem)?;
    let names: Vec<&str> = pki.pushers.iter().map(|p| p.name.as_str()).collect();
    let mut argv: Vec<String> = [
        "--bind-address",
        "127.0.0.1",
        "--secure-port",
        "0",
        "--token-auth-file",
        &token_file,
        "--authorization-mode",
        "AlwaysAllow",
        "--ingest-client-ca-file",
        &ca_file,
        "--ingest-allowed-names",
        &names.join(","),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(extra.iter().cloned());
    Ok(argv)
}

async fn run_phase(phase: Phase) -> anyhow::Result<Outcome> {
    println!("== {}", phase.title);
    println!("   {}", phase.describe());
    let templates = Arc::new(Templates::load(
        &push::fixture_path(phase.fixture.file()),
        phase.namespaces,
    )?);
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let pki = client::Pki::generate(phase.pushers)?;
    let token = format!("{:032x}", fastrand::u128(..));
    // Every watcher is the one loadgen user: the per-user limit would refuse the
    // scenarios' thousand watches.
    let mut extra = vec!["--max-watchers-per-user".to_owned(), "5000".to_owned()];
    extra.extend(phase.server_args.iter().cloned());
    extra.extend(SCENARIO_SERVER_ARGS.get().into_iter().flatten().cloned());
    let mut argv = server_argv(dir.path(), &pki, &token, "loadgen-watcher", &extra)?;
    let nats = match phase.nats_replicas {
        Some(_) => {
            let nats = server::NatsProcess::start().await?;
            argv.extend(["--bus=nats".to_owned(), format!("--nats-url={}", nats.url)]);
            Some(nats)
        }
        None => None,
    };
    let mut servers = Vec::new();
    for _ in 0..phase.nats_replicas.unwrap_or(1) {
        servers.push(ServerProcess::start(&argv).await?);
    }
    let nats_pid: Vec<u32> = nats.iter().map(|n| n.pid).collect();
    let result = drive(&phase, &servers, &nats_pid, &pki, &token, templates).await;
    for server in servers {
        if let Err(e) = server.stop().await {
            println!("   warning: {e:#}");
        }
    }
    drop(nats);
    let mut outcome = result?;
    // The baseline runs with the server gone, on a thread of its own.
    let bodies = outcome.pushed.sample_bodies.clone();
    outcome.baseline = tokio::task::spawn_blocking(move || measure::split_route_baseline(&bodies))
        .await
        .context("baseline task")?;
    report(&outcome);
    Ok(outcome)
}

/// Everything between the server's start and stop.
async fn drive(
    phase: &Phase,
    servers: &[ServerProcess],
    nats_pid: &[u32],
    pki: &client::Pki,
    token: &str,
    templates: Arc<Templates>,
) -> anyhow::Result<Outcome> {
    let addr = servers[0].addr;
    // A first request, so the start RSS is of a server that has served; with NATS, also
    // the wait until every replica follows the stream.
    for s in servers {
        wait_ready(s.addr, token).await?;
    }
    // RSS of the server side: the replicas (and NATS) together.
    let mut pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();
    pids.extend_from_slice(nats_pid);
    // Now, or the peak.
    let rss = |peak: bool| {
        pids.iter()
            .map(|&pid| {
                let (now, max) = measure::rss_kib(Some(pid));
                if peak { max } else { now }
            })
            .sum::<Option<u64>>()
    };
    let rss_start = rss(false);

    // Each replica gets its share of every group of watchers.
    let mut opened = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let groups: Vec<Group> = phase
            .groups
            .iter()
            .map(|g| Group {
                count: share(g.count, servers.len(), i),
                ..g.clone()
            })
            .collect();
        opened.extend(watch::open(&groups, phase.namespaces, s.addr, token, phase.h2).await?);
    }
    let rss_idle = match phase.idle {
        Some(idle) => {
            tokio::time::sleep(idle).await;
            rss(false)
        }
        None => None,
    };

    let cpu_of = |pids: &[u32]| -> Vec<f64> {
        pids.iter()
            .map(|&pid| measure::process_cpu(Some(pid)).unwrap_or(0.0))
            .collect()
    };
    let cpu_before = cpu_of(&pids);
    let sampler = CpuSampler::start(pids.clone());
    let start = Instant::now();
    let push_end = start + phase.duration;
    let clock = Clock {
        start,
        push_end,
        drain_end: push_end + MAX_DRAIN,
    };
    let readers: Vec<_> = opened
        .into_iter()
        .map(|w| {
            let (group, scope, slow) = (w.group, w.scope, w.slow);
            (group, scope, slow, tokio::spawn(watch::read(w, clock)))
        })
        .collect();
    let pushers: Vec<_> = pki
        .pushers
        .iter()
        .enumerate()
        .map(|(i, cert)| {
            let pusher = Pusher {
                index: i,
                count: phase.pushers,
                // Each kube-apiserver's webhook lands on some replica.
                addr: servers[i % servers.len()].addr,
                tls: client::connector(b"http/1.1", Some(cert))?,
                templates: templates.clone(),
                batch: phase.batch,
                rate: phase.rate,
                clock,
            };
            Ok(tokio::spawn(pusher.run()))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut pushed = PushStats::default();
    for p in pushers {
        pushed.merge(p.await.context("pusher task")?);
    }
    // The push phase lasts its duration, or until the last answer when that came later
    // (a push started just before the end), so the rate is never flattered.
    let push_done = pushed.last_answer.unwrap_or(push_end).max(push_end);

    let mut watchers = Vec::new();
    for (group, scope, slow, r) in readers {
        let stats = r.await.context("watcher task")?;
        let (min, uncertain) = match scope {
            Scope::All => (pushed.events, pushed.uncertain_events),
            Scope::Namespace(k) => (
                pushed.ns_events.get(k).copied().unwrap_or(0),
                pushed.ns_uncertain.get(k).copied().unwrap_or(0),
            ),
        };
        watchers.push(Watched {
            group,
            slow,
            stats,
            expected_min: min,
            expected_max: min + uncertain,
        });
    }
    let last_delivery = watchers
        .iter()
        .filter_map(|w| w.stats.last_event)
        .max()
        .unwrap_or(push_done)
        .max(push_done);
    let samples = sampler.finish(&pids).await;
    // With several processes on the server side, which one spent what.
    let mut cpu_by_process: Vec<(String, f64)> = cpu_of(&pids)
        .iter()
        .zip(&cpu_before)
        .enumerate()
        .map(|(i, (after, before))| {
            let name = if i < servers.len() {
                format!("replica {}", i + 1)
            } else {
                "NATS".to_owned()
            };
            (name, after - before)
        })
        .collect();
    if cpu_by_process.len() == 1 {
        cpu_by_process.clear();
    }
    let (rss_end, rss_peak) = (rss(false), rss(true));
    let (metrics, server) = scrape_metrics(addr, token).await;
    Ok(Outcome {
        requested_rate: match phase.rate {
            Rate::PerSecond(r) => Some(r),
            Rate::Max => None,
        },
        push_secs: push_done.duration_since(start).as_secs_f64(),
        pushed,
        watchers,
        cpu_push: measure::cpu_between(&samples, start, push_done),
        cpu_delivery: measure::cpu_between(&samples, start, last_delivery),
        rss_start,
        rss_idle,
        rss_end,
        rss_peak,
        generator_rss_peak: measure::rss_kib(None).1,
        cpu_by_process,
        metrics,
        server,
        baseline: None,
    })
}

/// The `i`-th of `n` shares of `count`, the first ones larger by one.
fn share(count: usize, n: usize, i: usize) -> usize {
    count / n + usize::from(i < count % n)
}

/// Wait until the server answers `/readyz` (at once with the memory bus; with NATS, once
/// it follows the stream).
async fn wait_ready(addr: SocketAddr, token: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tls = client::connector(b"http/1.1", None)?;
        let mut conn = client::connect_h1(&tls, addr, None).await?;
        let req = client::request(Method::GET, addr, "/readyz", Some(token), Bytes::new())?;
        conn.ready().await?;
        if conn.send_request(req).await?.status() == StatusCode::OK {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the server at {addr} did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server's counters of interest, from `/metrics`, and its latency histograms.
async fn scrape_metrics(addr: SocketAddr, token: &str) -> (Vec<String>, ServerLatency) {
    let fetch = async {
        let tls = client::connector(b"http/1.1", None)?;
        let mut conn = client::connect_h1(&tls, addr, None).await?;
        let req = client::request(Method::GET, addr, "/metrics", Some(token), Bytes::new())?;
        conn.ready().await?;
        let resp = conn.send_request(req).await?;
        ensure!(
            resp.status() == StatusCode::OK,
            "GET /metrics: {}",
            resp.status()
        );
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    const WANTED: [&str; 5] = [
        "published_events_total",
        "dropped_events_total",
        "truncated_events_total",
        "oversized_events_total",
        "stalled_total",
    ];
    match tokio::time::timeout(Duration::from_secs(30), fetch).await {
        Ok(Ok(text)) => (
            text.lines()
                .filter(|l| !l.starts_with('#') && WANTED.iter().any(|w| l.contains(w)))
                .map(str::to_owned)
                .collect(),
            ServerLatency::parse(&text),
        ),
        Ok(Err(e)) => (
            vec![format!("(GET /metrics failed: {e:#})")],
            ServerLatency::default(),
        ),
        Err(_) => (
            vec!["(GET /metrics timed out)".to_owned()],
            ServerLatency::default(),
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Phases from flags.

fn custom_phase(opts: &Opts, duration: Duration) -> Phase {
    let mut p = Phase::new(
        "custom run",
        opts.fixture.unwrap_or(Fixture::Mixed),
        opts.rate,
        duration,
    );
    // The server's own defaults (budget included), plus --server-arg: the table's flags
    // are for the scenarios.
    p.server_args.clear();
    p.pushers = opts.pushers as usize;
    p.batch = opts.batch as usize;
    p.h2 = opts.h2(opts.h2_preset.unwrap_or(H2Preset::Frames1M));
    p.namespaces = opts.namespaces as usize;
    p.nats_replicas = opts.nats_replicas.map(|n| n as usize);
    let proto = |label: &str| -> (String, Option<usize>) {
        if opts.http2 {
            let c = opts.connections as usize;
            (h2_group(label, 0, false, c).label, Some(c))
        } else {
            (format!("{label} (HTTP/1.1)"), None)
        }
    };
    if opts.watchers > 0 {
        let (label, h2_connections) = proto("full-stream watchers");
        p.groups.push(Group {
            label,
            count: opts.watchers as usize,
            per_namespace: false,
            h2_connections,
            slow: false,
        });
    }
    if opts.namespace_watchers && opts.namespaces > 0 {
        let (label, h2_connections) = proto("namespace watchers");
        p.groups.push(Group {
            label,
            count: 0,
            per_namespace: true,
            h2_connections,
            slow: false,
        });
    }
    if opts.slow_watchers > 0 {
        p.groups.push(Group {
            label: "slow watchers (HTTP/1.1, 4 KiB/s)".into(),
            count: opts.slow_watchers as usize,
            per_namespace: false,
            h2_connections: None,
            slow: true,
        });
    }
    p.server_args.extend(opts.server_args.iter().cloned());
    p
}

/// Every kind of watcher, briefly, with a small per-watcher budget so that the drop and
/// truncation reports are exercised too: the full-stream watchers get more than the
/// budget and are told of drops; each namespace watcher gets 1/8 of it, within budget.
fn smoke_phase(opts: &Opts) -> Phase {
    let mut p = Phase::new(
        "smoke",
        opts.fixture.unwrap_or(Fixture::Mixed),
        Rate::PerSecond(400.0),
        Duration::from_secs_f64(opts.duration.unwrap_or(3.0).clamp(0.5, 60.0)),
    );
    p.pushers = 2;
    p.batch = 50;
    p.namespaces = 8;
    // The smallest frames and windows unless asked otherwise: the most HTTP/2 flow
    // control for a short run.
    p.h2 = opts.h2(opts.h2_preset.unwrap_or(H2Preset::Defaults));
    p.server_args = vec![
        "--watcher-bytes-per-second=262144".into(),
        "--watcher-burst-bytes=524288".into(),
    ];
    p.server_args.extend(opts.server_args.iter().cloned());
    let group = |label: &str, count, per_namespace, h2_connections, slow| Group {
        label: label.into(),
        count,
        per_namespace,
        h2_connections,
        slow,
    };
    p.groups = vec![
        group(
            "namespace watchers (HTTP/2 over 2 connections)",
            0,
            true,
            Some(2),
            false,
        ),
        group(
            "full-stream watchers (HTTP/2, 1 connection)",
            2,
            false,
            Some(1),
            false,
        ),
        group("full-stream watchers (HTTP/1.1)", 2, false, None, false),
        group("slow watcher (HTTP/1.1, 4 KiB/s)", 1, false, None, true),
    ];
    p
}

// ---------------------------------------------------------------------------------------
// Scenarios: one per row of the performance table.

/// A scenario's result: its figures against the table's targets.
struct ScenarioResult {
    name: &'static str,
    figures: String,
    /// `None`: no verdict possible (e.g. no openssl).
    met: Option<bool>,
    limits: Vec<String>,
    /// Its row of the performance table, for the scenarios that are one.
    row: Option<TableRow>,
}

/// A row of the performance table (issue 24): the figure as the ratio the table states,
/// its baseline from the same run, the goal.
struct TableRow {
    figure: String,
    result: String,
    baseline: String,
    goal: &'static str,
    /// For the rows with watchers: where the time went.
    latency: Option<LatencyCells>,
}

/// p50 / p99 of each part of an event's way, for the rows with watchers.
struct LatencyCells {
    /// The generator's push → watcher, every event of the fast watchers.
    end_to_end: String,
    /// The server's push → bus, per batch.
    ingest: String,
    /// The server's delivery stages, sampled: queue, frame, socket.
    stages: [String; 3],
}

impl LatencyCells {
    fn of(o: &Outcome) -> LatencyCells {
        let lat = o.latency();
        let end_to_end = match (lat.percentile(50.0), lat.percentile(99.0)) {
            (Some(a), Some(b)) => format!("{:.2} / {:.2} ms", a as f64 / 1e6, b as f64 / 1e6),
            _ => "?".to_owned(),
        };
        let ingest = o
            .server
            .ingest_batch
            .as_ref()
            .and_then(|h| Some((h.quantile(0.5)?, h.quantile(0.99)?)))
            .map_or("?".to_owned(), |(a, b)| {
                format!("{:.2} / {:.2} ms", a * 1e3, b * 1e3)
            });
        LatencyCells {
            end_to_end,
            ingest,
            stages: STAGES.map(|s| o.server.stage_cell(s)),
        }
    }
}

impl ScenarioResult {
    fn line(&self) -> String {
        let verdict = match self.met {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "NO VERDICT",
        };
        let limited = if self.limits.is_empty() {
            "not limited by the generator or other load".to_owned()
        } else {
            format!("LIMITED: {}", self.limits.join("; "))
        };
        format!(
            "RESULT {}: {}; {verdict}; {limited}",
            self.name, self.figures
        )
    }
}

fn print_summary(results: &[ScenarioResult]) {
    println!("== summary");
    println!();
    println!("| scenario | result | target met | limited by the generator or other load |");
    println!("|---|---|---|---|");
    for r in results {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "n/a",
        };
        let limited = if r.limits.is_empty() {
            "no".to_owned()
        } else {
            format!("yes: {}", r.limits.join("; "))
        };
        println!("| {} | {} | {met} | {limited} |", r.name, r.figures);
    }
    println!();
}

/// The performance table (issue 24) of the scenarios that are one of its rows, as
/// markdown for BENCHMARKS.md; then where the watcher rows' time went.
fn print_table(results: &[ScenarioResult]) {
    let rows: Vec<(&ScenarioResult, &TableRow)> = results
        .iter()
        .filter_map(|r| r.row.as_ref().map(|row| (r, row)))
        .collect();
    if rows.is_empty() {
        return;
    }
    println!("== the performance table (for BENCHMARKS.md)");
    println!();
    println!(
        "| figure | result | baseline (same run) | goal | met | limited by the generator or other load |"
    );
    println!("|---|---|---|---|---|---|");
    for (r, row) in &rows {
        let met = match r.met {
            Some(true) => "met",
            Some(false) => "not met",
            None => "no verdict",
        };
        let limited = if r.limits.is_empty() {
            "no".to_owned()
        } else {
            format!("yes: {}", r.limits.join("; "))
        };
        println!(
            "| {} | {} | {} | {} | {met} | {limited} |",
            row.figure, row.result, row.baseline, row.goal
        );
    }
    let latency: Vec<(&str, &LatencyCells)> = rows
        .iter()
        .filter_map(|(r, row)| row.latency.as_ref().map(|l| (r.name, l)))
        .collect();
    if latency.is_empty() {
        return;
    }
    println!();
    println!(
        "Where the time goes, p50 / p99 (the server's stages sampled, one frame in 16 per watch):"
    );
    println!();
    println!(
        "| scenario | push → watcher (generator) | push → bus (server, per batch) | queue | frame | socket |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, l) in latency {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            l.end_to_end, l.ingest, l.stages[0], l.stages[1], l.stages[2]
        );
    }
    println!();
}

fn watcher_fixture(opts: &Opts) -> Fixture {
    opts.fixture.unwrap_or(Fixture::Metadata)
}

fn h2_group(label: &str, count: usize, per_namespace: bool, connections: usize) -> Group {
    Group {
        label: format!(
            "{label} (HTTP/2 over {connections} connection{})",
            if connections == 1 { "" } else { "s" }
        ),
        count,
        per_namespace,
        h2_connections: Some(connections),
        slow: false,
    }
}

/// `Ok((result, passed))`: `passed` is false when events were lost unreported or a push
/// failed, whatever the figures. HTTP/2 watchers advertise `h2`.
async fn run_scenario(
    s: Scenario,
    opts: &Opts,
    h2: H2Settings,
    duration: Duration,
) -> anyhow::Result<(ScenarioResult, bool)> {
    Ok(match s {
        Scenario::IngestMetadata => ingest("ingest-metadata", Fixture::Metadata, duration).await?,
        Scenario::IngestMixed => ingest("ingest-mixed", Fixture::Mixed, duration).await?,
        Scenario::Namespaces => namespaces(watcher_fixture(opts), duration, h2).await?,
        Scenario::Fanout => fanout(watcher_fixture(opts), duration, h2).await?,
        Scenario::H1VsH2 => h1_vs_h2(watcher_fixture(opts), duration, h2).await?,
        Scenario::Idle => idle(watcher_fixture(opts), h2).await?,
        Scenario::ScaleOut => scale_out(watcher_fixture(opts), duration, h2).await?,
        Scenario::All => unreachable!("expanded by the caller"),
    })
}

/// The goal of the ingest rows: events per server CPU-second ÷ split+route on one core.
const INGEST_GOAL: f64 = 0.7;

/// Ingest events per server CPU-second, and the split+route baseline's per core.
async fn ingest(
    name: &'static str,
    fixture: Fixture,
    duration: Duration,
) -> anyhow::Result<(ScenarioResult, bool)> {
    let o = run_phase(Phase::new(name, fixture, Rate::Max, duration)).await?;
    let per_cpu = o.pushed.events as f64 / o.cpu_push.server.max(1e-9);
    let base = o.baseline.map(|b| b.events_per_second);
    let ratio = base.map(|b| per_cpu / b);
    let ratio_text = ratio.map_or("?".into(), |r| format!("{r:.2}"));
    let figures = format!(
        "{} events/s on {:.2} server cores = {} events per server CPU-s; split+route {} events/s on one core; ratio {ratio_text} (target >= {INGEST_GOAL})",
        int(o.ingest_rate()),
        o.cpu_push.server_cores(),
        int(per_cpu),
        base.map_or("?".into(), int),
    );
    let what = match fixture {
        Fixture::Metadata => "Metadata events (`audit2rbac-demo.log`)",
        Fixture::Mixed => "mixed real events (`all-events.jsonl`)",
    };
    let row = TableRow {
        figure: format!(
            "ingest, {what}: events per server CPU-s ÷ a bare serde_json split + routing read of the same bodies on one core"
        ),
        result: format!(
            "**{ratio_text}** ({} ev per server CPU-s; {} ev/s on {:.2} cores)",
            int(per_cpu),
            int(o.ingest_rate()),
            o.cpu_push.server_cores()
        ),
        baseline: format!(
            "split + routing read {} ev/s on one core",
            base.map_or("?".into(), int)
        ),
        goal: "≥ 0.7",
        latency: None,
    };
    Ok((
        ScenarioResult {
            name,
            figures,
            met: ratio.map(|r| r >= INGEST_GOAL),
            limits: o.limits(),
            row: Some(row),
        },
        o.passed(),
    ))
}

/// One replica on the memory bus, then on NATS, then three on NATS: ingest cost per
/// event (every server-side process counted, NATS included), and latency.
async fn scale_out(
    fixture: Fixture,
    duration: Duration,
    h2: H2Settings,
) -> anyhow::Result<(ScenarioResult, bool)> {
    const REPLICAS: usize = 3;
    let phase = |n: u8, what: &str, replicas: Option<usize>, watchers: bool| {
        let rate = if watchers {
            Rate::PerSecond(TABLE_RATE)
        } else {
            Rate::Max
        };
        let mut p = Phase::new(format!("scale-out {n}/5: {what}"), fixture, rate, duration);
        p.nats_replicas = replicas;
        p.h2 = h2;
        if watchers {
            p.groups = vec![h2_group("full-stream watchers", 30, false, 3)];
        }
        p
    };
    let mem = run_phase(phase(1, "max ingest, one replica, memory bus", None, false)).await?;
    let one = run_phase(phase(2, "max ingest, one replica + NATS", Some(1), false)).await?;
    let three = run_phase(phase(
        3,
        "max ingest, 3 replicas + NATS",
        Some(REPLICAS),
        false,
    ))
    .await?;
    let lat_mem = run_phase(phase(
        4,
        "30 watchers at 10 k events/s, one replica",
        None,
        true,
    ))
    .await?;
    let lat_three = run_phase(phase(
        5,
        "30 watchers at 10 k events/s spread over 3 replicas + NATS",
        Some(REPLICAS),
        true,
    ))
    .await?;
    let per_event = |o: &Outcome| 1e6 * o.cpu_push.server / (o.pushed.events.max(1) as f64);
    // The replica's own share: its CPU without NATS's.
    let replica_per_event = |o: &Outcome| {
        let cpu: f64 = o
            .cpu_by_process
            .iter()
            .filter(|(n, _)| n != "NATS")
            .map(|(_, c)| c)
            .sum();
        1e6 * cpu / (o.pushed.events.max(1) as f64)
    };
    let base = per_event(&mem).max(1e-9);
    let cost = per_event(&one) / base;
    let ms = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.1} ms"));
    let figures = format!(
        "CPU-us per ingested event: memory bus {:.2}; one replica + NATS {:.2} = x{cost:.2} (target <= 2; the replica alone x{:.2}); {REPLICAS} replicas + NATS {:.2} = x{:.2}; max ingest {} / {} / {} events/s; p99 push->watcher {} on one replica vs {} across {REPLICAS} (10 per replica); {} of {} vs {} of {} delivered",
        per_event(&mem),
        per_event(&one),
        replica_per_event(&one) / base,
        per_event(&three),
        per_event(&three) / base,
        int(mem.ingest_rate()),
        int(one.ingest_rate()),
        int(three.ingest_rate()),
        ms(lat_mem.p99_ms()),
        ms(lat_three.p99_ms()),
        lat_mem.delivered_events(),
        lat_mem.expected_events(),
        lat_three.delivered_events(),
        lat_three.expected_events(),
    );
    let all = [&mem, &one, &three, &lat_mem, &lat_three];
    let limits = labelled(&[
        ("phase 1", &mem),
        ("phase 2", &one),
        ("phase 3", &three),
        ("phase 4", &lat_mem),
        ("phase 5", &lat_three),
    ]);
    Ok((
        ScenarioResult {
            name: "scale-out",
            figures,
            met: Some(cost <= 2.0),
            limits,
            row: None,
        },
        all.iter().all(|o| o.passed()),
    ))
}

/// 1,000 namespace watchers over 10 HTTP/2 connections: latency at the table's rate, then
/// max ingest with them and without, in the same run. The row's figure is events per
/// server CPU-second with them ÷ without (the delivery's CPU counted: from the first push
/// to the last delivery); max ingest with ÷ without is printed beside it.
async fn namespaces(
    fixture: Fixture,
    duration: Duration,
    h2: H2Settings,
) -> anyhow::Result<(ScenarioResult, bool)> {
    const N: usize = 1000;
    const GOAL: f64 = 0.8;
    let watchers = || vec![h2_group("namespace watchers", 0, true, 10)];
    let mut p1 = Phase::new(
        "namespaces 1/3: latency at 10 k events/s",
        fixture,
        Rate::PerSecond(TABLE_RATE),
        duration,
    );
    p1.namespaces = N;
    p1.groups = watchers();
    p1.h2 = h2;
    let o1 = run_phase(p1).await?;
    let mut p2 = Phase::new(
        "namespaces 2/3: max ingest with the watchers",
        fixture,
        Rate::Max,
        duration,
    );
    p2.namespaces = N;
    p2.groups = watchers();
    p2.h2 = h2;
    let o2 = run_phase(p2).await?;
    let mut p3 = Phase::new(
        "namespaces 3/3: max ingest without watchers",
        fixture,
        Rate::Max,
        duration,
    );
    p3.namespaces = N;
    let o3 = run_phase(p3).await?;
    let p99 = o1.p99_ms();
    let per_cpu = |o: &Outcome| o.pushed.events as f64 / o.cpu_delivery.server.max(1e-9);
    let cpu_ratio = per_cpu(&o2) / per_cpu(&o3).max(1e-9);
    let rate_ratio = o2.ingest_rate() / o3.ingest_rate().max(1e-9);
    let figures = format!(
        "events per server CPU-s with the watchers {} vs {} without = {cpu_ratio:.2} (target >= {GOAL}); max ingest {} events/s with them vs {} without = {rate_ratio:.2}; {} of {} events delivered at max ingest; at {} events/s p99 push->watcher {}, {} of {} delivered",
        int(per_cpu(&o2)),
        int(per_cpu(&o3)),
        int(o2.ingest_rate()),
        int(o3.ingest_rate()),
        o2.delivered_events(),
        o2.expected_events(),
        int(o1.ingest_rate()),
        p99.map_or("?".into(), |v| format!("{v:.1} ms")),
        o1.delivered_events(),
        o1.expected_events(),
    );
    let row = TableRow {
        figure: "1,000 namespace watchers over 10 HTTP/2 connections at max ingest: events per server CPU-s with them ÷ without".into(),
        result: format!(
            "**{cpu_ratio:.2}** ({} vs {} ev per server CPU-s; max ingest {} vs {} ev/s = {rate_ratio:.2}; {:.2} % delivered)",
            int(per_cpu(&o2)),
            int(per_cpu(&o3)),
            int(o2.ingest_rate()),
            int(o3.ingest_rate()),
            100.0 * o2.delivered_events() as f64 / o2.expected_events().max(1) as f64,
        ),
        baseline: format!(
            "the same server without watchers: {} ev per server CPU-s",
            int(per_cpu(&o3))
        ),
        goal: "≥ 0.8",
        latency: Some(LatencyCells::of(&o2)),
    };
    let limits = labelled(&[("phase 1", &o1), ("phase 2", &o2), ("phase 3", &o3)]);
    Ok((
        ScenarioResult {
            name: "namespaces",
            figures,
            met: Some(cpu_ratio >= GOAL),
            limits,
            row: Some(row),
        },
        o1.passed() && o2.passed() && o3.passed(),
    ))
}

/// 100 full-stream HTTP/2 watchers at 10 k events/s, advertising `h2`: delivered share,
/// p99 push→watcher, delivered bytes per server CPU-second ÷ AES-128-GCM on one core.
async fn fanout(
    fixture: Fixture,
    duration: Duration,
    h2: H2Settings,
) -> anyhow::Result<(ScenarioResult, bool)> {
    const GOAL_P99_MS: f64 = 50.0;
    const GOAL_AES: f64 = 0.4;
    let name = if h2 == H2Settings::GO_BEFORE_1_24 {
        "fanout-16KiB"
    } else if h2 == H2Settings::GO_1_24 {
        "fanout-1MiB"
    } else {
        "fanout"
    };
    let mut p = Phase::new(
        format!("{name}: 100 full-stream HTTP/2 watchers at 10 k events/s"),
        fixture,
        Rate::PerSecond(TABLE_RATE),
        duration,
    );
    p.groups = vec![h2_group("full-stream watchers", 100, false, 10)];
    p.h2 = h2;
    let o = run_phase(p).await?;
    let aes = measure::openssl_aes_gcm().await;
    let delivered = o.delivered_events() as f64 / o.expected_events().max(1) as f64;
    let bytes_per_cpu = o.delivered_bytes() as f64 / o.cpu_delivery.server.max(1e-9);
    let ratio = aes.as_ref().ok().map(|a| bytes_per_cpu / a);
    let ratio_text = ratio.map_or("?".into(), |r| format!("{r:.2}"));
    let p99 = o.p99_ms();
    let p99_text = p99.map_or("?".into(), |v| format!("{v:.1} ms"));
    let aes_text = match &aes {
        Ok(a) => format!("{}/s", mb(*a)),
        Err(e) => format!("unknown ({e})"),
    };
    let figures = format!(
        "{:.2}% delivered ({} deliveries/s), p99 {p99_text} (target < {GOAL_P99_MS} ms); {}/s delivered per server CPU-s vs AES-128-GCM {aes_text} per CPU-s = {ratio_text} (target >= {GOAL_AES}); clients advertise {}",
        100.0 * delivered,
        int(o.delivered_events() as f64 / o.cpu_delivery.wall),
        mb(bytes_per_cpu),
        h2.describe(),
    );
    let row = TableRow {
        figure: format!(
            "100 full-stream HTTP/2 watchers at 10 k Metadata ev/s, watchers advertising {}: delivered / p99 / bytes per server CPU-s ÷ AES-128-GCM",
            h2.describe()
        ),
        result: format!(
            "**{:.2} % / {p99_text} / {ratio_text}** ({} delivered per server CPU-s)",
            100.0 * delivered,
            mb(bytes_per_cpu)
        ),
        baseline: format!("AES-128-GCM {aes_text} on one core (openssl speed)"),
        goal: "100 % / < 50 ms / ≥ 0.4",
        latency: Some(LatencyCells::of(&o)),
    };
    Ok((
        ScenarioResult {
            name,
            figures,
            met: ratio
                .map(|r| r >= GOAL_AES && delivered >= 1.0 && p99.is_some_and(|v| v < GOAL_P99_MS)),
            limits: o.limits(),
            row: Some(row),
        },
        o.passed(),
    ))
}

async fn h1_vs_h2(
    fixture: Fixture,
    duration: Duration,
    h2: H2Settings,
) -> anyhow::Result<(ScenarioResult, bool)> {
    let mut a = Phase::new(
        "h1-vs-h2 1/2: 10 watchers over HTTP/1.1",
        fixture,
        Rate::PerSecond(TABLE_RATE),
        duration,
    );
    a.groups = vec![Group {
        label: "full-stream watchers (HTTP/1.1, a connection each)".into(),
        count: 10,
        per_namespace: false,
        h2_connections: None,
        slow: false,
    }];
    let oa = run_phase(a).await?;
    let mut b = Phase::new(
        "h1-vs-h2 2/2: 10 watchers over one HTTP/2 connection",
        fixture,
        Rate::PerSecond(TABLE_RATE),
        duration,
    );
    b.groups = vec![h2_group("full-stream watchers", 10, false, 1)];
    b.h2 = h2;
    let ob = run_phase(b).await?;
    // Server CPU-nanoseconds per delivered byte.
    let per_byte = |o: &Outcome| 1e9 * o.cpu_delivery.server / o.delivered_bytes().max(1) as f64;
    let ratio = per_byte(&ob) / per_byte(&oa).max(1e-12);
    let figures = format!(
        "server CPU per delivered byte: HTTP/1.1 {:.2} ns, HTTP/2 on one connection {:.2} ns = {:.2} (target <= 1.2)",
        per_byte(&oa),
        per_byte(&ob),
        ratio
    );
    Ok((
        ScenarioResult {
            name: "h1-vs-h2",
            figures,
            met: Some(ratio <= 1.2),
            limits: labelled(&[("HTTP/1.1", &oa), ("HTTP/2", &ob)]),
            row: None,
        },
        oa.passed() && ob.passed(),
    ))
}

async fn idle(fixture: Fixture, h2: H2Settings) -> anyhow::Result<(ScenarioResult, bool)> {
    const N: usize = 1000;
    // The watchers sit idle; then one small batch per pusher shows they are live.
    let mut p = Phase::new(
        "idle: 1,000 idle HTTP/2 watchers over 10 connections",
        fixture,
        Rate::PerSecond(30.0),
        Duration::from_secs(1),
    );
    p.batch = 10;
    p.idle = Some(IDLE_SETTLE);
    p.groups = vec![h2_group("full-stream watchers", N, false, 10)];
    p.h2 = h2;
    let o = run_phase(p).await?;
    let per_watcher = match (o.rss_start, o.rss_idle) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / N as f64),
        _ => None,
    };
    let figures = format!(
        "server RSS {} before, {} with {N} idle watchers = {} per watcher (target <= 16 KiB)",
        kib(o.rss_start),
        kib(o.rss_idle),
        per_watcher.map_or("?".into(), |v| format!("{v:.1} KiB")),
    );
    Ok((
        ScenarioResult {
            name: "idle",
            figures,
            met: per_watcher.map(|v| v <= 16.0),
            // Only the idle part is measured; a short push after it does not matter here.
            limits: Vec::new(),
            row: None,
        },
        o.passed(),
    ))
}

fn labelled(outcomes: &[(&str, &Outcome)]) -> Vec<String> {
    outcomes
        .iter()
        .flat_map(|(label, o)| o.limits().into_iter().map(move |l| format!("{label}: {l}")))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The per-phase report.

/// 12345.6 → "12,346".
fn int(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

fn kib(v: Option<u64>) -> String {
    v.map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn ms(ns: u64) -> String {
    format!("{:.1} ms", ns as f64 / 1e6)
}

fn report(o: &Outcome) {
    if !o.cpu_by_process.is_empty() {
        let parts: Vec<String> = o
            .cpu_by_process
            .iter()
            .map(|(name, cpu)| format!("{name} {cpu:.2}"))
            .collect();
        println!(
            "   cpu-s      by process, push and drain: {}",
            parts.join(", ")
        );
    }
    let p = &o.pushed;
    let secs = o.push_secs;
    let wanted = o.requested_rate.map_or(String::new(), |r| {
        format!(
            " ({:.1}% of the {} asked for)",
            100.0 * o.ingest_rate() / r,
            int(r)
        )
    });
    println!(
        "   pushed     {} events in {:.1} s = {} events/s{wanted}, {}/s; {} requests, {} failed",
        p.events,
        secs,
        int(o.ingest_rate()),
        mb(p.bytes as f64 / secs),
        p.requests,
        p.failed,
    );
    for e in &p.errors {
        println!("              push error: {e}");
    }
    if !o.watchers.is_empty() {
        let expected = o.expected_events();
        let delivered = o.delivered_events();
        let dropped: u64 = o.watchers.iter().map(|w| w.stats.dropped_reported).sum();
        let truncated: u64 = o.watchers.iter().map(|w| w.stats.truncated).sum();
        let wall = o.cpu_delivery.wall;
        let frames: u64 = o.watchers.iter().map(|w| w.stats.frames).sum();
        println!(
            "   delivered  {delivered} of {expected} events expected ({:.2}%) to {} watchers, {} events/s, {}/s; {dropped} reported dropped, {truncated} truncated; {:.2} body frames per event",
            100.0 * delivered as f64 / expected.max(1) as f64,
            o.watchers.len(),
            int(delivered as f64 / wall),
            mb(o.delivered_bytes() as f64 / wall),
            frames as f64 / delivered.max(1) as f64,
        );
        let lat = o.latency();
        match (lat.percentile(50.0), lat.percentile(99.0)) {
            (Some(p50), Some(p99)) => println!(
                "   latency    push->watcher, fast watchers ({} events): p50 {}, p99 {}, max {}",
                lat.count,
                ms(p50),
                ms(p99),
                ms(lat.max)
            ),
            _ => println!("   latency    no event reached a fast watcher"),
        }
    }
    for (label, cpu) in [("push", &o.cpu_push), ("delivery", &o.cpu_delivery)] {
        if label == "delivery" && o.watchers.is_empty() {
            continue;
        }
        println!(
            "   cpu        {label} window {:.1} s: server {:.2} cores ({:.1} CPU-s), generator {:.2} cores, other processes {:.2} cores, of {}",
            cpu.wall,
            cpu.server_cores(),
            cpu.server,
            cpu.generator_cores(),
            cpu.other_cores(),
            measure::cores_available()
        );
    }
    println!(
        "   memory     server RSS {} at start{}, {} at end, peak {}; generator peak {}",
        kib(o.rss_start),
        o.rss_idle.map_or(String::new(), |v| format!(
            ", {} with the watchers idle",
            kib(Some(v))
        )),
        kib(o.rss_end),
        kib(o.rss_peak),
        kib(o.generator_rss_peak),
    );
    if let Some(b) = &o.baseline {
        println!(
            "   baseline   serde_json split + routing read of the same bodies, one core: {} events/s, {}/s",
            int(b.events_per_second),
            mb(b.bytes_per_second)
        );
    }
    for m in &o.metrics {
        println!("   server     {m}");
    }
    if let Some(line) = o.server.line() {
        println!("   stages     {line}");
    }
    let parsed: u64 = o.watchers.iter().map(|w| w.stats.parsed_lines).sum();
    let bad: u64 = o.watchers.iter().map(|w| w.stats.bad_lines).sum();
    let lines = o.delivered_events() + parsed;
    if lines > 0 && parsed * 10 > lines {
        println!(
            "   note       {parsed} of ~{lines} watch lines needed a full parse: the line shape changed? (reader cost is higher)"
        );
    }
    if bad > 0 {
        println!("   note       {bad} watch lines were not events or bookmarks of this run");
    }
    let in_flight: u64 = o.watchers.iter().map(Watched::in_flight).sum();
    if in_flight > 0 {
        println!(
            "   note       {in_flight} events were still on their way when the {} s drain ended (not counted as lost)",
            MAX_DRAIN.as_secs()
        );
    }
    let extra: u64 = o
        .watchers
        .iter()
        .map(|w| w.received().saturating_sub(w.expected_max))
        .sum();
    if extra > 0 {
        println!(
            "   note       {extra} events more than pushed in the watchers' scope (duplicates or wrong scope)"
        );
    }
    let mut errors: Vec<String> = o
        .watchers
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            w.stats
                .error
                .as_ref()
                .map(|e| format!("watcher {i} (group {}): {e}", w.group))
        })
        .collect();
    let n_errors = errors.len();
    errors.truncate(5);
    for e in errors {
        println!("   error      {e}");
    }
    if n_errors > 5 {
        println!(
            "   error      ... {} more watchers with errors",
            n_errors - 5
        );
    }
    let check = if o.passed() { "OK" } else { "FAILED" };
    println!(
        "   check      {check}: lost unreported: {}, resourceVersion order errors: {}, failed pushes: {}",
        o.lost(),
        o.order_errors(),
        p.failed
    );
    let limits = o.limits();
    if limits.is_empty() {
        println!("   limits     not limited by the generator or other load");
    } else {
        for l in limits {
            println!("   limits     {l}");
        }
    }
    println!();
}
