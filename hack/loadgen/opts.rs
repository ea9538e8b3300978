//! The load generator's flags: a scenario (`--scenario`), or a run shaped by flags; the
//! HTTP/2 settings its watchers advertise; the fixtures it pushes.

use clap::{Parser, Subcommand, ValueEnum};

use crate::client::H2Settings;
use crate::push::Rate;
use crate::soak;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Load generator for kube-audit-stream: runs the server in a child process on 127.0.0.1, pushes audit EventLists over mTLS, watches them over HTTP/1.1 or HTTP/2, and prints throughput, latency, losses, server and generator CPU, RSS and same-run baselines",
    // The flags below are the load generator's; `soak` has its own.
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Opts {
    #[command(subcommand)]
    pub(crate) mode: Option<Mode>,
    /// Run the preset for one row of the performance table (or `all`); other flags are
    /// then ignored except --duration, --fixture and the --h2-* flags.
    #[arg(long, value_enum)]
    pub(crate) scenario: Option<Scenario>,
    /// A short run of every kind of watcher (for CI): a few seconds, exit code only.
    #[arg(long, conflicts_with = "scenario")]
    pub(crate) smoke: bool,
    /// Seconds of pushing per phase [default: 10].
    #[arg(long)]
    pub(crate) duration: Option<f64>,
    /// Concurrent pushers, each a kube-apiserver replica with its own client certificate.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub(crate) pushers: u64,
    /// Events per pushed EventList.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(1..=5000))]
    pub(crate) batch: u64,
    /// Events per second, all pushers together, or `max`: back-to-back, as fast as the
    /// server answers.
    #[arg(long, default_value = "4000", value_parser = parse_rate)]
    pub(crate) rate: Rate,
    /// Which fixture the events come from [default: mixed; metadata for the watcher scenarios].
    #[arg(long, value_enum)]
    pub(crate) fixture: Option<Fixture>,
    /// Spread events over this many namespaces `ns-{k}` (0: keep the fixture's).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=5000))]
    pub(crate) namespaces: u64,
    /// Full-stream watchers that read as fast as they can.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=4000))]
    pub(crate) watchers: u64,
    /// Also one namespace watcher per namespace (needs --namespaces).
    #[arg(long, requires = "namespaces")]
    pub(crate) namespace_watchers: bool,
    /// HTTP/1.1 full-stream watchers that read 4 KiB/s while the pushers run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub(crate) slow_watchers: u64,
    /// Fast watchers use HTTP/2, multiplexed over --connections connections.
    #[arg(long)]
    pub(crate) http2: bool,
    /// HTTP/2 connections the watchers share.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub(crate) connections: u64,
    /// Run this many replicas on one NATS JetStream stream (`--bus=nats`; needs
    /// `nats-server` on the PATH), pushers and watchers spread over them.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10))]
    pub(crate) nats_replicas: Option<u64>,
    /// The HTTP/2 settings the watchers advertise: `16KiB` (Go before 1.24 and most
    /// clients: 16 KiB frames, a 4 MiB stream window, a 1 GiB connection window), `1MiB`
    /// (Go 1.24 and later, as kube-aggregator: 1 MiB frames, the same windows) or
    /// `defaults` (HTTP/2's own: 16 KiB frames, 65,535-byte windows). `--scenario all`
    /// runs the fan-out row with the first two [default: 1MiB; defaults for --smoke,
    /// the most flow control].
    #[arg(long, value_enum, ignore_case = true)]
    pub(crate) h2_preset: Option<H2Preset>,
    /// Overrides the preset's largest frame the watchers take, in bytes (or with a KiB
    /// or MiB suffix), 16KiB to 16MiB - 1.
    #[arg(long, value_parser = parse_h2_frame)]
    pub(crate) h2_max_frame: Option<u32>,
    /// Overrides the preset's receive window per stream, in bytes (or KiB, MiB, GiB).
    #[arg(long, value_parser = parse_h2_window)]
    pub(crate) h2_stream_window: Option<u32>,
    /// Overrides the preset's receive window per connection, in bytes (or KiB, MiB, GiB).
    #[arg(long, value_parser = parse_h2_window)]
    pub(crate) h2_connection_window: Option<u32>,
    /// Extra flag for the server, repeatable, e.g. `--server-arg=--watcher-bytes-per-second=0`
    /// (the scenarios pass the table's `--watcher-bytes-per-second=0 --max-event-bytes=4194304`,
    /// then these: `--scenario namespaces --server-arg=--authorization-granularity=resource`
    /// measures per-resource authorization, `--server-arg=--redact=` ingest without
    /// redaction, which is on by default).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub(crate) server_args: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Mode {
    /// Soak run: steady ingest with watchers and hostile clients coming and going; fails
    /// on an upward trend of the server's RSS, fds, threads or tasks, or on an unreported
    /// loss (docs/security.md "Soak").
    Soak(soak::Opts),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
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
pub(crate) enum H2Preset {
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
    pub(crate) fn settings(self) -> H2Settings {
        match self {
            H2Preset::Frames16K => H2Settings::GO_BEFORE_1_24,
            H2Preset::Frames1M => H2Settings::GO_1_24,
            H2Preset::Defaults => H2Settings::PROTOCOL_DEFAULTS,
        }
    }
}

impl Opts {
    /// `preset`'s settings with the --h2-* overrides.
    pub(crate) fn h2(&self, preset: H2Preset) -> H2Settings {
        let p = preset.settings();
        H2Settings {
            max_frame: self.h2_max_frame.unwrap_or(p.max_frame),
            stream_window: self.h2_stream_window.unwrap_or(p.stream_window),
            connection_window: self.h2_connection_window.unwrap_or(p.connection_window),
        }
    }
}

/// "16384", "16KiB", "4MiB", "1GiB" → bytes.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
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
pub(crate) fn parse_h2_frame(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    u32::try_from(n)
        .ok()
        .filter(|n| (16_384..=16_777_215).contains(n))
        .ok_or_else(|| format!("{s:?}: HTTP/2 frames are 16384 to 16777215 bytes"))
}

/// HTTP/2's bounds on a flow-control window: 65,535 (the default) to 2^31 - 1.
pub(crate) fn parse_h2_window(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    u32::try_from(n)
        .ok()
        .filter(|n| (65_535..=(1 << 31) - 1).contains(n))
        .ok_or_else(|| format!("{s:?}: HTTP/2 windows are 65535 to 2147483647 bytes"))
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fixture {
    /// tests/fixtures/audit/audit2rbac-demo.log: Metadata-level events, ~0.7 KB.
    Metadata,
    /// tests/fixtures/audit/all-events.jsonl: every level, ~5 KB on average.
    Mixed,
}

impl Fixture {
    pub(crate) fn file(self) -> &'static str {
        match self {
            Fixture::Metadata => "audit2rbac-demo.log",
            Fixture::Mixed => "all-events.jsonl",
        }
    }
}

pub(crate) fn parse_rate(s: &str) -> Result<Rate, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    match s.parse::<f64>() {
        Ok(r) if (1.0..=10_000_000.0).contains(&r) => Ok(Rate::PerSecond(r)),
        _ => Err(format!("{s:?}: events per second (1 to 10000000) or `max`")),
    }
}
