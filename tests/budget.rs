//! Per-watcher bandwidth, black-box: over budget, events are truncated, then dropped, and
//! the watcher is told; a lagging reader gets truncated events while a fast one gets
//! everything; a reader that never reads costs bounded memory; a watch whose client stops
//! reading is ended, even on an HTTP/2 connection that stays busy; a namespace's many
//! watchers share one budget and leave another namespace's watcher alone.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use support::client::WatchReader;
use support::fixtures::{self, event_list};
use support::process::ServerProcess;
use support::server::{ADMIN_TOKEN, PUSH_TOKEN, TestServer};
use support::{DEADLINE, eventually, metric};

const EVENTS: &str = "/apis/audit.k8s.io/v1alpha1/events?watch=1";

/// What one watcher saw, by kind.
#[derive(Default, Debug)]
struct Seen {
    full: usize,
    truncated: usize,
    /// Sum of the `audit.k8s.io/dropped` bookmark counts.
    dropped: u64,
    /// The order things arrived in: 'F', 'T', 'D'.
    sequence: String,
}

impl Seen {
    fn take(&mut self, ev: &serde_json::Value) {
        match ev["type"].as_str() {
            Some("ADDED") => {
                if ev["object"]["annotations"]["audit.k8s.io/truncated"] == "true" {
                    assert!(ev["object"].get("responseObject").is_none());
                    assert!(ev["object"].get("requestObject").is_none());
                    self.truncated += 1;
                    self.sequence.push('T');
                } else {
                    self.full += 1;
                    self.sequence.push('F');
                }
            }
            Some("BOOKMARK") => {
                let n = &ev["object"]["metadata"]["annotations"]["audit.k8s.io/dropped"];
                let n: u64 = n.as_str().expect("a dropped count").parse().unwrap();
                assert!(n > 0);
                self.dropped += n;
                self.sequence.push('D');
            }
            other => panic!("unexpected event type {other:?}"),
        }
    }

    fn accounted(&self) -> u64 {
        (self.full + self.truncated) as u64 + self.dropped
    }
}

async fn read_until_accounted(w: &mut WatchReader, total: u64) -> Seen {
    let mut seen = Seen::default();
    while seen.accounted() < total {
        seen.take(&w.next().await.expect("stream ended early"));
    }
    seen
}

fn openshift_batch() -> String {
    event_list(
        "audit.k8s.io/v1",
        &fixtures::lines("openshift-audit_in.log"),
    )
}

#[tokio::test]
async fn over_budget_truncates_then_drops_and_tells() {
    // 124 kB at once, then 20 kB/s: a batch of 100 events (810 kB, mostly bodies) is far
    // over. The first 32 events (115 kB) go whole; the 33rd (18 kB) does not fit but its
    // truncated form does, with kilobytes to spare either way, so that the sequence does
    // not hang on a few bytes (the resourceVersions' digits, say).
    let srv = TestServer::start(&[
        "--watcher-bytes-per-second",
        "20000",
        "--watcher-burst-bytes",
        "124000",
    ])
    .await;
    let mut w = srv.client(Some(ADMIN_TOKEN)).watch(EVENTS).await;
    let (code, _) = srv
        .client(Some(PUSH_TOKEN))
        .push("", openshift_batch())
        .await;
    assert_eq!(code, StatusCode::OK);

    let seen = read_until_accounted(&mut w, 100).await;
    assert!(
        seen.sequence.starts_with('F'),
        "within the burst events go whole: {}",
        seen.sequence
    );
    assert!(seen.truncated > 0, "then truncated: {}", seen.sequence);
    assert!(
        seen.dropped > 0,
        "then dropped and reported: {}",
        seen.sequence
    );
    // Every report comes before the next event delivered after the drops it counts.
    assert!(!seen.sequence.contains("DD"), "{}", seen.sequence);

    let (_, metrics) = srv.client(Some(ADMIN_TOKEN)).get("/metrics").await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(&format!(
            "kube_audit_stream_watch_dropped_events_total{{reason=\"budget\",resource=\"events\"}} {}",
            seen.dropped
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "kube_audit_stream_watch_truncated_events_total{{resource=\"events\"}} {}",
        seen.truncated
    )));
}

