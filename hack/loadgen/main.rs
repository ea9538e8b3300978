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
//!
//! Here, from the top down: `scenario` (one per row of the table) runs `phase`s, whose
//! `outcome` is reported and gathered into the `table`; `opts` are the flags; `soak` the
//! soak run; `watch` and `push` the two kinds of client, over `client`'s HTTP/1.1 and
//! HTTP/2; `server` the server child; `measure` CPU, RSS, latency and the baselines.

mod client;
mod measure;
mod opts;
mod outcome;
mod phase;
mod push;
mod scenario;
mod server;
mod soak;
mod table;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::opts::{Fixture, H2Preset, Mode, Opts, Scenario};
use crate::phase::{Phase, SCENARIO_SERVER_ARGS, run_phase};
use crate::push::Rate;
use crate::scenario::{h2_group, run_scenario};
use crate::server::Verdict;
use crate::table::{print_summary, print_table};
use crate::watch::Group;

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
