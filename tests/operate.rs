//! The operator's view, black-box. A scripted workload against the real binary (pushes
//! from two sources, a watcher over its budget that gets truncated and dropped events, one
//! within it, a refused push, a failed authentication, a forbidden request), then a scrape
//! of `/metrics`: every counter equals what was pushed, delivered, truncated and dropped,
//! and the log has one line per watch start and end and per refusal, in both log formats,
//! with no credential in it. Then the monitoring manifests against a real scrape: every
//! metric the dashboard and the alerts query exists, with the labels they group by and
//! the label values they match, with the memory bus and with `--bus=nats`.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use http::StatusCode;
use serde_json::Value;
use support::client::WatchReader;
use support::cluster::Cluster;
use support::fake_apiserver::Rule;
use support::fixtures::{self, event, event_list};
use support::nats::NatsServer;
use support::process::ServerProcess;
use support::{eventually, metric};

const EVENTS: &str = "/apis/audit.k8s.io/v1alpha1/events";
const TEAM_A: &str = "/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents";
/// The `--dev` example users.
const ADMIN_TOKEN: &str = "admin-dev-token";
const ALICE_TOKEN: &str = "alice-dev-token";
/// Credentials nobody issued: they must never reach the log.
const BAD_TOKEN: &str = "not-a-real-token-3f9a";
const BAD_PUSH_TOKEN: &str = "not-a-push-token-77c1";
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What the over-budget watcher saw.
#[derive(Default, Debug)]
struct Seen {
    /// ADDED lines, whole or truncated.
    added: u64,
    /// Truncated by its budget (the annotation on an event that ingest did not already
    /// truncate for everyone).
    truncated_by_budget: u64,
    /// Sum of the dropped-count bookmarks.
    dropped: u64,
}

/// Read until every one of `total` events is accounted for: sent, or reported dropped.
async fn read_all(w: &mut WatchReader, total: u64, truncated_at_ingest: &BTreeSet<String>) -> Seen {
    let mut seen = Seen::default();
    while seen.added + seen.dropped < total {
        let ev = w.next().await.expect("the stream ended early");
        let obj = &ev["object"];
        match ev["type"].as_str() {
            Some("ADDED") => {
                seen.added += 1;
                let name = obj["metadata"]["name"].as_str().unwrap();
                if obj["annotations"]["audit.k8s.io/truncated"] == "true"
                    && !truncated_at_ingest.contains(name)
                {
                    seen.truncated_by_budget += 1;
                }
            }
            Some("BOOKMARK") => {
                let n = obj["metadata"]["annotations"]["audit.k8s.io/dropped"]
                    .as_str()
                    .expect("a dropped count");
                seen.dropped += n.parse::<u64>().unwrap();
            }
            other => panic!("unexpected event type {other:?}: {ev}"),
        }
    }
    seen
}

/// One log line: its message and fields (values as text), from either format.
#[derive(Debug)]
struct Line {
    msg: String,
    fields: BTreeMap<String, String>,
}

/// The line if it is `msg`'s. Text: `… target: msg k=v k="v"…`; JSON: component-base's
/// object.
fn parse(line: &str, json: bool, msg: &str) -> Option<Line> {
    if json {
        let v: Value = serde_json::from_str(line).ok()?;
        if v["msg"] != msg {
            return None;
        }
        let fields = v
            .as_object()?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map_or(v.to_string(), str::to_owned)))
            .collect();
        return Some(Line {
            msg: msg.to_owned(),
            fields,
        });
    }
    let (_, rest) = line.split_once(&format!(": {msg}"))?;
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    let mut fields = BTreeMap::new();
    let mut rest = rest.trim_start();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"').unwrap_or(quoted.len());
                (&quoted[..end], &quoted[(end + 1).min(quoted.len())..])
            }
            None => after.split_at(after.find(' ').unwrap_or(after.len())),
        };
        fields.insert(key.to_owned(), value.to_owned());
        rest = next.trim_start();
    }
    Some(Line {
        msg: msg.to_owned(),
        fields,
    })
}

fn lines(log: &[String], json: bool, msg: &str) -> Vec<Line> {
    log.iter().filter_map(|l| parse(l, json, msg)).collect()
}

fn field<'a>(line: &'a Line, key: &str) -> &'a str {
    line.fields
        .get(key)
        .unwrap_or_else(|| panic!("{} line without {key}: {line:?}", line.msg))
}

