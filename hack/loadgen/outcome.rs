//! What a phase saw (`Outcome`), the server's own delivery-stage histograms scraped from
//! its /metrics, and the per-phase report printed from them.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::ensure;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;

use crate::client;
use crate::measure::{self, CpuUse, Histogram, PromHistogram, SplitRoute};
use crate::push::PushStats;
use crate::watch::WatchStats;

/// After the pushers stop, watchers drain for at most this long.
pub(crate) const MAX_DRAIN: Duration = Duration::from_secs(10);

/// What one phase saw.
pub(crate) struct Outcome {
    pub(crate) requested_rate: Option<f64>,
    pub(crate) pushed: PushStats,
    pub(crate) push_secs: f64,
    pub(crate) watchers: Vec<Watched>,
    /// CPU over the push, and from the first push to the last delivery.
    pub(crate) cpu_push: CpuUse,
    pub(crate) cpu_delivery: CpuUse,
    /// Server RSS (KiB): at start, after the idle wait, at the end; and its peak.
    pub(crate) rss_start: Option<u64>,
    pub(crate) rss_idle: Option<u64>,
    pub(crate) rss_end: Option<u64>,
    pub(crate) rss_peak: Option<u64>,
    pub(crate) generator_rss_peak: Option<u64>,
    /// CPU-seconds of each server-side process over the whole run, when there are several.
    pub(crate) cpu_by_process: Vec<(String, f64)>,
    pub(crate) metrics: Vec<String>,
    /// The server's latency histograms, scraped at the end of the phase.
    pub(crate) server: ServerLatency,
    pub(crate) baseline: Option<SplitRoute>,
}

/// One watcher's result and what it should have seen.
pub(crate) struct Watched {
    pub(crate) group: usize,
    pub(crate) slow: bool,
    pub(crate) stats: WatchStats,
    pub(crate) expected_min: u64,
    pub(crate) expected_max: u64,
}

impl Watched {
    pub(crate) fn received(&self) -> u64 {
        self.stats.events + self.stats.dropped_reported
    }

    /// Events neither delivered nor reported dropped, once the watch had gone quiet.
    pub(crate) fn lost(&self) -> u64 {
        if self.stats.unfinished {
            0
        } else {
            self.expected_min.saturating_sub(self.received())
        }
    }

    /// Events not delivered yet when the drain ended with the watch still busy.
    pub(crate) fn in_flight(&self) -> u64 {
        if self.stats.unfinished {
            self.expected_min.saturating_sub(self.received())
        } else {
            0
        }
    }
}

/// The server's own latency histograms (its /metrics): each watch's delivery stages
/// (sampled), and ingest's time from a push's start to its events on the bus.
#[derive(Default)]
pub(crate) struct ServerLatency {
    /// queue, frame, socket: see the server's `watch::stages`.
    pub(crate) stages: Vec<(&'static str, PromHistogram)>,
    pub(crate) ingest_batch: Option<PromHistogram>,
}

/// The stages the server records, in the order an event goes through them.
pub(crate) const STAGES: [&str; 3] = ["queue", "frame", "socket"];
const STAGE_FAMILY: &str = "kube_audit_stream_watch_delivery_stage_seconds";
const INGEST_BATCH_FAMILY: &str = "kube_audit_stream_ingest_batch_duration_seconds";

impl ServerLatency {
    pub(crate) fn parse(text: &str) -> ServerLatency {
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
    pub(crate) fn line(&self) -> Option<String> {
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
    pub(crate) fn stage_cell(&self, stage: &str) -> String {
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
    pub(crate) fn fast(&self) -> impl Iterator<Item = &Watched> {
        self.watchers.iter().filter(|w| !w.slow)
    }

    pub(crate) fn latency(&self) -> Histogram {
        let mut h = Histogram::default();
        self.fast().for_each(|w| h.merge(&w.stats.latency));
        h
    }

    pub(crate) fn p99_ms(&self) -> Option<f64> {
        self.latency().percentile(99.0).map(|v| v as f64 / 1e6)
    }

    pub(crate) fn lost(&self) -> u64 {
        self.watchers.iter().map(Watched::lost).sum()
    }

    pub(crate) fn order_errors(&self) -> u64 {
        self.watchers.iter().map(|w| w.stats.order_errors).sum()
    }

    pub(crate) fn delivered_events(&self) -> u64 {
        self.watchers.iter().map(|w| w.stats.events).sum()
    }

    pub(crate) fn expected_events(&self) -> u64 {
        self.watchers.iter().map(|w| w.expected_min).sum()
    }

    pub(crate) fn delivered_bytes(&self) -> u64 {
        self.watchers.iter().map(|w| w.stats.bytes).sum()
    }

    pub(crate) fn ingest_rate(&self) -> f64 {
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
    pub(crate) fn limits(&self) -> Vec<String> {
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

    pub(crate) fn passed(&self) -> bool {
        self.lost() == 0
            && self.order_errors() == 0
            && self.pushed.failed == 0
            && self.pushed.events > 0
    }
}

/// The server's counters of interest, from `/metrics`, and its latency histograms.
pub(crate) async fn scrape_metrics(addr: SocketAddr, token: &str) -> (Vec<String>, ServerLatency) {
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

// The per-phase report.

/// 12345.6 → "12,346".
pub(crate) fn int(v: f64) -> String {
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

pub(crate) fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

pub(crate) fn kib(v: Option<u64>) -> String {
    v.map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

pub(crate) fn ms(ns: u64) -> String {
    format!("{:.1} ms", ns as f64 / 1e6)
}

pub(crate) fn report(o: &Outcome) {
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
