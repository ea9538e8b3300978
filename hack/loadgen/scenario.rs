//! The scenarios: one per row of the performance table, each run as phases.

use std::time::Duration;

use crate::client::H2Settings;
use crate::measure;
use crate::opts::{Fixture, Opts, Scenario};
use crate::outcome::{Outcome, int, kib, mb};
use crate::phase::{Phase, run_phase};
use crate::push::Rate;
use crate::table::{LatencyCells, ScenarioResult, TableRow};
use crate::watch::Group;

/// How long idle watchers sit before the server's RSS is read.
const IDLE_SETTLE: Duration = Duration::from_secs(3);
/// The table's events per second for the watcher rows.
const TABLE_RATE: f64 = 10_000.0;

fn watcher_fixture(opts: &Opts) -> Fixture {
    opts.fixture.unwrap_or(Fixture::Metadata)
}

pub(crate) fn h2_group(
    label: &str,
    count: usize,
    per_namespace: bool,
    connections: usize,
) -> Group {
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
pub(crate) async fn run_scenario(
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
pub(crate) async fn ingest(
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
pub(crate) async fn namespaces(
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
pub(crate) async fn fanout(
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

pub(crate) async fn idle(
    fixture: Fixture,
    h2: H2Settings,
) -> anyhow::Result<(ScenarioResult, bool)> {
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