/// A series' value, which must be there.
fn value(text: &[u8], series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| {
        panic!(
            "no series {series} in /metrics:\n{}",
            String::from_utf8_lossy(text)
        )
    })
}

/// The workload, then the metrics and the log, in one log format.
async fn workload_in(format: &str) {
    let json = format == "json";
    let mut flags = vec![
        // 124 kB at once, then 20 kB/s: the 810 kB OpenShift batch is far over it; its
        // 33rd event is the first that does not fit whole, and fits truncated with
        // kilobytes to spare (tests/budget.rs).
        "--watcher-bytes-per-second",
        "20000",
        "--watcher-burst-bytes",
        "124000",
        "--log-format",
        format,
    ];
    if !json {
        // Debug lines too: one per request.
        flags.push("-v=4");
    }
    let srv = ServerProcess::start(&flags);
    let admin = srv.client(Some(ADMIN_TOKEN));
    let alice = srv.client(Some(ALICE_TOKEN));
    let mut everything = admin.watch(&format!("{EVENTS}?watch=1")).await;
    let mut team_a = alice.watch(&format!("{TEAM_A}?watch=1")).await;

    // Source a: 100 real events, two of them above --max-event-bytes (truncated at ingest
    // for everyone). Source b: five small ones, three in team-a.
    let openshift = fixtures::lines("openshift-audit_in.log");
    let truncated_at_ingest: BTreeSet<String> = openshift
        .iter()
        .filter(|l| l.len() > 100 * 1024)
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let stage = v["stage"].as_str().unwrap().to_lowercase();
            format!("{}-{stage}", v["auditID"].as_str().unwrap())
        })
        .collect();
    assert_eq!(truncated_at_ingest.len(), 2);
    let body_a = event_list("audit.k8s.io/v1", &openshift);
    let small = [
        event("op-1", Some("team-a"), "create"),
        event("op-2", Some("team-a"), "update"),
        event("op-3", Some("team-b"), "delete"),
        event("op-4", Some("team-a"), "delete"),
        event("op-5", None, "list"),
    ];
    let body_b = event_list("audit.k8s.io/v1", &small);
    // Pushes are open on loopback in --dev.
    let pusher = srv.client(None);
    let (code, status) = pusher.push("?source=apiserver-a", body_a.clone()).await;
    assert_eq!(code, StatusCode::OK, "{status}");
    let (code, status) = pusher.push("?source=apiserver-b", body_b.clone()).await;
    assert_eq!(code, StatusCode::OK, "{status}");
    // Refused: a push with a token nobody issued; a read with one; a read not allowed.
    let (code, _) = srv
        .client(Some(BAD_PUSH_TOKEN))
        .push("?source=apiserver-c", body_b.clone())
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = srv.client(Some(BAD_TOKEN)).get(EVENTS).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = alice.get(EVENTS).await;
    assert_eq!(code, StatusCode::FORBIDDEN);

    let seen = read_all(&mut everything, 105, &truncated_at_ingest).await;
    assert!(seen.truncated_by_budget > 0, "over budget: {seen:?}");
    assert!(seen.dropped > 0, "then dropping: {seen:?}");
    let mine = team_a.added(3).await;
    let ids: Vec<&str> = mine
        .iter()
        .map(|o| o["auditID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["op-1", "op-2", "op-4"]);
    // Both clients go away: each watch leaves its end line.
    drop(everything);
    drop(team_a);
    eventually("two watch end lines", || {
        let n = lines(&srv.log(), json, "watch ended").len();
        async move { n == 2 }
    })
    .await;

    // --- The counters. ---
    let (code, m) = admin.get("/metrics").await;
    assert_eq!(code, StatusCode::OK);
    let ingest = |name: &str, source: &str| {
        value(
            &m,
            &format!("kube_audit_stream_ingest_{name}{{source=\"{source}\"}}"),
        )
    };
    assert_eq!(ingest("events_total", "apiserver-a"), 100.0);
    assert_eq!(ingest("events_total", "apiserver-b"), 5.0);
    assert_eq!(
        ingest("request_bytes_total", "apiserver-a"),
        body_a.len() as f64
    );
    assert_eq!(
        ingest("request_bytes_total", "apiserver-b"),
        body_b.len() as f64
    );
    assert!(
        metric(
            &m,
            "kube_audit_stream_ingest_events_total{source=\"apiserver-c\"}"
        )
        .is_none(),
        "a refused push counts no events"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for source in ["apiserver-a", "apiserver-b"] {
        let last = ingest("last_push_timestamp_seconds", source);
        assert!(last > now - 600.0 && last <= now + 1.0, "{source}: {last}");
    }
    // The window's ends: 105 events in a row. The exposition's values are f64s, which
    // tell resourceVersions of a time-derived base (~2.5e17) apart only to within 32.
    let oldest = value(&m, "kube_audit_stream_bus_window_oldest_resource_version");
    let newest = value(&m, "kube_audit_stream_bus_window_newest_resource_version");
    assert!(
        oldest > 2e17 && (newest - oldest - 104.0).abs() <= 64.0,
        "{oldest}..={newest}"
    );
    for (series, want) in [
        ("kube_audit_stream_ingest_requests_total{code=\"200\"}", 2.0),
        ("kube_audit_stream_ingest_requests_total{code=\"401\"}", 1.0),
        (
            "kube_audit_stream_ingest_oversized_events_total{action=\"truncated\"}",
            2.0,
        ),
        ("kube_audit_stream_ingest_batch_duration_seconds_count", 2.0),
        // Every pushed event has a stageTimestamp.
        ("kube_audit_stream_ingest_audit_delay_seconds_count", 105.0),
        ("kube_audit_stream_bus_published_events_total", 105.0),
        // The memory bus is always up.
        ("kube_audit_stream_bus_up", 1.0),
        ("kube_audit_stream_bus_window_events", 105.0),
        // The over-budget watcher of everything.
        (
            "kube_audit_stream_watch_events_sent_total{resource=\"events\"}",
            seen.added as f64,
        ),
        (
            "kube_audit_stream_watch_truncated_events_total{resource=\"events\"}",
            seen.truncated_by_budget as f64,
        ),
        // alice's, within her budget.
        (
            "kube_audit_stream_watch_events_sent_total{resource=\"namespacedevents\"}",
            3.0,
        ),
        (
            "kube_audit_stream_watch_truncated_events_total{resource=\"namespacedevents\"}",
            0.0,
        ),
        (
            "kube_audit_stream_watch_dropped_events_total{reason=\"budget\",resource=\"namespacedevents\"}",
            0.0,
        ),
        (
            "kube_audit_stream_watch_dropped_events_total{reason=\"queue_full\",resource=\"namespacedevents\"}",
            0.0,
        ),
        ("kube_audit_stream_watch_watchers{resource=\"events\"}", 0.0),
        (
            "kube_audit_stream_watch_watchers{resource=\"namespacedevents\"}",
            0.0,
        ),
        // Every request by verb, resource and code.
        (
            "kube_audit_stream_http_requests_total{code=\"200\",resource=\"ingest\",verb=\"post\"}",
            2.0,
        ),
        (
            "kube_audit_stream_http_requests_total{code=\"401\",resource=\"ingest\",verb=\"post\"}",
            1.0,
        ),
        (
            "kube_audit_stream_http_requests_total{code=\"401\",resource=\"events\",verb=\"list\"}",
            1.0,
        ),
        (
            "kube_audit_stream_http_requests_total{code=\"403\",resource=\"events\",verb=\"list\"}",
            1.0,
        ),
        (
            "kube_audit_stream_http_requests_total{code=\"200\",resource=\"events\",verb=\"watch\"}",
            1.0,
        ),
        (
            "kube_audit_stream_http_requests_total{code=\"200\",resource=\"namespacedevents\",verb=\"watch\"}",
            1.0,
        ),
        // Two watches, alice's forbidden list and this scrape; the bad token.
        (
            "kube_audit_stream_authentication_decisions_total{result=\"authenticated\"}",
            4.0,
        ),
        (
            "kube_audit_stream_authentication_decisions_total{result=\"invalid\"}",
            1.0,
        ),
    ] {
        assert_eq!(value(&m, series), want, "{series}");
    }
    let dropped: f64 = ["budget", "queue_full"]
        .iter()
        .map(|r| {
            value(
                &m,
                &format!(
                    "kube_audit_stream_watch_dropped_events_total{{reason=\"{r}\",resource=\"events\"}}"
                ),
            )
        })
        .sum();
    assert_eq!(dropped, seen.dropped as f64, "dropped, every reason");
    let refused: f64 = ["deny", "no_opinion"]
        .iter()
        .filter_map(|d| {
            metric(
                &m,
                &format!("kube_audit_stream_authorization_decisions_total{{decision=\"{d}\"}}"),
            )
        })
        .sum();
    assert_eq!(refused, 1.0, "alice's list of everything");

    // --- The log. ---
    // A request's debug line is written after its answer went out: at -v=4, wait for the
    // scrape's before reading the log.
    if !json {
        eventually("the scrape's request line", || async {
            srv.log()
                .iter()
                .any(|l| l.contains(" DEBUG ") && l.contains("request") && l.contains("/metrics"))
        })
        .await;
    }
    let log = srv.log();
    let started = lines(&log, json, "watch started");
    assert_eq!(started.len(), 2, "{log:#?}");
    let by_user = |ls: &[Line], user: &str| -> usize {
        ls.iter()
            .position(|l| field(l, "user") == user)
            .unwrap_or_else(|| panic!("no line for {user}: {ls:?}"))
    };
    let s = &started[by_user(&started, "admin")];
    assert_eq!(
        (field(s, "resource"), field(s, "namespace")),
        ("events", "")
    );
    let s = &started[by_user(&started, "alice")];
    assert_eq!(
        (field(s, "resource"), field(s, "namespace")),
        ("namespacedevents", "team-a")
    );
    let ended = lines(&log, json, "watch ended");
    let e = &ended[by_user(&ended, "admin")];
    assert_eq!(field(e, "sent"), seen.added.to_string());
    assert_eq!(field(e, "truncated"), seen.truncated_by_budget.to_string());
    assert_eq!(field(e, "dropped"), seen.dropped.to_string());
    assert_eq!(field(e, "reason"), "client_closed");
    assert_eq!(field(e, "resource"), "events");
    assert!(field(e, "duration_seconds").parse::<f64>().unwrap() >= 0.0);
    let e = &ended[by_user(&ended, "alice")];
    assert_eq!(
        (field(e, "sent"), field(e, "truncated"), field(e, "dropped")),
        ("3", "0", "0")
    );
    assert_eq!(field(e, "namespace"), "team-a");

    let pushes = lines(&log, json, "push refused");
    assert_eq!(pushes.len(), 1, "{log:#?}");
    assert_eq!(field(&pushes[0], "code"), "401");
    assert_eq!(field(&pushes[0], "credential"), "bearer token");
    let refused = lines(&log, json, "request refused");
    assert_eq!(refused.len(), 2, "{log:#?}");
    let unauthenticated = refused
        .iter()
        .find(|l| field(l, "code") == "401")
        .expect("the failed authentication");
    assert_eq!(field(unauthenticated, "credential"), "bearer token");
    assert!(log.iter().any(|l| l.contains("request refused")
        && l.contains("403")
        && l.contains(r#"cannot list resource"#)));

    let text = log.join("\n");
    for secret in [BAD_TOKEN, BAD_PUSH_TOKEN] {
        assert!(!text.contains(secret), "a credential in the log: {secret}");
    }
    // The --dev banner shows the example tokens on purpose; no log line may.
    let logged: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with('{') || l.starts_with("20"))
        .collect();
    for secret in [ADMIN_TOKEN, ALICE_TOKEN] {
        assert!(
            !logged.iter().any(|l| l.contains(secret)),
            "a credential in the log: {secret}"
        );
    }
    assert!(!text.contains('\u{1b}'), "colour codes in a piped log");
    if json {
        // Every logged line is one component-base object; nothing above -v=0.
        let objects: Vec<Value> = log
            .iter()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert!(objects.len() >= 7, "{log:#?}");
        for o in &objects {
            assert!(
                o["ts"].is_f64() && o["caller"].is_string() && o["msg"].is_string(),
                "{o}"
            );
            assert_ne!(o["v"], 4, "a debug line at -v=0: {o}");
        }
    } else {
        // -v=4: a debug line per request, among them the scrape's.
        assert!(
            log.iter()
                .any(|l| l.contains(" DEBUG ") && l.contains("request") && l.contains("/metrics")),
            "{log:#?}"
        );
    }

    // A watch that reaches its timeoutSeconds says so.
    let mut short = alice
        .watch(&format!("{TEAM_A}?watch=1&timeoutSeconds=1"))
        .await;
    assert!(short.next().await.is_none(), "nothing pushed: it just ends");
    eventually("the timed-out watch's end line", || {
        let n = lines(&srv.log(), json, "watch ended")
            .iter()
            .filter(|l| field(l, "reason") == "timeout" && field(l, "user") == "alice")
            .count();
        async move { n == 1 }
    })
    .await;
}

#[tokio::test]
async fn workload_counted_and_logged_as_text() {
    workload_in("text").await;
}

#[tokio::test]
async fn workload_counted_and_logged_as_json() {
    workload_in("json").await;
}

/// Metric names in a PromQL expression (ours only: `up` is Prometheus's).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("kube_audit_stream_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// One sample line of a Prometheus text page: the series' name and labels.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
}

/// Every sample on a Prometheus text page (comments skipped).
fn samples(text: &str) -> Vec<Sample> {
    let mut out = vec![];
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let (name, mut rest) = line.split_at(end);
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            while let Some((key, after)) = rest.split_once("=\"") {
                let key = key.trim_start_matches(',').to_owned();
                let mut value = String::new();
                let mut chars = after.char_indices();
                let close = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => panic!("{line}: an escape at the end"),
                        },
                        Some((i, '"')) => break i,
                        Some((_, c)) => value.push(c),
                        None => panic!("{line}: an unclosed label value"),
                    }
                };
                labels.insert(key, value);
                rest = &after[close + 1..];
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
            }
        }
        assert!(rest.starts_with(' '), "not a sample line: {line}");
        out.push(Sample {
            name: name.to_owned(),
            labels,
        });
    }
    out
}