#[tokio::test]
async fn a_lagging_reader_gets_truncated_events_while_a_fast_one_gets_everything() {
    // A budget far above the push rate: only lag makes a difference here.
    let srv = TestServer::start(&[
        "--watcher-bytes-per-second",
        "1000000000",
        "--watcher-burst-bytes",
        "1000000000",
    ])
    .await;
    let admin = srv.client(Some(ADMIN_TOKEN));
    let mut fast = admin.watch(EVENTS).await;
    let mut slow = admin.watch(EVENTS).await;
    let (slow_tx, slow_done) = tokio::sync::oneshot::channel::<()>();
    let rounds = 40u64; // 32 MB: more than socket buffers plus the queue's byte cap
    let slow_reader = tokio::spawn(async move {
        // Nothing read until the pushing is over, then everything at full speed: its queue
        // is then full (the byte cap), far above the lag mark (half of it), however fast
        // or slow the machine, so truncation and drops follow from the caps, not timing.
        slow_done.await.unwrap();
        let mut seen = Seen::default();
        while seen.accounted() < rounds * 100 {
            seen.take(&slow.next().await.expect("slow stream ended"));
        }
        seen
    });

    let pusher = srv.client(Some(PUSH_TOKEN));
    let mut fast_seen = Seen::default();
    for round in 1..=rounds {
        let (code, _) = pusher.push("", openshift_batch()).await;
        assert_eq!(code, StatusCode::OK);
        // Keep up with ingest: the fast reader is never behind by more than one batch.
        while fast_seen.accounted() < round * 100 {
            fast_seen.take(&fast.next().await.unwrap());
        }
    }
    slow_tx.send(()).unwrap();
    // The >100 KiB events are truncated for everyone (--max-event-bytes): 2 a batch.
    assert_eq!(
        (
            fast_seen.full as u64,
            fast_seen.truncated as u64,
            fast_seen.dropped
        ),
        (98 * rounds, 2 * rounds, 0)
    );

    let seen = tokio::time::timeout(std::time::Duration::from_secs(120), slow_reader)
        .await
        .unwrap()
        .unwrap();
    assert!(
        seen.truncated as u64 > 2 * rounds,
        "lagging, it got truncated events: {seen:?}"
    );
    assert!(seen.dropped > 0, "and was told what it lost: {seen:?}");
    assert_eq!(seen.accounted(), 100 * rounds);
}

#[tokio::test]
async fn a_reader_that_never_reads_costs_bounded_memory() {
    let srv = ServerProcess::start(&[
        "--window-bytes",
        "8000000",
        "--watcher-bytes-per-second",
        "0",
    ]);
    // The `--dev` example administrator; pushes are open on loopback in `--dev`.
    let admin = srv.client(Some("admin-dev-token"));
    let stuck = admin.send(Method::GET, EVENTS, &[], "").await;
    assert_eq!(stuck.status(), StatusCode::OK);
    let lines = fixtures::lines("all-events.jsonl");
    let batches: Vec<String> = lines
        .chunks(400)
        .map(|b| event_list("audit.k8s.io/v1", b))
        .collect();
    let pusher = srv.client(None);
    // Warm up (allocator arenas, TLS, the stuck watcher's socket buffers), then measure.
    for _ in 0..10 {
        for b in &batches {
            pusher.push("", b.clone()).await;
        }
    }
    let before = srv.rss_bytes();
    let rounds = 100; // ~90 MB of events through a watcher that reads nothing
    for _ in 0..rounds {
        for b in &batches {
            let (code, _) = pusher.push("", b.clone()).await;
            assert_eq!(code, StatusCode::OK);
        }
    }
    let grown = srv.rss_bytes() - before;
    let pushed: usize = batches.iter().map(String::len).sum::<usize>() * rounds;
    eprintln!(
        "pushed {} MB, server RSS grew {} MB",
        pushed >> 20,
        grown >> 20
    );
    assert!(
        grown < 64 << 20,
        "RSS grew {} MB for {} MB pushed",
        grown >> 20,
        pushed >> 20
    );

    let (_, metrics) = admin.get("/metrics").await;
    let dropped = metric(&metrics, "kube_audit_stream_bus_dropped_events_total")
        .expect("the bus counts its drops");
    assert!(
        dropped > 0.0,
        "the stuck watcher lost events instead of holding them"
    );
    drop(stuck);
}

