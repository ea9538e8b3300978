//! A phase of the load generator: one server process, watchers opened, pushers for a
//! duration, then a bounded drain; what it saw comes back as an `Outcome`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::time::Instant;

use crate::client::{self, H2Settings};
use crate::measure::{self, Clock, CpuSampler};
use crate::opts::Fixture;
use crate::outcome::{MAX_DRAIN, Outcome, Watched, int, report, scrape_metrics};
use crate::push::{self, PushStats, Pusher, Rate, Templates};
use crate::server::{self, ServerProcess, server_argv};
use crate::watch::{self, Group, Scope};

/// The server flags of the performance table: no per-watcher budget, and events up to
/// 4 MiB whole, so that what is measured is delivery, not the budget.
const TABLE_SERVER_FLAGS: [&str; 2] = ["--watcher-bytes-per-second=0", "--max-event-bytes=4194304"];
/// `--server-arg` flags for every scenario's server (set once, by `run`).
pub(crate) static SCENARIO_SERVER_ARGS: std::sync::OnceLock<Vec<String>> =
    std::sync::OnceLock::new();

pub(crate) struct Phase {
    title: String,
    pub(crate) fixture: Fixture,
    pub(crate) namespaces: usize,
    pub(crate) pushers: usize,
    pub(crate) batch: usize,
    pub(crate) rate: Rate,
    pub(crate) duration: Duration,
    pub(crate) groups: Vec<Group>,
    /// Watchers sit this long before the push, and the server's RSS is read then.
    pub(crate) idle: Option<Duration>,
    /// Flags for the server after the generated ones.
    pub(crate) server_args: Vec<String>,
    /// `Some(n)`: n replicas sharing one NATS JetStream stream (`--bus=nats`), pushers
    /// and watchers spread over them; `None`: one replica, memory bus.
    pub(crate) nats_replicas: Option<usize>,
    /// What the HTTP/2 watchers' connections advertise.
    pub(crate) h2: H2Settings,
}

impl Phase {
    pub(crate) fn new(
        title: impl Into<String>,
        fixture: Fixture,
        rate: Rate,
        duration: Duration,
    ) -> Phase {
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

    pub(crate) fn describe(&self) -> String {
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

pub(crate) async fn run_phase(phase: Phase) -> anyhow::Result<Outcome> {
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
pub(crate) fn share(count: usize, n: usize, i: usize) -> usize {
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