/// What a PromQL expression asks of one of our metrics: the labels it groups by and
/// its label matchers (label, operator, value).
#[derive(Debug)]
struct Use {
    name: String,
    by: Vec<String>,
    matchers: Vec<(String, String, String)>,
}

/// The uses of our metrics in `expr`. Grouping (`by (...)`) is taken to apply to every
/// metric of the expression, which holds for the dashboard's and the alerts' queries:
/// each groups one aggregation. A construct this reader does not know fails the test.
fn uses(expr: &str) -> Vec<Use> {
    for unknown in [
        "without",
        "ignoring",
        "group_left",
        "group_right",
        "=~",
        "!~",
    ] {
        assert!(
            !expr.contains(unknown),
            "{expr}: this test does not read `{unknown}`; teach it"
        );
    }
    // `by (a, b)` or `by(a, b)`, before or after the aggregation's argument.
    let mut by = vec![];
    let mut rest = expr;
    while let Some(i) = rest.find("by") {
        let word_start = !rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        let after = &rest[i + 2..];
        match after.trim_start().strip_prefix('(') {
            Some(list) if word_start => {
                let (labels, after) = list.split_once(')').unwrap();
                by.extend(labels.split(',').map(|l| l.trim().to_owned()));
                rest = after;
            }
            _ => rest = after,
        }
    }
    let mut out = vec![];
    for name in metric_names(expr) {
        let mut matchers = vec![];
        let mut rest = expr;
        while let Some(i) = rest.find(&name) {
            let after = &rest[i + name.len()..];
            // A longer name that starts with this one is another metric.
            if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                rest = after;
                continue;
            }
            if let Some(inner) = after.strip_prefix('{') {
                let (inner, _) = inner.split_once('}').unwrap();
                for m in inner.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                    let (label, op, value) = if let Some((l, v)) = m.split_once("!=") {
                        (l, "!=", v)
                    } else {
                        let (l, v) = m.split_once('=').unwrap();
                        (l, "=", v)
                    };
                    let value = value.trim().trim_matches('"');
                    matchers.push((label.trim().to_owned(), op.to_owned(), value.to_owned()));
                }
            }
            rest = after;
        }
        out.push(Use {
            name,
            by: by.clone(),
            matchers,
        });
    }
    out
}