#[tokio::test]
async fn a_server_wide_cap_is_shared_by_every_watcher() {
    // Per-watcher budgets off; the server's 100 kB/s is split between the two watchers.
    let srv = TestServer::start(&[
        "--watcher-bytes-per-second",
        "0",
        "--max-egress-bytes-per-second",
        "100000",
    ])
    .await;
    let admin = srv.client(Some(ADMIN_TOKEN));
    let mut a = admin.watch(EVENTS).await;
    let mut b = admin.clone().http2().watch(EVENTS).await;
    let (code, _) = srv
        .client(Some(PUSH_TOKEN))
        .push("", openshift_batch())
        .await;
    assert_eq!(code, StatusCode::OK);
    for w in [&mut a, &mut b] {
        let seen = read_until_accounted(w, 100).await;
        assert!(seen.full > 0, "{seen:?}");
        assert!(
            seen.dropped > 0,
            "810 kB at once is far over a 50 kB/s share: {seen:?}"
        );
    }
}

/// One series of the metrics page, asked for on `conn`.
async fn metric_on(
    conn: &mut hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    admin: &support::client::Client,
    series: &str,
) -> Option<f64> {
    let resp = conn
        .send_request(admin.request(Method::GET, "/metrics", &[], ""))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    metric(
        &resp.into_body().collect().await.unwrap().to_bytes(),
        series,
    )
}

#[tokio::test]
async fn an_http2_watch_whose_client_stops_reading_is_ended_and_the_connection_lives() {
    const STALL: Duration = Duration::from_secs(2);
    let srv = TestServer::start_tuned(&["--watcher-bytes-per-second", "0"], |s| {
        s.stall_limit = STALL
    })
    .await;
    let admin = srv.client(Some(ADMIN_TOKEN)).http2();
    // One connection, as the aggregator shares one among its users' watches; a window
    // of 4 KiB per stream, so that a watch nobody reads stops after a few events.
    let mut conn = admin.http2_connection(4096).await;
    let stuck = conn
        .send_request(admin.request(Method::GET, EVENTS, &[], ""))
        .await
        .unwrap();
    assert_eq!(stuck.status(), StatusCode::OK);
    let watchers = "kube_audit_stream_watch_watchers{resource=\"events\"}";
    assert_eq!(metric_on(&mut conn, &admin, watchers).await, Some(1.0));

    let lines = fixtures::lines("all-events.jsonl");
    let (code, _) = srv
        .client(Some(PUSH_TOKEN))
        .push("", event_list("audit.k8s.io/v1", &lines))
        .await;
    assert_eq!(code, StatusCode::OK);

    // The watch ends once its client has taken nothing for the limit, while the
    // connection goes on serving other streams.
    let stalled = "kube_audit_stream_watch_stalled_total{resource=\"events\"}";
    eventually("the stuck watch to end", || async {
        metric_on(&mut conn.clone(), &admin, stalled).await == Some(1.0)
    })
    .await;

    // Read late, the stream gives what was in flight and then ends cleanly: whole
    // events, and the client re-watches from the last one's resourceVersion.
    let body = tokio::time::timeout(DEADLINE, stuck.into_body().collect())
        .await
        .expect("the ended watch's stream ends")
        .unwrap()
        .to_bytes();
    let events: Vec<serde_json::Value> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert!(
        !events.is_empty() && events.len() < lines.len(),
        "{} events of {}",
        events.len(),
        lines.len()
    );
    assert!(events.iter().all(|e| e["type"] == "ADDED"));
    eventually("the watch to be gone", || async {
        metric_on(&mut conn.clone(), &admin, watchers).await == Some(0.0)
    })
    .await;
}

/// An event of `namespace` with a request body of 15 000 bytes: about 15.7 kB whole,
/// under 1 kB truncated.
fn event_with_body(audit_id: &str, namespace: &str) -> String {
    let e = fixtures::event(audit_id, Some(namespace), "update");
    let body = format!(
        r#","requestObject":{{"kind":"ConfigMap","apiVersion":"v1","data":{{"x":"{}"}}}}}}"#,
        "x".repeat(15_000)
    );
    format!("{}{body}", e.strip_suffix('}').unwrap())
}