/// Each use of our metrics in `expr` finds labels the scrape has: every series of the
/// metric has each label the query groups by, and some series has each value the query
/// matches on (`=` or `!=`), so that no panel shows one unlabelled line and no matcher
/// selects, or excludes, a value the server never gives.
fn check_labels(expr: &str, scrape: &[Sample], text: &str) {
    for u in uses(expr) {
        let series: Vec<&Sample> = scrape.iter().filter(|s| s.name == u.name).collect();
        assert!(!series.is_empty(), "{expr}: no series {}:\n{text}", u.name);
        for label in &u.by {
            assert!(
                series.iter().all(|s| s.labels.contains_key(label)),
                "{expr}: grouped by {label}, which {} does not have: {series:?}",
                u.name
            );
        }
        for (label, op, value) in &u.matchers {
            assert!(
                series
                    .iter()
                    .any(|s| s.labels.get(label).map(String::as_str) == Some(value)),
                "{expr}: {label}{op}\"{value}\", but no series of {} has that value: {series:?}",
                u.name
            );
        }
    }
}

/// Every query of the dashboard and of the alerts names metrics the real server exports,
/// with the labels it groups by and the label values it matches, in cluster mode
/// (TokenReview, SubjectAccessReview) after a workload, with the memory bus; and the
/// dashboard shows every family the server exports.
#[tokio::test]
async fn the_dashboard_and_the_alerts_query_metrics_that_exist() {
    dashboard_and_alerts_against(&[]).await;
}

/// The same with `--bus=nats`, on a real NATS server: the bus is another implementation,
/// and its metrics must still be what the dashboard and the alerts query.
#[tokio::test]
async fn the_dashboard_and_the_alerts_query_metrics_that_exist_with_nats() {
    let nats = NatsServer::start();
    dashboard_and_alerts_against(&["--bus=nats", "--nats-url", &nats.url()]).await;
}

async fn dashboard_and_alerts_against(bus: &[&str]) {
    let nats = !bus.is_empty();
    // A fake cluster: alice has a token, may watch and list team-a and read /metrics.
    let cluster = Cluster::new().await;
    cluster.fake.allow(Rule::non_resource("alice", "/metrics"));
    cluster.fake.allow(Rule::namespaced(
        "alice",
        &["list"],
        "team-a",
        "audit.k8s.io",
        "namespacedevents",
    ));
    let srv = cluster.server(bus).await;
    let alice = srv.client(Some("alice-token"));
    // With NATS the bus is up once the stream is reached; /readyz needs no credentials,
    // so waiting for it counts no authentication.
    let probe = srv.client(None);
    eventually("the server to be ready", || async {
        probe.get("/readyz").await.0 == StatusCode::OK
    })
    .await;
    let mut w = alice.watch(&format!("{TEAM_A}?watch=1")).await;
    srv.push_events(&[event("m-1", Some("team-a"), "create")])
        .await;
    w.added(1).await;
    drop(w);
    // A LIST, for the families of LISTs in flight.
    assert_eq!(alice.get(TEAM_A).await.0, StatusCode::OK);
    // Twice: the second answers come from the caches.
    let _ = alice.get("/metrics").await;
    let (code, m) = alice.get("/metrics").await;
    assert_eq!(code, StatusCode::OK);
    let m = String::from_utf8_lossy(&m).into_owned();
    let families: BTreeMap<&str, &str> = m
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let exported = |name: &str| -> bool {
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|base| families.get(base) == Some(&"histogram"))
            })
            .unwrap_or(name);
        families.contains_key(family) && m.lines().any(|l| l.starts_with(name))
    };

    let path = format!("{ROOT}/manifests/monitoring/kube-audit-stream-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut dashboard_names = BTreeSet::new();
    let mut queries = vec![];
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{}: {expr}", panel["title"]);
            dashboard_names.extend(names);
            queries.push(expr.to_owned());
        }
    }
    let path = format!("{ROOT}/manifests/monitoring/prometheusrule.yaml");
    let rule = support::yaml::docs(&std::fs::read_to_string(&path).unwrap(), &path).remove(0);
    let mut alert_names = BTreeSet::new();
    for group in rule["spec"]["groups"].as_array().unwrap() {
        for r in group["rules"].as_array().unwrap() {
            let expr = r["expr"].as_str().unwrap();
            alert_names.extend(metric_names(expr));
            queries.push(expr.to_owned());
        }
    }
    assert!(alert_names.len() >= 6, "{alert_names:?}");
    for name in dashboard_names.iter().chain(&alert_names) {
        assert!(
            exported(name),
            "{name} is queried but not in /metrics:\n{m}"
        );
    }
    let shown: BTreeSet<&str> = dashboard_names
        .iter()
        .map(|n| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
        })
        .collect();
    let unshown: Vec<&str> = families
        .keys()
        .copied()
        .filter(|f| !shown.contains(f))
        .collect();
    if nats {
        // The NATS bus's own families have no panel yet: every other one is shown.
        let own = |f: &str| {
            f.starts_with("kube_audit_stream_nats_") || f == "kube_audit_stream_bus_outages_total"
        };
        let others: Vec<&str> = unshown.iter().copied().filter(|f| !own(f)).collect();
        assert!(others.is_empty(), "the dashboard does not show {others:?}");
    } else {
        assert!(
            unshown.is_empty(),
            "the dashboard does not show {unshown:?}"
        );
    }

    // kube-apiserver gone: a new token cannot be reviewed (401), a new question cannot be
    // asked (500, fail closed); both are counted as errors, apart from refusals.
    drop(cluster.fake);
    let (code, _) = srv.client(Some("bob-token")).get(TEAM_A).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    // (Her LIST of team-a is cached: another namespace is a new question.)
    let (code, _) = alice
        .get("/apis/audit.k8s.io/v1alpha1/namespaces/team-c/namespacedevents")
        .await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    // alice's token and her /metrics permission are still cached.
    let (code, m) = alice.get("/metrics").await;
    assert_eq!(code, StatusCode::OK);
    for (series, want) in [
        (
            "kube_audit_stream_authentication_decisions_total{result=\"error\"}",
            1.0,
        ),
        (
            "kube_audit_stream_authentication_token_review_duration_seconds_count{result=\"error\"}",
            1.0,
        ),
        (
            "kube_audit_stream_authentication_token_cache_requests_total{result=\"miss\"}",
            2.0,
        ),
        (
            "kube_audit_stream_authentication_token_cache_requests_total{result=\"hit\"}",
            5.0,
        ),
        (
            "kube_audit_stream_authorization_decisions_total{decision=\"error\"}",
            1.0,
        ),
        (
            "kube_audit_stream_authorization_subject_access_review_duration_seconds_count{result=\"error\"}",
            1.0,
        ),
        (
            "kube_audit_stream_http_requests_total{code=\"500\",resource=\"namespacedevents\",verb=\"list\"}",
            1.0,
        ),
        (
            "kube_audit_stream_http_requests_total{code=\"401\",resource=\"namespacedevents\",verb=\"list\"}",
            1.0,
        ),
    ] {
        assert_eq!(value(m.as_ref(), series), want, "{series}");
    }
    // The labels of every query, on this last scrape: the error series exist by now.
    let text = String::from_utf8_lossy(&m);
    let scrape = samples(&text);
    for expr in &queries {
        check_labels(expr, &scrape, &text);
    }
}