#[tokio::test]
async fn a_namespace_budget_caps_its_many_watchers_and_leaves_another_namespace_alone() {
    // Watchers' own budgets off: the namespace's share is all that limits them. 200 kB/s
    // and 300 kB at once for each namespace: team-a's 50 watchers get a 64 KiB slice of
    // burst each (the floor) and 4 kB/s; team-b's one watcher all of it. A 64 KiB slice
    // takes 4 events whole and leaves kilobytes for truncated ones, whatever the digits
    // of their resourceVersions.
    let srv = TestServer::start(&[
        "--watcher-bytes-per-second",
        "0",
        "--namespace-bytes-per-second",
        "200000",
        "--namespace-burst-bytes",
        "300000",
    ])
    .await;
    // Few enough that no watcher's queue backs up to the lag mark (truncated whatever
    // the budget): 1.6 MB each.
    const BUSY: u64 = 100;
    const QUIET: u64 = 10;
    let ns =
        |n: &str| format!("/apis/audit.k8s.io/v1alpha1/namespaces/{n}/namespacedevents?watch=1");
    let admin = srv.client(Some(ADMIN_TOKEN));
    // Fifty watches on two HTTP/2 connections, as an aggregator carries many users'.
    let h2 = admin.clone().http2();
    let mut busy = vec![];
    for _ in 0..2 {
        let mut conn = h2.http2_connection(1 << 20).await;
        for _ in 0..25 {
            busy.push(h2.watch_on(&mut conn, &ns("team-a")).await);
        }
    }
    let mut quiet = admin.watch(&ns("team-b")).await;
    let mut everything = admin.watch(EVENTS).await;

    // 100 events of team-a (1.6 MB for each of its watchers, 80 MB for the 50), 10 of
    // team-b among them (160 kB: within its namespace's burst), in one push.
    let items: Vec<String> = (0..BUSY)
        .flat_map(|i| {
            let a = event_with_body(&format!("a-{i}"), "team-a");
            let b = (i % 10 == 0).then(|| event_with_body(&format!("b-{i}"), "team-b"));
            std::iter::once(a).chain(b)
        })
        .collect();
    srv.push_events(&items).await;

    // Every watcher reads as fast as it can, all at once.
    let readers: Vec<_> = busy
        .into_iter()
        .map(|mut w| tokio::spawn(async move { read_until_accounted(&mut w, BUSY).await }))
        .collect();
    let quiet = read_until_accounted(&mut quiet, QUIET).await;
    assert_eq!(
        (quiet.full as u64, quiet.truncated, quiet.dropped),
        (QUIET, 0, 0),
        "team-b's watcher gets all its events whole: {quiet:?}"
    );
    let everything = read_until_accounted(&mut everything, BUSY + QUIET).await;
    assert_eq!(
        everything.full as u64,
        BUSY + QUIET,
        "a cluster-wide watch is no namespace's: {everything:?}"
    );
    let (mut truncated, mut dropped) = (0, 0);
    for r in readers {
        // Per watcher: what it got, and the dropped counts of its bookmarks, make up
        // every event of its namespace (read_until_accounted stops at exactly that).
        let seen = r.await.unwrap();
        assert_eq!(seen.accounted(), BUSY, "{seen:?}");
        assert!(seen.full > 0, "each gets its slice of the burst: {seen:?}");
        assert!(!seen.sequence.contains("DD"), "{}", seen.sequence);
        truncated += seen.truncated as u64;
        dropped += seen.dropped;
    }
    // 50 × 1.6 MB against 50 × 64 KiB and 200 kB/s in all: most of team-a's is lost.
    assert!(dropped > BUSY * 25, "{dropped} dropped");
    assert!(truncated > 0, "truncated before dropped");

    // Every truncation and drop was the namespace's share (no watcher has a budget of its
    // own here), and counted as such, in two series however many namespaces there are.
    let (_, m) = admin.get("/metrics").await;
    let ns_metric = |v: &str| {
        metric(
            &m,
            &format!("kube_audit_stream_watch_namespace_budget_events_total{{verdict=\"{v}\"}}"),
        )
    };
    assert_eq!(ns_metric("truncated"), Some(truncated as f64));
    assert_eq!(ns_metric("dropped"), Some(dropped as f64));
    assert_eq!(
        metric(
            &m,
            "kube_audit_stream_watch_dropped_events_total{reason=\"budget\",resource=\"namespacedevents\"}"
        ),
        Some(dropped as f64)
    );
}