/// The real binary's stderr until its `--dev` banner, with `env` set and `flags` added.
fn stderr_until_banner(env: &[(&str, &str)], flags: &[&str]) -> Vec<String> {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kube-audit-stream"))
        .args(["serve", "--dev", "--secure-port", "0", "--cert-dir"])
        .arg(dir.path())
        .args(flags)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = vec![];
    for line in std::io::BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        let banner = line.contains("is serving on https://");
        lines.push(line);
        if banner {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

/// `RUST_LOG` keeps working: when set it replaces the filter `-v` stands for, and one
/// that does not parse is reported and ignored.
#[test]
fn rust_log_still_filters_the_log() {
    let serving = |lines: &[String]| lines.iter().any(|l| l.contains("serving HTTPS"));
    assert!(serving(&stderr_until_banner(&[], &[])), "info by default");
    let quiet = stderr_until_banner(&[("RUST_LOG", "warn")], &["-v=4"]);
    assert!(!serving(&quiet), "RUST_LOG=warn wins over -v: {quiet:?}");
    let bad = stderr_until_banner(&[("RUST_LOG", "kube_audit_stream=loud")], &[]);
    assert!(
        bad.iter()
            .any(|l| l.contains("WARN") && l.contains("RUST_LOG ignored")),
        "{bad:?}"
    );
    assert!(serving(&bad), "-v applies instead: {bad:?}");
}
